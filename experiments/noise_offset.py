"""Ablation: does `agent.noise_offset_sigma: 0.2` (per-episode exploration offsets for all
weight and all activation steps, the default since this ablation) help the search? Runs (or
reads back) the ablation tables in experiments/configs/ablations/: every search of the main mini
tables *without* the offsets (`noise_offset_sigma: 0`, the former default), and compares them,
seed by seed, with the same searches of the main tables on the same (shipped) float models
(experiments/results/<table>-mini.csv: same budgets, episodes, finetune and seeds, with the
offsets; `haq.tables.check_same_float_models` refuses tables of other float models; the
measurement on the earlier float models is in git history before this script compared with
experiments/results/).
Writes experiments/results/ablations/noise-offset.md.

    OMP_NUM_THREADS=1 python experiments/noise_offset.py [--jobs 2] [--render-only]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from scipy import stats

from haq import tables
from haq.tables import TableSpec, run_table

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "experiments" / "configs" / "ablations"
RESULTS = ROOT / "experiments" / "results"
OUT = RESULTS / "ablations"
MAIN = RESULTS  # the main tables, on the float models these ablations were measured on
HELD_OUT = {"test": "test_accuracy", "refit": "test_accuracy_refits"}  # measures of haq.tables.held_out
ABLATIONS = {"noise-offset-latency": "latency-mini.csv", "noise-offset-energy": "energy-mini.csv",
             "noise-offset-size": "size-mini.csv"}


def _beats_costlier(v: pd.DataFrame, model: str, hw: str, budget: str) -> pd.Series:
    rows = v[(v["model"] == model) & (v["hw"] == hw) & (v["budget"].astype(str) == str(budget))]
    return rows.set_index("seed")["beats_all_costlier"]


def compare(ablation: pd.DataFrame, main: pd.DataFrame) -> tuple[list[str], list[str], pd.DataFrame]:
    """Markdown rows and verdicts: each (model, hardware, budget) of the ablation (no offsets)
    against the main table's default search (offsets) and its fixed-bit baselines; and one row
    per paired search (difference in top-1, whether each beat every costlier fixed-bit row)."""
    lines: list[str] = []
    verdicts: list[str] = []
    paired: list[pd.DataFrame] = []
    # the main tables' rule (haq.tables.verdicts): each seed against that seed's fixed-bit rows
    off_verdicts, plain_verdicts = tables.verdicts(main), tables.verdicts(ablation)
    # the same on the held-out test split, for each held-out measure both tables have (haq.tables.held_out)
    held = {key: (tables.verdicts(main.assign(accuracy=main[column])),
                  tables.verdicts(ablation.assign(accuracy=ablation[column])))
            for key, column in HELD_OUT.items() if column in main.columns and column in ablation.columns}
    for (model, hw, budget), base in ablation[ablation["method"] == "haq"].groupby(["model", "hw", "budget"],
                                                                                  sort=False):
        off = main[(main["method"] == "haq") & (main["model"] == model) & (main["hw"] == hw)
                   & (main["budget"].astype(str) == str(budget))]
        fixed = main[(main["method"] == "fixed") & (main["model"] == model) & (main["hw"] == hw)]
        fixed_mean = fixed.groupby("policy")[["accuracy", "cost_ratio"]].mean()
        pair = off.merge(base, on="seed", suffixes=("_offset", "_plain"))
        if pair.empty:
            continue

        for r in pair.itertuples():
            lines.append(f"| {model} | {hw} | {budget} | {r.seed} | {r.accuracy_plain:.2f} ({r.cost_ratio_plain:.3f}) "
                         f"| {r.accuracy_offset:.2f} ({r.cost_ratio_offset:.3f}) | "
                         f"{tables.signed(r.accuracy_offset - r.accuracy_plain)} |")
        beats = {k: _beats_costlier(v, model, hw, budget) for k, v in (("off", off_verdicts), ("plain", plain_verdicts))}
        frame = pd.DataFrame({"search": [f"{model} {hw} {budget} seed {s}" for s in pair["seed"]],
                              "diff": (pair["accuracy_offset"] - pair["accuracy_plain"]).to_numpy(),
                              "beats_off": beats["off"].reindex(pair["seed"]).to_numpy(),
                              "beats_plain": beats["plain"].reindex(pair["seed"]).to_numpy()})
        for key, pair_verdicts in held.items():
            column = HELD_OUT[key]
            held_beats = {k: _beats_costlier(v, model, hw, budget) for k, v in zip(("off", "plain"), pair_verdicts)}
            frame[f"{key}_diff"] = (pair[f"{column}_offset"] - pair[f"{column}_plain"]).to_numpy()
            frame[f"{key}_beats_off"] = held_beats["off"].reindex(pair["seed"]).to_numpy()
            frame[f"{key}_beats_plain"] = held_beats["plain"].reindex(pair["seed"]).to_numpy()
        paired.append(frame)
        wins = int((pair["accuracy_offset"] >= pair["accuracy_plain"] - 1e-3).sum())
        n = len(pair)
        listed = ", ".join(f"{p} {a:.2f}" for p, a in fixed_mean.sort_values("cost_ratio")["accuracy"].items())
        b_off, b_plain = int(beats["off"].sum()), int(beats["plain"].sum())
        lines.append(f"| {model} | {hw} | {budget} | mean +- std | {pair['accuracy_plain'].mean():.2f} +- "
                     f"{pair['accuracy_plain'].std():.2f} | {pair['accuracy_offset'].mean():.2f} +- "
                     f"{pair['accuracy_offset'].std():.2f} | "
                     f"{tables.signed((pair['accuracy_offset'] - pair['accuracy_plain']).mean())} |")
        verdicts.append(f"- {model} on {hw}, budget {budget}: with offsets at least as accurate as without in {wins} "
                        f"of {n} seeds; at least as accurate as every fixed-bit baseline that costs as much or more "
                        f"(fixed-bit mean top-1 over seeds: {listed}; each seed is compared with its own) in {b_plain} of {n} seeds without offsets, {b_off} of {n} "
                        "with.")
    return lines, verdicts, pd.concat(paired) if paired else pd.DataFrame()


def render(frames: dict[str, pd.DataFrame]) -> str:
    lines = ["<!-- generated by experiments/noise_offset.py; do not edit by hand -->",
             "# Ablation: per-episode exploration offsets (`agent.noise_offset_sigma: 0.2`)", "",
             "Every search of the main mini tables, with the default agent (per-step "
             "truncated-normal noise, sigma 0.1, plus one exploration offset per episode for all weight steps and "
             "one for all activation steps, N(0, 0.2), decayed like sigma), against the same seed, budget, "
             "episodes and finetune without the offsets (`noise_offset_sigma: 0`, the default before this "
             "ablation). Top-1 (%) of the best policy on the search-validation split, its cost over w8a8's in "
             "brackets. Sources: the main tables' CSVs (`experiments/results/<table>-mini.csv`, with offsets) and "
             "`experiments/results/ablations/noise-offset-*-mini.csv` (without offsets), on the same float models.", "",
             "| model | hardware | budget | seed | without offsets | with offsets (default) | difference |",
             "|---|---|---|---|---|---|---|"]
    verdicts: list[str] = []
    paired: dict[str, pd.DataFrame] = {}
    for name, main_csv in ABLATIONS.items():
        if name in frames:
            main_df = pd.read_csv(MAIN / main_csv)
            tables.check_same_float_models(frames[name], main_df, f"ablations/{name}-mini.csv", str(MAIN / main_csv))
            rows, said, p = compare(frames[name], main_df)
            lines += rows
            verdicts += said
            paired[name] = p
    for name, p in paired.items():
        if "refit_diff" in p and not p["refit_diff"].isna().any():
            d, p = p["refit_diff"].reset_index(drop=True), p.reset_index(drop=True)
            verdicts.append(f"- {name.removeprefix('noise-offset-')} table, held out over the refits: with offsets at least "
                            f"as accurate in {int((d >= -1e-3).sum())} of {len(p)}, mean difference "
                            f"{tables.signed(d.mean())} points, median {tables.signed(d.median())}; largest loss "
                            f"{tables.signed(d.min())} ({p.loc[d.idxmin(), 'search']}), largest gain "
                            f"{tables.signed(d.max())} ({p.loc[d.idxmax(), 'search']}).")
    if paired:
        p = pd.concat(paired.values(), ignore_index=True)
        worst = p.loc[p["diff"].idxmin()]
        verdicts.append(f"- All {len(p)} paired searches: with offsets at least as accurate in "
                        f"{int((p['diff'] >= -1e-3).sum())}, mean difference {tables.signed(p['diff'].mean())} points, median "
                        f"{tables.signed(p['diff'].median())} (one validation image is 0.29 points); largest loss "
                        f"{tables.signed(worst['diff'])} ({worst['search']}), largest gain {tables.signed(p['diff'].max())}. At least "
                        "as accurate as every fixed-bit baseline that costs as much or more: "
                        f"{int(p['beats_plain'].sum())} of {len(p)} searches without offsets, "
                        f"{int(p['beats_off'].sum())} with.")
        for key, label in (("test", "Held out (the test split no search sees, `haq.tables.held_out`)"),
                           ("refit", "Held out, mean over each policy's refits (finetunes with seeds no search "
                                     "used, so nothing was selected on them)")):
            diff = p.get(f"{key}_diff")
            if diff is None or diff.isna().any():
                continue
            test = stats.ttest_1samp(diff, 0.0)
            verdicts.append(f"- {label}: with offsets at least as accurate in {int((diff >= -1e-3).sum())} of "
                            f"{len(p)}, mean difference {tables.signed(diff.mean())} points, median "
                            f"{tables.signed(diff.median())} (paired t-test, two-sided, p = {test.pvalue:.3f}); at least as accurate as every costlier fixed-bit "
                            f"baseline in {int(p[f'{key}_beats_plain'].sum())} without offsets, "
                            f"{int(p[f'{key}_beats_off'].sum())} with.")
    return "\n".join(lines + ["", "Measured:", ""] + verdicts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1, help="searches at once (haq table --jobs)")
    parser.add_argument("--runs", default="runs/tables")
    parser.add_argument("--render-only", action="store_true", help="rewrite the markdown from the CSVs")
    args = parser.parse_args()
    frames = {}
    for name in ABLATIONS:
        csv = OUT / f"{name}-mini.csv"
        if args.render_only:
            if csv.is_file():
                frames[name] = pd.read_csv(csv)
            continue
        run_table(TableSpec.load(name, CONFIGS), "mini", runs_dir=args.runs, results_dir=OUT, jobs=args.jobs)
        frames[name] = pd.read_csv(csv)  # as written (5 significant digits), as the main tables' CSVs are read
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "noise-offset.md").write_text(render(frames))
    print(f"wrote {OUT / 'noise-offset.md'}")


if __name__ == "__main__":
    main()
