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


def padded_rows(start: int, size: int, n: int) -> np.ndarray:
    """Row indices of a run of ``size`` samples from ``start`` among ``n``: past the last sample, copies of it
    (the filling of a last run of a fixed batch that does not divide the samples)."""
    return np.minimum(np.arange(start, start + size), n - 1)


def kept_rows(length: int, size: int, real: int) -> int:
    """Rows to keep of a tensor of first axis ``length`` from a run of ``size`` samples holding ``real`` real
    ones (the rest ``padded_rows`` copies): the first ``real`` of every ``length // size`` rows per sample,
    which is batch-major layouts, merged rows (batch x tokens) included; everything when nothing is padded
    or the axis is not a multiple of the batch."""
    return length // size * real if real < size and length % size == 0 else length


def session_feeds(sess, inputs: dict[str, np.ndarray], batch_size: int):
    """(feeds, trim) for ``inputs`` in runs of ``session_batch(sess, batch_size)`` samples; ``trim(output)``
    keeps an output's rows of real samples. Where the session fixes a batch that does not divide the samples,
    the last run is filled with copies of the last sample, whose rows ``trim`` drops (``kept_rows``), as the
    simulation does (sim/model.py run_nodes)."""
    fixed = session_batch(sess, 0)  # 0: the inputs do not fix the batch
    bs = fixed or batch_size
    n = len(next(iter(inputs.values())))
    for i in range(0, n, bs):
        if not fixed or i + bs <= n:
            yield {k: v[i:i + bs] for k, v in inputs.items()}, (lambda out: out)
        else:
            real = n - i
            yield ({k: v[padded_rows(i, bs, n)] for k, v in inputs.items()},
                   lambda out, real=real: out[:kept_rows(len(out), bs, real)])


def run_onnxruntime(model, inputs: dict[str, np.ndarray], batch_size: int = 32, threads: int | None = None) -> np.ndarray:
    """First output of ``model`` (path or bytes) over ``inputs`` in batches (batch 1 if the batch dim is fixed)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model if isinstance(model, (str, bytes)) else str(model), so,
                                providers=["CPUExecutionProvider"])
    return np.concatenate([trim(sess.run(None, feed)[0]) for feed, trim in session_feeds(sess, inputs, batch_size)])
