"""Sweeps: grids of training runs described in a TOML file.

A sweep file lists parameters; every parameter given as a list is an axis
of the grid, and the runs are all combinations::

    [sweep]
    name = "rate against depth"

    [parameters]
    target = "power"            # power | harmonic | geometric | digits | FILE
    n = 20
    lambda_min = [0.01, 0.1]    # axis
    width = 20
    depth = [1, 2, 4]           # axis
    tau = [0.0, 0.5]            # axis
    steps = 5000

Optional ``[[runs]]`` blocks list configurations instead: each block is
merged over ``[parameters]`` and expanded the same way, and the sweep is
the union of the blocks (an empty ``[[runs]]`` block stands for
``[parameters]`` alone). See :func:`load_sweep` for every key.

:func:`run_sweep` runs the configurations on a local process pool (all
cores, one BLAS thread per worker) or on a Dask cluster, and commits each
finished run to an SQLite store in the output directory, so that an
interrupted sweep resumes where it stopped. :func:`sweep_results` and
:func:`sweep_histories` read the store as pandas tables,
:func:`export_sweep` writes them to Parquet or CSV, and
:func:`plot_sweep` draws one result column over two parameters.
"""

import hashlib
import itertools
import json
import math
import numbers
import os
import time
from dataclasses import dataclass
from pathlib import Path

from . import _sweep_store as _store
from ._sweep_store import Store, StoreError

__all__ = [
    "PLACEMENT_COLUMNS",
    "RESULT_COLUMNS",
    "RunConfig",
    "SweepReport",
    "Sweep",
    "SweepAborted",
    "SweepChanged",
    "SweepFileError",
    "export_sweep",
    "load_sweep",
    "plot_sweep",
    "run_sweep",
    "scheduler_problem",
    "sweep_histories",
    "sweep_results",
]

#: Columns of :func:`sweep_results` (and of an export), in order: the run's
#: identity, its parameters (with the derived depth, width, d0 and k), its
#: results, the target's actual spectrum, and where and when it ran.
RESULT_COLUMNS = (
    "run_id", "index",
    "target", "kind", "target_sha256", "n", "lambda_min", "lambda_max",
    "decay", "target_seed", "rotate",
    "widths", "depth", "width", "d0", "k",
    "tau", "lr", "steps", "tol", "seed", "init", "loss", "record_every", "dtype",
    "status", "message", "final_loss", "optimum", "gap", "relative_gap",
    "steps_taken", "rate", "margin", "predicted_rate", "wall_time", "lr_used",
    "tol_used", "measure",
    "balancedness", "eig_min", "eig_max", "target_rank",
    "attempts", "started_at", "finished_at", "worker",
)

#: Columns that depend on where and when a run ran, not on its numerics:
#: leave them out to compare two executions of the same sweep.
PLACEMENT_COLUMNS = ("wall_time", "attempts", "started_at", "finished_at", "worker")

# The pip command named when an optional package is missing.
_PIP_EXTRA = "pip install 'bwfast[sweep]'"

SYNTHETIC = ("power", "harmonic", "geometric")
_DIGITS = "digits"
_FILE_TYPES = (".npy", ".npz", ".csv")
_SYNTHETIC_KEYS = ("n", "lambda_max", "lambda_min", "decay", "target_seed", "rotate")
_NETWORK_KEYS = ("depth", "width", "d0")
_FIT_KEYS = ("tau", "lr", "steps", "tol", "seed", "init", "loss", "record_every",
             "dtype")
_INT_COLUMNS = ("index", "n", "target_seed", "depth", "width", "d0", "k", "steps",
                "seed", "record_every", "steps_taken", "target_rank", "attempts")

# At most this many configurations in one sweep, this many recorded losses
# per run (steps // record_every + 1; 32 MiB of history per run), and this
# many weights in a network (16 GiB in float64, as for ``bwfast fit``).
MAX_RUNS = 1_000_000
MAX_HISTORY = 2**22
MAX_WEIGHTS = 2**31


class SweepFileError(ValueError):
    """A sweep file that cannot be read or that breaks a rule; the message
    names the file, the key and the value."""


class SweepChanged(StoreError):
    """The output directory holds the store of a different sweep."""


class SweepAborted(RuntimeError):
    """The sweep stopped before its end for another reason than a run's own
    error (a worker process died); the runs stored so far are kept."""


class _Bad(Exception):
    """A value breaking a rule (the caller adds file, table and key)."""


# --- values -----------------------------------------------------------------------


def _number(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad("must be a number")
    value = float(value)
    if not math.isfinite(value):
        raise _Bad("must be finite")
    return value


def _float_rule(low, strict=False, default=False):
    def check(value):
        if default and value == "default":
            return None
        try:
            value = _number(value)
        except _Bad:
            raise _Bad('must be a number or "default"' if default
                       else "must be a number") from None
        if value < low or (strict and value == low):
            raise _Bad(f"must be {'>' if strict else '>='} {low:g}")
        return value

    return check


# Integers are stored and exported as int64.
_INT_MAX = 2**63 - 1


def _int_rule(low):
    def check(value):
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)  # 1e5 in TOML is a float
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad("must be an integer")
        if value < low:
            raise _Bad(f"must be >= {low}")
        if value > _INT_MAX:
            raise _Bad(f"must be <= 2**63-1 = {_INT_MAX} (results are stored as "
                       "64-bit integers)")
        return value

    return check


def _choice_rule(*choices):
    def check(value):
        if value not in choices:
            raise _Bad(f"must be one of {', '.join(map(json.dumps, choices))}")
        return value

    return check


def _string(value):
    if not isinstance(value, str) or not value:
        raise _Bad("must be a non-empty string")
    return value


def _boolean(value):
    if not isinstance(value, bool):
        raise _Bad("must be true or false")
    return value


def _widths_rule(value):
    if not isinstance(value, list) or len(value) < 2:
        raise _Bad("must be a list of at least two widths, such as [20, 20, 20]")
    check = _int_rule(1)
    out = []
    for i, d in enumerate(value):
        try:
            out.append(check(d))
        except _Bad as exc:
            if isinstance(d, int) and not isinstance(d, bool) and d > _INT_MAX:
                raise _Bad(f"entry {i} = {d} {exc}") from None
            raise _Bad("must be a list of positive integers, such as [20, 20, 20]"
                       ) from None
    return out


def _target_rule(value):
    value = _string(value)
    if Path(value).suffix.lower() in _FILE_TYPES:
        return value
    if value in SYNTHETIC or value == _DIGITS:
        return value
    raise _Bad(f"must be one of {', '.join(map(json.dumps, SYNTHETIC))}, "
               f'"{_DIGITS}" (the shipped digits covariance) or a .npy, .npz or '
               ".csv file")


def _fit_defaults():
    import inspect

    from .train import fit

    return {k: p.default for k, p in inspect.signature(fit).parameters.items()}


