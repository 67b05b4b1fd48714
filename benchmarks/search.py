"""Wall time and peak memory of a whole search (the default `haq search` unless told).

Runs the search in a fresh temporary run directory and reports: setup (model, data,
calibration), search wall time, seconds per episode, the finish (uniform baselines, plots),
and the peak resident memory of this process (Ray workers run in processes of their own,
one evaluator each, not counted here). Writes JSON.

    python benchmarks/search.py                       # the default search, 100 episodes
    python benchmarks/search.py --episodes 600        # the paper's episode count
    python benchmarks/search.py --workers 2           # 2 Ray workers
    python benchmarks/search.py --json benchmarks/results/search-cpu-default.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from haq.config import SearchConfig, load_yaml
from haq.parts import build_evaluator
from haq.search import Search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML search config (default: the default search)")
    parser.add_argument("--episodes", type=int)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--method", choices=["ilp", "ddpg", "random"], help="default: the default search's (ilp)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the finetune (finetune.compile; default: on for CUDA, off on CPU)")
    parser.add_argument("--json", help="write the result here")
    args = parser.parse_args()

    # one SearchConfig from the YAML's keys and the flags, so that the auto settings (compile on CUDA)
    # are decided for the device asked for
    data = load_yaml(args.config) if args.config else {}
    data.update({"seed": args.seed, "workers": args.workers})
    if args.method:
        data["method"] = args.method
    if args.episodes:
        data["episodes"] = args.episodes
    if args.device:
        data["device"] = args.device
    if args.compile is not None:
        data["finetune"] = {**data.get("finetune", {}), "compile": args.compile}
    with tempfile.TemporaryDirectory() as tmp:
        cfg = SearchConfig.from_dict({**data, "out": str(Path(tmp) / "run")}, args.config or "flags")
        t0 = time.perf_counter()
        evaluator = build_evaluator(cfg)
        t_setup = time.perf_counter() - t0
        search = Search(cfg, evaluator=evaluator)
        t_workers = time.perf_counter() - t0 - t_setup
        finish_started: list[float] = []
        original_finish = search.finish

        def timed_finish() -> dict:
            finish_started.append(time.perf_counter())
            return original_finish()

        search.finish = timed_finish  # type: ignore[method-assign]
        summary = search.run()
        t_end = time.perf_counter()
    t_search = finish_started[0] - t0 - t_setup - t_workers
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} torch threads",
        "config": {"model": cfg.model, "hw": cfg.hw, "method": cfg.method, "episodes": cfg.episodes, "workers": cfg.workers,
                   "device": cfg.device, "compile": cfg.finetune.compile},
        "setup_s": round(t_setup, 2), "workers_start_s": round(t_workers, 2), "search_s": round(t_search, 2),
        "seconds_per_episode": round(t_search / cfg.episodes, 3), "finish_s": round(t_end - finish_started[0], 2),
        "total_s": round(t_end - t0, 2), "peak_rss_mb": round(peak_mb, 1),
        "best_accuracy": summary["best"]["accuracy"], "best_cost_ratio": summary["best"]["cost_ratio"],
        "distinct_policies": summary["distinct_policies"],  # finetuned; the other episodes reuse one
    }
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
