"""Gradient-descent training of deep linear networks with the BW loss."""

import enum
import functools
import os
import time
from dataclasses import dataclass

import numpy as np

from . import _kernels as K
from ._errors import BWLinAlgError
from ._threads import blas_limit
from ._validate import scalar
from .network import (
    Workspace,
    as_target,
    check_weights,
    loss_code,
    optimal_loss,
    pack,
    rank_rtol,
    unpack,
)

__all__ = ["fit", "FitResult", "Status", "default_lr", "balancedness"]

# Steps run inside one compiled call between two Python callbacks.
_CHUNK = 2000

# A loss above this multiple of max(initial loss, tr Sigma0) counts as
# divergence; gradient descent with a stable step never grows that much.
_DIVERGENCE_FACTOR = 1e8


class Status(str, enum.Enum):
    """How a training run ended."""

    CONVERGED = "converged"
    STEP_LIMIT = "step_limit"
    DIVERGED = "diverged"
    RANK_DROPPED = "rank_dropped"


_FROM_CODE = {
    K.CONVERGED: Status.CONVERGED,
    K.STEP_LIMIT: Status.STEP_LIMIT,
    K.DIVERGED: Status.DIVERGED,
    K.RANK_DROPPED: Status.RANK_DROPPED,
}


@dataclass(frozen=True)
class FitResult:
    """Outcome of :func:`fit` (immutable; arrays are read-only).

    Attributes
    ----------
    weights : tuple of ndarray
        Final layers W_1 .. W_N (the last finite iterate if the run diverged).
    losses, loss_steps : ndarray
        Loss recorded every ``record_every`` steps, and at the last step.
    steps : int
        Gradient steps taken.
    status : Status
    message : str
    loss, optimum, gap, relative_gap : float
        Final loss, theoretical optimum for this k and tau, loss - optimum,
        and the gap divided by the optimum (by tr Sigma0 when the optimum
        is zero).
    measure : float
        Optimality measure max_j ||dL/dW_j||_F ||W_j||_F / (tr Sigma0 + n tau)
        at the last check (checks run every ``record_every`` steps and at the
        end); the denominator is 1 if it would be zero.
    balancedness : float
        Relative balancedness defect at the end,
        max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F / ||W_j W_j^T||_F
        (0 for N = 1; exactly 0 at a balanced start, O(step) drift under
        gradient descent).
    lr, tau, tol : float
    k : int
        Minimum width, the rank bound of W.
    widths : tuple of int
    wall_time : float
        Seconds spent in the descent loop (compilation included on first use).
    objective : str
        'bw' or 'frobenius': the loss that was minimized.
    """

    weights: tuple
    losses: np.ndarray
    loss_steps: np.ndarray
    steps: int
    status: Status
    message: str
    loss: float
    optimum: float
    gap: float
    relative_gap: float
    measure: float
    lr: float
    tau: float
    tol: float
    k: int
    widths: tuple
    wall_time: float
    objective: str = "bw"

    @property
    def converged(self):
        return self.status is Status.CONVERGED

    @functools.cached_property
    def balancedness(self):
        """Relative balancedness defect of the final weights (computed on
        first access: for square hidden layers of width h it costs O(h^3))."""
        return balancedness(self.weights)


def default_lr(target, widths, tau=0.0, loss="bw"):
    """Step size 0.5 / (N * lambda^{(N-1)/N}) with lambda = lambda_1 + tau.

    For balanced weights at the target's scale the end-to-end dynamics of
    singular value i move with rate N * sigma_i^{2(N-1)/N} times the
    curvature 2 of the loss in W; this step makes the fastest mode contract
    in one step and keeps every mode stable. The square loss has curvature
    about 8 lambda_1 in W, hence 0.125 / (N * lambda^{(2N-1)/N}) for it.
    """
    t = as_target(target)
    code = loss_code(loss)
    N = len(widths) - 1
    lam = float(t.eigvals[0]) + float(tau)
    if lam <= 0.0:
        return 0.5 / N
    if code == K.FROBENIUS_LOSS:
        return 0.125 / (N * lam ** ((2 * N - 1) / N))
    return 0.5 / (N * lam ** ((N - 1) / N))


