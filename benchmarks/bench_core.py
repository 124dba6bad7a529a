"""asv benchmarks: one class per operation, bwfast against bwfast.reference.

Inputs are built and kernels compiled in ``setup``; the first-call cost of
compilation is measured on its own by the ``timeraw_`` benchmarks.
"""

import numpy as np

import bwfast
from bwfast import bench, reference

IMPLS = {"bwfast": bwfast, "reference": reference}


def _spd(n, dtype="float64", seed=0):
    return bench._spd(n, seed, np.dtype(dtype))


def _only_float64(impl, dtype):
    if impl == "reference" and dtype == "float32":
        raise NotImplementedError("the reference computes in float64 only")


class SqrtmPsd:
    params = (["bwfast", "reference"], [16, 128, 1024], ["float64", "float32"])
    param_names = ["impl", "n", "dtype"]
    timeout = 120

    def setup(self, impl, n, dtype):
        _only_float64(impl, dtype)
        self.f = IMPLS[impl].sqrtm_psd
        self.A = _spd(n, dtype)
        self.f(self.A)

    def time_sqrtm_psd(self, impl, n, dtype):
        self.f(self.A)

    def peakmem_sqrtm_psd(self, impl, n, dtype):
        self.f(self.A)


class BatchedSqrtm:
    """100 000 matrices of 4 x 4: bwfast against NumPy's batched eigh route."""

    params = (["bwfast", "numpy"],)
    param_names = ["impl"]

    def setup(self, impl):
        rng = np.random.default_rng(0)
        X = rng.standard_normal((100_000, 4, 4))
        self.A = X @ np.swapaxes(X, -1, -2) + 0.1 * np.eye(4)
        if impl == "bwfast":
            self.f = bwfast.sqrtm_psd
        else:
            def f(A):
                w, Q = np.linalg.eigh(A)
                r = np.sqrt(np.maximum(w, 0))[..., None, :]
                return (Q * r) @ np.swapaxes(Q, -1, -2)
            self.f = f
        self.f(self.A)

    def time_batched_sqrtm(self, impl):
        self.f(self.A)


class BuresWasserstein:
    params = (["bwfast", "reference"], [16, 128, 1024])
    param_names = ["impl", "n"]
    timeout = 120

    def setup(self, impl, n):
        self.f = IMPLS[impl].bures_wasserstein_squared
        self.A = _spd(n, seed=0)
        self.B = _spd(n, seed=1)
        self.f(self.A, self.B)

    def time_bures_wasserstein_squared(self, impl, n):
        self.f(self.A, self.B)


class LossAndGrad:
    """Depth 3, n = d_0; widths n, k, k, n with k = n / 16, or all n."""

    params = (["bwfast", "reference"], [256, 1024], [0.0, 0.5],
              ["none", "n/16"], ["float64", "float32"])
    param_names = ["impl", "n", "tau", "bottleneck", "dtype"]
    timeout = 180

    def setup(self, impl, n, tau, bottleneck, dtype):
        _only_float64(impl, dtype)
        k = n if bottleneck == "none" else n // 16
        widths = (n, k, k, n)
        self.ws = bench._layers(widths, dtype=np.dtype(dtype))
        cov = _spd(n)
        self.target = bwfast.Target(cov) if impl == "bwfast" else cov
        self.f = IMPLS[impl].loss_and_grad
        self.f(self.ws, self.target, tau)

    def time_loss_and_grad(self, impl, n, tau, bottleneck, dtype):
        self.f(self.ws, self.target, tau)

    def peakmem_loss_and_grad(self, impl, n, tau, bottleneck, dtype):
        self.f(self.ws, self.target, tau)


class GradientStep:
    """100 GD steps at n = width = 20: the paper's regime."""

    params = (["bwfast", "reference"], [10, 100], [0.0, 0.5])
    param_names = ["impl", "depth", "tau"]
    timeout = 120

    def setup(self, impl, depth, tau):
        n = 20
        widths = (n,) * (depth + 1)
        self.cov = _spd(n)
        target = bwfast.Target(self.cov)
        W0 = np.random.default_rng(0).standard_normal((n, n)) / np.sqrt(n)
        self.ws = bwfast.balanced_weights(W0, widths)
        self.tau = tau
        self.lr = bwfast.default_lr(target, widths, tau)
        if impl == "bwfast":
            self.run = bench.stepper(target, widths, self.ws, tau, self.lr, 100)
        else:
            self.run = self._reference_steps
        self.run()

    def _reference_steps(self):
        ws = self.ws
        for _ in range(100):
            ws = reference.gd_step(ws, self.cov, self.tau, self.lr)

    def time_100_steps(self, impl, depth, tau):
        self.run()


class WideStep:
    """GD steps at n = d_0 = 64, depth 4, hidden width h (no h x h temporary)."""

    params = ([1024, 2048, 4096],)
    param_names = ["width"]
    timeout = 300

    def setup(self, width):
        widths = (64, width, width, width, 64)
        target = bwfast.Target(_spd(64))
        ws = bench._wide_layers(widths)  # balanced: stable under repeated steps
        self.run = bench.stepper(target, widths, ws, 0.0,
                                 bwfast.default_lr(target, widths), 2)
        self.run()

    def time_two_steps(self, width):
        self.run()

    def peakmem_two_steps(self, width):
        self.run()


class DigitsFit:
    """The default job of `bwfast fit`, kernels compiled in setup."""

    timeout = 120

    def setup(self):
        from bwfast.io import default_target

        self.target = default_target()
        bwfast.fit(self.target, (64, 16, 16, 64), steps=1)

    def time_default_job(self):
        bwfast.fit(self.target, (64, 16, 16, 64))


class FirstCall:
    """Import and compilation cost, each in a fresh process."""

    timeout = 300

    def timeraw_import(self):
        return "import bwfast"

    def timeraw_fit_cold_cache(self):
        # a fresh Numba cache folder: every kernel of the default job compiles
        return """
import os, tempfile
os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp()
import bwfast
from bwfast.io import default_target
bwfast.fit(default_target(), (64, 16, 16, 64), steps=1)
"""

    def timeraw_fit_warm_cache(self):
        return """
import bwfast
from bwfast.io import default_target
bwfast.fit(default_target(), (64, 16, 16, 64), steps=1)
"""
