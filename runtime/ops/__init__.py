"""The runtime's ops: ``registry.py`` holds the registry and the node view the kernels see; each family module
(activation, cast, conv, ...) registers its ops there when this package is imported."""

from __future__ import annotations

from . import (  # noqa: F401  (imported for the side effect of registering their ops)
    activation,
    cast,
    conv,
    elementwise,
    matmul,
    norm,
    pool,
    quant,
    reduce,
    resize,
    tensor,
)
from .registry import REGISTRY, CheckFn, Node, OpFn, OpSpec, const_cached, register  # noqa: F401

SUPPORTED_OPS: frozenset[str] = frozenset(REGISTRY)
