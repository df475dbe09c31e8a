"""Session: load an ONNX model once, validate it, fold constants, and execute it on NumPy arrays."""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import numpy as np
import onnx
import onnx.defs
from onnx import ModelProto, numpy_helper

from .dtypes import np_dtype, type_name
from .errors import (
    InputError,
    ModelError,
    NodeExecutionError,
    RuntimeErrorBase,
    UnsupportedOpError,
)
from .ops import REGISTRY, Node
from .typecheck import SchemaTypes

_DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class _InputSpec:
    name: str
    dtype: np.dtype | None
    dims: list[int | str | None] | None  # None: rank unknown; int: static; str: symbolic; None dim: free


@dataclass
class _Plan:
    steps: list[int]  # node indices, topological
    free: dict[int, list[str]]  # node index -> tensor names to drop after it


def _load(model: str | os.PathLike | ModelProto) -> ModelProto:
    if isinstance(model, ModelProto):
        for t in model.graph.initializer:
            if t.data_location == onnx.TensorProto.EXTERNAL and not t.raw_data:
                raise ModelError(
                    f"initializer {t.name!r} uses external data that is not loaded; "
                    "pass the model path instead of a ModelProto"
                )
        return model
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model), load_external_data=True)
    raise TypeError(f"model must be a path or an onnx.ModelProto, got {type(model).__name__}")


def _value_spec(vi: onnx.ValueInfoProto) -> _InputSpec:
    tt = vi.type.tensor_type if vi.type.HasField("tensor_type") else None
    if tt is None:
        raise UnsupportedOpError(vi.name, "<graph input>", "only tensor inputs are supported")
    dtype = np_dtype(tt.elem_type) if tt.elem_type else None
    dims: list[int | str | None] | None = None
    if tt.HasField("shape"):
        dims = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                dims.append(d.dim_param)
            else:
                dims.append(None)
    return _InputSpec(vi.name, dtype, dims)


