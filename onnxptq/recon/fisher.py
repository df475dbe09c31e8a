"""Output gradients for the Fisher-diagonal loss (BRECQ Eq. 10-11, Algorithm 1 line 2).

For a region, the model is quantized up to and including the region (earlier regions already
reconstructed, this one at its starting point) and float after it; the gradient of
KL(softmax(float logits) || softmax(these logits)) with respect to the region's output tensors is
computed by autograd, per sample (the KL is summed over the batch, so a sample's gradient does not
depend on the others). Only activation gradients are taken: weights do not require grad.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..sim.model import SimModel
from .cache import ActivationStore, Cached
from .streams import Frontier, SideTensors, consumed_inputs, set_quant_state


def kl_float_quant(float_logits: torch.Tensor, quant_logits: torch.Tensor) -> torch.Tensor:
    """sum over samples of KL(softmax(float) || softmax(quant)) (the L of BRECQ Eq. 11 on logits)."""
    f = float_logits.flatten(1).double()
    q = quant_logits.flatten(1).double()
    lp_f = F.log_softmax(f, dim=1)
    return (lp_f.exp() * (lp_f - F.log_softmax(q, dim=1))).sum()


@torch.no_grad()
def float_logits(sim: SimModel, front: Frontier, store: ActivationStore, side: SideTensors, batch: int,
                 device: torch.device) -> Cached:
    """The float model's first output over the whole frontier (position 0, float inputs)."""
    out_name = sim.qg.outputs[0]
    set_quant_state(sim, False)
    cache = None
    for i in range(0, front.n, batch):
        sl = slice(i, min(i + batch, front.n))
        env = {t: c.read(sl).to(device) for t, c in front.tensors.items()}
        env.update(side(sl.stop - sl.start))
        y = sim.run_nodes(env, front.pos)[out_name]
        if cache is None:
            cache = store.new("float_logits", front.n, tuple(y.shape[1:]), np.float32)
        cache.write(i, y.float())
    return cache


def output_gradients(sim: SimModel, front: Frontier, start: int, stop: int, outputs: list[str], logits: Cached,
                     store: ActivationStore, side: SideTensors, batch: int,
                     device: torch.device) -> tuple[dict[str, Cached], dict[str, float]]:
    """d KL / d z for every tensor z in ``outputs`` of nodes [start, stop), from the quantized
    frontier ``front`` at ``start``. Returns the gradients and their mean squares over all samples."""
    out_name = sim.qg.outputs[0]
    grads: dict[str, Cached] = {}
    sq = {t: 0.0 for t in outputs}
    count = {t: 0 for t in outputs}
    consumed = consumed_inputs(sim, front, start, stop)
    for i in range(0, front.n, batch):
        sl = slice(i, min(i + batch, front.n))
        env = {t: front.tensors[t].read(sl).to(device) for t in consumed}
        env.update(side(sl.stop - sl.start))
        set_quant_state(sim, True)
        with torch.no_grad():
            env = sim.run_nodes(env, start, stop)
        zs = []
        for t in outputs:
            env[t] = env[t].detach().requires_grad_(True)
            zs.append(env[t])
        # the rest of the network in float; other live tensors (a skipped shortcut) come from the frontier
        for t in front.tensors:
            if t not in env and t not in consumed:
                env[t] = front.tensors[t].read(sl).to(device)
        set_quant_state(sim, False)
        with torch.enable_grad():
            y = zs[outputs.index(out_name)] if out_name in outputs else sim.run_nodes(env, stop)[out_name]
            loss = kl_float_quant(logits.read(sl).to(device), y)
            gs = torch.autograd.grad(loss, zs, allow_unused=True)
        for t, z, g in zip(outputs, zs, gs):
            g = torch.zeros_like(z) if g is None else g.detach().float()
            if t not in grads:
                grads[t] = store.new(f"grad_{t}", front.n, tuple(g.shape[1:]), np.float32)
            grads[t].write(i, g)
            sq[t] += float(g.double().pow(2).sum())
            count[t] += g.numel()
    return grads, {t: sq[t] / max(count[t], 1) for t in outputs}
