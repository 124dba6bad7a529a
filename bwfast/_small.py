"""Warm-started decompositions for the descent loop on small matrices.

In the paper's regime (n = 20) one LAPACK call costs more than the thirty
matrix products of a gradient step: a 20 x 20 ``gesdd`` takes about 40 us
and ``syevd`` about 27 us, against 0.3 us for a 20 x 20 GEMM. Consecutive
gradient steps change the end-to-end matrix little, so the factors of the
previous step are nearly those of the current one. The routines here take
them as a starting point and refine them by a quadratically convergent
iteration built from GEMMs: each sweep rotates every pair (i, j) of
columns at once by the angle that annihilates the (i, j) coupling of the
2 x 2 problem, as one sweep of Jacobi would, but applied as one update
Q <- Q (I + K + K^2 / 2), orthogonal to O(K^4), instead of 190 sequential
rotations. The update of a coupling e between values with gap g leaves
e^2 / g, so one or two sweeps reach rounding from a step's change. Pairs
of nearly equal values, whose angle is large and which simultaneous
rotations would not settle, are rotated one after another as in cyclic
Jacobi.

The result is accepted only against a checked residual: the factors
orthonormal to ``ORTH_TOL`` and the transformed matrix diagonal to
``OFF_TOL`` times its norm, the same backward error as LAPACK's. When the
residual is not reached within ``MAX_SWEEPS`` sweeps, or there is no
previous factor (marked by NaN), the caller's direct LAPACK route is used
and its factors seed the next step.

The warm-start state lives in one buffer per descent call, made by
``warm_buffer``: slot 0 (and 1 for the SVD) holds the factors, the other
slots are scratch, so a refined step allocates only a vector.

Numba's disk cache keys each function on its own file: after editing this
module, touch _kernels.py (or clear bwfast/__pycache__), or its cached
callers keep the old code compiled in.
"""

import numpy as np
from numba import njit

from ._config import JIT

# The descent loop refines its factors for end-to-end matrices up to this
# size (larger ones keep the direct route, where a decomposition no longer
# costs many GEMMs). Below JACOBI_MAX_N of _kernels, tau > 0 keeps its
# cold Jacobi solve, which is as cheap as a refinement there.
WARM_MAX_N = 64

# Sweeps before falling back to LAPACK: a step that has not converged in
# this many sweeps has moved the factors far (a sweep that does not shrink
# the largest coupling ends the attempt earlier).
MAX_SWEEPS = 8

# Acceptance, in units of n * eps: off-diagonal entries of the transformed
# matrix at most OFF_TOL n eps times its largest diagonal entry, and
# |Q^T Q - I| at most ORTH_TOL n eps entrywise. The rounding of the GEMMs
# that form them is about sqrt(n) eps, so both are reachable; LAPACK's own
# backward errors are of the same order.
OFF_TOL = 2.0
ORTH_TOL = 2.0

# For x = tan(2 phi) below this, tan(phi) is taken as x / 2, off by about
# x^3 / 8: far below the x^2 that the next sweep removes anyway.
_SMALL_ANGLE = 1e-4

# Pairs whose rotation has tan(2 phi) above this are close (nearly equal
# values, or a far start): rotating them all at once would not converge,
# so they are rotated one after another, as in cyclic Jacobi.
_CLOSE = 0.01

# After a sweep with angles above this, the truncated exponential's
# O(K^4) defect may exceed rounding: orthonormalize before the next sweep.
_RECHECK = 1e-4

# Scratch slots of the warm buffer (after the factors in 0 and 1): a
# product, the transformed matrix, two work matrices, the generators of U
# and V, and R0 W; then a flag, warm[_META, 0, 0] == 1 when the factors
# passed the orthogonality check and have not changed since (a step that
# converges without a rotation then needs no new check).
_T, _D, _Z, _W, _KU, _KV, _X, _META = 2, 3, 4, 5, 6, 7, 8, 9
SLOTS = 10


@njit(**JIT)
def warm_buffer(n, like):
    """A cold warm-start buffer for n x n factors of ``like``'s dtype."""
    return np.full((SLOTS, n, n), np.nan, like.dtype)


@njit(**JIT)
def active(warm):
    """False for the empty buffer of a network that keeps the direct route."""
    return warm.shape[1] > 0


@njit(**JIT)
def is_warm(warm):
    """True when slot 0 holds a factor from an earlier step."""
    return not np.isnan(warm[0, 0, 0])


@njit(**JIT)
def make_cold(warm):
    warm[0, 0, 0] = np.nan
    warm[_META, 0, 0] = 0.0


