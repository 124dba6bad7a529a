"""Warm-started decompositions of the small-network descent loop (bwfast._small).

The refined SVD and eigendecomposition must agree with LAPACK's to the
accuracy the two share, fall back to LAPACK where they do not converge, and
leave the fused descent loop in agreement with steps taken one at a time
through the public loss_and_grad.
"""

import numpy as np
import pytest
from conftest import random_orthogonal

from bwfast import Target, balanced_weights, default_lr, fit, loss_and_grad
from bwfast import _kernels as K
from bwfast import _small as S
from bwfast.network import pack, rank_rtol

EPS = np.finfo(np.float64).eps
N = 20

# Agreement with LAPACK in units of eps times the largest singular value or
# eigenvalue: both routes are backward stable, to a few dozen ulps at
# n = 20 (measured at most 13 for singular values, 20 for eigenvalues).
VALUE_ULPS = 100

# The polar factor U V^T has condition number about kappa = s_1 / s_n, and
# both routes are accurate to about eps * kappa (measured at most
# 10 eps kappa): about 1e-13 on well-conditioned input, that bound beyond.
POLAR_ULPS = 100

# Fused descent against steps through loss_and_grad, relative to the loss:
# measured at most 8e-14 over 300 steps at n = 20, depth 10 (the same as
# before the refinement, 8e-14); float32 in units of its eps and the
# target's trace (measured 4e-5 relative at tau = 0.5, as before).
FUSED_RTOL = {np.float64: 1e-12, np.float32: 3e-4}

