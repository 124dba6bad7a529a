"""The results store of a sweep: one SQLite file, one transaction per run.

Layout of ``DIR/sweep.sqlite``:

- ``meta(key, value)``: format version, the sweep's content hash, the text
  of the sweep file, bwfast version, creation time.
- ``configs(run_id, idx, params)``: every configuration of the sweep,
  written once when the store is created.
- ``runs(run_id, ...)``: one row per finished run (failed ones included),
  inserted with its loss history in ``histories`` in one transaction.
- ``attempts(run_id, attempt, dispatched_at, backend)``: one row each time
  a run is handed to a worker, so that a resumed sweep can show that no
  committed run was computed again.

The database runs in WAL mode with synchronous=NORMAL: a committed run
survives the process being killed at any moment (SIGKILL included); a power
failure may lose the last commits, never the store's consistency. One
process at a time runs a sweep on a store (an advisory lock on
``DIR/sweep.lock``); reading (export, plot) needs no lock.
"""

import json
import os
import sqlite3
import time
from pathlib import Path

FORMAT = "bwfast-sweep-1"
STORE_NAME = "sweep.sqlite"
LOCK_NAME = "sweep.lock"

# Result columns of the runs table, in order, with their SQLite type.
RESULT_FIELDS = (
    ("status", "TEXT NOT NULL"),
    ("message", "TEXT"),
    ("final_loss", "REAL"),
    ("optimum", "REAL"),
    ("gap", "REAL"),
    ("relative_gap", "REAL"),
    ("steps_taken", "INTEGER"),
    ("rate", "REAL"),
    ("margin", "REAL"),
    ("predicted_rate", "REAL"),
    ("wall_time", "REAL"),
    ("lr_used", "REAL"),
    ("tol_used", "REAL"),
    ("measure", "REAL"),
    ("balancedness", "REAL"),
    ("eig_min", "REAL"),
    ("eig_max", "REAL"),
    ("target_rank", "INTEGER"),
    ("started_at", "REAL"),
    ("finished_at", "REAL"),
    ("worker", "TEXT"),
)
RESULT_NAMES = tuple(name for name, _ in RESULT_FIELDS)

_SCHEMA = f"""
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE configs (
    run_id TEXT PRIMARY KEY, idx INTEGER NOT NULL UNIQUE, params TEXT NOT NULL);
CREATE TABLE runs (
    run_id TEXT PRIMARY KEY REFERENCES configs(run_id),
    {", ".join(f"{name} {kind}" for name, kind in RESULT_FIELDS)});
CREATE TABLE histories (
    run_id TEXT PRIMARY KEY REFERENCES runs(run_id),
    steps BLOB NOT NULL, losses BLOB NOT NULL);
CREATE TABLE attempts (
    run_id TEXT NOT NULL REFERENCES configs(run_id), attempt INTEGER NOT NULL,
    dispatched_at REAL NOT NULL, backend TEXT NOT NULL,
    PRIMARY KEY (run_id, attempt));
"""


class StoreError(ValueError):
    """A store that cannot be used as asked (not a store, another sweep's,
    locked by a running sweep)."""


def store_path(directory):
    return Path(directory) / STORE_NAME


