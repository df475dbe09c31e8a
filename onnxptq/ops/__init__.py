"""Operator knowledge, one record per ONNX op.

- conv.py, elementwise.py, normalization.py, indexing.py, pooling.py, shape.py: one module per op family: the
  torch implementation of each op (registered in base.OPS) next to FAMILIES, the ops' roles and integer-lowering
  kinds.
- simulate.py: imports the families; OPS, conv, gemm for sim/, calib/, recon/, export/ and verify/.
- spec.py: OpSpec (op type, torch function, role in the quant graph, integer-lowering kind, runtime kernel).
- registry.py: REGISTRY (op type -> OpSpec), built from one line per family module.
- fallback.py: onnx2torch's per-node converters for ops outside REGISTRY (islands, no integer lowering).

The import order stays one-way (quant -> ops -> graph -> ... -> export -> verify): a spec names its integer
lowering by *kind* (a string from spec.LOWERINGS) instead of holding export/verify code. export/intplan.py
dispatches on that kind, export/integer.py keeps one writer and verify/int_sim.py one executor per kind,
and tests/test_opspec.py checks that both cover every kind the registry declares and that runtime/ops'
kernels match the specs' runtime_kernel names.
"""
