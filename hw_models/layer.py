"""The hardware-relevant description of one quantizable layer.

`LayerSpec` is the only thing a cost model knows about a network: shapes, never torch
modules. `haq.extract_layers` produces them from a real model; users may also write them
by hand (or load them from JSON) to price a network that is not in PyTorch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LAYER_KINDS = ("conv", "dwconv", "fc")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One quantizable layer (a convolution or a fully connected layer).

    Args:
        name: qualified module name, unique within a model.
        kind: ``"conv"`` (dense or grouped), ``"dwconv"`` (depthwise: groups == c_in) or
            ``"fc"`` (fully connected; kernel 1 and 1x1 feature maps).
        c_in, c_out: input and output channels (features for ``fc``).
        kernel: square kernel size.
        stride: convolution stride.
        groups: convolution groups; must divide ``c_in`` and ``c_out``.
        in_h, in_w: input feature-map size of one sample.
        out_h, out_w: output feature-map size of one sample.
        density: fraction of the weights that are non-zero (1.0: dense; a pruned layer has
            less). Only cost models with ``exploits_sparsity`` use it.

    The batch size is not part of a layer: it belongs to the hardware preset.
    """

    name: str
    kind: str
    c_in: int
    c_out: int
    kernel: int = 1
    stride: int = 1
    groups: int = 1
    in_h: int = 1
    in_w: int = 1
    out_h: int = 1
    out_w: int = 1
    density: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"LayerSpec name must be a non-empty string, got {self.name!r}")
        if self.kind not in LAYER_KINDS:
            raise ValueError(
                f"layer {self.name!r}: kind must be one of {LAYER_KINDS}, got {self.kind!r}"
            )
        for field in ("c_in", "c_out", "kernel", "stride", "groups", "in_h", "in_w", "out_h", "out_w"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"layer {self.name!r}: {field} must be a positive integer, got {value!r}")
            object.__setattr__(self, field, int(value))
        if isinstance(self.density, bool) or not isinstance(self.density, (int, float, np.floating)) \
                or not 0.0 <= float(self.density) <= 1.0:
            raise ValueError(f"layer {self.name!r}: density must be in [0, 1], got {self.density!r}")
        object.__setattr__(self, "density", float(self.density))
        if self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(
                f"layer {self.name!r}: groups={self.groups} must divide c_in={self.c_in} "
                f"and c_out={self.c_out}"
            )
        if self.kind == "dwconv" and self.groups != self.c_in:
            raise ValueError(
                f"layer {self.name!r}: a depthwise layer has groups == c_in "
                f"(got groups={self.groups}, c_in={self.c_in})"
            )
        if self.kind == "fc" and (self.kernel, self.in_h, self.in_w, self.out_h, self.out_w, self.groups) != (1,) * 6:
            raise ValueError(
                f"layer {self.name!r}: an fc layer has kernel 1, groups 1 and 1x1 feature maps"
            )

    # ----------------------------------------------------------------- derived sizes
    @property
    def n_weights(self) -> int:
        """Number of weights (bias excluded): c_out * c_in / groups * k * k."""
        return self.c_out * (self.c_in // self.groups) * self.kernel * self.kernel

    @property
    def gemm(self) -> tuple[int, int, int]:
        """(M, K, N-per-sample) of one group's GEMM: M = c_out/g, K = c_in/g * k*k, N = H_out*W_out."""
        g = self.groups
        return self.c_out // g, (self.c_in // g) * self.kernel * self.kernel, self.out_h * self.out_w

    def macs(self, batch: int = 1) -> int:
        """Multiply-accumulates for ``batch`` samples."""
        return self.n_weights * self.out_h * self.out_w * batch

    @property
    def in_elems(self) -> int:
        """Input activations of one sample."""
        return self.c_in * self.in_h * self.in_w

    @property
    def out_elems(self) -> int:
        """Output activations of one sample."""
        return self.c_out * self.out_h * self.out_w

    # -------------------------------------------------------------- serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerSpec:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown LayerSpec field(s) {unknown}; valid fields: {sorted(names)}")
        return cls(**data)


def check_layers(layers: Sequence[LayerSpec]) -> list[LayerSpec]:
    """Validate a model's layer list: non-empty, LayerSpec items, unique names."""
    layers = list(layers)
    if not layers:
        raise ValueError("a model needs at least one quantizable layer")
    seen: set[str] = set()
    for layer in layers:
        if not isinstance(layer, LayerSpec):
            raise TypeError(f"expected LayerSpec, got {type(layer).__name__}")
        if layer.name in seen:
            raise ValueError(f"duplicate layer name {layer.name!r}")
        seen.add(layer.name)
    return layers


def layer_arrays(layers: Iterable[LayerSpec], batch: int = 1) -> dict[str, np.ndarray]:
    """Per-layer shape quantities as float64 arrays of shape (L, 1, 1), ready to broadcast
    against bit grids of shape (1, 8, 1) / (1, 1, 8)."""
    layers = list(layers)

    def col(values: Iterable[float]) -> np.ndarray:
        return np.asarray(list(values), dtype=np.float64).reshape(-1, 1, 1)

    m, k, n = zip(*(layer.gemm for layer in layers))
    return {
        "groups": col(layer.groups for layer in layers),
        "M": col(m),
        "K": col(k),
        "N": col(v * batch for v in n),
        "weights": col(layer.n_weights for layer in layers),
        "nonzero": col(round(layer.n_weights * layer.density) for layer in layers),
        "inputs": col(layer.in_elems * batch for layer in layers),
        "outputs": col(layer.out_elems * batch for layer in layers),
        "depthwise": col(layer.kind == "dwconv" for layer in layers),
    }


BITS = np.arange(1, 9, dtype=np.float64)
W_GRID = BITS.reshape(1, 8, 1)
"""Weight bits 1..8 laid along axis 1 of a (L, 8, 8) cost table."""
A_GRID = BITS.reshape(1, 1, 8)
"""Activation bits 1..8 laid along axis 2 of a (L, 8, 8) cost table."""
