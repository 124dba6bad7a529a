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
    check_tau,
    check_weights,
    loss_code,
    optimal_loss,
    pack,
    rank_rtol,
    unpack,
)
from .rates import observed_rate, predicted_flow_rate

__all__ = ["fit", "FitResult", "RunDiagnostics", "Status", "default_lr",
           "balancedness"]

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
class RunDiagnostics:
    """Quantities of the convergence theory recorded along a run, one entry
    per recorded loss (at ``steps``, the stride of the loss history).

    Attributes
    ----------
    steps : (m,) ndarray of int
        Step of each record (``FitResult.loss_steps``).
    gap : (m,) ndarray
        Loss minus the optimum for this k and tau.
    margin : (m,) ndarray
        c = sqrt(lambda_k) - BW(W W^T + tau I, Sigma0); c > 0 at a balanced
        start is the condition of the convergence theory.
    grad_norm : (m,) ndarray
        sqrt(sum_j ||dL/dW_j||_F^2), the norm of the gradient in all layers
        of the objective that is minimized.
    e2e_grad_norm : (m,) ndarray
        ||dL/dW||_F, the gradient with respect to the end-to-end matrix
        (for tau = 0 and rank W = n it satisfies ||dL/dW||^2 = 4 L).
    balancedness : (m,) ndarray
        max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F (absolute; 0 for N = 1).
    alignment : (m,) ndarray
        ||U_k^T Omega_k||_F^2 / k in [0, 1]: how much of the target's top-k
        eigenspace the k leading left singular vectors of W span.
    sigma : (m, k) ndarray
        Singular values sigma_1 >= ... >= sigma_k of the end-to-end W.

    A record whose weights were not finite (the last point of a diverged
    run) holds NaN.
    """

    steps: np.ndarray
    gap: np.ndarray
    margin: np.ndarray
    grad_norm: np.ndarray
    e2e_grad_norm: np.ndarray
    balancedness: np.ndarray
    alignment: np.ndarray
    sigma: np.ndarray

    @classmethod
    def _from_records(cls, steps, rows):
        cols = {
            "gap": rows[:, K.D_GAP], "margin": rows[:, K.D_MARGIN],
            "grad_norm": rows[:, K.D_GRAD], "balancedness": rows[:, K.D_BALANCE],
            "alignment": rows[:, K.D_ALIGN], "e2e_grad_norm": rows[:, K.D_E2E],
            "sigma": rows[:, K.D_SIGMA:],
        }
        out = {"steps": steps}
        for name, col in cols.items():
            col = np.ascontiguousarray(col)
            col.flags.writeable = False
            out[name] = col
        return cls(**out)


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
        and the gap divided by the optimum, or by the loss scale
        tr Sigma0 + n tau (squared for the square loss; 1 if zero) when the
        optimum is below its rounding level n eps times that scale.
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
    diagnostics : RunDiagnostics or None
        Theory quantities recorded with the loss history (None when
        ``fit(diagnostics=False)``).
    method : str
        'gd' (gradient descent) or 'flow' (the gradient ODE).
    times : ndarray
        Continuous time of each recorded loss: step * lr for gradient
        descent, the solver's time for the flow.
    margin : float
        c = sqrt(lambda_k) - BW(W W^T + tau I, Sigma0) at the start.
    predicted_rate : float
        The convergence theory's rate per unit time,
        :func:`bwfast.predicted_flow_rate` of the start's margin and the
        depth, where its assumptions hold (BW loss, tau = 0, k = n, a
        balanced start with c > 0); NaN elsewhere, with the reason in
        ``prediction``. Compare with ``observed_time_rate``; the bound is
        conservative, so the ratio is typically far above 1.
    prediction : str
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
    diagnostics: RunDiagnostics | None = None
    method: str = "gd"
    times: np.ndarray | None = None
    margin: float = float("nan")
    predicted_rate: float = float("nan")
    prediction: str = ""

    @property
    def converged(self):
        return self.status is Status.CONVERGED

    @functools.cached_property
    def balancedness(self):
        """Relative balancedness defect of the final weights (computed on
        first access: for square hidden layers of width h it costs O(h^3))."""
        return balancedness(self.weights)

    @functools.cached_property
    def observed_rate(self):
        """Exponential rate at which the gap to the optimum closed, fitted on
        the log-gap of the loss history (see :func:`bwfast.observed_rate`;
        NaN when not measurable): per step for gradient descent, per unit
        of time for the flow."""
        x = self.times if self.method == "flow" else self.loss_steps
        return observed_rate(self.losses, x, self.optimum)

    @property
    def rate_ratio(self):
        """observed_time_rate / predicted_rate (NaN without a prediction)."""
        p = self.predicted_rate
        return self.observed_time_rate / p if p > 0 else float("nan")

    @property
    def observed_time_rate(self):
        """The observed rate per unit of continuous time (the per-step rate
        divided by lr for gradient descent), comparable with the flow's."""
        if self.method == "flow":
            return self.observed_rate
        return self.observed_rate / self.lr


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

