"""The paper's tables, reproduced by one command each (`haq table latency|energy|size`).

A table is a YAML spec in ``experiments/configs/<table>.yaml``: the constraint, the
hardware models, the search budgets, the fixed-bit baselines and, per scale (``mini``:
the digits models on 2 CPU cores; ``paper``: ImageNet-100 and the paper's models on a
GPU), the models, seeds and search overrides; ``per_model`` (optional) gives a model of a
scale its own ``seeds``, ``budgets`` and ``search`` overrides (a larger network searched
with fewer episodes, say). Every search of a table runs in its
own run directory under ``runs/tables/<table>-<scale>/``, so an interrupted table picks
up where it stopped (finished searches are read back, unfinished ones resumed). Results:
``experiments/results/<table>-<scale>.csv`` (one row per seed and method),
``<table>-<scale>.md`` (mean +- std over seeds, the paper's claim beside it),
``<table>-<scale>-tradeoff.png`` (top-1 against cost, searched points over the fixed-bit
line) and, for a table with an edge and a cloud model, ``<table>-<scale>-<model>-policies.png``
(HAQ Figures 3-4).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

import hw_models
from haq.config import CONSTRAINTS, SearchConfig, budget_kind, load_yaml
from haq.evaluator import QuantEvaluator
from haq.models import create_model, model_entry, read_state_dict, state_fingerprint
from haq.policy import Policy
from haq.search import (
    STUCK_AT_LEAST,
    STUCK_SHARE,
    Search,
    _atomic_write,
    agent_exploration,
    build_evaluator,
    build_parts,
    check_evaluator,
    read_episodes,
)

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "experiments" / "configs"
RESULTS_DIR = ROOT / "experiments" / "results"
TABLES = ("latency", "energy", "size")
SCALES = ("mini", "paper")
METHODS = ("haq", "random")
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

    @classmethod
    def load(cls, name: str, config_dir: str | os.PathLike[str] | None = None) -> TableSpec:
        """Read and check ``<config_dir>/<name>.yaml``; errors name the file and the key."""
        path = Path(config_dir or CONFIG_DIR) / f"{name}.yaml"
        if name not in TABLES and not path.is_file():
            raise ValueError(f"unknown table {name!r}; valid: {list(TABLES)}")
        data = load_yaml(path)
        fields = {f.name for f in dataclasses.fields(cls)} - {"name"}
        optional = {"paper_saving", "refits"}
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
                   paper_saving=str(data.get("paper_saving", "")), refits=refits)

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
        """The search config of one cell of the table (a random search has only warm-up):
        the scale's search settings, then the model's own, then `overrides`."""
        data: dict[str, Any] = dict(self.scale(scale).get("search") or {})
        for layer in (self._per_model(scale, model).get("search") or {}, overrides or {}):
            for key, value in layer.items():
                if isinstance(value, dict) and isinstance(data.get(key), dict):
                    data[key] = {**data[key], **value}
                elif value is not None:
                    data[key] = value
        data.update(model=model, hw=hw, constraint=self.constraint, budget=budget, seed=seed, out=str(out))
        cfg = SearchConfig.from_dict(data, f"table {self.name} ({scale})")
        if method == "random":
            cfg = dataclasses.replace(cfg, warmup=cfg.episodes)
        return cfg


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
        _atomic_write(path, json.dumps({**known, **fingerprints}, indent=1, sort_keys=True) + "\n")


def _model_fingerprints(spec: TableSpec, scale: str, models: Sequence[str], overrides: dict[str, Any] | None,
                        base: Path) -> dict[str, str]:
    """`float_fingerprint` of each of `models` as the table's scale configures it."""
    return {m: float_fingerprint(spec.config(scale, m, spec.hardware[0], spec.model_budgets(scale, m)[0], "haq",
                                             spec.seeds(scale, m)[0], base / "unused", overrides))
            for m in dict.fromkeys(models)}


def _one_float_model(df: pd.DataFrame) -> None:
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


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)