def _rules():
    from .theory import INITS

    d = _fit_defaults()
    return {
        "target": (_target_rule, None),
        "kind": (_choice_rule("auto", "cov", "samples"), "auto"),
        "n": (_int_rule(1), None),
        "lambda_max": (_float_rule(0.0, strict=True), 1.0),
        "lambda_min": (_float_rule(0.0), 0.0),
        "decay": (_float_rule(0.0), 1.0),
        "target_seed": (_int_rule(0), 0),
        "rotate": (_boolean, True),
        "widths": (_widths_rule, None),
        "depth": (_int_rule(1), None),
        "width": (_int_rule(1), None),
        "d0": (_int_rule(1), None),
        "tau": (_float_rule(0.0), float(d["tau"])),
        "lr": (_float_rule(0.0, strict=True, default=True), d["lr"]),
        "steps": (_int_rule(0), d["steps"]),
        "tol": (_float_rule(0.0, default=True), d["tol"]),
        "seed": (_int_rule(0), d["seed"]),
        # the names fit accepts (theory.INITS): refused before any run
        "init": (_choice_rule(*INITS), d["init"]),
        "loss": (_choice_rule("bw", "frobenius"), d["loss"]),
        "record_every": (_int_rule(1), d["record_every"]),
        "dtype": (_choice_rule("float64", "float32"), "float64"),
    }


