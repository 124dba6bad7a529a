"""Targets, the deep-linear-network BW loss with its layer gradients, and
balanced factorizations."""

import numbers
import warnings

import numpy as np

from . import _kernels as K
from ._errors import RankDropWarning
from ._threads import blas_limit
from ._validate import (
    as_float_array,
    check_finite,
    check_psd,
    check_symmetric,
    rtol_for,
    scalar,
    square_stack,
)

__all__ = [
    "Target",
    "loss_and_grad",
    "optimal_loss",
    "balanced_weights",
    "end_to_end",
]


# Targets are kept within this range of magnitudes: the loss squares the
# weights and the trainer's tests compare against tr Sigma0, so extreme
# scales would over- or underflow long before float64's limits.
_MAX_SCALE = 1e150


class Target:
    """A target covariance with its spectrum and square root computed once.

    Parameters
    ----------
    cov : (n, n) array_like
        Symmetric positive semidefinite covariance; singular is normal.
        Asymmetry and negative eigenvalues up to ``rtol`` (relative to the
        largest entry and eigenvalue) are treated as rounding: the matrix
        is symmetrized and its eigenvalues clamped at zero.
    rtol : float, optional
        Rounding allowance; default sqrt(eps) of float64 (1.5e-8).

    Attributes
    ----------
    cov : (n, n) ndarray
        The symmetrized float64 covariance (read-only).
    eigvals : (n,) ndarray
        Eigenvalues, descending, clamped at zero (cutoff n * eps * max).
    eigvecs : (n, n) ndarray
        Orthonormal eigenvectors, column i for ``eigvals[i]``.
    root : (n, n) ndarray
        The PSD square root R0 = cov^{1/2}.
    n, rank : int
        Dimension, and number of eigenvalues above the cutoff.
    trace : float

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import Target
    >>> t = Target(np.diag([4.0, 1.0, 0.0]))
    >>> t.eigvals.tolist(), t.rank
    ([4.0, 1.0, 0.0], 2)
    """

    def __init__(self, cov, *, rtol=None):
        if isinstance(cov, Target):  # a Target's own covariance, validated
            cov = cov.cov
        a = square_stack(cov, "cov")
        if a.ndim != 2:
            raise ValueError(f"`cov` must be one (n, n) matrix; got shape {a.shape}")
        if a.shape[0] == 0:
            raise ValueError("`cov` must have n >= 1; got shape (0, 0)")
        # the rounding allowance follows the dtype the matrix came in
        rtol = rtol_for(a.dtype) if rtol is None else scalar(rtol, "rtol", low=0.0)
        a = a.astype(np.float64)
        big = float(np.abs(a).max())
        if big > _MAX_SCALE or 0.0 < big < 1.0 / _MAX_SCALE:
            raise ValueError(
                f"`cov` must have entries of magnitude within 1e-150 .. 1e150 "
                f"(or be zero); got max |cov| = {big:.3g}: rescale the data"
            )
        check_symmetric(a, "cov", rtol)
        n = a.shape[0]
        sym = 0.5 * a + 0.5 * a.T
        w, Q = np.linalg.eigh(sym)
        check_psd(w[0], w[-1], "cov", rtol)
        cutoff = n * np.finfo(np.float64).eps * max(w[-1], 0.0)
        lam = np.where(w > cutoff, w, 0.0)[::-1].copy()
        Q = np.ascontiguousarray(Q[:, ::-1])
        root = (Q * np.sqrt(lam)) @ Q.T
        root = 0.5 * (root + root.T)
        for arr in (sym, lam, Q, root):
            arr.flags.writeable = False
        self.cov = sym
        self.eigvals = lam
        self.eigvecs = Q
        self.root = root
        self.n = n
        self.rank = int(np.count_nonzero(lam))
        self.trace = float(np.trace(sym))
        self._cast = {}

    @classmethod
    def from_samples(cls, X, **kwargs):
        """Target from samples (rows) by features (columns), ddof = 1."""
        x = as_float_array(X, "X")
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(
                "`X` must be a (samples, features) array with at least 2 rows; "
                f"got shape {x.shape}"
            )
        check_finite(x, "X")
        with np.errstate(over="ignore", invalid="ignore"):
            cov = np.atleast_2d(np.cov(x.astype(np.float64), rowvar=False))
        if not np.isfinite(cov).all():
            raise ValueError("`X` is too large in magnitude: its covariance "
                             "overflows float64; rescale the data")
        return cls(cov, **kwargs)

    def arrays(self, dtype):
        """(root, cov) as C-contiguous arrays of ``dtype`` (cached)."""
        dtype = np.dtype(dtype)
        if dtype not in self._cast:
            self._cast[dtype] = (
                np.array(self.root, dtype=dtype, order="C"),
                np.array(self.cov, dtype=dtype, order="C"),
            )
        return self._cast[dtype]

    def __repr__(self):
        return f"Target(n={self.n}, rank={self.rank}, trace={self.trace:.6g})"


