"""Ablation: does a 3-bit floor (`min_bits: 3`) help the tables' digits32-mbv2 searches?

Compares, seed by seed, each `experiments/results/ablations/min-bits-<table>-mini.csv` (bits 3..8:
latency at budget w4a4, energy at 0.8) with the same cells of the table as measured on the same float
models, `experiments/results/<table>-mini.csv` (bits 2..8, the table's): top-1 of the
best policy on the search-validation split, held out, and held out over the refits; and whether
each searched policy is at least as accurate as every fixed-bit row that costs as much or more
(`haq.tables.verdicts`, each table against its own fixed-bit rows). Writes `experiments/results/ablations/min-bits.md`.

    OMP_NUM_THREADS=1 haq table min-bits-latency --config-dir experiments/configs/ablations \
        --results experiments/results/ablations --jobs 2
    OMP_NUM_THREADS=1 haq table min-bits-energy --config-dir experiments/configs/ablations \
        --results experiments/results/ablations --jobs 2
    python experiments/min_bits.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from haq import tables
from haq.config import budget_kind

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
TABLES = ("latency", "energy")  # ablations/min-bits-<table>-mini.csv against <table>-mini.csv
OUT = RESULTS / "ablations" / "min-bits.md"
MAIN = RESULTS  # the tables on the float models these ablations were measured on (the shipped ones)
MEASURES = {"search-validation": "accuracy", "held out": "test_accuracy", "held out, refits": "test_accuracy_refits"}
KEYS = ["model", "hw", "budget", "method", "seed"]


def paired(ablation: pd.DataFrame, main: pd.DataFrame, suffixes: tuple[str, str] = ("_2", "_3")) -> pd.DataFrame:
    """One row per searched cell of the ablation: each measure in both tables (`suffixes`: the
    main table's, here ``_2`` for its 2..8 bits, then the ablation's, ``_3`` for 3..8) and whether
    the searched policy beat every costlier fixed-bit row of its own table on that measure
    (``beats_<column>_2`` / ``_3``), and the uniform policy of its budget (``uniform_<column>_2`` /
    ``_3``, meaningful for a budget like w4a4); searched rows (haq, random) only."""
    ablation, main = (df.assign(budget=df["budget"].astype(str)) for df in (ablation, main))
    searched = [df[df["method"] != "fixed"] for df in (ablation, main)]
    out = searched[1].merge(searched[0], on=KEYS, suffixes=suffixes)
    for column in MEASURES.values():
        for suffix, df in zip(suffixes, (main, ablation)):
            v = tables.verdicts(df.assign(accuracy=df[column]))
            v["budget"] = v["budget"].astype(str)
            v = v.rename(columns={"beats_all_costlier": f"beats_{column}{suffix}",
                                  "beats_budget_policy": f"uniform_{column}{suffix}"})
            keep = ["model", "hw", "budget", "seed", f"beats_{column}{suffix}", f"uniform_{column}{suffix}"]
            out = out.merge(v[keep], on=["model", "hw", "budget", "seed"], how="left")
    return out


def section(table: str, ablation: pd.DataFrame, main: pd.DataFrame) -> list[str]:
    """Markdown of one table's ablation: the paired rows, then what they measure."""
    p = paired(ablation, main)
    budgets = ", ".join(sorted(set(p["budget"])))
    head = "| hardware | method | seed | " + " | ".join(f"{m}: bits 2..8 | 3..8" for m in MEASURES) + " |"
    lines = [f"## {table.capitalize()} table, budget {budgets}", "",
             (f"Sources: `{(MAIN / f'{table}-mini.csv').relative_to(ROOT)}` (bits 2..8, the table on the same "
              "float models) and "
              f"`experiments/results/ablations/min-bits-{table}-mini.csv` "
              f"(`experiments/configs/ablations/min-bits-{table}.yaml`, bits 3..8)."), "",
             head, "|" + "---|" * (3 + 2 * len(MEASURES))]
    for r in p.sort_values(["hw", "method", "seed"], ascending=[False, True, True]).to_dict("records"):
        cells = " | ".join(f"{r[c + '_2']:.2f} | {r[c + '_3']:.2f}" for c in MEASURES.values())
        lines.append(f"| {r['hw']} | {r['method']} | {r['seed']} | {cells} |")
    said = ["", "Measured:", ""]
    index = ["model", "hw", "policy", "seed"]
    fixed = [df[df["method"] == "fixed"].set_index(index)["accuracy"] for df in (main, ablation)]
    same = (fixed[0].reindex(fixed[1].index) - fixed[1]).abs() <= 1e-3
    said.append(f"- The ablation's fixed-bit rows (finetuned again) equal the table's in {int(same.sum())} of "
                f"{len(same)}: the two tables measure alike.")
    uniform = all(budget_kind(b)[0] == "uniform" for b in p["budget"])  # w4a4, not a ratio like 0.8
    for method, rows in p.groupby("method", sort=True):
        for label, c in MEASURES.items():
            diff = rows[f"{c}_3"] - rows[f"{c}_2"]
            text = (f"- {method}, {label}: with bits 3..8 at least as accurate in {int((diff >= -1e-3).sum())} of "
                    f"{len(rows)} searches, mean {rows[f'{c}_2'].mean():.2f} -> {rows[f'{c}_3'].mean():.2f} "
                    f"({tables.signed(diff.mean())} points; lowest seed {rows[f'{c}_2'].min():.2f} -> "
                    f"{rows[f'{c}_3'].min():.2f})")
            if method == "haq" and uniform:
                text += (f"; at least as accurate as the uniform policy of its budget in "
                         f"{int(rows[f'uniform_{c}_2'].sum())} of {len(rows)} with bits 2..8, "
                         f"{int(rows[f'uniform_{c}_3'].sum())} with 3..8")
            if method == "haq":
                text += (f"; as every costlier fixed-bit row in {int(rows[f'beats_{c}_2'].sum())} of {len(rows)} "
                         f"with bits 2..8, {int(rows[f'beats_{c}_3'].sum())} with 3..8")
            said.append(text + ".")
    return lines + said + [""]


def render(frames: dict[str, tuple[pd.DataFrame, pd.DataFrame]]) -> str:
    """The whole markdown from (ablation, main table) rows per table."""
    lines = ["<!-- generated by experiments/min_bits.py; do not edit by hand -->",
             "# Ablation: a 3-bit floor for `digits32-mbv2`", "",
             ("The tables' `digits32-mbv2` searches (bits 2..8) against the same searches with `min_bits: 3` (same "
              "hardware, budget, seeds, 60 episodes, agent and 256-image finetune; random search draws from 3..8 too; "
              "BitFusion runs 2, 4 and 8 bits, so there 3..8 leaves 4 and 8). Top-1 (%) of each search's best policy "
              "on the search-validation split it was picked on, on the held-out test split, and held out averaged "
              "over its refits (finetunes with seeds no search used)."), ""]
    for table, (ablation, main) in frames.items():
        lines += section(table, ablation, main)
    return "\n".join(lines)


def main() -> None:
    frames = {t: (pd.read_csv(RESULTS / "ablations" / f"min-bits-{t}-mini.csv", keep_default_na=False),
                  pd.read_csv(MAIN / f"{t}-mini.csv", keep_default_na=False))
              for t in TABLES if (RESULTS / "ablations" / f"min-bits-{t}-mini.csv").is_file()}
    for t, (ablation, main_df) in frames.items():
        tables.check_same_float_models(ablation, main_df, f"ablations/min-bits-{t}-mini.csv",
                                       str(MAIN / f"{t}-mini.csv"))
    OUT.write_text(render(frames))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