def _toml(value):
    """A value as it would be written in TOML (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# --- the sweep --------------------------------------------------------------------


@dataclass(frozen=True)
class RunConfig:
    """One configuration of a sweep.

    Attributes
    ----------
    index : int
        Position in the expansion of the sweep file (0-based).
    run_id : str
        16 hex digits of the SHA-256 of the canonical parameters: the same
        configuration has the same id in any sweep file, whatever the order
        of its keys and whether defaults are written out.
    params : dict
        Canonical parameters, every default filled in (JSON values).
    """

    index: int
    run_id: str
    params: dict

    def columns(self):
        """The parameter columns of this run in the results table."""
        return _param_columns(self.params)


def _run_id(params):
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _param_columns(params):
    widths = params["widths"]
    depth = len(widths) - 1
    hidden = widths[1:-1]
    out = {key: params.get(key) for key in (
        "target", "kind", "target_sha256", "n", "lambda_min", "lambda_max", "decay",
        "target_seed", "rotate")}
    out["n"] = widths[-1]
    out.update(
        widths=",".join(str(w) for w in widths),
        depth=depth,
        width=hidden[0] if hidden and len(set(hidden)) == 1 else None,
        d0=widths[0],
        k=min(widths),
    )
    out.update({key: params[key] for key in _FIT_KEYS})
    return out


class Sweep:
    """The configurations of a sweep, as read by :func:`load_sweep`.

    Attributes
    ----------
    name : str
    runs : tuple of RunConfig
    source : str or None
        The sweep file.
    text : str or None
        Its text, stored with the results.
    spec_hash : str
        SHA-256 of the sorted run ids: two sweeps with the same set of
        configurations have the same hash (comments, key order and spelled
        out defaults do not count).
    """

    def __init__(self, name, runs, *, source=None, text=None, base_dir=None,
                 _targets=None):
        self.name = name
        self.runs = tuple(runs)
        self.source = source
        self.text = text
        self.base_dir = Path.cwd() if base_dir is None else Path(base_dir)
        self.spec_hash = hashlib.sha256(
            "\n".join(sorted(r.run_id for r in self.runs)).encode()).hexdigest()
        self._targets = {} if _targets is None else _targets

    def __len__(self):
        return len(self.runs)

    def __iter__(self):
        return iter(self.runs)

    def __repr__(self):
        return f"Sweep({self.name!r}, {len(self.runs)} runs)"

    def axes(self):
        """{column: sorted distinct values} of the parameter columns that vary.

        ``width`` counts only the runs that have one hidden width (not
        depth 1, which has no hidden layer, nor uneven ``widths``), and
        ``widths`` is left out when the ``depth``, ``width`` and ``d0``
        axes determine it. ``None`` stands for fit's default (``lr``,
        ``tol``) or for a parameter that does not apply to some runs (the
        synthetic keys with a target file).
        """
        columns = [run.columns() for run in self.runs]
        values = {}
        for cols in columns:
            for key, value in cols.items():
                if key == "width" and value is None:
                    continue
                values.setdefault(key, set()).add(value)
        axes = {key: sorted(v, key=_sort_key) for key, v in values.items()
                if len(v) > 1}
        shown = [key for key in _NETWORK_KEYS if key in axes]
        network = {}
        for cols in columns:
            network.setdefault(tuple(cols[k] for k in shown), set()).add(
                cols["widths"])
        if shown and all(len(w) == 1 for w in network.values()):
            axes.pop("widths", None)  # explained by depth, width, d0
        return axes

    def select(self, **criteria):
        """The sub-sweep of the runs whose parameter columns match.

        Each keyword names a column (``depth``, ``tau``, ``lambda_min``, ...)
        and gives one value or a list of accepted values.

        Examples
        --------
        >>> import pathlib, tempfile
        >>> from bwfast.sweep import load_sweep
        >>> text = 'target = "power"\\nn = 4\\ndepth = [1, 2, 3]\\ntau = [0, 0.5]\\n'
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "s.toml"
        ...     _ = path.write_text("[parameters]\\n" + text)
        ...     sweep = load_sweep(path)
        >>> len(sweep), len(sweep.select(depth=[1, 3], tau=0.5))
        (6, 2)
        """
        known = set(_param_columns(self.runs[0].params)) if self.runs else set()
        for key in criteria:
            if key not in known:
                raise ValueError(f"select: unknown column {key!r}; the parameter "
                                 f"columns are {', '.join(sorted(known))}")
        wanted = {k: v if isinstance(v, (list, tuple, set)) else [v]
                  for k, v in criteria.items()}
        runs = [r for r in self.runs
                if all(r.columns()[k] in v for k, v in wanted.items())]
        return Sweep(self.name, runs, source=self.source, text=self.text,
                     base_dir=self.base_dir, _targets=self._targets)

    def target(self, params):
        """The Target of a configuration (built once per distinct target)."""
        key = json.dumps({k: params.get(k) for k in (
            "target", "kind", "target_sha256", *_SYNTHETIC_KEYS)}, sort_keys=True)
        if key not in self._targets:
            self._targets[key] = _build_target(params, self.base_dir)
        return self._targets[key]


def _sort_key(value):
    # missing values first, then numbers (NumPy's too), then text
    if value is None or value is _missing():
        return (0, 0, "")
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np_bool())):
        if isinstance(value, float) and math.isnan(value):
            return (0, 0, "")
        return (1, float(value), "")
    return (2, 0, str(value))


def _missing():
    try:
        import pandas as pd
    except ImportError:
        return None
    return pd.NA


def np_bool():
    import numpy as np

    return np.bool_


def _build_target(params, base_dir):
    name = params["target"]
    if name in SYNTHETIC:
        from .targets import synthetic_target

        return synthetic_target(
            name, params["n"], lambda_max=params["lambda_max"],
            lambda_min=params["lambda_min"], decay=params["decay"],
            seed=params["target_seed"], rotate=params["rotate"])
    if name == _DIGITS:
        from .io import default_target

        return default_target()
    from .io import load_target

    path = Path(base_dir) / name
    digest = _sha256(path)
    if digest != params["target_sha256"]:
        raise SweepFileError(
            f"target file '{path}' changed since the sweep was read "
            f"(SHA-256 {digest[:12]}... instead of {params['target_sha256'][:12]}...)")
    return load_target(path, params["kind"])


def _sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _read_toml(path):
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ImportError(
                "reading sweep files on Python 3.10 needs the 'tomli' package: "
                "pip install tomli") from None
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise SweepFileError(f"sweep file '{path}': cannot be read: {reason}") from None
    try:
        text = raw.decode("utf-8")
        return text, tomllib.loads(text)
    except UnicodeDecodeError:
        raise SweepFileError(f"sweep file '{path}': not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise SweepFileError(f"sweep file '{path}': not valid TOML: {exc}") from None


def load_sweep(path):
    """Read and validate a sweep file; expand its grid into configurations.

    Parameters
    ----------
    path : str or os.PathLike
        A TOML file with the tables ``[sweep]`` (optional: ``name``,
        ``description``), ``[parameters]`` and optional ``[[runs]]`` blocks
        (see the module docstring). Keys of ``[parameters]`` and of a block,
        each a value or a list of values (a grid axis; for ``widths``, a
        list of lists):

        - ``target``: ``"power"``, ``"harmonic"``, ``"geometric"`` (synthetic
          spectra, see :func:`bwfast.targets.synthetic_spectrum`),
          ``"digits"`` (the shipped covariance), or a ``.npy``, ``.npz`` or
          ``.csv`` file that ``bwfast fit --target`` accepts, relative to the
          sweep file; ``kind`` (``"auto"``, ``"cov"``, ``"samples"``) for files.
        - synthetic targets only: ``n`` (required), ``lambda_max`` (1),
          ``lambda_min`` (the floor, 0), ``decay`` (1), ``target_seed`` (0,
          the seed of the random rotation), ``rotate`` (true).
        - the network: ``widths`` = [d0, ..., n], or ``depth`` with
          ``width`` (default n) and ``d0`` (default width), meaning widths
          d0, width x (depth - 1), n.
        - :func:`bwfast.fit` arguments: ``tau``, ``lr`` (``"default"``: fit's
          choice), ``steps``, ``tol`` (``"default"``), ``seed``, ``init`` (one of
          :data:`bwfast.theory.INITS`), ``loss`` (``"bw"``, ``"frobenius"``),
          ``record_every``, ``dtype`` (``"float64"``, ``"float32"``).
          Defaults are fit's.

        Integers (``n``, ``target_seed``, ``depth``, ``width``, ``d0``, the
        entries of ``widths``, ``steps``, ``seed``, ``record_every``) must
        be at most 2**63-1, as the store keeps them as 64-bit integers, and
        a network at most :data:`MAX_WEIGHTS` weights.

    Returns
    -------
    Sweep
        Configurations in grid order: blocks in file order, and within a
        block the product of its axes in key order, the last key varying
        fastest.

    Raises
    ------
    SweepFileError
        A ValueError whose message names the file, the table, the key and
        the value: unknown keys, values breaking a rule, a missing target or
        network, a target file that cannot be read, widths that do not end
        at the target dimension, keys that do not apply to the target, the
        same configuration listed twice, too many runs.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from bwfast.sweep import load_sweep
    >>> text = '''
    ... [parameters]
    ... target = "harmonic"
    ... n = 6
    ... lambda_min = [0.01, 0.1]
    ... depth = [1, 4]
    ... width = 3
    ... '''
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "sweep.toml"
    ...     _ = path.write_text(text)
    ...     sweep = load_sweep(path)
    >>> len(sweep), sweep.runs[1].params["widths"]
    (4, [3, 3, 3, 3, 6])
    """
    path = Path(path)
    text, data = _read_toml(path)
    where = f"sweep file '{path}'"
    for key in data:
        if key not in ("sweep", "parameters", "runs"):
            raise SweepFileError(
                f"{where}: unknown table or key {key!r}; expected [sweep], "
                "[parameters] and [[runs]] blocks")
    meta = data.get("sweep", {})
    if not isinstance(meta, dict):
        raise SweepFileError(f"{where}: 'sweep' must be a table [sweep]")
    for key in meta:
        if key not in ("name", "description"):
            raise SweepFileError(f"{where}: [sweep] has unknown key {key!r}; "
                                 "expected name, description")
    name = meta.get("name", path.stem)
    if not isinstance(name, str):
        raise SweepFileError(f"{where}: [sweep] name must be a string; "
                             f"got {_toml(name)}")
    base = data.get("parameters", {})
    blocks = data.get("runs", [{}])
    if "parameters" not in data and "runs" not in data:
        raise SweepFileError(f"{where}: no [parameters] table and no [[runs]] "
                             "blocks: nothing to run")
    if not isinstance(base, dict):
        raise SweepFileError(f"{where}: 'parameters' must be a table [parameters]")
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise SweepFileError(f"{where}: 'runs' must be [[runs]] blocks (an "
                             "array of tables)")
    if not blocks:
        raise SweepFileError(f"{where}: 'runs' is an empty list: nothing to run")

    rules = _rules()
    base = _check_table(base, rules, f"{where}: [parameters]")
    files = {}
    runs, seen = [], {}
    for b, block in enumerate(blocks):
        label = f"{where}: [[runs]] block {b + 1}" if "runs" in data else (
            f"{where}: [parameters]")
        merged = dict(base, **_check_table(block, rules, label))
        axes = list(merged.items())
        total = math.prod(len(v) for _, v in axes)
        if len(runs) + total > MAX_RUNS:
            raise SweepFileError(f"{where}: more than {MAX_RUNS} configurations")
        keys = [k for k, _ in axes]
        for combo in itertools.product(*(v for _, v in axes)):
            c = dict(zip(keys, combo))
            params = _canonical(c, rules, label, path.parent, files)
            rid = _run_id(params)
            if rid in seen:
                raise SweepFileError(
                    f"{where}: configurations {seen[rid] + 1} and {len(runs) + 1} "
                    f"are the same run ({_describe(params)}); list each once")
            seen[rid] = len(runs)
            runs.append(RunConfig(len(runs), rid, params))
    if not runs:
        raise SweepFileError(f"{where}: no configurations")
    return Sweep(name, runs, source=str(path), text=text, base_dir=path.parent)


def _check_table(table, rules, label):
    """Validate each value of a table: -> {key: [values]} (lists = axes)."""
    out = {}
    for key, value in table.items():
        if key not in rules:
            raise SweepFileError(
                f"{label}: unknown key {key!r}; known keys: {', '.join(rules)}")
        check = rules[key][0]
        if key == "widths":
            if isinstance(value, list) and value and all(
                    isinstance(v, list) for v in value):
                values = value
            else:
                values = [value]
        elif isinstance(value, list):
            values = value
        else:
            values = [value]
        if not values:
            raise SweepFileError(f"{label} {key} = []: an axis needs at least one "
                                 "value")
        checked = []
        for i, v in enumerate(values):
            try:
                checked.append(check(v))
            except _Bad as exc:
                at = f"{key}[{i}]" if values is value else key
                raise SweepFileError(f"{label} {at} = {_toml(v)}: {exc}") from None
        out[key] = checked
    return out


def _describe(params):
    return ", ".join(f"{k} = {_toml(v)}" for k, v in params.items()
                     if k not in ("target_sha256",))


def _canonical(c, rules, label, base_dir, files):
    """Canonical parameters of one combination (every default filled in)."""
    def need(rule):
        return SweepFileError(f"{label}: {rule} (in the run with {_combo(c)})")

    if "target" not in c:
        raise SweepFileError(f"{label}: no target: give target = \"power\", ... or "
                             "a file")
    name = c["target"]
    out = {"target": name}
    if name in SYNTHETIC:
        if "kind" in c:
            raise need(f"kind applies only to target files; target is {_toml(name)}")
        if "n" not in c:
            raise need(f"n is required with the synthetic target {_toml(name)}")
        for key in _SYNTHETIC_KEYS:
            out[key] = c.get(key, rules[key][1])
        if out["lambda_min"] > out["lambda_max"]:
            raise need(f"lambda_min = {_toml(out['lambda_min'])} must be <= "
                       f"lambda_max = {_toml(out['lambda_max'])}")
        n = out["n"]
    else:
        for key in _SYNTHETIC_KEYS:
            if key in c:
                raise need(f"{key} applies only to the synthetic targets "
                           f"({', '.join(SYNTHETIC)}); target is {_toml(name)}")
        if name == _DIGITS:
            if "kind" in c:
                raise need("kind applies only to target files; target is "
                           '"digits"')
            if _DIGITS not in files:
                from .io import default_target

                files[_DIGITS] = default_target().n
            n = files[_DIGITS]
        else:
            kind = c.get("kind", "auto")
            n, digest = _target_file(base_dir / name, kind, label, files)
            out.update(kind=kind, target_sha256=digest)

    if "widths" in c:
        given = [k for k in _NETWORK_KEYS if k in c]
        if given:
            raise need(f"give either widths or depth (with width and d0), not "
                       f"both; got widths and {', '.join(given)}")
        widths = c["widths"]
        if widths[-1] != n:
            raise need(f"widths = {_toml(widths)} must end with the target "
                       f"dimension n = {n}")
        count = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    elif "depth" in c:
        width = c.get("width", n)
        d0 = c.get("d0", width)
        depth = c["depth"]
        # counted before the widths list is built (depth may be huge)
        count = d0 * n if depth == 1 else d0 * width + (
            depth - 2) * width * width + width * n
        if count <= MAX_WEIGHTS:
            widths = [d0] + [width] * (depth - 1) + [n]
    else:
        if "width" in c or "d0" in c:
            raise need("width and d0 need depth")
        raise need("no network: give depth (with width and d0) or widths")
    if count > MAX_WEIGHTS:
        raise need(f"the network has {count} weights, more than {MAX_WEIGHTS} "
                   "(2**31, 16 GiB in float64)")
    out["widths"] = widths
    for key in _FIT_KEYS:
        out[key] = c.get(key, rules[key][1])
    records = out["steps"] // out["record_every"] + 1
    if records > MAX_HISTORY:
        least = -(-out["steps"] // (MAX_HISTORY - 1))
        raise need(f"steps = {out['steps']} with record_every = "
                   f"{out['record_every']} would record {records} losses per run "
                   f"(at most {MAX_HISTORY}); use record_every >= {least}")
    return out


def _combo(c):
    return ", ".join(f"{k} = {_toml(v)}" for k, v in c.items())


def _target_file(path, kind, label, files):
    """(n, sha256) of a target file, read once per (path, kind)."""
    key = (str(path), kind)
    if key not in files:
        from .io import load_target

        try:
            target = load_target(path, kind)
            digest = _sha256(path)
        except (OSError, ValueError, TypeError) as exc:
            raise SweepFileError(f"{label}: target: {exc}") from None
        files[key] = (target.n, digest)
    return files[key]


# --- running ----------------------------------------------------------------------


def _cpu_count():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _require(module, purpose, pip=None):
    """Import an optional dependency, or ImportError naming it and the fix."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        package = module.split(".")[0]
        hint = pip or f"pip install {package}"
        raise ImportError(
            f"{purpose} needs the '{package}' package, which is not installed: "
            f"{hint} (or {_PIP_EXTRA})") from None


