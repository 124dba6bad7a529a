"""Bures-Wasserstein distance, Fréchet (W2) distance and the Gaussian OT map."""

import numpy as np
import pytest
from conftest import (
    REF_RTOL,
    REF_SINGULAR_RTOL,
    TOL,
    random_orthogonal,
    random_psd,
    relerr,
)

import bwfast
from bwfast import reference as ref

EPS = np.finfo(np.float64).eps

# Relative accuracy demanded for nearly equal commuting pairs, where the trace
# formula keeps no correct digit.
NEAR_EQUAL_RTOL = 1e-6


def _trace_formula(A, B):
    """BW^2 by tr A + tr B - 2 tr (A^½ B A^½)^½ with exact-eigh roots."""

    def root(M):
        w, Q = np.linalg.eigh((M + M.T) / 2)
        return (Q * np.sqrt(np.maximum(w, 0.0))) @ Q.T

    RA = root(A)
    return np.trace(A) + np.trace(B) - 2.0 * np.trace(root(RA @ B @ RA))


def _fuzz_pairs(rng, count, nmax=6):
    """PSD pairs of random size and rank (including 0 and full), some equal."""
    for i in range(count):
        n = int(rng.integers(1, nmax + 1))
        A = random_psd(rng, n, rank=int(rng.integers(0, n + 1)))
        if i % 4 == 0:
            B = A.copy()
        elif i % 4 == 1:
            B = A * (1.0 + 1e-9 * rng.standard_normal())
        else:
            B = random_psd(rng, n, rank=int(rng.integers(0, n + 1)))
        yield A, B


# --------------------------------------------------------------------------
# exact values and identities


def test_identity_versus_rank_one_exact():
    v = np.array([1.0, 2.0, 3.0])
    expected = np.sqrt(17.0 - 2.0 * np.sqrt(14.0))
    assert expected == pytest.approx(3.0849, abs=1e-4)
    for A, B in [(np.eye(3), np.outer(v, v)), (np.outer(v, v), np.eye(3))]:
        assert abs(bwfast.bures_wasserstein(A, B) - expected) < 1e-12
        assert abs(bwfast.bures_wasserstein_squared(A, B) - expected**2) < 1e-12


def test_two_d_inputs_give_python_float():
    rng = np.random.default_rng(200)
    A, B = random_psd(rng, 3), random_psd(rng, 3)
    assert isinstance(bwfast.bures_wasserstein_squared(A, B), float)
    assert isinstance(bwfast.bures_wasserstein(A, B), float)


@pytest.mark.parametrize("rank", [6, 4, 1])
def test_distance_to_itself_is_zero(rank):
    rng = np.random.default_rng(201 + rank)
    A = random_psd(rng, 6, rank=rank)
    d2 = bwfast.bures_wasserstein_squared(A, A)
    assert 0.0 <= d2 <= 1e-12 * np.trace(A)


def test_distance_to_itself_beats_trace_formula():
    # For a rank-deficient A the product A^½ A A^½ has rounding-sized
    # eigenvalues whose square roots are ~sqrt(eps): the trace formula
    # reports a spurious distance there.
    rng = np.random.default_rng(205)
    A = random_psd(rng, 8, rank=3)
    trace_err = abs(_trace_formula(A, A))
    assert trace_err > 1e-10 * np.trace(A)  # the trap is real for this input
    d2 = bwfast.bures_wasserstein_squared(A, A)
    assert abs(d2) <= 1e-12 * np.trace(A)
    assert abs(d2) <= 1e-3 * trace_err


@pytest.mark.parametrize("rotate", [False, True], ids=["diagonal", "rotated"])
def test_nearly_equal_commuting_pair_keeps_relative_accuracy(rotate):
    rng = np.random.default_rng(210 + rotate)
    n = 8
    a = rng.uniform(0.5, 2.0, n)
    b = a * (1.0 + 1e-7 * rng.uniform(-1.0, 1.0, n))
    Q = random_orthogonal(rng, n) if rotate else np.eye(n)
    A, B = (Q * a) @ Q.T, (Q * b) @ Q.T
    exact = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = bwfast.bures_wasserstein_squared(A, B)
    assert abs(got - exact) / exact < NEAR_EQUAL_RTOL
    got = bwfast.bures_wasserstein(A, B)
    assert abs(got - np.sqrt(exact)) / np.sqrt(exact) < NEAR_EQUAL_RTOL


