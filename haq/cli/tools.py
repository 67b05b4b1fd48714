"""`haq cost`, `haq prune`, `haq export`, `haq hw list`, `haq models list`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from haq.cli.args import (
    UsageError,
    input_shape,
    load_policy,
    model_layers,
    parse_params,
    print_table,
)
from haq.cli.run import policy_settings


def cmd_cost(args: argparse.Namespace) -> int:
    import pandas as pd

    import hw_models

    layers = model_layers(args.model, input_shape(args.input_shape), args.num_classes)
    policy = load_policy(args, layers)
    model = hw_models.create_hw_model(args.hw, **parse_params(args.hw_param))
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
    print_table(rows, columns)
    for m in tables:
        print(f"total {m}: {totals[m]:.5g} {hw_models.METRIC_UNITS[m]} ({totals[m] / totals_8[m]:.3f} x w8a8 = "
              f"{totals_8[m]:.5g})")
    if args.csv:
        print(f"per-layer costs written to {args.csv}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    import torch

    import hw_models
    from haq.layers import extract_layers
    from haq.models import model_entry
    from haq.parts import load_model_and_data
    from haq.prune import PruneConfig, prune
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
    from haq.parts import load_model_and_data
    from haq.policy import Policy

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
    print_table(rows, ["name", "metrics", "doc"])
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from haq.models import list_models, model_entry

    rows = [{"name": n, "input": "x".join(map(str, model_entry(n).input_shape)), "dataset": model_entry(n).dataset,
             "doc": model_entry(n).doc} for n in list_models()]
    if args.json:
        print(json.dumps({"models": rows}))
        return 0
    print_table(rows, ["name", "input", "dataset", "doc"])
    return 0