def run_table(spec: TableSpec, scale: str = "mini", *, seeds: list[int] | None = None,
              runs_dir: str | os.PathLike[str] = "runs/tables", results_dir: str | os.PathLike[str] | None = None,
              overrides: dict[str, Any] | None = None, tag: str = "", jobs: int = 1,
              on_search: Callable[[str, SearchConfig], None] | None = None,
              on_episode: Callable[[dict[str, Any]], None] | None = None,
              on_finished: Callable[[str], None] | None = None,
              on_progress: Callable[[int, int], None] | None = None,
              on_held_out: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Run (or finish) every search and baseline of a table; write its CSV, markdown and figure.

    Returns the per-seed rows (also written to ``<results_dir>/<table>-<scale><tag>.csv``).
    `tag` (e.g. ``"-distill"``) keeps a variant's run directories and results apart.
    `seeds` replaces every model's seeds. `jobs` > 1 runs that many searches (and baseline
    sets) at once, each in a process of its own with ``threads // jobs`` torch threads; a
    search's result depends only on its config and its thread count, so ``jobs=2`` on 2 cores
    gives what two one-thread tables give. `on_search` and `on_episode` are called (in this
    process) only with ``jobs=1``; `on_finished` gets each search's name as it ends or is read back.
    With ``jobs`` > 1, `on_progress` gets (episodes run, episodes in all) over the table's searches,
    read from their run directories every few seconds and once when all have ended.
    `on_held_out` gets (policies measured, policies to measure) on the held-out split (`held_out`).
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    base = Path(runs_dir) / f"{spec.name}-{scale}{tag}"
    cells = spec.cells(scale, seeds)
    fingerprints = _model_fingerprints(spec, scale, [c.model for c in cells], overrides, base)
    check_float_models(base, fingerprints)
    configs = {c: spec.config(scale, c.model, c.hw, c.budget, c.method, c.seed, _run_dir(base, c), overrides)
               for c in cells}
    summaries: dict[Cell, dict[str, Any]] = {}
    for cell, cfg in configs.items():  # finished searches are read back
        summary_path = _run_dir(base, cell) / "summary.json"
        if summary_path.is_file():
            _check_same_config(summary_path.parent, cfg, cell.method)
            summaries[cell] = json.loads(summary_path.read_text())
    # one baseline set per (model, hardware, seed): the same finetune as the searches, this hardware's cost
    baseline_sets = {(c.model, c.hw, c.seed): spec.config(scale, c.model, c.hw, spec.model_budgets(scale, c.model)[0],
                                                          "haq", c.seed, base / "unused", overrides) for c in cells}
    baselines: dict[tuple[str, str, int], dict[str, Any]] = {}
    for key in baseline_sets:
        cache = _baseline_cache(base, *key)
        baselines[key] = json.loads(cache.read_text()) if cache.is_file() else {}

    def save_baselines(key: tuple[str, str, int], values: dict[str, Any]) -> None:
        baselines[key].update(values)
        cache = _baseline_cache(base, *key)
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(baselines[key], indent=2) + "\n")

    todo_baselines = {k: [b for b in spec.baselines if b not in baselines[k]] for k in baseline_sets}
    todo_baselines = {k: v for k, v in todo_baselines.items() if v}
    if jobs == 1:
        for model, model_cells in itertools.groupby(cells, key=lambda c: c.model):
            evaluator: QuantEvaluator | None = None  # built on first need; serves all of the model's searches
            for cell in model_cells:
                cfg, run_dir = configs[cell], _run_dir(base, cell)
                if on_search is not None:
                    on_search(run_dir.name, cfg)
                if cell not in summaries:
                    evaluator = evaluator or build_evaluator(cfg)
                    summaries[cell] = _run_search(cfg, run_dir, evaluator, on_episode)
                if on_finished is not None:
                    on_finished(run_dir.name)
            for key in [k for k in todo_baselines if k[0] == model]:
                parts = build_parts(baseline_sets[key], evaluator)  # this hardware's env, the model's evaluator
                evaluator = parts.evaluator
                for b in todo_baselines[key]:
                    save_baselines(key, {b: _baseline(parts, b)})
        evaluator = parts = None  # free the last model and its data before `held_out` builds its own
    else:
        _run_parallel(base, configs, summaries, baseline_sets, todo_baselines, save_baselines, jobs, on_finished,
                      on_progress)

    rows = [_search_row(spec, scale, *cell, summaries[cell], configs[cell].warmup, _run_dir(base, cell))
            for cell in cells]
    for (model, hw, seed), done in baselines.items():
        rows += [{"table": spec.name, "scale": scale, "model": model, "hw": hw, "budget": "", "method": "fixed",
                  "policy": b, "seed": seed, "accuracy": done[b]["accuracy"], "cost": done[b]["cost"],
                  "cost_ratio": done[b]["cost"] / done[b]["w8a8_cost"],
                  "w8a8_over_cost": done[b]["w8a8_cost"] / done[b]["cost"], "fp_accuracy": done[b]["fp_accuracy"],
                  "w_bits": "", "a_bits": "", "episodes": 0, "warmup": "", "best_episode": "",
                  "agent_distinct_policies": "", "agent_top_share": ""}
                 for b in spec.baselines]
    _one_float_model(pd.DataFrame(rows))
    df = held_out(spec, scale, pd.DataFrame(rows), base, overrides, jobs, on_held_out, fingerprints=fingerprints)
    df["float_model"] = df["model"].map(fingerprints)
    write_table(spec, scale, df, Path(results_dir or RESULTS_DIR), tag)
    return df


def write_table(spec: TableSpec, scale: str, df: pd.DataFrame, out: Path, tag: str = "") -> Path:
    """Write the table's rows to ``<out>/<table>-<scale><tag>.csv`` (5 significant digits) and
    render its markdown and figures from that CSV as written, so they are what ``--render-only``
    gives again; the CSV's path."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"{spec.name}-{scale}{tag}.csv"
    df.to_csv(csv_path, index=False, float_format="%.5g")
    render_table(spec, scale, pd.read_csv(csv_path, keep_default_na=False), out, tag)
    return csv_path


HELD_OUT_COLUMNS = ("test_accuracy", "reproduced", "val_accuracy_refits", "test_accuracy_refits",
                    "val_accuracy_refits_sd", "test_accuracy_refits_sd", "refits")
"""The columns `held_out` adds to a table's rows (dropped before measuring the rows again)."""


def held_out_test_samples(base: Path, df: pd.DataFrame, refits: int) -> list[list[float]]:
    """Per row of `df`, as `held_out` measured it into ``<base>/held-out.json``: the held-out
    top-1 of the row's own finetune, then of its first `refits` refits."""
    cache = json.loads((base / "held-out.json").read_text())
    return [[cache[k]["test"]] + cache[k]["refit_test"][:refits]
            for k in (_held_out_key(r) for r in df.to_dict("records"))]


