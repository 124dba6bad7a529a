"""Reading training targets from .npy, .npz and .csv files, and the shipped one."""

import csv
import os
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from ._validate import rtol_for

__all__ = ["KINDS", "default_target", "load_target", "read_target_array"]

#: Accepted values of ``kind``: how the array in a file is interpreted.
KINDS = ("auto", "cov", "samples")

#: File name of the shipped digits covariance inside ``bwfast/data``.
DEFAULT_TARGET_FILE = "digits_cov.npy"

_EXTENSIONS = (".npy", ".npz", ".csv")

# In "auto" mode a square array is a covariance when it is symmetric up to
# the rounding of the dtype stored in the file (max |A - A^T| <= sqrt(eps) *
# max |A|, the allowance Target itself applies), and is refused otherwise: a
# square array that is not symmetric is either a broken covariance or
# samples that happen to be square, and guessing between them hides the
# mistake. Non-square arrays are samples.

# What a non-real dtype holds, by dtype.kind, for the error message.
_NON_REAL = {
    "b": "booleans",
    "c": "complex numbers",
    "O": "Python objects",
    "U": "text",
    "S": "bytes",
    "V": "structured records",
    "M": "dates",
    "m": "time differences",
}


def load_target(path, kind="auto"):
    """Load a training target from a file.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.npy`` file, a ``.npz`` file holding one array (or arrays named
        ``cov`` / ``samples``), or a numeric ``.csv`` file, comma separated;
        a first row with any non-numeric cell is a header and is skipped.
    kind : {"auto", "cov", "samples"}
        ``"cov"``: the array is an (n, n) covariance matrix. ``"samples"``:
        it is an (m, n) matrix of m samples of n features, and the target is
        its sample covariance (ddof=1). ``"auto"``: a key ``cov`` or
        ``samples`` in a ``.npz`` decides; otherwise a square array that is
        symmetric up to the rounding of its stored dtype is a covariance, a
        square array that is not symmetric is refused (pass
        ``kind="samples"`` if it holds samples), and a non-square array is
        samples.

    Returns
    -------
    Target
        The validated target, with its root and spectrum computed once.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ValueError
        If the file cannot be read, has an unsupported extension, holds
        non-real (bool, complex, object, text, ...), non-finite or non-2-D
        data, is square but not symmetric under ``kind="auto"``, or is not
        a valid covariance. The one-line message names the file and the
        problem.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np
    >>> from bwfast.io import load_target
    >>> X = np.random.default_rng(0).standard_normal((50, 3))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     np.save(pathlib.Path(tmp) / "x.npy", X)
    ...     t = load_target(pathlib.Path(tmp) / "x.npy")
    >>> t.n, bool(np.allclose(t.cov, np.cov(X, rowvar=False)))
    (3, True)
    """
    return _load(path, kind)[0]


def _load(path, kind, flag=None):
    # load_target, also returning the resolved kind and the stored shape
    # (the CLI reports how it read the file). `flag` names the option that
    # sets kind in messages ("--kind" for the CLI; None: "kind=").
    from bwfast import Target

    array, kind, stored = _read(path, kind, flag)
    # A covariance stored in float32 is symmetric only to float32 rounding:
    # allow sqrt(eps) of the stored dtype, not of float64.
    rtol = _rtol(stored)
    try:
        if kind == "cov":
            target = Target(array, rtol=rtol)
        else:
            target = Target.from_samples(array)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{_name(Path(path))}: {_one_line(exc)}") from exc
    return target, kind, array.shape


def read_target_array(path, kind="auto"):
    """Read the array of a target file and decide how to interpret it.

    Parameters
    ----------
    path : str or os.PathLike
        As in `load_target`.
    kind : {"auto", "cov", "samples"}
        As in `load_target`.

    Returns
    -------
    array : ndarray of float64, shape (m, n)
        The finite 2-D array stored in the file.
    kind : {"cov", "samples"}
        The interpretation: never ``"auto"``.

    Raises
    ------
    FileNotFoundError, ValueError
        As in `load_target`, except that the covariance itself is not
        validated here.
    """
    array, kind, _ = _read(path, kind)
    return array, kind


