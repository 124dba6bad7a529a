"""Regressions from adversarial testing: extreme scales, degenerate inputs,
argument checks, and the cache separation of serial and parallel kernels."""

import numpy as np
import pytest

import bwfast
from bwfast import Status, Target, fit
from bwfast import _kernels as K


@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e200, 1e300])
def test_matrix_functions_survive_extreme_scales(scale):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 4))
    A0 = X @ X.T + np.eye(4)
    B0 = np.diag([1.0, 2.0, 3.0, 4.0])
    A, B = A0 * scale, B0 * scale
    S = bwfast.sqrtm_psd(A)
    np.testing.assert_allclose(S / np.sqrt(scale), bwfast.sqrtm_psd(A0), rtol=1e-12)
    Si = bwfast.inv_sqrtm_psd(A)
    np.testing.assert_allclose(Si * np.sqrt(scale), bwfast.inv_sqrtm_psd(A0),
                               rtol=1e-12)
    d2 = bwfast.bures_wasserstein_squared(A, B)
    assert d2 / scale == pytest.approx(bwfast.bures_wasserstein_squared(A0, B0),
                                       rel=1e-12)
    np.testing.assert_allclose(bwfast.ot_map(A, B), bwfast.ot_map(A0, B0),
                               rtol=1e-10)
    L = bwfast.sqrtm_frechet(A, B)
    np.testing.assert_allclose(L / np.sqrt(scale), bwfast.sqrtm_frechet(A0, B0),
                               rtol=1e-10)


def test_entries_near_float_max():
    A = np.full((2, 2), 1e308)
    S = bwfast.sqrtm_psd(A)
    assert np.isfinite(S).all()
    np.testing.assert_allclose(S, np.full((2, 2), np.sqrt(0.5e308)), rtol=1e-12)
    with pytest.raises(ValueError, match="rescale"):
        Target(np.diag([1e308, 1.0]))
    with pytest.raises(ValueError, match="rescale"):
        Target(np.diag([4e-300, 1e-300]))


@pytest.mark.parametrize(
    "A, B",
    [
        (np.diag([1.0, 0.0]), np.diag([1.0, -5.0])),
        (np.zeros((2, 2)), -np.eye(2)),
        (np.diag([1.0, 1e-10]), np.diag([1.0, -1e-3])),
    ],
)
def test_ot_map_checks_b_itself(A, B):
    with pytest.raises(ValueError, match="`B` must be positive semidefinite"):
        bwfast.ot_map(A, B)


@pytest.mark.parametrize("delta", [1e-8, 1e-7, 1e-4])
def test_tau_loss_keeps_relative_accuracy_near_optimum(delta):
    t = Target(np.diag([4.0, 2.0, 1.0]))
    P = np.random.default_rng(1).standard_normal((3, 3))
    W = np.diag(np.sqrt([3.5, 1.5, 0.5])) + delta * P
    loss, _ = bwfast.loss_and_grad([W], t, tau=0.5)
    exact = bwfast.bures_wasserstein_squared(W @ W.T + 0.5 * np.eye(3), t.cov)
    assert loss > 0
    assert loss == pytest.approx(exact, rel=1e-5)


def test_tiny_tau_singular_target_is_accurate_to_rounding_of_the_scale():
    # M = R0 (W W^T + tau I) R0 has an eigenvalue near 1e-25 against 16
    # here, below what float64 resolves: the loss is exact only up to about
    # eps * tr Sigma0 (the relative gap to an optimum of 5e-13 is not
    # meaningful at that level)
    t = Target(np.diag([4.0, 2.0, 1e-12]))
    res = fit(t, (3, 2, 3), tau=1e-13)
    assert res.status is Status.CONVERGED, res.message
    assert abs(res.gap) < 1e-12 * t.trace


def test_serial_and_parallel_kernels_are_distinct_functions():
    # one Python function compiled twice would share one disk-cache entry
    for serial, par in K.BATCH.values():
        assert serial.py_func is not par.py_func
        assert serial.py_func.__qualname__ != par.py_func.__qualname__
        assert par.targetoptions.get("parallel") is True
        assert not serial.targetoptions.get("parallel", False)


def test_kernel_error_in_a_stack_does_not_poison_later_calls():
    A = np.stack([np.eye(3)] * 4)
    A[2] = np.full((3, 3), 1e308)
    S = bwfast.sqrtm_psd(A)
    assert np.isfinite(S).all()
    np.testing.assert_allclose(S[2] @ S[2], A[2], rtol=1e-12)
    np.testing.assert_allclose(bwfast.sqrtm_psd(A[2]), S[2], rtol=1e-15)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_huge_lr_diverges_with_finite_weights(dtype):
    S0 = np.diag([4.0, 2.0, 1.0])
    res = fit(S0, (3, 2, 3), lr=1e6 * bwfast.default_lr(S0, (3, 2, 3)),
              dtype=dtype)
    assert res.status is Status.DIVERGED
    assert all(np.isfinite(w).all() for w in res.weights)


@pytest.mark.parametrize(
    "scale, dtype, loss",
    [(1e-30, np.float32, "bw"), (1e20, np.float32, "bw"),
     (1e-100, np.float64, "frobenius"), (1e100, np.float64, "frobenius"),
     (1e-10, np.float32, "frobenius")],
)
def test_training_refuses_scales_the_arithmetic_cannot_resolve(scale, dtype, loss):
    with pytest.raises(ValueError, match="rescale"):
        fit(scale * np.diag([3.0, 2.0, 1.0]), (3, 2, 3), dtype=dtype, loss=loss)