class _InProcess:
    """Runs one at a time in this process (workers=0): no pool to start,
    and no ``if __name__ == "__main__"`` guard needed in a script."""

    name = "inprocess"
    workers = 0
    slots = 1

    def submit(self, task):
        from concurrent.futures import Future

        from . import _sweep_worker

        fut = Future()
        fut.set_result(_sweep_worker.execute(task))
        return fut

    def wait(self, futures, timeout):
        return futures

    def result(self, future):
        return future.result()

    def succeeded(self, future):
        return future.done()

    def stop(self):
        pass

    def close(self):
        pass


class _LocalPool:
    """Spawned worker processes, one BLAS thread each (see _sweep_worker)."""

    name = "local"

    def __init__(self, workers):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        from . import _sweep_worker

        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self.workers = workers
        self.slots = 2 * workers
        self.pool = ProcessPoolExecutor(
            max_workers=workers, mp_context=ctx, initializer=_sweep_worker.init_worker,
            initargs=(self._stop, os.getpid()))

    def submit(self, task):
        from . import _sweep_worker

        return self.pool.submit(_sweep_worker.execute, task)

    def wait(self, futures, timeout):
        from concurrent.futures import FIRST_COMPLETED, wait

        return wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)[0]

    def succeeded(self, future):
        return (future.done() and not future.cancelled()
                and future.exception() is None)

    def result(self, future):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return future.result()
        except BrokenProcessPool as exc:
            raise SweepAborted(
                f"a worker process died ({exc}); the runs stored so far are "
                "kept: run the same sweep again to resume") from None

    def stop(self):
        # runs in progress notice the request at their next chunk (about
        # 0.2 s) and end without a result
        self._stop.set()
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        self.pool.shutdown(wait=True)


