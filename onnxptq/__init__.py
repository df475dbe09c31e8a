"""onnxptq: ONNX-to-ONNX post-training quantization with a bundled NumPy integer runtime."""
__version__ = "0.1.0"

from .config import QuantConfig  # noqa: E402


def quantize(*args, **kwargs):
    """See ``onnxptq.api.quantize`` (imported lazily: torch loads only when needed)."""
    from .api import quantize as _quantize

    return _quantize(*args, **kwargs)


def quantize_with_accuracy_control(*args, **kwargs):
    """See ``onnxptq.api.quantize_with_accuracy_control``: quantize, then change the most sensitive layers until a
    metric (or output SQNR) target holds."""
    from .api import quantize_with_accuracy_control as _qwac

    return _qwac(*args, **kwargs)


def inspect(*args, **kwargs):
    from .api import inspect as _inspect

    return _inspect(*args, **kwargs)


def evaluate(*args, **kwargs):
    from .api import evaluate as _evaluate

    return _evaluate(*args, **kwargs)


def bench_models(*args, **kwargs):
    """See ``onnxptq.deploy.bench.bench_models``: latency and integer-kernel coverage in onnxruntime/OpenVINO."""
    from .deploy.bench import bench_models as _bench

    return _bench(*args, **kwargs)


__all__ = ["QuantConfig", "quantize", "quantize_with_accuracy_control", "inspect", "evaluate", "bench_models",
           "__version__"]
