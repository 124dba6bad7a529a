"""bwfast: compiled kernels for Bures-Wasserstein geometry and deep linear
generative networks trained with the Bures-Wasserstein loss."""

import importlib as _importlib

__version__ = "0.1.0"

# Public names and the module that defines each. They load on first use
# (PEP 562), so `import bwfast` stays cheap: a command line that is
# interrupted or only asked for --help never waits for NumPy, SciPy and
# Numba to import, and no kernel is compiled before it is called.
_EXPORTS = {
    "BWLinAlgError": "_errors",
    "RankDropWarning": "_errors",
    "sqrtm_psd": "linalg",
    "inv_sqrtm_psd": "linalg",
    "sqrtm_frechet": "linalg",
    "bures_wasserstein_squared": "linalg",
    "bures_wasserstein": "linalg",
    "frechet_distance": "linalg",
    "ot_map": "linalg",
    "Target": "network",
    "loss_and_grad": "network",
    "optimal_loss": "network",
    "balanced_weights": "network",
    "end_to_end": "network",
    "fit": "train",
    "FitResult": "train",
    "RunDiagnostics": "train",
    "Status": "train",
    "default_lr": "train",
    "balancedness": "train",
    "observed_rate": "rates",
    "predicted_flow_rate": "rates",
    "stable_step": "rates",
    "hessian_vector_product": "curvature",
    "hessian": "curvature",
    "hessian_extremes": "curvature",
    "CriticalPoint": "theory",
    "critical_points": "theory",
    "count_critical_points": "theory",
    "realize": "theory",
    "Classification": "theory",
    "classify": "theory",
    "margin": "theory",
    "init_weights": "theory",
    "synthetic_target": "targets",
    "synthetic_spectrum": "targets",
    "Sweep": "sweep",
    "load_sweep": "sweep",
    "run_sweep": "sweep",
    "sweep_results": "sweep",
    "sweep_histories": "sweep",
    "export_sweep": "sweep",
    "plot_sweep": "sweep",
}
_SUBMODULES = {"io", "kernels", "reference", "bench", "cli", "theory", "curvature",
               "rates", "plots", "sweep", "targets"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(_importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'bwfast' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | _SUBMODULES)
