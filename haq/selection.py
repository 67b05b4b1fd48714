"""The search's final selection: its best candidates and the uniform policies of the budget,
each finetuned again with fresh seeds, the best by the mean returned.

A search keeps the policy whose one finetune scored highest among many; that maximum is inflated
by the luck of its finetune (the winner's curse), and held out such a policy often trails the
uniform policy of its budget. Finetuning the few best candidates and the uniform policies again
with seeds the search never used, on the search-validation split (the held-out test split stays
untouched), and keeping the best mean removes most of that luck; a uniform policy wins ties, so the
search never returns a policy it measured below a uniform policy of the same budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from haq.evaluator import QuantEvaluator

SEED_STRIDE = 100_000
"""Selection seeds: ``seed + SEED_STRIDE * (j + 1)``, apart from the search's and the tables' refits'."""


def selection_seed(seed: int, j: int) -> int:
    """The finetune seed of a candidate's `j`-th fresh finetune in a search of seed `seed`."""
    return seed + SEED_STRIDE * (j + 1)


def reevaluate(evaluator: QuantEvaluator, candidates: Sequence[tuple[str, Sequence[tuple[int, int]]]],
               finetunes: int, seed: int) -> list[dict[str, Any]]:
    """Each candidate ``(label, bits)`` finetuned `finetunes` times with fresh seeds: its top-1 on
    search-validation each time and their mean, in the order given."""
    base = evaluator.seed
    rows = []
    try:
        for label, bits in candidates:
            scores = []
            for j in range(finetunes):
                evaluator.seed = selection_seed(seed, j)
                scores.append(float(evaluator.evaluate(list(bits))["top1"]))
            rows.append({"policy": label, "bits": [tuple(b) for b in bits], "scores": scores,
                         "mean": float(np.mean(scores))})
    finally:
        evaluator.seed = base
    return rows


def choose(rows: Sequence[dict[str, Any]]) -> int:
    """The index of the row with the highest mean; the first of equal ones (list uniform policies
    first, so that they win ties)."""
    best = 0
    for i, row in enumerate(rows):
        if row["mean"] > rows[best]["mean"]:
            best = i
    return best
