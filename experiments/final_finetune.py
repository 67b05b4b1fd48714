"""Ablation: does the verdict against the costlier fixed-bit rows hold after a longer final finetune?

The tables compare policies after the search's own short finetune (one epoch; 256 images for
`digits32-mbv2`), measured held out over refits. The paper reports accuracy after the chosen
policy is finetuned longer, and so were its PACT rows. This script takes a table's searched (haq)
rows and fixed-bit rows as written in `experiments/results/<table>-<scale>.csv`, finetunes each
row's policy again for `--epochs` epochs on the whole search-train split (the same for every
row, searched or fixed: the same finetune budget), once with the search's seed and `--refits`
more times with seeds no search used (`haq.tables.held_out` with the finetune overridden; its
cache is `runs/tables/<table>-<scale>-final-e<epochs>/held-out.json`, so an interrupted run
resumes), and measures each on the held-out test split. Writes
`experiments/results/ablations/final-finetune-<table>-<scale>.csv` and `.md`: per row the mean
and spread of those finetunes beside the table's own one-epoch refit mean, and per searched row
whether it is significantly less accurate than a costlier fixed-bit row after the long finetune
(`haq.tables.refit_shortfalls`, Welch's t-test on the long finetunes).

    OMP_NUM_THREADS=1 python experiments/final_finetune.py latency --epochs 3 --refits 1 --jobs 2
    OMP_NUM_THREADS=1 python experiments/final_finetune.py latency --budgets w4a4 --models digits32-mbv2 --jobs 2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq import tables
from haq.cli import nonnegative_int, positive_int
from haq.tables import RESULTS_DIR, SCALES, TABLES, TableSpec

log = logging.getLogger("final_finetune")
OUT = RESULTS_DIR / "ablations"


def select(df: pd.DataFrame, models: list[str] | None, budgets: list[str] | None) -> pd.DataFrame:
    """The table's haq rows (of `budgets`, if given) and fixed-bit rows, of `models` if given."""
    df = df.assign(budget=df["budget"].astype(str))
    searched = sorted(set(df.loc[df["method"] == "haq", "budget"]))
    unknown_budgets = sorted(set(budgets or []) - set(searched))
    if unknown_budgets:
        raise SystemExit(f"the table has no searches at budget {', '.join(unknown_budgets)}; its budgets: "
                         f"{', '.join(searched)}")
    keep = (df["method"] == "fixed") | ((df["method"] == "haq") & (df["budget"].isin(budgets) if budgets else True))
    if models:
        unknown = sorted(set(models) - set(df["model"]))
        if unknown:
            raise SystemExit(f"the table has no rows of {', '.join(unknown)}; its models: "
                             f"{', '.join(sorted(set(df['model'])))}")
        keep &= df["model"].isin(models)
    return df[keep].reset_index(drop=True)


def long_finetune(spec: TableSpec, scale: str, rows: pd.DataFrame, epochs: int, refits: int, jobs: int,
                  runs: Path) -> pd.DataFrame:
    """`rows` with ``final_test_accuracy`` (mean over 1 + `refits` finetunes of `epochs` epochs on
    the whole search-train split, held out), ``final_test_accuracy_sd`` and ``final_finetunes``."""
    base = runs / f"{spec.name}-{scale}-final-e{epochs}"
    overrides: dict[str, Any] = {"finetune": {"epochs": epochs, "max_train_images": None}}
    start = time.perf_counter()

    def progress(done: int, total: int) -> None:
        log.info("%d of %d finetunes (%.0f s)", done, total, time.perf_counter() - start)

    # held_out's `reproduced` compares with the rows' one-epoch top-1, which a long finetune does not give:
    # its warning would name every row
    quiet, level = logging.getLogger("haq.tables"), logging.getLogger("haq.tables").level
    quiet.setLevel(logging.ERROR)
    try:
        tables.held_out(spec, scale, rows.drop(columns=[c for c in tables.HELD_OUT_COLUMNS if c in rows.columns]), base, overrides,
                        jobs, progress, refits)
    finally:
        quiet.setLevel(level)
    cache = json.loads((base / "held-out.json").read_text())
    samples = [[cache[k]["test"]] + cache[k]["refit_test"][:refits]
               for k in (tables._held_out_key(r) for r in rows.to_dict("records"))]
    out = rows.copy()
    out["final_epochs"] = epochs
    out["final_test_accuracy"] = [float(np.mean(s)) for s in samples]
    out["final_test_accuracy_sd"] = [float(np.std(s, ddof=1)) if len(s) > 1 else np.nan for s in samples]
    out["final_finetunes"] = [len(s) for s in samples]
    return out


