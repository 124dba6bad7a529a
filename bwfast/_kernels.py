"""Compiled kernels: matrix functions, distances, network loss and descent.

Everything here trusts its inputs (C-contiguous float32 or float64 arrays of
consistent shapes, finite values); the public wrappers validate and cast.
Scalars are combined with arrays in explicit loops so that float32 inputs
stay float32: in Numba, a Python float times a float32 array is float64.
"""

import numpy as np
from numba import njit, prange

from ._config import JIT

# Status codes returned by the descent kernel (see bwfast.train.Status).
RUNNING = 0
CONVERGED = 1
STEP_LIMIT = 2
DIVERGED = 3
RANK_DROPPED = 4


# --------------------------------------------------------------------------
# small helpers


@njit(**JIT)
def _sym_copy(A):
    """Return (A + A^T) / 2 as a new C-contiguous array."""
    n = A.shape[0]
    S = np.empty((n, n), A.dtype)
    for i in range(n):
        S[i, i] = A[i, i]
        for j in range(i):
            v = 0.5 * (A[i, j] + A[j, i])
            S[i, j] = v
            S[j, i] = v
    return S


@njit(**JIT)
def _symmetrize_inplace(S):
    n = S.shape[0]
    for i in range(n):
        for j in range(i):
            v = 0.5 * (S[i, j] + S[j, i])
            S[i, j] = v
            S[j, i] = v


@njit(**JIT)
def _sumsq(X):
    """Sum of squares of a 2-D array, accumulated in float64."""
    acc = 0.0
    for i in range(X.shape[0]):
        for j in range(X.shape[1]):
            v = float(X[i, j])
            acc += v * v
    return acc


@njit(**JIT)
def _trace(A):
    acc = 0.0
    for i in range(A.shape[0]):
        acc += float(A[i, i])
    return acc


@njit(**JIT)
def _eigh_psd(A):
    """Eigendecomposition of sym(A) with eigenvalues at or below the cutoff
    n * eps * max(a) set to zero.

    Returns (a, Q, wmin, wmax): clamped eigenvalues (ascending), eigenvectors
    (columns), and the raw smallest and largest eigenvalues, which the
    wrappers use to reject matrices that are clearly not PSD.
    """
    n = A.shape[0]
    w, Q = np.linalg.eigh(_sym_copy(A))
    wmax = w[n - 1]
    cutoff = n * np.finfo(A.dtype).eps * max(wmax, 0.0)
    a = np.empty(n, A.dtype)
    for i in range(n):
        a[i] = w[i] if w[i] > cutoff else 0.0
    return a, Q, w[0], wmax


@njit(**JIT)
def _from_eig(Q, f):
    """Q diag(f) Q^T, symmetrized exactly."""
    S = (Q * f) @ Q.T
    _symmetrize_inplace(S)
    return S


@njit(**JIT)
def _root_values(a, inverse):
    """sqrt(a), or 1/sqrt(a) on the range (0 where a is zero)."""
    r = np.empty_like(a)
    for i in range(a.shape[0]):
        if a[i] > 0.0:
            r[i] = 1.0 / np.sqrt(a[i]) if inverse else np.sqrt(a[i])
        else:
            r[i] = 0.0
    return r


# --------------------------------------------------------------------------
# single-matrix kernels (also exported through bwfast.kernels)


@njit(**JIT)
def sqrtm_psd_1(A):
    """PSD square root of one symmetric matrix."""
    a, Q, _, _ = _eigh_psd(A)
    return _from_eig(Q, _root_values(a, False))


@njit(**JIT)
def inv_sqrtm_psd_1(A):
    """Inverse square root on the range (pseudo-inverse root) of one matrix."""
    a, Q, _, _ = _eigh_psd(A)
    return _from_eig(Q, _root_values(a, True))


