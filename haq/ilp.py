"""Bit allocation as an integer program: the per-layer (w, a) choices that minimise the summed
sensitivity (`haq.sensitivity`) under the hardware budget, solved by HiGHS through
`scipy.optimize.milp`.

This is how practitioners allocate bits today (HAWQ-V3, NVIDIA ModelOpt's AutoQuantize, AIMET's
AMP): a per-layer sensitivity, assumed additive over layers, and a knapsack over the cost table.
One binary variable per layer and allowed (w, a) pair; one equality per layer (exactly one pair);
one inequality, the summed cost within the budget.

`allocations` returns the optimum and then further candidates for the finetunes to tell apart:
the optima under perturbed sensitivities (each layer's weight and activation penalties scaled by a
factor ``exp(sigma * N(0, 1))`` of their own, seeded; a layer's penalties keep their order in the
bits). The measured sensitivities are estimates (one forward pass, no finetune, additivity
assumed); the perturbed optima are the allocations that a plausibly different measurement would
choose. The k
best allocations of one objective (no-good cuts) were tried instead: on the embedded default they
differ from the optimum in one layer whose bits cost no measured loss, and 100 of them took HiGHS a
minute.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

TIE_BREAK = 1e-7
"""Added to a pair's penalty per bit below w8a8: among allocations of equal penalty the one with
more bits wins (a bit that costs no measured loss is taken, not left to the solver's order)."""


class NoAllocation(RuntimeError):
    """No allocation fits the budget."""


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send the process's standard output (file descriptor 1) to the null device for a solve:
    HiGHS (as bundled with scipy 1.17) prints a stray debug line
    (``HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();``, a known upstream
    HiGHS behaviour) from C++ whatever its output options say, and it would tear the search's
    progress bar."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # no real descriptor (captured output): nothing to guard
        yield
        return
    sys.stdout.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def solve(cost: np.ndarray, penalty: np.ndarray, budget: float, pairs: Sequence[Sequence[tuple[int, int]]],
          time_limit: float = 60.0) -> list[tuple[int, int]]:
    """The allocation of least summed penalty within the budget.

    Args:
        cost: ``(L, 8, 8)`` cost of layer l at ``(w, a)`` in ``cost[l, w - 1, a - 1]``.
        penalty: ``(L, 8, 8)`` penalty, indexed as `cost`.
        budget: the largest allowed summed cost (> 0).
        pairs: per layer, the ``(w, a)`` pairs it may take.
        time_limit: seconds HiGHS may spend.

    Returns:
        One ``(w, a)`` per layer.

    Raises:
        NoAllocation: no allocation fits the budget.
    """
    var_layer = np.array([i for i, ps in enumerate(pairs) for _ in ps])
    var_pair = [p for ps in pairs for p in ps]
    w_idx = np.array([w - 1 for w, _ in var_pair])
    a_idx = np.array([a - 1 for _, a in var_pair])
    c = penalty[var_layer, w_idx, a_idx] + TIE_BREAK * np.array([16 - w - a for w, a in var_pair])
    # priced in budgets, so that the solver's feasibility tolerance is relative to the budget
    price = cost[var_layer, w_idx, a_idx] / budget
    n = len(c)
    one_each = coo_array((np.ones(n), (var_layer, np.arange(n))), shape=(len(pairs), n))
    with _quiet_stdout():
        res = milp(c, constraints=[LinearConstraint(one_each, 1, 1), LinearConstraint(price.reshape(1, -1), -np.inf, 1.0)],
                   integrality=np.ones(n), bounds=Bounds(0, 1), options={"time_limit": time_limit})
    if res.x is None:
        raise NoAllocation(f"no allocation fits the budget {budget:.6g} ({res.message})")
    chosen = sorted(np.flatnonzero(res.x > 0.5), key=lambda j: var_layer[j])
    return [var_pair[j] for j in chosen]


def allocations(cost: np.ndarray, w_penalty: np.ndarray, a_penalty: np.ndarray, budget: float,
                w_choices: Sequence[Sequence[int]], a_choices: Sequence[Sequence[int]], k: int,
                sigma: float = 0.5, seed: int = 0, tries: int = 4) -> list[list[tuple[int, int]]]:
    """Up to `k` distinct allocations within the budget: the optimum first, then the optima under
    perturbed penalties, in the order found.

    Args:
        cost: ``(L, 8, 8)`` cost table (``cost[l, w - 1, a - 1]``).
        w_penalty, a_penalty: ``(L, 8)`` penalty of layer l at w (a) bits, ``[l, b - 1]``
            (`haq.sensitivity.Sensitivity.monotone`); a pair's penalty is their sum.
        budget: the largest allowed summed cost.
        w_choices, a_choices: per layer, the bitwidths it may take.
        k: allocations wanted.
        sigma: spread of the log-normal factor on each layer's weight (activation) penalties.
        seed: seeds the perturbations.
        tries: solves per allocation wanted before giving up on finding `k` (fewer are returned).

    Raises:
        NoAllocation: no allocation fits the budget.
        ValueError: shapes that do not match, or a penalty that is NaN at an allowed bitwidth.
    """
    n_layers = len(cost)
    if len(w_choices) != n_layers or len(a_choices) != n_layers or w_penalty.shape != (n_layers, 8) \
            or a_penalty.shape != (n_layers, 8):
        raise ValueError(f"cost, penalties and choices must all cover the same {n_layers} layers")
    pairs = [[(w, a) for w in ws for a in as_] for ws, as_ in zip(w_choices, a_choices)]
    for i, (ws, as_) in enumerate(zip(w_choices, a_choices)):
        if np.isnan(w_penalty[i, np.asarray(ws) - 1]).any() or np.isnan(a_penalty[i, np.asarray(as_) - 1]).any():
            raise ValueError(f"layer {i}: no penalty for one of its allowed bitwidths")
    rng = np.random.default_rng(seed)
    found: list[list[tuple[int, int]]] = []
    seen: set[tuple[tuple[int, int], ...]] = set()
    w_known, a_known = np.nan_to_num(w_penalty), np.nan_to_num(a_penalty)  # NaN only where not allowed
    for attempt in range(k * tries):
        if len(found) == k:
            break
        w_pen, a_pen = w_known, a_known
        if attempt:
            w_pen = w_known * np.exp(sigma * rng.standard_normal((n_layers, 1)))
            a_pen = a_known * np.exp(sigma * rng.standard_normal((n_layers, 1)))
        bits = solve(cost, w_pen[:, :, None] + a_pen[:, None, :], budget, pairs)
        if tuple(bits) not in seen:
            seen.add(tuple(bits))
            found.append(bits)
    return found
