"""Partition into layer / block / stage / net regions (DESIGN.md section 5, onnxptq.graph.partition)."""
from __future__ import annotations

import re

import onnx
import pytest

from onnxptq.graph import GRANULARITIES, import_model, partition

from helpers import DIGITS, TV_ARCHS, digits_path

MAX_BLOCK_LAYERS = 8  # an Inception module (6 convs) or an SE inverted residual (5) is one block


def _float_tensors(qg) -> set[str]:
    """Float activations of the folded graph (integer shape tensors may cross region boundaries)."""
    inits = {i.name for i in qg.model.graph.initializer}
    m = onnx.shape_inference.infer_shapes(qg.model)
    elem = {vi.name: vi.type.tensor_type.elem_type for vi in list(m.graph.value_info) + list(m.graph.output) + list(m.graph.input)}
    return {t for n in qg.model.graph.node if n.op_type != "Constant" for t in n.output
            if t and t not in inits and elem.get(t, onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT} | set(qg.inputs)


def check_partition(qg, granularity: str) -> list:
    """The invariants every partition must satisfy; returns the regions."""
    regions = partition(qg, granularity)
    layer_names = [layer.name for layer in qg.layers]
    assert regions, "no regions"
    # every quantized layer exactly once, in execution order
    covered = [x for r in regions for x in r.layers]
    assert covered == layer_names, f"{granularity}: layers not covered exactly once in order"
    node_order = {n.name: k for k, n in enumerate(qg.model.graph.node)}
    assert [node_order[x] for x in layer_names] == sorted(node_order[x] for x in layer_names)
    for r in regions:
        assert r.kind == granularity
        assert r.layers, f"{granularity} region {r.name} holds no layer"
        assert all(node_order[a] < node_order[b] for a, b in zip(r.nodes, r.nodes[1:])), r.name
    if granularity == "layer":
        layers = {layer.name: layer for layer in qg.layers}
        for r in regions:
            (name,) = r.layers
            assert r.input == layers[name].input and r.output == layers[name].output
        return regions
    # regions chain from the graph input to the graph output
    assert regions[0].input == qg.inputs[0]
    assert regions[-1].output == qg.outputs[0]
    for a, b in zip(regions, regions[1:]):
        assert a.output == b.input, f"{a.name} ends at {a.output}, {b.name} starts at {b.input}"
    # together the regions hold every (non-Constant) node once, contiguously in graph order
    all_nodes = [n.name for n in qg.model.graph.node if n.op_type != "Constant"]
    assert [x for r in regions for x in r.nodes] == all_nodes
    # cuts: the only float activation crossing a boundary is the region's output tensor
    floats = _float_tensors(qg)
    produced_in = {}
    for k, r in enumerate(regions):
        for name in r.nodes:
            for t in qg.model.graph.node[node_order[name]].output:
                produced_in[t] = k
    for k, r in enumerate(regions):
        for name in r.nodes:
            for t in qg.model.graph.node[node_order[name]].input:
                if t in floats and t in produced_in and produced_in[t] < k:
                    assert produced_in[t] == k - 1 and t == regions[k - 1].output, \
                        f"{t} produced in region {produced_in[t]} is read inside region {k} ({r.name})"
    return regions


def check_stages(qg, stages, blocks) -> None:
    assert [c for s in stages for c in s.children] == [b.name for b in blocks]
    by_name = {b.name: b for b in blocks}

    def spatial(t):
        shape = qg.shapes.get(t, ())
        return tuple(shape[2:]) if len(shape) > 2 else ()

    sizes = []
    for s in stages:
        sp = {spatial(by_name[c].output) for c in s.children} - {()}
        assert len(sp) <= 1, f"{s.name} mixes resolutions {sp}"
        sizes.append(next(iter(sp)) if sp else None)
    for a, b in zip(sizes, sizes[1:]):
        assert a != b, "consecutive stages at the same resolution should be one stage"


def check_all_granularities(qg) -> dict:
    out = {g: check_partition(qg, g) for g in GRANULARITIES}
    assert len(out["layer"]) == len(qg.layers)
    assert len(out["net"]) == 1 and out["net"][0].children == [b.name for b in out["block"]]
    assert 1 < len(out["stage"]) <= len(out["block"]) <= len(qg.layers)
    check_stages(qg, out["stage"], out["block"])
    for b in out["block"]:
        assert len(b.layers) <= MAX_BLOCK_LAYERS, (b.name, b.layers)
    return out


def test_unknown_granularity_rejected():
    qg = import_model(digits_path("digits_resnet"))
    with pytest.raises(ValueError):
        partition(qg, "blocks")


@pytest.mark.parametrize("name", DIGITS)
def test_partition_digits(name):
    qg = import_model(digits_path(name))
    regions = check_all_granularities(qg)
    if name == "digits_resnet":
        _check_resnet_blocks(qg, regions["block"], r"/layer\d+/layer\d+\.\d+/")


def _check_resnet_blocks(qg, blocks, pattern: str) -> None:
    """Every residual BasicBlock is exactly one block region (its 2 convs + the downsample conv)."""
    groups: dict[str, list[str]] = {}
    for layer in qg.layers:
        m = re.search(pattern, layer.name)
        if m:
            groups.setdefault(m.group(0), []).append(layer.name)
    assert len(groups) >= 3
    for scope, layers in groups.items():
        holders = [b for b in blocks if set(layers) & set(b.layers)]
        assert len(holders) == 1, f"{scope} split over {[h.name for h in holders]}"
        assert holders[0].layers == layers, f"{holders[0].name} holds {holders[0].layers}, the block is {layers}"
        assert len(layers) in (2, 3)
    for b in blocks:
        assert len(b.layers) <= 3


@pytest.mark.slow
@pytest.mark.parametrize("arch", TV_ARCHS)
def test_partition_torchvision(arch, tv_qgraph):
    qg = tv_qgraph(arch)
    regions = check_all_granularities(qg)
    blocks = regions["block"]
    if arch == "resnet18":
        _check_resnet_blocks(qg, blocks, r"/layer\d+/layer\d+\.\d+/")
        assert len([b for b in blocks if re.search(r"layer\d\.\d", b.name)]) == 8
    if arch == "googlenet":  # each Inception module (4 branches joined by Concat) is one block
        concat_blocks = [b for b in blocks if any("inception" in x for x in b.layers)]
        assert len(concat_blocks) == 9 and all(len(b.layers) == 6 for b in concat_blocks)
    if arch == "squeezenet1_1":  # no block mixes two Fire modules
        for b in blocks:
            fires = {m.group(0) for x in b.layers for m in [re.search(r"/features\.\d+/", x)] if m}
            assert len(fires) <= 1, (b.name, b.layers)
    if arch == "shufflenet_v2_x0_5":  # every ShuffleNet unit (split, branch, concat, shuffle) is one block
        units = {m.group(0) for layer in qg.layers for m in [re.search(r"/stage\d/stage\d\.\d+/", layer.name)] if m}
        assert len(units) == 16
        for u in units:
            holders = [b for b in blocks if any(u in x for x in b.layers)]
            assert len(holders) == 1, u
            assert all(u in x for x in holders[0].layers), (u, holders[0].layers)


def _single_layer_runs(blocks) -> list[list[str]]:
    runs, run = [], []
    for b in blocks + [None]:
        if b is not None and len(b.layers) == 1:
            run.append(b.name)
            continue
        if len(run) > 1:
            runs.append(run)
        run = []
    return runs


@pytest.mark.parametrize("name", DIGITS)
def test_single_layer_runs_are_merged_digits(name):
    """DESIGN.md section 5: runs of consecutive single-layer regions (stems, heads, MobileNetV2 blocks
    without shortcut) are merged into blocks of 2-3 layers: no two adjacent blocks hold one layer each."""
    blocks = partition(import_model(digits_path(name)), "block")
    assert _single_layer_runs(blocks) == []


@pytest.mark.slow
@pytest.mark.parametrize("arch", TV_ARCHS)
def test_single_layer_runs_are_merged_torchvision(arch, tv_qgraph):
    blocks = partition(tv_qgraph(arch), "block")
    assert _single_layer_runs(blocks) == []
