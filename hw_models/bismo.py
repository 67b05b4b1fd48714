"""BISMO: a bit-serial matrix multiplication overlay (Umuroglu, Rasnayake, Sjalander, FPL 2018).

The array has Dm x Dn dot-product units, each a Dk-wide binary dot product per cycle.
A (w, a)-bit product is computed as w * a binary passes, so compute time scales with
w * a. HAQ (Wang et al., CVPR 2019, Table 1) runs its latency experiments on two BISMO
instances, which are the presets here:

=========  ==================  =====  ========  ============  ==================
preset     FPGA                batch  array     memory ports  block RAM
=========  ==================  =====  ========  ============  ==================
edge       Xilinx Zynq-7020    1      8 x 8     4 x 64 bit    140 x 36 Kb
cloud      Xilinx VU9P         16     16 x 16   4 x 256 bit   2160 x 36 Kb
=========  ==================  =====  ========  ============  ==================

Assumptions not in the paper (overridable): Dk = 256 binary lanes (BISMO's own PYNQ-Z1
build is 8 x 256 x 8), 200 MHz for both, the ports deliver their full width every cycle,
the block RAM is split evenly between the weight (LHS) and activation (RHS) buffers,
results are requantised on chip and written back at ``result_bits`` = 8, and
convolutions are lowered to GEMM by im2col in DRAM (a k x k conv streams k*k*c_in*N
activation bits).

Latency of a layer = max(compute cycles, memory bits / port bits per cycle) / f_clk:

* compute = passes * ceil(N / Dn) * w * a, passes from `hw_models.mapping.gemm_passes`
  (Dm rows, Dk lanes);
* memory = weights * w + im2col activations * a * refetch + outputs * result_bits,
  where refetch = ceil(weight bits / weight buffer bits): when the weights do not fit
  on chip the activations are streamed once per weight tile.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_models.base import CostModel, make_config, positive
from hw_models.layer import A_GRID, W_GRID, LayerSpec, layer_arrays
from hw_models.mapping import DEPTHWISE_MAPPINGS, gemm_passes

BRAM_BLOCK_BITS = 36 * 1024
"""One Xilinx 36 Kb block RAM."""


@dataclasses.dataclass(frozen=True)
class BismoConfig:
    """Parameters of a BISMO instance (defaults: HAQ's edge preset, Table 1).

    Attributes:
        dm: rows of the dot-product-unit array (weight rows in parallel).
        dk: binary lanes of one dot-product unit (reduction length per cycle).
        dn: columns of the array (activation columns in parallel).
        freq_mhz: clock frequency.
        batch: images per inference.
        axi_ports: number of memory ports.
        port_bits: width of one memory port in bits per cycle.
        bram_blocks: number of 36 Kb block RAMs for the on-chip buffers.
        result_bits: bits per output element written back to DRAM.
        depthwise: ``"channel-parallel"`` or ``"literal"``, see `hw_models.mapping`.
    """

    dm: int = 8
    dk: int = 256
    dn: int = 8
    freq_mhz: float = 200.0
    batch: int = 1
    axi_ports: int = 4
    port_bits: int = 64
    bram_blocks: int = 140
    result_bits: int = 8
    depthwise: str = "channel-parallel"

    def __post_init__(self) -> None:
        positive(self, "dm", "dk", "dn", "freq_mhz", "batch", "axi_ports", "port_bits", "bram_blocks", "result_bits")
        if self.depthwise not in DEPTHWISE_MAPPINGS:
            raise ValueError(f"BismoConfig.depthwise must be one of {DEPTHWISE_MAPPINGS}, got {self.depthwise!r}")

    @property
    def bits_per_cycle(self) -> int:
        return self.axi_ports * self.port_bits

    @property
    def weight_buffer_bits(self) -> float:
        return self.bram_blocks * BRAM_BLOCK_BITS / 2


BISMO_EDGE = BismoConfig()
"""Xilinx Zynq-7020 (HAQ Table 1): batch 1, 8x8 array, 4 x 64-bit AXI, 140 x 36 Kb BRAM."""
BISMO_CLOUD = BismoConfig(dm=16, dn=16, batch=16, port_bits=256, bram_blocks=2160)
"""Xilinx VU9P (HAQ Table 1): batch 16, 16x16 array, 4 x 256-bit AXI, 2160 x 36 Kb BRAM."""


class BismoModel(CostModel):
    """Bit-serial BISMO accelerator (latency in ms); see the module docstring."""

    name = "bismo"
    metrics = ("latency_ms",)

    def __init__(self, config: BismoConfig = BISMO_EDGE, **overrides: Any) -> None:
        self.config = make_config(BismoConfig, config, overrides)

    def cycles(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """Compute and memory cycles per layer, each of shape (L, 8, 8)."""
        c = self.config
        arr = layer_arrays(layers, batch=c.batch)
        passes, streamed_k = gemm_passes(arr, c.dm, c.dk, c.depthwise)
        compute = passes * np.ceil(arr["N"] / c.dn) * W_GRID * A_GRID
        weight_bits = arr["weights"] * W_GRID
        refetch = np.maximum(1.0, np.ceil(weight_bits / c.weight_buffer_bits))
        act_bits = streamed_k * arr["N"] * A_GRID * refetch
        out_bits = arr["outputs"] * c.result_bits
        memory = (weight_bits + act_bits + out_bits) / c.bits_per_cycle
        shape = (len(layers), 8, 8)
        return {"compute": np.broadcast_to(compute, shape).copy(),
                "memory": np.broadcast_to(memory, shape).copy()}

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        cyc = self.cycles(layers)
        cycles = np.maximum(cyc["compute"], cyc["memory"])
        return {"latency_ms": cycles / (self.config.freq_mhz * 1e3)}

    def memory_bound(self, layers: Sequence[LayerSpec]) -> np.ndarray:
        """Boolean (L, 8, 8): True where memory time exceeds compute time (roofline)."""
        cyc = self.cycles(layers)
        return cyc["memory"] > cyc["compute"]


def bismo_edge(**overrides: Any) -> BismoModel:
    """BISMO on a Xilinx Zynq-7020, HAQ's edge accelerator (Table 1)."""
    model = BismoModel(BISMO_EDGE, **overrides)
    model.name = "bismo-edge"
    return model


def bismo_cloud(**overrides: Any) -> BismoModel:
    """BISMO on a Xilinx VU9P, HAQ's cloud accelerator (Table 1)."""
    model = BismoModel(BISMO_CLOUD, **overrides)
    model.name = "bismo-cloud"
    return model
