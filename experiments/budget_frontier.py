"""Ablation: how much of w8a8's accuracy can a policy near a table's tightest budget buy at all?

The latency table's searched policies at budget w4a4 end near-uniform and below w8a8 held out,
and the first must-show asks them to match it. This script asks whether any policy near that
budget could, with no agent in the way: starting from the uniform policy of the budget (`--start`,
default w4a4), it raises each layer's weights, or its activations, to 8 bits alone and scores each
raise by the mean search-validation true-class probability of `--screen-finetunes` finetunes (the
split and measure a search may use; seeds that neither the searches nor the refits use). It then
applies all the raises one after another, in order of gain per added cost (the layers that gain
most for their price first), from the start to w8a8, and finetunes every policy on that path,
and each uniform w3a3..w8a8, with the table's refit seeds (`haq.tables.refit_seed` of seed 0),
measuring each on search-validation and held out: a sensitivity-ordered frontier beside the
uniform one. Each raise is priced, not paid for by lowering another layer, so every step costs
more than the one before.

Finetunes are cached in ``runs/budget-frontier/<table>-<scale>-<model>/finetunes.json`` (an
interrupted run resumes; a finetune does not depend on the hardware model, so another `--hw`
reuses them). Writes `experiments/results/ablations/budget-frontier-<table>-<scale>-
<model>-<hw>.csv` (one row per policy and finetune), its markdown and a figure of held-out top-1
against cost.

    OMP_NUM_THREADS=1 python experiments/budget_frontier.py latency --model digits-mbv2 --hw bismo-edge
    OMP_NUM_THREADS=1 python experiments/budget_frontier.py latency --model digits-mbv2 --hw bismo-cloud
    OMP_NUM_THREADS=1 python experiments/budget_frontier.py latency --model digits32-mbv2 --hw bismo-edge \
        --screen-finetunes 1 --every 8        # 53 layers: 35 minutes on one thread beside a table run
    OMP_NUM_THREADS=1 python experiments/budget_frontier.py latency --model digits32-mbv2 --hw bismo-cloud \
        --screen-finetunes 1 --every 8

(Measured with one thread, as the tables' finetunes are; digits-mbv2: about 10 minutes; on a
second `--hw` less, the screen and the uniform policies coming from the cache.)
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import hw_models
from haq import tables
from haq.cli import positive_int
from haq.policy import Policy, parse_uniform
from haq.tables import RESULTS_DIR, SCALES, SIGNIFICANCE, TableSpec

log = logging.getLogger("budget_frontier")
OUT = RESULTS_DIR / "ablations"
UNIFORM = tuple(f"w{b}a{b}" for b in range(3, 9))
SCREEN_BASE = 7  # screen seeds: refit_seed(0, 7 + j), apart from the refits' 0..refits-1


def key(bits: list[tuple[int, int]]) -> str:
    """A policy's cache key: ``"w_bits|a_bits"`` as `Policy.as_strings` writes them."""
    return " ".join(str(w) for w, _ in bits) + "|" + " ".join(str(a) for _, a in bits)


def raised(bits: list[tuple[int, int]], step: tuple[int, str], to: int = 8) -> list[tuple[int, int]]:
    """`bits` with layer ``step[0]``'s weights (``"w"``) or activations (``"a"``) set to `to`."""
    layer, kind = step
    out = list(bits)
    w, a = out[layer]
    out[layer] = (to, a) if kind == "w" else (w, to)
    return out


def greedy_order(screen: pd.DataFrame) -> list[tuple[int, str]]:
    """Every raise, by gain per added cost, highest first (so those that lost on the screen come
    last): `screen` has one row per raise with ``layer``, ``kind``, ``gain`` and ``added_cost``."""
    ordered = screen.assign(per_cost=screen["gain"] / screen["added_cost"])
    ordered = ordered.sort_values(["per_cost", "layer", "kind"], ascending=[False, True, True])
    return [(int(r["layer"]), str(r["kind"])) for r in ordered.to_dict("records")]


def below(samples: list[float], reference: list[float], alpha: float = SIGNIFICANCE) -> bool:
    """Is `samples`' mean significantly below `reference`'s (`haq.tables.significantly_below`:
    Welch's t-test, one-sided)? With fewer than 2 values, or no spread in either, a lower mean
    counts as below."""
    if len(samples) < 2 or len(reference) < 2:
        return float(np.mean(samples)) < float(np.mean(reference))
    return tables.significantly_below(float(np.mean(samples)), float(np.std(samples, ddof=1)), len(samples),
                                      float(np.mean(reference)), float(np.std(reference, ddof=1)), len(reference),
                                      alpha)


