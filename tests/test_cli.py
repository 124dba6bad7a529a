"""Tests of the bwfast command line (in-process through main, and a few
subprocess runs for the no-traceback guarantee)."""

import dataclasses
import functools
import json
import os
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
    for field in ("final loss", "optimum", "relative gap", "steps", "wall time"):
        assert field in out
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


def test_auto_notes_a_square_file_read_as_samples(capsys, tmp_path):
    path = tmp_path / "square.npy"
    np.save(path, _samples(3, m=6))
    code, _, err = run(capsys, "fit", "--target", str(path), "--steps", "5")
    assert code == EXIT_CODES["step_limit"]
    assert "as 6 samples x 6 features" in err
    assert "--kind cov" in err


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
    assert s["steps"] <= 100
    assert code == EXIT_CODES[s["status"]]


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


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "fit" in out and "exit codes" in out
    code, out, _ = run(capsys, "fit", "--help")
    assert code == 0 and "--target" in out and "--widths" in out
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


def test_out_refuses_a_single_existing_file(capsys, tmp_path):
    (tmp_path / "weights.npz").write_bytes(b"keep me")
    code, _, err = run(capsys, "fit", "--steps", "5", "--out", str(tmp_path))
    assert code == 2
    assert "weights.npz" in assert_one_error_line(err)
    assert (tmp_path / "weights.npz").read_bytes() == b"keep me"
    assert not (tmp_path / "history.csv").exists()


# --- bad input: exit 2, one line on stderr, nothing on stdout -------------------------


def _bad_files(tmp_path):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((5, 5))
    np.save(tmp_path / "nonsquare.npy", rng.standard_normal((4, 5)))
    np.save(tmp_path / "nonsymmetric.npy", a @ a.T + np.triu(np.ones((5, 5)), 1))
    np.save(tmp_path / "negative.npy", np.diag([3.0, 2.0, -1.0, 1.0]))
    np.save(tmp_path / "vector.npy", np.ones(4))
    np.save(tmp_path / "cov.npy", a @ a.T)
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
    "steps zero": (["--steps", "0"], "--steps"),
    "steps fraction": (["--steps", "2.5"], "--steps"),
    "steps text": (["--steps", "many"], "--steps"),
    "tol negative": (["--tol", "-1e-7"], "--tol"),
    "seed negative": (["--seed", "-3"], "--seed"),
    "record-every zero": (["--record-every", "0"], "--record-every"),
    "kind": (["--kind", "matrix"], "--kind"),
    "unknown option": (["--bogus"], "--bogus"),
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


# --- subprocess: python -m bwfast --------------------------------------------------------


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
