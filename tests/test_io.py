"""Tests of bwfast.io: reading targets from files, and the shipped target."""

import numpy as np
import pytest

import bwfast
from bwfast.io import default_target, load_target, read_target_array

# Pixels of the 8x8 digits that are 0 in every image (row-major index).
CONSTANT_PIXELS = (0, 32, 39)


def _samples(seed, m=40, n=5):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) * np.linspace(2.0, 0.5, n)


def _cov(seed, n=5):
    return np.cov(_samples(seed, n=n), rowvar=False)


# --- the shipped target ----------------------------------------------------------


def test_default_target_is_the_digits_covariance():
    t = default_target()
    assert isinstance(t, bwfast.Target)
    assert t.n == 64
    assert t.rank == 61
    np.testing.assert_array_equal(t.cov, t.cov.T)
    for p in CONSTANT_PIXELS:
        assert not t.cov[p].any()
    # Pixel values are 0..16: no variance can exceed 8**2 = 64.
    assert 0.0 < t.cov.diagonal().max() <= 64.0


def test_default_target_optimum_is_sum_of_discarded_eigenvalues():
    t = default_target()
    expected = float(np.sort(np.linalg.eigvalsh(t.cov))[::-1][16:].clip(0).sum())
    assert bwfast.optimal_loss(t, 16) == pytest.approx(expected, rel=1e-12)


# --- reading each format ----------------------------------------------------------


def test_npy_covariance(tmp_path):
    cov = _cov(0)
    np.save(tmp_path / "c.npy", cov)
    t = load_target(tmp_path / "c.npy")
    np.testing.assert_allclose(t.cov, cov, rtol=0, atol=1e-15)


def test_npy_samples(tmp_path):
    X = _samples(1)
    np.save(tmp_path / "x.npy", X)
    t = load_target(str(tmp_path / "x.npy"))
    np.testing.assert_allclose(t.cov, np.cov(X, rowvar=False), rtol=1e-14)


def test_integer_and_float32_arrays_are_read_as_float64(tmp_path):
    X = np.random.default_rng(2).integers(0, 17, size=(30, 4))
    np.save(tmp_path / "i.npy", X)
    np.save(tmp_path / "f.npy", X.astype(np.float32))
    for name in ("i.npy", "f.npy"):
        array, kind = read_target_array(tmp_path / name)
        assert array.dtype == np.float64
        assert kind == "samples"
        np.testing.assert_array_equal(array, X)


@pytest.mark.parametrize(
    ("arrays", "kind", "expected_kind"),
    [
        ({"arr_0": "cov"}, "auto", "cov"),
        ({"arr_0": "samples"}, "auto", "samples"),
        ({"cov": "cov"}, "auto", "cov"),
        ({"samples": "samples"}, "auto", "samples"),
        ({"cov": "cov", "notes": "samples"}, "auto", "cov"),
        ({"cov": "cov", "samples": "samples"}, "cov", "cov"),
        ({"cov": "cov", "samples": "samples"}, "samples", "samples"),
    ],
)
def test_npz(tmp_path, arrays, kind, expected_kind):
    X = _samples(3)
    data = {"cov": np.cov(X, rowvar=False), "samples": X}
    np.savez(tmp_path / "t.npz", **{key: data[v] for key, v in arrays.items()})
    array, got = read_target_array(tmp_path / "t.npz", kind)
    assert got == expected_kind
    np.testing.assert_array_equal(array, data[expected_kind])


def test_csv_samples_with_header(tmp_path):
    X = _samples(4)
    path = tmp_path / "x.csv"
    np.savetxt(path, X, delimiter=",", header="a,b,c,d,e", comments="")
    array, kind = read_target_array(path)
    assert kind == "samples"
    np.testing.assert_array_equal(array, X)  # %.18e round-trips exactly


def test_csv_covariance_without_header(tmp_path):
    cov = _cov(5)
    path = tmp_path / "c.csv"
    np.savetxt(path, cov, delimiter=",")
    t = load_target(path)
    np.testing.assert_allclose(t.cov, cov, rtol=1e-15)


