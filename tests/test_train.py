"""Gradient-descent trainer: optimum reached, statuses, balancedness, result."""

import dataclasses
from importlib.resources import files

import numpy as np
import pytest

import bwfast
from bwfast import Status, Target, fit, optimal_loss

DIGITS_WIDTHS = (64, 16, 16, 64)


@pytest.fixture(scope="module")
def digits():
    with files("bwfast").joinpath("data", "digits_cov.npy").open("rb") as fh:
        return Target(np.load(fh))


def random_pd(rng, n, cond=10.0):
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    lam = np.geomspace(cond, 1.0, n)
    return (Q * lam) @ Q.T


def test_digits_default_job_reaches_optimum(digits):
    res = fit(digits, DIGITS_WIDTHS)
    assert digits.rank == 61  # three pixels never vary
    assert res.status is Status.CONVERGED, res.message
    expected = digits.eigvals[16:].sum()  # sum of discarded eigenvalues
    assert res.optimum == pytest.approx(expected, rel=1e-14)
    assert abs(res.loss - expected) / expected < 1e-6
    assert res.relative_gap < 1e-6
    # learned spectrum = top-16 eigenvalues of the target
    W = bwfast.end_to_end(res.weights)
    learned = np.linalg.eigvalsh(W @ W.T)[::-1][:16]
    np.testing.assert_allclose(learned, digits.eigvals[:16], rtol=1e-5)
    # balanced start, GD keeps it balanced up to O(step)
    assert np.isfinite(res.balancedness)
    assert 0.0 < res.balancedness < 0.2  # relative O(step) drift
    # exactly balanced at the start
    start = fit(digits, DIGITS_WIDTHS, steps=0)
    assert start.balancedness < 1e-12


def test_full_rank_target_loss_below_1e9_trace():
    rng = np.random.default_rng(1)
    S0 = random_pd(rng, 8)
    res = fit(S0, (8, 8, 8, 8), tol=1e-8)
    assert res.status is Status.CONVERGED, res.message
    assert res.optimum == 0.0
    assert res.loss < 1e-9 * np.trace(S0)
    W = bwfast.end_to_end(res.weights)
    np.testing.assert_allclose(W @ W.T, S0, atol=1e-6 * np.trace(S0))


@pytest.mark.parametrize("widths", [(6,), (6, 6), (4, 3, 6), (6, 2, 5, 6)])
def test_tau_positive_reaches_theoretical_optimum(widths):
    rng = np.random.default_rng(2)
    n = 6
    S0 = random_pd(rng, n, cond=20.0)
    t = Target(S0)
    k = min(widths + (n,))
    tau = 0.5 * t.eigvals[k - 1]
    res = fit(t, widths + (n,), tau=tau)
    assert res.status is Status.CONVERGED, res.message
    lam = t.eigvals
    expected = np.sum((np.sqrt(lam[k:]) - np.sqrt(tau)) ** 2)
    assert res.optimum == pytest.approx(expected, rel=1e-12)
    assert res.relative_gap < 1e-6 or res.gap < 1e-9 * t.trace


def test_history_and_result_are_immutable():
    rng = np.random.default_rng(3)
    res = fit(random_pd(rng, 4), (4, 3, 4), steps=95, record_every=10, tol=0.0)
    assert res.status is Status.STEP_LIMIT
    assert res.steps == 95
    np.testing.assert_array_equal(res.loss_steps, list(range(0, 100, 10)) + [95])
    assert res.losses.shape == res.loss_steps.shape
    assert res.losses[-1] == res.loss
    assert np.all(np.diff(res.losses) <= 1e-12)  # descent with the default step
    with pytest.raises(dataclasses.FrozenInstanceError):
        res.steps = 3
    with pytest.raises(ValueError):
        res.weights[0][0, 0] = 1.0
    with pytest.raises(ValueError):
        res.losses[0] = 1.0


def test_final_loss_matches_loss_and_grad():
    rng = np.random.default_rng(4)
    t = Target(random_pd(rng, 5))
    res = fit(t, (5, 2, 5), steps=50, tol=0.0)
    loss, _ = bwfast.loss_and_grad(list(res.weights), t)
    assert loss == pytest.approx(res.loss, rel=1e-12)


def test_divergence_stops_with_finite_weights():
    rng = np.random.default_rng(5)
    res = fit(random_pd(rng, 5), (5, 5, 5), lr=50.0, steps=1000)
    assert res.status is Status.DIVERGED
    assert "diverged" in res.message
    assert all(np.isfinite(w).all() for w in res.weights)