def _read(path, kind, flag=None):
    # read_target_array, also returning the float dtype whose rounding the
    # stored data carry (float64 for integers and CSV text).
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {', '.join(KINDS)}; got {kind!r}")
    path = Path(path)
    name = _name(path)
    if not path.exists():
        raise FileNotFoundError(f"{name}: no such file")
    if path.is_dir():
        raise ValueError(f"{name}: is a directory, not a target file")
    ext = path.suffix.lower()
    if ext not in _EXTENSIONS:
        raise ValueError(
            f"{name}: unsupported file type {path.suffix or '(no extension)'!r}; "
            "expected .npy, .npz or .csv"
        )

    # Read the raw array; a .npz key may already fix the kind.
    if ext == ".npy":
        array = _read_npy(path, name)
    elif ext == ".npz":
        array, kind = _read_npz(path, name, kind, flag)
    else:
        array = _read_csv(path, name)

    array, stored = _check_array(array, name)
    if kind == "auto":
        kind = _auto_kind(array, stored, name, flag)
    return array, kind, stored


def default_target():
    """The shipped target: covariance of the 8x8 handwritten digits.

    A (64, 64) float64 covariance of the 1797 images of the UCI optical
    digits test set (as bundled by scikit-learn). Three pixels never vary,
    so it is singular with rank 61; see ``bwfast/data/README.md``.

    Returns
    -------
    Target

    Examples
    --------
    >>> from bwfast.io import default_target
    >>> t = default_target()
    >>> t.n, t.rank
    (64, 61)
    """
    from bwfast import Target

    resource = resources.files("bwfast").joinpath("data", DEFAULT_TARGET_FILE)
    with resource.open("rb") as f:
        cov = np.load(f, allow_pickle=False)
    return Target(cov)


# --- readers -----------------------------------------------------------------


def _read_npy(path, name):
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise ValueError(f"{name}: cannot be opened ({_one_line(exc)})") from exc
    if magic.startswith(b"PK"):
        raise ValueError(f"{name}: is a .npz archive; rename it to .npz")
    if magic != b"\x93NUMPY":
        raise ValueError(f"{name}: not a .npy file (no NumPy header)")
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        _raise_if_objects(exc, name)
        raise ValueError(
            f"{name}: not a readable .npy file ({_one_line(exc)})"
        ) from exc
    return array


def _read_npz(path, name, kind, flag):
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(
            f"{name}: not a readable .npz file ({_one_line(exc)})"
        ) from exc
    if not hasattr(archive, "files"):  # np.load read a .npy file
        raise ValueError(f"{name}: is a .npy file, not a .npz archive")
    try:
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        _raise_if_objects(exc, name)
        raise ValueError(
            f"{name}: not a readable .npz file ({_one_line(exc)})"
        ) from exc

    if not arrays:
        raise ValueError(f"{name}: the archive holds no arrays")

    # A named array says what it is; it must agree with an explicit kind.
    named = [key for key in ("cov", "samples") if key in arrays]
    if kind != "auto" and kind in arrays:
        return arrays[kind], kind
    if len(named) == 2:
        raise ValueError(
            f"{name}: holds both 'cov' and 'samples'; choose one with "
            f"{_kind_option('cov', flag)} or {_kind_option('samples', flag)}"
        )
    if len(named) == 1:
        key = named[0]
        if kind != "auto":
            raise ValueError(
                f"{name}: holds {key!r} but {_kind_option(kind, flag)} was asked for"
            )
        return arrays[key], key
    if len(arrays) == 1:
        return next(iter(arrays.values())), kind
    keys = ", ".join(sorted(arrays))
    raise ValueError(
        f"{name}: holds several arrays ({keys}); name the target 'cov' or 'samples'"
    )