@njit(**JIT)
def _ratio(num, den):
    """num / den for tan(2 phi), +-inf when den is 0 (equal values: a
    rotation by pi / 4). Numba raises ZeroDivisionError on a float division
    by zero, where NumPy would give the infinity."""
    if den == 0.0:
        return np.inf if num >= 0.0 else -np.inf
    return num / den


@njit(**JIT)
def _half_tan(x):
    """tan(phi) for tan(2 phi) = x, |phi| <= pi / 4 (x may be +-inf)."""
    if abs(x) < _SMALL_ANGLE:
        return 0.5 * x
    c = 1.0 / x  # cot(2 phi)
    t = 1.0 / (abs(c) + np.sqrt(c * c + 1.0))
    return t if x > 0.0 else -t


@njit(**JIT)
def _rotate(P, K, big, left, Z, Z2, T):
    """P <- P E, or P <- E^T P if ``left``, for E = I + K + K^2 / 2 and
    skew K with entries at most ``big``.

    E is exp(K) to second order and orthogonal to O(K^4); the K^2 term is
    left out where it is below rounding. A defect above rounding is caught
    by the orthogonality check and removed there. Products are arranged
    as A B or A^T B of row-major arrays: OpenBLAS's small-matrix path is
    about twice as slow for A B^T.
    """
    n = P.shape[0]
    sign = -1.0 if left else 1.0  # E^T = I - K + K^2 / 2
    if big * big > np.finfo(P.dtype).eps:
        np.dot(K, K, Z2)
        for i in range(n):
            for j in range(n):
                Z[i, j] = sign * K[i, j] + 0.5 * Z2[i, j]
            Z[i, i] += 1.0
    else:
        for i in range(n):
            for j in range(n):
                Z[i, j] = sign * K[i, j]
            Z[i, i] += 1.0
    if left:
        np.dot(Z, P, T)
    else:
        np.dot(P, Z, T)
    P[:, :] = T


@njit(**JIT)
def _orthonormal(P, C, Z, T):
    """Check P^T P = I to ORTH_TOL n eps; if it fails, apply one
    Newton-Schulz step P <- P (3 I - P^T P) / 2 (squaring the defect).

    For a square P the check also holds for P P^T, so the same test serves
    a factor stored transposed. Returns the defect before the step; the
    caller re-checks after one.
    """
    n = P.shape[0]
    eps = np.finfo(P.dtype).eps
    np.dot(P.T, P, C)
    defect = 0.0
    for i in range(n):
        for j in range(n):
            d = np.float64(C[i, j]) - (1.0 if i == j else 0.0)
            defect = max(defect, abs(d))
    if defect > ORTH_TOL * n * eps:
        for i in range(n):
            for j in range(n):
                Z[i, j] = -0.5 * C[i, j]
            Z[i, i] += 1.5
        np.dot(P, Z, T)
        P[:, :] = T
    return defect


@njit(**JIT)
def _rotation(x):
    """(c, s) of the rotation by phi with tan(2 phi) = x, |phi| <= pi / 4."""
    t = _half_tan(x)
    c = 1.0 / np.sqrt(t * t + 1.0)
    return c, t * c


@njit(**JIT)
def _turn_columns(A, p, q, c, s):
    """A <- A J for the rotation J = [[c, s], [-s, c]] in columns p, q
    (on A.T: A <- J^T A in rows p, q)."""
    for k in range(A.shape[0]):
        ap = np.float64(A[k, p])
        aq = np.float64(A[k, q])
        A[k, p] = c * ap - s * aq
        A[k, q] = s * ap + c * aq


@njit(**JIT)
def _close_pairs(D, tol, L, R, svd):
    """One cyclic Jacobi pass over the close pairs of D (the pairs whose
    rotation angle exceeds what a simultaneous update resolves): each is
    rotated in turn, D <- J^T D J, L <- L J and, for the ``svd``,
    R <- J^T R (R is V^T; ignored otherwise). Returns the number of
    rotations.

    The angle comes from the symmetric part of D, so for the SVD it turns
    U and V alike and leaves the polar factor U V^T as it is; it only
    resolves singular vectors of close singular values.
    """
    n = D.shape[0]
    count = 0
    for p in range(n - 1):
        for q in range(p + 1, n):
            e = 0.5 * (np.float64(D[p, q]) + D[q, p])
            if abs(e) <= tol:
                continue
            x = _ratio(2.0 * e, np.float64(D[q, q]) - D[p, p])
            if abs(x) <= _CLOSE:
                continue
            c, s = _rotation(x)
            _turn_columns(D, p, q, c, s)
            _turn_columns(D.T, p, q, c, s)
            _turn_columns(L, p, q, c, s)
            if svd:
                _turn_columns(R.T, p, q, c, s)
            count += 1
    return count