def test_rank_drop_is_reported():
    # an initialization with a zero layer has rank 0 < k: a kink of the loss
    rng = np.random.default_rng(6)
    S0 = random_pd(rng, 4)
    init = [rng.standard_normal((3, 4)), np.zeros((4, 3))]
    res = fit(S0, (4, 3, 4), init=init, steps=10)
    assert res.status is Status.RANK_DROPPED
    assert res.steps == 0
    assert "kink" in res.message


def test_user_init_and_seed_reproducible():
    rng = np.random.default_rng(7)
    S0 = random_pd(rng, 4)
    a = fit(S0, (4, 4, 4), seed=11, steps=30, tol=0.0)
    b = fit(S0, (4, 4, 4), seed=11, steps=30, tol=0.0)
    np.testing.assert_array_equal(a.losses, b.losses)
    c = fit(S0, (4, 4, 4), init=list(a.weights), steps=0)
    assert c.loss == pytest.approx(a.loss, rel=1e-14)


def test_float32_fit():
    rng = np.random.default_rng(8)
    S0 = random_pd(rng, 6)
    res = fit(S0, (6, 3, 6), dtype=np.float32)
    assert res.tol == 1e-5
    assert res.weights[0].dtype == np.float32
    assert res.status is Status.CONVERGED, res.message
    assert abs(res.relative_gap) < 1e-4


def test_singular_target_tau_zero():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((6, 3))
    S0 = X @ X.T  # rank 3
    t = Target(S0)
    assert t.rank == 3
    res = fit(t, (6, 6, 6))  # k = 6 > rank: the optimum is Sigma0 itself
    assert res.status is Status.CONVERGED, res.message
    assert res.loss < 1e-9 * t.trace
    assert optimal_loss(t, 6) == 0.0


@pytest.mark.parametrize(
    "kwargs, exc, text",
    [
        (dict(widths=(4, 3, 5)), ValueError, "end with the target dimension"),
        (dict(widths=(4,)), ValueError, "at least 2"),
        (dict(widths=(4, 0, 4)), ValueError, "widths"),
        (dict(widths=(4, 2.5, 4)), TypeError, "widths"),
        (dict(tau=-1.0), ValueError, "`tau`"),
        (dict(tau=float("nan")), ValueError, "`tau`"),
        (dict(lr=0.0), ValueError, "`lr`"),
        (dict(steps=-1), ValueError, "`steps`"),
        (dict(record_every=0), ValueError, "`record_every`"),
        (dict(init="uniform"), ValueError, "`init`"),
        (dict(dtype=np.float16), TypeError, "`dtype`"),
    ],
)
def test_bad_arguments(kwargs, exc, text):
    rng = np.random.default_rng(10)
    args = dict(widths=(4, 3, 4))
    args.update(kwargs)
    with pytest.raises(exc, match=text):
        fit(random_pd(rng, 4), **args)


def test_callback_sees_progress():
    rng = np.random.default_rng(12)
    seen = []
    # a bottleneck: on the square full-rank path the refined SVD can reach
    # an exact fixed point (gradient exactly 0, converged even at tol = 0)
    fit(random_pd(rng, 4), (4, 3, 4), steps=4500, tol=0.0,
        callback=lambda s, loss: seen.append((s, loss)))
    steps = [s for s, _ in seen]
    assert steps[0] == 100  # a short first chunk, then about 0.2 s each
    assert steps[-1] == 4500
    assert steps == sorted(set(steps))
    assert all(np.isfinite(loss) for _, loss in seen)


@pytest.mark.parametrize("factor", [1e2, 1e4, 1e6])
def test_runaway_step_sizes_end_as_diverged(factor):
    # a step so large that the next product overflows must not reach LAPACK
    rng = np.random.default_rng(13)
    S0 = random_pd(rng, 5)
    widths = (5, 3, 3, 5)
    lr = factor * bwfast.default_lr(S0, widths)
    res = fit(S0, widths, lr=lr, steps=100)
    assert res.status is Status.DIVERGED, res.message
    assert all(np.isfinite(w).all() for w in res.weights)


def test_step_sizes_that_overflow_in_one_update_are_refused():
    rng = np.random.default_rng(14)
    S0 = random_pd(rng, 5)
    with pytest.raises(ValueError, match="`lr`"):
        fit(S0, (5, 3, 5), lr=1e7 * bwfast.default_lr(S0, (5, 3, 5)))


def test_zero_target_with_tau_converges():
    res = fit(np.zeros((3, 3)), (3, 3, 3), tau=0.1)
    assert res.status is Status.CONVERGED, res.message
    assert res.optimum == pytest.approx(0.3)
    assert res.relative_gap < 1e-6
