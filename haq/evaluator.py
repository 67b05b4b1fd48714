"""The accuracy side of the reward: quantize with a policy, finetune briefly, validate."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from haq.data import SearchData, batches
from haq.policy import Policy
from haq.qmodel import QuantConfig, QuantizedModel
from haq.train import FinetuneConfig, evaluate, train_epochs
from hw_models import LayerSpec


def policy_seed(seed: int, bits: Sequence[tuple[int, int]]) -> int:
    """A seed derived from the base seed and the policy itself, so the same policy always
    gets the same finetune (and a resumed search needs no evaluator state)."""
    text = f"{seed}|" + ",".join(f"{w}{a}" for w, a in bits)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & (2**63 - 1)


class QuantEvaluator:
    """Callable ``policy -> top-1 accuracy (percent)`` on the search-val split (`val_metrics`:
    every measure of `haq.train.evaluate`).

    Holds one quantization-wrapped copy of the model on `device` (copied once), the
    search data on the same device, and the calibration cache for the whole search.
    Each call restores the float weights, applies the policy, finetunes for
    ``finetune.epochs`` on search-train and evaluates on search-val.

    An evaluation is a function of the policy: the finetune's shuffling is seeded from the
    base seed and the policy's bits (`finetune_seed`; from the base seed alone with
    ``finetune.shared_shuffle``) and every call starts from the float
    weights and the same calibration. So a call (the accuracy a search's reward reads)
    returns the recorded top-1 (`val_metrics`: all the recorded measures) when the same policy
    was already evaluated with the same seed, quantizer and finetune settings, instead of
    finetuning again: the same number, without the finetune (a search repeats a policy often
    once its exploration noise has decayed).
    `evaluate` always runs and leaves `qmodel` holding that policy's finetuned weights, for
    callers that export or inspect the model. ``memo = False`` turns the reuse off.

    Args:
        model: the trained float model (left untouched).
        data: the search splits.
        quant: quantization settings.
        finetune: finetune settings.
        device: where to train.
        seed: base seed of the finetune's shuffling (combined with the policy).
    """

    def __init__(self, model: nn.Module, data: SearchData, quant: QuantConfig | None = None,
                 finetune: FinetuneConfig | None = None, device: str | torch.device = "cpu", seed: int = 0) -> None:
        self.device = torch.device(device)
        self.data = data.to(self.device)
        self.finetune = (finetune or FinetuneConfig()).resolve(self.device, (quant or QuantConfig()).mode)
        self.seed = seed
        self.origin: dict[str, Any] | None = None  # what it was built from, set by haq.search.build_evaluator
        float_model = copy.deepcopy(model).to(self.device)
        if self.finetune.channels_last:
            float_model = float_model.to(memory_format=torch.channels_last)
        self.fp_metrics = self._evaluate(float_model, "val", self.finetune)
        self.teacher_logits = self._teacher_logits(float_model) if self.finetune.distill else None
        self.qmodel = QuantizedModel(float_model, self.data.input_shape, quant)
        n_calib = min(self.qmodel.config.calib_images, len(self.data.train))
        calib = [x for x, _ in batches(self.data.train.subset(range(n_calib)), self.data, 256)]
        self.qmodel.calibrate(calib)
        self.calls = 0  # evaluations run
        self.reused = 0  # calls answered from an earlier identical evaluation
        self.memo = True
        self._val: dict[tuple[Any, ...], dict[str, float]] = {}
        self._last: tuple[tuple[Any, ...], dict[str, float]] | None = None
        self.run_model: nn.Module = self.qmodel.model
        if self.finetune.compile:
            self.qmodel.use_tensor_bits()
            self.run_model = torch.compile(self.qmodel.model, backend=self.finetune.compile_backend, dynamic=False)

    @property
    def layers(self) -> list[LayerSpec]:
        return self.qmodel.layers

    @property
    def fp_accuracy(self) -> float:
        """Top-1 of the float model on search-val, in percent."""
        return self.fp_metrics["top1"]

    def as_policy(self, policy: Policy | Sequence[tuple[int, int]]) -> Policy:
        if isinstance(policy, Policy):
            return policy
        return Policy.from_bits(self.layers, policy)

    def evaluate(self, policy: Policy | Sequence[tuple[int, int]], epochs: int | None = None,
                 split: str = "val") -> dict[str, float]:
        """Top-1 / top-5 (percent) and final training loss after quantizing and finetuning."""
        return self.evaluate_splits(policy, (split,), epochs)[split]

    def evaluate_splits(self, policy: Policy | Sequence[tuple[int, int]], splits: Sequence[str] = ("val", "test"),
                        epochs: int | None = None) -> dict[str, dict[str, float]]:
        """`evaluate` on several splits of the same finetuned network: ``{split: metrics}``
        (one finetune; each split's metrics as `evaluate` gives them)."""
        for split in splits:
            if split not in ("train", "val", "test"):
                raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        policy = self.as_policy(policy)
        self.calls += 1
        self.qmodel.apply(policy)
        cfg = self.finetune if epochs is None else dataclasses.replace(self.finetune, epochs=epochs)
        seed = self.finetune_seed(policy)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            gen = torch.Generator(device=self.device).manual_seed(seed)
            loss = train_epochs(self.run_model, self.qmodel.parameters(), self.data, self.data.train, cfg, gen,
                                teacher_logits=self.teacher_logits if cfg.distill else None)
        out = {}
        for split in splits:
            out[split] = self._evaluate(self.run_model, split, cfg)
            out[split]["train_loss"] = float(loss)
        return out

    def finetune_seed(self, policy: Policy | Sequence[tuple[int, int]]) -> int:
        """The seed of `policy`'s finetune (shuffling, augmentation): `policy_seed` of the base
        seed and the policy, or of the base seed alone with ``finetune.shared_shuffle``."""
        return policy_seed(self.seed, () if self.finetune.shared_shuffle else self.as_policy(policy).bits)

    @torch.no_grad()
    def _teacher_logits(self, float_model: nn.Module) -> torch.Tensor:
        """The float model's logits of every search-train image, once per search."""
        float_model.eval()
        out = []
        for x, _ in batches(self.data.train, self.data, self.finetune.eval_batch_size):
            out.append(float_model(x).float())
        return torch.cat(out)

    def _evaluate(self, model: nn.Module, split: str, cfg: FinetuneConfig) -> dict[str, float]:
        return evaluate(model, self.data, getattr(self.data, split), cfg.eval_batch_size, cfg.bf16, cfg.channels_last)

    def val_metrics(self, policy: Policy | Sequence[tuple[int, int]]) -> dict[str, float]:
        """`evaluate`'s search-validation metrics of `policy` after the finetune; an identical
        earlier evaluation's when there is one (see the class docstring)."""
        key = self._key(self.as_policy(policy))
        if self.memo and key in self._val:
            self.reused += 1
            metrics = self._val[key]
        else:
            metrics = self.evaluate(policy)
            if self.memo:
                self._val[key] = metrics
        self._last = (key, metrics)
        return dict(metrics)

    def recorded(self, policy: Policy | Sequence[tuple[int, int]]) -> dict[str, float]:
        """What `val_metrics` gave for `policy`, without evaluating it: from the memo, or the last
        call's (with the memo off); KeyError when neither holds it."""
        key = self._key(self.as_policy(policy))
        if key in self._val:
            return dict(self._val[key])
        if self._last is not None and self._last[0] == key:
            return dict(self._last[1])
        raise KeyError(f"policy {policy} has not been evaluated with this seed and these settings")

    def _key(self, policy: Policy) -> tuple[Any, ...]:
        return (policy.bits, self.seed, self.finetune, self.qmodel.config)

    def __call__(self, policy: Policy | Sequence[tuple[int, int]]) -> float:
        """Top-1 (percent) of `policy` on search-validation after the finetune (`val_metrics`)."""
        return self.val_metrics(policy)["top1"]


REWARD_MEASURES = {
    "top1": "top-1 accuracy, the paper's (HAQ Eq. 2)",
    "p_true": "the mean softmax probability of the true class (percent)",
}
"""What the reward may read from a finetuned network on search-validation (``SearchConfig.reward_measure``)."""


class RewardMeasure:
    """An evaluator as the environment reads it when the reward is not top-1: ``policy -> measure``
    on search-validation and the float model's ``fp_accuracy`` in the same measure, so the reward
    ``reward_scale * (measure - float measure)`` keeps HAQ's form (Eq. 2) and scale, both in percent.

    ``p_true`` is the expected top-1 of a classifier that draws its answer from its softmax: it
    moves with every image's confidence, not only with the few images near the decision
    boundary, so one finetune's value varies less from seed to seed than its top-1 does, and on the
    digits splits it ranks policies of equal cost as held-out top-1 does more often
    (`experiments/results/ablations/reward-signal-latency-mini.md`)."""

    def __init__(self, evaluator: QuantEvaluator, name: str) -> None:
        if name not in REWARD_MEASURES:
            raise ValueError(f"reward measure must be one of {list(REWARD_MEASURES)}, got {name!r}")
        self.evaluator = evaluator
        self.name = name

    @property
    def fp_accuracy(self) -> float:
        """The float model's measure on search-validation."""
        return self.evaluator.fp_metrics[self.name]

    def __call__(self, policy: Policy | Sequence[tuple[int, int]]) -> float:
        return self.evaluator.val_metrics(policy)[self.name]
