"""Ablation: which search-validation measure best predicts a policy's held-out top-1?

The search's reward reads one finetune's top-1 on the search-validation split (HAQ Eq. 2). On the
digits splits (350 images) that number moves by a point or more from one finetune seed to another,
about as much as policies of one budget differ, and the search keeps the policy whose one
finetune scored best. This script asks whether a smoother measure of the same finetuned network
(the mean softmax probability of the true class, ``p_true``, or the cross-entropy, ``loss``; both
from `haq.train.evaluate`) would rank policies closer to how they rank held out.

It takes a table's policies (each searched and random-search row of `experiments/results/
<table>-<scale>.csv`, and the uniform policies w3a3..w8a8) and finetunes each `--finetunes` times
as the search does (the table's finetune settings), with seeds no search used, measuring every
finetune on search-validation and on the held-out test split. For each measure and each finetune
it compares the measure on that finetune with the mean held-out top-1 of the policy's other
finetunes (so a finetune's own luck on both splits does not count as agreement):

- Spearman's rank correlation over all of a model's policies;
- within each group of policies of equal cost (the rows of one table cell, and the uniform policy
  of its budget: what a search at that budget chooses between), the fraction of pairs the measure
  orders as held-out top-1 does (a tie in the measure counts half);
- the same fraction for each measure averaged over 1 or 2 finetunes, against the mean held-out
  top-1 of 2 other finetunes (`averaged_agreement`; needs 4 finetunes): what a reward averaged over
  finetune seeds, at 2 finetunes an episode, would gain.

Results are cached per finetune in ``runs/reward-signal/<table>-<scale>/`` (an interrupted run
resumes). Writes `experiments/results/ablations/reward-signal-<table>-<scale>.csv` (one row per
policy and finetune) and `.md`. With ``--shared-shuffle`` every policy's finetune of one seed
shuffles alike (``finetune.shared_shuffle``, common random numbers; files ``...-shared-shuffle``),
to see whether comparing policies on the same shuffle makes the comparison less noisy.

    OMP_NUM_THREADS=1 python experiments/reward_signal.py latency --jobs 2
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from concurrent.futures import as_completed
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq import tables
from haq.cli import positive_int
from haq.policy import Policy
from haq.tables import RESULTS_DIR, SCALES, TableSpec

log = logging.getLogger("reward_signal")
OUT = RESULTS_DIR / "ablations"
UNIFORM = tuple(f"w{b}a{b}" for b in range(3, 9))
MEASURES = {"top1": "top-1 (the paper's reward)", "p_true": "true-class probability", "loss": "cross-entropy"}
SPLITS = ("val", "test")
AVERAGED_SIZES = (1, 2)  # finetunes a reward is averaged over in `averaged_agreement`
TRUTH_FINETUNES = 2  # ... against the mean held-out top-1 of this many other finetunes


def table_policies(df: pd.DataFrame, model: str) -> pd.DataFrame:
    """One row per distinct policy of `model`: ``key`` (``w4a4`` or ``w_bits|a_bits``), ``w_bits``,
    ``a_bits`` and ``groups`` (the ``hw budget`` cells it belongs to, space-free names joined by ``;``)."""
    rows: dict[str, dict[str, Any]] = {}
    for u in UNIFORM:
        rows[u] = {"key": u, "w_bits": "", "a_bits": "", "groups": []}
    m = df[df["model"] == model]
    for r in m[m["method"] != "fixed"].to_dict("records"):
        key = f"{r['w_bits']}|{r['a_bits']}"
        rows.setdefault(key, {"key": key, "w_bits": r["w_bits"], "a_bits": r["a_bits"], "groups": []})
        group = f"{r['hw']} {r['budget']}"
        for k in (key, str(r["budget"])):  # the uniform policy of the budget joins the group
            if k in rows and group not in rows[k]["groups"]:
                rows[k]["groups"].append(group)
    return pd.DataFrame([{**r, "groups": ";".join(r["groups"])} for r in rows.values()])


def _finetune_job(config: dict[str, Any], key: str, w_bits: str, a_bits: str, seeds: list[int],
                  threads: int) -> tuple[str, dict[str, dict[str, dict[str, float]]]]:
    """Each finetune (by seed) of one policy, measured on search-validation and test."""
    from haq.config import SearchConfig

    cfg = SearchConfig.from_dict(config, "reward-signal evaluation")
    ev = tables._job_evaluator(cfg, threads)
    policy = Policy.from_string(ev.layers, key) if not w_bits else Policy.from_strings(ev.layers, w_bits, a_bits)
    out = {}
    try:
        for seed in seeds:
            ev.seed = seed
            metrics = ev.evaluate_splits(policy, SPLITS)
            out[str(seed)] = {s: {m: metrics[s][m] for m in MEASURES} for s in SPLITS}
    finally:
        ev.seed = cfg.seed
    return key, out


def measure(spec: TableSpec, scale: str, df: pd.DataFrame, models: list[str], finetunes: int, jobs: int,
            base: Path, shared_shuffle: bool = False) -> pd.DataFrame:
    """One row per (model, policy, finetune): the policy's groups and each measure on both splits
    (cached in ``<base>/finetunes.json``, for the float models of ``<base>/float-models.json``).
    `shared_shuffle`: every policy's finetune of one seed shuffles alike (``finetune.shared_shuffle``)."""
    tables.check_float_models(base, tables._model_fingerprints(spec, scale, models, None, base))
    cache_path = base / "finetunes.json"
    cache: dict[str, Any] = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
    seeds = [tables.refit_seed(0, j) for j in range(finetunes)]
    policies = {m: table_policies(df, m) for m in models}
    todo = []
    for model, pol in policies.items():
        cfg = spec.config(scale, model, spec.hardware[0], spec.model_budgets(scale, model)[0], "haq", 0,
                          base / "unused").to_dict()
        cfg["finetune"]["shared_shuffle"] = shared_shuffle
        for r in pol.to_dict("records"):
            missing = [s for s in seeds if str(s) not in cache.get(f"{model}|{r['key']}", {})]
            if missing:
                todo.append((cfg, model, r, missing))
    if todo:
        total, done, start = sum(len(t[3]) for t in todo), 0, time.perf_counter()
        base.mkdir(parents=True, exist_ok=True)
        with tables.job_pool(jobs) as pool:
            futures = {pool.submit(_finetune_job, cfg, r["key"], r["w_bits"], r["a_bits"], missing,
                                   tables.job_threads(jobs)): (model, len(missing))
                       for cfg, model, r, missing in todo}
            for future in as_completed(futures):
                model, n = futures[future]
                key, result = future.result()
                cache.setdefault(f"{model}|{key}", {}).update(result)
                cache_path.write_text(json.dumps(cache, indent=1) + "\n")
                done += n
                log.info("%d of %d finetunes (%.0f s)", done, total, time.perf_counter() - start)
    rows = []
    for model, pol in policies.items():
        for r in pol.to_dict("records"):
            for seed in seeds:
                got = cache[f"{model}|{r['key']}"][str(seed)]
                rows.append({"model": model, "policy": r["key"], "groups": r["groups"], "finetune_seed": seed,
                             **{f"{s}_{m}": got[s][m] for s in SPLITS for m in MEASURES}})
    return pd.DataFrame(rows)


