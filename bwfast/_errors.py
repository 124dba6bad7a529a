"""Exception and warning classes raised by bwfast."""

import numpy as np


class BWLinAlgError(np.linalg.LinAlgError):
    """A numerical failure inside a bwfast kernel (e.g. LAPACK did not converge)."""


class RankDropWarning(UserWarning):
    """The end-to-end matrix lost rank: the tau = 0 loss has a kink there.

    The gradient returned at such a point is one element of the
    subdifferential, not a derivative. Use ``tau > 0`` or restart from a
    full-rank initialization.
    """
