"""A Pareto sweep: one method over a range of budgets, the returned policies' held-out top-1
against their cost with the uniform policies beside them (the accuracy-cost curve AIMET's AMP
reports and HAQ does not), and the cheapest policy within an allowed drop from float.

Layout of a sweep folder::

    <budget>/        one search's run directory per budget (resumed if interrupted, read back if done)
    sweep.csv        one row per returned policy and per uniform policy: cost, top-1, held-out top-1
    sweep.png        held-out top-1 against cost / w8a8
    pick.json        with a `max_drop`: the cheapest policy whose search-validation top-1 is within it

The pick reads search-validation numbers only (a returned policy's mean over the final selection's
fresh finetunes, a uniform policy's one finetune); the held-out column is reported, never used to
choose.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from haq.config import SearchConfig
from haq.evaluator import QuantEvaluator
from haq.fileio import atomic_write_text
from haq.policy import Policy

log = logging.getLogger(__name__)

SWEEP_COLUMNS = ["kind", "budget", "policy", "method", "cost", "cost_ratio", "val_accuracy", "test_accuracy",
                 "fp_accuracy", "w_bits", "a_bits", "finetunes"]
"""Columns of sweep.csv. ``kind``: ``searched`` or ``uniform``; ``val_accuracy``: search-validation
top-1 (a searched row's final-selection mean, a uniform row's one finetune)."""


def budget_folder(budget: str) -> str:
    """The run folder name of a budget: ``w3a4`` or ``ratio-0.5``."""
    return budget if budget[:1].isalpha() else f"ratio-{budget}"


def run_sweep(config: SearchConfig, budgets: Sequence[str], out: str | os.PathLike[str],
              on_search: Callable[[str, int, int, bool], None] | None = None,
              on_episode: Callable[[dict[str, Any]], None] | None = None) -> pd.DataFrame:
    """Run `config`'s search once per budget (``<out>/<budget>/``), measure what each returns on
    the held-out test split, and the uniform policies of the bits the search may choose; write
    ``sweep.csv`` and ``sweep.png``. A finished budget is read back, an interrupted one resumed.

    Args:
        config: the search settings; its ``budget`` and ``out`` are replaced per budget.
        budgets: budgets as ``SearchConfig.budget`` takes them, at least one.
        out: the sweep folder.
        on_search: called with (budget, index, count, done) before each budget: `done` when its
            search finished earlier and is read back.
        on_episode: passed to each search (its progress).

    Returns:
        The rows of sweep.csv.
    """
    from haq.report import plot_sweep
    from haq.search import Search

    if not budgets:
        raise ValueError("a sweep needs at least one budget")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    evaluator: QuantEvaluator | None = None
    rows: list[dict[str, Any]] = []
    search = None
    for i, budget in enumerate(budgets):
        cfg = dataclasses.replace(config, budget=str(budget), out=str(out / budget_folder(str(budget))))
        run_dir = Path(cfg.out or "")
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
        done = "test_accuracy" in summary.get("selected", summary.get("best", {}))
        if on_search is not None:
            on_search(str(budget), i, len(budgets), done)
        if not done:
            if (run_dir / "checkpoint.json").is_file():
                search = Search.resume(run_dir, on_episode, evaluator=evaluator)
            else:
                search = Search(cfg, on_episode=on_episode, evaluator=evaluator)
            evaluator = search.parts.evaluator
            summary = search.held_out(search.run())
        chosen = summary.get("selected") or summary["best"]
        rows.append({"kind": "searched", "budget": str(budget), "policy": chosen.get("policy", "best"),
                     "method": cfg.method, "cost": chosen["cost"], "cost_ratio": chosen["cost_ratio"],
                     "val_accuracy": chosen.get("selection_mean", chosen["accuracy"]),
                     "test_accuracy": chosen["test_accuracy"], "fp_accuracy": summary["fp_accuracy"],
                     "w_bits": chosen["w_bits"], "a_bits": chosen["a_bits"],
                     "finetunes": (summary.get("finetunes") or {}).get("total", "")})
    rows += _uniform_rows(config, out, evaluator, search)
    df = pd.DataFrame(rows, columns=SWEEP_COLUMNS)
    atomic_write_text(out / "sweep.csv", df.to_csv(index=False, float_format="%.5g"))
    plot_sweep(df, out / "sweep.png", title=f"{config.model} on {config.hw}: {config.method} over {len(budgets)} "
               f"{config.constraint} budgets")
    return df


def _uniform_rows(config: SearchConfig, out: Path, evaluator: QuantEvaluator | None, search: Any) -> list[dict[str, Any]]:
    """Each uniform policy wbab of the bits the search may choose, finetuned once with the search's
    seed and measured on both splits (kept in ``<out>/uniform.json`` so a rerun reads them back)."""
    from haq.parts import build_parts

    cache_path = out / "uniform.json"
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    parts = search.parts if search is not None else build_parts(dataclasses.replace(config, budget="1.0"), evaluator)
    env, ev = parts.env, parts.evaluator
    rows = []
    for b in env.choices:
        label = f"w{b}a{b}" if not env.weights_only else f"w{b}a{env.max_bits}"
        bits = [(b, env.max_bits if env.weights_only else b)] * len(env.layers)
        if label not in cache:
            metrics = ev.evaluate_splits(Policy.from_bits(env.layers, bits), ("val", "test"))
            cache[label] = {"val": metrics["val"]["top1"], "test": metrics["test"]["top1"]}
            atomic_write_text(cache_path, json.dumps(cache, indent=1) + "\n")
        cost = env.cost(bits)
        w, a = Policy.from_bits(env.layers, bits).as_strings()
        rows.append({"kind": "uniform", "budget": "", "policy": label, "method": "uniform", "cost": cost,
                     "cost_ratio": cost / env.reference_cost, "val_accuracy": cache[label]["val"],
                     "test_accuracy": cache[label]["test"], "fp_accuracy": ev.fp_accuracy, "w_bits": w, "a_bits": a,
                     "finetunes": 1})
    return rows


def pick_within(df: pd.DataFrame, max_drop: float) -> dict[str, Any] | None:
    """The cheapest row (searched or uniform) whose search-validation top-1 is at most `max_drop`
    points below the float model's; None when no row is. Ties in cost go to the more accurate."""
    if max_drop < 0:
        raise ValueError(f"max_drop is a drop in top-1 points and must be >= 0, got {max_drop}")
    ok = df[df["fp_accuracy"].astype(float) - df["val_accuracy"].astype(float) <= max_drop]
    if ok.empty:
        return None
    best = ok.sort_values(["cost", "val_accuracy"], ascending=[True, False]).iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in best.to_dict().items()}
