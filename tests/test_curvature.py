"""Hessian-vector products, the dense Hessian and its extreme eigenvalues."""

import itertools

import numpy as np
import pytest
from conftest import FD_STEP, random_orthogonal, random_psd, relerr

import bwfast
from bwfast import reference as ref
from bwfast.curvature import _Curvature

# Central differences of the gradient with step FD_STEP are accurate to
# about 1e-9 relative on these well-conditioned points (measured: 3e-10 to
# 5e-9); HVP_FD_RTOL leaves a factor of 200.
HVP_FD_RTOL = 1e-6

# Closed-form eigenvalues are reproduced to a few hundred ulps of the
# largest one.
EXACT_ATOL = 1e-10

# (widths d_0 .. d_N, rank of the target): depth 1, 2 and 3, unequal
# widths, bottlenecks k < n, and singular targets.
TAU_CASES = {
    "depth1": ((5, 4), 4),
    "depth1-wide-latent": ((3, 6), 6),
    "depth2-bottleneck": ((5, 3, 6), 6),
    "depth3-unequal": ((4, 6, 5, 5), 5),
    "depth3-bottleneck": ((6, 7, 2, 6), 6),
    "depth2-singular": ((5, 3, 6), 4),
}
# tau = 0 needs rank W = k: generic full-rank points, k = n and k < n.
TAU0_CASES = {
    "depth1-k=n": ((6, 5), 5),
    "depth2-k=n": ((5, 7, 5), 5),
    "depth1-k<n": ((3, 5), 5),
    "depth2-k<n": ((5, 3, 6), 6),
    "depth3-k<n": ((4, 6, 2, 5), 5),
    "depth3-singular-target": ((4, 6, 5, 6), 3),
}


def _layers(rng, dims):
    return [
        rng.standard_normal((dims[j + 1], dims[j])) / np.sqrt(dims[j])
        for j in range(len(dims) - 1)
    ]


def _case(cases, name, seed):
    rng = np.random.default_rng(seed)
    dims, rank = cases[name]
    cov = random_psd(rng, dims[-1], rank=rank)
    ws = _layers(rng, dims)
    return rng, ws, cov


def _flat(arrays):
    return np.concatenate([np.ravel(a) for a in arrays])


def _fd_hvp(ws, cov, V, tau, loss="bw"):
    """Central difference of bwfast.loss_and_grad's gradient along V."""
    h = FD_STEP
    plus = [w + h * v for w, v in zip(ws, V)]
    minus = [w - h * v for w, v in zip(ws, V)]
    gp = bwfast.loss_and_grad(plus, cov, tau, loss=loss)[1]
    gm = bwfast.loss_and_grad(minus, cov, tau, loss=loss)[1]
    return [(a - b) / (2.0 * h) for a, b in zip(gp, gm)]


def _critical_weights(target, J, widths, tau, rng):
    """Balanced layers realizing Omega_J diag(lambda_J - tau) Omega_J^T.

    W = Omega_J diag(s) V^T with s = sqrt(lambda_J - tau) and V random with
    orthonormal columns; depth 1 is W itself, depth 2 the balanced pair
    W_1 = diag(s^{1/2}) V^T, W_2 = Omega_J diag(s^{1/2}).
    """
    J = list(J)
    s = np.sqrt(target.eigvals[J] - tau)
    V = np.linalg.qr(rng.standard_normal((widths[0], len(J))))[0]
    U = target.eigvecs[:, J]
    if len(widths) == 2:
        return [(U * s) @ V.T]
    assert len(widths) == 3 and widths[1] == len(J)
    return [np.sqrt(s)[:, None] * V.T, U * np.sqrt(s)]


def _theory_loss(lam, J, tau):
    out = [i for i in range(lam.size) if i not in J]
    return float(np.sum((np.sqrt(lam[out]) - np.sqrt(tau)) ** 2))


def _distinct_target(rng, lam):
    Q = random_orthogonal(rng, lam.size)
    return bwfast.Target((Q * lam) @ Q.T)


def _loglog_slope(x, y):
    return float(np.polyfit(np.log(x), np.log(np.abs(y)), 1)[0])


# --------------------------------------------------------------------------
# Hessian-vector products against finite differences


@pytest.mark.parametrize("loss", ["bw", "frobenius"])
@pytest.mark.parametrize("name", sorted(TAU_CASES))
def test_hvp_matches_finite_differences_tau_positive(name, loss):
    rng, ws, cov = _case(TAU_CASES, name, 10)
    V = [rng.standard_normal(w.shape) for w in ws]
    hv = bwfast.hessian_vector_product(ws, cov, V, tau=0.3, loss=loss)
    assert [h.shape for h in hv] == [w.shape for w in ws]
    assert relerr(_flat(hv), _flat(_fd_hvp(ws, cov, V, 0.3, loss))) < HVP_FD_RTOL


