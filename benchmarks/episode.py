"""Time the parts of one search episode against the plain float training epoch.

Prints a table of seconds and ratios and writes it as JSON:

* float epoch: plain fp32 training of the same model on the same data (the floor);
* quantized finetune epoch: our fake-quantized finetune (w4a4);
* calibration per episode: applying a policy whose clips are already cached;
* validation: top-1 on the search-val split (of the quantized model, and of the float model for
  the GPU target: an episode within 1.5x of a plain float epoch plus validation);
* the rest: the engine's agent and environment for one episode with a constant evaluator (env
  steps, budget enforcement, cost lookups, one DDPG gradient step per transition).

Presets:
  cpu-digits   the embedded default on the CPU (real digits data)
  cpu-digits32 the mini tables' CIFAR-sized MobileNetV2 (53 layers) on 32x32 digits, with their
               finetune settings (256 training images an epoch, validation batches of 64)
  gpu-mbv2     MobileNetV2 at 224 px, a synthetic ImageNet-100-sized split (20k / 10k) held on
               the GPU as uint8 (HAQ's ImageNet-100 search split; random labels, timings only)
  cpu-mbv2-tiny  the gpu-mbv2 model and input size on the CPU with 256 / 128 images (a smoke run)

    python benchmarks/episode.py --preset cpu-digits [--compile] [--json out.json]

With --compile both the float model and the quantized model are compiled with
`torch.compile` (inductor); the first, untimed epoch of each pays the compilation, whose
time is inside warmup_s (one untimed float epoch, quantized epoch and validation).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable

import numpy as np
import torch

from haq.data import ImageSplit, SearchData
from haq.evaluator import QuantEvaluator
from haq.models import create_model
from haq.parts import load_model_and_data
from haq.policy import Policy
from haq.train import FinetuneConfig, evaluate, train_epochs


def synthetic(n_train: int, n_val: int, size: int, classes: int, device: str) -> SearchData:
    g = torch.Generator(device=device).manual_seed(0)

    def split(n: int) -> ImageSplit:
        imgs = torch.randint(0, 256, (n, 3, size, size), generator=g, device=device, dtype=torch.uint8)
        return ImageSplit(imgs, torch.randint(0, classes, (n,), generator=g, device=device))

    train, val = split(n_train), split(n_val)
    return SearchData("synthetic", train, val, val, classes, (0.5,) * 3, (0.25,) * 3, augment="crop-flip")


PRESETS = {
    "cpu-digits": dict(model="digits-mbv2", device="cpu", batch=64),
    # the mini tables' CIFAR-sized MobileNetV2 (53 layers) with their finetune settings
    "cpu-digits32": dict(model="digits32-mbv2", device="cpu", batch=64, max_train_images=256, eval_batch=64),
    # validation batches of 500 divide the 10k images: no odd last batch for a compiled graph to recompile for
    "gpu-mbv2": dict(model="mobilenet_v2", device="cuda", batch=128, n_train=20000, n_val=10000, size=224, classes=100,
                     eval_batch=500),
    "cpu-mbv2-tiny": dict(model="mobilenet_v2", device="cpu", batch=32, n_train=256, n_val=128, size=224, classes=100),
}


def timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def agent_episode(layers: list) -> Callable[[], object]:
    """One episode of the default search without the finetune, as a callable to time: the
    engine's own agent (`make_agent` with the default `SearchConfig`) on a `MixedPrecisionEnv`
    of these layers priced by bismo-edge, with a constant evaluator: env steps, actor and
    noise, budget enforcement and cost lookups, the replay buffer, and the 2L gradient steps
    after the episode. Warm-up episodes and a few learning ones are run before (untimed)."""
    from stable_baselines3.common.monitor import Monitor

    import hw_models
    from envs import MixedPrecisionEnv
    from haq.config import SearchConfig
    from haq.parts import make_agent, resolve_budget

    cfg = SearchConfig(warmup=2)
    cost_model = hw_models.create_hw_model(cfg.hw)
    env = MixedPrecisionEnv(layers, cost_model, resolve_budget(cfg, cost_model, layers), lambda policy: 90.0,
                            metric=cfg.metric, fp_accuracy=95.0, enforcement=cfg.enforcement)
    agent = make_agent(cfg, Monitor(env), env.n_steps)
    agent.learn(total_timesteps=4 * env.n_steps)  # warm-up episodes, then learning ones (untimed)

    def one_episode() -> object:
        return agent.learn(total_timesteps=env.n_steps, reset_num_timesteps=False)

    return one_episode


def _has_sb3() -> bool:
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu-digits")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the float and the quantized model (finetune.compile)")
    parser.add_argument("--repeats", type=int, help="timed rounds of all parts, medians kept (default: 5 on "
                        "CPU, 1 on GPU); one untimed warm-up run of each epoch comes first")
    args = parser.parse_args()
    p = PRESETS[args.preset]
    repeats = args.repeats or (1 if p["device"] == "cuda" else 5)
    device = torch.device(p["device"])
    if "n_train" not in p:  # a registered digits model on its own data (input size from the registry)
        model, data, _ = load_model_and_data(p["model"])
    else:
        data = synthetic(p["n_train"], p["n_val"], p["size"], p["classes"], p["device"])
        model = create_model(p["model"], num_classes=p["classes"])
    ft = FinetuneConfig(batch_size=p["batch"], eval_batch_size=p.get("eval_batch", max(256, p["batch"])),
                        max_train_images=p.get("max_train_images"), compile=args.compile)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    ev = QuantEvaluator(model, data, finetune=ft, device=device)
    setup = time.perf_counter() - t0
    layers = ev.layers
    policy = Policy.uniform(layers, 4, 4)
    ev.qmodel.apply(policy)  # fills the clip cache for these bits
    gen = torch.Generator(device=device).manual_seed(0)

    fmodel = create_model(p["model"], **({"num_classes": p["classes"]} if "classes" in p else {}))
    fmodel = fmodel.to(device)
    ft = ev.finetune  # bf16 / channels_last as the evaluator resolved them for this device: the same for both
    if ft.channels_last:
        fmodel = fmodel.to(memory_format=torch.channels_last)

    frun = torch.compile(fmodel, backend=ft.compile_backend, dynamic=False) if ft.compile else fmodel

    def float_epoch() -> object:
        return train_epochs(frun, fmodel.parameters(), ev.data, ev.data.train, ft, gen)

    def quant_epoch() -> object:
        return train_epochs(ev.run_model, ev.qmodel.parameters(), ev.data, ev.data.train, ft, gen)

    def validation() -> object:
        return evaluate(ev.run_model, ev.data, ev.data.val, ft.eval_batch_size, ft.bf16, ft.channels_last)

    def float_validation() -> object:
        return evaluate(frun, ev.data, ev.data.val, ft.eval_batch_size, ft.bf16, ft.channels_last)

    def progress(line: str) -> None:  # to stderr as it goes, so a run stopped at a time limit says how far it got
        print(line, file=sys.stderr, flush=True)

    progress(f"setup (model, data, evaluator) {setup:.1f} s; {len(data.train)} training images, "
             f"{len(data.val)} validation")
    # warm-up (allocator, cuDNN autotuning, compilation), untimed
    t_compile = time.perf_counter()
    float_epoch()
    float_validation()
    quant_epoch()
    validation()
    t_compile = time.perf_counter() - t_compile
    progress(f"warm-up (a float and a quantized epoch and validation each{', compilation' if ft.compile else ''}) "
             f"{t_compile:.1f} s")

    # Rounds of every part once (two agent episodes), medians over the rounds: the machine's
    # speed drifts between minutes, and interleaving makes the drift hit every part alike.
    agent, agent_error = None, None
    if _has_sb3():
        try:  # the other parts are still worth having if the agent cannot run on this torch
            agent = agent_episode(layers)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON and on stderr
            agent_error = f"{type(exc).__name__}: {exc}"
            progress(f"agent not timed: {agent_error}")
    parts: dict[str, list[float]] = {k: [] for k in ("float", "float_validation", "quant", "calibration",
                                                     "validation", "agent")}
    for r in range(repeats):
        parts["float"].append(timed(float_epoch, device))
        parts["float_validation"].append(timed(float_validation, device))
        parts["quant"].append(timed(quant_epoch, device))
        parts["calibration"].append(timed(lambda: ev.qmodel.apply(policy), device))
        parts["validation"].append(timed(validation, device))
        if agent is not None:
            parts["agent"] += [timed(agent, device) for _ in range(2)]
        progress(f"round {r + 1}/{repeats}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in parts.items() if v))
    res = {
        "float_epoch_s": float(np.median(parts["float"])),
        "float_validation_s": float(np.median(parts["float_validation"])),
        "calibration_s": float(np.median(parts["calibration"])),
        "quant_epoch_s": float(np.median(parts["quant"])),
        "validation_s": float(np.median(parts["validation"])),
        "agent_and_env_s": float(np.median(parts["agent"])) if agent is not None else float("nan"),
        "agent_error": agent_error,
        "setup_s": setup,
        "compile": bool(ft.compile),
        "warmup_s": t_compile,  # one untimed float epoch, quantized epoch and validation (+ compilation)
        "rounds": repeats,
    }
    rest = 0.0 if np.isnan(res["agent_and_env_s"]) else res["agent_and_env_s"]
    episode = res["calibration_s"] + res["quant_epoch_s"] + res["validation_s"] + rest
    res.update({
        "episode_s": episode,
        "quant_over_float_epoch": res["quant_epoch_s"] / res["float_epoch_s"],
        # the GPU target: an episode against a plain float epoch plus its validation (same compile mode)
        "episode_over_float_epoch_and_validation": episode / (res["float_epoch_s"] + res["float_validation_s"]),
        "calibration_share": res["calibration_s"] / episode,
        "rest_share": rest / episode,
        "peak_gpu_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
        "preset": args.preset,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(), "train_images": len(data.train), "val_images": len(data.val),
        "max_train_images": ft.max_train_images,
        "torch": torch.__version__,
    })
    try:
        import resource
        res["peak_host_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    except ImportError:
        pass
    for k, v in res.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)


if __name__ == "__main__":
    main()
