"""The square-loss baseline ||W W^T + tau I - Sigma0||_F^2 (loss='frobenius')."""

import numpy as np
import pytest

import bwfast
from bwfast import Status, Target, fit, loss_and_grad, optimal_loss, reference

ARCHS = [(5, 5), (4, 3, 5), (5, 6, 2, 5), (3, 4, 4, 3, 5)]


def _case(widths, seed):
    rng = np.random.default_rng(seed)
    n = widths[-1]
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    cov = (Q * np.geomspace(5.0, 0.5, n)) @ Q.T
    ws = [rng.standard_normal((b, a)) / np.sqrt(a)
          for a, b in zip(widths[:-1], widths[1:])]
    return cov, ws


@pytest.mark.parametrize("widths", ARCHS)
@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_matches_reference_and_finite_differences(widths, tau):
    cov, ws = _case(widths, 1)
    loss, grads = loss_and_grad(ws, cov, tau, loss="frobenius")
    ref_loss, ref_grads = reference.frobenius_loss_and_grad(ws, cov, tau)
    assert loss == pytest.approx(ref_loss, rel=1e-12)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
    rng = np.random.default_rng(2)
    dirs = [rng.standard_normal(w.shape) for w in ws]
    h = 1e-6
    plus = loss_and_grad([w + h * d for w, d in zip(ws, dirs)], cov, tau,
                         loss="frobenius")[0]
    minus = loss_and_grad([w - h * d for w, d in zip(ws, dirs)], cov, tau,
                          loss="frobenius")[0]
    fd = (plus - minus) / (2 * h)
    exact = sum(float(np.sum(g * d)) for g, d in zip(grads, dirs))
    assert fd == pytest.approx(exact, rel=1e-7)


@pytest.mark.parametrize("tau", [0.0, 0.4])
def test_optimum_is_eckart_young(tau):
    cov, _ = _case((5, 5), 3)
    t = Target(cov)
    for k in range(6):
        expected = reference.frobenius_optimal_loss(cov, k, tau)
        assert optimal_loss(t, k, tau, loss="frobenius") == pytest.approx(
            expected, rel=1e-12, abs=1e-14)
    # the truncated eigendecomposition attains it
    k = 2
    lam, Om = t.eigvals, t.eigvecs
    W = Om[:, :k] * np.sqrt(np.maximum(lam[:k] - tau, 0.0))
    loss, (g,) = loss_and_grad([W], t, tau, loss="frobenius")
    assert loss == pytest.approx(optimal_loss(t, k, tau, loss="frobenius"),
                                 rel=1e-12)
    np.testing.assert_allclose(g, 0.0, atol=1e-12)


def test_fit_reaches_the_square_loss_optimum():
    cov, _ = _case((5, 5), 4)
    res = fit(cov, (5, 2, 2, 5), loss="frobenius")
    assert res.objective == "frobenius"
    assert res.status is Status.CONVERGED, res.message
    assert res.relative_gap < 1e-6
    assert res.optimum == pytest.approx(
        reference.frobenius_optimal_loss(cov, 2), rel=1e-12)


def test_unknown_loss_is_refused():
    with pytest.raises(ValueError, match="`loss`"):
        loss_and_grad([np.eye(2)], np.eye(2), loss="kl")
    with pytest.raises(ValueError, match="`loss`"):
        fit(np.eye(2), (2, 2), loss="l2")


def test_same_initialization_for_both_losses():
    cov, _ = _case((5, 5), 5)
    a = fit(cov, (5, 3, 5), steps=0)
    b = fit(cov, (5, 3, 5), steps=0, loss="frobenius")
    for wa, wb in zip(a.weights, b.weights):
        np.testing.assert_array_equal(wa, wb)
    assert bwfast.bures_wasserstein_squared(
        bwfast.end_to_end(a.weights) @ bwfast.end_to_end(a.weights).T, cov
    ) == pytest.approx(a.loss, rel=1e-10)