# The gradient flow's loss never rises; a rise between solver points by more
# than this relative amount plus the loss's rounding error (this many n eps
# of the loss scale) is the solver's error, not the flow.
_FLOW_RISE_RTOL = 1e-9
_FLOW_RISE_ULPS = 100

# A start counts as balanced for the theory's prediction below this relative
# defect (the balanced initializations reach rounding level, ~1e-15).
_BALANCED_RTOL = 1e-8

# fit(diagnostics=None) records the diagnostics when no width exceeds this:
# a record's SVD of W and Gram products stay below a few gradient steps.
_DIAG_AUTO_WIDTH = 256
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
        callback=None, loss="bw", diagnostics=None, method="gd",
        flow_rtol=1e-10):
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
    method : {'gd', 'flow'}
        'gd': gradient descent with step ``lr``. 'flow': the gradient flow
        d W_j / dt = -dL/dW_j of all layers, integrated by
        ``scipy.integrate.solve_ivp`` (DOP853) with relative tolerance
        ``flow_rtol`` (absolute: flow_rtol times the largest initial weight)
        up to time ``steps * lr``, stopping when the optimality measure
        falls to ``tol``; the loss is recorded at every ``record_every``-th
        solver step, against ``FitResult.times``. The flow runs in float64
        and conserves balancedness to the solver tolerance. Its loss never
        rises; should the solver's error make it rise between two solver
        points, the run ends at the last decreasing one with status
        'step_limit' and says so (lower ``flow_rtol``). The optimality
        measure is resolved only to about ``flow_rtol``.
    flow_rtol : float, default 1e-10
        Used by the flow only.
    diagnostics : bool, optional
        Record the theory's quantities (:class:`RunDiagnostics`: gap,
        margin, gradient norm, balancedness defect, alignment, singular
        values of W) with every recorded loss. Each record costs one SVD of
        the n x d0 end-to-end matrix and two Gram products per layer, about
        a gradient step at width <= n + d0, more for wider layers; the
        default records them when every width is at most 256.

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
    tau = check_tau(tau)
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
    if method not in ("gd", "flow"):
        raise ValueError(f"`method` must be 'gd' or 'flow'; got {method!r}")
    flow_rtol = scalar(flow_rtol, "flow_rtol", low=0.0, strict=True)
    if method == "flow":
        if dtype != np.float64:
            raise TypeError("`dtype` must be float64 with method='flow' (the "
                            f"ODE solver integrates in float64); got {dtype}")
        if not 1e-14 <= flow_rtol < 1.0:
            raise ValueError(
                f"`flow_rtol` must lie in [1e-14, 1); got {flow_rtol!r}")
    if diagnostics is None:
        diagnostics = int(dims.max()) <= _DIAG_AUTO_WIDTH
    elif not isinstance(diagnostics, (bool, np.bool_)):
        raise TypeError(
            f"`diagnostics` must be True, False or None; got {diagnostics!r}")

    _check_memory(dims, dtype)
    prob = _Problem(t, dims, tau, kind, dtype, bool(diagnostics))
    theta = pack(_initial_weights(init, t, dims, seed, dtype, tau), dtype)
    prob.predict(theta)
    try:
        with blas_limit(int(dims.max())):
            if method == "flow":
                return _run_flow(prob, theta, lr, steps, tol, every, callback,
                                 flow_rtol)
            return _run(prob, theta, lr, steps, tol, every, callback)
    except np.linalg.LinAlgError as exc:
        if isinstance(exc, BWLinAlgError):
            raise
        raise BWLinAlgError(
            f"a LAPACK call failed during training ({exc}); try a smaller lr"
        ) from exc


