"""Targets, the network loss with its layer gradients, and the optimal loss."""

import warnings

import numpy as np
import pytest
from conftest import (
    FD_RTOL,
    FD_STEP,
    REF_RTOL,
    REF_SINGULAR_RTOL,
    TOL,
    random_orthogonal,
    random_psd,
    relerr,
)

import bwfast
from bwfast import reference as ref

TAU = 0.3

# (widths d_0 .. d_N, rank of the n x n target). Every case keeps
# min width <= rank of the target, so the tau = 0 loss is differentiable.
ARCHITECTURES = {
    "depth1": ((7, 6), 6),
    "depth1-square": ((6, 6), 6),
    "depth2-bottleneck": ((5, 3, 6), 6),
    "depth3-wide": ((6, 8, 7, 6), 6),
    "depth4-bottleneck": ((4, 5, 2, 5, 6), 6),
    "depth3-latent-bottleneck": ((3, 5, 4, 6), 6),
    "depth3-second-bottleneck": ((6, 7, 2, 6), 6),
    "depth2-singular": ((5, 3, 6), 4),
    "depth3-singular": ((4, 6, 5, 6), 4),
}


def _layers(rng, dims):
    return [
        rng.standard_normal((dims[j + 1], dims[j])) / np.sqrt(dims[j])
        for j in range(len(dims) - 1)
    ]


def _case(name, seed):
    rng = np.random.default_rng(seed)
    dims, rank = ARCHITECTURES[name]
    cov = random_psd(rng, dims[-1], rank=rank)
    return rng, _layers(rng, dims), cov


def _loss(weights, target, tau):
    with warnings.catch_warnings():
        # Any RankDropWarning here means the test premise failed: keep error.
        warnings.simplefilter("error")
        return bwfast.loss_and_grad(weights, target, tau)[0]


# --------------------------------------------------------------------------
# Target


def test_target_attributes():
    rng = np.random.default_rng(300)
    cov = random_psd(rng, 6, rank=4)
    t = bwfast.Target(cov)
    assert t.n == 6 and t.rank == 4
    assert t.trace == pytest.approx(np.trace(cov), rel=TOL[np.float64])
    np.testing.assert_allclose(t.cov, cov, rtol=0, atol=1e-15)
    assert np.all(np.diff(t.eigvals) <= 0)
    np.testing.assert_allclose(t.eigvals, np.linalg.eigvalsh(cov)[::-1], atol=1e-14)
    V = t.eigvecs
    assert relerr(V.T @ V, np.eye(6)) < TOL[np.float64]
    assert relerr(cov @ V, V * t.eigvals) < TOL[np.float64]
    assert relerr(t.root @ t.root, cov) < TOL[np.float64]
    assert relerr(t.root, t.root.T) < TOL[np.float64]
    assert relerr(t.root, bwfast.sqrtm_psd(cov)) < TOL[np.float64]


def test_target_diagonal_exact():
    t = bwfast.Target(np.diag([1.0, 4.0, 0.0]))
    np.testing.assert_array_equal(t.eigvals, [4.0, 1.0, 0.0])
    np.testing.assert_allclose(t.root, np.diag([1.0, 2.0, 0.0]), atol=1e-15)
    assert t.rank == 2 and t.n == 3 and t.trace == 5.0


def test_target_from_samples_uses_ddof_one():
    rng = np.random.default_rng(301)
    X = rng.standard_normal((4, 6)) @ rng.standard_normal((6, 6))
    t = bwfast.Target.from_samples(X)
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(t.cov, Xc.T @ Xc / 3, rtol=1e-13, atol=1e-13)
    assert t.n == 6
    assert t.rank == 3  # fewer samples than features: rank samples - 1


def test_target_rejects_invalid_covariance():
    with pytest.raises(ValueError):
        bwfast.Target(np.diag([1.0, -1.0]))
    with pytest.raises(ValueError):
        bwfast.Target(np.ones((2, 3)))


# --------------------------------------------------------------------------
# loss_and_grad against the reference


@pytest.mark.parametrize("tau", [0.0, TAU])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_loss_and_grad_matches_reference(name, tau):
    _rng, ws, cov = _case(name, 310)
    loss, grads = bwfast.loss_and_grad(ws, bwfast.Target(cov), tau)
    ref_loss, ref_grads = ref.loss_and_grad(ws, cov, tau)
    assert isinstance(loss, float)
    assert loss >= 0.0
    singular = ARCHITECTURES[name][1] < cov.shape[0]
    # The reference loss is the trace formula through scipy.linalg.sqrtm: it
    # is accurate to sqrt(eps) only when a matrix under the root is singular.
    rtol = REF_SINGULAR_RTOL if singular or tau == 0 else REF_RTOL
    assert loss == pytest.approx(ref_loss, rel=rtol)
    assert len(grads) == len(ws)
    for g, rg, w in zip(grads, ref_grads, ws):
        assert g.shape == w.shape
        assert relerr(g, rg) < REF_RTOL


