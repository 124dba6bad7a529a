"""Convergence rates: observed on a run's loss history, predicted by the theory.

The observed rate is the exponential rate at which the gap to the optimum
closes, fitted on the log-gap; the predicted one comes from the margin
bound of the convergence theory (see :func:`predicted_flow_rate`). The
bounds are conservative, so the two are reported side by side, never
tuned to each other.
"""

import numpy as np

from ._validate import scalar

__all__ = ["observed_rate", "predicted_flow_rate", "stable_step"]

# Gaps below this multiple of eps times the loss scale are rounding noise,
# not convergence, and are left out of the fit.
_NOISE_FACTOR = 1e3


def observed_rate(losses, loss_steps, optimum, *, scale=None):
    """Exponential convergence rate per unit of ``loss_steps``, from the log-gap.

    Fits log(loss - optimum) against the step by least squares and returns
    minus the slope, so that gap(step) ~ C exp(-rate * step). The fit uses
    the recorded points whose gap lies above the rounding floor
    1e3 * eps * scale (``scale`` defaults to max(|optimum|, max loss)) and,
    among them, those after the gap first fell to a tenth of its initial
    value, so that the transient of the first steps does not bias the
    asymptotic rate (all points above the floor are used when fewer than
    three remain).

    Parameters
    ----------
    losses, loss_steps : 1-d array_like of equal length
        Loss history and the step (or time) of each entry, strictly
        increasing.
    optimum : float
        The theoretical optimum (``FitResult.optimum``).
    scale : float, optional
        Loss scale of the rounding floor.

    Returns
    -------
    float
        The rate (positive for a converging run; zero or negative when the
        gap does not shrink), or NaN when fewer than three recorded points
        lie above the floor: a run that starts at the optimum, or too short
        a history, has no measurable rate.

    Examples
    --------
    >>> import numpy as np
    >>> steps = np.arange(0, 100, 10)
    >>> float(round(observed_rate(2.0 + np.exp(-0.05 * steps), steps, 2.0), 12))
    0.05
    """
    y = np.asarray(losses, dtype=np.float64).ravel()
    x = np.asarray(loss_steps, dtype=np.float64).ravel()
    if y.shape != x.shape:
        raise ValueError(
            f"`losses` and `loss_steps` must have the same length; got "
            f"{y.size} and {x.size}"
        )
    opt = float(optimum)
    if not np.isfinite(opt):
        raise ValueError(f"`optimum` must be finite; got {optimum!r}")
    if x.size > 1 and not np.all(np.diff(x) > 0):
        raise ValueError(
            "`loss_steps` must be strictly increasing (the step or time of "
            "each recorded loss)")
    finite = np.isfinite(y) & np.isfinite(x)
    x, y = x[finite], y[finite]
    if scale is None:
        scale = max(abs(opt), float(np.max(np.abs(y))) if y.size else 0.0)
    floor = _NOISE_FACTOR * np.finfo(np.float64).eps * float(scale)
    gap = y - opt
    keep = gap > floor
    x, gap = x[keep], gap[keep]
    if x.size < 3:
        return float("nan")
    later = np.flatnonzero(gap <= 0.1 * gap[0])
    if later.size and x.size - later[0] >= 3:
        x, gap = x[later[0]:], gap[later[0]:]
    slope = np.polyfit(x, np.log(gap), 1)[0]
    return float(-slope)


def predicted_flow_rate(margin, depth):
    """Rate of the gradient-flow bound L(t) <= L(0) exp(-rate t).

    rate = 4 N c^{2 (N - 1) / N} for depth N and margin c > 0. It holds for
    tau = 0, rank bound k = n and a balanced start with margin
    c = sqrt(lambda_n) - BW(W W^T, Sigma0) > 0: along the flow the loss
    does not grow, so sigma_n(W) >= sqrt(lambda_n) - BW >= c; balanced
    layers move the end-to-end matrix by
    dW/dt = -sum_j (W W^T)^{(N-j)/N} G (W^T W)^{(j-1)/N}, so
    dL/dt <= -N sigma_n^{2 (N-1) / N} ||G||^2, and ||G||^2 = 4 L at full
    rank. The bound ignores how far above c the singular values stay, so
    observed rates are usually much faster.

    Returns NaN for c <= 0, where the bound says nothing. ``margin`` must
    be finite and ``depth`` an integer >= 1.

    Examples
    --------
    >>> predicted_flow_rate(1.0, 1), predicted_flow_rate(0.5, 2)
    (4.0, 4.0)
    """
    c = scalar(margin, "margin")
    n_layers = scalar(depth, "depth", low=1, integer=True)
    if not c > 0.0:
        return float("nan")
    return 4.0 * n_layers * c ** (2.0 * (n_layers - 1) / n_layers)


def stable_step(weights, target, tau=0.0, loss="bw"):
    """The local stability bound 2 / lambda_max of the loss's Hessian.

    Gradient descent with a step above it is unstable near ``weights``
    (the fastest curvature direction is over-corrected); below it, the
    descent lemma holds to second order there. It is measured at one point
    (the curvature changes along a run), not a global guarantee: compare
    a run's ``lr`` with it at the start. The largest eigenvalue comes from
    :func:`bwfast.hessian_extremes` (dense for small networks, Lanczos
    otherwise).

    Examples
    --------
    >>> import numpy as np
    >>> # depth 1 at the optimum: the Hessian's largest eigenvalue is 2
    >>> float(round(stable_step([np.diag([2.0, 1.0])], np.diag([4.0, 1.0])), 12))
    1.0
    """
    from .curvature import hessian_extremes

    _, top = hessian_extremes(weights, target, tau, loss)
    return 2.0 / top if top > 0 else float("inf")
