"""HAQ's published latency table for MobileNetV2 on the cloud BISMO, served as a cost model.

The one hardware table the HAQ authors published: the lookup table their public code
(github.com/mit-han-lab/haq, file
``lib/simulator/lookup_tables/qmobilenetv2_imagenet100_batch16_latency_table.npy``) uses
for MobileNetV2 on ImageNet-100 at batch 16, i.e. the paper's cloud accelerator (BISMO on a
Xilinx VU9P, Table 1). MIT License, Copyright (c) 2019 MIT HAN Lab; the table is shipped
unchanged in ``hw_models/data/`` with the license beside it.

The stored integers are read as clock cycles at ``freq_mhz`` (200 MHz by default): on the
layers the calibrated `bismo-cloud` finds compute bound, the table counts about 1.1 times the
cycles its 16 x 16 bit-serial array needs at batch 16 (docs/hardware.md). It prices exactly one network: the
engine's ``mobilenet_v2`` at 224 px with a 100-class head (``haq search --model mobilenet_v2
--dataset imagenet100``); any other list of layers is refused with the first difference.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hw_models.base import CostModel, make_config, positive
from hw_models.layer import LayerSpec

DATA = Path(__file__).with_name("data")
TABLE_FILE = DATA / "haq-mobilenetv2-cloud-latency.csv"
LAYERS_FILE = DATA / "haq-mobilenetv2-layers.csv"
SHAPE_FIELDS = ("kind", "c_in", "c_out", "kernel", "stride", "groups", "in_h", "in_w", "out_h", "out_w")


def reference_cycles() -> np.ndarray:
    """The published table as an integer array of shape (53, 8, 8), ``[layer, w - 1, a - 1]``."""
    df = pd.read_csv(TABLE_FILE)
    out = np.zeros((int(df["layer"].max()) + 1, 8, 8), dtype=np.int64)
    out[df["layer"].to_numpy(), df["w_bits"].to_numpy() - 1, df["a_bits"].to_numpy() - 1] = df["latency"].to_numpy()
    return out


def reference_layers() -> list[LayerSpec]:
    """The 53 layers the table prices (MobileNetV2, 224 px, 100 classes), in forward order."""
    df = pd.read_csv(LAYERS_FILE)
    return [LayerSpec(**{k: (str(v) if k in ("name", "kind") else int(v)) for k, v in row.items() if k != "layer"})
            for row in df.to_dict("records")]


@dataclasses.dataclass(frozen=True)
class HaqTableConfig:
    """Attributes:
        freq_mhz: clock that turns the table's cycles into milliseconds.
    """

    freq_mhz: float = 200.0

    def __post_init__(self) -> None:
        positive(self, "freq_mhz")


class HaqMobileNetV2Cloud(CostModel):
    """HAQ's published BISMO cloud latency table for MobileNetV2 (MIT License, MIT HAN Lab)."""

    name = "haq-mbv2-cloud"
    metrics = ("latency_ms",)

    def __init__(self, config: HaqTableConfig | None = None, **overrides: Any) -> None:
        self.config = make_config(HaqTableConfig, config or HaqTableConfig(), overrides)
        self.cycles = reference_cycles()
        self.layers = reference_layers()

    def check(self, layers: Sequence[LayerSpec]) -> None:
        """Raise ValueError unless `layers` are the table's network, naming the first difference."""
        hint = ("the table prices only MobileNetV2 at 224 px with a 100-class head "
                "(haq search --model mobilenet_v2 --dataset imagenet100)")
        if len(layers) != len(self.layers):
            raise ValueError(f"{self.name}: the network has {len(layers)} quantizable layers, "
                             f"the table has {len(self.layers)}; {hint}")
        for i, (got, want) in enumerate(zip(layers, self.layers)):
            for field in SHAPE_FIELDS:
                if getattr(got, field) != getattr(want, field):
                    raise ValueError(
                        f"{self.name}: layer {i} ({got.name!r}) has {field}={getattr(got, field)!r}, the table's "
                        f"layer {i} ({want.name}) has {field}={getattr(want, field)!r}; {hint}")

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        self.check(layers)
        return {"latency_ms": self.cycles / (self.config.freq_mhz * 1e3)}
