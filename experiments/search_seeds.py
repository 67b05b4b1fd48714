"""The default search on several seeds, next to a random search with the same number of
evaluated policies (the same environment and budget enforcement, all actions uniform random).
Writes experiments/results/search-default.csv and docs/search.md.

    python experiments/search_seeds.py [--seeds 0 1 2] [--episodes 100]
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
from pathlib import Path

import pandas as pd

from haq.config import SearchConfig
from haq.search import Search, build_parts

ROOT = Path(__file__).resolve().parents[1]


METHODS = {
    "haq": "the engine's defaults: noise decay 0.97, the enforced policy's actions stored",
    "haq-paper": "the paper's noise decay 0.99 (tuned for 600 episodes), the agent's requested actions stored",
    "haq-distill": "the engine's defaults with knowledge distillation from the float model in every finetune",
    "haq-highest-first": "opt-in settings from the agent testbed (docs/agent_testbed.md, `highest-first+`): "
                         "highest-first budget enforcement, DDPG's final-layer init, sigma 0.1, every step "
                         "regressed on the episode's reward, the over-budget penalty, requested actions stored",
    "random": "every action uniform random, no learning",
}


def method_config(method: str, seed: int, episodes: int, runs: str) -> SearchConfig:
    base = SearchConfig()
    agent = base.agent
    if method == "haq-paper":
        agent = dataclasses.replace(agent, noise_decay=0.99, store_taken_actions=False)
    if method == "haq-highest-first":
        agent = dataclasses.replace(agent, final_layer_init=3e-3, noise_sigma=0.1, episode_targets=True,
                                    over_budget_penalty=1.0, store_taken_actions=False)
    finetune = dataclasses.replace(base.finetune, distill=method == "haq-distill")
    enforcement = "highest-first" if method == "haq-highest-first" else base.enforcement
    return SearchConfig(episodes=episodes, seed=seed, out=f"{runs}/{method}-seed{seed}", agent=agent,
                        enforcement=enforcement,
                        finetune=finetune, warmup=episodes if method == "random" else base.warmup)


def bits_off_uniform(run_dir: Path, uniform: str) -> float:
    """How many of the best policy's 2L bitwidths differ from the uniform policy ``wBaB``
    (NaN when the run directory is gone)."""
    path = run_dir / "best_policy.json"
    if not path.is_file():
        return float("nan")
    b = int(uniform[1:uniform.index("a")])
    layers = json.loads(path.read_text())["layers"]
    return float(sum((l["w_bits"] != b) + (l["a_bits"] != b) for l in layers))


def requested_at_max_share(run_dir: Path, max_bits: int = 8) -> float:
    """Share of the bitwidths the agent requested at `max_bits` over the last fifth of the
    episodes (NaN when the run predates the ``requested_*_bits`` columns or is gone)."""
    path = run_dir / "episodes.csv"
    if not path.is_file():
        return float("nan")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    last = rows[-max(1, len(rows) // 5):]
    if not last or not last[0].get("requested_w_bits"):
        return float("nan")
    bits = [int(b) for r in last for b in (r["requested_w_bits"] + " " + r["requested_a_bits"]).split()]
    return sum(b == max_bits for b in bits) / len(bits)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="methods to (re)run; rows of the others are kept from the CSV")
    parser.add_argument("--episodes", type=int, default=SearchConfig().episodes)
    parser.add_argument("--runs", default="runs/search-seeds")
    parser.add_argument("--render-only", action="store_true", help="rewrite docs/search.md from the CSV")
    args = parser.parse_args()
    csv = ROOT / "experiments" / "results" / "search-default.csv"
    old = pd.read_csv(csv) if csv.is_file() else pd.DataFrame(columns=["method", "seed"])
    backfill = {"best_bits_off_uniform": lambda r, d: bits_off_uniform(d, r.best_uniform_policy),
                "requested_at_max_last_fifth": lambda r, d: requested_at_max_share(d)}
    changed = False
    for column, compute in backfill.items():
        if column not in old.columns:
            old[column] = float("nan")
        missing = old[column].isna()
        if missing.any():
            old.loc[missing, column] = [compute(r, Path(args.runs) / f"{r.method}-seed{r.seed}")
                                        for r in old[missing].itertuples()]
            changed = True
    if changed and len(old):
        old.to_csv(csv, index=False, float_format="%.3f")
    if args.render_only:
        render(old, args.episodes)
        return
    rows = []
    parts = None
    for seed in args.seeds:
        for method in args.methods:
            cfg = method_config(method, seed, args.episodes, args.runs)
            if parts is None or parts.config.finetune != cfg.finetune:
                parts = build_parts(cfg)
            parts.evaluator.seed = seed
            parts = dataclasses.replace(parts, config=cfg)
            summary = Search(cfg, parts=parts).run()
            uniform = {b["policy"]: b["accuracy"] for b in summary["uniform_baselines"]}
            rows.append({"method": method, "seed": seed, "episodes": summary["episodes"],
                         "best_accuracy": summary["best"]["accuracy"], "best_cost_ratio": summary["best"]["cost_ratio"],
                         "budget_ratio": summary["budget_ratio"], "best_uniform_in_budget": max(uniform.values()),
                         "best_uniform_policy": max(uniform, key=uniform.get),
                         "mean_reward_warmup": summary["mean_reward_warmup"],
                         "mean_reward_last_fifth": summary["mean_reward_last_fifth"],
                         "seconds_per_episode": summary["seconds_per_episode"], "fp_accuracy": summary["fp_accuracy"],
                         "best_bits_off_uniform": bits_off_uniform(Path(cfg.out), max(uniform, key=uniform.get)),
                         "requested_at_max_last_fifth": requested_at_max_share(Path(cfg.out))})
            print(rows[-1], flush=True)
            new = pd.DataFrame(rows)
            keep = old[~old.set_index(["method", "seed"]).index.isin(new.set_index(["method", "seed"]).index)]
            df = pd.concat([keep, new]).sort_values(["seed", "method"], kind="stable")
            df.to_csv(csv, index=False, float_format="%.3f")
    render(df, args.episodes)


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def render(df: pd.DataFrame, episodes: int) -> None:
    fp = df["fp_accuracy"].iloc[0]
    lines = ["<!-- generated by experiments/search_seeds.py; do not edit by hand -->",
             "# The default search, measured", "",
             f"`haq search` defaults: digits-mbv2 (float top-1 {fp:.2f}% on search-val), bismo-edge, latency no more "
             f"than uniform w4a4, {episodes} episodes (20 random warm-up), 1-epoch finetune per policy. Methods:", ""]
    lines += [f"- `{m}`: {d}." for m, d in METHODS.items() if m in set(df["method"])]
    lines += ["", "All methods evaluate the same number of policies under the same budget, enforced by the paper's "
              "sequential decrease except in `haq-highest-first`. "
              "Source: `experiments/results/search-default.csv`. `s / episode` is wall time on a 2-core machine "
              "that often ran other work alongside; clean timings are in docs/performance.md.", "",
              "| method | seed | best top-1 | its cost / w8a8 | best uniform in budget | bitwidths of the best "
              "policy off that uniform one (of 34) | mean reward, warm-up | mean reward, last fifth | s / episode |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in df.sort_values(["seed", "method"], kind="stable").to_dict("records"):
        off = r.get("best_bits_off_uniform", float("nan"))
        off_s = "n/a" if pd.isna(off) else f"{off:.0f}"
        lines.append(f"| {r['method']} | {r['seed']} | {r['best_accuracy']:.2f} | {r['best_cost_ratio']:.3f} | "
                     f"{r['best_uniform_policy']} {r['best_uniform_in_budget']:.2f} | {off_s} | "
                     f"{r['mean_reward_warmup']:.2f} | {r['mean_reward_last_fifth']:.2f} | "
                     f"{r['seconds_per_episode']:.2f} |")
    verdicts = []
    for method in METHODS:
        sub = df[df["method"] == method]
        if sub.empty:
            continue
        lines.append(f"| {method}: mean +- std | | {sub['best_accuracy'].mean():.2f} +- {sub['best_accuracy'].std():.2f} "
                     f"| | | | {sub['mean_reward_warmup'].mean():.2f} | {sub['mean_reward_last_fifth'].mean():.2f} | |")
        learns = int((sub["mean_reward_last_fifth"] > sub["mean_reward_warmup"]).sum())
        beats = int((sub["best_accuracy"] >= sub["best_uniform_in_budget"]).sum())
        verdicts.append(f"- `{method}`: last-fifth mean reward above the warm-up mean in {learns} of {len(sub)} seeds; "
                        f"best policy at least as accurate as every uniform policy within the budget in {beats} of "
                        f"{len(sub)} seeds.")
    lines += ["", "Measured:", ""] + verdicts + [""]
    haq = df[(df["method"] == "haq") & df["best_bits_off_uniform"].notna()]
    if not haq.empty:
        winners = haq[haq["best_accuracy"] >= haq["best_uniform_in_budget"]]
        lines += ["How to read the `haq` wins: the best policies that beat the uniform one differ from it in "
                  f"{', '.join(f'{v:.0f}' for v in winners['best_bits_off_uniform'])} of 34 bitwidths, and by "
                  f"{', '.join(f'{a - u:+.2f}' for a, u in zip(winners['best_accuracy'], winners['best_uniform_in_budget']))} "
                  "points of top-1 (one validation image is 0.29 points). These policies are what the budget's "
                  "sequential decrease (last layer to first, one bit at a time) makes of a request near the top of "
                  "the bit range: nearly uniform w4a4, the first layers keeping a spare bit. The requested bits "
                  "(episodes.csv) show it directly where logged: share of the bitwidths requested at 8 bits in the "
                  "last fifth of the episodes, "
                  + ", ".join(f"seed {r.seed}: {r.requested_at_max_last_fifth:.2f}"
                              for r in haq.itertuples() if not pd.isna(r.requested_at_max_last_fifth))
                  + " (the other runs predate the column). So at 100 episodes the agent has mostly "
                  "learnt to let the budget enforcement choose, not a mixed-precision policy; where it keeps a mixed "
                  "policy (" + _seeds([r.seed for r in haq.itertuples() if r.best_accuracy < r.best_uniform_in_budget])
                  + " here, several layers at 2-bit activations) it loses to uniform w4a4. Per-episode "
                  "policies are in each run's `episodes.csv`.", "",
                  "Why the agent does not learn the trade-off is studied apart from the finetune's noise on a "
                  "synthetic accuracy landscape with a known near-optimum, same layers, costs, environment and agent "
                  "(docs/agent_testbed.md): there, in no agent setting tried does the last fifth of the episodes reach "
                  "what asking for 8 bits everywhere "
                  "gets from the enforcement, while without a budget the agent learns in every seed.", ""]
    (ROOT / "docs" / "search.md").write_text("\n".join(lines))
    print("wrote docs/search.md")


if __name__ == "__main__":
    main()
