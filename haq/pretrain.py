"""Train the digits networks on first use (or read the weights shipped for them).

The model registry (`haq.models`) names these functions as the ``pretrain`` of ``digits-mbv2`` and
``digits32-mbv2``; it never trains anything itself.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haq.data import load_digits_data
from haq.models import cache_dir, load_weights, model_entry
from haq.train import fit

log = logging.getLogger("haq.models")


SHIPPED_WEIGHTS = Path(__file__).with_name("models") / "weights"
DIGITS_RECIPE = {"version": 1, "epochs": 30, "lr": 0.05, "batch_size": 64, "seed": 0}
DIGITS32_RECIPE = {"version": 1, "epochs": 20, "lr": 0.05, "batch_size": 64, "seed": 0}


def weights_file_name(name: str, recipe: dict[str, Any]) -> str:
    """The file name of `name`'s weights trained by `recipe` (shipped or cached): it holds the
    recipe, so a changed recipe never reads another recipe's weights."""
    return f"{name}-" + "-".join(f"{k}{v}" for k, v in recipe.items()) + ".pt"


def train_on_digits(name: str, recipe: dict[str, Any], *, shipped: bool = True) -> nn.Module:
    """Registered model `name` trained on the digits search-train split by `recipe` (SGD,
    cosine schedule; see `haq.train.fit`).

    The weights shipped in ``haq/models/weights/`` for this recipe when there are some (and
    `shipped`); otherwise trained on first use and cached under `cache_dir` by a name that
    holds the recipe. ``shipped=False`` trains this machine's own (bit-identical on one machine,
    not across CPUs: the weights' README)."""
    entry = model_entry(name)
    file_name = weights_file_name(name, recipe)
    if shipped and (SHIPPED_WEIGHTS / file_name).is_file():
        model = entry.factory()
        load_weights(model, SHIPPED_WEIGHTS / file_name)
        return model
    path = cache_dir() / file_name
    if path.is_file():
        model = entry.factory()
        try:
            load_weights(model, path)
            return model
        except ValueError as exc:
            log.warning("cached %s weights are unusable (%s); training again", name, exc)
    log.info("training %s on digits for %d epochs (first use only; the weights are cached at %s)",
             name, recipe["epochs"], path)
    torch.manual_seed(recipe["seed"])
    model = entry.factory()
    acc = fit(model, load_digits_data(**entry.data), epochs=recipe["epochs"], lr=recipe["lr"],
              batch_size=recipe["batch_size"], seed=recipe["seed"])
    log.info("%s: %.1f%% top-1 on search-val", name, acc["top1"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    torch.save(model.state_dict(), tmp)
    tmp.replace(path)
    return model


def digits_mbv2() -> nn.Module:
    """The embedded default, trained on the digits search-train split (`train_on_digits`)."""
    return train_on_digits("digits-mbv2", DIGITS_RECIPE)


def digits32_mbv2() -> nn.Module:
    """The CIFAR-sized MobileNetV2 of the mini tables, trained on digits at 32x32 (`train_on_digits`)."""
    return train_on_digits("digits32-mbv2", DIGITS32_RECIPE)
