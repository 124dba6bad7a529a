"""bwfast.kernels from user Numba code; parallel and serial batches agree."""

import numpy as np
import pytest
from numba import njit

import bwfast
from bwfast import _kernels as K
from bwfast import kernels


def _spd_stack(rng, m, n, rank=None):
    rank = n if rank is None else rank
    X = rng.standard_normal((m, n, rank))
    return X @ np.swapaxes(X, -1, -2)


@njit
def _user_function(A, B):
    # a user's compiled code composing bwfast kernels
    S = kernels.sqrtm_psd(A)
    T = kernels.ot_map(A, B)
    d2 = kernels.bures_wasserstein_squared(A, B)
    X = kernels.sqrtm_frechet(A, B)
    Si = kernels.inv_sqrtm_psd(A)
    return S, T, d2, X, Si


def test_kernels_callable_from_user_njit():
    rng = np.random.default_rng(0)
    A, B = _spd_stack(rng, 2, 5)
    S, T, d2, X, Si = _user_function(A, B)
    np.testing.assert_allclose(S @ S, A, atol=1e-12 * np.abs(A).max())
    np.testing.assert_allclose(T @ A @ T, B, atol=1e-10 * np.abs(B).max())
    assert d2 == pytest.approx(bwfast.bures_wasserstein_squared(A, B), rel=1e-13)
    np.testing.assert_allclose(S @ X + X @ S, B, atol=1e-11 * np.abs(B).max())
    np.testing.assert_allclose(Si @ A @ Si, np.eye(5), atol=1e-10)


def test_network_kernel_from_user_njit():
    rng = np.random.default_rng(1)
    dims = np.array([4, 3, 5], dtype=np.int64)
    t = bwfast.Target(_spd_stack(rng, 1, 5)[0])
    ws = [rng.standard_normal((3, 4)), rng.standard_normal((5, 3))]

    @njit
    def user_step(theta, dims, R0, S0, tr0, lr):
        grad = np.empty_like(theta)
        pbuf = np.empty(max(kernels.prefix_size(dims), 1))
        G = np.empty((dims[-1], dims[0]))
        loss, _ = kernels.network_loss_grad(
            theta, dims, R0, S0, tr0, 0.0, 3, 1e-12, grad, pbuf, G
        )
        return loss, theta - lr * grad

    theta = np.concatenate([w.ravel() for w in ws])
    R0, S0 = t.arrays(np.float64)
    loss, new = user_step(theta, dims, R0, S0, t.trace, 0.01)
    ref_loss, grads = bwfast.loss_and_grad(ws, t)
    assert loss == pytest.approx(ref_loss, rel=1e-13)
    expected = theta - 0.01 * np.concatenate([g.ravel() for g in grads])
    np.testing.assert_array_equal(new, expected)
    off = kernels.layer_offsets(dims)
    assert list(off) == [0, 12, 27]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ["sqrtm_psd", "sqrtm_frechet", "bw_squared", "ot_map"])
def test_parallel_and_serial_batches_identical(name, dtype):
    rng = np.random.default_rng(2)
    m, n = 37, 6
    A = _spd_stack(rng, m, n, rank=4).astype(dtype)
    B = _spd_stack(rng, m, n).astype(dtype)
    serial, par = K.BATCH[name]
    wmin, wmax = np.zeros(m), np.zeros(m)
    if name == "sqrtm_psd":
        outs = [np.empty_like(A) for _ in range(2)]
        for f, out in zip((serial, par), outs):
            f(A, False, out, wmin, wmax)
    elif name == "sqrtm_frechet":
        outs = [np.empty_like(A) for _ in range(2)]
        for f, out in zip((serial, par), outs):
            f(A, B, out, wmin, wmax)
    else:
        shape = (m,) if name == "bw_squared" else A.shape
        outs = [np.empty(shape, np.float64 if name == "bw_squared" else dtype)
                for _ in range(2)]
        for f, out in zip((serial, par), outs):
            f(A, B, out, np.zeros((m, 4)))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_public_stack_uses_parallel_path_and_matches_loop():
    rng = np.random.default_rng(3)
    A = _spd_stack(rng, 64, 5)
    B = _spd_stack(rng, 64, 5)
    d2 = bwfast.bures_wasserstein_squared(A, B)
    loop = [bwfast.bures_wasserstein_squared(a, b) for a, b in zip(A, B)]
    np.testing.assert_array_equal(d2, loop)


def test_import_compiles_nothing():
    import subprocess
    import sys

    code = (
        "import bwfast, bwfast._kernels as K\n"
        "print(len(K.sqrtm_psd_1.signatures), len(K.descend.signatures))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == ["0", "0"]


@pytest.mark.parametrize("n", [1, 2, 4, 8])
@pytest.mark.parametrize("kind", ["random", "singular", "repeated", "diagonal"])
def test_jacobi_matches_lapack(n, kind):
    rng = np.random.default_rng(10 + n)
    Q0 = np.linalg.qr(rng.standard_normal((n, n)))[0]
    if kind == "random":
        lam = rng.uniform(0.1, 10.0, n)
    elif kind == "singular":
        lam = np.where(np.arange(n) < n // 2, 0.0, rng.uniform(1, 2, n))
    elif kind == "repeated":
        lam = np.repeat([1.0, 3.0], (n + 1) // 2)[:n]
    else:
        lam = rng.uniform(0.1, 10.0, n)
        Q0 = np.eye(n)
    A = (Q0 * lam) @ Q0.T
    S = A.copy()
    Q = np.empty_like(A)
    assert K.jacobi_eigh_inplace(S, Q)
    w = np.diag(S)
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(A),
                               atol=1e-14 * np.abs(lam).max())
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e-14)
    np.testing.assert_allclose((Q * w) @ Q.T, A, atol=1e-13 * np.abs(lam).max())


def test_small_and_lapack_paths_agree_at_the_boundary():
    # n = 8 goes through Jacobi, n = 9 through LAPACK: both square back
    rng = np.random.default_rng(11)
    for n in (K.JACOBI_MAX_N, K.JACOBI_MAX_N + 1):
        X = rng.standard_normal((3, n, n - 2))
        A = X @ np.swapaxes(X, -1, -2)  # singular, rank n - 2
        S = bwfast.sqrtm_psd(A)
        np.testing.assert_allclose(S @ S, A, atol=1e-12 * np.abs(A).max())
        np.testing.assert_allclose(S, bwfast.reference.sqrtm_psd(A), atol=1e-6)
