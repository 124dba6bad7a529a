"""PSD square root, inverse root on the range, and the Fréchet derivative."""

import numpy as np
import pytest
import scipy.linalg as sla
from conftest import (
    FD_RTOL,
    FD_STEP,
    REF_RTOL,
    REF_SINGULAR_RTOL,
    TOL,
    random_orthogonal,
    random_psd,
    random_sym,
    relerr,
)

import bwfast
from bwfast import reference as ref

EPS = np.finfo(np.float64).eps
MATFUNCS = [bwfast.sqrtm_psd, bwfast.inv_sqrtm_psd]


def _range_projector(A, rank):
    """Orthogonal projector onto the span of the top ``rank`` eigenvectors."""
    U = np.linalg.eigh(A)[1][:, A.shape[0] - rank :]
    return U @ U.T


# --------------------------------------------------------------------------
# sqrtm_psd: identities and exact values


@pytest.mark.parametrize("rank", [6, 3, 1])
def test_sqrtm_psd_squares_back(rank):
    rng = np.random.default_rng(100 + rank)
    A = random_psd(rng, 6, rank=rank)
    S = bwfast.sqrtm_psd(A)
    assert S.dtype == np.float64
    assert relerr(S @ S, A) < TOL[np.float64]
    assert relerr(S, S.T) < TOL[np.float64]
    assert np.linalg.eigvalsh(S).min() > -TOL[np.float64] * np.linalg.norm(S)


def test_sqrtm_psd_rank_one_exact():
    v = np.array([1.0, 2.0, 3.0])
    A = np.outer(v, v)
    S = bwfast.sqrtm_psd(A)
    assert not np.iscomplexobj(S)
    assert np.all(np.isfinite(S))
    assert relerr(S, A / np.linalg.norm(v)) < TOL[np.float64]
    assert relerr(S @ S, A) < TOL[np.float64]


def test_sqrtm_psd_zero_matrix():
    S = bwfast.sqrtm_psd(np.zeros((4, 4)))
    np.testing.assert_array_equal(S, np.zeros((4, 4)))
    np.testing.assert_array_equal(bwfast.inv_sqrtm_psd(np.zeros((4, 4))), 0.0)


def test_one_by_one_exact():
    np.testing.assert_allclose(bwfast.sqrtm_psd([[4.0]]), [[2.0]], rtol=EPS)
    np.testing.assert_allclose(bwfast.inv_sqrtm_psd([[4.0]]), [[0.5]], rtol=EPS)


def test_sqrtm_psd_diagonal_exact():
    d = np.array([9.0, 4.0, 0.0, 0.25])
    S = bwfast.sqrtm_psd(np.diag(d))
    np.testing.assert_allclose(S, np.diag(np.sqrt(d)), rtol=0, atol=4 * EPS)


def test_rounding_negative_eigenvalue_is_clamped():
    # A PSD matrix plus an exactly negative eigenvalue of rounding size in
    # its null space: that is what floating-point covariances look like.
    rng = np.random.default_rng(101)
    Q = random_orthogonal(rng, 5)
    a = np.array([2.0, 1.0, 0.5, 0.0, 0.0])
    B = (Q * a) @ Q.T
    u = Q[:, 4]
    A = B - 0.5 * EPS * np.outer(u, u)
    assert np.linalg.eigvalsh(A).min() < 0  # the premise of the test
    for f in MATFUNCS:
        S = f(A)
        assert S.dtype == np.float64
        assert np.all(np.isfinite(S))
    S = bwfast.sqrtm_psd(A)
    assert relerr(S, (Q * np.sqrt(a)) @ Q.T) < TOL[np.float64]
    Si = bwfast.inv_sqrtm_psd(A)
    P = _range_projector(B, 3)
    assert relerr(Si @ B @ Si, P) < TOL[np.float64] * 10


# --------------------------------------------------------------------------
# inv_sqrtm_psd


@pytest.mark.parametrize("rank", [5, 3, 1])
def test_inv_sqrtm_psd_projects_onto_range(rank):
    rng = np.random.default_rng(110 + rank)
    A = random_psd(rng, 5, rank=rank)
    Si = bwfast.inv_sqrtm_psd(A)
    P = _range_projector(A, rank)
    assert relerr(Si, Si.T) < TOL[np.float64]
    assert relerr(Si @ A @ Si, P) < TOL[np.float64]
    assert relerr(Si @ bwfast.sqrtm_psd(A), P) < TOL[np.float64]