def test_nonnegative_on_fuzz():
    rng = np.random.default_rng(220)
    for A, B in _fuzz_pairs(rng, 80):
        d2 = bwfast.bures_wasserstein_squared(A, B)
        assert np.isfinite(d2)
        assert d2 >= 0.0
        assert np.isfinite(bwfast.bures_wasserstein(A, B))


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(221)
    for A, B in _fuzz_pairs(rng, 40):
        scale = np.sqrt(np.trace(A) + np.trace(B)) + 1.0
        dab = bwfast.bures_wasserstein(A, B)
        dba = bwfast.bures_wasserstein(B, A)
        assert abs(dab - dba) <= 1e-12 * scale


def test_triangle_inequality_on_fuzz():
    rng = np.random.default_rng(222)
    bw = bwfast.bures_wasserstein
    for _ in range(40):
        n = int(rng.integers(1, 6))
        A, B, C = (random_psd(rng, n, rank=int(rng.integers(0, n + 1))) for _ in "abc")
        scale = np.sqrt(np.trace(A) + np.trace(B) + np.trace(C)) + 1.0
        assert bw(A, C) <= bw(A, B) + bw(B, C) + 1e-12 * scale


def test_matches_reference_on_definite_pairs():
    rng = np.random.default_rng(223)
    for n in (1, 2, 5, 9):
        A, B = random_psd(rng, n), random_psd(rng, n, low=0.2, high=3.0)
        scale = np.trace(A) + np.trace(B)
        got = bwfast.bures_wasserstein_squared(A, B)
        assert abs(got - ref.bures_wasserstein_squared(A, B)) < REF_RTOL * scale


def test_matches_reference_on_singular_pair():
    rng = np.random.default_rng(224)
    A, B = random_psd(rng, 6, rank=2), random_psd(rng, 6, rank=4)
    scale = np.trace(A) + np.trace(B)
    got = bwfast.bures_wasserstein_squared(A, B)
    assert abs(got - ref.bures_wasserstein_squared(A, B)) < REF_SINGULAR_RTOL * scale


def test_zero_matrix_distance_is_trace():
    rng = np.random.default_rng(225)
    B = random_psd(rng, 4, rank=3)
    d2 = bwfast.bures_wasserstein_squared(np.zeros((4, 4)), B)
    assert d2 == pytest.approx(np.trace(B), rel=TOL[np.float64])


def test_stacks_broadcast_leading_axes():
    rng = np.random.default_rng(226)
    A = np.stack([random_psd(rng, 3, rank=r) for r in (3, 1, 2)])[:, None]
    B = np.stack([random_psd(rng, 3) for _ in range(4)])
    d2 = bwfast.bures_wasserstein_squared(A, B)
    d = bwfast.bures_wasserstein(A, B)
    assert d2.shape == (3, 4) and d.shape == (3, 4)
    for i, j in np.ndindex(3, 4):
        one = bwfast.bures_wasserstein_squared(A[i, 0], B[j])
        assert d2[i, j] == pytest.approx(one, rel=1e-13, abs=1e-15)
        assert d[i, j] == pytest.approx(np.sqrt(one), rel=1e-13, abs=1e-15)


def test_float32_within_its_tolerance():
    rng = np.random.default_rng(227)
    A, B = random_psd(rng, 6), random_psd(rng, 6)
    A32, B32 = A.astype(np.float32), B.astype(np.float32)
    got = bwfast.bures_wasserstein_squared(A32, B32)
    exact = bwfast.bures_wasserstein_squared(
        A32.astype(np.float64), B32.astype(np.float64)
    )
    assert abs(got - exact) < TOL[np.float32] * (np.trace(A) + np.trace(B))


