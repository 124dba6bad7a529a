"""BLAS thread policy for the compiled kernels."""

import contextlib

# Below this matrix size OpenBLAS threads cost more than they give: their
# start-up and spin-waiting dominate LAPACK calls on small matrices, and on
# a loaded 2-core machine a 64 x 64 SVD was measured 300x slower with the
# default thread count than with one thread (0.44 ms against 133 ms).
SMALL = 256

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def blas_limit(size):
    """Context holding BLAS to one thread when the largest dimension is small."""
    if size >= SMALL:
        return contextlib.nullcontext()
    return _get_controller().limit(limits=1, user_api="blas")
