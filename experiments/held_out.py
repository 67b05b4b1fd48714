"""Add the held-out test top-1 to a table's CSV that was written before `haq table` measured it.

`haq table` now finetunes each row's policy once more and measures it on the test split (which
no search sees; `haq.tables.held_out`). A CSV from an earlier run, whose run folders are gone,
gets the column from its own rows: the policy, model and seed of each row are enough, since an
evaluation is a function of them and the thread count. Run it with the thread count the table
ran with (the recorded mini tables: `--jobs 2` on 2 cores, one thread a process); rows whose
search-validation top-1 does not come out the same are logged.

    OMP_NUM_THREADS=1 python experiments/held_out.py latency --jobs 2
    python experiments/update_readme.py
    python experiments/held_out.py noise-decay-latency --config-dir experiments/configs/ablations \
        --results experiments/results/ablations --jobs 2
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from haq.tables import RESULTS_DIR, SCALES, TABLES, TableSpec, held_out, render_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", help=f"a table ({', '.join(TABLES)}) or, with --config-dir, an ablation's name")
    parser.add_argument("--scale", choices=SCALES, default="mini")
    parser.add_argument("--config-dir", help="where the table's YAML is (default: experiments/configs)")
    parser.add_argument("--results", default=str(RESULTS_DIR), help="where its CSV is (default: experiments/results)")
    parser.add_argument("--jobs", type=int, default=1, help="processes (each with threads // jobs torch threads)")
    parser.add_argument("--runs", default="runs/tables", help="where the held-out cache is kept")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = TableSpec.load(args.table, args.config_dir)
    csv_path = Path(args.results) / f"{spec.name}-{args.scale}.csv"
    df = pd.read_csv(csv_path, keep_default_na=False)
    df = held_out(spec, args.scale, df.drop(columns=["test_accuracy", "reproduced"], errors="ignore"),
                  Path(args.runs) / f"{spec.name}-{args.scale}", jobs=args.jobs)
    df.to_csv(csv_path, index=False, float_format="%.5g")
    render_table(spec, args.scale, df, Path(args.results))
    logging.getLogger("held_out").info("wrote %s and its markdown", csv_path)


if __name__ == "__main__":
    main()