@njit(**JIT)
def _frechet_core(A, E):
    """X with A^{1/2} X + X A^{1/2} = E, by the Daleckii-Krein formula.

    In the eigenbasis of A the solution is E~_ij / (s_i + s_j); there is no
    1/(a_i - a_j) divided difference, so repeated eigenvalues are harmless.
    Entries whose denominator is zero (both eigenvalues cut to zero) are
    set to zero: that is the minimum-norm solution on the null space.
    """
    n = A.shape[0]
    a, Q, lo, hi = _eigh_psd(A)
    s = _root_values(a, False)
    Et = Q.T @ (E @ Q)
    for i in range(n):
        for j in range(n):
            d = s[i] + s[j]
            Et[i, j] = Et[i, j] / d if d > 0.0 else 0.0
    return Q @ (Et @ Q.T), lo, hi


@njit(**JIT)
def sqrtm_frechet_1(A, E):
    """Frechet derivative of the PSD square root at A in direction E."""
    return _frechet_core(A, E)[0]


@njit(**JIT)
def _bw_squared_core(A, B):
    """Squared Bures-Wasserstein distance in the Procrustes form.

    BW^2 = min over orthogonal Q of ||A^{1/2} - B^{1/2} Q||_F^2. With
    A = QA diag(a) QA^T, B = QB diag(b) QB^T and the SVD
    diag(sqrt a) QA^T QB diag(sqrt b) = U S V^T, orthogonal invariance of
    the norm gives BW^2 = ||QA diag(sqrt a) U - QB diag(sqrt b) V||_F^2.
    The difference is formed before squaring, so nearly equal inputs keep
    their relative accuracy (the trace formula
    tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2} cancels there), it is a
    sum of squares (never negative), and it is exactly 0 when A and B are
    the same array. An SVD of the product is used rather than a square
    root of A^{1/2} B A^{1/2}, whose rounding-level eigenvalues would add a
    spurious sqrt(eps) term. Working in the eigenbases saves the GEMMs that
    would form A^{1/2} and B^{1/2}. Also returns the raw eigenvalue ranges.
    """
    n = A.shape[0]
    a, QA, alo, ahi = _eigh_psd(A)
    b, QB, blo, bhi = _eigh_psd(B)
    sa = _root_values(a, False)
    sb = _root_values(b, False)
    FA = QA * sa
    FB = QB * sb
    K = QA.T @ QB
    for i in range(n):
        for j in range(n):
            K[i, j] = sa[i] * K[i, j] * sb[j]
    U, _, Vt = np.linalg.svd(K)
    D = FA @ np.ascontiguousarray(U) - FB @ np.ascontiguousarray(Vt.T)
    return _sumsq(D), alo, ahi, blo, bhi


@njit(**JIT)
def bw_squared_1(A, B):
    """Squared Bures-Wasserstein distance between two PSD matrices."""
    return _bw_squared_core(A, B)[0]


@njit(**JIT)
def _ot_map_core(A, B):
    """Symmetric linear OT map T from N(0, A) to N(0, B), T A T = B.

    T = A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}, evaluated in the
    eigenbasis of A; for singular A the inverse root acts on the range of A
    (the map is defined on the support of N(0, A) only). Also returns the
    raw eigenvalue ranges of A and of A^{1/2} B A^{1/2} (PSD iff B is, on
    the range of A).
    """
    n = A.shape[0]
    a, Q, alo, ahi = _eigh_psd(A)
    s = _root_values(a, False)
    si = _root_values(a, True)
    C = Q.T @ (B @ Q)
    for i in range(n):
        for j in range(n):
            C[i, j] = s[i] * C[i, j] * s[j]
    c, QC, blo, bhi = _eigh_psd(C)
    R = _from_eig(QC, _root_values(c, False))
    for i in range(n):
        for j in range(n):
            R[i, j] = si[i] * R[i, j] * si[j]
    T = Q @ (R @ Q.T)
    _symmetrize_inplace(T)
    return T, alo, ahi, blo, bhi


@njit(**JIT)
def ot_map_1(A, B):
    """Symmetric linear OT map from N(0, A) to N(0, B)."""
    return _ot_map_core(A, B)[0]


# --------------------------------------------------------------------------
# batched kernels over a (m, n, n) stack; outputs preallocated by the caller.
# Each has a serial and a parallel build of the same body: prange splits
# only the batch, the per-matrix work stays serial, and the caller holds
# BLAS to one thread around the parallel build.


