"""Run a table: every search and fixed-bit baseline (resumable, in parallel processes), then each
row's policy measured held out, with refits."""

from __future__ import annotations

import itertools
import json
import logging
import multiprocessing
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq.config import SearchConfig, budget_kind
from haq.evaluator import QuantEvaluator
from haq.fileio import atomic_write_text
from haq.parts import build_evaluator, build_parts, check_evaluator
from haq.policy import Policy
from haq.runlock import FolderLock
from haq.search import Search, agent_exploration, read_episodes
from haq.tables.render import render_table
from haq.tables.spec import (
    RESULTS_DIR,
    Cell,
    TableSpec,
    check_float_models,
    model_fingerprints,
    one_float_model,
    refit_seed,
    slug,
)

log = logging.getLogger(__name__)


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
    with FolderLock(base):  # one process per table runs folder
        cells = spec.cells(scale, seeds)
        fingerprints = model_fingerprints(spec, scale, [c.model for c in cells], overrides, base)
        check_float_models(base, fingerprints)
        configs = {c: spec.config(scale, c.model, c.hw, c.budget, c.method, c.seed, cell_run_dir(base, c), overrides)
                   for c in cells}
        summaries: dict[Cell, dict[str, Any]] = {}
        for cell, cfg in configs.items():  # finished searches are read back
            summary_path = cell_run_dir(base, cell) / "summary.json"
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
                    cfg, run_dir = configs[cell], cell_run_dir(base, cell)
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

        rows = [search_row(spec, scale, *cell, summaries[cell], configs[cell].warmup, cell_run_dir(base, cell))
                for cell in cells]
        for (model, hw, seed), done in baselines.items():
            rows += [{"table": spec.name, "scale": scale, "model": model, "hw": hw, "budget": "", "method": "fixed",
                      "policy": b, "seed": seed, "accuracy": done[b]["accuracy"], "cost": done[b]["cost"],
                      "cost_ratio": done[b]["cost"] / done[b]["w8a8_cost"],
                      "w8a8_over_cost": done[b]["w8a8_cost"] / done[b]["cost"], "fp_accuracy": done[b]["fp_accuracy"],
                      "w_bits": "", "a_bits": "", "episodes": 0, "warmup": "", "best_episode": "",
                      "returned": "", "finetunes": "",
                      "agent_distinct_policies": "", "agent_top_share": ""}
                     for b in spec.baselines]
        one_float_model(pd.DataFrame(rows))
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
                       else model_fingerprints(spec, scale, list(df["model"]), overrides, base))
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
            atomic_write_text(cache_path, json.dumps(cache, indent=1, sort_keys=True) + "\n")
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
        search = Search.resume(run_dir, on_episode, evaluator=evaluator, allow_plugins=True)  # the spec names them
    else:
        search = Search(cfg, on_episode=on_episode, evaluator=evaluator)
    try:
        return search.run()
    finally:
        search.release()


def cell_run_dir(base: Path, cell: Cell) -> Path:
    """The run folder of one search of a table, under the table's runs folder `base`."""
    return base / slug(f"{cell.model}-{cell.hw}-{cell.budget}-{cell.method}-seed{cell.seed}")


def _baseline_cache(base: Path, model: str, hw: str, seed: int) -> Path:
    return base / slug(f"baselines-{model}-{hw}-seed{seed}.json")


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
            on_finished(cell_run_dir(base, cell).name)
    with job_pool(jobs) as pool:
        futures: dict[Future[Any], Any] = {}
        for cell, cfg in configs.items():
            if cell not in summaries:
                run_dir = cell_run_dir(base, cell)
                futures[pool.submit(search_job, cfg.to_dict(), str(run_dir), threads)] = cell
        for key, todo in todo_baselines.items():
            futures[pool.submit(_baseline_job, baseline_sets[key].to_dict(), todo, threads)] = key
        pending = set(futures)
        total = sum(cfg.episodes for cfg in configs.values())

        def progress() -> None:  # finished searches count whole; running ones by their episodes.csv rows
            if on_progress is not None:
                done = sum(cfg.episodes if c in summaries else min(cfg.episodes, len(read_episodes(cell_run_dir(base, c))))
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
                            on_finished(cell_run_dir(base, what).name)
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


def search_job(config: dict[str, Any], run_dir: str, threads: int) -> dict[str, Any]:
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
    reused or resumed as this cell's; the agent's settings matter only to the DDPG search, ``haq``)."""
    done = SearchConfig.from_run(run_dir / "config.yaml", allow_plugins=True)  # compared with the spec's own
    ignore = {"out", "agent"} if method != "haq" else {"out"}
    a = {k: v for k, v in done.to_dict().items() if k not in ignore}
    b = {k: v for k, v in cfg.to_dict().items() if k not in ignore}
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _check_same_config(run_dir: Path, cfg: SearchConfig, method: str) -> None:
    """A finished run is reused only if it ran this cell's config."""
    diff = config_differences(run_dir, cfg, method)
    if diff:
        raise ValueError(f"{run_dir} holds a search with another config (differs in {diff}); delete it or pass "
                         "another --runs folder")


def search_row(spec: TableSpec, scale: str, model: str, hw: str, budget: str, method: str, seed: int,
                summary: dict[str, Any], warmup: int, run_dir: Path) -> dict[str, Any]:
    """A search's row, read from its summary: the policy it returns (``selected``, the final
    selection's; the best by reward for a search without one), ``returned`` naming it (an episode or
    a uniform policy), and ``finetunes``, all the search ran. `agent_distinct_policies` and
    `agent_top_share` (from its episodes.csv, `haq.search.agent_exploration`) say how much a DDPG
    agent explored after the warm-up (blank for the other methods, which have no agent episodes)."""
    best = summary["best"]
    row = summary.get("selected") or {**best, "policy": f"episode {best['episode']}"}
    explored = agent_exploration(read_episodes(run_dir), warmup) if method == "haq" else None
    finetunes = (summary.get("finetunes") or {}).get("total", "")
    return {"table": spec.name, "scale": scale, "model": model, "hw": hw, "budget": budget, "method": method,
            "policy": "searched", "seed": seed, "accuracy": row["accuracy"], "cost": row["cost"],
            "cost_ratio": row["cost_ratio"], "w8a8_over_cost": summary["w8a8_cost"] / row["cost"],
            "fp_accuracy": summary["fp_accuracy"], "w_bits": row["w_bits"], "a_bits": row["a_bits"],
            "episodes": summary["episodes"], "warmup": warmup, "best_episode": best["episode"],
            "returned": row["policy"], "finetunes": finetunes,
            "agent_distinct_policies": explored[0] if explored else "",
            "agent_top_share": round(explored[1], 4) if explored else ""}