def check_tau(tau):
    """tau as a float: finite, >= 0 and at most the scale limit of targets
    (1e150): losses are sums of n terms of the order of tau, so a tau near
    float64's limit would overflow them."""
    tau = scalar(tau, "tau", low=0.0)
    if tau > _MAX_SCALE:
        raise ValueError(
            f"`tau` must be <= {_MAX_SCALE:g}, the scale limit of targets "
            f"(losses of the order of n tau overflow near float64's limit); "
            f"got {tau:g}"
        )
    return tau


def as_target(target):
    """A Target, built from a covariance array when needed."""
    return target if isinstance(target, Target) else Target(target)


def rank_rtol(dims, dtype):
    """Singular-value ratio below which rank(R0 W) counts as dropped."""
    return 10.0 * max(int(dims[0]), int(dims[-1])) * float(np.finfo(dtype).eps)


def check_weights(weights, n):
    """Validate a list of layers W_1 .. W_N; return (arrays, dims, dtype)."""
    if isinstance(weights, np.ndarray) and weights.ndim == 2:
        weights = [weights]
    if weights is None or isinstance(weights, (str, bytes, numbers.Number)):
        raise TypeError(
            f"`weights` must be a sequence of 2-D arrays W_1 .. W_N; got {weights!r}"
        )
    try:
        ws = [as_float_array(w, f"weights[{i}]") for i, w in enumerate(weights)]
    except TypeError:
        raise
    except Exception:
        raise TypeError(
            "`weights` must be a sequence of 2-D arrays W_1 .. W_N"
        ) from None
    if not ws:
        raise ValueError("`weights` must hold at least one layer; got none")
    for i, w in enumerate(ws):
        if w.ndim != 2 or 0 in w.shape:
            raise ValueError(
                f"`weights[{i}]` must be a non-empty 2-D array; got shape {w.shape}"
            )
        check_finite(w, f"weights[{i}]")
        if i > 0 and w.shape[1] != ws[i - 1].shape[0]:
            raise ValueError(
                f"`weights[{i}]` must have {ws[i - 1].shape[0]} columns to follow "
                f"weights[{i - 1}] of shape {ws[i - 1].shape}; got shape {w.shape}"
            )
    if ws[-1].shape[0] != n:
        raise ValueError(
            f"the last layer must have n = {n} rows (the target dimension); "
            f"got shape {ws[-1].shape}"
        )
    dims = np.array([ws[0].shape[1]] + [w.shape[0] for w in ws], dtype=np.int64)
    dtype = (
        np.dtype(np.float32)
        if all(w.dtype == np.float32 for w in ws)
        else np.dtype(np.float64)
    )
    return ws, dims, dtype


def pack(ws, dtype):
    """Layers -> one flat C-contiguous parameter vector."""
    return np.concatenate([np.asarray(w, dtype=dtype).ravel() for w in ws])


