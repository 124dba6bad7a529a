"""Diagnostics along a run, gradient flow, predicted and observed rates."""

import numpy as np
import pytest

import bwfast
from bwfast import Status, Target, fit, loss_and_grad, optimal_loss
from bwfast.train import balancedness


def spd(seed, n, cond=10.0):
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.geomspace(cond, 1.0, n)
    return (Q * lam) @ Q.T


@pytest.fixture(scope="module")
def target5():
    return Target(spd(3, 5))


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_diagnostics_match_direct_computation(target5, tau):
    widths = (5, 4, 3, 5)  # a bottleneck k = 3 < n
    res = fit(target5, widths, tau=tau, steps=95, record_every=10, tol=0.0)
    d = res.diagnostics
    assert res.status is Status.STEP_LIMIT
    np.testing.assert_array_equal(d.steps, res.loss_steps)
    assert d.steps[-1] == 95  # the last point, off the stride, is recorded
    np.testing.assert_array_equal(d.gap, res.losses - res.optimum)
    assert d.sigma.shape == (d.steps.size, 3)
    # the last record against a direct computation at the final weights
    ws = [np.array(w) for w in res.weights]
    loss, grads = loss_and_grad(ws, target5, tau)
    assert d.grad_norm[-1] == pytest.approx(
        np.sqrt(sum(np.sum(g * g) for g in grads)), rel=1e-10)
    W = bwfast.end_to_end(ws)
    U, s, _ = np.linalg.svd(W)
    np.testing.assert_allclose(d.sigma[-1], s[:3], rtol=1e-12)
    bw = bwfast.bures_wasserstein(W @ W.T + tau * np.eye(5), target5.cov)
    lam3 = target5.eigvals[2]
    assert d.margin[-1] == pytest.approx(np.sqrt(lam3) - bw, abs=1e-9)
    assert d.balancedness[-1] == pytest.approx(
        balancedness(ws, relative=False), rel=1e-10)
    align = np.sum((U[:, :3].T @ target5.eigvecs[:, :3]) ** 2) / 3
    assert d.alignment[-1] == pytest.approx(align, rel=1e-10)
    # G itself: with tau > 0, G = 2 (W - R0 M^{-1/2} R0 W)
    if tau > 0:
        M = target5.root @ (W @ W.T + tau * np.eye(5)) @ target5.root
        G = 2 * (W - target5.root @ bwfast.inv_sqrtm_psd(M) @ target5.root @ W)
        assert d.e2e_grad_norm[-1] == pytest.approx(np.linalg.norm(G), rel=1e-8)


@pytest.mark.parametrize("tau", [0.0, 0.4])
def test_square_network_records_refined_svd(target5, tau):
    # d0 = n with no bottleneck: the loop refines the SVD of W from one
    # record to the next instead of calling LAPACK; the last record (at
    # the step limit, in the loop) against LAPACK at the final weights
    res = fit(target5, (5, 5, 5, 5), tau=tau, steps=100, record_every=10,
              tol=0.0)
    d = res.diagnostics
    assert d.steps[-1] == 100
    W = bwfast.end_to_end([np.array(w) for w in res.weights])
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(d.sigma[-1], s, rtol=1e-12)
    assert np.all(np.diff(d.sigma, axis=1) <= 0)  # sorted, every record
    np.testing.assert_allclose(d.alignment, 1.0, atol=1e-12)


def test_diagnostics_along_a_converging_run(target5):
    res = fit(target5, (5, 3, 3, 5), record_every=5)
    d = res.diagnostics
    assert res.converged, res.message
    # the learned end-to-end matrix captures the top-3 eigenspace
    assert d.alignment[-1] == pytest.approx(1.0, abs=1e-10)
    np.testing.assert_allclose(d.sigma[-1] ** 2, target5.eigvals[:3], rtol=1e-6)
    # margin at the end: sqrt(lambda_3) - sqrt(optimum)
    assert d.margin[-1] == pytest.approx(
        np.sqrt(target5.eigvals[2]) - np.sqrt(res.optimum), abs=1e-6)
    assert d.margin[0] == pytest.approx(res.margin, abs=1e-12)
    assert d.gap[-1] < 1e-6 * res.optimum
    assert d.grad_norm[-1] < 1e-3 * d.grad_norm[0]
    assert np.all(np.isfinite(d.balancedness))


def test_e2e_gradient_norm_squared_is_four_times_loss_along_a_run():
    # tau = 0 and k = n: ||dL/dW||^2 = 4 L at every full-rank point
    S0 = spd(4, 6)
    res = fit(S0, (6, 6, 6, 6), record_every=1, tol=1e-9)
    d = res.diagnostics
    assert res.converged, res.message
    live = res.losses > 1e-20 * np.trace(S0)
    assert live.sum() > 20
    ratio = d.e2e_grad_norm[live] ** 2 / (4 * res.losses[live])
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-10, atol=0)
    # a bottleneck breaks the identity: the discarded directions add loss
    # without gradient
    res = fit(S0, (6, 3, 6), steps=50, tol=0.0)
    assert res.diagnostics.e2e_grad_norm[-1] ** 2 < 0.5 * 4 * res.loss


