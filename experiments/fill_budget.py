"""Ablation: does spending the whole budget (`fill_budget: true`) help the search?

HAQ's reward ignores cost under the budget, and budget enforcement only lowers bits, so a search may
end on a policy cheaper than its budget when a noisy reward happened to score it highest. On the
latency table's `digits-mbv2` searches it did (at w6a6 0.49 of w8a8's latency against the budget's
0.56), and those policies were less accurate held out than uniform bits of the budget. With
`fill_budget: true` the environment raises each policy's lowest bitwidths after enforcement while the
budget allows (`envs.MixedPrecisionEnv`), so every evaluated policy spends its budget. The ablation
`experiments/configs/ablations/fill-budget-latency.yaml` reruns the table's 36 searches with it, all
else as the table; this script pairs them with the table's (`noise_decay.render_change`) and adds,
per model and budget, the cost the searched policies used and their held-out accuracy over the
refits beside the uniform policy's. Writes `experiments/results/ablations/fill-budget.md`.

    OMP_NUM_THREADS=1 haq table fill-budget-latency --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    python experiments/fill_budget.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from noise_decay import render_change, write_change

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
MAIN = RESULTS / "latency-mini.csv"  # the table (no filling), on the shipped float models
ABLATION = RESULTS / "ablations" / "fill-budget-latency-mini.csv"  # fill_budget: true
OUT = RESULTS / "ablations" / "fill-budget.md"
SUFFIXES = ("_off", "_on")


def budget_lines(p: pd.DataFrame, main: pd.DataFrame) -> list[str]:
    """Per model and budget: the searched policies' cost over the budget's, without and with filling, and
    their mean held-out top-1 over the refits beside the uniform policy of the budget's (the table's fixed row)."""
    fixed = main[main["method"] == "fixed"]
    lines = ["", ("Per model and budget (mean over hardware and seeds; cost is the searched policy's over the "
                  "uniform policy's of the budget; held out over the refits):"), "",
             "| model | budget | cost used: off | on | held out, refits: off | on | uniform policy of the budget |",
             "|---|---|---|---|---|---|---|"]
    for (model, budget), g in p.groupby(["model", "budget"], sort=False):
        uniform = fixed[(fixed["model"] == model) & (fixed["policy"] == budget)].set_index(["hw", "seed"])
        key = list(zip(g["hw"], g["seed"], strict=True))
        ratio = uniform.loc[key, "cost_ratio"].to_numpy(dtype=float)
        lines.append(f"| {model} | {budget} | {(g['cost_ratio_off'].to_numpy(dtype=float) / ratio).mean():.3f} | "
                     f"{(g['cost_ratio_on'].to_numpy(dtype=float) / ratio).mean():.3f} | "
                     f"{g['test_accuracy_refits_off'].astype(float).mean():.2f} | "
                     f"{g['test_accuracy_refits_on'].astype(float).mean():.2f} | "
                     f"{uniform.loc[key, 'test_accuracy_refits'].astype(float).mean():.2f} |")
    return lines


def render(p: pd.DataFrame) -> str:
    """Markdown from `min_bits.paired` rows (suffixes ``_off`` for the table, ``_on`` for the ablation)."""
    intro = (f"The latency table's searches ({', '.join(f'`{m}`' for m in dict.fromkeys(p['model']))}; BISMO edge "
             f"and cloud, budgets {', '.join(sorted(set(p['budget'])))}, seeds "
             f"{', '.join(str(s) for s in sorted(set(p['seed'])))}, episodes and finetune as the table's) with "
             "`fill_budget: true` against the table's default (off). Top-1 (%) of each search's "
             "best policy on the search-validation split it was picked on, on the held-out test split, and held "
             "out averaged over its refits (finetunes with seeds no search used). Sources: "
             f"`{MAIN.relative_to(ROOT)}` and `{ABLATION.relative_to(ROOT)}` "
             "(`experiments/configs/ablations/fill-budget-latency.yaml`), on the same float models.")
    text = render_change(p, script="experiments/fill_budget.py",
                         title="Ablation: spending the whole budget (`fill_budget`)",
                         intro=intro, setting="fill_budget", values=("off", "on"), suffixes=SUFFIXES)
    main = pd.read_csv(MAIN, keep_default_na=False)
    return text + "".join(line + "\n" for line in budget_lines(p, main))


def main() -> None:
    write_change(MAIN, ABLATION, SUFFIXES, OUT, render)


if __name__ == "__main__":
    main()
