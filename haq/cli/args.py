"""Argument types, shared parent parsers and small helpers of the `haq` command line."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit code 2."""


def parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``["batch=4", "depthwise=literal"]`` -> {"batch": 4, "depthwise": "literal"} (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--hw-param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape expects C,H,W like 3,224,224, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--input-shape expects three positive integers C,H,W, got {text!r}")
    return shape


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".4g") -> None:
    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def load_policy(args: argparse.Namespace, layers: list[Any]) -> Any:
    from haq.policy import Policy

    if getattr(args, "policy", None) and getattr(args, "uniform", None):
        raise UsageError("give either --policy FILE or --uniform wXaY, not both")
    if getattr(args, "policy", None):
        policy = Policy.load(args.policy)
        policy.check(layers)
        return policy
    return Policy.from_string(layers, getattr(args, "uniform", None) or "w8a8")


def model_layers(name: str, input_shape: tuple[int, ...] | None, num_classes: int | None = None) -> list[Any]:
    from haq.layers import extract_layers
    from haq.models import create_model, model_entry

    entry = model_entry(name)
    model = create_model(name, pretrained=False, **({} if num_classes is None else {"num_classes": num_classes}))
    return extract_layers(model, input_shape or entry.input_shape)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def train_images(text: str) -> int:
    """argparse type: ``all`` (0: the whole search-train split) or a positive image count."""
    if text == "all":
        return 0
    try:
        return _int_at_least(text, 1)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'all' or an integer >= 1, got {text!r}") from None


def model_weights(text: str) -> tuple[str, str]:
    """argparse type: ``MODEL=PATH`` with PATH an existing file."""
    model, sep, path = text.partition("=")
    if not sep or not model or not path:
        raise argparse.ArgumentTypeError(f"must look like MODEL=PATH (e.g. mobilenet_v2=mbv2.pth), got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"weights file {path} (for {model}) does not exist")
    return model, path


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value