@njit(**JIT)
def refine_eigh(M, warm):
    """Refine Q = warm[0] to the eigenvectors of symmetric M.

    Returns True when Q is orthonormal and Q^T M Q (in warm[_D]) is
    diagonal to OFF_TOL n eps max |d_ii|; the eigenvalues are then its
    diagonal. False leaves Q unusable (the caller falls back).
    """
    n = M.shape[0]
    eps = np.finfo(M.dtype).eps
    Q = warm[0]
    T = warm[_T]
    D = warm[_D]
    Z = warm[_Z]
    W = warm[_W]
    K = warm[_KU]
    checked = warm[_META, 0, 0] == 1.0
    warm[_META, 0, 0] = 0.0
    prev = np.inf
    for _ in range(MAX_SWEEPS):
        np.dot(M, Q, T)
        np.dot(Q.T, T, D)
        scale = 0.0
        for i in range(n):
            scale = max(scale, abs(np.float64(D[i, i])))
        tol = OFF_TOL * n * eps * scale
        off = 0.0
        for i in range(n):
            for j in range(i):
                off = max(off, abs(0.5 * (np.float64(D[i, j]) + D[j, i])))
        if off <= tol:
            # accepted only for an orthonormal Q; a repaired one is
            # re-evaluated by the next sweep
            if checked or _orthonormal(Q, W, Z, T) <= ORTH_TOL * n * eps:
                warm[_META, 0, 0] = 1.0
                return True
            continue
        if not off < prev:  # a sweep that does not shrink the coupling
            return False
        prev = off
        checked = False  # Q turns below
        # skew generator: K_ij = tan(phi), tan(2 phi) = 2 e / (d_j - d_i),
        # for the pairs a simultaneous update resolves
        big = 0.0
        close = False
        for i in range(n):
            K[i, i] = 0.0
            for j in range(i + 1, n):
                e = 0.5 * (np.float64(D[i, j]) + D[j, i])
                t = 0.0
                if abs(e) > tol:
                    x = _ratio(2.0 * e, np.float64(D[j, j]) - D[i, i])
                    if abs(x) <= _CLOSE:
                        t = _half_tan(x)
                    else:
                        close = True
                K[i, j] = t
                K[j, i] = -t
                big = max(big, abs(t))
        if big > 0.0:
            _rotate(Q, K, big, False, Z, W, T)
            if big > _RECHECK:
                _orthonormal(Q, W, Z, T)
        if close:
            if big > 0.0:
                np.dot(M, Q, T)
                np.dot(Q.T, T, D)
            _close_pairs(D, tol, Q, Q, False)
    return False


@njit(**JIT)
def refine_svd(X, rank_rtol, warm):
    """Refine warm[0] = U and warm[1] = V^T to the SVD of the square X.

    Returns (status, smin, smax): status 1 when U and V are orthonormal
    and U^T X V is diagonal to OFF_TOL n eps s_max with positive diagonal,
    the singular values; 0 when not converged; -1 when some
    s_i <= rank_rtol s_max (a rank drop, which the direct route reports).
    For a pair (i, j) the coupling splits into a symmetric part p, rotated
    by tan(2 phi) = 2 p / (s_j - s_i), and a skew part q, rotated by
    tan(2 psi) = 2 q / (s_i + s_j); U turns by phi + psi and V by
    phi - psi. The polar factor U V^T moves by psi only, whose denominator
    has no gap; close singular values (a large phi) are separated by
    sequential rotations that leave U V^T unchanged.
    """
    n = X.shape[0]
    eps = np.finfo(X.dtype).eps
    U = warm[0]
    Vt = warm[1]
    T = warm[_T]
    Dt = warm[_D]  # (U^T X V)^T = V^T (X^T U): two fast products
    Z = warm[_Z]
    W = warm[_W]
    KU = warm[_KU]
    KV = warm[_KV]
    smin = 0.0
    smax = 0.0
    checked = warm[_META, 0, 0] == 1.0
    warm[_META, 0, 0] = 0.0
    prev = np.inf
    for _ in range(MAX_SWEEPS):
        np.dot(X.T, U, T)
        np.dot(Vt, T, Dt)
        smax = -np.inf
        smin = np.inf
        for i in range(n):
            s = np.float64(Dt[i, i])
            smax = max(smax, s)
            smin = min(smin, s)
        if not smin > rank_rtol * smax:
            return -1, smin, smax
        tol = OFF_TOL * n * eps * smax
        off = 0.0
        for i in range(n):
            for j in range(n):
                if i != j:
                    off = max(off, abs(np.float64(Dt[i, j])))
        if off <= tol:
            if checked:
                warm[_META, 0, 0] = 1.0
                return 1, smin, smax
            du = _orthonormal(U, W, Z, T)
            dv = _orthonormal(Vt, W, Z, T)
            if max(du, dv) <= ORTH_TOL * n * eps:
                warm[_META, 0, 0] = 1.0
                return 1, smin, smax
            continue
        if not off < prev:
            return 0, smin, smax
        prev = off
        checked = False  # U and V turn below
        big = 0.0
        close = False
        for i in range(n):
            KU[i, i] = 0.0
            KV[i, i] = 0.0
            si = np.float64(Dt[i, i])
            for j in range(i + 1, n):
                sj = np.float64(Dt[j, j])
                dij = np.float64(Dt[j, i])  # D_ij
                dji = np.float64(Dt[i, j])
                p = 0.5 * (dij + dji)
                q = 0.5 * (dij - dji)
                phi = 0.0
                psi = 0.0
                if abs(p) > 0.5 * tol:
                    x = _ratio(2.0 * p, sj - si)
                    if abs(x) <= _CLOSE:
                        phi = _half_tan(x)
                    else:
                        close = True
                if abs(q) > 0.5 * tol:
                    psi = _half_tan(_ratio(2.0 * q, si + sj))
                a = phi + psi
                b = phi - psi
                KU[i, j] = a
                KU[j, i] = -a
                KV[i, j] = b
                KV[j, i] = -b
                big = max(big, abs(a), abs(b))
        if big > 0.0:
            _rotate(U, KU, big, False, Z, W, T)
            _rotate(Vt, KV, big, True, Z, W, T)
            if big > _RECHECK:
                _orthonormal(U, W, Z, T)
                _orthonormal(Vt, W, Z, T)
        if close:
            if big > 0.0:
                np.dot(X.T, U, T)
                np.dot(Vt, T, Dt)
            _close_pairs(Dt, 0.5 * tol, U, Vt, True)
    return 0, smin, smax