def test_diagnostics_off_and_auto():
    S0 = spd(5, 4)
    assert fit(S0, (4, 4), steps=5, diagnostics=False).diagnostics is None
    assert fit(S0, (4, 4), steps=5).diagnostics is not None  # small: on
    res = fit(S0, (4, 300, 4), steps=2)  # a wide layer: off by default
    assert res.diagnostics is None
    with pytest.raises(TypeError, match="`diagnostics`"):
        fit(S0, (4, 4), diagnostics="yes")


def test_diverged_run_leaves_last_record_nan():
    S0 = spd(6, 4)
    lr = 5e3 * bwfast.default_lr(S0, (4, 4, 4))
    res = fit(S0, (4, 4, 4), lr=lr, steps=200, record_every=1)
    assert res.status is Status.DIVERGED
    assert np.isfinite(res.diagnostics.gap[0])
    assert np.all(np.isfinite(np.concatenate(
        [w.ravel() for w in res.weights])))


# ---------------------------------------------------------------- flow


def test_flow_conserves_balancedness_and_gd_drifts_with_the_step():
    S0 = spd(7, 4, cond=20.0)
    widths = (4, 4, 4, 4)
    base = bwfast.default_lr(S0, widths)
    horizon = 400 * base  # the same continuous time for every run
    flow = fit(S0, widths, method="flow", lr=base, steps=400, tol=0.0,
               flow_rtol=1e-11, record_every=1)
    assert flow.method == "flow"
    assert np.all(np.diff(flow.times) > 0)
    assert flow.times[-1] == pytest.approx(horizon, rel=1e-12)
    scale = np.trace(S0)
    flow_defect = np.max(flow.diagnostics.balancedness)
    assert flow_defect < 1e-8 * scale
    drift = []
    for factor in (1.0, 0.5, 0.25):
        lr = factor * base
        gd = fit(S0, widths, lr=lr, steps=int(round(horizon / lr)), tol=0.0)
        drift.append(gd.diagnostics.balancedness[-1])
    # GD drifts by O(step) overall: halving the step about halves the drift
    assert drift[0] > drift[1] > drift[2] > 100 * flow_defect
    assert 1.5 < drift[0] / drift[1] < 3.0
    assert 1.5 < drift[1] / drift[2] < 3.0
    # the flow and small-step GD reach the same point
    assert flow.loss < 1e-12 * scale


@pytest.mark.parametrize("tau", [0.0, 0.25])
def test_flow_reaches_optimum(tau):
    S0 = spd(8, 4)
    t = Target(S0)
    res = fit(t, (4, 2, 4), tau=tau, method="flow", record_every=1)
    assert res.status is Status.CONVERGED, res.message
    lam = t.eigvals
    expected = (lam[2:].sum() if tau == 0 else
                np.sum((np.sqrt(lam[2:]) - np.sqrt(tau)) ** 2))
    assert res.optimum == pytest.approx(expected, rel=1e-13)
    assert res.relative_gap < 1e-8
    assert res.loss == pytest.approx(optimal_loss(t, 2, tau), rel=1e-8)


def test_flow_with_a_loose_tolerance_ends_where_the_loss_would_rise():
    rng = np.random.default_rng(3)
    Q = np.linalg.qr(rng.standard_normal((4, 4)))[0]
    S0 = (Q * np.array([4.0, 3.0, 2.0, 1.0])) @ Q.T
    loose = fit(S0, (4, 4, 4, 4), init="margin", method="flow",
                flow_rtol=1e-6, steps=3000, record_every=1)
    assert loose.status is Status.STEP_LIMIT
    assert "the loss rose" in loose.message and "lower flow_rtol" in loose.message
    assert np.all(np.diff(loose.losses) <= 0)  # the history is the flow's
    assert not loose.observed_rate < 0
    tight = fit(S0, (4, 4, 4, 4), init="margin", method="flow", steps=3000,
                record_every=1)
    assert tight.status is Status.CONVERGED, tight.message
    assert np.all(np.diff(tight.losses) <= 1e-9 * tight.losses[:-1])
    assert tight.observed_time_rate >= tight.predicted_rate > 0


def test_flow_bad_arguments():
    S0 = spd(9, 3)
    with pytest.raises(ValueError, match="`method`"):
        fit(S0, (3, 3), method="newton")
    with pytest.raises(TypeError, match="`dtype` must be float64"):
        fit(S0, (3, 3), method="flow", dtype=np.float32)
    with pytest.raises(ValueError, match="`flow_rtol`"):
        fit(S0, (3, 3), method="flow", flow_rtol=1e-20)
    with pytest.raises(ValueError, match="`flow_rtol`"):
        fit(S0, (3, 3), method="flow", flow_rtol=-1.0)


# ---------------------------------------------------------------- rates


