"""The counts the README's Status quotes, from the mini tables' CSVs (so none is copied by hand).

    python experiments/status_counts.py [--tables latency energy size]

Per table and over the tables: searches (``haq`` rows, one per model, hardware, budget and seed);
how many are at least as accurate as the uniform policy of their budget and as every costlier
fixed-bit row, on search-validation, held out and held out over the refits (`haq.tables.verdicts`);
how many are significantly less accurate than a costlier row, and than the uniform policy of their
budget, over the refits (`haq.tables.refit_shortfalls`); how many are at least as accurate as random
search with the same seed; and the float models each table was measured on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from haq.tables import RESULTS_DIR, TABLES, refit_shortfalls, verdicts

MEASURES = (("accuracy", "search-validation"), ("test_accuracy", "held out"),
            ("test_accuracy_refits", "held out over the refits"))


def counts(df: pd.DataFrame) -> dict[str, int]:
    """The Status counts of one table's rows."""
    out: dict[str, int] = {"searches": int((df["method"] == "haq").sum()),
                           "searches with a uniform policy of their budget": int(verdicts(df)["has_budget_policy"].sum())}
    for column, name in MEASURES:
        v = verdicts(df.assign(accuracy=df[column].astype(float)))
        out[f"uniform of budget, {name}"] = int(v.loc[v["has_budget_policy"], "beats_budget_policy"].sum())
        out[f"every costlier row, {name}"] = int(v["beats_all_costlier"].sum())
        searched = df[df["method"] == "haq"].set_index(["model", "hw", "budget", "seed"])[column].astype(float)
        rand = df[df["method"] == "random"].set_index(["model", "hw", "budget", "seed"])[column].astype(float)
        both = searched.index.intersection(rand.index)
        out[f"at least random search, {name}"] = int((searched[both] >= rand[both]).sum())
    short = refit_shortfalls(df)
    if not short.empty:
        out["significantly below a costlier row"] = int((short["significantly_below"] != "").sum())
        out["below a costlier row within the refits' spread"] = int(
            ((short["below"] != "") & (short["significantly_below"] == "")).sum())
        own = [b in s.split() for b, s in zip(short["budget"], short["significantly_below"])]
        out["significantly below the uniform policy of its budget"] = int(sum(own))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    total: dict[str, int] = {}
    for table in args.tables:
        df = pd.read_csv(args.results / f"{table}-mini.csv", keep_default_na=False)
        floats = df.groupby("model", sort=False)["fp_accuracy"].first()
        prints = (df.groupby("model", sort=False)["float_model"].first() if "float_model" in df.columns
                  else pd.Series("not recorded", index=floats.index))
        print(f"## {table}: float models " + ", ".join(f"{m} {floats[m]:.2f}% ({prints[m]})" for m in floats.index))
        for key, value in counts(df).items():
            print(f"- {key}: {value}")
            total[key] = total.get(key, 0) + value
    if len(args.tables) > 1:
        print(f"## {' + '.join(args.tables)}")
        for key, value in total.items():
            print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
