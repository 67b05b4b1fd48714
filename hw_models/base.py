"""The cost-model contract.

A cost model prices a list of `LayerSpec` at every (w_bits, a_bits) pair in one
vectorised call: ``table(layers, metric)`` returns an array of shape (L, 8, 8) indexed
``[layer, w_bits - 1, a_bits - 1]``. Everything else (one layer's cost, a policy's total)
is derived from that table, so pricing a policy during a search is a sum of lookups.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from hw_models.layer import LayerSpec, check_layers

METRIC_UNITS: dict[str, str] = {"latency_ms": "ms", "energy_mj": "mJ", "size_mb": "MB"}
"""Every metric a cost model may report, with its unit."""

MAX_BITS = 8


def check_bits(w_bits: int, a_bits: int) -> None:
    """Raise ValueError unless both bitwidths are integers in 1..8."""
    for label, b in (("w_bits", w_bits), ("a_bits", a_bits)):
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 1 <= b <= MAX_BITS:
            raise ValueError(f"{label} must be an integer in 1..{MAX_BITS}, got {b!r}")


class CostModel(abc.ABC):
    """A hardware cost model.

    Subclasses set `metrics` (a subset of `METRIC_UNITS`) and implement `_tables`, which
    returns one (L, 8, 8) array per metric for a list of layers. Parameters live in a
    dataclass at ``self.config`` so they can be documented, overridden and saved.
    """

    name: str = "cost-model"
    metrics: tuple[str, ...] = ()
    supported_bits: tuple[int, ...] = tuple(range(1, MAX_BITS + 1))
    """Bitwidths the hardware runs natively; a search restricts its choices to these."""
    exploits_sparsity: bool = False
    """Whether zero weights cost less on this hardware (False for BISMO and BitFusion)."""
    config: Any = None

    @abc.abstractmethod
    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """Return ``{metric: array of shape (L, 8, 8)}`` for every metric in `metrics`."""

    # ---------------------------------------------------------------- public API
    @property
    def units(self) -> dict[str, str]:
        return {m: METRIC_UNITS[m] for m in self.metrics}

    def check_metric(self, metric: str) -> None:
        if metric not in self.metrics:
            raise ValueError(
                f"hardware model {self.name!r} does not report {metric!r}; it reports {list(self.metrics)}"
            )

    def tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        """All metrics' cost tables, each of shape (L, 8, 8)."""
        layers = check_layers(layers)
        out = self._tables(layers)
        for metric, table in out.items():
            if table.shape != (len(layers), MAX_BITS, MAX_BITS):
                raise RuntimeError(f"{self.name}: {metric} table has shape {table.shape}")
        return out

    def table(self, layers: Sequence[LayerSpec], metric: str) -> np.ndarray:
        """Cost table of shape (L, 8, 8) indexed ``[layer, w_bits - 1, a_bits - 1]``."""
        self.check_metric(metric)
        return self.tables(layers)[metric]

    def layer_cost(self, layer: LayerSpec, w_bits: int, a_bits: int) -> dict[str, float]:
        """Cost of one layer at (w_bits, a_bits), one entry per metric."""
        check_bits(w_bits, a_bits)
        return {m: float(t[0, w_bits - 1, a_bits - 1]) for m, t in self.tables([layer]).items()}

    def policy_cost(
        self, layers: Sequence[LayerSpec], policy: Sequence[tuple[int, int]], metric: str
    ) -> float:
        """Total cost of a per-layer policy ``[(w_bits, a_bits), ...]``."""
        return policy_cost(self.table(layers, metric), policy)

    def describe(self) -> dict[str, Any]:
        """Name, metrics with units and parameters, for logs and `haq hw list`."""
        params = dataclasses.asdict(self.config) if dataclasses.is_dataclass(self.config) else {}
        return {"name": self.name, "metrics": self.units, "params": params,
                "doc": (type(self).__doc__ or "").strip().splitlines()[0] if type(self).__doc__ else ""}


def policy_cost(table: np.ndarray, policy: Sequence[tuple[int, int]]) -> float:
    """Sum of a (L, 8, 8) cost table over a policy: one lookup per layer."""
    if len(policy) != table.shape[0]:
        raise ValueError(f"policy has {len(policy)} layers, the cost table has {table.shape[0]}")
    w = np.fromiter((p[0] for p in policy), dtype=np.int64, count=len(policy))
    a = np.fromiter((p[1] for p in policy), dtype=np.int64, count=len(policy))
    if w.min() < 1 or a.min() < 1 or w.max() > MAX_BITS or a.max() > MAX_BITS:
        raise ValueError(f"policy bits must lie in 1..{MAX_BITS}, got {list(policy)}")
    return float(table[np.arange(len(policy)), w - 1, a - 1].sum())


def make_config(config_cls: type, preset: Any, overrides: dict[str, Any]) -> Any:
    """`dataclasses.replace` with an error that names unknown parameters and the valid ones."""
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {config_cls.__name__}; valid: {valid}")
    for name, value in overrides.items():
        _check_type(config_cls.__name__, name, getattr(preset, name), value)
    return dataclasses.replace(preset, **overrides)


def _check_type(owner: str, name: str, default: Any, value: Any) -> None:
    """Raise TypeError when an override's type does not fit the field's default (an int
    field takes an int, a float field an int or a float, a string field a string), so
    ``--hw-param batch=x`` is refused by name instead of failing deep in a formula."""
    if isinstance(default, bool):
        ok, want = isinstance(value, bool), "true or false"
    elif isinstance(default, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "an integer"
    elif isinstance(default, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    elif isinstance(default, str):
        ok, want = isinstance(value, str), "a string"
    else:
        return
    if not ok:
        raise TypeError(f"{owner}.{name} must be {want} (default {default!r}), got {value!r}")


def positive(config: Any, *fields: str) -> None:
    """Raise ValueError naming the first field of `config` that is not > 0."""
    for field in fields:
        value = getattr(config, field)
        if not value > 0:
            raise ValueError(f"{type(config).__name__}.{field} must be > 0, got {value!r}")
