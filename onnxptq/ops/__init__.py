"""Operator knowledge: how each ONNX op simulates in torch (simulate.py)."""
