"""The torch simulation of each op (onnxptq.ops.simulate.OPS) against onnxruntime on one-node models."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from helpers import ort_run
from onnxptq.ops.simulate import OPS

IR_FOR_OPSET = {8: 3, 9: 7, 10: 7, 11: 7, 13: 7, 16: 8, 17: 8, 18: 8, 19: 9, 20: 9, 21: 10}


def _attrs(node: onnx.NodeProto) -> dict:
    """Attributes as the simulation receives them (strings as bytes, tensors as numpy arrays)."""
    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v
    return out


def check(op_type: str, inputs: list, n_out: int = 1, opset: int = 17, atol: float = 1e-6, rtol: float = 1e-6,
          **attrs) -> list[np.ndarray]:
    """Run op_type on inputs (numpy arrays; None: an omitted optional input) in onnxruntime and in OPS and
    compare: same shapes and dtypes, integer and bool outputs exactly, float outputs within atol/rtol."""
    names = [f"in{k}" if v is not None else "" for k, v in enumerate(inputs)]
    outs = [f"out{k}" for k in range(n_out)]
    node = helper.make_node(op_type, names, outs, **attrs)
    g = helper.make_graph([node], op_type,
                          [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                           for n, v in zip(names, inputs) if v is not None],
                          [helper.make_empty_tensor_value_info(o) for o in outs])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = IR_FOR_OPSET[opset]
    want = ort_run(model, {n: v for n, v in zip(names, inputs) if v is not None}, optimize=False)
    got = OPS[op_type]([None if v is None else torch.from_numpy(np.ascontiguousarray(v)) for v in inputs],
                       _attrs(node))
    for k, (w, t) in enumerate(zip(want, got)):
        t = t.numpy()
        assert t.shape == w.shape, f"output {k}: shape {t.shape} != onnxruntime's {w.shape}"
        assert t.dtype == w.dtype, f"output {k}: dtype {t.dtype} != onnxruntime's {w.dtype}"
        if w.dtype.kind in "biu":
            np.testing.assert_array_equal(t, w, err_msg=f"output {k}")
        else:
            np.testing.assert_allclose(t, w, atol=atol, rtol=rtol, err_msg=f"output {k}")
    return want


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def ties(*shape, seed=0, hi=4):
    """Small integer-valued floats: many ties."""
    return np.random.default_rng(seed).integers(0, hi, shape).astype(np.float32)


# ---------------------------------------------------------------- normalizations and Einsum

@pytest.mark.parametrize("axis", [-1, -2, 1])
@pytest.mark.parametrize("bias, n_out", [(True, 1), (False, 3), (True, 3)])
def test_layer_normalization(axis, bias, n_out):
    x = rand(2, 3, 4, 5) * 3 + 1
    shape = x.shape[axis % 4:]
    ins = [x, rand(*shape, seed=1)] + ([rand(*shape, seed=2)] if bias else [])
    check("LayerNormalization", ins, n_out=n_out, axis=axis, epsilon=1e-3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opset, per_channel", [(18, False), (21, True)])
@pytest.mark.parametrize("shape, groups", [((2, 6, 4, 5), 3), ((2, 4, 7), 2), ((1, 6, 3, 3), 6)])
def test_group_normalization(opset, per_channel, shape, groups):
    n = shape[1] if per_channel else groups
    check("GroupNormalization", [rand(*shape) * 2 + 0.5, rand(n, seed=1), rand(n, seed=2)], opset=opset,
          num_groups=groups, epsilon=1e-4, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7), (1, 2, 3, 4, 2)])
def test_instance_normalization(shape):
    check("InstanceNormalization", [rand(*shape) * 2 + 1, rand(shape[1], seed=1), rand(shape[1], seed=2)],
          epsilon=1e-3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("opset, axes, keepdims", [(17, [-1], 1), (17, [2, 3], 0), (17, None, 1), (18, [1], 1)])
def test_reduce_l2(opset, axes, keepdims):
    x = rand(2, 3, 4, 5)
    if opset >= 18:  # axes as an input
        check("ReduceL2", [x, np.array(axes, np.int64)], opset=opset, keepdims=keepdims, atol=1e-5, rtol=1e-5)
    else:
        kw = {} if axes is None else {"axes": axes}
        check("ReduceL2", [x], opset=opset, keepdims=keepdims, atol=1e-5, rtol=1e-5, **kw)


@pytest.mark.parametrize("eq, shapes", [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bhid,bhjd->bhij", [(2, 3, 4, 5), (2, 3, 6, 5)]),
    ("ij->ji", [(3, 4)]),
    ("i,i", [(5,), (5,)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 2)]),
    ("bij, bjk -> bik", [(2, 3, 4), (2, 4, 2)]),
])
def test_einsum(eq, shapes):
    check("Einsum", [rand(*s, seed=k) for k, s in enumerate(shapes)], equation=eq, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2]), dict(strides=[2, 2], pads=[1, 0, 0, 1]), dict(strides=[2, 2], output_padding=[1, 1]),
    dict(strides=[3, 2], dilations=[2, 1], pads=[1, 1, 2, 0]), dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER"), dict(strides=[2, 2], output_shape=[9, 10]),
    dict(strides=[2, 2], output_shape=[10, 9], auto_pad="SAME_UPPER"), dict(group=2), dict(strides=[2], bias=False),
], ids=lambda a: ",".join(f"{k}={v}" for k, v in a.items()))
def test_conv_transpose(attrs):
    attrs = dict(attrs)
    bias = attrs.pop("bias", True)
    nd = len(attrs.get("strides", [1, 1]))
    g = attrs.get("group", 1)
    x = rand(2, 4, *([5] * nd))
    w, b = rand(4, 6 // g, *([3] * nd), seed=1), rand(6, seed=2)
    check("ConvTranspose", [x, w] + ([b] if bias else []), atol=1e-5, rtol=1e-5, **attrs)


# ---------------------------------------------------------------- logic, masks and scans

@pytest.mark.parametrize("op", ["And", "Or", "Xor"])
def test_boolean_ops(op):
    rng = np.random.default_rng(0)
    check(op, [rng.random((3, 4)) > 0.5, rng.random((4,)) > 0.5])


@pytest.mark.parametrize("op", ["LessOrEqual", "GreaterOrEqual"])
@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_comparisons(op, dtype):
    check(op, [ties(3, 4).astype(dtype), ties(4, seed=1).astype(dtype)])


def _special():
    return np.array([0.0, -0.0, 1.5, -2.5, np.inf, -np.inf, np.nan, 3.0], np.float32)


def test_isnan():
    check("IsNaN", [_special()])


@pytest.mark.parametrize("neg, pos", [(1, 1), (0, 1), (1, 0), (0, 0)])
def test_isinf(neg, pos):
    check("IsInf", [_special()], detect_negative=neg, detect_positive=pos)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.int64])
def test_sign(dtype):
    check("Sign", [(ties(3, 5, hi=7) - 3).astype(dtype)])


def test_round_half_to_even():
    x = np.concatenate([np.arange(-3, 3, 0.25), [0.49999997, -0.5, 2.5000002, 1e7 + 0.5]]).astype(np.float32)
    check("Round", [x])


@pytest.mark.parametrize("fmod, dtype", [(0, np.int32), (0, np.int64), (1, np.int64), (1, np.float32)])
def test_mod(fmod, dtype):
    rng = np.random.default_rng(0)
    a = rng.integers(-20, 20, (4, 5)).astype(dtype)
    b = rng.integers(1, 7, (5,)) * rng.choice([-1, 1], 5)
    if dtype == np.float32:
        a = a + rng.random(a.shape).astype(dtype)
    check("Mod", [a, b.astype(dtype)], fmod=fmod, atol=1e-5)


@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("axis, dtype", [(1, np.float32), (-1, np.float32), (0, np.int32), (2, np.int64)])
def test_cumsum(exclusive, reverse, axis, dtype):
    check("CumSum", [(ties(3, 4, 5, hi=9) - 4).astype(dtype), np.array(axis, np.int64)], exclusive=exclusive,
          reverse=reverse)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, -1, 2, 9])
@pytest.mark.parametrize("shape", [(4, 6), (2, 5, 3)])
def test_trilu(upper, k, shape):
    ins = [rand(*shape)] + ([] if k is None else [np.array(k, np.int64)])
    check("Trilu", ins, upper=upper)


# ---------------------------------------------------------------- Resize and Upsample

CTMS = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric",
        "tf_crop_and_resize"]
SCALES = [[1, 1, 2, 2], [1, 1, 0.5, 0.75], [1, 1, 1.7, 0.6], [1, 1, 1, 3], [1, 1, 1.2, 1.3]]
ROI = np.array([0, 0, 0.1, 0.3, 1, 1, 0.8, 1.2], np.float32)


def _resize(x, scales=None, sizes=None, roi=None, opset=19, **attrs):
    ins = [x, roi if roi is not None else None,
           None if scales is None else np.array(scales, np.float32),
           None if sizes is None else np.array(sizes, np.int64)]
    while ins[-1] is None:
        ins.pop()
    return check("Resize", ins, opset=opset, atol=1e-5, rtol=1e-5, **attrs)


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
@pytest.mark.parametrize("scales", SCALES)
def test_resize_nearest(ctm, nearest_mode, scales, request):
    if (ctm, nearest_mode, scales) == ("half_pixel_symmetric", "round_prefer_floor", [1, 1, 1.7, 0.6]):
        # the source coordinate of output column 0 is 0.50000018 in float32 (onnxruntime's own linear mode gives
        # that value too), yet onnxruntime's nearest rounds it as a tie: not reproduced
        request.applymarker(pytest.mark.xfail(strict=True, reason="onnxruntime rounds a near-tie as a tie"))
    roi = ROI if ctm == "tf_crop_and_resize" else None
    _resize(rand(2, 3, 5, 7), scales, roi=roi, mode="nearest", coordinate_transformation_mode=ctm,
            nearest_mode=nearest_mode, extrapolation_value=-7.0)


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("scales", SCALES)
def test_resize_linear(ctm, scales):
    roi = ROI if ctm == "tf_crop_and_resize" else None
    _resize(rand(2, 3, 5, 7), scales, roi=roi, mode="linear", coordinate_transformation_mode=ctm,
            extrapolation_value=2.5)


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("exclude_outside, a", [(0, -0.75), (1, -0.75), (0, -0.5), (1, -0.6)])
@pytest.mark.parametrize("scales", SCALES)
def test_resize_cubic(ctm, exclude_outside, a, scales):
    roi = ROI if ctm == "tf_crop_and_resize" else None
    _resize(rand(2, 3, 5, 7), scales, roi=roi, mode="cubic", coordinate_transformation_mode=ctm,
            exclude_outside=exclude_outside, cubic_coeff_a=a)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("exclude_outside", [0, 1])
@pytest.mark.parametrize("scales", [[1, 1, 0.5, 0.75], [1, 1, 0.3, 0.45], [1, 1, 1.7, 0.6], [1, 1, 2, 2],
                                    [1, 1, 1, 0.4]])
def test_resize_antialias(mode, ctm, exclude_outside, scales):
    roi = ROI if ctm == "tf_crop_and_resize" else None
    _resize(rand(2, 3, 9, 11), scales, roi=roi, mode=mode, coordinate_transformation_mode=ctm, antialias=1,
            exclude_outside=exclude_outside, cubic_coeff_a=-0.5, extrapolation_value=1.5)


@pytest.mark.parametrize("shape, scales", [((1, 2, 7, 8, 9), [1, 1, 0.5, 0.7, 1.3]), ((9, 10), [0.4, 0.6]),
                                           ((2, 9, 10), [1, 0.5, 0.3])])
def test_resize_antialias_linear_other_ranks(shape, scales):
    _resize(rand(*shape), scales, mode="linear", antialias=1)


def test_resize_antialias_cubic_default_coefficient():
    _resize(rand(2, 3, 9, 11), [1, 1, 0.5, 0.4], mode="cubic", antialias=1)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS)
def test_resize_to_the_same_shape_copies(mode, ctm):
    """onnxruntime returns the input when the output shape equals it, even where the scales are not 1."""
    roi = ROI if ctm == "tf_crop_and_resize" else None
    _resize(rand(2, 3, 4, 4), [1, 1, 1.2, 1.2], roi=roi, mode=mode, coordinate_transformation_mode=ctm,
            nearest_mode="floor")


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_axis_of_unchanged_length_is_still_resampled(mode):
    """Only a scale of exactly 1 maps an axis one-to-one: 4 * 1.2 -> 4 rows, sampled at (y + 0.5) / 1.2 - 0.5."""
    _resize(rand(2, 3, 4, 5), [1, 1, 1.2, 1.25], mode=mode, nearest_mode="floor")


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("sizes", [[2, 3, 9, 4], [2, 3, 5, 14], [2, 3, 3, 3]])
def test_resize_sizes(mode, sizes):
    _resize(rand(2, 3, 5, 7), sizes=sizes, mode=mode)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_axes_and_keep_aspect_ratio(policy, mode):
    _resize(rand(2, 3, 5, 7), sizes=[9, 11], mode=mode, axes=[2, 3], keep_aspect_ratio_policy=policy)
    _resize(rand(2, 3, 5, 7), sizes=[4, 9], mode=mode, axes=[3, 2], keep_aspect_ratio_policy=policy)
    if mode == "nearest":  # onnxruntime's linear resizes no outer axis of a 4-D input
        _resize(rand(2, 3, 5, 7), sizes=[3, 1, 9], mode=mode, axes=[2, 0, 3], keep_aspect_ratio_policy=policy)


@pytest.mark.parametrize("policy", ["not_larger", "not_smaller"])
def test_resize_keep_aspect_ratio_with_negative_axes_follows_the_spec(policy):
    """onnxruntime 1.32 leaves the shape unchanged for negative axes with a keep_aspect_ratio_policy (a bug):
    the simulation resizes as the spec says, which is what onnxruntime does for the same positive axes."""
    x = rand(2, 3, 5, 7)
    want = _resize(x, sizes=[4, 9], mode="linear", axes=[3, 2], keep_aspect_ratio_policy=policy)[0]
    attrs = {"mode": b"linear", "axes": [-1, -2], "keep_aspect_ratio_policy": policy.encode()}
    got = OPS["Resize"]([torch.from_numpy(x), None, None, torch.tensor([4, 9])], attrs)[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_axes_with_scales_and_roi(mode):
    _resize(rand(2, 3, 5, 7), [1.5, 2.0], mode=mode, axes=[2, 3])
    _resize(rand(2, 3, 5, 7), [1.5, 2.0], roi=np.array([0.2, 0.1, 0.9, 1.0], np.float32), mode=mode, axes=[2, 3],
            coordinate_transformation_mode="tf_crop_and_resize")


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("shape, scales", [((1, 2, 3, 4, 5), [1, 1, 2, 1.5, 0.5]), ((2, 3, 4), [1, 1, 2.5]),
                                           ((2, 5), [1, 1.8])])
def test_resize_other_ranks(mode, shape, scales):
    _resize(rand(*shape), scales, mode=mode)


@pytest.mark.parametrize("opset", [13, 18])
def test_resize_older_opsets(opset):
    _resize(rand(2, 3, 5, 7), [1, 1, 1.5, 0.5], roi=np.zeros(0, np.float32), opset=opset, mode="linear",
            coordinate_transformation_mode="align_corners")


def test_resize_tf_half_pixel_for_nn_opset_11():
    _resize(rand(2, 3, 5, 7), [1, 1, 1.5, 0.6], roi=np.zeros(0, np.float32), opset=11, mode="nearest",
            coordinate_transformation_mode="tf_half_pixel_for_nn")


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 2], [1, 1, 1.5, 0.5], [1, 1, 3, 2.5], [1, 1, 1.7, 1.2]])
def test_resize_opset_10_and_upsample_9(mode, scales):
    x, s = rand(2, 3, 5, 7), np.array(scales, np.float32)
    check("Resize", [x, s], opset=10, mode=mode, atol=1e-5, rtol=1e-5)
    if min(scales) >= 1:  # Upsample only upsamples
        check("Upsample", [x, s], opset=9, mode=mode, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample_8_scales_attribute(mode):
    check("Upsample", [rand(2, 3, 5, 7)], opset=8, mode=mode, scales=[1.0, 1.0, 2.0, 1.5], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- Slice and AveragePool

BIG = np.iinfo(np.int64).max


@pytest.mark.parametrize("starts, ends, axes, steps", [
    ([-1], [-BIG], [1], [-1]),
    ([10], [0], [1], [-2]),
    ([4, 0], [1, 5], [2, 0], [-1, 2]),
    ([-2, 3], [-6, -BIG], [0, -1], [-3, -2]),
    ([0], [-1], [2], [-1]),
    ([2], [2], [1], [-1]),
    ([BIG], [-BIG], [0], [-1]),
])
def test_slice_negative_steps(starts, ends, axes, steps):
    arr = lambda v: np.array(v, np.int64)  # noqa: E731
    check("Slice", [rand(5, 6, 7), arr(starts), arr(ends), arr(axes), arr(steps)])


@pytest.mark.parametrize("pads", [[0, 1, 1, 0], [1, 2, 0, 1], [2, 0, 1, 1]])
@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("strides, ceil", [([1, 1], 0), ([2, 2], 0), ([2, 3], 1)])
def test_average_pool_asymmetric_pads(pads, include, strides, ceil):
    check("AveragePool", [rand(2, 3, 7, 8)], kernel_shape=[3, 3], pads=pads, strides=strides, ceil_mode=ceil,
          count_include_pad=include, atol=1e-6)


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("include", [0, 1])
def test_average_pool_same_padding(auto_pad, include):
    check("AveragePool", [rand(2, 3, 7, 8)], kernel_shape=[4, 3], strides=[2, 2], auto_pad=auto_pad,
          count_include_pad=include, atol=1e-6)


# ---------------------------------------------------------------- index ops

@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis, k", [(-1, 3), (0, 2), (1, 5)])
@pytest.mark.parametrize("data", ["random", "ties"])
def test_topk(largest, axis, k, data):
    x = rand(4, 5, 6) if data == "random" else ties(4, 5, 6)
    check("TopK", [x, np.array([k], np.int64)], n_out=2, axis=axis, largest=largest, sorted=1)


@pytest.mark.parametrize("largest", [0, 1])
def test_topk_unsorted_selects_the_same_elements(largest):
    x, k = rand(4, 9), 4
    want = ort_run(_one_node("TopK", [x, np.array([k], np.int64)], 2, axis=1, largest=largest, sorted=0),
                   {"in0": x, "in1": np.array([k], np.int64)}, optimize=False)
    got = OPS["TopK"]([torch.from_numpy(x), torch.tensor([k])], {"axis": 1, "largest": largest, "sorted": 0})
    np.testing.assert_array_equal(np.sort(got[1].numpy(), 1), np.sort(want[1], 1))
    np.testing.assert_array_equal(np.sort(got[0].numpy(), 1), np.sort(want[0], 1))


def _one_node(op_type, inputs, n_out, opset=17, **attrs):
    names = [f"in{k}" for k in range(len(inputs))]
    g = helper.make_graph([helper.make_node(op_type, names, [f"out{k}" for k in range(n_out)], **attrs)], op_type,
                          [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
                           for n, v in zip(names, inputs)],
                          [helper.make_empty_tensor_value_info(f"out{k}") for k in range(n_out)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = IR_FOR_OPSET[opset]
    return m


@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
@pytest.mark.parametrize("axis", [0, -1, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("last", [0, 1])
def test_argmax_argmin(op, axis, keepdims, last):
    check(op, [ties(3, 4, 5)], axis=axis, keepdims=keepdims, select_last_index=last)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = rand(3, 4, 5)
    rng = np.random.default_rng(1)
    shape = [3, 4, 5]
    shape[axis] = 6
    n = x.shape[axis]
    check("GatherElements", [x, rng.integers(-n, n, shape).astype(np.int64)], axis=axis)


@pytest.mark.parametrize("batch_dims, ind_shape", [(0, (4, 2)), (0, (2, 3, 3)), (0, (5, 1)), (1, (2, 3, 1)),
                                                   (1, (2, 2)), (2, (2, 3, 1))])
def test_gather_nd(batch_dims, ind_shape):
    x = rand(2, 3, 4, 5)
    rng = np.random.default_rng(1)
    k = ind_shape[-1]
    hi = np.array(x.shape[batch_dims:batch_dims + k])
    ind = (rng.integers(0, 1 << 30, ind_shape) % hi) - rng.integers(0, 2, ind_shape) * hi
    check("GatherND", [x, ind.astype(np.int64)], batch_dims=batch_dims)


@pytest.mark.parametrize("reduction, opset", [("none", 17), ("add", 17), ("mul", 17), ("max", 18), ("min", 18)])
@pytest.mark.parametrize("ind", [[[1], [3], [0]], [[1, 2], [0, -1], [2, 2]]])
def test_scatter_nd(reduction, opset, ind):
    x = ties(4, 3, 5, hi=9) - 4
    ind = np.array(ind, np.int64)
    if reduction != "none":  # duplicates are defined only with a reduction
        ind = np.concatenate([ind, ind[:1]])
    upd = ties(*ind.shape[:-1], *x.shape[ind.shape[-1]:], seed=1, hi=9) - 4
    check("ScatterND", [x, ind, upd], opset=opset, reduction=reduction)


@pytest.mark.parametrize("reduction, opset", [("none", 17), ("add", 17), ("mul", 17), ("max", 18), ("min", 18)])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements(reduction, opset, axis):
    x = ties(4, 5, hi=9) - 4
    rng = np.random.default_rng(2)
    n = x.shape[axis]
    if reduction == "none":  # unique targets along the axis
        ind = np.stack([rng.permutation(n)[:3] for _ in range(5 if axis == 0 else 4)], axis=1 if axis == 0 else 0)
        ind = ind - n * (rng.random(ind.shape) > 0.5)
    else:
        ind = rng.integers(-n, n, (3, 4) if axis == 0 else (4, 3))
    upd = ties(*ind.shape, seed=3, hi=9) - 4
    check("ScatterElements", [x, ind.astype(np.int64), upd], opset=opset, axis=axis, reduction=reduction)


@pytest.mark.parametrize("x", [ties(3, 4, 2, hi=2), np.array(3.0, np.float32), np.zeros((2, 3), np.float32),
                               np.array([[True, False], [True, True]])])
def test_nonzero(x):
    check("NonZero", [x])


def _boxes(n_batch, n_boxes, center, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 10, (n_batch, n_boxes, 2))
    wh = rng.uniform(0.5, 4, (n_batch, n_boxes, 2))
    if center:
        return np.concatenate([xy, wh], -1).astype(np.float32)
    b = np.concatenate([xy, xy + wh], -1)
    swap = rng.random((n_batch, n_boxes)) > 0.7  # corners in either order
    b[swap] = b[swap][:, [2, 3, 0, 1]]
    return b[..., [1, 0, 3, 2]].astype(np.float32)  # [y1, x1, y2, x2]


@pytest.mark.parametrize("center", [0, 1])
@pytest.mark.parametrize("max_out, iou, score", [(3, 0.5, None), (10, 0.3, 0.4), (2, 0.0, 0.0), (0, 0.5, None),
                                                 (None, None, None), (20, 0.7, 0.9)])
def test_non_max_suppression(center, max_out, iou, score):
    boxes = _boxes(2, 12, center)
    scores = ties(2, 3, 12, hi=6) / 5  # ties in score: the lower box index first
    opt = lambda v, dt: None if v is None else np.array([v], dt)  # noqa: E731
    ins = [boxes, scores, opt(max_out, np.int64), opt(iou, np.float32), opt(score, np.float32)]
    while ins[-1] is None:
        ins.pop()
    check("NonMaxSuppression", ins, center_point_box=center)


@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("ind_dtype, depth_dtype, values", [
    (np.int64, np.int64, np.array([0, 1], np.float32)),
    (np.float32, np.float32, np.array([-2.5, 3.0], np.float32)),
    (np.int32, np.int32, np.array([2.0, 7.0], np.float32)),
    (np.int64, np.int64, np.array([2, 7], np.int64))])
def test_onehot(axis, ind_dtype, depth_dtype, values):
    ind = np.array([[0, 3, -1], [5, -5, 2]]).astype(ind_dtype)  # 5 is out of range: all off
    check("OneHot", [ind, np.array(5, depth_dtype), values], axis=axis)


def test_scatter_opset_10():
    x, ind, upd = ties(4, 5, hi=9), np.array([[1, 0, 3], [2, -1, 0]], np.int64), ties(2, 3, seed=1)
    check("Scatter", [x, ind, upd], opset=10, axis=1)


@pytest.mark.parametrize("axis", [0, 1, 2, -1, -2])
def test_flatten_every_axis(axis):
    """Flatten's axis runs over [-rank, rank]; axis = rank gives (numel, 1) (BERT's attention mask)."""
    check("Flatten", [rand(3, 4)], axis=axis)


# ---------------------------------------------------------------- sampling

@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
@pytest.mark.parametrize("align_corners", [0, 1])
def test_grid_sample(mode, padding_mode, align_corners):
    """Deformable attention's sampling (RT-DETR): grid points inside and outside [-1, 1]."""
    grid = (np.random.default_rng(1).random((2, 5, 6, 2)) * 2.6 - 1.3).astype(np.float32)
    check("GridSample", [rand(2, 3, 7, 8), grid], opset=16, atol=1e-5, rtol=1e-5, mode=mode,
          padding_mode=padding_mode, align_corners=align_corners)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
def test_grid_sample_opset_20_mode_names(mode):
    grid = (np.random.default_rng(2).random((1, 4, 4, 2)) * 2 - 1).astype(np.float32)
    check("GridSample", [rand(1, 2, 5, 5), grid], opset=20, atol=1e-5, rtol=1e-5, mode=mode)
