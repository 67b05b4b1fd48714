"""A mixed-precision policy: one (w_bits, a_bits) per quantizable layer, by name."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from haq.fileio import atomic_write_text
from hw_models import LayerSpec

_UNIFORM = re.compile(r"^w([1-8])a([1-8])$")


def parse_uniform(text: str) -> tuple[int, int]:
    """Parse ``"w4a4"`` into (4, 4); raises ValueError with the expected form."""
    m = _UNIFORM.match(text.strip().lower())
    if not m:
        raise ValueError(f"uniform policy must look like 'w4a4' (bits 1..8), got {text!r}")
    return int(m.group(1)), int(m.group(2))


@dataclasses.dataclass(frozen=True)
class Policy:
    """Per-layer bitwidths, ordered as the model's quantizable layers.

    Attributes:
        layers: layer names (``LayerSpec.name``), in model order.
        bits: ``(w_bits, a_bits)`` per layer, each in 1..8.
    """

    layers: tuple[str, ...]
    bits: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        bits = tuple(tuple(pair) for pair in self.bits)
        if len(self.layers) != len(bits):
            raise ValueError(f"policy has {len(self.layers)} layer names but {len(bits)} bit pairs")
        for name, pair in zip(self.layers, bits):
            for label, b in zip(("w_bits", "a_bits"), pair):
                whole = isinstance(b, int) or (hasattr(b, "is_integer") and float(b).is_integer())
                if isinstance(b, bool) or not whole or not 1 <= b <= 8:
                    raise ValueError(f"policy layer {name!r}: {label} must be a whole number in 1..8, got {b!r}")
        object.__setattr__(self, "bits", tuple((int(w), int(a)) for w, a in bits))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def uniform(cls, layers: Sequence[LayerSpec] | Sequence[str], w_bits: int, a_bits: int) -> Policy:
        """The same (w_bits, a_bits) for every layer."""
        names = [layer if isinstance(layer, str) else layer.name for layer in layers]
        return cls(tuple(names), tuple((w_bits, a_bits) for _ in names))

    @classmethod
    def from_string(cls, layers: Sequence[LayerSpec], text: str) -> Policy:
        """``"w4a4"`` -> `uniform`."""
        return cls.uniform(layers, *parse_uniform(text))

    # ---------------------------------------------------------------- views
    @classmethod
    def from_strings(cls, layers: Sequence[LayerSpec], w_bits: str, a_bits: str) -> Policy:
        """The inverse of `as_strings`: ``("8 4 4 6", "8 5 4 4")`` -> a policy over `layers`."""
        return cls.from_bits(layers, zip(map(int, w_bits.split()), map(int, a_bits.split())))

    @property
    def w_bits(self) -> list[int]:
        return [w for w, _ in self.bits]

    @property
    def a_bits(self) -> list[int]:
        return [a for _, a in self.bits]

    def as_strings(self) -> tuple[str, str]:
        """Compact per-layer strings, e.g. ``("8 4 4 6", "8 5 4 4")``."""
        return " ".join(map(str, self.w_bits)), " ".join(map(str, self.a_bits))

    def __len__(self) -> int:
        return len(self.layers)

    def check(self, layers: Sequence[LayerSpec]) -> None:
        """Raise ValueError unless this policy is for exactly these layers, in this order."""
        names = [layer.name for layer in layers]
        if list(self.layers) != names:
            missing = [n for n in names if n not in self.layers]
            extra = [n for n in self.layers if n not in names]
            detail = []
            if missing:
                detail.append(f"missing layers {missing[:5]}")
            if extra:
                detail.append(f"unknown layers {extra[:5]}")
            if not detail:
                detail.append("layers in another order")
            raise ValueError(f"policy does not match this model ({len(self.layers)} vs {len(names)} layers; "
                             f"{'; '.join(detail)})")

    # ---------------------------------------------------------------- files
    def to_dict(self) -> dict[str, Any]:
        return {"layers": [{"name": n, "w_bits": w, "a_bits": a} for n, (w, a) in zip(self.layers, self.bits)]}

    @classmethod
    def from_dict(cls, data: Any, source: str = "policy") -> Policy:
        """A policy from ``{"layers": [{"name", "w_bits", "a_bits"}, ...]}``; ValueError naming `source`."""
        form = "{'layers': [{'name': ..., 'w_bits': ..., 'a_bits': ...}, ...]}"
        rows = data.get("layers") if isinstance(data, dict) else None
        if not isinstance(rows, list) or not rows:
            raise ValueError(f"{source}: a policy is a mapping {form}, got {type(data).__name__}")
        for i, r in enumerate(rows):
            if not isinstance(r, dict) or {"name", "w_bits", "a_bits"} - set(r):
                raise ValueError(f"{source}: layer entry {i} must have name, w_bits and a_bits, got {r!r}")
        try:
            return cls(tuple(r["name"] for r in rows), tuple((r["w_bits"], r["a_bits"]) for r in rows))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None

    def to_json(self, path: str | os.PathLike[str], **extra: Any) -> None:
        """Write the policy (and any extra metadata) as JSON, atomically."""
        atomic_write_text(path, json.dumps({**extra, **self.to_dict()}, indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> Policy:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(data, str(path))

    def to_csv(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["layer", "w_bits", "a_bits"])
            writer.writerows((n, w, a) for n, (w, a) in zip(self.layers, self.bits))

    @classmethod
    def from_csv(cls, path: str | os.PathLike[str]) -> Policy:
        """A policy from a CSV with columns ``layer, w_bits, a_bits``; ValueError naming the file and line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"policy file {path} does not exist")
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = sorted({"layer", "w_bits", "a_bits"} - set(reader.fieldnames or ()))
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; a policy CSV has columns layer, w_bits, a_bits")
            layers = []
            for line, r in enumerate(reader, start=2):
                try:
                    layers.append({"name": r["layer"], "w_bits": int(r["w_bits"]), "a_bits": int(r["a_bits"])})
                except (TypeError, ValueError):
                    raise ValueError(f"{path}: line {line}: w_bits and a_bits must be whole numbers in 1..8, got "
                                     f"{r.get('w_bits')!r}, {r.get('a_bits')!r}") from None
        return cls.from_dict({"layers": layers}, str(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Policy:
        """Load JSON or CSV by suffix."""
        return cls.from_csv(path) if str(path).lower().endswith(".csv") else cls.from_json(path)

    @classmethod
    def from_bits(cls, layers: Iterable[LayerSpec], bits: Iterable[tuple[int, int]]) -> Policy:
        return cls(tuple(layer.name for layer in layers), tuple(bits))
