"""The search's agent on a synthetic accuracy landscape: seconds per search, a known near-optimum.

The real default search minus the finetune: digits-mbv2's 17 layers priced by bismo-edge,
a latency budget of uniform w4a4, the engine's environment, budget enforcement and SB3
DDPG agent, but the accuracy of a policy comes from a formula instead of a finetune:

    acc = fp * exp(-sum_i s_w[i] * 8 ** (4 - w_i) - sum_i s_a[i] * 8 ** (4 - a_i)) + noise

Per-layer sensitivities are log-normal (activations 1.5x weights, as `haq eval` measures on
the default model: w3a4 97.1%, w4a3 92.0%), scaled so that uniform w4a4 loses 1.1 points as
on the default model (97.4% of 98.5%); every lost bit costs 8x more, so one 2-bit layer costs
points and a 2-bit network is ruined, like the real one. The noise (sd 0.5 points) is the
spread of one finetune's top-1 across seeds. A search takes ~30 s on one core instead of
~3 min, and a near-optimal policy under the budget is known (a greedy solver: from w8a8,
give up the bit that costs the least accuracy per unit of cost saved, until it fits), so
agent settings can be compared on many seeds. What it cannot show: anything about the real finetune.

    python experiments/agent_testbed.py            # writes experiments/results/agent-testbed.csv
                                                   # and docs/agent_testbed.md
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import hw_models
from envs import MixedPrecisionEnv
from haq.config import PAPER_AGENT, SearchConfig
from haq.models import model_layers

ROOT = Path(__file__).resolve().parents[1]
FP = 98.5
NOISE_SD = 0.5

CONFIGS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    # name: (what it is, agent overrides, search overrides)
    "old-default": ("the search's former defaults: the paper's agent and sequential enforcement, but noise "
                    "decay 0.97 and the enforced actions stored; every other row changes this one", {}, {}),
    "paper": ("the paper's noise decay 0.99, requested actions stored", {"noise_decay": 0.99, "store_taken_actions": False}, {}),
    "no-budget": ("control: budget = w8a8 cost, nothing to trade", {}, {"budget": "1.0"}),
    "final-layer-init": ("DDPG's final-layer init U(-3e-3, 3e-3): every request starts at 5 bits",
                         {"final_layer_init": 3e-3}, {}),
    "episode-targets": ("every transition regressed on the episode's reward (no bootstrapping)",
                        {"episode_targets": True}, {}),
    "penalty": ("requested actions stored, reward minus 1.0 x the request's overshoot of the budget",
                {"over_budget_penalty": 1.0, "store_taken_actions": False}, {}),
    "local": ("final-layer init, sigma 0.1: exploration near the starting policy",
              {"final_layer_init": 3e-3, "noise_sigma": 0.1}, {}),
    "slow-actor": ("`local` with actor lr 1e-5: how far the actor drifts when it can hardly move",
                   {"final_layer_init": 3e-3, "noise_sigma": 0.1, "actor_lr": 1e-5}, {}),
    "highest-first": ("enforcement lowering the highest bitwidth first (not the paper's)", {},
                      {"enforcement": "highest-first"}),
    "highest-first+": ("`highest-first` with `local`, `episode-targets` and `penalty` together (the search's "
                       "defaults before exploration offsets)",
                       {"final_layer_init": 3e-3, "noise_sigma": 0.1, "episode_targets": True,
                        "over_budget_penalty": 1.0, "store_taken_actions": False}, {"enforcement": "highest-first"}),
    "offsets": ("`highest-first+` with one exploration offset per episode for all weight and one for all "
                "activation steps, N(0, 0.2) (the search's defaults now)",
                {"final_layer_init": 3e-3, "noise_sigma": 0.1, "episode_targets": True, "over_budget_penalty": 1.0,
                 "store_taken_actions": False, "noise_offset_sigma": 0.2}, {"enforcement": "highest-first"}),
    "300-episodes": ("the paper's decay 0.99 over 300 episodes", {"noise_decay": 0.99}, {"episodes": 300}),
}


class Landscape:
    """The synthetic accuracy of a policy, with per-layer sensitivities drawn from `seed`."""

    def __init__(self, n_layers: int, seed: int) -> None:
        rng = np.random.default_rng(1000 + seed)
        sw, sa = rng.lognormal(0, 1, n_layers), 1.5 * rng.lognormal(0, 1, n_layers)
        scale = 0.011 / (sw.sum() + sa.sum())
        self.sw, self.sa = sw * scale, sa * scale

    def __call__(self, policy: list[tuple[int, int]]) -> float:
        w = np.array([p[0] for p in policy], dtype=float)
        a = np.array([p[1] for p in policy], dtype=float)
        return float(FP * np.exp(-(self.sw * 8.0 ** (4 - w)).sum() - (self.sa * 8.0 ** (4 - a)).sum()))


class NoisyEvaluator:
    """``policy -> landscape + noise``, logging (true, measured) accuracy per call."""

    fp_accuracy = FP

    def __init__(self, landscape: Landscape, seed: int) -> None:
        self.landscape = landscape
        self.rng = np.random.default_rng(seed)
        self.log: list[tuple[float, float]] = []

    def __call__(self, policy: list[tuple[int, int]]) -> float:
        true = self.landscape(policy)
        measured = true + float(self.rng.normal(0, NOISE_SD))
        self.log.append((true, measured))
        return measured


def greedy_best(env: MixedPrecisionEnv, landscape: Landscape) -> float:
    """From w8a8, lower the bit that loses the least log-accuracy per unit of cost saved,
    until the policy fits the budget: the landscape's near-optimum."""
    bits = [[8, 8] for _ in env.layers]
    lo = env.choices[0]
    while env.cost(bits) > env.budget * (1 + 1e-12):
        here, cost = np.log(landscape(bits)), env.cost(bits)
        best = None
        for i in range(len(bits)):
            for j in (0, 1):
                if bits[i][j] > lo:
                    bits[i][j] -= 1
                    ratio = (here - np.log(landscape(bits))) / max(cost - env.cost(bits), 1e-30)
                    bits[i][j] += 1
                    if best is None or ratio < best[0]:
                        best = (ratio, i, j)
        assert best is not None
        bits[best[1]][best[2]] -= 1
    return landscape(bits)


