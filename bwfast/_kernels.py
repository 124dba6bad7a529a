"""Compiled kernels: matrix functions, distances, network loss and descent.

Everything here trusts its inputs (C-contiguous float32 or float64 arrays of
consistent shapes, finite values); the public wrappers validate and cast.
Scalars are combined with arrays in explicit loops so that float32 inputs
stay float32: in Numba, a Python float times a float32 array is float64.
Scalar products and sums of squares are taken in np.float64(...): Numba's
float() keeps a float32 value float32, where squares of entries above
1.8e19 overflow.
"""

import numpy as np
from numba import njit, prange, types

from ._config import JIT
from ._small import (
    WARM_MAX_N,
    active,
    is_warm,
    polar_grad,
    refine_svd,
    seed_svd,
    singular_values,
    warm_buffer,
    warm_eigh,
)

# Status codes returned by the descent kernel (see bwfast.train.Status).
RUNNING = 0
CONVERGED = 1
STEP_LIMIT = 2
DIVERGED = 3
RANK_DROPPED = 4

# Loss selector of the network kernels.
BW_LOSS = 0
FROBENIUS_LOSS = 1


# --------------------------------------------------------------------------
# small helpers


@njit(**JIT)
def _sym_copy(A):
    """Return (A + A^T) / 2 as a new C-contiguous array.

    Walked in 32 x 32 tiles: a plain double loop reads A[j, i] with stride
    n, which for n = 1024 cost a third of the eigendecomposition itself.
    """
    n = A.shape[0]
    S = np.empty((n, n), A.dtype)
    bs = 32
    for i0 in range(0, n, bs):
        for j0 in range(0, i0 + 1, bs):
            for i in range(i0, min(i0 + bs, n)):
                for j in range(j0, min(j0 + bs, i + 1)):
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
            v = np.float64(X[i, j])
            acc += v * v
    return acc


@njit(**JIT)
def _trace(A):
    acc = 0.0
    for i in range(A.shape[0]):
        acc += np.float64(A[i, i])
    return acc


# Matrices up to this size are diagonalized by cyclic Jacobi rotations
# instead of LAPACK: for a 4 x 4 matrix a LAPACK call costs more in set-up
# and workspace allocation than the few hundred flops of a Jacobi solve.
JACOBI_MAX_N = 8
_JACOBI_MAX_SWEEPS = 30


@njit(**JIT)
def jacobi_eigh_inplace(S, Q):
    """Cyclic Jacobi eigenvalue iteration on the symmetric matrix S.

    On return S is diagonal to working precision (its diagonal holds the
    eigenvalues, unsorted) and Q holds the eigenvectors as columns. A pair
    is rotated while |s_pq| > eps * sqrt(|s_pp s_qq|) (the relative test
    that keeps small eigenvalues accurate), above an absolute floor of
    eps^2 n max |s_ij| for singular matrices. Returns False if a sweep limit is
    reached without convergence; the caller then falls back to LAPACK.
    """
    n = S.shape[0]
    eps = np.finfo(S.dtype).eps
    for i in range(n):
        for j in range(n):
            Q[i, j] = 1.0 if i == j else 0.0
    amax = 0.0  # max |s_ij|: a sum of squares could overflow for huge entries
    for i in range(n):
        for j in range(n):
            amax = max(amax, abs(np.float64(S[i, j])))
    floor = eps * eps * n * amax
    for _ in range(_JACOBI_MAX_SWEEPS):
        rotated = False
        for p in range(n - 1):
            for q in range(p + 1, n):
                apq = np.float64(S[p, q])
                app = np.float64(S[p, p])
                aqq = np.float64(S[q, q])
                if abs(apq) <= max(eps * np.sqrt(abs(app * aqq)), floor):
                    S[p, q] = 0.0
                    S[q, p] = 0.0
                    continue
                rotated = True
                theta = (aqq - app) / (2.0 * apq)
                if abs(theta) > 1e150:
                    t = 0.5 / theta
                else:
                    t = 1.0 / (abs(theta) + np.sqrt(theta * theta + 1.0))
                    if theta < 0.0:
                        t = -t
                c = 1.0 / np.sqrt(t * t + 1.0)
                sn = t * c
                # S <- J^T S J touches rows and columns p, q only; by
                # symmetry one pass over k updates both, and the 2 x 2
                # block has the closed form below.
                for k in range(n):
                    if k != p and k != q:
                        skp = np.float64(S[k, p])
                        skq = np.float64(S[k, q])
                        vp = c * skp - sn * skq
                        vq = sn * skp + c * skq
                        S[k, p] = vp
                        S[p, k] = vp
                        S[k, q] = vq
                        S[q, k] = vq
                S[p, p] = app - t * apq
                S[q, q] = aqq + t * apq
                S[p, q] = 0.0
                S[q, p] = 0.0
                for k in range(n):
                    qkp = np.float64(Q[k, p])
                    qkq = np.float64(Q[k, q])
                    Q[k, p] = c * qkp - sn * qkq
                    Q[k, q] = sn * qkp + c * qkq
        if not rotated:
            return True
    return False