class _Problem:
    """A target, an architecture and a loss, with the kernels' arguments."""

    def __init__(self, t, dims, tau, kind, dtype, record):
        self.t, self.dims, self.tau, self.kind = t, dims, tau, kind
        self.k = k = int(dims.min())
        self.k_eff = max(min(k, t.rank), 1)
        # a zero target has rank 0 < k everywhere: no kink to report there
        self.rr = rank_rtol(dims, dtype) if t.rank > 0 else -1.0
        self.R0, self.S0 = t.arrays(dtype)
        self.work = Workspace(dims, dtype, grad=False)  # updates are in place
        self.objective = "frobenius" if kind == K.FROBENIUS_LOSS else "bw"
        self.opt = optimal_loss(t, k, tau, self.objective)
        self.record = record
        self.ncol = K.D_SIGMA + k
        self.Omk = np.ascontiguousarray(t.eigvecs[:, :k], dtype=dtype)
        self.dconst = np.array([np.sqrt(t.eigvals[k - 1]), self.opt])
        # scale of the convergence test and of divergence: the target's total
        # variance plus the isotropic part (1 if both vanish)
        scale = t.trace + t.n * tau or 1.0
        if kind == K.FROBENIUS_LOSS:
            scale = scale * scale  # the square loss has squared units
        self.scale = scale

    def predict(self, theta):
        """Margin at the start and the theory's rate where it applies."""
        t, dims = self.t, self.dims
        loss, _, emeas = self.forward(theta)
        self.loss0 = loss  # the start's loss, for the divergence limit
        if emeas < 0.0:
            bw2 = np.inf
        elif self.kind == K.BW_LOSS:
            bw2 = loss
        else:
            W = K._prefix(theta, self.work.pbuf, dims, len(dims) - 1)
            bw2 = K.bw_squared_network(W, self.R0, self.S0, t.trace, self.tau,
                                       self.k, t.rank)
        self.margin = float(np.sqrt(t.eigvals[self.k - 1]) - np.sqrt(bw2))
        ws = unpack(theta, dims)
        N = len(ws)
        if self.objective != "bw":
            why = "the theory's rate is for the BW loss"
        elif self.tau != 0.0:
            why = "the theory's rate is for tau = 0"
        elif self.k != t.n:
            why = f"the theory's rate needs k = n (here k = {self.k} < n = {t.n})"
        elif not self.margin > 0.0:
            why = f"the start has margin c = {self.margin:.3g} <= 0"
        elif balancedness(ws) > _BALANCED_RTOL:
            why = "the start is not balanced"
        else:
            why = ""
        self.predicted_rate = predicted_flow_rate(self.margin, N) if not why \
            else float("nan")
        self.prediction = why or (
            f"4 N c^(2(N-1)/N) with N = {N}, c = {self.margin:.4g}")

    def forward(self, theta):
        """(loss, ratio, measure) at theta; prefix products and G in work."""
        t = self.t
        return K.network_forward(
            theta, self.dims, self.R0, self.S0, t.trace, self.tau, self.k_eff,
            self.rr, self.work.pbuf, self.work.G, self.kind, t.rank,
        )

    def record_at(self, theta, row):
        """Diagnostics at theta into row (left NaN where theta overflows)."""
        loss, _, emeas = self.forward(theta)
        if emeas < 0.0:
            return loss
        w = self.work
        K.record_diagnostics(theta, self.dims, w.pbuf, w.G, self.R0, self.S0,
                             self.t.trace, self.tau, loss, self.kind,
                             self.t.rank, self.Omk, self.dconst, row, None)
        row[K.D_GRAD] = np.sqrt(K.layer_measure(theta, self.dims, w.pbuf, w.G)[1])
        return loss

    def result(self, theta, *, losses, rec, rows, times, status, done, loss,
               measure, lr, tol, wall, method, message=None):
        ws = unpack(theta, self.dims)
        for arr in (*ws, losses, rec, times):
            arr.flags.writeable = False
        loss = float(loss)
        t, opt = self.t, self.opt
        gap = loss - opt
        # relative to the optimum, or to the loss scale where the optimum is
        # at its rounding level (tau equal to a repeated eigenvalue leaves
        # terms of 1e-32 in it)
        floor = t.n * np.finfo(np.float64).eps * self.scale
        rel = gap / (opt if opt > floor else self.scale)
        if message is None:
            message = _message(status, done, loss, measure, tol, lr)
        diag = RunDiagnostics._from_records(rec, rows) if self.record else None
        return FitResult(
            weights=tuple(ws), losses=losses, loss_steps=rec, steps=int(done),
            status=status, message=message, loss=loss, optimum=opt, gap=gap,
            relative_gap=rel, measure=measure, lr=lr, tau=self.tau, tol=tol,
            k=self.k, widths=tuple(int(d) for d in self.dims), wall_time=wall,
            objective=self.objective, diagnostics=diag, method=method,
            times=times, margin=self.margin, predicted_rate=self.predicted_rate,
            prediction=self.prediction,
        )


