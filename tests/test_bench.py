"""pytest-benchmark pairs (bwfast beside the reference) and the bench command.

The benchmarks are disabled by default (pyproject addopts), so every test
run executes each once as a smoke test; `pytest --benchmark-enable
tests/test_bench.py` times them.
"""

import json

import numpy as np
import pytest

import bwfast
from bwfast import bench, reference
from bwfast.cli import main

IMPLS = {"bwfast": bwfast, "reference": reference}


def _spd(n, seed=0):
    return bench._spd(n, seed)


@pytest.mark.parametrize("impl", ["bwfast", "reference"])
@pytest.mark.parametrize("n", [8, 64])
def test_sqrtm_psd(benchmark, impl, n):
    benchmark.group = f"sqrtm_psd n={n}"
    A = _spd(n)
    S = benchmark(IMPLS[impl].sqrtm_psd, A)
    np.testing.assert_allclose(S @ S, A, atol=1e-10 * np.abs(A).max())


@pytest.mark.parametrize("impl", ["bwfast", "reference"])
def test_bures_wasserstein(benchmark, impl):
    benchmark.group = "bures_wasserstein n=64"
    A, B = _spd(64, 0), _spd(64, 1)
    d2 = benchmark(IMPLS[impl].bures_wasserstein_squared, A, B)
    assert d2 == pytest.approx(bwfast.bures_wasserstein_squared(A, B), rel=1e-8)


@pytest.mark.parametrize("impl", ["bwfast", "reference"])
@pytest.mark.parametrize("tau", [0.0, 0.5])
def test_loss_and_grad(benchmark, impl, tau):
    benchmark.group = f"loss_and_grad n=64 depth=3 tau={tau}"
    widths = (64, 16, 64, 64)
    ws = bench._layers(widths)
    cov = _spd(64)
    target = bwfast.Target(cov) if impl == "bwfast" else cov
    loss, grads = benchmark(IMPLS[impl].loss_and_grad, ws, target, tau)
    ref_loss, _ = reference.loss_and_grad(ws, cov, tau)
    # the reference's trace formula on the rank-16 product W W^T keeps only
    # about sqrt(eps) relative accuracy (measured 2e-8 here)
    assert loss == pytest.approx(ref_loss, rel=1e-6)


@pytest.mark.parametrize("impl", ["bwfast", "reference"])
def test_gradient_steps(benchmark, impl):
    benchmark.group = "20 GD steps n=20 depth=10"
    n, depth = 20, 10
    widths = (n,) * (depth + 1)
    cov = _spd(n)
    t = bwfast.Target(cov)
    W0 = np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)
    ws = bwfast.balanced_weights(W0, widths)
    lr = bwfast.default_lr(t, widths)

    def ref_steps():
        w = ws
        for _ in range(20):
            w = reference.gd_step(w, cov, 0.0, lr)
        return w

    run = bench.stepper(t, widths, ws, 0.0, lr, 20) if impl == "bwfast" else ref_steps
    benchmark(run)


def test_bench_command_quick(capsys):
    assert main(["bench", "--quick", "--only", "sqrtm_psd", "--repeat", "1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = out["rows"]
    assert row["name"].startswith("sqrtm_psd")
    assert row["bwfast"] > 0 and row["reference"] > 0 and row["floor"] > 0
    assert row["speedup"] == pytest.approx(row["reference"] / row["bwfast"])


def test_bench_command_rejects_unknown_case(capsys):
    assert main(["bench", "--only", "no-such-case"]) == 2
    assert "matches no benchmark" in capsys.readouterr().err


def test_bench_memory_counts_an_h_by_h_temporary():
    # a GD step allocates far less than the weights; the same measurement
    # does see one extra (h, h) temporary, so it is able to fail
    # (width 2048 keeps the suite fast; the temporaries scale like width *
    # d_0 and the weights like width^2, so 4096 only improves the ratio)
    peak, weights, width = bench.step_memory(width=2048)
    assert peak < 0.25 * weights
    peak_c, _, _ = bench.step_memory(width=2048, control=True)
    assert peak_c > peak + 0.9 * width * width * 8


def test_bench_plot(tmp_path):
    path = tmp_path / "scaling.png"
    bench.plot_scaling(path, quick=True)
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 400
    assert img[..., :3].std() > 0.05  # not blank