class Session:
    """A loaded model, ready to run.

    Args:
        model: path (external data is loaded from next to it) or an ``onnx.ModelProto``.
        fold_constants: evaluate, once at load, every node whose inputs are all constants
            (initializers, Constant nodes and their descendants). Their outputs still appear in
            ``run(..., keep=True)``.

    Raises:
        UnsupportedOpError: a node's op, domain or attribute values are not implemented
            (the message names the node and op type).
        ModelError: the graph is malformed (cycle, undefined tensor, missing opset).
    """

    def __init__(self, model: str | os.PathLike | ModelProto, *, fold_constants: bool = True) -> None:
        proto = _load(model)
        if len(proto.functions):
            from onnx import inliner

            proto = inliner.inline_local_functions(proto)
        opset = None
        for o in proto.opset_import:
            if o.domain in _DEFAULT_DOMAINS:
                opset = int(o.version)
        if opset is None:
            raise ModelError("model imports no default-domain ('' / ai.onnx) opset")
        self.opset = opset
        g = proto.graph

        # --- constants
        self._initializers: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self._initializers[t.name] = numpy_helper.to_array(t)
        if len(g.sparse_initializer):
            raise UnsupportedOpError(g.name, "<graph>", "sparse initializers")
        input_names = [vi.name for vi in g.input]
        self._overridable = {n for n in input_names if n in self._initializers}
        self._inputs = [_value_spec(vi) for vi in g.input if vi.name not in self._initializers]
        self._feedable = {s.name: s for s in self._inputs}
        for n in self._overridable:
            vi = next(v for v in g.input if v.name == n)
            self._feedable[n] = _value_spec(vi)
        self.input_names: list[str] = [s.name for s in self._inputs]
        self.output_names: list[str] = [vi.name for vi in g.output]
        self._output_types = {
            vi.name: vi.type.tensor_type.elem_type
            for vi in g.output
            if vi.type.HasField("tensor_type")
        }

        # --- nodes
        nodes = []
        for i, p in enumerate(g.node):
            if p.domain not in _DEFAULT_DOMAINS:
                raise UnsupportedOpError(p.name or f"{p.op_type}_{i}", p.op_type, f"domain {p.domain!r}")
            node = Node.from_proto(p, opset, i)
            spec = REGISTRY.get(node.op_type)
            if spec is None:
                raise UnsupportedOpError(node.name, node.op_type)
            if spec.check is not None:
                spec.check(node)
            nodes.append(node)
        self._nodes = self._toposort(nodes)
        self._types = [self._schema(n) for n in self._nodes]
        self._producer = {o: i for i, n in enumerate(self._nodes) for o in n.outputs if o}

        # --- constant folding
        self._consts: dict[str, np.ndarray] = {
            k: v for k, v in self._initializers.items() if k not in self._overridable
        }
        self._folded: set[int] = set()
        self._folded_names: list[str] = []
        if fold_constants:
            self._fold()
        for n in self._nodes:
            n.const_inputs = frozenset(
                j for j, name in enumerate(n.inputs) if not name or name in self._consts
            )
        self._plans: dict[Any, _Plan] = {}

    # ------------------------------------------------------------------ construction helpers

    def _schema(self, node: Node) -> SchemaTypes | None:
        if not onnx.defs.has(node.op_type, node.opset):
            raise ModelError(
                f"node {node.name!r}: op {node.op_type} does not exist in opset {node.opset}"
            )
        try:
            return SchemaTypes(node.op_type, node.opset)
        except Exception:  # pragma: no cover - schema lookup quirks: run without type checks
            return None

    def _toposort(self, nodes: list[Node]) -> list[Node]:
        known = set(self._initializers) | {s.name for s in self._inputs}
        producer: dict[str, int] = {}
        for i, n in enumerate(nodes):
            for o in n.outputs:
                if not o:
                    continue
                if o in producer or o in known:
                    raise ModelError(f"tensor {o!r} is produced more than once")
                producer[o] = i
        deps: list[set[int]] = []
        users: list[list[int]] = [[] for _ in nodes]
        for i, n in enumerate(nodes):
            d = set()
            for name in n.inputs:
                if not name or name in known:
                    continue
                if name not in producer:
                    raise ModelError(f"node {n.name!r} ({n.op_type}) reads undefined tensor {name!r}")
                d.add(producer[name])
            deps.append(d)
            for j in d:
                users[j].append(i)
        missing = [len(d) for d in deps]
        heap = [i for i, m in enumerate(missing) if m == 0]
        heapq.heapify(heap)
        order = []
        while heap:
            i = heapq.heappop(heap)
            order.append(i)
            for u in users[i]:
                missing[u] -= 1
                if missing[u] == 0:
                    heapq.heappush(heap, u)
        if len(order) != len(nodes):
            raise ModelError("graph has a cycle")
        for o in self.output_names:
            if o not in producer and o not in known:
                raise ModelError(f"graph output {o!r} is never produced")
        return [nodes[i] for i in order]

    def _fold(self) -> None:
        env = self._consts
        for i, node in enumerate(self._nodes):
            if not all((not n) or n in env for n in node.inputs):
                continue
            try:
                outs = self._exec(i, node, [env[n] if n else None for n in node.inputs])
            except RuntimeErrorBase:
                continue  # leave it to run time (it may be dead code)
            self._folded.add(i)
            for name, val in zip(node.outputs, outs):
                if name:
                    env[name] = val
                    self._folded_names.append(name)

    # ------------------------------------------------------------------ execution

    def _exec(self, i: int, node: Node, args: list[np.ndarray | None]) -> tuple[np.ndarray, ...]:
        while args and args[-1] is None:
            args.pop()
        types = self._types[i]
        sig = tuple(None if a is None else a.dtype for a in args)
        seen = node.cache.setdefault("_sigs", {})
        binding = seen.get(sig)
        if binding is None and types is not None:
            binding = types.check_inputs(node, sig)
        try:
            res = REGISTRY[node.op_type].fn(node, *args)  # run() holds np.errstate(all="ignore")
        except RuntimeErrorBase:
            raise
        except Exception as e:
            shapes = ", ".join(
                "None" if a is None else f"{type_name(a.dtype)}{list(a.shape)}" for a in args
            )
            raise NodeExecutionError(
                node.name, node.op_type, f"{type(e).__name__}: {e} (inputs: {shapes})"
            ) from e
        outs = tuple(np.asarray(r) for r in (res if isinstance(res, tuple) else (res,)))
        if len(outs) < node.n_outputs:
            raise NodeExecutionError(node.name, node.op_type, f"produced {len(outs)} outputs")
        if sig not in seen:
            if types is not None:
                types.check_outputs(node, binding, [o.dtype for o in outs[: len(node.outputs)]])
            seen[sig] = binding if binding is not None else {}
        return outs

    def _plan(self, targets: tuple[str, ...], keep_all: bool, keep: frozenset[str]) -> _Plan:
        key = (targets, keep_all, keep)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        live = [i for i in range(len(self._nodes)) if i not in self._folded]
        if not keep_all:
            need: set[int] = set()
            stack = [t for t in set(targets) | keep]
            seen_names: set[str] = set()
            while stack:
                name = stack.pop()
                if name in seen_names:
                    continue
                seen_names.add(name)
                j = self._producer.get(name)
                if j is None or j in self._folded or j in need:
                    continue
                need.add(j)
                stack.extend(n for n in self._nodes[j].inputs if n)
            live = [i for i in live if i in need]
        free: dict[int, list[str]] = {}
        if not keep_all:
            retained = set(targets) | keep | set(self._consts)
            last: dict[str, int] = {}
            for i in live:
                for n in self._nodes[i].inputs:
                    if n:
                        last[n] = i
                for n in self._nodes[i].outputs:
                    if n:
                        last.setdefault(n, i)
            for name, i in last.items():
                if name not in retained:
                    free.setdefault(i, []).append(name)
        plan = self._plans[key] = _Plan(live, free)
        return plan

    def _check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(feeds, Mapping):
            raise InputError("<feeds>", f"feeds must be a dict name -> array, got {type(feeds).__name__}")
        for name in feeds:
            if name not in self._feedable:
                raise InputError(name, f"not an input of the model (inputs: {self.input_names})")
        out: dict[str, np.ndarray] = {}
        symbols: dict[str, tuple[int, str]] = {}
        for spec in self._inputs + [self._feedable[n] for n in self._overridable if n in feeds]:
            if spec.name not in feeds:
                raise InputError(spec.name, f"missing (expected {self._describe(spec)})")
            v = feeds[spec.name]
            a = v if isinstance(v, np.ndarray) else np.asarray(v)
            if spec.dtype is not None and a.dtype != spec.dtype:
                raise InputError(
                    spec.name, f"wrong dtype {type_name(a.dtype)}, expected {self._describe(spec)}"
                )
            if spec.dims is not None:
                if a.ndim != len(spec.dims):
                    raise InputError(
                        spec.name,
                        f"wrong rank {a.ndim} (shape {list(a.shape)}), expected {self._describe(spec)}",
                    )
                for ax, (d, n) in enumerate(zip(spec.dims, a.shape)):
                    if isinstance(d, int) and d != n:
                        raise InputError(
                            spec.name,
                            f"wrong shape {list(a.shape)} (axis {ax} is {n}), expected {self._describe(spec)}",
                        )
                    if isinstance(d, str):
                        prev = symbols.setdefault(d, (n, spec.name))
                        if prev[0] != n:
                            raise InputError(
                                spec.name,
                                f"dimension {d!r} is {n} here but {prev[0]} in input {prev[1]!r}",
                            )
            out[spec.name] = a
        return out

    @staticmethod
    def _describe(spec: _InputSpec) -> str:
        dt = type_name(spec.dtype) if spec.dtype is not None else "any dtype"
        if spec.dims is None:
            return f"{dt}, any shape"
        return f"{dt} of shape [{', '.join('?' if d is None else str(d) for d in spec.dims)}]"

    # ------------------------------------------------------------------ public API

    @property
    def inputs(self) -> dict[str, tuple[np.dtype | None, list[int | str | None] | None]]:
        """Graph inputs (initializers excluded): name -> (dtype, dims; str = symbolic, None = free)."""
        return {s.name: (s.dtype, s.dims) for s in self._inputs}

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Iterable[str] | None = None,
        keep: bool | Iterable[str] = False,
    ) -> dict[str, np.ndarray]:
        """Execute the graph.

        Args:
            feeds: graph input name -> array; dtype, rank and static dims must match the model.
            outputs: names of the tensors to return (any tensor, not only graph outputs);
                default: the graph outputs. Only the nodes they depend on are executed.
            keep: ``True`` to also return every input and intermediate tensor (all nodes run,
                golden dumps / parity checks); or a list of extra tensor names to return.
                Otherwise intermediates are freed as soon as their last consumer has run.

        Returns:
            name -> array: the requested outputs first (in order), then the kept tensors.

        Raises:
            InputError: missing/unknown feed, wrong dtype, rank or static shape.
            NodeExecutionError: an op failed (message names the node, op type and input shapes).
            UnsupportedOpError: a node needs something the runtime does not implement.
        """
        env = dict(self._consts)
        for n in self._overridable:
            env[n] = self._initializers[n]
        env.update(self._check_feeds(feeds))
        targets = tuple(outputs) if outputs is not None else tuple(self.output_names)
        keep_all = keep is True
        keep_set = frozenset() if isinstance(keep, bool) else frozenset(keep)
        for name in (*targets, *keep_set):
            if name not in env and name not in self._producer:
                raise ModelError(f"unknown tensor {name!r}")
        plan = self._plan(targets, keep_all, keep_set)
        with np.errstate(all="ignore"):
            self._run_steps(plan, env)
        result = {t: env[t] for t in targets}
        self._check_output_types(result)
        if keep_all:
            extra = list(self.input_names) + list(self._folded_names)
            extra += [o for i in plan.steps for o in self._nodes[i].outputs if o]
            for name in extra:
                if name in env and name not in result:
                    result[name] = env[name]
        for name in keep_set:
            result.setdefault(name, env[name])
        return result

    def _run_steps(self, plan: _Plan, env: dict[str, np.ndarray]) -> None:
        nodes = self._nodes
        for i in plan.steps:
            node = nodes[i]
            try:
                args = [env[n] if n else None for n in node.inputs]
            except KeyError as e:  # pragma: no cover - plan guarantees availability
                raise ModelError(f"node {node.name!r}: input {e} not available") from e
            outs = self._exec(i, node, args)
            for name, val in zip(node.outputs, outs):
                if name:
                    env[name] = val
            for name in plan.free.get(i, ()):
                env.pop(name, None)

    def _check_output_types(self, result: dict[str, np.ndarray]) -> None:
        for name, arr in result.items():
            t = self._output_types.get(name)
            if t and arr.dtype != np_dtype(t):
                raise ModelError(
                    f"graph output {name!r} is declared {type_name(np_dtype(t))} "
                    f"but computes to {type_name(arr.dtype)}"
                )


def run(
    model: str | os.PathLike | ModelProto,
    feeds: Mapping[str, np.ndarray],
    **kw: Any,
) -> dict[str, np.ndarray]:
    """One-shot convenience: ``Session(model).run(feeds, **kw)``."""
    return Session(model).run(feeds, **kw)
