"""Plain SciPy reference implementations: the test oracle and benchmark baseline."""

import warnings
from functools import reduce

import numpy as np
import scipy.linalg as sla

__all__ = [
    "bures_wasserstein",
    "bures_wasserstein_squared",
    "end_to_end",
    "frechet_distance",
    "gd_step",
    "hessian_fd",
    "inv_sqrtm_psd",
    "loss",
    "loss_and_grad",
    "optimal_loss",
    "ot_map",
    "sqrtm_frechet",
    "sqrtm_psd",
]

# scipy.linalg.sqrtm of a singular matrix is only accurate to about sqrt(eps)
# relative to its norm; imaginary parts below this are treated as rounding.
_IMAG_RTOL = 1e-6


def _stacked(func, *arrays):
    """Apply a 2-D ``func`` over the broadcast leading axes of ``arrays``."""
    arrays = [np.asarray(a, dtype=np.float64) for a in arrays]
    lead = np.broadcast_shapes(*(a.shape[:-2] for a in arrays))
    if not lead:
        return func(*arrays)
    arrays = [np.broadcast_to(a, lead + a.shape[-2:]) for a in arrays]
    results = [func(*(a[idx] for a in arrays)) for idx in np.ndindex(lead)]
    return np.asarray(results).reshape(lead + np.shape(results[0]))


def _sqrtm(A):
    """scipy.linalg.sqrtm with its real part taken when the rest is rounding."""
    with warnings.catch_warnings():
        # Singular PSD input is legitimate here; scipy warns about it.
        warnings.simplefilter("ignore", sla.LinAlgWarning)
        S = sla.sqrtm(A)
    if np.iscomplexobj(S):
        scale = max(1.0, float(np.max(np.abs(S), initial=0.0)))
        if np.max(np.abs(S.imag), initial=0.0) <= _IMAG_RTOL * scale:
            S = S.real
    return S


def _pinv_root(S):
    """Pseudo-inverse of a symmetric PSD square root computed by ``_sqrtm``."""
    # The null space of A shows up in sqrtm(A) as eigenvalues of size about
    # sqrt(n * eps) * ||S||, so the default rtol of pinvh would keep them.
    n = S.shape[0]
    rtol = 10.0 * np.sqrt(n * np.finfo(np.float64).eps)
    return sla.pinvh((S + S.T) / 2, rtol=rtol)


def sqrtm_psd(A):
    """Square root of a PSD matrix (or stack) by ``scipy.linalg.sqrtm``.

    Takes (..., n, n) and returns float64 of the same shape; the real part is
    taken when the imaginary part is rounding (relative ``_IMAG_RTOL``), and
    the complex result is returned unchanged otherwise, so a non-PSD input
    shows. Singular input is accurate only to about sqrt(eps).
    """
    return _stacked(_sqrtm, A)


def inv_sqrtm_psd(A):
    """Inverse square root on the range, ``pinvh(sqrtm(A))``, for (..., n, n).

    Eigenvalues of the root below ``10 sqrt(n eps)`` times the largest are
    treated as zero, which is where sqrtm leaves the null space of A.
    """
    return _stacked(lambda a: _pinv_root(_sqrtm(a)), A)


def sqrtm_frechet(A, E):
    """Fréchet derivative of the square root at A in direction E.

    Solves the Sylvester equation ``S X + X S = E`` for S = sqrtm(A) with
    ``scipy.linalg.solve_sylvester``; A and E broadcast as (..., n, n).
    The equation is singular when A is, so only definite A is meaningful.
    """

    def one(a, e):
        S = _sqrtm(a)
        return sla.solve_sylvester(S, S, e)

    return _stacked(one, A, E)


def _bw2(A, B):
    """Trace formula for one pair of 2-D matrices, as a Python float."""
    RA = _sqrtm(A)
    cross = np.trace(_sqrtm(RA @ B @ RA))
    return float(np.real(np.trace(A) + np.trace(B) - 2.0 * cross))


def bures_wasserstein_squared(A, B):
    """Squared Bures-Wasserstein distance by the trace formula.

    ``tr A + tr B - 2 tr (A^½ B A^½)^½`` with scipy square roots: a float
    for 2-D input, an array over the broadcast leading axes of stacks. It
    cancels for nearly equal inputs and may come out slightly negative.
    """
    out = _stacked(_bw2, A, B)
    return float(out) if np.ndim(out) == 0 else out