def unpack(theta, dims):
    """Flat parameter vector -> list of layer arrays (copies)."""
    off = K.layer_offsets(dims)
    return [
        theta[off[j]:off[j + 1]].reshape(dims[j + 1], dims[j]).copy()
        for j in range(len(dims) - 1)
    ]


class Workspace:
    """Preallocated buffers for the network kernels of one architecture."""

    def __init__(self, dims, dtype, grad=True):
        size = int(K.layer_offsets(dims)[-1]) if grad else 0
        self.grad = np.empty(size, dtype)
        self.pbuf = np.empty(max(int(K.prefix_size(dims)), 1), dtype)
        self.G = np.empty((int(dims[-1]), int(dims[0])), dtype)


LOSSES = {"bw": K.BW_LOSS, "frobenius": K.FROBENIUS_LOSS}


def loss_code(loss):
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {sorted(LOSSES)}; got {loss!r}")
    return LOSSES[loss]


def loss_and_grad(weights, target, tau=0.0, loss="bw"):
    """BW loss of a deep linear network and the gradient of every layer.

    L_tau = BW^2(W W^T + tau I, Sigma0) for W = W_N ... W_1, computed in one
    compiled call. For tau = 0 the factor route: the thin SVD of R0 W cut
    to k = min width triplets, G = 2 (W - R0 U_k V_k^T), no n x n square
    root, loss in the split form (never negative). For tau > 0 one
    eigendecomposition of M = R0 (W W^T + tau I) R0 and
    G = 2 (W - R0 M^{-1/2} R0 W), the inverse root on the range of M when
    the target is singular. Layer gradients follow by the chain rule,
    dL/dW_j = (W_N ... W_{j+1})^T G (W_{j-1} ... W_1)^T.

    Parameters
    ----------
    weights : sequence of 2-D array_like
        W_1 .. W_N, W_j of shape (d_j, d_{j-1}), d_N = n.
    target : Target or (n, n) array_like
    tau : float, default 0
        Isotropic variance added to the model covariance, >= 0.
    loss : {'bw', 'frobenius'}
        'frobenius' evaluates instead the square loss
        ||W W^T + tau I - Sigma0||_F^2 (end-to-end gradient
        4 (W W^T + tau I - Sigma0) W), the classical baseline.

    Returns
    -------
    loss : float
    grads : list of ndarray
        One per layer, shaped like the weights; float32 when every layer is.

    Warns
    -----
    RankDropWarning
        At tau = 0 when rank(R0 W) < min(k, rank Sigma0): the loss has a kink
        there and the returned gradient is the minimum-norm subgradient.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import Target, loss_and_grad
    >>> t = Target(np.diag([4.0, 1.0]))
    >>> loss, (g,) = loss_and_grad([np.diag([2.0, 1.0])], t)
    >>> float(loss), bool(np.allclose(g, 0))
    (0.0, True)
    """
    t = as_target(target)
    tau = check_tau(tau)
    code = loss_code(loss)
    ws, dims, dtype = check_weights(weights, t.n)
    theta = pack(ws, dtype)
    R0, S0 = t.arrays(dtype)
    work = Workspace(dims, dtype)
    k = min(int(dims.min()), t.rank)
    rr = rank_rtol(dims, dtype)
    with blas_limit(int(dims.max())):
        value, ratio = K.network_loss_grad(
            theta, dims, R0, S0, t.trace, tau, max(k, 1), rr,
            work.grad, work.pbuf, work.G, code, t.rank,
        )
    if code == K.BW_LOSS and tau == 0.0 and k > 0 and ratio <= rr:
        warnings.warn(
            f"rank(R0 W) dropped below k = {k} (s_k/s_1 = {ratio:.2e}): the "
            "tau = 0 loss has a kink here and the gradient is a subgradient; "
            "use tau > 0 or a full-rank initialization",
            RankDropWarning,
            stacklevel=2,
        )
    return float(value), unpack(work.grad, dims)


