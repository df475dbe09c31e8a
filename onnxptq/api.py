"""Python API: ``quantize(model, calib, config) -> QuantResult``, ``inspect``, ``evaluate``.

The CLI is a thin shell over these functions; both take the same options (``QuantConfig``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .config import QuantConfig
from .settings import resolve
from .data import Dataset, load_dataset
from .diagnostics import Diagnostics
from .errors import ConfigError, DataError, OutputError
from .eval import Fidelity, fidelity, run_onnxruntime
from .graph import QGraph, import_model, partition
from .graph.batch import restore_batch
from .memory import peak_rss_bytes
from .atomic import atomic_path
from .targets import get_target
from .plan import BitPlan, cap_weight_bits, make_plan
from .run_context import RunContext
from .sim.model import SimModel, simulate
from .sim.state import QuantState

if TYPE_CHECKING:
    from .accuracy.control import AccuracyControlReport
    from .verify.lowering import LoweringParity
    from .export.intplan import IntProgram
    from .mixed.allocate import MixedReport
    from .recon.results import ReconReport


@dataclass
class QuantResult:
    """What ``quantize`` returns: the quantized model and everything needed to inspect or reproduce it."""

    model: onnx.ModelProto  # the exported model (QDQ or integer ONNX)
    output: Path | None  # where it was written (None: not written)
    qgraph: QGraph  # the imported float graph (BN folded, quant points, layers)
    sim: SimModel  # the torch simulation with the final quantizer state
    plan: BitPlan  # weight bits per layer and activation bits per quant point
    config: QuantConfig  # the options of the run
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage
    program: "IntProgram | None" = None  # the integer program (format "int")
    recon: "ReconReport | None" = None  # per-region reconstruction results (methods other than rtn)
    mixed: "MixedReport | None" = None  # per-layer bit allocation (--mixed)
    report_files: list[Path] = field(default_factory=list)  # --report: the report and its PNGs
    warnings: list[str] = field(default_factory=list)  # e.g. layers the target's runtime runs in float
    state: QuantState | None = None  # the final quantization state, detached (sim/state.py)
    diagnostics: Diagnostics = field(default_factory=Diagnostics)  # the run's fallbacks (diagnostics.py)
    accuracy_control: "AccuracyControlReport | None" = None  # --min-sqnr / --max-drop: what was changed
    lowering: "LoweringParity | None" = None  # format "int": the program vs the simulation (verify/lowering.py)

    def summary(self) -> dict:
        """Bits, scale kind, weight sizes before/after, times: the table printed at the end of a run."""
        qg, plan = self.qgraph, self.plan
        n_params = {layer.name: int(np.prod(layer.weight_shape)) for layer in qg.layers}
        float_bytes = sum(4 * n for n in n_params.values())
        quant_bytes = sum(n * plan.w_bits[k] / 8 for k, n in n_params.items())
        bias_bytes = sum(4 * layer.out_channels for layer in qg.layers if layer.bias)
        hist: dict[int, int] = {}
        for b in plan.w_bits.values():
            hist[b] = hist.get(b, 0) + 1
        from .export.intplan import form_summary

        ahist: dict[int, int] = {}
        for b in plan.a_bits.values():
            ahist[b] = ahist.get(b, 0) + 1
        return {
            "layers": len(qg.layers), "quant_points": len(qg.quant_points),
            **({"po2_rescaled_points": len(qg.import_info["rescaled_points"])}
               if qg.import_info.get("rescaled_points") else {}),
            **({"po2_equalized_points": len(qg.import_info["equalized_points"])}
               if qg.import_info.get("equalized_points") else {}),
            "weight_bits": dict(sorted(hist.items())), "activation_bits": dict(sorted(ahist.items())),
            "scale": self.config.scale, "method": self.config.method, "target": self.config.target,
            "weights_float_bytes": float_bytes, "weights_quant_bytes": int(quant_bytes + bias_bytes),
            "compression": float_bytes / max(quant_bytes + bias_bytes, 1),
            "file_bytes": self.output.stat().st_size if self.output else len(self.model.SerializeToString()),
            "timings_s": {k: round(v, 2) for k, v in self.timings.items()},
            "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1),  # of this process so far
            **({"max_memory_mb": round(self.config.max_memory_mb, 1)} if self.config.max_memory_mb else {}),
            **({"mixed": self.mixed.method, "weight_bits_per_layer": dict(plan.w_bits),
                "weights_quant_bytes_no_bias": self.mixed.size_bytes, "bops": self.mixed.bops}
               if self.mixed is not None else {}),
            **({"integer_forms": form_summary(self.program)} if self.program is not None else {}),
            **({"lowering_check": self.lowering.format().splitlines()[0]} if self.lowering is not None else {}),
            "fallbacks": self.diagnostics.summary_lines(),  # what the run did other than asked (diagnostics.py)
            **({"accuracy_target": self.accuracy_control.lines()[0]} if self.accuracy_control is not None else {}),
        }

    def simulate(self, inputs: dict[str, np.ndarray], batch_size: int = 32) -> np.ndarray:
        """First model output from the torch simulation of what the exported model computes: the
        fake-quant simulation for QDQ, the integer simulation for integer ONNX."""
        if self.program is not None:
            return self.integer_sim().run_batched(inputs, batch_size)
        return simulate(self.sim, inputs, batch_size)

    def integer_sim(self):
        """``sim.integer.IntSim`` of the exported integer program (format "int")."""
        from .verify.int_sim import IntSim

        if self.program is None:
            raise ConfigError("the integer simulation exists for --format int results only")
        return IntSim(self.program, self.sim.consts, self.config.device)


def _as_dataset(calib, qg: QGraph, limit: int | None, preprocess=None, seed: int = 0) -> Dataset:
    specs = {name: qg.shapes.get(name, ()) for name in qg.inputs}
    from .data import model_input_dtypes, validate

    dtypes = model_input_dtypes(qg.model)
    if isinstance(calib, Dataset):
        return calib.take(limit) if limit else calib
    if isinstance(calib, (str, os.PathLike)) and Path(calib).is_dir():
        from .images import Preprocess, load_image_folder, load_preprocess

        if len(qg.inputs) != 1:
            raise DataError(f"an image folder feeds single-input models; this one has inputs {qg.inputs}: "
                            "save one array per input in an .npz instead")
        if isinstance(preprocess, (str, os.PathLike)):
            preprocess = load_preprocess(preprocess)
        elif isinstance(preprocess, dict):
            preprocess = Preprocess(**preprocess)
        name = qg.inputs[0]
        x = load_image_folder(calib, specs[name], preprocess, limit, seed)
        return Dataset({name: validate(name, x, specs[name], str(calib))}, None, str(calib))
    if preprocess is not None:
        raise DataError("preprocessing options apply to an image folder; the calibration data is not a folder")
    if isinstance(calib, (str, os.PathLike)):
        return load_dataset(calib, specs, limit, dtypes=dtypes)
    if isinstance(calib, np.ndarray):
        calib = {qg.inputs[0]: calib}
    ds = Dataset({k: validate(k, np.asarray(v), specs.get(k, ()), "calibration arrays", dtypes.get(k))
                  for k, v in calib.items()})
    return ds.take(limit) if limit else ds


def check_output_path(output: str | os.PathLike, model_path: str | os.PathLike | None, force: bool) -> Path:
    out = Path(output)
    if model_path is not None and out.resolve() == Path(model_path).resolve():
        raise OutputError(f"output {out} is the input model; choose another path (the input is never overwritten)")
    if out.exists() and not force:
        raise OutputError(f"output {out} already exists; pass --force (force=True) to replace it")
    if out.is_dir():
        raise OutputError(f"output {out} is a directory; give a file path such as {out / 'model.qdq.onnx'}")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"output directory {parent} is not writable")
    return out


def save_atomic(model: onnx.ModelProto, out: Path) -> None:
    """Write to a temporary file beside ``out`` and rename: never a partially written model."""
    data = model.SerializeToString()
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)


def quantize(model: str | os.PathLike, calib, config: QuantConfig | None = None, output: str | os.PathLike | None = None,
             force: bool = False, report: str | os.PathLike | None = None, preprocess=None,
             check_kernels: bool = True, cache: dict | None = None, eval_data=None, metric=None, labels=None,
             **overrides) -> QuantResult:
    """Quantize an ONNX model with calibration data; write it to ``output`` if given.

    ``calib``: a .npz/.npy path, a folder of images, a ``Dataset``, an array (single-input models) or a dict of
    arrays. ``preprocess``: for an image folder, an ``images.Preprocess``, its dict, or a JSON/YAML spec file.
    ``overrides``: QuantConfig fields, e.g. ``quantize("m.onnx", "calib.npz", w_bits=4, scale="po2")``.
    ``report``: also write a per-layer report (``.md`` or ``.html``, with PNG plots: ``report.py``).
    ``check_kernels``: after export, warn (``QuantResult.warnings`` and the log) about the layers the target's
    runtime leaves on float kernels (a session is created, no inference is run).
    ``cache``: the run's cache (``RunContext.cache``); pass one dict to several runs to share what depends only
    on the model and data (a sweep over mixed-precision budgets measures the sensitivities once).
    Runs in a ``RunContext``: torch's threads, global RNG states and cudnn flags are as before on return.
    Accuracy target (``min_sqnr`` / ``max_drop``, ``accuracy/``): ``eval_data`` (like ``calib``; default
    ``target_data``, else calibration samples held out from calibration) with ``labels`` (default: the data's
    own), ``metric(outputs, labels) -> float`` (higher is better; default top-1 accuracy) for ``max_drop``.
    """
    bad = sorted(set(overrides) - set(QuantConfig.field_names()))
    if bad:
        raise ConfigError(f"unknown option(s) {bad}; QuantConfig has {', '.join(QuantConfig.field_names())}")
    config = resolve(replace(config, **overrides) if config is not None else QuantConfig(**overrides))
    out = check_output_path(output, model, force) if output is not None else None
    rep = None
    if report is not None:
        rep = check_output_path(report, model, force)
        if rep.suffix.lower() not in (".md", ".html", ".htm"):
            raise OutputError(f"report {rep} must end in .md or .html")
        if out is not None and rep.resolve() == out.resolve():
            raise OutputError(f"report {rep} and output model are the same file; choose another report path")
    with RunContext(seed=config.seed, device=config.device, progress=config.progress,
                    cache={} if cache is None else cache) as ctx:
        accuracy = None
        if config.min_sqnr is not None or config.max_drop is not None:
            accuracy = _AccuracyInputs(eval_data, metric, labels)
        elif eval_data is not None or metric is not None or labels is not None:
            raise ConfigError("eval_data / metric / labels are read by an accuracy target: add min_sqnr or max_drop")
        result = _quantize(model, calib, config, out, rep, preprocess, check_kernels, ctx, accuracy)
    return result


def quantize_with_accuracy_control(model: str | os.PathLike, calib, eval_data, metric=None, labels=None,
                                   max_drop: float | None = None, min_sqnr: float | None = None,
                                   config: QuantConfig | None = None, **kwargs) -> QuantResult:
    """``quantize``, then change the fewest most sensitive layers (8 bits, or float) until ``metric`` on the
    labelled ``eval_data`` drops at most ``max_drop`` below the float model's and/or the output SQNR is at least
    ``min_sqnr`` dB. ``metric(outputs, labels) -> float``: higher is better, ``outputs`` the first model output
    over ``eval_data`` (default top-1 accuracy); ``labels`` default to the data's ``labels`` array. The changes are
    in ``QuantResult.accuracy_control``; a target still missed with every layer changed is a warning there, in
    ``warnings`` and in the diagnostics (the best model found is returned)."""
    if max_drop is None and min_sqnr is None:
        raise ConfigError("quantize_with_accuracy_control needs max_drop and/or min_sqnr")
    return quantize(model, calib, config, eval_data=eval_data, metric=metric, labels=labels, max_drop=max_drop,
                    min_sqnr=min_sqnr, **kwargs)


@dataclass
class _AccuracyInputs:
    eval_data: object = None
    metric: object = None
    labels: object = None


def _target_data(calib, qg: QGraph, config: QuantConfig, preprocess, acc: _AccuracyInputs
                 ) -> tuple[Dataset, Dataset, str, str | None]:
    """(calibration data, target data, where the target data comes from, a note when calibration lost samples)."""
    from .accuracy.target import eval_split

    n, note = config.target_samples, None
    source = acc.eval_data if acc.eval_data is not None else config.target_data
    if source is not None:
        data = _as_dataset(calib, qg, config.num_calib, preprocess, config.seed)
        ev = _as_dataset(source, qg, n, preprocess, config.seed)
        where = str(source) if isinstance(source, (str, os.PathLike)) else "the given evaluation data"
    else:
        full = _as_dataset(calib, qg, config.num_calib + n, preprocess, config.seed)
        if len(full) < 2:
            raise DataError("the accuracy target holds out calibration samples to measure on, and there is only one: "
                            "give --target-data")
        keep, a, b = eval_split(len(full), config.num_calib, n)
        data, ev = full.take(keep), full.rows(a, b)
        where = f"calibration samples {a}..{b - 1}, held out from calibration"
        if keep < config.num_calib:
            note = (f"calibration used {keep} of its {len(full)} samples: the last {b - a} were held out for the "
                    "accuracy target (give --target-data, or more calibration samples than --num-calib, to keep all)")
    if acc.labels is not None:
        lab = np.asarray(acc.labels)
        if len(lab) < len(ev):
            raise DataError(f"labels has {len(lab)} entries for {len(ev)} evaluation samples")
        ev = Dataset(ev.inputs, lab[:len(ev)], ev.source)
    if config.max_drop is not None and acc.metric is None and ev.labels is None:  # before any long stage runs
        raise DataError("--max-drop measures top-1 accuracy and needs labels: a 'labels' array in the target data "
                        "(--target-data), or labels= (and a metric=) in the Python API")
    return data, ev, where, note


def _po2_rewrite(qg, data, plan, config: QuantConfig, timings: dict[str, float]):
    """The exact float rewrites of ``--po2-equalize`` (weight channels) and then ``--po2-rescale`` (activation
    points, chosen on the equalized graph, the equalized points left alone): a new QGraph with the same layer and
    tensor names, so the plan holds."""
    from .calib.po2_rescale import po2_equalize_factors, po2_rescale_factors
    from .graph.rescale import rescale

    skip = frozenset(config.skip_nodes)
    if config.po2_equalize:
        t0 = time.perf_counter()
        factors = po2_equalize_factors(qg, plan, config)
        if factors:
            qg = rescale(qg, factors, skip, record="equalized_points")
        timings["po2 equalize"] = time.perf_counter() - t0
    if config.po2_rescale:
        t0 = time.perf_counter()
        factors = po2_rescale_factors(qg, data, plan, config, frozenset(qg.import_info.get("equalized_points") or ()))
        if factors:
            qg = rescale(qg, factors, skip)
        timings["po2 rescale"] = time.perf_counter() - t0
    return qg


def _quantize(model, calib, config: QuantConfig, out: Path | None, rep: Path | None, preprocess, check_kernels: bool,
              ctx: RunContext, acc: _AccuracyInputs | None = None) -> QuantResult:
    """The stages of ``quantize`` inside its run context: import -> plan -> (mixed) -> calibrate ->
    (reconstruct) -> (accuracy target) -> export -> (kernel check, report). The imported graph is never written to."""
    timings: dict[str, float] = {}
    rounds = acc is not None and _target_before_reconstruction(config)
    t0 = time.perf_counter()
    qg = import_model(model, config.input_shapes or None, frozenset(config.skip_nodes))
    timings["import"] = time.perf_counter() - t0
    import_diagnostics(qg, ctx.diagnostics)
    if acc is not None:
        data, eval_ds, eval_source, split_note = _target_data(calib, qg, config, preprocess, acc)
    else:
        data = _as_dataset(calib, qg, config.num_calib, preprocess, config.seed)
    plan = make_plan(qg, config)
    cap_weight_bits(plan, get_target(config.target))  # before anything reads the plan's grids
    if config.scale == "po2" and (config.po2_rescale or config.po2_equalize):
        qg = _po2_rewrite(qg, data, plan, config, timings)
    sim = SimModel(qg).to(config.device)
    mixed = None
    if config.mixed is not None:
        from .mixed.allocate import apply_mixed

        t0 = time.perf_counter()
        mixed = apply_mixed(qg, plan, config, sim, data, ctx.cache)
        timings["mixed"] = time.perf_counter() - t0
    cap_weight_bits(plan, get_target(config.target))  # again: the mixed bits
    if mixed is not None:
        from .mixed.allocate import capped_report

        mixed = capped_report(mixed, qg, plan)
    t0 = time.perf_counter()
    from .calib.calibrate import calibrate

    calibrate(sim, data, plan, config, ctx)
    timings["calibrate"] = time.perf_counter() - t0
    from .recon.run import run_method

    ckpt_dir = config.checkpoint_dir or (f"{out}.recon" if out is not None else None)
    if config.resume and ckpt_dir is None:
        raise ConfigError("resume needs the checkpoint directory of the interrupted run (--checkpoint-dir)")
    calibrated = sim.export_state() if rounds else None
    mark = ctx.diagnostics.mark()
    t0 = time.perf_counter()
    recon_report = run_method(sim, data, plan, config, ckpt_dir, ctx)
    if recon_report is not None:
        timings["reconstruct"] = time.perf_counter() - t0
    accuracy = None
    if acc is not None:
        from .accuracy.control import control_accuracy
        from .accuracy.target import top1_accuracy

        def reconstruct() -> None:  # a round of accuracy/rounds.py: the method again on the changed calibrated state
            nonlocal recon_report
            ctx.diagnostics.rewind(mark)  # the last reconstruction's fallbacks are the ones that hold
            recon_report = run_method(sim, data, plan, config, ckpt_dir, ctx)

        metric = acc.metric if acc.metric is not None or config.max_drop is None else top1_accuracy
        t0 = time.perf_counter()
        accuracy = control_accuracy(sim, eval_ds, config, plan, ctx.diagnostics, metric, eval_source, ctx.cache,
                                    calibrated, reconstruct if rounds else None)
        if split_note:
            accuracy.notes.append(split_note)
        timings["accuracy target"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    program, lowering = None, None
    if config.format == "int":
        from .export.integer import export_integer
        from .export.intplan import lower

        program = lower(sim, config.int_rounding, config.opset,
                        u8s8="always" if config.int_kernels == "vnni" else "proven")
        qmodel = export_integer(program, qg.model)
        if config.lowering_check > 0:
            from .verify.lowering import lowering_parity

            t1 = time.perf_counter()
            lowering = lowering_parity(sim, program, data.take(config.lowering_check).inputs, device=config.device)
            timings["lowering check"] = time.perf_counter() - t1
            for where, what in lowering.defect_items():
                ctx.diagnostics.add("lowering", where, f"the integer program departs from the simulation: {what} "
                                    "(level-1 verify cannot see this: please report it)")
    else:
        from .export.qdq import export_qdq, saturating_scale

        qmodel = export_qdq(sim, config.opset, get_target(config.target))
        for t, fq in sim.act_quantizers():
            if saturating_scale(fq.params):
                ctx.diagnostics.add("other", t, "values of magnitude >= 1e30 (an attention mask's float minimum): no "
                                    "Q/DQ pair in the QDQ model (the values act as infinities either way)", quiet=True)
    batch = qg.import_info.get("batch", {})
    if batch.get("fixed") is not None and batch.get("mode") == "symbolic":
        restore_batch(qmodel, batch["fixed"])  # the user's interface: the batch fixed as in the float model
    onnx.checker.check_model(qmodel)
    timings["export"] = time.perf_counter() - t0
    qg.check_unchanged()
    if out is not None:
        save_atomic(qmodel, out)
    result = QuantResult(qmodel, out, qg, sim, plan, config, timings, program, recon_report, mixed,
                         state=sim.export_state(), diagnostics=ctx.diagnostics, accuracy_control=accuracy,
                         lowering=lowering)
    if accuracy is not None and not accuracy.met:
        from .accuracy.target import format_measure

        result.warnings.append(f"accuracy target {accuracy.target} missed: best achieved "
                               f"{format_measure(accuracy.after)} with {len(accuracy.changed())} layer(s) changed "
                               "(written)")
    if check_kernels:
        from .deploy.check import kernel_warnings

        t0 = time.perf_counter()
        result.warnings += kernel_warnings(out if out is not None else qmodel, config.target, result.diagnostics,
                                           proto=qmodel)
        timings["kernel check"] = time.perf_counter() - t0
    if rep is not None:
        from .report import write_report

        t0 = time.perf_counter()
        result.report_files = write_report(result, rep, data)
        timings["report"] = time.perf_counter() - t0
    return result


def _target_before_reconstruction(config: QuantConfig) -> bool:
    """Whether the accuracy target chooses its changes before reconstruction (``accuracy/rounds.py``)."""
    from .recon.methods import get_method

    reconstructs = get_method(config.method).runner is not None
    if config.target_stage == "before" and not reconstructs:
        raise ConfigError(f"--target-stage before needs a method that reconstructs; {config.method} only calibrates "
                          "(drop --target-stage)")
    return reconstructs and config.target_stage != "after" and config.target_action == "bits"


def import_diagnostics(qg: QGraph, diagnostics: Diagnostics) -> None:
    """The importer's fallbacks (``qg.import_info``): layers left in float, onnxsim replaced by constant folding,
    nodes simulated by onnx2torch."""
    if qg.import_info.get("simplifier") == "constant-folding":  # graph/load.py logged onnxsim's error
        diagnostics.add("simplifier", "", "onnxsim failed; the built-in constant folding simplified the graph",
                        quiet=True)
    batch = qg.import_info.get("batch") or {}
    if batch.get("mode") == "chunks":
        diagnostics.add("batch-chunks", "", f"the graph fixes its batch to {batch['fixed']} and it cannot be made "
                        f"symbolic ({batch['reason']}); calibration runs {batch['fixed']} sample(s) at a time")
    floats = qg.import_info.get("float_layers", [])
    reasons = qg.import_info.get("float_layer_reasons") or {}
    for name in floats:
        diagnostics.add("float-layer", name, reasons.get(name, "its input has no quant point (not quantizable), so it "
                                                               "stays float"))
    if floats:
        diagnostics.totals["float-layer"] = len(qg.layers) + len(floats)
    for name in qg.import_info.get("constant_operands", []):
        diagnostics.add("constant-operand", name, "its constant operand has no weight channel axis, so it is "
                        "quantized per tensor on an activation grid (graph/constant_operands.py)", quiet=True)
    for name in qg.import_info.get("onnx2torch_nodes", []):
        op = next(n.op_type for n in qg.model.graph.node if n.name == name)
        diagnostics.add("onnx2torch", name, f"{op} is not in onnxptq's op table; onnx2torch's converter simulates it "
                        "(its output is an island quant point; no integer ONNX form)", quiet=True)


def inspect(model: str | os.PathLike, granularity: str = "block", input_shapes: dict | None = None) -> dict:
    """Layers, regions, activation quant points and BN folding of a model, as a JSON-able dict."""
    qg = import_model(model, input_shapes)
    regions = partition(qg, granularity)
    return {
        "model": str(model),
        "opset": qg.import_info["opset"],
        "simplifier": qg.import_info["simplifier"],
        "inputs": {i: list(qg.shapes.get(i, ())) for i in qg.inputs},
        "outputs": qg.outputs,
        "batchnorm_folded": qg.fold.folded,
        "batchnorm_unfolded": qg.fold.unfolded_bn,
        "removed_nodes": qg.fold.removed,
        "float_layers": qg.import_info.get("float_layers", []),
        "batch": qg.import_info.get("batch", {}),
        "onnx2torch_nodes": qg.import_info.get("onnx2torch_nodes", []),
        "constant_operands": qg.import_info.get("constant_operands", []),
        "layers": [{"name": x.name, "op": x.op_type, "weight_shape": list(x.weight_shape), "groups": x.groups,
                    "activation": x.act_node and (("ReLU" if x.act_bounds[1] == float("inf") else f"Clip{x.act_bounds}")),
                    "bn_gamma": x.bn_gamma is not None, "macs": x.macs_per_sample} for x in qg.layers],
        "quant_points": [{"tensor": q.tensor, "kind": q.kind, "producer": q.producer, "consumers": q.consumers}
                         for q in qg.quant_points.values()],
        "merge_activations": [{"node": m.node, "activation": m.act_node, "bounds": list(m.act_bounds),
                               "output": m.output} for m in qg.merge_acts.values()],
        "granularity": granularity,
        "regions": [r.to_dict() for r in regions],
    }


def evaluate(float_model: str | os.PathLike, quant_model: str | os.PathLike, data, batch_size: int = 32,
             limit: int | None = None, preprocess=None) -> Fidelity:
    """Run both models in onnxruntime on ``data`` and compare (accuracy if the data has labels)."""
    from .graph.load import read_model

    read_model(quant_model)  # a clear error for a missing / unreadable quantized model
    qg = import_model(float_model, simplify_model=False)
    ds = _as_dataset(data, qg, limit, preprocess)
    f = run_onnxruntime(str(float_model), ds.inputs, batch_size)
    q = run_onnxruntime(str(quant_model), ds.inputs, batch_size)
    return fidelity(f, q, ds.labels)
