"""BISMO: a bit-serial matrix multiplication overlay (Umuroglu, Rasnayake, Sjalander, FPL 2018).

BISMO runs a GEMM in three stages that work concurrently, handing tiles to each other
through on-chip buffers (the paper's fetch / execute / result pipeline):

* **fetch** reads both operands from DRAM into the block-RAM buffers. Operands are stored
  bit-plane by bit-plane, each row (weights) and column (activations) of one bit-plane
  padded to whole Dk-bit words, so a (w, a)-bit layer fetches
  ``groups * ceil(K / Dk) * Dk * (M * w + N * a)`` bits (activations once more per weight
  chunk that does not fit the weight buffer, half of the block RAM);
* **execute** runs the Dm x Dn array of Dk-wide binary dot-product units: one pass per
  bit-plane pair, ``groups * ceil(M / Dm) * ceil(K / Dk) * ceil(N / Dn) * w * a`` cycles;
* **result** writes the outputs back at ``result_bits`` each.

Because the stages overlap, a layer takes ``max(fetch, execute, result) / f_clk``: a layer
with little reuse (depthwise, and layers whose M fits one or two array rows) is bound by
streaming its activations, so its latency follows the activation bits only; the others are
bound by bit-serial compute and follow w * a.

HAQ (Wang et al., CVPR 2019, Table 1) runs its latency experiments on two BISMO instances,
the presets here:

=========  ==================  =====  ========  ============  ==================
preset     FPGA                batch  array     memory ports  block RAM
=========  ==================  =====  ========  ============  ==================
edge       Xilinx Zynq-7020    1      8 x 8     4 x 64 bit    140 x 36 Kb
cloud      Xilinx VU9P         16     16 x 16   4 x 256 bit   2160 x 36 Kb
=========  ==================  =====  ========  ============  ==================

The fetch stage delivers ``min(port_efficiency * ports * port width, DRAM bandwidth)``
bits per cycle. DRAM bandwidths are the boards' datasheet peaks (Zynq-7020: a 32-bit
DDR3-1066 controller, 4.26 GB/s; VU9P boards: four 64-bit DDR4-2400 channels, 76.8 GB/s).
``dk``, ``port_efficiency`` and the depthwise mapping are not in the paper: they are fitted
to HAQ's own published cloud table by ``experiments/calibrate_bismo.py``, and the edge preset
uses the same fitted values with Table 1's differences (docs/hardware.md gives the fit, the
residuals and the datasheet values beside them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_models.base import CostModel, make_config, positive
from hw_models.layer import A_GRID, W_GRID, LayerSpec, layer_arrays
from hw_models.mapping import DEPTHWISE_MAPPINGS, mapped_gemm

BRAM_BLOCK_BITS = 36 * 1024
"""One Xilinx 36 Kb block RAM."""

FITTED_DK = 256
"""Binary lanes per dot-product unit, fitted to HAQ's cloud table (BISMO's PYNQ-Z1 build also has 256)."""
FITTED_PORT_EFFICIENCY = 0.285
"""Share of the AXI ports' width the fetch stage sustains, fitted to HAQ's cloud table."""


@dataclasses.dataclass(frozen=True)
class BismoConfig:
    """Parameters of a BISMO instance (defaults: HAQ's edge preset, Table 1).

    Attributes:
        dm: rows of the dot-product-unit array (weight rows in parallel).
        dk: binary lanes of one dot-product unit (reduction length per cycle, and the
            width of one buffer word).
        dn: columns of the array (activation columns in parallel).
        freq_mhz: clock frequency.
        batch: images per inference.
        axi_ports: number of memory ports.
        port_bits: width of one memory port in bits per cycle.
        port_efficiency: share of ``axi_ports * port_bits`` that fetch (and result) sustain.
        dram_gbs: the board's peak DRAM bandwidth in GB/s; caps the fetch stage.
        bram_blocks: number of 36 Kb block RAMs for the on-chip buffers.
        result_bits: bits per output element written back to DRAM.
        depthwise: ``"channel-parallel"`` or ``"literal"``, see `hw_models.mapping`.
    """

    dm: int = 8
    dk: int = FITTED_DK
    dn: int = 8
    freq_mhz: float = 200.0
    batch: int = 1
    axi_ports: int = 4
    port_bits: int = 64
    port_efficiency: float = FITTED_PORT_EFFICIENCY
    dram_gbs: float = 4.264
    bram_blocks: int = 140
    result_bits: int = 8
    depthwise: str = "channel-parallel"

    def __post_init__(self) -> None:
        positive(self, "dm", "dk", "dn", "freq_mhz", "batch", "axi_ports", "port_bits", "port_efficiency",
                 "dram_gbs", "bram_blocks", "result_bits")
        if self.port_efficiency > 1:
            raise ValueError(f"BismoConfig.port_efficiency must be in (0, 1], got {self.port_efficiency!r}")
        if self.depthwise not in DEPTHWISE_MAPPINGS:
            raise ValueError(f"BismoConfig.depthwise must be one of {DEPTHWISE_MAPPINGS}, got {self.depthwise!r}")

    @property
    def bits_per_cycle(self) -> float:
        """DRAM bits the fetch stage (and, on its own channel, the result stage) moves per cycle."""
        ports = self.port_efficiency * self.axi_ports * self.port_bits
        dram = self.dram_gbs * 8e3 / self.freq_mhz
        return min(ports, dram)

    @property
    def weight_buffer_bits(self) -> float:
        return self.bram_blocks * BRAM_BLOCK_BITS / 2


BISMO_EDGE = BismoConfig()
"""Xilinx Zynq-7020 (HAQ Table 1): batch 1, 8x8 array, 4 x 64-bit AXI, 140 x 36 Kb BRAM."""
BISMO_CLOUD = BismoConfig(dm=16, dn=16, batch=16, port_bits=256, bram_blocks=2160, dram_gbs=76.8)
"""Xilinx VU9P (HAQ Table 1): batch 16, 16x16 array, 4 x 256-bit AXI, 2160 x 36 Kb BRAM."""


class BismoModel(CostModel):
    """Bit-serial BISMO accelerator (latency in ms); see the module docstring."""

    name = "bismo"
    metrics = ("latency_ms",)

    def __init__(self, config: BismoConfig = BISMO_EDGE, **overrides: Any) -> None:
        self.config = make_config(BismoConfig, config, overrides)

    def stage_cycles(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """Cycles of the fetch, execute and result stages per layer, each of shape (L, 8, 8)."""
        c = self.config
        arr = layer_arrays(layers, batch=c.batch)
        groups, m, k = mapped_gemm(arr, c.dm, c.depthwise)
        words = groups * np.ceil(k / c.dk)  # Dk-bit words per row or column of one bit-plane
        execute = words * np.ceil(m / c.dm) * np.ceil(arr["N"] / c.dn) * W_GRID * A_GRID
        weight_bits = words * c.dk * m * W_GRID
        refetch = np.maximum(1.0, np.ceil(weight_bits / c.weight_buffer_bits))
        act_bits = words * c.dk * arr["N"] * A_GRID * refetch
        fetch = (weight_bits + act_bits) / c.bits_per_cycle
        result = arr["outputs"] * c.result_bits / c.bits_per_cycle
        shape = (len(layers), 8, 8)
        return {name: np.broadcast_to(v, shape).astype(np.float64)
                for name, v in (("fetch", fetch), ("execute", execute), ("result", result))}

    def cycles(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """Compute (execute) and memory (the slower of fetch and result) cycles, each (L, 8, 8)."""
        s = self.stage_cycles(layers)
        return {"compute": s["execute"], "memory": np.maximum(s["fetch"], s["result"])}

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
