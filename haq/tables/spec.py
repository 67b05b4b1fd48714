"""A table's YAML spec, its cells (model, hardware, budget, method, seed), and the checks that
the float models a table was measured on are the ones in use."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from haq.config import CONSTRAINTS, SearchConfig, budget_kind, load_yaml
from haq.fileio import atomic_write_text
from haq.models import create_model, model_entry, read_state_dict, state_fingerprint

CONFIG_DIR = Path(__file__).with_name("configs")
"""The paper's table specs, shipped with the package."""
RESULTS_DIR = Path("experiments") / "results"
"""Where a table's CSV, markdown and figures go unless told otherwise: relative, so under the working
directory (in a source checkout, the committed results), never inside the installed package."""
TABLES = ("latency", "energy", "size")
SCALES = ("mini", "paper")
METHODS = {"haq": "ddpg", "ilp": "ilp", "random": "random"}
"""A table's method names and the `SearchConfig.method` each runs (``haq``: the paper's DDPG agent)."""
PER_MODEL_KEYS = {"seeds", "budgets", "search"}
REFITS = 4  # further finetunes of each row's policy, with seeds no search used (`held_out`)


def refit_seed(seed: int, j: int) -> int:
    """The finetune seed of a row's `j`-th refit: apart from every search seed (a row of search
    seed `seed` was selected on that seed's finetune; its refits are not)."""
    return seed + 1000 * (j + 1)