def test_invalid_arguments_are_named():
    with pytest.raises(ValueError, match="`B`"):
        bwfast.bures_wasserstein_squared(np.eye(2), np.diag([1.0, -0.5]))
    with pytest.raises(ValueError, match="`A`"):
        bwfast.bures_wasserstein(np.array([[1.0, 2.0], [0.0, 1.0]]), np.eye(2))
    with pytest.raises(ValueError, match="`A`"):
        bwfast.bures_wasserstein_squared(np.full((2, 2), np.nan), np.eye(2))
    with pytest.raises(ValueError):
        bwfast.bures_wasserstein_squared(np.eye(2), np.eye(3))
    with pytest.raises(TypeError):
        bwfast.bures_wasserstein_squared(np.eye(2, dtype=complex), np.eye(2))


# --------------------------------------------------------------------------
# frechet_distance


def test_frechet_distance_adds_squared_mean_difference():
    rng = np.random.default_rng(230)
    A, B = random_psd(rng, 3), random_psd(rng, 3, rank=2)
    m1, m2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 6.0, 3.0])
    bw2 = bwfast.bures_wasserstein_squared(A, B)
    got = bwfast.frechet_distance(m1, A, m2, B)
    assert got == pytest.approx(25.0 + bw2, rel=TOL[np.float64])
    assert bwfast.frechet_distance(m1, A, m2, A) == pytest.approx(25.0, rel=1e-12)
    assert bwfast.frechet_distance(m1, A, m1, B) == pytest.approx(bw2, rel=1e-12)


def test_frechet_distance_matches_reference():
    rng = np.random.default_rng(231)
    A, B = random_psd(rng, 5), random_psd(rng, 5)
    m1, m2 = rng.standard_normal(5), rng.standard_normal(5)
    expected = ref.frechet_distance(m1, A, m2, B)
    got = bwfast.frechet_distance(m1, A, m2, B)
    assert got == pytest.approx(expected, rel=REF_RTOL)


# --------------------------------------------------------------------------
# ot_map


@pytest.mark.parametrize("rank_b", [5, 2, 0])
def test_ot_map_pushes_a_to_b(rank_b):
    rng = np.random.default_rng(240 + rank_b)
    A, B = random_psd(rng, 5), random_psd(rng, 5, rank=rank_b)
    T = bwfast.ot_map(A, B)
    assert relerr(T, T.T) < TOL[np.float64]
    assert np.linalg.eigvalsh(T).min() >= -TOL[np.float64] * np.linalg.norm(T)
    assert np.linalg.norm(T @ A @ T - B) < 1e-11 * np.linalg.norm(A)


def test_ot_map_known_values():
    rng = np.random.default_rng(245)
    A, B = random_psd(rng, 4), random_psd(rng, 4)
    assert relerr(bwfast.ot_map(np.eye(4), B), bwfast.sqrtm_psd(B)) < TOL[np.float64]
    assert relerr(bwfast.ot_map(A, A), np.eye(4)) < TOL[np.float64]
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 1.0])
    T = bwfast.ot_map(np.diag(a), np.diag(b))
    assert relerr(T, np.diag(np.sqrt(b / a))) < TOL[np.float64]


def test_ot_map_matches_reference():
    rng = np.random.default_rng(246)
    A, B = random_psd(rng, 6), random_psd(rng, 6, low=0.1, high=4.0)
    assert relerr(bwfast.ot_map(A, B), ref.ot_map(A, B)) < REF_RTOL


def test_ot_map_stack():
    rng = np.random.default_rng(247)
    A = np.stack([random_psd(rng, 3) for _ in range(4)])
    B = np.stack([random_psd(rng, 3) for _ in range(4)])
    T = bwfast.ot_map(A, B)
    assert T.shape == (4, 3, 3)
    for i in range(4):
        np.testing.assert_allclose(T[i], bwfast.ot_map(A[i], B[i]), atol=1e-14)
