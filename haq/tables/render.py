"""A table's markdown and figures, from its rows."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template
from typing import Any

import pandas as pd

import hw_models
from haq.config import CONSTRAINTS, budget_kind
from haq.policy import Policy
from haq.tables.compare import cross_pricing, free_weight_bits, methods_section, table_layers
from haq.tables.spec import TableSpec
from haq.tables.stats import (
    SIGNIFICANCE,
    depthwise_bits,
    not_reproduced,
    plus_minus,
    refit_shortfalls,
    signed,
    stuck_rows,
    verdicts,
)


def _load_templates(path: Path) -> dict[str, Template]:
    """The blocks of a template file: each from its ``<!-- template: NAME -->`` line to the next."""
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in path.read_text().splitlines():
        match = re.fullmatch(r"<!-- template: (\w+) -->", line)
        if match:
            current = blocks.setdefault(match.group(1), [])
        elif current is not None:
            current.append(line)
    return {name: Template("\n".join(body)) for name, body in blocks.items()}


TEMPLATES = _load_templates(Path(__file__).with_name("templates") / "table.md")
"""The prose of a table's markdown (``haq/tables/templates/table.md``)."""


def render_table(spec: TableSpec, scale: str, df: pd.DataFrame, out: Path, tag: str = "") -> str:
    """Write ``<table>-<scale><tag>.md``, its top-1 against cost figure and (for an edge and a
    cloud model) the policy figure from the rows."""
    from haq.report import plot_tradeoff

    out.mkdir(parents=True, exist_ok=True)
    by_model = {m: sorted(g["seed"].unique()) for m, g in df.groupby("model", sort=False)}
    if len({tuple(v) for v in by_model.values()}) == 1:
        seeds = f"Seeds {', '.join(map(str, next(iter(by_model.values()))))}"
    else:
        seeds = "Seeds " + "; ".join(f"{', '.join(map(str, v))} ({m})" for m, v in by_model.items())
    units = hw_models.METRIC_UNITS[CONSTRAINTS[spec.constraint]]
    test = "test_accuracy" in df.columns
    refit = "test_accuracy_refits" in df.columns
    # the count the CSV's refit means were measured with (written since `--refits`; before, the spec's)
    k = int(df["refits"].iloc[0]) if refit and "refits" in df.columns and len(df) else spec.refits
    refits_s = f"{k} refit{'s' if k != 1 else ''}"
    flag = " --distill" if tag == "-distill" else ""
    own = [f"`{m}` is searched with {_flat(pm['search'])}" for m, pm in (spec.scale(scale).get("per_model") or {}).items()
           if m in by_model and pm.get("search")]
    floats = (", ".join(f"{m} `{f}`" for m, f in df.groupby("model", sort=False)["float_model"].first().items())
              if "float_model" in df.columns else "")
    head = TEMPLATES["head"].substitute(
        name=spec.name, scale=scale, flag=flag, title=spec.title, distilled=", distilled finetune" if flag else "",
        seeds=seeds, constraint=spec.constraint, units=units, source=f"{spec.name}-{scale}{tag}.csv",
        own=TEMPLATES["own"].substitute(settings="; ".join(own)) if own else "",
        floats=TEMPLATES["floats"].substitute(floats=floats) if floats else "",
        held=TEMPLATES["held"].substitute() if test else "",
        refits=TEMPLATES["refits"].substitute(refits=refits_s, k=k) if refit else "")
    lines = [*head.split("\n"), "",
             "| model | hardware | policy | top-1 (%) | " + ("held-out top-1 (%) | " if test else "")
             + (f"held out, {refits_s} (%) | " if refit else "")
             + f"float top-1 | {spec.constraint} / w8a8 | w8a8 / cost |",
             "|---|---|---|---|---|---|---|" + ("---|" if test else "") + ("---|" if refit else "")]
    search = spec.scale(scale).get("search") or {}
    kmeans = (search.get("quant") or {}).get("mode") == "kmeans"

    def fixed_label(policy: str) -> str:
        w = budget_kind(policy)[1][0]
        if kmeans:
            return f"{policy}: uniform {w}-bit k-means weights, float activations (Deep Compression)"
        return policy

    for (model, hw), g in df.groupby(["model", "hw"], sort=False):
        for (method, policy, budget), h in g.groupby(["method", "policy", "budget"], sort=False):
            label = fixed_label(policy) if method == "fixed" else f"{method} search, budget {budget}"
            lines.append(f"| {model} | {hw} | {label} | {plus_minus(h['accuracy'])} | "
                         + (f"{plus_minus(h['test_accuracy'])} | " if test else "")
                         + (f"{plus_minus(h['test_accuracy_refits'])} | " if refit else "")
                         + f"{h['fp_accuracy'].mean():.2f} | {plus_minus(h['cost_ratio'], '.3f')} | "
                         f"{h['w8a8_over_cost'].mean():.2f}x |")
    v = verdicts(df)
    held = verdicts(df.assign(accuracy=df["test_accuracy"])) if test else None
    refitted = verdicts(df.assign(accuracy=df["test_accuracy_refits"])) if refit else None
    short = refit_shortfalls(df) if refit else pd.DataFrame()
    if test and "reproduced" in df.columns:
        stale = df[not_reproduced(df)]
        if len(stale):
            rows = "; ".join(f"{r['model']} {r['hw']} {r['method']} {r['budget'] or r['policy']} seed {r['seed']}"
                             for r in stale.to_dict("records"))
            lines += ["", TEMPLATES["stale"].substitute(count=len(stale), total=len(df), rows=rows)]
    figure = f"{spec.name}-{scale}{tag}-tradeoff.png"
    plot_tradeoff(df.to_dict("records"), out / figure, f"{spec.constraint} / w8a8", refits=k,
                  title=f"{spec.title} ({scale} scale): top-1 against {spec.constraint}",
                  fixed_name="uniform k-means, same finetune" if kmeans else "fixed bits, same finetune")
    panels = (" (panels beneath: held out" + (f", and held out over {refits_s}" if refit else "") + ")") if test else ""
    lines += ["", *TEMPLATES["figure"].substitute(constraint=spec.constraint, panels=panels, figure=figure).split("\n")]
    lines += against_budget_policy(df, [("accuracy", "search-validation")]
                                   + ([("test_accuracy", "held out")] if test else [])
                                   + ([("test_accuracy_refits", f"held out, {refits_s}")] if refit else []))
    lines += ["", f"Paper: {spec.paper}", ""]
    for (model, hw, budget), g in v.groupby(["model", "hw", "budget"], sort=False):
        haq = df[(df["method"] == "haq") & (df["model"] == model) & (df["hw"] == hw) & (df["budget"] == budget)]
        w8 = df[(df["method"] == "fixed") & (df["policy"] == "w8a8") & (df["model"] == model) & (df["hw"] == hw)]
        lost = sorted({p for s in g["loses_to"] for p in s.split()})
        line = f"- {model} on {hw}, budget {budget}: "
        if g["has_budget_policy"].all():
            line += (f"the searched policy is at least as accurate as uniform {budget} (same cost, the paper's "
                     f"comparison) in {int(g['beats_budget_policy'].sum())} of {len(g)} seeds, and ")
        else:
            line += "the searched policy is "
        line += (f"at least as accurate as every fixed-bit baseline that costs as much or more in "
                 f"{int(g['beats_all_costlier'].sum())} of {len(g)} seeds"
                 + (f" (where not, it loses to {', '.join(lost)})" if lost else ""))
        for where, measured in (("on the held-out test split", held), (f"held out over {refits_s}", refitted)):
            if measured is not None:
                hg = measured.loc[g.index]
                line += (f"; {where}, " + (f"at least as accurate as uniform {budget} in "
                                           f"{int(hg['beats_budget_policy'].sum())} of {len(g)} and "
                                           if g["has_budget_policy"].all() else "")
                         + f"as every costlier fixed-bit baseline in {int(hg['beats_all_costlier'].sum())} of {len(g)}")
        if not short.empty:
            sg = short.loc[g.index]
            sig = sorted({p for s in sg["significantly_below"] for p in s.split()})
            line += (f", and significantly less accurate than one of them (Welch's t-test over the refits, one-sided, "
                     f"{SIGNIFICANCE:.0%}) in {int((sg['significantly_below'] != '').sum())} of {len(g)}"
                     + (f" ({', '.join(sig)})" if sig else ""))
        if not w8.empty:
            refit_diff = haq["test_accuracy_refits"].mean() - w8["test_accuracy_refits"].mean() if refit else 0.0
            line += (f"; it costs {1 / haq['cost_ratio'].mean():.2f}x less than w8a8 at "
                     f"{haq['accuracy'].mean() - w8['accuracy'].mean():+.2f} points of top-1"
                     + (f" ({haq['test_accuracy'].astype(float).mean() - w8['test_accuracy'].astype(float).mean():+.2f}"
                        " held out" + (f", {refit_diff:+.2f} over {refits_s}" if refit else "") + ")" if test else "")
                     + (f" (paper: {spec.paper_saving} less at negligible loss)" if spec.paper_saving else ""))
        if "best_episode" in haq.columns:  # a best policy from the warm-up: the agent did not improve on it
            early = haq[pd.to_numeric(haq["best_episode"]) <= pd.to_numeric(haq["warmup"])]
            if len(early):
                line += (f". In {len(early)} of {len(haq)} seeds the best policy came from the random warm-up "
                         f"(episode {', '.join(str(int(e)) for e in early['best_episode'])}), which random search "
                         "with the same seed shares: the agent's own episodes did not beat it")
        stuck = haq[stuck_rows(haq)]  # the agent evaluated one policy over and over (`stuck_agent`)
        if len(stuck):
            line += (f". In {len(stuck)} of {len(haq)} seeds (seed{'s' if len(stuck) > 1 else ''} "
                     f"{', '.join(str(s) for s in stuck['seed'])}) the agent explored next to nothing after its "
                     f"warm-up: one policy took {', '.join(f'{float(x):.0%}' for x in stuck['agent_top_share'])} "
                     "of its episodes after it (`haq.search.stuck_agent`), so the row says little about what "
                     "the search could find")
        lines.append(line + ".")
    if not short.empty:
        lines += ["", shortfall_summary(short, f"Held out over {refits_s}")]
        lines += comparable_saving(df, short, spec.constraint, spec.paper_saving)
    if len(spec.hardware) == 2 and "haq" in set(df["method"]):
        lines += ["", *_edge_cloud(spec, scale, tag, df, out)]
    if refit:
        metric = CONSTRAINTS[spec.constraint]
        layers = table_layers(df)
        for section in (methods_section(df, refits_s), free_weight_bits(df, layers, metric),
                        cross_pricing(df, layers, metric, list(spec.hardware))):
            if section:
                lines += ["", *section]
    text = "\n".join(lines) + "\n"
    (out / f"{spec.name}-{scale}{tag}.md").write_text(text)
    return text


