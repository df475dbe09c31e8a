"""Inference-mode BatchNormalization and Dropout (so un-folded float models also run).

BatchNormalization-9/14/15: ``y = (x - mean) / sqrt(var + epsilon) * scale + B`` per channel
(axis 1). Training mode (attribute ``training_mode=1`` or the running-statistics outputs) is
unsupported. Dropout-12/13/22 at inference is the identity; its optional mask is all True.
"""

from __future__ import annotations

import numpy as np

from ..dtypes import compute_float
from .registry import Node, const_cached, register


def _check_bn(node: Node) -> None:
    if node.attr("training_mode", 0):
        raise node.unsupported("training_mode=1")
    if node.n_outputs > 1:
        raise node.unsupported("running mean/variance outputs (training mode)")
    if node.opset < 9 and not node.attr("spatial", 1):
        raise node.unsupported("spatial=0")


@register("BatchNormalization", check=_check_bn)
def batch_norm(
    node: Node, x: np.ndarray, scale: np.ndarray, b: np.ndarray, mean: np.ndarray, var: np.ndarray
) -> np.ndarray:
    """Computed as x * a + c with a = scale / sqrt(var + eps), c = B - mean * a (per channel)."""
    dt = compute_float(x.dtype)
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def coeffs():
        eps = dt.type(node.attr("epsilon", 1e-5))
        a = scale.astype(dt) / np.sqrt(var.astype(dt) + eps)
        c = b.astype(dt) - mean.astype(dt) * a
        return a.reshape(shape), c.reshape(shape)

    a, c = const_cached(node, "bn", (1, 2, 3, 4), coeffs)
    y = x.astype(dt, copy=False) * a
    y += c
    return y.astype(x.dtype, copy=False)


def _check_dropout(node: Node) -> None:
    if node.opset < 7 and not node.attr("is_test", 0):
        raise node.unsupported("training-mode Dropout (is_test=0)")


@register("Dropout", check=_check_dropout)
def dropout(node: Node, x: np.ndarray, ratio: np.ndarray | None = None, training: np.ndarray | None = None):
    if training is not None and bool(np.asarray(training).reshape(-1)[0]):
        raise node.unsupported("training_mode=True (random masks)")
    if node.n_outputs > 1:
        return x, np.ones(x.shape, dtype=np.bool_)
    return x
