"""Side-by-side timings of bwfast, bwfast.reference and the LAPACK/GEMM floor."""

import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from . import _kernels as K
from . import reference
from ._config import JIT
from ._threads import blas_limit
from .linalg import bures_wasserstein_squared, sqrtm_psd
from .network import Target, Workspace, balanced_weights, loss_and_grad, pack, rank_rtol
from .train import default_lr

__all__ = ["Case", "CASES", "run", "format_table", "step_memory", "plot_scaling",
           "scaling_figure"]


@dataclass(frozen=True)
class Case:
    """One benchmark row: what is timed and the target it is held to."""

    name: str
    target: str
    build: object  # callable(quick) -> dict of callables: bwfast, reference, floor


def best_time(f, repeat=3, number=1):
    """Best wall time of ``number`` calls, over ``repeat`` rounds (after a warm-up)."""
    f()
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            f()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def _spd(n, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n))
    return (X @ X.T / n + 0.1 * np.eye(n)).astype(dtype)


def _layers(widths, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((b, a)) / np.sqrt(a)).astype(dtype)
        for a, b in zip(widths[:-1], widths[1:])
    ]


def _gemm(n, m, k, dtype=np.float64):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, k)).astype(dtype)
    B = rng.standard_normal((k, m)).astype(dtype)
    return lambda: A @ B


def stepper(target, widths, weights, tau, lr, steps):
    """A callable running ``steps`` GD steps of the compiled loop in place
    (the work of fit() without its set-up and result building)."""
    dims = np.array(widths, dtype=np.int64)
    dtype = weights[0].dtype
    theta = pack(weights, dtype)
    work = Workspace(dims, dtype, grad=False)
    R0, S0 = target.arrays(dtype)
    k = max(min(int(dims.min()), target.rank), 1)
    rr = rank_rtol(dims, dtype)
    hist = np.empty(steps + 1)
    # no diagnostics records: the loop as fit(diagnostics=False) runs it,
    # with the same warm start
    no_vecs = np.empty((target.n, 0), dtype)
    no_const = np.zeros(2)
    warm = K.warm_state(dims, tau, k, K.BW_LOSS, theta)
    warm = warm if warm.shape[1] > 0 and dtype == np.float64 else None

    def run():
        with blas_limit(int(dims.max())):
            # convergence checks every 10 steps, as fit() does by default
            done, code, _, _ = K.descend(
                theta, dims, R0, S0, target.trace, tau, k, rr, lr, 0, steps,
                steps, 0.0, np.inf, hist, 0, 10, work.pbuf, work.G,
                K.BW_LOSS, -1, None, no_vecs, no_const, warm, None)
        if done != steps:  # a timing of steps that did not run means nothing
            raise RuntimeError(f"benchmark run stopped at step {done} of "
                               f"{steps} with status code {code}")

    return run


def _small_step(depth, tau):
    def build(quick):
        n = 20
        widths = (n,) * (depth + 1)
        cov = _spd(n)
        t = Target(cov)
        ws = balanced_weights(np.random.default_rng(0).standard_normal((n, n)) /
                              np.sqrt(n), widths)
        lr = default_lr(t, widths, tau)
        steps = 200 if quick else 2000
        fast = stepper(t, widths, ws, tau, lr, steps)

        ref_steps = 5 if quick else 50

        def ref():
            w = ws
            for _ in range(ref_steps):
                w = reference.gd_step(w, cov, tau, lr)

        # floor: the n x n GEMMs of one step, called from compiled code as
        # the descent loop calls them: 3 per layer, and 7 for the end-to-end
        # gradient when the warm-started decomposition needs no rotation
        # (tau > 0: R0 W, X X^T, the check Q^T M Q (2) and M^{-1/2} X
        # applied through R0 (3); tau = 0 needs 5). The loop calls no LAPACK
        # routine while its refinement converges (bwfast._small).
        A = _spd(n, 3)

        reps = 20 if quick else 200

        def floor():
            with blas_limit(n):
                _small_floor(A, 3 * depth + 7, reps)

        return dict(bwfast=(fast, steps), reference=(ref, ref_steps),
                    floor=(floor, reps))

    return build


@njit(**JIT)
def _small_floor(A, gemms, reps):
    C = np.empty_like(A)
    for _ in range(reps):
        for _ in range(gemms):
            np.dot(A, A, C)


