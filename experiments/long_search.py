"""Ablation: is the tightest budget's shortfall a search too short to find the trades?

The latency table searches `digits32-mbv2` for 60 episodes (the paper: 600) to keep a table within
hours on 2 cores, and at budget w4a4 every one of its searches falls short of the costlier fixed-bit
rows. The ablation `experiments/configs/ablations/long-search-latency.yaml` reruns the BISMO-edge
searches at w4a4 (seeds 0-2) for 200 episodes, all else as the table. This script pairs them, seed by
seed, with the same searches of `experiments/results/latency-mini.csv` on the same float models
(`haq.tables.check_same_float_models`): top-1 of each search's best policy on search-validation, held
out, and held out over its refits, and the verdicts against each table's own fixed-bit rows
(`noise_decay.render_change`). It also says at which episode each long search found its best policy
and how many distinct policies it evaluated, from the run folders when they are here. Writes
`experiments/results/ablations/long-search.md`.

    OMP_NUM_THREADS=1 haq table long-search-latency --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    python experiments/long_search.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from noise_decay import render_change, write_change

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
MAIN = RESULTS / "latency-mini.csv"  # the table (60 episodes), on the shipped float models
ABLATION = RESULTS / "ablations" / "long-search-latency-mini.csv"  # 200 episodes
RUNS = ROOT / "runs" / "tables" / "long-search-latency-mini"  # the ablation's run folders, if kept
OUT = RESULTS / "ablations" / "long-search.md"
SUFFIXES = ("_60", "_200")


def distinct_policies(episodes: pd.DataFrame, up_to: int | None = None) -> int:
    """How many distinct policies a search's ``episodes.csv`` evaluated (in its first ``up_to`` episodes)."""
    if up_to is not None:
        episodes = episodes[episodes["episode"] <= up_to]
    return int((episodes["w_bits"].astype(str) + "|" + episodes["a_bits"].astype(str)).nunique())


def search_lines(p: pd.DataFrame, runs: Path, first: int = 60) -> list[str]:
    """One line per long search whose run folder is here: the episode its best policy came from
    (``best_policy.json``), and its distinct policies, in all and in the first ``first`` episodes."""
    lines = []
    for r in p.sort_values(["hw", "seed"]).to_dict("records"):
        run = runs / f"{r['model']}-{r['hw']}-{r['budget']}-haq-seed{r['seed']}"
        if not (run / "episodes.csv").is_file() or not (run / "best_policy.json").is_file():
            continue
        e = pd.read_csv(run / "episodes.csv")
        best = json.loads((run / "best_policy.json").read_text())["episode"]
        lines.append(f"- {r['hw']}, seed {r['seed']}: best policy from episode {best} of {len(e)}; "
                     f"{distinct_policies(e)} distinct policies evaluated, {distinct_policies(e, first)} of them "
                     f"in the first {first} episodes.")
    if lines:
        where = runs.relative_to(ROOT) if runs.is_relative_to(ROOT) else runs
        lines = ["", f"Where the long searches found their best policy (from `{where}/`):", "", *lines]
    return lines


def render(p: pd.DataFrame, runs: Path = RUNS) -> str:
    """Markdown from `min_bits.paired` rows (suffixes ``_60`` for the table, ``_200`` for the ablation)."""
    intro = ("The latency table's `digits32-mbv2` searches at budget "
             f"{', '.join(sorted(set(p['budget'])))} on {', '.join(sorted(set(p['hw'])))} (same seeds, agent, "
             "256-image finetune) run for 200 episodes against the table's 60. Top-1 (%) of each search's best "
             "policy on the search-validation split it was picked on, on the held-out test split, and held out "
             "averaged over its refits (finetunes with seeds no search used). Sources: "
             f"`{MAIN.relative_to(ROOT)}` and `{ABLATION.relative_to(ROOT)}` "
             "(`experiments/configs/ablations/long-search-latency.yaml`), on the same float models.")
    text = render_change(p, script="experiments/long_search.py",
                         title="Ablation: 200-episode searches instead of the table's 60",
                         intro=intro, setting="episodes", values=("60", "200"), suffixes=SUFFIXES)
    return text + "".join(line + "\n" for line in search_lines(p, runs))


def main() -> None:
    write_change(MAIN, ABLATION, SUFFIXES, OUT, render)


if __name__ == "__main__":
    main()
