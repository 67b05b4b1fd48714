"""Training and evaluation loops: one-epoch finetune (HAQ's reward signal) and top-k accuracy.

The training step has no host synchronisation: the loss is accumulated on the device
and read once at the end of the epoch.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from haq.data import ImageSplit, SearchData, batches


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """The short finetune that prices a policy's accuracy (HAQ Section 4: one epoch).

    Attributes:
        epochs: finetune epochs per evaluation (0 = no finetune).
        lr: SGD learning rate (cosine-decayed to 0 over the finetune).
        momentum: SGD momentum.
        weight_decay: L2 penalty.
        batch_size: training batch size.
        eval_batch_size: validation batch size.
        max_train_images: use only the first N shuffled search-train images per epoch (None: all).
    """

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 512
    max_train_images: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"finetune epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("finetune lr must be > 0 and batch sizes >= 1")


def train_epochs(
    model: nn.Module, params: Iterable[nn.Parameter], data: SearchData, split: ImageSplit, config: FinetuneConfig,
    generator: torch.Generator, *, augment: bool = True,
) -> torch.Tensor:
    """SGD for `config.epochs` epochs; returns the mean training loss as a device tensor."""
    params = list(params)
    if config.epochs == 0 or not params:
        return torch.zeros((), device=split.images.device)
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(split) if config.max_train_images is None else min(len(split), config.max_train_images)
    steps_per_epoch = max(1, n // config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    loss_sum = torch.zeros((), device=split.images.device)
    steps = 0
    for _ in range(config.epochs):
        part = split
        if n < len(split):
            perm = torch.randperm(len(split), generator=generator, device=generator.device)[:n]
            part = split.subset(perm.to(split.images.device))
        for x, y in batches(part, data, config.batch_size, shuffle=True, generator=generator,
                            augment=augment, drop_last=len(part) >= config.batch_size):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            steps += 1
    return loss_sum / max(steps, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: SearchData, split: ImageSplit, batch_size: int = 512) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent."""
    model.eval()
    top1 = torch.zeros((), device=split.images.device)
    top5 = torch.zeros((), device=split.images.device)
    k = min(5, data.num_classes)
    for x, y in batches(split, data, batch_size):
        logits = model(x)
        pred = logits.topk(k, dim=1).indices
        hit = pred == y.view(-1, 1)
        top1 += hit[:, 0].sum()
        top5 += hit.any(dim=1).sum()
    n = max(len(split), 1)
    return {"top1": float(top1) * 100.0 / n, "top5": float(top5) * 100.0 / n}


def fit(model: nn.Module, data: SearchData, epochs: int, lr: float = 0.05, batch_size: int = 64,
        weight_decay: float = 4e-5, seed: int = 0) -> dict[str, float]:
    """Train a float model from scratch (used for the embedded default); returns val accuracy."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed)
    cfg = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    train_epochs(model, model.parameters(), data, data.train, cfg, gen)
    return evaluate(model, data, data.val)