def _read_csv(path, name):
    try:
        # utf-8-sig: a byte order mark (Excel, PowerShell) is not data
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [
                (lineno, row)
                for lineno, row in enumerate(csv.reader(f), start=1)
                if any(cell.strip() for cell in row)
            ]
    except UnicodeDecodeError:
        raise ValueError(f"{name}: not a text file (expected UTF-8 CSV)") from None
    except (OSError, csv.Error) as exc:
        raise ValueError(f"{name}: not a readable CSV file ({_one_line(exc)})") from exc

    if not rows:
        raise ValueError(f"{name}: holds no data")

    # The first row is a header when any of its cells is not a number.
    if not all(_is_number(cell) for cell in rows[0][1]):
        header_columns = len(rows[0][1])
        rows = rows[1:]
        if not rows:
            raise ValueError(f"{name}: holds a header row but no data")
        if len(rows[0][1]) != header_columns:
            lineno = rows[0][0]
            raise ValueError(
                f"{name}: line {lineno} has {_values(len(rows[0][1]))} "
                f"but the header has {header_columns} columns"
            )

    ncols = len(rows[0][1])
    out = np.empty((len(rows), ncols), dtype=np.float64)
    for i, (lineno, row) in enumerate(rows):
        if len(row) != ncols:
            raise ValueError(
                f"{name}: line {lineno} has {_values(len(row))}; expected {ncols}"
            )
        for j, cell in enumerate(row):
            try:
                out[i, j] = float(cell)
            except ValueError:
                hint = ""
                if any(sep in cell for sep in ";\t "):
                    hint = " (values must be separated by commas)"
                raise ValueError(
                    f"{name}: non-numeric value {cell.strip()!r} "
                    f"at line {lineno}, column {j + 1}{hint}"
                ) from None
    return out


# --- checks ------------------------------------------------------------------


def _check_array(array, name):
    # -> (native float64 C-contiguous copy, float dtype of the stored data)
    array = np.asarray(array)
    if array.dtype.kind not in "iuf":
        raise ValueError(_non_real(name, array.dtype))
    if array.ndim != 2:
        raise ValueError(
            f"{name}: must hold a 2-D array (covariance or samples x features); "
            f"got a {array.ndim}-D array of shape {array.shape}"
        )
    if array.size == 0:
        raise ValueError(f"{name}: holds an empty array of shape {array.shape}")

    # A float array carries the rounding of its own precision; integers are
    # exact. Byte order does not matter ('>f4' rounds like float32).
    if array.dtype.kind == "f" and array.dtype.itemsize < 8:
        stored = np.dtype(array.dtype.type)
    else:
        stored = np.dtype(np.float64)

    # Integers, float16/32 and big-endian floats are read as native float64:
    # exact for all of them.
    array = np.ascontiguousarray(array, dtype=np.float64)

    bad = ~np.isfinite(array)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        what = "NaN" if np.isnan(array[i, j]) else "an infinite value"
        count = int(bad.sum())
        more = f" ({count} non-finite entries in all)" if count > 1 else ""
        raise ValueError(
            f"{name}: contains {what} at row {i + 1}, column {j + 1}{more}"
        )
    return array, stored


def _auto_kind(array, stored, name, flag):
    # kind="auto" for an array that no .npz key named (see the comment at
    # the top of the module).
    m, n = array.shape
    if m != n:
        return "samples"
    rtol = _rtol(stored)
    scale = float(np.max(np.abs(array)))
    asym = float(np.max(np.abs(array - array.T)))
    if asym <= rtol * scale:
        return "cov"
    raise ValueError(
        f"{name}: the array is square ({n} x {n}) but not symmetric "
        f"(max |A - A^T| = {asym:.3g} > {rtol:.1e} * max |A| = {rtol * scale:.3g}), "
        f"so it is not a covariance; pass {_kind_option('samples', flag)} if it "
        "holds samples x features, or fix the matrix"
    )


def _rtol(stored):
    # rounding allowance of the stored data, the one Target applies
    return rtol_for(stored)


def _non_real(name, dtype):
    what = _NON_REAL.get(dtype.kind, "non-numeric data")
    return (
        f"{name}: holds non-real data: {what} (dtype {dtype}); expected integer "
        "or floating-point numbers"
    )


def _raise_if_objects(exc, name):
    # np.load(allow_pickle=False) refuses object arrays with a ValueError
    # about pickles; say what the file holds instead.
    if isinstance(exc, ValueError) and "allow_pickle" in str(exc):
        raise ValueError(_non_real(name, np.dtype(object))) from exc


def _kind_option(value, flag):
    # kind=value as the caller spells it: the API keyword or the CLI flag
    return f"kind={value!r}" if flag is None else f"{flag} {value}"


def _is_number(cell):
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _values(count):
    return f"{count} value" if count == 1 else f"{count} values"


def _name(path):
    return f"target file '{os.fspath(path)}'"


def _one_line(exc):
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())
