"""Per-layer lookup tables: bring your own device.

A table is a CSV (or Parquet, with pyarrow installed) with one row per
(layer, w_bits, a_bits) and one column per metric::

    layer,w_bits,a_bits,latency_ms
    features.0,1,1,0.0123
    ...

`build_table` writes one from any cost model (start from a simulator), and users replace
rows with timings measured on their hardware. `LookupTableModel` serves a file as a cost
model (registered as ``lookup``: ``create_hw_model("lookup", path="my_device.csv")``).

Validation on load names the file and the row: missing columns, non-numeric values,
NaN, negative costs, bits outside 1..8, duplicated rows, and missing (layer, bits) rows
(each layer must have every combination of the w_bits and a_bits values the file uses).
Bitwidths the file does not cover are priced +inf and left out of ``supported_bits``.
Serving the table to a model with other layers raises an error naming the layer.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hw_models.base import METRIC_UNITS, CostModel, make_config
from hw_models.layer import LayerSpec

KEY_COLUMNS = ("layer", "w_bits", "a_bits")


class LookupTableError(ValueError):
    """A lookup table file is malformed; the message names the file, the row and the problem."""


def _row_label(path: Path, index: int) -> str:
    # CSV: the header is line 1, so data row i is on line i + 2.
    if path.suffix.lower() == ".csv":
        return f"{path}: line {index + 2}"
    return f"{path}: row {index}"


def read_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read and validate a lookup table; returns a frame with int bits and float metrics."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lookup table {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path, dtype={"layer": str}, keep_default_na=True)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise LookupTableError(f"{path}: unknown table format {suffix!r}; use .csv or .parquet")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise LookupTableError(f"{path}: cannot parse: {exc}") from exc
    except ImportError as exc:
        raise LookupTableError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from exc

    missing = [c for c in KEY_COLUMNS if c not in df.columns]
    if missing:
        raise LookupTableError(f"{path}: missing column(s) {missing}; a table needs {list(KEY_COLUMNS)} "
                               f"and at least one of {list(METRIC_UNITS)}")
    extra = [c for c in df.columns if c not in KEY_COLUMNS and c not in METRIC_UNITS]
    if extra:
        raise LookupTableError(f"{path}: unknown column(s) {extra}; metric columns are {list(METRIC_UNITS)}")
    metrics = [c for c in df.columns if c in METRIC_UNITS]
    if not metrics:
        raise LookupTableError(f"{path}: no metric column; add one of {list(METRIC_UNITS)}")
    if df.empty:
        raise LookupTableError(f"{path}: the table has no rows")

    for i, name in enumerate(df["layer"]):
        if not isinstance(name, str) or not name:
            raise LookupTableError(f"{_row_label(path, i)}: layer name is empty")
    for col in ("w_bits", "a_bits", *metrics):
        values = pd.to_numeric(df[col], errors="coerce")
        for i in np.flatnonzero(values.isna().to_numpy()):
            raw = df[col].iloc[i]
            problem = "is missing (NaN)" if pd.isna(raw) else f"is not a number ({raw!r})"
            raise LookupTableError(f"{_row_label(path, int(i))}: {col} {problem}")
        df[col] = values
    for col in ("w_bits", "a_bits"):
        bad = ~df[col].isin(range(1, 9))
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise LookupTableError(f"{_row_label(path, i)}: {col} must be an integer in 1..8, got {df[col].iloc[i]!r}")
        df[col] = df[col].astype(np.int64)
    for col in metrics:
        vals = df[col].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(vals) | (vals < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise LookupTableError(
                f"{_row_label(path, i)}: {col} must be a finite non-negative number, got {vals[i]!r}")
        df[col] = vals
    dup = df.duplicated(list(KEY_COLUMNS), keep="first")
    if dup.any():
        i = int(np.flatnonzero(dup.to_numpy())[0])
        r = df.iloc[i]
        raise LookupTableError(
            f"{_row_label(path, i)}: duplicate row for layer {r['layer']!r} w_bits={r['w_bits']} a_bits={r['a_bits']}")

    w_set, a_set = sorted(set(df["w_bits"])), sorted(set(df["a_bits"]))
    present = set(zip(df["layer"], df["w_bits"], df["a_bits"]))
    for name in dict.fromkeys(df["layer"]):
        for w in w_set:
            for a in a_set:
                if (name, w, a) not in present:
                    raise LookupTableError(
                        f"{path}: missing row for layer {name!r} w_bits={w} a_bits={a} "
                        f"(each layer needs every combination of w_bits {w_set} and a_bits {a_set})")
    for col in metrics:
        if not (df[col] > 0).any():
            raise LookupTableError(f"{path}: every {col} is 0; a cost table needs positive costs (the search divides "
                                   "by the w8a8 cost)")
        for name, group in df.groupby("layer", sort=False):
            grid = group.pivot(index="w_bits", columns="a_bits", values=col)
            values = grid.to_numpy()
            for axis, label in ((0, "w_bits"), (1, "a_bits")):
                falls = np.argwhere(np.diff(values, axis=axis) < 0)
                if len(falls):
                    i, j = falls[0]
                    k, m = (i + 1, j) if axis == 0 else (i, j + 1)
                    raise LookupTableError(
                        f"{path}: layer {name!r}: {col} falls from {values[i, j]:g} at w_bits={grid.index[i]} "
                        f"a_bits={grid.columns[j]} to {values[k, m]:g} at w_bits={grid.index[k]} "
                        f"a_bits={grid.columns[m]}; a cost may not fall with more {label} (the search would "
                        "take the costlier policy for the cheaper one)")
    df.attrs["path"] = str(path)
    return df


def build_table(
    model: CostModel, layers: Sequence[LayerSpec], path: str | os.PathLike[str] | None = None,
    bits: Sequence[int] = tuple(range(1, 9)),
) -> pd.DataFrame:
    """Price `layers` with `model` at every (w, a) in `bits` x `bits` and return the table;
    also write it to `path` (``.csv`` or ``.parquet``) when given."""
    tables = model.tables(layers)
    rows = []
    for li, layer in enumerate(layers):
        for w in bits:
            for a in bits:
                rows.append({"layer": layer.name, "w_bits": w, "a_bits": a,
                             **{m: float(t[li, w - 1, a - 1]) for m, t in tables.items()}})
    df = pd.DataFrame(rows)
    if path is not None:
        write_table(df, path)
    return df


def write_table(df: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write a table as CSV or Parquet, chosen by the file suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        df.to_csv(path, index=False, float_format="%.10g")
    elif path.suffix.lower() in (".parquet", ".pq"):
        df.to_parquet(path, index=False)
    else:
        raise ValueError(f"{path}: unknown table format {path.suffix!r}; use .csv or .parquet")


@dataclasses.dataclass(frozen=True)
class LookupConfig:
    """Attributes:
        path: the table file (CSV or Parquet).
    """

    path: str = ""

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("the lookup model needs a table file: create_hw_model('lookup', path='table.csv')")


class LookupTableModel(CostModel):
    """Costs read from a per-layer table file (measured or simulated)."""

    name = "lookup"

    def __init__(self, config: LookupConfig | None = None, **overrides: Any) -> None:
        base = config or LookupConfig(path=str(overrides.pop("path", "")))
        self.config = make_config(LookupConfig, base, overrides)
        self.frame = read_table(self.config.path)
        self.metrics = tuple(c for c in self.frame.columns if c in METRIC_UNITS)
        w_set, a_set = set(self.frame["w_bits"]), set(self.frame["a_bits"])
        self.supported_bits = tuple(sorted(w_set & a_set))
        self._index: dict[str, np.ndarray] = {}
        for name, group in self.frame.groupby("layer", sort=False):
            self._index[str(name)] = group.index.to_numpy()

    def _tables(self, layers: Sequence[LayerSpec]) -> dict[str, np.ndarray]:
        path = Path(self.config.path)
        wanted = {layer.name for layer in layers}
        for name, idx in self._index.items():
            if name not in wanted:
                some = ", ".join(sorted(wanted)[:6]) + (", ..." if len(wanted) > 6 else "")
                raise LookupTableError(
                    f"{_row_label(path, int(idx[0]))}: layer {name!r} is not a layer of this model "
                    f"(its layers: {some})")
        out = {m: np.full((len(layers), 8, 8), np.inf) for m in self.metrics}
        for li, layer in enumerate(layers):
            if layer.name not in self._index:
                raise LookupTableError(f"{path}: no rows for layer {layer.name!r} of this model")
            rows = self.frame.loc[self._index[layer.name]]
            w = rows["w_bits"].to_numpy() - 1
            a = rows["a_bits"].to_numpy() - 1
            for m in self.metrics:
                out[m][li, w, a] = rows[m].to_numpy()
        return out