def _big_loss(tau, bottleneck, dtype=np.float64):
    def build(quick):
        n = 256 if quick else 1024
        k = n // 16 if bottleneck else n
        widths = (n, k, k, n) if bottleneck else (n, n, n, n)
        cov = _spd(n)
        t = Target(cov)
        ws = _layers(widths, dtype=dtype)
        ws64 = _layers(widths)

        def fast():
            loss_and_grad(ws, t, tau)

        def ref():
            reference.loss_and_grad(ws64, cov, tau)

        if tau > 0:
            S = np.asarray(cov, dtype=dtype)
            G = _gemm(n, n, n)

            def floor():
                np.linalg.eigh(S)
                for _ in range(11):  # 4 forward, 3 in M^{-1/2} X, 4 backward
                    G()
        else:
            G1 = _gemm(n, n, k)
            G2 = _gemm(n, k, n)

            def floor():
                # R0 A, R0 U, U^T R0, U (U^T R0) and U V^T at n x n x k,
                # and the forward and backward products of the two outer
                # layers (n x k x n each)
                for _ in range(5):
                    G1()
                for _ in range(4):
                    G2()

        return dict(bwfast=(fast, 1), reference=(ref, 1), floor=(floor, 1))

    return build


def _wide_step(width):
    def build(quick):
        h = width // 4 if quick else width
        n = 64
        widths = (n, h, h, h, n)
        cov = _spd(n)
        t = Target(cov)
        ws = _wide_layers(widths)
        lr = default_lr(t, widths)
        steps = 4 if quick else 10
        fast = stepper(t, widths, ws, 0.0, lr, steps)

        def ref():
            reference.gd_step(ws, cov, 0.0, lr)

        rng = np.random.default_rng(0)
        A = rng.standard_normal((h, h))
        B = rng.standard_normal((h, n))

        def floor():
            _wide_floor(A, B, 2)

        return dict(bwfast=(fast, steps), reference=(ref, 1), floor=(floor, 1))

    return build


def _wide_layers(widths):
    """Balanced layers of a random end-to-end matrix at unit scale: dense
    h x h hidden layers that a GD step moves smoothly."""
    rng = np.random.default_rng(0)
    W0 = rng.standard_normal((widths[-1], widths[0])) / np.sqrt(widths[0])
    return balanced_weights(W0, widths)


@njit(**JIT)
def _wide_floor(A, B, layers):
    """The unavoidable GEMMs of one step through ``layers`` hidden h x h
    layers, called as the descent loop calls them: the prefix product
    W P, the backward product W^T B and the rank-d_0 update W += B P^T."""
    C = np.empty_like(B)
    for _ in range(layers):
        np.dot(A, B, C)
        np.dot(A.T, B, C)
        K.gemm_nt_update(A, B, B, -1e-30)


def _batched_sqrtm(quick):
    m = 10_000 if quick else 100_000
    rng = np.random.default_rng(0)
    X = rng.standard_normal((m, 4, 4))
    A = X @ np.swapaxes(X, -1, -2) + 0.1 * np.eye(4)

    def fast():
        sqrtm_psd(A)

    def numpy_eigh_route():
        w, Q = np.linalg.eigh(A)
        (Q * np.sqrt(np.maximum(w, 0))[..., None, :]) @ np.swapaxes(Q, -1, -2)

    def floor():
        np.linalg.eigh(A)

    return dict(bwfast=(fast, 1), reference=(numpy_eigh_route, 1),
                floor=(floor, 1))


def _bw(quick):
    n = 256 if quick else 1024
    A = _spd(n, 0)
    B = _spd(n, 1)

    def fast():
        bures_wasserstein_squared(A, B)

    def ref():
        reference.bures_wasserstein_squared(A, B)

    C = A @ B

    def floor():
        np.linalg.eigh(A)
        np.linalg.eigh(B)
        np.linalg.svd(C)

    return dict(bwfast=(fast, 1), reference=(ref, 1), floor=(floor, 1))


def _float32(quick):
    n = 256 if quick else 1024
    widths = (n, n, n, n)
    cov = _spd(n)
    t = Target(cov)
    w32 = _layers(widths, dtype=np.float32)
    w64 = _layers(widths)
    S = cov.astype(np.float32)
    G = _gemm(n, n, n, np.float32)

    def fast():
        loss_and_grad(w32, t, 0.5)

    def f64():
        loss_and_grad(w64, t, 0.5)

    def floor():
        np.linalg.eigh(S)
        for _ in range(11):
            G()

    return dict(bwfast=(fast, 1), reference=(f64, 1), floor=(floor, 1))


CASES = [
    Case("gd_step n=20 depth=10 tau=0", ">= 15x reference", _small_step(10, 0.0)),
    Case("gd_step n=20 depth=10 tau=0.5", ">= 15x reference", _small_step(10, 0.5)),
    Case("gd_step n=20 depth=100 tau=0", ">= 4x reference", _small_step(100, 0.0)),
    Case("gd_step n=20 depth=100 tau=0.5", ">= 4x reference",
         _small_step(100, 0.5)),
    Case("loss_and_grad tau=0.5 n=1024 depth=3", ">= 4x reference, <= 1.3x floor",
         _big_loss(0.5, False)),
    Case("loss_and_grad tau=0 widths=1024,64,64,1024", ">= 100x reference",
         _big_loss(0.0, True)),
    Case("gd_step n=64 width=2048 depth=4", "(4096 row: growth <= 4.5x)",
         _wide_step(2048)),
    Case("gd_step n=64 width=4096 depth=4", "<= 1.3x floor", _wide_step(4096)),
    Case("sqrtm_psd 100000 x 4x4", ">= 3x numpy eigh route", _batched_sqrtm),
    Case("bures_wasserstein n=1024", ">= 3x reference", _bw),
    Case("float32 loss_and_grad tau=0.5 n=1024", ">= 1.5x float64 (reference column)",
         _float32),
]