def optimal_loss(target, k, tau=0.0, loss="bw"):
    """The smallest loss reachable with rank(W) <= k.

    tau = 0: sum_{i > k} lambda_i (the discarded eigenvalues themselves, not
    their squares), attained by the truncated eigendecomposition of the
    target. tau > 0: sum of (sqrt(lambda_i) - sqrt(tau))^2 over every i
    except the top-k indices with lambda_i > tau; for 0 < tau <= lambda_k
    this is sum_{i > k} (sqrt(lambda_i) - sqrt(tau))^2, attained at
    Omega_k diag(lambda_k - tau) Omega_k^T. For ``loss='frobenius'``
    (Eckart-Young): the sum of (lambda_i - tau)^2 over the same indices.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import optimal_loss
    >>> float(optimal_loss(np.diag([3.0, 2.0, 1.0]), 1))
    3.0
    """
    t = as_target(target)
    k = scalar(k, "k", low=0, integer=True)
    tau = check_tau(tau)
    code = loss_code(loss)
    if k > t.n:
        raise ValueError(f"`k` must be <= n = {t.n}; got {k}")
    lam = t.eigvals
    if code == K.FROBENIUS_LOSS:
        keep = np.zeros(t.n, dtype=bool)
        keep[:k] = lam[:k] > tau
        return float(np.sum((lam[~keep] - tau) ** 2))
    if tau == 0.0:
        return float(lam[k:].sum())
    terms = (np.sqrt(lam) - np.sqrt(tau)) ** 2
    keep = np.zeros(t.n, dtype=bool)
    keep[:k] = lam[:k] > tau
    return float(terms[~keep].sum())


def end_to_end(weights):
    """W = W_N ... W_1 for layers W_j of shape (d_j, d_{j-1})."""
    W = np.asarray(weights[0])
    for w in weights[1:]:
        W = np.asarray(w) @ W
    return W


def balanced_weights(W, widths, *, seed=0):
    """Factor W (n x d_0, rank <= k = min width) into balanced layers.

    With the thin SVD W = U diag(s) V^T cut to k terms, layer j is
    O_j diag(s^{1/N}) O_{j-1}^T, where O_0 = V, O_N = U and the hidden O_j
    are random matrices with k orthonormal columns. Then
    W_{j+1}^T W_{j+1} = O_j diag(s^{2/N}) O_j^T = W_j W_j^T exactly (up to
    rounding) and the product is the rank-k truncation of W.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import balanced_weights
    >>> W = np.arange(6.0).reshape(3, 2)
    >>> ws = balanced_weights(W, (2, 4, 3))
    >>> bool(np.allclose(ws[1] @ ws[0], W))
    True
    >>> bool(np.allclose(ws[1].T @ ws[1], ws[0] @ ws[0].T))
    True
    """
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise TypeError(f"`widths` must be a sequence of integers; got {widths!r}")
    dims = [scalar(d, "widths", low=1, integer=True) for d in widths]
    if seed is not None:
        seed = scalar(seed, "seed", low=0, integer=True)
    W = as_float_array(W, "W").astype(np.float64)
    check_finite(W, "W")
    if len(dims) < 2 or W.shape != (dims[-1], dims[0]):
        raise ValueError(
            f"`W` must have shape (widths[-1], widths[0]) = "
            f"({dims[-1]}, {dims[0]}); got {W.shape}"
        )
    N = len(dims) - 1
    k = min(dims)
    rng = np.random.default_rng(seed)
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    U, s, V = U[:, :k], s[:k], Vt[:k].T
    frames = [V]
    for d in dims[1:-1]:
        frames.append(np.linalg.qr(rng.standard_normal((d, k)))[0])
    frames.append(U)
    root = s ** (1.0 / N)
    return [(frames[j + 1] * root) @ frames[j].T for j in range(N)]
