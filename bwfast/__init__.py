"""bwfast: compiled kernels for Bures-Wasserstein geometry and deep linear
generative networks trained with the Bures-Wasserstein loss."""

from ._errors import BWLinAlgError, RankDropWarning
from .linalg import (
    bures_wasserstein,
    bures_wasserstein_squared,
    frechet_distance,
    inv_sqrtm_psd,
    ot_map,
    sqrtm_frechet,
    sqrtm_psd,
)
from .network import (
    Target,
    balanced_weights,
    end_to_end,
    loss_and_grad,
    optimal_loss,
)
from .train import FitResult, Status, balancedness, default_lr, fit

from . import io, kernels, reference  # noqa: E402  (submodules as attributes)

__version__ = "0.1.0"

__all__ = [
    "BWLinAlgError",
    "RankDropWarning",
    "sqrtm_psd",
    "inv_sqrtm_psd",
    "sqrtm_frechet",
    "bures_wasserstein_squared",
    "bures_wasserstein",
    "frechet_distance",
    "ot_map",
    "Target",
    "loss_and_grad",
    "optimal_loss",
    "balanced_weights",
    "end_to_end",
    "fit",
    "FitResult",
    "Status",
    "default_lr",
    "balancedness",
]
