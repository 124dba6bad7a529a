"""The ``bwfast`` command line: a thin shell over the public API."""

import argparse
import inspect
import json
import math
import os
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

__all__ = ["EXIT_CODES", "main"]

# Exit codes scripts can rely on. The training outcomes map from
# ``FitResult.status``; 2 is argparse's own code for bad usage.
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_STEP_LIMIT = 3
EXIT_DIVERGED = 4
EXIT_RANK_DROPPED = 5
EXIT_INTERRUPTED = 130

EXIT_CODES = {
    "converged": EXIT_OK,
    "step_limit": EXIT_STEP_LIMIT,
    "diverged": EXIT_DIVERGED,
    "rank_dropped": EXIT_RANK_DROPPED,
}

_EPILOG = """\
exit codes:
  0    converged
  1    runtime failure (numerical failure, output could not be written)
  2    bad usage or bad input (file, matrix, widths, option values)
  3    step limit reached before convergence
  4    diverged (loss not finite or growing; try a smaller --lr)
  5    rank dropped (the end-to-end matrix lost rank; try --tau > 0)
  130  interrupted
"""

# Files written under --out; none is overwritten without --force.
_HISTORY = "history.csv"
_WEIGHTS = "weights.npz"
_SUMMARY = "summary.json"

# Default hidden width of the default network n,h,h,n (capped at n).
_DEFAULT_HIDDEN = 16


