"""AdaRound (Nagel et al. 2020): layer-wise learned rounding (Eq. 21-25), activations at calibrated scales."""
from .base import RECON_OPTIONS, Method
from .rtn import SHARED_CHECKS

# layer-wise: the regions are always single layers, so --granularity is not read
METHOD = Method("adaround", RECON_OPTIONS - {"granularity", "act_iters", "act_lr"}, SHARED_CHECKS, learn_steps="none",
                acts_during_rounding=True, layerwise=True)
