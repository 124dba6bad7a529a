"""What a sweep worker runs: one configuration in, one result payload out.

Only the standard library is imported at module level: a process-pool
worker unpickles its initializer from here before anything else, and
:func:`init_worker` must set the thread variables before NumPy, OpenBLAS
and Numba load in that process.
"""

import contextlib
import os
import socket
import threading
import time

# Thread-count variables of the BLAS and OpenMP runtimes NumPy and Numba
# may load: one thread each, so that the workers of a pool share the cores
# instead of oversubscribing them.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)

# Set in a pool worker by init_worker: the parent's stop request.
_stop = None


class Cancelled(Exception):
    """The sweep was interrupted while this run was in progress; the run is
    discarded, not recorded."""


def init_worker(stop, parent_pid):
    """Initializer of a local process-pool worker.

    One thread for BLAS, OpenMP and Numba; SIGINT ignored (Ctrl-C in a
    terminal reaches the whole process group, and only the parent decides
    what an interruption does); ``stop`` checked between compiled chunks of
    every run; and a watchdog that ends the worker when the parent process
    is gone (killed), so that no orphan keeps computing.
    """
    import signal

    for name in THREAD_VARIABLES:
        os.environ[name] = "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _stop
    _stop = stop
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="bwfast-sweep-watchdog").start()
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _watch_parent(parent_pid):
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(0.5)


# BLAS threads are a process-wide setting: a refcount keeps one limit in
# force while any run of this process is in progress (Dask may run several
# tasks as threads of one process), so that no run restores the thread
# count under another one.
_blas_lock = threading.Lock()
_blas_users = 0
_blas_context = None


@contextlib.contextmanager
def one_blas_thread():
    """BLAS held to one thread for as long as any run of the process runs."""
    global _blas_users, _blas_context
    with _blas_lock:
        if _blas_users == 0:
            from threadpoolctl import threadpool_limits

            _blas_context = threadpool_limits(limits=1)
        _blas_users += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_users -= 1
            if _blas_users == 0:
                _blas_context.restore_original_limits()
                _blas_context = None


def _check_stop(step, loss):
    if _stop is not None and _stop.is_set():
        raise Cancelled("the sweep was interrupted")


def execute(task):
    """Run one configuration; returns ``(run_id, payload)``.

    ``task`` is ``(run_id, target, widths, fit_kwargs)``. A run whose fit
    raises (an invalid value only fit can judge, a numerical failure) comes
    back as a payload with status ``"failed"`` and the error's message; only
    an interruption of the sweep (:class:`Cancelled`) propagates.
    """
    import numpy as np

    from .train import fit

    run_id, target, widths, kwargs = task
    started = time.time()
    payload = {"started_at": started, "worker": f"{socket.gethostname()}:{os.getpid()}"}
    try:
        with one_blas_thread():
            # the store keeps no diagnostics: skip recording them
            res = fit(target, widths, callback=_check_stop,
                      **{"diagnostics": False, **kwargs})
            rate = res.observed_rate
            balance = res.balancedness
    except Cancelled:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure is a result
        text = " ".join(str(exc).split())
        payload.update(status="failed",
                       message=f"{type(exc).__name__}: {text}" if text
                       else type(exc).__name__)
    else:
        payload.update(
            status=str(res.status.value),
            message=str(res.message),
            final_loss=float(res.loss),
            optimum=float(res.optimum),
            gap=float(res.gap),
            relative_gap=float(res.relative_gap),
            steps_taken=int(res.steps),
            rate=float(rate),
            margin=float(res.margin),
            predicted_rate=float(res.predicted_rate),
            wall_time=float(res.wall_time),
            lr_used=float(res.lr),
            tol_used=float(res.tol),
            measure=float(res.measure),
            balancedness=float(balance),
            loss_steps=np.asarray(res.loss_steps, dtype=np.int64),
            losses=np.asarray(res.losses, dtype=np.float64),
        )
    payload["finished_at"] = time.time()
    return run_id, payload
