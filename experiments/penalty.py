"""Ablation: does a larger over-budget penalty keep a collapsed search exploring?

Every `digits32-mbv2` seed-1 search of the latency table evaluated only the uniform policy of its
budget after the warm-up: the actor asked for 6-8 bits in every layer and highest-first enforcement
lowered each request to that policy (`haq.search.stuck_agent`; README Status). The ablation
`experiments/configs/ablations/penalty-latency.yaml` reruns those searches at budgets w4a4 and w5a5
(BISMO edge and cloud) with `agent.over_budget_penalty: 3` instead of 1, all else as the table. This
script pairs them with the table's searches on the same float models (`noise_decay.render_change`) and
says, from the run folders when they are here, how many distinct policies each agent evaluated after
its warm-up and whether it collapsed. Writes `experiments/results/ablations/penalty.md`.

    OMP_NUM_THREADS=1 haq table penalty-latency --config-dir experiments/configs/ablations \\
        --results experiments/results/ablations --jobs 2
    python experiments/penalty.py
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from noise_decay import render_change, write_change

from haq.search import agent_exploration, read_episodes, stuck_agent

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
MAIN = RESULTS / "latency-mini.csv"  # the table (penalty 1), on the shipped float models
ABLATION = RESULTS / "ablations" / "penalty-latency-mini.csv"  # penalty 3
RUNS = (ROOT / "runs" / "tables" / "latency-mini", ROOT / "runs" / "tables" / "penalty-latency-mini")
OUT = RESULTS / "ablations" / "penalty.md"
SUFFIXES = ("_1", "_3")


def agent_line(run: Path, warmup: int) -> str | None:
    """What the agent of one search did after its warm-up: `stuck_agent`'s description, or how many
    distinct policies it evaluated; None without the run folder."""
    if not (run / "episodes.csv").is_file():
        return None
    records = read_episodes(run)
    stuck = stuck_agent(records, warmup)
    if stuck:
        return stuck
    distinct = (agent_exploration(records, warmup) or (0, 0.0))[0]
    return f"explored: {distinct} distinct policies in the {len(records[warmup:])} episodes after the warm-up"


def agent_lines(p: pd.DataFrame, runs: tuple[Path, Path], labels: tuple[str, str] = ("1", "3")) -> list[str]:
    """A line per search and penalty from the run folders that are here."""
    lines = []
    for r in p.sort_values(["hw", "budget", "seed"], ascending=[False, True, True]).to_dict("records"):
        name = f"{r['model']}-{r['hw']}-{r['budget']}-haq-seed{r['seed']}"
        for label, base in zip(labels, runs, strict=True):
            said = agent_line(base / name, int(r["warmup_1"]))
            if said:
                lines.append(f"- {r['hw']}, {r['budget']}, seed {r['seed']}, penalty {label}: {said}.")
    return ["", "What each agent did after its warm-up (from the run folders):", "", *lines] if lines else []


def render(p: pd.DataFrame, runs: tuple[Path, Path] = RUNS) -> str:
    """Markdown from `min_bits.paired` rows (suffixes ``_1`` for the table, ``_3`` for the ablation)."""
    intro = ("The latency table's `digits32-mbv2` searches of seed "
             f"{', '.join(str(s) for s in sorted(set(p['seed'])))} at budgets {', '.join(sorted(set(p['budget'])))} "
             "(BISMO edge and cloud, 60 episodes, 256-image finetune), whose agent evaluated only the uniform policy "
             "of the budget after its warm-up, with `agent.over_budget_penalty: 3` against the table's 1. Top-1 (%) "
             "of each search's best policy on the search-validation split it was picked on, on the held-out test "
             "split, and held out averaged over its refits (finetunes with seeds no search used). Sources: "
             f"`{MAIN.relative_to(ROOT)}` and `{ABLATION.relative_to(ROOT)}` "
             "(`experiments/configs/ablations/penalty-latency.yaml`), on the same float models.")
    text = render_change(p, script="experiments/penalty.py",
                         title="Ablation: an over-budget penalty of 3 instead of 1 on the collapsed searches",
                         intro=intro, setting="penalty", values=("1", "3"), suffixes=SUFFIXES)
    return text + "".join(line + "\n" for line in agent_lines(p, runs))


def main() -> None:
    write_change(MAIN, ABLATION, SUFFIXES, OUT, render)


if __name__ == "__main__":
    main()
