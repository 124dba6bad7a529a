"""asv benchmarks: matrix functions, distances, network loss and training."""

import numpy as np

import bwfast
from bwfast import reference

IMPLS = {"bwfast": bwfast, "reference": reference}


def _spd(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n))
    return (X @ X.T / n + 0.1 * np.eye(n)).astype(dtype)


class SqrtmPsd:
    params = (["bwfast", "reference"], [16, 128, 512], ["float64", "float32"])
    param_names = ["impl", "n", "dtype"]

    def setup(self, impl, n, dtype):
        if impl == "reference" and dtype == "float32":
            raise NotImplementedError("the reference computes in float64 only")
        self.f = IMPLS[impl].sqrtm_psd
        self.A = _spd(n, dtype)
        self.f(self.A)  # compile outside the timing

    def time_sqrtm_psd(self, impl, n, dtype):
        self.f(self.A)

    def peakmem_sqrtm_psd(self, impl, n, dtype):
        self.f(self.A)


class BuresWasserstein:
    params = (["bwfast", "reference"], [16, 128, 512])
    param_names = ["impl", "n"]

    def setup(self, impl, n):
        self.f = IMPLS[impl].bures_wasserstein_squared
        self.A = _spd(n, np.float64, 0)
        self.B = _spd(n, np.float64, 1)
        self.f(self.A, self.B)

    def time_bures_wasserstein_squared(self, impl, n):
        self.f(self.A, self.B)


class LossAndGrad:
    params = (["bwfast", "reference"], [64, 256], [0.0, 0.5])
    param_names = ["impl", "n", "tau"]

    def setup(self, impl, n, tau):
        rng = np.random.default_rng(0)
        widths = (n, n // 4, n // 4, n)
        self.ws = [rng.standard_normal((b, a)) / np.sqrt(a)
                   for a, b in zip(widths[:-1], widths[1:])]
        self.cov = _spd(n, np.float64)
        self.target = bwfast.Target(self.cov) if impl == "bwfast" else self.cov
        self.f = IMPLS[impl].loss_and_grad
        self.f(self.ws, self.target, tau)

    def time_loss_and_grad(self, impl, n, tau):
        self.f(self.ws, self.target, tau)


class GradientStep:
    """One GD step of a small deep network: the paper's regime."""

    params = (["bwfast", "reference"], [10, 100], [0.0, 0.5])
    param_names = ["impl", "depth", "tau"]

    def setup(self, impl, depth, tau):
        rng = np.random.default_rng(0)
        self.cov = _spd(20, np.float64)
        self.target = bwfast.Target(self.cov)
        W0 = rng.standard_normal((20, 20)) / np.sqrt(20)
        self.ws = bwfast.balanced_weights(W0, (20,) * (depth + 1))
        self.tau = tau
        self.lr = bwfast.default_lr(self.target, (20,) * (depth + 1), tau)
        self.impl = impl
        self.run()

    def run(self):
        if self.impl == "bwfast":
            bwfast.fit(self.target, (20,) * (len(self.ws) + 1), tau=self.tau,
                       lr=self.lr, steps=100, tol=0.0, init=self.ws)
        else:
            ws = self.ws
            for _ in range(100):
                ws = reference.gd_step(ws, self.cov, self.tau, self.lr)

    def time_100_steps(self, impl, depth, tau):
        self.run()


class DigitsFit:
    """The default job of `bwfast fit`, kernels compiled in setup."""

    timeout = 120

    def setup(self):
        from importlib.resources import files

        with files("bwfast").joinpath("data", "digits_cov.npy").open("rb") as fh:
            self.target = bwfast.Target(np.load(fh))
        bwfast.fit(self.target, (64, 16, 16, 64), steps=1)

    def time_default_job(self):
        bwfast.fit(self.target, (64, 16, 16, 64))
