"""Numba-jitted kernels for use inside other compiled code.

These are the functions the public NumPy API calls, exposed with stable
signatures for users who write their own ``@numba.njit`` code. They take
C-contiguous float32 or float64 arrays and return new arrays; they do no
validation: inputs must be finite, square where stated and symmetric PSD
where stated (asymmetry is averaged away, eigenvalues at or below
n * eps * max are treated as zero).

Single matrices, (n, n):

``sqrtm_psd(A) -> S``
    PSD square root.
``inv_sqrtm_psd(A) -> X``
    Inverse square root on the range of A.
``sqrtm_frechet(A, E) -> X``
    Solution of A^{1/2} X + X A^{1/2} = E.
``bures_wasserstein_squared(A, B) -> float``
    Squared BW distance (Procrustes form, never negative).
``ot_map(A, B) -> T``
    OT map from N(0, A) to N(0, B).

Deep linear networks, with layer j (1-based) of shape (dims[j], dims[j-1])
stored row-major in a flat vector ``theta`` at
``layer_offsets(dims)[j-1]:layer_offsets(dims)[j]``:

``layer_offsets(dims) -> int64 array``
``prefix_size(dims) -> int``
    Length of the work buffer ``pbuf``.
``network_loss_grad(theta, dims, R0, S0, tr0, tau, k, rank_rtol, grad, pbuf, G,
loss_kind=0, rank0=-1)``
    ``-> (loss, ratio)``; writes the layer gradients into ``grad`` (same
    layout as theta) and dL/dW into ``G`` (n x d_0). R0 = S0^{1/2},
    tr0 = tr S0, k = min(min(dims), rank S0); ``ratio`` is s_k / s_1 of
    R0 W at tau = 0 (1.0 for tau > 0). loss_kind 0 is the BW loss, 1 the
    square loss; rank0 = rank S0 (when known) sharpens the tau > 0 loss of
    a singular target.

Examples
--------
>>> import numpy as np
>>> from numba import njit
>>> from bwfast import kernels
>>> @njit
... def root_error(A):
...     S = kernels.sqrtm_psd(A)
...     return np.abs(S @ S - A).max()
>>> bool(root_error(np.array([[2.0, 1.0], [1.0, 2.0]])) < 1e-14)
True
"""

from ._kernels import bw_squared_1 as bures_wasserstein_squared
from ._kernels import inv_sqrtm_psd_1 as inv_sqrtm_psd
from ._kernels import layer_offsets, network_loss_grad, prefix_size
from ._kernels import ot_map_1 as ot_map
from ._kernels import sqrtm_frechet_1 as sqrtm_frechet
from ._kernels import sqrtm_psd_1 as sqrtm_psd

__all__ = [
    "sqrtm_psd",
    "inv_sqrtm_psd",
    "sqrtm_frechet",
    "bures_wasserstein_squared",
    "ot_map",
    "layer_offsets",
    "prefix_size",
    "network_loss_grad",
]