class Cell(NamedTuple):
    """One search of a table: a model on a hardware model under a budget, one method and seed."""

    model: str
    hw: str
    budget: str
    method: str
    seed: int


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One table of the paper (see the module docstring for the YAML layout)."""

    name: str
    title: str
    constraint: str
    hardware: tuple[str, ...]
    budgets: tuple[str, ...]
    baselines: tuple[str, ...]
    methods: tuple[str, ...]
    paper: str
    scales: dict[str, dict[str, Any]]
    paper_saving: str = ""
    refits: int = REFITS
    ablation: dict[str, Any] = dataclasses.field(default_factory=dict)
    """For a spec that ``extends`` a table: what it changes (``setting``, the two ``values``) and why."""

    @classmethod
    def load(cls, name: str, config_dir: str | os.PathLike[str] | None = None) -> TableSpec:
        """Read and check ``<config_dir>/<name>.yaml``; errors name the file and the key."""
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
            raise ValueError(f"table name {name!r}: use letters, digits, '-', '_' or '.', as {list(TABLES)}")
        path = Path(config_dir or CONFIG_DIR) / f"{name}.yaml"
        if not path.is_file():
            raise ValueError(f"unknown table {name!r}: no {path}; shipped tables: {list(TABLES)}"
                             + ("" if config_dir else " (or give --config-dir DIR holding NAME.yaml)"))
        data = resolve_extends(path)
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        optional = {"paper_saving", "refits", "ablation"}
        missing, unknown = sorted(fields - optional - set(data)), sorted(set(data) - fields)
        if missing or unknown:
            raise ValueError(f"{path}: missing key(s) {missing}, unknown key(s) {unknown}; keys: {sorted(fields)}")
        if data["constraint"] not in CONSTRAINTS:
            raise ValueError(f"{path}: constraint must be one of {list(CONSTRAINTS)}, got {data['constraint']!r}")
        for key in ("hardware", "budgets", "baselines", "methods"):
            _check_list(data, key, str(path))
        _check_budgets([*data["budgets"], *data["baselines"]], str(path))
        bad = [m for m in data["methods"] if m not in METHODS]
        if bad:
            raise ValueError(f"{path}: unknown method(s) {bad}; valid: {list(METHODS)}")
        for scale, sc in (data["scales"] or {}).items():
            if not isinstance(sc, dict) or not sc.get("models") or not sc.get("seeds"):
                raise ValueError(f"{path}: scale {scale!r} needs 'models' and 'seeds' lists")
            unknown_keys = sorted(set(sc) - {"models", "seeds", "search", "per_model"})
            if unknown_keys:
                raise ValueError(f"{path}: scale {scale!r} has unknown key(s) {unknown_keys}; "
                                 "keys: models, seeds, search, per_model")
            for model, pm in (sc.get("per_model") or {}).items():
                where = f"{path}: scales.{scale}.per_model.{model}"
                if model not in sc["models"]:
                    raise ValueError(f"{where}: {model!r} is not one of the scale's models {sc['models']}")
                if not isinstance(pm, dict) or set(pm) - PER_MODEL_KEYS:
                    raise ValueError(f"{where}: must be a mapping with keys from {sorted(PER_MODEL_KEYS)}")
                for key in ("seeds", "budgets"):
                    if key in pm:
                        _check_list(pm, key, where)
                if "budgets" in pm:
                    _check_budgets(pm["budgets"], where)
        for b in data["baselines"]:
            if budget_kind(str(b))[0] != "uniform":
                raise ValueError(f"{path}: baseline {b!r} must be a uniform policy like w4a4")
        refits = data.get("refits", REFITS)
        if not isinstance(refits, int) or isinstance(refits, bool) or refits < 0:
            raise ValueError(f"{path}: refits must be a whole number >= 0 (further finetunes of each row's policy), "
                             f"got {refits!r}")
        return cls(name=name, title=str(data["title"]), constraint=str(data["constraint"]),
                   hardware=tuple(data["hardware"]), budgets=tuple(str(b) for b in data["budgets"]),
                   baselines=tuple(str(b) for b in data["baselines"]), methods=tuple(data["methods"]),
                   paper=str(data["paper"]).strip(), scales=dict(data["scales"]),
                   paper_saving=str(data.get("paper_saving", "")), refits=refits,
                   ablation=dict(data.get("ablation") or {}))

    def scale(self, scale: str) -> dict[str, Any]:
        if scale not in self.scales:
            raise ValueError(f"table {self.name} has no scale {scale!r}; valid: {sorted(self.scales)}")
        return self.scales[scale]

    def only_models(self, scale: str, models: Sequence[str]) -> TableSpec:
        """This table with `scale` reduced to `models` (a quick look at some of its models);
        an unknown name is a ValueError naming the table's models at that scale."""
        sc = self._scale_with(scale, models, at_least_one=True)
        return dataclasses.replace(self, scales={**self.scales, scale: {**sc, "models": list(models)}})

    def with_weights(self, scale: str, weights: dict[str, str]) -> TableSpec:
        """This table with `scale`'s models loading the given local weights files (model name ->
        path; a ``search.weights`` of the model's ``per_model`` entry); an unknown name is a
        ValueError naming the table's models at that scale."""
        sc = self._scale_with(scale, list(weights))
        per_model = {m: dict(v) for m, v in (sc.get("per_model") or {}).items()}
        for model, path in weights.items():
            entry = per_model.setdefault(model, {})
            entry["search"] = {**(entry.get("search") or {}), "weights": str(path)}
        return dataclasses.replace(self, scales={**self.scales, scale: {**sc, "per_model": per_model}})

    def _scale_with(self, scale: str, models: Sequence[str], at_least_one: bool = False) -> dict[str, Any]:
        """`scale`'s settings, if `models` (and, with `at_least_one`, any) are all among its
        models; else a ValueError naming the table's models at that scale."""
        sc = self.scale(scale)
        unknown = [m for m in models if m not in sc["models"]]
        if unknown or (at_least_one and not models):
            raise ValueError(f"table {self.name} at scale {scale!r} has no model(s) {unknown}; "
                             f"valid: {list(sc['models'])}")
        return sc

    def untrained(self, scale: str) -> list[str]:
        """The models of `scale` that would be searched untrained: no pretraining of their own
        (only the digits networks have one) and no ``weights`` in the table's settings."""
        sc = self.scale(scale)
        return [m for m in sc["models"] if model_entry(m).pretrain is None
                and not (self._per_model(scale, m).get("search") or {}).get("weights")
                and not (sc.get("search") or {}).get("weights")]

    def seeds(self, scale: str, model: str) -> list[int]:
        """The seeds of `model` at `scale` (its ``per_model`` entry, else the scale's)."""
        return [int(s) for s in self._per_model(scale, model).get("seeds", self.scale(scale)["seeds"])]

    def model_budgets(self, scale: str, model: str) -> tuple[str, ...]:
        """The search budgets of `model` at `scale` (its ``per_model`` entry, else the table's)."""
        return tuple(str(b) for b in self._per_model(scale, model).get("budgets", self.budgets))

    def cells(self, scale: str, seeds: list[int] | None = None) -> list[Cell]:
        """Every search of the table at `scale`, in the order `run_table` runs them (model by
        model, so one evaluator serves a model's searches); `seeds` replaces every model's."""
        return [Cell(model, hw, budget, method, seed)
                for model in self.scale(scale)["models"]
                for hw in self.hardware
                for budget in self.model_budgets(scale, model)
                for seed in (list(seeds) if seeds is not None else self.seeds(scale, model))
                for method in self.methods]

    def _per_model(self, scale: str, model: str) -> dict[str, Any]:
        return dict((self.scale(scale).get("per_model") or {}).get(model) or {})

    def config(self, scale: str, model: str, hw: str, budget: str, method: str, seed: int, out: Path,
               overrides: dict[str, Any] | None = None) -> SearchConfig:
        """The search config of one cell of the table (`METHODS` maps its method to the search's):
        the scale's search settings, then the model's own, then `overrides`."""
        data: dict[str, Any] = dict(self.scale(scale).get("search") or {})
        for layer in (self._per_model(scale, model).get("search") or {}, overrides or {}):
            for key, value in layer.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                elif value is not None:
                    data[key] = value
        data.update(model=model, hw=hw, constraint=self.constraint, budget=budget, seed=seed, out=str(out),
                    method=METHODS[method])
        return SearchConfig.from_dict(data, f"table {self.name} ({scale})")


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`base` with `changes` laid over it: mappings merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def resolve_extends(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The YAML mapping of `path`; with ``extends: TABLE`` it is TABLE's spec (``TABLE.yaml`` beside
    it, else in the shipped configs) with this file's keys merged over it (`deep_merge`), so an
    ablation names the table it modifies and states only what it changes. A scale that names its
    ``models`` takes its ``per_model`` settings from this file alone."""
    data = load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ValueError(f"{path}: extends must name a table, e.g. extends: latency; got {parent!r}")
    candidates = [path.parent / f"{parent}.yaml", CONFIG_DIR / f"{parent}.yaml"]
    base = next((c for c in candidates if c.is_file()), None)
    if base is None:
        raise ValueError(f"{path}: extends {parent!r}, but neither {candidates[0]} nor {candidates[1]} exists")
    if base.resolve() in seen or base.resolve() == path.resolve():
        raise ValueError(f"{path}: extends {parent!r}, which extends it back")
    merged = deep_merge(resolve_extends(base, (*seen, path.resolve())), data)
    for name, sc in (data.get("scales") or {}).items():  # a scale that names its models names their settings too
        if isinstance(sc, dict) and "models" in sc and isinstance(merged["scales"].get(name), dict):
            merged["scales"][name]["per_model"] = sc.get("per_model") or {}
    return merged


def float_fingerprint(cfg: SearchConfig) -> str:
    """The `state_fingerprint` of the float model a search of `cfg` quantizes: its weights file's,
    or the registered model's own trained weights' (``"untrained"`` for neither)."""
    if cfg.weights is not None:
        return state_fingerprint(read_state_dict(cfg.weights))
    if model_entry(cfg.model).pretrain is not None:
        return state_fingerprint(create_model(cfg.model).state_dict())
    return "untrained"


def check_float_models(base: Path, fingerprints: dict[str, str]) -> None:
    """Refuse to add to a table's run folder measured on other float models than these.

    ``<base>/float-models.json`` keeps each model's fingerprint (`float_fingerprint`) from the
    first time the folder is used; a search, baseline or held-out result made on another float
    model (another training, another weights file) is not this model's, and reusing it would mix
    two models in one table."""
    path = base / "float-models.json"
    known: dict[str, str] = json.loads(path.read_text()) if path.is_file() else {}
    changed = {m: (known[m], f) for m, f in fingerprints.items() if m in known and known[m] != f}
    if changed:
        raise ValueError(f"{base} was measured on other float models than this run's ("
                         + "; ".join(f"{m}: fingerprint {old} there, {new} now" for m, (old, new) in changed.items())
                         + f", {path.name}): its searches and results do not apply to them; delete the folder or "
                         "pass another --runs (haq.models.state_fingerprint)")
    if any(m not in known for m in fingerprints):
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**known, **fingerprints}, indent=1, sort_keys=True) + "\n")


def model_fingerprints(spec: TableSpec, scale: str, models: Sequence[str], overrides: dict[str, Any] | None,
                        base: Path) -> dict[str, str]:
    """`float_fingerprint` of each of `models` as the table's scale configures it."""
    return {m: float_fingerprint(spec.config(scale, m, spec.hardware[0], spec.model_budgets(scale, m)[0], "haq",
                                             spec.seeds(scale, m)[0], base / "unused", overrides))
            for m in dict.fromkeys(models)}


