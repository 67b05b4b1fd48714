"""The paper's tables, reproduced by one command each (`haq table latency|energy|size`).

A table is a YAML spec in ``haq/tables/configs/<table>.yaml`` (shipped with the package): the constraint, the
hardware models, the search budgets, the fixed-bit baselines and, per scale (``mini``:
the digits models on 2 CPU cores; ``paper``: ImageNet-100 and the paper's models on a
GPU), the models, seeds and search overrides; ``per_model`` (optional) gives a model of a
scale its own ``seeds``, ``budgets`` and ``search`` overrides (a larger network searched
with fewer episodes, say). Every search of a table runs in its
own run directory under ``runs/tables/<table>-<scale>/``, so an interrupted table picks
up where it stopped (finished searches are read back, unfinished ones resumed). Results:
``experiments/results/<table>-<scale>.csv`` (one row per seed and method),
``<table>-<scale>.md`` (mean +- std over seeds, the paper's claim beside it),
``<table>-<scale>-tradeoff.png`` (top-1 against cost, searched points over the fixed-bit
line) and, for a table with an edge and a cloud model, ``<table>-<scale>-<model>-policies.png``
(HAQ Figures 3-4).
"""
from haq.tables.render import (
    against_budget_policy,
    comparable_saving,
    render_table,
    shortfall_summary,
)
from haq.tables.runner import (
    HELD_OUT_COLUMNS,
    cell_run_dir,
    config_differences,
    held_out,
    held_out_test_samples,
    job_pool,
    job_threads,
    run_table,
    search_job,
    search_row,
    write_table,
)
from haq.tables.spec import (
    CONFIG_DIR,
    RESULTS_DIR,
    SCALES,
    TABLES,
    Cell,
    TableSpec,
    check_float_models,
    check_same_float_models,
    float_fingerprint,
    model_fingerprints,
    one_float_model,
    refit_seed,
)
from haq.tables.stats import (
    SIGNIFICANCE,
    not_reproduced,
    plus_minus,
    refit_shortfalls,
    signed,
    significantly_below,
    stuck_rows,
    verdicts,
)

__all__ = [
    "CONFIG_DIR", "HELD_OUT_COLUMNS", "RESULTS_DIR", "SCALES", "SIGNIFICANCE", "TABLES", "Cell", "TableSpec",
    "against_budget_policy", "cell_run_dir", "search_job", "search_row", "check_float_models", "check_same_float_models", "comparable_saving",
    "config_differences", "float_fingerprint", "held_out", "held_out_test_samples", "job_pool", "job_threads",
    "model_fingerprints", "not_reproduced", "one_float_model", "plus_minus", "refit_seed", "refit_shortfalls",
    "render_table", "run_table", "shortfall_summary", "signed", "significantly_below", "stuck_rows", "verdicts",
    "write_table",
]
