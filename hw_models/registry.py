"""Registry of hardware cost models: register, list, create by name.

Three ways to name a model:

* a registered name: ``create_hw_model("bismo-edge", batch=4)``;
* ``"package.module:Attr"``: a user's `CostModel` subclass or factory, imported on demand;
* an installed plugin: a distribution that declares an entry point in the group
  ``haq.hw_models`` (``my-npu = my_pkg.npu:MyNpu``) is found by its entry-point name.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable
from importlib import metadata
from typing import Any

from hw_models.base import CostModel

ENTRY_POINT_GROUP = "haq.hw_models"

_REGISTRY: dict[str, Callable[..., CostModel]] = {}


def register_hw_model(name: str, factory: Callable[..., CostModel] | None = None) -> Any:
    """Register a cost-model class or factory under `name`; usable as a decorator.

    >>> @register_hw_model("my-npu")
    ... class MyNpu(CostModel): ...
    """

    def _register(obj: Callable[..., CostModel]) -> Callable[..., CostModel]:
        if not callable(obj):
            raise TypeError(f"hardware model {name!r}: expected a class or factory, got {obj!r}")
        if name in _REGISTRY and _REGISTRY[name] is not obj:
            raise ValueError(f"hardware model {name!r} is already registered")
        _REGISTRY[name] = obj
        return obj

    if factory is not None:
        return _register(factory)
    return _register


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_hw_models(pattern: str = "*") -> list[str]:
    """Sorted names of registered and plugin models, filtered by a shell-style wildcard."""
    names = set(_REGISTRY) | set(_entry_points())
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def _import_attr(spec: str) -> Callable[..., CostModel]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"hardware model {spec!r}: use the form 'package.module:Attr'")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # a plugin's import may raise anything: it is the user's code
        raise ValueError(f"hardware model {spec!r}: cannot import module {module_name!r} "
                         f"({type(exc).__name__}: {exc})") from exc
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ValueError(f"hardware model {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc
    return obj


def create_hw_model(name: str, **overrides: Any) -> CostModel:
    """Create a cost model by registered name, ``"module:Attr"`` or plugin name.

    Keyword arguments override fields of the model's parameter dataclass; unknown ones
    raise a TypeError listing the valid fields.
    """
    if isinstance(name, CostModel):
        if overrides:
            raise TypeError("cannot apply overrides to an already constructed cost model")
        return name
    if ":" in name:
        factory = _import_attr(name)
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        eps = _entry_points()
        if name in eps:
            factory = eps[name].load()
        else:
            known = list_hw_models()
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ValueError(f"unknown hardware model {name!r}.{hint} Known models: {', '.join(known)}; "
                             "or pass 'package.module:Class' for your own.")
    try:
        model = factory(**overrides)
    except (TypeError, ValueError, OSError):  # bad overrides or files: the models' own messages name them
        raise
    except Exception as exc:  # a plugin's own failure, in one line
        raise ValueError(f"hardware model {name!r}: creating it raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, CostModel):
        raise TypeError(f"hardware model {name!r} produced {type(model).__name__}, not a hw_models.CostModel")
    return model