def held_out(spec: TableSpec, scale: str, df: pd.DataFrame, base: Path, overrides: dict[str, Any] | None = None,
             jobs: int = 1, progress: Callable[[int, int], None] | None = None,
             refits: int | None = None, check_reproduced: bool = True,
             fingerprints: dict[str, str] | None = None) -> pd.DataFrame:
    """`df` with ``test_accuracy``: each row's policy finetuned again (the same finetune its
    ``accuracy`` came from: an evaluation is a function of the policy, model, seed and thread
    count) and measured on the held-out test split, which no search ever sees. The search
    picks its best policy by search-validation accuracy, so that number is biased upwards
    for searched rows and not for fixed-bit ones; the test split has no such bias (the
    paper, likewise, reports accuracy on ImageNet's validation set, not on its search split).
    Results are kept in ``<base>/held-out.json``. ``reproduced`` says whether the finetune
    gave the row's own search-validation top-1 again; rows where it did not (a search run
    with another thread count or engine version) are logged and named in the markdown; a
    caller whose `overrides` change the finetune (a longer one, say) passes
    ``check_reproduced=False``, as no row could be reproduced then.

    A single finetune is a noisy measurement (the same policy's top-1 moves by a point or more
    from one finetune seed to another on these small splits), and a searched row was selected on
    its own finetune's luck. So each policy is also finetuned `refits` more times (default: the
    spec's ``refits``), with seeds no search used (`refit_seed`), and measured on both splits:
    ``val_accuracy_refits`` and ``test_accuracy_refits`` are their means, the comparison the
    selection cannot flatter, ``*_refits_sd`` their sample standard deviations (NaN for one
    refit) and ``refits`` their count.
    `progress` gets (finetunes run, finetunes to run), after each policy's finetunes. Each policy
    is one job, and its results are saved as soon as it is done: an interrupted run loses at most
    the policies in progress, and with `jobs` > 1 no worker idles while another has a queue.
    `fingerprints` (model -> `float_fingerprint`, computed here when not given) are checked
    against the folder's (`check_float_models`)."""
    refits = spec.refits if refits is None else refits
    check_float_models(base, fingerprints if fingerprints is not None
                       else _model_fingerprints(spec, scale, list(df["model"]), overrides, base))
    cache_path = base / "held-out.json"
    cache: dict[str, dict[str, Any]] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    keys = [_held_out_key(r) for r in df.to_dict("records")]
    # (model, seed) -> {key: (policy, canonical finetune to run, refits done)}, in the rows' order
    todo: dict[tuple[str, int], dict[str, tuple[str | tuple[str, str], bool, int]]] = {}
    for r, key in zip(df.to_dict("records"), keys):
        entry = cache.get(key, {})
        canonical, done = "val" not in entry, len(entry.get("refit_test", []))
        if canonical or done < refits:
            policy = r["policy"] if r["method"] == "fixed" else (r["w_bits"], r["a_bits"])
            todo.setdefault((r["model"], int(r["seed"])), {})[key] = (policy, canonical, done)
    if todo:
        from concurrent.futures import as_completed

        configs = {(m, seed): spec.config(scale, m, spec.hardware[0], spec.model_budgets(scale, m)[0], "haq", seed,
                                          base / "unused", overrides).to_dict() for m, seed in todo}
        # one job a policy, grouped by model so that a worker keeps its evaluator between jobs
        jobs_todo = [(group, {key: work}, int(work[1]) + refits - work[2])
                     for group, policies in todo.items() for key, work in policies.items()]
        threads = job_threads(jobs)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        total, finished = sum(n for _, _, n in jobs_todo), 0

        def merge(result: dict[str, dict[str, Any]], finetunes: int) -> None:
            nonlocal finished
            for key, new in result.items():
                old = cache.setdefault(key, {})
                old.update({k: v for k, v in new.items() if not k.startswith("refit_")})
                for k in ("refit_val", "refit_test"):
                    old[k] = old.get(k, []) + new.get(k, [])
            _atomic_write(cache_path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
            finished += finetunes
            if progress is not None:
                progress(finished, total)

        if progress is not None:
            progress(0, total)
        if jobs == 1:
            for group, policies, n in jobs_todo:
                merge(_held_out_job(configs[group], policies, threads, refits), n)
            _JOB_EVALUATORS.clear()  # in this process: do not keep the model and data alive
        else:
            with job_pool(jobs) as pool:
                futures = {pool.submit(_held_out_job, configs[group], policies, threads, refits): n
                           for group, policies, n in jobs_todo}
                for future in as_completed(futures):
                    merge(future.result(), futures[future])
    out = df.copy()
    out["test_accuracy"] = [cache[k]["test"] for k in keys]
    if refits:
        for split in ("val", "test"):
            values = [cache[k][f"refit_{split}"][:refits] for k in keys]
            out[f"{split}_accuracy_refits"] = [float(np.mean(v)) for v in values]
            # their spread (sample standard deviation), for `refit_shortfalls`' test; none from one refit
            out[f"{split}_accuracy_refits_sd"] = [float(np.std(v, ddof=1)) if refits > 1 else np.nan for v in values]
        out["refits"] = refits  # the count the means are over, for the markdown's labels
    out["reproduced"] = [abs(cache[k]["val"] - float(acc)) <= 1e-3 for k, acc in zip(keys, df["accuracy"])]
    if check_reproduced and not out["reproduced"].all():
        log.warning("%d of %d rows of %s-%s: the finetune run again gave another search-validation top-1 than the "
                    "row's (another torch thread count or engine version?), e.g. %s", (~out["reproduced"]).sum(),
                    len(keys), spec.name, scale, keys[int(np.argmin(out["reproduced"]))])
    return out


def _held_out_key(row: dict[str, Any]) -> str:
    policy = row["policy"] if row["method"] == "fixed" else f"{row['w_bits']}|{row['a_bits']}"
    return f"{row['model']}|seed {int(row['seed'])}|{policy}"


def _held_out_job(config: dict[str, Any], policies: dict[str, tuple[str | tuple[str, str], bool, int]],
                  threads: int, refits: int) -> dict[str, dict[str, Any]]:
    """Search-validation and test top-1 of each policy (a uniform spec or (w_bits, a_bits)
    strings) after the model's finetune (when `canonical`) and after its refits `done` to
    `refits` - 1 (`refit_seed`); in a worker process or in this one."""
    cfg = SearchConfig.from_dict(config, "held-out evaluation")
    ev = _job_evaluator(cfg, threads)
    out: dict[str, dict[str, Any]] = {}
    try:
        for key, (policy, canonical, done) in policies.items():
            if isinstance(policy, str):
                pol = Policy.from_string(ev.layers, policy)
            else:
                pol = Policy.from_strings(ev.layers, *policy)
            entry: dict[str, Any] = {"refit_val": [], "refit_test": []}
            # the finetune's shuffling is seeded by the seed and the policy: the search's seed first
            for j, seed in ([(None, cfg.seed)] if canonical else []) + [(j, refit_seed(cfg.seed, j))
                                                                        for j in range(done, refits)]:
                ev.seed = seed
                metrics = ev.evaluate_splits(pol, ("val", "test"))
                if j is None:
                    entry.update(val=metrics["val"]["top1"], test=metrics["test"]["top1"])
                else:
                    entry["refit_val"].append(metrics["val"]["top1"])
                    entry["refit_test"].append(metrics["test"]["top1"])
            out[key] = entry
    finally:
        ev.seed = cfg.seed
    return out


def _run_search(cfg: SearchConfig, run_dir: Path, evaluator: QuantEvaluator,
                on_episode: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Resume the search in `run_dir` from its checkpoint, or start it; its summary."""
    if (run_dir / "checkpoint.json").is_file():
        return Search.resume(run_dir, on_episode, evaluator=evaluator).run()
    return Search(cfg, on_episode=on_episode, evaluator=evaluator).run()


def _run_dir(base: Path, cell: Cell) -> Path:
    return base / _slug(f"{cell.model}-{cell.hw}-{cell.budget}-{cell.method}-seed{cell.seed}")


def _baseline_cache(base: Path, model: str, hw: str, seed: int) -> Path:
    return base / _slug(f"baselines-{model}-{hw}-seed{seed}.json")


def _baseline(parts: Any, policy: str) -> dict[str, float]:
    """Accuracy (the model's finetune) and cost (this hardware) of one uniform policy."""
    pol = [budget_kind(policy)[1]] * len(parts.layers)
    return {"accuracy": parts.evaluator(pol), "cost": parts.env.cost(pol),
            "w8a8_cost": parts.env.reference_cost, "fp_accuracy": parts.evaluator.fp_accuracy}


def _run_parallel(base: Path, configs: dict[Cell, SearchConfig], summaries: dict[Cell, dict[str, Any]],
                  baseline_sets: dict[tuple[str, str, int], SearchConfig],
                  todo_baselines: dict[tuple[str, str, int], list[str]],
                  save_baselines: Callable[[tuple[str, str, int], dict[str, Any]], None], jobs: int,
                  on_finished: Callable[[str], None] | None,
                  on_progress: Callable[[int, int], None] | None = None, poll_s: float = 5.0) -> None:
    """The table's unfinished searches and baseline sets on `jobs` processes (spawned: a
    forked process would inherit the OpenMP state of this one). A failure stops the table;
    the searches that ran keep their checkpoints, so the next run resumes them."""
    from concurrent.futures import FIRST_EXCEPTION, Future, wait

    threads = job_threads(jobs)
    for cell in configs:
        if cell in summaries and on_finished is not None:
            on_finished(_run_dir(base, cell).name)
    with job_pool(jobs) as pool:
        futures: dict[Future[Any], Any] = {}
        for cell, cfg in configs.items():
            if cell not in summaries:
                run_dir = _run_dir(base, cell)
                futures[pool.submit(_search_job, cfg.to_dict(), str(run_dir), threads)] = cell
        for key, todo in todo_baselines.items():
            futures[pool.submit(_baseline_job, baseline_sets[key].to_dict(), todo, threads)] = key
        pending = set(futures)
        total = sum(cfg.episodes for cfg in configs.values())

        def progress() -> None:  # finished searches count whole; running ones by their episodes.csv rows
            if on_progress is not None:
                done = sum(cfg.episodes if c in summaries else min(cfg.episodes, len(read_episodes(_run_dir(base, c))))
                           for c, cfg in configs.items())
                on_progress(done, total)

        try:
            while pending:
                progress()
                done, pending = wait(pending, timeout=poll_s if on_progress is not None else None,
                                     return_when=FIRST_EXCEPTION)
                for fut in done:
                    what = futures[fut]
                    result = fut.result()  # re-raises a worker's error here
                    if isinstance(what, Cell):
                        summaries[what] = result
                        if on_finished is not None:
                            on_finished(_run_dir(base, what).name)
                    else:
                        save_baselines(what, result)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    progress()


def job_threads(jobs: int) -> int:
    """Torch threads of each of `jobs` worker processes: this process's threads shared out."""
    import torch

    return max(1, torch.get_num_threads() // jobs)


def job_pool(jobs: int) -> ProcessPoolExecutor:
    """A pool of `jobs` worker processes for a table's searches and measurements (spawned: a
    forked process would inherit the OpenMP state of this one; each exits with this process)."""
    return ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_job_init,
                               initargs=(os.getpid(),))


def not_reproduced(df: pd.DataFrame) -> pd.Series:
    """Rows whose policy, finetuned again for the held-out column, did not give the row's own
    search-validation top-1 (``reproduced`` False, read back from a CSV as text or as a bool)."""
    return ~df["reproduced"].astype(str).isin(["True", "true", "1"])


def _job_init(parent: int) -> None:
    """Worker start-up: exit when the table's process is gone (killed, not interrupted), so an
    orphaned worker never keeps writing to a run directory the next table run resumes."""
    import threading
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


_JOB_EVALUATORS: dict[str, QuantEvaluator] = {}  # per worker process: one evaluator per model


def _job_evaluator(cfg: SearchConfig, threads: int) -> QuantEvaluator:
    import torch

    torch.set_num_threads(threads)
    ev = _JOB_EVALUATORS.get(cfg.model)
    if ev is not None:
        try:
            check_evaluator(cfg, ev)
        except ValueError:
            ev = None
    if ev is None:
        _JOB_EVALUATORS.clear()  # one model's evaluator at a time per worker
        ev = _JOB_EVALUATORS[cfg.model] = build_evaluator(cfg)
    return ev


def _search_job(config: dict[str, Any], run_dir: str, threads: int) -> dict[str, Any]:
    """One search of a table in a worker process; its summary."""
    cfg = SearchConfig.from_dict(config, f"table search {run_dir}")
    return _run_search(cfg, Path(run_dir), _job_evaluator(cfg, threads))


def _baseline_job(config: dict[str, Any], policies: list[str], threads: int) -> dict[str, Any]:
    """The fixed-bit baselines of one (model, hardware, seed) in a worker process."""
    cfg = SearchConfig.from_dict(config, "table baselines")
    parts = build_parts(cfg, _job_evaluator(cfg, threads))
    return {b: _baseline(parts, b) for b in policies}


def config_differences(run_dir: Path, cfg: SearchConfig, method: str) -> list[str]:
    """The keys in which the search in `run_dir` ran another config than `cfg` (none: it may be
    reused or resumed as this cell's; the agent's settings do not matter to a random search)."""
    done = SearchConfig.from_run(run_dir / "config.yaml")
    ignore = {"out", "agent"} if method == "random" else {"out"}
    a = {k: v for k, v in done.to_dict().items() if k not in ignore}
    b = {k: v for k, v in cfg.to_dict().items() if k not in ignore}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _check_same_config(run_dir: Path, cfg: SearchConfig, method: str) -> None:
    """A finished run is reused only if it ran this cell's config."""
    diff = config_differences(run_dir, cfg, method)
    if diff:
        raise ValueError(f"{run_dir} holds a search with another config (differs in {diff}); delete it or pass "
                         "another --runs folder")


def _search_row(spec: TableSpec, scale: str, model: str, hw: str, budget: str, method: str, seed: int,
                summary: dict[str, Any], warmup: int, run_dir: Path) -> dict[str, Any]:
    """A search's row, read from its summary; `agent_distinct_policies` and `agent_top_share` (from its
    episodes.csv, `haq.search.agent_exploration`) say how much its agent explored after the warm-up
    (blank for random search, which has no agent episodes)."""
    best = summary["best"]
    explored = agent_exploration(read_episodes(run_dir), warmup)
    return {"table": spec.name, "scale": scale, "model": model, "hw": hw, "budget": budget, "method": method,
            "policy": "searched", "seed": seed, "accuracy": best["accuracy"], "cost": best["cost"],
            "cost_ratio": best["cost_ratio"], "w8a8_over_cost": summary["w8a8_cost"] / best["cost"],
            "fp_accuracy": summary["fp_accuracy"], "w_bits": best["w_bits"], "a_bits": best["a_bits"],
            "episodes": summary["episodes"], "warmup": warmup, "best_episode": best["episode"],
            "agent_distinct_policies": explored[0] if explored else "",
            "agent_top_share": round(explored[1], 4) if explored else ""}


# ---------------------------------------------------------------------------- rendering
def stuck_rows(df: pd.DataFrame) -> pd.Series:
    """Which searched rows' agent evaluated one policy in `STUCK_SHARE` or more of its
    `STUCK_AT_LEAST` or more episodes after the warm-up (`haq.search.stuck_agent`); False where the
    CSV has no `agent_top_share` (older CSVs; random search and fixed-bit rows leave it blank)."""
    if "agent_top_share" not in df.columns:
        return pd.Series(False, index=df.index)
    share = pd.to_numeric(df["agent_top_share"], errors="coerce")
    agent_episodes = pd.to_numeric(df["episodes"], errors="coerce") - pd.to_numeric(df["warmup"], errors="coerce")
    return (share >= STUCK_SHARE) & (agent_episodes >= STUCK_AT_LEAST)


def _pm(values: pd.Series, fmt: str = ".2f") -> str:
    if len(values) > 1:
        return f"{values.mean():{fmt}} +- {values.std():{fmt}}"
    return f"{values.mean():{fmt}}"


def signed(x: float) -> str:
    """A difference in points with its sign, two decimals, never ``-0.00``."""
    return f"{round(float(x), 2) + 0.0:+.2f}"


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, hw, budget, seed): does the searched policy beat every fixed-bit baseline
    whose cost is at or above its own (and which ones does it not)?"""
    out = []
    fixed = df[df["method"] == "fixed"]
    for r in df[df["method"] == "haq"].to_dict("records"):
        f = fixed[(fixed["model"] == r["model"]) & (fixed["hw"] == r["hw"]) & (fixed["seed"] == r["seed"])]
        above = f[f["cost"] >= r["cost"] * (1 - 1e-9)]
        lost = above[above["accuracy"] > r["accuracy"]]
        same = f[f["policy"] == r["budget"]]
        out.append({"model": r["model"], "hw": r["hw"], "budget": r["budget"], "seed": r["seed"],
                    "beats_all_costlier": lost.empty, "loses_to": " ".join(lost["policy"]),
                    "beats_budget_policy": bool(same.empty or (same["accuracy"] <= r["accuracy"]).all()),
                    "has_budget_policy": not same.empty})
    return pd.DataFrame(out)


SIGNIFICANCE = 0.05
"""Level of `refit_shortfalls`' one-sided test."""


def significantly_below(mean: float, sd: float, n: int, ref_mean: float, ref_sd: float, ref_n: int,
                        alpha: float = SIGNIFICANCE) -> bool:
    """Welch's t-test, one-sided, level `alpha`, from two samples' means, sample standard
    deviations and counts: is `mean` significantly below `ref_mean`? Where both spreads are 0 a
    lower mean is significant."""
    from scipy import stats

    if mean >= ref_mean:
        return False
    if sd == 0 and ref_sd == 0:
        return True
    return bool(stats.ttest_ind_from_stats(mean, sd, n, ref_mean, ref_sd, ref_n, equal_var=False,
                                           alternative="less").pvalue < alpha)


def refit_shortfalls(df: pd.DataFrame, alpha: float = SIGNIFICANCE) -> pd.DataFrame:
    """Per searched (``haq``) row: the costlier fixed-bit rows (same model, hardware and seed,
    cost at or above its own) whose held-out top-1 over the refits is significantly higher than
    its own, by Welch's t-test (one-sided, level `alpha`) on the two rows' refit means, sample
    standard deviations and count (``test_accuracy_refits``, ``test_accuracy_refits_sd``,
    ``refits``). `verdicts` on the refit means calls any shortfall a loss, a third of a point
    (one test image) as much as three points; this separates the shortfalls the refits resolve
    from those within their spread. Where both spreads are 0 a higher mean is significant.
    Columns: model, hw, budget, seed, ``significantly_below`` (the fixed-bit policies, space
    separated), ``below`` (every costlier policy with a higher refit mean), ``significant_gap`` (the
    largest of the significant shortfalls, top-1 points; NaN where none). Empty without the
    standard deviations (tables measured with fewer than 2 refits, or before they were kept)."""
    cols = ("test_accuracy_refits", "test_accuracy_refits_sd", "refits")
    if not all(c in df.columns for c in cols) or df["test_accuracy_refits_sd"].astype(str).isin(["", "nan"]).all():
        return pd.DataFrame()
    fixed = df[df["method"] == "fixed"]
    out = []
    for r in df[df["method"] == "haq"].to_dict("records"):
        f = fixed[(fixed["model"] == r["model"]) & (fixed["hw"] == r["hw"]) & (fixed["seed"] == r["seed"])]
        m, sd, n = float(r["test_accuracy_refits"]), float(r["test_accuracy_refits_sd"]), int(r["refits"])
        below, significant, gaps = [], [], []
        for b in f[f["cost"] >= r["cost"] * (1 - 1e-9)].to_dict("records"):
            mb, sdb, nb = float(b["test_accuracy_refits"]), float(b["test_accuracy_refits_sd"]), int(b["refits"])
            if mb <= m:
                continue
            below.append(b["policy"])
            if significantly_below(m, sd, n, mb, sdb, nb, alpha):
                significant.append(b["policy"])
                gaps.append(mb - m)
        out.append({"model": r["model"], "hw": r["hw"], "budget": r["budget"], "seed": r["seed"],
                    "significantly_below": " ".join(significant), "below": " ".join(below),
                    "significant_gap": max(gaps) if gaps else np.nan})
    return pd.DataFrame(out)


def depthwise_bits(layers: list[hw_models.LayerSpec], w_bits: str, a_bits: str) -> dict[str, float]:
    """Mean weight / activation bits of depthwise and of pointwise (1x1 conv) layers."""
    w = np.array([int(x) for x in w_bits.split()])
    a = np.array([int(x) for x in a_bits.split()])
    dw = np.array([l.kind == "dwconv" for l in layers])
    pw = np.array([l.kind == "conv" and l.kernel == 1 for l in layers])
    return {"dw_w": float(w[dw].mean()), "dw_a": float(a[dw].mean()),
            "pw_w": float(w[pw].mean()), "pw_a": float(a[pw].mean())}


def render_table(spec: TableSpec, scale: str, df: pd.DataFrame, out: Path, tag: str = "") -> str:
    """Write ``<table>-<scale><tag>.md``, its top-1 against cost figure and (for an edge and a
    cloud model) the policy figure from the rows."""
    from haq.report import plot_tradeoff

    out.mkdir(parents=True, exist_ok=True)
    by_model = {m: sorted(g["seed"].unique()) for m, g in df.groupby("model", sort=False)}
    if len({tuple(v) for v in by_model.values()}) == 1:
        seeds = f"Seeds {', '.join(map(str, next(iter(by_model.values()))))}"
    else:
        seeds = "Seeds " + "; ".join(f"{', '.join(map(str, v))} ({m})" for m, v in by_model.items())
    units = hw_models.METRIC_UNITS[CONSTRAINTS[spec.constraint]]
    test = "test_accuracy" in df.columns
    refit = "test_accuracy_refits" in df.columns
    # the count the CSV's refit means were measured with (written since `--refits`; before, the spec's)
    k = int(df["refits"].iloc[0]) if refit and "refits" in df.columns and len(df) else spec.refits
    refits_s = f"{k} refit{'s' if k != 1 else ''}"
    flag = " --distill" if tag == "-distill" else ""
    own = [f"`{m}` is searched with {_flat(pm['search'])}" for m, pm in (spec.scale(scale).get("per_model") or {}).items()
           if m in by_model and pm.get("search")]
    lines = [f"<!-- generated by `haq table {spec.name} --scale {scale}{flag}`; do not edit by hand -->",
             f"### {spec.title} ({scale} scale{', distilled finetune' if flag else ''})", "",
             f"{seeds}; accuracy is top-1 (%) on the search-validation split after "
             f"the same 1-epoch finetune for every policy of a model, mean +- std over seeds. `{spec.constraint} / w8a8` "
             f"is the policy's {spec.constraint} ({units}) over uniform w8a8's; `w8a8 / cost` the saving. Source: "
             f"`{spec.name}-{scale}{tag}.csv` (beside this file)." + (f" {'; '.join(own)} (its baselines too)."
                                                                      if own else "")
             + (" Float models (fingerprints, `haq.models.state_fingerprint`): "
                + ", ".join(f"{m} `{f}`" for m, f in df.groupby("model", sort=False)["float_model"].first().items())
                + "." if "float_model" in df.columns else "")
             + (" `held-out` is the same finetuned network's top-1 on the test split, which no search sees: the "
                "searches pick their best policy by search-validation top-1, which flatters the searched rows; "
                "the held-out split does not." if test else "")
             + (f" `held out, {refits_s}` is the held-out top-1 of the same policy finetuned {k} more times with "
                "seeds no search used, averaged: one finetune moves a policy's top-1 by a point or more on these "
                "small splits, and a searched row was picked on its own finetune's luck; the refits were not."
                if refit else ""), "",
             "| model | hardware | policy | top-1 (%) | " + ("held-out top-1 (%) | " if test else "")
             + (f"held out, {refits_s} (%) | " if refit else "")
             + f"float top-1 | {spec.constraint} / w8a8 | w8a8 / cost |",
             "|---|---|---|---|---|---|---|" + ("---|" if test else "") + ("---|" if refit else "")]
    search = spec.scale(scale).get("search") or {}
    kmeans = (search.get("quant") or {}).get("mode") == "kmeans"

    def fixed_label(policy: str) -> str:
        w = budget_kind(policy)[1][0]
        if kmeans:
            return f"{policy}: uniform {w}-bit k-means weights, float activations (Deep Compression)"
        return policy

    for (model, hw), g in df.groupby(["model", "hw"], sort=False):
        for (method, policy, budget), h in g.groupby(["method", "policy", "budget"], sort=False):
            label = fixed_label(policy) if method == "fixed" else f"{method} search, budget {budget}"
            lines.append(f"| {model} | {hw} | {label} | {_pm(h['accuracy'])} | "
                         + (f"{_pm(h['test_accuracy'])} | " if test else "")
                         + (f"{_pm(h['test_accuracy_refits'])} | " if refit else "")
                         + f"{h['fp_accuracy'].mean():.2f} | {_pm(h['cost_ratio'], '.3f')} | "
                         f"{h['w8a8_over_cost'].mean():.2f}x |")
    v = verdicts(df)
    held = verdicts(df.assign(accuracy=df["test_accuracy"])) if test else None
    refitted = verdicts(df.assign(accuracy=df["test_accuracy_refits"])) if refit else None
    short = refit_shortfalls(df) if refit else pd.DataFrame()
    if test and "reproduced" in df.columns:
        stale = df[not_reproduced(df)]
        if len(stale):
            lines += ["", f"{len(stale)} of {len(df)} rows did not come out the same when their policy was finetuned "
                      "again for the held-out column (their search ran with another thread count or engine "
                      "version): " + "; ".join(f"{r['model']} {r['hw']} {r['method']} {r['budget'] or r['policy']} "
                                               f"seed {r['seed']}" for r in stale.to_dict("records"))
                      + ". Their held-out top-1 is that of the finetune as it runs now."]
    figure = f"{spec.name}-{scale}{tag}-tradeoff.png"
    plot_tradeoff(df.to_dict("records"), out / figure, f"{spec.constraint} / w8a8", refits=k,
                  title=f"{spec.title} ({scale} scale): top-1 against {spec.constraint}",
                  fixed_name="uniform k-means, same finetune" if kmeans else "fixed bits, same finetune")
    lines += ["", f"The same rows as a picture: one panel per model and hardware, mean +- std over seeds both ways; a "
              f"searched point above the line of fixed-bit policies is more accurate than they are at its "
              f"{spec.constraint}" + (" (panels beneath: held out"
                                      + (f", and held out over {refits_s}" if refit else "") + ")" if test else "")
              + ".", "",
              f"![top-1 against {spec.constraint}]({figure})"]
    lines += against_budget_policy(df, [("accuracy", "search-validation")]
                                   + ([("test_accuracy", "held out")] if test else [])
                                   + ([("test_accuracy_refits", f"held out, {refits_s}")] if refit else []))
    lines += ["", f"Paper: {spec.paper}", ""]
    for (model, hw, budget), g in v.groupby(["model", "hw", "budget"], sort=False):
        haq = df[(df["method"] == "haq") & (df["model"] == model) & (df["hw"] == hw) & (df["budget"] == budget)]
        w8 = df[(df["method"] == "fixed") & (df["policy"] == "w8a8") & (df["model"] == model) & (df["hw"] == hw)]
        lost = sorted({p for s in g["loses_to"] for p in s.split()})
        line = f"- {model} on {hw}, budget {budget}: "
        if g["has_budget_policy"].all():
            line += (f"the searched policy is at least as accurate as uniform {budget} (same cost, the paper's "
                     f"comparison) in {int(g['beats_budget_policy'].sum())} of {len(g)} seeds, and ")
        else:
            line += "the searched policy is "
        line += (f"at least as accurate as every fixed-bit baseline that costs as much or more in "
                 f"{int(g['beats_all_costlier'].sum())} of {len(g)} seeds"
                 + (f" (where not, it loses to {', '.join(lost)})" if lost else ""))
        for where, measured in (("on the held-out test split", held), (f"held out over {refits_s}", refitted)):
            if measured is not None:
                hg = measured.loc[g.index]
                line += (f"; {where}, " + (f"at least as accurate as uniform {budget} in "
                                           f"{int(hg['beats_budget_policy'].sum())} of {len(g)} and "
                                           if g["has_budget_policy"].all() else "")
                         + f"as every costlier fixed-bit baseline in {int(hg['beats_all_costlier'].sum())} of {len(g)}")
        if not short.empty:
            sg = short.loc[g.index]
            sig = sorted({p for s in sg["significantly_below"] for p in s.split()})
            line += (f", and significantly less accurate than one of them (Welch's t-test over the refits, one-sided, "
                     f"{SIGNIFICANCE:.0%}) in {int((sg['significantly_below'] != '').sum())} of {len(g)}"
                     + (f" ({', '.join(sig)})" if sig else ""))
        if not w8.empty:
            refit_diff = haq["test_accuracy_refits"].mean() - w8["test_accuracy_refits"].mean() if refit else 0.0
            line += (f"; it costs {1 / haq['cost_ratio'].mean():.2f}x less than w8a8 at "
                     f"{haq['accuracy'].mean() - w8['accuracy'].mean():+.2f} points of top-1"
                     + (f" ({haq['test_accuracy'].astype(float).mean() - w8['test_accuracy'].astype(float).mean():+.2f}"
                        " held out" + (f", {refit_diff:+.2f} over {refits_s}" if refit else "") + ")" if test else "")
                     + (f" (paper: {spec.paper_saving} less at negligible loss)" if spec.paper_saving else ""))
        if "best_episode" in haq.columns:  # a best policy from the warm-up: the agent did not improve on it
            early = haq[pd.to_numeric(haq["best_episode"]) <= pd.to_numeric(haq["warmup"])]
            if len(early):
                line += (f". In {len(early)} of {len(haq)} seeds the best policy came from the random warm-up "
                         f"(episode {', '.join(str(int(e)) for e in early['best_episode'])}), which random search "
                         "with the same seed shares: the agent's own episodes did not beat it")
        stuck = haq[stuck_rows(haq)]  # the agent evaluated one policy over and over (`stuck_agent`)
        if len(stuck):
            line += (f". In {len(stuck)} of {len(haq)} seeds (seed{'s' if len(stuck) > 1 else ''} "
                     f"{', '.join(str(s) for s in stuck['seed'])}) the agent explored next to nothing after its "
                     f"warm-up: one policy took {', '.join(f'{float(x):.0%}' for x in stuck['agent_top_share'])} "
                     "of its episodes after it (`haq.search.stuck_agent`), so the row says little about what "
                     "the search could find")
        lines.append(line + ".")
    if not short.empty:
        lines += ["", shortfall_summary(short, f"Held out over {refits_s}")]
        lines += comparable_saving(df, short, spec.constraint, spec.paper_saving)
    if len(spec.hardware) == 2 and "haq" in set(df["method"]):
        lines += ["", *_edge_cloud(spec, scale, tag, df, out)]
    text = "\n".join(lines) + "\n"
    (out / f"{spec.name}-{scale}{tag}.md").write_text(text)
    return text


def shortfall_summary(short: pd.DataFrame, measured: str, samples: str = "refits") -> str:
    """Markdown: the searched rows against the costlier fixed-bit rows, counted three ways
    (`refit_shortfalls`); `measured` says on what, e.g. ``Held out over 4 refits``, and `samples`
    what the test's spreads are of."""
    n = len(short)
    lost = short[short["below"] != ""]
    sig = short[short["significantly_below"] != ""]
    budgets = ", ".join(f"{b} {k}" for b, k in sig.groupby("budget", sort=False).size().items())
    gaps = sig["significant_gap"].astype(float) if "significant_gap" in sig.columns else pd.Series(dtype=float)
    span = sorted({f"{gaps.min():.2f}", f"{gaps.max():.2f}"}, key=float) if len(gaps) and gaps.notna().all() else []
    by = f"; by {' to '.join(span)} points, each search's largest shortfall" if span else ""
    return (f"{measured}, of the {n} searches: at least as accurate as every costlier fixed-bit "
            f"baseline in {n - len(lost)}; below one or more of them by less than the {samples} resolve in "
            f"{len(lost) - len(sig)}; significantly less accurate than one (Welch's t-test on the {samples}, one-sided, "
            f"{SIGNIFICANCE:.0%}) in {len(sig)}" + (f" (by budget: {budgets}{by})" if len(sig) else "") + ".")


def comparable_saving(df: pd.DataFrame, short: pd.DataFrame, metric: str, paper_saving: str = "") -> list[str]:
    """Markdown: per model and hardware, the largest saving against w8a8 (w8a8's cost over the
    searched policy's, mean over seeds) among the budgets where no seed's searched policy is
    significantly less accurate than w8a8 over the refits (`refit_shortfalls`): the paper's
    "x less than 8 bits at negligible loss", with that loss measured on what no search selected on."""
    w8 = df[(df["method"] == "fixed") & (df["policy"] == "w8a8")]
    haq = df[df["method"] == "haq"]
    if w8.empty or haq.empty or short.empty:
        return []
    lines = ["", f"The {metric} saving at comparable accuracy: for each model and hardware, the largest w8a8 / cost "
             "among the budgets where no seed's searched policy is significantly less accurate than w8a8 over the "
             "refits (the test above)" + (f"; the paper reports {paper_saving} less than 8 bits at negligible loss"
                                          if paper_saving else "") + ":", ""]
    for (model, hw), g in haq.groupby(["model", "hw"], sort=False):
        ref = w8[(w8["model"] == model) & (w8["hw"] == hw)]
        if ref.empty:
            continue
        found, refused = [], []
        for budget, b in g.groupby("budget", sort=False):
            mine = short[(short["model"] == model) & (short["hw"] == hw) & (short["budget"] == budget)]
            below = int(mine["significantly_below"].str.split().apply(lambda p: "w8a8" in p).sum())
            diff = float(b["test_accuracy_refits"].astype(float).mean() - ref["test_accuracy_refits"].astype(float).mean())
            saving = float(1 / b["cost_ratio"].astype(float).mean())
            if below:
                refused.append(f"{budget}: {below} of {len(b)}")
            else:
                found.append((saving, budget, diff))
        if found:
            saving, budget, diff = max(found)
            text = (f"{saving:.2f}x less {metric} than w8a8 (budget {budget}, {signed(diff)} points of top-1 over the "
                    "refits)")
        else:
            text = "no budget"
        lines.append(f"- {model} on {hw}: {text}" + (f"; seeds significantly below w8a8 at {', '.join(refused)}"
                                                      if refused else "") + ".")
    return lines


def against_budget_policy(df: pd.DataFrame, columns: list[tuple[str, str]]) -> list[str]:
    """Markdown: each search method's best policy minus the uniform policy of its budget (the
    paper's comparison, same model, hardware and seed), mean over seeds and hardware, on each
    of `columns` (column of `df`, its heading); empty when no budget is a fixed-bit row."""
    fixed = df[df["method"] == "fixed"].set_index(["model", "hw", "seed", "policy"])
    diffs = []
    for r in df[df["method"] != "fixed"].to_dict("records"):
        key = (r["model"], r["hw"], r["seed"], r["budget"])
        if key in fixed.index:
            u = fixed.loc[key]
            diffs.append({"model": r["model"], "budget": r["budget"], "method": r["method"],
                          **{c: float(r[c]) - float(u[c]) for c, _ in columns}})
    if not diffs:
        return []
    lines = ["", ("Searched minus the uniform policy of the same budget (the paper's comparison: same model, hardware "
                  "and seed), top-1 points, mean over seeds and hardware:"), "",
             "| model | budget | method | " + " | ".join(name for _, name in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for (model, budget, method), g in pd.DataFrame(diffs).groupby(["model", "budget", "method"], sort=False):
        lines.append(f"| {model} | {budget} | {method} | " + " | ".join(f"{g[c].mean():+.2f}" for c, _ in columns)
                     + " |")
    return lines


def _flat(d: dict[str, Any], prefix: str = "") -> str:
    """``{"episodes": 60, "finetune": {"max_train_images": 256}}`` -> ``episodes 60, finetune.max_train_images 256``."""
    return ", ".join(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k} {v}" for k, v in d.items())


def _edge_cloud(spec: TableSpec, scale: str, tag: str, df: pd.DataFrame, out: Path) -> list[str]:
    """Depthwise vs pointwise bits on the two hardware models, and the policy figure."""
    from haq.models import model_layers
    from haq.report import plot_policies_side_by_side

    lines = ["Depthwise vs pointwise bits of the searched policies at each model's first (tightest) budget (mean "
             "over layers, then over seeds; HAQ Figures 3-4 report fewer bits for depthwise layers on the edge and "
             "more on the cloud):", "",
             "| model | budget | hardware | depthwise w | depthwise a | pointwise w | pointwise a |",
             "|---|---|---|---|---|---|---|"]
    notes: list[str] = []  # per-model sentences and figures, after the table
    for model, g in df[df["method"] == "haq"].groupby("model", sort=False):
        budget = spec.model_budgets(scale, model)[0]
        g = g[g["budget"] == budget]
        layers = model_layers(model)
        best = {}
        dw_bits: dict[str, float] = {}
        per_seed: dict[str, dict[int, float]] = {}
        for hw in spec.hardware:
            h = g[g["hw"] == hw]
            if h.empty:
                continue
            stats = pd.DataFrame([depthwise_bits(layers, r["w_bits"], r["a_bits"]) for r in h.to_dict("records")])
            lines.append(f"| {model} | {budget} | {hw} | {stats['dw_w'].mean():.2f} | {stats['dw_a'].mean():.2f} | "
                         f"{stats['pw_w'].mean():.2f} | {stats['pw_a'].mean():.2f} |")
            diff = (stats["dw_w"] + stats["dw_a"]) - (stats["pw_w"] + stats["pw_a"])
            dw_bits[hw] = float(diff.mean())
            per_seed[hw] = dict(zip(h["seed"], diff))
            first = h.sort_values("seed").iloc[0]
            best[hw] = (list(Policy.from_strings(layers, first["w_bits"], first["a_bits"]).bits),
                        f"{hw}, seed {first['seed']}: {first['accuracy']:.1f}%, {first['cost_ratio']:.3f}x w8a8")
        if len(dw_bits) == 2:
            (edge, e), (cloud, c) = dw_bits.items()
            verdict = ("matches" if e < c else "does not match")
            seeds = sorted(set(per_seed[edge]) & set(per_seed[cloud]))
            agree = sum(per_seed[edge][s] < per_seed[cloud][s] for s in seeds)
            pairs = ", ".join(f"seed {s}: {per_seed[edge][s]:+.2f} / {per_seed[cloud][s]:+.2f}" for s in seeds)
            notes += ["", f"Measured on {model}: depthwise minus pointwise bits (w + a) is {e:+.2f} on {edge} and "
                          f"{c:+.2f} on {cloud} (per seed, {edge} / {cloud}: {pairs}). The paper has depthwise layers "
                          f"relatively fewer bits on the edge than on the cloud; the mean {verdict} it, and the seeds "
                          f"agree with the paper in {agree} of {len(seeds)}. The agent can only respond to what the "
                          "cost model prices: the bottom panel of the figure shows each layer's share of the w8a8 cost "
                          "on both presets."]
        if len(best) == 2:
            costs = {hw: hw_models.create_hw_model(hw).table(layers, CONSTRAINTS[spec.constraint])
                     [:, 7, 7] for hw in best}
            name = f"{spec.name}-{scale}{tag}-{model}-policies.png"
            plot_policies_side_by_side(layers, best, costs, out / name,
                                       title=f"{model}: searched policies, {spec.constraint} budget {budget}")
            notes += ["", f"![edge and cloud policies of {model}]({name})"]
    return lines + notes
