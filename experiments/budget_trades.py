"""Ablation: random trades at a table's budget, no agent. Does any policy that costs no more than a
uniform budget policy reach a costlier fixed-bit row held out?

The tables count the searched policies at least as accurate as every fixed-bit row that costs as
much or more (issue 5's first must-show). `budget_frontier.py` only adds bits to uniform layers,
one layer at a time; this script also trades: it draws `--samples` distinct policies around the budget's uniform bits
(each weight and activation bitwidth offset by a rounded normal draw whose spread cycles through
0.5, 1, 2 and 3 bits, clipped to the search's bit range), lowers each to the budget highest-first and
fills it back up to the budget (`fill_budget`), so every sample spends the budget the way the
search could, lowering some layers to raise others. Each is finetuned once and scored by its
search-validation true-class probability (the less noisy of the search's measures; seed
``refit_seed(0, 7)``, as the frontier's screen). The `--top` best of that screen, and the uniform
policies from the budget up to w8a8 that the hardware runs, are then finetuned `--refits` times with
the table's refit seeds and measured held out, as the tables' `held out, 4 refits` column is.

The finetunes share `budget_frontier.py`'s cache (``runs/budget-frontier/<table>-<scale>-<model>/``:
the same settings and seeds, so the uniform policies' refits are made once; run one process a
model at a time). Writes `experiments/results/ablations/budget-trades-<table>-<scale>-<model>-<hw>-
<budget>.csv` (one row per policy and finetune), its markdown and a figure.

    OMP_NUM_THREADS=1 python experiments/budget_trades.py latency --model digits-mbv2 --hw bismo-edge
    OMP_NUM_THREADS=1 python experiments/budget_trades.py latency --model digits32-mbv2 --hw bismo-edge
    python experiments/budget_trades.py latency --overview    # every result above in one figure

(Measured with one thread, as the tables' finetunes are: about 1 s a finetune on `digits-mbv2`, 5
minutes a budget; 4-6 s on `digits32-mbv2`, 20-25 minutes a budget. A rerun reads every finetune
from the cache and only writes the results again.)
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from budget_frontier import (
    SCREEN_BASE,
    Finetunes,
    below,
    check_settings,
    cost_figure,
    key,
    shared_parser,
    write_results,
)

from haq import tables
from haq.cli import positive_int
from haq.policy import parse_uniform
from haq.search import build_parts
from haq.tables import RESULTS_DIR, SIGNIFICANCE, TableSpec

log = logging.getLogger("budget_trades")
OUT = RESULTS_DIR / "ablations"
SPREADS = (0.5, 1.0, 2.0, 3.0)  # standard deviations (bits) of the offsets, one per sample in turn
TRADE_COLOURS = ("tab:blue", "tab:green", "tab:purple", "tab:red")  # one a budget; the uniform line is orange


def sample_trades(env: Any, start: int, n: int, seed: int, spreads: tuple[float, ...] = SPREADS,
                  max_draws: int = 50) -> list[list[tuple[int, int]]]:
    """`n` distinct budget-filling policies other than uniform `start` bits: each bitwidth drawn as
    `start` plus a rounded normal offset (standard deviation cycling through `spreads`), clipped to
    `env.choices`, then enforced and filled by `env` (which must have ``fill_budget``). Fewer when
    `max_draws` times `n` draws find no more."""
    if not env.fill_budget:
        raise ValueError("sample_trades needs an environment with fill_budget, or samples leave budget unspent")
    rng = np.random.default_rng(seed)
    lo, hi = min(env.choices), max(env.choices)

    def nearest(b: int) -> int:  # the hardware's bitwidths may skip some (BitFusion: 2, 4, 8)
        return min(env.choices, key=lambda c: (abs(c - b), c))

    uniform = key([(start, start)] * len(env.layers))
    seen: set[str] = {uniform}
    out: list[list[tuple[int, int]]] = []
    for draw in range(max_draws * n):
        if len(out) == n:
            break
        spread = spreads[draw % len(spreads)]
        raw = np.clip(start + np.rint(rng.normal(0.0, spread, (len(env.layers), 2))), lo, hi).astype(int)
        requested = [(nearest(int(w)), hi if env.weights_only else nearest(int(a))) for w, a in raw]
        bits = env.enforce_budget(requested)
        if key(bits) not in seen:
            seen.add(key(bits))
            out.append(bits)
    return out


def measure(spec: TableSpec, scale: str, model: str, hw: str, budget: str, samples: int, top: int, refits: int,
            base: Path) -> pd.DataFrame:
    """Screen `samples` trades once each, refit the `top` best and the uniform policies from
    `budget` to w8a8: one row per (policy, finetune) with its ``role`` (``screen``, ``top`` or
    ``uniform``)."""
    start = parse_uniform(budget)
    if start[0] != start[1]:
        raise SystemExit(f"--budget must be a uniform policy with as many weight as activation bits; got {budget!r}")
    cfg = spec.config(scale, model, hw, budget, "haq", 0, base / "unused")
    tables.check_float_models(base, tables._model_fingerprints(spec, scale, [model], None, base))
    ev = tables._job_evaluator(cfg, tables.job_threads(1))
    env = build_parts(dataclasses.replace(cfg, enforcement="highest-first", fill_budget=True), ev).env
    check_settings(base, cfg)
    run = Finetunes(ev, base / "finetunes.json")
    screen_seed = tables.refit_seed(0, SCREEN_BASE)
    refit_seeds = [tables.refit_seed(0, j) for j in range(refits)]
    rows: list[dict[str, Any]] = []

    def record(role: str, name: str, bits: list[tuple[int, int]], seeds: list[int]) -> None:
        w_bits, a_bits = key(bits).split("|")
        for s in seeds:
            rows.append({"role": role, "name": name, "cost_ratio": env.cost(bits) / env.reference_cost,
                         "budget_ratio": env.budget / env.reference_cost, "w_bits": w_bits, "a_bits": a_bits,
                         "finetune_seed": s, **run(bits, s)})

    trades = sample_trades(env, start[0], samples, seed=0)
    t0 = time.perf_counter()
    record("screen", f"uniform {budget}", [start] * len(env.layers), [screen_seed])
    for n, bits in enumerate(trades, 1):
        record("screen", f"trade {n}", bits, [screen_seed])
        if n % 10 == 0 or n == len(trades):
            log.info("screen: %d of %d trades (%.0f s)", n, len(trades), time.perf_counter() - t0)
    screen = pd.DataFrame(rows)
    best = screen[screen["name"] != f"uniform {budget}"].nlargest(top, "val_p_true")
    for rank, name in enumerate(best["name"], 1):
        record("top", name, trades[int(name.split()[1]) - 1], refit_seeds)
        log.info("refits: %d of %d (%.0f s)", rank, len(best), time.perf_counter() - t0)
    for b in (c for c in env.choices if c >= start[0]):  # the hardware's own bitwidths (BitFusion: 4, 8)
        record("uniform", f"w{b}a{b}", [(b, b)] * len(env.layers), refit_seeds)
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """One row per refitted policy (the top trades and the uniform ones): cost, screen score, means
    over the refits, the costlier uniform rows it is less accurate than on average (``behind``) and
    those it is significantly below held out (``below``, Welch's one-sided test)."""
    refit = df[df["role"] != "screen"]
    screen = df[df["role"] == "screen"].set_index("name")["val_p_true"]
    uniform = {name: g for name, g in refit[refit["role"] == "uniform"].groupby("name")}
    out = []
    for (role, name), g in refit.groupby(["role", "name"], sort=False):
        cost = g["cost_ratio"].iloc[0]
        costlier = [u for u, ug in uniform.items() if u != name and ug["cost_ratio"].iloc[0] >= cost - 1e-9]
        mean = g["test_top1"].mean()
        out.append({"role": role, "name": name, "cost_ratio": cost, "w_bits": g["w_bits"].iloc[0],
                    "a_bits": g["a_bits"].iloc[0], "screen_p_true": screen.get(name, np.nan),
                    "val_top1": g["val_top1"].mean(), "test_top1": mean, "test_top1_sd": g["test_top1"].std(),
                    "finetunes": len(g),
                    "behind": " ".join(u for u in sorted(costlier) if mean < uniform[u]["test_top1"].mean() - 1e-9),
                    "below": " ".join(u for u in sorted(costlier)
                                      if below(g["test_top1"].tolist(), uniform[u]["test_top1"].tolist()))})
    return pd.DataFrame(out)


def render(df: pd.DataFrame, model: str, hw: str, spec: TableSpec, scale: str, budget: str, name: str) -> str:
    """Markdown: the refitted trades and uniform policies, and what they say."""
    s = summary(df)
    trades, uniform = s[s["role"] == "top"], s[s["role"] == "uniform"].set_index("name")
    screen = df[df["role"] == "screen"]
    sampled = screen[screen["name"] != f"uniform {budget}"]
    base_score = float(screen.loc[screen["name"] == f"uniform {budget}", "val_p_true"].iloc[0])
    start = parse_uniform(budget)[0]
    spread = [np.mean([abs(int(b) - start) for b in (r["w_bits"] + " " + r["a_bits"]).split()])
              for r in sampled.to_dict("records")]
    n_refits = int(s["finetunes"].iloc[0])
    lo, hi = f"{sampled['cost_ratio'].min():.3f}", f"{sampled['cost_ratio'].max():.3f}"
    costs = f"all at {lo}" if lo == hi else f"{lo}-{hi}"
    lines = [(f"<!-- generated by `python experiments/budget_trades.py {spec.name} --scale {scale} --model {model} "
             f"--hw {hw} --budget {budget} --samples {len(sampled)} --top {len(trades)} --refits {n_refits}`; "
             "do not edit by hand -->"),
             f"### Random trades at the {budget} budget: {model} on {hw} ({spec.name} table, {scale} scale)", "",
             (f"Source: `{name}.csv` (beside this file). {len(sampled)} distinct policies drawn around uniform "
             f"{budget} (each bitwidth offset by a rounded normal draw of {', '.join(f'{x:g}' for x in SPREADS)} bits' "
             "spread in turn), lowered to the "
             f"budget highest-first and filled back up to it: {costs} of w8a8's {spec.constraint} (budget "
             f"{float(screen['budget_ratio'].iloc[0]):.3f}), {np.mean(spread):.2f} bits from {start} a bitwidth on "
             f"average. Each finetuned once and scored by search-validation true-class probability; the {len(trades)} "
             f"best, and each uniform policy from {budget} up that the hardware runs, finetuned {n_refits} times with the table's refit seeds; "
             f"top-1 (%) means over them. `behind`: costlier uniform rows with a higher mean held out; `significantly "
             f"below`: those it is significantly below (Welch's t-test, one-sided, {SIGNIFICANCE:.0%})."),
             "", (f"| policy | {spec.constraint} / w8a8 | screen p_true | search-validation top-1 | held-out top-1 | "
                 f"bitwidths not {start} | behind | significantly below |"), "|---|---|---|---|---|---|---|---|"]
    for r in pd.concat([trades, uniform.reset_index()]).to_dict("records"):
        label = r["name"] if r["role"] == "top" else f"uniform {r['name']}"
        score = "" if np.isnan(r["screen_p_true"]) else f"{r['screen_p_true']:.2f}"
        slots = [int(b) for b in f"{r['w_bits']} {r['a_bits']}".split()]
        off = f"{sum(b != start for b in slots)} of {len(slots)}" if r["role"] == "top" else ""
        lines.append(f"| {label} | {r['cost_ratio']:.3f} | {score} | {r['val_top1']:.2f} | {r['test_top1']:.2f} +- "
                     f"{r['test_top1_sd']:.2f} | {off} | {r['behind'] or '-'} | {r['below'] or '-'} |")
    best = trades.loc[trades["test_top1"].idxmax()]
    matched = int((trades["behind"] == "").sum())
    below_w8a8 = int(trades["below"].str.contains("w8a8").sum())
    lines += ["", "Measured:", "",
              (f"- {int((sampled['val_p_true'] > base_score).sum())} of the {len(sampled)} trades scored above uniform "
              f"{budget} on the screen (same finetune seed)."),
              (f"- Held out over the refits, the {len(trades)} best of the screen reach {trades['test_top1'].min():.2f}-"
              f"{trades['test_top1'].max():.2f}% (best: {best['name']}, {best['cost_ratio']:.3f} of w8a8); uniform "
              f"{budget} {uniform.loc[budget, 'test_top1']:.2f}%, w8a8 {uniform.loc['w8a8', 'test_top1']:.2f}%. "
              f"{int((trades['test_top1'] >= uniform.loc[budget, 'test_top1'] - 1e-9).sum())} of {len(trades)} are at "
              f"least as accurate as uniform {budget}, {matched} as every costlier uniform row (the "
              f"tables' test against costlier fixed-bit rows); {below_w8a8} are significantly below w8a8."),
              ("- Picking the best of these by held-out top-1 would select on the test split, so the best's "
              "number flatters it: more than a search picking among these trades on search-validation could expect.")]
    return "\n".join(lines) + "\n"


def figure(df: pd.DataFrame, path: Path, title: str) -> None:
    """Held-out top-1 against cost: the refitted trades and the uniform policies."""
    s = summary(df).sort_values("cost_ratio")
    cost_figure([(s[s["role"] == "top"], "o", "best trades of the screen"),
                 (s[s["role"] == "uniform"], "s--", "uniform")], path, title)


def runs_on_disk(out: Path, spec: TableSpec, scale: str) -> dict[tuple[str, str, str], pd.DataFrame]:
    """Every ``budget-trades-<table>-<scale>-<model>-<hw>-<budget>.csv`` in `out`, keyed by
    ``(model, hw, budget)`` (the hardware named as the table's YAML names it)."""
    prefix = f"budget-trades-{spec.name}-{scale}-"
    found = {}
    for path in sorted(out.glob(f"{prefix}*.csv")):
        stem = path.stem[len(prefix):]
        rest, _, budget = stem.rpartition("-")
        hw = next((h for h in spec.hardware if rest.endswith(f"-{h}")), None)
        if hw is None:
            raise SystemExit(f"{path}: its name ends in no hardware model of the {spec.name} table "
                             f"({', '.join(spec.hardware)})")
        found[(rest[: -len(hw) - 1], hw, budget)] = pd.read_csv(path, keep_default_na=False,
                                                                dtype={"w_bits": str, "a_bits": str})
    return found


def overview(runs: dict[tuple[str, str, str], pd.DataFrame], hardware: list[str], path: Path, title: str) -> None:
    """One panel per model and hardware (in `hardware`'s order): held-out top-1 (mean +- sd over the
    refits) of the uniform policies against cost, and each budget's refitted trades beside them (all
    cost the budget; they are spread sideways to be told apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({m for m, _, _ in runs})
    hws = [h for h in hardware if any(h == hw for _, hw, _ in runs)]
    fig, axes = plt.subplots(len(models), len(hws), figsize=(5 * len(hws), 3.6 * len(models)), squeeze=False)
    for (r, model), (c, hw) in ((a, b) for a in enumerate(models) for b in enumerate(hws)):
        ax = axes[r][c]
        mine = {b: summary(df) for (m, h, b), df in runs.items() if (m, h) == (model, hw)}
        if not mine:
            ax.set_visible(False)
            continue
        uniform = pd.concat([s[s["role"] == "uniform"] for s in mine.values()]).drop_duplicates("name")
        uniform = uniform.sort_values("cost_ratio")
        ax.errorbar(uniform["cost_ratio"], uniform["test_top1"], yerr=uniform["test_top1_sd"], fmt="s--",
                    capsize=3, color="tab:orange", label="uniform")
        for u in uniform.itertuples():
            ax.annotate(u.name, (u.cost_ratio, u.test_top1), textcoords="offset points", xytext=(4, -10), fontsize=8)
        for k, (budget, s) in enumerate(sorted(mine.items())):
            top = s[s["role"] == "top"]
            jitter = (np.arange(len(top)) - (len(top) - 1) / 2) * 0.004  # trades share one cost: spread them
            ax.errorbar(top["cost_ratio"] + jitter, top["test_top1"], yerr=top["test_top1_sd"], fmt="o", ms=4,
                        capsize=2, color=TRADE_COLOURS[k % len(TRADE_COLOURS)], label=f"best trades at {budget}")
        ax.set_title(f"{model} on {hw}", fontsize=9)
        ax.set_xlabel("cost / w8a8")
        ax.set_ylabel("held-out top-1 (%), mean over refits")
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = shared_parser(__doc__.splitlines()[0])
    parser.add_argument("--budget", default="w4a4", help="the uniform policy whose cost is the budget (default w4a4)")
    parser.add_argument("--samples", type=positive_int, default=200, help="distinct trades to screen")
    parser.add_argument("--top", type=positive_int, default=8, help="best trades of the screen to refit")
    parser.add_argument("--overview", action="store_true",
                        help="draw every result of the table in --out into one figure instead of measuring")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.overview:
        spec = TableSpec.load(args.table)
        runs = runs_on_disk(Path(args.out), spec, args.scale)
        if not runs:
            raise SystemExit(f"no budget-trades-{spec.name}-{args.scale}-*.csv in {args.out}: measure some first")
        path = Path(args.out) / f"budget-trades-{spec.name}-{args.scale}.png"
        overview(runs, list(spec.hardware), path, f"Random trades at the {spec.name} table's budgets ({args.scale} scale), held out")
        log.info("wrote %s", path)
        return
    if args.refits > SCREEN_BASE:
        raise SystemExit(f"--refits must be at most {SCREEN_BASE}: the screen's finetunes use the seed after them")
    if args.top > args.samples:
        raise SystemExit(f"--top ({args.top}) must be at most --samples ({args.samples})")
    spec = TableSpec.load(args.table)
    hw = args.hw or spec.hardware[0]
    name = f"budget-trades-{spec.name}-{args.scale}-{args.model}-{hw}-{args.budget}"
    df = measure(spec, args.scale, args.model, hw, args.budget, args.samples, args.top, args.refits,
                 Path(args.runs) / f"{spec.name}-{args.scale}-{args.model}")
    write_results(df, Path(args.out), name, lambda d: render(d, args.model, hw, spec, args.scale, args.budget, name),
                  lambda d, p: figure(d, p, f"{args.model} on {hw}: random trades at the {args.budget} budget"))


if __name__ == "__main__":
    main()
