"""The counts docs/tables.md and the README's status quote, from the mini tables' CSVs (so none is copied by hand).

    python experiments/status_counts.py [--tables latency energy size]

Per table and over the tables: searches (``haq`` rows, one per model, hardware, budget and seed);
how many are at least as accurate as the uniform policy of their budget and as every costlier
fixed-bit row, on search-validation, held out and held out over the refits (`haq.tables.verdicts`);
how many are significantly less accurate than a costlier row, and than the uniform policy of their
budget, over the refits (`haq.tables.refit_shortfalls`); how many are at least as accurate as random
search with the same seed; how many searches' agent evaluated one policy over and over after the
warm-up (`haq.tables.stuck_rows`); and the float models each table was measured on.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from haq.tables import TABLES, refit_shortfalls, stuck_rows, verdicts

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "results"

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
    if "agent_top_share" in df.columns:
        out["agent stuck on one policy"] = int(stuck_rows(df[df["method"] == "haq"]).sum())
    return out


ROWS = (("searches", "searches (model, hardware, budget, seed)", None),
        ("uniform of budget", "at least as accurate as the uniform policy of its budget",
         "searches with a uniform policy of their budget"),
        ("every costlier row", "at least as accurate as every costlier fixed-bit row", "searches"),
        ("at least random search", "at least as accurate as random search with the same seed", "searches"),
        ("significantly below a costlier row", "significantly below a costlier fixed-bit row over the refits", None),
        ("below a costlier row within the refits' spread", "below one only by less than the refits resolve", None),
        ("significantly below the uniform policy of its budget",
         "significantly below the uniform policy of its budget over the refits", None),
        ("agent stuck on one policy", ("agent explored next to nothing after its warm-up (one policy in 90% or "
                                       "more of its episodes after it, `haq.search.stuck_agent`)"), None))


def float_models(df: pd.DataFrame) -> str:
    """The float models a table was measured on: name, float top-1 and fingerprint where recorded."""
    floats = df.groupby("model", sort=False)["fp_accuracy"].first()
    prints = (df.groupby("model", sort=False)["float_model"].first() if "float_model" in df.columns
              else pd.Series("not recorded", index=floats.index))
    return ", ".join(f"{m} {float(floats[m]):.2f}% ({prints[m] or 'not recorded'})" for m in floats.index)


def status_markdown(results: Path = RESULTS_DIR, tables: tuple[str, ...] = TABLES) -> str:
    """The Status's counts as a markdown table, one column per table and one for all of them.

    A row with three measures reads search-validation / held out / held out over the refits."""
    per = {}
    floats = {}
    for table in tables:
        csv = results / f"{table}-mini.csv"
        if csv.is_file():
            df = pd.read_csv(csv, keep_default_na=False)
            per[table], floats[table] = counts(df), float_models(df)
    if not per:
        return "No mini table has been run yet.\n"
    total = {k: sum(c.get(k, 0) for c in per.values()) for k in next(iter(per.values()))}
    columns = {**per, "all": total} if len(per) > 1 else per

    def cell(c: dict[str, int], key: str, of: str | None) -> str:
        if key in c:
            return str(c[key])
        if f"{key}, search-validation" not in c:
            return "-"
        text = " / ".join(str(c[f"{key}, {name}"]) for _, name in MEASURES)
        return f"{text} of {c[of]}" if of else text

    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines.append("| float models | " + " | ".join(floats.get(t, "") for t in columns) + " |")
    for key, label, of in ROWS:
        if key not in total and f"{key}, held out" in total:
            label += " (search-validation / held out / over the refits)"
        lines.append(f"| {label} | " + " | ".join(cell(c, key, of) for c in columns.values()) + " |")
    return ("Generated by `experiments/status_counts.py` from the tables' CSVs (copied into docs/tables.md by "
            "`experiments/update_docs.py`); the over-the-refits rows use Welch's t-test, one-sided, 5%.\n\n"
            + "\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--results", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    total: dict[str, int] = {}
    for table in args.tables:
        df = pd.read_csv(args.results / f"{table}-mini.csv", keep_default_na=False)
        print(f"## {table}: float models {float_models(df)}")
        for key, value in counts(df).items():
            print(f"- {key}: {value}")
            total[key] = total.get(key, 0) + value
    if len(args.tables) > 1:
        print(f"## {' + '.join(args.tables)}")
        for key, value in total.items():
            print(f"- {key}: {value}")


if __name__ == "__main__":
    main()
