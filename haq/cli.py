"""The ``haq`` command line: search, eval, cost, hw list, models list.

User mistakes end with one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # torch-importing modules, loaded by the commands that need them
    from haq.config import SearchConfig
    from haq.qmodel import QuantConfig
    from haq.train import FinetuneConfig

EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in the command line or its inputs; printed as one line, exit code 2."""


# ---------------------------------------------------------------------------- helpers
def _parse_params(items: Sequence[str] | None) -> dict[str, Any]:
    """``["batch=4", "depthwise=literal"]`` -> {"batch": 4, "depthwise": "literal"} (YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--hw-param expects KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _input_shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"--input-shape expects C,H,W like 3,224,224, got {text!r}") from None
    if len(shape) != 3 or min(shape) < 1:
        raise UsageError(f"--input-shape expects three positive integers C,H,W, got {text!r}")
    return shape


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str], floatfmt: str = ".4g") -> None:
    def fmt(v: Any) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))


def _load_policy(args: argparse.Namespace, layers: list[Any]) -> Any:
    from haq.policy import Policy

    if getattr(args, "policy", None) and getattr(args, "uniform", None):
        raise UsageError("give either --policy FILE or --uniform wXaY, not both")
    if getattr(args, "policy", None):
        policy = Policy.load(args.policy)
        policy.check(layers)
        return policy
    return Policy.from_string(layers, getattr(args, "uniform", None) or "w8a8")


def _model_layers(name: str, input_shape: tuple[int, ...] | None, num_classes: int | None = None) -> list[Any]:
    from haq.layers import extract_layers
    from haq.models import model_entry

    entry = model_entry(name)
    model = entry.factory() if num_classes is None else entry.factory(num_classes=num_classes)
    return extract_layers(model, input_shape or entry.input_shape)


# ---------------------------------------------------------------------------- commands
SEARCH_FLAGS = ("model", "weights", "dataset", "data_root", "hw", "constraint", "budget", "episodes", "warmup",
                "seed", "device", "out", "min_bits", "max_bits", "pin_first_last", "workers", "ray_address", "reward_measure",
                "fill_budget")


def cmd_search(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from haq.config import SearchConfig, load_yaml
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
        search = Search.resume(args.resume, on_episode, episodes=args.episodes)
    else:
        data: dict[str, Any] = load_yaml(args.config) if args.config else {}
        for f in SEARCH_FLAGS:
            value = getattr(args, f)
            if value is not None:
                data[f] = value
        if args.hw_param:
            data["hw_params"] = {**data.get("hw_params", {}), **_parse_params(args.hw_param)}
        if args.finetune_epochs is not None:
            data["finetune"] = {**data.get("finetune", {}), "epochs": args.finetune_epochs}
        if args.distill:
            data["finetune"] = {**data.get("finetune", {}), "distill": True}
        if args.compile is not None:
            data["finetune"] = {**data.get("finetune", {}), "compile": args.compile}
        config = SearchConfig.from_dict(data, args.config or "flags")
        if config.out:
            check_fresh_run_dir(config.out)  # before loading anything
        print(f"preparing: model {config.model}, hardware {config.hw}, {config.constraint} budget {config.budget}",
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
        _print_table(rows, ["policy", "accuracy", "held_out", "cost_ratio"] if held
                     else ["policy", "accuracy", "cost_ratio"])
    if held:
        print("(accuracy: top-1 on the search-validation split, from which the search picked its best policy; "
              "held-out: on the test split, which it never saw)")
    print(f"results in {search.run_dir}/ (episodes.csv, best_policy.json, summary.json, policy.png, progress.png)")
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
    from haq.config import SearchConfig
    from haq.qmodel import QuantConfig
    from haq.train import FinetuneConfig

    if getattr(args, "finetune_epochs", None) is not None and args.finetune_epochs < 0:
        raise UsageError(f"--finetune-epochs must be >= 0, got {args.finetune_epochs}")
    policy = getattr(args, "policy", None)
    beside = Path(policy).parent / "config.yaml" if policy else None
    run = SearchConfig.from_run(beside) if beside is not None and beside.is_file() else None
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
        device=pick(getattr(args, "device", None), "device", "cpu"), run_config=beside if run else None, run=run)


def cmd_eval(args: argparse.Namespace) -> int:
    import hw_models
    from haq.config import CONSTRAINTS
    from haq.evaluator import QuantEvaluator
    from haq.search import load_model_and_data

    st = policy_settings(args)
    run = st.run
    hw = args.hw or (run.hw if run else "bismo-edge")
    hw_params = _parse_params(args.hw_param) if args.hw_param else (run.hw_params if run and hw == run.hw else {})
    model_net, data, _ = load_model_and_data(st.model, st.weights, st.dataset, st.data_root, **st.data)
    ev = QuantEvaluator(model_net, data, st.quant, st.finetune, st.device, st.seed)
    policy = _load_policy(args, ev.layers)
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


def cmd_cost(args: argparse.Namespace) -> int:
    import pandas as pd

    import hw_models

    layers = _model_layers(args.model, _input_shape(args.input_shape), args.num_classes)
    policy = _load_policy(args, layers)
    model = hw_models.create_hw_model(args.hw, **_parse_params(args.hw_param))
    tables = model.tables(layers)
    rows = []
    for i, (layer, (w, a)) in enumerate(zip(layers, policy.bits)):
        row: dict[str, Any] = {"layer": layer.name, "kind": layer.kind, "w_bits": w, "a_bits": a}
        for m, t in tables.items():
            row[m] = float(t[i, w - 1, a - 1])
            row[f"{m}_w8a8"] = float(t[i, 7, 7])
        rows.append(row)
    totals = {m: sum(r[m] for r in rows) for m in tables}
    totals_8 = {m: sum(r[f"{m}_w8a8"] for r in rows) for m in tables}
    if args.csv:
        pd.DataFrame(rows).to_csv(args.csv, index=False)
    if args.json:
        print(json.dumps({"model": args.model, "hw": args.hw, "units": model.units, "layers": rows,
                          "total": totals, "total_w8a8": totals_8}))
        return 0
    columns = ["layer", "kind", "w_bits", "a_bits", *tables]
    _print_table(rows, columns)
    for m in tables:
        print(f"total {m}: {totals[m]:.5g} {hw_models.METRIC_UNITS[m]} ({totals[m] / totals_8[m]:.3f} x w8a8 = "
              f"{totals_8[m]:.5g})")
    if args.csv:
        print(f"per-layer costs written to {args.csv}")
    return 0


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0)


def train_images(text: str) -> int:
    """argparse type: ``all`` (0: the whole search-train split) or a positive image count."""
    if text == "all":
        return 0
    try:
        return _int_at_least(text, 1)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"must be 'all' or an integer >= 1, got {text!r}") from None


def model_weights(text: str) -> tuple[str, str]:
    """argparse type: ``MODEL=PATH`` with PATH an existing file."""
    model, sep, path = text.partition("=")
    if not sep or not model or not path:
        raise argparse.ArgumentTypeError(f"must look like MODEL=PATH (e.g. mobilenet_v2=mbv2.pth), got {text!r}")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"weights file {path} (for {model}) does not exist")
    return model, path


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
    return value


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


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    import hw_models
    from haq.layers import extract_layers
    from haq.models import model_entry
    from haq.prune import PruneConfig, prune
    from haq.search import load_model_and_data
    from haq.train import evaluate

    config = PruneConfig(sparsity=args.sparsity, epochs=args.epochs, lr=args.lr, seed=args.seed)
    out = Path(args.out)
    if out.suffix not in (".pt", ".pth"):
        raise UsageError(f"--out {out}: give a .pt file for the pruned state dict")
    entry = model_entry(args.model)
    model, data, _ = load_model_and_data(args.model, args.weights, args.dataset, args.data_root)
    model, data = model.to(args.device), data.to(args.device)
    before = evaluate(model, data, data.val)["top1"]
    size = hw_models.create_hw_model("model-size")
    dense_layers = extract_layers(model, entry.input_shape)
    size_before = size.policy_cost(dense_layers, [(8, 8)] * len(dense_layers), "size_mb")
    print(f"{args.model}: top-1 {before:.2f}% dense; pruning to {config.sparsity:.1%} over {config.epochs} epochs",
          file=sys.stderr)
    metrics = prune(model, data, config, on_epoch=lambda e, s, a: print(
        f"  epoch {e}/{config.epochs}: sparsity {s:.3f}, top-1 {a:.2f}%", file=sys.stderr))
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out)
    layers = extract_layers(model, entry.input_shape)
    size_after = size.policy_cost(layers, [(8, 8)] * len(layers), "size_mb")
    print(f"pruned {args.model}: top-1 {metrics['top1']:.2f}% (dense {before:.2f}%), sparsity {metrics['sparsity']:.3f}, "
          f"8-bit size {size_after:.4f} MB (dense {size_before:.4f} MB, 4-bit relative indices)")
    print(f"wrote {out}; search it with: haq search --model {args.model} --weights {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import importlib.util

    import numpy as np
    import torch

    from haq.data import batches
    from haq.evaluator import QuantEvaluator
    from haq.export import export_onnx, export_pytorch, load_quantized, onnx_logits
    from haq.policy import Policy
    from haq.search import load_model_and_data

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"export needs {' and '.join(missing)}: pip install 'haq-engine[export]' (or pip install "
                         f"{' '.join(missing)})")
    policy = Policy.load(args.policy)
    st = policy_settings(args)
    name = st.model
    model, data, kwargs = load_model_and_data(name, st.weights, st.dataset, st.data_root, **st.data)
    ev = QuantEvaluator(model, data, st.quant, st.finetune, "cpu", st.seed)
    policy.check(ev.layers)
    metrics = ev.evaluate(policy)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pt_bytes = export_pytorch(ev.qmodel, out / "model.haq.pt", {"model": name, "model_kwargs": kwargs,
                                                                 "policy": policy.to_dict(), "top1": metrics["top1"]})
    onnx_bytes = export_onnx(ev.qmodel, out / "model.onnx")
    float_path = out / "float_state_dict.pt"
    torch.save(model.state_dict(), float_path)  # the evaluator quantized a copy: `model` is still float
    float_bytes = float_path.stat().st_size
    float_path.unlink()
    x = torch.cat([b for b, _ in batches(data.val, data, 512)]).cpu()
    y = data.val.labels.cpu().numpy()
    model = ev.qmodel.model.eval()
    with torch.no_grad():
        ref = model(x.to(ev.device)).float().cpu().numpy()
        art = load_quantized(out / "model.haq.pt")(x).numpy()
    ort = onnx_logits(out / "model.onnx", x.numpy())
    w_bits = [w for w, _ in policy.bits]
    n_w = [layer.n_weights for layer in ev.layers]
    report = {
        "model": name, "policy": args.policy, "finetune_epochs": st.finetune.epochs,
        "train_images": st.finetune.max_train_images,  # None: all
        "top1_fake_quant": float((ref.argmax(1) == y).mean() * 100),
        "top1_artifact": float((art.argmax(1) == y).mean() * 100),
        "top1_onnxruntime": float((ort.argmax(1) == y).mean() * 100),
        "max_abs_logit_diff_artifact": float(np.abs(art - ref).max()),
        "max_abs_logit_diff_onnxruntime": float(np.abs(ort - ref).max()),
        "bytes_float_state_dict": float_bytes, "bytes_artifact": pt_bytes, "bytes_onnx": onnx_bytes,
        "artifact_over_float": pt_bytes / float_bytes,
        "mean_weight_bits_over_32": float(np.average(w_bits, weights=n_w) / 32),
        "bytes_packed_weights": int(sum(np.ceil(n * w / 8) for n, w in zip(n_w, w_bits))),
        "bytes_float_weights": int(4 * sum(n_w)),
    }
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"exported {name} with {args.policy} to {out}/ (model.haq.pt, model.onnx, export.json)")
    print(f"top-1 on search-val: fake-quantized {report['top1_fake_quant']:.2f}%, artifact "
          f"{report['top1_artifact']:.2f}%, onnxruntime {report['top1_onnxruntime']:.2f}%")
    print(f"max |logit difference| vs the fake-quantized model: artifact "
          f"{report['max_abs_logit_diff_artifact']:.3g}, onnxruntime {report['max_abs_logit_diff_onnxruntime']:.3g}")
    print(f"size: artifact {pt_bytes} B = {report['artifact_over_float']:.3f} x the float state dict "
          f"({float_bytes} B); quantized weights {report['bytes_packed_weights']} B vs "
          f"{report['bytes_float_weights']} B float (mean weight bits / 32 = {report['mean_weight_bits_over_32']:.3f}); "
          "the rest is biases and BatchNorm, kept in float")
    return 0


def cmd_hw_list(args: argparse.Namespace) -> int:
    import hw_models

    rows = []
    for name in hw_models.list_hw_models():
        if name == "lookup":
            rows.append({"name": name, "metrics": "from the file", "doc": "costs read from a per-layer table file (path=...)"})
            continue
        d = hw_models.create_hw_model(name).describe()
        rows.append({"name": name, "metrics": ", ".join(f"{m} ({u})" for m, u in d["metrics"].items()),
                     "doc": d["doc"], "params": d["params"]})
    if args.json:
        print(json.dumps({"hw_models": rows}))
        return 0
    _print_table(rows, ["name", "metrics", "doc"])
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from haq.models import list_models, model_entry

    rows = [{"name": n, "input": "x".join(map(str, model_entry(n).input_shape)), "dataset": model_entry(n).dataset,
             "doc": model_entry(n).doc} for n in list_models()]
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    _print_table(rows, ["name", "input", "dataset", "doc"])
    return 0


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="haq", description="Hardware-aware automated mixed-precision quantization (HAQ).")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress messages")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("search", help="search a mixed-precision policy (defaults: the embedded digits model)")
    s.add_argument("--config", help="YAML file with SearchConfig keys; flags override it")
    s.add_argument("--model", help="model name (haq models list) or package.module:factory")
    s.add_argument("--weights", help="local state-dict file for the model")
    s.add_argument("--dataset", help="digits | cifar10 | imagenet | imagenet100 (default: the model's)")
    s.add_argument("--data-root", dest="data_root", help="local folder of the dataset (never downloaded)")
    s.add_argument("--hw", help="hardware cost model (haq hw list) or package.module:Class")
    s.add_argument("--hw-param", dest="hw_param", action="append", metavar="KEY=VALUE",
                   help="override a hardware model parameter (repeatable), e.g. batch=4")
    s.add_argument("--constraint", choices=["latency", "energy", "size"])
    s.add_argument("--budget", help="ratio of the w8a8 cost (0.5) or a uniform policy to match (w4a4)")
    s.add_argument("--no-held-out", dest="held_out", action="store_false",
                   help="skip measuring the best and the uniform policies on the held-out test split at the end "
                        "(one more finetune each)")
    s.add_argument("--episodes", type=int, help="episodes in total, warm-up included (default 100)")
    s.add_argument("--warmup", type=int, help="random warm-up episodes (default 20)")
    s.add_argument("--seed", type=int)
    s.add_argument("--device", help="cpu, cuda, cuda:1, ...")
    s.add_argument("--out", help="run directory (default runs/<time>-<model>-<hw>)")
    s.add_argument("--min-bits", dest="min_bits", type=int)
    s.add_argument("--max-bits", dest="max_bits", type=int)
    s.add_argument("--pin-first-last", dest="pin_first_last", action=argparse.BooleanOptionalAction, default=None,
                   help="hold the first and last layer at max bits")
    s.add_argument("--reward-measure", dest="reward_measure", choices=["top1", "p_true"],
                   help="what the reward reads on search-validation: top1 (default, the paper's) or p_true, the mean "
                        "true-class probability (less noisy on small splits)")
    s.add_argument("--fill-budget", dest="fill_budget", action=argparse.BooleanOptionalAction, default=None,
                   help="after budget enforcement, raise the lowest bitwidths while the budget allows, so no policy "
                        "leaves budget unspent (not the paper's; default off)")
    s.add_argument("--finetune-epochs", dest="finetune_epochs", type=int, help="finetune epochs per evaluation")
    s.add_argument("--distill", action="store_true",
                   help="knowledge distillation from the float model in every finetune (finetune.distill)")
    s.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the quantized model once; every policy reuses it (finetune.compile; "
                        "default: on with --device cuda, off on CPU)")
    s.add_argument("--workers", type=int, help="evaluate this many policies at once on Ray workers (default 1)")
    s.add_argument("--ray-address", dest="ray_address", help="Ray cluster to join (default: a local Ray instance)")
    s.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted search from its last complete episode")
    s.set_defaults(func=cmd_search)

    def model_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--model", default="digits-mbv2")
        q.add_argument("--hw", default="bismo-edge")
        q.add_argument("--hw-param", dest="hw_param", action="append", metavar="KEY=VALUE")
        q.add_argument("--policy", help="policy file (JSON or CSV) from a search")
        q.add_argument("--uniform", help="a uniform policy such as w4a4 (default w8a8)")
        q.add_argument("--json", action="store_true", help="print one JSON object")

    e = sub.add_parser("eval", help="quantize with a policy, finetune, report accuracy and cost",
                       description="A policy file in a run directory is evaluated with that run's settings "
                       "(config.yaml beside it: model, weights, data, quantization, finetune, seed, hardware), "
                       "which reproduces its reported top-1; the flags below override them.")
    model_args(e)
    e.set_defaults(model=None, hw=None)  # None: the run's, else digits-mbv2 / bismo-edge
    e.add_argument("--weights")
    e.add_argument("--dataset")
    e.add_argument("--data-root", dest="data_root")
    e.add_argument("--finetune-epochs", dest="finetune_epochs", type=int,
                   help="finetune epochs (default: the run's, else 1)")
    e.add_argument("--train-images", dest="train_images", type=train_images, metavar="N|all",
                   help="training images an epoch: 'all', or the first N shuffled (default: the run's, else all); "
                        "'--finetune-epochs 3 --train-images all' on a table search's policy is the paper's final finetune")
    e.add_argument("--distill", action="store_true", help="distil from the float model in the finetune")
    e.add_argument("--device", help="default: the run's, else cpu")
    e.add_argument("--seed", type=int, help="finetune seed (default: the run's, else 0)")
    e.set_defaults(func=cmd_eval)

    c = sub.add_parser("cost", help="per-layer and total hardware cost of a policy")
    model_args(c)
    c.add_argument("--input-shape", dest="input_shape", help="C,H,W for a model given as module:factory")
    c.add_argument("--num-classes", dest="num_classes", type=positive_int,
                   help="classifier outputs (default: the model's; 100 prices mobilenet_v2 on haq-mbv2-cloud)")
    c.add_argument("--csv", help="also write the per-layer costs to this CSV file")
    c.set_defaults(func=cmd_cost)

    t = sub.add_parser("table", help="reproduce one of the paper's tables (latency, energy, size)")
    t.add_argument("table", help="latency | energy | size (experiments/configs/<table>.yaml)")
    t.add_argument("--scale", choices=["mini", "paper"], default="mini",
                   help="mini: the digits models on CPU (minutes a search, 20 minutes to hours a table); paper: ImageNet-100 and the paper's models on a GPU")
    t.add_argument("--seeds", type=int, nargs="+", help="seeds (default: the scale's)")
    t.add_argument("--models", nargs="+", help="only these of the scale's models (default: all)")
    t.add_argument("--episodes", type=int, help="override the episodes of every search")
    t.add_argument("--data-root", dest="data_root", help="local ImageNet folder (paper scale)")
    t.add_argument("--device", help="cpu, cuda, ... (default: the scale's)")
    t.add_argument("--jobs", type=positive_int, default=1,
                   help="run this many searches at once, each in its own process with cores/N threads (default 1)")
    t.add_argument("--workers", type=int, help="evaluate this many policies at once on Ray workers")
    t.add_argument("--ray-address", dest="ray_address", help="Ray cluster to join (default: a local Ray instance)")
    t.add_argument("--weights", nargs="+", action="extend", type=model_weights, metavar="MODEL=PATH",
                   help="a local weights file for each of the scale's models that has no training of its own "
                   "(the paper scale's ImageNet networks)")
    t.add_argument("--runs", default="runs/tables", help="where the searches' run directories go")
    t.add_argument("--results", help="where the CSV, markdown and figures go (default experiments/results; "
                   "RUNS/results when --models, --seeds, --episodes or --refits is given)")
    t.add_argument("--config-dir", dest="config_dir", help="folder of the table YAMLs (default experiments/configs)")
    t.add_argument("--distill", action="store_true",
                   help="distil from the float model in every finetune (results as <table>-<scale>-distill)")
    t.add_argument("--refits", type=nonnegative_int,
                   help="further finetunes of each row's policy, measured held out (default: the table YAML's "
                        "`refits`, 4); 0 for a quick look")
    t.add_argument("--render-only", action="store_true", help="re-render the markdown from the CSV")
    t.set_defaults(func=cmd_table)

    pr = sub.add_parser("prune", help="gradual magnitude pruning (Zhu & Gupta 2017) of a trained model")
    pr.add_argument("--model", default="digits-mbv2")
    pr.add_argument("--weights", help="local state dict to start from (default: the model's own)")
    pr.add_argument("--dataset")
    pr.add_argument("--data-root", dest="data_root")
    pr.add_argument("--sparsity", type=float, default=0.75, help="final fraction of zero weights per layer")
    pr.add_argument("--epochs", type=int, default=10)
    pr.add_argument("--lr", type=float, default=0.02)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--device", default="cpu")
    pr.add_argument("--out", required=True, help="where to write the pruned state dict (.pt)")
    pr.set_defaults(func=cmd_prune)

    ex = sub.add_parser("export", help="export a policy's quantized model (PyTorch integer artifact + ONNX Q/DQ)",
                        description="A policy file in a run directory is quantized and finetuned with that run's "
                        "settings (config.yaml beside it); the flags override them.")
    ex.add_argument("--policy", required=True, help="policy file (JSON or CSV), e.g. a run's best_policy.json")
    ex.add_argument("--out", required=True, help="output directory")
    ex.add_argument("--model", help="model name (default: the policy file's, else digits-mbv2)")
    ex.add_argument("--weights")
    ex.add_argument("--dataset")
    ex.add_argument("--data-root", dest="data_root")
    ex.add_argument("--finetune-epochs", dest="finetune_epochs", type=int,
                    help="finetune epochs (default: the run's, else 1)")
    ex.add_argument("--train-images", dest="train_images", type=train_images, metavar="N|all",
                    help="training images an epoch: 'all', or the first N shuffled (default: the run's, else all)")
    ex.add_argument("--seed", type=int, help="finetune seed (default: the run's, else 0)")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    hw = sub.add_parser("hw", help="hardware cost models")
    hw_sub = hw.add_subparsers(dest="hw_command", required=True)
    hl = hw_sub.add_parser("list", help="list the hardware cost models")
    hl.add_argument("--json", action="store_true")
    hl.set_defaults(func=cmd_hw_list)

    m = sub.add_parser("models", help="networks")
    m_sub = m.add_subparsers(dest="models_command", required=True)
    ml = m_sub.add_parser("list", help="list the registered networks")
    ml.add_argument("--json", action="store_true")
    ml.set_defaults(func=cmd_models_list)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # training a registered model on first use takes a minute or two: say so, even without -v
    logging.getLogger("haq.models").setLevel(logging.INFO)
    try:
        return int(args.func(args))
    except (UsageError, ValueError, FileNotFoundError, FileExistsError, TypeError) as exc:
        print(f"haq {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("\ninterrupted; continue with: haq search --resume <run directory>", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