def _score(values: pd.Series, measure: str) -> pd.Series:
    """Higher is better for every measure (the loss is negated)."""
    return -values if measure == "loss" else values


def _groups(g: pd.DataFrame) -> dict[str, list[str]]:
    """The equal-cost groups of one model's rows: ``{hw budget: [policy, ...]}``."""
    groups: dict[str, list[str]] = {}
    for policy, names in g.groupby("policy")["groups"].first().items():
        for name in filter(None, str(names).split(";")):
            groups.setdefault(name, []).append(policy)
    return groups


def pair_spread(df: pd.DataFrame, column: str) -> pd.Series:
    """Per model: the standard deviation over finetune seeds of the difference in `column` between
    two equal-cost policies finetuned with the same seed, averaged over the pairs (points): the
    noise in the comparison a search makes."""
    out = {}
    for model, g in df.groupby("model", sort=False):
        wide = g.pivot(index="policy", columns="finetune_seed", values=column)
        sds = [float((wide.loc[a] - wide.loc[b]).std()) for members in _groups(g).values()
               for a, b in itertools.combinations(members, 2)]
        out[model] = float(np.mean(sds)) if sds else np.nan
    return pd.Series(out)


def _pair_hits(score: pd.Series, truth: pd.Series, groups: dict[str, list[str]]) -> tuple[float, int]:
    """How many equal-cost pairs `score` orders as `truth` does (a tie in `score` counts half; a tie
    in `truth` is no pair), and how many pairs there are."""
    hits, pairs = 0.0, 0
    for members in groups.values():
        for a, b in itertools.combinations(members, 2):
            t = np.sign(truth[a] - truth[b])
            if t == 0:
                continue
            s = np.sign(score[a] - score[b])
            hits += 1.0 if s == t else 0.5 if s == 0 else 0.0
            pairs += 1
    return hits, pairs