# --------------------------------------------------------------------------
# the two uses in the descent loop


@njit(**JIT)
def warm_eigh(M, warm):
    """(w, Q) for symmetric M, refined from the previous step's Q when
    there is one, else (or when the refinement is not accepted) by LAPACK,
    whose Q then seeds the next step. Q is returned column-major, laid out
    like LAPACK's eigenvectors (a view of scratch slot _W)."""
    n = M.shape[0]
    Q = warm[0]
    w = np.empty(n, M.dtype)
    if is_warm(warm) and refine_eigh(M, warm):
        D = warm[_D]
        for i in range(n):
            w[i] = D[i, i]
    else:
        wl, Ql = np.linalg.eigh(M)
        w[:] = wl
        Q[:, :] = Ql
        warm[_META, 0, 0] = 0.0  # LAPACK's Q: checked by the next step
    Qf = warm[_W].T
    Qf[:, :] = Q
    return w, Qf


@njit(**JIT)
def polar_grad(W, R0, rank_rtol, G, warm):
    """tau = 0 loss and gradient for square full-rank X = R0 W, refined
    from the previous step's SVD factors.

    Returns (accepted, loss, s_min / s_max). When accepted, G = 2 (W - R0 Q)
    with the polar factor Q = U V^T, and the loss is ||W - R0 Q||^2: the
    second term ||(I - U U^T) R0||^2 of the split form is zero at full rank
    (the direct route computes it as rounding, about (n eps ||R0||)^2).
    When not, G is untouched and the caller takes the direct route, which
    seeds warm (``seed_svd``).
    """
    if not is_warm(warm):
        return False, 0.0, 0.0
    X = warm[_X]
    np.dot(R0, W, X)
    status, smin, smax = refine_svd(X, rank_rtol, warm)
    if status != 1:
        return False, 0.0, 0.0
    Q = warm[_T]
    P = warm[_Z]
    np.dot(warm[0], warm[1], Q)  # U V^T, V stored transposed
    np.dot(R0, Q, P)
    loss = 0.0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            d = W[i, j] - P[i, j]
            G[i, j] = 2 * d
            loss += np.float64(d) * np.float64(d)
    return True, loss, smin / smax


@njit(**JIT)
def singular_values(warm):
    """After an accepted refine_svd: the singular values, the diagonal of
    U^T X V, in the order of the columns of U = warm[0] (which the
    refinement keeps from its seed; callers that need them sorted sort
    them)."""
    D = warm[_D]
    n = D.shape[0]
    s = np.empty(n, D.dtype)
    for i in range(n):
        s[i] = D[i, i]
    return s


@njit(**JIT)
def seed_svd(warm, U, Vt, full):
    """Store LAPACK's factors for the next step (``full``: no rank drop),
    else mark the buffer cold."""
    if not full:
        make_cold(warm)
        return
    warm[0][:, :] = U
    warm[1][:, :] = Vt
    warm[_META, 0, 0] = 0.0