class Finetunes:
    """Each (policy, seed) finetune measured on search-validation and held out, cached on disk."""

    def __init__(self, evaluator: Any, path: Path) -> None:
        self.ev, self.path = evaluator, path
        self.cache: dict[str, dict[str, dict[str, float]]] = (
            json.loads(path.read_text()) if path.is_file() else {})

    def __call__(self, bits: list[tuple[int, int]], seed: int) -> dict[str, float]:
        got = self.cache.setdefault(key(bits), {})
        if str(seed) not in got:
            self.ev.seed = seed
            m = self.ev.evaluate_splits(Policy.from_bits(self.ev.layers, bits), ("val", "test"))
            got[str(seed)] = {"val_top1": m["val"]["top1"], "val_p_true": m["val"]["p_true"],
                              "test_top1": m["test"]["top1"]}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.cache, indent=1) + "\n")
        return got[str(seed)]


def check_settings(base: Path, cfg: Any) -> None:
    """Refuse a cache of finetunes made with other evaluation settings (the model's data, quantizer
    and finetune); record them in ``<base>/settings.json`` on first use."""
    full = cfg.to_dict()
    settings = {k: full[k] for k in ("model", "weights", "dataset", "data", "quant", "finetune")}
    path = base / "settings.json"
    if path.is_file():
        old = json.loads(path.read_text())
        differ = sorted(k for k in settings if old.get(k) != json.loads(json.dumps(settings[k])))
        if differ:
            raise SystemExit(f"{base}: its finetunes were made with other {', '.join(differ)} settings than the "
                             "table's now; remove the folder or pass another --runs")
    else:
        base.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")


def measure(spec: TableSpec, scale: str, model: str, hw: str, start: str, screen_finetunes: int, refits: int,
            base: Path, every: int = 1) -> pd.DataFrame:
    """Screen every single raise, walk the greedy path and measure it (at every `every`-th step
    and the last) and the uniform policies: one row per (policy, finetune) with its ``role``
    (``screen``, ``path`` or ``uniform``)."""
    cfg = spec.config(scale, model, hw, start, "haq", 0, base / "unused")
    tables.check_float_models(base, tables._model_fingerprints(spec, scale, [model], None, base))
    ev = tables._job_evaluator(cfg, tables.job_threads(1))
    layers = ev.layers
    table = hw_models.create_hw_model(cfg.hw, **cfg.hw_params).table(layers, cfg.metric)
    w8a8 = hw_models.policy_cost(table, [(8, 8)] * len(layers))

    def cost(bits: list[tuple[int, int]]) -> float:
        return hw_models.policy_cost(table, bits) / w8a8

    check_settings(base, cfg)
    run = Finetunes(ev, base / "finetunes.json")
    rows: list[dict[str, Any]] = []
    origin = [parse_uniform(start)] * len(layers)
    screen_seeds = [tables.refit_seed(0, SCREEN_BASE + j) for j in range(screen_finetunes)]
    refit_seeds = [tables.refit_seed(0, j) for j in range(refits)]

    def record(role: str, name: str, bits: list[tuple[int, int]], seeds: list[int], step: int = -1) -> None:
        w_bits, a_bits = key(bits).split("|")
        for s in seeds:
            rows.append({"role": role, "name": name, "step": step, "cost_ratio": cost(bits), "w_bits": w_bits,
                         "a_bits": a_bits, "finetune_seed": s, **run(bits, s)})

    steps = [(i, k) for i in range(len(layers)) for k in ("w", "a")]
    t0 = time.perf_counter()
    record("screen", start, origin, screen_seeds)
    for n, step in enumerate(steps, 1):
        record("screen", f"{layers[step[0]].name}.{step[1]}=8", raised(origin, step), screen_seeds)
        log.info("screen: %d of %d raises (%.0f s)", n, len(steps), time.perf_counter() - t0)
    df = pd.DataFrame(rows)
    score = df.groupby("name", sort=False)["val_p_true"].mean()
    screen = pd.DataFrame([{"layer": i, "kind": k, "gain": score[f"{layers[i].name}.{k}=8"] - score[start],
                            "added_cost": cost(raised(origin, (i, k))) - cost(origin)} for i, k in steps])
    bits = origin
    record("path", start, bits, refit_seeds, 0)
    order, pending = greedy_order(screen), []
    for n, step in enumerate(order, 1):
        bits = raised(bits, step)
        pending.append(f"{layers[step[0]].name}.{step[1]}=8")
        if n % every == 0 or n == len(order):
            record("path", "+ " + (pending[0] if len(pending) == 1 else f"{len(pending)} raises"), bits, refit_seeds, n)
            pending = []
            log.info("path: step %d of %d (cost %.3f of w8a8, %.0f s)", n, len(order), cost(bits),
                     time.perf_counter() - t0)
    for u in UNIFORM:
        record("uniform", u, [parse_uniform(u)] * len(layers), refit_seeds)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per measured policy of the path and the uniform ones: cost, means over the refits,
    and whether held-out top-1 is significantly below uniform w8a8's (``below_w8a8``)."""
    measured = df[df["role"] != "screen"]
    ref = measured.loc[(measured["role"] == "uniform") & (measured["name"] == "w8a8"), "test_top1"].tolist()
    out = []
    for (role, name, step), g in measured.groupby(["role", "name", "step"], sort=False):
        out.append({"role": role, "name": name, "step": step, "cost_ratio": g["cost_ratio"].iloc[0],
                    "val_top1": g["val_top1"].mean(), "test_top1": g["test_top1"].mean(),
                    "test_top1_sd": g["test_top1"].std(), "finetunes": len(g),
                    "below_w8a8": below(g["test_top1"].tolist(), ref)})
    return pd.DataFrame(out)