@pytest.mark.parametrize("tau", [0.0, TAU])
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_loss_and_grad_matches_finite_differences(name, tau):
    rng, ws, cov = _case(name, 320)
    t = bwfast.Target(cov)
    loss, grads = bwfast.loss_and_grad(ws, t, tau)
    for j, g in enumerate(grads):
        D = rng.standard_normal(g.shape)
        plus = [w + FD_STEP * D if i == j else w for i, w in enumerate(ws)]
        minus = [w - FD_STEP * D if i == j else w for i, w in enumerate(ws)]
        fd = (_loss(plus, t, tau) - _loss(minus, t, tau)) / (2 * FD_STEP)
        scale = np.linalg.norm(g) * np.linalg.norm(D) + loss
        assert abs(fd - np.sum(g * D)) < FD_RTOL * scale, f"layer {j}"


def test_loss_and_grad_accepts_array_target():
    _rng, ws, cov = _case("depth2-bottleneck", 330)
    via_target = bwfast.loss_and_grad(ws, bwfast.Target(cov), TAU)
    via_array = bwfast.loss_and_grad(ws, cov, TAU)
    assert via_array[0] == via_target[0]
    for a, b in zip(via_array[1], via_target[1]):
        np.testing.assert_array_equal(a, b)


def test_loss_is_bures_wasserstein_of_model_covariance():
    _rng, ws, cov = _case("depth3-singular", 331)
    W = ws[2] @ ws[1] @ ws[0]
    for tau in (0.0, TAU):
        loss = bwfast.loss_and_grad(ws, cov, tau)[0]
        model = W @ W.T + tau * np.eye(6)
        expected = bwfast.bures_wasserstein_squared(model, cov)
        assert loss == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d0", [5, 8])
def test_full_rank_gradient_norm_is_four_times_loss(d0):
    # Depth 1, tau = 0, k = n and a definite target: ||dL/dW||^2 = 4 L.
    rng = np.random.default_rng(340 + d0)
    cov = random_psd(rng, 5)
    W = rng.standard_normal((5, d0))
    loss, (g,) = bwfast.loss_and_grad([W], cov)
    assert np.sum(g**2) == pytest.approx(4.0 * loss, rel=TOL[np.float64])


# --------------------------------------------------------------------------
# optimal_loss and the global minimum


def test_optimal_loss_known_values():
    cov = np.diag([0.25, 4.0, 1.0])
    assert bwfast.optimal_loss(cov, 1) == pytest.approx(1.25, rel=1e-15)
    assert bwfast.optimal_loss(cov, 3) == 0.0
    assert bwfast.optimal_loss(cov, 0) == pytest.approx(5.25, rel=1e-15)
    # sqrt(tau) = 0.5: lambda = 1 contributes 0.25, lambda = 0.25 nothing.
    assert bwfast.optimal_loss(cov, 1, 0.25) == pytest.approx(0.25, rel=1e-15)
    # tau = 2 > lambda_2 = 1: index 2 is not kept even though k = 2.
    expected = (1.0 - np.sqrt(2.0)) ** 2 + (0.5 - np.sqrt(2.0)) ** 2
    assert bwfast.optimal_loss(cov, 2, 2.0) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("tau", [0.0, 0.05, 0.7, 3.0])
@pytest.mark.parametrize("k", [0, 1, 3, 6])
def test_optimal_loss_matches_reference(k, tau):
    rng = np.random.default_rng(350)
    cov = random_psd(rng, 6, rank=5, low=0.1, high=2.0)
    expected = ref.optimal_loss(cov, k, tau)
    got = bwfast.optimal_loss(bwfast.Target(cov), k, tau)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("tau", [0.0, 0.1])
@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_eigendecomposition_is_a_minimum(depth, tau):
    rng = np.random.default_rng(360 + depth)
    n, k = 6, 3
    t = bwfast.Target(random_psd(rng, n, rank=5, low=0.5, high=3.0))
    W = t.eigvecs[:, :k] * np.sqrt(t.eigvals[:k] - tau)
    if depth == 1:
        ws = [W]
    else:
        Q = random_orthogonal(rng, k)
        ws = [Q, W @ Q.T]
    loss, grads = bwfast.loss_and_grad(ws, t, tau)
    assert loss == pytest.approx(bwfast.optimal_loss(t, k, tau), rel=1e-12)
    for g in grads:
        assert np.linalg.norm(g) < 1e-12 * np.sqrt(t.trace)
    # A step away in any direction raises the loss (a minimum, not a saddle).
    D = rng.standard_normal(W.shape)
    assert _loss([W + 1e-3 * D], t, tau) > loss
