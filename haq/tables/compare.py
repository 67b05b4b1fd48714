"""The methods of a table side by side: each against the uniform policy of its budget (Welch's
t-test over the refits), the weight bits each puts where the hardware gives them away, and each
hardware's policies priced on the other hardware (HAQ Table 1 at the table's scale)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

import hw_models
from haq.config import budget_kind
from haq.tables.stats import SIGNIFICANCE, signed, significantly_below
from hw_models.scaling import bit_scaling

METHOD_NAMES = {"haq": "DDPG (HAQ)", "ilp": "ILP", "random": "random"}
"""How the markdown names a table's methods."""


def against_uniform(df: pd.DataFrame, alpha: float = SIGNIFICANCE) -> pd.DataFrame:
    """Per searched row (any method): its held-out top-1 over the refits against the uniform policy
    of its budget (`budget_policy`; same model, hardware and seed). Columns: model, hw, budget,
    ``uniform`` (that policy), method, seed,
    ``gain`` (points, refit means), ``significant`` (Welch's t-test over the refits, one-sided, level
    `alpha`: the searched row is the more accurate), ``uniform_loss`` (the uniform policy's refit
    mean below w8a8's, points; NaN without a w8a8 row), ``finetunes`` (the search's count; NaN where
    not recorded). Empty without refit spreads or budget rows."""
    cols = ("test_accuracy_refits", "test_accuracy_refits_sd", "refits")
    if not all(c in df.columns for c in cols):
        return pd.DataFrame()
    fixed = df[df["method"] == "fixed"]
    out = []
    for r in df[df["method"] != "fixed"].to_dict("records"):
        f = fixed[(fixed["model"] == r["model"]) & (fixed["hw"] == r["hw"]) & (fixed["seed"] == r["seed"])]
        u = budget_policy(f, str(r["budget"]), float(r["cost"]) / float(r["cost_ratio"]))
        w8 = f[f["policy"] == "w8a8"]
        if u is None:
            continue
        m, sd, n = (_number(r[c]) for c in cols)
        um, usd, un = (_number(u[c]) for c in cols)
        if np.isnan([m, sd, n, um, usd, un]).any():  # one refit has no spread to test
            continue
        out.append({"model": r["model"], "hw": r["hw"], "budget": r["budget"], "uniform": u["policy"], "method": r["method"],
                    "seed": r["seed"], "gain": m - um,
                    "significant": significantly_below(um, usd, int(un), m, sd, int(n), alpha),
                    "uniform_loss": _number(w8.iloc[0]["test_accuracy_refits"]) - um if len(w8) else np.nan,
                    "finetunes": _number(r.get("finetunes", ""))})
    return pd.DataFrame(out)


def _number(value: object) -> float:
    """A CSV cell as a float; NaN for a blank one."""
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def budget_policy(fixed: pd.DataFrame, budget: str, w8a8_cost: float) -> pd.Series | None:
    """The uniform policy a budget is compared with: the one it names, or for a ratio budget the
    costliest fixed-bit row within it (`fixed`: one model, hardware and seed); None if there is none."""
    kind, value = budget_kind(budget)
    if kind == "uniform":
        same = fixed[fixed["policy"] == budget]
    else:
        within = fixed[fixed["cost"] <= value * w8a8_cost * (1 + 1e-9)]
        same = within.sort_values("cost").tail(1)
    return None if same.empty else same.iloc[0]