def bures_wasserstein(A, B):
    """Bures-Wasserstein distance, ``sqrt(max(BW^2, 0))`` of the trace formula."""
    return np.sqrt(np.maximum(bures_wasserstein_squared(A, B), 0.0))


def frechet_distance(m1, A, m2, B):
    """Squared 2-Wasserstein distance between N(m1, A) and N(m2, B).

    ``||m1 - m2||^2 + BW^2(A, B)``, the quantity FID-style metrics report;
    means have shape (..., n) and covariances (..., n, n).
    """
    diff = np.asarray(m1, dtype=np.float64) - np.asarray(m2, dtype=np.float64)
    return np.sum(diff**2, axis=-1) + bures_wasserstein_squared(A, B)


def _ot_map(A, B):
    """OT map for one pair of 2-D matrices."""
    RA = _sqrtm(A)
    RA_inv = _pinv_root(RA)
    return RA_inv @ _sqrtm(RA @ B @ RA) @ RA_inv


def ot_map(A, B):
    """Linear OT map from N(0, A) to N(0, B), for (..., n, n) stacks.

    ``T = A^{-½} (A^½ B A^½)^½ A^{-½}`` with sqrtm and the pseudo-inverse
    root, so for singular A the map acts on the range of A only.
    """
    return _stacked(_ot_map, A, B)


def end_to_end(weights):
    """End-to-end matrix ``W = W_N ... W_1`` for layers W_j of shape (d_j, d_{j-1})."""
    return reduce(lambda acc, Wj: Wj @ acc, weights[1:], weights[0])


def _model_cov(W, tau):
    """Model covariance ``W W^T + tau I``."""
    return W @ W.T + tau * np.eye(W.shape[0])


def loss(weights, cov, tau=0.0):
    """Network loss ``BW^2(W W^T + tau I, cov)`` by the trace formula.

    ``weights`` is the list W_1 .. W_N and ``cov`` the (n, n) target; the
    root is taken of ``cov``, so the result is accurate to about sqrt(eps)
    when ``cov`` or ``W W^T + tau I`` is singular.
    """
    W = end_to_end([np.asarray(Wj, dtype=np.float64) for Wj in weights])
    return _bw2(np.asarray(cov, dtype=np.float64), _model_cov(W, tau))


def _e2e_grad(W, cov, tau, k):
    """Gradient of the loss with respect to the end-to-end matrix W."""
    R0 = _sqrtm(cov)
    if tau > 0:
        M = R0 @ _model_cov(W, tau) @ R0
        T = R0 @ _pinv_root(_sqrtm(M)) @ R0
        return 2.0 * (W - T @ W)
    U, _, Vt = sla.svd(R0 @ W, full_matrices=False)
    return 2.0 * (W - R0 @ U[:, :k] @ Vt[:k])


def frobenius_loss_and_grad(weights, cov, tau=0.0):
    """Square loss ||W W^T + tau I - cov||_F^2 and its layer gradients, with
    end-to-end gradient 4 (W W^T + tau I - cov) W, every product formed anew."""
    weights = [np.asarray(Wj, dtype=np.float64) for Wj in weights]
    cov = np.asarray(cov, dtype=np.float64)
    W = end_to_end(weights)
    D = W @ W.T + tau * np.eye(W.shape[0]) - cov
    G = 4.0 * D @ W
    return float(np.sum(D * D)), _layer_grads(weights, G)


def frobenius_optimal_loss(cov, k, tau=0.0):
    """Eckart-Young: the smallest square loss with rank(W) <= k is the sum of
    (lam_i - tau)^2 over every i except the top-k ones with lam_i > tau."""
    lam = sla.eigvalsh(np.asarray(cov, dtype=np.float64))[::-1]
    keep = np.zeros(lam.shape, dtype=bool)
    keep[:k] = lam[:k] > tau
    return float(np.sum((lam[~keep] - tau) ** 2))


