"""ONNX's own operator conformance cases, run through runtime/.

Every node test case shipped with the installed onnx (``onnx.backend.test.case.node``) whose ops
are all implemented by runtime/ is executed and compared with onnx's expected outputs: integer and
bool outputs exactly, float outputs with the case's own rtol/atol (NaN == NaN), dtype and shape
always exactly.

Cases the runtime legitimately cannot run are not hidden: ``expected_unsupported`` states why for
each, and those cases must raise ``runtime.UnsupportedOpError`` (asserted) before being reported as
skipped with that reason. Any other failure is a test failure.

Run this file as a script for a per-op summary: ``python tests/runtime/test_conformance.py``.
"""

from __future__ import annotations

import collections
import warnings

import numpy as np
import pytest
from onnx import TensorProto, numpy_helper

import runtime


def _collect():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        cases = collect_testcases()
    keep = []
    for c in cases:
        nodes = c.model.graph.node
        if all(n.domain in ("", "ai.onnx") for n in nodes) and {
            n.op_type for n in nodes
        } <= runtime.SUPPORTED_OPS:
            keep.append(c)
    return sorted(keep, key=lambda c: c.name)


CASES = _collect()

#: Ops whose int8/uint8/int32 cases must exist and pass (integer-model critical path).
REQUIRED_OPS = [
    "QuantizeLinear",
    "DequantizeLinear",
    "ConvInteger",
    "MatMulInteger",
    "QLinearConv",
    "QLinearMatMul",
    "BitShift",
    "Div",
    "Mod",
    "Round",
    "Cast",
    "Clip",
    "ReduceSum",
    "Gather",
    "MaxPool",
    "Pad",
]
#: onnx ships only float-data cases for these; their integer variants are checked against
#: onnxruntime / onnx.reference in test_ops.py.
FLOAT_ONLY_IN_SUITE = {"ReduceSum", "Gather"}


def expected_unsupported(case) -> str | None:
    """Why a case whose op types are all implemented still cannot run, or None."""
    g = case.model.graph
    for vi in list(g.input) + list(g.output):
        if not vi.type.HasField("tensor_type"):
            return "sequence/optional-typed graph values (runtime executes tensors only)"
    for n in g.node:
        attrs = {a.name: a for a in n.attribute}
        if n.op_type == "BatchNormalization" and "training_mode" in attrs and attrs["training_mode"].i:
            return "BatchNormalization training_mode=1 (runtime is inference-only)"
        if n.op_type == "Dropout" and len(n.input) >= 3 and n.input[2]:
            return "Dropout with a training_mode input (random masks; runtime is inference-only)"
        if n.op_type == "Resize":
            mode = next((a.s.decode() for a in n.attribute if a.name == "mode"), "nearest")
            if mode != "nearest":
                return f"Resize mode={mode!r}: runtime implements nearest only (integer tensors)"
    return None


def _arr(v) -> np.ndarray:
    return numpy_helper.to_array(v) if isinstance(v, TensorProto) else np.asarray(v)


def _integer_range(dtype: np.dtype) -> tuple[int, int] | None:
    """(min, max) of an integer type, sub-byte ones included; None for float/bool types."""
    try:
        t = runtime.dtypes.onnx_type(dtype)
    except (KeyError, ValueError, TypeError):
        return None
    if t in runtime.dtypes.SUBBYTE_RANGES:
        return runtime.dtypes.SUBBYTE_RANGES[t]
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return int(info.min), int(info.max)
    return None


