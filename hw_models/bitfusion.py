"""BitFusion: bit-level dynamically composable accelerator (Sharma et al., ISCA 2018).

A fusion unit holds 16 2-bit BitBricks and fuses them to the operand widths at hand:
per cycle it computes ``floor(8 / max(a, 2)) * floor(8 / max(w, 2))`` products, so
3 bits cost what 4 bits cost and 5..7 bits cost what 8 bits cost. Operands are stored and
moved in the width the bricks run (`brick_bits`: 1-2 -> 2, 3-4 -> 4, 5-8 -> 8), so the same
holds for buffer and DRAM traffic: in every metric a 3-bit operand costs what a 4-bit one
does. HAQ's energy
experiments (Section 4.2) use BitFusion; the configuration is the Eyeriss-matched one of
BitFusion's public simulator: 16 x 32 fusion units at 500 MHz, 64 / 32 / 16 KB weight /
input / output buffers, a 192-bit DRAM interface, and its 45 nm energies.

Mapping (our assumptions, stated): a GEMM's reduction dimension K runs along the 16
rows and its output channels M along the 32 columns (depthwise layers packed
channel-parallel, see `hw_models.mapping`); the products a fusion unit gains at low
precision are spent on more output pixels, so a pass over N columns takes
``ceil(N / products_per_cycle)`` cycles. Dataflow is weight stationary: each weight is
read from its buffer once, each im2col input once per M tile, each 32-bit partial sum
written and read once per K tile. DRAM traffic is weights + inputs (re-read once per
weight tile that does not fit the weight buffer) + outputs at ``result_bits``.

Energy = compute cycles * 235.1 pJ (the whole array) + buffer bits * per-bit energy +
DRAM bits * 15 pJ. Latency = max(compute cycles, DRAM bits / 192) / f_clk.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_models.base import CostModel, make_config, positive
from hw_models.layer import A_GRID, W_GRID, LayerSpec, layer_arrays
from hw_models.mapping import DEPTHWISE_MAPPINGS, gemm_passes

PSUM_BITS = 32


@dataclasses.dataclass(frozen=True)
class BitFusionConfig:
    """Parameters of a BitFusion instance (defaults: the Eyeriss-matched configuration).

    Energies are in pJ per bit (buffers, DRAM) or per cycle of the whole array (core),
    45 nm, from BitFusion's public simulator.
    """

    rows: int = 16
    cols: int = 32
    freq_mhz: float = 500.0
    batch: int = 16
    wbuf_kb: float = 64.0
    ibuf_kb: float = 32.0
    obuf_kb: float = 16.0
    dram_bits_per_cycle: int = 192
    result_bits: int = 8
    core_pj_per_cycle: float = 235.1
    wbuf_read_pj: float = 0.021
    wbuf_write_pj: float = 0.029
    ibuf_read_pj: float = 0.059
    ibuf_write_pj: float = 0.114
    obuf_read_pj: float = 0.033
    obuf_write_pj: float = 0.073
    dram_pj_per_bit: float = 15.0
    depthwise: str = "channel-parallel"

    def __post_init__(self) -> None:
        positive(self, "rows", "cols", "freq_mhz", "batch", "wbuf_kb", "ibuf_kb", "obuf_kb",
                 "dram_bits_per_cycle", "result_bits")
        for f in dataclasses.fields(self):
            if "_pj" in f.name and getattr(self, f.name) < 0:
                raise ValueError(f"BitFusionConfig.{f.name} must be >= 0, got {getattr(self, f.name)!r}")
        if self.depthwise not in DEPTHWISE_MAPPINGS:
            raise ValueError(f"BitFusionConfig.depthwise must be one of {DEPTHWISE_MAPPINGS}, got {self.depthwise!r}")


def brick_bits(bits: np.ndarray) -> np.ndarray:
    """The operand width the bricks run and store: 2 for 1-2 bits, 4 for 3-4, 8 for 5-8."""
    bits = np.asarray(bits)
    return np.where(bits <= 2, 2, np.where(bits <= 4, 4, 8)).astype(np.float64)


def products_per_cycle(w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Products one fusion unit computes per cycle: floor(8/max(a,2)) * floor(8/max(w,2))."""
    return np.floor(8 / np.maximum(a_bits, 2)) * np.floor(8 / np.maximum(w_bits, 2))


class BitFusionModel(CostModel):
    """BitFusion accelerator: latency (ms) and energy (mJ); see the module docstring."""

    name = "bitfusion"
    metrics = ("latency_ms", "energy_mj")
    supported_bits = (2, 4, 8)

    def __init__(self, config: BitFusionConfig | None = None, **overrides: Any) -> None:
        self.config = make_config(BitFusionConfig, config or BitFusionConfig(), overrides)

    def breakdown(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """Compute cycles, DRAM bits and energy terms (pJ) per layer, each (L, 8, 8)."""
        c = self.config
        arr = layer_arrays(layers, batch=c.batch)
        passes, streamed_k = gemm_passes(arr, c.cols, c.rows, c.depthwise)
        ppc = products_per_cycle(W_GRID, A_GRID)
        compute = passes * np.ceil(arr["N"] / ppc)
        w_bits, a_bits = brick_bits(W_GRID), brick_bits(A_GRID)

        weight_bits = arr["weights"] * w_bits
        refetch = np.maximum(1.0, np.ceil(weight_bits / (c.wbuf_kb * 8192)))
        input_bits = arr["inputs"] * a_bits
        dram = weight_bits + input_bits * refetch + arr["outputs"] * c.result_bits

        im2col_bits = streamed_k * arr["N"] * a_bits
        m_tiles = np.ceil(arr["M"] / c.cols)
        k_tiles = np.ceil(arr["K"] / c.rows)
        is_dw = (arr["depthwise"] > 0) & (c.depthwise == "channel-parallel")
        m_tiles = np.where(is_dw, 1.0, m_tiles)
        psum_bits = arr["outputs"] * PSUM_BITS * k_tiles
        e = {
            "core": compute * c.core_pj_per_cycle,
            "wbuf": weight_bits * refetch * c.wbuf_write_pj + weight_bits * c.wbuf_read_pj,
            "ibuf": input_bits * refetch * c.ibuf_write_pj + im2col_bits * m_tiles * c.ibuf_read_pj,
            "obuf": psum_bits * (c.obuf_write_pj + c.obuf_read_pj),
            "dram": dram * c.dram_pj_per_bit,
        }
        shape = (len(layers), 8, 8)
        out = {"compute_cycles": compute, "dram_bits": dram}
        out.update({f"energy_{k}_pj": v for k, v in e.items()})
        return {k: np.broadcast_to(v, shape).copy() for k, v in out.items()}

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        b = self.breakdown(layers)
        cycles = np.maximum(b["compute_cycles"], b["dram_bits"] / self.config.dram_bits_per_cycle)
        energy_pj = sum(v for k, v in b.items() if k.startswith("energy_"))
        return {"latency_ms": cycles / (self.config.freq_mhz * 1e3), "energy_mj": energy_pj * 1e-9}