@njit(**JIT)
def _eigh_raw(A, symmetric=False):
    """Eigenvalues (unclamped, any order) and eigenvectors of sym(A).

    Cyclic Jacobi for n <= JACOBI_MAX_N, else LAPACK, which reads one
    triangle only: a matrix built symmetric inside bwfast (``symmetric``)
    needs no averaging copy there.
    """
    n = A.shape[0]
    if n <= JACOBI_MAX_N:
        S = _sym_copy(A)
        # column-major like LAPACK's eigenvectors, so both branches type alike
        Q = np.empty((n, n), A.dtype).T
        if jacobi_eigh_inplace(S, Q):
            w = np.empty(n, A.dtype)
            for i in range(n):
                w[i] = S[i, i]
            return w, Q
    return np.linalg.eigh(A if symmetric else _sym_copy(A))


@njit(**JIT)
def _clamp_eigs(w):
    """Eigenvalues at or below n eps max set to zero."""
    n = w.shape[0]
    cutoff = n * np.finfo(w.dtype).eps * max(w.max(), 0.0)
    a = np.empty(n, w.dtype)
    for i in range(n):
        a[i] = w[i] if w[i] > cutoff else 0.0
    return a


@njit(**JIT)
def _eigh_psd(A, symmetric=False):
    """Eigendecomposition of sym(A) with eigenvalues at or below the cutoff
    n * eps * max(a) set to zero.

    Returns (a, Q, wmin, wmax): clamped eigenvalues (in no particular
    order), eigenvectors (columns), and the raw smallest and largest
    eigenvalues, which the wrappers use to reject matrices that are clearly
    not PSD.
    """
    w, Q = _eigh_raw(A, symmetric)
    return _clamp_eigs(w), Q, w.min(), w.max()


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


# GEMM with beta = 1 through the BLAS that Numba itself binds (resolved by
# symbol name, so kernels that use it stay cacheable); pointers are passed
# untyped so that one declaration serves float32 and float64.
_xxgemm = types.ExternalFunction(
    "numba_xxgemm",
    types.intc(
        types.char, types.char, types.char, types.intp, types.intp, types.intp,
        types.voidptr, types.voidptr, types.intp, types.voidptr, types.intp,
        types.voidptr, types.voidptr, types.intp,
    ),
)


# Up to this many multiply-adds, gemm_nt_update copies B^T and calls the
# "NN" GEMM: at 20 x 20 x 20 OpenBLAS's "TN" case took 0.62 us and the
# copy plus "NN" 0.49 us; at 64^3 8.7 us against 8.0 us.
_NT_COPY_MAX = 64 ** 3


@njit(**JIT)
def gemm_nt_update(C, A, B, alpha):
    """C += alpha * A @ B.T in place; C (r, c), A (r, k), B (c, k), all
    C-contiguous of one float dtype.

    Row-major C is column-major C^T, so this is C^T += alpha * B A^T in
    column-major terms: B seen as its (k, c) transpose, A as (k, r).
    """
    r, c = C.shape
    work = np.empty(gemm_nt_work_size(r, c, A.shape[1]), C.dtype)
    gemm_nt_update_work(C, A, B, alpha, work)


@njit(**JIT)
def gemm_nt_work_size(r, c, kk):
    """Length of the scratch vector gemm_nt_update_work needs for updates
    of C (r, c) from A (r, k) and B (c, k) up to these sizes."""
    return 2 + (c * kk if r * c * kk <= _NT_COPY_MAX else 0)