def spec_defined(case, feeds: dict[str, np.ndarray], out_dtype: np.dtype) -> np.ndarray | None:
    """Mask of the output elements the ONNX spec defines, for a float -> fixed-point Cast/CastLike case.

    The Cast spec: "Casting from floating point to fixed point: undefined if OOR". onnx's case
    generators compute the expected output at collection time with the installed ml_dtypes, so
    their out-of-range elements are whatever that release does (ml_dtypes 0.7.0 turned -9.0 -> int4
    from 7 into 0): they test ml_dtypes, not the ONNX spec. Returns None for every other case.
    """
    ops = {n.op_type for n in case.model.graph.node} - {"Shape", "Constant"}
    if not ops or not ops <= {"Cast", "CastLike"}:
        return None
    x = feeds[next(iter(feeds))]
    rng = _integer_range(out_dtype)
    if rng is None or not (np.issubdtype(x.dtype, np.floating) or x.dtype.kind == "V"):
        return None
    t = np.trunc(x.astype(np.float64))
    return np.isfinite(t) & (t >= rng[0]) & (t <= rng[1])


def _compare(name: str, got: np.ndarray, exp: np.ndarray, rtol: float, atol: float,
             defined: np.ndarray | None = None) -> None:
    assert got.dtype == exp.dtype, f"{name}: dtype {got.dtype} != expected {exp.dtype}"
    assert got.shape == exp.shape, f"{name}: shape {got.shape} != expected {exp.shape}"
    if defined is not None:  # compare the spec-defined elements only (see spec_defined)
        assert defined.any(), f"{name}: no spec-defined element left to compare"
        got, exp = got[defined], exp[defined]
    if exp.dtype.kind in "iub":
        np.testing.assert_array_equal(got, exp, err_msg=name)
        return
    g = got.astype(np.float64)
    e = exp.astype(np.float64)
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)


def run_case(case) -> None:
    sess = runtime.Session(case.model)
    init = {t.name for t in case.model.graph.initializer}
    in_names = [vi.name for vi in case.model.graph.input if vi.name not in init]
    for inputs, outputs in case.data_sets:
        feeds = {n: _arr(v) for n, v in zip(in_names, inputs)}
        got = sess.run(feeds)
        for name, exp in zip(sess.output_names, outputs):
            exp = _arr(exp)
            defined = spec_defined(case, feeds, exp.dtype)
            _compare(f"{case.name}:{name}", got[name], exp, case.rtol, case.atol, defined)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_conformance(case) -> None:
    reason = expected_unsupported(case)
    if reason is not None:
        with pytest.raises(runtime.UnsupportedOpError):
            run_case(case)
        pytest.skip(f"legitimately unsupported: {reason}")
    run_case(case)


def test_required_ops_have_integer_cases() -> None:
    """The integer/quantization ops each have runnable conformance cases with 8/32-bit ints."""
    runnable = {op for c in CASES if not expected_unsupported(c) for op in {n.op_type for n in c.model.graph.node}}
    assert not [op for op in REQUIRED_OPS if op not in runnable]
    int_types = {np.dtype(t) for t in (np.int8, np.uint8, np.int32)}
    covered = collections.defaultdict(int)
    for c in CASES:
        if expected_unsupported(c):
            continue
        types = set()
        for vi in list(c.model.graph.input) + list(c.model.graph.output):
            try:
                types.add(np.dtype(runtime.dtypes.np_dtype(vi.type.tensor_type.elem_type)))
            except Exception:
                pass
        if types & int_types:
            for op in {n.op_type for n in c.model.graph.node}:
                covered[op] += 1
    missing = [op for op in REQUIRED_OPS if covered[op] == 0 and op not in FLOAT_ONLY_IN_SUITE]
    assert not missing, f"no runnable int8/uint8/int32 conformance case for {missing}"