def test_inv_sqrtm_psd_definite_is_inverse_root():
    rng = np.random.default_rng(115)
    A = random_psd(rng, 6)
    Si = bwfast.inv_sqrtm_psd(A)
    assert relerr(Si @ Si, np.linalg.inv(A)) < TOL[np.float64]


@pytest.mark.parametrize("rank", [6, 4])
def test_matches_reference(rank):
    rng = np.random.default_rng(116 + rank)
    A = random_psd(rng, 6, rank=rank)
    # scipy.linalg.sqrtm is accurate to sqrt(eps) only on singular input.
    rtol = REF_RTOL if rank == 6 else REF_SINGULAR_RTOL
    assert relerr(bwfast.sqrtm_psd(A), ref.sqrtm_psd(A)) < rtol
    assert relerr(bwfast.inv_sqrtm_psd(A), ref.inv_sqrtm_psd(A)) < rtol


# --------------------------------------------------------------------------
# stacks and dtypes


@pytest.mark.parametrize("f", MATFUNCS)
def test_stack_matches_one_at_a_time(f):
    rng = np.random.default_rng(120)
    mats = [random_psd(rng, 4, rank=r) for r in (4, 2, 4, 1, 3, 0)]
    A = np.stack(mats).reshape(2, 3, 4, 4)
    S = f(A)
    assert S.shape == A.shape
    for idx in np.ndindex(2, 3):
        np.testing.assert_allclose(S[idx], f(A[idx]), rtol=0, atol=1e-14)


def test_frechet_stack_matches_one_at_a_time():
    rng = np.random.default_rng(121)
    A = np.stack([random_psd(rng, 3) for _ in range(4)]).reshape(2, 2, 3, 3)
    E = np.stack([random_sym(rng, 3) for _ in range(4)]).reshape(2, 2, 3, 3)
    X = bwfast.sqrtm_frechet(A, E)
    assert X.shape == A.shape
    for idx in np.ndindex(2, 2):
        expected = bwfast.sqrtm_frechet(A[idx], E[idx])
        np.testing.assert_allclose(X[idx], expected, rtol=0, atol=1e-14)


@pytest.mark.parametrize("f", MATFUNCS)
def test_float32_in_float32_out(f):
    rng = np.random.default_rng(130)
    A32 = random_psd(rng, 6).astype(np.float32)
    S32 = f(A32)
    assert S32.dtype == np.float32
    assert relerr(S32, f(A32.astype(np.float64))) < TOL[np.float32]


def test_frechet_float32_in_float32_out():
    rng = np.random.default_rng(131)
    A32 = random_psd(rng, 5).astype(np.float32)
    E32 = random_sym(rng, 5).astype(np.float32)
    X32 = bwfast.sqrtm_frechet(A32, E32)
    assert X32.dtype == np.float32
    X64 = bwfast.sqrtm_frechet(A32.astype(np.float64), E32.astype(np.float64))
    assert relerr(X32, X64) < TOL[np.float32]


def test_integer_input_gives_float64():
    A = np.array([[4, 0], [0, 9]])
    S = bwfast.sqrtm_psd(A)
    assert S.dtype == np.float64
    np.testing.assert_allclose(S, [[2.0, 0.0], [0.0, 3.0]], rtol=EPS)
    Si = bwfast.inv_sqrtm_psd(A)
    assert Si.dtype == np.float64
    np.testing.assert_allclose(Si, [[0.5, 0.0], [0.0, 1.0 / 3.0]], rtol=EPS)
    X = bwfast.sqrtm_frechet(A, np.array([[1, 0], [0, 1]]))
    assert X.dtype == np.float64
    np.testing.assert_allclose(X, np.diag([0.25, 1.0 / 6.0]), rtol=2 * EPS)


@pytest.mark.parametrize(
    "dtype", [np.complex128, np.complex64, np.bool_, object, np.float16]
)
def test_unsupported_dtypes_raise_type_error(dtype):
    A = np.eye(3).astype(dtype)
    for f in MATFUNCS:
        with pytest.raises(TypeError):
            f(A)
    with pytest.raises(TypeError):
        bwfast.sqrtm_frechet(A, np.eye(3))
    with pytest.raises(TypeError):
        bwfast.sqrtm_frechet(np.eye(3), A)


# --------------------------------------------------------------------------
# invalid values


BAD_A = {
    "not square": np.ones((3, 4)),
    "one-dimensional": np.ones(3),
    "nan": np.array([[1.0, np.nan], [np.nan, 1.0]]),
    "inf": np.array([[np.inf, 0.0], [0.0, 1.0]]),
    "not symmetric": np.array([[1.0, 0.5], [0.0, 1.0]]),
    "not psd": np.diag([1.0, -0.1]),
}


