"""QDrop (Wei et al. 2022): BRECQ with rounding and steps learned jointly, activations dropped to float."""
from .base import RECON_OPTIONS, Method
from .rtn import SHARED_CHECKS

# joint phase: the rounding iterations (iters) also learn the steps, so act_iters is not read
METHOD = Method("qdrop", (RECON_OPTIONS - {"act_iters"}) | {"drop_prob"}, SHARED_CHECKS, learn_steps="joint",
                acts_during_rounding=True)