def shortfall_summary(short: pd.DataFrame, measured: str, samples: str = "refits") -> str:
    """Markdown: the searched rows against the costlier fixed-bit rows, counted three ways
    (`refit_shortfalls`); `measured` says on what, e.g. ``Held out over 4 refits``, and `samples`
    what the test's spreads are of."""
    n = len(short)
    lost = short[short["below"] != ""]
    sig = short[short["significantly_below"] != ""]
    budgets = ", ".join(f"{b} {k}" for b, k in sig.groupby("budget", sort=False).size().items())
    gaps = sig["significant_gap"].astype(float) if "significant_gap" in sig.columns else pd.Series(dtype=float)
    span = sorted({f"{gaps.min():.2f}", f"{gaps.max():.2f}"}, key=float) if len(gaps) and gaps.notna().all() else []
    by = f"; by {' to '.join(span)} points, each search's largest shortfall" if span else ""
    return (f"{measured}, of the {n} searches: at least as accurate as every costlier fixed-bit "
            f"baseline in {n - len(lost)}; below one or more of them by less than the {samples} resolve in "
            f"{len(lost) - len(sig)}; significantly less accurate than one (Welch's t-test on the {samples}, one-sided, "
            f"{SIGNIFICANCE:.0%}) in {len(sig)}" + (f" (by budget: {budgets}{by})" if len(sig) else "") + ".")


