"""BRECQ (Li et al. 2021, Algorithm 1): block rounding with float activations, then LSQ steps (Eq. 29)."""
from .base import RECON_OPTIONS, Method
from .rtn import SHARED_CHECKS

METHOD = Method("brecq", RECON_OPTIONS, SHARED_CHECKS)
