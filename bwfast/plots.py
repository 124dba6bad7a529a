"""Figures of a training run (matplotlib, drawn off-screen)."""

import numpy as np

__all__ = ["run_figure"]


def run_figure(result, target):
    """Three panels of a :class:`bwfast.FitResult`: the log-gap to the
    optimum against step (or time, for the flow), the learned spectrum
    against the target's, and the balancedness defect along the run.

    The spectrum panel shows the eigenvalues of the model covariance
    W W^T + tau I beside those of the target; the defect panel needs the
    run's diagnostics (``fit(diagnostics=True)``) and says so when they
    are missing. Returns the matplotlib Figure (Agg backend); the caller
    saves it.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from .network import as_target, end_to_end

    t = as_target(target)
    flow = result.method == "flow"
    x = np.asarray(result.times if flow else result.loss_steps, dtype=float)
    xlabel = "time" if flow else "step"
    fig = Figure(figsize=(13, 4), layout="constrained")
    ax_gap, ax_spec, ax_bal = fig.subplots(1, 3)

    gap = np.asarray(result.losses, dtype=float) - result.optimum
    scale = max(abs(result.optimum), t.trace, np.finfo(float).tiny)
    rel = np.abs(gap) / scale
    shown = np.isfinite(rel) & (rel > 0)
    # markers where the points are few: a single record is still visible
    mark = "o" if np.count_nonzero(shown) <= 30 else None
    ax_gap.semilogy(x[shown], rel[shown], color="C0", marker=mark, ms=3)
    if not shown.any():
        ax_gap.text(0.5, 0.5, "no finite gap above zero", ha="center",
                    va="center", transform=ax_gap.transAxes)
    ax_gap.set_xlabel(xlabel)
    ax_gap.set_ylabel("|loss - optimum| / max(optimum, tr Sigma0)")
    rate = result.observed_rate
    title = f"{result.objective} loss, {result.status.value}"
    if np.isfinite(rate):
        title += f"; observed rate {rate:.3g} per {xlabel}"
    ax_gap.set_title(title, fontsize=9)
    ax_gap.grid(True, which="both", alpha=0.3)

    W = end_to_end(result.weights).astype(np.float64)
    k = int(result.k)
    sigma = np.linalg.svd(W, compute_uv=False)[:k]
    model = np.full(t.n, float(result.tau))
    model[:k] += sigma**2  # rank W <= k: the rest is tau alone
    idx = np.arange(1, t.n + 1)
    top = max(float(t.eigvals[0]), float(model.max()), np.finfo(float).tiny)
    floor = 1e-16 * top  # below: rounding, drawn at the floor
    ax_spec.semilogy(idx, np.maximum(t.eigvals, floor), "o", mfc="none",
                     color="C1", label="target")
    ax_spec.semilogy(idx, np.maximum(model, floor), "x", color="C0",
                     label="learned W W^T + tau I")
    ax_spec.set_ylim(0.5 * floor, 2 * top)
    ax_spec.axvline(result.k + 0.5, color="0.5", lw=0.8, ls="--")
    ax_spec.set_xlabel("index i")
    ax_spec.set_ylabel("eigenvalue")
    ax_spec.set_title(f"spectrum (k = {result.k})", fontsize=9)
    ax_spec.legend(fontsize=8)

    d = result.diagnostics
    if d is None:
        ax_bal.text(0.5, 0.5, "no diagnostics recorded\n(fit(diagnostics=True))",
                    ha="center", va="center", transform=ax_bal.transAxes)
    else:
        bal = np.asarray(d.balancedness, dtype=float)
        xs = np.asarray(result.times if flow else d.steps, dtype=float)
        ok = np.isfinite(bal)
        floor = np.finfo(float).eps * scale
        mark = "o" if np.count_nonzero(ok) <= 30 else None
        ax_bal.semilogy(xs[ok], np.maximum(bal[ok], floor), color="C2",
                        marker=mark, ms=3)
        if not ok.any():
            ax_bal.text(0.5, 0.5, "no finite record", ha="center",
                        va="center", transform=ax_bal.transAxes)
        ax_bal.set_ylabel("max_j ||W_{j+1}^T W_{j+1} - W_j W_j^T||_F")
        ax_bal.grid(True, which="both", alpha=0.3)
    ax_bal.set_xlabel(xlabel)
    ax_bal.set_title("balancedness defect (absolute)", fontsize=9)
    return fig