class _UsageError(Exception):
    """Bad command line or bad input: one line on stderr, exit code 2."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage block and exits; bwfast reports one line
    # and lets main() return the exit code.
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def main(argv=None):
    """Run the ``bwfast`` command line.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name; ``sys.argv[1:]`` by default.

    Returns
    -------
    int
        The exit code (see ``bwfast --help``).
    """
    try:
        args = _build_parser().parse_args(argv)
        if args.command is None:
            raise _UsageError("no command given; try 'bwfast fit' or 'bwfast --help'")
        return args.run(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    except _UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except KeyboardInterrupt:
        print("\nbwfast: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `bwfast fit | head -1`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE


# --- parser ------------------------------------------------------------------


def _build_parser():
    parser = _Parser(
        prog="bwfast",
        description="Bures-Wasserstein kernels and deep linear generative networks.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    # Later commands (bench, critical-points, sweep) register here the same way.
    _add_fit(commands)
    _add_bench(commands)
    return parser


def _add_bench(commands):
    p = commands.add_parser(
        "bench",
        help="time bwfast against bwfast.reference and the LAPACK/GEMM floor",
        description="Time each operation for bwfast, the SciPy reference and "
        "the floor (the unavoidable LAPACK and GEMM calls of that operation, "
        "timed alone) in one run, and print the two ratios.",
    )
    p.add_argument("--quick", action="store_true",
                   help="smaller sizes, for a smoke run (seconds, not minutes)")
    p.add_argument("--only", metavar="TEXT", action="append", default=None,
                   help="run only the cases whose name contains TEXT (repeatable)")
    p.add_argument("--repeat", type=_positive_int, default=3,
                   help="best of this many rounds (default: 3)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--memory", action="store_true",
                   help="also measure the memory a wide GD step allocates")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="also draw time against size for sqrtm_psd and "
                   "bures_wasserstein, bwfast and the reference (matplotlib)")
    p.set_defaults(run=_run_bench)


def _run_bench(args):
    from bwfast import bench

    if args.plot is not None:
        plot = Path(args.plot)
        if plot.suffix.lower() != ".png":
            raise _UsageError(f"--plot must name a .png file; got '{plot}'")
        if plot.exists():
            raise _UsageError(f"--plot file '{plot}' exists; not overwritten")
    rows = bench.run(names=args.only, quick=args.quick, repeat=args.repeat)
    if not rows:
        raise _UsageError(f"--only {args.only} matches no benchmark case")
    extra = {}
    if args.memory:
        peak, weights, width = bench.step_memory(quick=args.quick)
        extra = {"step_peak_bytes": peak, "weights_bytes": weights,
                 "step_peak_fraction": peak / weights, "width": width}
    if args.json:
        print(json.dumps({"rows": rows, **extra}, indent=2))
    else:
        print(bench.format_table(rows, quick=args.quick))
        if extra:
            print(f"\nmemory added by 3 GD steps (width {extra['width']}, depth 4): "
                  f"{extra['step_peak_bytes'] / 2**20:.1f} MiB = "
                  f"{100 * extra['step_peak_fraction']:.1f}% of the weights' "
                  f"{extra['weights_bytes'] / 2**20:.0f} MiB")
    if args.plot is not None:
        bench.plot_scaling(args.plot, quick=args.quick)
        print(f"wrote {args.plot}", file=sys.stderr)
    return EXIT_OK


def _fit_defaults():
    from bwfast import fit

    return {name: p.default for name, p in inspect.signature(fit).parameters.items()}


def _add_fit(commands):
    defaults = _fit_defaults()
    p = commands.add_parser(
        "fit",
        help="train a deep linear network on a target covariance",
        description=textwrap.fill(
            "Train a deep linear generative network with the Bures-Wasserstein "
            "loss by gradient descent. Without --target it trains on the shipped "
            "covariance of the 8x8 handwritten digits (64 x 64, rank 61) with "
            "widths 64,16,16,64, i.e. it learns the best rank-16 Gaussian model.",
            width=79,
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=_run_fit)

    src = p.add_argument_group("target")
    src.add_argument(
        "--target",
        metavar="FILE",
        help=".npy, .npz or .csv file; default: the shipped digits covariance",
    )
    src.add_argument(
        "--kind",
        choices=("auto", "cov", "samples"),
        default="auto",
        help="read FILE as a covariance or as samples x features; auto: a square "
        "symmetric array is a covariance (default: auto)",
    )

    net = p.add_argument_group("network and descent")
    net.add_argument(
        "--widths",
        metavar="D0,...,DN",
        type=_widths,
        help="layer widths from latent to data; DN must equal the target "
        f"dimension n (default: n,h,h,n with h = min({_DEFAULT_HIDDEN}, rank of "
        "the target))",
    )
    net.add_argument(
        "--tau",
        type=_nonnegative_float,
        default=None,
        help=f"variance added to the model as tau I, >= 0 (default: {defaults['tau']})",
    )
    net.add_argument(
        "--lr",
        type=_positive_float,
        default=None,
        help="step size, > 0 (default: chosen from the target spectrum)",
    )
    net.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help=f"maximum number of gradient steps (default: {defaults['steps']})",
    )
    net.add_argument(
        "--tol",
        type=_nonnegative_float,
        default=None,
        help="converged when max_j ||dL/dW_j|| ||W_j|| <= TOL * tr(target) "
        "(default: 1e-7 in float64, 1e-5 with --float32)",
    )
    net.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=None,
        help=f"seed of the initialization (default: {defaults['seed']})",
    )
    net.add_argument(
        "--record-every",
        type=_positive_int,
        default=None,
        metavar="K",
        help=f"record the loss every K steps (default: {defaults['record_every']})",
    )
    net.add_argument(
        "--float32",
        action="store_true",
        help="train in float32 (default: float64)",
    )

    out = p.add_argument_group("output")
    out.add_argument(
        "--out",
        metavar="DIR",
        help=f"write {_HISTORY} (step,loss), {_WEIGHTS} and {_SUMMARY} to DIR",
    )
    out.add_argument(
        "--force", action="store_true", help="overwrite existing files in DIR"
    )
    out.add_argument(
        "--json", action="store_true", help="print the summary as JSON on stdout"
    )
    out.add_argument(
        "--quiet", action="store_true", help="no progress bar or notes on stderr"
    )


# --- option types --------------------------------------------------------------
# argparse turns the ValueError of a type function into
# "argument --tau: invalid _nonnegative_float value"; ArgumentTypeError keeps
# our message.


def _float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite; got {text!r}")
    return value


def _nonnegative_float(text):
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text!r}")
    return value


def _positive_float(text):
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text!r}")
    return value


def _int(text):
    # Accept 100000, 100_000 and 1e5, but not 2.5.
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value == int(value)):
        raise argparse.ArgumentTypeError(f"expected an integer; got {text!r}")
    return int(value)


def _positive_int(text):
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1; got {text!r}")
    return value


def _nonnegative_int(text):
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0; got {text!r}")
    return value


def _widths(text):
    parts = [part.strip() for part in text.split(",")]
    try:
        widths = tuple(int(part) for part in parts)
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        raise argparse.ArgumentTypeError(
            "expected at least two comma-separated positive integers such as "
            f"64,16,16,64; got {text!r}"
        )
    return widths


# --- fit -----------------------------------------------------------------------


def _run_fit(args):
    import bwfast

    started = time.perf_counter()

    # Validate everything before training: a bad option fails in a second.
    target, source, kind, notes = _fit_target(args)
    widths = _fit_widths(args.widths, target.n, target.rank)
    out_dir = None if args.out is None else Path(args.out)
    if out_dir is not None:
        _check_out_dir(out_dir, args.force)

    # Only what the user set: every other default is fit's own.
    kwargs = {
        name: getattr(args, name)
        for name in ("tau", "lr", "steps", "tol", "seed", "record_every")
        if getattr(args, name) is not None
    }
    if args.float32:
        kwargs["dtype"] = np.float32
    max_steps = kwargs.get("steps", _fit_defaults()["steps"])

    notes.append(
        f"bwfast fit: target {source} ({kind}, n = {target.n}, "
        f"rank {target.rank}), widths {_join(widths)}"
    )
    for line in notes:
        _note(args, line)

    # Train; warnings become one stderr line each instead of tracebacks.
    try:
        with (
            _Progress(max_steps, disable=args.quiet) as progress,
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            result = bwfast.fit(target, widths, callback=progress, **kwargs)
    except np.linalg.LinAlgError as exc:  # before ValueError, its base class
        return _fail(f"numerical failure: {_one_line(exc)}; try a smaller --lr",
                     EXIT_FAILURE)
    except (ValueError, TypeError) as exc:
        raise _UsageError(_one_line(exc)) from exc
    for w in _unique_warnings(caught):
        print(f"bwfast: warning: {_one_line(w.message)}", file=sys.stderr)

    # Report: files first, so the summary can list them. A failed write
    # still prints the summary: the run is not lost.
    code = EXIT_CODES.get(_status(result), EXIT_FAILURE)
    summary = _summary(result, source, kind, target, args, code)
    summary["total_time"] = time.perf_counter() - started
    if out_dir is not None:
        try:
            summary["files"] = _write_outputs(out_dir, result, summary, args.force)
        except OSError as exc:
            code = _fail(f"--out: cannot write results: {_one_line(exc)}", EXIT_FAILURE)
            summary["exit_code"] = code
    if args.json:
        print(json.dumps(_jsonable(summary), indent=2))
    else:
        print(_format_summary(summary))
    return code


def _fit_target(args):
    """(target, source, kind, notes) from --target and --kind."""
    from bwfast.io import _load, default_target

    try:
        if args.target is None:
            return default_target(), "digits (shipped)", "cov", []
        target, kind, (m, n) = _load(args.target, args.kind)
    except (OSError, ValueError, TypeError) as exc:
        raise _UsageError(_one_line(exc)) from exc
    notes = []
    if args.kind == "auto" and kind == "samples":
        hint = ""
        if m == n:
            hint = "; it is square but not symmetric (--kind cov: read as covariance)"
        notes.append(
            f"bwfast fit: read {args.target} as {m} samples x {n} features{hint}"
        )
    return target, args.target, kind, notes


def _fit_widths(widths, n, rank=None):
    if widths is None:
        # a bottleneck no wider than the target's rank keeps the optimum
        # non-degenerate (a wider one leaves directions that decay only
        # polynomially under gradient descent)
        h = max(1, min(_DEFAULT_HIDDEN, n, n if rank is None else rank))
        return (n, h, h, n)
    if widths[-1] != n:
        raise _UsageError(
            f"--widths: the last width must equal the target dimension {n}; "
            f"got {_join(widths)}"
        )
    return widths


class _Progress:
    """tqdm bar on stderr fed by fit's callback(step, loss)."""

    def __init__(self, total, disable):
        self.total = total
        # disable=None lets tqdm switch itself off when stderr is no terminal.
        self.disable = True if disable else None

    def __enter__(self):
        from tqdm import tqdm

        self.bar = tqdm(
            total=self.total,
            desc="steps (of the limit)",
            unit="step",
            file=sys.stderr,
            leave=False,
            disable=self.disable,
            dynamic_ncols=True,
        )
        return self

    def __call__(self, step, loss):
        self.bar.set_postfix_str(f"loss {loss:.6g}", refresh=False)
        self.bar.update(max(0, int(step) - self.bar.n))

    def __exit__(self, *exc):
        self.bar.close()
        return False


