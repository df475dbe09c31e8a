"""onnxptq.verify.qdq_output_parity: level-2 parity report of the simulation vs onnxruntime."""
import numpy as np

from onnxptq.api import quantize
from onnxptq.verify import qdq_output_parity

from helpers import digits_path


def test_po2_report_is_bit_exact_and_float_report_counts(tmp_path, digits_calib, digits_val):
    x = {"input": digits_val["input"][:64]}
    res = quantize(digits_path("digits_mbv2"), digits_calib["input"], output=tmp_path / "p.onnx", scale="po2",
                   num_calib=64, progress=False)
    rep = qdq_output_parity(res.sim, str(res.output), x)
    assert rep.bit_exact and rep.exact_rate == 1.0 and rep.histogram == {0: rep.elements}
    assert rep.elements == 64 * 10
    res = quantize(digits_path("digits_mbv2"), digits_calib["input"], output=tmp_path / "f.onnx", scale="float",
                   w_bits=4, a_bits=4, num_calib=64, progress=False)
    rep = qdq_output_parity(res.sim, str(res.output), x)
    assert sum(rep.histogram.values()) == rep.elements
    assert rep.max_lsb == max(rep.histogram) and np.isclose(rep.exact_rate, rep.histogram.get(0, 0) / rep.elements)
    assert rep.exact_rate > 0.5
