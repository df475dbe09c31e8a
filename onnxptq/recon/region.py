"""One region's trainable state while it is reconstructed (BRECQ Algorithm 1, steps 3-4): RAPQ's Po2 scale group
(Eq. 11-12), the learned rounding (``recon/roundings.py``), hard rounding written back on-grid, bias correction
of the result (Nagel et al. 2019 Eq. 13), learned activation steps (LSQ) and QDrop mixing, and snapshots for
the guard. ``recon/engine.py`` runs the phases over it."""
from __future__ import annotations

import numpy as np
import torch

from ..calib.calibrate import bias_shift, float_scale, integer_weights
from ..config import QuantConfig
from ..quant import QParams, dequantize, quantize
from ..quant import scales as S
from ..sim.model import SimModel
from .adaround import within_one_step
from .attention_round import beyond_neighbors
from .lsq import LearnedStep
from .po2_group import Po2ScaleGroup
from .roundings import ROUNDINGS
from .weight_gain import WeightGain, folded_scale
from .settings import ReconSettings
from .streams import Span, produced


STEP_HEADROOM = 4.0
"""A learned step (LSQ) may shrink to 1/STEP_HEADROOM of its calibrated value before an int32 bias of a reader
in the same region limits it: such readers' weight scales get that headroom before their rounding is learned
(only channels whose weights are ~0 change: ``quant.scales.bias_safe_weight_scale``)."""