@pytest.mark.parametrize("name", sorted(TAU0_CASES))
def test_hvp_matches_finite_differences_tau_zero(name):
    rng, ws, cov = _case(TAU0_CASES, name, 11)
    V = [rng.standard_normal(w.shape) for w in ws]
    hv = bwfast.hessian_vector_product(ws, cov, V)
    assert relerr(_flat(hv), _flat(_fd_hvp(ws, cov, V, 0.0))) < HVP_FD_RTOL


def test_flat_direction_gives_flat_product_in_layer_order():
    rng, ws, cov = _case(TAU_CASES, "depth3-unequal", 12)
    V = [rng.standard_normal(w.shape) for w in ws]
    as_list = bwfast.hessian_vector_product(ws, cov, V, tau=0.2)
    as_flat = bwfast.hessian_vector_product(ws, cov, _flat(V), tau=0.2)
    assert as_flat.shape == (sum(w.size for w in ws),)
    np.testing.assert_allclose(as_flat, _flat(as_list), rtol=1e-14, atol=0)


def test_float32_weights_are_upcast():
    rng, ws, cov = _case(TAU_CASES, "depth2-bottleneck", 13)
    ws32 = [w.astype(np.float32) for w in ws]
    ws64 = [w.astype(np.float64) for w in ws32]
    V = [rng.standard_normal(w.shape).astype(np.float32) for w in ws]
    hv32 = bwfast.hessian_vector_product(ws32, cov, V, tau=0.3)
    hv64 = bwfast.hessian_vector_product(ws64, cov, V, tau=0.3)
    assert all(h.dtype == np.float64 for h in hv32)
    np.testing.assert_allclose(_flat(hv32), _flat(hv64), rtol=1e-14, atol=0)


def test_inverse_root_derivative_is_built_from_the_frechet_derivative():
    # dG = 2 (dW - R0 [d(M^{-1/2}) R0 W + M^{-1/2} R0 dW]) with
    # d(M^{-1/2}) = -M^{-1/2} L(M, dM) M^{-1/2}, L = bwfast.sqrtm_frechet
    rng, ws, cov = _case(TAU_CASES, "depth1", 14)
    tau = 0.4
    t = bwfast.Target(cov)
    W, R0 = ws[0], t.root
    dW = rng.standard_normal(W.shape)
    M = R0 @ (W @ W.T + tau * np.eye(t.n)) @ R0
    dM = R0 @ (dW @ W.T + W @ dW.T) @ R0
    Ninv = bwfast.inv_sqrtm_psd(M)
    dN = -Ninv @ bwfast.sqrtm_frechet(M, dM) @ Ninv
    expected = 2.0 * (dW - R0 @ (dN @ R0 @ W + Ninv @ R0 @ dW))
    got = _Curvature(ws, t, tau).dG(dW[None])[0]
    assert relerr(got, expected) < 1e-11


# --------------------------------------------------------------------------
# The dense Hessian


@pytest.mark.parametrize(
    "name, tau",
    [("depth2-bottleneck", 0.3), ("depth2-k<n", 0.0), ("depth3-k<n", 0.0)],
)
def test_dense_hessian_is_symmetric_and_matches_finite_differences(name, tau):
    cases = TAU_CASES if tau > 0 else TAU0_CASES
    _, ws, cov = _case(cases, name, 20)
    H = bwfast.hessian(ws, cov, tau)
    P = sum(w.size for w in ws)
    assert H.shape == (P, P)
    # columns from single products, before any symmetrization
    raw = np.stack(
        [bwfast.hessian_vector_product(ws, cov, e, tau) for e in np.eye(P)], axis=1
    )
    assert relerr(raw, raw.T) < 1e-13
    assert relerr(H, 0.5 * (raw + raw.T)) < 1e-14
    assert relerr(H, ref.hessian_fd(ws, cov, tau)) < HVP_FD_RTOL


