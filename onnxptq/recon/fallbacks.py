"""Reconstruction fallbacks as ``onnxptq.diagnostics`` entries, from a finished region's ``RegionResult``.

One place turns a region's result into what the run summary counts, so a region restored from a checkpoint
is counted like one reconstructed in this run:
- ``region-rtn``: the region (or Bit-Split layer) went back to its calibrated round-to-nearest state;
- ``steps-kept``: learned activation steps refused because an int32 bias would overflow at them;
- ``steps-clamped``: learned activation steps raised (toward the calibrated step) until the int32 biases of
  this region's readers fit;
- ``bias-correction-dropped``: the bias correction of the learned rounding raised the region loss and was
  not re-applied (only where it was tried: ``bias_tried``);
- ``channels-rtn``: Bit-Split kept some output channels of a layer at RTN (held-out rows chose it).
"""
from __future__ import annotations

from ..diagnostics import Diagnostics


def record(diag: Diagnostics, result, bias_tried: bool = False, why: str = "") -> None:
    """Add the fallbacks of ``result`` (a ``RegionResult``) to ``diag``; ``why`` explains a revert."""
    if result.reverted:
        diag.add("region-rtn", result.name, why or f"reconstructed loss above the calibrated "
                 f"{result.loss_before:.4g}: calibrated (RTN) state kept")
        return
    for step in result.steps_kept:
        diag.add("steps-kept", step, f"region {result.name}: the learned step would overflow an int32 bias; "
                 "calibrated step kept")
    for step in result.steps_clamped:
        diag.add("steps-clamped", step, f"region {result.name}: the learned step would overflow an int32 bias of "
                 "a layer in the region; raised to the smallest step at which it fits", quiet=True)
    if bias_tried and not result.bias_corrected:
        diag.add("bias-correction-dropped", result.name, "bias correction of the learned rounding raised the "
                 "region loss; rounding kept without it", quiet=True)
    if result.rtn_channels > 0:
        diag.add("channels-rtn", result.name, f"{result.rtn_channels:.0%} of the output channels kept RTN "
                 "(Bit-Split's held-out error was not lower)", quiet=True)
