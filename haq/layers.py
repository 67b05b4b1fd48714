"""Find the quantizable layers of any PyTorch model."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from hw_models import LayerSpec

log = logging.getLogger(__name__)

QUANTIZABLE = (nn.Conv2d, nn.Linear)


def quantizable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every `nn.Conv2d` and `nn.Linear` by qualified name, in registration order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)}


def extract_layers(model: nn.Module, input_shape: Sequence[int], device: str | torch.device | None = None) -> list[LayerSpec]:
    """The ordered `LayerSpec` list of a model's quantizable layers.

    Runs one forward pass on a zero batch of `input_shape` (``(C, H, W)`` or with a
    leading batch dimension) to record feature-map sizes. Layers appear in execution
    order. A layer called twice in one forward pass raises ValueError (its bitwidth and
    cost would be ambiguous); layers that the forward pass never reaches are left out
    and named in a warning.
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        shape = (1, *shape)
    if len(shape) not in (2, 4):
        raise ValueError(f"input_shape must be (C, H, W) or (N, C, H, W), got {tuple(input_shape)}")
    modules = quantizable_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d or nn.Linear layer to quantize")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else "cpu"

    calls: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    order: list[str] = []

    def hook(name: str):
        def _record(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if name not in calls:
                order.append(name)
            calls.setdefault(name, []).append((tuple(inputs[0].shape), tuple(output.shape)))
        return _record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    reused = [n for n, c in calls.items() if len(c) > 1]
    if reused:
        raise ValueError(f"layer(s) {reused} are called more than once in one forward pass; "
                         "give each use its own module so each can get its own bitwidth")
    unreached = [n for n in modules if n not in calls]
    if unreached:
        log.warning("layers never reached by the forward pass are not quantized: %s", unreached)

    specs = []
    for name in order:
        m = modules[name]
        (in_shape, out_shape), = calls[name]
        if isinstance(m, nn.Linear):
            if len(in_shape) != 2:
                raise ValueError(f"layer {name!r}: nn.Linear on a {len(in_shape)}-d input is not supported "
                                 "(only (batch, features) inputs)")
            specs.append(LayerSpec(name, "fc", m.in_features, m.out_features, density=_density(m.weight)))
            continue
        k = m.kernel_size
        if k[0] != k[1] or m.stride[0] != m.stride[1]:
            raise ValueError(f"layer {name!r}: only square kernels and strides are supported, got {k}, {m.stride}")
        depthwise = m.groups == m.in_channels and m.groups > 1 and m.out_channels % m.in_channels == 0
        if depthwise and m.out_channels != m.in_channels:
            depthwise = False  # channel multiplier > 1: price as a grouped conv
        specs.append(LayerSpec(
            name, "dwconv" if depthwise else "conv", m.in_channels, m.out_channels, kernel=k[0],
            stride=m.stride[0], groups=m.groups, in_h=in_shape[2], in_w=in_shape[3],
            out_h=out_shape[2], out_w=out_shape[3], density=_density(m.weight)))
    return specs


def _density(weight: torch.Tensor) -> float:
    """Fraction of non-zero weights (1.0 for a dense layer)."""
    return float(torch.count_nonzero(weight.detach())) / max(1, weight.numel())