def _sqrtm_psd_batch(A, inverse, out, wmin, wmax):
    for b in prange(A.shape[0]):
        a, Q, lo, hi = _eigh_psd(A[b])
        out[b] = _from_eig(Q, _root_values(a, inverse))
        wmin[b] = lo
        wmax[b] = hi


def _sqrtm_frechet_batch(A, E, out, wmin, wmax):
    for b in prange(A.shape[0]):
        X, lo, hi = _frechet_core(A[b], E[b])
        out[b] = X
        wmin[b] = lo
        wmax[b] = hi


def _bw_squared_batch(A, B, out, wrange):
    """wrange[b] = (min, max eigenvalue of A[b], min, max of B[b])."""
    for b in prange(A.shape[0]):
        d, alo, ahi, blo, bhi = _bw_squared_core(A[b], B[b])
        out[b] = d
        wrange[b, 0] = alo
        wrange[b, 1] = ahi
        wrange[b, 2] = blo
        wrange[b, 3] = bhi


def _ot_map_batch(A, B, out, wrange):
    for b in prange(A.shape[0]):
        T, alo, ahi, blo, bhi = _ot_map_core(A[b], B[b])
        out[b] = T
        wrange[b, 0] = alo
        wrange[b, 1] = ahi
        wrange[b, 2] = blo
        wrange[b, 3] = bhi


sqrtm_psd_batch = njit(**JIT)(_sqrtm_psd_batch)
sqrtm_frechet_batch = njit(**JIT)(_sqrtm_frechet_batch)
bw_squared_batch = njit(**JIT)(_bw_squared_batch)
ot_map_batch = njit(**JIT)(_ot_map_batch)

sqrtm_psd_batch_par = njit(parallel=True, **JIT)(_sqrtm_psd_batch)
sqrtm_frechet_batch_par = njit(parallel=True, **JIT)(_sqrtm_frechet_batch)
bw_squared_batch_par = njit(parallel=True, **JIT)(_bw_squared_batch)
ot_map_batch_par = njit(parallel=True, **JIT)(_ot_map_batch)

BATCH = {
    "sqrtm_psd": (sqrtm_psd_batch, sqrtm_psd_batch_par),
    "sqrtm_frechet": (sqrtm_frechet_batch, sqrtm_frechet_batch_par),
    "bw_squared": (bw_squared_batch, bw_squared_batch_par),
    "ot_map": (ot_map_batch, ot_map_batch_par),
}


# --------------------------------------------------------------------------
# deep linear network: flat parameters, layer j (1-based) of shape
# (dims[j], dims[j-1]) stored row-major at offsets[j-1]:offsets[j]


@njit(**JIT)
def layer_offsets(dims):
    N = dims.shape[0] - 1
    off = np.zeros(N + 1, np.int64)
    for j in range(N):
        off[j + 1] = off[j] + dims[j + 1] * dims[j]
    return off


@njit(**JIT)
def prefix_size(dims):
    """Floats needed for the prefix products W_j ... W_1, j = 2 .. N."""
    total = 0
    for j in range(2, dims.shape[0]):
        total += dims[j] * dims[0]
    return total


@njit(**JIT)
def _view(buf, start, rows, cols):
    return buf[start:start + rows * cols].reshape((rows, cols))


@njit(**JIT)
def _thin_svd_product(R0, A, B):
    """Thin SVD of R0 A B through its k-dimensional factors.

    A is n x k, B is k x d0. With R0 A = Q1 R1 and B^T = Q2 R2, the product
    is Q1 (R1 R2^T) Q2^T, so only a k x k SVD is needed: O(n^2 k) in all,
    against an n x d0 SVD of the product, which is slower and, for a
    rank-k product, spends its time on the zero singular values.
    """
    Q1, R1 = np.linalg.qr(R0 @ A)
    Q2, R2 = np.linalg.qr(np.ascontiguousarray(B.T))
    Q1 = np.ascontiguousarray(Q1)
    Q2t = np.ascontiguousarray(Q2.T)
    C = np.ascontiguousarray(R1) @ np.ascontiguousarray(R2.T)
    Uc, s, Vct = np.linalg.svd(C)
    return Q1 @ np.ascontiguousarray(Uc), s, np.ascontiguousarray(Vct) @ Q2t