def averaged_agreement(df: pd.DataFrame, sizes: tuple[int, ...] = (1, 2), truth_finetunes: int = 2) -> pd.DataFrame:
    """Would a reward averaged over several finetunes rank equal-cost policies better? Per model and
    measure, and per number `k` of finetunes in `sizes`: the fraction of equal-cost pairs that the
    measure's mean over `k` finetunes orders as the mean held-out top-1 of `truth_finetunes` other
    finetunes does, over every such choice of disjoint finetunes (the same target for every `k`, so
    the rows compare). Beside the search-validation measures, ``test_top1``: held-out top-1 itself
    over `k` finetunes, what the target's own finetune-to-finetune noise allows."""
    out = []
    for model, g in df.groupby("model", sort=False):
        columns = {m: f"val_{m}" for m in MEASURES} | {"test_top1": "test_top1"}
        wide = {m: g.pivot(index="policy", columns="finetune_seed", values=c) for m, c in columns.items()}
        seeds = list(wide["test_top1"].columns)
        if len(seeds) < max(sizes) + truth_finetunes:
            raise ValueError(f"{model}: {len(seeds)} finetunes a policy; averaging {max(sizes)} against "
                             f"{truth_finetunes} others needs {max(sizes) + truth_finetunes}")
        groups = _groups(g)
        for m in columns:
            row: dict[str, Any] = {"model": model, "measure": m}
            for k in sizes:
                hits, pairs = 0.0, 0
                for chosen in itertools.combinations(seeds, k):
                    rest = [s for s in seeds if s not in chosen]
                    score = _score(wide[m][list(chosen)].mean(axis=1), m)
                    for target in itertools.combinations(rest, truth_finetunes):
                        h, n = _pair_hits(score, wide["test_top1"][list(target)].mean(axis=1), groups)
                        hits, pairs = hits + h, pairs + n
                row[f"agreement_{k}"] = hits / pairs if pairs else np.nan
            out.append(row)
    return pd.DataFrame(out)


def agreement(df: pd.DataFrame) -> pd.DataFrame:
    """Per model and search-validation measure: the mean over finetunes of Spearman's rho with the
    other finetunes' mean held-out top-1, and the fraction of equal-cost pairs ordered the same."""
    out = []
    for model, g in df.groupby("model", sort=False):
        wide = {c: g.pivot(index="policy", columns="finetune_seed", values=c) for c in
                [f"val_{m}" for m in MEASURES] + ["test_top1"]}
        seeds = list(wide["test_top1"].columns)
        groups = _groups(g)
        for m in MEASURES:
            rhos, hits, pairs = [], 0.0, 0
            for seed in seeds:
                score = _score(wide[f"val_{m}"][seed], m)
                truth = wide["test_top1"].drop(columns=seed).mean(axis=1)
                rhos.append(float(score.rank().corr(truth.rank())))
                h, n = _pair_hits(score, truth, groups)
                hits, pairs = hits + h, pairs + n
            out.append({"model": model, "measure": m, "policies": len(wide["test_top1"]), "finetunes": len(seeds),
                        "spearman": float(np.mean(rhos)), "equal_cost_pairs": pairs // len(seeds),
                        "equal_cost_agreement": hits / pairs if pairs else np.nan})
    return pd.DataFrame(out)


def output_name(spec: TableSpec, scale: str, shared_shuffle: bool) -> str:
    """``<table>-<scale>[-shared-shuffle]``: the name of the cache folder and of the result files."""
    return f"{spec.name}-{scale}" + ("-shared-shuffle" if shared_shuffle else "")