SINGULAR_VALUES = {
    "cond10": np.geomspace(1.0, 0.1, N),
    "cond1e4": np.geomspace(1.0, 1e-4, N),
    # s_n / s_1 = 1e-11, just above rank_rtol = 10 n eps = 4.4e-14
    "near-rank-drop": np.geomspace(1.0, 1e-11, N),
    "clustered": np.repeat([1.0, 2.0, 3.0, 5.0], N // 4),
    "all-equal": np.ones(N),
}

EIGENVALUES = {
    "cond10": np.geomspace(10.0, 1.0, N),
    "cond1e8": np.geomspace(1e8, 1.0, N),
    # a singular target: M is singular along its null space at every step
    "singular": np.r_[np.linspace(2.0, 0.5, N - 5), np.zeros(5)],
    "clustered": np.repeat([1.0, 2.0, 3.0, 5.0], N // 4),
    "near-equal": 1.0 + 1e-9 * np.arange(N),
}


def _moved(rng, B, delta):
    """B (I + delta E): a step's change, relative, keeping B's null space."""
    return B @ (np.eye(B.shape[1]) + delta * rng.standard_normal(B.shape) / N)


def _seeded_svd(X0):
    warm = S.warm_buffer(X0.shape[0], X0)
    U, _, Vt = np.linalg.svd(X0)
    S.seed_svd(warm, U, Vt, True)
    return warm


def _seeded_eigh(M0):
    warm = S.warm_buffer(M0.shape[0], M0)
    S.warm_eigh(M0, warm)  # a cold buffer: LAPACK, which seeds it
    assert S.is_warm(warm)
    return warm


# --------------------------------------------------------------------------
# (a) agreement with LAPACK


@pytest.mark.parametrize("delta", [1e-7, 1e-3])
@pytest.mark.parametrize("name", SINGULAR_VALUES)
def test_refined_svd_matches_lapack(name, delta):
    rng = np.random.default_rng(list(SINGULAR_VALUES).index(name))
    s0 = SINGULAR_VALUES[name]
    X0 = (random_orthogonal(rng, N) * s0) @ random_orthogonal(rng, N).T
    X = _moved(rng, X0, delta)
    warm = _seeded_svd(X0)
    status, smin, smax = S.refine_svd(X, rank_rtol(np.array([N, N]), np.float64),
                                      warm)
    assert status == 1
    U, s, Vt = np.linalg.svd(X)
    kappa = s[0] / s[-1]
    Ur, Vtr = warm[0], warm[1]
    values = np.sort(np.diag(Ur.T @ X @ Vtr.T))[::-1]
    np.testing.assert_allclose(values, s, rtol=0, atol=VALUE_ULPS * EPS * s[0])
    assert abs(smin / smax - s[-1] / s[0]) <= VALUE_ULPS * EPS
    # the polar factor: orthogonal, Q^T X symmetric positive definite (its
    # defining residuals, independent of kappa), and LAPACK's to eps kappa
    Q = Ur @ Vtr
    np.testing.assert_allclose(Q.T @ Q, np.eye(N), rtol=0, atol=10 * N * EPS)
    H = Q.T @ X
    np.testing.assert_allclose(H, H.T, rtol=0, atol=10 * N * EPS * s[0])
    assert np.linalg.eigvalsh((H + H.T) / 2).min() > 0
    np.testing.assert_allclose(Q, U @ Vt, rtol=0,
                               atol=POLAR_ULPS * EPS * max(kappa, 10.0))


@pytest.mark.parametrize("delta", [1e-7, 1e-3])
@pytest.mark.parametrize("name", EIGENVALUES)
def test_refined_eigh_matches_lapack(name, delta):
    rng = np.random.default_rng(10 + list(EIGENVALUES).index(name))
    lam = EIGENVALUES[name]
    B = random_orthogonal(rng, N) * np.sqrt(lam)
    M0 = B @ B.T
    Bm = _moved(rng, B, delta)
    M = Bm @ Bm.T
    warm = _seeded_eigh(M0)
    assert S.refine_eigh(M, warm)
    w = np.linalg.eigvalsh(M)
    Q = warm[0]
    d = np.diag(Q.T @ M @ Q)
    np.testing.assert_allclose(np.sort(d), w, rtol=0, atol=VALUE_ULPS * EPS * w[-1])
    np.testing.assert_allclose(Q.T @ Q, np.eye(N), rtol=0, atol=10 * N * EPS)
    np.testing.assert_allclose((Q * d) @ Q.T, M, rtol=0,
                               atol=10 * N * EPS * w[-1])
    if w[0] > 1e-3 * w[-1]:
        # well-conditioned: the inverse root the gradient uses, entrywise
        Wl, Ql = np.linalg.eigh(M)
        np.testing.assert_allclose((Q / np.sqrt(d)) @ Q.T,
                                   (Ql / np.sqrt(Wl)) @ Ql.T, rtol=0,
                                   atol=1e-13 / np.sqrt(w[0]))


def test_refined_gradients_match_the_direct_route():
    rng = np.random.default_rng(20)
    t = Target(np.cov(rng.standard_normal((N, 3 * N))))
    R0, S0 = t.arrays(np.float64)
    W0 = rng.standard_normal((N, N)) / np.sqrt(N)
    W = _moved(rng, W0, 1e-4)
    G, Gw = np.empty((N, N)), np.empty((N, N))
    # tau = 0
    warm = _seeded_svd(R0 @ W0)
    direct = K.e2e_grad_tau0(W, R0, N, 1e-13, G, W, W, False)
    refined = K.e2e_grad_tau0(W, R0, N, 1e-13, Gw, W, W, False, warm)
    assert refined[0] == pytest.approx(direct[0], rel=1e-13)
    assert refined[1] == pytest.approx(direct[1], rel=1e-12)
    np.testing.assert_allclose(Gw, G, rtol=0, atol=1e-13 * np.abs(G).max())
    # tau > 0
    X0 = R0 @ W0
    warm = _seeded_eigh(X0 @ X0.T + 0.5 * S0)
    direct = K.e2e_grad_tau(W, R0, S0, t.trace, 0.5, G)
    refined = K.e2e_grad_tau(W, R0, S0, t.trace, 0.5, Gw, -1, warm)
    assert refined[0] == pytest.approx(direct[0], rel=1e-13)
    np.testing.assert_allclose(Gw, G, rtol=0, atol=1e-13 * np.abs(G).max())


# --------------------------------------------------------------------------
# (b) the fallback


def test_cold_buffer_takes_lapack_and_seeds_it():
    rng = np.random.default_rng(30)
    X = rng.standard_normal((N, N))
    warm = S.warm_buffer(N, X)
    assert not S.is_warm(warm)
    G = np.empty((N, N))
    assert not S.polar_grad(X, np.eye(N), 1e-13, G, warm)[0]
    M = X @ X.T
    w, Q = S.warm_eigh(M, warm)
    wl, Ql = K._eigh_raw(M, True)  # the direct route's LAPACK call
    np.testing.assert_array_equal(w, wl)
    np.testing.assert_array_equal(Q, Ql)
    assert S.is_warm(warm)


def test_eigh_from_a_far_start_falls_back_to_lapack():
    # a random start for a spread spectrum: the refinement does not converge
    # in its sweep budget (0 of 40 seeds did), and LAPACK's answer is used
    rng = np.random.default_rng(31)
    B = random_orthogonal(rng, N) * np.sqrt(np.geomspace(1e6, 1.0, N))
    M = B @ B.T
    start = random_orthogonal(rng, N)
    warm = S.warm_buffer(N, M)
    warm[0] = start
    assert not S.refine_eigh(M, warm.copy())
    warm[0] = start
    w, Q = S.warm_eigh(M, warm)
    wl, Ql = K._eigh_raw(M, True)
    np.testing.assert_array_equal(w, wl)
    np.testing.assert_array_equal(Q, Ql)
    assert S.refine_eigh(M, warm)  # the next step starts from LAPACK's


@pytest.mark.parametrize("start", ["unrelated", "sign-flipped"])
def test_svd_from_a_far_start_falls_back_to_lapack(start):
    rng = np.random.default_rng(32)
    X = rng.standard_normal((N, N))
    R0 = np.eye(N)
    if start == "unrelated":
        warm = _seeded_svd(rng.standard_normal((N, N)))
    else:
        # repeated singular values of -I: U^T X V = -Sigma, all negative
        warm = _seeded_svd(X)
        warm[1] *= -1.0
    assert S.refine_svd(X, 1e-13, warm.copy())[0] != 1
    G, Gw = np.empty((N, N)), np.empty((N, N))
    direct = K.e2e_grad_tau0(X, R0, N, 1e-13, G, X, X, False)
    fallback = K.e2e_grad_tau0(X, R0, N, 1e-13, Gw, X, X, False, warm)
    assert fallback == direct
    np.testing.assert_array_equal(Gw, G)
    assert S.refine_svd(X, 1e-13, warm)[0] == 1  # reseeded by LAPACK


def test_rank_drop_on_the_warm_path_is_left_to_the_direct_route():
    rng = np.random.default_rng(33)
    s = np.geomspace(1.0, 0.1, N)
    Ua, Va = random_orthogonal(rng, N), random_orthogonal(rng, N)
    X0 = (Ua * s) @ Va.T
    s[-1] = 0.0
    X = (Ua * s) @ Va.T  # rank N - 1
    rr = rank_rtol(np.array([N, N]), np.float64)
    warm = _seeded_svd(X0)
    assert S.refine_svd(X, rr, warm.copy())[0] == -1
    G, Gw = np.empty((N, N)), np.empty((N, N))
    direct = K.e2e_grad_tau0(X, np.eye(N), N, rr, G, X, X, False)
    dropped = K.e2e_grad_tau0(X, np.eye(N), N, rr, Gw, X, X, False, warm)
    assert dropped == direct
    assert dropped[1] <= rr
    np.testing.assert_array_equal(Gw, G)
    assert not S.is_warm(warm)  # no factors of a rank-deficient step kept


# --------------------------------------------------------------------------
# (c) the fused loop against steps through the public loss_and_grad


@pytest.mark.parametrize("tau", [0.0, 0.5])
@pytest.mark.parametrize(
    "n, depth, dtype", [(N, 10, np.float64), (12, 3, np.float32)]
)
def test_fused_descent_matches_steps_through_loss_and_grad(n, depth, dtype, tau):
    widths = (n,) * (depth + 1)
    rng = np.random.default_rng(40)
    A = rng.standard_normal((n, n))
    t = Target(A @ A.T / n + 0.1 * np.eye(n))
    ws = [w.astype(dtype) for w in
          balanced_weights(rng.standard_normal((n, n)) / np.sqrt(n), widths)]
    dims = np.array(widths, dtype=np.int64)
    # the refined route is the one under test
    assert K.warm_state(dims, tau, n, K.BW_LOSS, pack(ws, dtype)).shape[1] == n
    lr = default_lr(t, widths, tau)
    res = fit(t, widths, tau=tau, lr=lr, steps=300, tol=0.0, init=ws,
              record_every=1, dtype=dtype)
    w = ws
    losses = []
    for _ in range(res.steps + 1):
        loss, grads = loss_and_grad(w, t, tau)
        losses.append(loss)
        w = [(wj - dtype(lr) * g).astype(dtype) for wj, g in zip(w, grads)]
    # relative to the loss, or to the trace once a tau = 0 loss reaches the
    # float32 floor (1e-12 of the trace there)
    scale = np.maximum(np.abs(losses), t.trace if dtype == np.float32 else 0.0)
    err = np.abs(res.losses - np.array(losses)) / scale
    assert err.max() < FUSED_RTOL[dtype]


@pytest.mark.parametrize(
    "widths, tau, loss, refined",
    [
        ((20,) * 11, 0.0, K.BW_LOSS, True),
        ((20,) * 11, 0.5, K.BW_LOSS, True),
        ((20, 5, 20), 0.5, K.BW_LOSS, True),  # tau > 0: any widths
        ((20, 5, 20), 0.0, K.BW_LOSS, False),  # bottleneck: factor route
        ((6, 6, 6), 0.0, K.BW_LOSS, True),
        ((6, 6, 6), 0.5, K.BW_LOSS, False),  # n <= 8: cold Jacobi
        ((20, 20), 0.0, K.FROBENIUS_LOSS, False),
        ((80, 80), 0.0, K.BW_LOSS, False),  # above WARM_MAX_N
    ],
)
def test_which_networks_get_a_warm_start(widths, tau, loss, refined):
    dims = np.array(widths, dtype=np.int64)
    k = int(dims.min())
    warm = K.warm_state(dims, tau, k, loss, np.zeros(1))
    assert warm.shape[1] == (widths[-1] if refined else 0)


def test_exactly_equal_values_do_not_divide_by_zero():
    # a coupling between two exactly equal diagonal entries asks for a
    # rotation by pi / 4 (tan 2 phi = e / 0): no ZeroDivisionError in the
    # compiled code, and the eigenvalues come out right
    n = 10
    d = np.array([3.0, 2.0, 2.0, 2.0, 1.5, 1.0, 1.0, 0.5, 0.5, 0.25])
    M = np.diag(d)
    M[1, 2] = M[2, 1] = 1e-3
    M[7, 8] = M[8, 7] = 1e-6
    warm = S.warm_buffer(n, M)
    warm[0][:, :] = np.eye(n)
    S.make_cold(warm)
    warm[0][:, :] = np.eye(n)  # warm start at the identity
    w, Q = S.warm_eigh(M, warm)
    np.testing.assert_allclose(np.sort(w), np.linalg.eigvalsh(M), rtol=0,
                               atol=1e-14)
    np.testing.assert_allclose(Q.T @ Q, np.eye(n), atol=1e-14)
    np.testing.assert_allclose(Q @ np.diag(w) @ Q.T, M, atol=1e-14)
    X = np.diag(d)
    X[1, 2] = 1e-3
    warm = S.warm_buffer(n, X)
    S.seed_svd(warm, np.eye(n), np.eye(n), True)
    status, smin, smax = S.refine_svd(X, 0.0, warm)
    if status == 1:
        s = np.sort(S.singular_values(warm))[::-1]
        np.testing.assert_allclose(s, np.linalg.svd(X, compute_uv=False),
                                   rtol=0, atol=1e-14)


def test_training_on_a_target_with_a_repeated_floor():
    # the floor lambda_min repeated many times, rotated: the tau > 0 loop
    # refines eigenvectors of nearly equal eigenvalues every step
    from bwfast.targets import synthetic_target

    t = synthetic_target("power", 12, lambda_max=1.0, lambda_min=0.3,
                         decay=2.0, seed=0)
    assert np.sum(np.isclose(t.eigvals, 0.3)) > 5
    res = fit(t, (12,) * 5, tau=0.1)
    assert res.converged, res.message
    assert res.relative_gap < 1e-10


def test_float32_keeps_the_direct_route_and_converges():
    # the refinement accepts at a backward error of 2 n eps, above float32's
    # convergence test at n = 33: float32 runs keep LAPACK every step
    from bwfast.targets import synthetic_target

    t = synthetic_target("power", 33, lambda_min=0.3, decay=2.0, seed=0)
    res = fit(t, (33,) * 4, tau=0.1, steps=20000, dtype=np.float32)
    assert res.converged, res.message
    assert res.relative_gap < 1e-4


def test_relative_gap_when_tau_equals_a_repeated_eigenvalue():
    # the rotated floor comes back as tau - 1e-16: the optimum is rounding
    # (1e-32), and the gap is taken relative to the loss scale instead
    from bwfast.targets import synthetic_target

    t = synthetic_target("power", 20, lambda_min=0.1, decay=2.0, seed=0)
    res = fit(t, (20,) * 3, tau=0.1, steps=300)
    assert 0.0 <= res.optimum < 1e-20
    assert res.relative_gap == pytest.approx(res.gap / (t.trace + 20 * 0.1))
    assert abs(res.relative_gap) < 1e-2
