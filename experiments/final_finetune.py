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
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from haq import tables
from haq.cli import nonnegative_int, positive_int
from haq.search import load_search_data
from haq.tables import RESULTS_DIR, SCALES, TABLES, TableSpec

log = logging.getLogger("final_finetune")
OUT = RESULTS_DIR / "ablations"
DEFAULT_EPOCHS, DEFAULT_REFITS = 3, 1


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

    # `reproduced` compares with the rows' one-epoch top-1, which a long finetune never gives
    tables.held_out(spec, scale, rows.drop(columns=[c for c in tables.HELD_OUT_COLUMNS if c in rows.columns]), base,
                    overrides, jobs, progress, refits, check_reproduced=False)
    samples = tables.held_out_test_samples(base, rows, refits)
    out = rows.copy()
    out["final_epochs"] = epochs
    out["final_test_accuracy"] = [float(np.mean(s)) for s in samples]
    out["final_test_accuracy_sd"] = [float(np.std(s, ddof=1)) if len(s) > 1 else np.nan for s in samples]
    out["final_finetunes"] = [len(s) for s in samples]
    out["test_images"] = out["model"].map({m: test_images(spec, scale, m) for m in out["model"].unique()})
    return out


def test_images(spec: TableSpec, scale: str, model: str) -> int:
    """How many images `model`'s held-out test split has in `spec`'s searches at `scale`."""
    cfg = spec.config(scale, model, spec.hardware[0], spec.model_budgets(scale, model)[0], "haq", 0, Path("unused"))
    return len(load_search_data(cfg.model, cfg.dataset, cfg.data_root, **cfg.data).test)


def command(spec: TableSpec, scale: str, df: pd.DataFrame, config_dir: str | None = None, flags: str = "") -> str:
    """The command that measures `df` again: its epochs and refits (from the rows), `config_dir`
    (where the table's YAML was read from, if not experiments/configs) and further `flags`."""
    epochs, refits = int(df["final_epochs"].iloc[0]), int(df["final_finetunes"].iloc[0]) - 1
    words = [f"python experiments/final_finetune.py {spec.name} --scale {scale}"]
    words += [f"--epochs {epochs}"] if epochs != DEFAULT_EPOCHS else []
    words += [f"--refits {refits}"] if refits != DEFAULT_REFITS else []
    words += [f"--config-dir {config_dir}"] if config_dir else []
    return " ".join(words + ([flags] if flags else []))


