"""Shared tolerances and seeded generators of test matrices."""

import numpy as np

# Relative accuracy of the eigendecomposition route on well-conditioned
# inputs (condition number below about 10, n up to about 10), measured
# against the norm of the result: a few hundred ulps in float64; float32
# results are compared with float64 results on the same (rounded) input,
# where about 5 ulps (6e-7) is typical.
TOL = {np.float64: 1e-12, np.float32: 5e-6}

# Agreement with bwfast.reference on positive definite inputs. The reference
# goes through Schur-based scipy.linalg.sqrtm and solve_sylvester, which are
# backward stable but lose a few more digits than the eigh route.
REF_RTOL = 1e-9

# scipy.linalg.sqrtm of a singular matrix is accurate to about sqrt(eps):
# its zero eigenvalues come back as rounding errors of size eps, and their
# square roots are of size 1e-8. Comparisons with the reference on singular
# inputs can only be this tight.
REF_SINGULAR_RTOL = 1e-6

# Central finite differences with step FD_STEP: truncation error h^2 and
# rounding error eps / h are both near 1e-10 relative; FD_RTOL leaves room.
FD_STEP = 1e-5
FD_RTOL = 1e-7


def random_orthogonal(rng, n):
    """Haar-distributed orthogonal n x n matrix."""
    Q, R = np.linalg.qr(rng.standard_normal((n, n)))
    return Q * np.sign(np.diag(R))


def random_psd(rng, n, rank=None, low=0.5, high=2.0):
    """Q diag(a) Q^T with ``rank`` eigenvalues uniform in [low, high], rest 0.

    The product is formed in floating point, so the result is symmetric and
    PSD only up to rounding: exactly what user input looks like.
    """
    rank = n if rank is None else rank
    a = np.zeros(n)
    a[:rank] = rng.uniform(low, high, size=rank)
    Q = random_orthogonal(rng, n)
    return (Q * a) @ Q.T


def random_sym(rng, n):
    """Symmetric matrix with standard normal entries above the diagonal."""
    X = rng.standard_normal((n, n))
    return (X + X.T) / 2


def relerr(x, y):
    """Frobenius (or absolute) error of ``x`` relative to the size of ``y``."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return np.linalg.norm(x - y) / max(np.linalg.norm(y), np.finfo(float).tiny)
