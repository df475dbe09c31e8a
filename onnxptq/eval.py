"""Accuracy (when labels exist) and fidelity of a quantized model against its float original.

Fidelity metrics on the model's first output (logits): top-1 agreement, top-5 containment (the
float top-1 class is among the quantized top-5), KL(float || quantized) of the softmaxes, and
output SQNR in dB = 10 log10(sum y_f^2 / sum (y_f - y_q)^2).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Fidelity:
    samples: int
    sqnr_db: float
    top1_agreement: float
    top5_containment: float
    kl: float
    float_accuracy: float | None = None
    quant_accuracy: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float("inf") if noise == 0 else 10.0 * np.log10(signal / noise)


def fidelity(float_out: np.ndarray, quant_out: np.ndarray, labels: np.ndarray | None = None) -> Fidelity:
    f = float_out.reshape(len(float_out), -1)
    q = quant_out.reshape(len(quant_out), -1)
    top1_f, top1_q = f.argmax(1), q.argmax(1)
    k = min(5, f.shape[1])
    top5_q = np.argpartition(-q, k - 1, axis=1)[:, :k]
    lp_f, lp_q = _log_softmax(f), _log_softmax(q)
    kl = float(np.mean(np.sum(np.exp(lp_f) * (lp_f - lp_q), axis=1)))
    out = Fidelity(samples=len(f), sqnr_db=sqnr_db(f, q), top1_agreement=float(np.mean(top1_f == top1_q)),
                   top5_containment=float(np.mean((top5_q == top1_f[:, None]).any(1))), kl=kl)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        out.float_accuracy = float(np.mean(top1_f == labels))
        out.quant_accuracy = float(np.mean(top1_q == labels))
    return out


def session_batch(sess, batch_size: int) -> int:
    """``batch_size``, or the batch an onnxruntime session's inputs fix (a graph exported with batch 1 runs one
    sample at a time)."""
    fixed = {i.shape[0] for i in sess.get_inputs() if i.shape and isinstance(i.shape[0], int)}
    return fixed.pop() if len(fixed) == 1 else batch_size


def run_onnxruntime(model, inputs: dict[str, np.ndarray], batch_size: int = 32, threads: int | None = None) -> np.ndarray:
    """First output of ``model`` (path or bytes) over ``inputs`` in batches (batch 1 if the batch dim is fixed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model if isinstance(model, (str, bytes)) else str(model), so,
                                providers=["CPUExecutionProvider"])
    bs = session_batch(sess, batch_size)
    n = len(next(iter(inputs.values())))
    outs = [sess.run(None, {k: v[i:i + bs] for k, v in inputs.items()})[0] for i in range(0, n, bs)]
    return np.concatenate(outs)
