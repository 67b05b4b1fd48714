"""Automated gradual pruning (Zhu & Gupta 2017, "To prune, or not to prune").

Each quantizable layer (every Conv2d and Linear) gets a magnitude mask; its sparsity is
raised from ``s_i`` to ``s_f`` along the cubic schedule

    s_t = s_f + (s_i - s_f) * (1 - (t - t_0) / (n * dt))^3,   t in {t_0, t_0 + dt, ..., t_0 + n dt}

with a pruning step every ``dt`` training steps, while the network keeps training; pruned
weights stay zero (the mask is re-applied after every optimiser step). The result is a
state dict of the same architecture with exact zeros, which ``haq search --weights``
accepts; `haq.layers.extract_layers` reads each layer's density from it, and cost models
that exploit sparsity (``model-size``) price only the non-zero weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from haq.data import SearchData, batches
from haq.layers import quantizable_modules
from haq.train import evaluate

log = logging.getLogger(__name__)


def cubic_sparsity(step: int, final: float, initial: float = 0.0, start: int = 0, n: int = 1,
                   every: int = 1) -> float:
    """Zhu & Gupta's target sparsity at training step `step` (their Eq. 1)."""
    if step <= start:
        return initial
    progress = min(1.0, (step - start) / (n * every))
    return final + (initial - final) * (1.0 - progress) ** 3


@dataclasses.dataclass(frozen=True)
class PruneConfig:
    """Gradual pruning run.

    Attributes:
        sparsity: final fraction of zero weights in every prunable layer (s_f).
        initial_sparsity: s_i.
        epochs: training epochs in total.
        prune_fraction: the part of training over which sparsity ramps up (the rest lets the
            network recover at the final sparsity; Zhu & Gupta prune over most of it).
        every: training steps between pruning steps (dt).
        lr: SGD learning rate (cosine-decayed).
        batch_size: training batch size.
        weight_decay: L2 penalty.
        skip_first: leave the first layer dense (it has few weights and sees the raw input).
        seed: shuffling seed.
    """

    sparsity: float = 0.75
    initial_sparsity: float = 0.0
    epochs: int = 10
    prune_fraction: float = 0.7
    every: int = 10
    lr: float = 0.02
    batch_size: int = 64
    weight_decay: float = 4e-5
    skip_first: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.initial_sparsity <= self.sparsity < 1:
            raise ValueError(f"sparsity must satisfy 0 <= initial <= final < 1, got {self.initial_sparsity}, "
                             f"{self.sparsity}")
        if self.epochs < 1 or self.every < 1 or not 0 < self.prune_fraction <= 1:
            raise ValueError("pruning needs epochs >= 1, every >= 1 and 0 < prune_fraction <= 1")


class MagnitudePruner:
    """Magnitude masks for a model's prunable layers."""

    def __init__(self, model: nn.Module, skip_first: bool = True) -> None:
        mods = list(quantizable_modules(model).items())
        if skip_first and len(mods) > 1:
            mods = mods[1:]
        self.modules: dict[str, nn.Module] = dict(mods)
        self.masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in self.modules.items()}

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> None:
        """Zero the smallest-magnitude weights of each layer until `sparsity` of it is zero
        (masks only grow: a pruned weight is never revived)."""
        for name, m in self.modules.items():
            w = m.weight
            k = round(sparsity * w.numel())
            if k <= 0:
                continue
            scores = w.abs().masked_fill(~self.masks[name], -1.0).flatten()
            drop = torch.topk(scores, k, largest=False).indices
            mask = self.masks[name].flatten().clone()
            mask[drop] = False
            self.masks[name] = mask.view_as(w)
            w.mul_(self.masks[name])

    @torch.no_grad()
    def apply(self) -> None:
        """Keep pruned weights at zero (after each optimiser step)."""
        for name, m in self.modules.items():
            m.weight.mul_(self.masks[name])

    def sparsity(self) -> dict[str, float]:
        return {n: 1.0 - float(mask.float().mean()) for n, mask in self.masks.items()}


def prune(model: nn.Module, data: SearchData, config: PruneConfig,
          on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, float]:
    """Train `model` in place on the search-train split while pruning it gradually.

    Returns ``{"top1", "top5", "sparsity"}`` on search-val (sparsity over the pruned layers).
    `on_epoch(epoch, target_sparsity, top1)` reports progress.
    """
    device = data.train.images.device
    model.to(device)
    pruner = MagnitudePruner(model, config.skip_first)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    steps_per_epoch = max(1, len(data.train) // config.batch_size)
    total = steps_per_epoch * config.epochs
    ramp = max(1, int(config.prune_fraction * total))
    n = max(1, ramp // config.every)
    opt = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step = 0
    target = config.initial_sparsity
    pruner.prune_to(target)
    for epoch in range(config.epochs):
        model.train()
        for x, y in batches(data.train, data, config.batch_size, shuffle=True, generator=gen, augment=True,
                            drop_last=True):
            if step % config.every == 0:
                target = cubic_sparsity(step, config.sparsity, config.initial_sparsity, 0, n, config.every)
                pruner.prune_to(target)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            pruner.apply()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, target, evaluate(model, data, data.val)["top1"])
    pruner.prune_to(config.sparsity)  # exactly s_f at the end, whatever the rounding of the ramp
    metrics = evaluate(model, data, data.val)
    sp = pruner.sparsity()
    metrics["sparsity"] = sum(sp[k] * pruner.modules[k].weight.numel() for k in sp) / max(
        1, sum(m.weight.numel() for m in pruner.modules.values()))
    log.info("pruned to %.3f sparsity: top-1 %.2f%%", metrics["sparsity"], metrics["top1"])
    return metrics
