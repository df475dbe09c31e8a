"""QuantConfig: every option of a quantization run, validated on construction.

The CLI flags map one-to-one onto these fields (``--w-bits`` -> ``w_bits``), so the Python API and
the command line expose the same options.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError

METHODS = ("rtn",)
SCALE_KINDS = ("float", "po2")
SCALE_METHODS = ("minmax", "percentile", "mse")
PO2_METHODS = ("search", "floor", "round")
FORMATS = ("qdq", "int")
INT_ROUNDINGS = ("rne", "half_up")
GRANULARITIES = ("layer", "block", "stage", "net")


@dataclass
class QuantConfig:
    # bit widths
    w_bits: int = 8
    a_bits: int = 8
    first_last_bits: int | None = 8  # None: first/last layers use w_bits / a_bits like the rest
    # scales
    scale: str = "float"  # float | po2
    po2_method: str = "search"  # how a float scale becomes 2^k: search | floor (RAPQ Eq. 4) | round
    w_scale_method: str = "mse"  # minmax | percentile | mse (L_p search, BRECQ p = 2.4)
    a_scale_method: str = "mse"
    percentile: float = 99.99
    w_symmetric: bool = True  # False: asymmetric per-channel weights (zero-point in the grid)
    a_symmetric: bool = False  # signed activations: symmetric grid, or (default) asymmetric with a zero point;
    # non-negative activations always use the unsigned grid with zero point 0
    bias_correction: bool = True  # shift biases by E[(W_q - W) x] measured on calibration data
    # method and its granularity
    method: str = "rtn"
    granularity: str = "block"
    # data and run
    num_calib: int = 256
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    skip_nodes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    # export
    format: str = "qdq"  # qdq (onnxruntime and other QDQ runtimes) | int (shift-based integer ONNX, Po2 only)
    int_rounding: str = "rne"  # integer export requantization: rne (parity with QDQ) | half_up (some hardware)
    opset: int = 21
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("scale", SCALE_KINDS), ("po2_method", PO2_METHODS), ("w_scale_method", SCALE_METHODS),
                              ("a_scale_method", SCALE_METHODS), ("method", METHODS), ("format", FORMATS),
                              ("int_rounding", INT_ROUNDINGS),
                              ("granularity", GRANULARITIES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("w_bits", "a_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 2 <= v <= 8 and not (name == "a_bits" and v == 16):
                raise ConfigError(f"{name} must be an integer in 2..8{' or 16' if name == 'a_bits' else ''}; got {v!r}")
        if self.first_last_bits is not None and not 2 <= self.first_last_bits <= 8:
            raise ConfigError(f"first_last_bits must be in 2..8 or None; got {self.first_last_bits!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100]; got {self.percentile}")
        if self.num_calib < 1 or self.batch_size < 1:
            raise ConfigError("num_calib and batch_size must be positive")
        if self.format == "int" and self.scale != "po2":
            raise ConfigError("--format int writes shift-based integer ONNX and needs power-of-two scales: add --scale po2")
        if self.format == "int" and self.a_bits > 8:
            raise ConfigError("--format int stores activations in int8: use --a-bits <= 8 (16-bit activations: --format qdq)")
        if self.int_rounding != "rne" and self.format != "int":
            raise ConfigError("--int-rounding applies to --format int only")
        if self.opset < 21 and (self.w_bits <= 4 or self.a_bits <= 4):
            raise ConfigError(f"4-bit containers need opset >= 21; got opset {self.opset}")
        if self.device != "cpu":
            import torch

            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r} requested but torch sees no CUDA device; use --device cpu")
        self.skip_nodes = list(self.skip_nodes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
