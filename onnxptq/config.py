"""QuantConfig: every option of a quantization run: its default, its CLI flag, its help text and its checks.

One declaration per option: the CLI (``cli.py``) builds its ``quantize`` flags from the field metadata below
(``--w-bits`` for ``w_bits``, negated booleans as ``--no-...``), so the Python API and the command line expose
the same options with the same defaults. A QuantConfig is frozen and only checks what each field alone (or a
pair of fields of the same stage) allows; what depends on the method, the target or another stage is decided
once by ``settings.resolve`` (the method's own checks live in its plug-in, ``recon/methods``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError
from .targets import get_target

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
GRANULARITIES = ("layer", "block", "stage", "net")  # graph/partition.py
PRESETS = ("fast", "full", "rapq", "rapq-quick")  # recon/settings.py
TARGET_ACTIONS = ("bits", "float")  # accuracy/changes.py
TARGET_STAGES = ("auto", "before", "after")  # accuracy/rounds.py

# option groups, in the order ``onnxptq quantize --help`` lists them
GROUPS = {
    "bits": "bit widths",
    "scales": "scales",
    "mixed": "mixed precision (per-layer weight bits)",
    "method": "method",
    "recon": "reconstruction (methods other than rtn; None: the preset's value)",
    "memory": "memory",
    "data": "data and run",
    "export": "export and target",
    "accuracy": "accuracy target (quantize, then change the most sensitive layers until the target holds)",
}


def opt(default: Any = None, help: str = "", *, group: str, choices: tuple | None = None, flag: str | None = None,
        parse: str | None = None, factory=None) -> Any:
    """A QuantConfig field with its CLI metadata. ``flag``: the CLI flag when it is not ``--field-name`` (a
    boolean whose default is True gets ``--no-field-name`` unless ``flag`` names its negation); ``parse``: how the
    CLI reads the text (``cli.PARSERS``: size, count, bits-list, bits-or-same, names, shapes, mib)."""
    meta = {"help": help, "group": group, "choices": choices, "flag": flag, "parse": parse}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def cli_flag(f) -> str:
    """The CLI flag of QuantConfig field ``f``: its metadata ``flag``, ``--no-name`` for a boolean defaulting to
    True, else ``--name``."""
    if f.metadata.get("flag"):
        return f.metadata["flag"]
    name = f.name.replace("_", "-")
    return f"--no-{name}" if f.type == "bool" and f.default is True else f"--{name}"


@dataclass(frozen=True)
class QuantConfig:
    # bit widths
    w_bits: int = opt(8, "weight bits (2-8)", group="bits")
    a_bits: int = opt(8, "activation bits (2-8, or 16 for --format qdq)", group="bits")
    first_last_bits: int | None = opt(8, "bits of the first/last layer weights and inputs ('same': like the rest)",
                                      group="bits", parse="bits-or-same")
    # scales
    scale: str = opt("float", "float scales or powers of two", group="scales", choices=SCALE_KINDS)
    po2_method: str = opt("search", "how a float scale becomes 2^k: search | floor (RAPQ Eq. 4) | round",
                          group="scales", choices=PO2_METHODS)
    po2_output_points: int = opt(1, "po2: the first N activation quant points (graph input first) choose their "
                                    "scale and zero point by model-output error on 16 calibration samples (0: L_p "
                                    "search only)", group="scales")
    po2_rescale: bool = opt(False, "po2: put each activation's best float scale on a power of two by rescaling the "
                                  "layer that produces it and the layers that read it (an exact rewrite of the float "
                                  "model; graph/rescale.py; off by default, see docs/methods.md)", group="scales")
    po2_equalize: bool = opt(False, "po2: put each weight channel's best float scale on a power of two by moving a "
                                   "factor per channel into the layers that read it (Conv -> [Relu] -> Conv only; an "
                                   "exact rewrite of the float model; graph/rescale.py)", group="scales")
    a_output_search: bool = opt(False, "float scales: after the L_p search, each activation quant point re-chooses "
                                       "its clipping range (L_p, 1/3 and 2/3 of the way to min/max, min/max) by the "
                                       "model-output error on 16 calibration samples, greedy in node order (costs "
                                       "about 4 runs of the rest of the graph per point; mixed results: "
                                       "docs/benchmarks.md digits-ranges)", group="scales")
    join_grids: bool = opt(False, "each merge point (Add, Concat, pool, ...) takes over an input's grid where that "
                                  "rounds its output, computed from quantized inputs, within 1 % of its own L_p "
                                  "error: no second rounding of a residual stream whose branches are small "
                                  "(calib/join_grids.py; off by default, see docs/methods.md)", group="scales")
    w_scale_method: str = opt("mse", "weight scale search (mse: L_p, BRECQ p = 2.4)", group="scales",
                              choices=SCALE_METHODS)
    a_scale_method: str = opt("mse", "activation scale search", group="scales", choices=SCALE_METHODS)
    percentile: float = opt(99.99, "percentile of --*-scale-method percentile", group="scales")
    w_symmetric: bool = opt(True, "symmetric per-channel weights", group="scales", flag="--w-asymmetric")
    a_symmetric: bool = opt(False, "symmetric grid for signed activations (default: asymmetric with a zero point; "
                                   "non-negative activations always use the unsigned grid)", group="scales")
    bias_correction: bool = opt(True, "shift biases by E[(W_q - W) x] measured on the calibration data",
                                group="scales")
    bias_correction_guard: bool = opt(True, "method rtn: keep the bias correction only if it lowers the model-output "
                                            "error on held-out calibration samples (estimated on one half, measured "
                                            "on the other, both ways; calib/calibrate.py bias_correction_pays)",
                                      group="scales")
    rounding: str = opt("nearest", "weight rounding of --method rtn: nearest | floor | ceil | stochastic "
                                   "(baselines)", group="method", choices=ROUNDINGS)
    # mixed precision (mixed/allocate.py)
    mixed: str | None = opt(None, "per-layer weight bits: coding-length (Attention Round Alg. 1, from the weights) "
                                  "or search (BRECQ Alg. 2: sensitivities + genetic search under a budget)",
                            group="mixed", choices=MIXED)
    mixed_bits: tuple[int, ...] | None = opt(None, "candidate bits of --mixed (default coding-length 3,4,5,6; "
                                                   "search 2,4,8)", group="mixed", flag="--bits", parse="bits-list")
    budget_size: float | None = opt(None, "--mixed search: quantized weight bytes of the model, e.g. 1.5MB, 800kB",
                                    group="mixed", parse="size")
    budget_bops: float | None = opt(None, "--mixed search: bit-operations per sample (MACs x b_w x b_a), e.g. 20G",
                                    group="mixed", parse="count")
    coding_eps: float = opt(0.5, "eps of the coding length (Attention Round Eq. 12)", group="mixed")
    # method
    method: str = opt("rtn", "rtn (calibration only) | adaround | brecq | qdrop | rapq (needs --scale po2) | "
                             "attention (Attention Round) | bitsplit (Bit-Split & Stitching)", group="method")
    granularity: str = opt("block", "reconstruction regions (brecq, qdrop, rapq, attention)", group="method",
                           choices=GRANULARITIES)
    loss: str | None = opt(None, "reconstruction loss: mse | fisher (BRECQ Eq. 11) | lp (RAPQ Eq. 17-19; default "
                                 "for rapq)", group="method")
    preset: str = opt("fast", "fast (a 2-core CPU) | full (BRECQ: 1024 samples, batch 32, 20k iterations) | rapq | "
                              "rapq-quick", group="method", choices=PRESETS)
    ecaq: bool = opt(False, "per-channel activation scales folded into the consuming convs (Bit-Split ECAQ; "
                            "rtn/bitsplit)", group="method")
    weight_grid: str = opt("uniform", "bitsplit: uniform, or log (weights 0 / +-2^k times a channel scale, 2-4 "
                                      "bits)", group="method", choices=WEIGHT_GRIDS)
    bitsplit_points: int = opt(12000, "bitsplit: sampled input rows per layer to fit (the paper's 12000; a fifth "
                                      "more are held out)", group="method")
    bitsplit_iters: int = opt(30, "bitsplit: alternating-optimization passes per layer (at most)", group="method")
    attn_tau: float = opt(0.5, "Attention Round tau (Eq. 1-6)", group="method")
    attn_tau_unit: str = opt("step", "tau in grid steps, or in weight units (Eq. 3's literal tau / s)",
                             group="method", choices=TAU_UNITS)
    # reconstruction; None: the preset's value (recon/settings.py)
    iters: int | None = opt(None, "rounding (qdrop: joint) iterations per region", group="recon")
    act_iters: int | None = opt(None, "step-size (LSQ) iterations per region after the rounding", group="recon")
    recon_batch_size: int | None = opt(None, "minibatch of the reconstruction", group="recon")
    lr: float | None = opt(None, "Adam learning rate of the rounding variables", group="recon")
    act_lr: float | None = opt(None, "Adam learning rate of the activation step sizes", group="recon")
    round_lambda: float | None = opt(None, "weight of the AdaRound regularizer (BRECQ Eq. 28)", group="recon")
    recon_crop: float | None = opt(None, "side of the spatial crop each reconstruction step trains on, as a share of "
                                         "the region input's side (1 = whole images); regions of convolutions, pools, "
                                         "pads and pointwise ops only, inputs of at least 32 pixels (recon/crops.py)",
                                   group="recon")
    w_scale_lr: float | None = opt(None, "Adam learning rate of a per-channel gain on each float weight step, "
                                         "learned with the rounding and folded into the step at the end (the "
                                         "integers stay on the calibrated grid; power-of-two steps keep theirs; "
                                         "0: off; default: the preset's, fast 1e-3, full off; recon/weight_gain.py)",
                                   group="recon")
    drop_prob: float = opt(0.5, "qdrop: probability of keeping an activation in float", group="recon")
    fisher_damping: float = opt(1.0, "Fisher weights (|g|/rms + d)^2: 0 = pure Eq. 11, larger = closer to MSE",
                                group="recon")
    lp_alpha: float | None = opt(None, "RAPQ Eq. 19 alpha in (0, 1]", group="recon")
    lp_beta: float = opt(1.0, "RAPQ Eq. 19 beta", group="recon")
    recon_guard: bool = opt(True, "a region whose held-out loss ends above its calibrated (RTN) loss goes back to "
                                  "RTN", group="recon")
    checkpoint_dir: str | None = opt(None, "state after every region (default with an output file: OUTPUT.recon)",
                                     group="recon")
    resume: bool = opt(False, "continue an interrupted reconstruction from its checkpoint", group="recon")
    # memory
    cache_budget_mb: float = opt(2048.0, "RAM (MiB) for cached activations; beyond it they spill to np.memmap "
                                         "files", group="memory")
    max_memory_mb: float | None = opt(None, "keep the resident memory under this during reconstruction, e.g. 6GB "
                                            "(replaces --cache-budget-mb)", group="memory", flag="--max-memory",
                                      parse="mib")
    cache_dir: str | None = opt(None, "directory of spilled activations (default: the system temp directory)",
                                group="memory")
    # data and run
    num_calib: int | None = opt(None, "calibration samples (default 256; learned methods: the preset's)",
                                group="data")
    batch_size: int = opt(32, "batch of the calibration passes", group="data")
    seed: int = opt(0, "seed of every random choice of the run", group="data")
    device: str = opt("cpu", "torch device of calibration and reconstruction (cpu, cuda, cuda:1)", group="data")
    skip_nodes: tuple[str, ...] = opt(help="comma-separated node names to leave in float", group="data",
                                      parse="names", factory=tuple)
    input_shapes: dict[str, list[int]] = opt(help="NAME:D0,D1,... (several separated by ';'; batch stays dynamic)",
                                             group="data", flag="--input-shape", parse="shapes", factory=dict)
    progress: bool = opt(True, "progress bars", group="data")
    # export
    format: str = opt("qdq", "qdq: QuantizeLinear/DequantizeLinear ONNX; int: shift-based integer ONNX (needs "
                             "--scale po2)", group="export", choices=FORMATS)
    int_rounding: str = opt("rne", "requantization rounding of --format int: rne (matches QDQ/onnxruntime) or "
                                   "half_up", group="export", choices=INT_ROUNDINGS)
    int_kernels: str | None = opt(None, "--format int kernels: portable (exact on every x86) or vnni (u8 x s8, "
                                        "faster, exact on AVX512-VNNI / AVX-VNNI and ARM); default: the target's",
                                  group="export", choices=INT_KERNELS)
    lowering_check: int = opt(4, "--format int: calibration samples on which the integer program is compared with "
                                 "the simulation, quant point by quant point (verify/lowering.py); 0 skips it",
                              group="export")
    target: str = opt("onnxruntime", "deployment target profile (targets.py): containers, reduce range, Q/DQ "
                                     "placement", group="export")
    opset: int = opt(21, "opset of the exported model", group="export")
    # accuracy target (accuracy/control.py)
    min_sqnr: float | None = opt(None, "output SQNR (dB) the quantized model must keep against the float model on "
                                       "the target data", group="accuracy")
    max_drop: float | None = opt(None, "largest metric drop vs the float model (CLI: top-1 accuracy, 0.01 = 1 point; "
                                       "needs labels in the target data)", group="accuracy")
    target_data: str | None = opt(None, "data the target is measured on (default: calibration samples held out "
                                        "from calibration)", group="accuracy")
    target_samples: int = opt(128, "at most this many target samples", group="accuracy")
    target_rank_samples: int | None = opt(None, "rank the candidate changes on the first N target samples (default: "
                                                "all); every greedy step still measures all of them", group="accuracy")
    target_action: str = opt("bits", "bits: raise a layer's weights and input to 8 bits (then float if all raised "
                                     "still miss); float: leave its weights in float", group="accuracy",
                             choices=TARGET_ACTIONS)
    target_stage: str = opt("auto", "when a reconstructing method's target changes are chosen: before (on the "
                                     "calibrated model, then reconstruct again; up to 3 rounds), after (on the "
                                     "reconstructed model), auto: before with --target-action bits",
                            group="accuracy", choices=TARGET_STAGES)
    target_latency: bool = opt(False, "time the model before and after the changes in onnxruntime", group="accuracy")

    def __post_init__(self) -> None:
        for f in fields(self):
            allowed = f.metadata.get("choices")
            v = getattr(self, f.name)
            if allowed and not (v is None and f.default is None) and v not in allowed:
                raise ConfigError(f"{f.name} must be one of {', '.join(allowed)}; got {v!r}")
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
        for name in ("iters", "act_iters", "recon_batch_size", "num_calib"):
            v = getattr(self, name)
            low = 0 if name in ("iters", "act_iters") else 1
            if v is not None and (not isinstance(v, int) or v < low):
                raise ConfigError(f"{name} must be a {'non-negative' if low == 0 else 'positive'} integer; got {v!r}")
        for name in ("lr", "act_lr", "max_memory_mb", "attn_tau", "batch_size", "coding_eps"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive; got {v!r}")
        for name in ("round_lambda", "fisher_damping", "cache_budget_mb", "w_scale_lr"):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f"{name} must be >= 0; got {v!r}")
        if self.recon_crop is not None and not 0.0 < self.recon_crop <= 1.0:
            raise ConfigError(f"recon_crop must be in (0, 1]; got {self.recon_crop!r}")
        if not 0.0 <= self.drop_prob < 1.0:
            raise ConfigError(f"drop_prob must be in [0, 1); got {self.drop_prob}")
        if self.lp_alpha is not None and not 0.0 < self.lp_alpha <= 1.0:
            raise ConfigError(f"lp_alpha must be in (0, 1] (RAPQ Eq. 19); got {self.lp_alpha}")
        if self.bitsplit_points < 16 or self.bitsplit_iters < 0:
            raise ConfigError("bitsplit_points must be >= 16 and bitsplit_iters >= 0")
        self._check_mixed()
        self._check_accuracy()
        get_target(self.target)  # an unknown target name is an error here, with the list of targets
        if self.format == "int" and self.scale != "po2":
            raise ConfigError("--format int writes shift-based integer ONNX and needs power-of-two scales: add --scale po2")
        if self.format == "int" and self.a_bits > 8:
            raise ConfigError("--format int stores activations in int8: use --a-bits <= 8 (16-bit activations: --format qdq)")
        if self.int_rounding != "rne" and self.format != "int":
            raise ConfigError("--int-rounding applies to --format int only")
        if self.int_kernels not in (None, "portable") and self.format != "int":
            raise ConfigError("--int-kernels applies to --format int only")
        if self.opset < 21 and (self.w_bits <= 4 or self.a_bits <= 4):
            raise ConfigError(f"4-bit containers need opset >= 21; got opset {self.opset}")
        # sequences are stored as tuples: a frozen config cannot change under a run that holds it
        object.__setattr__(self, "skip_nodes", tuple(self.skip_nodes))
        if self.mixed_bits is not None:
            object.__setattr__(self, "mixed_bits", tuple(int(b) for b in self.mixed_bits))

    def _check_mixed(self) -> None:
        if self.mixed is None:
            if self.mixed_bits is not None or self.budget_size is not None or self.budget_bops is not None:
                raise ConfigError("--bits / --budget-size / --budget-bops choose mixed precision: add --mixed "
                                  "coding-length or --mixed search")
            return
        if self.mixed_bits is not None:
            bits = list(self.mixed_bits)
            if not bits or len(set(bits)) != len(bits) or any(not isinstance(b, int) or not 2 <= b <= 8 for b in bits):
                raise ConfigError(f"mixed bits must be distinct integers in 2..8; got {bits}")
        budgets = [b for b in (self.budget_size, self.budget_bops) if b is not None]
        if self.mixed == "search" and len(budgets) != 1:
            raise ConfigError("--mixed search needs exactly one budget: --budget-size (e.g. 1.5MB) or --budget-bops")
        if self.mixed == "coding-length" and budgets:
            raise ConfigError("--mixed coding-length sets bits from the weights alone; a budget needs --mixed search")
        if any(not b > 0 for b in budgets):
            raise ConfigError("budgets must be positive")
        low = min(self.mixed_bits or ((3, 4, 5, 6) if self.mixed == "coding-length" else (2, 4, 8)))
        if self.opset < 21 and low <= 4:
            raise ConfigError(f"{low}-bit weights need 4-bit containers, opset >= 21; got opset {self.opset}")

    def _check_accuracy(self) -> None:
        for name in ("min_sqnr", "max_drop"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
                raise ConfigError(f"{name} must be a finite number; got {v!r}")
        if self.max_drop is not None and self.max_drop < 0:
            raise ConfigError(f"max_drop must be >= 0; got {self.max_drop}")
        for name in ("target_samples", "target_rank_samples"):
            v = getattr(self, name)
            if (v is not None or name == "target_samples") and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ConfigError(f"{name} must be a positive integer; got {v!r}")
        if self.min_sqnr is None and self.max_drop is None:
            if (self.target_data is not None or self.target_action != "bits" or self.target_latency
                    or self.target_stage != "auto" or self.target_rank_samples is not None):
                raise ConfigError("--target-data / --target-action / --target-stage / --target-latency / "
                                  "--target-rank-samples belong to an accuracy target: add --min-sqnr or --max-drop")
        elif self.target_stage == "before" and self.target_action != "bits":
            raise ConfigError("--target-stage before raises bits before reconstruction (a float layer is not "
                              "reconstructed): use --target-action bits or --target-stage after")
        elif self.target_action == "float" and self.format == "int":
            raise ConfigError("--target-action float leaves layers in float, which --format int cannot hold: use "
                              "--target-action bits or --format qdq")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