def balancedness(weights, relative=True):
    """max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F, divided by ||W_j W_j^T||_F
    when ``relative`` (0 for a single layer)."""
    defect = 0.0
    for a, b in zip(weights[:-1], weights[1:]):
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            gram = a @ a.T
            d = float(np.linalg.norm(b.T @ b - gram))
            gnorm = float(np.linalg.norm(gram))
        if not np.isfinite(d):
            return np.inf
        if relative:
            if not np.isfinite(gnorm):
                return np.inf
            d = d / gnorm if gnorm > 0 else (0.0 if d == 0 else np.inf)
        defect = max(defect, d)
    return defect


def _initial_weights(init, t, dims, seed, dtype, tau=0.0):
    if isinstance(init, str):
        from .theory import INITS, init_weights

        if init not in INITS:
            raise ValueError(
                f"`init` must be one of {INITS} or a sequence of weight "
                f"arrays; got {init!r}"
            )
        ws = init_weights(init, t, [int(d) for d in dims], tau=tau, seed=seed)
        return [np.asarray(w, dtype=dtype) for w in ws]
    ws, wdims, _ = check_weights(init, t.n)
    if not np.array_equal(wdims, dims):
        raise ValueError(
            f"`init` weights have widths {tuple(int(d) for d in wdims)}; "
            f"expected {tuple(int(d) for d in dims)}"
        )
    return [np.asarray(w, dtype=dtype) for w in ws]


_MAX_COUNT = 2**62
_MAX_LR_FACTOR = 1e6

# Scale (largest eigenvalue + tau) a target may have for training: the
# loss, its gradient norms and the convergence test square it, and the
# square loss squares it again, so float32 and the square loss need a
# narrower range than the Target class accepts.
_SCALE_RANGE = {
    ("bw", np.dtype(np.float64)): 1e150,
    ("bw", np.dtype(np.float32)): 1e12,
    ("frobenius", np.dtype(np.float64)): 1e70,
    ("frobenius", np.dtype(np.float32)): 1e6,
}


def _check_scale(t, tau, dtype, loss):
    limit = _SCALE_RANGE[(loss, np.dtype(dtype))]
    size = float(t.eigvals[0]) + float(tau)
    if size > 0 and not (1.0 / limit <= size <= limit):
        raise ValueError(
            f"the target's scale (largest eigenvalue + tau = {size:.3g}) must "
            f"lie within {1 / limit:.0e} .. {limit:.0e} to train with the "
            f"{loss} loss in {np.dtype(dtype).name}; rescale the data"
            + (" or use float64" if np.dtype(dtype) == np.float32 else "")
        )


def _check_memory(dims, dtype):
    """Refuse networks whose weights alone exceed the machine's memory."""
    count = sum(int(a) * int(b) for a, b in zip(dims[:-1], dims[1:]))
    need = count * np.dtype(dtype).itemsize
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return
    if need > total:
        raise ValueError(
            f"`widths` {tuple(int(d) for d in dims)} need {need / 2**30:.1f} GiB "
            f"for the weights alone; this machine has {total / 2**30:.1f} GiB"
        )


def _check_widths(widths, n):
    try:
        dims = [scalar(d, "widths", low=1, integer=True) for d in widths]
        if max(dims, default=0) > 2**31 - 1:
            raise ValueError(
                f"`widths` must each be < 2**31; got {tuple(dims)}")
    except TypeError:
        raise TypeError(
            f"`widths` must be a sequence of positive integers; got {widths!r}"
        ) from None
    if len(dims) < 2:
        raise ValueError(
            f"`widths` must list d_0 .. d_N with N >= 1 (at least 2 numbers); "
            f"got {tuple(dims)}"
        )
    if dims[-1] != n:
        raise ValueError(
            f"`widths` must end with the target dimension n = {n}; "
            f"got widths {tuple(dims)}"
        )
    return np.array(dims, dtype=np.int64)


# Default convergence tolerance per dtype: float32 gradients carry rounding
# noise near 1e-6 of the scale, so 1e-7 would never be met there.
DEFAULT_TOL = {np.dtype(np.float64): 1e-7, np.dtype(np.float32): 1e-5}


