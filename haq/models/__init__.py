"""Model registry: `create_model(name, **kw)`, `list_models()`, `register_model`.

A name may also be ``"package.module:factory"`` for a user's own network. Weights come
from a local file only (``weights=PATH``, loaded with ``torch.load(weights_only=True)``);
nothing is downloaded. torchvision's ImageNet checkpoints of MobileNetV2, ResNet-18 and
ResNet-50 fit the networks here (`load_weights`), as does any checkpoint holding the same
tensors in the same order (a MobileNet-V1 laid out stem, then depthwise and pointwise conv +
BatchNorm per block, then the classifier). The two networks for the shipped digits data come
trained (`train_on_digits`): the embedded default ``digits-mbv2`` (16x16) and ``digits32-mbv2``,
the CIFAR-sized MobileNetV2 (``mobilenet_v2_cifar`` at width 0.5, one input channel) on digits
upscaled to 32x32. Their weights ship in ``haq/models/weights/`` (see its README): training is
deterministic on one machine but not across CPUs (the vector instruction set changes the
rounding, and 30 epochs amplify it into a model up to 1.4 points apart in float top-1), so shipping
them is what makes the mini tables reproducible elsewhere. Another recipe trains on first use and is cached under
``$HAQ_CACHE_DIR`` (default ``~/.cache/haq``): about 20 s and 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from haq.models.nets import (
    BasicBlock,
    Bottleneck,
    CifarResNet,
    MobileNetV1,
    MobileNetV2,
    ResNet,
    digits_mbv2,
)
from haq.plugins import import_plugin
from hw_models import LayerSpec

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered network: its factory, input shape and the data set it is meant for.

    `data` holds keyword arguments of that data set's loader (e.g. ``{"size": 32}``);
    `pretrain`, where set, names (``"module:function"``) a function that returns the network
    trained on it (`create_model`'s default); the registry itself never trains.
    """

    factory: Callable[..., nn.Module]
    input_shape: tuple[int, int, int]
    dataset: str
    doc: str = ""
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    pretrain: str | None = None


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, factory: Callable[..., nn.Module], input_shape: tuple[int, int, int],
                   dataset: str, doc: str = "", *, data: dict[str, Any] | None = None,
                   pretrain: str | None = None) -> None:
    """Register a network factory under `name` (see `ModelEntry` for `data` and `pretrain`)."""
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = ModelEntry(factory, input_shape, dataset, doc or (factory.__doc__ or "").strip().split("\n")[0],
                               dict(data or {}), pretrain)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard."""
    return sorted(n for n in _MODELS if fnmatch.fnmatch(n, pattern))


def model_entry(name: str) -> ModelEntry:
    """The registry entry of `name`, or an entry for a ``"module:factory"`` name."""
    if ":" in name:
        factory = import_plugin("model", name)
        shape = tuple(getattr(factory, "input_shape", (3, 224, 224)))
        return ModelEntry(factory, shape, getattr(factory, "dataset", "imagenet"))  # type: ignore[arg-type]
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Known: {', '.join(list_models())}; "
                         "or 'package.module:factory' for your own")
    return _MODELS[name]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict in a local file: a bare one, or a checkpoint dict holding it under
    ``state_dict`` or ``model``; DataParallel's ``module.`` prefix is dropped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or foreign file
        raise ValueError(f"weights file {path} cannot be read as a PyTorch state dict: {exc}") from exc
    if isinstance(state, dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _counted(key: str) -> bool:
    """Whether a state-dict entry holds weights (BatchNorm's step counter does not, and
    checkpoints from before PyTorch 0.4.1 lack it)."""
    return not key.endswith("num_batches_tracked")


def _by_position(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """`state` renamed to `own`'s names, if it is the same network under other module names:
    the same number of tensors, in order with the same shapes and the same last name component
    (``weight``, ``bias``, ``running_mean``, ...); else None."""
    mine, theirs = [k for k in own if _counted(k)], [k for k in state if _counted(k)]
    if len(mine) != len(theirs) or any(
            a.rsplit(".", 1)[-1] != b.rsplit(".", 1)[-1] or own[a].shape != state[b].shape
            for a, b in zip(mine, theirs)):
        return None
    return {a: state[b] for a, b in zip(mine, theirs)}


def load_weights(model: nn.Module, path: str | os.PathLike[str],
                 state: dict[str, torch.Tensor] | None = None) -> None:
    """Load a local state dict (see `read_state_dict`; `state` if already read from `path`)
    into `model`, every tensor of it.

    The names must be the model's, or the file must hold the same network under other module
    names: then it is loaded by position, tensor for tensor, when every shape and last name
    component agrees in order (torchvision's MobileNetV2 keeps each block's projection
    convolution and its BatchNorm as two entries of the block where ours nests them in one).
    BatchNorm step counters missing from old checkpoints are left as they are.
    """
    state = read_state_dict(path) if state is None else state
    own = model.state_dict()
    if {k for k in state if _counted(k)} != {k for k in own if _counted(k)}:
        mapped = _by_position(own, state)
        if mapped is None:
            missing = [k for k in own if _counted(k) and k not in state]
            unexpected = [k for k in state if k not in own]
            wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
            raise ValueError(f"weights file {path} does not fit this model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}, other shapes {wrong[:5]} "
                             f"({len(missing)}, {len(unexpected)} and {len(wrong)} in all); nor does it hold "
                             "the same tensors in the same order under other names")
        log.info("weights file %s: %d tensors loaded by position (its module names differ from %s's)",
                 path, len(mapped), type(model).__name__)
        state = mapped
    wrong = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
             for k, v in own.items() if k in state and state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"weights file {path} does not fit this model: {'; '.join(wrong[:3])}"
                         + (f" ({len(wrong)} tensors in all)" if len(wrong) > 3 else ""))
    model.load_state_dict({k: state.get(k, v) for k, v in own.items()})


def checkpoint_classes(state: dict[str, torch.Tensor]) -> int | None:
    """The number of outputs of the last fully connected layer in a state dict (its last 2-D
    ``weight``, in the forward order state dicts keep), or None if it has none."""
    last = [v for k, v in state.items() if k.endswith("weight") and v.ndim == 2]
    return int(last[-1].shape[0]) if last else None


def cache_dir() -> Path:
    return Path(os.environ.get("HAQ_CACHE_DIR", Path.home() / ".cache" / "haq"))


def state_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """A short hash of a state dict's names, dtypes, shapes and values: two models with the same
    fingerprint compute the same function, whatever file or training they came from."""
    h = hashlib.sha256()
    for key, t in state.items():
        t = t.detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def create_model(name: str, *, weights: str | os.PathLike[str] | None = None, pretrained: bool = True,
                 **kwargs: Any) -> nn.Module:
    """Build a registered (or ``"module:factory"``) network.

    Args:
        name: model name, see `list_models`.
        weights: a local state-dict file to load.
        pretrained: for the digits networks only (``digits-mbv2``, ``digits32-mbv2``): their
            trained weights (`train_on_digits`; default True).
        **kwargs: passed to the factory (e.g. ``num_classes``).
    """
    entry = model_entry(name)
    if entry.pretrain is not None and pretrained and weights is None and not kwargs:
        return import_plugin("pretrain", entry.pretrain)()
    try:
        model = entry.factory(**kwargs)
    except Exception as exc:
        if ":" not in name:
            raise
        raise ValueError(f"model {name!r}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {name!r}: factory returned {type(model).__name__}, not an nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def model_layers(name: str) -> list[LayerSpec]:
    """The `LayerSpec`s of a registered model at its registered input size (no weights,
    no data: enough to price it on any hardware model)."""
    from haq.layers import extract_layers

    return extract_layers(create_model(name, pretrained=False), model_entry(name).input_shape)


def digits32_mbv2(num_classes: int = 10, in_channels: int = 1, width: float = 0.5) -> MobileNetV2:
    """CIFAR-sized MobileNet-V2 (32x32 input, width 0.5, one input channel) for digits at 32x32."""
    return MobileNetV2(num_classes, width, in_channels, small_input=True)


def _resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 for ImageNet."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def _resnet50(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-50 for ImageNet."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)


def _resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 for CIFAR-10 (32x32)."""
    return CifarResNet(20, num_classes, in_channels)