def render(spec: TableSpec, scale: str, df: pd.DataFrame, config_dir: str | None = None, flags: str = "") -> str:
    """Markdown: each cell's searched rows and its model's fixed-bit rows, after the table's
    one-epoch refits and after the long finetune; the searched minus the uniform policy of its
    budget after each; and the Welch verdicts after each. Headed by `command` (`config_dir`,
    `flags`: as there)."""
    epochs, n = int(df["final_epochs"].iloc[0]), int(df["final_finetunes"].iloc[0])
    k = int(df["refits"].iloc[0]) if "refits" in df.columns else spec.refits
    lines = [f"<!-- generated by `{command(spec, scale, df, config_dir, flags)}`; do not edit by hand -->",
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
    lines += tables.against_budget_policy(df, [("test_accuracy_refits", f"held out, {k} one-epoch refits"),
                                               ("final_test_accuracy", f"held out, {epochs}-epoch finetune")])
    lines.append("")
    if n < 2:
        lines.append("One finetune a row: no spread to test the differences against.")
        return "\n".join(lines) + "\n"
    final = df.assign(test_accuracy_refits=df["final_test_accuracy"], test_accuracy_refits_sd=df["final_test_accuracy_sd"],
                      refits=df["final_finetunes"])
    shorts = {}  # the verdicts after each measure, by its name, for the test-split note too
    for name, label, samples, frame in (("one-epoch refits", "one-epoch refits (the table's)", "refits", df),
                                        (f"{epochs}-epoch finetune", f"{epochs}-epoch finetune", "finetunes", final)):
        short = shorts[name] = tables.refit_shortfalls(frame)
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
    if "test_images" in df.columns:
        lines += ["", test_split_note(df, shorts)]
    return "\n".join(lines) + "\n"


def test_split_note(df: pd.DataFrame, shorts: dict[str, pd.DataFrame]) -> str:
    """Markdown: the significant shortfalls (`shorts`: `refit_shortfalls` after each measure, by
    its name) in held-out images, and the test split's own sampling error, which the Welch tests
    (spread over finetune seeds, one fixed split) leave out."""
    sizes = df.groupby("model", sort=False)["test_images"].first().astype(int)
    parts = []
    for name, short in shorts.items():
        if short.empty:  # one finetune a row: nothing was tested
            continue
        short = short[short["significantly_below"] != ""]
        if short.empty:
            parts.append(f"none after the {name}")
            continue
        images = short["significant_gap"].astype(float) * short["model"].map(sizes) / 100
        parts.append(f"{short['significant_gap'].max():.2f} points ({images.max():.1f} images) after the {name}")
    p = float(df.loc[df["method"] == "haq", "final_test_accuracy"].median()) / 100  # the searched rows'
    held = "; ".join(f"{k} images ({', '.join(ms)})" for k, ms in sizes.groupby(sizes).groups.items())
    return (f"The held-out split has {held}. Largest significant shortfall: {'; '.join(parts)}. The tests take the spread over finetune seeds on this one "
            "split; they do not say whether another split of as many images would order the policies the same way: "
            f"the binomial standard error of one top-1 of {100 * p:.1f}% (the searched rows' median) on "
            f"{sizes.min()} images is "
            f"{100 * (p * (1 - p) / sizes.min()) ** 0.5:.2f} points.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help=f"{' | '.join(TABLES)}, or an ablation's YAML name with --config-dir")
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--epochs", type=positive_int, default=DEFAULT_EPOCHS,
                        help=f"epochs of the final finetune (default {DEFAULT_EPOCHS})")
    parser.add_argument("--refits", type=nonnegative_int, default=DEFAULT_REFITS,
                        help=f"finetunes beyond the one with the search's seed (default {DEFAULT_REFITS})")
    parser.add_argument("--models", nargs="+", help="only these models' rows")
    parser.add_argument("--budgets", nargs="+", help="only the searches of these budgets (all fixed-bit rows are kept)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="processes (each with threads // jobs threads)")
    parser.add_argument("--runs", default="runs/tables", help="where the finetunes' cache is kept")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where the table's CSV is")
    parser.add_argument("--config-dir", help="folder of the table YAMLs (default experiments/configs)")
    parser.add_argument("--out", default=str(OUT), help="where to write the ablation's CSV and markdown")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        spec = TableSpec.load(args.table, args.config_dir)
    except (OSError, ValueError) as err:
        raise SystemExit(str(err)) from err
    table_csv = Path(args.results) / f"{spec.name}-{args.scale}.csv"
    rows = select(pd.read_csv(table_csv, keep_default_na=False), args.models, args.budgets)
    df = long_finetune(spec, args.scale, rows, args.epochs, args.refits, args.jobs, Path(args.runs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / f"final-finetune-{spec.name}-{args.scale}.csv"
    df.to_csv(csv_path, index=False, float_format="%.5g")
    flags = " ".join(([f"--models {' '.join(args.models)}"] if args.models else [])
                     + ([f"--budgets {' '.join(args.budgets)}"] if args.budgets else [])
                     + ([f"--out {args.out}"] if Path(args.out).resolve() != OUT.resolve() else []))
    text = render(spec, args.scale, pd.read_csv(csv_path, keep_default_na=False), args.config_dir, flags)
    (out / f"final-finetune-{spec.name}-{args.scale}.md").write_text(text)
    log.info("wrote %s and its markdown", csv_path)


if __name__ == "__main__":
    main()