def test_hessian_spectrum_at_the_square_optimum_is_zeros_and_twos():
    # tau = 0, depth 1, k = n: at W = R0 Q the Hessian is 2 on the
    # n(n+1)/2 directions that move W W^T and 0 on the n(n-1)/2 rotations
    # W -> W O, whatever the spectrum of the target.
    rng = np.random.default_rng(30)
    n = 4
    t = _distinct_target(rng, np.array([5.0, 3.0, 1.5, 0.5]))
    W = t.root @ random_orthogonal(rng, n)
    w = np.linalg.eigvalsh(bwfast.hessian([W], t))
    expected = [0.0] * (n * (n - 1) // 2) + [2.0] * (n * (n + 1) // 2)
    np.testing.assert_allclose(w, expected, rtol=0, atol=EXACT_ATOL)


def test_hessian_spectrum_at_every_depth1_critical_point():
    # tau = 0, depth 1, d_0 = k: at W = Omega_J diag(sqrt(lambda_J)) O the
    # eigenvalues are 2 (k(k+1)/2 times), 0 (k(k-1)/2 times) and
    # 2 (1 - lambda_i / lambda_j) for i outside J, j in J: negative for a
    # saddle (some excluded eigenvalue exceeds an included one), >= 0 only
    # at J = {1..k}.
    rng = np.random.default_rng(31)
    n, k = 4, 2
    lam = np.array([4.0, 3.0, 2.0, 1.0])
    t = _distinct_target(rng, lam)
    for J in itertools.combinations(range(n), k):
        (W,) = _critical_weights(t, J, (k, n), 0.0, rng)
        w = np.linalg.eigvalsh(bwfast.hessian([W], t))
        cross = [2.0 * (1.0 - lam[i] / lam[j]) for i in range(n) if i not in J
                 for j in J]
        expected = np.sort([2.0] * 3 + [0.0] + cross)
        np.testing.assert_allclose(w, expected, rtol=0, atol=EXACT_ATOL)
        assert (w[0] < -0.9) == (J != (0, 1))


@pytest.mark.parametrize("tau", [0.0, 0.5])
@pytest.mark.parametrize("widths", [(2, 4), (3, 2, 4)])
def test_saddles_have_negative_curvature_and_the_minimum_none(widths, tau):
    rng = np.random.default_rng(32)
    n, k = 4, 2
    lam = np.array([4.0, 3.0, 2.0, 1.0])
    t = _distinct_target(rng, lam)
    for J in itertools.combinations(range(n), k):
        ws = _critical_weights(t, J, widths, tau, rng)
        loss, grads = bwfast.loss_and_grad(ws, t, tau)
        assert np.linalg.norm(_flat(grads)) < 1e-10
        assert abs(loss - _theory_loss(lam, J, tau)) < 1e-12 * t.trace
        lo, hi = bwfast.hessian_extremes(ws, t, tau)
        if J == (0, 1):
            assert lo > -1e-8 * hi
        else:
            assert lo < -0.5, (J, lo)


def test_lanczos_extremes_match_the_dense_ones():
    _, ws, cov = _case(TAU_CASES, "depth3-unequal", 40)
    for tau in (0.0, 0.3):
        dense = bwfast.hessian_extremes(ws, cov, tau, method="dense")
        lanczos = bwfast.hessian_extremes(ws, cov, tau, method="lanczos")
        np.testing.assert_allclose(lanczos, dense, rtol=1e-9)
        assert dense[0] < 0 < dense[1]


# --------------------------------------------------------------------------
# Curvature near a rank drop

EPS = np.array([1e-1, 1e-2, 1e-3])
RANK_DROP_LAM = np.array([4.0, 2.0, 1.0])


def _rank_drop_sequence(depth, tau, square=False):
    """lambda_min(H) and sigma_min(W) as one singular value of W shrinks.

    W = Omega_k diag(sqrt(lambda_k)) with its last singular value scaled by
    eps; n = 3 and k = d_0 = 2 (a tall W), or k = n = d_0 = 3 (square).
    Depth 2 puts the whole scale in the last layer, W_1 orthogonal.
    """
    rng = np.random.default_rng(50)
    lam = RANK_DROP_LAM
    t = _distinct_target(rng, lam)
    k = 3 if square else 2
    lows, smins = [], []
    for eps in EPS:
        scale = np.ones(k)
        scale[-1] = eps
        W = t.eigvecs[:, :k] * (np.sqrt(lam[:k]) * scale)
        if depth == 1:
            ws = [W]
        else:
            rot = random_orthogonal(rng, k)
            ws = [rot, W @ rot.T]
        lows.append(bwfast.hessian_extremes(ws, t, tau)[0])
        smins.append(np.linalg.svd(bwfast.end_to_end(ws), compute_uv=False)[-1])
    return np.array(lows), np.array(smins)


@pytest.mark.parametrize("depth", [1, 2])
def test_tau0_negative_curvature_grows_like_one_over_sigma_min(depth):
    lows, smins = _rank_drop_sequence(depth, 0.0)
    lam = RANK_DROP_LAM
    # the coupling of the shrinking direction to the discarded eigenvector
    # omega_3: lambda_min = 2 - 2 lambda_3 / sigma_2(R0 W), sigma_2 = eps lambda_2
    np.testing.assert_allclose(lows, 2.0 - 2.0 * lam[2] / (EPS * lam[1]), rtol=1e-9)
    slope = _loglog_slope(smins, lows)
    assert -1.1 < slope < -0.95, slope           # measured: -1.048
    limit = -2.0 * lam[2] / np.sqrt(lam[1])      # lambda_min * sigma_min ->
    assert abs(lows[-1] * smins[-1] / limit - 1.0) < 0.01


def test_tau0_square_network_stays_bounded_at_one_rank_drop():
    # k = n = d_0: no discarded directions, only the 1 / (s_i + s_j) terms,
    # which stay bounded while a single singular value shrinks.
    lows, smins = _rank_drop_sequence(1, 0.0, square=True)
    assert _loglog_slope(smins, lows) > -0.1     # measured: -0.033
    assert lows.min() > -2.0


@pytest.mark.parametrize("depth", [1, 2])
def test_tau_positive_curvature_stays_bounded(depth):
    tau = 0.1
    lows, smins = _rank_drop_sequence(depth, tau)
    lam = RANK_DROP_LAM
    assert _loglog_slope(smins, lows) > -0.2     # measured: -0.08, -0.06
    assert abs(lows[-1] / lows[-2] - 1.0) < 0.01  # it has levelled off
    # the size of the bound quoted for tau > 0, in the target's units
    assert np.abs(lows).max() < lam[0] ** 2 / (tau * lam[-1]) ** 1.5


# --------------------------------------------------------------------------
# Errors


def test_tau0_rank_drop_is_refused():
    rng = np.random.default_rng(60)
    cov = random_psd(rng, 3)
    W = np.zeros((3, 2))
    W[0, 0] = 1.0
    with pytest.raises(ValueError, match=r"`weights`.*kink"):
        bwfast.hessian_vector_product([W], cov, [np.ones((3, 2))])
    with pytest.raises(ValueError, match=r"`weights`.*kink"):
        bwfast.hessian([W], cov)
    # tau > 0 is smooth there
    assert np.isfinite(bwfast.hessian([W], cov, 0.1)).all()


def test_bad_directions_are_refused():
    rng, ws, cov = _case(TAU_CASES, "depth2-bottleneck", 61)
    P = sum(w.size for w in ws)
    good = [np.ones(w.shape) for w in ws]
    with pytest.raises(ValueError, match=r"`direction` must hold one array per "):
        bwfast.hessian_vector_product(ws, cov, good[:1], 0.3)
    with pytest.raises(ValueError, match=r"`direction\[1\]` must have the shape"):
        bwfast.hessian_vector_product(ws, cov, [good[0], good[1].T], 0.3)
    with pytest.raises(ValueError, match=rf"P = {P} entries.*got shape \({P + 1},\)"):
        bwfast.hessian_vector_product(ws, cov, np.ones(P + 1), 0.3)
    bad = [g.copy() for g in good]
    bad[0][1, 1] = np.nan
    with pytest.raises(ValueError, match=r"`direction\[0\]` must be finite"):
        bwfast.hessian_vector_product(ws, cov, bad, 0.3)
    with pytest.raises(TypeError, match=r"`direction` must be"):
        bwfast.hessian_vector_product(ws, cov, 1.0, 0.3)
    with pytest.raises(TypeError, match=r"`direction\[0\]` must hold float"):
        bwfast.hessian_vector_product(ws, cov, [g.astype(complex) for g in good])


def test_bad_arguments_are_refused():
    rng, ws, cov = _case(TAU_CASES, "depth1", 62)
    V = [np.ones(ws[0].shape)]
    with pytest.raises(ValueError, match=r"`tau` must be >= 0.0; got -0.1"):
        bwfast.hessian_vector_product(ws, cov, V, tau=-0.1)
    with pytest.raises(ValueError, match=r"`tau` must be >= 0.0"):
        bwfast.hessian(ws, cov, tau=-1.0)
    with pytest.raises(ValueError, match=r"`method` must be one of"):
        bwfast.hessian_extremes(ws, cov, method="power")
    with pytest.raises(TypeError, match=r"`max_params` must be an integer"):
        bwfast.hessian(ws, cov, max_params=10.5)
    with pytest.raises(ValueError, match=r"last layer must have n = 4 rows"):
        bwfast.hessian([np.ones((3, 5))], cov)


def test_dense_hessian_refuses_large_networks():
    # P = 4001 > the default limit of 4000
    cov = np.array([[2.0]])
    W = np.full((1, 4001), 1e-2)
    msg = r"`weights` has P = 4001 parameters.*max_params = 4000"
    with pytest.raises(ValueError, match=msg):
        bwfast.hessian([W], cov, 0.1)
    with pytest.raises(ValueError, match=msg):
        bwfast.hessian_extremes([W], cov, 0.1, method="dense")
    with pytest.raises(ValueError, match=r"P = 28 .* max_params = 20"):
        bwfast.hessian([np.ones((4, 5)), np.ones((2, 4))], np.eye(2), 0.1,
                       max_params=20)