@pytest.mark.parametrize("method", ["gd", "flow"])
def test_observed_rate_at_least_predicted_with_margin(method):
    t = Target(spd(10, 4, cond=4.0))
    widths = (4, 4, 4, 4)
    # a balanced start near the target's root: inside the margin
    rng = np.random.default_rng(1)
    W0 = t.root @ (np.eye(4) + 0.05 * rng.standard_normal((4, 4)))
    start = bwfast.balanced_weights(W0, widths)
    res = fit(t, widths, init=start, method=method, record_every=1, tol=1e-10)
    assert res.converged, res.message
    assert res.margin > 0
    assert res.prediction.startswith("4 N c")
    assert res.predicted_rate == pytest.approx(
        bwfast.predicted_flow_rate(res.margin, 3))
    assert np.isfinite(res.observed_time_rate)
    assert res.observed_time_rate >= res.predicted_rate
    assert res.rate_ratio >= 1.0
    # the log-gap is linear: the fitted rate reproduces the history's decay
    gap = res.losses - res.optimum
    x = res.times if method == "flow" else res.loss_steps
    i, j = 2, np.flatnonzero(gap > 1e-12 * gap[0])[-1]
    empirical = np.log(gap[i] / gap[j]) / (x[j] - x[i])
    assert res.observed_rate == pytest.approx(empirical, rel=0.5)


def test_no_prediction_outside_the_theory():
    S0 = spd(11, 4)
    assert "k = n" in fit(S0, (4, 2, 4), steps=5).prediction
    assert "tau = 0" in fit(S0, (4, 4, 4), tau=0.1, steps=5).prediction
    res = fit(S0, (4, 4, 4), steps=5, loss="frobenius")
    assert np.isnan(res.predicted_rate) and "BW loss" in res.prediction
    # an unbalanced start
    rng = np.random.default_rng(0)
    ws = [rng.standard_normal((4, 4)) for _ in range(2)]
    res = fit(S0, (4, 4, 4), init=ws, steps=5)
    assert np.isnan(res.predicted_rate)
    assert "balanced" in res.prediction or "margin" in res.prediction


def test_observed_rate_edge_cases():
    from bwfast import observed_rate

    steps = np.arange(0, 50, 5)
    assert np.isnan(observed_rate(np.ones(10), steps, 1.0))  # at the optimum
    assert np.isnan(observed_rate([2.0, 1.5], [0, 1], 1.0))  # too short
    assert observed_rate(2.0 + np.zeros(10) + 1.0, steps, 2.0) == 0.0
    with pytest.raises(ValueError, match="same length"):
        observed_rate([1.0, 2.0], [0], 0.0)
    with pytest.raises(ValueError, match="`optimum`"):
        observed_rate([1.0, 2.0], [0, 1], np.nan)
    with pytest.raises(ValueError, match="strictly increasing"):
        observed_rate([1.0, 0.5, 0.25, 0.125], [0, 0, 0, 0], 0.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        observed_rate([1.0, 0.5, 0.25], [2, 1, 0], 0.0)


@pytest.mark.parametrize("margin, depth, exc, text", [
    (0.5, 2.5, TypeError, "`depth` must be an integer"),
    (0.5, True, TypeError, "`depth`"),
    (0.5, np.nan, TypeError, "`depth`"),
    (0.5, 0, ValueError, "`depth` must be >= 1"),
    (np.nan, 2, ValueError, "`margin` must be finite"),
    (np.inf, 2, ValueError, "`margin` must be finite"),
])
def test_predicted_flow_rate_validates(margin, depth, exc, text):
    with pytest.raises(exc, match=text):
        bwfast.predicted_flow_rate(margin, depth)
    assert np.isnan(bwfast.predicted_flow_rate(-0.1, 3))


# ------------------------------------------------------- the two losses


def test_bw_and_square_loss_from_the_same_start_reach_their_optima():
    t = Target(spd(12, 5))
    widths = (5, 2, 2, 5)
    start = fit(t, widths, steps=0).weights  # one balanced start for both
    bw = fit(t, widths, init=start, tol=1e-9)
    sq = fit(t, widths, init=start, loss="frobenius", tol=1e-9)
    lam = t.eigvals
    assert bw.converged and sq.converged, (bw.message, sq.message)
    assert bw.optimum == pytest.approx(lam[2:].sum(), rel=1e-13)
    assert sq.optimum == pytest.approx(np.sum(lam[2:] ** 2), rel=1e-13)
    assert bw.relative_gap < 1e-8 and sq.relative_gap < 1e-8
    # both learn the top-2 eigenspace
    assert bw.diagnostics.alignment[-1] == pytest.approx(1.0, abs=1e-8)
    assert sq.diagnostics.alignment[-1] == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_square_loss_runs_record_the_bw_margin(target5, tau):
    # the margin is a BW quantity: square-loss runs compute it apart
    res = fit(target5, (5, 3, 5), tau=tau, loss="frobenius", steps=40, tol=0.0,
              diagnostics=True)
    W = bwfast.end_to_end([np.array(w) for w in res.weights])
    bw = bwfast.bures_wasserstein(W @ W.T + tau * np.eye(5), target5.cov)
    expected = np.sqrt(target5.eigvals[2]) - bw
    assert res.diagnostics.margin[-1] == pytest.approx(expected, abs=1e-12)
