"""Ablation: does a reward on the true-class probability find policies that hold up held out?

The tables' searches reward one finetune's top-1 on the 350-image search-validation split (HAQ
Eq. 2); `experiments/reward_signal.py` found the mean true-class probability of the same finetune
ranks equal-cost policies as held-out top-1 does more often. The ablations
`experiments/configs/ablations/p-true-<table>.yaml` run every searched cell of the latency, energy
and size tables with ``reward_measure: p_true`` (same float models, budgets, episodes, finetune,
agent and seeds). This script pairs the two searches of each cell seed by seed, held out over the
refits (the mean test top-1 of 4 finetunes with seeds no search used), with the uniform policy of
the budget where the budget is one, and writes `experiments/results/ablations/p-true.md` (a
section for each table whose ablation has been run).

    OMP_NUM_THREADS=1 haq table p-true-latency --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    OMP_NUM_THREADS=1 haq table p-true-energy --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    OMP_NUM_THREADS=1 haq table p-true-size --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    python experiments/p_true.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from haq import tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
TABLES = ("latency", "energy", "size")  # main table RESULTS/<t>-mini.csv (top-1 reward), ablation ABLATIONS/p-true-<t>-mini.csv
ABLATIONS = RESULTS / "ablations"
OUT = RESULTS / "ablations" / "p-true.md"
KEYS = ["model", "hw", "budget", "seed"]
REFIT = "test_accuracy_refits"


def paired(main: pd.DataFrame, ablation: pd.DataFrame) -> pd.DataFrame:
    """One row per searched cell and seed both tables have: search-validation top-1 (``accuracy``),
    held-out top-1 over the refits and cost ratio of the top-1-reward search (``_top1``) and of the
    true-class-probability one (``_p``); the uniform policy of the budget over the refits
    (``uniform``, the ablation's own fixed-bit row), and whether each search is significantly below a
    costlier fixed-bit row or below the uniform policy of its budget (`haq.tables.refit_shortfalls`)."""
    main, ablation = (df.assign(budget=df["budget"].astype(str)) for df in (main, ablation))
    cols = ["accuracy", REFIT, "cost_ratio"]
    out = main.loc[main["method"] == "haq", KEYS + cols].merge(
        ablation.loc[ablation["method"] == "haq", KEYS + cols], on=KEYS, suffixes=("_top1", "_p"))
    fixed = ablation[ablation["method"] == "fixed"].set_index(["model", "hw", "seed", "policy"])[REFIT]
    records = out.to_dict("records")
    out["uniform"] = [float(fixed.get((r["model"], r["hw"], r["seed"], r["budget"]), np.nan))
                      for r in records]  # NaN where the budget is a ratio, not a fixed-bit row
    for suffix, df in (("_top1", main), ("_p", ablation)):  # budgets already strings (above)
        short = tables.refit_shortfalls(df).set_index(KEYS)
        below = [short.loc[tuple(r[k] for k in KEYS), "significantly_below"] for r in records]
        out[f"significant{suffix}"] = [b != "" for b in below]
        out[f"below_uniform{suffix}"] = [r["budget"] in b.split() for r, b in zip(records, below)]
    return out


def section(table: str, p: pd.DataFrame, refits: int) -> list[str]:
    """Markdown lines of one table's pairs (`paired`), measured over `refits` refits."""
    lines = [f"## The {table} table", "",
             f"Held out: mean top-1 (%) on the test split over {refits} finetunes of each best policy with seeds no "
             f"search used. Sources: `../{table}-mini.csv` and `p-true-{table}-mini.csv` (beside this file).", "",
             ("| model | budget | searches | search-validation top-1: top-1 reward / p_true reward | held out: top-1 "
              "reward | p_true reward | uniform of the budget | p_true minus top-1 reward | p_true at least as "
              "accurate |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for (model, budget), g in p.groupby(["model", "budget"], sort=False):
        d = g[f"{REFIT}_p"] - g[f"{REFIT}_top1"]
        uniform = f"{g['uniform'].mean():.2f}" if g["uniform"].notna().all() else "-"
        lines.append(f"| {model} | {budget} | {len(g)} | {g['accuracy_top1'].mean():.2f} / {g['accuracy_p'].mean():.2f} "
                     f"| {g[f'{REFIT}_top1'].mean():.2f} | {g[f'{REFIT}_p'].mean():.2f} | {uniform} | "
                     f"{tables.signed(d.mean())} | {int((d >= -1e-9).sum())} of {len(g)} |")
    d = p[f"{REFIT}_p"] - p[f"{REFIT}_top1"]
    test = stats.ttest_rel(p[f"{REFIT}_p"], p[f"{REFIT}_top1"])
    lines += ["", "Measured:", "",
              f"- Over all {len(p)} paired searches, held out over the refits: the p_true reward minus the top-1 reward is "
              f"{tables.signed(d.mean())} points on average (median {tables.signed(d.median())}; at least as accurate in "
              f"{int((d >= -1e-9).sum())} of {len(p)}; paired t-test, two-sided, p = {test.pvalue:.3f})."]
    u = p[p["uniform"].notna()]
    if not u.empty:
        lines.append(f"- Searched minus the uniform policy of the budget ({len(u)} searches whose budget is one), held out "
                     f"over the refits: {tables.signed((u[f'{REFIT}_top1'] - u['uniform']).mean())} points with the top-1 "
                     f"reward, {tables.signed((u[f'{REFIT}_p'] - u['uniform']).mean())} with the p_true reward; "
                     "significantly below it (Welch's t-test on the refits, one-sided, 5%): "
                     f"{int(u['below_uniform_top1'].sum())} and {int(u['below_uniform_p'].sum())} of {len(u)}.")
    lines += [f"- Significantly below a costlier fixed-bit row: {int(p['significant_top1'].sum())} of {len(p)} searches "
              f"with the top-1 reward, {int(p['significant_p'].sum())} with the p_true reward.",
              f"- Cost over w8a8, mean: {p['cost_ratio_top1'].mean():.3f} with the top-1 reward and "
              f"{p['cost_ratio_p'].mean():.3f} with the p_true reward (the same budgets; how much of one a search "
              "spends is its own choice).", ""]
    return lines


def render(sections: dict[str, tuple[pd.DataFrame, int]]) -> str:
    """The whole markdown: `section` for each table (name -> (pairs, refits))."""
    lines = ["<!-- generated by experiments/p_true.py; do not edit by hand -->",
             "# Ablation: the reward on the true-class probability (`reward_measure: p_true`)", "",
             ("Each table's searches (reward on one finetune's search-validation top-1, HAQ Eq. 2) against the same "
              "searches with the reward on the mean true-class probability of the same finetune "
              "(`experiments/configs/ablations/p-true-<table>.yaml`; same float models, budgets, episodes, finetune, "
              "agent and seeds), paired seed by seed."), ""]
    for table, (p, refits) in sections.items():
        lines += section(table, p, refits)
    return "\n".join(lines)


def main() -> None:
    sections = {}
    for table in TABLES:
        main_csv, ablation_csv = RESULTS / f"{table}-mini.csv", ABLATIONS / f"p-true-{table}-mini.csv"
        if not ablation_csv.is_file():
            print(f"no {ablation_csv.name} yet: run its ablation first (see this script's docstring)")
            continue
        main_df = pd.read_csv(main_csv, keep_default_na=False)
        ablation = pd.read_csv(ablation_csv, keep_default_na=False)
        tables.check_same_float_models(ablation, main_df, ablation_csv.name, main_csv.name)
        counts = {int(n) for df in (main_df, ablation) for n in df["refits"]}
        if len(counts) != 1:
            raise SystemExit(f"{main_csv.name} and {ablation_csv.name} ran {sorted(counts)} refits a row; measure both "
                             "with the same --refits")
        sections[table] = (paired(main_df, ablation), counts.pop())
    if not sections:
        raise SystemExit("no p-true ablation has been run")
    OUT.write_text(render(sections))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