def test_csv_tolerates_spaces_and_blank_lines(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("x, y\n1, 2\n\n3 ,4\n5,7\n")
    array, kind = read_target_array(path)
    np.testing.assert_array_equal(array, [[1, 2], [3, 4], [5, 7]])
    assert kind == "samples"


@pytest.mark.parametrize("header", [False, True])
def test_csv_with_byte_order_mark(tmp_path, header):
    # Regression: a BOM (encoding="utf-8-sig", as Excel saves) made the
    # first data row look like a header, and it was silently dropped.
    X = _samples(15, m=5, n=4)
    path = tmp_path / "bom.csv"
    np.savetxt(
        path,
        X,
        delimiter=",",
        header="a,b,c,d" if header else "",
        comments="",
        encoding="utf-8-sig",
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    array, kind = read_target_array(path)
    assert array.shape == (5, 4) and kind == "samples"
    np.testing.assert_array_equal(array, X)


def test_extension_is_case_insensitive(tmp_path):
    np.save(tmp_path / "c.npy", _cov(6))
    (tmp_path / "c.npy").rename(tmp_path / "C.NPY")
    assert load_target(tmp_path / "C.NPY").n == 5


# --- kind --------------------------------------------------------------------------


def test_auto_refuses_square_nonsymmetric(tmp_path):
    # Square samples cannot be told from a broken covariance: refused, with
    # the way out, rather than silently read as samples.
    X = _samples(7, m=5, n=5)
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ValueError) as info:
        read_target_array(tmp_path / "x.npy")
    message = str(info.value)
    assert "square (5 x 5) but not symmetric" in message
    assert "kind='samples'" in message and "fix the matrix" in message
    assert read_target_array(tmp_path / "x.npy", "samples")[1] == "samples"
    t = load_target(tmp_path / "x.npy", kind="samples")
    np.testing.assert_allclose(t.cov, np.cov(X, rowvar=False), rtol=1e-14)


@pytest.mark.parametrize("asymmetry", [2e-6, 0.1])
def test_auto_refuses_a_perturbed_covariance(tmp_path, asymmetry):
    # Regression: a covariance with one entry off by 2e-6 * max (or 0.1)
    # was read as 5 samples x 5 features without a word.
    cov = _cov(11)
    cov[0, 1] += asymmetry * np.abs(cov).max()
    np.save(tmp_path / "c.npy", cov)
    for call in (read_target_array, load_target):
        with pytest.raises(ValueError, match="square .* but not symmetric"):
            call(tmp_path / "c.npy")
    with pytest.raises(ValueError, match="must be symmetric"):
        load_target(tmp_path / "c.npy", kind="cov")


def test_auto_reads_nonsquare_as_samples_and_symmetric_square_as_cov(tmp_path):
    np.save(tmp_path / "x.npy", _samples(12, m=6, n=5))
    np.save(tmp_path / "c.npy", _cov(12))
    assert read_target_array(tmp_path / "x.npy")[1] == "samples"
    assert read_target_array(tmp_path / "c.npy")[1] == "cov"


def test_auto_accepts_float32_rounded_covariance(tmp_path):
    cov = _cov(8).astype(np.float32)
    cov[0, 1] = np.nextafter(cov[0, 1], np.float32(np.inf))  # one ulp asymmetry
    np.save(tmp_path / "c.npy", cov)
    assert read_target_array(tmp_path / "c.npy")[1] == "cov"
    # Target allows float32 rounding for a float32 file, not float64's.
    t = load_target(tmp_path / "c.npy")
    np.testing.assert_allclose(t.cov, cov, rtol=1e-6)
    # The same numbers stored in float64 are not symmetric to float64
    # rounding: auto refuses them, kind="cov" gets Target's message.
    np.save(tmp_path / "c64.npy", cov.astype(np.float64))
    with pytest.raises(ValueError, match="square .* but not symmetric"):
        load_target(tmp_path / "c64.npy")
    with pytest.raises(ValueError, match="must be symmetric"):
        load_target(tmp_path / "c64.npy", kind="cov")


@pytest.mark.parametrize("dtype", [">f8", ">f4", "<f4", ">i4", "<f2"])
def test_other_byte_orders_and_precisions_are_read(tmp_path, dtype):
    # Regression: big-endian arrays must be read (as native float64).
    X = np.random.default_rng(13).integers(-8, 9, size=(30, 4)).astype(dtype)
    cov = np.cov(X.astype(np.float64), rowvar=False).astype(dtype)
    np.save(tmp_path / "x.npy", X)
    np.save(tmp_path / "c.npy", cov)
    array, kind = read_target_array(tmp_path / "x.npy")
    assert kind == "samples" and array.dtype == np.float64
    assert array.dtype.isnative and array.flags.c_contiguous
    np.testing.assert_array_equal(array, X.astype(np.float64))
    t = load_target(tmp_path / "c.npy")
    np.testing.assert_allclose(t.cov, cov.astype(np.float64), rtol=1e-6)


def test_big_endian_float32_keeps_float32_rounding_allowance(tmp_path):
    # '>f4' rounds like float32: one-ulp asymmetry is rounding, not an error.
    cov = _cov(14).astype(np.float32)
    cov[0, 1] = np.nextafter(cov[0, 1], np.float32(np.inf))
    np.save(tmp_path / "c.npy", cov.astype(">f4"))
    assert read_target_array(tmp_path / "c.npy")[1] == "cov"
    assert load_target(tmp_path / "c.npy").n == 5


def test_kind_samples_overrides_auto(tmp_path):
    cov = _cov(9)
    np.save(tmp_path / "c.npy", cov)
    t = load_target(tmp_path / "c.npy", kind="samples")
    np.testing.assert_allclose(t.cov, np.cov(cov, rowvar=False), rtol=1e-14)


def test_bad_kind():
    with pytest.raises(ValueError, match="`kind` must be one of"):
        read_target_array("x.npy", kind="covariance")


# --- errors: one line naming the file and the problem ----------------------------


def _write_text(text):
    return lambda p: p.write_text(text)


def _save(array):
    return lambda p: np.save(p, array)


def _to_file(save, *args, **kwargs):
    # Through a file object: np.save and np.savez would fix the extension.
    def make(path):
        with open(path, "wb") as f:
            save(f, *args, **kwargs)

    return make


def _nonsymmetric():
    a = _cov(10)
    a[0, 1] += 0.1
    return a


ERROR_CASES = {
    "missing.npy": (None, "auto", FileNotFoundError, "no such file"),
    "t.txt": (_write_text("1,2\n"), "auto", ValueError, "unsupported file type"),
    "noext": (_write_text("1,2\n"), "auto", ValueError, "unsupported file type"),
    "junk.npy": (_write_text("hello"), "auto", ValueError, "not a .npy file"),
    "zip.npy": (_to_file(np.savez, a=np.eye(2)), "auto", ValueError, "is a .npz"),
    "npy.npz": (_to_file(np.save, np.eye(2)), "auto", ValueError, "is a .npy file"),
    "junk.npz": (_write_text("hello"), "auto", ValueError, "not a readable .npz"),
    "empty.npz": (lambda p: np.savez(p), "auto", ValueError, "no arrays"),
    "multi.npz": (
        lambda p: np.savez(p, a=np.eye(2), b=np.eye(2)),
        "auto",
        ValueError,
        "several arrays",
    ),
    "both.npz": (
        lambda p: np.savez(p, cov=np.eye(2), samples=np.ones((3, 2))),
        "auto",
        ValueError,
        "both 'cov' and 'samples'",
    ),
    "mismatch.npz": (
        lambda p: np.savez(p, cov=np.eye(2)),
        "samples",
        ValueError,
        "holds 'cov' but kind='samples'",
    ),
    "text.csv": (_write_text("1,2\n3,x\n"), "auto", ValueError, "non-numeric"),
    "semicolon.csv": (
        _write_text("1;2\n3;4\n"),
        "auto",
        ValueError,
        "separated by commas",
    ),
    "ragged.csv": (_write_text("1,2\n3\n"), "auto", ValueError, "line 2 has 1 value"),
    "header_only.csv": (_write_text("a,b\n"), "auto", ValueError, "no data"),
    "empty.csv": (_write_text(""), "auto", ValueError, "no data"),
    "nan.csv": (_write_text("1,2\nnan,4\n"), "auto", ValueError, "NaN at row 2"),
    "inf.npy": (
        _save(np.array([[1.0, np.inf], [np.inf, 1.0]])),
        "auto",
        ValueError,
        "infinite value",
    ),
    "vector.npy": (_save(np.ones(3)), "auto", ValueError, "2-D array"),
    "cube.npy": (_save(np.ones((2, 2, 2))), "auto", ValueError, "3-D array"),
    "size0.npy": (_save(np.ones((0, 3))), "auto", ValueError, "empty array"),
    "strings.npy": (
        _save(np.array([["a", "b"]])),
        "auto",
        ValueError,
        "non-real data: text (dtype <U1)",
    ),
    "bytes.npy": (_save(np.array([[b"a"]])), "auto", ValueError, "dtype |S1"),
    "complex.npy": (
        _save(np.eye(2) * 1j),
        "auto",
        ValueError,
        "non-real data: complex numbers (dtype complex128)",
    ),
    "bool.npy": (
        _save(np.eye(3, dtype=bool)),
        "auto",
        ValueError,
        "non-real data: booleans (dtype bool)",
    ),
    "object.npy": (
        lambda p: np.save(p, np.eye(2).astype(object), allow_pickle=True),
        "auto",
        ValueError,
        "non-real data: Python objects (dtype object)",
    ),
    "object.npz": (
        lambda p: np.savez(p, cov=np.eye(2).astype(object)),
        "auto",
        ValueError,
        "dtype object",
    ),
    "bool.npz": (
        lambda p: np.savez(p, samples=np.ones((3, 2), dtype=bool)),
        "auto",
        ValueError,
        "dtype bool",
    ),
    "dates.npy": (
        _save(np.zeros((2, 2), dtype="M8[s]")),
        "auto",
        ValueError,
        "non-real data: dates",
    ),
    "square_samples.npy": (
        _save(_samples(16, m=4, n=4)),
        "auto",
        ValueError,
        "square (4 x 4) but not symmetric",
    ),
    "nonsquare.npy": (
        _save(np.ones((3, 4))),
        "cov",
        ValueError,
        "square",
    ),
    "nonsymmetric.npy": (_save(_nonsymmetric()), "cov", ValueError, "symmetric"),
    "negative.npy": (
        _save(np.diag([3.0, 2.0, -1.0])),
        "auto",
        ValueError,
        "positive semidefinite",
    ),
    "onesample.npy": (_save(np.ones((1, 3))), "samples", ValueError, "2 rows"),
}


@pytest.mark.parametrize("name", sorted(ERROR_CASES))
def test_errors_are_one_line_and_name_the_file(tmp_path, name):
    make, kind, error, fragment = ERROR_CASES[name]
    path = tmp_path / name
    if make is not None:
        make(path)
    with pytest.raises(error) as info:
        load_target(path, kind)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"target file '{path}': ")
    assert fragment in message


def test_directory_is_not_a_target(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        load_target(tmp_path)


def test_npz_kind_messages_name_the_keyword(tmp_path):
    # The API says kind=...; the CLI passes its flag and says --kind ...
    from bwfast.io import _load

    path = tmp_path / "both.npz"
    np.savez(path, cov=np.eye(2), samples=np.ones((3, 2)))
    with pytest.raises(ValueError, match="with kind='cov' or kind='samples'$"):
        load_target(path)
    with pytest.raises(ValueError, match="with --kind cov or --kind samples$"):
        _load(path, "auto", flag="--kind")
    np.savez(path, cov=np.eye(2))
    with pytest.raises(ValueError, match="holds 'cov' but --kind samples was"):
        _load(path, "samples", flag="--kind")