def run_one(name: str, seed: int, episodes: int) -> dict[str, Any]:
    """One search of config `name` on landscape `seed`: true accuracies of what it found."""
    import torch
    from stable_baselines3.common.monitor import Monitor

    from haq.parts import make_agent, resolve_budget

    torch.set_num_threads(1)
    _, agent_kw, top = CONFIGS[name]
    base_agent = dataclasses.replace(PAPER_AGENT, noise_decay=0.97, store_taken_actions=True)  # `old-default`
    cfg = SearchConfig(**{"seed": seed, "episodes": episodes, "enforcement": "sequential", **top},
                       agent=dataclasses.replace(base_agent, **agent_kw))
    layers = model_layers(cfg.model)
    cost_model = hw_models.create_hw_model(cfg.hw)
    landscape = Landscape(len(layers), seed)
    evaluator = NoisyEvaluator(landscape, seed)
    env = MixedPrecisionEnv(layers, cost_model, resolve_budget(cfg, cost_model, layers), evaluator, metric=cfg.metric,
                            enforcement=cfg.enforcement)
    agent = make_agent(cfg, Monitor(env), env.n_steps)
    agent.learn(total_timesteps=cfg.episodes * env.n_steps)
    obs, _ = env.reset()  # the actor's own request at the end, without exploration noise
    requested: list[int] = []
    for _ in range(env.n_steps):
        action, _ = agent.predict(obs, deterministic=True)
        obs, _, _, _, info = env.step(action)
        requested.append(info["bits"])
    true = np.array([t for t, _ in evaluator.log[:cfg.episodes]])
    measured = np.array([m for _, m in evaluator.log[:cfg.episodes]])
    best = int(np.argmax(measured))
    fifth = max(1, len(true) // 5)
    return {"config": name, "seed": seed, "episodes": cfg.episodes,
            "uniform_w4a4": landscape([(4, 4)] * len(layers)),
            "request_max": landscape(env.enforce_budget([(8, 8)] * len(layers))),
            "greedy_optimum": greedy_best(env, landscape) if cfg.budget == "w4a4" else landscape([(8, 8)] * len(layers)),
            "best_measured": measured[best], "best_true": true[best],
            "mean_true_warmup": true[:cfg.warmup].mean(), "mean_true_last_fifth": true[-fifth:].mean(),
            "final_requested_bits": float(np.mean(requested))}


def render(df: pd.DataFrame) -> None:
    """Write docs/agent_testbed.md from the testbed's rows."""
    lines = ["<!-- generated by experiments/agent_testbed.py; do not edit by hand -->",
             "# The agent on a synthetic landscape", "",
             "The default search with the finetune replaced by a known accuracy function (see the "
             "script's docstring): digits-mbv2's layers on bismo-edge, latency budget of uniform w4a4, "
             f"{NOISE_SD} points of measurement noise, {df['seed'].nunique()} seeds. All accuracies in the "
             "table are the landscape's true value (noise-free) of the policy named. `request max` is "
             "what the budget enforcement makes of an agent that asks for 8 bits everywhere; "
             "`optimum` is the greedy solver's policy under the budget (a near-optimum). Source: "
             "`experiments/results/agent-testbed.csv`.", "",
             "| config | what | episodes | best policy (true) | optimum | uniform w4a4 | request max | "
             "mean, warm-up | mean, last fifth | bits the actor asks for at the end | seeds with best >= uniform |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, g in df.groupby("config", sort=False):
        ok = int((g["best_true"] >= g["uniform_w4a4"] - 1e-9).sum())
        lines.append(f"| {name} | {CONFIGS[name][0]} | {int(g['episodes'].iloc[0])} | "
                     f"{g['best_true'].mean():.2f} +- {g['best_true'].std():.2f} | {g['greedy_optimum'].mean():.2f} | "
                     f"{g['uniform_w4a4'].mean():.2f} | {g['request_max'].mean():.2f} | "
                     f"{g['mean_true_warmup'].mean():.2f} | {g['mean_true_last_fifth'].mean():.2f} | "
                     f"{g['final_requested_bits'].mean():.1f} | {ok} of {len(g)} |")
    head = df[df["config"] == "old-default"]
    lines += ["", "Read it as: with nothing to trade (`no-budget`) the agent learns, its last fifth near the "
              "optimum. Under the budget no setting's last fifth reaches what `request max` gets with no "
              "learning at all, and none finds the optimum; where the agent starts near-uniform "
              "(`final-layer-init`, `local`, `slow-actor`: 5 bits asked, enforcement makes it about w4a4) "
              "learning drifts away from that start, towards fewer bits than the budget allows, even with the "
              "actor's learning rate cut tenfold: the critic's slope says fewer bits are better. The headroom is small: the optimum is "
              f"{(head['greedy_optimum'] - head['uniform_w4a4']).mean():.2f} points above uniform w4a4, "
              f"against {NOISE_SD} points of noise on each measurement. Why the agent drifts, as far as we "
              "can tell: the paper's state holds no history and no budget, so (i) bootstrapped targets "
              "(gamma = 1) carry the effect of an early action to its Q-value only through the next step's "
              "previous-action feature, and (ii) the budget enforcement lowers late layers when early ones "
              "ask for more, so the data pairs high early bits with low reward. Regressing every step on "
              "the episode's reward (`episode-targets`) removes (i) and charging over-requests (`penalty`) "
              "removes (ii), each alone without gain: with wide exploration one layer's effect is swamped by "
              "the other 33, and 100 (or 300) episodes are too few to average it out. Removing the "
              "confound at its source, an enforcement that lowers the highest bitwidth first and so keeps the "
              "order of the request (`highest-first`), lifts the last fifth (and the random warm-up's, since "
              "the sequential decrease turns random requests into 2-bit last layers); with all the fixes together "
              "(`highest-first+`) the agent settles on uniform w4a4 itself: stable, still no mixed precision."]
    if {"offsets", "highest-first+"} <= set(df["config"]):
        off, plus = (df[df["config"] == c].set_index("seed") for c in ("offsets", "highest-first+"))
        diff = (off["best_true"] - plus["best_true"]).dropna()
        lines[-1] += (" Exploration offsets (`offsets`, the search's default now) move every weight or every "
                      "activation request of an episode together: best policy "
                      f"{off['best_true'].mean():.2f} against {plus['best_true'].mean():.2f} without (at least as "
                      f"good on {int((diff >= -1e-9).sum())} of {len(diff)} seeds), last fifth "
                      f"{off['mean_true_last_fifth'].mean():.2f} against {plus['mean_true_last_fifth'].mean():.2f}. "
                      + ("On this landscape that is no gain" if off["best_true"].mean() - plus["best_true"].mean() < 0.1
                         else "On this landscape that is a gain")
                      + "; on the real finetune of the shipped float models the offsets are no measurable gain nor "
                      "loss (experiments/results/ablations/noise-offset.md, docs/search.md).")
    (ROOT / "docs" / "agent_testbed.md").write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--episodes", type=int, default=SearchConfig().episodes)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--render-only", action="store_true", help="rewrite docs/agent_testbed.md from the CSV")
    args = parser.parse_args()
    out = ROOT / "experiments" / "results" / "agent-testbed.csv"
    if args.render_only:
        render(pd.read_csv(out))
        return
    jobs = [(c, s, args.episodes) for c in args.configs for s in args.seeds]
    with mp.get_context("spawn").Pool(args.processes) as pool:
        rows = pool.starmap(run_one, jobs)
    df = pd.DataFrame(rows)
    if out.is_file():  # keep the rows of the configs not rerun
        old = pd.read_csv(out)
        df = pd.concat([old[~old["config"].isin(args.configs)], df])
    order = {name: i for i, name in enumerate(CONFIGS)}
    df = df.sort_values(["config", "seed"], key=lambda c: c.map(order) if c.name == "config" else c, kind="stable")
    df.to_csv(out, index=False, float_format="%.3f")
    render(df)
    print(df.groupby("config", sort=False)[["best_true", "uniform_w4a4", "mean_true_last_fifth"]].mean().round(2))


if __name__ == "__main__":
    main()
