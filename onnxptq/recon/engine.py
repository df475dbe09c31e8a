"""The reconstruction engine (BRECQ Algorithm 1, with AdaRound and QDrop as options).

For each region of the partition, in execution order:
1. the region's input is taken from the already-quantized model (the quantized frontier) and its
   float output from the float model (the float frontier advanced through the region);
2. for the Fisher loss, the output gradients of KL(float || quantized logits) (``fisher.py``);
3. the region's rounding variables (AdaRound, ``adaround.py``) and/or activation step sizes
   (LSQ, ``lsq.py``) are optimized with Adam on the region loss (``losses.py``) over random
   minibatches of the cached samples;
4. the rounding is made hard: the chosen integers are written back as the float weights
   (q - z) * s, which re-quantize exactly to them, so ``integer_weights`` and the exporters see
   the same integers as the simulation; learned steps become the quantizers' scales;
5. the quantized frontier moves through the finished region; a checkpoint is written; its fallbacks
   (region back to RTN, steps kept, bias correction dropped: ``fallbacks.py``) go into the run's diagnostics.
Held-out samples: the last ``held_out(n) = min(64, n // 8)`` calibration samples are never drawn into a
training minibatch; the region loss that decides whether to keep the reconstruction (``recon_guard``: revert to
RTN when it ends above the calibrated loss) or a re-applied bias correction is measured on them, as are the
reported ``loss_before`` / ``loss_after``. With fewer than 8 samples nothing is held out and the decisions are
measured on the training samples.
Deterministic for a seed: minibatches and QDrop masks come from per-region generators, and resuming
from a checkpoint recomputes the frontiers exactly.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict

import numpy as np
import torch
from tqdm import tqdm

from ..config import QuantConfig
from ..errors import ConfigError
from ..data import Dataset
from ..diagnostics import Diagnostics
from ..graph.partition import partition
from ..memory import trim_heap
from ..plan import BitPlan
from ..run_context import RunContext
from ..sim.layout import channels_last
from ..sim.model import SimModel
from . import checkpoint as ckpt
from .adaround import beta_at
from .cache import ActivationStore, Cached
from .crops import Crop, CropSampler, footprint
from .fallbacks import record
from .float_weights import FloatWeights
from .fisher import float_logits, output_gradients
from .optim import Adam
from .results import ReconReport, RegionResult
from .region import Region
from .losses import LOSSES, NEEDS_GRADIENTS, fisher_weights, region_loss
from .settings import resolve
from .streams import (Frontier, SideTensors, Span, advance, consumed_inputs, input_frontier, live_after,
                      produced, region_spans, set_quant_state)

log = logging.getLogger(__name__)
EVAL_SAMPLES = 64  # at most this many held-out samples (the decisions' loss; module doc)
MEASURE_CHUNK = 16  # samples per forward pass of that measurement
STEP_TENSORS = 6  # tensors kept per produced tensor in a training step (memory estimate, ``_step_bytes``)


def held_out(n: int) -> int:
    """How many of ``n`` calibration samples (the last ones) are held out of training (module doc)."""
    return min(EVAL_SAMPLES, n // 8)


class _PhaseClock:
    """Seconds of a region's reconstruction by what they were spent on (``RegionResult.phase_seconds``)."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def tick(self, what: str) -> None:
        """Charge the time since the previous tick to ``what``."""
        now = time.perf_counter()
        self._seconds[what] = self._seconds.get(what, 0.0) + now - self._last
        self._last = now

    @property
    def seconds(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self._seconds.items()}


