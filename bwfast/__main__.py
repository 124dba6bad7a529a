"""Entry point for ``python -m bwfast``."""

import sys


def _run():
    # Ctrl-C while the command line module loads is an interruption like any
    # other: one line and exit code 130, no traceback. (bwfast.cli imports
    # only the standard library; main() imports NumPy and bwfast inside its
    # own handler.)
    try:
        from bwfast.cli import main
    except KeyboardInterrupt:
        try:
            sys.stderr.write("bwfast: interrupted\n")
        except (AttributeError, OSError, ValueError):
            pass
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(_run())
