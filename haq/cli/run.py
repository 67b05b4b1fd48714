"""`haq search`, `haq sweep` and `haq eval`: search a policy, sweep a method over budgets, and measure
one policy with the settings of the run that wrote it."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from haq.cli.args import (
    UsageError,
    load_policy,
    parse_params,
    print_table,
)

if TYPE_CHECKING:  # torch-importing modules, loaded by the commands that need them
    from haq.config import SearchConfig
    from haq.qmodel import QuantConfig
    from haq.train import FinetuneConfig


SEARCH_FLAGS = ("model", "weights", "dataset", "data_root", "hw", "constraint", "budget", "method", "episodes", "warmup",
                "seed", "device", "out", "min_bits", "max_bits", "pin_first_last", "workers", "ray_address", "reward_measure",
                "fill_budget")


def search_config(args: argparse.Namespace) -> SearchConfig:
    """The `SearchConfig` of ``--config`` (if given) with every search flag given laid over it."""
    from haq.config import SearchConfig, load_yaml

    data: dict[str, Any] = load_yaml(args.config) if args.config else {}
    for f in SEARCH_FLAGS:
        value = getattr(args, f, None)
        if value is not None:
            data[f] = value
    if getattr(args, "hw_param", None):
        data["hw_params"] = {**data.get("hw_params", {}), **parse_params(args.hw_param)}
    if args.finetune_epochs is not None:
        data["finetune"] = {**data.get("finetune", {}), "epochs": args.finetune_epochs}
    if args.distill:
        data["finetune"] = {**data.get("finetune", {}), "distill": True}
    if getattr(args, "compile", None) is not None:
        data["finetune"] = {**data.get("finetune", {}), "compile": args.compile}
    return SearchConfig.from_dict(data, args.config or "flags")


def cmd_sweep(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from haq.config import check_device
    from haq.fileio import atomic_write_text
    from haq.sweep import budget_folder, pick_within, run_sweep

    config = search_config(args)
    check_device(config.device)
    out = Path(args.out)
    bar: tqdm | None = None

    def on_search(budget: str, i: int, n: int, done: bool) -> None:
        nonlocal bar
        if bar is not None:
            bar.close()
            bar = None
        print(f"budget {budget} ({i + 1} of {n}): {out / budget_folder(budget)}" + (" (done: read back)" if done else ""),
              file=sys.stderr)
        if not done:
            bar = tqdm(total=config.episodes, desc=f"search {budget}", unit="ep", file=sys.stderr)

    def on_episode(rec: dict[str, Any]) -> None:
        if bar is not None:
            bar.update(1)

    try:
        df = run_sweep(config, args.budgets, out, on_search, on_episode)
    finally:
        if bar is not None:
            bar.close()
    print_table(df.to_dict("records"), ["kind", "budget", "policy", "cost_ratio", "val_accuracy", "test_accuracy"])
    if args.max_drop is not None:
        pick = pick_within(df, args.max_drop)
        if pick is None:
            print(f"no policy is within {args.max_drop} points of the float top-1 on search-validation")
        else:
            atomic_write_text(out / "pick.json", json.dumps(pick, indent=2) + "\n")
            print(f"cheapest within {args.max_drop} points of float ({pick['fp_accuracy']:.2f}% on search-validation): "
                  f"{pick['kind']} {pick['policy']} at {pick['cost_ratio']:.3f} x w8a8, {pick['val_accuracy']:.2f}% "
                  f"(held out {pick['test_accuracy']:.2f}%)\n  w_bits: {pick['w_bits']}\n  a_bits: {pick['a_bits']}")
    print(f"results in {out}/ (sweep.csv, sweep.png" + (", pick.json" if args.max_drop is not None else "") + ")")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from haq.config import check_device
    from haq.search import Search, check_fresh_run_dir

    bar: tqdm | None = None

    def on_episode(rec: dict[str, Any]) -> None:
        assert bar is not None
        bar.update(1)
        bar.set_postfix(acc=f"{rec['accuracy']:.1f}", ratio=f"{rec['cost_ratio']:.3f}",
                        best_reward=f"{rec['best_reward']:.3f}", best_acc=f"{rec['best_accuracy']:.1f}")

    if args.resume:
        given = [f for f in SEARCH_FLAGS if getattr(args, f) is not None and f != "episodes"]
        if (given or args.config or args.hw_param or args.finetune_epochs is not None or args.distill
                or args.compile is not None):
            raise UsageError(f"--resume continues a run with its saved config.yaml; drop {given or 'the other flags'} "
                             "(only --episodes may be given, to extend the run)")
        search = Search.resume(args.resume, on_episode, episodes=args.episodes, allow_plugins=args.allow_plugins)
    else:
        config = search_config(args)
        check_device(config.device)  # before "preparing": a device this machine lacks is one line
        if config.out:
            check_fresh_run_dir(config.out)  # before loading anything
        print(f"preparing: model {config.model}, hardware {config.hw}, {config.constraint} budget {config.budget}, "
              f"method {config.method}",
              file=sys.stderr)
        search = Search(config, on_episode=on_episode)
    cfg = search.config
    print(f"run directory: {search.run_dir}", file=sys.stderr)
    print(f"float top-1 {search.parts.evaluator.fp_accuracy:.2f}%, {len(search.parts.layers)} layers, budget "
          f"{search.parts.env.budget:.5g} {cfg.metric} ({search.parts.env.budget / search.parts.env.reference_cost:.3f}"
          f" of w8a8)", file=sys.stderr)
    if cfg.reward_measure != "top1":
        print(f"the reward reads {cfg.reward_measure} (float {search.parts.env.fp_accuracy:.2f}); accuracies shown are "
              "top-1", file=sys.stderr)
    if cfg.method == "ilp" and search.episodes_done < cfg.episodes:
        print("method ilp: measuring each layer's sensitivity to each bitwidth first (one forward pass each), then "
              "finetuning the integer program's allocations (docs/methods.md; --method ddpg for HAQ's agent)",
              file=sys.stderr)
    if cfg.finetune.compile and search.episodes_done < cfg.episodes:
        print("the finetune is compiled once (torch.compile): the first episode takes a minute or two longer "
              "(--no-compile to run eagerly)", file=sys.stderr)
    bar = tqdm(total=cfg.episodes, initial=search.episodes_done, desc="search", unit="ep", file=sys.stderr)
    try:
        summary = search.run()
    finally:
        bar.close()
    if args.held_out:
        print("measuring the best and the uniform policies on the held-out test split ...", file=sys.stderr)
        summary = search.held_out(summary)
    best = summary["best"]
    held = f", held-out {best['test_accuracy']:.2f}%" if "test_accuracy" in best else ""
    print(f"\nbest policy (episode {best['episode']}): top-1 {best['accuracy']:.2f}%{held} "
          f"(float {summary['fp_accuracy']:.2f}%), {cfg.constraint} {best['cost']:.5g} {summary['units']} "
          f"= {best['cost_ratio']:.3f} x w8a8 (budget {summary['budget_ratio']:.3f})")
    print(f"  w_bits: {best['w_bits']}\n  a_bits: {best['a_bits']}")
    if summary["uniform_baselines"]:
        print("uniform policies within the budget (same finetune):")
        rows = [{**b, "held_out": b.get("test_accuracy", "")} for b in summary["uniform_baselines"]]
        print_table(rows, ["policy", "accuracy", "held_out", "cost_ratio"] if held
                     else ["policy", "accuracy", "cost_ratio"])
    if "selected" in summary:
        sel, n = summary["selected"], summary["selection"]["finetunes"]
        sel_held = f", held-out {sel['test_accuracy']:.2f}%" if "test_accuracy" in sel else ""
        print(f"returned policy ({sel['policy']}): mean top-1 {sel['selection_mean']:.2f}% over {n} fresh finetunes of "
              f"each of {len(summary['selection']['candidates'])} candidates (the best by reward and the uniform "
              f"policies){sel_held}, {sel['cost_ratio']:.3f} x w8a8\n  w_bits: {sel['w_bits']}\n  a_bits: {sel['a_bits']}")
    if held:
        print("(accuracy: top-1 on the search-validation split, from which the search picked its best policy; "
              "held-out: on the test split, which it never saw)")
    n = summary["finetunes"]
    print(f"finetunes: {n['total']} ({n['search']} in the search, {n['uniform']} of the uniform policies, "
          f"{n['selection']} in the selection)")
    files = "episodes.csv, best_policy.json, " + ("selected_policy.json, " if "selected" in summary else "")
    print(f"results in {search.run_dir}/ ({files}summary.json, policy.png, progress.png)")
    return 0


@dataclasses.dataclass
class PolicySettings:
    """How `haq eval` / `haq export` measure a policy: the run's settings where the policy file
    lies in a run directory (its ``config.yaml``), each overridden by a flag given."""

    model: str
    weights: str | None
    dataset: str | None
    data_root: str | None
    data: dict[str, Any]
    quant: QuantConfig
    finetune: FinetuneConfig
    seed: int
    device: str
    run_config: Path | None  # the config.yaml of the run whose settings these are
    run: SearchConfig | None = None


def policy_settings(args: argparse.Namespace) -> PolicySettings:
    """`PolicySettings` from the flags and the run that wrote ``args.policy``, so a run's
    reported top-1 is reproduced; a ``--model`` other than the run's drops the run's settings."""
    from haq.config import SearchConfig, check_device
    from haq.qmodel import QuantConfig
    from haq.train import FinetuneConfig

    if getattr(args, "finetune_epochs", None) is not None and args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    policy = getattr(args, "policy", None)
    beside = Path(policy).parent / "config.yaml" if policy else None
    run = (SearchConfig.from_run(beside, getattr(args, "allow_plugins", False))
           if beside is not None and beside.is_file() else None)
    if run is not None and args.model not in (None, run.model):
        run = None
    model = args.model or (run.model if run else None)
    if model is None:  # a policy file outside a run: the model it names, else the default
        meta = json.loads(Path(policy).read_text()) if policy and policy.endswith(".json") else {}
        model = meta.get("model") or "digits-mbv2"

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else getattr(run, key) if run else default

    finetune = run.finetune if run else FinetuneConfig()
    epochs = getattr(args, "finetune_epochs", None)
    finetune = dataclasses.replace(finetune, epochs=finetune.epochs if epochs is None else epochs,
                                   distill=finetune.distill or getattr(args, "distill", False))
    images = getattr(args, "train_images", None)
    if images is not None:  # 0: all of them
        finetune = dataclasses.replace(finetune, max_train_images=images or None)
    return PolicySettings(
        model=model,
        weights=pick(args.weights, "weights", None), dataset=pick(args.dataset, "dataset", None),
        data_root=pick(args.data_root, "data_root", None), data=dict(run.data) if run else {},
        quant=run.quant if run else QuantConfig(), finetune=finetune, seed=pick(args.seed, "seed", 0),
        device=check_device(pick(getattr(args, "device", None), "device", "cpu")), run_config=beside if run else None,
        run=run)


def cmd_eval(args: argparse.Namespace) -> int:
    import hw_models
    from haq.config import CONSTRAINTS
    from haq.evaluator import QuantEvaluator
    from haq.parts import load_model_and_data

    st = policy_settings(args)
    run = st.run
    hw = args.hw or (run.hw if run else "bismo-edge")
    hw_params = parse_params(args.hw_param) if args.hw_param else (run.hw_params if run and hw == run.hw else {})
    model_net, data, _ = load_model_and_data(st.model, st.weights, st.dataset, st.data_root, **st.data)
    ev = QuantEvaluator(model_net, data, st.quant, st.finetune, st.device, st.seed)
    policy = load_policy(args, ev.layers)
    splits = ev.evaluate_splits(policy, ("val", "test"))  # one finetune, measured on both
    metrics = splits["val"]
    cost_model = hw_models.create_hw_model(hw, **hw_params)
    costs = {}
    for metric in CONSTRAINTS.values():
        if metric in cost_model.metrics:
            table = cost_model.table(ev.layers, metric)
            total = hw_models.policy_cost(table, policy.bits)
            costs[metric] = {"cost": total, "ratio_to_w8a8": total / hw_models.policy_cost(table, [(8, 8)] * len(policy))}
    result = {"model": st.model, "policy": args.policy or args.uniform or "w8a8", "finetune_epochs": st.finetune.epochs,
              "train_images": st.finetune.max_train_images,  # None: all
              "distill": st.finetune.distill, "seed": st.seed, "run_config": str(st.run_config) if st.run_config else None,
              "fp_top1": ev.fp_metrics["top1"], "fp_top5": ev.fp_metrics["top5"], "top1": metrics["top1"],
              "top5": metrics["top5"], "test_top1": splits["test"]["top1"], "test_top5": splits["test"]["top5"],
              "hw": hw, "costs": costs}
    if args.json:
        print(json.dumps(result))
        return 0
    if run:
        print(f"the settings of the run that wrote the policy ({st.run_config}): model, weights, data, quantization, "
              f"finetune, seed {st.seed}, {hw}; flags override")
    print(f"{st.model}: float top-1 {result['fp_top1']:.2f}%  top-5 {result['fp_top5']:.2f}%")
    images = "all" if st.finetune.max_train_images is None else f"{st.finetune.max_train_images}"
    print(f"quantized ({result['policy']}, {st.finetune.epochs} finetune epoch(s) of {images} training images"
          f"{', distilled' if st.finetune.distill else ''}): top-1 {metrics['top1']:.2f}%  "
          f"top-5 {metrics['top5']:.2f}% on the search-validation split; held out (test split): top-1 "
          f"{result['test_top1']:.2f}%  top-5 {result['test_top5']:.2f}%")
    for metric, c in costs.items():
        print(f"{hw} {metric}: {c['cost']:.5g} ({c['ratio_to_w8a8']:.3f} x w8a8)")
    return 0