def comparable_saving(df: pd.DataFrame, short: pd.DataFrame, metric: str, paper_saving: str = "") -> list[str]:
    """Markdown: per model and hardware, the largest saving against w8a8 (w8a8's cost over the
    searched policy's, mean over seeds) among the budgets where no seed's searched policy is
    significantly less accurate than w8a8 over the refits (`refit_shortfalls`): the paper's
    "x less than 8 bits at negligible loss", with that loss measured on what no search selected on."""
    w8 = df[(df["method"] == "fixed") & (df["policy"] == "w8a8")]
    haq = df[df["method"] == "haq"]
    if w8.empty or haq.empty or short.empty:
        return []
    lines = ["", f"The {metric} saving at comparable accuracy: for each model and hardware, the largest w8a8 / cost "
             "among the budgets where no seed's searched policy is significantly less accurate than w8a8 over the "
             "refits (the test above)" + (f"; the paper reports {paper_saving} less than 8 bits at negligible loss"
                                          if paper_saving else "") + ":", ""]
    for (model, hw), g in haq.groupby(["model", "hw"], sort=False):
        ref = w8[(w8["model"] == model) & (w8["hw"] == hw)]
        if ref.empty:
            continue
        found, refused = [], []
        for budget, b in g.groupby("budget", sort=False):
            mine = short[(short["model"] == model) & (short["hw"] == hw) & (short["budget"] == budget)]
            below = int(mine["significantly_below"].str.split().apply(lambda p: "w8a8" in p).sum())
            diff = float(b["test_accuracy_refits"].astype(float).mean() - ref["test_accuracy_refits"].astype(float).mean())
            saving = float(1 / b["cost_ratio"].astype(float).mean())
            if below:
                refused.append(f"{budget}: {below} of {len(b)}")
            else:
                found.append((saving, budget, diff))
        if found:
            saving, budget, diff = max(found)
            text = (f"{saving:.2f}x less {metric} than w8a8 (budget {budget}, {signed(diff)} points of top-1 over the "
                    "refits)")
        else:
            text = "no budget"
        lines.append(f"- {model} on {hw}: {text}" + (f"; seeds significantly below w8a8 at {', '.join(refused)}"
                                                      if refused else "") + ".")
    return lines


