"""Tests of bwfast.theory: critical points against the network loss and the
reference, classification of trained weights, the margin and the
initializations, and the critical-points command."""

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from conftest import REF_RTOL, REF_SINGULAR_RTOL, random_orthogonal

import bwfast
from bwfast import Target, end_to_end, fit, loss_and_grad, optimal_loss, reference
from bwfast.cli import main
from bwfast.theory import (
    INITS,
    CriticalPoint,
    classify,
    count_critical_points,
    critical_points,
    init_weights,
    margin,
    realize,
)

# The realized critical points have a gradient that vanishes up to rounding
# (about 1e-14 on these O(1) targets); the acceptance bound is 1e-10.
GRAD_ATOL = 1e-10
# The network loss at a critical point against the closed form.
LOSS_RTOL = 1e-12
# Balancedness defect of weights built to be balanced (absolute, O(1) layers).
BALANCE_ATOL = 1e-13

LAM = np.array([2.0, 1.6, 1.1, 0.7, 0.4])  # distinct, well separated


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(20240501)
    Q = random_orthogonal(rng, LAM.size)
    return Target((Q * LAM) @ Q.T)


def _grad_norm(grads):
    return math.sqrt(sum(float(np.sum(g * g)) for g in grads))


def _loss_grad(ws, t, tau):
    """loss_and_grad, recording whether it warned of a rank drop."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value, grads = loss_and_grad(ws, t, tau)
    kinds = {w.category for w in caught}
    assert kinds <= {bwfast.RankDropWarning}, kinds
    return value, grads, bool(kinds)


def _brute_force_loss(lam, J, tau):
    return sum((math.sqrt(lam[i]) - math.sqrt(tau)) ** 2
               for i in range(lam.size) if i not in J)


# --- every critical point is critical, with the theory's loss -----------------------


@pytest.mark.parametrize("widths", [(5, 3, 5), (4, 2, 3, 5)])
@pytest.mark.parametrize("tau_of_lambda_k", [0.0, 0.5, 1.0])
def test_every_critical_point_is_critical(target, widths, tau_of_lambda_k):
    k = min(widths)
    tau = tau_of_lambda_k * float(target.eigvals[k - 1])  # 0 < tau <= lambda_k
    points = list(critical_points(target, k, tau))
    # only eigenvalues above tau enter J; tau = lambda_k leaves lambda_k out
    # (it would add nothing to Sigma_J)
    m = int(np.count_nonzero(target.eigvals > tau))
    if tau_of_lambda_k == 1.0:
        assert m == k - 1
    else:
        assert m == np.count_nonzero(LAM > tau)
    expected = sum(math.comb(m, r) for r in range(min(k, m) + 1))
    assert len(points) == count_critical_points(target, k, tau) == expected
    assert sum(p.is_global_minimum for p in points) == 1
    for point in points:
        ws = realize(point, widths, seed=3)
        W = end_to_end(ws)
        np.testing.assert_allclose(W @ W.T, point.covariance(), atol=1e-14)
        assert bwfast.balancedness(ws, relative=False) < BALANCE_ATOL

        value, grads, warned = _loss_grad(ws, target, tau)
        assert _grad_norm(grads) < GRAD_ATOL, point
        assert value == pytest.approx(point.loss, rel=LOSS_RTOL)
        # at tau = 0 a point of rank r < k is a kink of the loss: the network
        # warns there, and its minimum-norm subgradient is zero as well
        assert warned == (tau == 0.0 and point.rank < k)

        # the closed form against the SciPy reference (the trace formula,
        # accurate to sqrt(eps) when the model covariance is singular)
        ref = reference.loss(ws, target.cov, tau)
        rtol = REF_RTOL if tau > 0 else REF_SINGULAR_RTOL
        assert ref == pytest.approx(point.loss, rel=rtol)
        assert point.loss == pytest.approx(
            _brute_force_loss(LAM, point.index_set, tau), rel=LOSS_RTOL)
        if point.is_global_minimum:
            assert point.index_set == tuple(range(min(k, m)))
            assert point.loss == pytest.approx(optimal_loss(target, k, tau),
                                               rel=LOSS_RTOL)
            assert point.loss == pytest.approx(
                reference.optimal_loss(target.cov, k, tau), rel=LOSS_RTOL)
        else:
            assert point.loss > point.optimum


def test_tau_positive_closed_form_against_reference_distance(target):
    # BW^2(Sigma_J + tau I, Sigma0) from the reference, J = {1, 3}
    tau = 0.3
    point = next(p for p in critical_points(target, 2, tau) if p.index_set == (1, 3))
    ref = reference.bures_wasserstein_squared(
        point.covariance() + tau * np.eye(5), target.cov)
    expected = sum((math.sqrt(LAM[i]) - math.sqrt(tau)) ** 2 for i in (0, 2, 4))
    assert point.loss == pytest.approx(expected, rel=LOSS_RTOL)
    assert float(ref) == pytest.approx(expected, rel=REF_RTOL)


def test_orders_agree_with_brute_force(target):
    k = 3
    by_loss = list(critical_points(target, k))
    by_size = list(critical_points(target, k, order="size"))
    brute = [J for r in range(k + 1) for J in itertools.combinations(range(5), r)]
    assert [p.index_set for p in by_size] == brute
    assert sorted(p.index_set for p in by_loss) == sorted(brute)
    losses = [p.loss for p in by_loss]
    assert losses == sorted(losses)
    assert by_loss[0].is_global_minimum
    for p in by_loss:
        assert p.rank == len(p.index_set) and p.dimension == 0


def test_max_count_bounds_a_huge_enumeration():
    t = bwfast.io.default_target()  # rank 61: sum_{r <= 16} C(61, r) sets
    assert count_critical_points(t, 16) == sum(math.comb(61, r) for r in range(17))
    first = list(critical_points(t, 16, max_count=4))
    assert len(first) == 4
    assert first[0].index_set == tuple(range(16))
    assert first[0].loss == pytest.approx(optimal_loss(t, 16), rel=LOSS_RTOL)
    # the second best swaps lambda_16 for lambda_17 (0-based 15 -> 16)
    assert first[1].index_set == (*range(15), 16)
    assert [p.loss for p in first] == sorted(p.loss for p in first)
    assert list(critical_points(t, 16, max_count=0)) == []


def test_singular_target_and_large_tau():
    t = Target(np.diag([3.0, 2.0, 1.0, 0.0, 0.0]))
    points = list(critical_points(t, 4))
    # zero eigenvalues never enter J: 1 + 3 + 3 + 1 sets
    assert len(points) == count_critical_points(t, 4) == 8
    assert all(set(p.index_set) <= {0, 1, 2} for p in points)
    assert points[0].index_set == (0, 1, 2) and points[0].loss == 0.0
    # tau above lambda_2: only lambda_1 can be kept, whatever k
    tau = 2.5
    points = list(critical_points(t, 3, tau))
    assert [p.index_set for p in points] == [(0,), ()]
    assert points[0].loss == pytest.approx(optimal_loss(t, 3, tau), rel=LOSS_RTOL)
    ws = realize(points[0], (2, 2, 5))
    _, grads, _ = _loss_grad(ws, t, tau)
    assert _grad_norm(grads) < GRAD_ATOL


# --- repeated eigenvalues -----------------------------------------------------------


def test_repeated_eigenvalues_give_manifolds():
    rng = np.random.default_rng(7)
    lam = np.array([2.0, 1.0, 1.0, 1.0, 0.5])
    Q = random_orthogonal(rng, 5)
    t = Target((Q * lam) @ Q.T)  # eigh separates the ties by rounding only
    points = list(critical_points(t, 2))
    # groups {0}, {1,2,3}, {4}: vectors (j0, j1, j4) with sum <= 2
    assert count_critical_points(t, 2) == len(points) == 8
    sets = {p.index_set: p for p in points}
    assert set(sets) == {(0, 1), (0, 4), (0,), (1, 2), (1, 4), (1,), (4,), ()}
    assert sets[(0, 1)].is_global_minimum and sets[(0, 1)].dimension == 2
    assert sets[(1, 2)].dimension == 2 and sets[(0, 4)].dimension == 0
    for J, p in sets.items():
        assert p.loss == pytest.approx(_brute_force_loss(lam, J, 0.0), rel=1e-12)
        ws = realize(p, (5, 2, 5), seed=1)
        value, grads, _ = _loss_grad(ws, t, 0.0)
        assert _grad_norm(grads) < GRAD_ATOL
        assert value == pytest.approx(p.loss, rel=1e-12)
    assert sets[(0, 1)].loss == pytest.approx(optimal_loss(t, 2), rel=1e-12)


def test_classify_finds_any_point_of_a_critical_manifold():
    rng = np.random.default_rng(8)
    lam = np.array([2.0, 1.0, 1.0, 1.0, 0.5])
    Q = random_orthogonal(rng, 5)
    t = Target((Q * lam) @ Q.T)
    # a point of the manifold J = {0, one direction of the 1-eigenspace}
    # whose direction is not an eigenvector the target happened to return
    u = t.eigvecs[:, 1:4] @ random_orthogonal(rng, 3)[:, 0]
    W = np.column_stack([t.eigvecs[:, 0] * math.sqrt(lam[0]), u])
    ws = bwfast.balanced_weights(W @ random_orthogonal(rng, 2), (2, 3, 5))
    _, grads, _ = _loss_grad(ws, t, 0.0)
    assert _grad_norm(grads) < GRAD_ATOL
    c = classify(ws, t)
    assert c.point.index_set == (0, 1) and c.point.dimension == 2
    assert c.is_global_minimum
    assert c.distance < 1e-13 and c.bw_distance < 1e-6
    assert c.loss == pytest.approx(optimal_loss(t, 2), rel=1e-12)

    res = fit(t, (5, 3, 5), seed=2)
    c = classify(res, t)
    assert res.converged and c.is_global_minimum and c.relative_distance < 1e-5


# --- classify and the dynamics around critical points ----------------------------


def test_fit_from_a_generic_start_reaches_the_global_minimum(target):
    res = fit(target, (5, 3, 3, 5), seed=4)
    assert res.converged
    c = classify(res, target)
    assert c.is_global_minimum and c.point.index_set == (0, 1, 2)
    assert c.relative_distance < 1e-5
    assert c.loss == pytest.approx(res.loss, rel=1e-9)
    assert c.k == 3 and c.tau == 0.0
    # the same from the layers themselves
    assert classify(list(res.weights), target).point == c.point


def test_classify_names_every_realized_point(target):
    for tau in (0.0, 0.3):
        for point in critical_points(target, 2, tau):
            c = classify(realize(point, (3, 2, 5), seed=5), target, tau=tau)
            assert c.point == point
            assert c.distance < 1e-13
            assert c.is_global_minimum == point.is_global_minimum


@pytest.mark.parametrize("tau", [0.0, 0.3])
def test_a_saddle_holds_and_a_perturbation_leaves_it(target, tau):
    widths = (5, 3, 3, 5)
    saddle = next(p for p in critical_points(target, 3, tau)
                  if p.index_set == (0, 1, 3))
    assert not saddle.is_global_minimum
    ws = realize(saddle, widths, seed=6)
    # The saddle is unstable: gradient descent amplifies the rounding error
    # of the start exponentially (at tau = 0 by about 1e2 per 50 steps
    # here, from 1e-14 after 50 steps to 1e-8 after 200; the run leaves the
    # saddle after a few hundred), so "stays there" holds to 1e-11 for
    # tens of steps only: 20 are checked.
    held = fit(target, widths, tau=tau, init=ws, steps=20, tol=0.0)
    assert held.steps == 20
    assert max(float(np.abs(a - b).max()) for a, b in zip(held.weights, ws)) < 1e-11
    assert held.loss == pytest.approx(saddle.loss, rel=1e-12)
    assert classify(held, target).point == saddle

    rng = np.random.default_rng(9)
    nudged = [w + 1e-4 * rng.standard_normal(w.shape) for w in ws]
    res = fit(target, widths, tau=tau, init=nudged)
    assert res.converged
    c = classify(res, target)
    assert c.is_global_minimum and c.relative_distance < 1e-5
    assert res.loss < saddle.loss - 0.9 * (saddle.loss - saddle.optimum)


def test_tau_positive_optimum_is_reached(target):
    tau = 0.3
    res = fit(target, (5, 2, 2, 5), tau=tau, seed=1)
    expected = sum((math.sqrt(x) - math.sqrt(tau)) ** 2 for x in LAM[2:])
    assert res.converged
    assert res.optimum == pytest.approx(expected, rel=1e-12)
    assert optimal_loss(target, 2, tau) == pytest.approx(expected, rel=1e-12)
    assert res.loss == pytest.approx(expected, rel=1e-8)
    assert classify(res, target).is_global_minimum


# --- margin and initializations -----------------------------------------------------


def test_margin_is_the_definition(target):
    W = np.random.default_rng(10).standard_normal((5, 4))
    bw = reference.bures_wasserstein(W @ W.T + 0.2 * np.eye(5), target.cov)
    expected = math.sqrt(LAM[3]) - float(bw)  # k = min(5, 4) = 4
    assert margin(W, target, 0.2) == pytest.approx(expected, rel=1e-9)
    assert margin([W], target, tau=0.2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("tau", [0.0, 0.2])
def test_margin_init_has_positive_margin(target, tau):
    widths = (5, 5, 5, 5)
    c_max = math.sqrt(LAM[4]) - math.sqrt(optimal_loss(target, 5, tau))
    for seed in range(3):
        ws = init_weights("margin", target, widths, tau=tau, seed=seed)
        c = margin(ws, target, tau)
        assert c >= 0.5 * c_max > 0  # the documented guarantee
        assert bwfast.balancedness(ws, relative=False) < BALANCE_ATOL
        assert np.linalg.matrix_rank(end_to_end(ws)) == 5
    res = fit(target, widths, tau=tau, init="margin", seed=0)
    assert res.converged and margin(res, target) > c
    assert classify(res, target).is_global_minimum


def test_margin_init_refuses_where_no_margin_exists(target):
    # k = 2: optimal_loss = 1.1 + 0.7 + 0.4 = 2.2 > lambda_2 = 1.6
    with pytest.raises(ValueError, match=r"`init` 'margin' needs c_max = "
                       r"sqrt\(lambda_k\) - sqrt\(optimal_loss\) clearly > 0 "
                       r"for k = 2 .* got -0.218 <= 0"):
        init_weights("margin", target, (5, 2, 5))
    with pytest.raises(ValueError, match="margin"):
        fit(target, (5, 2, 5), init="margin")


def test_margin_init_refuses_a_margin_of_rounding_noise():
    # lambda_2 = 3 = lambda_3 + lambda_4 = optimal_loss for k = 2: c_max is 0
    # in exact arithmetic; rotated, the computed spectrum makes it 4.4e-16
    lam = np.array([4.0, 3.0, 2.0, 1.0])
    Q = random_orthogonal(np.random.default_rng(5), 4)
    rotated = Target((Q * lam) @ Q.T)
    noise = math.sqrt(rotated.eigvals[1]) - math.sqrt(optimal_loss(rotated, 2))
    assert 0 < noise < 1e-14  # what the refusal must see through
    with pytest.raises(ValueError, match=r"clearly > 0 for k = 2 .* got "
                       r"4.4\de-16, within its rounding error .* so no weights "
                       r"are known to have margin c > 0; a wider bottleneck "
                       r"\(k = 3\)"):
        init_weights("margin", rotated, (4, 2, 4))
    # the diagonal form computes c_max = 0 exactly
    with pytest.raises(ValueError, match=r"clearly > 0 for k = 2 .* got 0 <= 0"):
        init_weights("margin", np.diag(lam), (4, 2, 4))
    # k = 3: c_max = sqrt(2) - 1 is accepted, with the documented margin
    for t in (rotated, Target(np.diag(lam))):
        ws = init_weights("margin", t, (4, 3, 4), seed=0)
        assert margin(ws, t) >= 0.5 * (math.sqrt(2.0) - 1.0)


def test_margin_init_refusal_names_widths_that_work():
    # singular target: k = n = 4 has lambda_4 = 0 and no margin, k = 3 =
    # rank has optimal_loss = 0 and one (so "k = n always works" is false)
    t = Target(np.diag([3.0, 2.0, 1.0, 0.0]))
    with pytest.raises(ValueError) as info:
        init_weights("margin", t, (4, 4, 4))
    text = str(info.value)
    assert "got 0 <= 0, so no weights have margin c > 0" in text
    assert text.endswith("a narrower bottleneck (k = 3) has one for this target "
                         "and tau")
    assert "k = n" not in text
    assert margin(init_weights("margin", t, (4, 3, 4)), t) >= 0.5
    # both directions (k = 1: sqrt(10) > sqrt(3.5); k = 2, 3: 1 < sqrt(2.5),
    # sqrt(1.5); k = 4: 1 > sqrt(0.5)), and none at all
    with pytest.raises(ValueError, match=r"a narrower or a wider bottleneck "
                       r"\(k = 1 or k = 4\)"):
        init_weights("margin", np.diag([10.0, 1.0, 1.0, 1.0, 0.5]), (5, 2, 5))
    with pytest.raises(ValueError, match=r"no bottleneck k = 1 \.\. 4 has one"):
        init_weights("margin", np.eye(4), (4, 4, 4), tau=3.5)


@pytest.mark.parametrize(
    "call",
    [
        lambda t, tau: list(critical_points(t, 2, tau)),
        lambda t, tau: count_critical_points(t, 2, tau),
        lambda t, tau: classify([np.eye(4)[:, :2]], t, tau=tau),
        lambda t, tau: margin(np.eye(4), t, tau=tau),
        lambda t, tau: init_weights("margin", t, (4, 4, 4), tau=tau),
        lambda t, tau: init_weights("gaussian", t, (4, 4, 4), tau=tau),
    ],
)
def test_huge_tau_is_refused_not_overflowed(call):
    t = Target(np.diag([4.0, 3.0, 2.0, 1.0]))
    for tau in (1e308, 1.0000000000000002e150):
        with pytest.raises(ValueError, match=r"^`tau` must be <= 1e\+150, the "
                           r"scale limit .*; got 1e\+(308|150)$"):
            call(t, tau)


def test_tau_at_the_limit_is_finite():
    t = Target(np.diag([4.0, 3.0, 2.0, 1.0]))
    (point,) = critical_points(t, 2, 1e150)  # every eigenvalue is below tau
    assert point.index_set == () and math.isfinite(point.loss)
    assert point.loss == pytest.approx(optimal_loss(t, 2, 1e150), rel=1e-12)
    assert math.isfinite(margin(np.eye(4), t, tau=1e150))


@pytest.mark.parametrize("widths", [(5, 3, 3, 5), (5, 5, 5), (4, 2, 3, 5)])
def test_orthogonal_init(target, widths):
    ws = init_weights("orthogonal", target, widths, seed=11)
    k = min(widths)
    alpha = np.linalg.svd(ws[0], compute_uv=False)[0]
    for w in ws:  # every layer alpha times a semi-orthogonal matrix
        np.testing.assert_allclose(np.linalg.svd(w, compute_uv=False), alpha,
                                   rtol=1e-13)
    W = end_to_end(ws)
    assert np.sum(W * W) == pytest.approx(LAM[:k].sum(), rel=1e-13)
    assert np.linalg.matrix_rank(W) == k
    # balanced exactly when each hidden width is <= both its neighbours
    hidden_ok = all(widths[j] <= min(widths[j - 1], widths[j + 1])
                    for j in range(1, len(widths) - 1))
    defect = bwfast.balancedness(ws)
    assert (defect < 1e-13) == hidden_ok, defect


def test_orthogonal_init_unbalanced_when_a_hidden_layer_is_wider(target):
    ws = init_weights("orthogonal", target, (5, 8, 5), seed=12)
    assert bwfast.balancedness(ws) > 0.1


def test_gaussian_init(target):
    widths = (4, 6, 3, 5)
    ws = init_weights("gaussian", target, widths, seed=13)
    assert [w.shape for w in ws] == [(6, 4), (3, 6), (5, 3)]
    assert np.linalg.matrix_rank(end_to_end(ws)) == 3
    assert bwfast.balancedness(ws) > 0.01
    # E ||W||_F^2 = lambda_1 + lambda_2 + lambda_3: the mean over 400 seeds
    # (a fixed sample, so this cannot flake) is within 10%
    energy = np.mean([np.sum(end_to_end(init_weights(
        "gaussian", target, widths, seed=s)) ** 2) for s in range(400)])
    assert energy == pytest.approx(LAM[:3].sum(), rel=0.1)


@pytest.mark.parametrize("name", INITS)
def test_inits_are_seeded_and_what_fit_starts_from(target, name):
    widths = (5, 5, 5, 5)
    a = init_weights(name, target, widths, seed=21)
    b = init_weights(name, target, widths, seed=21)
    c = init_weights(name, target, widths, seed=22)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    res = fit(target, widths, init=name, seed=21, steps=0)
    assert all(np.array_equal(x, y) for x, y in zip(res.weights, a))


# --- bad input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, text",
    [
        (lambda t: list(critical_points(t, 6)), ValueError, "`k` must be <= n = 5"),
        (lambda t: list(critical_points(t, -1)), ValueError, "`k` must be >= 0"),
        (lambda t: list(critical_points(t, 2.5)), TypeError, "`k`"),
        (lambda t: list(critical_points(t, 2, -0.1)), ValueError, "`tau`"),
        (lambda t: list(critical_points(t, 2, math.nan)), ValueError, "`tau`"),
        (lambda t: list(critical_points(t, 2, max_count=-1)), ValueError,
         "`max_count`"),
        (lambda t: list(critical_points(t, 2, max_count=1.5)), TypeError,
         "`max_count`"),
        (lambda t: list(critical_points(t, 2, order="random")), ValueError,
         "`order`"),
        (lambda t: count_critical_points(t, 9), ValueError, "`k`"),
        (lambda t: realize("(0, 1)", (5, 2, 5)), TypeError, "`point`"),
        (lambda t: realize(next(critical_points(t, 2)), (5, 1, 5)), ValueError,
         "`widths` must all be >= the point's rank 2"),
        (lambda t: realize(next(critical_points(t, 2)), (5, 2, 4)), ValueError,
         "`widths` must end with the target dimension"),
        (lambda t: realize(next(critical_points(t, 2)), 5), TypeError, "`widths`"),
        (lambda t: classify([np.ones((4, 3))], t), ValueError, "n = 5"),
        (lambda t: classify([np.ones((5, 3))], t, tau=-1.0), ValueError, "`tau`"),
        (lambda t: margin(np.ones((5, 3)), t, tau=-1.0), ValueError, "`tau`"),
        # a 1-D array is neither one matrix W nor a list of layers
        (lambda t: margin(np.ones(5), t), ValueError,
         r"`weights_or_W` must be one \(n, d_0\) matrix W or a sequence of "
         r"2-D layers; got an array of shape \(5,\)"),
        (lambda t: margin([1.0, 2.0], t), ValueError,
         r"`weights_or_W` .* got an array of shape \(2,\)"),
        (lambda t: margin(2.0, t), TypeError, "`weights_or_W` .* got 2.0"),
        (lambda t: classify(np.ones(5), t), ValueError,
         r"`result_or_weights` .* got an array of shape \(5,\)"),
        (lambda t: classify(np.ones((1, 1, 1, 5)), t), ValueError,
         r"`result_or_weights` .* shape \(1, 1, 1, 5\)"),
        (lambda t: init_weights("uniform", t, (5, 2, 5)), ValueError, "`init`"),
        (lambda t: init_weights(3, t, (5, 2, 5)), ValueError, "`init`"),
        (lambda t: init_weights("gaussian", t, (5, 2, 5), seed=-1), ValueError,
         "`seed`"),
        (lambda t: fit(t, (5, 2, 5), init="bogus"), ValueError, "`init`"),
    ],
)
def test_bad_input(target, call, exc, text):
    with pytest.raises(exc, match=text):
        call(target)


def test_critical_point_is_light_and_frozen(target):
    p = next(critical_points(target, 2))
    assert isinstance(p, CriticalPoint)
    assert "target" not in repr(p)
    with pytest.raises(AttributeError):
        p.loss = 0.0
    assert p.factor().shape == (5, 2)


# --- command line -------------------------------------------------------------------


def _cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_critical_points_table(capsys, tmp_path, target):
    path = tmp_path / "cov.npy"
    np.save(path, target.cov)
    code, out, err = _cli(capsys, "critical-points", "--target", str(path),
                          "--k", "2", "--max-count", "4")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert "4 of 16 shown, by loss" in lines[1]
    header = lines[3].split()
    assert header[:3] == ["J", "rank", "loss"]
    rows = [line.split() for line in lines[4:]]
    # {0, 3} and {1, 2} tie at 3.1 (up to rounding): compare with the API
    assert [r[0] for r in rows[:2]] == ["0-1", "0,2"]
    api = [p.index_set for p in critical_points(target, 2, max_count=4)]
    assert [r[0] for r in rows[2:]] == [
        ",".join(str(i) for i in J) if J[1] > J[0] + 1 else f"{J[0]}-{J[1]}"
        for J in api[2:]
    ]
    assert rows[0][-1] == "yes" and all(r[-1] == "no" for r in rows[1:])
    assert float(rows[0][2]) == pytest.approx(LAM[2:].sum(), rel=1e-9)
    assert float(rows[1][3]) == pytest.approx(
        (LAM[1] - LAM[2]) / LAM[2:].sum(), rel=1e-3)


def test_cli_critical_points_json_default_target(capsys):
    code, out, _ = _cli(capsys, "critical-points", "--target", "default", "--k",
                        "16", "--tau", "0.5", "--max-count", "3", "--json")
    assert code == 0
    s = json.loads(out)
    t = bwfast.io.default_target()
    assert s["count"] == count_critical_points(t, 16, 0.5) and s["shown"] == 3
    assert s["points"][0]["index_set"] == list(range(16))
    assert s["points"][0]["global_minimum"] is True
    assert s["optimum"] == pytest.approx(optimal_loss(t, 16, 0.5), rel=1e-12)


@pytest.mark.parametrize(
    "argv, text",
    [
        (["--k", "65"], "--k must be <= n = 64"),
        (["--k", "-1"], "--k"),
        (["--k", "2", "--tau", "-1"], "--tau"),
        (["--k", "2", "--tau", "1e308"], "--tau must be <= 1e+150"),
        (["--k", "2", "--max-count", "x"], "--max-count"),
        (["--k", "2", "--kind", "cov"], "--kind"),
        (["--k", "2", "--target", "default", "--kind", "cov"], "--kind"),
        ([], "--k"),
    ],
)
def test_cli_critical_points_bad_usage(capsys, argv, text):
    code, out, err = _cli(capsys, "critical-points", *argv)
    assert code == 2 and out == ""
    assert err.startswith("bwfast: error: ") and text in err
    assert len(err.splitlines()) == 1


def test_cli_fit_init(capsys, tmp_path, target):
    path = tmp_path / "cov.npy"
    np.save(path, target.cov)
    code, out, _ = _cli(capsys, "fit", "--target", str(path), "--widths",
                        "5,5,5", "--init", "margin", "--json", "--quiet")
    s = json.loads(out)
    assert code == 0 and s["init"] == "margin" and s["status"] == "converged"
    code, _, err = _cli(capsys, "fit", "--init", "uniform")
    assert code == 2 and "--init" in err
