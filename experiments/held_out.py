"""Add the held-out test top-1 to a table's CSV that was written before `haq table` measured it.

`haq table` now finetunes each row's policy once more and measures it on the test split (which
no search sees), and `refits` more times with seeds no search used (`haq.tables.held_out`). A CSV
from an earlier run, whose run folders are gone,
gets the column from its own rows: the policy, model and seed of each row are enough, since an
evaluation is a function of them and the thread count. Run it with the thread count the table
ran with (the recorded mini tables: `--jobs 2` on 2 cores, one thread a process); rows whose
search-validation top-1 does not come out the same are logged (``reproduced`` False: their search
ran with another thread count or engine version than the rest of the table).

`--rerun-stale` searches those rows again, as the table runs them now (the table's config for
the cell, the same jobs and threads), replaces them in the CSV and measures the new policies held
out; `--rerun MODEL ...` does the same for every searched row of those models (after a change to
their settings in the table's YAML). Their run folders go where `haq table` keeps them, so a later
`haq table` reads them back; each is marked with a `rerun.json`, so an interrupted rerun resumes
them instead of starting over, and a finished one is read back.

    OMP_NUM_THREADS=1 python experiments/held_out.py latency --jobs 2
    python experiments/held_out.py latency --rerun-stale --jobs 2
    python experiments/held_out.py latency --rerun digits32-mbv2 --jobs 2
    python experiments/update_docs.py
    python experiments/held_out.py noise-decay-latency --config-dir experiments/configs/ablations \
        --results experiments/results/ablations --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from haq import tables
from haq.cli.args import nonnegative_int
from haq.config import SearchConfig
from haq.tables import HELD_OUT_COLUMNS, SCALES, TABLES, Cell, TableSpec, held_out

RESULTS_DIR = Path(__file__).resolve().parents[1] / "experiments" / "results"

log = logging.getLogger("held_out")


def _same_config(run_dir: Path, cfg: SearchConfig, method: str) -> bool:
    """Whether `run_dir` has not started yet or holds a search of `cfg` (so it may be resumed)."""
    return not (run_dir / "config.yaml").is_file() or not tables.config_differences(run_dir, cfg, method)


def rerun_stale(spec: TableSpec, scale: str, df: pd.DataFrame, base: Path, jobs: int,
                models: list[str] | None = None) -> pd.DataFrame:
    """`df` with each searched row that did not reproduce its top-1 (or, given `models`, each
    searched row of those models) replaced by a fresh search of its cell as the table's YAML
    configures it now (in `jobs` processes, threads // jobs torch threads each); held-out columns dropped."""
    selected = df["model"].isin(models) if models is not None else tables.not_reproduced(df)
    stale = df[(df["method"] != "fixed") & selected]
    cells = [Cell(r["model"], r["hw"], str(r["budget"]), r["method"], int(r["seed"])) for r in stale.to_dict("records")]
    configs = {c: spec.config(scale, *c, tables.cell_run_dir(base, c)) for c in cells}
    summaries: dict[Cell, dict[str, Any]] = {}
    for cell, old in zip(cells, stale["accuracy"]):
        run_dir = tables.cell_run_dir(base, cell)
        if (run_dir / "rerun.json").is_file() and _same_config(run_dir, configs[cell], cell.method):
            if (run_dir / "summary.json").is_file():  # searched again by an earlier call: read back
                summaries[cell] = json.loads((run_dir / "summary.json").read_text())
            else:
                log.info("resuming the new search: %s", run_dir.name)  # begun by an interrupted rerun
            continue
        if run_dir.exists():  # an older run of the cell: it did not reproduce, or its config changed
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        (run_dir / "rerun.json").write_text(json.dumps({"rerun_of_top1": float(old)}) + "\n")
        log.info("searching again: %s", run_dir.name)
    todo = [c for c in cells if c not in summaries]
    if todo:
        threads = tables.job_threads(jobs)
        with tables.job_pool(jobs) as pool:
            futures = {c: pool.submit(tables.search_job, configs[c].to_dict(), str(tables.cell_run_dir(base, c)),
                                      threads) for c in todo}
            summaries.update({c: f.result() for c, f in futures.items()})
    records = df.to_dict("records")
    for index, cell in zip(stale.index, cells):
        row = tables.search_row(spec, scale, *cell, summaries[cell], configs[cell].warmup,
                                 tables.cell_run_dir(base, cell))
        i = df.index.get_loc(index)
        log.info("%s: top-1 %.2f -> %.2f", tables.cell_run_dir(base, cell).name, float(records[i]["accuracy"]),
                 row["accuracy"])
        records[i].update(row)
    return pd.DataFrame(records, columns=df.columns).drop(columns=HELD_OUT_COLUMNS, errors="ignore")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help=f"a table ({', '.join(TABLES)}) or, with --config-dir, an ablation's name")
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--config-dir", help="where the table's YAML is (default: the configs shipped in haq/tables/configs)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where its CSV is (default: experiments/results)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each with threads // jobs torch threads)")
    parser.add_argument("--runs", default="runs/tables", help="where the held-out cache and run folders are kept")
    parser.add_argument("--refits", type=nonnegative_int, help="further finetunes per row's policy (default: the table's "
                        "`refits`, 4 unless its YAML says otherwise; 0 measures the row's own finetune only)")
    rerun = parser.add_mutually_exclusive_group()
    rerun.add_argument("--rerun-stale", action="store_true",
                       help="search again the searched rows whose top-1 did not reproduce, then measure them")
    rerun.add_argument("--rerun", nargs="+", metavar="MODEL",
                       help="search again every searched row of these models (their settings in the YAML changed), "
                       "then measure them")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TableSpec.load(args.table, args.config_dir)
    if args.refits is not None:  # measured and labelled with this count
        spec = dataclasses.replace(spec, refits=args.refits)
    csv_path = Path(args.results) / f"{spec.name}-{args.scale}.csv"
    df = pd.read_csv(csv_path, keep_default_na=False)
    base = Path(args.runs) / f"{spec.name}-{args.scale}"
    if args.rerun_stale:
        if "reproduced" not in df.columns:
            raise SystemExit(f"{csv_path} has no 'reproduced' column yet: run this script without --rerun-stale first")
        df = rerun_stale(spec, args.scale, df, base, args.jobs)
    elif args.rerun:
        unknown = sorted(set(args.rerun) - set(df["model"]))
        if unknown:
            raise SystemExit(f"{csv_path} has no rows of {', '.join(unknown)}; its models: "
                             f"{', '.join(sorted(set(df['model'])))}")
        df = rerun_stale(spec, args.scale, df, base, args.jobs, args.rerun)
    df = held_out(spec, args.scale, df.drop(columns=HELD_OUT_COLUMNS, errors="ignore"), base, jobs=args.jobs)
    tables.write_table(spec, args.scale, df, Path(args.results))
    log.info("wrote %s and its markdown", csv_path)


if __name__ == "__main__":
    main()
