"""Entry point for ``python -m bwfast``."""

import sys

from bwfast.cli import main

if __name__ == "__main__":
    sys.exit(main())