def _mbv2_cifar(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV2:
    """MobileNet-V2 for 32x32 inputs (stride-1 stem and first stage)."""
    return MobileNetV2(num_classes, width, in_channels, small_input=True)


def _mbv1_cifar(num_classes: int = 10, in_channels: int = 3, width: float = 1.0) -> MobileNetV1:
    """MobileNet-V1 for 32x32 inputs (stride-1 stem)."""
    return MobileNetV1(num_classes, width, in_channels, small_input=True)


register_model("digits-mbv2", digits_mbv2, (1, 16, 16), "digits",
               "Small MobileNetV2-style network for the embedded digits data (trained weights shipped)",
               pretrain="haq.pretrain:digits_mbv2")
register_model("digits32-mbv2", digits32_mbv2, (1, 32, 32), "digits",
               "CIFAR-sized MobileNet-V2 (width 0.5) on digits upscaled to 32x32 (trained weights shipped)",
               data={"size": 32}, pretrain="haq.pretrain:digits32_mbv2")
register_model("mobilenet_v1", MobileNetV1, (3, 224, 224), "imagenet", "MobileNet-V1 (ImageNet, 224 px)")
register_model("mobilenet_v2", MobileNetV2, (3, 224, 224), "imagenet", "MobileNet-V2 (ImageNet, 224 px)")
register_model("mobilenet_v1_cifar", _mbv1_cifar, (3, 32, 32), "cifar10")
register_model("mobilenet_v2_cifar", _mbv2_cifar, (3, 32, 32), "cifar10")
register_model("resnet20", _resnet20, (3, 32, 32), "cifar10")
register_model("resnet18", _resnet18, (3, 224, 224), "imagenet")
register_model("resnet50", _resnet50, (3, 224, 224), "imagenet")

__all__ = ["ModelEntry", "cache_dir", "checkpoint_classes", "create_model", "list_models", "load_weights",
           "model_entry", "model_layers", "read_state_dict", "register_model", "state_fingerprint"]