def _status(result):
    status = result.status
    return str(getattr(status, "value", status))


def _summary(result, source, kind, target, args, code):
    defaults = _fit_defaults()
    return {
        "target": source,
        "kind": kind,
        "n": int(target.n),
        "target_rank": int(target.rank),
        "widths": [int(d) for d in result.widths],
        "k": int(result.k),
        "tau": float(result.tau),
        "lr": float(result.lr),
        "dtype": "float32" if args.float32 else "float64",
        "seed": defaults["seed"] if args.seed is None else args.seed,
        "tol": float(result.tol),
        "max_steps": defaults["steps"] if args.steps is None else args.steps,
        "status": _status(result),
        "message": str(result.message),
        "exit_code": code,
        "loss": float(result.loss),
        "optimum": float(result.optimum),
        "gap": float(result.gap),
        "relative_gap": float(result.relative_gap),
        "steps": int(result.steps),
        "balancedness": float(result.balancedness),
        "wall_time": float(result.wall_time),
    }


def _format_summary(s):
    rows = [
        ("status", f"{s['status']} ({s['message']})" if s["message"] else s["status"]),
        ("final loss", f"{s['loss']:.10g}"),
        ("optimum", f"{s['optimum']:.10g}"),
        ("relative gap", f"{s['relative_gap']:.3e}"),
        ("steps", f"{s['steps']}"),
        ("wall time", f"{s['wall_time']:.3f} s (total {s['total_time']:.3f} s)"),
        ("balancedness", f"{s['balancedness']:.3e}"),
        ("lr", f"{s['lr']:.6g}"),
    ]
    if "files" in s:
        rows.append(("written", ", ".join(s["files"])))
    return "\n".join(f"{name:<14}{value}" for name, value in rows)