def against_budget_policy(df: pd.DataFrame, columns: list[tuple[str, str]]) -> list[str]:
    """Markdown: each search method's best policy minus the uniform policy of its budget (the
    paper's comparison, same model, hardware and seed), mean over seeds and hardware, on each
    of `columns` (column of `df`, its heading); empty when no budget is a fixed-bit row."""
    fixed = df[df["method"] == "fixed"].set_index(["model", "hw", "seed", "policy"])
    diffs = []
    for r in df[df["method"] != "fixed"].to_dict("records"):
        key = (r["model"], r["hw"], r["seed"], r["budget"])
        if key in fixed.index:
            u = fixed.loc[key]
            diffs.append({"model": r["model"], "budget": r["budget"], "method": r["method"],
                          **{c: float(r[c]) - float(u[c]) for c, _ in columns}})
    if not diffs:
        return []
    lines = ["", ("Searched minus the uniform policy of the same budget (the paper's comparison: same model, hardware "
                  "and seed), top-1 points, mean over seeds and hardware:"), "",
             "| model | budget | method | " + " | ".join(name for _, name in columns) + " |",
             "|---|---|---|" + "---|" * len(columns)]
    for (model, budget, method), g in pd.DataFrame(diffs).groupby(["model", "budget", "method"], sort=False):
        lines.append(f"| {model} | {budget} | {method} | " + " | ".join(f"{g[c].mean():+.2f}" for c, _ in columns)
                     + " |")
    return lines