@pytest.mark.parametrize("f", MATFUNCS)
@pytest.mark.parametrize("case", list(BAD_A))
def test_invalid_input_raises_value_error_naming_argument(f, case):
    with pytest.raises(ValueError, match="`A`"):
        f(BAD_A[case])


@pytest.mark.parametrize("case", list(BAD_A))
def test_frechet_invalid_a_names_a(case):
    A = BAD_A[case]
    with pytest.raises(ValueError, match="`A`"):
        bwfast.sqrtm_frechet(A, np.zeros_like(A))


@pytest.mark.parametrize(
    "E",
    [np.eye(4), np.ones((3, 4)), np.array([[np.nan, 0, 0]] * 3)],
    ids=["wrong size", "not square", "nan"],
)
def test_frechet_invalid_e_names_e(E):
    with pytest.raises(ValueError, match="`E`"):
        bwfast.sqrtm_frechet(np.eye(3), E)


def test_rounding_asymmetry_is_accepted():
    rng = np.random.default_rng(140)
    A = random_psd(rng, 5)
    A[0, 1] += 4 * EPS * np.linalg.norm(A)
    S = bwfast.sqrtm_psd(A)
    assert relerr(S @ S, (A + A.T) / 2) < TOL[np.float64]


# --------------------------------------------------------------------------
# sqrtm_frechet


def test_frechet_block_matrix_identity():
    rng = np.random.default_rng(150)
    n = 5
    A, E = random_psd(rng, n), random_sym(rng, n)
    block = sla.sqrtm(np.block([[A, E], [np.zeros((n, n)), A]]))
    assert not np.iscomplexobj(block)
    X = bwfast.sqrtm_frechet(A, E)
    assert relerr(X, block[:n, n:]) < REF_RTOL


def test_frechet_matches_reference():
    rng = np.random.default_rng(151)
    A, E = random_psd(rng, 6), random_sym(rng, 6)
    assert relerr(bwfast.sqrtm_frechet(A, E), ref.sqrtm_frechet(A, E)) < REF_RTOL


def test_frechet_matches_finite_differences():
    rng = np.random.default_rng(152)
    A, E = random_psd(rng, 6), random_sym(rng, 6)
    h = FD_STEP
    fd = (bwfast.sqrtm_psd(A + h * E) - bwfast.sqrtm_psd(A - h * E)) / (2 * h)
    assert relerr(bwfast.sqrtm_frechet(A, E), fd) < FD_RTOL


def test_frechet_at_identity_is_half():
    rng = np.random.default_rng(153)
    E = random_sym(rng, 5)
    X = bwfast.sqrtm_frechet(np.eye(5), E)
    assert relerr(X, E / 2) < TOL[np.float64]


def test_frechet_repeated_eigenvalues():
    rng = np.random.default_rng(154)
    Q = random_orthogonal(rng, 4)
    a = np.array([1.0, 1.0, 2.0, 2.0])
    A = (Q * a) @ Q.T
    E = random_sym(rng, 4)
    X = bwfast.sqrtm_frechet(A, E)
    assert np.all(np.isfinite(X))
    S = bwfast.sqrtm_psd(A)
    assert relerr(S @ X + X @ S, E) < TOL[np.float64]
    s = np.sqrt(a)
    exact = Q @ ((Q.T @ E @ Q) / (s[:, None] + s[None, :])) @ Q.T
    assert relerr(X, exact) < TOL[np.float64]


def test_frechet_singular_sets_null_block_to_zero():
    # diag(1, 0): denominators s_i + s_j are 2, 1, 1, 0; the last is zeroed.
    X = bwfast.sqrtm_frechet(np.diag([1.0, 0.0]), np.ones((2, 2)))
    np.testing.assert_allclose(X, [[0.5, 1.0], [1.0, 0.0]], rtol=0, atol=4 * EPS)


def test_frechet_self_adjoint_and_trace_derivative():
    rng = np.random.default_rng(155)
    A, E, F = random_psd(rng, 5), random_sym(rng, 5), random_sym(rng, 5)
    LE, LF = bwfast.sqrtm_frechet(A, E), bwfast.sqrtm_frechet(A, F)
    assert np.sum(F * LE) == pytest.approx(np.sum(LF * E), rel=TOL[np.float64])
    # d tr A^{1/2} [E] = tr L(A, E) = tr(A^{-1/2} E) / 2
    half = np.trace(bwfast.inv_sqrtm_psd(A) @ E) / 2
    assert np.trace(LE) == pytest.approx(half, rel=TOL[np.float64])