# --- output files ----------------------------------------------------------------


def _check_out_dir(out_dir, force):
    if out_dir.exists() and not out_dir.is_dir():
        raise _UsageError(f"--out: '{out_dir}' exists and is not a directory")
    try:  # now, so that an unusable DIR fails before training
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(
            f"--out: cannot create '{out_dir}': {_one_line(exc)}"
        ) from exc
    if force:
        return
    for name in (_HISTORY, _WEIGHTS, _SUMMARY):
        if (out_dir / name).exists():
            raise _UsageError(
                f"--out: '{out_dir / name}' already exists; pass --force to "
                "overwrite it"
            )


def _write_outputs(out_dir, result, summary, force):
    _check_out_dir(out_dir, force)  # again: the run may have taken a while
    paths = [out_dir / _HISTORY, out_dir / _WEIGHTS, out_dir / _SUMMARY]
    summary = dict(summary, files=[str(p) for p in paths])

    # Each file goes to a temporary name first: a crash never leaves a
    # half-written file under the final name.
    def write(path, save):
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            save(tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    history = np.column_stack([result.loss_steps, result.losses])
    write(paths[0], lambda p: _save_history(p, history))
    weights = {f"W{j}": np.asarray(w) for j, w in enumerate(result.weights, 1)}
    write(paths[1], lambda p: _save_npz(p, weights))
    text = json.dumps(_jsonable(summary), indent=2) + "\n"
    write(paths[2], lambda p: p.write_text(text, encoding="utf-8"))
    return summary["files"]


def _save_history(path, history):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("step,loss\n")
        f.writelines(f"{int(step)},{float(loss)!r}\n" for step, loss in history)


def _save_npz(path, arrays):
    with open(path, "wb") as f:  # a file object: np.savez would add ".npz"
        np.savez(f, **arrays)


# --- helpers -------------------------------------------------------------------


def _jsonable(value):
    # Strict JSON has no NaN or inf: a diverged run reports null.
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _unique_warnings(caught):
    seen = set()
    for w in caught:
        key = (w.category, str(w.message))
        if key not in seen:
            seen.add(key)
            yield w


def _note(args, text):
    if not args.quiet:
        print(text, file=sys.stderr)


def _fail(message, code):
    print(f"bwfast: error: {_one_line(message)}", file=sys.stderr)
    return code


def _one_line(message):
    text = str(message).strip() or type(message).__name__
    return " ".join(text.split())


def _join(widths):
    return ",".join(str(d) for d in widths)


def _version():
    from bwfast import __version__

    return f"bwfast {__version__}"
