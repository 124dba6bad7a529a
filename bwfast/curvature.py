"""Curvature of the network loss: exact Hessian-vector products, the dense
Hessian of small networks and its extreme eigenvalues."""

import numbers

import numpy as np

from . import _kernels as K
from ._errors import BWLinAlgError
from ._validate import as_float_array, check_finite, scalar
from .network import as_target, check_tau, check_weights, loss_code, rank_rtol

__all__ = ["hessian_vector_product", "hessian", "hessian_extremes"]

# The dense Hessian has P^2 entries and its eigendecomposition costs P^3:
# 4000 parameters are 128 MB; on two cores building it took 2.3 s and its
# eigenvalues 2.6 s (depth 10, width 20).
MAX_PARAMS = 4000

# Directions are pushed through the network in blocks whose largest
# temporary holds about this many float64 values (16 MiB).
_BLOCK_VALUES = 1 << 21

_METHODS = ("auto", "dense", "lanczos")


class _Curvature:
    """The loss at one point, prepared so that Hessian-vector products cost a
    few matrix products each (one decomposition per point, none per
    direction).

    Layers are indexed from 0 here: layer i is W_{i+1} of the docstrings,
    ``below[i]`` = W_{i-1} ... W_0 (identity for i = 0) and
    ``above[i]`` = W_{N-1} ... W_{i+1} (identity for i = N - 1).
    """

    def __init__(self, weights, target, tau, loss="bw"):
        t = as_target(target)
        self.tau = tau = check_tau(tau)
        self.code = loss_code(loss)
        ws, dims, _ = check_weights(weights, t.n)
        # float32 layers are upcast: second derivatives lose too many digits
        self.ws = ws = [np.array(w, dtype=np.float64) for w in ws]
        self.dims = dims
        self.shapes = [w.shape for w in ws]
        self.offsets = np.concatenate(([0], np.cumsum([w.size for w in ws])))
        self.size = int(self.offsets[-1])
        self.R0 = np.asarray(t.root, dtype=np.float64)

        # prefix and suffix products, as for the gradient
        N = len(ws)
        self.below = [np.eye(int(dims[0]))]
        for w in ws[:-1]:
            self.below.append(w @ self.below[-1])
        self.W = ws[-1] @ self.below[-1]
        self.above = [None] * N
        self.above[-1] = np.eye(t.n)
        for i in range(N - 2, -1, -1):
            self.above[i] = self.above[i + 1] @ ws[i + 1]

        # end-to-end gradient G and what its derivative needs
        if self.code == K.FROBENIUS_LOSS:
            self._prepare_frobenius(t)
        elif tau > 0.0:
            self._prepare_tau(t)
        else:
            self._prepare_tau0(t, min(int(dims.min()), t.rank))
        self.gA = [P.T @ self.G for P in self.above]        # above^T G
        self.Gb = [self.G @ Q.T for Q in self.below]        # G below^T

    # ---------------------------------------------------------------
    # tau > 0: G = 2 (W - R0 M^{-1/2} R0 W), M = R0 (W W^T + tau I) R0

    def _prepare_tau(self, t):
        # Work in an orthonormal basis B of range(Sigma0), where M is
        # positive definite (eigenvalues >= tau lambda_r): no cutoff, and
        # the inverse root on the range is an ordinary inverse root.
        B = t.eigvecs[:, : t.rank]
        Y0 = np.sqrt(t.eigvals[: t.rank])[:, None] * B.T      # D B^T, R0 = B D B^T
        X = Y0 @ self.W
        Mr = X @ X.T + self.tau * np.diag(t.eigvals[: t.rank])
        a, Q = np.linalg.eigh(0.5 * (Mr + Mr.T))
        if t.rank and a[0] <= 0.0:
            raise BWLinAlgError(
                "R0 (W W^T + tau I) R0 is not positive definite on the range "
                f"of the target (smallest eigenvalue {a[0]:.3g}): tau = "
                f"{self.tau:g} is below rounding against the target's scale"
            )
        s = np.sqrt(a)
        self.Y = Q.T @ Y0                     # Y^T diag(1/s) Y = M^{+1/2}
        self.Z = self.Y @ self.W
        self.inv_s = 1.0 / s
        # d(M^{-1/2}) = -M^{-1/2} L(M, dM) M^{-1/2}, L the Frechet derivative
        # of the root: in the eigenbasis E_ij / (s_i + s_j), so the whole
        # product is -E_ij / (s_i s_j (s_i + s_j)).
        self.C = np.outer(self.inv_s, self.inv_s) / (s[:, None] + s[None, :])
        self.G = 2.0 * (self.W - self.Y.T @ (self.inv_s[:, None] * self.Z))

    def _dG_tau(self, dW):
        YdW = self.Y @ dW
        E = YdW @ self.Z.T
        E = E + np.swapaxes(E, -1, -2)        # basis form of dM (symmetric)
        dN = -E * self.C
        inner = dN @ self.Z + self.inv_s[:, None] * YdW
        return 2.0 * (dW - self.Y.T @ inner)

    # ---------------------------------------------------------------
    # tau = 0: G = 2 (W - R0 U_k V_k^T), R0 W = U S V^T of rank k

    def _prepare_tau0(self, t, k):
        X = self.R0 @ self.W
        U, s, Vt = np.linalg.svd(X, full_matrices=False)
        if k > 0 and not s[k - 1] > rank_rtol(self.dims, np.float64) * s[0]:
            ratio = s[k - 1] / s[0] if s[0] > 0 else 0.0
            raise ValueError(
                f"`weights`: rank(R0 W) is below k = {k} (s_k/s_1 = "
                f"{ratio:.2e}): the tau = 0 loss has a kink there and no "
                "Hessian; use tau > 0 or move off the rank drop"
            )
        self.Uk, self.sk, self.Vk = U[:, :k], s[:k], Vt[:k].T
        self.inv_s = 1.0 / self.sk
        self.D = 1.0 / (self.sk[:, None] + self.sk[None, :])
        self.G = 2.0 * (self.W - self.R0 @ (self.Uk @ self.Vk.T))

    def _dG_tau0(self, dW):
        # Derivative of F = U_k V_k^T at X = R0 W (rank k, s_{k+1} = 0) in
        # the direction dX = R0 dW, with E = U^T dX V over full bases:
        #   inside (i, j <= k):     (E_ij - E_ji) / (s_i + s_j)
        #   row i <= k, column out: E_ij / s_i
        #   row out, column j <= k: E_ij / s_j
        # (both indices outside: no term). The 1/s terms couple to the
        # discarded directions; the Hessian grows like 1/sigma_min there.
        Uk, Vk, inv_s = self.Uk, self.Vk, self.inv_s
        dX = self.R0 @ dW
        a = Uk.T @ dX                          # U_k^T dX        (k, d0)
        b = dX @ Vk                            # dX V_k          (n, k)
        E = a @ Vk                             # U_k^T dX V_k    (k, k)
        inside = (E - np.swapaxes(E, -1, -2)) * self.D
        rows = inside @ Vk.T + inv_s[:, None] * (a - E @ Vk.T)
        cols = (b - Uk @ E) * inv_s
        dF = Uk @ rows + cols @ Vk.T
        return 2.0 * (dW - self.R0 @ dF)

    # ---------------------------------------------------------------
    # square loss: G = 4 (W W^T + tau I - Sigma0) W

    def _prepare_frobenius(self, t):
        D = self.W @ self.W.T - np.asarray(t.cov, dtype=np.float64)
        self.Dfro = D + self.tau * np.eye(t.n)
        self.G = 4.0 * self.Dfro @ self.W

    def _dG_frobenius(self, dW):
        dWWt = dW @ self.W.T
        dD = dWWt + np.swapaxes(dWWt, -1, -2)
        return 4.0 * (dD @ self.W + self.Dfro @ dW)

    # ---------------------------------------------------------------

    def dG(self, dW):
        if self.code == K.FROBENIUS_LOSS:
            return self._dG_frobenius(dW)
        return self._dG_tau(dW) if self.tau > 0.0 else self._dG_tau0(dW)

    def apply(self, V):
        """Hessian applied to layer directions V[i] of shape (m, d_i+1, d_i)
        (a leading axis of m directions); returns the same layout."""
        ws, N = self.ws, len(self.ws)
        T = np.swapaxes

        # derivatives of the prefix products, then of W itself
        dbelow = [None]
        for i in range(N):
            d = V[i] @ self.below[i]
            if dbelow[i] is not None:
                d = d + ws[i] @ dbelow[i]
            dbelow.append(d)
        dW = dbelow[N]

        # derivatives of the suffix products
        dabove = [None] * N
        for i in range(N - 1, 0, -1):
            d = self.above[i] @ V[i]
            if dabove[i] is not None:
                d = d + dabove[i] @ ws[i]
            dabove[i - 1] = d

        # d(above_i^T G below_i^T), term by term
        dG = self.dG(dW)
        out = []
        for i in range(N):
            h = self.above[i].T @ dG @ self.below[i].T
            if dabove[i] is not None:
                h = h + T(dabove[i], -1, -2) @ self.Gb[i]
            if dbelow[i] is not None:
                h = h + self.gA[i] @ T(dbelow[i], -1, -2)
            out.append(h)
        return out

    def apply_flat(self, X):
        """Hessian times each row of X (m, P), computed in blocks."""
        m = X.shape[0]
        n, d0 = int(self.dims[-1]), int(self.dims[0])
        widest = max([n * n, n * d0] + [int(a) * int(b) for a, b in self.shapes])
        step = max(1, _BLOCK_VALUES // widest)
        out = np.empty((m, self.size))
        for lo in range(0, m, step):
            block = X[lo:lo + step]
            hv = self.apply(self.split(block))
            out[lo:lo + step] = np.concatenate(
                [h.reshape(block.shape[0], -1) for h in hv], axis=1
            )
        return out

    def split(self, X):
        """(m, P) flat directions -> layer directions (m, d_i+1, d_i)."""
        off = self.offsets
        return [
            X[:, off[i]:off[i + 1]].reshape((X.shape[0],) + shape)
            for i, shape in enumerate(self.shapes)
        ]


def _direction(direction, curv):
    """Validate a direction: flat (P,) vector, or one array per layer."""
    P, shapes = curv.size, curv.shapes
    if isinstance(direction, np.ndarray) and direction.ndim == 2 and len(shapes) == 1:
        direction = [direction]
    if isinstance(direction, np.ndarray) and direction.ndim == 1:
        v = as_float_array(direction, "direction").astype(np.float64)
        if v.shape != (P,):
            raise ValueError(
                f"`direction` as a flat vector must have the P = {P} entries of "
                f"the weights; got shape {v.shape}"
            )
        check_finite(v, "direction")
        return v[None, :], True
    if direction is None or isinstance(direction, (str, bytes, numbers.Number)):
        raise TypeError(
            "`direction` must be a flat vector or a sequence of arrays shaped "
            f"like the weights; got {direction!r}"
        )
    vs = [as_float_array(d, f"direction[{i}]") for i, d in enumerate(direction)]
    if len(vs) != len(shapes):
        raise ValueError(
            f"`direction` must hold one array per layer ({len(shapes)}); "
            f"got {len(vs)}"
        )
    for i, (v, shape) in enumerate(zip(vs, shapes)):
        if v.shape != shape:
            raise ValueError(
                f"`direction[{i}]` must have the shape of weights[{i}], "
                f"{shape}; got {v.shape}"
            )
        check_finite(v, f"direction[{i}]")
    flat = np.concatenate([v.astype(np.float64).ravel() for v in vs])
    return flat[None, :], False


def hessian_vector_product(weights, target, direction, tau=0.0, loss="bw"):
    """Exact Hessian-vector product of the network loss in all layers.

    For L_tau(W_1, ..., W_N) = BW^2(W W^T + tau I, Sigma0), W = W_N ... W_1,
    this is the derivative of the layer gradients
    dL/dW_j = (W_N ... W_{j+1})^T G (W_{j-1} ... W_1)^T along ``direction``:
    the terms from the moving prefix and suffix products plus those from
    dG, the derivative of the end-to-end gradient G. For tau > 0,
    G = 2 (W - R0 M^{-1/2} R0 W) with M = R0 (W W^T + tau I) R0, and
    d(M^{-1/2}) = -M^{-1/2} L(M, dM) M^{-1/2} with L the Frechet derivative
    of the square root (on the range of Sigma0 when it is singular). For
    tau = 0, G = 2 (W - R0 U_k V_k^T) from the SVD R0 W = U S V^T of rank
    k = min(min width, rank Sigma0), and dG needs the derivative of the
    partial isometry U_k V_k^T: the antisymmetric part of U_k^T dX V_k
    divided by s_i + s_j, plus the parts of dX = R0 dW that leave the
    singular subspaces, divided by s_i. No formula has a 1 / (s_i - s_j)
    factor, so repeated singular values are harmless.

    Parameters
    ----------
    weights : sequence of 2-D array_like
        W_1 .. W_N, W_j of shape (d_j, d_{j-1}), d_N = n.
    target : Target or (n, n) array_like
    direction : sequence of 2-D array_like, or (P,) ndarray
        One array per layer shaped like the weights (a single 2-D array
        for a depth-1 network), or one flat 1-D ndarray of all P
        parameters in layer order, each layer row-major (the layout of
        ``hessian``).
    tau : float, default 0
        Isotropic variance added to the model covariance, >= 0.
    loss : {'bw', 'frobenius'}
        'frobenius' differentiates the square loss
        ||W W^T + tau I - Sigma0||_F^2 instead.

    Returns
    -------
    list of ndarray, or (P,) ndarray
        H @ direction, in the form the direction was given (a list for a
        list, a flat vector for a flat vector); float64 always.

    Raises
    ------
    ValueError
        Bad shapes or values, naming the argument; at tau = 0 where
        rank(R0 W) < k, where the loss has a kink and no Hessian exists.

    Notes
    -----
    Computed in float64 whatever the input dtype (float32 weights are
    upcast). One SVD (tau = 0) or one eigendecomposition of an r x r matrix
    (tau > 0, r = rank Sigma0) per call, then matrix products: the cost of
    about two gradient evaluations. On well-conditioned points it agrees
    with central differences of ``loss_and_grad`` to 1e-9 .. 5e-9 relative,
    the accuracy of the differences themselves. Near a rank drop at
    tau = 0 the product grows like 1 / sigma_min(R0 W), and its rounding
    error like eps * s_1 / s_k of R0 W (measured: 2e-11 relative at
    s_1 / s_k = 2e4, 5e-6 at 3e11).

    Examples
    --------
    At the optimum of a square depth-1 network the Hessian is 2 on the
    directions that change W W^T and 0 on those (W -> W O) that do not:

    >>> import numpy as np
    >>> from bwfast import hessian_vector_product
    >>> cov = np.diag([4.0, 1.0])
    >>> W = np.diag([2.0, 1.0])
    >>> hv = hessian_vector_product([W], cov, [np.diag([1.0, 0.0])])
    >>> np.allclose(hv[0], np.diag([2.0, 0.0]))
    True
    >>> skew = np.array([[0.0, 1.0], [-1.0, 0.0]])
    >>> np.allclose(hessian_vector_product([W], cov, [W @ skew])[0], 0)
    True
    """
    curv = _Curvature(weights, target, tau, loss)
    X, flat = _direction(direction, curv)
    hv = curv.apply_flat(X)[0]
    if flat:
        return hv
    return [h.reshape(shape) for h, shape in zip(curv.split(hv[None]), curv.shapes)]


def _max_params(max_params, size):
    limit = scalar(max_params, "max_params", low=1, integer=True)
    if size > limit:
        raise ValueError(
            f"`weights` has P = {size} parameters; the dense Hessian is limited "
            f"to max_params = {limit}: raise max_params, or use "
            "hessian_vector_product / hessian_extremes(method='lanczos')"
        )


def _dense(curv):
    H = curv.apply_flat(np.eye(curv.size))
    return 0.5 * (H + H.T)


def hessian(weights, target, tau=0.0, loss="bw", *, max_params=MAX_PARAMS):
    """Dense Hessian of the network loss in all P parameters.

    Column i is ``hessian_vector_product`` along the i-th unit vector, in
    the flat layout: layers in order W_1 .. W_N, each row-major. The
    columns are computed in blocks from one decomposition of the point and
    the result is symmetrized, (H + H^T) / 2. The unsymmetrized matrix is
    symmetric to rounding: about 1e-15 relative at tau > 0 and on
    well-conditioned points, growing like eps * s_1 / s_k of R0 W at
    tau = 0.

    Parameters
    ----------
    weights, target, tau, loss
        As for ``hessian_vector_product``.
    max_params : int, default 4000
        Refuse networks with more parameters (the matrix has P^2 entries).

    Returns
    -------
    H : (P, P) ndarray, float64

    Raises
    ------
    ValueError
        If P > max_params, and as ``hessian_vector_product``.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import hessian
    >>> H = hessian([np.diag([2.0, 1.0])], np.diag([4.0, 1.0]))
    >>> H.shape, np.allclose(np.linalg.eigvalsh(H), [0.0, 2.0, 2.0, 2.0])
    ((4, 4), True)
    """
    curv = _Curvature(weights, target, tau, loss)
    _max_params(max_params, curv.size)
    return _dense(curv)


def hessian_extremes(weights, target, tau=0.0, loss="bw", *, method="auto",
                     max_params=MAX_PARAMS):
    """Smallest and largest eigenvalues of the Hessian of the network loss.

    Parameters
    ----------
    weights, target, tau, loss
        As for ``hessian_vector_product``.
    method : {'auto', 'dense', 'lanczos'}
        'dense': all eigenvalues of ``hessian`` (scipy.linalg.eigvalsh),
        exact to rounding. 'lanczos': scipy.sparse.linalg.eigsh (ARPACK,
        both ends of the spectrum, to machine precision) on a linear
        operator that applies Hessian-vector products, for networks too
        large for the dense matrix. 'auto' picks 'dense' up to
        ``max_params`` parameters, 'lanczos' above. Networks with P < 3
        always take the dense route (ARPACK needs P > 2).
    max_params : int, default 4000
        Largest P for the dense route.

    Returns
    -------
    (lam_min, lam_max) : tuple of float

    Raises
    ------
    BWLinAlgError
        If ARPACK does not converge.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import hessian_extremes
    >>> lo, hi = hessian_extremes([np.diag([2.0, 1.0])], np.diag([4.0, 1.0]))
    >>> bool(np.isclose(lo, 0.0) and np.isclose(hi, 2.0))
    True
    """
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {list(_METHODS)}; got {method!r}")
    curv = _Curvature(weights, target, tau, loss)
    limit = scalar(max_params, "max_params", low=1, integer=True)
    if method == "auto":
        method = "dense" if curv.size <= limit else "lanczos"
    if method == "dense" or curv.size < 3:   # ARPACK needs P > 2 for two ends
        import scipy.linalg as sla

        _max_params(limit, curv.size)
        w = sla.eigvalsh(_dense(curv))
        return float(w[0]), float(w[-1])
    return _lanczos_extremes(curv)


def _lanczos_extremes(curv):
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    P = curv.size
    op = LinearOperator(
        (P, P), matvec=lambda v: curv.apply_flat(np.reshape(v, (1, P)))[0],
        dtype=np.float64,
    )
    v0 = np.random.default_rng(0).standard_normal(P)
    try:
        w = eigsh(op, k=2, which="BE", v0=v0, return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        raise BWLinAlgError(
            f"ARPACK did not converge to the extreme Hessian eigenvalues "
            f"(P = {P}): {exc}; use method='dense' if P allows"
        ) from None
    return float(w.min()), float(w.max())