class _DaskPool:
    """Tasks on a Dask distributed cluster: a running scheduler, or a
    LocalCluster started for the sweep (bound to the loopback interface)."""

    name = "dask"

    def __init__(self, scheduler=None, workers=None):
        distributed = _require("distributed", "running a sweep on Dask",
                               "pip install 'dask[distributed]'")
        self.cluster = None
        if scheduler is None:
            self.cluster = distributed.LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None)
            scheduler = self.cluster
        try:
            self.client = distributed.Client(scheduler, timeout="15s")
        except OSError as exc:
            self._close_cluster()
            raise ConnectionError(
                f"cannot reach the Dask scheduler at {scheduler!r}: {exc}") from None
        threads = sum(self.client.nthreads().values())
        self.workers = threads
        self.slots = 2 * max(threads, 1)
        self._wait = distributed.wait

    def submit(self, task):
        from . import _sweep_worker

        return self.client.submit(_sweep_worker.execute, task, pure=False,
                                  key=f"bwfast-sweep-{task[0]}-{time.time_ns()}")

    def wait(self, futures, timeout):
        from distributed import TimeoutError as DaskTimeout

        try:
            return self._wait(futures, timeout=timeout,
                              return_when="FIRST_COMPLETED").done
        except (DaskTimeout, TimeoutError):
            return set()

    def succeeded(self, future):
        return future.status == "finished"

    def result(self, future):
        try:
            return future.result()
        except Exception as exc:  # noqa: BLE001 - e.g. KilledWorker: a result
            return None, {"status": "failed",
                          "message": f"{type(exc).__name__}: {_one_line(exc)}"}

    def stop(self):
        self.close()

    def close(self):
        self.client.close()
        self._close_cluster()

    def _close_cluster(self):
        if self.cluster is not None:
            self.cluster.close()
            self.cluster = None


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _warm_up(dtypes):
    """Compile (or load from Numba's disk cache) the descent kernels once in
    this process, so that the workers find them cached."""
    import numpy as np

    from .train import fit

    for dtype in sorted(dtypes):
        fit(np.eye(2), (2, 2), steps=2, dtype=dtype)