def run(names=None, quick=False, repeat=3):
    """Time each case; returns a list of dict rows (seconds per call)."""
    rows = []
    for case in CASES:
        if names and not any(s in case.name for s in names):
            continue
        fns = case.build(quick)
        row = dict(name=case.name, target=case.target)
        for key, (f, per) in fns.items():
            row[key] = best_time(f, repeat=1 if key == "reference" else repeat) / per
        row["speedup"] = row["reference"] / row["bwfast"]
        row["over_floor"] = row["bwfast"] / row["floor"]
        rows.append(row)
    return rows


def _rss_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def step_memory(width=4096, steps=3, quick=False, control=False):
    """Peak memory added by ``steps`` GD steps, and the weights' bytes.

    Measured in a fresh process (Linux): kernels are compiled first on a
    tiny network of the same types, the weights are built, the kernel's
    peak-RSS mark is reset (/proc/self/clear_refs), and the steps run.
    MALLOC_MMAP_THRESHOLD_ is pinned so that every large temporary is
    mapped and unmapped afresh rather than reused from freed heap, so the
    peak counts what the steps allocate, NumPy and Numba alike. With
    ``control`` an extra (h, h) array is allocated inside the window, to
    show that the method sees a temporary of one layer's size.
    Returns (peak bytes, weights bytes, h).
    """
    import json
    import os
    import subprocess
    import sys

    h = width // 4 if quick else width
    # the child reports on its stdout, the only channel back to this process
    code = (f"import json, sys, bwfast.bench as b; sys.stdout.write(json.dumps("
            f"b._step_memory_child({h}, {steps}, {control})) + chr(10))")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True,
                         capture_output=True, text=True).stdout
    peak, weights = json.loads(out.strip().splitlines()[-1])
    return peak, weights, h


def _step_memory_child(h, steps, control):
    t = Target(_spd(64))
    small = (64, 80, 80, 80, 64)
    stepper(t, small, _wide_layers(small), 0.0, default_lr(t, small), 2)()
    widths = (64, h, h, h, 64)
    ws = _wide_layers(widths)
    run = stepper(t, widths, ws, 0.0, default_lr(t, widths), steps)
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    run()
    if control:
        tmp = np.ones((h, h))
        del tmp
    peak = _rss_kib("VmHWM")
    return 1024 * max(peak - before, 0), sum(w.nbytes for w in ws)


def format_table(rows, quick=False):
    note = ("quick mode: sizes reduced (n / 4, batch / 10); names give the "
            "full sizes\n" if quick else "")
    head = (f"{'case':<42} {'bwfast':>10} {'reference':>10} {'floor':>10} "
            f"{'ref/bw':>7} {'bw/floor':>8}  target")
    lines = ([note.rstrip()] if note else []) + [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['name']:<42} {_fmt(r['bwfast'])} {_fmt(r['reference'])} "
            f"{_fmt(r['floor'])} {r['speedup']:>6.1f}x {r['over_floor']:>7.2f}x  "
            f"{r['target']}"
        )
    return "\n".join(lines)


def _fmt(seconds):
    if seconds >= 1:
        return f"{seconds:>8.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:>7.2f} ms"
    return f"{seconds * 1e6:>7.1f} us"


def scaling_figure(quick=False):
    """Figure of time against n for sqrtm_psd and bures_wasserstein, bwfast
    and the reference (matplotlib, off-screen)."""
    from matplotlib.figure import Figure

    sizes = [8, 32, 128, 256] if quick else [8, 32, 128, 256, 512, 1024]
    ops = {
        "sqrtm_psd": (sqrtm_psd, reference.sqrtm_psd, 1),
        "bures_wasserstein_squared": (
            bures_wasserstein_squared, reference.bures_wasserstein_squared, 2),
    }
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, (fast, ref, nargs)) in zip(axes, ops.items()):
        for label, f, style in (("bwfast", fast, "o-"), ("reference", ref, "s--")):
            times = []
            for n in sizes:
                args = [_spd(n, i) for i in range(nargs)]
                times.append(best_time(lambda f=f, args=args: f(*args),
                                       repeat=1 if n > 256 else 3))
            ax.loglog(sizes, times, style, label=label)
        ax.set_title(name)
        ax.set_xlabel("n")
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return fig


def plot_scaling(path, quick=False):
    """Save :func:`scaling_figure` as a PNG at ``path``."""
    scaling_figure(quick).savefig(path, dpi=110)
