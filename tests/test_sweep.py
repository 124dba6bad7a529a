"""Sweeps: sweep files, synthetic targets, the local pool and Dask, the
resumable store (killed and resumed), export, plots and the command line."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bwfast
from bwfast import sweep as sw
from bwfast.cli import main
from bwfast.targets import synthetic_spectrum, synthetic_target

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "sweep_small.toml"

# A small sweep: two depths, two values of tau, and one run that fails at
# run time (a margin start needs a wider bottleneck than width 1 here).
SMALL = """
[sweep]
name = "small test"

[parameters]
target = "harmonic"
n = 5
lambda_min = 0.05
target_seed = 3
width = 5
depth = [1, 3]
tau = [0.0, 0.2]
steps = 300
record_every = 7

[[runs]]

[[runs]]
depth = 2
width = 1
tau = 0.0
init = "margin"
"""


def write(tmp_path, text, name="sweep.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err):
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bwfast: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def numeric_table(directory):
    """The results table without the columns of where and when runs ran."""
    return sw.sweep_results(directory).drop(columns=list(sw.PLACEMENT_COLUMNS))


# --- synthetic targets ------------------------------------------------------------


@pytest.mark.parametrize("family, shape", [
    ("power", lambda i: i ** -1.5),
    ("harmonic", lambda i: 1.0 / (1.0 + 1.5 * (i - 1))),
    ("geometric", lambda i: np.exp(-1.5 * (i - 1))),
])
def test_synthetic_spectrum_is_the_floored_shape(family, shape):
    i = np.arange(1, 9, dtype=float)
    lam = synthetic_spectrum(family, 8, lambda_max=2.0, lambda_min=0.2, decay=1.5)
    np.testing.assert_allclose(lam, np.maximum(2.0 * shape(i), 0.2), rtol=1e-15)
    assert lam[0] == 2.0 and lam[-1] == 0.2  # the floor is the smallest one
    t = synthetic_target(family, 8, lambda_max=2.0, lambda_min=0.2, decay=1.5,
                         seed=4)
    np.testing.assert_allclose(t.eigvals, lam, rtol=0, atol=1e-14)
    # a rotation: not diagonal, and Q diag(lam) Q^T with the same Q bit for bit
    again = synthetic_target(family, 8, lambda_max=2.0, lambda_min=0.2, decay=1.5,
                             seed=4)
    assert np.array_equal(t.cov, again.cov)
    assert np.abs(t.cov - np.diag(np.diag(t.cov))).max() > 1e-3
    other = synthetic_target(family, 8, lambda_max=2.0, lambda_min=0.2, decay=1.5,
                             seed=5)
    assert not np.allclose(t.cov, other.cov)
    flat = synthetic_target(family, 8, lambda_max=2.0, lambda_min=0.2, decay=1.5,
                            rotate=False)
    assert np.array_equal(flat.cov, np.diag(lam))


@pytest.mark.parametrize("kwargs, message", [
    (dict(family="cosine"), "`family` must be one of"),
    (dict(n=0), "`n` must be >= 1"),
    (dict(lambda_max=0.0), "`lambda_max` must be > 0"),
    (dict(lambda_min=-1.0), "`lambda_min` must be >= 0"),
    (dict(lambda_min=3.0), "`lambda_min` must be <= lambda_max"),
    (dict(decay=float("nan")), "`decay` must be finite"),
])
def test_synthetic_spectrum_refuses_bad_values(kwargs, message):
    args = dict(family="power", n=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        synthetic_spectrum(args.pop("family"), args.pop("n"), **args)


# --- sweep files ------------------------------------------------------------------


def test_grid_expansion_order_defaults_and_ids(tmp_path):
    sweep = sw.load_sweep(write(tmp_path, SMALL))
    assert sweep.name == "small test"
    assert len(sweep) == 5  # 2 depths x 2 taus, and one more block
    first = sweep.runs[0].params
    assert [r.params["widths"] for r in sweep.runs] == [
        [5, 5], [5, 5], [5, 5, 5, 5], [5, 5, 5, 5], [1, 1, 5]]
    assert [r.params["tau"] for r in sweep.runs[:4]] == [0.0, 0.2, 0.0, 0.2]
    defaults = {k: v.default for k, v in
                __import__("inspect").signature(bwfast.fit).parameters.items()}
    assert first["seed"] == defaults["seed"] and first["lr"] is None
    assert first["init"] == "balanced" and first["loss"] == "bw"
    assert first["lambda_max"] == 1.0 and first["rotate"] is True
    # the same configuration written out differently has the same id
    same = write(tmp_path, """
        [parameters]
        record_every = 7
        steps = 300.0
        tau = [0, 0.2]
        widths = [[5, 5], [5, 5, 5, 5]]
        lambda_min = 0.05
        n = 5
        target = "harmonic"
        target_seed = 3
        seed = 0
        lr = "default"
        """, "same.toml")
    ids = {r.run_id for r in sw.load_sweep(same).runs}
    assert ids == {r.run_id for r in sweep.runs[:4]}
    assert sw.load_sweep(same).select(depth=[1, 3]).spec_hash == sweep.select(
        init="balanced").spec_hash


@pytest.mark.parametrize("text, message", [
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\ntau = -1",
     r"\[parameters\] tau = -1: must be >= 0"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\ntau = [0, 'x']",
     r"tau\[1\] = \"x\": must be a number"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\nwidht = 3",
     "unknown key 'widht'"),
    ("[parameters]\ntarget = 'power'\nn = 4\nwidths = [4, 2, 3]",
     r"widths = \[4, 2, 3\] must end with the target dimension n = 4"),
    ("[parameters]\ntarget = 'power'\nn = 4\nwidths = [4, 4]\ndepth = 1",
     "give either widths or depth"),
    ("[parameters]\ntarget = 'power'\nn = 4", "no network"),
    ("[parameters]\ntarget = 'power'\ndepth = 2", "n is required"),
    ("[parameters]\ntarget = 'digits'\nn = 4\ndepth = 2",
     "n applies only to the synthetic targets"),
    ("[parameters]\ntarget = 'missing.npy'\ndepth = 2", "missing.npy'?: no such file"),
    ("[parameters]\ntarget = 'gauss'\nn = 4\ndepth = 2", "target = \"gauss\": must be"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = [1, 1]", "are the same run"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = []", "at least one value"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\nsteps = 2.5",
     "steps = 2.5: must be an integer"),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\nloss = 'l1'",
     'loss = "l1": must be one of "bw", "frobenius"'),
    ("[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\nlambda_min = 2.0",
     "lambda_min = 2.0 must be <= lambda_max = 1.0"),
    ("[parameter]\ntarget = 'power'", "unknown table or key 'parameter'"),
    ("[parameters\n", "not valid TOML"),
])
def test_sweep_file_errors_name_key_and_value(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(sw.SweepFileError, match=message) as info:
        sw.load_sweep(path)
    assert str(path) in str(info.value)


def test_unknown_init_is_refused_before_any_run(tmp_path, capsys):
    from bwfast.theory import INITS

    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\n"
                 "init = ['balanced', 'foo']\n")
    names = ", ".join(f'"{name}"' for name in INITS)
    with pytest.raises(sw.SweepFileError) as info:
        sw.load_sweep(path)
    assert f'[parameters] init[1] = "foo": must be one of {names}' in str(info.value)
    text = path.read_text().replace("['balanced', 'foo']", repr(list(INITS)))
    sweep = sw.load_sweep(write(tmp_path, text, "ok.toml"))
    assert [r.params["init"] for r in sweep.runs] == list(INITS)  # fit's names
    code, _, err = run_cli(capsys, "sweep", path, "--dry-run")
    assert code == 2 and 'init[1] = "foo": must be one of' in error_line(err)


BIG = 99999999999999999999  # above 2**63 - 1


@pytest.mark.parametrize("key, line, shown", [
    ("seed", f"depth = 2\nseed = {BIG}", f"seed = {BIG}"),
    ("target_seed", f"depth = 2\ntarget_seed = {BIG}", f"target_seed = {BIG}"),
    ("n", f"depth = 2\nn = {BIG}", f"n = {BIG}"),
    ("steps", f"depth = 2\nsteps = {BIG}", f"steps = {BIG}"),
    ("record_every", f"depth = 2\nrecord_every = {BIG}", f"record_every = {BIG}"),
    ("depth", f"depth = [1, {BIG}]", f"depth[1] = {BIG}"),
    ("width", f"depth = 2\nwidth = {BIG}", f"width = {BIG}"),
    ("d0", f"depth = 2\nd0 = {BIG}", f"d0 = {BIG}"),
    ("steps as a float", "depth = 2\nsteps = 1e19", "steps = 1e+19"),
    ("widths", f"widths = [4, {BIG}, 4]", f"entry 1 = {BIG}"),
])
def test_integers_beyond_int64_are_refused(tmp_path, key, line, shown):
    text = "[parameters]\ntarget = 'power'\n" + ("" if "n = " in line else
                                                 "n = 4\n") + line + "\n"
    with pytest.raises(sw.SweepFileError) as info:
        sw.load_sweep(write(tmp_path, text))
    message = str(info.value)
    assert shown in message and "must be <= 2**63-1 = 9223372036854775807" in (
        message)


def test_networks_too_large_are_refused_before_building_them(tmp_path):
    for line in (f"depth = {2**62}", "widths = [4, 100000, 100000, 4]"):
        path = write(tmp_path, f"[parameters]\ntarget = 'power'\nn = 4\n{line}\n")
        with pytest.raises(sw.SweepFileError, match=r"weights, more than 2147483648"):
            sw.load_sweep(path)
    # the largest int64 values are accepted where they make sense
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 4\ndepth = 2\n"
                 f"seed = {2**63 - 1}\ntarget_seed = {2**63 - 1}\n")
    assert sw.load_sweep(path).runs[0].params["seed"] == 2**63 - 1


def test_file_targets_are_identified_by_content(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((40, 3))
    np.save(tmp_path / "x.npy", X)
    path = write(tmp_path, "[parameters]\ntarget = 'x.npy'\nkind = 'samples'\n"
                 "depth = [1, 2]\n")
    sweep = sw.load_sweep(path)
    t = sweep.target(sweep.runs[0].params)
    np.testing.assert_allclose(t.cov, np.cov(X, rowvar=False), rtol=1e-14)
    before = sweep.spec_hash
    np.save(tmp_path / "x.npy", 2 * X)
    assert sw.load_sweep(path).spec_hash != before
    fresh = sw.Sweep(sweep.name, sweep.runs, base_dir=tmp_path)  # no cached target
    with pytest.raises(sw.SweepFileError, match="changed since the sweep was read"):
        fresh.target(sweep.runs[1].params)


# --- running and storing ----------------------------------------------------------


def test_local_pool_and_dask_give_identical_tables(tmp_path):
    distributed = pytest.importorskip("distributed")
    sweep = sw.load_sweep(write(tmp_path, SMALL))
    local = sw.run_sweep(sweep, tmp_path / "local", workers=2, progress=False)
    assert (local.backend, local.workers, local.computed) == ("local", 2, 5)
    assert local.counts == {"converged": 2, "failed": 1, "step_limit": 2}
    # Dask in this process, on the loopback interface (threads, no
    # dashboard): the same code path as a remote scheduler
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                  processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as c:
        remote = sw.run_sweep(sweep, tmp_path / "dask",
                              scheduler=c.scheduler_address, progress=False)
    assert (remote.backend, remote.computed) == ("dask", 5)
    # and the command line's own LocalCluster (worker processes, loopback)
    code = main(["sweep", str(tmp_path / "sweep.toml"), "--out",
                 str(tmp_path / "dask-local"), "--dask-local", "--workers", "2",
                 "--quiet"])
    assert code == 6  # one run failed
    a, b = numeric_table(tmp_path / "local"), numeric_table(tmp_path / "dask")
    import pandas as pd

    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(a, numeric_table(tmp_path / "dask-local"))
    assert sw.sweep_results(tmp_path / "dask-local")["worker"].nunique() == 2
    # and both are what fit itself returns
    for run, row in zip(sweep.runs, a.to_dict("records")):
        if row["status"] == "failed":
            assert row["init"] == "margin" and row["width"] == 1
            assert row["message"].startswith("ValueError: ")
            assert "'margin' needs c_max" in row["message"]
            assert np.isnan(row["final_loss"]) and pd.isna(row["steps_taken"])
            continue
        res = bwfast.fit(sweep.target(run.params), run.params["widths"],
                         tau=run.params["tau"], steps=300, record_every=7)
        assert row["final_loss"] == res.loss and row["steps_taken"] == res.steps
        assert row["optimum"] == res.optimum
        assert row["relative_gap"] == res.relative_gap
        assert row["status"] == res.status.value
        assert row["rate"] == res.observed_rate or np.isnan(res.observed_rate)
    hist = sw.sweep_histories(tmp_path / "dask")
    first = hist[hist["index"] == 0]
    res = bwfast.fit(sweep.target(sweep.runs[0].params), [5, 5], steps=300,
                     record_every=7)
    assert np.array_equal(first["step"].to_numpy(), res.loss_steps)
    assert np.array_equal(first["loss"].to_numpy(), res.losses)
    assert set(hist["index"]) == {0, 1, 2, 3}  # the failed run has none


def _stored(directory):
    with sqlite3.connect(directory / "sweep.sqlite") as conn:
        rows = dict(conn.execute("SELECT run_id, finished_at FROM runs"))
        attempts = dict(conn.execute(
            "SELECT run_id, COUNT(*) FROM attempts GROUP BY run_id"))
    return rows, attempts


def _wait_for_rows(directory, count, proc, limit=120):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (directory / "sweep.sqlite").exists():
            try:
                if len(_stored(directory)[0]) >= count:
                    return
            except sqlite3.OperationalError:  # created, not yet readable
                pass
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} runs stored in {limit} s")


def test_killed_sweeps_resume_without_recomputing(tmp_path):
    # 10 runs of identical cost (tol 0: none converges early)
    path = write(tmp_path, """
        [parameters]
        target = "power"
        n = 12
        lambda_min = 0.05
        depth = 3
        tau = 0.3
        tol = 0.0
        steps = 20000
        seed = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
        """)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bwfast", "sweep", str(path), "--out", str(out),
           "--workers", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    committed, handed = {}, {}
    for sig in (signal.SIGINT, signal.SIGKILL):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        _wait_for_rows(out, len(committed) + 2, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        rows, attempts = _stored(out)
        assert len(rows) < 10, "the sweep ended before it was killed"
        if sig == signal.SIGINT:
            assert proc.returncode == 130
            assert "bwfast: interrupted" in err and "Traceback" not in err
            assert "run the same command again" in err
        else:
            assert proc.returncode == -signal.SIGKILL
        # what was committed before stays, unchanged, and was not handed to
        # a worker again
        assert all(rows[rid] == t for rid, t in committed.items())
        assert all(attempts[rid] == n for rid, n in handed.items())
        committed = rows
        handed = {rid: attempts[rid] for rid in rows}
    report = sw.run_sweep(path, out, workers=2, progress=False)
    assert report.skipped == len(committed) and report.computed == 10 - len(committed)
    rows, attempts = _stored(out)
    assert len(rows) == 10
    assert all(rows[rid] == t for rid, t in committed.items())
    assert all(attempts[rid] == n for rid, n in handed.items())
    table = sw.sweep_results(out)
    assert table["run_id"].is_unique and list(table["index"]) == list(range(10))
    assert set(table["status"]) == {"step_limit"}
    assert set(table["steps_taken"]) == {20000}


def test_changed_sweep_is_refused_unless_a_new_store(tmp_path, capsys):
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 3\ndepth = [1, 2]\n"
                 "steps = 50\n")
    out = tmp_path / "out"
    code, _, _ = run_cli(capsys, "sweep", path, "--out", out, "--workers", "0",
                         "--quiet")
    assert code == 0
    # comments and spelled-out defaults do not change the sweep
    path.write_text("# same runs\n" + path.read_text() + "seed = 0\n")
    code, out_text, _ = run_cli(capsys, "sweep", path, "--out", out, "--workers",
                                "0", "--quiet")
    assert code == 0 and "nothing to compute: all 2 runs are stored" in out_text
    path.write_text(path.read_text().replace("[1, 2]", "[1, 2, 3]"))
    before = (out / "sweep.sqlite").read_bytes()
    code, _, err = run_cli(capsys, "sweep", path, "--out", out, "--workers", "0")
    assert code == 2
    line = error_line(err)
    assert "holds the results of a different sweep" in line
    assert "1 of the 3 configurations" in line and "--new-store" in line
    assert (out / "sweep.sqlite").read_bytes() == before
    code, out_text, err = run_cli(capsys, "sweep", path, "--out", out, "--workers",
                                  "0", "--new-store")
    assert code == 0 and "3 computed" in out_text
    assert f"moved to {out / 'sweep.1.sqlite'}" in err
    assert len(sw.sweep_results(out / "sweep.1.sqlite")) == 2  # the old results
    code, out_text, _ = run_cli(capsys, "sweep", out / "sweep.1.sqlite")
    assert code == 0 and "2 converged" in out_text
    assert len(sw.sweep_results(out)) == 3
    # a file of the user's under the store's name is never touched
    other = tmp_path / "other"
    other.mkdir()
    (other / "sweep.sqlite").write_bytes(b"my notes")
    code, _, err = run_cli(capsys, "sweep", path, "--out", other, "--workers", "0")
    assert code == 2 and "is not a bwfast sweep store" in error_line(err)
    assert (other / "sweep.sqlite").read_bytes() == b"my notes"
    assert sorted(p.name for p in other.iterdir()) == ["sweep.sqlite"]


def test_retry_failed_replaces_only_failed_rows(tmp_path):
    # at tau = 5 no margin start exists: that run fails every time
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 3\ndepth = 1\n"
                 "steps = 20\ntau = 5.0\ninit = ['balanced', 'margin']\n")
    out = tmp_path / "out"
    sw.run_sweep(path, out, workers=0)
    first = sw.sweep_results(out)
    report = sw.run_sweep(path, out, workers=0, retry_failed=True)
    assert (report.computed, report.skipped) == (1, 1)
    again = sw.sweep_results(out)
    assert list(again["attempts"]) == [1, 2]
    assert again["finished_at"][0] == first["finished_at"][0]
    assert list(again["status"]) == ["converged", "failed"]


@pytest.mark.parametrize("address, reason", [
    ("garbage", "(no port)"), ("tcp://", "(no port)"), ("tcp://:8786", "(no host)"),
    ("tcp://host:port", "the port must be"), ("udp://host:1", "protocol 'udp'"),
])
def test_bad_scheduler_addresses_are_refused_before_anything(tmp_path, capsys,
                                                             address, reason):
    path = write(tmp_path, SMALL)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "sweep", path, "--out", out, "--scheduler",
                           address)
    line = error_line(err)
    assert code == 2
    assert "--scheduler must be a Dask scheduler address PROTOCOL://HOST:PORT" in line
    assert repr(address) in line and reason in line
    assert not out.exists()
    with pytest.raises(ValueError, match=r"`scheduler` must be a Dask scheduler"):
        sw.run_sweep(path, out, scheduler=address)
    assert not out.exists()
    assert sw.scheduler_problem("tcp://127.0.0.1:8786") is None
    assert sw.scheduler_problem("[::1]:8786") is None


def test_a_sweep_failing_before_its_first_run_creates_nothing(tmp_path, capsys,
                                                              monkeypatch):
    class NoPool:
        def __init__(self, workers):
            raise OSError("cannot start worker processes")

    monkeypatch.setattr(sw, "_warm_up", lambda dtypes: None)
    monkeypatch.setattr(sw, "_LocalPool", NoPool)
    path = write(tmp_path, SMALL)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "sweep", path, "--out", out, "--workers", "1")
    assert code == 1 and "cannot start worker processes" in error_line(err)
    assert not out.exists()
    out.mkdir()
    with pytest.raises(OSError, match="cannot start"):
        sw.run_sweep(path, out, workers=1)
    assert list(out.iterdir()) == []
    # a store of the same sweep is kept as it was, and one of another sweep
    # is not moved aside by --new-store
    sw.run_sweep(sw.load_sweep(path).select(depth=1), out, workers=0)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(OSError, match="cannot start"):
        sw.run_sweep(path, out, workers=1, new_store=True)
    assert sorted(p.name for p in out.iterdir()) == before
    assert len(sw.sweep_results(out)) == 2


def test_cli_failed_runs_exit_6_and_reruns_compute_nothing(tmp_path, capsys):
    # at tau = 5 no margin start exists: that run fails every time
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 3\ndepth = 1\n"
                 "steps = 20\ntau = 5.0\ninit = ['balanced', 'margin']\n")
    out = tmp_path / "out"
    argv = ("sweep", path, "--out", out, "--workers", "0", "--quiet")
    code, text, _ = run_cli(capsys, *argv)
    assert code == 6 and "1 converged, 1 failed" in text
    code, text, _ = run_cli(capsys, *argv)
    assert code == 6
    assert "nothing to compute: all 2 runs are stored" in text
    assert "wall time" not in text
    code, text, _ = run_cli(capsys, *argv, "--retry-failed")
    assert code == 6 and "1 computed, 1 already stored" in text
    code, _, _ = run_cli(capsys, "sweep", out)  # a summary is not a run
    assert code == 0
    code, text, _ = run_cli(capsys, "sweep", "--help")
    assert code == 0
    assert "\n  6    every configuration has a stored result, but some runs" in text


def test_summaries_count_in_sqlite_without_reading_configurations(stored,
                                                                  monkeypatch):
    # reading 10**6 configurations took 12 s of the exit after Ctrl-C
    def refuse(self):
        raise AssertionError("configurations read")

    monkeypatch.setattr(sw.Store, "configs", refuse)
    summary = sw.store_summary(stored)
    assert (summary["total"], summary["missing"]) == (8, 0)
    assert summary["counts"] == {"converged": 8}
    sweep = sw.load_sweep(EXAMPLE)
    with pytest.raises(sw.SweepChanged, match="92 of the 100 configurations"):
        sw.run_sweep(sweep, stored, workers=0)


# --- results ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """The example sweep trimmed to 8 runs, run in this process."""
    out = tmp_path_factory.mktemp("example") / "out"
    sweep = sw.load_sweep(EXAMPLE)
    assert len(sweep) == 100
    assert sweep.axes() == {"lambda_min": [0.003, 0.01, 0.03, 0.1, 0.3],
                            "depth": [1, 2, 4, 8, 16],
                            "tau": [0.0, 0.1, 0.5, 1.0]}
    part = sweep.select(depth=[2, 4], tau=0.0, lambda_min=[0.03, 0.1, 0.3, 0.01])
    report = sw.run_sweep(part, out, workers=0)
    assert report.counts == {"converged": 8}
    return out


def test_example_runs_reach_the_theory(stored):
    table = sw.sweep_results(stored)
    # tau = 0 and k = n: the optimum is 0, reached to the tolerance
    assert (table["optimum"] == 0).all()
    assert (table["relative_gap"] < 1e-9).all()
    assert (table["eig_min"] - table["lambda_min"]).abs().max() < 1e-14
    assert (table["rate"] > 0).all()
    # the theory's prediction applies (tau = 0, k = n) where the start has
    # a positive margin, and is NaN exactly where it does not
    assert ((table["margin"] > 0) == table["predicted_rate"].notna()).all()


def test_margin_starts_carry_the_prediction(tmp_path):
    path = write(tmp_path, """
        [parameters]
        target = "harmonic"
        n = 6
        lambda_min = 0.2
        width = 6
        depth = [2, 3]
        init = "margin"
        record_every = 1
        tol = 1e-10
    """)
    sw.run_sweep(sw.load_sweep(path), tmp_path / "out", workers=0)
    table = sw.sweep_results(tmp_path / "out")
    assert len(table) == 2 and (table["status"] == "converged").all()
    assert (table["margin"] > 0).all()
    for _, row in table.iterrows():
        assert row["predicted_rate"] == pytest.approx(
            bwfast.predicted_flow_rate(row["margin"], row["depth"]))
        # the observed rate per unit time (rate / lr) is at least the bound
        assert row["rate"] / row["lr_used"] >= row["predicted_rate"]


def test_export_round_trips(stored, tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    table = sw.sweep_results(stored)
    assert tuple(table.columns) == sw.RESULT_COLUMNS
    assert sw.export_sweep(stored, tmp_path / "r.parquet") == 8
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "r.parquet"), table)
    sw.export_sweep(stored, tmp_path / "r.csv")
    back = pd.read_csv(tmp_path / "r.csv")
    assert tuple(back.columns) == sw.RESULT_COLUMNS
    for col in ("final_loss", "rate", "relative_gap", "lambda_min", "tau"):
        assert back[col].tolist() == table[col].tolist()
    assert back["run_id"].tolist() == table["run_id"].tolist()
    sw.export_sweep(stored, tmp_path / "h.parquet", histories=True)
    hist = pd.read_parquet(tmp_path / "h.parquet")
    assert list(hist.columns) == ["run_id", "index", "step", "loss"]
    last = hist.groupby("index").tail(1)
    assert last["loss"].tolist() == table["final_loss"].tolist()
    assert last["step"].tolist() == table["steps_taken"].tolist()
    # never overwritten without asking
    with pytest.raises(FileExistsError, match="not overwritten"):
        sw.export_sweep(stored, tmp_path / "r.csv")
    os.symlink(tmp_path / "r.csv", tmp_path / "link.csv")
    with pytest.raises(FileExistsError, match="not a regular file"):
        sw.export_sweep(stored, tmp_path / "link.csv", overwrite=True)


def test_plot_writes_a_heatmap_png(stored, tmp_path, capsys):
    image = pytest.importorskip("matplotlib.image")
    png = tmp_path / "rate.png"
    code, out, err = run_cli(capsys, "sweep", stored, "--plot", png, "--x", "depth",
                             "--y", "lambda_min", "--value", "rate", "--where",
                             "tau=0")
    assert code == 0, err
    assert str(png) in out
    pixels = image.imread(png)
    assert pixels.shape[:2] == (500, 700)
    rgb = pixels[..., :3].reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 50  # colour cells, text, axes
    assert (rgb < 0.5).any() and (rgb > 0.9).any()
    grid = sw.plot_sweep(stored, tmp_path / "c.png", x="depth", y="lambda_min",
                         value="steps_taken", contour=True, log=True)
    assert grid.shape == (4, 2)
    assert (tmp_path / "c.png").stat().st_size > 10_000


def test_plot_errors(stored, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sweep", stored, "--plot", tmp_path / "p.png",
                           "--x", "depth", "--y", "tau", "--value", "rate")
    assert code == 2
    assert "several runs fall in one (depth, tau) cell (lambda_min takes" in (
        error_line(err))
    code, _, err = run_cli(capsys, "sweep", stored, "--plot", tmp_path / "p.png",
                           "--x", "depth", "--y", "lambda_min", "--value", "status")
    assert code == 2 and "'status' is not numeric" in error_line(err)
    code, _, err = run_cli(capsys, "sweep", stored, "--plot", tmp_path / "p.png",
                           "--x", "depth", "--y", "lambda_min")
    assert code == 2 and "--plot needs --value" in error_line(err)
    assert not (tmp_path / "p.png").exists()


def test_plot_refuses_selections_without_finite_values(stored, tmp_path, capsys):
    png = tmp_path / "p.png"
    # lr is missing (fit's default) in every stored run
    code, _, err = run_cli(capsys, "sweep", stored, "--plot", png, "--x", "depth",
                           "--y", "lambda_min", "--value", "lr")
    assert code == 2
    assert "--plot: no finite values of lr in the selected runs (8 runs)" in (
        error_line(err))
    assert not png.exists()
    table = sw.sweep_results(stored)
    with pytest.raises(ValueError, match="no finite values of rate in the selected"):
        sw.plot_sweep(table.assign(rate=np.inf), png, x="depth", y="lambda_min",
                      value="rate")
    assert not png.exists()
    # some values missing: a plot, with those cells empty
    part = table.assign(rate=table["rate"].where(table["depth"] == 2))
    grid = sw.plot_sweep(part, png, x="depth", y="lambda_min", value="rate")
    assert grid[2].notna().all() and grid[4].isna().all()
    assert png.stat().st_size > 10_000


def test_plot_where_takes_one_condition_as_a_string(stored, tmp_path):
    pytest.importorskip("matplotlib")
    grid = sw.plot_sweep(stored, tmp_path / "a.png", x="depth", y="lambda_min",
                         value="rate", where="tau=0")
    again = sw.plot_sweep(stored, tmp_path / "b.png", x="depth", y="lambda_min",
                          value="rate", where={"tau": 0})
    assert grid.shape == (4, 2) and grid.equals(again)
    with pytest.raises(ValueError, match="expected COLUMN=VALUE; got 'tau'"):
        sw.plot_sweep(stored, tmp_path / "c.png", x="depth", y="lambda_min",
                      value="rate", where="tau")


# --- command line -----------------------------------------------------------------


def test_cli_summary_export_and_usage_errors(stored, tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sweep", stored, "--json")
    summary = json.loads(out)
    assert summary["total"] == 8 and summary["missing"] == 0
    assert summary["counts"] == {"converged": 8}
    csv = tmp_path / "r.csv"
    csv.write_text("mine\n")
    code, _, err = run_cli(capsys, "sweep", stored, "--export", csv)
    assert code == 2 and "already exists; pass --force" in error_line(err)
    assert csv.read_text() == "mine\n"
    code, _, _ = run_cli(capsys, "sweep", stored, "--export", csv, "--force")
    assert code == 0 and csv.read_text().startswith("run_id,index,target")
    for argv, message in [
        ((EXAMPLE,), "--out DIR is required"),
        ((stored, "--out", tmp_path), "--out: applies only when running"),
        ((stored, "--dry-run"), "--dry-run: applies only when running"),
        ((stored, "--workers", "2"), "--workers: applies only when running"),
        ((EXAMPLE, "--out", tmp_path, "--scheduler", "tcp://x:1", "--dask-local"),
         "choose one"),
        ((stored, "--x", "depth"), "--x: applies only with --plot"),
        ((stored, "--export", tmp_path / "r.json"), "must name a .parquet or .csv"),
        ((tmp_path / "none.toml", "--out", tmp_path), "cannot be read"),
        ((tmp_path / "nothing",), "no such sweep file"),
        ((tmp_path,), "holds no sweep store"),
    ]:
        code, _, err = run_cli(capsys, "sweep", *argv)
        assert code == 2, (argv, err)
        assert message in error_line(err), (argv, err)


def test_cli_dry_run_lists_the_axes(tmp_path, capsys):
    code, out, _ = run_cli(capsys, "sweep", EXAMPLE, "--dry-run")
    assert code == 0
    assert out.splitlines()[0].endswith(": 100 runs")
    assert "  depth         1, 2, 4, 8, 16" in out
    assert "  tau           0, 0.1, 0.5, 1" in out
    assert "width" not in out  # one value; depth 1 has no hidden layer
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 6\nwidth = 6\n"
                 "depth = [1, 2]\nlr = ['default', 0.1]\n")
    code, out, _ = run_cli(capsys, "sweep", path, "--dry-run")
    assert code == 0
    assert out.splitlines()[1:] == ["  depth         1, 2",
                                    "  lr            default, 0.1"]
    # uneven hidden widths: widths is the axis
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 5\n"
                 "widths = [[5, 3, 4, 5], [5, 3, 3, 5]]\n")
    assert sw.load_sweep(path).axes() == {"widths": ["5,3,3,5", "5,3,4,5"]}
    path = write(tmp_path, "[parameters]\ntarget = 'power'\nn = 5\n"
                 "widths = [[5, 5], [5, 2, 5], [5, 3, 5]]\n")
    assert sw.load_sweep(path).axes() == {"depth": [1, 2], "width": [2, 3],
                                         "k": [2, 3, 5]}


def test_missing_packages_are_named_with_the_pip_command(stored, tmp_path, capsys,
                                                        monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("pandas", "distributed")
                        else real(name, *a))
    code, _, err = run_cli(capsys, "sweep", stored, "--export", tmp_path / "r.csv")
    line = error_line(err)
    assert code == 2
    assert "'pandas' package, which is not installed: pip install pandas" in line
    code, _, err = run_cli(capsys, "sweep", EXAMPLE, "--out", tmp_path / "o",
                           "--dask-local")
    assert "pip install 'dask[distributed]'" in error_line(err)
    assert not (tmp_path / "o").exists()  # refused before anything ran
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"'pyarrow'.*pip install pyarrow"):
        sw.export_sweep(stored, tmp_path / "r.parquet")