#: Every op whose onnx conformance cases runtime/ runs today (94 ops, 1169 cases with onnx 1.23.2). CASES is
#: selected by runtime.SUPPORTED_OPS, so without this list an op dropped from the runtime would silently drop
#: its cases too; a newly supported op must be added here.
CONFORMANCE_OPS = frozenset("""
Abs Add And ArgMax ArgMin AveragePool BatchNormalization BitShift BitwiseAnd BitwiseNot BitwiseOr BitwiseXor Cast CastLike Ceil
Clip Concat Constant ConstantOfShape Conv ConvInteger CumSum DequantizeLinear Div Dropout DynamicQuantizeLinear Einsum Equal Exp
Expand EyeLike Flatten Floor Gather GatherElements Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual
HardSigmoid HardSwish Identity IsNaN LeakyRelu Less LessOrEqual Log LogSoftmax MatMul MatMulInteger Max MaxPool
Mean Min Mod Mul Neg Not Or PRelu Pad Pow QLinearConv QLinearMatMul QuantizeLinear Range Reciprocal ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize Round Shape Sigmoid Sign Size Slice Softmax Split Sqrt
Squeeze Sub Sum Tanh Tile Transpose Unsqueeze Where Xor
""".split())


def test_conformance_coverage_is_pinned() -> None:
    """The ops with runnable conformance cases are exactly CONFORMANCE_OPS: none lost, none unlisted."""
    runnable = {op for c in CASES if not expected_unsupported(c) for op in {n.op_type for n in c.model.graph.node}}
    assert not CONFORMANCE_OPS - runnable, f"ops whose conformance cases no longer run: {sorted(CONFORMANCE_OPS - runnable)}"
    assert not runnable - CONFORMANCE_OPS, f"add these newly covered ops to CONFORMANCE_OPS: {sorted(runnable - CONFORMANCE_OPS)}"
    assert not runtime.SUPPORTED_OPS - CONFORMANCE_OPS - NO_CONFORMANCE_CASES, (
        f"runtime ops without a runnable onnx conformance case: {sorted(runtime.SUPPORTED_OPS - CONFORMANCE_OPS)}")


#: runtime ops onnx ships no runnable case for (checked in test_ops.py against onnxruntime instead)
NO_CONFORMANCE_CASES: frozenset[str] = frozenset()


def test_only_out_of_range_cast_elements_are_exempt() -> None:
    """The float -> int4 case spans -9..15: exactly the 9 values outside [-8, 7] are exempt, and an
    in-range element that differs still fails."""
    case = next(c for c in CASES if c.name == "test_cast_FLOAT_to_INT4")
    (x,), (y,) = case.data_sets[0]
    feeds = {case.model.graph.input[0].name: _arr(x)}
    exp = _arr(y)
    defined = spec_defined(case, feeds, exp.dtype)
    assert int((~defined).sum()) == 9
    assert spec_defined(next(c for c in CASES if c.name == "test_add"), {"x": np.zeros(2, np.float32)}, np.float32) is None
    wrong = exp.astype(np.int8)
    wrong[defined.nonzero()[0][0], defined.nonzero()[1][0]] += 1
    with pytest.raises(AssertionError):
        _compare("x", wrong.astype(exp.dtype), exp, 0, 0, defined)


def summary() -> dict[str, collections.Counter]:
    """Per-op pass / skip / fail counts (a case counts for every op type it contains)."""
    per_op: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for c in CASES:
        reason = expected_unsupported(c)
        if reason:
            status = "skipped"
        else:
            try:
                run_case(c)
                status = "passed"
            except Exception:  # pragma: no cover - reporting only
                status = "failed"
        for op in {n.op_type for n in c.model.graph.node}:
            per_op[op][status] += 1
    return per_op


if __name__ == "__main__":  # pragma: no cover
    tot = collections.Counter()
    reasons = collections.Counter(r for c in CASES if (r := expected_unsupported(c)))
    for c in CASES:
        tot["cases"] += 1
    res = summary()
    for op in sorted(res):
        cnt = res[op]
        print(f"{op:24s} passed {cnt['passed']:4d}  skipped {cnt['skipped']:3d}  failed {cnt['failed']:3d}")
    print(f"{tot['cases']} runnable cases; skipped with reasons:")
    for r, n in reasons.items():
        print(f"  {n:3d}  {r}")