def methods_section(df: pd.DataFrame, refits: str, matter: float = 2.0) -> list[str]:
    """Markdown: per model, hardware and budget, what the uniform policy loses against w8a8 and each
    method's gain over it (mean over seeds) with the seeds where the gain is significant; then
    where each method wins, where DDPG loses to ILP, and whether at every budget where uniform bits
    lose `matter` points or more the best method is significant in at least two thirds of the seeds."""
    cmp = against_uniform(df)
    if cmp.empty:
        return []
    methods = [m for m in METHOD_NAMES if m in set(cmp["method"])]
    lines = ["## The methods against the uniform policy of their budget", "",
             f"Each searched row's returned policy against the uniform policy its budget names, held out over "
             f"{refits}: the mean gain over the seeds, and in how many seeds it is significantly more accurate "
             f"(Welch's t-test over the refits, one-sided, {SIGNIFICANCE:.0%}). Every method ran the same number of "
             "episodes and the same final selection; `finetunes` is the mean count a search ran in all.", "",
             "| model | hardware | budget | uniform vs w8a8 (points) | "
             + " | ".join(f"{METHOD_NAMES[m]}: gain, significant" for m in methods) + " | finetunes |",
             "|---|---|---|---|" + "---|" * len(methods) + "---|"]
    verdicts, wins, ddpg_loses = [], {m: 0 for m in methods}, []
    for (model, hw, budget), g in cmp.groupby(["model", "hw", "budget"], sort=False):
        cells, best = [], None
        for m in methods:
            h = g[g["method"] == m]
            if h.empty:
                cells.append("")
                continue
            k = int(h["significant"].sum())
            cells.append(f"{signed(h['gain'].mean())}, {k} of {len(h)}")
            if best is None or (k, h["gain"].mean()) > best[1:]:
                best = (m, k, h["gain"].mean())
        finetunes = g.groupby("method")["finetunes"].mean()
        uniform = g["uniform"].iloc[0]
        label = budget if uniform == budget else f"{budget} (uniform within it: {uniform})"
        lines.append(f"| {model} | {hw} | {label} | {signed(-g['uniform_loss'].mean())} | " + " | ".join(cells)
                     + f" | {' / '.join(f'{finetunes[m]:.0f}' for m in methods if m in finetunes.index)} |")
        if best is not None:
            wins[best[0]] += 1
        means = g.groupby("method")["gain"].mean()
        if "haq" in means and "ilp" in means and means["ilp"] > means["haq"]:
            ddpg_loses.append(f"{model} on {hw} at {budget} ({signed(means['haq'])} against {signed(means['ilp'])})")
        if g["uniform_loss"].mean() >= matter and best is not None:
            verdicts.append((f"{model} on {hw} at {budget}", METHOD_NAMES[best[0]], best[1], len(g[g['method'] == best[0]])))
    lines += ["", "Where each method does best (most significant seeds, then the larger mean gain): "
              + "; ".join(f"{METHOD_NAMES[m]} at {n} of {sum(wins.values())} budgets" for m, n in wins.items()) + "."]
    if ddpg_loses:
        lines += ["", f"DDPG loses to ILP (a smaller mean gain) at {len(ddpg_loses)} of {sum(wins.values())} budgets: "
                  + "; ".join(ddpg_loses) + "."]
    if verdicts:
        held = [v for v in verdicts if v[2] >= math.ceil(2 * v[3] / 3)]
        lines += ["", f"Where uniform bits lose {matter:g} points or more against w8a8 ({len(verdicts)} "
                  f"budget{'s' if len(verdicts) != 1 else ''}), the "
                  f"best method is significantly more accurate than the uniform policy in at least two thirds of its "
                  f"seeds at "
                  f"{len(held)} of them: " + "; ".join(f"{w}: {m}, {k} of {n}" for w, m, k, n in verdicts) + "."]
    return lines


def free_bits(df: pd.DataFrame, layers: dict[str, list[hw_models.LayerSpec]], metric: str) -> pd.DataFrame:
    """Per model, hardware and method: the mean weight bits the returned policies (over seeds and
    budgets) give the layers whose cost does not follow the weight bits (`hw_models.scaling.bit_scaling`
    says ``activation``: ``free``) and the other layers (``others``); ``free_layers`` of ``layers``.
    Hardware whose every layer is one kind is left out."""
    rows = []
    for (model, hw, method), g in df[df["method"] != "fixed"].groupby(["model", "hw", "method"], sort=False):
        scaling = np.array(bit_scaling(hw_models.create_hw_model(hw).table(layers[model], metric)))
        free = scaling == "activation"
        if free.all() or not free.any():
            continue
        w = np.array([[int(b) for b in s.split()] for s in g["w_bits"]])
        if w.ndim != 2 or w.shape[1] != len(free):  # not this model's policies: nothing to read
            continue
        rows.append({"model": model, "hw": hw, "method": method, "free_layers": int(free.sum()), "layers": len(free),
                     "free": float(w[:, free].mean()), "others": float(w[:, ~free].mean())})
    return pd.DataFrame(rows)