def _run(prob, theta, lr, steps, tol, every, callback):
    start = time.perf_counter()
    t, dims, tau, work = prob.t, prob.dims, prob.tau, prob.work
    ncol, record = prob.ncol, prob.record
    # warm-start buffers of the small-network refinement, None where the
    # direct route stays (the loop is then compiled without that code)
    # (float64 only: the refinement accepts factors at a backward error of
    # 2 n eps, which in float32 at n = 64 is above the convergence test)
    wide = theta.dtype == np.float64
    warm = (_active(K.warm_state(dims, tau, prob.k_eff, prob.kind, theta))
            if wide else None)
    dwarm = _active(K.diag_warm(dims, record, theta)) if record and wide else None
    div_limit = _DIVERGENCE_FACTOR * max(prob.loss0, prob.scale)
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
        diag = np.full((hist.size, ncol), np.nan) if record else None
        first = done
        done, code, loss, meas = K.descend(
            theta, dims, prob.R0, prob.S0, t.trace, tau, prob.k_eff, prob.rr, lr,
            first, stop, steps, tol * prob.scale, div_limit, hist, base, every,
            work.pbuf, work.G, prob.kind, t.rank, diag, prob.Omk, prob.dconst,
            warm, dwarm,
        )
        last = done - 1 if code == K.RUNNING else done
        idx = np.arange(-(-first // every), last // every + 1)
        recorded.append((idx * every, hist[idx - base],
                         diag[idx - base] if record else None))
        if callback is not None:
            callback(int(done), float(loss))
        per_step = (time.perf_counter() - start) / max(done, 1)
        chunk = int(min(max(period / max(per_step, 1e-9), every, 1), 10_000_000))
    wall = time.perf_counter() - start

    status = _FROM_CODE[code]
    rec = np.concatenate([r for r, _, _ in recorded]).astype(np.int64)
    losses = np.concatenate([h for _, h, _ in recorded])
    rows = np.concatenate([d for _, _, d in recorded]) if record else None
    if rec.size == 0 or rec[-1] != done:
        rec = np.append(rec, done)
        losses = np.append(losses, loss)
        if record:
            final = np.full((1, ncol), np.nan)
            if status is not Status.DIVERGED:
                prob.record_at(theta, final[0])
            rows = np.concatenate([rows, final])
    return prob.result(
        theta, losses=losses, rec=rec, rows=rows, times=rec * lr, status=status,
        done=done, loss=loss, measure=float(meas) / prob.scale, lr=lr, tol=tol,
        wall=wall, method="gd",
    )


def _active(buffer):
    """A warm-start buffer, or None for the empty one of the direct route."""
    return buffer if buffer.shape[1] > 0 else None


def _run_flow(prob, theta, lr, steps, tol, every, callback, rtol):
    """Integrate the gradient flow d theta / dt = -grad L(theta) with
    scipy.integrate.solve_ivp (DOP853), up to time steps * lr or until the
    optimality measure falls to tol; the loss and diagnostics are recorded
    at every ``every``-th accepted solver step."""
    from scipy.integrate import solve_ivp

    start = time.perf_counter()
    t, dims, tau, work = prob.t, prob.dims, prob.tau, prob.work
    grad = np.empty_like(theta)
    limit = tol * prob.scale
    calls = [0]

    def rhs(_time, y):
        K.network_loss_grad(
            y, dims, prob.R0, prob.S0, t.trace, tau, prob.k_eff, prob.rr, grad,
            work.pbuf, work.G, prob.kind, t.rank,
        )
        calls[0] += 1
        if callback is not None and calls[0] % 1000 == 0:
            callback(calls[0], float("nan"))
        return -grad

    def converged(_time, y):
        _, _, emeas = prob.forward(y)
        if emeas < 0.0:
            return -1.0  # overflowed: stop as well
        return K.layer_measure(y, dims, work.pbuf, work.G)[0] - limit

    converged.terminal = True
    converged.direction = -1
    t_end = float(steps) * lr
    # absolute tolerance: rounding level of the weights' scale
    atol = rtol * max(float(np.abs(theta).max()), 1e-300)
    sol = solve_ivp(rhs, (0.0, t_end), theta, method="DOP853", rtol=rtol,
                    atol=atol, events=converged if tol > 0 else None)
    ys = sol.y
    # Scan the solver's points: the run ends at the first one whose
    # optimality measure is below tol (the event only sees sign changes
    # between steps), or where the loss rises, which the exact flow never
    # does: from there on the solver's error exceeds the loss's changes.
    n_pts = ys.shape[1]
    point_loss = np.empty(n_pts)
    # the loss's own rounding error (the trace form at tau > 0 is accurate
    # to about n eps times the traces)
    rounding = _FLOW_RISE_ULPS * t.n * np.finfo(np.float64).eps * prob.scale
    end, why = n_pts - 1, None
    for i in range(n_pts):
        y = np.ascontiguousarray(ys[:, i], dtype=theta.dtype)
        point_loss[i], _, emeas = prob.forward(y)
        if emeas < 0.0 or not np.isfinite(point_loss[i]):
            end, why = i, "overflow"
            break
        if i > 0 and point_loss[i] > point_loss[i - 1] * (1 + _FLOW_RISE_RTOL) \
                + rounding:
            end, why = i - 1, "rise"
            break
        if tol > 0 and K.layer_measure(y, dims, work.pbuf, work.G)[0] <= limit:
            end, why = i, "converged"
            break
    if why is None and sol.status == 1:
        why = "converged"  # the event: the measure crossed tol at the end
    wall = time.perf_counter() - start
    n_steps = end
    keep = np.unique(np.append(np.arange(0, n_steps + 1, every), n_steps))
    losses = point_loss[keep]  # computed by the scan
    rows = None
    if prob.record:
        rows = np.full((keep.size, prob.ncol), np.nan)
        for i, col in enumerate(keep):
            prob.record_at(np.ascontiguousarray(ys[:, col]), rows[i])
    theta[:] = ys[:, end]
    loss, _, emeas = prob.forward(theta)
    meas = (K.layer_measure(theta, dims, work.pbuf, work.G)[0] / prob.scale
            if emeas >= 0.0 else np.nan)
    at = float(sol.t[end])
    if sol.status == -1:
        status = Status.DIVERGED
        message = f"the ODE solver failed at time {sol.t[-1]:.4g}: {sol.message}"
    elif why == "overflow":
        status = Status.DIVERGED
        message = f"the weights overflowed at time {at:.4g}"
    elif why == "converged":
        status = Status.CONVERGED
        message = (f"gradient flow converged at time {at:.4g} after {n_steps} "
                   f"solver steps: optimality measure {meas:.2e} reached tol "
                   f"{tol:.1e}")
    elif why == "rise":
        status = Status.STEP_LIMIT
        message = (f"the loss rose after time {at:.4g} (solver step {n_steps}), "
                   f"which the flow itself never does: the solver's error at "
                   f"flow_rtol = {rtol:.0e} exceeds the loss's changes there; the "
                   f"run ends at the last decreasing point with optimality "
                   f"measure {meas:.2e} > tol {tol:.1e}; lower flow_rtol")
    else:
        status = Status.STEP_LIMIT
        message = (f"gradient flow reached time {at:.4g} (steps * lr) with "
                   f"optimality measure {meas:.2e} > tol {tol:.1e}; raise steps, "
                   f"or lower flow_rtol = {rtol:.0e} (the solver resolves the "
                   "measure only to about flow_rtol)")
    return prob.result(
        theta, losses=losses, rec=keep.astype(np.int64), rows=rows,
        times=np.ascontiguousarray(sol.t[keep]), status=status, done=n_steps,
        loss=loss, measure=meas, lr=lr, tol=tol, wall=wall, method="flow",
        message=message,
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
