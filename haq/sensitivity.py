"""Per-layer sensitivity to each bitwidth: what the integer-program method (`haq.ilp`) minimises.

The measure is direct, not a proxy: start from the network with every layer at the top bitwidth,
lower one layer's weight bits (or activation bits) to b, and record how much the mean
cross-entropy on the first images of search-train rises, without any finetune. One forward pass
per (layer, kind, bits): 2 x 6 x 17 passes over 256 images for the embedded default, a few
seconds on a CPU. HAWQ-V3 (Yao et al., ICML 2021) estimates the same quantity from the Hessian
trace times the weights' quantization error; on networks this small, measuring it costs less than
estimating the Hessian and needs no second-order assumption, and it covers activations, which a
Hessian of the loss in the weights does not. The loss, not top-1, because top-1 on a few hundred
images moves in steps of a fraction of a point and is flat for most single-layer changes.

Search-train, not search-validation: the method's candidates are then measured on
search-validation by the finetunes, as every method's are, and the held-out test split is
never read.

The measurement depends on the network, its calibration, the images and the bit choices, not on
the hardware model, the budget or the seed, so `measure` can keep it in a cache folder: the
searches of a sweep or a table that share a network measure it once.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from haq.data import ImageSplit
from haq.evaluator import QuantEvaluator
from haq.fileio import atomic_write_text
from haq.models import state_fingerprint
from haq.policy import Policy
from haq.train import evaluate

log = logging.getLogger(__name__)

SENSITIVITY_IMAGES = 256
"""Search-train images the sensitivity is measured on."""


@dataclasses.dataclass(frozen=True)
class Sensitivity:
    """Loss increases of single-layer changes from the all-top-bits network.

    Attributes:
        layers: layer names, in model order.
        weight: ``(L, 8)``: ``weight[l, b - 1]`` is the rise of the mean cross-entropy when only
            layer l's weights are at b bits; NaN where b is not a choice of that layer.
        act: the same for activation bits (all NaN but the top bitwidth when they are not searched).
        base_loss: the mean cross-entropy of the all-top-bits network.
        images: how many search-train images it was measured on.
    """

    layers: tuple[str, ...]
    weight: np.ndarray
    act: np.ndarray
    base_loss: float
    images: int

    def monotone(self) -> tuple[np.ndarray, np.ndarray]:
        """`weight` and `act` made non-increasing in the bits: each entry is the largest rise at
        that bitwidth or any higher one, so that fewer bits are never predicted to cost less
        loss than more bits (a single forward pass can say otherwise by chance); NaN stays NaN."""

        def envelope(table: np.ndarray) -> np.ndarray:
            out, running = table.copy(), np.full(len(table), -np.inf)
            for b in range(7, -1, -1):  # from 8 bits down to 1
                known = ~np.isnan(table[:, b])
                running[known] = np.maximum(running[known], table[known, b])
                out[known, b] = running[known]
            return out

        return envelope(self.weight), envelope(self.act)

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        """One row per layer and bitwidth: the weight and activation loss rises (blank if not measured)."""
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(["layer", "bits", "weight_loss_rise", "act_loss_rise"])
        for i, name in enumerate(self.layers):
            for b in range(1, 9):
                w, a = self.weight[i, b - 1], self.act[i, b - 1]
                if not (np.isnan(w) and np.isnan(a)):
                    writer.writerow([name, b, "" if np.isnan(w) else f"{w:.6g}", "" if np.isnan(a) else f"{a:.6g}"])
        atomic_write_text(path, text.getvalue())


def cache_key(evaluator: QuantEvaluator, w_choices: Sequence[Sequence[int]], a_choices: Sequence[Sequence[int]],
              images: int = SENSITIVITY_IMAGES) -> str:
    """A hash of everything `measure` reads: the float weights, the calibration, the images and
    their normalisation, the bit choices, the numerics (bf16, memory layout, device, torch threads:
    a cached value is the one this process would compute, bit for bit)."""
    data, cfg = evaluator.data, evaluator.finetune
    sample = _sample(evaluator, images)
    parts = (state_fingerprint(evaluator.qmodel.float_state), evaluator.qmodel.calibration.fingerprint(),
             state_fingerprint({"images": sample.images, "labels": sample.labels}),
             [layer.name for layer in evaluator.layers], [list(c) for c in w_choices], [list(c) for c in a_choices],
             data.mean, data.std, cfg.bf16, cfg.channels_last, str(sample.images.device), torch.get_num_threads())
    return hashlib.sha256("|".join(map(repr, parts)).encode()).hexdigest()[:20]


def _sample(evaluator: QuantEvaluator, images: int) -> ImageSplit:
    """The first `images` of search-train (all of them when it is smaller)."""
    train = evaluator.data.train
    return train.subset(range(min(images, len(train))))


def _load(path: Path, layers: Sequence[str]) -> Sensitivity | None:
    try:
        with np.load(path) as f:
            sens = Sensitivity(tuple(str(x) for x in f["layers"]), f["weight"], f["act"], float(f["base_loss"]),
                               int(f["images"]))
    except (OSError, KeyError, ValueError) as exc:
        log.warning("cached sensitivity %s is unreadable (%s); measuring again", path, exc)
        return None
    return sens if sens.layers == tuple(layers) else None


def _save(path: Path, sens: Sensitivity) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, layers=np.array(sens.layers), weight=sens.weight, act=sens.act, base_loss=sens.base_loss,
             images=sens.images)
    tmp.replace(path)


@torch.no_grad()
def measure(evaluator: QuantEvaluator, w_choices: Sequence[Sequence[int]], a_choices: Sequence[Sequence[int]],
            images: int = SENSITIVITY_IMAGES, cache: str | os.PathLike[str] | None = None) -> Sensitivity:
    """Measure each layer's loss rise at each of its weight and activation bitwidths.

    Args:
        evaluator: the search's evaluator (its calibrated quantized model and its data).
        w_choices, a_choices: per layer, the bitwidths it may take (the top one is the reference;
            a layer with one choice is not measured).
        images: search-train images to measure on (at most the split's size).
        cache: a folder to read the measurement from and write it to, under `cache_key`
            (None: always measure).

    Returns:
        The `Sensitivity`; when measured, the evaluator's model is left at the last measured
        policy (every finetune starts by restoring the float weights).
    """
    layers = evaluator.layers
    if len(w_choices) != len(layers) or len(a_choices) != len(layers):
        raise ValueError(f"need bit choices for each of the {len(layers)} layers, got {len(w_choices)} / {len(a_choices)}")
    path = None
    if cache is not None:
        path = Path(cache) / f"sensitivity-{cache_key(evaluator, w_choices, a_choices, images)}.npz"
        cached = _load(path, [layer.name for layer in layers]) if path.is_file() else None
        if cached is not None:
            log.info("sensitivity read from %s", path)
            return cached
    data = evaluator.data
    sample = _sample(evaluator, images)
    top = [(max(w), max(a)) for w, a in zip(w_choices, a_choices)]
    model, cfg = evaluator.qmodel.model, evaluator.finetune

    def loss(bits: list[tuple[int, int]]) -> float:
        evaluator.qmodel.apply(Policy.from_bits(layers, bits))
        return evaluate(model, data, sample, cfg.eval_batch_size, cfg.bf16, cfg.channels_last)["loss"]

    base = loss(top)
    weight = np.full((len(layers), 8), np.nan)
    act = np.full((len(layers), 8), np.nan)
    for i in range(len(layers)):
        weight[i, top[i][0] - 1] = act[i, top[i][1] - 1] = 0.0
        for table, choices, slot in ((weight, w_choices[i], 0), (act, a_choices[i], 1)):
            for b in choices:
                if b == top[i][slot]:
                    continue
                bits = list(top)
                bits[i] = (b, top[i][1]) if slot == 0 else (top[i][0], b)
                table[i, b - 1] = loss(bits) - base
    log.info("sensitivity measured on %d search-train images: base loss %.4f, largest rise %.3f",
             len(sample), base, float(np.nanmax(np.concatenate([weight, act]))))
    sens = Sensitivity(tuple(layer.name for layer in layers), weight, act, base, len(sample))
    if path is not None:
        _save(path, sens)
    return sens
