"""`haq table`: one of the paper's tables, every search and baseline of it."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from haq.cli.args import (
    UsageError,
)


def cmd_table(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from haq.tables import RESULTS_DIR, TableSpec, render_table, run_table

    spec = TableSpec.load(args.table, args.config_dir)
    if args.refits is not None:  # measured, and labelled in the markdown, with this count
        spec = dataclasses.replace(spec, refits=args.refits)
    if args.models:
        spec = spec.only_models(args.scale, args.models)
    if args.weights:
        spec = spec.with_weights(args.scale, dict(args.weights))
    sc = spec.scale(args.scale)
    overrides: dict[str, Any] = {"episodes": args.episodes, "data_root": args.data_root, "device": args.device,
                                 "workers": args.workers, "ray_address": args.ray_address}
    tag = ""
    if args.distill:
        overrides["finetune"] = {"distill": True}
        tag = "-distill"
    if args.episodes is not None:  # searches unlike the YAML's: run folders and result files of their own
        tag += f"-episodes{args.episodes}"
    # experiments/results holds whole tables as their YAML sets them; a run of fewer models or seeds, or
    # with other episodes or refits, writes beside its run folders unless --results says otherwise
    partial = [f"--{k}" for k in ("models", "seeds", "episodes", "refits") if getattr(args, k) is not None]
    out = Path(args.results) if args.results else Path(args.runs) / "results" if partial else RESULTS_DIR
    if args.scale == "paper" and not (args.data_root or (sc.get("search") or {}).get("data_root")):
        raise UsageError(f"--scale paper searches {sc.get('search', {}).get('dataset', 'ImageNet')} with "
                         f"{', '.join(sc['models'])}: give --data-root (a local ImageNet folder; nothing is downloaded)")
    untrained = spec.untrained(args.scale)
    if untrained and not args.render_only:
        raise UsageError(f"table {spec.name} at scale {args.scale!r} would search {', '.join(untrained)} untrained: "
                         "give their weights, --weights " + " ".join(f"{m}=PATH" for m in untrained)
                         + " (local state dicts trained on ImageNet; torchvision's ImageNet checkpoints of "
                         "mobilenet_v2, resnet18 and resnet50 load as they are; nothing is downloaded)")
    if args.jobs > 1 and (args.workers or 1) > 1:
        raise UsageError(f"--jobs {args.jobs} runs whole searches in parallel and --workers {args.workers} the policies "
                         "of one search: choose one")
    if args.render_only:
        import pandas as pd

        csv_path = out / f"{spec.name}-{args.scale}{tag}.csv"
        if not csv_path.is_file():
            raise FileNotFoundError(f"{csv_path} does not exist; run the table first (the same command "
                                    "without --render-only)")
        print(render_table(spec, args.scale, pd.read_csv(csv_path, keep_default_na=False), out, tag))
        return 0
    seeds = args.seeds  # None: each model's own
    bar = tqdm(total=len(spec.cells(args.scale, seeds)), desc=f"table {spec.name} ({args.scale})", unit="search", file=sys.stderr)
    episode_bar: list[tqdm] = []

    def on_search(name: str, cfg: Any) -> None:
        episode_bar.append(tqdm(total=cfg.episodes, desc=name, unit="ep", leave=False, file=sys.stderr))

    def on_episode(rec: dict[str, Any]) -> None:
        if episode_bar:
            episode_bar[0].update(1)
            episode_bar[0].set_postfix(best_acc=f"{rec['best_accuracy']:.1f}")

    def on_finished(name: str) -> None:
        if args.jobs == 1:
            while episode_bar:
                episode_bar.pop().close()
        bar.update(1)
        bar.set_postfix_str(name)

    def on_progress(done: int, total: int) -> None:  # --jobs > 1: episodes over all running searches
        if not episode_bar:
            episode_bar.append(tqdm(total=total, desc="episodes", unit="ep", leave=False, file=sys.stderr))
        episode_bar[0].update(done - episode_bar[0].n)

    held_bar: list[tqdm] = []

    def on_held_out(done: int, total: int) -> None:  # each row's policy (and its refits) on the held-out split
        if not held_bar:
            for b in [*episode_bar, bar]:
                b.close()
            held_bar.append(tqdm(total=total, desc="held-out top-1", unit="finetune", file=sys.stderr))
        held_bar[0].update(done - held_bar[0].n)

    try:
        df = run_table(spec, args.scale, seeds=seeds, runs_dir=args.runs, results_dir=out,
                       overrides=overrides, tag=tag, jobs=args.jobs, on_search=on_search, on_episode=on_episode,
                       on_finished=on_finished, on_progress=on_progress, on_held_out=on_held_out)
    finally:
        for b in episode_bar + held_bar:
            b.close()
        bar.close()
    print((out / f"{spec.name}-{args.scale}{tag}.md").read_text())
    print(f"{len(df)} rows in {out / f'{spec.name}-{args.scale}{tag}.csv'}; runs in {args.runs}/{spec.name}-{args.scale}{tag}/")
    if partial and not args.results:
        print(f"(not the whole table: {', '.join(partial)} given, so {RESULTS_DIR} was left as it was)")
    return 0
