"""Throughput of sweeps on the local process pool: runs per second with 1
and 2 workers, on a batch of runs of identical cost.

Each run trains n = width = 20, depth 8, tau = 0.5 for a fixed number of
steps (tol = 0, so that none stops early; about 0.5 s each). The pool is
started and every worker has loaded the compiled kernels before the clock
starts, so that the figure is the steady rate of a long sweep, not the
start-up of its processes. Run it directly for the ratio::

    python benchmarks/bench_sweep.py [--runs 8] [--repeat 3]

or through asv (``SweepThroughput.track_runs_per_second``).
"""

import argparse
import time

from bwfast import sweep as sw
from bwfast._sweep_worker import execute  # noqa: F401 - importable in workers
from bwfast.targets import synthetic_target

N = 20
DEPTH = 8
STEPS = 12000


def _tasks(count, steps=STEPS):
    target = synthetic_target("power", N, lambda_min=0.01, seed=0)
    widths = (N,) * (DEPTH + 1)
    kwargs = dict(tau=0.5, lr=None, steps=steps, tol=0.0, seed=0,
                  init="balanced", loss="bw", record_every=10, dtype="float64")
    return [(f"bench-{i}", target, widths, dict(kwargs, seed=i))
            for i in range(count)]


def _drain(pool, tasks):
    futures = [pool.submit(task) for task in tasks]
    for fut in futures:
        fut.result()


def start_pool(workers):
    """A local sweep pool whose workers are all started and warm."""
    sw._warm_up({"float64"})  # compile (or load) once, before the workers
    pool = sw._LocalPool(workers)
    # one short run per worker at a time, long enough that every worker
    # takes one: all processes are spawned and have loaded the kernels
    _drain(pool, _tasks(2 * workers, steps=1500))
    return pool


def runs_per_second(pool, runs):
    tasks = _tasks(runs)
    start = time.perf_counter()
    _drain(pool, tasks)
    return runs / (time.perf_counter() - start)


class SweepThroughput:
    """asv: runs per second of the local pool, by number of workers."""

    params = ([1, 2],)
    param_names = ["workers"]
    unit = "runs/s"
    timeout = 300
    number = 1
    repeat = 1

    def setup(self, workers):
        self.pool = start_pool(workers)

    def teardown(self, workers):
        self.pool.close()

    def track_runs_per_second(self, workers):
        return runs_per_second(self.pool, 4 * workers)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=8,
                        help="runs per batch (default: 8)")
    parser.add_argument("--repeat", type=int, default=3,
                        help="best of this many batches (default: 3)")
    args = parser.parse_args()
    rates = {}
    for workers in (1, 2):
        pool = start_pool(workers)
        try:
            rates[workers] = max(runs_per_second(pool, args.runs)
                                 for _ in range(args.repeat))
        finally:
            pool.close()
        print(f"{workers} worker{'s' if workers > 1 else ' '}: "
              f"{rates[workers]:.3f} runs/s ({1 / rates[workers]:.2f} s per run)")
    print(f"ratio 2 / 1 workers: {rates[2] / rates[1]:.2f}x "
          f"(best of {args.repeat} batches of {args.runs} runs)")


if __name__ == "__main__":
    main()