def fit(target, widths, *, tau=0.0, lr=None, steps=100_000, tol=None,
        init="balanced", seed=0, record_every=10, dtype=np.float64,
        callback=None, loss="bw"):
    """Train a deep linear network by full-batch gradient descent on the BW loss.

    Minimizes L_tau(W_1 .. W_N) = BW^2(W W^T + tau I, Sigma0) with
    W = W_N ... W_1. The descent loop runs in compiled code, in chunks of
    2000 steps between calls of ``callback``; each step applies the layer
    gradients in place, as products of thin factors, so it allocates no
    copy of the weights.

    Parameters
    ----------
    target : Target or (n, n) array_like
    widths : sequence of int
        d_0 (latent), d_1 .. d_{N-1} (hidden), d_N = n.
    tau : float, default 0
    lr : float, optional
        Step size; default :func:`default_lr`.
    steps : int, default 100000
        Step limit.
    tol : float, optional
        Default 1e-7 for float64, 1e-5 for float32. Converged when
        max_j ||dL/dW_j||_F ||W_j||_F <= tol * (tr Sigma0 + n tau): the
        first-order change of the loss under a relative perturbation of any
        one layer, made scale-free by the model's total variance. Checked
        every ``record_every`` steps. For depth 1, tau = 0 and k = n,
        ||dL/dW||^2 = 4 L, so it bounds the loss by about tol^2 tr Sigma0 / 4.
    init : {'balanced', 'margin', 'orthogonal', 'gaussian'} or sequence of arrays
        'balanced': a random rank-k end-to-end matrix with the optimum's
        energy, factored by :func:`balanced_weights`, so the layers start
        exactly balanced. 'margin': exactly balanced and close to the
        optimum, with margin c > 0 (ValueError where no weights have one).
        'orthogonal', 'gaussian': scaled orthogonal or Gaussian layers.
        :func:`bwfast.theory.init_weights` builds them (and documents what
        each guarantees); :func:`bwfast.theory.margin` reports c. Or the
        initial weights themselves.
    seed : int
        Seed of the initialization.
    record_every : int, default 10
        Stride of the loss history and of the convergence check.
    dtype : {numpy.float64, numpy.float32}
        Arithmetic of the descent loop.
    callback : callable, optional
        ``callback(step, loss)`` after each compiled chunk.
    loss : {'bw', 'frobenius'}
        The objective: the BW loss, or the square loss
        ||W W^T + tau I - Sigma0||_F^2 (the classical baseline; its optimum
        is given by Eckart-Young and its tolerance scale is
        (tr Sigma0 + n tau)^2, the loss having squared units).

    Returns
    -------
    FitResult
        Divergence, NaN and rank drops end the run with that status and a
        message; the weights returned are always finite (``lr`` is refused
        above 1e6 times the default step, where one update would overflow).

    Raises
    ------
    ValueError
        For a bad argument, or a target whose scale (largest eigenvalue +
        tau) lies outside what the arithmetic resolves: 1e-150 .. 1e150 for
        the BW loss in float64, 1e-12 .. 1e12 in float32, 1e-70 .. 1e70 and
        1e-6 .. 1e6 for the square loss.

    Examples
    --------
    >>> import numpy as np
    >>> from bwfast import fit
    >>> res = fit(np.diag([4.0, 2.0, 1.0]), (3, 2, 3))
    >>> res.status.value, bool(res.relative_gap < 1e-6)
    ('converged', True)
    """
    t = as_target(target)
    dims = _check_widths(widths, t.n)
    tau = scalar(tau, "tau", low=0.0)
    kind = loss_code(loss)
    steps = scalar(steps, "steps", low=0, integer=True)
    every = scalar(record_every, "record_every", low=1, integer=True)
    for name, value in (("steps", steps), ("record_every", every)):
        if value > _MAX_COUNT:
            raise ValueError(f"`{name}` must be <= {_MAX_COUNT}; got {value}")
    seed = None if seed is None else scalar(seed, "seed", low=0, integer=True)
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"`dtype` must be float32 or float64; got {dtype!r}") from None
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"`dtype` must be float32 or float64; got {dtype}")
    tol = DEFAULT_TOL[dtype] if tol is None else scalar(tol, "tol", low=0.0)
    _check_scale(t, tau, dtype, loss)
    base_lr = default_lr(t, dims, tau, loss)
    lr = base_lr if lr is None else scalar(lr, "lr", low=0.0, strict=True)
    if lr > _MAX_LR_FACTOR * base_lr:
        # such a step overflows the weights themselves in one update, and no
        # finite "last iterate" would be left to return
        raise ValueError(
            f"`lr` must be <= {_MAX_LR_FACTOR:.0e} times the default step "
            f"{base_lr:.3g} for this target and depth; got {lr:.3g}"
        )
    if callback is not None and not callable(callback):
        raise TypeError(f"`callback` must be callable; got {callback!r}")

    k = int(dims.min())
    k_eff = max(min(k, t.rank), 1)
    # a zero target has rank 0 < k everywhere: no kink to report there
    rr = rank_rtol(dims, dtype) if t.rank > 0 else -1.0
    _check_memory(dims, dtype)
    R0, S0 = t.arrays(dtype)
    theta = pack(_initial_weights(init, t, dims, seed, dtype, tau), dtype)
    work = Workspace(dims, dtype, grad=False)  # updates are applied in place

    try:
        with blas_limit(int(dims.max())):
            return _run(t, dims, tau, lr, steps, tol, every, callback, k,
                        k_eff, rr, R0, S0, theta, work, kind)
    except np.linalg.LinAlgError as exc:
        if isinstance(exc, BWLinAlgError):
            raise
        raise BWLinAlgError(
            f"a LAPACK call failed during training ({exc}); try a smaller lr"
        ) from exc