@njit(**JIT)
def gemm_nt_update_work(C, A, B, alpha, work):
    """gemm_nt_update with its scratch (alpha, beta and, when small, B^T)
    in ``work``, so that a loop of updates allocates nothing."""
    r, c = C.shape
    kk = A.shape[1]
    work[0] = alpha
    work[1] = 1.0
    al = work[0:1]
    be = work[1:2]
    kind = ord("s") if C.itemsize == 4 else ord("d")
    if work.shape[0] >= 2 + c * kk and r * c * kk <= _NT_COPY_MAX:
        # small: B^T copied row-major is B column-major, so both operands
        # go in untransposed ("NN", OpenBLAS's faster small-matrix case)
        Bt = work[2:2 + c * kk].reshape((kk, c))
        for i in range(c):
            for j in range(kk):
                Bt[j, i] = B[i, j]
        _xxgemm(kind, ord("N"), ord("N"), c, r, kk, al.ctypes, Bt.ctypes, c,
                A.ctypes, kk, be.ctypes, C.ctypes, c)
        return
    _xxgemm(kind, ord("T"), ord("N"), c, r, kk, al.ctypes, B.ctypes, kk,
            A.ctypes, kk, be.ctypes, C.ctypes, c)


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
    sum of squares (never negative), and it is zero to rounding (about
    1e-28 relative) when A and B are the same array. An SVD of the product
    is used rather than a square
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
    raw eigenvalue ranges of A and of B.
    """
    n = A.shape[0]
    a, Q, alo, ahi = _eigh_psd(A)
    s = _root_values(a, False)
    si = _root_values(a, True)
    # B's own spectrum: on a singular A the map only sees B on range(A),
    # where an indefinite B could pass unnoticed
    wb = np.linalg.eigvalsh(_sym_copy(B))
    C = Q.T @ (B @ Q)
    for i in range(n):
        for j in range(n):
            C[i, j] = s[i] * C[i, j] * s[j]
    c, QC, _, _ = _eigh_psd(C)
    blo = wb.min()
    bhi = wb.max()
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


@njit(**JIT)
def absmax_batch(A, out):
    """Per matrix: max |a_ij|."""
    for b in range(A.shape[0]):
        m = 0.0
        for i in range(A.shape[1]):
            for j in range(A.shape[2]):
                m = max(m, abs(np.float64(A[b, i, j])))
        out[b] = m


@njit(**JIT)
def asymmetry_batch(A, asym, scale):
    """Per matrix: max |a_ij - a_ji| and max |a_ij|, in one pass."""
    n = A.shape[1]
    for b in range(A.shape[0]):
        X = A[b]
        d = 0.0
        m = 0.0
        for i in range(n):
            m = max(m, abs(np.float64(X[i, i])))
            for j in range(i):
                d = max(d, abs(np.float64(X[i, j]) - np.float64(X[j, i])))
                m = max(m, abs(np.float64(X[i, j])), abs(np.float64(X[j, i])))
        asym[b] = d
        scale[b] = m


# --------------------------------------------------------------------------
# batched kernels over a (m, n, n) stack; outputs preallocated by the caller.
# Each has a serial kernel and a parallel one that splits only the batch
# (the per-matrix work stays serial); the caller holds BLAS to one thread
# around the parallel kernel.


def _sqrtm_psd_batch(A, inverse, out, wmin, wmax):
    m, n = A.shape[0], A.shape[1]
    if n > JACOBI_MAX_N:
        for b in range(m):
            a, Q, lo, hi = _eigh_psd(A[b])
            out[b] = _from_eig(Q, _root_values(a, inverse))
            wmin[b] = lo
            wmax[b] = hi
        return
    # Small matrices: Jacobi with scratch arrays allocated once per chunk of
    # the batch (allocation would otherwise cost as much as the solve) and
    # the result assembled by loops rather than a BLAS call.
    nchunks = min(m, 256)
    eps = np.finfo(A.dtype).eps
    for c in range(nchunks):
        S = np.empty((n, n), A.dtype)
        Q = np.empty((n, n), A.dtype)
        f = np.empty(n, A.dtype)
        for b in range(c * m // nchunks, (c + 1) * m // nchunks):
            X = A[b]
            for i in range(n):
                S[i, i] = X[i, i]
                for j in range(i):
                    v = 0.5 * (X[i, j] + X[j, i])
                    S[i, j] = v
                    S[j, i] = v
            if jacobi_eigh_inplace(S, Q):
                for i in range(n):
                    f[i] = S[i, i]
            else:
                w, QF = np.linalg.eigh(_sym_copy(X))
                Q[:, :] = QF
                f[:] = w
            lo = f.min()
            hi = f.max()
            cutoff = n * eps * max(hi, 0.0)
            for i in range(n):
                if f[i] > cutoff:
                    f[i] = 1.0 / np.sqrt(f[i]) if inverse else np.sqrt(f[i])
                else:
                    f[i] = 0.0
            Y = out[b]
            for i in range(n):
                for j in range(i + 1):
                    acc = 0.0
                    for k in range(n):
                        qi = np.float64(Q[i, k])
                        acc += qi * np.float64(f[k]) * np.float64(Q[j, k])
                    Y[i, j] = acc
                    Y[j, i] = acc
            wmin[b] = lo
            wmax[b] = hi


def _sqrtm_frechet_batch(A, E, out, wmin, wmax):
    for b in range(A.shape[0]):
        X, lo, hi = _frechet_core(A[b], E[b])
        out[b] = X
        wmin[b] = lo
        wmax[b] = hi


def _bw_squared_batch(A, B, out, wrange):
    """wrange[b] = (min, max eigenvalue of A[b], min, max of B[b])."""
    for b in range(A.shape[0]):
        d, alo, ahi, blo, bhi = _bw_squared_core(A[b], B[b])
        out[b] = d
        wrange[b, 0] = alo
        wrange[b, 1] = ahi
        wrange[b, 2] = blo
        wrange[b, 3] = bhi


def _ot_map_batch(A, B, out, wrange):
    for b in range(A.shape[0]):
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


# Parallel builds: prange over contiguous chunks of the batch, each chunk
# handed to the serial kernel. They are functions of their own rather than
# njit(parallel=True) applied to the same body, because Numba's disk cache
# keys on the function and not on its options: two builds of one body
# would share a cache entry, and whichever compiled first would serve both.

@njit(**JIT)
def _chunks(m):
    return min(m, 64)


@njit(parallel=True, **JIT)
def sqrtm_psd_batch_par(A, inverse, out, wmin, wmax):
    m = A.shape[0]
    c = _chunks(m)
    for i in prange(c):
        lo, hi = i * m // c, (i + 1) * m // c
        sqrtm_psd_batch(A[lo:hi], inverse, out[lo:hi], wmin[lo:hi], wmax[lo:hi])


@njit(parallel=True, **JIT)
def sqrtm_frechet_batch_par(A, E, out, wmin, wmax):
    m = A.shape[0]
    c = _chunks(m)
    for i in prange(c):
        lo, hi = i * m // c, (i + 1) * m // c
        sqrtm_frechet_batch(A[lo:hi], E[lo:hi], out[lo:hi], wmin[lo:hi],
                            wmax[lo:hi])


@njit(parallel=True, **JIT)
def bw_squared_batch_par(A, B, out, wrange):
    m = A.shape[0]
    c = _chunks(m)
    for i in prange(c):
        lo, hi = i * m // c, (i + 1) * m // c
        bw_squared_batch(A[lo:hi], B[lo:hi], out[lo:hi], wrange[lo:hi])


@njit(parallel=True, **JIT)
def ot_map_batch_par(A, B, out, wrange):
    m = A.shape[0]
    c = _chunks(m)
    for i in prange(c):
        lo, hi = i * m // c, (i + 1) * m // c
        ot_map_batch(A[lo:hi], B[lo:hi], out[lo:hi], wrange[lo:hi])


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
def e2e_grad_tau0(W, R0, k, rank_rtol, G, A, B, factored, warm=None):
    """Loss and end-to-end gradient at tau = 0 through the factor route.

    With the thin SVD R0 W = U S V^T cut to its k leading triplets,
    G = 2 (W - R0 U V^T) and the loss is taken in the split form
    ||W - R0 U V^T||^2 + ||(I - U U^T) R0||^2: two sums of squares, so it
    is never negative and has no cancellation near a critical point.
    If factored, W = A B with A n x k and B k x d0, and the SVD is taken
    through the factors (see _thin_svd_product). Triplets with
    s_i <= rank_rtol * s_1 count as zero (the minimum-norm subgradient).
    Returns (loss, s_k / s_1); a ratio at or below rank_rtol means
    rank(R0 W) < k, where the loss has a kink. With a ``warm`` buffer
    (the descent loop's square full-rank case, see bwfast._small) the SVD
    is refined from the previous step's factors when that converges; the
    second split-form term, zero at full rank, is then not formed.
    """
    n = W.shape[0]
    if warm is not None:
        done, loss, ratio = polar_grad(W, R0, rank_rtol, G, warm)
        if done:
            return loss, ratio
    if factored:
        U, s, Vt = _thin_svd_product(R0, A, B)
    else:
        U, s, Vt = np.linalg.svd(R0 @ W, full_matrices=False)
    kk = min(k, s.shape[0])
    thr = rank_rtol * s[0]
    m = 0
    while m < kk and s[m] > thr:
        m += 1
    if warm is not None:
        seed_svd(warm, U, Vt, m == n)
    Um = np.ascontiguousarray(U[:, :m])
    P = (R0 @ Um) @ np.ascontiguousarray(Vt[:m, :])
    loss = 0.0
    for i in range(n):
        for j in range(W.shape[1]):
            d = W[i, j] - P[i, j]
            G[i, j] = 2 * d
            loss += np.float64(d) * np.float64(d)
    Y = R0 - Um @ (Um.T @ R0)
    loss += _sumsq(Y)
    ratio = s[kk - 1] / s[0] if s[0] > 0.0 else 0.0
    return loss, ratio


@njit(**JIT)
def e2e_grad_tau(W, R0, S0, tr0, tau, G, rank0=-1, warm=None):
    """Loss and end-to-end gradient for tau > 0 through one eigendecomposition.

    M = R0 (W W^T + tau I) R0 = X X^T + tau S0 with X = R0 W, and
    G = 2 (W - R0 M^{-1/2} X), the inverse root taken on the range of M and
    applied to the n x d0 matrix X (no n x n x n product beyond the
    eigendecomposition).

    The loss is tr(W W^T) + n tau + tr S0 - 2 tr M^{1/2}, accurate to about
    eps times those traces. Where that cancels (the loss below 1e-3 of
    them) and M is well conditioned (every eigenvalue above sqrt(eps) of
    the largest, so that its inverse root is accurate), the split form
    ||(I - T) W||^2 + tau ||I - T||_F^2 with T = R0 M^{-1/2} R0 = Z Z^T,
    Z = R0 Q diag(mu^{-1/4}), is used instead: a sum of squares with full
    relative accuracy near the optimum. It costs two n x n x n products,
    paid only near a full-rank optimum. An ill-conditioned M (a bottleneck,
    a tiny tau) keeps the trace form: there the inverse root of its small
    eigenvalues is inaccurate, and the loss is not small anyway.

    In the trace, M's eigenvalues are only clamped at zero, not cut at
    n eps max: the small ones are real (tau lambda_i along the directions W
    misses) and cutting them biases tr M^{1/2}. M is singular only along
    the null space of S0, whose dimension n - rank0 is known: that many
    smallest eigenvalues are structural zeros (rank0 < 0: none).

    With a ``warm`` buffer (the descent loop, see bwfast._small) the
    eigendecomposition is refined from the previous step's eigenvectors.
    """
    n = W.shape[0]
    X = R0 @ W
    M = X @ X.T
    for i in range(n):
        for j in range(n):
            M[i, j] += tau * S0[i, j]
    if warm is None:
        w, Q = _eigh_raw(M, True)
    else:
        w, Q = warm_eigh(M, warm)
    a = _clamp_eigs(w)
    amax = w.max()
    r = _root_values(a, False)
    ri = _root_values(a, True)
    # trace of M^{1/2} from every eigenvalue but the structural zeros
    skip = n - rank0 if rank0 >= 0 else 0
    total = _sumsq(W) + n * tau + tr0
    loss = total
    if skip > 0:
        order = np.argsort(w)
        for idx in range(skip, n):
            loss -= 2.0 * np.sqrt(max(np.float64(w[order[idx]]), 0.0))
    else:
        for idx in range(n):
            loss -= 2.0 * np.sqrt(max(np.float64(w[idx]), 0.0))
    Y = Q.T @ X
    for i in range(n):
        for j in range(Y.shape[1]):
            Y[i, j] *= ri[i]
    TW = R0 @ (Q @ Y)
    for i in range(n):
        for j in range(W.shape[1]):
            G[i, j] = 2 * (W[i, j] - TW[i, j])
    if loss >= 1e-3 * total:
        return loss, 1.0
    well = True
    thr = np.sqrt(np.finfo(W.dtype).eps) * max(amax, 0.0)
    for i in range(n):
        if not a[i] > thr:
            well = False
    if not well:
        return max(loss, 0.0), 1.0
    r4 = np.empty_like(a)
    for i in range(n):
        r4[i] = 1.0 / np.sqrt(r[i])
    Z = R0 @ (Q * r4)
    T = Z @ Z.T
    split = 0.25 * _sumsq(G)
    off = 0.0
    for i in range(n):
        for j in range(n):
            d = (1.0 if i == j else 0.0) - np.float64(T[i, j])
            off += d * d
    return split + tau * off, 1.0


@njit(**JIT)
def e2e_grad_frobenius(W, S0, tau, G):
    """The square loss ||W W^T + tau I - S0||_F^2 and G = 4 D W, D the residual.

    The classical baseline against which BW training is compared. The
    residual is a difference of matrices, not of traces, so the loss has no
    cancellation beyond that of D itself.
    """
    n = W.shape[0]
    D = W @ W.T
    for i in range(n):
        for j in range(n):
            D[i, j] -= S0[i, j]
        D[i, i] += tau
    loss = _sumsq(D)
    P = D @ W
    for i in range(n):
        for j in range(W.shape[1]):
            G[i, j] = 4 * P[i, j]
    return loss, 1.0


@njit(**JIT)
def _prefix_start(dims, j):
    """Offset of P_j = W_j ... W_1 (j >= 2) in the prefix buffer."""
    start = 0
    for i in range(2, j):
        start += dims[i] * dims[0]
    return start


@njit(**JIT)
def _prefix(theta, pbuf, dims, j):
    """View of P_j = W_j ... W_1 (j >= 1): W_1 itself, or a pbuf slot."""
    if j == 1:
        return _view(theta, 0, dims[1], dims[0])
    return _view(pbuf, _prefix_start(dims, j), dims[j], dims[0])


@njit(**JIT)
def _bottleneck_factors(theta, dims, pbuf):
    """W = A B through the narrowest layer b when it is narrower than both
    ends: A = W_N ... W_{b+1} (n x d_b), B = W_b ... W_1 = P_b (d_b x d0),
    from the prefix products in pbuf. Returns (factored, A, B); A and B are
    empty when no layer is narrower than both ends."""
    N = dims.shape[0] - 1
    d0 = dims[0]
    off = layer_offsets(dims)
    b = 0
    for j in range(1, N + 1):
        if dims[j] < dims[b]:
            b = j
    factored = dims[b] < min(d0, dims[N])
    if not factored:
        return False, np.empty((0, 0), theta.dtype), np.empty((0, 0), theta.dtype)
    A = np.ascontiguousarray(_view(theta, off[N - 1], dims[N], dims[N - 1]))
    for j in range(N - 1, b, -1):
        A = A @ _view(theta, off[j - 1], dims[j], dims[j - 1])
    if b == 0:
        Bf = np.eye(d0, dtype=theta.dtype)
    else:
        Bf = np.ascontiguousarray(_prefix(theta, pbuf, dims, b))
    return True, A, Bf


@njit(**JIT)
def network_forward(theta, dims, R0, S0, tr0, tau, k, rank_rtol, pbuf, G,
                    loss_kind=BW_LOSS, rank0=-1, warm=None):
    """Prefix products (into pbuf), loss and end-to-end gradient G = dL/dW.

    Returns (loss, ratio, measure) with measure = ||G||_F ||W||_F, the
    first-order change of the loss under a relative perturbation of W
    (-1 if G is not finite). ``warm`` is the descent loop's warm-start
    buffer (``warm_state``); None or an empty one keeps the direct route.
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

    # an overflowed product (after a runaway step) must not reach LAPACK,
    # which rejects non-finite input: report it as a non-finite loss
    finite = True
    for i in range(prev.shape[0]):
        for j in range(prev.shape[1]):
            if not np.isfinite(prev[i, j]):
                finite = False
    if not finite:
        return np.inf, 0.0, -1.0

    # end-to-end loss and gradient
    on = False
    if warm is not None:
        on = active(warm)
    if loss_kind == FROBENIUS_LOSS:
        loss, ratio = e2e_grad_frobenius(prev, S0, tau, G)
    elif tau > 0.0:
        if on:
            loss, ratio = e2e_grad_tau(prev, R0, S0, tr0, tau, G, rank0, warm)
        else:
            loss, ratio = e2e_grad_tau(prev, R0, S0, tr0, tau, G, rank0)
    elif on:
        loss, ratio = e2e_grad_tau0(prev, R0, k, rank_rtol, G, prev, prev, False,
                                    warm)
    else:
        factored, A, Bf = _bottleneck_factors(theta, dims, pbuf)
        loss, ratio = e2e_grad_tau0(prev, R0, k, rank_rtol, G, A, Bf, factored)

    gs = 0.0
    ws = 0.0
    for i in range(G.shape[0]):
        for j in range(G.shape[1]):
            g = np.float64(G[i, j])
            w = np.float64(prev[i, j])
            gs += g * g
            ws += w * w
    meas = np.sqrt(gs) * np.sqrt(ws) if np.isfinite(gs) else -1.0
    return loss, ratio, meas


@njit(**JIT)
def network_backward(theta, dims, pbuf, G, grad):
    """Layer gradients dL/dW_j = B_j P_{j-1}^T into grad, with B_N = G and
    B_{j-1} = W_j^T B_j: linear in depth, no product of two hidden-width
    matrices."""
    N = dims.shape[0] - 1
    off = layer_offsets(dims)
    B = G
    for j in range(N, 0, -1):
        gj = _view(grad, off[j - 1], dims[j], dims[j - 1])
        if j == 1:
            gj[:, :] = B
        else:
            Pprev = _prefix(theta, pbuf, dims, j - 1)
            np.dot(B, Pprev.T, gj)
            Wj = _view(theta, off[j - 1], dims[j], dims[j - 1])
            B = Wj.T @ B


@njit(**JIT)
def _grad_norm_sq(B, Pprev, d0):
    """||B P^T||_F^2 without forming B P^T: <B^T B, P^T P> through d0 x d0
    Gram matrices when d0 is the smaller side."""
    if d0 <= min(B.shape[0], Pprev.shape[0]):
        GB = B.T @ B
        GP = Pprev.T @ Pprev
        gs = 0.0
        for r in range(d0):
            for c in range(d0):
                gs += np.float64(GB[r, c]) * np.float64(GP[r, c])
        return max(gs, 0.0)
    return _sumsq(B @ Pprev.T)


@njit(**JIT)
def _segment_sumsq(theta, lo, hi):
    acc = 0.0
    for i in range(lo, hi):
        w = np.float64(theta[i])
        acc += w * w
    return acc


@njit(**JIT)
def network_backward_update(theta, dims, pbuf, G, lr, measure):
    """Gradient step applied layer by layer in place: W_j -= lr B_j P_{j-1}^T.

    Each layer gradient is a product of two thin factors (d_j x d_0 and
    d_{j-1} x d_0), applied by one GEMM with beta = 1 straight into W_j, so
    a step allocates only O(d_0 * width) and never an h x h temporary.
    B_{j-1} = W_j^T B_j is formed from the old W_j before it is updated,
    and the prefix products from the forward pass are still those of the
    old weights, so this is exactly one gradient step. With ``measure``,
    also returns max_j ||dL/dW_j|| ||W_j|| at the weights before the step
    (from the factors already at hand), else -1, and the squared norm
    sum_j ||dL/dW_j||^2 of the whole gradient (-1 without ``measure``).
    """
    N = dims.shape[0] - 1
    d0 = dims[0]
    off = layer_offsets(dims)
    best = -1.0
    total = -1.0 if not measure else 0.0
    # B_{j-1} into two alternating buffers rather than a new array a layer
    hmax = 0
    for j in range(1, N):
        hmax = max(hmax, dims[j])
    bbuf = np.empty(2 * hmax * d0, theta.dtype)
    rmax = 0
    for j in range(2, N + 1):
        rmax = max(rmax, dims[j])
    gwork = np.empty(gemm_nt_work_size(rmax, hmax, d0), theta.dtype)
    B = G
    for j in range(N, 0, -1):
        Wj = _view(theta, off[j - 1], dims[j], dims[j - 1])
        if j == 1:
            if measure:
                gs = _sumsq(B)
                ws = _segment_sumsq(theta, off[0], off[1])
                best = max(best, np.sqrt(gs) * np.sqrt(ws))
                total += gs
            for r in range(dims[1]):
                for c in range(d0):
                    Wj[r, c] -= lr * B[r, c]
        else:
            Pprev = _prefix(theta, pbuf, dims, j - 1)
            if measure:
                gs = _grad_norm_sq(B, Pprev, d0)
                ws = _segment_sumsq(theta, off[j - 1], off[j])
                best = max(best, np.sqrt(gs) * np.sqrt(ws))
                total += gs
            Bnext = _view(bbuf, (j % 2) * hmax * d0, dims[j - 1], d0)
            np.dot(Wj.T, B, Bnext)
            gemm_nt_update_work(Wj, B, Pprev, -lr, gwork)
            B = Bnext
    return best, total


@njit(**JIT)
def network_loss_grad(theta, dims, R0, S0, tr0, tau, k, rank_rtol, grad, pbuf, G,
                      loss_kind=BW_LOSS, rank0=-1):
    """Loss and the gradient of every layer, written into grad.

    Prefix products P_j = W_j ... W_1 are formed once (in pbuf), the
    end-to-end gradient G = dL/dW once, and the layer gradients by
    network_backward. Returns (loss, ratio); see e2e_grad_tau0 for ratio.
    """
    loss, ratio, _ = network_forward(
        theta, dims, R0, S0, tr0, tau, k, rank_rtol, pbuf, G, loss_kind, rank0
    )
    network_backward(theta, dims, pbuf, G, grad)
    return loss, ratio


@njit(**JIT)
def layer_measure(theta, dims, pbuf, G):
    """max_j ||dL/dW_j||_F ||W_j||_F from G and the prefix products.

    The first-order change of the loss under a relative perturbation of one
    layer. The layer gradient B_j P_{j-1}^T is not formed: its norm comes
    from d0 x d0 Gram matrices (see _grad_norm_sq). Also returns
    sum_j ||dL/dW_j||_F^2.
    """
    N = dims.shape[0] - 1
    d0 = dims[0]
    off = layer_offsets(dims)
    best = 0.0
    total = 0.0
    B = G
    for j in range(N, 0, -1):
        if j == 1:
            gs = _sumsq(B)
        else:
            gs = _grad_norm_sq(B, _prefix(theta, pbuf, dims, j - 1), d0)
        ws = _segment_sumsq(theta, off[j - 1], off[j])
        best = max(best, np.sqrt(gs) * np.sqrt(ws))
        total += gs
        if j > 1:
            B = _view(theta, off[j - 1], dims[j], dims[j - 1]).T @ B
    return best, total


# Columns of a diagnostics record (see record_diagnostics); singular values
# of W follow from column D_SIGMA on.
D_GAP = 0
D_MARGIN = 1
D_GRAD = 2
D_BALANCE = 3
D_ALIGN = 4
D_E2E = 5
D_SIGMA = 6


@njit(**JIT)
def bw_squared_network(W, R0, S0, tr0, tau, k, rank0):
    """BW^2(W W^T + tau I, S0) for a network with rank bound k, the square
    loss's runs need it for their margin.

    tau = 0: ||W||^2 + tr S0 - 2 ||R0 W||_*, the nuclear norm from the k
    leading singular values of R0 W (rank W <= k; the others are rounding
    errors, whose sum would add a spurious sqrt(eps)-sized distance).
    tau > 0: the BW loss of the training itself (e2e_grad_tau, its
    gradient into a scratch array), with its accuracy.
    """
    if tau > 0.0:
        return e2e_grad_tau(W, R0, S0, tr0, tau, np.empty_like(W), rank0)[0]
    loss = _sumsq(W) + tr0
    _, s, _ = np.linalg.svd(R0 @ W, full_matrices=False)
    for i in range(min(k, s.shape[0])):
        loss -= 2.0 * np.float64(s[i])
    return max(loss, 0.0)


@njit(**JIT)
def record_diagnostics(theta, dims, pbuf, G, R0, S0, tr0, tau, loss, loss_kind,
                       rank0, Omk, dconst, row, dwarm):
    """Fill one diagnostics record at the current weights, before the update.

    row[D_GAP] = loss - optimum (dconst[1]); row[D_MARGIN] = sqrt(lambda_k)
    (dconst[0]) - BW(W W^T + tau I, S0); row[D_BALANCE] = the balancedness
    defect max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F (0 for one layer);
    row[D_ALIGN] = ||U_k^T Omega_k||_F^2 / k, the share of the target's top-k
    eigenspace (the columns of Omk) spanned by W's k leading left singular
    vectors (1 when they span it, 0 when orthogonal); row[D_E2E] = ||G||_F,
    the end-to-end gradient dL/dW; row[D_SIGMA + i] =
    the singular values sigma_1 >= ... >= sigma_k of W. The gradient norm
    row[D_GRAD] is left to the caller, who has it from the update. A
    non-finite W leaves the record as it is (NaN). For a square W with an
    active warm buffer ``dwarm`` (see diag_warm), the SVD of W is refined
    from the previous record's, as the descent loop refines its own.
    """
    N = dims.shape[0] - 1
    W = _prefix(theta, pbuf, dims, N)
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            if not np.isfinite(W[i, j]):
                return
    off = layer_offsets(dims)
    row[D_GAP] = loss - dconst[1]
    row[D_E2E] = np.sqrt(_sumsq(G))
    if loss_kind == BW_LOSS:
        bw2 = loss
    else:
        bw2 = bw_squared_network(W, R0, S0, tr0, tau, Omk.shape[1], rank0)
    row[D_MARGIN] = dconst[0] - np.sqrt(max(np.float64(bw2), 0.0))
    defect = 0.0
    hmax = 0
    for j in range(1, N):
        hmax = max(hmax, dims[j])
    g1 = np.empty(hmax * hmax, theta.dtype)
    g2 = np.empty(hmax * hmax, theta.dtype)
    for j in range(1, N):
        A = _view(theta, off[j - 1], dims[j], dims[j - 1])
        B = _view(theta, off[j], dims[j + 1], dims[j])
        BtB = _view(g1, 0, dims[j], dims[j])
        AAt = _view(g2, 0, dims[j], dims[j])
        np.dot(B.T, B, BtB)
        np.dot(A, A.T, AAt)
        acc = 0.0
        for r in range(dims[j]):
            for c in range(dims[j]):
                d = np.float64(BtB[r, c]) - np.float64(AAt[r, c])
                acc += d * d
        defect = max(defect, np.sqrt(acc))
    row[D_BALANCE] = defect
    k = Omk.shape[1]
    factored, A, Bf = _bottleneck_factors(theta, dims, pbuf)
    if factored:  # a k x k SVD through the factors, as in the tau = 0 loss
        eye = np.eye(W.shape[0], dtype=W.dtype)
        U, s, _ = _thin_svd_product(eye, A, Bf)
    else:
        U, s = _diag_svd(W, dwarm)
    C = np.ascontiguousarray(U[:, :k]).T @ Omk
    row[D_ALIGN] = _sumsq(C) / k
    for i in range(k):
        row[D_SIGMA + i] = s[i]


@njit(**JIT)
def _diag_svd(W, dwarm):
    """(U, s) of W, s descending: refined from the previous record's factors
    in ``dwarm`` when it holds them (a square full-rank W, see diag_warm),
    else by LAPACK, whose factors then seed dwarm. None: LAPACK only."""
    if dwarm is not None:
        if is_warm(dwarm) and refine_svd(W, 0.0, dwarm)[0] == 1:
            # k = n here, so the order of U's columns does not matter
            return dwarm[0], np.sort(singular_values(dwarm))[::-1]
        U, s, Vt = np.linalg.svd(W, full_matrices=False)
        seed_svd(dwarm, U, Vt, True)
        return U, s
    U, s, _ = np.linalg.svd(W, full_matrices=False)
    return U, s


@njit(**JIT)
def diag_warm(dims, record, theta):
    """Warm-start buffer for the diagnostics' SVD of a square end-to-end W
    (d_0 = n <= WARM_MAX_N, no bottleneck), empty otherwise or without
    records: records are a stride of steps apart, close enough for the
    refinement to converge in a sweep or two."""
    n = dims[-1]
    on = record and dims[0] == n and n <= WARM_MAX_N
    for j in range(1, dims.shape[0] - 1):
        on = on and dims[j] >= n
    return warm_buffer(n if on else 0, theta)


@njit(**JIT)
def warm_state(dims, tau, k, loss_kind, theta):
    """The descent loop's warm-start buffer (bwfast._small), or an empty
    one where the direct route stays: the BW loss with n <= WARM_MAX_N and,
    at tau = 0, a square full-rank end-to-end matrix (d_0 = n = k, every
    width at least n); at tau > 0 any widths, n above JACOBI_MAX_N (below
    it the cold Jacobi solve is as cheap)."""
    n = dims[-1]
    on = loss_kind == BW_LOSS and n <= WARM_MAX_N
    if tau > 0.0:
        on = on and n > JACOBI_MAX_N
    else:
        on = on and dims[0] == n and k == n
    return warm_buffer(n if on else 0, theta)


@njit(**JIT)
def descend(theta, dims, R0, S0, tr0, tau, k, rank_rtol, lr, start, stop, limit,
            tol_abs, div_limit, hist, hbase, every, pbuf, G, loss_kind, rank0,
            diag, Omk, dconst, warm, dwarm):
    """Full-batch gradient descent in place on theta, from step start.

    At each step the loss and G = dL/dW are evaluated at the current
    weights; every ``every`` steps the loss is stored in
    hist[step // every - hbase] and the optimality measure
    max_j ||dL/dW_j|| ||W_j|| is computed, from the factors of that step's
    update (so it costs no extra products). The run stops on a non-finite
    or runaway loss or gradient and on a rank drop at tau = 0 without
    updating (the weights stay at the last finite point), and at
    step == limit. When a check finds measure <= tol_abs the step's (tiny)
    update has been applied: the loss is evaluated once more at the final
    weights and the run stops as converged. The call returns RUNNING once
    step reaches stop < limit, so that the caller can report progress.
    With a ``diag`` array (not None), each stored loss gets a diagnostics
    record in diag[step // every - hbase] (see record_diagnostics; Omk holds
    the target's top-k eigenvectors, dconst = [sqrt(lambda_k), optimum]),
    the gradient norm column from the update's own factors.
    Returns (step, status, loss, measure): step is the number of updates
    applied, loss the loss at the returned weights, measure the last one
    computed. With a ``warm`` buffer (warm_state) each step refines the
    previous step's SVD or eigendecomposition instead of calling LAPACK
    (bwfast._small), and with ``dwarm`` (diag_warm) the diagnostics refine
    theirs; the buffers carry over between calls. None for any of diag,
    warm and dwarm compiles a loop without that code: Numba prunes the
    branches on None arguments, which keeps the first call of a plain run
    short.
    """
    step = start
    meas = np.nan
    while True:
        loss, ratio, emeas = network_forward(
            theta, dims, R0, S0, tr0, tau, k, rank_rtol, pbuf, G, loss_kind, rank0,
            warm
        )
        check = step % every == 0
        row = step // every - hbase
        if check:
            hist[row] = loss
            if diag is not None:
                record_diagnostics(theta, dims, pbuf, G, R0, S0, tr0, tau, loss,
                                   loss_kind, rank0, Omk, dconst, diag[row],
                                   dwarm)
        if not np.isfinite(loss) or loss > div_limit or emeas < 0.0:
            return step, DIVERGED, loss, np.nan
        if loss_kind == BW_LOSS and tau <= 0.0 and ratio <= rank_rtol:
            return step, RANK_DROPPED, loss, meas
        if step >= limit:
            meas, gsum = layer_measure(theta, dims, pbuf, G)
            if diag is not None:
                if check:
                    diag[row, D_GRAD] = np.sqrt(gsum)
            status = CONVERGED if meas <= tol_abs else STEP_LIMIT
            return step, status, loss, meas
        m, gsum = network_backward_update(theta, dims, pbuf, G, lr, check)
        if diag is not None:
            if check:
                diag[row, D_GRAD] = np.sqrt(gsum)
        step += 1
        if check:
            meas = m
            if meas <= tol_abs:
                loss, _, _ = network_forward(
                    theta, dims, R0, S0, tr0, tau, k, rank_rtol, pbuf, G,
                    loss_kind, rank0, warm
                )
                if step % every == 0 and step <= stop:
                    row = step // every - hbase
                    hist[row] = loss
                    if diag is not None:
                        record_diagnostics(theta, dims, pbuf, G, R0, S0, tr0, tau,
                                           loss, loss_kind, rank0, Omk, dconst,
                                           diag[row], dwarm)
                        diag[row, D_GRAD] = np.sqrt(
                            layer_measure(theta, dims, pbuf, G)[1])
                return step, CONVERGED, loss, meas
        if step >= stop and step < limit:
            return step, RUNNING, loss, meas