class Region:
    """One region's trainable state while it is reconstructed."""

    def __init__(self, sim: SimModel, span: Span, st: ReconSettings, gen_dev: torch.Generator | None) -> None:
        self.sim, self.span, self.st = sim, span, st
        self.layers = [n.layer for n in sim.nodes[span.start:span.stop] if n.layer is not None]
        self.acts = [o for o in produced(sim, span.start, span.stop) if o in sim.qg.quant_points]
        self.rounders: dict[str, torch.nn.Module] = {}  # layer -> learned rounding (recon/roundings.py)
        self.groups: dict[str, Po2ScaleGroup] = {}
        self.gains: dict[str, WeightGain] = {}  # layer -> learned step gain (float scales, recon/weight_gain.py)
        self.steps: dict[str, LearnedStep] = {}
        self.originals = {}
        self.gen_dev = gen_dev
        self.gen: torch.Generator | None = None  # CPU generator of the phase (Attention Round's alpha init)

    # ---------------------------------------------------------------- RAPQ Po2 scale group
    @torch.no_grad()
    def start_scale_group(self, cfg: QuantConfig) -> None:
        """Soft Po2 exponents between the two powers of two around each channel's float L_p scale (Eq. 11)."""
        sim = self.sim
        for layer in self.layers:
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight).detach()
            sim.bias_delta.pop(layer.name, None)  # RTN's correction belongs to the RTN scales
            s0, z0 = float_scale(w, fq.params.grid, cfg.w_symmetric, layer.weight_axis, cfg, cfg.w_scale_method)
            s0, z0 = s0.detach().cpu(), z0.detach().cpu()
            g = Po2ScaleGroup(s0.numpy(), tuple(fq.scale.shape)).to(w.device)
            fq.set_params(QParams(fq.params.grid, fq.params.scale, z0.numpy(), fq.params.axis, True), w.dim())
            fq.scale_fn = g
            self.groups[layer.name] = (g, s0, z0)

    @torch.no_grad()
    def finish_scale_group(self) -> None:
        """Snap every exponent to floor(log2 s0) + [h >= 0.5] and freeze the exact Po2 scales."""
        sim = self.sim
        for layer in self.layers:
            g, s0, z0 = self.groups.pop(layer.name)
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight)
            scale = torch.from_numpy(g.snapped().reshape(-1))
            grid = fq.params.grid
            zp = S.po2_zero_point(s0.float(), z0.float(), scale, grid)
            if layer.bias:
                scale = S.bias_safe_weight_scale(scale, sim.weight(layer.bias).detach().cpu(), self._input_scale(layer),
                                                 True)
            fq.scale_fn = None
            fq.set_params(QParams(grid, scale.numpy().astype(np.float32), zp.numpy(), fq.params.axis, True), w.dim())

    # ---------------------------------------------------------------- rounding
    @torch.no_grad()
    def start_rounding(self, gain: bool = False) -> None:
        """Learned rounding for every layer of the region; ``gain``: also a learned per-channel gain on each
        float weight step (``recon/weight_gain.py``; power-of-two steps keep theirs)."""
        sim = self.sim
        for layer in self.layers:
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight)
            headroom = self._step_learned_here(layer)
            if layer.bias and (layer.name in sim.bias_delta or headroom):
                # RTN bias correction compensates RTN's error; the learned rounding replaces it
                sim.bias_delta.pop(layer.name, None)
                p = fq.params
                s_x = self._input_scale(layer) / (STEP_HEADROOM if headroom else 1.0)
                safe = S.bias_safe_weight_scale(torch.from_numpy(p.scale), sim.weight(layer.bias).detach().cpu(),
                                                s_x, p.po2)
                if not torch.equal(safe, torch.from_numpy(p.scale)):
                    fq.set_params(QParams(p.grid, safe.numpy(), p.zero_point, p.axis, p.po2), w.dim())
            r = ROUNDINGS[self.st.rounding](w.detach() / fq.scale, fq.scale, self.st, self.gen)
            fq.round_fn = r
            self.rounders[layer.name] = r
            if gain and not fq.params.po2:
                g = WeightGain(tuple(fq.scale.shape)).to(w.device)
                fq.gain_fn = g
                self.gains[layer.name] = g

    @torch.no_grad()
    def finish_rounding(self) -> tuple[float, float]:
        """Hard rounding, written back as on-grid float weights; checked exactly (AdaRound: also within
        one step of the float weight). Returns the fraction of offsets that were still undecided and the
        fraction of weights that landed beyond their two nearest grid points (Attention Round)."""
        sim = self.sim
        undecided, far, counts = [], [], []
        for layer in self.layers:
            r = self.rounders.pop(layer.name)
            undecided.append(r.undecided())
            fq = sim.weight_quantizer(layer.name)
            w = sim.weight(layer.weight)
            r.hard = True
            grid = fq.params.grid
            q = quantize(w.detach(), fq.scale, fq.zero_point, grid, r)
            w_float = w.detach().cpu().numpy().copy()
            fq.round_fn = None
            q_np = q.cpu().numpy().astype(np.int64)
            scale, zp = fq.params.shaped_for(w.dim())  # the calibrated step: the grid the rounding chose on
            t = w_float / scale.astype(np.float64) + zp
            far.append(beyond_neighbors(q_np, t, grid.qmin, grid.qmax))
            counts.append(q_np.size)
            near = not r.WITHIN_ONE_STEP or within_one_step(q_np, w_float, scale, zp, grid.qmin, grid.qmax)
            g = self.gains.pop(layer.name, None)
            if g is not None:  # the integers stay; the learned gain folds into the step (s' = s g)
                fq.gain_fn = None
                self._fold_gain(layer, folded_scale(fq.params.scale, g.gain()))
            w.copy_(dequantize(q, fq.scale, fq.zero_point))
            ints = integer_weights(sim, layer.name)
            if not (np.array_equal(ints, q_np) and np.all(q_np == np.round(q_np)) and q_np.min() >= grid.qmin
                    and q_np.max() <= grid.qmax and near):
                raise RuntimeError(f"learned rounding of {layer.name!r} is not exactly on its grid"
                                   f"{' within one step' if r.WITHIN_ONE_STEP else ''}")
        if not undecided:
            return 0.0, 0.0
        return float(np.mean(undecided)), float(np.average(far, weights=counts))

    @torch.no_grad()
    def _fold_gain(self, layer, scale: np.ndarray) -> None:
        """Set ``layer``'s weight step to the folded ``scale``, raised where its int32 bias needs it (as at
        calibration: ``quant.scales.bias_safe_weight_scale``, with the headroom of a step learned later)."""
        fq = self.sim.weight_quantizer(layer.name)
        p = fq.params
        fq.set_params(QParams(p.grid, scale, p.zero_point, p.axis, p.po2), len(layer.weight_shape))
        if layer.bias:
            self._fit_weight_scale(layer, self._input_scale(layer) / (STEP_HEADROOM if self._step_learned_here(layer)
                                                                      else 1.0))

    @torch.no_grad()
    def correct_bias(self, float_weights: dict[str, torch.Tensor]) -> None:
        """Bias correction (Nagel et al. 2019, Eq. 13) of the hard learned rounding: the biases absorb
        E[(W_q - W) x] from the calibration data's float input means, as after RTN; a layer whose
        corrected int32 bias would leave its range keeps no correction."""
        sim = self.sim
        for layer in self.layers:
            mean = sim.input_means.get(layer.name)
            if not layer.bias or mean is None:
                continue
            w_q = sim.weight(layer.weight).detach()
            delta = bias_shift(layer, float_weights[layer.weight].to(w_q.device), w_q, mean.to(w_q.device))
            if self._bias_in_range(layer, sim.weight(layer.bias).detach() - delta, self._input_scale(layer)):
                sim.bias_delta[layer.name] = delta

    @torch.no_grad()
    def snapshot(self) -> dict:
        """The region's quantizer state (weights, weight/activation parameters, bias corrections)."""
        sim = self.sim
        return {"weights": {x.name: sim.weight(x.weight).detach().clone() for x in self.layers},
                "w_params": {x.name: sim.weight_quantizer(x.name).params for x in self.layers},
                "bias_delta": {x.name: sim.bias_delta[x.name] for x in self.layers if x.name in sim.bias_delta},
                "a_params": {t: sim.act_quantizer(t).params for t in self.acts}}

    @torch.no_grad()
    def restore(self, snap: dict) -> None:
        sim = self.sim
        for x in self.layers:
            sim.weight(x.weight).copy_(snap["weights"][x.name])
            sim.weight_quantizer(x.name).set_params(snap["w_params"][x.name], len(x.weight_shape))
            sim.bias_delta.pop(x.name, None)
            if x.name in snap["bias_delta"]:
                sim.bias_delta[x.name] = snap["bias_delta"][x.name]
        for t, p in snap["a_params"].items():
            if p is not None:
                sim.act_quantizer(t).set_params(p)

    # ---------------------------------------------------------------- activation steps / QDrop
    def install_steps(self, learn: bool, drop_prob: float) -> None:
        """Learned-step quantizers at the region's activation points (``LearnedStep``: points wider than
        8 bits keep their calibrated step)."""
        for t in self.acts:
            orig = self.sim.act_quantizer(t)
            if orig.params is None:
                continue
            ls = LearnedStep(orig, learn, drop_prob, self.gen_dev)
            self.originals[t] = self.sim.set_act_quantizer(t, ls)
            self.steps[t] = ls

    def set_acts(self, enabled: bool) -> None:
        for ls in self.steps.values():
            ls.enabled = enabled

    def train(self, mode: bool) -> None:
        for ls in self.steps.values():
            ls.train(mode)

    @torch.no_grad()
    def finish_steps(self) -> tuple[list[str], list[str]]:
        """Learned steps become the quantizers' scales; the original quantizers go back in place.

        A learned step must keep every reader's int32 bias in range (``quant.scales.bias_limit``). Readers in
        later regions (weights not rounded yet) get the smallest weight-scale raise that fits
        (``bias_safe_weight_scale``: only channels whose weights are ~0 change, as at calibration); readers in
        this region have fixed weights, so the step is raised to the smallest one at which their biases fit
        (``bias_safe_act_scale``), between the learned and the calibrated step. Returns (quant points kept at
        their calibrated step, quant points whose learned step was raised)."""
        sim = self.sim
        kept, clamped = [], []
        for t, ls in self.steps.items():
            orig = self.originals[t]
            sim.set_act_quantizer(t, orig)
            new = ls.learned_params()
            if new is ls.params:
                continue
            if np.size(new.scale) != 1:  # a per-channel step has no single int32 bias scale to check
                kept.append(t)
                continue
            learned = float(np.asarray(new.scale).reshape(()))
            calibrated = float(np.asarray(ls.params.scale).reshape(()))
            if learned == calibrated:
                continue
            inside, later = self._readers(t)
            biases = {x.name: sim.effective_bias(x, quantized_weights=True).detach().cpu() for x in inside}
            s_x = learned
            for x in inside:
                s_w = torch.from_numpy(sim.weight_quantizer(x.name).params.scale)
                s_x = S.bias_safe_act_scale(s_x, biases[x.name], s_w, bool(new.po2),
                                            margin=0.0 if new.po2 else S.FLOAT32_MARGIN)
            s32 = np.float32(s_x)
            if float(s32) == calibrated or not all(self._bias_in_range(x, biases[x.name], float(s32)) for x in inside):
                kept.append(t)
                continue
            for x in later:
                self._fit_weight_scale(x, float(s32))
            orig.set_params(QParams(new.grid, np.full_like(new.scale, s32), new.zero_point, new.axis, new.po2))
            if float(s32) != learned:
                clamped.append(t)
        self.steps.clear()
        self.originals.clear()
        return kept, clamped

    def _step_learned_here(self, layer) -> bool:
        """``layer``'s input is a quant point of this region whose step will be learned."""
        return self.st.learn_steps != "none" and self.sim.qg.source.get(layer.input) in self.acts

    def _readers(self, tensor: str) -> tuple[list, list]:
        """Layers with a bias that read ``tensor``: (in this region or before it, in later regions)."""
        sim = self.sim
        later_layers = {n.layer.name for n in sim.nodes[self.span.stop:] if n.layer is not None}
        inside, later = [], []
        for x in sim.qg.layers:
            if x.bias and sim.qg.source.get(x.input) == tensor:
                (later if x.name in later_layers else inside).append(x)
        return inside, later

    @torch.no_grad()
    def _fit_weight_scale(self, layer, s_x: float) -> None:
        """Raise ``layer``'s weight scales just enough for its int32 bias at input step s_x (weights not rounded yet, or
        a folded gain whose integers are written back afterwards)."""
        fq = self.sim.weight_quantizer(layer.name)
        p = fq.params
        safe = S.bias_safe_weight_scale(torch.from_numpy(p.scale), self.sim.effective_bias(
            layer, quantized_weights=True).detach().cpu(), s_x, bool(p.po2), margin=S.FLOAT32_MARGIN)
        if not torch.equal(safe, torch.from_numpy(p.scale)):
            fq.set_params(QParams(p.grid, safe.numpy(), p.zero_point, p.axis, p.po2), len(layer.weight_shape))

    def _bias_in_range(self, layer, bias: torch.Tensor, s_x: float) -> bool:
        """|bias| / (s_x s_w) within ``quant.scales.bias_limit`` for every channel of ``layer``."""
        s_w = torch.from_numpy(self.sim.weight_quantizer(layer.name).params.scale)
        return bool(S.bias_in_range(bias.cpu(), s_x, s_w).all())

    def _input_scale(self, layer) -> float:
        return self.sim.input_scale(layer)

    def parameters(self, which: str) -> list[torch.nn.Parameter]:
        if which == "rounding":
            return [p for r in self.rounders.values() for p in r.parameters()]
        if which == "scales":
            return [g.v for g, *_ in self.groups.values()]
        if which == "gains":
            return [g.t for g in self.gains.values()]
        return [ls.step for ls in self.steps.values() if ls.learn]

    def regularizer(self, beta: float) -> torch.Tensor:
        return sum(r.regularizer(beta) for r in self.rounders.values())  # AdaRound Eq. 28; Attention Round: 0

    def group_regularizer(self, beta: float) -> torch.Tensor:
        return sum(g.regularizer(beta) for g, *_ in self.groups.values())
