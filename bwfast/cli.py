"""The ``bwfast`` command line: a thin shell over the public API.

Only the standard library is imported at module level: NumPy and bwfast
load inside main(), so that Ctrl-C during those imports still ends in one
line and exit code 130, and no error ever shows a traceback.
"""

import argparse
import inspect
import itertools
import json
import math
import os
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

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
  6    bwfast sweep: every configuration is stored, some runs failed
  130  interrupted

Output that cannot be written to stdout is exit code 1 with one error line;
a closed pipe (as in 'bwfast fit | head -c0') exits 1 silently.
"""

_FIT_EPILOG = """summary:
  'wall time' is the gradient-descent loop alone, JIT compilation or cache
  loading of the kernels on first use included; 'total time' is the whole
  command up to the summary: reading the target, checks, setup and the
  descent (Python start-up and writing --out files excluded). --json reports
  them as wall_time and total_time.

""" + _EPILOG

# Files written under --out; none is overwritten without --force.
_HISTORY = "history.csv"
_WEIGHTS = "weights.npz"
_SUMMARY = "summary.json"

# Default hidden width of the default network n,h,h,n (capped at n).
_DEFAULT_HIDDEN = 16

# Bounds checked while parsing, so that absurd values fail at once with one
# line instead of an overflow or memory error from NumPy or the compiled
# kernels (which work in int64).
_MAX_WIDTH = 2**31 - 1
_MAX_WEIGHTS = 2**31  # floats in all layers together (16 GiB in float64)
_MAX_STEPS = 10**12  # also bounds --record-every
_MAX_HISTORY = 2**27  # recorded losses, steps // record_every + 1 (1 GiB)


class _UsageError(Exception):
    """Bad command line or bad input: one line on stderr, exit code 2."""


class _StdoutError(Exception):
    """Writing to stdout failed for another reason than a closed pipe."""


class _Parser(argparse.ArgumentParser):
    # argparse prints the usage block and exits; bwfast reports one line
    # and lets main() return the exit code.
    def error(self, message):
        raise _UsageError(f"{message} (see '{self.prog} --help')")

    # argparse drops write errors silently (--help > /dev/full printed
    # nothing and exited 0); stdout failures are reported like any other.
    def _print_message(self, message, file=None):
        if not message:
            return
        if file is None or file is sys.stderr:
            _stderr(message.rstrip("\n"))
        elif file is sys.stdout:
            _write_stdout(message, "the help" if "usage:" in message else "the version")
        else:
            super()._print_message(message, file)


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
    started = time.perf_counter()
    try:
        try:
            # builds the parser, which imports bwfast (NumPy, Numba): inside
            # the try, so that Ctrl-C during the imports is handled too
            parser = _build_parser()
            args, extras = parser.parse_known_args(argv)
            if extras:
                prog = "bwfast" if args.command is None else f"bwfast {args.command}"
                raise _UsageError(
                    f"unrecognized arguments: {' '.join(extras)} "
                    f"(see '{prog} --help')"
                )
            if args.command is None:
                raise _UsageError(
                    "no command given; try 'bwfast fit' or 'bwfast --help'"
                )
            args.started = started
            return args.run(args)
        except SystemExit as exc:  # --help and --version, already printed
            _flush_stdout("the help")
            return exc.code if isinstance(exc.code, int) else EXIT_OK
    except _UsageError as exc:
        return _fail(exc, EXIT_USAGE)
    except KeyboardInterrupt:
        _forget_unhandled_interrupt()
        # a terminal shows "^C" without a newline: end that line first
        _stderr(("\n" if _isatty(sys.stderr) else "") + "bwfast: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader went away (e.g. `bwfast fit | head -c0`): stop quietly,
        # and let the final flush at exit go to /dev/null, not to the pipe
        _silence_stdout()
        return EXIT_FAILURE
    except _StdoutError as exc:
        _silence_stdout()
        return _fail(exc, EXIT_FAILURE)
    except MemoryError as exc:
        detail = f" ({_one_line(exc)})" if str(exc) else ""
        return _fail(f"out of memory{detail}", EXIT_FAILURE)
    except Exception as exc:  # noqa: BLE001 - the last resort: never a traceback
        return _fail(
            f"unexpected {type(exc).__name__}: {_one_line(exc)} "
            "(this is a bug in bwfast; please report it)",
            EXIT_FAILURE,
        )


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
    _add_critical_points(commands)
    _add_sweep(commands)
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
                   help="smaller sizes, for a smoke run (seconds once the kernels are "
                   "compiled; about a minute on first use)")
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
        _check_new_png(args.plot, "--plot")
    rows = bench.run(names=args.only, quick=args.quick, repeat=args.repeat)
    if not rows:
        raise _UsageError(f"--only {args.only} matches no benchmark case")
    extra = {}
    if args.memory:
        peak, weights, width = bench.step_memory(quick=args.quick)
        extra = {"step_peak_bytes": peak, "weights_bytes": weights,
                 "step_peak_fraction": peak / weights, "width": width}
    if args.json:
        _stdout(json.dumps({"quick": bool(args.quick), "rows": rows, **extra},
                           indent=2), "the results")
    else:
        text = bench.format_table(rows, quick=args.quick)
        if extra:
            text += (f"\n\nmemory added by 3 GD steps (width {extra['width']}, "
                     f"depth 4): {extra['step_peak_bytes'] / 2**20:.1f} MiB = "
                     f"{100 * extra['step_peak_fraction']:.1f}% of the weights' "
                     f"{extra['weights_bytes'] / 2**20:.0f} MiB")
        _stdout(text, "the results")
    if args.plot is not None:
        _save_figure(args.plot, lambda: bench.scaling_figure(quick=args.quick))
        _stderr(f"wrote {args.plot}")
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
        epilog=_FIT_EPILOG,
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
        default=None,
        help="read FILE as a covariance or as samples x features; auto: a "
        "square array symmetric up to rounding is a covariance, a square "
        "array that is not symmetric is refused, any other is samples; a "
        ".npz key 'cov' or 'samples' decides first (default: auto; only "
        "with --target)",
    )

    net = p.add_argument_group("network and descent")
    net.add_argument(
        "--widths",
        metavar="D0,...,DN",
        type=_widths,
        help="layer widths from latent to data; DN must equal the target "
        f"dimension n; each at most {_MAX_WIDTH}, and at most {_MAX_WEIGHTS} "
        f"weights in all (default: n,h,h,n with h = min({_DEFAULT_HIDDEN}, rank "
        "of the target))",
    )
    net.add_argument(
        "--loss",
        choices=("bw", "frobenius"),
        default=None,
        help="objective: the Bures-Wasserstein loss (default) or the square "
        "loss ||W W^T + tau I - target||_F^2, the classical baseline",
    )
    net.add_argument(
        "--method",
        choices=("gd", "flow"),
        default=None,
        help="gd: gradient descent with step --lr (default); flow: the "
        "gradient ODE integrated by scipy's solve_ivp up to time steps * lr, "
        "float64 only",
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
        type=_bounded_int(0, _MAX_STEPS),
        default=None,
        help="maximum number of gradient steps, 0 to 1e12; 0 evaluates the "
        f"initial loss (default: {defaults['steps']})",
    )
    net.add_argument(
        "--tol",
        type=_nonnegative_float,
        default=None,
        help="converged when max_j ||dL/dW_j|| ||W_j|| <= TOL * (tr(target) + n tau) "
        "(default: 1e-7 in float64, 1e-5 with --float32)",
    )
    net.add_argument(
        "--init",
        choices=_inits(),
        default=None,
        help="initialization (default: balanced): balanced, a random balanced "
        "factorization; margin, balanced near the optimum with margin "
        "sqrt(lambda_k) - BW > 0 (needs a wide enough bottleneck, e.g. k = n); "
        "orthogonal or gaussian, scaled per-layer orthogonal or Gaussian "
        "matrices (see bwfast.theory.init_weights)",
    )
    net.add_argument(
        "--seed",
        type=_nonnegative_int,
        default=None,
        help=f"seed of the initialization (default: {defaults['seed']})",
    )
    net.add_argument(
        "--record-every",
        type=_bounded_int(1, _MAX_STEPS),
        default=None,
        metavar="K",
        help="record the loss and check convergence every K steps, 1 to 1e12; "
        f"at most {_MAX_HISTORY} losses are recorded (default: "
        f"{defaults['record_every']})",
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
        help=f"write {_HISTORY} (step,loss), {_WEIGHTS} and {_SUMMARY} to DIR, "
        "created if needed; checked for writing before training",
    )
    out.add_argument(
        "--force",
        action="store_true",
        help="replace existing files in DIR and an existing --plot FILE "
        "(never a symbolic link or a directory; only with --out or --plot)",
    )
    out.add_argument(
        "--plot",
        metavar="FILE.png",
        help="draw the log-gap to the optimum, the learned spectrum against "
        "the target's and the balancedness defect (matplotlib); an existing "
        "FILE is replaced only with --force",
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


def _float_above(low, strict):
    """Parser of a finite number >= low (> low when strict)."""

    def parse(text):
        value = _float(text)
        if value < low or (strict and value == low):
            rule = ">" if strict else ">="
            raise argparse.ArgumentTypeError(f"must be {rule} {low:g}; got {text!r}")
        return value

    parse.__name__ = f"number {'>' if strict else '>='} {low:g}"
    return parse


_nonnegative_float = _float_above(0, strict=False)
_positive_float = _float_above(0, strict=True)


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


def _bounded_int(low, high=None):
    """Parser of an integer from low to high (no upper bound if None)."""

    def parse(text):
        value = _int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}; got {text!r}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(
                f"must be <= {high:.0e} ({high}); got {text!r}"
            )
        return value

    parse.__name__ = (f"integer >= {low}" if high is None
                      else f"integer from {low} to {high}")
    return parse


_positive_int = _bounded_int(1)
_nonnegative_int = _bounded_int(0)


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
    if max(widths) > _MAX_WIDTH:
        raise argparse.ArgumentTypeError(
            f"each width must be <= {_MAX_WIDTH} (2**31 - 1); got {max(widths)}"
        )
    return widths


# --- fit -----------------------------------------------------------------------


def _run_fit(args):
    import numpy as np

    import bwfast

    started = getattr(args, "started", None) or time.perf_counter()

    # Validate everything before training: a bad option fails in a second.
    _check_fit_options(args)
    target, source, kind, notes = _fit_target(args)
    widths = _fit_widths(args.widths, target.n, target.rank, args.float32)
    out_dir = None if args.out is None else Path(args.out)
    if out_dir is not None:
        _check_out_dir(out_dir, args.force)
    if args.plot is not None:
        _check_new_png(args.plot, "--plot", args.force)

    # Only what the user set: every other default is fit's own.
    kwargs = {
        name: getattr(args, name)
        for name in ("loss", "tau", "lr", "steps", "tol", "seed", "record_every",
                     "method", "init")
        if getattr(args, name) is not None
    }
    # the defect panel needs the diagnostics; without a plot nothing shows
    # them, and a loop compiled without them starts faster
    kwargs["diagnostics"] = args.plot is not None
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
    except MemoryError:
        count = _weight_count(widths)
        return _fail(
            f"out of memory training --widths {_join(widths)} ({count} weights, "
            f"{_gib(count, args.float32)} for the weights alone); try smaller "
            "--widths",
            EXIT_FAILURE,
        )
    for w in _unique_warnings(caught):
        _stderr(f"bwfast: warning: {_one_line(w.message)}")

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
    if args.plot is not None:
        try:
            _save_figure(args.plot, lambda: _run_plot(result, target),
                         args.force)
            summary.setdefault("files", []).append(args.plot)
        except (OSError, ImportError) as exc:
            code = _fail(f"--plot: cannot write '{args.plot}': {_one_line(exc)}",
                         EXIT_FAILURE)
            summary["exit_code"] = code
    if args.json:
        _stdout(json.dumps(_jsonable(summary), indent=2), "the summary")
    else:
        _stdout(_format_summary(summary), "the summary")
    return code


def _run_plot(result, target):
    from bwfast.plots import run_figure

    return run_figure(result, target)


def _check_new_png(path, flag, force=False):
    """Refuse a plot path that is not .png, exists (unless ``force`` and a
    regular file), or cannot be created, and a plot without matplotlib (an
    optional dependency), before training."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise _UsageError(
            f"{flag} needs matplotlib, which is not installed: "
            "pip install matplotlib (or pip install 'bwfast[sweep]')")
    plot = Path(path)
    if plot.suffix.lower() != ".png":
        raise _UsageError(f"{flag} must name a .png file; got '{plot}'")
    if os.path.lexists(plot):  # a dangling link counts too
        if plot.is_symlink() or not plot.is_file():
            raise _UsageError(
                f"{flag} '{plot}' exists and is a symbolic link or not a "
                "regular file; never replaced, even with --force")
        if not force:
            raise _UsageError(f"{flag} file '{plot}' exists; not overwritten "
                              "(pass --force to replace it)")
    parent = plot.parent if str(plot.parent) else Path(".")
    if not parent.is_dir():
        raise _UsageError(f"{flag}: directory '{parent}' does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise _UsageError(f"{flag}: cannot create files in '{parent}'")


def _save_figure(path, draw, force=False):
    """Draw a figure and save it as ``path`` through a temporary file: a
    rename over a regular file with ``force``, else a new name only, never
    replacing anything that appeared there."""
    plot = Path(path)
    fd, tmp = tempfile.mkstemp(dir=plot.parent if str(plot.parent) else ".",
                               prefix=_TMP_PREFIX, suffix=".png")
    tmp = Path(tmp)
    try:
        os.close(fd)
        draw().savefig(tmp, format="png", dpi=100)
        os.chmod(tmp, 0o666 & ~_umask())
        _install(tmp, plot, force=force)
    finally:
        tmp.unlink(missing_ok=True)


def _check_fit_options(args):
    """Refuse options that would be ignored, and runs too big to record."""
    if args.force and args.out is None and args.plot is None:
        raise _UsageError(
            "--force: applies only with --out DIR or --plot FILE (it allows "
            "replacing files there); pass one of them or drop --force"
        )
    if args.method == "flow" and args.float32:
        raise _UsageError(
            "--method flow: the ODE solver integrates in float64; drop "
            "--float32 or use --method gd")
    if args.kind is not None and args.target is None:
        raise _UsageError(
            f"--kind {args.kind}: applies only with --target FILE (the shipped "
            "target is a covariance); pass --target FILE or drop --kind"
        )
    defaults = _fit_defaults()
    steps = defaults["steps"] if args.steps is None else args.steps
    every = defaults["record_every"] if args.record_every is None else args.record_every
    records = steps // every + 1
    if records > _MAX_HISTORY:
        least = -(-steps // (_MAX_HISTORY - 1))  # ceil
        raise _UsageError(
            f"--steps {steps} with --record-every {every} would record {records} "
            f"losses (at most {_MAX_HISTORY}); pass --record-every {least} or "
            "more, or fewer --steps"
        )
    if args.widths is not None:
        _check_weight_count(args.widths, args.float32)


def _fit_target(args, command="fit"):
    """(target, source, kind, notes) from --target and --kind."""
    from bwfast.io import _load, default_target

    kind = "auto" if args.kind is None else args.kind
    try:
        if args.target is None:
            return default_target(), "digits (shipped)", "cov", []
        target, kind_read, (m, n) = _load(args.target, kind, flag="--kind")
    except (OSError, ValueError, TypeError) as exc:
        raise _UsageError(_one_line(exc)) from exc
    notes = []
    if kind == "auto" and kind_read == "samples":
        notes.append(
            f"bwfast {command}: read {args.target} as {m} samples x {n} features"
        )
    return target, args.target, kind_read, notes


def _fit_widths(widths, n, rank=None, float32=False):
    if widths is None:
        # a bottleneck no wider than the target's rank keeps the optimum
        # non-degenerate (a wider one leaves directions that decay only
        # polynomially under gradient descent)
        h = max(1, min(_DEFAULT_HIDDEN, n, n if rank is None else rank))
        widths = (n, h, h, n)
    elif widths[-1] != n:
        raise _UsageError(
            f"--widths: the last width must equal the target dimension {n}; "
            f"got {_join(widths)}"
        )
    _check_weight_count(widths, float32)
    return widths


def _weight_count(widths):
    return sum(a * b for a, b in itertools.pairwise(widths))


def _gib(count, float32):
    return f"{count * (4 if float32 else 8) / 2**30:.1f} GiB in " + (
        "float32" if float32 else "float64"
    )


def _check_weight_count(widths, float32):
    count = _weight_count(widths)
    if count > _MAX_WEIGHTS:
        raise _UsageError(
            f"--widths {_join(widths)}: {count} weights in all would need "
            f"{_gib(count, float32)}; at most {_MAX_WEIGHTS} (2**31) weights "
            "are allowed"
        )


class _Progress:
    """tqdm bar on stderr fed by fit's callback(step, loss), about every 0.2 s."""

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
        "loss_function": str(result.objective),
        "tau": float(result.tau),
        "lr": float(result.lr),
        "dtype": "float32" if args.float32 else "float64",
        "seed": defaults["seed"] if args.seed is None else args.seed,
        "init": defaults["init"] if args.init is None else args.init,
        "tol": float(result.tol),
        "max_steps": defaults["steps"] if args.steps is None else args.steps,
        "record_every": (
            defaults["record_every"] if args.record_every is None
            else args.record_every
        ),
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
        "method": str(result.method),
        "margin": float(result.margin),
        "predicted_rate": float(result.predicted_rate),
        "prediction": str(result.prediction),
        "observed_rate": float(result.observed_rate),
        "observed_time_rate": float(result.observed_time_rate),
        "rate_ratio": float(result.rate_ratio),
    }


def _format_rates(s):
    unit = "time" if s["method"] == "flow" else "step"
    obs = s["observed_rate"]
    text = (f"observed {obs:.4g} per {unit}" if math.isfinite(obs)
            else "observed: not measurable (too few points above rounding)")
    if s["method"] != "flow" and math.isfinite(obs):
        text += f" ({s['observed_time_rate']:.4g} per unit time)"
    pred = s["predicted_rate"]
    if math.isfinite(pred):
        text += f"; predicted (flow bound) {pred:.4g} per unit time"
        if math.isfinite(s["rate_ratio"]):
            text += f", observed / predicted = {s['rate_ratio']:.3g}"
    else:
        text += f"; no prediction: {s['prediction']}"
    return text


def _format_summary(s):
    rows = [
        ("status", f"{s['status']} ({s['message']})" if s["message"] else s["status"]),
        ("objective", s["loss_function"]),
        ("final loss", f"{s['loss']:.10g}"),
        ("optimum", f"{s['optimum']:.10g}"),
        ("relative gap", f"{s['relative_gap']:.3e}"),
        ("steps", f"{s['steps']}"),
        ("wall time", f"{s['wall_time']:.3f} s in the descent loop"),
        ("total time", f"{s['total_time']:.3f} s for the whole command"),
        ("balancedness", f"{s['balancedness']:.3e} (relative: max_j "
                         "||W_{j+1}^T W_{j+1} - W_j W_j^T|| / ||W_j W_j^T||)"),
        ("lr", f"{s['lr']:.6g}"),
        ("margin", f"{s['margin']:.4g} at the start "
                   "(sqrt(lambda_k) - BW(W W^T + tau I, target))"),
        ("rate", _format_rates(s)),
    ]
    if "files" in s:
        rows.append(("written", ", ".join(s["files"])))
    return "\n".join(f"{name:<14}{value}" for name, value in rows)


# --- critical-points -------------------------------------------------------------

_CRITICAL_EPILOG = """\
table:
  J is the index set of the critical point Omega_J diag(lambda_J - tau)
  Omega_J^T: 0-based indices into the target's eigenvalues sorted in
  descending order, written as ranges (0-2,5 is {0, 1, 2, 5}). 'dim' is the
  dimension of the manifold of critical points a repeated eigenvalue makes
  (0: an isolated point). 'rel. gap' is (loss - optimum) / optimum (divided
  by the trace of the target instead when the optimum is 0).

exit codes:
  0    the table was printed
  1    runtime failure (output could not be written)
  2    bad usage or bad input (file, matrix, option values)
  130  interrupted
"""


def _inits():
    from bwfast.theory import INITS

    return INITS


def _add_critical_points(commands):
    p = commands.add_parser(
        "critical-points",
        help="list the critical points of the BW loss and their losses",
        description=textwrap.fill(
            "List the function-space critical points of the Bures-Wasserstein "
            "loss BW^2(Sigma + tau I, target) over rank(Sigma) <= K, "
            "with their losses, their gap to the optimum and which one is the "
            "global minimum, lowest loss first.",
            width=79,
        ),
        epilog=_CRITICAL_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(run=_run_critical_points)
    p.add_argument(
        "--target", metavar="FILE|default", default=None,
        help=".npy, .npz or .csv file, or 'default' for the shipped digits "
        "covariance (the default; a file named default is ./default)",
    )
    p.add_argument(
        "--kind", choices=("auto", "cov", "samples"), default=None,
        help="read FILE as a covariance or as samples x features, as for "
        "'bwfast fit' (default: auto; only with --target FILE)",
    )
    p.add_argument("--k", type=_nonnegative_int, required=True,
                   help="rank bound, the minimum width of the network, 0 to n")
    p.add_argument("--tau", type=_nonnegative_float, default=0.0,
                   help="variance added to the model as tau I, >= 0 (default: 0)")
    p.add_argument("--max-count", type=_nonnegative_int, default=20, metavar="M",
                   help="print at most M points (default: 20; the total grows "
                   "like n choose k)")
    p.add_argument("--order", choices=("loss", "size"), default="loss",
                   help="loss: increasing loss (default); size: by rank, then "
                   "by index set")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--quiet", action="store_true", help="no notes on stderr")


def _run_critical_points(args):
    from bwfast import theory
    from bwfast.network import check_tau

    if args.target == "default":
        if args.kind is not None:
            raise _UsageError(
                f"--kind {args.kind}: applies only with --target FILE (the "
                "shipped target is a covariance); drop --kind"
            )
        args.target = None
    elif args.target is None and args.kind is not None:
        raise _UsageError(
            f"--kind {args.kind}: applies only with --target FILE; pass "
            "--target FILE or drop --kind"
        )
    target, source, _, notes = _fit_target(args, "critical-points")
    for line in notes:
        _note(args, line)
    if args.k > target.n:
        raise _UsageError(
            f"--k must be <= n = {target.n} (the target dimension); got {args.k}"
        )
    try:
        check_tau(args.tau)
    except ValueError as exc:
        raise _UsageError(_one_line(exc).replace("`tau`", "--tau")) from exc
    try:
        total = theory.count_critical_points(target, args.k, args.tau)
        best = next(theory.critical_points(target, args.k, args.tau))
        points = list(theory.critical_points(
            target, args.k, args.tau, max_count=args.max_count, order=args.order))
    except ValueError as exc:  # bad input the checks above did not name
        raise _UsageError(_one_line(exc)) from exc
    rows = [
        {"index_set": list(p.index_set), "rank": p.rank, "loss": p.loss,
         "relative_gap": p.relative_gap, "dimension": p.dimension,
         "global_minimum": p.is_global_minimum}
        for p in points
    ]
    head = {"target": source, "n": int(target.n), "target_rank": int(target.rank),
            "k": args.k, "tau": args.tau, "optimum": best.optimum,
            "count": total, "shown": len(rows), "order": args.order}
    if args.json:
        _stdout(json.dumps(_jsonable(dict(head, points=rows)), indent=2),
                "the table")
    else:
        _stdout(_format_critical(head, rows), "the table")
    return EXIT_OK


def _ranges(J):
    """(0, 1, 2, 5) -> '0-2,5'; () -> '{}'."""
    parts, i = [], 0
    while i < len(J):
        j = i
        while j + 1 < len(J) and J[j + 1] == J[j] + 1:
            j += 1
        parts.append(str(J[i]) if i == j else f"{J[i]}-{J[j]}")
        i = j + 1
    return ",".join(parts) or "{}"


def _format_critical(head, rows):
    lines = [
        f"critical points of BW^2(Sigma + tau I, target), rank(Sigma) <= "
        f"{head['k']}: target {head['target']} (n = {head['n']}, rank "
        f"{head['target_rank']}), tau = {head['tau']:g}",
        f"optimum {head['optimum']:.10g}; {head['shown']} of {head['count']} "
        f"shown, by {head['order']}",
        "",
    ]
    sets = [_ranges(r["index_set"]) for r in rows]
    w = max([len("J")] + [len(x) for x in sets])
    lines.append(f"{'J':<{w}}  {'rank':>4}  {'loss':>16}  {'rel. gap':>10}  "
                 f"{'dim':>4}  global min")
    for x, r in zip(sets, rows):
        lines.append(
            f"{x:<{w}}  {r['rank']:>4}  {r['loss']:>16.10g}  "
            f"{r['relative_gap']:>10.3e}  {r['dimension']:>4}  "
            + ("yes" if r["global_minimum"] else "no")
        )
    return "\n".join(lines)


# --- output files ----------------------------------------------------------------
# Results go to unique temporary files in DIR (never a fixed name, which
# could be a user's file) that are then renamed over the final names. A
# rename replaces a symbolic link itself and never writes through it, and
# existing paths are checked with lexists, which sees dangling links.

_TMP_PREFIX = ".bwfast-"
_TMP_SUFFIX = ".tmp"


def _check_out_dir(out_dir, force):
    """Create DIR if needed, check that it takes new files, and that no result
    would replace a path it must not (any path without --force; a symbolic
    link or anything but a regular file even with it)."""
    if os.path.lexists(out_dir) and not out_dir.is_dir():
        what = "is a dangling symbolic link" if out_dir.is_symlink() else (
            "exists and is not a directory"
        )
        raise _UsageError(f"--out: '{out_dir}' {what}")
    try:  # now, so that an unusable DIR fails before training
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _UsageError(
            f"--out: cannot create '{out_dir}': {_one_line(exc)}"
        ) from exc
    try:
        fd, probe = tempfile.mkstemp(
            dir=out_dir, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX
        )
    except OSError as exc:
        # strerror: the reason without the random name of the probe file
        reason = exc.strerror or _one_line(exc)
        raise _UsageError(
            f"--out: cannot write files in '{out_dir}': {reason}"
        ) from exc
    os.close(fd)
    try:
        os.unlink(probe)
    except OSError:
        pass
    for name in (_HISTORY, _WEIGHTS, _SUMMARY):
        path = out_dir / name
        if not os.path.lexists(path):
            continue
        if path.is_symlink():
            raise _UsageError(
                f"--out: '{path}' is a symbolic link; bwfast never replaces "
                "one, even with --force (remove it or choose another DIR)"
            )
        if not path.is_file():
            raise _UsageError(
                f"--out: '{path}' exists and is not a regular file; not "
                "replaced, even with --force"
            )
        if not force:
            raise _UsageError(
                f"--out: '{path}' already exists; pass --force to "
                "overwrite it"
            )


def _write_outputs(out_dir, result, summary, force):
    import numpy as np

    # Again: the run may have taken a while. Now a failure to write, which
    # still prints the summary, not bad usage.
    try:
        _check_out_dir(out_dir, force)
    except _UsageError as exc:
        raise OSError(str(exc).removeprefix("--out: ")) from None
    paths = [out_dir / _HISTORY, out_dir / _WEIGHTS, out_dir / _SUMMARY]
    summary = dict(summary, files=[str(p) for p in paths])
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files: use the usual mode

    # Each file goes to a temporary name first: a crash never leaves a
    # half-written file under the final name.
    def write(path, save):
        fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=_TMP_PREFIX, suffix=_TMP_SUFFIX)
        tmp = Path(tmp)
        try:
            os.close(fd)
            save(tmp)
            os.chmod(tmp, mode)
            _install(tmp, path, force)
        finally:
            tmp.unlink(missing_ok=True)

    history = np.column_stack([result.loss_steps, result.losses])
    write(paths[0], lambda p: _save_history(p, history))
    weights = {f"W{j}": np.asarray(w) for j, w in enumerate(result.weights, 1)}
    write(paths[1], lambda p: _save_npz(p, weights))
    text = json.dumps(_jsonable(summary), indent=2) + "\n"
    write(paths[2], lambda p: p.write_text(text, encoding="utf-8"))
    return summary["files"]


def _install(tmp, path, force):
    # tmp -> path. With --force a rename, which replaces a link that appeared
    # since the check rather than following it. Without, a hard link, which
    # fails if anything at all (a dangling link too) appeared there.
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
        return
    except FileExistsError:
        raise FileExistsError(
            f"'{path}' appeared during the run; not overwritten without --force"
        ) from None
    except OSError:
        pass  # no hard links on this file system
    if os.path.lexists(path):
        raise FileExistsError(
            f"'{path}' appeared during the run; not overwritten without --force"
        )
    os.replace(tmp, path)


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _save_history(path, history):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("step,loss\n")
        f.writelines(f"{int(step)},{float(loss)!r}\n" for step, loss in history)


def _save_npz(path, arrays):
    import numpy as np

    with open(path, "wb") as f:  # a file object: np.savez would add ".npz"
        np.savez(f, **arrays)


# --- sweep -------------------------------------------------------------------------

_SWEEP_DESCRIPTION = """\
Run every configuration of a sweep file (TOML) and store each finished run
in DIR/sweep.sqlite as it completes; or, given the DIR of a sweep, export or
plot its results.

  bwfast sweep FILE.toml --out DIR        run (again: finish what is missing)
  bwfast sweep DIR                        summary of a store
  bwfast sweep DIR --export results.parquet [--export-histories h.parquet]
  bwfast sweep DIR --plot rate.png --x depth --y lambda_min --value rate

Runs go to a local pool of processes (all cores, one BLAS thread each) by
default, to a running Dask cluster with --scheduler, or to a Dask
LocalCluster with --dask-local. A run that raises is stored as 'failed' with
its message and the sweep goes on. A DIR holding the store of a different
sweep is refused unless --new-store (the old store is kept as
sweep.K.sqlite). The sweep file format is documented in bwfast.sweep.
"""

# A sweep that ran to its end with some runs stored as 'failed' (a value
# no exit code of 'bwfast fit' uses).
EXIT_RUNS_FAILED = 6

_SWEEP_EPILOG = f"""\
exit codes:
  0    every configuration has a stored result, none of them 'failed'; or
       the export, plot or summary of a DIR was written
  1    runtime failure (a worker died, a result could not be written)
  2    bad usage or bad input (sweep file, options, a DIR holding another
       sweep's store, an option whose package is not installed)
  {EXIT_RUNS_FAILED}    every configuration has a stored result, but some runs are
       stored as 'failed' (their error is the 'message' column;
       --retry-failed computes them again); --export and --plot files
       were still written
  130  interrupted (the runs stored so far are kept; run the same command
       again to resume)

A command that fails before its first run leaves --out as it was.
"""

_SWEEP_RUN_OPTIONS = ("out", "workers", "scheduler", "dask_local", "new_store",
                      "retry_failed", "dry_run")
_PLOT_OPTIONS = ("x", "y", "value", "where", "agg", "contour", "log")


def _add_sweep(commands):
    p = commands.add_parser(
        "sweep",
        help="run a grid of training runs from a TOML file; export and plot it",
        description=_SWEEP_DESCRIPTION,
        epilog=_SWEEP_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("source", metavar="FILE.toml|DIR",
                   help="a sweep file to run, or the output directory of a sweep")
    run = p.add_argument_group("running (with FILE.toml)")
    run.add_argument("--out", metavar="DIR",
                     help="output directory, created if needed; the results go to "
                     "DIR/sweep.sqlite")
    run.add_argument("--workers", type=_nonnegative_int, default=None, metavar="N",
                     help="local pool size, or workers of --dask-local (default: "
                     "all cores); 0 runs one at a time in this process")
    run.add_argument("--scheduler", metavar="ADDRESS", default=None,
                     help="run on the Dask cluster of this scheduler "
                     "(tcp://host:8786); its workers need bwfast installed")
    run.add_argument("--dask-local", action="store_true",
                     help="run on a Dask LocalCluster started for the sweep, "
                     "bound to 127.0.0.1")
    run.add_argument("--new-store", action="store_true",
                     help="start a new store even if DIR holds one (kept as "
                     "DIR/sweep.K.sqlite)")
    run.add_argument("--retry-failed", action="store_true",
                     help="compute again the runs stored as failed")
    run.add_argument("--dry-run", action="store_true",
                     help="check the sweep file and print its size and axes; run "
                     "nothing")
    res = p.add_argument_group("results (after a run, or from DIR)")
    res.add_argument("--export", metavar="FILE",
                     help="one row per run to FILE (.parquet or .csv)")
    res.add_argument("--export-histories", metavar="FILE",
                     help="the loss histories, one row per recorded loss "
                     "(run_id, index, step, loss), to FILE (.parquet or .csv)")
    res.add_argument("--plot", metavar="FILE.png",
                     help="heatmap of --value over --x and --y")
    res.add_argument("--x", metavar="COLUMN", help="column of the x axis (with --plot)")
    res.add_argument("--y", metavar="COLUMN", help="column of the y axis (with --plot)")
    res.add_argument("--value", metavar="COLUMN",
                     help="numeric column drawn as colour, e.g. rate (with --plot)")
    res.add_argument("--where", metavar="COLUMN=VALUE", action="append", default=None,
                     help="plot only the runs where COLUMN equals VALUE (repeatable)")
    res.add_argument("--agg", choices=("mean", "median", "min", "max"), default=None,
                     help="combine several runs in one cell (default: one run per "
                     "cell, else an error)")
    res.add_argument("--contour", action="store_true",
                     help="filled contours over numeric axes instead of a heatmap")
    res.add_argument("--log", action="store_true", help="logarithmic colour scale")
    res.add_argument("--force", action="store_true",
                     help="replace existing --export/--plot files (never a link or "
                     "a directory)")
    res.add_argument("--json", action="store_true",
                     help="print the summary as JSON on stdout")
    res.add_argument("--quiet", action="store_true",
                     help="no progress bar or notes on stderr")
    p.set_defaults(run=_run_sweep)


class _SweepAborted(Exception):
    """The sweep stopped before its end (a worker died): exit code 1."""


def _run_sweep(args):
    source = Path(args.source)
    if source.is_dir() or (source.suffix.lower() == ".sqlite" and source.is_file()):
        mode = "store"  # a sweep's DIR, or a store file such as sweep.1.sqlite
    elif source.suffix.lower() == ".toml" or source.is_file():
        mode = "run"
    else:
        raise _UsageError(f"'{source}': no such sweep file (.toml) or directory")
    _check_sweep_options(args, mode)
    _check_sweep_packages(args)
    outputs = _sweep_outputs(args)
    try:
        if mode == "run":
            summary = _sweep_run(args, source)
            if summary is None:  # --dry-run
                return EXIT_OK
            store_dir = Path(args.out)
        else:
            store_dir = source
            summary = _sweep_store_summary(store_dir)
        for kind, path in outputs:
            summary.setdefault("files", []).append(
                _sweep_write(kind, store_dir, path, args))
    except (ImportError, OSError, _SweepAborted) as exc:
        return _fail(exc, EXIT_FAILURE)
    if args.json:
        _stdout(json.dumps(_jsonable(summary), indent=2), "the summary")
    else:
        _stdout(_format_sweep_summary(summary), "the summary")
    if mode == "run" and summary["counts"].get("failed"):
        return EXIT_RUNS_FAILED
    return EXIT_OK


def _check_sweep_options(args, mode):
    def given(name):
        value = getattr(args, name)
        return value not in (None, False)

    def flag(name):
        return "--" + name.replace("_", "-")

    if mode == "store":
        for name in _SWEEP_RUN_OPTIONS:
            if given(name):
                raise _UsageError(
                    f"{flag(name)}: applies only when running a sweep file; "
                    f"'{args.source}' holds results")
    elif args.out is None and not args.dry_run:
        raise _UsageError(f"--out DIR is required to run '{args.source}' (the "
                          "results go to DIR/sweep.sqlite)")
    if args.scheduler is not None and args.dask_local:
        raise _UsageError("--scheduler and --dask-local: choose one")
    if args.scheduler is not None:
        from bwfast.sweep import scheduler_problem

        problem = scheduler_problem(args.scheduler)
        if problem:
            raise _UsageError(f"--scheduler {problem}")
    if args.scheduler is not None and args.workers is not None:
        raise _UsageError("--workers: the cluster of --scheduler has its own "
                          "workers; drop --workers")
    if args.dask_local and args.workers == 0:
        raise _UsageError("--workers 0 runs in this process; it does not apply "
                          "to --dask-local")
    if args.dry_run:
        for name in ("out", "new_store", "retry_failed", "export",
                     "export_histories", "plot"):
            if given(name):
                raise _UsageError(f"{flag(name)}: --dry-run runs nothing; drop one")
    if args.plot is not None:
        missing = [flag(n) for n in ("x", "y", "value") if getattr(args, n) is None]
        if missing:
            raise _UsageError(f"--plot needs {', '.join(missing)} (for example "
                              "--x depth --y lambda_min --value rate)")
    else:
        for name in _PLOT_OPTIONS:
            if given(name):
                raise _UsageError(f"{flag(name)}: applies only with --plot FILE.png")
    if args.force and args.export is None and args.export_histories is None and (
            args.plot is None):
        raise _UsageError("--force: applies only with --export, --export-histories "
                          "or --plot (it allows replacing those files)")


def _check_sweep_packages(args):
    """Fail at once, before any run, when an option needs a missing package."""
    from importlib.util import find_spec

    needs = []
    if args.scheduler is not None or args.dask_local:
        needs.append(("distributed", "--scheduler/--dask-local",
                      "pip install 'dask[distributed]'"))
    exports = [p for p in (args.export, args.export_histories) if p is not None]
    if exports or args.plot is not None:
        needs.append(("pandas", "--export/--plot", "pip install pandas"))
    if any(Path(p).suffix.lower() == ".parquet" for p in exports):
        needs.append(("pyarrow", "a .parquet export", "pip install pyarrow"))
    if args.plot is not None:
        needs.append(("matplotlib", "--plot", "pip install matplotlib"))
    for module, what, pip in needs:
        if find_spec(module) is None:
            raise _UsageError(
                f"{what} needs the '{module}' package, which is not installed: "
                f"{pip} (or pip install 'bwfast[sweep]')")


def _sweep_outputs(args):
    """[(kind, Path)] of the files to write, checked before anything runs."""
    outputs = []
    for kind, name, suffixes in (("export", args.export, (".parquet", ".csv")),
                                 ("histories", args.export_histories,
                                  (".parquet", ".csv")),
                                 ("plot", args.plot, (".png",))):
        if name is None:
            continue
        path = Path(name)
        option = {"export": "--export", "histories": "--export-histories",
                  "plot": "--plot"}[kind]
        if path.suffix.lower() not in suffixes:
            raise _UsageError(f"{option} must name a {' or '.join(suffixes)} file; "
                              f"got '{path}'")
        if os.path.lexists(path):
            if path.is_symlink() or not path.is_file():
                raise _UsageError(f"{option}: '{path}' exists and is not a regular "
                                  "file; not replaced, even with --force")
            if not args.force:
                raise _UsageError(f"{option}: '{path}' already exists; pass --force "
                                  "to overwrite it")
        if not path.parent.is_dir():
            raise _UsageError(f"{option}: '{path.parent}' is not a directory")
        if any(path == p for _, p in outputs):
            raise _UsageError(f"{option}: '{path}' is named twice")
        outputs.append((kind, path))
    return outputs


def _sweep_run(args, source):
    from bwfast import sweep as sw

    try:
        spec = sw.load_sweep(source)
    except ValueError as exc:
        raise _UsageError(_one_line(exc)) from exc
    if args.dry_run:
        lines = [f"sweep '{spec.name}' ({source}): {len(spec)} runs"]
        for key, values in spec.axes().items():
            lines.append(f"  {key:<14}"
                         f"{', '.join(_sweep_value(v, key) for v in values)}")
        _stdout("\n".join(lines), "the summary")
        return None
    out = Path(args.out)
    try:
        report = sw.run_sweep(
            spec, out, workers=args.workers, scheduler=args.scheduler,
            dask_local=args.dask_local, new_store=args.new_store,
            retry_failed=args.retry_failed,
            progress=False if args.quiet else None)
    except sw.SweepChanged as exc:
        raise _UsageError(
            f"--out: {_one_line(exc)}: pass --new-store or another --out DIR"
        ) from exc
    except sw.StoreError as exc:
        raise _UsageError(f"--out: {_one_line(exc)}") from exc
    except sw.SweepFileError as exc:
        raise _UsageError(_one_line(exc)) from exc
    except sw.SweepAborted as exc:
        raise _SweepAborted(_one_line(exc)) from exc
    except KeyboardInterrupt:
        try:
            done = sw.store_summary(out)
            _note(args, f"bwfast sweep: {done['total'] - done['missing']} of "
                  f"{done['total']} runs are stored in {done['store']}; run the "
                  "same command again to finish")
        except Exception:  # noqa: BLE001, S110 - the interruption matters
            pass
        raise
    if report.set_aside is not None:
        _note(args, f"bwfast sweep: the previous store was moved to "
              f"{report.set_aside}")
    failed = report.counts.get("failed", 0)
    if failed:
        _note(args, f"bwfast sweep: {failed} run{'s' if failed > 1 else ''} "
              "failed; the error of each is its 'message' in the results")
    summary = sw.store_summary(out)
    summary.update(computed=report.computed, skipped=report.skipped,
                   backend=report.backend, workers=report.workers,
                   wall_time=report.wall_time)
    return summary


def _sweep_store_summary(store_dir):
    from bwfast import sweep as sw

    try:
        return sw.store_summary(store_dir)
    except sw.StoreError as exc:
        raise _UsageError(_one_line(exc)) from exc


def _sweep_write(kind, store_dir, path, args):
    from bwfast import sweep as sw

    try:
        if kind == "plot":
            sw.plot_sweep(store_dir, path, x=args.x, y=args.y, value=args.value,
                          where=args.where, agg=args.agg, contour=args.contour,
                          log=args.log, overwrite=args.force)
        else:
            sw.export_sweep(store_dir, path, histories=kind == "histories",
                              overwrite=args.force)
    except sw.StoreError as exc:
        raise _UsageError(_one_line(exc)) from exc
    except ValueError as exc:
        option = {"plot": "--plot", "export": "--export",
                  "histories": "--export-histories"}[kind]
        raise _UsageError(f"{option}: {_one_line(exc)}") from exc
    return str(path)


def _sweep_value(value, key):
    if value is None:  # lr, tol: fit's choice; others: not for some targets
        return "default" if key in ("lr", "tol") else "n/a"
    return f"{value:g}" if isinstance(value, float) else str(value)


def _format_sweep_summary(s):
    counts = ", ".join(f"{n} {status}" for status, n in s["counts"].items())
    rows = [("sweep", f"{s['name']} ({s['source']})" if s["source"] else s["name"]),
            ("store", s["store"]),
            ("runs", f"{s['total']}"),
            ("results", counts or "none yet"),
            ("missing", f"{s['missing']}")]
    if "computed" in s and not s["computed"]:
        rows.insert(3, ("this time", f"nothing to compute: all {s['total']} runs "
                        "are stored"))
    elif "computed" in s:
        rows.insert(3, ("this time", f"{s['computed']} computed, {s['skipped']} "
                        "already stored"))
        where = ("in this process" if s["backend"] == "inprocess" else
                 f"on {s['workers']} {s['backend']} "
                 f"worker{'s' if s['workers'] != 1 else ''}")
        rows.append(("wall time", f"{s['wall_time']:.1f} s {where}"))
    if "files" in s:
        rows.append(("written", ", ".join(s["files"])))
    return "\n".join(f"{name:<12}{value}" for name, value in rows)


# --- terminal output ---------------------------------------------------------------


def _stdout(text, what):
    """Print the line(s) `text` on stdout now; see _write_stdout."""
    _write_stdout(text + "\n", what)


def _write_stdout(text, what):
    """Write `text` to stdout and flush; a failed write raises _StdoutError
    (or BrokenPipeError, which main turns into a quiet exit)."""
    if sys.stdout is None:  # started with stdout closed
        raise _StdoutError(f"cannot write {what} to stdout: stdout is closed")
    _guarded_stdout(lambda: sys.stdout.write(text), what)
    _flush_stdout(what)


def _flush_stdout(what):
    # Flush now rather than at exit, where a failure (a full disk) would
    # only print "Exception ignored ..." and exit with code 120.
    if sys.stdout is not None:
        _guarded_stdout(sys.stdout.flush, what)


def _guarded_stdout(action, what):
    try:
        action()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as exc:
        raise _StdoutError(
            f"cannot write {what} to stdout: {_one_line(exc)}"
        ) from exc


def _silence_stdout():
    # Point the stdout file descriptor at /dev/null, so that what is still
    # buffered goes there when the interpreter flushes at exit.
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)
    except OSError:
        pass


def _stderr(text):
    # stderr is where errors go: if even that fails, there is nothing to say.
    if sys.stderr is None:
        return
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        pass


def _forget_unhandled_interrupt():
    # CPython marks a KeyboardInterrupt that escapes exec() or eval() of a
    # string (as a library import may do: NumPy, SciPy, Numba) as
    # "unhandled", and then ends the process by SIGINT (exit code -2)
    # although main() handled it and returned 130. Each exec() of a string
    # clears that mark before it runs, so an empty one undoes it.
    exec("", {})  # noqa: S102 - a constant empty string


def _isatty(stream):
    try:
        return stream.isatty()
    except (AttributeError, OSError, ValueError):
        return False


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
        _stderr(text)


def _fail(message, code):
    _stderr(f"bwfast: error: {_one_line(message)}")
    return code


def _one_line(message):
    text = str(message).strip() or type(message).__name__
    return " ".join(text.split())


def _join(widths):
    return ",".join(str(d) for d in widths)


def _version():
    from bwfast import __version__

    return f"bwfast {__version__}"
