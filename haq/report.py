"""Plots of a search: the per-layer policy and the progress over episodes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from hw_models import LayerSpec


def plot_policy(layers: Sequence[LayerSpec], policy: Sequence[tuple[int, int]], path: str | os.PathLike[str],
                title: str = "", cost_at_8: np.ndarray | None = None, cost_label: str = "cost at w8a8") -> None:
    """Bars of weight and activation bits per layer (depthwise layers hatched), with the
    layer's hardware cost at 8 bits beneath when given."""
    n = len(layers)
    rows = 2 if cost_at_8 is not None else 1
    fig, axes = plt.subplots(rows, 1, figsize=(max(8, n * 0.35), 3.2 * rows), sharex=True, squeeze=False)
    ax = axes[0, 0]
    x = np.arange(n)
    w = [p[0] for p in policy]
    a = [p[1] for p in policy]
    dw = [l.kind == "dwconv" for l in layers]
    bw = ax.bar(x - 0.2, w, 0.4, label="weight bits", color="#3b6fb6")
    ba = ax.bar(x + 0.2, a, 0.4, label="activation bits", color="#e08a2c")
    for i, is_dw in enumerate(dw):
        if is_dw:
            bw[i].set_hatch("//")
            ba[i].set_hatch("//")
    ax.set_ylabel("bits")
    ax.set_ylim(0, 8.8)
    ax.set_yticks(range(9))
    ax.bar([0], [0], color="white", edgecolor="black", hatch="//", label="depthwise layer")
    ax.legend(loc="upper right", ncol=3, fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    if cost_at_8 is not None:
        cax = axes[1, 0]
        cax.bar(x, cost_at_8, color=["#8c5ab4" if d else "#7a7a7a" for d in dw])
        cax.set_ylabel(cost_label, fontsize=8)
        cax.grid(axis="y", alpha=0.3)
    bottom = axes[-1, 0]
    bottom.set_xticks(x)
    bottom.set_xticklabels([l.name for l in layers], rotation=90, fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_progress(records: Sequence[dict[str, Any]], path: str | os.PathLike[str], budget_ratio: float | None = None,
                  warmup: int = 0) -> None:
    """Reward (with a running best) and cost ratio over episodes."""
    ep = np.array([r["episode"] for r in records], dtype=float)
    reward = np.array([float(r["reward"]) for r in records])
    ratio = np.array([float(r["cost_ratio"]) for r in records])
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True)
    ax1.plot(ep, reward, ".", ms=3, alpha=0.6, label="reward")
    ax1.plot(ep, np.maximum.accumulate(reward), "-", label="best so far")
    if len(reward) >= 10:
        k = max(5, len(reward) // 20)
        smooth = np.convolve(reward, np.ones(k) / k, mode="valid")
        ax1.plot(ep[k - 1:], smooth, "-", alpha=0.8, label=f"mean of {k}")
    ax1.set_ylabel("reward")
    ax1.legend(fontsize=8)
    ax1.grid(alpha=0.3)
    ax2.plot(ep, ratio, ".", ms=3, alpha=0.6, label="cost / cost(w8a8)")
    if budget_ratio is not None:
        ax2.axhline(budget_ratio, color="red", ls="--", lw=1, label="budget")
    ax2.set_ylabel("cost ratio")
    ax2.set_xlabel("episode")
    ax2.legend(fontsize=8)
    ax2.grid(alpha=0.3)
    for ax in (ax1, ax2):
        if warmup:
            ax.axvspan(0.5, warmup + 0.5, color="grey", alpha=0.12, lw=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_policies_side_by_side(layers: Sequence[LayerSpec], policies: dict[str, tuple[Sequence[tuple[int, int]], str]],
                               costs_at_8: dict[str, np.ndarray], path: str | os.PathLike[str], title: str = "") -> None:
    """HAQ Figures 3-4: the policies of one model on two (or more) hardware models, one
    row each (weight bits up, activation bits down, depthwise layers hatched), and each
    layer's share of the whole network's cost at w8a8 on each hardware beneath."""
    n, hws = len(layers), list(policies)
    fig, axes = plt.subplots(len(hws) + 1, 1, figsize=(max(9, n * 0.4), 2.8 * (len(hws) + 1)), sharex=True)
    x = np.arange(n)
    dw = np.array([l.kind == "dwconv" for l in layers])
    for ax, hw in zip(axes, hws):
        policy, label = policies[hw]
        w = np.array([p[0] for p in policy])
        a = np.array([p[1] for p in policy])
        bw = ax.bar(x, w, 0.7, color="#3b6fb6", label="weight bits")
        ba = ax.bar(x, -a, 0.7, color="#e08a2c", label="activation bits")
        for i in np.flatnonzero(dw):
            bw[i].set_hatch("//")
            ba[i].set_hatch("//")
        ax.axhline(0, color="black", lw=0.6)
        ax.set_ylim(-8.8, 8.8)
        ax.set_yticks(range(-8, 9, 2))
        ax.set_yticklabels([str(abs(t)) for t in range(-8, 9, 2)])
        ax.set_ylabel("bits (w up, a down)", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0].bar([0], [0], color="white", edgecolor="black", hatch="//", label="depthwise layer")
    axes[0].legend(loc="upper right", ncol=3, fontsize=7)
    cax = axes[-1]
    width = 0.8 / len(hws)
    for k, hw in enumerate(hws):
        c = np.asarray(costs_at_8[hw], dtype=float)
        cax.bar(x - 0.4 + width * (k + 0.5), c / c.sum(), width, label=hw)
    cax.set_ylabel("share of cost at w8a8", fontsize=8)
    cax.legend(fontsize=7)
    cax.grid(axis="y", alpha=0.3)
    cax.set_xticks(x)
    cax.set_xticklabels([("[dw] " if d else "") + l.name for l, d in zip(layers, dw)], rotation=90, fontsize=6)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


_METHOD_STYLE = {"haq": ("o", "#3b6fb6", "haq search"), "random": ("^", "#e08a2c", "random search")}


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def plot_tradeoff(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str], cost_label: str,
                  title: str = "", fixed_name: str = "fixed bits, same finetune", refits: int = 0) -> None:
    """Top-1 against cost (over uniform w8a8's) of every row of a table, one panel per model
    and hardware: the fixed-bit baselines as a line, each search method's best policy per
    budget as a point; mean +- std over seeds both ways. With a ``test_accuracy`` in the rows, a
    second line of panels shows the held-out top-1 of the same networks, and with a
    ``test_accuracy_refits`` a third, the held-out mean over `refits` more finetunes. A searched point
    above the line beats the fixed-bit policies of its cost, the paper's claim (HAQ Tables 2-4).
    The axis spans the fixed-bit and haq points; others far below (w2a2, random search on a
    deep network) are pinned to its bottom edge and their values listed in the corner."""
    panels: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        panels.setdefault((str(r["model"]), str(r["hw"])), []).append(r)
    kinds = [("accuracy", "top-1 (%), search-validation"), ("test_accuracy", "top-1 (%), held out"),
             ("test_accuracy_refits", f"top-1 (%), held out, mean of {refits} refits")]
    kinds = [kinds[0]] + [kd for kd in kinds[1:] if rows and all(_number(r.get(kd[0])) is not None for r in rows)]
    fig, axes = plt.subplots(len(kinds), len(panels), figsize=(4.2 * len(panels), 3.6 * len(kinds)), squeeze=False)
    for col, ((model, hw), prow) in enumerate(panels.items()):
        groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for r in prow:
            label = str(r["policy"]) if r["method"] == "fixed" else str(r["budget"])
            groups.setdefault((str(r["method"]), label), []).append(r)
        fp = _number(prow[0].get("fp_accuracy"))
        for line, (key, ylabel) in enumerate(kinds):
            ax = axes[line, col]
            pts = {g: (*_mean_std([float(r["cost_ratio"]) for r in rs]), *_mean_std([float(r[key]) for r in rs]))
                   for g, rs in groups.items()}  # (x, x std, y, y std)
            top = max(p[2] for p in pts.values())
            framed = [p[2] - p[3] for g, p in pts.items() if g[0] in ("fixed", "haq")] or [top]
            low = max(min(framed) - 0.5, top - 15.0)
            below: list[str] = []
            for method in dict.fromkeys(["fixed", *(m for m, _ in groups)]):
                mine = sorted(((g[1], p) for g, p in pts.items() if g[0] == method), key=lambda t: t[1][0])
                if not mine:
                    continue
                marker, color, name = (("s", "#555555", fixed_name) if method == "fixed" else
                                       _METHOD_STYLE.get(method, ("D", "#6a9f3a", f"{method} search")))
                inside = [(n, p) for n, p in mine if p[2] >= low]
                if method == "fixed":
                    ax.plot([p[0] for _, p in mine], [max(p[2], low) for _, p in mine], "-", color=color, lw=1.2)
                if inside:
                    ax.errorbar([p[0] for _, p in inside], [p[2] for _, p in inside],
                                xerr=[p[1] for _, p in inside], yerr=[p[3] for _, p in inside], fmt=marker,
                                color=color, ms=5 if method == "fixed" else 6, capsize=2, lw=0.8,
                                label=name if method == "fixed" else f"{name} (best policy)")
                for n, (x, _, y, _) in mine:
                    if y < low:
                        ax.plot([x], [low], "v", color=color, ms=6)
                        below.append(f"{n}: {y:.1f}" if method == "fixed" else f"{method}, budget {n}: {y:.1f}")
                    elif method == "fixed":
                        ax.annotate(n, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7, color=color)
            if below:
                ax.text(0.98, 0.03, "below the axis (v):\n" + "\n".join(below), transform=ax.transAxes, ha="right",
                        va="bottom", fontsize=6, color="#333333",
                        bbox={"facecolor": "white", "edgecolor": "#cccccc", "alpha": 0.9})
            if fp is not None and key == "accuracy":
                ax.axhline(fp, color="black", ls=":", lw=0.8, label="float model")
            ax.set_ylim(low - 0.3, max(top, fp if fp is not None and key == "accuracy" else top) + 0.6)
            ax.set_xlabel(cost_label, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
            ax.set_title(f"{model}, {hw}", fontsize=9)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
    legend: dict[str, Any] = {}  # every panel's entries once: a method may sit below one panel's axis only
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    ncol = max(1, min(len(legend), int(fig.get_figwidth() // 2.3)))  # ~2.3 inches a label at this size
    legend_rows = -(-len(legend) // ncol)
    fig.legend(list(legend.values()), list(legend), loc="lower center", ncol=ncol, fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, (0.1 + 0.25 * legend_rows) / fig.get_figheight(), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _number(value: Any) -> float | None:
    """`value` as a float, or None when it is missing (None, NaN, an empty CSV cell)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if np.isnan(v) else v


def plot_sweep(df: Any, path: str | os.PathLike[str], title: str = "") -> None:
    """Held-out top-1 against cost / w8a8: the searched policies of a sweep (one per budget, joined in
    cost order) and the uniform policies (labelled), from `haq.sweep.run_sweep`'s rows."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    searched = df[df["kind"] == "searched"].sort_values("cost_ratio")
    uniform = df[df["kind"] == "uniform"].sort_values("cost_ratio")
    ax.plot(uniform["cost_ratio"], uniform["test_accuracy"], "s--", color="#7a7a7a", label="uniform bits")
    for r in uniform.to_dict("records"):
        ax.annotate(r["policy"], (r["cost_ratio"], r["test_accuracy"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color="#555555")
    method = searched["method"].iloc[0] if len(searched) else "search"
    ax.plot(searched["cost_ratio"], searched["test_accuracy"], "o-", color="#3b6fb6", label=f"{method}, returned policy")
    for i, r in enumerate(searched.sort_values("cost_ratio").to_dict("records")):  # neighbours' labels staggered
        ax.annotate(f"budget {r['budget']}", (r["cost_ratio"], r["test_accuracy"]), textcoords="offset points",
                    xytext=(-8, 6 + 10 * (i % 2)), fontsize=7, color="#3b6fb6")
    ax.set_ylim(top=float(df["test_accuracy"].max()) + 8)  # room for the labels above the top points
    ax.set_xlabel("cost / w8a8")
    ax.set_ylabel("held-out top-1 (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