class Engine:
    def __init__(self, sim: SimModel, data: Dataset, cfg: QuantConfig, checkpoint_dir: str | None = None,
                 diag: Diagnostics | None = None) -> None:
        self.sim, self.cfg = sim, cfg
        self.diag = diag if diag is not None else Diagnostics()
        self.st = resolve(cfg)
        if self.st.loss not in LOSSES:
            raise ValueError(f"unknown reconstruction loss {self.st.loss!r}; registered: {sorted(LOSSES)}")
        self.loss_fn = LOSSES[self.st.loss]
        self.inputs = {k: v for k, v in data.inputs.items()}
        self.n = len(data)
        self.n_train = self.n - held_out(self.n)  # minibatches come from samples [0, n_train)
        self.device = sim.device
        self.spans = region_spans(sim, partition(sim.qg, self.st.granularity))
        self.batch = cfg.batch_size  # caching batch
        budget = cfg.cache_budget_mb
        if cfg.max_memory_mb is not None:
            from ..memory import cache_budget_mb, rss_bytes

            if rss_bytes() / 2**20 >= cfg.max_memory_mb:
                raise ConfigError(f"the process already uses {rss_bytes() / 2**20:.0f} MiB (model, calibration data, "
                                  f"torch) before reconstruction, above --max-memory {cfg.max_memory_mb:.0f} MiB: "
                                  "raise --max-memory or lower --num-calib")
            trim_heap()  # calibration's freed tensors must not count against the cache
            step = self._step_bytes() / 2**20
            budget = cache_budget_mb(cfg.max_memory_mb, reserve_mb=step)
            log.info("activation cache budget %.0f MiB under --max-memory %.0f MiB (%.0f MiB kept for one batch's "
                     "tensors)", budget, cfg.max_memory_mb, step)
        self.store = ActivationStore(budget, cfg.cache_dir)
        self.side = SideTensors(sim, {k: tuple(v.shape[1:]) for k, v in self.inputs.items()}, self.device)
        self.checkpoint_dir = checkpoint_dir
        self.fp = ckpt.fingerprint(sim, self.inputs, cfg) if checkpoint_dir else ""
        self.float_weights = FloatWeights(sim)

    # ---------------------------------------------------------------- helpers
    def _step_bytes(self) -> int:
        """Estimate of one batch's tensors at the largest region, which a memory budget must leave free: the
        training step keeps about STEP_TENSORS tensors per produced float tensor for the backward pass (the
        fake-quant chain's intermediates and their gradients), the caching pass about one."""
        qg = self.sim.qg

        def numel(t: str) -> int:
            dims = qg.shapes.get(t, ())[1:]
            return int(np.prod([d for d in dims if isinstance(d, int) and d > 0], dtype=np.int64)) if dims else 1

        per_sample = max((sum(numel(t) for t in produced(self.sim, s.start, s.stop) if t in qg.float_tensors)
                          for s in self.spans), default=0) * 4
        return per_sample * max(STEP_TENSORS * self.st.batch_size, self.batch)

    def _generators(self, k: int, phase: int) -> tuple[torch.Generator, torch.Generator]:
        seed = (self.st.seed * 1_000_003 + k * 101 + phase) % (2**63)
        g = torch.Generator().manual_seed(seed)
        gd = torch.Generator(device=self.device).manual_seed(seed + 1) if self.device.type != "cpu" else g
        return g, gd

    def _batch_env(self, qf: Frontier, ff: Frontier, names: list[str], idx, drop: float,
                   gen: torch.Generator | None, crop: Crop | None = None,
                   size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """The region inputs of minibatch ``idx``; on a ``crop``, each 4-D input of spatial ``size`` is read
        through the crop's window only (the rest of each sample is never copied)."""
        def window(t: str) -> tuple[slice, slice] | None:
            shape = qf.tensors[t].shape
            return crop.window if crop is not None and len(shape) == 3 and tuple(shape[1:]) == size else None

        env = {t: qf.tensors[t].read(idx, window(t)).to(self.device) for t in names}
        if drop > 0:
            for t in names:
                xf = ff.tensors[t].read(idx, window(t)).to(self.device)
                keep_float = torch.rand(xf.shape, generator=gen, device=self.device) < drop
                env[t] = torch.where(keep_float, xf, env[t])
        env = {t: channels_last(v) for t, v in env.items()}  # faster (depthwise) convolutions on CPU
        env.update(self.side(len(next(iter(env.values())))))
        return env

    def _region_loss(self, out: dict[str, torch.Tensor], targets: dict[str, Cached], weights, idx,
                     crop: Crop | None = None) -> torch.Tensor:
        """The region loss of a minibatch; on a crop (``crops.py``), over the outputs it computes exactly."""
        total = 0.0
        for t, tgt in targets.items():
            pred, full = out[t], None
            if crop is not None:
                (ch, cw), full = crop.outputs[t]
                pred = pred[..., ch, cw]
            w = None
            if weights is not None:
                g, ms = weights[t]
                w = fisher_weights(g.read(idx, full).to(self.device), ms, self.st.fisher_damping)
            total = total + self.loss_fn(pred, tgt.read(idx, full).to(self.device), w)
        return total

    def _crop_sampler(self, span: Span, qf: Frontier, names: list[str], targets: dict[str, Cached]
                      ) -> CropSampler | None:
        """Crops for the region's training steps (``st.crop`` < 1), or None where the region is not
        translation-equivariant (``crops.footprint``) or its input is too small to crop."""
        if self.st.crop >= 1.0 or not names:
            return None
        shapes = {t: (1, *qf.tensors[t].shape) for t in names}
        if any(len(targets[t].shape) != 3 for t in targets):
            return None
        reach = footprint(self.sim, span.start, span.stop, shapes, list(targets))
        if reach is None:
            return None
        in_size = next(s[2:] for s in shapes.values() if s[2:] != (1, 1))
        sampler = CropSampler(reach, in_size, {t: tuple(targets[t].shape[1:]) for t in targets}, self.st.crop)
        return sampler if sampler.active else None

    def _use_region_loss(self, span: Span, targets: dict[str, Cached]) -> tuple[float | None, str | None]:
        """Select the region's loss (``losses.region_loss``); returns its exponent and where it came from."""
        layers = [n.layer for n in self.sim.nodes[span.start:span.stop] if n.layer is not None]
        gamma = layers[-1].bn_gamma if layers else None
        first = next(iter(targets.values()))
        self.loss_fn, p, source = region_loss(self.st.loss, gamma,
                                              lambda: first.read(torch.arange(min(EVAL_SAMPLES, self.n))),
                                              self.st.lp_alpha, self.st.lp_beta)
        return p, source

    @torch.no_grad()
    def _measure(self, span: Span, qf: Frontier, targets, weights) -> float:
        """Region loss on the held-out samples (all samples when none are held out), computed MEASURE_CHUNK
        samples at a time (the loss is a mean over samples, so the chunks' means weighted by their sizes give
        it): a region's inner tensors at 64 samples of 112x112 would be a memory peak of their own."""
        first = self.n_train if self.n_train < self.n else 0
        m = self.n - first
        names = consumed_inputs(self.sim, qf, span.start, span.stop)
        total = 0.0
        for s in range(first, self.n, MEASURE_CHUNK):
            idx = torch.arange(s, min(s + MEASURE_CHUNK, self.n))
            env = self._batch_env(qf, qf, names, idx, 0.0, None)
            out = self.sim.run_nodes(env, span.start, span.stop)
            total += float(self._region_loss(out, targets, weights, idx)) * len(idx)
        return total / m

    # ---------------------------------------------------------------- main loop
    def run(self) -> ReconReport:
        t_all = time.perf_counter()
        st, sim = self.st, self.sim
        report = ReconReport(st.method, st.granularity, st.loss, self.n)
        done = 0
        if self.cfg.resume and self.checkpoint_dir:
            state = ckpt.load(self.checkpoint_dir, self.fp)
            if state is not None:
                ckpt.restore(sim, state)
                done = state["done"]
                report.regions = [RegionResult(**r) for r in state["report"]]
                report.resumed_regions = done
        self.diag.totals["region-rtn"] = len(self.spans)
        for r in report.regions:
            record(self.diag, r, self._bias_tried(r))
        layers_done = [x for r in report.regions for x in r.layers]
        total_iters = len(self.spans) * sum(n for _, n in st.phases)
        bar = tqdm(total=total_iters, initial=done * sum(n for _, n in st.phases), disable=not self.cfg.progress,
                   desc="reconstruction", unit="it", dynamic_ncols=True)
        was_training = sim.training
        sim.eval()
        try:
            set_quant_state(sim, True)
            qf = input_frontier(sim, self.inputs, self.store, True, self.batch, self.device)
            ff = input_frontier(sim, self.inputs, self.store, False, self.batch, self.device)
            logits = None
            if st.loss in NEEDS_GRADIENTS and done < len(self.spans):
                with self.float_weights:
                    logits = float_logits(sim, ff, self.store, self.side, self.batch, self.device)
            for k, span in enumerate(self.spans):
                if k < done:
                    continue
                t0 = time.perf_counter()
                clock = _PhaseClock()
                # 1. inputs (quantized model so far) and float targets
                for cut in self._cuts(qf.pos, span.start):
                    qf = self._replace(qf, advance(sim, qf, cut, self.store, self.side, True, self.batch,
                                                   self.device, "q"))
                    with self.float_weights:
                        ff = self._replace(ff, advance(sim, ff, cut, self.store, self.side, False, self.batch,
                                                       self.device, "f"))
                with self.float_weights:
                    ff_out = advance(sim, ff, span.stop, self.store, self.side, False, self.batch, self.device, "f")
                outputs = [t for t in live_after(sim, span.stop, produced(sim, span.start, span.stop))
                           if t in ff_out.tensors]
                targets = {t: ff_out.tensors[t] for t in outputs}
                lp = self._use_region_loss(span, targets)
                clock.tick("cache")
                # 2. Fisher weights at the starting point
                weights = None
                if st.loss in NEEDS_GRADIENTS:
                    grads, ms = output_gradients(sim, qf, span.start, span.stop, outputs, logits, self.store,
                                                 self.side, self.batch, self.device)
                    weights = {t: (grads[t], ms[t]) for t in outputs}
                    clock.tick("fisher")
                set_quant_state(sim, True)
                before = self._measure(span, qf, targets, weights)
                clock.tick("measure")
                # 3-4. optimize
                region = Region(sim, span, st, None)
                start_state = region.snapshot()
                result = self._optimize(k, span, region, qf, ff, targets, weights, bar, clock)
                set_quant_state(sim, True)
                result.loss_before = before
                result.lp_exponent, result.lp_source = lp
                result.loss_after = self._measure(span, qf, targets, weights)
                if self.cfg.recon_guard and result.loss_after > before:
                    region.restore(start_state)
                    result.reverted, result.loss_after = True, before
                    log.info("%s: reconstructed loss above the calibrated one; calibrated state kept", span.name)
                clock.tick("measure")
                # 5. move on with the quantized region's outputs
                new_qf = advance(sim, qf, span.stop, self.store, self.side, True, self.batch, self.device, "q")
                qf = self._replace(qf, new_qf)
                ff = self._replace(ff, ff_out)
                if weights is not None:
                    for g, _ in weights.values():
                        g.free()
                clock.tick("cache")
                result.seconds = time.perf_counter() - t0
                result.phase_seconds = clock.seconds
                report.regions.append(result)
                record(self.diag, result, self._bias_tried(result))
                layers_done += result.layers
                if self.checkpoint_dir:
                    ckpt.save(self.checkpoint_dir, self.fp, k + 1, sim, layers_done,
                              [asdict(r) for r in report.regions])
                log.info("%s: loss %.5g -> %.5g (%.1f s)", span.name, before, result.loss_after, result.seconds)
        finally:
            bar.close()
            sim.train(was_training)
            set_quant_state(sim, True)
            report.cache_spilled_mb = self.store.peak_disk_bytes / 2**20
            self.store.close()
        report.seconds = time.perf_counter() - t_all
        return report

    def _bias_tried(self, result: RegionResult) -> bool:
        """Whether ``_optimize`` tried a bias correction on the region of ``result`` (it learned a rounding)."""
        return (bool(result.layers) and self.cfg.bias_correction and bool(self.sim.input_means)
                and any(phase in ("rounding", "joint") for phase, _ in self.st.phases))

    def _bias_correct(self, span: Span, region: Region, qf: Frontier, targets, weights) -> bool:
        """Bias correction of the region's learned rounding, kept when it lowers the region loss (fully
        quantized) on the evaluation samples. Short schedules leave many offsets undecided; hard rounding
        then shifts channel means that the correction removes."""
        sim = self.sim
        set_quant_state(sim, True)
        plain = self._measure(span, qf, targets, weights)
        saved = {x.name: sim.bias_delta.pop(x.name) for x in region.layers if x.name in sim.bias_delta}
        region.correct_bias(self.float_weights.float)
        if self._measure(span, qf, targets, weights) < plain:
            return True
        for x in region.layers:
            sim.bias_delta.pop(x.name, None)
        sim.bias_delta.update(saved)
        return False

    def _cuts(self, pos: int, stop: int) -> list[int]:
        """The region boundaries in (pos, stop], then ``stop``: the positions a run without interruption advances
        the frontiers to. A resumed run advances through the same ones, so that every tensor it caches took the
        same path (layout conversions at each cut included) and holds the same bits."""
        cuts = sorted({b for s in self.spans for b in (s.start, s.stop) if pos < b < stop})
        return cuts + [stop] if pos < stop else []

    @staticmethod
    def _replace(old: Frontier, new: Frontier) -> Frontier:
        old.free_except(new)
        return new

    def _optimize(self, k: int, span: Span, region: Region, qf: Frontier, ff: Frontier, targets, weights,
                  bar, clock: _PhaseClock) -> RegionResult:
        st, sim = self.st, self.sim
        names = consumed_inputs(sim, qf, span.start, span.stop)
        result = RegionResult(span.name, [x.name for x in region.layers], 0.0, 0.0, 0.0, 0)
        sampler = self._crop_sampler(span, qf, names, targets)
        if sampler is not None:
            result.crop = sampler.share
        rounding_done = False
        for p_idx, (phase, iters) in enumerate(st.phases):
            gen, gen_dev = self._generators(k, p_idx)
            region.gen_dev, region.gen = gen_dev, gen
            learn_rounding = phase in ("rounding", "joint") and bool(region.layers)
            learn_scales = phase == "scales" and bool(region.layers)
            weight_phase = phase in ("rounding", "scales")  # BRECQ/RAPQ: activations float unless acts_during_rounding
            if learn_rounding:
                region.start_rounding(gain=st.w_scale_lr > 0)
            if learn_scales:
                region.start_scale_group(self.cfg)
            if phase in ("steps", "joint") or st.drop_prob > 0:
                region.install_steps(learn=phase in ("steps", "joint"), drop_prob=st.drop_prob)
            elif weight_phase:
                region.install_steps(learn=False, drop_prob=0.0)
            region.set_acts(not weight_phase or st.acts_during_rounding)
            groups = []
            if learn_rounding:
                groups.append({"params": region.parameters("rounding"), "lr": st.lr})
                if region.gains:
                    groups.append({"params": region.parameters("gains"), "lr": st.w_scale_lr})
            if learn_scales:
                groups.append({"params": region.parameters("scales"), "lr": st.lr})
            step_params = region.parameters("steps")
            if step_params:
                groups.append({"params": step_params, "lr": st.act_lr})
            if groups and iters > 0:
                opt = Adam(groups)
                region.train(True)
                drop = st.drop_prob if not weight_phase or st.acts_during_rounding else 0.0
                bar.set_description(f"[{k + 1}/{len(self.spans)}] {span.name} {phase}")
                for it in range(iters):
                    idx = torch.randperm(self.n_train, generator=gen)[:st.batch_size]
                    crop = sampler.draw(gen) if sampler is not None else None
                    env = self._batch_env(qf, ff, names, idx, drop, gen_dev, crop,
                                          sampler.size if sampler is not None else None)
                    out = sim.run_nodes(env, span.start, span.stop)
                    rec = self._region_loss(out, targets, weights, idx, crop)
                    loss = rec
                    beta = beta_at(it, iters, st.warmup, *st.beta) if learn_rounding or learn_scales else None
                    if beta is not None and learn_rounding and st.round_lambda > 0:
                        loss = rec + st.round_lambda * region.regularizer(beta)
                    elif beta is not None and learn_scales and st.group_lambda > 0:
                        loss = rec + st.group_lambda * region.group_regularizer(beta)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    result.iterations += 1
                    bar.update(1)
                    if it % 25 == 0 or it == iters - 1:
                        bar.set_postfix(loss=f"{float(rec.detach()):.4g}", total=f"{float(loss.detach()):.4g}")
                        result.curve.append([phase, it, float(rec.detach())])
                region.train(False)
            else:
                bar.update(iters)
            if learn_scales:
                region.finish_scale_group()
            if learn_rounding:
                result.undecided, result.beyond_neighbors = region.finish_rounding()
                rounding_done = True
            kept, clamped = region.finish_steps()
            result.steps_kept += kept
            result.steps_clamped += clamped
            clock.tick(phase)
            if learn_rounding and self.cfg.bias_correction and sim.input_means:
                result.bias_corrected = self._bias_correct(span, region, qf, targets, weights)
                clock.tick("measure")
        if not rounding_done and region.layers and st.iters == 0:
            log.info("%s: no rounding iterations; weights keep their calibrated rounding", span.name)
        return result


def reconstruct(sim: SimModel, data: Dataset, plan: BitPlan, cfg: QuantConfig,
                checkpoint_dir: str | None = None, ctx: RunContext | None = None) -> ReconReport:
    """Reconstruct every region of ``sim`` (already calibrated) on ``data``; see the module docstring.

    Fallbacks go into ``ctx.diagnostics``. Without ``ctx`` the run gets its own ``RunContext`` (entered here:
    deterministic cuDNN on CUDA, torch settings restored afterwards); a caller's context is entered by the caller.
    """
    del plan  # bit widths are already in the calibrated quantizers
    ckpt_dir = checkpoint_dir or cfg.checkpoint_dir
    if ctx is not None:
        return Engine(sim, data, cfg, ckpt_dir, ctx.diagnostics).run()
    with RunContext(seed=cfg.seed, device=cfg.device, progress=cfg.progress) as own:
        return Engine(sim, data, cfg, ckpt_dir, own.diagnostics).run()
