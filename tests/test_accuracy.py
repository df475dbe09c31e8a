"""Accuracy of the shipped digits models quantized at W8A8: within 0.5 points of the float accuracy."""
from __future__ import annotations

import pytest

from onnxptq import api

from helpers import DIGITS, MODELS, digits_path

MAX_DROP = 0.005  # 0.5 points


@pytest.mark.parametrize("scale", ["float", "po2"])
@pytest.mark.parametrize("name", DIGITS)
def test_w8a8_accuracy(name, scale, quantized_digits, manifest_by_name):
    art = quantized_digits(name, w_bits=8, a_bits=8, scale=scale)  # the W8A8 parity tests' models (same config)
    fid = api.evaluate(digits_path(name), art.path, MODELS / "digits_val.npz")
    want = manifest_by_name[name]["float_accuracy"]
    print(f"{name} W8A8 {scale}: float {fid.float_accuracy:.4f} (manifest {want}), quantized {fid.quant_accuracy:.4f}, "
          f"agreement {fid.top1_agreement:.4f}, SQNR {fid.sqnr_db:.1f} dB")
    assert fid.samples == 447
    assert fid.float_accuracy == pytest.approx(want, abs=1e-4)
    assert fid.quant_accuracy >= want - MAX_DROP, f"{name}: {fid.quant_accuracy:.4f} vs float {want}"
    assert fid.top1_agreement >= 0.98
    assert fid.sqnr_db > 15
