"""Level-1 parity of an integer ONNX model (DESIGN.md section 4, "Parity levels").

Four engines compute every integer tensor of the model on the same inputs:
- ``sim``: the quantizer's integer simulation (``sim/integer.py``) replaying the program recorded in
  the model's metadata (shifts, zero points, bounds, tables as the quantizer chose them; weights and
  biases read from the file and checked against the recorded sha256);
- ``onnxruntime``: the model with every integer tensor added as a graph output;
- ``runtime``: the NumPy runtime in ``runtime/``;
- ``reference``: ``onnx.reference.ReferenceEvaluator`` (slow: run on the first few samples only).
Any difference is a bug (or a modified file); the report names the first tensor, in execution
order, where an engine departs from the simulation, the node that produced it, how many elements
differ and by how much.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import DataError, ModelError
from ..graph.batch import fixed_batch
from ..targets import cpu_saturation_note
from ..export.integer import FORMAT_KEY, PROGRAM_KEY, qname
from ..export.intplan import IntProgram, form_summary, program_from_json

ENGINES = ("sim", "onnxruntime", "runtime", "reference")


@dataclass
class Mismatch:
    tensor: str
    node: str  # the step (ONNX node of the float model) that produced it
    engine: str
    count: int
    elements: int
    max_delta: float
    hint: str = ""  # a known cause and what to do (``targets.cpu_saturation_note``)

    def __str__(self) -> str:
        return (f"{self.engine} differs from sim at tensor {self.tensor!r} (node {self.node!r}): "
                f"{self.count}/{self.elements} elements, max |delta| {self.max_delta:g}"
                + (f". {self.hint}" if self.hint else ""))


@dataclass
class IntParityReport:
    samples: int
    reference_samples: int
    tensors: int
    engines: list[str]
    mismatches: list[Mismatch] = field(default_factory=list)  # first mismatch per engine
    record_problems: list[str] = field(default_factory=list)  # file constants that differ from the record
    forms: str = ""  # per-layer ONNX forms of the program (``intplan.form_summary``)
    # engine -> why it could not run the model (only onnx.reference may be left out: a gap of that evaluator,
    # e.g. its GatherElements with indices smaller than the data; the other engines still agree or not)
    unavailable: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.mismatches and not self.record_problems

    @property
    def first(self) -> Mismatch | None:
        return self.mismatches[0] if self.mismatches else None

    def to_dict(self) -> dict:
        return {"level": 1, "ok": self.ok, "samples": self.samples, "reference_samples": self.reference_samples,
                "tensors_compared": self.tensors, "engines": self.engines,
                "mismatches": [m.__dict__ for m in self.mismatches], "record_problems": self.record_problems,
                "forms": self.forms, "unavailable": self.unavailable}

    def format(self) -> str:
        head = (f"level-1 parity over {self.samples} samples ({self.reference_samples} for reference), "
                f"{self.tensors} integer tensors, engines {', '.join(self.engines)}: ")
        forms = f"\n  layers: {self.forms}" if self.forms else ""
        forms += "".join(f"\n  {e} could not run the model, not compared: {why}" for e, why in self.unavailable.items())
        if self.ok:
            return head + "identical on every tensor" + forms
        lines = [head + "MISMATCH" + forms]
        lines += [f"  record: {p}" for p in self.record_problems]
        lines += [f"  {m}" for m in self.mismatches]
        return "\n".join(lines)


def is_integer_model(model: onnx.ModelProto) -> bool:
    return any(p.key == FORMAT_KEY and p.value == "integer" for p in model.metadata_props)


def load_program(model: onnx.ModelProto) -> tuple[IntProgram, dict[str, np.ndarray], list[str]]:
    """The recorded program, the constants the simulation needs, and record/file disagreements."""
    meta = {p.key: p.value for p in model.metadata_props}
    if PROGRAM_KEY not in meta:
        raise ModelError("this model carries no onnxptq integer program (was it written by `onnxptq quantize --format int`?)")
    record = json.loads(meta[PROGRAM_KEY])
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    arrays, problems = {}, []
    for key, info in record["arrays"].items():
        if key not in inits:
            problems.append(f"initializer {key!r} is missing from the file")
            continue
        arr = np.ascontiguousarray(inits[key].reshape(info["shape"]).astype(info["dtype"]))
        if hashlib.sha256(arr.tobytes()).hexdigest() != info["sha256"]:
            problems.append(f"initializer {key!r} differs from the values the quantizer wrote")
        arrays[key] = arr
    consts = {k: v for k, v in inits.items() if k not in arrays}
    for n in model.graph.node:
        if n.op_type == "Constant":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            if "value" in a:
                consts[n.output[0]] = numpy_helper.to_array(a["value"])
    return program_from_json(record, arrays), consts, problems


def _container_elem(model: onnx.ModelProto) -> int:
    """ONNX element type of the activation containers recorded in the model (int8 before uint8 existed)."""
    meta = {p.key: p.value for p in model.metadata_props}
    container = json.loads(meta[PROGRAM_KEY]).get("container", "int8") if PROGRAM_KEY in meta else "int8"
    return TensorProto.UINT8 if container == "uint8" else TensorProto.INT8


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    elem = _container_elem(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, elem, None) for n in names if n not in have)
    return m


def make_engine(engine: str, model: onnx.ModelProto, names: list[str]) -> Callable[[dict], dict[str, np.ndarray]]:
    """``feeds -> {name: array}`` for the tensors ``names`` (graph outputs or intermediates), with the
    session built once: onnxruntime and onnx.reference get ``names`` added as graph outputs."""
    if engine == "runtime":
        import runtime

        def unsupported(e: Exception) -> ModelError:
            return ModelError(f"the bundled integer runtime (runtime/) cannot run this model: {e}. The model itself is "
                              "valid ONNX; check it in onnxruntime (onnxptq eval), and report the op so that "
                              "runtime/ learns it")

        try:
            sess = runtime.Session(model)
        except runtime.UnsupportedOpError as e:
            raise unsupported(e) from None

        def run(feeds):
            try:
                return sess.run(feeds, outputs=names)
            except runtime.UnsupportedOpError as e:
                raise unsupported(e) from None
        return run
    m = _with_outputs(model, names)
    outs = [o.name for o in m.graph.output]
    if engine == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        osess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return lambda feeds: dict(zip(outs, osess.run(outs, feeds)))
    if engine == "reference":
        from onnx.reference import ReferenceEvaluator

        ref = ReferenceEvaluator(m)
        return lambda feeds: dict(zip(outs, ref.run(outs, feeds)))
    raise ValueError(engine)


def verify_integer(model: onnx.ModelProto, inputs: dict[str, np.ndarray], batch_size: int = 16,
                   reference_samples: int = 2, engines: tuple[str, ...] = ENGINES, progress: bool = False) -> IntParityReport:
    """Run every engine on ``inputs`` and compare each integer tensor with the simulation's."""
    from tqdm import tqdm

    from .int_sim import IntSim

    program, consts, problems = load_program(model)
    order = [(t, s.node) for s in program.steps for t in s.outputs if t in program.tensors]
    tensor_names = [qname(t) for t, _ in order]
    outputs = list(program.outputs)
    sim = IntSim(program, consts)
    n = len(next(iter(inputs.values())))
    fixed = fixed_batch(model)
    if fixed is not None:  # a graph with the batch written in: feed it that many samples at a time
        if n % fixed:
            raise DataError(f"the model takes exactly {fixed} samples at a time; give a multiple of {fixed} samples "
                            f"(got {n})")
        batch_size = fixed
        reference_samples = max(fixed, reference_samples // fixed * fixed)
    n_ref = min(reference_samples, n) if "reference" in engines else 0
    first: dict[str, Mismatch] = {}
    counts: dict[str, dict[str, list]] = {}
    unavailable: dict[str, str] = {}

    def failed(engine: str, e: Exception) -> None:
        if engine != "reference":  # onnxruntime and runtime/ must run it (runtime/'s gaps: make_engine's error)
            raise e
        unavailable[engine] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"

    runners = {}
    for e in engines:
        if e != "sim":
            try:
                runners[e] = make_engine(e, model, tensor_names + outputs)
            except Exception as err:  # noqa: BLE001 - onnx.reference's own gaps (failed() re-raises the rest)
                failed(e, err)
    for i in tqdm(range(0, n, batch_size), desc="verifying", disable=not progress, leave=False):
        feeds = {k: v[i:i + batch_size] for k, v in inputs.items()}
        ref = sim.run(feeds, keep=True)
        for engine in engines:
            if engine == "sim" or engine in unavailable:
                continue
            f = feeds
            if engine == "reference":
                if i >= n_ref:
                    continue
                f = {k: v[:n_ref - i] for k, v in feeds.items()}
            try:
                got = runners[engine](f)
            except Exception as err:  # noqa: BLE001 - onnx.reference's own gaps (failed() re-raises the rest)
                failed(engine, err)
                continue
            for name, node in [(qname(t), nd) for t, nd in order] + [(o, o) for o in outputs]:
                if name not in ref or name not in got:
                    continue
                b = np.asarray(got[name]).astype(np.float64)
                a = np.asarray(ref[name])[:len(b)].astype(np.float64)
                c = counts.setdefault(engine, {}).setdefault(name, [0, 0, 0.0, node])
                c[1] += int(a.size)
                if a.shape != b.shape:
                    c[0] += int(a.size)
                    c[2] = float("inf")
                    continue
                diff = a != b
                if diff.any():
                    c[0] += int(diff.sum())
                    c[2] = max(c[2], float(np.abs(a - b).max()))
    position = {qname(t): k for k, (t, _) in enumerate(order)}
    position.update({o: len(order) + k for k, o in enumerate(outputs)})
    for engine, per in counts.items():
        bad = [x for x, c in per.items() if c[0]]
        if not bad:
            continue
        name = min(bad, key=lambda x: position.get(x, 1 << 30))
        c = per[name]
        first[engine] = Mismatch(name, c[3], engine, c[0], c[1], c[2],
                                 cpu_saturation_note(model) if engine == "onnxruntime" else "")
    mism = sorted(first.values(), key=lambda m: position.get(m.tensor, 1 << 30))
    return IntParityReport(n, n_ref, len(order), list(engines), mism, problems, form_summary(program), unavailable)
