"""Argument checks and dtype policy shared by the public wrappers."""

import numbers

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def rtol_for(dtype):
    """Relative tolerance for symmetry and PSD checks: sqrt(eps) of dtype."""
    return float(np.sqrt(np.finfo(dtype).eps))


def as_float_array(x, name):
    """Apply the dtype policy: integers -> float64, float32/float64 kept.

    Anything else (bool, complex, float16, longdouble, object) is a
    TypeError naming the dtype.
    """
    try:
        a = np.asarray(x)
    except ValueError as exc:  # ragged nested lists
        raise ValueError(f"`{name}` must be a rectangular array: {exc}") from None
    if isinstance(x, np.ma.MaskedArray) and np.ma.is_masked(x):
        raise ValueError(f"`{name}` has masked entries; fill or drop them first")
    kind = a.dtype.kind
    if kind in "iu":
        return a.astype(np.float64)
    if kind == "f" and a.dtype.newbyteorder("=") in FLOAT_DTYPES:
        return a.astype(a.dtype.newbyteorder("="), copy=False)
    raise TypeError(
        f"`{name}` must hold float32, float64 or integer values; "
        f"got dtype {a.dtype}"
    )


def common_dtype(*arrays):
    """float32 only if every array is float32, else float64."""
    if all(a.dtype == np.float32 for a in arrays):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def check_finite(a, name):
    if not np.isfinite(a).all():
        bad = "NaN" if np.isnan(a).any() else "inf"
        idx = tuple(int(i) for i in np.argwhere(~np.isfinite(a))[0])
        raise ValueError(f"`{name}` must be finite; found {bad} at index {idx}")


def square_stack(x, name):
    """Validate a (..., n, n) stack of finite float matrices."""
    a = as_float_array(x, name)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"`{name}` must be a square matrix or a stack of them with shape "
            f"(..., n, n); got shape {a.shape}"
        )
    check_finite(a, name)
    return a


def check_symmetric(a, name, rtol=None):
    """Reject matrices whose asymmetry exceeds rounding (rtol * max |a|).

    Returns max |a_ij| of each matrix, shape a.shape[:-2], which the
    wrappers reuse for their overflow scaling.
    """
    if a.size == 0:
        return np.zeros(a.shape[:-2])
    from ._kernels import asymmetry_batch

    rtol = rtol_for(a.dtype) if rtol is None else rtol
    n = a.shape[-1]
    a3 = np.ascontiguousarray(a.reshape((-1, n, n)))
    scale = np.empty(a3.shape[0])
    asym = np.empty(a3.shape[0])
    asymmetry_batch(a3, asym, scale)
    bad = asym > rtol * scale
    if np.any(bad):
        i = int(np.argmax(asym - rtol * scale))
        raise ValueError(
            f"`{name}` must be symmetric: max |{name} - {name}^T| = "
            f"{float(asym.flat[i]):.3g} exceeds {rtol:.1e} * max |{name}| = "
            f"{float(rtol * scale.flat[i]):.3g}"
        )
    return scale.reshape(a.shape[:-2])


def check_psd(wmin, wmax, name, rtol):
    """Reject eigenvalues clearly below zero: wmin < -rtol * max(|wmax|)."""
    if np.size(wmin) == 1:  # single matrix: plain floats are much cheaper
        lo = float(np.ravel(wmin)[0])
        hi = float(np.ravel(wmax)[0])
        if lo >= -rtol * max(abs(hi), abs(lo)):
            return
    wmin = np.asarray(wmin, dtype=np.float64)
    wmax = np.asarray(wmax, dtype=np.float64)
    limit = -rtol * np.maximum(np.abs(wmax), np.abs(wmin))
    bad = wmin < limit
    if np.any(bad):
        i = int(np.argmax(bad.ravel()))
        raise ValueError(
            f"`{name}` must be positive semidefinite: smallest eigenvalue "
            f"{float(wmin.flat[i]):.6g} is below the rounding allowance "
            f"{float(limit.flat[i]):.3g}"
        )


def scalar(x, name, *, low=None, strict=False, integer=False):
    """A finite real (or integer) scalar with an optional lower bound."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        kind = "an integer" if integer else "a real number"
        raise TypeError(f"`{name}` must be {kind}; got {x!r}")
    if integer:
        if not isinstance(x, numbers.Integral):
            raise TypeError(f"`{name}` must be an integer; got {x!r}")
        x = int(x)
    else:
        x = float(x)
        if not np.isfinite(x):
            raise ValueError(f"`{name}` must be finite; got {x}")
    if not integer and not np.isfinite(x):
        raise ValueError(f"`{name}` must be finite; got {x}")
    if low is not None and (x <= low if strict else x < low):
        rel = ">" if strict else ">="
        raise ValueError(f"`{name}` must be {rel} {low}; got {x}")
    return x