@dataclass
class SweepReport:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    store : Path
        The SQLite store.
    total : int
        Configurations in the sweep.
    computed : int
        Runs computed and committed by this call.
    skipped : int
        Runs found already stored (not computed again).
    counts : dict
        {status: number of stored runs}, over the whole store.
    missing : int
        Configurations still without a result (0 unless interrupted).
    set_aside : Path or None
        Where an older store was moved by ``new_store=True``.
    backend : str
        ``"local"`` or ``"dask"``; ``workers``: its worker count.
    """

    store: Path
    total: int
    computed: int
    skipped: int
    counts: dict
    missing: int
    set_aside: Path = None
    backend: str = "local"
    workers: int = 0
    wall_time: float = 0.0


def run_sweep(sweep, out, *, workers=None, scheduler=None, dask_local=False,
              new_store=False, retry_failed=False, progress=None):
    """Run every configuration of a sweep that has no stored result yet.

    Parameters
    ----------
    sweep : Sweep or path
        From :func:`load_sweep` (a path is loaded).
    out : str or os.PathLike
        Output directory, created if needed; the results go to
        ``out/sweep.sqlite`` (nothing else in it is touched).
    workers : int, optional
        Local pool size (default: all cores available to this process), or
        the number of workers of the ``dask_local`` cluster. 0 runs the
        configurations one after the other in this process. The pool's
        workers are spawned processes: a script that calls run_sweep with
        a pool must do so under ``if __name__ == "__main__":``, as with
        :mod:`multiprocessing`.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``; the form
        ``PROTOCOL://HOST:PORT`` is checked first, see
        :func:`scheduler_problem`): runs go to its workers, which need
        bwfast installed.
    dask_local : bool
        Start a Dask ``LocalCluster`` on the loopback interface for the run.
    new_store : bool
        Start a new store even if ``out`` holds one: the old store is moved
        to ``out/sweep.K.sqlite`` (first free K), never deleted.
    retry_failed : bool
        Compute again the runs stored as failed (their row is replaced in
        the same transaction that stores the new result).
    progress : bool, optional
        tqdm bar on stderr with runs done, failed and left and the time
        left; default: only when stderr is a terminal.

    Returns
    -------
    SweepReport

    Raises
    ------
    ValueError
        A ``scheduler`` address of the wrong form, bad ``workers``.
    SweepChanged
        ``out`` holds the store of a sweep with other configurations (and
        ``new_store`` is false): results are never mixed.
    StoreError
        ``out/sweep.sqlite`` is not a sweep store, or another process is
        running a sweep on it.
    KeyboardInterrupt
        After Ctrl-C: runs in progress are abandoned within about 0.2 s;
        every run committed before stays; run again to resume.

    Notes
    -----
    Guarantees: nothing in ``out`` is created or moved before the backend
    has started and the first target is built, so a sweep that fails
    before its first run leaves ``out`` as it was (except for a lock file
    beside an existing store); each finished run is committed with its loss
    history in one transaction as soon as it arrives; a run already stored
    is never handed to a worker again (``attempts`` counts hand-overs); a
    run that raises is stored as ``status = "failed"`` with the error as
    ``message`` and the sweep goes on; the numbers of a run do not depend
    on where it ran (every worker computes with one BLAS thread, from the
    same target and seed), only the columns in :data:`PLACEMENT_COLUMNS`
    do.
    """
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    if scheduler is not None and dask_local:
        raise ValueError("give `scheduler` or `dask_local`, not both")
    if workers is not None:
        from ._validate import scalar

        workers = scalar(workers, "workers", low=0, integer=True)
        if workers == 0 and (scheduler is not None or dask_local):
            raise ValueError("`workers` = 0 (run in this process) excludes "
                             "`scheduler` and `dask_local`")
    if scheduler is not None:
        problem = scheduler_problem(scheduler)
        if problem:
            raise ValueError(f"`scheduler` {problem}")
    started = time.perf_counter()
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise StoreError(f"'{out}' exists and is not a directory")
    # Nothing is created or moved in `out` until the backend runs and the
    # first target is built: a sweep failing before its first run leaves
    # `out` as it was.
    store = _open_existing(sweep, out, new_store)
    backend = None
    try:
        finished = store.finished() if store is not None else {}
        todo = [r for r in sweep.runs if r.run_id not in finished
                or (retry_failed and finished[r.run_id] == "failed")]
        if todo:
            sweep.target(todo[0].params)
            backend = _backend(todo, workers, scheduler, dask_local)
        aside = None
        if store is None:
            store, aside = _new_store(sweep, out, new_store)
        report = SweepReport(store=store.path, total=len(sweep.runs), computed=0,
                             skipped=len(sweep.runs) - len(todo), counts={},
                             missing=len(todo), set_aside=aside)
        if backend is not None:
            _execute(sweep, store, todo, report, backend, retry_failed, progress)
            backend.close()
            backend = None
        return _finish(store, sweep, report, started)
    finally:
        if backend is not None:  # an error or Ctrl-C: abandon runs in progress
            backend.stop()
        if store is not None:
            store.close()


def scheduler_problem(address):
    """What is wrong with the form of a Dask scheduler address, or None.

    Only the form is checked (``PROTOCOL://HOST:PORT``, or ``HOST:PORT``
    for tcp; ``inproc://...`` as Dask writes it), not that a scheduler
    answers there.
    """
    form = ("must be a Dask scheduler address PROTOCOL://HOST:PORT, such as "
            "tcp://127.0.0.1:8786")
    if not isinstance(address, str):
        return f"{form}; got {address!r}"
    proto, sep, rest = address.partition("://")
    if not sep:
        proto, rest = "tcp", address
    if proto not in _DASK_PROTOCOLS:
        return (f"{form}; got {address!r} (protocol {proto!r} is not one of "
                f"{', '.join(_DASK_PROTOCOLS)})")
    if proto == "inproc":
        return None if rest else f"{form}; got {address!r}"
    host, sep, port = rest.rpartition(":")
    if not sep or not port:
        return f"{form}; got {address!r} (no port)"
    if not host:
        return f"{form}; got {address!r} (no host)"
    if not (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535):
        return f"{form}; got {address!r} (the port must be 1 .. 65535)"
    return None


_DASK_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss", "inproc")


def _finish(store, sweep, report, started):
    report.counts = dict(sorted(store.status_counts().items()))
    finished = store.finished()
    report.missing = sum(1 for r in sweep.runs if r.run_id not in finished)
    report.wall_time = time.perf_counter() - started
    return report


def _open_existing(sweep, out, new_store):
    """The store of ``out``, opened and locked, if it holds this sweep; None
    if there is none, or if ``new_store`` asks for a new one; SweepChanged
    if it holds another sweep."""
    if not os.path.lexists(_store.store_path(out)):
        return None
    store = Store.open(out)
    try:
        if store.meta().get("spec_hash") != sweep.spec_hash and not new_store:
            old_ids = store.config_ids()
            ids = {r.run_id for r in sweep.runs}
            raise SweepChanged(
                f"'{out}' holds the results of a different sweep: "
                f"{len(ids - old_ids)} of the {len(ids)} configurations of "
                f"'{sweep.source}' are not in it and {len(old_ids - ids)} of its "
                f"{len(old_ids)} are not in the sweep; results are not mixed. "
                "Use another output directory, or ask for a new store (the old "
                "one is kept as sweep.K.sqlite)")
        if new_store:
            store.close()
            return None
        store.lock()
    except BaseException:
        store.close()
        raise
    return store


def _new_store(sweep, out, new_store):
    """A new store in ``out`` (the old one set aside with ``new_store``),
    opened and locked; (store, path of the old one or None)."""
    aside = None
    if new_store and os.path.lexists(_store.store_path(out)):
        aside = _store.set_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"spec_hash": sweep.spec_hash, "name": sweep.name,
            "source": str(sweep.source), "text": sweep.text or "",
            "file_sha256": hashlib.sha256((sweep.text or "").encode()).hexdigest(),
            "bwfast_version": _version()}
    configs = ((r.run_id, r.index, r.params) for r in sweep.runs)
    store = Store.create(out, meta, configs)  # refuses a store that appeared
    try:
        store.lock()
    except BaseException:
        store.close()
        raise
    return store, aside


def _version():
    from . import __version__

    return __version__


def _backend(todo, workers, scheduler, dask_local):
    if scheduler is not None or dask_local:
        return _DaskPool(scheduler, workers or (None if scheduler else
                                                min(_cpu_count(), len(todo))))
    if workers == 0:
        return _InProcess()
    _warm_up({r.params["dtype"] for r in todo})
    return _LocalPool(min(workers or _cpu_count(), len(todo)))


def _execute(sweep, store, todo, report, backend, retry, progress):
    report.backend, report.workers = backend.name, backend.workers
    bar = _progress_bar(len(sweep.runs), report.skipped, progress, sweep.name)
    failed = [sum(1 for s in store.finished().values() if s == "failed")]
    queue = iter(todo)
    inflight = {}

    def fill():
        while len(inflight) < backend.slots:
            run = next(queue, None)
            if run is None:
                return
            target = sweep.target(run.params)
            store.add_attempt(run.run_id, backend.name)
            fut = backend.submit(_task(run, target))
            inflight[fut] = (run, target)

    def commit(fut):
        run, target = inflight.pop(fut)
        _, payload = backend.result(fut)
        _commit(store, run, target, payload, retry)
        report.computed += 1
        if payload["status"] == "failed":
            failed[0] += 1
        bar.set_postfix_str(f"failed {failed[0]}, left {bar.total - bar.n - 1}",
                            refresh=False)
        bar.update(1)

    try:
        fill()
        while inflight:
            for fut in backend.wait(list(inflight), timeout=0.5):
                commit(fut)
            fill()
    except KeyboardInterrupt:
        # runs that finished before the interruption are kept (the caller
        # stops the backend)
        for fut in [f for f in inflight if backend.succeeded(f)]:
            commit(fut)
        raise
    finally:
        bar.close()


def _task(run, target):
    p = run.params
    kwargs = {key: p[key] for key in ("tau", "lr", "steps", "tol", "seed", "init",
                                      "loss", "record_every", "dtype")}
    return run.run_id, target, tuple(p["widths"]), kwargs


def _commit(store, run, target, payload, retry):
    import numpy as np

    payload = dict(payload, eig_min=float(target.eigvals[-1]),
                   eig_max=float(target.eigvals[0]), target_rank=int(target.rank))
    for key, value in payload.items():  # SQLite stores NaN as NULL anyway
        if isinstance(value, float) and math.isnan(value):
            payload[key] = None
    steps = losses = None
    if "losses" in payload:
        steps = np.ascontiguousarray(payload["loss_steps"], dtype="<i8").tobytes()
        losses = np.ascontiguousarray(payload["losses"], dtype="<f8").tobytes()
    store.commit(run.run_id, payload, steps, losses, replace=retry)


def _progress_bar(total, initial, enabled, name):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"sweep {name}", unit="run",
                file=sys.stderr, dynamic_ncols=True, leave=False,
                disable=None if enabled is None else not enabled)


# --- results ----------------------------------------------------------------------


def _pandas(purpose):
    return _require("pandas", purpose)


def sweep_results(directory):
    """The stored runs as a tidy table: one row per finished run.

    Parameters
    ----------
    directory : str or os.PathLike
        The output directory of :func:`run_sweep`.

    Returns
    -------
    pandas.DataFrame
        Columns :data:`RESULT_COLUMNS`, rows in sweep order. ``status`` is
        ``converged``, ``step_limit``, ``diverged``, ``rank_dropped`` or
        ``failed`` (then ``message`` holds the error and the result columns
        are missing). ``final_loss``, ``optimum``, ``gap``, ``relative_gap``,
        ``steps_taken``, ``measure``, ``balancedness`` and ``lr_used`` are
        FitResult's ``loss``, ``optimum``, ... ``lr``; ``rate`` is
        ``FitResult.observed_rate`` (missing where not measurable),
        ``margin`` and ``predicted_rate`` FitResult's margin at the start and
        the theory's rate per unit time (missing outside its assumptions);
        ``wall_time`` the descent loop in seconds; ``eig_min``, ``eig_max``,
        ``target_rank`` describe the target actually used; ``lr`` and
        ``tol`` are missing where fit's default applied. Integer columns
        use pandas' nullable ``Int64``; ``started_at`` and ``finished_at``
        are UTC timestamps.
    """
    pd = _pandas("reading sweep results")
    with Store.open(directory) as store:
        rows = store.results()
    records = []
    for row in rows:
        rec = {"run_id": row["run_id"], "index": row["index"]}
        rec.update(_param_columns(row["params"]))
        rec.update({k: row[k] for k in _store.RESULT_NAMES})
        rec["attempts"] = row["attempts"]
        records.append(rec)
    df = pd.DataFrame.from_records(records, columns=list(RESULT_COLUMNS))
    for col in _INT_COLUMNS:
        df[col] = df[col].astype("Int64")
    for col in ("lambda_min", "lambda_max", "decay", "tau", "lr", "tol",
                "final_loss", "optimum", "gap", "relative_gap", "rate", "margin",
                "predicted_rate", "wall_time",
                "lr_used", "tol_used", "measure", "balancedness", "eig_min",
                "eig_max"):
        df[col] = df[col].astype("float64")
    df["rotate"] = df["rotate"].astype("boolean")
    for col in ("started_at", "finished_at"):
        df[col] = pd.to_datetime(df[col].astype("float64"), unit="s", utc=True)
    return df


def sweep_histories(directory):
    """Loss histories of the stored runs in long format.

    Returns
    -------
    pandas.DataFrame
        Columns ``run_id``, ``index``, ``step``, ``loss``: one row per
        recorded loss (every ``record_every`` steps and the last step, as in
        ``FitResult.loss_steps`` and ``losses``), runs in sweep order.
        Failed runs have no history.
    """
    import numpy as np

    pd = _pandas("reading sweep histories")
    ids, idxs, steps, losses = [], [], [], []
    with Store.open(directory) as store:
        for rid, idx, s, v in store.histories():
            s = np.frombuffer(s, dtype="<i8")
            ids.append(np.full(s.size, rid, dtype=object))
            idxs.append(np.full(s.size, idx, dtype=np.int64))
            steps.append(s)
            losses.append(np.frombuffer(v, dtype="<f8"))

    def cat(parts, dtype):
        return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

    return pd.DataFrame({
        "run_id": cat(ids, object), "index": cat(idxs, np.int64),
        "step": cat(steps, np.int64), "loss": cat(losses, np.float64)})


def _check_export_path(path):
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in (".parquet", ".csv"):
        raise ValueError(f"export file '{path}' must end in .parquet or .csv")
    if ext == ".parquet":
        _require("pyarrow", "writing Parquet files")
    _pandas("exporting sweep results")
    return path, ext


def export_sweep(directory, path, *, histories=False, overwrite=False):
    """Write the results table (or the loss histories) to Parquet or CSV.

    Parameters
    ----------
    directory : str or os.PathLike
        Output directory of :func:`run_sweep`.
    path : str or os.PathLike
        ``.parquet`` (pyarrow; ``pandas.read_parquet`` reads it back with
        the same dtypes) or ``.csv`` (comma separated, one header row,
        missing values empty, timestamps ISO 8601).
    histories : bool
        Write :func:`sweep_histories` instead of :func:`sweep_results`.
    overwrite : bool
        Replace an existing regular file; never a symbolic link or a
        directory. Without it an existing path is an error and stays as it
        was. The file is written under a temporary name in the same
        directory and renamed into place, so a crash never leaves a partial
        file under ``path``.

    Returns
    -------
    int
        Rows written.
    """
    path, ext = _check_export_path(path)
    _check_new_file(path, overwrite)
    df = sweep_histories(directory) if histories else sweep_results(directory)
    if ext == ".parquet":
        _publish(path, lambda tmp: df.to_parquet(tmp, engine="pyarrow", index=False),
                 overwrite)
    else:
        _publish(path, lambda tmp: df.to_csv(tmp, index=False), overwrite)
    return len(df)


def _check_new_file(path, overwrite):
    path = Path(path)
    if os.path.lexists(path):
        if path.is_symlink() or not path.is_file():
            raise FileExistsError(f"'{path}' exists and is not a regular file; "
                                  "not replaced")
        if not overwrite:
            raise FileExistsError(f"'{path}' exists; not overwritten")
    parent = path.parent
    if not parent.is_dir():
        raise FileNotFoundError(f"'{parent}' is not a directory; cannot write "
                                f"'{path}'")


def _publish(path, write, overwrite):
    """write(tmp) into a temporary file beside path, then move it into place:
    a hard link when not overwriting (fails if anything appeared there)."""
    import tempfile

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".bwfast-", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)
        if overwrite:
            _check_new_file(path, overwrite)
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(f"'{path}' appeared meanwhile; not overwritten"
                                  ) from None
        except OSError:  # no hard links on this file system
            _check_new_file(path, overwrite)
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


# --- plot -------------------------------------------------------------------------


def _parse_where(where):
    """{column: value} from a dict or from "col=value" strings."""
    if where is None:
        return {}
    if isinstance(where, dict):
        return dict(where)
    if isinstance(where, str):
        where = [where]
    out = {}
    for item in where:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"where: expected COLUMN=VALUE; got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _matches(series, value):
    """Boolean mask of series == value; text compared as numbers when the
    column is numeric."""
    import numpy as np

    pd = _pandas("plotting sweep results")
    if pd.api.types.is_bool_dtype(series) and isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ValueError(f"where: {series.name} is true or false; got {value!r}")
        return series == (value.lower() == "true")
    if pd.api.types.is_numeric_dtype(series):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"where: {series.name} is numeric; got {value!r}"
                             ) from None
        values = series.astype("float64").to_numpy()
        return pd.Series(np.isclose(values, number, rtol=1e-12, atol=0.0),
                         index=series.index)
    return series.astype(str) == str(value)


_AGGREGATES = ("mean", "median", "min", "max")


def plot_sweep(source, path, *, x, y, value, where=None, agg=None, contour=False,
               log=False, overwrite=False):
    """Draw one result column over two parameters as a heatmap or contour.

    Parameters
    ----------
    source : str, os.PathLike or pandas.DataFrame
        An output directory of :func:`run_sweep`, or a table from
        :func:`sweep_results`.
    path : str or os.PathLike
        The ``.png`` file to write (Agg backend).
    x, y : str
        Columns of the horizontal and vertical axes (``depth``,
        ``lambda_min``, ``tau``, ...).
    value : str
        Numeric column drawn as colour (``rate``, ``relative_gap``,
        ``steps_taken``, ...). Cells without a value (failed runs, rates not
        measurable, combinations not run) are grey; ValueError when no
        selected run has a finite value.
    where : dict, "COLUMN=VALUE" or list of "COLUMN=VALUE", optional
        Keep only the runs matching every condition (``{"tau": 0}``,
        ``"tau=0"``, ``["tau=0", "depth=4"]``).
    agg : {"mean", "median", "min", "max"}, optional
        How to combine several runs in one cell; without it a cell may hold
        one run only, and an error names the columns that vary within
        cells.
    contour : bool
        Filled contours over the numeric values of x and y (log axes for
        positive values spanning two decades or more) instead of a heatmap
        of the grid cells.
    log : bool
        Logarithmic colour scale (all values must be positive).
    overwrite : bool
        As in :func:`export_sweep`.

    Returns
    -------
    pandas.DataFrame
        The plotted grid: index the y values, columns the x values.
    """
    import numpy as np

    pd = _pandas("plotting sweep results")
    _require("matplotlib", "plotting sweep results")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"plot file '{path}' must end in .png")
    _check_new_file(path, overwrite)
    df = source if isinstance(source, pd.DataFrame) else sweep_results(source)
    for role, col in (("x", x), ("y", y), ("value", value)):
        if col not in df.columns:
            raise ValueError(f"{role}: no column {col!r}; columns: "
                             f"{', '.join(df.columns)}")
    if x == y:
        raise ValueError(f"x and y must be different columns; both are {x!r}")
    if not pd.api.types.is_numeric_dtype(df[value]) or pd.api.types.is_bool_dtype(
            df[value]):
        raise ValueError(f"value: column {value!r} is not numeric")
    if agg is not None and agg not in _AGGREGATES:
        raise ValueError(f"agg must be one of {', '.join(_AGGREGATES)}; got {agg!r}")
    conditions = _parse_where(where)
    for col, wanted in conditions.items():
        if col not in df.columns:
            raise ValueError(f"where: no column {col!r}")
        df = df[_matches(df[col], wanted)]
    if df.empty:
        raise ValueError("no stored run matches" + (
            f" {', '.join(f'{k}={v}' for k, v in conditions.items())}"
            if conditions else ""))
    if df[x].isna().any() or df[y].isna().any():
        col = x if df[x].isna().any() else y
        raise ValueError(f"column {col!r} is missing for some runs; select the "
                         "runs where it is set with where")
    sizes = df.groupby([x, y]).size()
    if agg is None and (sizes > 1).any():
        varying = [c for c in RESULT_COLUMNS[:RESULT_COLUMNS.index("status")]
                   if c not in ("run_id", "index", x, y)
                   and df.groupby([x, y])[c].nunique(dropna=False).max() > 1]
        def values(c):
            seen = sorted(df[c].dropna().unique(), key=_sort_key)[:6]
            return ", ".join(_fmt(v) for v in seen)

        detail = "; ".join(f"{c} takes {values(c)}" for c in varying[:3])
        raise ValueError(
            f"several runs fall in one ({x}, {y}) cell ({detail}); keep one "
            f"with where (e.g. --where {varying[0] if varying else 'COLUMN'}=VALUE) "
            "or combine them with agg (mean, median, min, max)")
    values = df[value].astype("float64")
    if not np.isfinite(values.to_numpy()).any():
        raise ValueError(f"no finite values of {value} in the selected runs "
                         f"({len(df)} run{'s' if len(df) != 1 else ''})")
    grid = values.groupby([df[x], df[y]]).agg(agg or "first").unstack(x)
    grid = grid.reindex(index=sorted(grid.index, key=_sort_key),
                        columns=sorted(grid.columns, key=_sort_key))
    title = f"{value} over {x} and {y}"
    if conditions:
        title += f" ({', '.join(f'{k} = {v}' for k, v in conditions.items())})"
    if agg:
        title += f", {agg} per cell"
    _publish(path, lambda tmp: _draw(grid, tmp, x, y, value, title, contour, log),
             overwrite)
    return grid


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _draw(grid, path, x, y, value, title, contour, log):
    import numpy as np
    from matplotlib import colormaps, colors
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = grid.to_numpy(dtype=np.float64)
    finite = z[np.isfinite(z)]
    norm = None
    if log:
        if finite.size and (finite <= 0).any():
            raise ValueError(f"log colour scale: {value} has values <= 0 "
                             f"(smallest {finite.min():.3g})")
        if finite.size:
            norm = colors.LogNorm(vmin=finite.min(), vmax=finite.max())
    cmap = colormaps["viridis"].with_extremes(bad="0.8")  # grey: no value
    fig = Figure(figsize=(7.0, 5.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    masked = np.ma.masked_invalid(z)
    if contour:
        xs = _numeric_axis(grid.columns, x)
        ys = _numeric_axis(grid.index, y)
        if finite.size < 4 or len(xs) < 2 or len(ys) < 2:
            raise ValueError("contour needs at least 2 values of x and of y and "
                             "4 cells with a value; draw a heatmap instead")
        X, Y = np.meshgrid(xs, ys)
        levels = (np.geomspace(finite.min(), finite.max(), 13) if log
                  and finite.min() < finite.max() else 12)
        mesh = ax.contourf(X, Y, masked, levels=levels, cmap=cmap, norm=norm)
        ax.plot(X.ravel(), Y.ravel(), "k.", markersize=3, clip_on=False)
        for axis, vals in (("x", xs), ("y", ys)):
            if vals.min() > 0 and vals.max() / vals.min() >= 100:
                getattr(ax, f"set_{axis}scale")("log")
    else:
        nx, ny = z.shape[1], z.shape[0]
        mesh = ax.pcolormesh(np.arange(nx + 1), np.arange(ny + 1), masked,
                             cmap=cmap, norm=norm, edgecolors="white",
                             linewidth=0.5)
        ax.set_xticks(np.arange(nx) + 0.5, [_fmt(v) for v in grid.columns])
        ax.set_yticks(np.arange(ny) + 0.5, [_fmt(v) for v in grid.index])
        if nx * ny <= 150:
            mid = (np.log(finite.min() * finite.max()) / 2 if log and finite.size
                   else (finite.min() + finite.max()) / 2 if finite.size else 0)
            for i in range(ny):
                for j in range(nx):
                    v = z[i, j]
                    if not np.isfinite(v):
                        continue
                    dark = (np.log(v) if log else v) < mid
                    ax.text(j + 0.5, i + 0.5, f"{v:.3g}", ha="center",
                            va="center", fontsize=7,
                            color="white" if dark else "black")
    if log:
        from matplotlib.ticker import LogFormatterSciNotation, LogLocator

        fig.colorbar(mesh, ax=ax, label=value, ticks=LogLocator(),
                     format=LogFormatterSciNotation())
    else:
        fig.colorbar(mesh, ax=ax, label=value)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title, fontsize=10)
    fig.savefig(path, format="png")


def _numeric_axis(values, name):
    import numpy as np

    try:
        return np.array([float(v) for v in values])
    except (TypeError, ValueError):
        raise ValueError(f"contour: {name} is not numeric; draw a heatmap instead"
                         ) from None


# --- store summary ----------------------------------------------------------------


def store_summary(directory):
    """{name, source, total, counts, missing, created_at} of a store."""
    # counted by SQLite: no configuration is read (a store may hold 10**6)
    with Store.open(directory) as store:
        meta = store.meta()
        total = store.count_configs()
        counts = store.status_counts()
    return {"name": meta.get("name", ""), "source": meta.get("source", ""),
            "total": total, "counts": dict(sorted(counts.items())),
            "missing": total - sum(counts.values()),
            "store": str(_store.store_path(directory))}
