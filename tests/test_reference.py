"""The SciPy reference checked against identities, so it can serve as an oracle."""

import numpy as np
import pytest
import scipy.linalg as sla
from conftest import (
    FD_RTOL,
    FD_STEP,
    REF_RTOL,
    REF_SINGULAR_RTOL,
    random_orthogonal,
    random_psd,
    random_sym,
    relerr,
)

from bwfast import reference as ref


def test_sqrtm_psd_squares_back_and_is_real():
    rng = np.random.default_rng(0)
    A = random_psd(rng, 6)
    S = ref.sqrtm_psd(A)
    assert S.dtype == np.float64
    assert relerr(S @ S, A) < REF_RTOL
    assert relerr(S, S.T) < REF_RTOL


def test_sqrtm_psd_singular_is_real():
    v = np.array([[1.0], [2.0], [3.0]])
    S = ref.sqrtm_psd(v @ v.T)
    assert not np.iscomplexobj(S)
    assert relerr(S, v @ v.T / np.sqrt(14.0)) < REF_SINGULAR_RTOL


def test_sqrtm_psd_stack_loops_over_leading_axes():
    rng = np.random.default_rng(1)
    A = np.stack([random_psd(rng, 4) for _ in range(6)]).reshape(2, 3, 4, 4)
    S = ref.sqrtm_psd(A)
    assert S.shape == A.shape
    np.testing.assert_array_equal(S[1, 2], ref.sqrtm_psd(A[1, 2]))


def test_inv_sqrtm_psd_is_pseudo_inverse_root():
    rng = np.random.default_rng(2)
    A = random_psd(rng, 5, rank=3)
    Si = ref.inv_sqrtm_psd(A)
    U = np.linalg.eigh(A)[1][:, -3:]
    assert relerr(Si @ A @ Si, U @ U.T) < REF_SINGULAR_RTOL


def test_sqrtm_frechet_solves_sylvester_and_matches_block_identity():
    rng = np.random.default_rng(3)
    n = 4
    A, E = random_psd(rng, n), random_sym(rng, n)
    X = ref.sqrtm_frechet(A, E)
    S = ref.sqrtm_psd(A)
    assert relerr(S @ X + X @ S, E) < REF_RTOL
    block = sla.sqrtm(np.block([[A, E], [np.zeros((n, n)), A]]))
    assert relerr(X, block[:n, n:].real) < REF_RTOL


def test_bures_wasserstein_known_value():
    v = np.array([[1.0], [2.0], [3.0]])
    expected = np.sqrt(17.0 - 2.0 * np.sqrt(14.0))
    got = ref.bures_wasserstein(np.eye(3), v @ v.T)
    # The trace formula through sqrtm of a singular product: sqrt(eps) level.
    assert abs(got - expected) < REF_SINGULAR_RTOL * expected


def test_bures_wasserstein_commuting_pair():
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.5, 2.0, 5), rng.uniform(0.5, 2.0, 5)
    Q = random_orthogonal(rng, 5)
    got = ref.bures_wasserstein_squared((Q * a) @ Q.T, (Q * b) @ Q.T)
    exact = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert abs(got - exact) < REF_RTOL * (a.sum() + b.sum())


def test_frechet_distance_adds_mean_term():
    rng = np.random.default_rng(5)
    A, B = random_psd(rng, 3), random_psd(rng, 3)
    m1, m2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 3.0])
    got = ref.frechet_distance(m1, A, m2, B)
    assert got == pytest.approx(25.0 + ref.bures_wasserstein_squared(A, B))


def test_ot_map_pushes_forward():
    rng = np.random.default_rng(6)
    A, B = random_psd(rng, 5), random_psd(rng, 5, rank=2)
    T = ref.ot_map(A, B)
    assert relerr(T @ A @ T, B) < REF_SINGULAR_RTOL


def _layers(rng, dims):
    return [rng.standard_normal((dims[j + 1], dims[j])) for j in range(len(dims) - 1)]


def test_end_to_end_product_order():
    rng = np.random.default_rng(7)
    Ws = _layers(rng, (2, 3, 4, 5))
    W = ref.end_to_end(Ws)
    assert W.shape == (5, 2)
    np.testing.assert_allclose(W, Ws[2] @ Ws[1] @ Ws[0], rtol=1e-14)


# ref.loss is the trace formula through scipy.linalg.sqrtm, which is only
# accurate to sqrt(eps) when W W^T + tau I is singular: keep it definite
# here (tau > 0, or tau = 0 with every width at least n).
@pytest.mark.parametrize(("dims", "tau"), [((6, 5, 5), 0.0), ((4, 3, 5), 0.3)])
def test_loss_and_grad_finite_differences(dims, tau):
    rng = np.random.default_rng(8)
    Ws = _layers(rng, dims)
    cov = random_psd(rng, 5)
    loss, grads = ref.loss_and_grad(Ws, cov, tau)
    assert loss == pytest.approx(ref.loss(Ws, cov, tau), rel=1e-14)
    for j, g in enumerate(grads):
        D = rng.standard_normal(g.shape)
        plus = [W + FD_STEP * D if i == j else W for i, W in enumerate(Ws)]
        minus = [W - FD_STEP * D if i == j else W for i, W in enumerate(Ws)]
        fd = (ref.loss(plus, cov, tau) - ref.loss(minus, cov, tau)) / (2 * FD_STEP)
        scale = np.linalg.norm(g) * np.linalg.norm(D)
        assert abs(fd - np.sum(g * D)) < FD_RTOL * scale


@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_optimal_loss_attained_at_truncated_eigendecomposition(tau):
    rng = np.random.default_rng(9)
    cov = random_psd(rng, 5)
    lam, Om = np.linalg.eigh(cov)
    lam, Om = lam[::-1], Om[:, ::-1]
    W = Om[:, :2] * np.sqrt(lam[:2] - tau)
    loss, (g,) = ref.loss_and_grad([W], cov, tau)
    # At tau = 0 the model covariance W W^T is singular (rank 2 of 5).
    rtol = REF_SINGULAR_RTOL if tau == 0 else REF_RTOL
    assert loss == pytest.approx(ref.optimal_loss(cov, 2, tau), rel=rtol)
    assert np.linalg.norm(g) < REF_RTOL * np.linalg.norm(W)


def test_optimal_loss_known_values():
    cov = np.diag([4.0, 1.0, 0.25])
    assert ref.optimal_loss(cov, 1) == pytest.approx(1.25, rel=1e-15)
    assert ref.optimal_loss(cov, 1, 0.25) == pytest.approx(0.25, rel=1e-15)
    expected = (1.0 - np.sqrt(2.0)) ** 2 + (0.5 - np.sqrt(2.0)) ** 2
    assert ref.optimal_loss(cov, 2, 2.0) == pytest.approx(expected, rel=1e-15)


def test_gd_step_descends():
    rng = np.random.default_rng(10)
    Ws = _layers(rng, (3, 3, 3))
    cov = random_psd(rng, 3)
    _, grads = ref.loss_and_grad(Ws, cov, 0.1)
    new = ref.gd_step(Ws, cov, 0.1, 1e-3)
    for W, g, Wn in zip(Ws, grads, new):
        np.testing.assert_allclose(Wn, W - 1e-3 * g, rtol=1e-14)
    assert ref.loss(new, cov, 0.1) < ref.loss(Ws, cov, 0.1)