def one_float_model(df: pd.DataFrame) -> None:
    """Refuse rows of one model measured on float models of different top-1 (run folders
    written before ``float-models.json``, from two trainings of the model)."""
    for model, fp in df.groupby("model", sort=False)["fp_accuracy"]:
        values = sorted({round(float(v), 4) for v in fp})
        if len(values) > 1:
            raise ValueError(f"the rows of {model} were measured on float models of different top-1 ({values}): "
                             "searches or baselines of another training of the model are in the run folder; "
                             "delete those and run the table again")


def check_same_float_models(a: pd.DataFrame, b: pd.DataFrame, a_name: str, b_name: str) -> None:
    """Refuse to compare two tables' rows measured on different float models of the same network.

    Each model both tables have must have the same float top-1 (``fp_accuracy``) in both, and the
    same fingerprint (``float_model``) where both record one: an ablation measured on one training
    compared with a table measured on another would report the difference of the trainings."""
    for model in sorted(set(a["model"]) & set(b["model"])):
        ra, rb = a[a["model"] == model].iloc[0], b[b["model"] == model].iloc[0]
        fa, fb = str(ra.get("float_model", "") or ""), str(rb.get("float_model", "") or "")
        if round(float(ra["fp_accuracy"]), 4) != round(float(rb["fp_accuracy"]), 4) or (fa and fb and fa != fb):
            raise ValueError(f"{model} was measured on another float model in {a_name} (float top-1 "
                             f"{float(ra['fp_accuracy']):.2f}%{', ' + fa if fa else ''}) than in {b_name} "
                             f"({float(rb['fp_accuracy']):.2f}%{', ' + fb if fb else ''}): compare tables measured "
                             "on the same float models (experiments/results/earlier-models/ keeps the tables of "
                             "the earlier ones)")


def _check_list(data: dict[str, Any], key: str, where: str) -> None:
    if not isinstance(data[key], list) or not data[key]:
        raise ValueError(f"{where}: {key} must be a non-empty list")


def _check_budgets(budgets: list[Any], where: str) -> None:
    for b in budgets:
        try:
            budget_kind(str(b))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