def render(df: pd.DataFrame, model: str, hw: str, spec: TableSpec, scale: str, start: str, name: str,
           every: int = 1) -> str:
    """Markdown: the screen's verdict, the path and the uniform policies, and what they say."""
    s = summary(df)
    path, uniform = s[s["role"] == "path"], s[s["role"] == "uniform"].set_index("name")
    screen = df[df["role"] == "screen"]
    n_screen = int(screen.groupby("name").size().iloc[0])
    n_refits = int(s["finetunes"].iloc[0])
    measured_at = f", the policy measured after every {every}th raise and the last" if every > 1 else ""
    flag = f" --every {every}" if every > 1 else ""
    lines = [f"<!-- generated by `python experiments/budget_frontier.py {spec.name} --scale {scale} --model {model} "
             f"--hw {hw} --start {start}{flag}`; do not edit by hand -->",
             f"### What a policy near {start} can buy: {model} on {hw} ({spec.name} table, {scale} scale)", "",
             f"Source: `{name}.csv` (beside this file). From uniform {start}, every layer's weights or activations "
             f"raised to 8 bits alone ({screen['name'].nunique() - 1} raises), each scored by search-validation "
             f"true-class probability over {n_screen} finetunes; then all raises applied one after another, in order "
             f"of gain per added {spec.constraint}, up to w8a8{measured_at}. Each policy on that path and each "
             f"uniform policy finetuned {n_refits} times with the table's refit seeds; top-1 (%) means over them. `below w8a8`: held-out "
             f"top-1 significantly below uniform w8a8's (Welch's t-test, one-sided, {SIGNIFICANCE:.0%}). The path "
             "only adds bits, so each step costs more than the one before.",
             "", f"| policy | {spec.constraint} / w8a8 | search-validation top-1 | held-out top-1 | below w8a8 |",
             "|---|---|---|---|---|"]
    for r in pd.concat([path, uniform.reset_index()]).to_dict("records"):
        label = f"uniform {r['name']}" if r["role"] == "uniform" else f"{int(r['step'])}. {r['name']}"
        lines.append(f"| {label} | {r['cost_ratio']:.3f} | {r['val_top1']:.2f} | {r['test_top1']:.2f} +- "
                     f"{r['test_top1_sd']:.2f} | {'yes' if r['below_w8a8'] else 'no'} |")
    start_cost = uniform.loc[start, "cost_ratio"]
    within = path[~path["below_w8a8"]]
    lines += ["", "Measured:", ""]
    lines.append(f"- Uniform {start} costs {start_cost:.3f} of w8a8 and reaches {uniform.loc[start, 'test_top1']:.2f}% "
                 f"held out, w8a8 {uniform.loc['w8a8', 'test_top1']:.2f}%; the cheapest uniform policy not "
                 f"significantly below w8a8: "
                 + next((f"{u} ({uniform.loc[u, 'cost_ratio']:.3f} of w8a8)" for u in UNIFORM
                         if not uniform.loc[u, "below_w8a8"]), "none") + ".")
    best = path.loc[path["test_top1"].idxmax()]
    gained = int((screen.groupby("name")["val_p_true"].mean().drop(start)
                  > screen[screen["name"] == start]["val_p_true"].mean()).sum())
    lines.append(f"- {gained} of the {screen['name'].nunique() - 1} raises gained on the screen. The path's best "
                 f"held-out top-1 is {best['test_top1']:.2f}% (step {int(best['step'])}, {best['cost_ratio']:.3f} of "
                 f"w8a8, {best['cost_ratio'] / start_cost:.2f}x {start}'s cost).")
    at_cost = []
    for u in UNIFORM[:-1]:
        cheaper = path[path["cost_ratio"] <= uniform.loc[u, "cost_ratio"] + 1e-9]
        if len(cheaper):
            at_cost.append(f"{u} {uniform.loc[u, 'test_top1']:.2f} against {cheaper['test_top1'].max():.2f}")
    lines.append("- At the cost of each uniform policy, its held-out top-1 against the best path policy that costs no "
                 "more: " + "; ".join(at_cost) + ".")
    lines.append("- First step of the path not significantly below w8a8: "
                 + (f"{int(within.iloc[0]['step'])} ({within.iloc[0]['cost_ratio']:.3f} of w8a8, "
                    f"{within.iloc[0]['cost_ratio'] / start_cost:.2f}x {start}'s cost)." if len(within) else
                    "none: no policy on it matches w8a8 held out."))
    return "\n".join(lines) + "\n"


