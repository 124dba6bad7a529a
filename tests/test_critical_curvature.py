"""Issue-level check joining bwfast.theory and bwfast.curvature: every
enumerated critical point is critical, has the theory's loss, and is a
saddle unless it is the global minimum.

A saddle of full rank r = k, any saddle of a one-layer network, and one
whose index set is not the top r eigenvalues has a negative Hessian
eigenvalue. The rank-deficient top-r points (J = {1 .. r}, r < k) of a
deeper network do not: turning on an unused hidden unit moves W only at second
order in the layer perturbation (the product of two new factors), and the
gradient vanishes there, so the Hessian is positive semidefinite. The loss
still decreases along that direction, at fourth order: a degenerate saddle,
checked here directly."""

import warnings

import numpy as np
import pytest
from conftest import random_orthogonal

import bwfast
from bwfast import Target, loss_and_grad
from bwfast.curvature import hessian_extremes
from bwfast.theory import critical_points, realize

LAM = np.array([3.0, 2.2, 1.5, 0.9, 0.5])  # distinct


@pytest.fixture(scope="module")
def target():
    rng = np.random.default_rng(7)
    Q = random_orthogonal(rng, LAM.size)
    return Target((Q * LAM) @ Q.T)


def _check(target, widths, tau):
    k = min(widths)
    seen = 0
    degenerate = [0]
    for point in critical_points(target, k, tau):
        ws = realize(point, widths, seed=seen)
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            loss, grads = loss_and_grad(ws, target, tau)
        gnorm = np.sqrt(sum(np.sum(g * g) for g in grads))
        assert gnorm < 1e-10, (point.index_set, gnorm)
        J = set(point.index_set)
        theory = sum((np.sqrt(LAM[i]) - np.sqrt(tau)) ** 2
                     for i in range(LAM.size) if i not in J)
        assert loss == pytest.approx(theory, rel=1e-12, abs=1e-14)
        assert point.loss == pytest.approx(theory, rel=1e-12, abs=1e-14)
        seen += 1
        if tau == 0.0 and point.rank < k:
            # rank W < k at tau = 0: on the kink, no Hessian there
            with pytest.raises(ValueError, match="kink|rank"):
                hessian_extremes(ws, target, tau)
            continue
        lo, hi = hessian_extremes(ws, target, tau)
        if point.is_global_minimum:
            assert lo > -1e-8 * hi, (point.index_set, lo)
        elif (point.rank == k or len(widths) == 2
              or set(point.index_set) != set(range(point.rank))):
            # full rank, one layer, or a rank-r point off the top r
            # eigenvectors (rotating a used direction towards a better one
            # is a first-order move of W)
            assert lo < -1e-3, (point.index_set, lo, hi)
        else:
            assert lo >= -1e-8 * max(hi, 1.0), (point.index_set, lo)
            _assert_fourth_order_descent(ws, point, target, tau)
            degenerate[0] += 1
    return seen, degenerate[0]


def _assert_fourth_order_descent(ws, point, target, tau):
    """Depth 2, r < k: W_1 += e h v^T, W_2 += e u h^T with h an unused hidden
    direction, v an unused latent one and u the top eigenvector left out of
    J. W moves by e^2 u v^T and the loss falls like -c e^4."""
    W1, W2 = ws
    h = _unused(W1 @ W1.T)
    v = _unused(W1.T @ W1)
    out = [i for i in range(LAM.size) if i not in point.index_set]
    u = target.eigvecs[:, out[0]]
    base = loss_and_grad(ws, target, tau)[0]
    drops = []
    for e in (0.1, 0.05, 0.025):
        moved = [W1 + e * np.outer(h, v), W2 + e * np.outer(u, h)]
        drops.append(base - loss_and_grad(moved, target, tau)[0])
    drops = np.array(drops)
    assert np.all(drops > 0), drops
    slopes = np.diff(np.log(drops)) / np.diff(np.log([0.1, 0.05, 0.025]))
    np.testing.assert_allclose(slopes, 4.0, atol=0.2)


def _unused(gram):
    """A unit vector in the null space of a PSD Gram matrix."""
    w, Q = np.linalg.eigh(gram)
    assert w[0] < 1e-12 * max(w[-1], 1.0)
    return Q[:, 0]


@pytest.mark.parametrize("widths", [(5, 2, 5), (5, 3, 5), (5, 5), (3, 5)])
def test_saddles_have_negative_curvature_tau_positive(target, widths):
    tau = 0.4  # <= lambda_k for every k here
    seen, degenerate = _check(target, widths, tau)
    assert seen == bwfast.count_critical_points(target, min(widths), tau)
    # the rank-deficient top-r points of the two-layer networks
    assert (degenerate > 0) == (len(widths) > 2)


@pytest.mark.parametrize("widths", [(5, 2, 5), (5, 3, 5), (5, 5)])
def test_saddles_have_negative_curvature_tau_zero(target, widths):
    seen, _ = _check(target, widths, 0.0)
    assert seen == bwfast.count_critical_points(target, min(widths), 0.0)
