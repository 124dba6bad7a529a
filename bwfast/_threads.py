"""BLAS thread policy for the compiled kernels."""

import contextlib

# Below this matrix size OpenBLAS threads cost more than they give: their
# start-up and spin-waiting dominate LAPACK calls on small matrices, and on
# a loaded 2-core machine a 64 x 64 SVD was measured 300x slower with the
# default thread count than with one thread (0.44 ms against 133 ms).
SMALL = 256

# At or below this size OpenBLAS runs single-threaded by itself (its GEMM
# threading starts near m * n * k = 65536), so no limit needs to be set;
# setting one costs about 10 us, more than the kernel on a 8 x 8 matrix.
TINY = 32

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        from threadpoolctl import ThreadpoolController

        _controller = ThreadpoolController()
    return _controller


def blas_limit(size):
    """Context holding BLAS to one thread when the largest dimension is small."""
    if size >= SMALL or size <= TINY:
        return contextlib.nullcontext()
    return _get_controller().limit(limits=1, user_api="blas")


def run_batch(kernels, m, n, *args, parallel=None):
    """Run a batched kernel: the parallel build when the batch has several
    small matrices (BLAS then held to one thread), else the serial build
    with BLAS threads left to the size rule of :func:`blas_limit`.

    ``parallel`` forces the choice (True/False) when not None.
    """
    serial, par = kernels
    use_par = (m >= 2 and n < SMALL) if parallel is None else bool(parallel)
    if m == 0 or n == 0:
        return
    if use_par:
        with _get_controller().limit(limits=1, user_api="blas"):
            par(*args)
    else:
        with blas_limit(n):
            serial(*args)