@njit(**JIT)
def e2e_grad_tau0(W, R0, k, rank_rtol, G, A, B, factored):
    """Loss and end-to-end gradient at tau = 0 through the factor route.

    With the thin SVD R0 W = U S V^T cut to its k leading triplets,
    G = 2 (W - R0 U V^T) and the loss is taken in the split form
    ||W - R0 U V^T||^2 + ||(I - U U^T) R0||^2: two sums of squares, so it
    is never negative and has no cancellation near a critical point.
    If factored, W = A B with A n x k and B k x d0, and the SVD is taken
    through the factors (see _thin_svd_product). Triplets with
    s_i <= rank_rtol * s_1 count as zero (the minimum-norm subgradient).
    Returns (loss, s_k / s_1); a ratio at or below rank_rtol means
    rank(R0 W) < k, where the loss has a kink.
    """
    n = W.shape[0]
    if factored:
        U, s, Vt = _thin_svd_product(R0, A, B)
    else:
        U, s, Vt = np.linalg.svd(R0 @ W, full_matrices=False)
    kk = min(k, s.shape[0])
    thr = rank_rtol * s[0]
    m = 0
    while m < kk and s[m] > thr:
        m += 1
    Um = np.ascontiguousarray(U[:, :m])
    P = (R0 @ Um) @ np.ascontiguousarray(Vt[:m, :])
    loss = 0.0
    for i in range(n):
        for j in range(W.shape[1]):
            d = W[i, j] - P[i, j]
            G[i, j] = 2 * d
            loss += float(d) * float(d)
    Y = R0 - Um @ (Um.T @ R0)
    loss += _sumsq(Y)
    ratio = s[kk - 1] / s[0] if s[0] > 0.0 else 0.0
    return loss, ratio


@njit(**JIT)
def e2e_grad_tau(W, R0, S0, tr0, tau, G):
    """Loss and end-to-end gradient for tau > 0 through one eigendecomposition.

    M = R0 (W W^T + tau I) R0 = X X^T + tau S0 with X = R0 W, and
    G = 2 (W - R0 M^{-1/2} X), the inverse root taken on the range of M.
    M^{-1/2} is applied to the n x d0 matrix X rather than formed, so no
    n x n x n product is needed beyond the eigendecomposition.
    """
    n = W.shape[0]
    X = R0 @ W
    M = X @ X.T
    for i in range(n):
        for j in range(n):
            M[i, j] += tau * S0[i, j]
    a, Q, _, _ = _eigh_psd(M)
    r = _root_values(a, False)
    ri = _root_values(a, True)
    loss = _sumsq(W) + n * tau + tr0
    for i in range(n):
        loss -= 2.0 * float(r[i])
    Y = Q.T @ X
    for i in range(n):
        for j in range(Y.shape[1]):
            Y[i, j] *= ri[i]
    P = R0 @ (Q @ Y)
    for i in range(n):
        for j in range(W.shape[1]):
            G[i, j] = 2 * (W[i, j] - P[i, j])
    return max(loss, 0.0), 1.0