def free_weight_bits(df: pd.DataFrame, layers: dict[str, list[hw_models.LayerSpec]], metric: str) -> list[str]:
    """Markdown of `free_bits`."""
    rows = free_bits(df, layers, metric)
    if rows.empty:
        return []
    lines = ["## Weight bits where the hardware gives them away", "",
             "Mean weight bits of the returned policies (over seeds and budgets) on the layers whose cost does not "
             "follow the weight bits (their cost table halves with the activation bits only: memory-bound layers "
             "streaming activations) and on the others. A hardware-aware search spends weight bits where they cost "
             "nothing.", "",
             "| model | hardware | method | free layers | weight bits, free layers | weight bits, others |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['hw']} | {METHOD_NAMES.get(r['method'], r['method'])} | {r['free_layers']} of "
              f"{r['layers']} | {r['free']:.2f} | {r['others']:.2f} |" for r in rows.to_dict("records")]
    lines += ["", f"The free layers get more weight bits in {int((rows['free'] > rows['others']).sum())} of "
                  f"{len(rows)} rows."]
    return lines


def cross_pricing(df: pd.DataFrame, layers: dict[str, list[hw_models.LayerSpec]], metric: str,
                  hardware: list[str]) -> list[str]:
    """Markdown: each hardware's returned policies (mean over seeds) priced on every hardware of the
    table, as a share of that hardware's w8a8 cost: HAQ's Table 1, where a policy searched for one
    accelerator is not the best on another."""
    if len(hardware) < 2:
        return []
    lines = ["## Each hardware's policies on the other hardware", "",
             "The returned policies priced on each hardware model, as a share of its w8a8 cost (mean over seeds); "
             "the diagonal is what each search was budgeted on (HAQ Table 1 at this scale).", "",
             "| model | budget | method | searched for | " + " | ".join(f"on {h}" for h in hardware) + " |",
             "|---|---|---|---|" + "---|" * len(hardware)]
    tables = {}
    for model in layers:
        for h in hardware:
            tables[model, h] = hw_models.create_hw_model(h).table(layers[model], metric)
    for (model, budget, method, hw), g in df[df["method"] != "fixed"].groupby(
            ["model", "budget", "method", "hw"], sort=False):
        cells = []
        for h in hardware:
            t = tables[model, h]
            ratios = []
            for r in g.to_dict("records"):
                bits = list(zip((int(b) for b in r["w_bits"].split()), (int(b) for b in r["a_bits"].split())))
                if len(bits) == len(t):  # this model's policy
                    ratios.append(sum(t[i, w - 1, a - 1] for i, (w, a) in enumerate(bits)) / t[:, 7, 7].sum())
            cells.append(f"{np.mean(ratios):.3f}" if ratios else "")
        if not any(cells):
            continue
        lines.append(f"| {model} | {budget} | {METHOD_NAMES.get(method, method)} | {hw} | " + " | ".join(cells) + " |")
    pairs = policy_differences(df, hardware[0], hardware[1])
    if not pairs.empty:
        lines += ["", f"The {hardware[0]} and {hardware[1]} policies of the same model, budget, method and seed differ "
                      f"in {int((pairs['bits_changed'] > 0).sum())} of {len(pairs)} pairs, in "
                      f"{pairs['bits_changed'].mean():.1f} of their bitwidths on average (" + "; ".join(
                          f"{METHOD_NAMES.get(m, m)} {g['bits_changed'].mean():.1f}"
                          for m, g in pairs.groupby("method", sort=False)) + ")."]
    return lines


def policy_differences(df: pd.DataFrame, hw_a: str, hw_b: str) -> pd.DataFrame:
    """Per model, budget, method and seed searched on both `hw_a` and `hw_b`: how many of the two
    returned policies' bitwidths (weights and activations, every layer) differ (``bits_changed``)."""
    searched = df[df["method"] != "fixed"]
    keys = ["model", "budget", "method", "seed"]
    a = searched[searched["hw"] == hw_a].set_index(keys)
    b = searched[searched["hw"] == hw_b].set_index(keys)
    rows = []
    for key in a.index.intersection(b.index):
        ra, rb = a.loc[key], b.loc[key]
        bits_a = (str(ra["w_bits"]) + " " + str(ra["a_bits"])).split()
        bits_b = (str(rb["w_bits"]) + " " + str(rb["a_bits"])).split()
        rows.append({**dict(zip(keys, key)), "bits_changed": sum(x != y for x, y in zip(bits_a, bits_b))})
    return pd.DataFrame(rows)


def table_layers(df: pd.DataFrame) -> dict[str, list[hw_models.LayerSpec]]:
    """The layers of each model in the table."""
    from haq.models import model_layers

    return {m: model_layers(m) for m in df["model"].unique()}
