"""Operator knowledge, one record per ONNX op.

- simulate.py: the torch implementation of each op (OPS), used by sim/, calib/, export/ and verify/.
- spec.py: OpSpec (op type, torch function, role in the quant graph, integer-lowering kind, runtime kernel).
- registry.py: REGISTRY (op type -> OpSpec), built from one line per op family.

The import order stays one-way (quant -> ops -> graph -> ... -> export -> verify): a spec names its integer
lowering by *kind* (a string from spec.LOWERINGS) instead of holding export/verify code. export/intplan.py
dispatches on that kind, export/integer.py keeps one writer and verify/int_sim.py one executor per kind,
and tests/test_opspec.py checks that both cover every kind the registry declares and that runtime/ops'
kernels match the specs' runtime_kernel names.
"""
