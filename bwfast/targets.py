"""Synthetic targets with controlled spectra, for sweeps over the spectrum.

Each family fixes the eigenvalues from a few numbers, and a seeded Haar
rotation fixes the eigenvectors, so that one target is one line of a sweep
file and is rebuilt bit for bit on any worker.
"""

import numpy as np

from ._validate import scalar

__all__ = ["FAMILIES", "synthetic_spectrum", "synthetic_target"]

#: Names of the spectrum families, see :func:`synthetic_spectrum`.
FAMILIES = ("power", "harmonic", "geometric")


def synthetic_spectrum(family, n, *, lambda_max=1.0, lambda_min=0.0, decay=1.0):
    """Eigenvalues of a synthetic target, descending.

    With i = 1 .. n the shapes are

    - ``"power"``: lambda_max * i**(-decay),
    - ``"harmonic"``: lambda_max / (1 + decay * (i - 1)) (the harmonic
      sequence lambda_max / i for decay = 1),
    - ``"geometric"``: lambda_max * exp(-decay * (i - 1)),

    and every eigenvalue is then raised to the floor ``lambda_min``:
    lambda_i = max(shape_i, lambda_min). The largest eigenvalue is exactly
    ``lambda_max`` and the smallest is max(shape_n, lambda_min), exactly
    ``lambda_min`` whenever the floor is above the shape's own tail.

    Parameters
    ----------
    family : {"power", "harmonic", "geometric"}
    n : int
        Dimension, >= 1.
    lambda_max : float, default 1
        Largest eigenvalue, > 0.
    lambda_min : float, default 0
        Floor of the spectrum, 0 <= lambda_min <= lambda_max.
    decay : float, default 1
        Decay parameter of the shape, >= 0 (0 gives lambda_max for all i).

    Returns
    -------
    ndarray of float64, shape (n,)

    Examples
    --------
    >>> from bwfast.targets import synthetic_spectrum
    >>> synthetic_spectrum("power", 4, decay=1.0, lambda_min=0.3).tolist()
    [1.0, 0.5, 0.3333333333333333, 0.3]
    """
    if family not in FAMILIES:
        raise ValueError(
            f"`family` must be one of {', '.join(FAMILIES)}; got {family!r}"
        )
    n = scalar(n, "n", low=1, integer=True)
    lambda_max = scalar(lambda_max, "lambda_max", low=0.0, strict=True)
    lambda_min = scalar(lambda_min, "lambda_min", low=0.0)
    decay = scalar(decay, "decay", low=0.0)
    if lambda_min > lambda_max:
        raise ValueError(
            f"`lambda_min` must be <= lambda_max = {lambda_max!r}; "
            f"got {lambda_min!r}"
        )
    i = np.arange(1, n + 1, dtype=np.float64)
    with np.errstate(under="ignore"):
        if family == "power":
            shape = lambda_max * i ** (-decay)
        elif family == "harmonic":
            shape = lambda_max / (1.0 + decay * (i - 1.0))
        else:
            shape = lambda_max * np.exp(-decay * (i - 1.0))
    shape[0] = lambda_max  # exact, whatever the rounding of the shape
    return np.maximum(shape, lambda_min)


def synthetic_target(family, n, *, lambda_max=1.0, lambda_min=0.0, decay=1.0,
                     seed=0, rotate=True):
    """A target Q diag(lambda) Q^T with a spectrum from :func:`synthetic_spectrum`.

    Parameters
    ----------
    family, n, lambda_max, lambda_min, decay
        As in :func:`synthetic_spectrum`.
    seed : int, default 0
        Seed of the rotation Q, Haar distributed (QR of a standard normal
        matrix with the signs of R's diagonal taken out).
    rotate : bool, default True
        False gives the diagonal matrix diag(lambda) itself.

    Returns
    -------
    Target
        Its eigenvalues equal the requested spectrum to rounding (about
        n * eps * lambda_max); eigenvalues below the Target cutoff
        n * eps * lambda_max count as zero. The same arguments give the same
        matrix bit for bit on the same platform.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast.targets import synthetic_target
    >>> t = synthetic_target("harmonic", 5, lambda_min=0.25, seed=1)
    >>> bool(np.allclose(t.eigvals, [1, 1/2, 1/3, 1/4, 1/4], rtol=1e-13))
    True
    """
    from .network import Target

    lam = synthetic_spectrum(family, n, lambda_max=lambda_max,
                             lambda_min=lambda_min, decay=decay)
    if not isinstance(rotate, (bool, np.bool_)):
        raise TypeError(f"`rotate` must be True or False; got {rotate!r}")
    if not rotate:
        return Target(np.diag(lam))
    seed = scalar(seed, "seed", low=0, integer=True)
    rng = np.random.default_rng(seed)
    Q, R = np.linalg.qr(rng.standard_normal((lam.size, lam.size)))
    Q = Q * np.where(np.diag(R) < 0, -1.0, 1.0)
    cov = (Q * lam) @ Q.T
    return Target(0.5 * (cov + cov.T))