class Store:
    """An open results store (use as a context manager, or call close)."""

    def __init__(self, path, conn):
        self.path = Path(path)
        self.conn = conn
        self._lock = None

    # --- opening -------------------------------------------------------------

    @classmethod
    def open(cls, directory):
        """Open the store of a directory (or a store file itself, such as a
        set-aside ``sweep.1.sqlite``); StoreError if there is none."""
        path = Path(directory)
        if not path.is_file():
            path = store_path(directory)
        if not os.path.lexists(path):
            raise StoreError(f"'{directory}' holds no sweep store ({STORE_NAME})")
        if path.is_symlink() or not path.is_file():
            raise StoreError(f"'{path}' is not a regular file; not opened")
        conn = None
        try:
            # mode=rw: never create a file that is not there
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True,
                                   timeout=30.0, isolation_level=None)
            fmt = conn.execute(
                "SELECT value FROM meta WHERE key = 'format'").fetchone()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            raise StoreError(
                f"'{path}' is not a bwfast sweep store ({exc}); not touched"
            ) from None
        if fmt is None or fmt[0] != FORMAT:
            conn.close()
            found = "no format mark" if fmt is None else f"format {fmt[0]!r}"
            raise StoreError(
                f"'{path}' is not a bwfast sweep store of format {FORMAT!r} "
                f"({found}); not touched")
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:  # read-only: reading still works
            pass
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        return cls(path, conn)

    @classmethod
    def create(cls, directory, meta, configs):
        """Create a new store in ``directory`` (which must hold none).

        ``meta``: dict of str -> str; ``configs``: (run_id, idx, params dict).
        The file appears under its final name only once complete: it is
        built under a temporary name and hard-linked into place, which
        fails rather than replaces if a store appeared meanwhile.
        """
        directory = Path(directory)
        path = store_path(directory)
        tmp = directory / f".{STORE_NAME}.{os.getpid()}.tmp"
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.executescript(_SCHEMA)
            with conn:
                conn.execute("BEGIN")
                rows = dict(meta, format=FORMAT, created_at=repr(time.time()))
                conn.executemany("INSERT INTO meta VALUES (?, ?)", rows.items())
                conn.executemany(
                    "INSERT INTO configs VALUES (?, ?, ?)",
                    ((rid, idx, _dumps(params)) for rid, idx, params in configs))
            conn.close()
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise StoreError(
                    f"'{path}' appeared while the store was being created; "
                    "not replaced") from None
            except OSError:  # no hard links here: check, then rename
                if os.path.lexists(path):
                    raise StoreError(f"'{path}' exists; not replaced") from None
                os.replace(tmp, path)
        finally:
            conn.close()
            tmp.unlink(missing_ok=True)
        return cls.open(directory)

    def lock(self):
        """Take the advisory lock of a running sweep; StoreError if taken."""
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        fd = os.open(self.path.with_name(LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"another 'bwfast sweep' is running on '{self.path.parent}'; "
                "wait for it to finish (or stop it) first") from None
        self._lock = fd

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        if self._lock is not None:
            os.close(self._lock)  # releases the flock
            self._lock = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # --- reading -------------------------------------------------------------

    def meta(self):
        return dict(self.conn.execute("SELECT key, value FROM meta"))

    def configs(self):
        """[(run_id, idx, params dict)] in index order."""
        rows = self.conn.execute(
            "SELECT run_id, idx, params FROM configs ORDER BY idx")
        return [(rid, idx, json.loads(params)) for rid, idx, params in rows]

    def count_configs(self):
        """The number of configurations."""
        return self.conn.execute("SELECT COUNT(*) FROM configs").fetchone()[0]

    def config_ids(self):
        """{run_id} of the configurations."""
        return {rid for (rid,) in self.conn.execute("SELECT run_id FROM configs")}

    def status_counts(self):
        """{status: number of stored runs}."""
        return dict(self.conn.execute(
            "SELECT status, COUNT(*) FROM runs GROUP BY status"))

    def finished(self):
        """{run_id: status} of the runs with a stored result."""
        return dict(self.conn.execute("SELECT run_id, status FROM runs"))

    def attempts(self):
        """{run_id: number of times the run was handed to a worker}."""
        return dict(self.conn.execute(
            "SELECT run_id, COUNT(*) FROM attempts GROUP BY run_id"))

    def results(self):
        """Rows of the finished runs joined with their configuration and
        attempt count, in index order: list of dicts."""
        names = ", ".join(f"r.{name}" for name in RESULT_NAMES)
        rows = self.conn.execute(
            f"SELECT c.run_id, c.idx, c.params, {names}, "
            "(SELECT COUNT(*) FROM attempts a WHERE a.run_id = c.run_id) "
            "FROM configs c JOIN runs r ON r.run_id = c.run_id ORDER BY c.idx")
        out = []
        for row in rows:
            rid, idx, params = row[:3]
            rec = {"run_id": rid, "index": idx, "params": json.loads(params)}
            rec.update(zip(RESULT_NAMES, row[3:-1]))
            rec["attempts"] = row[-1]
            out.append(rec)
        return out

    def histories(self):
        """Yield (run_id, idx, steps bytes, losses bytes) in index order."""
        yield from self.conn.execute(
            "SELECT c.run_id, c.idx, h.steps, h.losses FROM histories h "
            "JOIN configs c ON c.run_id = h.run_id ORDER BY c.idx")

    # --- writing -------------------------------------------------------------

    def add_attempt(self, run_id, backend):
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            (count,) = self.conn.execute(
                "SELECT COUNT(*) FROM attempts WHERE run_id = ?", (run_id,)
            ).fetchone()
            self.conn.execute("INSERT INTO attempts VALUES (?, ?, ?, ?)",
                              (run_id, count + 1, time.time(), backend))

    def commit(self, run_id, result, steps=None, losses=None, replace=False):
        """Store one finished run (and its history) in one transaction.

        ``replace`` allows overwriting a stored *failed* result of the same
        run (a retry); any other existing row is an error, never replaced.
        """
        values = [result.get(name) for name in RESULT_NAMES]
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            if replace:  # a failed run has no history
                self.conn.execute(
                    "DELETE FROM runs WHERE run_id = ? AND status = 'failed'",
                    (run_id,))
            self.conn.execute(
                f"INSERT INTO runs (run_id, {', '.join(RESULT_NAMES)}) VALUES "
                f"({', '.join('?' * (len(RESULT_NAMES) + 1))})",
                [run_id, *values])
            if steps is not None:
                self.conn.execute("INSERT INTO histories VALUES (?, ?, ?)",
                                  (run_id, steps, losses))


def _dumps(params):
    return json.dumps(params, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)


def backup_name(directory):
    """The first free ``sweep.K.sqlite`` name (K = 1, 2, ...) in directory."""
    directory = Path(directory)
    k = 1
    while True:
        candidate = directory / f"sweep.{k}.sqlite"
        if not any(os.path.lexists(f"{candidate}{s}") for s in ("", "-wal", "-shm")):
            return candidate
        k += 1


def set_aside(directory):
    """Move the store of ``directory`` to a backup name, with its WAL
    checkpointed into it first (nothing it holds is lost); returns the new
    path."""
    store = Store.open(directory)
    try:
        store.lock()
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.conn.execute("PRAGMA journal_mode=DELETE")  # no -wal file left
    finally:
        lock, store._lock = store._lock, None
        store.close()
    try:
        target = backup_name(directory)
        try:
            os.link(store.path, target)  # fails rather than replaces
        except FileExistsError:
            raise StoreError(f"'{target}' appeared meanwhile; not replaced") from None
        except OSError:  # no hard links on this file system
            os.rename(store.path, target)
        else:
            os.unlink(store.path)
    finally:
        if lock is not None:
            os.close(lock)
    return target