def render(spec: TableSpec, scale: str, df: pd.DataFrame, shared_shuffle: bool = False) -> str:
    """Markdown: the agreement of each search-validation measure with held-out top-1, per model."""
    ag = agreement(df)
    n = int(df.groupby(["model", "policy"]).size().iloc[0])
    flag = " --shared-shuffle" if shared_shuffle else ""
    name = output_name(spec, scale, shared_shuffle)
    how = ("as the search does with `finetune.shared_shuffle` (every policy's finetune of one seed shuffled and "
           "augmented alike: common random numbers)" if shared_shuffle else "as the search does")
    lines = [f"<!-- generated by `python experiments/reward_signal.py {spec.name} --scale {scale} "
             f"--finetunes {n}{flag}`; do not edit by hand -->",
             f"### Which search-validation measure predicts held-out top-1? ({spec.name} table, {scale} scale"
             + (", shared shuffle)" if shared_shuffle else ")"), "",
             f"Source: `reward-signal-{name}.csv` (beside this file). Policies: the table's searched and "
             f"random-search rows and the uniform {UNIFORM[0]}..{UNIFORM[-1]}, each finetuned {n} times {how}, "
             "with seeds no search used. Each measure on one finetune's search-validation split is compared "
             "with the policy's mean held-out top-1 over its other finetunes. Equal-cost pairs: two policies of one "
             "table cell (hardware and budget; the uniform policy of the budget included), the choices a search at "
             "that budget makes; agreement is the fraction of them the measure orders as held-out top-1 does "
             "(ties in the measure count half, 0.5 is chance).", "",
             "| model | measure | policies | Spearman rho, all policies | equal-cost pairs | agreement on them |",
             "|---|---|---|---|---|---|"]
    for r in ag.to_dict("records"):
        lines.append(f"| {r['model']} | {MEASURES[r['measure']]} | {r['policies']} | {r['spearman']:.3f} | "
                     f"{r['equal_cost_pairs']} | {r['equal_cost_agreement']:.3f} |")
    if n >= max(AVERAGED_SIZES) + TRUTH_FINETUNES:
        av = averaged_agreement(df, AVERAGED_SIZES, TRUTH_FINETUNES)
        sizes = " or ".join(map(str, AVERAGED_SIZES))
        names = MEASURES | {"test_top1": "held-out top-1 itself (the target's own noise)"}
        lines += ["", "A reward averaged over finetunes (each finetune costs as much as an episode): agreement on the "
                  f"equal-cost pairs of a measure's mean over {sizes} finetunes with the mean held-out top-1 of "
                  f"{TRUTH_FINETUNES} other finetunes, over every such choice of finetunes; the last row of a model "
                  f"puts held-out top-1 of {sizes} finetunes in the measure's place.", "",
                  "| model | measure | " + " | ".join(f"{k} finetune{'s' * (k > 1)}" for k in AVERAGED_SIZES) + " |",
                  "|---|---|" + "---|" * len(AVERAGED_SIZES)]
        for r in av.to_dict("records"):
            lines.append(f"| {r['model']} | {names[r['measure']]} | "
                         + " | ".join(f"{r[f'agreement_{k}']:.3f}" for k in AVERAGED_SIZES) + " |")
    noise = df.groupby(["model", "policy"])[["val_top1", "val_p_true", "test_top1"]].std().groupby("model").mean()
    lines += ["", "Spread of one policy over its finetunes (mean standard deviation over policies, points): "
              + "; ".join(f"{model}: top-1 {r['val_top1']:.2f} and true-class probability {r['val_p_true']:.2f} on "
                          f"search-validation, top-1 {r['test_top1']:.2f} held out"
                          for model, r in noise.iterrows()) + "."]
    pairs = {c: pair_spread(df, c) for c in ("val_top1", "val_p_true", "test_top1")}
    lines += ["", "Spread of the difference between two equal-cost policies finetuned with the same seed (standard "
              "deviation over seeds, mean over pairs, points): "
              + "; ".join(f"{model}: top-1 {pairs['val_top1'][model]:.2f} and true-class probability "
                          f"{pairs['val_p_true'][model]:.2f} on search-validation, top-1 "
                          f"{pairs['test_top1'][model]:.2f} held out" for model in pairs["val_top1"].index) + "."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", nargs="?", default="latency", help="the table whose policies to measure")
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--models", nargs="+", help="only these models (default: the table's)")
    parser.add_argument("--finetunes", type=positive_int, default=4, help="finetunes of each policy (default 4)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes (each with threads // jobs threads)")
    parser.add_argument("--shared-shuffle", action="store_true",
                        help="finetune every policy of one seed with the same shuffling (finetune.shared_shuffle)")
    parser.add_argument("--runs", default="runs/reward-signal", help="where the finetunes' cache is kept")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where the table's CSV is")
    parser.add_argument("--out", default=str(OUT), help="where to write the CSV and markdown")
    args = parser.parse_args()
    if args.finetunes < 2:
        raise SystemExit("--finetunes must be at least 2: each finetune is compared with the others' mean")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TableSpec.load(args.table)
    table = pd.read_csv(Path(args.results) / f"{spec.name}-{args.scale}.csv", keep_default_na=False)
    models = args.models or list(dict.fromkeys(table["model"]))
    unknown = sorted(set(models) - set(table["model"]))
    if unknown:
        raise SystemExit(f"the table has no rows of {', '.join(unknown)}; its models: "
                         f"{', '.join(dict.fromkeys(table['model']))}")
    name = output_name(spec, args.scale, args.shared_shuffle)
    df = measure(spec, args.scale, table, models, args.finetunes, args.jobs, Path(args.runs) / name,
                 args.shared_shuffle)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"reward-signal-{name}.csv"
    df.to_csv(csv_path, index=False, float_format="%.5g")
    (out / f"reward-signal-{name}.md").write_text(
        render(spec, args.scale, pd.read_csv(csv_path, keep_default_na=False), args.shared_shuffle))
    log.info("wrote %s and its markdown", csv_path)


if __name__ == "__main__":
    main()
