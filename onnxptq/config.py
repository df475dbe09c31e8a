"""QuantConfig: every option of a quantization run, validated on construction.

The CLI flags map one-to-one onto these fields (``--w-bits`` -> ``w_bits``), so the Python API and
the command line expose the same options.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .errors import ConfigError

METHODS = ("rtn", "adaround", "brecq", "qdrop", "rapq", "attention", "bitsplit")  # rtn: calibration only; the rest: recon/settings.py
ROUNDINGS = ("nearest", "floor", "ceil", "stochastic")  # quant/rounding.py WEIGHT_ROUNDINGS
TAU_UNITS = ("step", "weight")  # recon/attention_round.py
MIXED = ("coding-length", "search")  # mixed/allocate.py
WEIGHT_GRIDS = ("uniform", "log")  # recon/bitsplit.py
SCALE_KINDS = ("float", "po2")
SCALE_METHODS = ("minmax", "percentile", "mse")
PO2_METHODS = ("search", "floor", "round")
FORMATS = ("qdq", "int")
INT_ROUNDINGS = ("rne", "half_up")
INT_KERNELS = ("portable", "vnni")
GRANULARITIES = ("layer", "block", "stage", "net")
LOSSES = ("mse", "fisher", "lp")  # more can be registered: recon/losses.py register_loss
PRESETS = ("fast", "full", "rapq", "rapq-quick")


@dataclass
class QuantConfig:
    # bit widths
    w_bits: int = 8
    a_bits: int = 8
    first_last_bits: int | None = 8  # None: first/last layers use w_bits / a_bits like the rest
    # scales
    scale: str = "float"  # float | po2
    po2_method: str = "search"  # how a float scale becomes 2^k: search | floor (RAPQ Eq. 4) | round
    po2_output_points: int = 1  # po2: the first N activation quant points (graph input first) pick their
    # scale / zero point by model-output error on 16 calibration samples (recon/calibrate.py); 0 = L_p only
    w_scale_method: str = "mse"  # minmax | percentile | mse (L_p search, BRECQ p = 2.4)
    a_scale_method: str = "mse"
    percentile: float = 99.99
    w_symmetric: bool = True  # False: asymmetric per-channel weights (zero-point in the grid)
    a_symmetric: bool = False  # signed activations: symmetric grid, or (default) asymmetric with a zero point;
    # non-negative activations always use the unsigned grid with zero point 0
    bias_correction: bool = True  # shift biases by E[(W_q - W) x] measured on calibration data
    rounding: str = "nearest"  # RTN weight rounding: nearest | floor | ceil | stochastic (baselines; method rtn)
    # mixed precision (mixed/allocate.py): per-layer weight bits instead of w_bits for all but first/last
    mixed: str | None = None  # coding-length (Attention Round Alg. 1) | search (BRECQ Alg. 2, needs a budget)
    mixed_bits: list[int] | None = None  # candidate bits; None: coding-length 3,4,5,6, search 2,4,8
    budget_size: float | None = None  # search: quantized weight bytes of the whole model (bits / 8 per weight)
    budget_bops: float | None = None  # search: bit-operations per sample, sum of MACs x b_w x b_a
    coding_eps: float = 0.5  # eps of the coding length (Eq. 12; mixed/coding_length.py)
    # method and its granularity
    method: str = "rtn"
    granularity: str = "block"  # reconstruction regions (brecq, qdrop; adaround is layer-wise)
    # reconstruction (method adaround | brecq | qdrop); None: the preset's value (recon/settings.py)
    loss: str | None = None  # mse | fisher (BRECQ Eq. 11) | lp (RAPQ Eq. 17-19); None: lp for rapq, else mse
    preset: str = "fast"  # fast (a 2-core CPU) | full (BRECQ: 1024 samples, batch 32, 20k iterations)
    iters: int | None = None  # rounding (qdrop: joint) iterations per region
    act_iters: int | None = None  # step-size (LSQ) iterations per region after the rounding (brecq)
    recon_batch_size: int | None = None
    lr: float | None = None  # Adam learning rate of the rounding variables
    act_lr: float | None = None  # Adam learning rate of the activation step sizes
    round_lambda: float | None = None  # weight of the AdaRound regularizer (BRECQ Eq. 28)
    drop_prob: float = 0.5  # qdrop: probability of keeping an activation in float
    fisher_damping: float = 1.0  # Fisher weights (|g|/rms + d)^2: 0 = pure Eq. 11, larger = closer to MSE
    lp_alpha: float | None = None  # RAPQ Eq. 19 alpha in (0, 1]; None: the preset's (rapq 0.9, rapq-quick/fast 0.1)
    lp_beta: float = 1.0  # RAPQ Eq. 19 beta
    ecaq: bool = False  # per-channel activation scales folded into the consumer convs (Bit-Split Sec. 3.4)
    weight_grid: str = "uniform"  # bitsplit: uniform (Bit-Split Eq. 12-19) | log (Sec. 3.3.2; layers of <= 4 bits)
    bitsplit_points: int = 12000  # bitsplit: sampled input rows per layer to fit (the paper's 12000; +1/4 held out)
    bitsplit_iters: int = 30  # bitsplit: alternating-optimization passes per layer (at most)
    attn_tau: float = 0.5  # Attention Round tau (Eq. 1-6)
    attn_tau_unit: str = "step"  # tau in grid steps, or "weight": Eq. 3's literal tau / s (recon/attention_round.py)
    recon_guard: bool = True  # a region whose loss ends above its calibrated (RTN) loss goes back to RTN
    checkpoint_dir: str | None = None  # state after each region (default with an output file: <output>.recon)
    resume: bool = False  # continue from the checkpoint in checkpoint_dir
    cache_budget_mb: float = 2048.0  # RAM for cached activations; beyond it they spill to np.memmap files
    max_memory_mb: float | None = None  # bound on the process's resident memory during reconstruction: the cache
    # gets what is left after the current resident set minus headroom (memory.py); replaces cache_budget_mb
    cache_dir: str | None = None  # where spilled activations go (default: the system temp directory)
    # data and run
    num_calib: int | None = None  # None: 256, or the reconstruction preset's sample count
    batch_size: int = 32
    seed: int = 0
    device: str = "cpu"
    skip_nodes: list[str] = field(default_factory=list)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    # export
    format: str = "qdq"  # qdq (onnxruntime and other QDQ runtimes) | int (shift-based integer ONNX, Po2 only)
    int_rounding: str = "rne"  # integer export requantization: rne (parity with QDQ) | half_up (some hardware)
    # integer export kernels: portable (u8 x u8 unless no AVX2 int16 pair can saturate: exact on every x86) |
    # vnni (u8 x s8 everywhere: twice as fast, exact only on AVX512-VNNI / AVX-VNNI / ARM; docs/integer.md);
    # None: the target's (targets.py exact_u8s8: vnni for onnxruntime and qnn, portable otherwise)
    int_kernels: str | None = None
    target: str = "onnxruntime"  # deployment target profile (targets.py): onnxruntime | onnxruntime-avx2 |
    # openvino | tensorrt | qnn | generic: weight/activation containers, reduce range, Q/DQ placement
    opset: int = 21
    progress: bool = True

    def __post_init__(self) -> None:
        for name, allowed in (("scale", SCALE_KINDS), ("po2_method", PO2_METHODS), ("w_scale_method", SCALE_METHODS),
                              ("a_scale_method", SCALE_METHODS), ("method", METHODS), ("format", FORMATS),
                              ("int_rounding", INT_ROUNDINGS),
                              ("granularity", GRANULARITIES), ("preset", PRESETS), ("rounding", ROUNDINGS),
                              ("attn_tau_unit", TAU_UNITS),
                              ("weight_grid", WEIGHT_GRIDS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("w_bits", "a_bits"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 2 <= v <= 8 and not (name == "a_bits" and v == 16):
                raise ConfigError(f"{name} must be an integer in 2..8{' or 16' if name == 'a_bits' else ''}; got {v!r}")
        if self.first_last_bits is not None and not 2 <= self.first_last_bits <= 8:
            raise ConfigError(f"first_last_bits must be in 2..8 or None; got {self.first_last_bits!r}")
        if not isinstance(self.po2_output_points, int) or self.po2_output_points < 0:
            raise ConfigError(f"po2_output_points must be a non-negative integer; got {self.po2_output_points!r}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100]; got {self.percentile}")
        if self.loss is None:
            self.loss = "lp" if self.method == "rapq" else "mse"
        if self.loss not in LOSSES:
            from .recon.losses import LOSSES as registered

            if self.loss not in registered:
                raise ConfigError(f"loss must be one of {', '.join(registered)}; got {self.loss!r}")
        if self.num_calib is None:
            from .recon.settings import PRESETS as recon_presets

            self.num_calib = 256 if self.method == "rtn" else recon_presets[self.preset].samples
        for name in ("iters", "act_iters", "recon_batch_size"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or v < (1 if name == "recon_batch_size" else 0)):
                raise ConfigError(f"{name} must be a {'positive' if name == 'recon_batch_size' else 'non-negative'} "
                                  f"integer; got {v!r}")
        for name in ("lr", "act_lr"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive; got {v!r}")
        if self.max_memory_mb is not None and not self.max_memory_mb > 0:
            raise ConfigError(f"max_memory_mb must be positive; got {self.max_memory_mb}")
        if (self.round_lambda is not None and self.round_lambda < 0) or self.fisher_damping < 0 or self.cache_budget_mb < 0:
            raise ConfigError("round_lambda, fisher_damping and cache_budget_mb must be >= 0")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"drop_prob must be in [0, 1); got {self.drop_prob}")
        if self.num_calib < 1 or self.batch_size < 1:
            raise ConfigError("num_calib and batch_size must be positive")
        if self.method == "rapq" and self.scale != "po2":
            raise ConfigError("--method rapq learns power-of-two scales: add --scale po2 (float scales: --method brecq)")
        if self.rounding != "nearest" and self.method != "rtn":
            raise ConfigError(f"--rounding {self.rounding} is a round-to-nearest baseline: use it with --method rtn "
                              f"(--method {self.method} learns its own rounding)")
        if not self.attn_tau > 0:
            raise ConfigError(f"attn_tau must be positive; got {self.attn_tau}")
        self._check_mixed()
        if self.method == "bitsplit":
            if self.scale != "float":
                raise ConfigError("--method bitsplit solves a float scale per channel (Eq. 14): use --scale float")
            if self.weight_grid == "uniform" and self.w_bits < 3:
                raise ConfigError("Bit-Split needs w_bits >= 3 (Eq. 13 splits into w_bits-1 ternary planes); "
                                  "2-bit: --weight-grid log or another method")
            if self.weight_grid == "log" and self.w_bits > 4:
                raise ConfigError("logarithmic weights (Bit-Split Sec. 3.3.2) support 2-4 bits; got "
                                  f"w_bits={self.w_bits}")
            if self.bitsplit_points < 16 or self.bitsplit_iters < 0:
                raise ConfigError("bitsplit_points must be >= 16 and bitsplit_iters >= 0")
        if self.ecaq and self.method not in ("rtn", "bitsplit"):
            raise ConfigError(f"--ecaq works with --method rtn or bitsplit (Bit-Split Algorithm 1); --method "
                              f"{self.method} learns per-layer activation steps")
        if self.method != "bitsplit" and self.weight_grid != "uniform":
            raise ConfigError("--weight-grid log is solved by Bit-Split's coordinate descent: add --method bitsplit")
        if self.lp_alpha is not None and not 0.0 < self.lp_alpha <= 1.0:
            raise ConfigError(f"lp_alpha must be in (0, 1] (RAPQ Eq. 19); got {self.lp_alpha}")
        if self.format == "int" and self.scale != "po2":
            raise ConfigError("--format int writes shift-based integer ONNX and needs power-of-two scales: add --scale po2")
        if self.format == "int" and self.a_bits > 8:
            raise ConfigError("--format int stores activations in int8: use --a-bits <= 8 (16-bit activations: --format qdq)")
        self._check_target()
        if self.int_rounding != "rne" and self.format != "int":
            raise ConfigError("--int-rounding applies to --format int only")
        if self.opset < 21 and (self.w_bits <= 4 or self.a_bits <= 4):
            raise ConfigError(f"4-bit containers need opset >= 21; got opset {self.opset}")
        if self.device != "cpu":
            import torch

            if self.device.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"device {self.device!r} requested but torch sees no CUDA device; use --device cpu")
        self.skip_nodes = list(self.skip_nodes)

    def _check_target(self) -> None:
        """What the target profile (targets.py) decides: symmetric activation grids, the integer kernels."""
        from .targets import get_target

        t = get_target(self.target)
        if t.symmetric_activations:
            if self.format == "int":
                raise ConfigError(f"--target {t.name} takes QDQ files (--format qdq); --format int is for runtimes "
                                  "that run standard integer ONNX ops")
            self.a_symmetric = True  # the target's Q/DQ have zero point 0 (TensorRT: int8 only)
        if self.int_kernels is not None and self.int_kernels not in INT_KERNELS:
            raise ConfigError(f"int_kernels must be one of {', '.join(INT_KERNELS)}; got {self.int_kernels!r}")
        if self.int_kernels not in (None, "portable") and self.format != "int":
            raise ConfigError("--int-kernels applies to --format int only")
        if self.int_kernels is None:
            self.int_kernels = "vnni" if self.format == "int" and t.exact_u8s8 else "portable"

    def _check_mixed(self) -> None:
        if self.mixed is None:
            if self.mixed_bits is not None or self.budget_size is not None or self.budget_bops is not None:
                raise ConfigError("--bits / --budget-size / --budget-bops choose mixed precision: add --mixed "
                                  "coding-length or --mixed search")
            return
        if self.mixed not in MIXED:
            raise ConfigError(f"mixed must be one of {', '.join(MIXED)}; got {self.mixed!r}")
        if self.mixed_bits is not None:
            self.mixed_bits = [int(b) for b in self.mixed_bits]
            if not self.mixed_bits or len(set(self.mixed_bits)) != len(self.mixed_bits) or \
                    any(not 2 <= b <= 8 for b in self.mixed_bits):
                raise ConfigError(f"mixed bits must be distinct integers in 2..8; got {self.mixed_bits}")
        budgets = [b for b in (self.budget_size, self.budget_bops) if b is not None]
        if self.mixed == "search" and len(budgets) != 1:
            raise ConfigError("--mixed search needs exactly one budget: --budget-size (e.g. 1.5MB) or --budget-bops")
        if self.mixed == "coding-length" and budgets:
            raise ConfigError("--mixed coding-length sets bits from the weights alone; a budget needs --mixed search")
        if any(not b > 0 for b in budgets) or not self.coding_eps > 0:
            raise ConfigError("budgets and coding_eps must be positive")
        low = min(self.mixed_bits or ((3, 4, 5, 6) if self.mixed == "coding-length" else (2, 4, 8)))
        if self.opset < 21 and low <= 4:
            raise ConfigError(f"{low}-bit weights need 4-bit containers, opset >= 21; got opset {self.opset}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
