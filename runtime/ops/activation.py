"""Activation functions: Relu, LeakyRelu, PRelu, Sigmoid, Tanh, HardSigmoid, HardSwish, Softmax,
LogSoftmax. Computed in the input's float dtype (Relu also for integer types, Relu-14).
"""

from __future__ import annotations

import numpy as np

from .registry import Node, register


@register("Relu")
def relu(node: Node, x: np.ndarray) -> np.ndarray:
    return np.maximum(x, x.dtype.type(0))


@register("LeakyRelu")
def leaky_relu(node: Node, x: np.ndarray) -> np.ndarray:
    alpha = x.dtype.type(node.attr("alpha", 0.01))
    return np.where(x < 0, x * alpha, x)


@register("PRelu")
def prelu(node: Node, x: np.ndarray, slope: np.ndarray) -> np.ndarray:
    return np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)


@register("Sigmoid")
def sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(-x)), evaluated without overflow on either side."""
    e = np.exp(-np.abs(x))
    one = x.dtype.type(1)
    return np.where(x >= 0, one / (one + e), e / (one + e)).astype(x.dtype, copy=False)


register("Tanh")(lambda node, x: np.tanh(x))


@register("HardSigmoid")
def hard_sigmoid(node: Node, x: np.ndarray) -> np.ndarray:
    """max(0, min(1, alpha * x + beta)), alpha = 0.2, beta = 0.5 by default."""
    alpha = x.dtype.type(node.attr("alpha", 0.2))
    beta = x.dtype.type(node.attr("beta", 0.5))
    return np.clip(x * alpha + beta, x.dtype.type(0), x.dtype.type(1))


@register("HardSwish")
def hard_swish(node: Node, x: np.ndarray) -> np.ndarray:
    """x * max(0, min(1, x / 6 + 0.5)) (HardSwish-14: alpha = 1/6, beta = 0.5)."""
    alpha = x.dtype.type(1.0 / 6.0)
    beta = x.dtype.type(0.5)
    return x * np.clip(x * alpha + beta, x.dtype.type(0), x.dtype.type(1))


def _softmax_axis(node: Node, x: np.ndarray, log: bool) -> np.ndarray:
    if node.opset < 13:
        # Softmax-1/11: coerce to 2-D at `axis` (default 1) and normalise each row.
        axis = node.attr("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        y = _softmax(x.reshape(rows, -1), 1, log)
        return y.reshape(x.shape)
    return _softmax(x, node.attr("axis", -1), log)


def _softmax(x: np.ndarray, axis: int, log: bool) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    z = x - m
    e = np.exp(z)
    s = np.sum(e, axis=axis, keepdims=True)
    if log:
        return z - np.log(s)
    return e / s


@register("Softmax")
def softmax(node: Node, x: np.ndarray) -> np.ndarray:
    return _softmax_axis(node, x, log=False)


@register("LogSoftmax")
def log_softmax(node: Node, x: np.ndarray) -> np.ndarray:
    return _softmax_axis(node, x, log=True)
