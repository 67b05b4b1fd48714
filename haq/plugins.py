"""Users' own models and data sets, named ``"package.module:attr"``: importing one runs its code."""

from __future__ import annotations

import importlib
from typing import Any


def import_plugin(kind: str, spec: str) -> Any:
    """The object ``"package.module:attr"`` names (a dotted `attr` walks attributes).

    Raises:
        ValueError: naming the `kind` ("model", "dataset") and `spec`, when it is not of that form,
            or its module cannot be imported (whatever the import raised), or has no such attribute.
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{kind} {spec!r}: use the form 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except Exception as exc:  # a plugin's import may raise anything: it is the user's code
        raise ValueError(f"{kind} {spec!r}: cannot import {attr!r} from {module_name!r} "
                         f"({type(exc).__name__}: {exc})") from exc
    return obj
