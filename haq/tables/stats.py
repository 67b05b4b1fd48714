"""Statistics over a table's rows: collapsed searches, verdicts against the fixed-bit rows, Welch's
t-test over the refits."""

from __future__ import annotations

import numpy as np
import pandas as pd

import hw_models
from haq.search import STUCK_AT_LEAST, STUCK_SHARE


def stuck_rows(df: pd.DataFrame) -> pd.Series:
    """Which searched rows' agent evaluated one policy in `STUCK_SHARE` or more of its
    `STUCK_AT_LEAST` or more episodes after the warm-up (`haq.search.stuck_agent`); False where the
    CSV has no `agent_top_share` (older CSVs; random search and fixed-bit rows leave it blank)."""
    if "agent_top_share" not in df.columns:
        return pd.Series(False, index=df.index)
    share = pd.to_numeric(df["agent_top_share"], errors="coerce")
    agent_episodes = pd.to_numeric(df["episodes"], errors="coerce") - pd.to_numeric(df["warmup"], errors="coerce")
    return (share >= STUCK_SHARE) & (agent_episodes >= STUCK_AT_LEAST)


def plus_minus(values: pd.Series, fmt: str = ".2f") -> str:
    if len(values) > 1:
        return f"{values.mean():{fmt}} +- {values.std():{fmt}}"
    return f"{values.mean():{fmt}}"


def signed(x: float) -> str:
    """A difference in points with its sign, two decimals, never ``-0.00``."""
    return f"{round(float(x), 2) + 0.0:+.2f}"


def verdicts(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, hw, budget, seed): does the searched policy beat every fixed-bit baseline
    whose cost is at or above its own (and which ones does it not)?"""
    out = []
    fixed = df[df["method"] == "fixed"]
    for r in df[df["method"] == "haq"].to_dict("records"):
        f = fixed[(fixed["model"] == r["model"]) & (fixed["hw"] == r["hw"]) & (fixed["seed"] == r["seed"])]
        above = f[f["cost"] >= r["cost"] * (1 - 1e-9)]
        lost = above[above["accuracy"] > r["accuracy"]]
        same = f[f["policy"] == r["budget"]]
        out.append({"model": r["model"], "hw": r["hw"], "budget": r["budget"], "seed": r["seed"],
                    "beats_all_costlier": lost.empty, "loses_to": " ".join(lost["policy"]),
                    "beats_budget_policy": bool(same.empty or (same["accuracy"] <= r["accuracy"]).all()),
                    "has_budget_policy": not same.empty})
    return pd.DataFrame(out)


SIGNIFICANCE = 0.05
"""Level of `refit_shortfalls`' one-sided test."""


def significantly_below(mean: float, sd: float, n: int, ref_mean: float, ref_sd: float, ref_n: int,
                        alpha: float = SIGNIFICANCE) -> bool:
    """Welch's t-test, one-sided, level `alpha`, from two samples' means, sample standard
    deviations and counts: is `mean` significantly below `ref_mean`? Where both spreads are 0 a
    lower mean is significant."""
    from scipy import stats

    if mean >= ref_mean:
        return False
    if sd == 0 and ref_sd == 0:
        return True
    return bool(stats.ttest_ind_from_stats(mean, sd, n, ref_mean, ref_sd, ref_n, equal_var=False,
                                           alternative="less").pvalue < alpha)


def refit_shortfalls(df: pd.DataFrame, alpha: float = SIGNIFICANCE) -> pd.DataFrame:
    """Per searched (``haq``) row: the costlier fixed-bit rows (same model, hardware and seed,
    cost at or above its own) whose held-out top-1 over the refits is significantly higher than
    its own, by Welch's t-test (one-sided, level `alpha`) on the two rows' refit means, sample
    standard deviations and count (``test_accuracy_refits``, ``test_accuracy_refits_sd``,
    ``refits``). `verdicts` on the refit means calls any shortfall a loss, a third of a point
    (one test image) as much as three points; this separates the shortfalls the refits resolve
    from those within their spread. Where both spreads are 0 a higher mean is significant.
    Columns: model, hw, budget, seed, ``significantly_below`` (the fixed-bit policies, space
    separated), ``below`` (every costlier policy with a higher refit mean), ``significant_gap`` (the
    largest of the significant shortfalls, top-1 points; NaN where none). Empty without the
    standard deviations (tables measured with fewer than 2 refits, or before they were kept)."""
    cols = ("test_accuracy_refits", "test_accuracy_refits_sd", "refits")
    if not all(c in df.columns for c in cols) or df["test_accuracy_refits_sd"].astype(str).isin(["", "nan"]).all():
        return pd.DataFrame()
    fixed = df[df["method"] == "fixed"]
    out = []
    for r in df[df["method"] == "haq"].to_dict("records"):
        f = fixed[(fixed["model"] == r["model"]) & (fixed["hw"] == r["hw"]) & (fixed["seed"] == r["seed"])]
        m, sd, n = float(r["test_accuracy_refits"]), float(r["test_accuracy_refits_sd"]), int(r["refits"])
        below, significant, gaps = [], [], []
        for b in f[f["cost"] >= r["cost"] * (1 - 1e-9)].to_dict("records"):
            mb, sdb, nb = float(b["test_accuracy_refits"]), float(b["test_accuracy_refits_sd"]), int(b["refits"])
            if mb <= m:
                continue
            below.append(b["policy"])
            if significantly_below(m, sd, n, mb, sdb, nb, alpha):
                significant.append(b["policy"])
                gaps.append(mb - m)
        out.append({"model": r["model"], "hw": r["hw"], "budget": r["budget"], "seed": r["seed"],
                    "significantly_below": " ".join(significant), "below": " ".join(below),
                    "significant_gap": max(gaps) if gaps else np.nan})
    return pd.DataFrame(out)


def depthwise_bits(layers: list[hw_models.LayerSpec], w_bits: str, a_bits: str) -> dict[str, float]:
    """Mean weight / activation bits of depthwise and of pointwise (1x1 conv) layers."""
    w = np.array([int(x) for x in w_bits.split()])
    a = np.array([int(x) for x in a_bits.split()])
    dw = np.array([l.kind == "dwconv" for l in layers])
    pw = np.array([l.kind == "conv" and l.kernel == 1 for l in layers])
    return {"dw_w": float(w[dw].mean()), "dw_a": float(a[dw].mean()),
            "pw_w": float(w[pw].mean()), "pw_a": float(a[pw].mean())}

def not_reproduced(df: pd.DataFrame) -> pd.Series:
    """Rows whose policy, finetuned again for the held-out column, did not give the row's own
    search-validation top-1 (``reproduced`` False, read back from a CSV as text or as a bool)."""
    return ~df["reproduced"].astype(str).isin(["True", "true", "1"])