def _flat(d: dict[str, Any], prefix: str = "") -> str:
    """``{"episodes": 60, "finetune": {"max_train_images": 256}}`` -> ``episodes 60, finetune.max_train_images 256``."""
    return ", ".join(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else f"{prefix}{k} {v}" for k, v in d.items())


def _edge_cloud(spec: TableSpec, scale: str, tag: str, df: pd.DataFrame, out: Path) -> list[str]:
    """Depthwise vs pointwise bits on the two hardware models, and the policy figure."""
    from haq.models import model_layers
    from haq.report import plot_policies_side_by_side

    lines = ["Depthwise vs pointwise bits of the searched policies at each model's first (tightest) budget (mean "
             "over layers, then over seeds; HAQ Figures 3-4 report fewer bits for depthwise layers on the edge and "
             "more on the cloud):", "",
             "| model | budget | hardware | depthwise w | depthwise a | pointwise w | pointwise a |",
             "|---|---|---|---|---|---|---|"]
    notes: list[str] = []  # per-model sentences and figures, after the table
    for model, g in df[df["method"] == "haq"].groupby("model", sort=False):
        budget = spec.model_budgets(scale, model)[0]
        g = g[g["budget"] == budget]
        layers = model_layers(model)
        best = {}
        dw_bits: dict[str, float] = {}
        per_seed: dict[str, dict[int, float]] = {}
        for hw in spec.hardware:
            h = g[g["hw"] == hw]
            if h.empty:
                continue
            stats = pd.DataFrame([depthwise_bits(layers, r["w_bits"], r["a_bits"]) for r in h.to_dict("records")])
            lines.append(f"| {model} | {budget} | {hw} | {stats['dw_w'].mean():.2f} | {stats['dw_a'].mean():.2f} | "
                         f"{stats['pw_w'].mean():.2f} | {stats['pw_a'].mean():.2f} |")
            diff = (stats["dw_w"] + stats["dw_a"]) - (stats["pw_w"] + stats["pw_a"])
            dw_bits[hw] = float(diff.mean())
            per_seed[hw] = dict(zip(h["seed"], diff))
            first = h.sort_values("seed").iloc[0]
            best[hw] = (list(Policy.from_strings(layers, first["w_bits"], first["a_bits"]).bits),
                        f"{hw}, seed {first['seed']}: {first['accuracy']:.1f}%, {first['cost_ratio']:.3f}x w8a8")
        if len(dw_bits) == 2:
            (edge, e), (cloud, c) = dw_bits.items()
            verdict = ("matches" if e < c else "does not match")
            seeds = sorted(set(per_seed[edge]) & set(per_seed[cloud]))
            agree = sum(per_seed[edge][s] < per_seed[cloud][s] for s in seeds)
            pairs = ", ".join(f"seed {s}: {per_seed[edge][s]:+.2f} / {per_seed[cloud][s]:+.2f}" for s in seeds)
            notes += ["", f"Measured on {model}: depthwise minus pointwise bits (w + a) is {e:+.2f} on {edge} and "
                          f"{c:+.2f} on {cloud} (per seed, {edge} / {cloud}: {pairs}). The paper has depthwise layers "
                          f"relatively fewer bits on the edge than on the cloud; the mean {verdict} it, and the seeds "
                          f"agree with the paper in {agree} of {len(seeds)}. The agent can only respond to what the "
                          "cost model prices: the bottom panel of the figure shows each layer's share of the w8a8 cost "
                          "on both presets."]
        if len(best) == 2:
            costs = {hw: hw_models.create_hw_model(hw).table(layers, CONSTRAINTS[spec.constraint])
                     [:, 7, 7] for hw in best}
            name = f"{spec.name}-{scale}{tag}-{model}-policies.png"
            plot_policies_side_by_side(layers, best, costs, out / name,
                                       title=f"{model}: searched policies, {spec.constraint} budget {budget}")
            notes += ["", f"![edge and cloud policies of {model}]({name})"]
    return lines + notes
