"""Model size and a generic roofline accelerator."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_models.base import CostModel, make_config, positive
from hw_models.layer import A_GRID, W_GRID, LayerSpec, layer_arrays

BYTES_PER_MB = 1e6


@dataclasses.dataclass(frozen=True)
class ModelSizeConfig:
    """Weight storage.

    Attributes:
        codebook_bits: 0 for linear quantization; for k-means quantization (HAQ Section
            4.3, Deep Compression) each layer also stores 2^w_bits centroids of this many
            bits (32 for float centroids).
        index_bits: the sparse format for pruned layers: each non-zero weight is stored with
            a relative index of this many bits (Deep Compression's 4 bits for conv layers;
            a gap longer than 2^index_bits - 1 costs a padding zero, ignored here). Each
            layer is stored dense or sparse, whichever is smaller.
    """

    codebook_bits: int = 0
    index_bits: int = 4

    def __post_init__(self) -> None:
        if self.codebook_bits < 0:
            raise ValueError(f"ModelSizeConfig.codebook_bits must be >= 0, got {self.codebook_bits!r}")
        if self.index_bits < 1:
            raise ValueError(f"ModelSizeConfig.index_bits must be >= 1, got {self.index_bits!r}")


class ModelSizeModel(CostModel):
    """Weight storage in MB (10^6 bytes): #weights * w_bits / 8, plus k-means codebooks;
    a pruned layer (``LayerSpec.density`` < 1) costs min(dense, non-zeros * (w_bits +
    index_bits)) bits."""

    name = "model-size"
    metrics = ("size_mb",)
    exploits_sparsity = True

    def __init__(self, config: ModelSizeConfig | None = None, **overrides: Any) -> None:
        self.config = make_config(ModelSizeConfig, config or ModelSizeConfig(), overrides)

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        arr = layer_arrays(layers)
        dense = arr["weights"] * W_GRID
        sparse = arr["nonzero"] * (W_GRID + self.config.index_bits)
        bits = np.minimum(dense, sparse) + self.config.codebook_bits * 2.0**W_GRID
        table = np.broadcast_to(bits / 8 / BYTES_PER_MB, (len(layers), 8, 8)).copy()
        return {"size_mb": table}


PRECISION_SCALINGS = ("bit-serial", "bit-parallel", "fixed")


@dataclasses.dataclass(frozen=True)
class RooflineConfig:
    """A generic accelerator described by a few numbers.

    Attributes:
        peak_gmacs: peak throughput at w8a8 in 10^9 multiply-accumulates per second.
        bandwidth_gbs: DRAM bandwidth in GB/s.
        batch: images per inference.
        scaling: how throughput grows at low precision: ``"bit-serial"`` (x 64 / (w*a),
            e.g. BISMO, Stripes), ``"bit-parallel"`` (x 8 / max(w, a), e.g. packed SIMD
            lanes) or ``"fixed"`` (no gain, e.g. an int8-only NPU).
        result_bits: bits per output element written back.
        pj_per_mac: energy of one w8a8 MAC (scaled with the same law as throughput).
        pj_per_dram_bit: energy of one DRAM bit.
    """

    peak_gmacs: float = 256.0
    bandwidth_gbs: float = 8.0
    batch: int = 1
    scaling: str = "bit-serial"
    result_bits: int = 8
    pj_per_mac: float = 1.0
    pj_per_dram_bit: float = 15.0

    def __post_init__(self) -> None:
        positive(self, "peak_gmacs", "bandwidth_gbs", "batch", "result_bits")
        if self.scaling not in PRECISION_SCALINGS:
            raise ValueError(f"RooflineConfig.scaling must be one of {PRECISION_SCALINGS}, got {self.scaling!r}")
        if self.pj_per_mac < 0 or self.pj_per_dram_bit < 0:
            raise ValueError("RooflineConfig energies must be >= 0")


def precision_speedup(scaling: str, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Throughput multiplier over w8a8 under a precision-scaling law."""
    if scaling == "bit-serial":
        return 64.0 / (w_bits * a_bits)
    if scaling == "bit-parallel":
        return 8.0 / np.maximum(w_bits, a_bits)
    return np.ones(np.broadcast_shapes(np.shape(w_bits), np.shape(a_bits)))


class RooflineModel(CostModel):
    """Roofline accelerator: latency = max(MACs / throughput, bytes / bandwidth)."""

    name = "roofline"
    metrics = ("latency_ms", "energy_mj")

    def __init__(self, config: RooflineConfig | None = None, **overrides: Any) -> None:
        self.config = make_config(RooflineConfig, config or RooflineConfig(), overrides)

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        c = self.config
        arr = layer_arrays(layers, batch=c.batch)
        macs = arr["weights"] * arr["N"]  # every weight meets every output pixel
        speed = precision_speedup(c.scaling, W_GRID, A_GRID)
        compute_s = macs / (c.peak_gmacs * 1e9 * speed)
        dram_bits = arr["weights"] * W_GRID + arr["inputs"] * A_GRID + arr["outputs"] * c.result_bits
        memory_s = dram_bits / 8 / (c.bandwidth_gbs * 1e9)
        shape = (len(layers), 8, 8)
        latency = np.broadcast_to(np.maximum(compute_s, memory_s) * 1e3, shape).copy()
        energy_pj = macs * c.pj_per_mac / speed + dram_bits * c.pj_per_dram_bit
        return {"latency_ms": latency, "energy_mj": np.broadcast_to(energy_pj * 1e-9, shape).copy()}
