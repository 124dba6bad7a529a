"""Tests of the bwfast command line (in-process through main, and a few
subprocess runs for the no-traceback guarantee)."""

import ast
import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import bwfast
from bwfast.cli import EXIT_CODES, main

ROOT = Path(__file__).resolve().parents[1]

# The default job must reach the optimum of the rank-16 model this closely.
DEFAULT_JOB_RTOL = 1e-6


def run(capsys, *argv):
    """main(argv) -> (exit code, stdout, stderr)."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv):
    code, out, err = run(capsys, *argv, "--json", "--quiet")
    return code, json.loads(out), err


def assert_one_error_line(err):
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bwfast: error: ")
    return lines[0]


def _samples(seed, m=200, n=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, n)) * np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.2])


@pytest.fixture
def samples_csv(tmp_path):
    path = tmp_path / "samples.csv"
    np.savetxt(path, _samples(0), delimiter=",", header="a,b,c,d,e,f", comments="")
    return path


@pytest.fixture
def cov_npy(tmp_path):
    path = tmp_path / "cov.npy"
    np.save(path, np.cov(_samples(1), rowvar=False))
    return path


# --- the default job -------------------------------------------------------------


def test_default_job_short(capsys):
    code, out, err = run(capsys, "fit", "--steps", "20", "--quiet")
    assert code == EXIT_CODES["step_limit"]
    assert "step_limit" in out
    for field in ("final loss", "optimum", "relative gap", "steps"):
        assert field in out
    # the two times on two labelled lines
    lines = out.splitlines()
    assert any(
        line.startswith("wall time") and line.endswith("s in the descent loop")
        for line in lines
    )
    assert any(
        line.startswith("total time") and line.endswith("s for the whole command")
        for line in lines
    )
    assert "balancedness" in out
    assert err == ""


def test_default_job_converges_to_the_rank_16_optimum(capsys):
    code, s, err = run_json(capsys, "fit")
    assert code == 0
    assert s["status"] == "converged"
    assert s["target"] == "digits (shipped)"
    assert s["widths"] == [64, 16, 16, 64]
    assert s["n"] == 64 and s["target_rank"] == 61 and s["k"] == 16
    assert abs(s["relative_gap"]) < DEFAULT_JOB_RTOL
    assert s["optimum"] == pytest.approx(
        bwfast.optimal_loss(bwfast.io.default_target(), 16)
    )
    assert err == ""


def test_notes_go_to_stderr_without_warnings(capsys):
    code, out, err = run(capsys, "fit", "--steps", "20")
    assert code == EXIT_CODES["step_limit"]
    assert "bwfast fit: target digits (shipped)" in err
    assert "widths 64,16,16,64" in err
    assert "warning" not in err.lower()
    assert "bwfast fit:" not in out


# --- other targets -----------------------------------------------------------------


def test_csv_samples(capsys, samples_csv):
    code, s, _ = run_json(
        capsys, "fit", "--target", str(samples_csv), "--widths", "6,3,6"
    )
    assert code == 0
    assert s["kind"] == "samples" and s["n"] == 6
    cov = np.cov(_samples(0), rowvar=False)
    expected = np.sort(np.linalg.eigvalsh(cov))[:3].sum()
    assert s["optimum"] == pytest.approx(expected, rel=1e-10)
    assert abs(s["relative_gap"]) < DEFAULT_JOB_RTOL


def test_npy_covariance_default_widths(capsys, cov_npy):
    code, s, _ = run_json(capsys, "fit", "--target", str(cov_npy))
    assert code == 0
    assert s["kind"] == "cov"
    assert s["widths"] == [6, 6, 6, 6]  # n,h,h,n with h = min(16, n)


def test_npz_named_samples(capsys, tmp_path):
    path = tmp_path / "t.npz"
    np.savez(path, samples=_samples(2))
    code, s, _ = run_json(capsys, "fit", "--target", str(path), "--widths", "4,2,6")
    assert code == 0
    assert s["kind"] == "samples"
    assert s["widths"] == [4, 2, 6]


def test_kind_samples_on_a_square_file(capsys, cov_npy):
    code, s, _ = run_json(
        capsys, "fit", "--target", str(cov_npy), "--kind", "samples", "--steps", "5"
    )
    assert s["kind"] == "samples"
    assert code == EXIT_CODES["step_limit"]


def test_auto_notes_a_file_read_as_samples(capsys, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, _samples(3, m=8))
    code, _, err = run(capsys, "fit", "--target", str(path), "--steps", "5")
    assert code == EXIT_CODES["step_limit"]
    assert "as 8 samples x 6 features" in err


@pytest.mark.parametrize("quiet", [[], ["--quiet"]])
def test_auto_refuses_a_square_nonsymmetric_file(capsys, tmp_path, quiet):
    # Regression: a square array that is not symmetric was silently
    # trained on as samples, even under --quiet.
    path = tmp_path / "square.npy"
    np.save(path, _samples(3, m=6))
    code, out, err = run(capsys, "fit", "--target", str(path), *quiet)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert "square (6 x 6) but not symmetric" in line
    assert "pass --kind samples" in line and "fix the matrix" in line
    assert "kind=" not in line
    code, s, _ = run_json(
        capsys, "fit", "--target", str(path), "--kind", "samples", "--steps", "5"
    )
    assert code == EXIT_CODES["step_limit"] and s["kind"] == "samples"


@pytest.mark.parametrize("asymmetry", [2e-6, 0.1])
def test_auto_refuses_a_perturbed_covariance(capsys, tmp_path, asymmetry):
    cov = np.cov(_samples(1), rowvar=False)
    cov[0, 1] += asymmetry * np.abs(cov).max()
    np.save(tmp_path / "cov.npy", cov)
    code, out, err = run(
        capsys, "fit", "--target", str(tmp_path / "cov.npy"), "--quiet"
    )
    assert code == 2 and out == ""
    assert "not symmetric" in assert_one_error_line(err)


def test_npz_with_both_arrays_names_the_flag(capsys, tmp_path):
    path = tmp_path / "both.npz"
    np.savez(path, cov=np.cov(_samples(2), rowvar=False), samples=_samples(2))
    code, _, err = run(capsys, "fit", "--target", str(path))
    assert code == 2
    line = assert_one_error_line(err)
    assert "choose one with --kind cov or --kind samples" in line
    assert "kind=" not in line
    code, s, _ = run_json(
        capsys, "fit", "--target", str(path), "--kind", "cov", "--steps", "3"
    )
    assert s["kind"] == "cov" and code == EXIT_CODES["step_limit"]


def test_csv_with_byte_order_mark(capsys, tmp_path):
    # Regression: the BOM made row 1 a "header": 3 samples instead of 4.
    X = _samples(5, m=4)[:, :3]
    path = tmp_path / "bom.csv"
    np.savetxt(path, X, delimiter=",", encoding="utf-8-sig")
    code, _, err = run(
        capsys, "fit", "--target", str(path), "--widths", "3,2,3", "--steps", "1"
    )
    assert code == EXIT_CODES["step_limit"]
    assert "as 4 samples x 3 features" in err


@pytest.mark.parametrize("dtype", [">f8", ">f4"])
def test_big_endian_target(capsys, tmp_path, dtype):
    cov = np.cov(_samples(1), rowvar=False)
    np.save(tmp_path / "cov.npy", cov.astype(dtype))
    code, s, _ = run_json(
        capsys, "fit", "--target", str(tmp_path / "cov.npy"), "--steps", "3"
    )
    assert code == EXIT_CODES["step_limit"]
    assert s["kind"] == "cov" and s["n"] == 6


def test_options_reach_fit(capsys):
    code, s, _ = run_json(
        capsys,
        "fit",
        "--tau", "0.5",
        "--lr", "1e-3",
        "--steps", "1e2",
        "--tol", "1e-3",
        "--seed", "7",
        "--record-every", "25",
    )  # fmt: skip
    assert s["tau"] == 0.5 and s["lr"] == 1e-3 and s["tol"] == 1e-3
    assert s["seed"] == 7 and s["max_steps"] == 100
    assert s["record_every"] == 25
    assert s["steps"] <= 100
    assert code == EXIT_CODES[s["status"]]


def test_json_reports_the_default_record_every(capsys):
    code, s, _ = run_json(capsys, "fit", "--steps", "5")
    assert code == EXIT_CODES["step_limit"]
    assert s["record_every"] == bwfast.fit.__kwdefaults__["record_every"] == 10
    assert s["total_time"] >= s["wall_time"] >= 0


def test_steps_zero_evaluates_the_initial_loss(capsys, tmp_path):
    code, s, _ = run_json(capsys, "fit", "--steps", "0", "--out", str(tmp_path))
    assert s["steps"] == 0 and s["max_steps"] == 0
    assert code == EXIT_CODES[s["status"]]
    history = (tmp_path / "history.csv").read_text().splitlines()
    assert history == ["step,loss", f"0,{s['loss']!r}"]


@pytest.mark.parametrize(
    ("option", "value"),
    [("--steps", "1000000000000"), ("--steps", "1e12"), ("--record-every", "1e12")],
)
def test_large_counts_at_the_bound_parse(option, value):
    # 1e12 itself is allowed (the history bound is checked separately).
    from bwfast.cli import _build_parser

    args = _build_parser().parse_args(["fit", option, value])
    assert getattr(args, option[2:].replace("-", "_")) == 10**12


def test_float32(capsys):
    code, s, _ = run_json(capsys, "fit", "--float32", "--steps", "50")
    assert s["dtype"] == "float32"
    assert code == EXIT_CODES["step_limit"]


# --- exit codes ---------------------------------------------------------------------


def test_exit_codes_cover_every_status():
    assert set(EXIT_CODES) == {s.value for s in bwfast.Status}
    assert EXIT_CODES["converged"] == 0
    failures = [code for status, code in EXIT_CODES.items() if status != "converged"]
    assert len(set(failures)) == len(failures)
    assert 0 not in failures and 1 not in failures and 2 not in failures


def test_diverged_exit_code(capsys):
    code, s, _ = run_json(capsys, "fit", "--lr", "1", "--steps", "100")
    assert s["status"] == "diverged"
    assert code == EXIT_CODES["diverged"]


def _patch_fit(monkeypatch, body):
    # Replace bwfast.fit, keeping its signature (the CLI reads its defaults).
    real = bwfast.fit

    @functools.wraps(real)
    def fake(*args, **kwargs):
        return body(real, *args, **kwargs)

    monkeypatch.setattr(bwfast, "fit", fake)


def test_rank_dropped_exit_code(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        result = real(*args, **dict(kwargs, steps=3))
        return dataclasses.replace(result, status=bwfast.Status.RANK_DROPPED)

    _patch_fit(monkeypatch, body)
    code, s, _ = run_json(capsys, "fit")
    assert s["status"] == "rank_dropped"
    assert code == s["exit_code"] == EXIT_CODES["rank_dropped"] == 5


def test_warnings_become_one_line_each(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        for _ in range(3):
            warnings.warn(
                "rank dropped at step 7", bwfast.RankDropWarning, stacklevel=2
            )
        return real(*args, **dict(kwargs, steps=3))

    _patch_fit(monkeypatch, body)
    code, _, err = run(capsys, "fit", "--quiet")
    assert code == EXIT_CODES["step_limit"]
    assert err == "bwfast: warning: rank dropped at step 7\n"


def test_numerical_failure_exit_code(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        raise bwfast.BWLinAlgError("SVD did not converge")

    _patch_fit(monkeypatch, body)
    code, out, err = run(capsys, "fit", "--quiet")
    assert code == 1
    assert out == ""
    assert "numerical failure: SVD did not converge" in assert_one_error_line(err)


def test_interrupt_exit_code(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        raise KeyboardInterrupt

    _patch_fit(monkeypatch, body)
    code, out, err = run(capsys, "fit", "--quiet")
    assert code == 130
    assert out == ""
    assert err.strip() == "bwfast: interrupted"


def test_interrupt_during_the_imports_of_main(capsys, monkeypatch):
    # Ctrl-C while main() imports NumPy and bwfast (inside the parser's
    # construction) is handled like any other.
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr("bwfast.cli._build_parser", interrupted)
    code, out, err = run(capsys, "fit")
    assert code == 130 and out == ""
    assert err == "bwfast: interrupted\n"


def test_interrupt_while_python_m_imports_the_cli(capsys, monkeypatch):
    # python -m bwfast: Ctrl-C during `from bwfast.cli import main`.
    import bwfast.__main__ as entry

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "bwfast.cli":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "bwfast.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    assert entry._run() == 130
    out, err = capsys.readouterr()
    assert out == "" and err == "bwfast: interrupted\n"


def test_cli_module_imports_only_the_standard_library():
    # NumPy and bwfast load inside main(), under its KeyboardInterrupt
    # handler; module level stays standard library only.
    for name in ("cli.py", "__main__.py"):
        tree = ast.parse((ROOT / "bwfast" / name).read_text())
        for node in tree.body:
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                modules = [node.module or ""]
            else:
                continue
            for module in modules:
                assert module.split(".")[0] in sys.stdlib_module_names, (name, module)


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "fit" in out and "exit codes" in out
    code, out, _ = run(capsys, "fit", "--help")
    assert code == 0 and "--target" in out and "--widths" in out
    # what the two times of the summary mean
    assert "'wall time' is the gradient-descent loop" in out
    assert "'total time' is the whole" in " ".join(out.split())
    code, out, _ = run(capsys, "--version")
    assert code == 0 and out.startswith("bwfast")


# --- output files --------------------------------------------------------------------


def test_out_writes_history_weights_summary(capsys, tmp_path):
    out_dir = tmp_path / "run"
    code, s, _ = run_json(capsys, "fit", "--steps", "95", "--out", str(out_dir))
    assert code == EXIT_CODES["step_limit"]

    history = np.loadtxt(out_dir / "history.csv", delimiter=",", skiprows=1)
    assert (out_dir / "history.csv").read_text().startswith("step,loss\n")
    np.testing.assert_array_equal(history[:, 0], [*range(0, 95, 10), 95])
    assert history[-1, 1] == s["loss"]
    assert np.all(np.diff(history[:, 1]) <= 0)  # descent from a balanced start

    with np.load(out_dir / "weights.npz") as z:
        shapes = [z[f"W{j}"].shape for j in (1, 2, 3)]
    assert shapes == [(16, 64), (16, 16), (64, 16)]

    assert json.loads((out_dir / "summary.json").read_text()) == s
    assert s["files"] == [
        str(out_dir / f) for f in ("history.csv", "weights.npz", "summary.json")
    ]


def test_out_refuses_to_overwrite_without_force(capsys, tmp_path):
    out_dir = tmp_path / "run"
    assert main(["fit", "--steps", "10", "--quiet", "--out", str(out_dir)]) == 3
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out_dir.iterdir()}

    code, out, err = run(
        capsys, "fit", "--steps", "20", "--quiet", "--out", str(out_dir)
    )
    assert code == 2
    assert out == ""
    line = assert_one_error_line(err)
    assert "already exists" in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out_dir.iterdir()} == before

    code, s, _ = run_json(
        capsys, "fit", "--steps", "20", "--out", str(out_dir), "--force"
    )
    assert code == 3 and s["steps"] == 20
    assert json.loads((out_dir / "summary.json").read_text())["steps"] == 20


def test_out_write_failure_still_prints_the_summary(capsys, tmp_path, monkeypatch):
    def fail(path, arrays):
        path.write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr("bwfast.cli._save_npz", fail)
    code, s, err = run_json(capsys, "fit", "--steps", "5", "--out", str(tmp_path))
    assert code == s["exit_code"] == 1
    assert "cannot write results: disk full" in assert_one_error_line(err)
    assert s["steps"] == 5
    assert not (tmp_path / "weights.npz").exists()
    assert not list(tmp_path.glob(".*.tmp"))
    assert not list(tmp_path.glob(".bwfast-*"))


def test_out_refuses_a_single_existing_file(capsys, tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"keep me")
    code, _, err = run(capsys, "fit", "--steps", "5", "--out", str(tmp_path))
    assert code == 2
    assert "weights.npz" in assert_one_error_line(err)
    assert (tmp_path / "weights.npz").read_bytes() == b"keep me"
    assert not (tmp_path / "history.csv").exists()


def test_out_leaves_user_files_with_tmp_names_alone(capsys, tmp_path):
    # Regression: DIR/.history.csv.tmp was the fixed temporary name, so a
    # user file of that name was deleted, even without --force.
    for name in (".history.csv.tmp", ".weights.npz.tmp", ".summary.json.tmp"):
        (tmp_path / name).write_text("keep me")
    for extra in ([], ["--force"]):
        code, _, _ = run(
            capsys, "fit", "--steps", "3", "--quiet", "--out", str(tmp_path), *extra
        )
        assert code == EXIT_CODES["step_limit"]
        for name in (".history.csv.tmp", ".weights.npz.tmp", ".summary.json.tmp"):
            assert (tmp_path / name).read_text() == "keep me"
    assert not list(tmp_path.glob(".bwfast-*"))


def test_out_files_get_the_usual_mode(capsys, tmp_path):
    # mkstemp creates 0600 files; results get 0666 minus the umask.
    mask = os.umask(0o022)
    os.umask(mask)
    assert main(["fit", "--steps", "2", "--quiet", "--out", str(tmp_path)]) == 3
    for name in ("history.csv", "weights.npz", "summary.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_out_never_replaces_a_dangling_symlink(capsys, tmp_path, force):
    # Regression: exists() is False for a dangling link, which was replaced.
    link = tmp_path / "history.csv"
    link.symlink_to(tmp_path / "nowhere")
    code, out, err = run(capsys, "fit", "--steps", "3", "--out", str(tmp_path), *force)
    assert code == 2 and out == ""
    line = assert_one_error_line(err)
    assert f"'{link}' is a symbolic link" in line and "even with --force" in line
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
    assert not (tmp_path / "weights.npz").exists()


def test_out_force_never_writes_through_a_symlink(capsys, tmp_path):
    outside = tmp_path / "outside.json"
    outside.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "summary.json").symlink_to(outside)
    code, _, err = run(capsys, "fit", "--steps", "3", "--out", str(run_dir), "--force")
    assert code == 2
    assert "symbolic link" in assert_one_error_line(err)
    assert outside.read_text() == "precious"
    assert (run_dir / "summary.json").is_symlink()


def test_out_force_refuses_a_directory_in_the_way(capsys, tmp_path):
    (tmp_path / "weights.npz").mkdir()
    code, _, err = run(capsys, "fit", "--steps", "3", "--out", str(tmp_path), "--force")
    assert code == 2
    assert "is not a regular file" in assert_one_error_line(err)


def _fit_must_not_run(monkeypatch):
    calls = []
    _patch_fit(monkeypatch, lambda real, *a, **k: calls.append(1) or real(*a, **k))
    return calls


def test_out_unwritable_dir_fails_before_training(capsys, tmp_path, monkeypatch):
    # Regression: an unwritable DIR was found out only after training.
    real = __import__("tempfile").mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == tmp_path:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("bwfast.cli.tempfile.mkstemp", mkstemp)
    calls = _fit_must_not_run(monkeypatch)
    code, out, err = run(capsys, "fit", "--out", str(tmp_path))
    assert code == 2 and out == "" and calls == []
    line = assert_one_error_line(err)
    assert line.endswith(
        f"--out: cannot write files in '{tmp_path}': Permission denied"
    )


@pytest.mark.skipif(
    not os.path.isdir("/sys/kernel")
    or os.access("/sys/kernel", os.W_OK)
    and os.geteuid() != 0,
    reason="needs /sys/kernel, a directory that takes no new files",
)
def test_out_sys_kernel_fails_before_training(capsys, monkeypatch):
    try:
        os.close(os.open("/sys/kernel/.bwfast-probe", os.O_CREAT | os.O_WRONLY))
    except OSError:
        pass
    else:  # pragma: no cover - a writable sysfs
        os.unlink("/sys/kernel/.bwfast-probe")
        pytest.skip("/sys/kernel takes new files here")
    calls = _fit_must_not_run(monkeypatch)
    code, _, err = run(capsys, "fit", "--out", "/sys/kernel")
    assert code == 2 and calls == []
    assert "cannot write files in '/sys/kernel'" in assert_one_error_line(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write a read-only dir")
def test_out_read_only_dir_fails_before_training(capsys, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        calls = _fit_must_not_run(monkeypatch)
        code, _, err = run(capsys, "fit", "--out", str(ro))
    finally:
        ro.chmod(0o755)
    assert code == 2 and calls == []
    assert "cannot write files in" in assert_one_error_line(err)


@pytest.mark.parametrize("when", ["training", "writing"])
def test_out_file_appearing_during_the_run_is_kept(capsys, tmp_path, monkeypatch, when):
    # DIR is checked again after training, and without --force the final
    # names are claimed with a hard link, which fails if anything (a
    # dangling link too) appeared since. The summary is still printed.
    def appear():
        (tmp_path / "weights.npz").symlink_to(tmp_path / "nowhere")

    def body(real, *args, **kwargs):
        result = real(*args, **dict(kwargs, steps=3))
        if when == "training":
            appear()
        return result

    _patch_fit(monkeypatch, body)
    if when == "writing":
        import bwfast.cli

        save = bwfast.cli._save_npz

        def save_and_appear(path, arrays):
            save(path, arrays)
            appear()

        monkeypatch.setattr("bwfast.cli._save_npz", save_and_appear)
    code, out, err = run(capsys, "fit", "--quiet", "--out", str(tmp_path))
    assert code == 1
    line = assert_one_error_line(err)
    assert "--out: cannot write results: " in line
    assert "weights.npz" in line
    assert "--out: --out" not in line
    assert "final loss" in out
    assert (tmp_path / "weights.npz").is_symlink()
    assert not (tmp_path / "nowhere").exists()
    assert not list(tmp_path.glob(".bwfast-*"))


# --- bad input: exit 2, one line on stderr, nothing on stdout -------------------------


def _bad_files(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 5))
    np.save(tmp_path / "nonsquare.npy", rng.standard_normal((4, 5)))
    np.save(tmp_path / "nonsymmetric.npy", a @ a.T + np.triu(np.ones((5, 5)), 1))
    np.save(tmp_path / "negative.npy", np.diag([3.0, 2.0, -1.0, 1.0]))
    np.save(tmp_path / "vector.npy", np.ones(4))
    np.save(tmp_path / "cov.npy", a @ a.T)
    np.save(tmp_path / "bool.npy", np.eye(4, dtype=bool))
    np.save(tmp_path / "complex.npy", np.eye(4, dtype=complex))
    (tmp_path / "nan.csv").write_text("1,2\nnan,4\n3,1\n")
    (tmp_path / "text.csv").write_text("1,2\n3,x\n")
    (tmp_path / "target.txt").write_text("1,2\n")


BAD_INPUTS = {
    "missing file": (["--target", "{tmp}/missing.npy"], "no such file"),
    "wrong extension": (["--target", "{tmp}/target.txt"], "unsupported file type"),
    "non-square": (["--target", "{tmp}/nonsquare.npy", "--kind", "cov"], "square"),
    "non-symmetric": (
        ["--target", "{tmp}/nonsymmetric.npy", "--kind", "cov"],
        "symmetric",
    ),
    "negative eigenvalue": (["--target", "{tmp}/negative.npy"], "semidefinite"),
    "NaN": (["--target", "{tmp}/nan.csv"], "NaN"),
    "non-numeric CSV": (["--target", "{tmp}/text.csv"], "non-numeric"),
    "1-D": (["--target", "{tmp}/vector.npy"], "2-D"),
    "widths end": (["--target", "{tmp}/cov.npy", "--widths", "5,2,4"], "--widths"),
    "widths default target": (["--widths", "64,16,32"], "dimension 64"),
    "widths text": (["--widths", "64,a,64"], "--widths"),
    "widths zero": (["--widths", "64,0,64"], "--widths"),
    "widths single": (["--widths", "64"], "--widths"),
    "tau negative": (["--tau", "-1"], "--tau"),
    "tau text": (["--tau", "abc"], "--tau"),
    "tau nan": (["--tau", "nan"], "--tau"),
    "lr zero": (["--lr", "0"], "--lr"),
    "lr negative": (["--lr=-0.1"], "--lr"),
    "lr inf": (["--lr", "inf"], "--lr"),
    "steps negative": (["--steps=-1"], "--steps: must be >= 0"),
    "steps 1e18": (["--steps", "1e18"], "--steps: must be <= 1e+12"),
    "steps 1e30": (["--steps", "1e30"], "--steps: must be <= 1e+12"),
    "steps huge integer": (["--steps", "9" * 30], "--steps: must be <= 1e+12"),
    "steps history": (["--steps", "1e12"], "pass --record-every 7451 or more"),
    "record-every 1e30": (["--record-every", "1e30"], "--record-every: must be <="),
    "widths overflow": (
        ["--widths", "99999999999999999999999,4"],
        "each width must be <= 2147483647",
    ),
    "widths 1e11": (["--widths", "100000000000,2,4"], "must be <= 2147483647"),
    "widths too many weights": (
        ["--widths", "50000,50000,64"],
        "2503200000 weights in all would need 18.7 GiB in float64",
    ),
    "widths too many weights float32": (
        ["--widths", "50000,50000,64", "--float32"],
        "would need 9.3 GiB in float32; at most 2147483648 (2**31) weights",
    ),
    "force without out": (["--force"], "--force: applies only with --out"),
    "kind without target": (
        ["--kind", "cov"],
        "--kind cov: applies only with --target",
    ),
    "kind auto without target": (["--kind", "auto"], "applies only with --target"),
    "bool target": (["--target", "{tmp}/bool.npy"], "booleans (dtype bool)"),
    "complex target": (["--target", "{tmp}/complex.npy"], "dtype complex128"),
    "steps fraction": (["--steps", "2.5"], "--steps"),
    "steps text": (["--steps", "many"], "--steps"),
    "tol negative": (["--tol", "-1e-7"], "--tol"),
    "seed negative": (["--seed", "-3"], "--seed"),
    "record-every zero": (["--record-every", "0"], "--record-every"),
    "kind": (["--kind", "matrix"], "--kind"),
    "unknown option": (["--bogus"], "--bogus (see 'bwfast fit --help')"),
    "out is a file": (["--out", "{tmp}/cov.npy"], "not a directory"),
    "out under a file": (["--out", "{tmp}/cov.npy/run"], "cannot create"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input(capsys, tmp_path, case):
    _bad_files(tmp_path)
    args, fragment = BAD_INPUTS[case]
    args = [a.format(tmp=tmp_path) for a in args]
    code, out, err = run(capsys, "fit", *args)
    assert code == 2
    assert out == ""
    assert fragment in assert_one_error_line(err)


def test_no_command(capsys):
    code, _, err = run(capsys)
    assert code == 2
    assert "no command" in assert_one_error_line(err)


def test_unknown_command(capsys):
    code, _, err = run(capsys, "train")
    assert code == 2
    assert "train" in assert_one_error_line(err)


def test_unknown_top_level_option_points_to_top_level_help(capsys):
    code, _, err = run(capsys, "--bogus")
    assert code == 2
    assert "unrecognized arguments: --bogus (see 'bwfast --help')" in (
        assert_one_error_line(err)
    )


def test_widths_count_is_checked_before_the_target_is_read(capsys, tmp_path):
    code, _, err = run(
        capsys,
        "fit",
        "--target",
        str(tmp_path / "missing.npy"),
        "--widths",
        "50000,50000,64",
    )
    assert code == 2
    assert "GiB" in assert_one_error_line(err)


def test_out_of_memory_is_one_line(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        raise MemoryError

    _patch_fit(monkeypatch, body)
    code, out, err = run(capsys, "fit", "--quiet")
    assert code == 1 and out == ""
    line = assert_one_error_line(err)
    assert "out of memory training --widths 64,16,16,64" in line
    assert "GiB in float64" in line


def test_unexpected_errors_are_one_line(capsys, monkeypatch):
    def body(real, *args, **kwargs):
        raise RuntimeError("kernel exploded")

    _patch_fit(monkeypatch, body)
    code, out, err = run(capsys, "fit", "--quiet")
    assert code == 1 and out == ""
    line = assert_one_error_line(err)
    assert "unexpected RuntimeError: kernel exploded" in line


# --- subprocess: python -m bwfast ---------------------------------------------


def _python_m_bwfast(*argv, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "bwfast", *argv],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
        check=False,
    )


def test_subprocess_short_default_job(tmp_path):
    proc = _python_m_bwfast("fit", "--steps", "30", "--json", cwd=tmp_path)
    assert proc.returncode == EXIT_CODES["step_limit"], proc.stderr
    assert json.loads(proc.stdout)["steps"] == 30
    assert "Traceback" not in proc.stderr


def _bwfast_env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["fit", "--steps", "3", "--quiet"], "the summary"),
        (["fit", "--steps", "3", "--quiet", "--json"], "the summary"),
        (["--help"], "the help"),
        (["fit", "--help"], "the help"),
        (["--version"], "the version"),
    ],
)
def test_subprocess_stdout_full(tmp_path, args, what):
    # Regression: `bwfast fit > /dev/full` ended in an OSError traceback
    # (and --help > /dev/full printed nothing and exited 0).
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "bwfast", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp_path,
            env=_bwfast_env(),
            timeout=300,
            check=False,
        )
    assert proc.returncode == 1
    line = assert_one_error_line(proc.stderr)
    assert line == (
        f"bwfast: error: cannot write {what} to stdout: "
        "[Errno 28] No space left on device"
    )


@pytest.mark.parametrize(
    "args", [["fit", "--steps", "3", "--quiet"], ["fit", "--help"]]
)
def test_subprocess_closed_pipe_is_quiet(tmp_path, args):
    # Regression: `bwfast fit | head -c0` ended in a BrokenPipeError
    # traceback. The reader is gone before the summary is written.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bwfast", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,
        env=_bwfast_env(),
    )
    proc.stdout.close()
    try:
        err = proc.stderr.read().decode()
        proc.wait(timeout=300)
    finally:
        proc.stderr.close()
    assert proc.returncode == 1
    assert err == ""


def test_subprocess_sigint_is_exit_130(tmp_path):
    # A real Ctrl-C (SIGINT) during training: one line, exit code 130.
    proc = subprocess.Popen(
        [sys.executable, "-m", "bwfast", "fit", "--steps", "1e9"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=_bwfast_env(),
    )
    try:
        note = proc.stderr.readline()  # printed just before training starts
        assert note.startswith("bwfast fit: target digits"), note
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130
    assert out == ""
    assert err == "bwfast: interrupted\n"


@pytest.mark.parametrize(
    "args",
    [
        ["fit", "--target", "missing.csv"],
        ["fit", "--target", "nonsymmetric.npy", "--kind", "cov"],
        ["fit", "--tau", "-1"],
        ["fit", "--widths", "64,16,16,32"],
        ["fit", "--target", "nan.csv"],
    ],
)
def test_subprocess_bad_input_has_no_traceback(tmp_path, args):
    _bad_files(tmp_path)
    proc = _python_m_bwfast(*args, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr)


def test_loss_frobenius_from_the_command_line(capsys):
    import json as _json

    from bwfast.cli import main as _main

    assert _main(["fit", "--loss", "frobenius", "--widths", "64,16,16,64",
                  "--quiet", "--json"]) == 0
    out = _json.loads(capsys.readouterr().out)
    assert out["loss_function"] == "frobenius"
    assert out["status"] == "converged"
    assert out["relative_gap"] < 1e-6