def _run(t, dims, tau, lr, steps, tol, every, callback, k, k_eff, rr,
         R0, S0, theta, work, kind):
    start = time.perf_counter()
    # scale of the convergence test and of divergence: the target's total
    # variance plus the isotropic part (1 if both vanish)
    scale = t.trace + t.n * tau or 1.0
    if kind == K.FROBENIUS_LOSS:
        scale = scale * scale  # the square loss has squared units
    loss0, _, _ = K.network_forward(
        theta, dims, R0, S0, t.trace, tau, k_eff, rr, work.pbuf, work.G, kind,
        t.rank,
    )
    div_limit = _DIVERGENCE_FACTOR * max(loss0, scale)
    # chunks of steps between returns to Python (progress, Ctrl-C), sized
    # to about 0.2 s with a callback and 1 s without; the loss history
    # grows chunk by chunk, so a large step limit allocates nothing upfront
    period = 0.2 if callback is not None else 1.0
    done, code, chunk = 0, K.RUNNING, 100
    recorded = []
    while code == K.RUNNING:
        stop = min(done + chunk, steps)
        base = done // every
        hist = np.full(stop // every - base + 1, np.nan)
        first = done
        done, code, loss, meas = K.descend(
            theta, dims, R0, S0, t.trace, tau, k_eff, rr, lr, first, stop,
            steps, tol * scale, div_limit, hist, base, every, work.pbuf, work.G,
            kind, t.rank,
        )
        last = done - 1 if code == K.RUNNING else done
        idx = np.arange(-(-first // every), last // every + 1)
        recorded.append((idx * every, hist[idx - base]))
        if callback is not None:
            callback(int(done), float(loss))
        per_step = (time.perf_counter() - start) / max(done, 1)
        chunk = int(min(max(period / max(per_step, 1e-9), every, 1), 10_000_000))
    wall = time.perf_counter() - start

    status = _FROM_CODE[code]
    objective = "frobenius" if kind == K.FROBENIUS_LOSS else "bw"
    opt = optimal_loss(t, k, tau, objective)
    ws = unpack(theta, dims)
    for w in ws:
        w.flags.writeable = False
    rec = np.concatenate([r for r, _ in recorded]).astype(np.int64)
    losses = np.concatenate([h for _, h in recorded])
    if rec.size == 0 or rec[-1] != done:
        rec = np.append(rec, done)
        losses = np.append(losses, loss)
    losses.flags.writeable = False
    rec.flags.writeable = False
    loss = float(loss)
    gap = loss - opt
    rel = gap / opt if opt > 0 else (gap / t.trace if t.trace > 0 else gap)
    measure = float(meas) / scale
    message = _message(status, done, loss, measure, tol, lr)
    return FitResult(
        weights=tuple(ws), losses=losses, loss_steps=rec, steps=int(done),
        status=status, message=message, loss=loss, optimum=opt, gap=gap,
        relative_gap=rel, measure=measure,
        lr=lr, tau=tau, tol=tol, k=k, widths=tuple(int(d) for d in dims),
        wall_time=wall, objective=objective,
    )


def _message(status, steps, loss, measure, tol, lr):
    if status is Status.CONVERGED:
        return (f"converged after {steps} steps: optimality measure "
                f"{measure:.2e} <= tol {tol:.1e}")
    if status is Status.STEP_LIMIT:
        return (f"step limit {steps} reached with optimality measure "
                f"{measure:.2e} > tol {tol:.1e}; raise steps, or loosen tol")
    if status is Status.DIVERGED:
        return (f"diverged at step {steps} (loss {loss:.3g}); the weights are "
                f"the last finite iterate; lower the step size (lr = {lr:.3g})")
    return (f"rank of the end-to-end matrix dropped below k at step {steps}: "
            "the tau = 0 loss has a kink there; use tau > 0 or another seed")
