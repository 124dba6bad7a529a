"""Public PSD matrix functions and Bures-Wasserstein distances."""

import math

import numpy as np

from . import _kernels as K
from ._threads import run_batch
from ._validate import (
    check_finite,
    check_psd,
    check_symmetric,
    common_dtype,
    rtol_for,
    square_stack,
)

__all__ = [
    "sqrtm_psd",
    "inv_sqrtm_psd",
    "sqrtm_frechet",
    "bures_wasserstein_squared",
    "bures_wasserstein",
    "frechet_distance",
    "ot_map",
]



# A matrix whose largest entry lies outside 2^-LIMIT .. 2^LIMIT is scaled by
# an even power of two (exact) before the kernels, so that no product or
# eigenvalue over- or underflows, and the result is scaled back.
_LIMIT = {np.dtype(np.float32): 30, np.dtype(np.float64): 300}


def _absmax(S3):
    """max |s_ij| of each matrix of an (m, n, n) stack."""
    out = np.zeros(S3.shape[0])
    if S3.size:
        K.absmax_batch(S3, out)
    return out


def _pow2_exponents(scale, dtype):
    """Even exponents e per matrix from its max |entry|, 0 if in range."""
    limit = _LIMIT[np.dtype(dtype)]
    if scale.size == 1:  # the common single-matrix call, without array math
        x = float(scale.flat[0])
        ex = math.frexp(x)[1] if x > 0 else 0
        return np.full(1, 2 * (ex // 2) if abs(ex) > limit else 0, np.int64)
    e = np.frexp(scale)[1].astype(np.int64)
    e = np.where(scale > 0, e, 0)
    return np.where(np.abs(e) > limit, 2 * (e // 2), 0)


def _own_scaling(*stacks_and_scales):
    """Each stack scaled by its own even powers of two: (stack, exponents)."""
    out = []
    for S, scale in stacks_and_scales:
        e = _pow2_exponents(scale, S.dtype)
        out.append((_scaled(S, e) if e.any() else S, e))
    return out


def _lead_scale(scale, lead):
    """Per-matrix scales broadcast to the stack shape of a pair, flattened."""
    return np.ascontiguousarray(np.broadcast_to(scale, lead)).reshape(-1)


def _scaled(S, e):
    return np.ascontiguousarray(np.ldexp(S, -e[:, None, None]).astype(S.dtype))


def _psd_stack(A, name):
    """Validated stack and the max |entry| of each of its matrices."""
    a = square_stack(A, name)
    return a, check_symmetric(a, name)


def _pair(A, B, nameA, nameB):
    """Broadcast two (..., n, n) stacks to one (m, n, n) float layout."""
    if A.shape[-1] != B.shape[-1]:
        raise ValueError(
            f"`{nameA}` and `{nameB}` must have the same matrix size; got "
            f"{A.shape[-1]} and {B.shape[-1]}"
        )
    try:
        lead = np.broadcast_shapes(A.shape[:-2], B.shape[:-2])
    except ValueError:
        raise ValueError(
            f"the stack shapes of `{nameA}` {A.shape[:-2]} and `{nameB}` "
            f"{B.shape[:-2]} do not broadcast"
        ) from None
    dt = common_dtype(A, B)
    n = A.shape[-1]
    m = int(np.prod(lead, dtype=np.int64))
    A3 = np.ascontiguousarray(
        np.broadcast_to(A, lead + (n, n)).reshape(m, n, n), dtype=dt
    )
    B3 = np.ascontiguousarray(
        np.broadcast_to(B, lead + (n, n)).reshape(m, n, n), dtype=dt
    )
    return A3, B3, lead, dt


def _unary_root(A, inverse, name="A"):
    a, scale = _psd_stack(A, name)
    n = a.shape[-1]
    m = int(np.prod(a.shape[:-2], dtype=np.int64))
    A3 = np.ascontiguousarray(a.reshape(m, n, n))
    e = _pow2_exponents(scale.reshape(-1), A3.dtype)
    if e.any():
        A3 = _scaled(A3, e)
    out = np.empty_like(A3)
    wmin = np.zeros(A3.shape[0])
    wmax = np.zeros(A3.shape[0])
    run_batch(K.BATCH["sqrtm_psd"], m, n, A3, inverse, out, wmin, wmax)
    check_psd(wmin, wmax, name, rtol_for(a.dtype))
    if e.any():
        half = (-e // 2) if inverse else (e // 2)
        out = np.ldexp(out, half[:, None, None]).astype(out.dtype)
    return out.reshape(a.shape)


def sqrtm_psd(A):
    """Square root of a symmetric positive semidefinite matrix.

    S = Q diag(sqrt(a)) Q^T from the eigendecomposition sym(A) = Q diag(a) Q^T,
    with eigenvalues at or below n * eps * max(a) counted as zero, so
    rounding never produces NaN or complex output.

    Parameters
    ----------
    A : (..., n, n) array_like
        Symmetric PSD matrices. Asymmetry or negative eigenvalues beyond
        sqrt(eps) relative to the largest entry/eigenvalue are errors.

    Returns
    -------
    S : (..., n, n) ndarray
        The symmetric PSD square roots, S @ S = A.

    Raises
    ------
    ValueError
        If `A` is not square, not finite, not symmetric or not PSD.
    TypeError
        If `A` has an unsupported dtype.

    Notes
    -----
    Integer input is computed in float64; float32 input stays float32
    (accurate to about 1e-5 relative, against 1e-13 for float64); other
    dtypes raise TypeError. Stacks of shape (..., n, n) are processed one
    matrix at a time with the same kernel, so a stack gives exactly the
    results of a loop over its matrices. The same policy holds for every
    function of this module.
    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import sqrtm_psd
    >>> sqrtm_psd([[4.0]])
    array([[2.]])
    >>> v = np.array([[1.0], [2.0], [2.0]])
    >>> S = sqrtm_psd(v @ v.T)
    >>> bool(np.allclose(S @ S, v @ v.T))
    True
    """
    return _unary_root(A, False)


def inv_sqrtm_psd(A):
    """Inverse square root of a PSD matrix on its range (pseudo-inverse root).

    Q diag(1/sqrt(a)) Q^T over the eigenvalues above the cutoff
    n * eps * max(a), zero on the null space: for singular A this is
    (A^+)^{1/2}, and P = X A X is the orthogonal projector onto range(A).

    Parameters
    ----------
    A : (..., n, n) array_like
        Symmetric PSD matrices.

    Returns
    -------
    X : (..., n, n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import inv_sqrtm_psd
    >>> inv_sqrtm_psd(np.diag([4.0, 0.0]))
    array([[0.5, 0. ],
           [0. , 0. ]])
    """
    return _unary_root(A, True)


def sqrtm_frechet(A, E):
    """Frechet derivative L(A, E) of the PSD square root.

    The solution X of A^{1/2} X + X A^{1/2} = E, computed in the eigenbasis
    of A as X = Q [(Q^T E Q)_ij / (sqrt(a_i) + sqrt(a_j))] Q^T with the
    entries of zero denominator set to zero (Daleckii-Krein form). There is
    no divided difference 1/(a_i - a_j), so repeated eigenvalues are exact.

    Parameters
    ----------
    A : (..., n, n) array_like
        Symmetric PSD matrices.
    E : (..., n, n) array_like
        Directions (need not be symmetric); leading axes broadcast with A.

    Returns
    -------
    X : (..., n, n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import sqrtm_frechet
    >>> E = np.array([[1.0, 2.0], [2.0, 3.0]])
    >>> bool(np.allclose(sqrtm_frechet(np.eye(2), E), E / 2))
    True
    """
    a, scale = _psd_stack(A, "A")
    e = square_stack(E, "E")
    A3, E3, lead, _ = _pair(a, e, "A", "E")
    n = A3.shape[-1]
    # L(a A, e E) = e / sqrt(a) L(A, E): each scaled by its own power of two
    (A3, ex), (E3, ee) = _own_scaling((A3, _lead_scale(scale, lead)),
                                      (E3, _absmax(E3)))
    out = np.empty_like(A3)
    wmin = np.zeros(A3.shape[0])
    wmax = np.zeros(A3.shape[0])
    run_batch(K.BATCH["sqrtm_frechet"], A3.shape[0], n, A3, E3, out, wmin, wmax)
    check_psd(wmin, wmax, "A", rtol_for(A3.dtype))
    if ex.any() or ee.any():
        with np.errstate(over="ignore", under="ignore"):
            out = np.ldexp(out, (ee - ex // 2)[:, None, None]).astype(out.dtype)
    return out.reshape(lead + (n, n))


def _distance_stack(A, B, root=False):
    a, sa = _psd_stack(A, "A")
    b, sb = _psd_stack(B, "B")
    A3, B3, lead, dt = _pair(a, b, "A", "B")
    # BW^2(c A, c B) = c BW^2(A, B); c even, so BW scales by 2^(e/2)
    scale = np.maximum(_lead_scale(sa, lead), _lead_scale(sb, lead))
    e = _pow2_exponents(scale, dt)
    if e.any():
        A3, B3 = _scaled(A3, e), _scaled(B3, e)
    out = np.zeros(A3.shape[0])
    wr = np.zeros((A3.shape[0], 4))
    run_batch(K.BATCH["bw_squared"], A3.shape[0], A3.shape[-1], A3, B3, out, wr)
    rtol = rtol_for(dt)
    check_psd(wr[:, 0], wr[:, 1], "A", rtol)
    check_psd(wr[:, 2], wr[:, 3], "B", rtol)
    if root:  # the root in scaled units: BW itself may be representable
        out = np.sqrt(out)
        e = e // 2
    if e.any():
        with np.errstate(over="ignore"):
            out = np.ldexp(out, e)
    with np.errstate(over="ignore"):
        out = out.astype(dt).reshape(lead)
    return out[()] if out.ndim == 0 else out


def bures_wasserstein_squared(A, B):
    """Squared Bures-Wasserstein distance between PSD matrices.

    BW^2(A, B) = tr A + tr B - 2 tr (A^{1/2} B A^{1/2})^{1/2}, evaluated in
    the Procrustes form min_Q ||A^{1/2} - B^{1/2} Q||_F^2 at the polar
    factor of B^{1/2} A^{1/2}. As a sum of squares it is never negative,
    it is zero to rounding for identical inputs (about 1e-28 relative), and
    it keeps its relative accuracy when A and B are nearly equal, where the
    trace formula loses every digit. It is the squared 2-Wasserstein
    distance between N(0, A) and N(0, B).

    Parameters
    ----------
    A, B : (..., n, n) array_like
        Symmetric PSD matrices (singular allowed); leading axes broadcast.

    Returns
    -------
    d2 : float or (...) ndarray
        A NumPy scalar for two matrices, an array for stacks; float32 only
        if both inputs are float32.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import bures_wasserstein_squared
    >>> v = np.array([1.0, 2.0, 3.0])
    >>> d2 = bures_wasserstein_squared(np.eye(3), np.outer(v, v))
    >>> bool(np.isclose(d2, 17 - 2 * np.sqrt(14)))
    True
    """
    return _distance_stack(A, B)


def bures_wasserstein(A, B):
    """Bures-Wasserstein distance, the square root of
    :func:`bures_wasserstein_squared`.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import bures_wasserstein
    >>> v = np.array([1.0, 2.0, 3.0])
    >>> round(float(bures_wasserstein(np.eye(3), np.outer(v, v))), 4)
    3.0849
    """
    return _distance_stack(A, B, root=True)


def frechet_distance(m1, A, m2, B):
    """Squared 2-Wasserstein distance between N(m1, A) and N(m2, B).

    ||m1 - m2||^2 + BW^2(A, B): the quantity that FID-style metrics report.

    Parameters
    ----------
    m1, m2 : (..., n) array_like
        Means.
    A, B : (..., n, n) array_like
        Covariances (symmetric PSD).

    Returns
    -------
    d2 : float or (...) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import frechet_distance
    >>> float(frechet_distance([0.0, 0.0], np.eye(2), [3.0, 4.0], np.eye(2)))
    25.0
    """
    bw2 = _distance_stack(A, B)
    mu1 = np.asarray(m1)
    mu2 = np.asarray(m2)
    for name, m in (("m1", mu1), ("m2", mu2)):
        if m.dtype.kind not in "iuf" or m.dtype.kind == "f" and (
                m.dtype.newbyteorder("=") not in (np.float32, np.float64)):
            raise TypeError(
                f"`{name}` must hold float32, float64 or integer values; "
                f"got dtype {m.dtype}"
            )
        if m.ndim < 1 or m.shape[-1] != np.shape(A)[-1]:
            raise ValueError(
                f"`{name}` must have shape (..., n) with n = {np.shape(A)[-1]}; "
                f"got shape {m.shape}"
            )
        check_finite(m, name)
    try:
        lead = np.broadcast_shapes(mu1.shape[:-1], mu2.shape[:-1], np.shape(bw2))
    except ValueError:
        raise ValueError(
            f"the stack shapes of `m1` {mu1.shape[:-1]}, `m2` {mu2.shape[:-1]} "
            f"and the covariances {np.shape(bw2)} do not broadcast"
        ) from None
    del lead
    diff = mu1.astype(np.float64) - mu2.astype(np.float64)
    d2 = np.sum(diff * diff, axis=-1) + bw2
    d2 = np.asarray(d2, dtype=np.asarray(bw2).dtype)
    return d2[()] if d2.ndim == 0 else d2


def ot_map(A, B):
    """Linear optimal transport map from N(0, A) to N(0, B).

    T = A^{-1/2} (A^{1/2} B A^{1/2})^{1/2} A^{-1/2}, symmetric PSD, with
    T A T = B when A is positive definite. For singular A the inverse root
    acts on the range of A (the support of N(0, A)), and T is zero on the
    null space of A.

    Parameters
    ----------
    A, B : (..., n, n) array_like
        Symmetric PSD matrices; leading axes broadcast.

    Returns
    -------
    T : (..., n, n) ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import ot_map
    >>> A = np.array([[2.0, 0.5], [0.5, 1.0]])
    >>> B = np.array([[1.0, -0.3], [-0.3, 3.0]])
    >>> T = ot_map(A, B)
    >>> bool(np.allclose(T @ A @ T, B))
    True
    """
    a, sa = _psd_stack(A, "A")
    b, sb = _psd_stack(B, "B")
    A3, B3, lead, dt = _pair(a, b, "A", "B")
    n = A3.shape[-1]
    # T(a A, b B) = sqrt(b / a) T(A, B): each scaled by its own power of two
    (A3, ea), (B3, eb) = _own_scaling((A3, _lead_scale(sa, lead)),
                                      (B3, _lead_scale(sb, lead)))
    out = np.empty_like(A3)
    wr = np.zeros((A3.shape[0], 4))
    run_batch(K.BATCH["ot_map"], A3.shape[0], n, A3, B3, out, wr)
    rtol = rtol_for(dt)
    check_psd(wr[:, 0], wr[:, 1], "A", rtol)
    check_psd(wr[:, 2], wr[:, 3], "B", rtol)
    if ea.any() or eb.any():
        with np.errstate(over="ignore", under="ignore"):
            out = np.ldexp(out, ((eb - ea) // 2)[:, None, None]).astype(out.dtype)
    return out.reshape(lead + (n, n))