def cost_figure(series: list[tuple[pd.DataFrame, str, str]], path: Path, title: str) -> None:
    """Held-out top-1 (mean +- sd over the refits, `summary`'s columns) against cost: one series per
    ``(rows, matplotlib format, label)``; the rows of a series labelled ``"uniform"`` are named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for g, style, label in series:
        ax.errorbar(g["cost_ratio"], g["test_top1"], yerr=g["test_top1_sd"], fmt=style, capsize=3, label=label)
        if label == "uniform":
            for r in g.itertuples():
                ax.annotate(r.name, (r.cost_ratio, r.test_top1), textcoords="offset points", xytext=(4, -10), fontsize=8)
    ax.set_xlabel("cost / w8a8")
    ax.set_ylabel("held-out top-1 (%), mean over refits")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure(df: pd.DataFrame, path: Path, title: str) -> None:
    """Held-out top-1 against cost: the greedy path and the uniform policies from its start up."""
    s = summary(df)
    start_cost = s.loc[s["role"] == "path", "cost_ratio"].min()
    above = s[s["cost_ratio"] >= start_cost - 1e-9]  # cheaper uniform ones: the table
    cost_figure([(above[above["role"] == "path"], "o-", "greedy raises"),
                 (above[above["role"] == "uniform"], "s--", "uniform")], path, title)


def shared_parser(description: str) -> argparse.ArgumentParser:
    """The options of this script that `budget_trades.py` shares: the table, scale, model and hardware,
    the refits, the finetunes' cache and the output folder."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("table", nargs="?", default="latency", help="the table whose search settings to use")
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--model", default="digits-mbv2")
    parser.add_argument("--hw", help="hardware model (default: the table's first)")
    parser.add_argument("--refits", type=positive_int, default=4, help="finetunes of each measured policy")
    parser.add_argument("--runs", default="runs/budget-frontier", help="where the finetunes' cache is kept")
    parser.add_argument("--out", default=str(OUT), help="where to write the CSV, markdown and figure")
    return parser


def write_results(df: pd.DataFrame, out: Path, name: str, render_md: Callable[[pd.DataFrame], str],
                  draw: Callable[[pd.DataFrame, Path], None]) -> None:
    """Write `df` as ``<name>.csv`` in `out`, then the markdown and figure of what the CSV reads back."""
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / f"{name}.csv", index=False, float_format="%.5g")
    df = pd.read_csv(out / f"{name}.csv", keep_default_na=False, dtype={"w_bits": str, "a_bits": str})
    (out / f"{name}.md").write_text(render_md(df))
    draw(df, out / f"{name}.png")
    log.info("wrote %s.{csv,md,png} in %s", name, out)


def main() -> None:
    parser = shared_parser(__doc__.splitlines()[0])
    parser.add_argument("--start", default="w4a4", help="the uniform policy the path starts from (default w4a4)")
    parser.add_argument("--screen-finetunes", type=positive_int, default=2, help="finetunes a raise is scored on")
    parser.add_argument("--every", type=positive_int, default=1,
                        help="measure the path at every N-th raise and the last (default 1: every raise)")
    args = parser.parse_args()
    if args.refits > SCREEN_BASE:
        raise SystemExit(f"--refits must be at most {SCREEN_BASE}: the screen's finetunes use the seeds after them")
    if args.start not in UNIFORM[:-1]:
        raise SystemExit(f"--start must be a uniform policy below w8a8 that the frontier also measures, "
                         f"one of {', '.join(UNIFORM[:-1])}; got {args.start!r}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TableSpec.load(args.table)
    hw = args.hw or spec.hardware[0]
    name = f"budget-frontier-{spec.name}-{args.scale}-{args.model}-{hw}"
    df = measure(spec, args.scale, args.model, hw, args.start, args.screen_finetunes, args.refits,
                 Path(args.runs) / f"{spec.name}-{args.scale}-{args.model}", args.every)  # the same on every hw
    write_results(df, Path(args.out), name,
                  lambda d: render(d, args.model, hw, spec, args.scale, args.start, name, args.every),
                  lambda d, p: figure(d, p, f"{args.model} on {hw}: raising layers from {args.start}"))


if __name__ == "__main__":
    main()