def render(spec: TableSpec, scale: str, df: pd.DataFrame) -> str:
    """Markdown: each cell's searched rows and its model's fixed-bit rows, after the table's
    one-epoch refits and after the long finetune, and the Welch verdicts after the long one."""
    epochs, n = int(df["final_epochs"].iloc[0]), int(df["final_finetunes"].iloc[0])
    k = int(df["refits"].iloc[0]) if "refits" in df.columns else spec.refits
    lines = [f"<!-- generated by `python experiments/final_finetune.py {spec.name} --scale {scale}`; "
             "do not edit by hand -->",
             f"### {spec.title} ({scale} scale): after a {epochs}-epoch final finetune", "",
             f"Source: `final-finetune-{spec.name}-{scale}.csv` (beside this file), from "
             f"`{spec.name}-{scale}.csv`. Each row's policy finetuned for {epochs} epoch{'s' if epochs != 1 else ''} on the "
             f"whole search-train split ({n} time{'s' if n != 1 else ''}: the search's seed"
             + (f" and {n - 1} seed{'s' if n != 2 else ''} no search used" if n > 1 else "")
             + ") and measured on the held-out "
             f"test split; beside it, the table's own held-out top-1 over {k} one-epoch refits. Mean +- std over "
             "seeds.", "",
             f"| model | hardware | policy | held out, {k} one-epoch refits (%) | held out, {epochs}-epoch finetune (%) "
             f"| {spec.constraint} / w8a8 |",
             "|---|---|---|---|---|---|"]
    for (model, hw), g in df.groupby(["model", "hw"], sort=False):
        for (method, policy, budget), h in g.groupby(["method", "policy", "budget"], sort=False):
            label = policy if method == "fixed" else f"haq search, budget {budget}"
            lines.append(f"| {model} | {hw} | {label} | {tables._pm(h['test_accuracy_refits'].astype(float))} | "
                         f"{tables._pm(h['final_test_accuracy'])} | {tables._pm(h['cost_ratio'].astype(float), '.3f')} |")
    lines.append("")
    if n < 2:
        lines.append("One finetune a row: no spread to test the differences against.")
        return "\n".join(lines) + "\n"
    final = df.assign(test_accuracy_refits=df["final_test_accuracy"], test_accuracy_refits_sd=df["final_test_accuracy_sd"],
                      refits=df["final_finetunes"])
    for label, samples, frame in (("one-epoch refits (the table's)", "refits", df),
                                  (f"{epochs}-epoch finetune", "finetunes", final)):
        short = tables.refit_shortfalls(frame)
        if short.empty:
            lines.append(f"- After the {label}: one finetune a row, no spread to test the differences against.")
            continue
        per_cell = []
        for (model, hw, budget), s in short.groupby(["model", "hw", "budget"], sort=False):
            sig = sorted({p for x in s["significantly_below"] for p in x.split()})
            per_cell.append(f"{model} {hw} {budget}: {int((s['significantly_below'] != '').sum())} of {len(s)}"
                            + (f" ({', '.join(sig)})" if sig else ""))
        lines.append(f"- {tables.shortfall_summary(short, f'After the {label}', samples)} Significantly less accurate, by "
                     "cell: " + "; ".join(per_cell) + ".")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=TABLES)
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--epochs", type=positive_int, default=3, help="epochs of the final finetune (default 3)")
    parser.add_argument("--refits", type=nonnegative_int, default=1,
                        help="finetunes beyond the one with the search's seed (default 1)")
    parser.add_argument("--models", nargs="+", help="only these models' rows")
    parser.add_argument("--budgets", nargs="+", help="only the searches of these budgets (all fixed-bit rows are kept)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes (each with threads // jobs threads)")
    parser.add_argument("--runs", default="runs/tables", help="where the finetunes' cache is kept")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where the table's CSV is")
    parser.add_argument("--out", default=str(OUT), help="where to write the ablation's CSV and markdown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TableSpec.load(args.table)
    table_csv = Path(args.results) / f"{spec.name}-{args.scale}.csv"
    rows = select(pd.read_csv(table_csv, keep_default_na=False), args.models, args.budgets)
    df = long_finetune(spec, args.scale, rows, args.epochs, args.refits, args.jobs, Path(args.runs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"final-finetune-{spec.name}-{args.scale}.csv"
    df.to_csv(csv_path, index=False, float_format="%.5g")
    text = render(spec, args.scale, pd.read_csv(csv_path, keep_default_na=False))
    (out / f"final-finetune-{spec.name}-{args.scale}.md").write_text(text)
    log.info("wrote %s and its markdown", csv_path)


if __name__ == "__main__":
    main()
