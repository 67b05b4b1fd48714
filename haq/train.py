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
        bf16: run convolutions and matmuls under bfloat16 autocast (fake quantization and
            the loss stay float32: the 8-bit integer grids are exact in bf16's 8-bit
            significand, and accumulation is float32). None: on for CUDA, off for CPU.
        channels_last: NHWC memory layout for model and inputs (faster convs on tensor
            cores). None: on for CUDA, off for CPU.
        distill: knowledge distillation from the float model (Hinton, Vinyals, Dean 2015):
            loss = alpha * T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) + (1 - alpha) * CE.
            The teacher's logits of the (unaugmented) search-train images are computed once.
        distill_temperature: T.
        distill_alpha: alpha, the weight of the soft targets.
        compile: ``torch.compile`` the quantized model once per search. Its fake-quant
            grids are read from tensors, so every policy reuses the compiled graphs (one for
            training, one for validation); linear quantization only. The first episode
            pays the compilation. None: on for CUDA with linear quantization (and, in a
            `SearchConfig`, ``min_bits >= 2``), off otherwise
            (on one H200, MobileNetV2 at 224 px: a 3-4 s episode instead of 11 s, for a
            compilation of about 80-100 s; on CPU it pays off only after about 200 episodes
            of the embedded default; docs/performance.md).
        compile_backend: the ``torch.compile`` backend (``inductor``; ``aot_eager`` compiles
            in seconds but runs no faster than eager, useful to check a model compiles).
        shared_shuffle: seed every policy's finetune (its shuffling and augmentation) from the
            evaluator's base seed alone instead of the base seed and the policy
            (`haq.evaluator.policy_seed`): common random numbers, so two policies' accuracies
            differ by the policies more than by their finetunes' luck (on the digits models
            they do not: experiments/results/ablations/reward-signal-latency-mini-shared-shuffle.md).
    """

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    eval_batch_size: int = 512
    max_train_images: int | None = None
    bf16: bool | None = None
    channels_last: bool | None = None
    distill: bool = False
    distill_temperature: float = 4.0
    distill_alpha: float = 0.9
    compile: bool | None = None
    compile_backend: str = "inductor"
    shared_shuffle: bool = False

    def resolve(self, device: torch.device | str, quant_mode: str = "linear") -> FinetuneConfig:
        """The config with ``None`` (auto) settings decided for `device` and the quantization
        mode (``compile``: `auto_compile`)."""
        cuda = torch.device(device).type == "cuda"
        return dataclasses.replace(self, bf16=cuda if self.bf16 is None else self.bf16,
                                   channels_last=cuda if self.channels_last is None else self.channels_last,
                                   compile=auto_compile(cuda, quant_mode) if self.compile is None else self.compile)

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"finetune epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0 or self.batch_size < 1 or self.eval_batch_size < 1:
            raise ValueError("finetune lr must be > 0 and batch sizes >= 1")
        if self.distill_temperature <= 0 or not 0 <= self.distill_alpha <= 1:
            raise ValueError(f"distillation needs temperature > 0 and 0 <= alpha <= 1, got "
                             f"{self.distill_temperature}, {self.distill_alpha}")


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float,
                      alpha: float) -> torch.Tensor:
    """Hinton et al. (2015): ``alpha * T^2 * KL(p_t || p_s) + (1 - alpha) * CE(student, labels)``
    with ``p = softmax(z / T)``; the T^2 keeps the soft-target gradients' scale independent of T."""
    t = temperature
    kl = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True,
                  reduction="batchmean")
    return alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student, labels)


def auto_compile(cuda: bool, quant_mode: str) -> bool:
    """What ``compile: None`` means: compile on CUDA with linear quantization (a k-means codebook
    changes size with the bits, so a compiled k-means model would recompile for every bitwidth);
    never on CPU, where it pays off only on long searches (docs/performance.md)."""
    return cuda and quant_mode == "linear"


def train_epochs(
    model: nn.Module, params: Iterable[nn.Parameter], data: SearchData, split: ImageSplit, config: FinetuneConfig,
    generator: torch.Generator, *, augment: bool = True, teacher_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """SGD for `config.epochs` epochs; returns the mean training loss as a device tensor.

    With `teacher_logits` (one row per image of `split`) the loss is `distillation_loss`.
    """
    params = list(params)
    if config.epochs == 0 or not params:
        return torch.zeros((), device=split.images.device)
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    n = len(split) if config.max_train_images is None else min(len(split), config.max_train_images)
    steps_per_epoch = max(1, n // config.batch_size)
    total = steps_per_epoch * config.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    model.train()
    device = split.images.device
    loss_sum = torch.zeros((), device=device)
    steps = 0
    for _ in range(config.epochs):
        part, rows = split, None
        if n < len(split):
            rows = torch.randperm(len(split), generator=generator, device=generator.device)[:n].to(device)
            part = split.subset(rows)
        for x, y, idx in batches(part, data, config.batch_size, shuffle=True, generator=generator,
                                 augment=augment, drop_last=len(part) >= config.batch_size, with_index=True):
            with _autocast(device, config.bf16):
                logits = model(_layout(x, config.channels_last)).float()
            if teacher_logits is None:
                loss = F.cross_entropy(logits, y)
            else:
                soft = teacher_logits[idx if rows is None else rows[idx]]
                loss = distillation_loss(logits, soft, y, config.distill_temperature, config.distill_alpha)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.detach()
            steps += 1
    return loss_sum / max(steps, 1)


def _autocast(device: torch.device, bf16: bool | None) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(bf16))


def _layout(x: torch.Tensor, channels_last: bool | None) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, data: SearchData, split: ImageSplit, batch_size: int = 512,
             bf16: bool | None = False, channels_last: bool | None = False) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent (optionally under bf16 autocast / NHWC), and two
    smoother measures of the same predictions: ``loss``, the mean cross-entropy, and ``p_true``,
    the mean softmax probability of the true class in percent (the expected top-1 of a
    classifier that samples its answer from its softmax)."""
    model.eval()
    device = split.images.device
    top1, top5, nll, p_true = (torch.zeros((), device=device) for _ in range(4))
    k = min(5, data.num_classes)
    for x, y in batches(split, data, batch_size):
        with _autocast(device, bf16):
            logits = model(_layout(x, channels_last)).float()
        pred = logits.topk(k, dim=1).indices
        hit = pred == y.view(-1, 1)
        top1 += hit[:, 0].sum()
        top5 += hit.any(dim=1).sum()
        log_p = logits.log_softmax(dim=1).gather(1, y.view(-1, 1))
        nll -= log_p.sum()
        p_true += log_p.exp().sum()
    n = max(len(split), 1)
    return {"top1": float(top1) * 100.0 / n, "top5": float(top5) * 100.0 / n, "loss": float(nll) / n,
            "p_true": float(p_true) * 100.0 / n}


def fit(model: nn.Module, data: SearchData, epochs: int, lr: float = 0.05, batch_size: int = 64,
        weight_decay: float = 4e-5, seed: int = 0) -> dict[str, float]:
    """Train a float model from scratch (used for the embedded default); returns val accuracy."""
    gen = torch.Generator(device=data.train.images.device).manual_seed(seed)
    cfg = FinetuneConfig(epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay)
    train_epochs(model, model.parameters(), data, data.train, cfg, gen)
    return evaluate(model, data, data.val)