@njit(**JIT)
def network_loss_grad(theta, dims, R0, S0, tr0, tau, k, rank_rtol, grad, pbuf, G):
    """Loss and the gradient of every layer, written into grad.

    Prefix products P_j = W_j ... W_1 are formed once (in pbuf), the
    end-to-end gradient G = dL/dW once, and the layer gradients
    dL/dW_j = B_j P_{j-1}^T with B_N = G, B_{j-1} = W_j^T B_j, so the cost
    is linear in depth and no product of two hidden-width matrices is formed.
    """
    N = dims.shape[0] - 1
    d0 = dims[0]
    off = layer_offsets(dims)

    # forward: prefix products
    prev = _view(theta, off[0], dims[1], d0)
    pos = 0
    for j in range(2, N + 1):
        Wj = _view(theta, off[j - 1], dims[j], dims[j - 1])
        Pj = _view(pbuf, pos, dims[j], d0)
        np.dot(Wj, prev, Pj)
        prev = Pj
        pos += dims[j] * d0

    # end-to-end loss and gradient
    if tau > 0.0:
        loss, ratio = e2e_grad_tau(prev, R0, S0, tr0, tau, G)
    else:
        # W = A B through the narrowest layer b when it is narrower than
        # both ends: A = W_N ... W_{b+1}, B = W_b ... W_1 = P_b
        b = 0
        for j in range(1, N + 1):
            if dims[j] < dims[b]:
                b = j
        factored = dims[b] < min(d0, dims[N])
        if factored:
            A = np.ascontiguousarray(_view(theta, off[N - 1], dims[N], dims[N - 1]))
            for j in range(N - 1, b, -1):
                A = A @ _view(theta, off[j - 1], dims[j], dims[j - 1])
            if b == 0:
                Bf = np.eye(d0, dtype=theta.dtype)
            elif b == 1:
                Bf = np.ascontiguousarray(_view(theta, off[0], dims[1], d0))
            else:
                start = 0
                for i in range(2, b):
                    start += dims[i] * d0
                Bf = np.ascontiguousarray(_view(pbuf, start, dims[b], d0))
        else:
            A = np.empty((0, 0), theta.dtype)
            Bf = np.empty((0, 0), theta.dtype)
        loss, ratio = e2e_grad_tau0(prev, R0, k, rank_rtol, G, A, Bf, factored)

    # backward: B_j = (W_N ... W_{j+1})^T G
    B = G
    for j in range(N, 0, -1):
        gj = _view(grad, off[j - 1], dims[j], dims[j - 1])
        if j == 1:
            gj[:, :] = B
        else:
            start = 0
            for i in range(2, j - 1):
                start += dims[i] * d0
            if j == 2:
                Pprev = _view(theta, off[0], dims[1], d0)
            else:
                Pprev = _view(pbuf, start, dims[j - 1], d0)
            np.dot(B, Pprev.T, gj)
            Wj = _view(theta, off[j - 1], dims[j], dims[j - 1])
            B = Wj.T @ B
    return loss, ratio


@njit(**JIT)
def optimality_measure(theta, grad, dims):
    """max_j ||dL/dW_j||_F ||W_j||_F: the first-order change of the loss
    under a relative perturbation of one layer; scale-free once divided by
    tr S0. Returns -1 if the gradient is not finite."""
    N = dims.shape[0] - 1
    off = layer_offsets(dims)
    best = 0.0
    for j in range(N):
        gs = 0.0
        ws = 0.0
        for i in range(off[j], off[j + 1]):
            g = float(grad[i])
            w = float(theta[i])
            gs += g * g
            ws += w * w
        if not np.isfinite(gs):
            return -1.0
        best = max(best, np.sqrt(gs) * np.sqrt(ws))
    return best


@njit(**JIT)
def descend(theta, dims, R0, S0, tr0, tau, k, rank_rtol, lr, start, stop, limit,
            tol, div_limit, hist, every, grad, pbuf, G):
    """Full-batch gradient descent in place on theta, from step start.

    At each step the loss and gradient are evaluated at the current weights
    and the loss is stored in hist[step // every] when step is a multiple of
    every. The run stops, without updating, on convergence
    (measure <= tol * tr0), on a non-finite or runaway loss or gradient (so
    the weights stay at the last finite point), on a rank drop at tau = 0,
    or at step == limit; otherwise the weights are updated. The call returns
    RUNNING once step reaches stop < limit, so that the caller can report
    progress. Returns (step, status, loss, measure), step being the number
    of updates applied so far.
    """
    step = start
    while True:
        loss, ratio = network_loss_grad(
            theta, dims, R0, S0, tr0, tau, k, rank_rtol, grad, pbuf, G
        )
        if step % every == 0:
            hist[step // every] = loss
        if not np.isfinite(loss) or loss > div_limit:
            return step, DIVERGED, loss, np.nan
        meas = optimality_measure(theta, grad, dims)
        if meas < 0.0:
            return step, DIVERGED, loss, np.nan
        if tau <= 0.0 and ratio <= rank_rtol:
            return step, RANK_DROPPED, loss, meas
        if meas <= tol * tr0:
            return step, CONVERGED, loss, meas
        if step >= limit:
            return step, STEP_LIMIT, loss, meas
        for i in range(theta.shape[0]):
            theta[i] -= lr * grad[i]
        step += 1
        if step >= stop and step < limit:
            return step, RUNNING, loss, meas