@pytest.mark.parametrize("scale", [1e-10, 1e10])
def test_float32_training_at_the_edges_of_its_range(scale):
    S0 = scale * np.diag([3.0, 2.0, 1.0])
    res = fit(S0, (3, 2, 3), dtype=np.float32, tau=0.1 * scale)
    assert res.status is Status.CONVERGED, res.message
    assert abs(res.relative_gap) < 1e-3


def test_mixed_scales_of_the_two_arguments():
    I2 = np.eye(2)
    np.testing.assert_allclose(bwfast.ot_map(1e-300 * I2, 1e300 * I2), 1e300 * I2,
                               rtol=1e-12)
    np.testing.assert_allclose(bwfast.sqrtm_frechet(1e-300 * I2, 1e100 * I2),
                               5e249 * I2, rtol=1e-12)
    d = bwfast.bures_wasserstein(1.7e308 * I2, np.zeros((2, 2)))
    assert d == pytest.approx(np.sqrt(2.0) * np.sqrt(1.7e308), rel=1e-12)


def test_jacobi_path_with_huge_entries():
    A = 5e153 * np.array([[2.0, 1.0], [1.0, 2.0]])
    S = bwfast.kernels.sqrtm_psd(A)
    np.testing.assert_allclose(S @ S, A, rtol=1e-12)


def test_tau_loss_on_a_bottleneck_with_tiny_tau_matches_the_reference():
    from bwfast import reference
    from bwfast.io import default_target

    t = default_target()
    res = fit(t, (64, 16, 16, 64), tau=1e-12)
    exact = reference.loss(list(res.weights), t.cov, 1e-12)
    assert res.loss == pytest.approx(exact, rel=1e-6)
    assert res.relative_gap > -1e-6


def test_zero_target_tau_zero_runs_to_the_zero_model():
    # W -> 0 only polynomially for depth 2 (no margin at a zero target);
    # with nothing to set the scale the test runs at scale 1
    res = fit(np.zeros((3, 3)), (3, 2, 3))
    assert res.status is Status.CONVERGED, res.message
    assert res.loss < 1e-6


def test_history_is_not_allocated_for_the_step_limit():
    res = fit(np.diag([4.0, 2.0, 1.0]), (3, 2, 3), steps=10**15, record_every=1)
    assert res.status is Status.CONVERGED
    assert res.losses.size == res.steps + 1


@pytest.mark.parametrize(
    "kwargs, text",
    [
        (dict(widths=(3, 10**11, 3)), "widths"),
        (dict(widths=(3, 2, 3), record_every=10**30), "record_every"),
        (dict(widths=(3, 2, 3), steps=10**30), "steps"),
    ],
)
def test_fit_bounds(kwargs, text):
    with pytest.raises(ValueError, match=text):
        fit(np.eye(3), **kwargs)


def test_big_endian_and_masked_input():
    A = np.array([[2.0, 1.0], [1.0, 2.0]])
    for dt in (">f8", ">f4"):
        S = bwfast.sqrtm_psd(A.astype(dt))
        np.testing.assert_allclose(S @ S, A, rtol=1e-6)
    masked = np.ma.masked_array(A, mask=[[True, False], [False, False]])
    with pytest.raises(ValueError, match="masked"):
        bwfast.sqrtm_psd(masked)


@pytest.mark.parametrize(
    "call, exc, text",
    [
        (lambda: bwfast.sqrtm_psd([[1, 2], [3]]), ValueError, "`A`"),
        (lambda: bwfast.loss_and_grad(None, np.eye(2)), TypeError, "`weights`"),
        (lambda: bwfast.loss_and_grad(5, np.eye(2)), TypeError, "`weights`"),
        (lambda: Target(np.eye(2), rtol="x"), TypeError, "`rtol`"),
        (lambda: Target(np.diag([1.0, -1.0]), rtol=float("nan")), ValueError,
         "`rtol`"),
        (lambda: bwfast.balanced_weights(np.full((2, 2), np.inf), (2, 2)),
         ValueError, "`W`"),
        (lambda: bwfast.balanced_weights(np.eye(2), 5), TypeError, "`widths`"),
        (lambda: bwfast.balanced_weights(np.eye(2), (2, 2), seed=-1), ValueError,
         "`seed`"),
        (lambda: bwfast.frechet_distance(np.zeros((2, 2)), np.eye(2),
                                         np.zeros((3, 2)), np.eye(2)),
         ValueError, "`m1`"),
        (lambda: bwfast.frechet_distance(np.zeros(2, np.longdouble), np.eye(2),
                                         np.zeros(2), np.eye(2)),
         TypeError, "`m1`"),
        (lambda: Target.from_samples(np.array([[1e300, 0.0], [-1e300, 1.0]])),
         ValueError, "`X`"),
    ],
)
def test_argument_errors_name_the_argument(call, exc, text):
    with pytest.raises(exc, match=text):
        call()


def test_float32_target_checked_with_float32_allowance():
    A = np.array([[2.0, 1.0], [1.0, 2.0]], dtype=np.float32)
    A[0, 1] = np.nextafter(A[0, 1], np.float32(2))  # 1 ulp of asymmetry
    t = Target(A)
    assert t.n == 2


def test_target_of_a_target_is_the_same_target():
    t = bwfast.Target(np.diag([3.0, 1.0]))
    again = bwfast.Target(t)
    np.testing.assert_array_equal(again.cov, t.cov)
    np.testing.assert_array_equal(again.eigvals, t.eigvals)