def loss_and_grad(weights, cov, tau=0.0):
    """Network loss and the gradient of every layer, from dense formulas.

    End-to-end gradient G = 2 (I - T) W with T = R0 (R0 Sigma R0)^{-½} R0
    for tau > 0, and G = 2 (W - R0 U_k V_k^T) from the SVD of R0 W cut to
    k = min width for tau = 0 (a derivative only where rank(R0 W) = k).
    Layer j gets ``(W_N ... W_{j+1})^T G (W_{j-1} ... W_1)^T``, each product
    formed anew. Returns ``(loss, [dL/dW_1, ..., dL/dW_N])``.
    """
    weights = [np.asarray(Wj, dtype=np.float64) for Wj in weights]
    cov = np.asarray(cov, dtype=np.float64)
    W = end_to_end(weights)
    k = min([weights[0].shape[1]] + [Wj.shape[0] for Wj in weights])
    G = _e2e_grad(W, cov, tau, k)
    return loss(weights, cov, tau), _layer_grads(weights, G)


def _layer_grads(weights, G):
    """Chain rule, each product formed anew:
    dL/dW_j = (W_N ... W_{j+1})^T G (W_{j-1} ... W_1)^T."""
    grads = []
    for j in range(len(weights)):
        above = end_to_end(weights[j + 1 :]) if j + 1 < len(weights) else None
        below = end_to_end(weights[:j]) if j > 0 else None
        Gj = G if above is None else above.T @ G
        grads.append(Gj if below is None else Gj @ below.T)
    return grads


def optimal_loss(cov, k, tau=0.0):
    """Smallest loss reachable with rank(W) <= k, from ``eigvalsh(cov)``.

    For tau = 0 the sum of the eigenvalues beyond the k largest; for tau > 0
    the sum of ``(sqrt(lam_i) - sqrt(tau))^2`` over every i except the top-k
    ones with ``lam_i > tau``.
    """
    lam = sla.eigvalsh(np.asarray(cov, dtype=np.float64))[::-1]
    # Rounding-level eigenvalues count as zero (cutoff n * eps * max): their
    # square roots, about 1e-8, would otherwise enter the tau > 0 sum.
    cutoff = lam.size * np.finfo(np.float64).eps * max(lam[0], 0.0)
    lam = np.where(lam > cutoff, lam, 0.0)
    if tau == 0:
        return float(np.sum(lam[k:]))
    keep = np.zeros(lam.shape, dtype=bool)
    keep[:k] = lam[:k] > tau
    return float(np.sum((np.sqrt(lam[~keep]) - np.sqrt(tau)) ** 2))


def gd_step(weights, cov, tau, lr):
    """One gradient-descent step, returning the new list ``W_j - lr dL/dW_j``.

    The step-by-step Python loop that the compiled descent is measured
    against in benchmarks.
    """
    _, grads = loss_and_grad(weights, cov, tau)
    return [np.asarray(Wj, np.float64) - lr * g for Wj, g in zip(weights, grads)]


def hessian_fd(weights, cov, tau=0.0, step=1e-5):
    """Hessian of the network loss by central differences of the gradient.

    Column i is ``(g(theta + h e_i) - g(theta - h e_i)) / (2 h)`` with g the
    layer gradients of ``loss_and_grad`` flattened in layer order, each
    layer row-major, and h = ``step``; 2 P gradient evaluations, returned
    as computed (not symmetrized). The error is about h^2 times the third
    derivative plus eps / h times the gradient: near 1e-9 relative for
    h = 1e-5 on well-conditioned points.
    """
    weights = [np.asarray(Wj, dtype=np.float64) for Wj in weights]
    sizes = [Wj.size for Wj in weights]
    theta = np.concatenate([Wj.ravel() for Wj in weights])
    offsets = np.cumsum([0] + sizes)

    def grad(x):
        layers = [
            x[offsets[j]:offsets[j + 1]].reshape(Wj.shape)
            for j, Wj in enumerate(weights)
        ]
        W = end_to_end(layers)
        k = min([layers[0].shape[1]] + [Wj.shape[0] for Wj in layers])
        G = _e2e_grad(W, np.asarray(cov, dtype=np.float64), tau, k)
        return np.concatenate([g.ravel() for g in _layer_grads(layers, G)])

    H = np.empty((theta.size, theta.size))
    for i in range(theta.size):
        e = np.zeros(theta.size)
        e[i] = step
        H[:, i] = (grad(theta + e) - grad(theta - e)) / (2.0 * step)
    return H
