"""The integer-program method's solver and its sensitivity table (no torch needed for the solver)."""

import itertools

import numpy as np
import pytest

from haq.ilp import NoAllocation, allocations, solve
from haq.sensitivity import Sensitivity


def two_layer_problem():
    """Two layers, weight bits 4 or 8, activations held at 8. Costs: layer 0 1 / 2, layer 1 1 / 3;
    penalties at 4 bits: layer 0 0.5, layer 1 0.2. Under a budget of 4: (8, 8) costs 5, too much;
    (8, 4) costs 3 at penalty 0.2; (4, 8) costs 4 at 0.5; (4, 4) costs 2 at 0.7. The optimum
    keeps layer 0 at 8 bits."""
    cost = np.zeros((2, 8, 8))
    cost[0, 3, 7], cost[0, 7, 7] = 1.0, 2.0
    cost[1, 3, 7], cost[1, 7, 7] = 1.0, 3.0
    w_pen = np.full((2, 8), np.nan)
    w_pen[0, [3, 7]] = [0.5, 0.0]
    w_pen[1, [3, 7]] = [0.2, 0.0]
    a_pen = np.full((2, 8), np.nan)
    a_pen[:, 7] = 0.0
    return cost, w_pen, a_pen, [[4, 8], [4, 8]], [[8], [8]]


def test_the_optimum_of_a_worked_example_and_the_further_allocations_fit_the_budget():
    cost, w_pen, a_pen, ws, as_ = two_layer_problem()
    found = allocations(cost, w_pen, a_pen, 4.0, ws, as_, k=5)
    assert found[0] == [(8, 8), (4, 8)]
    # only three allocations fit: each found is one of them, found once; none is invented
    feasible = {((8, 8), (4, 8)), ((4, 8), (8, 8)), ((4, 8), (4, 8))}
    assert {tuple(f) for f in found} <= feasible and len({tuple(f) for f in found}) == len(found)


def test_the_solver_finds_the_brute_force_optimum():
    rng = np.random.default_rng(3)
    n, choices = 4, [2, 4, 8]
    cost = rng.uniform(0.5, 2.0, (n, 8, 8)) * np.outer(np.arange(1, 9), np.arange(1, 9))[None]
    penalty = rng.uniform(0, 1, (n, 8, 8)) / np.outer(np.arange(1, 9), np.arange(1, 9))[None]
    pairs = [[(w, a) for w in choices for a in choices]] * n
    budget = sum(cost[i, 3, 3] for i in range(n))
    best = min((p for p in itertools.product(*pairs) if sum(cost[i, w - 1, a - 1] for i, (w, a) in enumerate(p)) <= budget),
               key=lambda p: sum(penalty[i, w - 1, a - 1] for i, (w, a) in enumerate(p)))
    assert solve(cost, penalty, budget, pairs) == list(best)


def test_a_budget_nothing_fits_and_a_missing_penalty_are_refused():
    cost, w_pen, a_pen, ws, as_ = two_layer_problem()
    with pytest.raises(NoAllocation, match="no allocation fits the budget 1"):
        allocations(cost, w_pen, a_pen, 1.0, ws, as_, k=1)
    w_pen[1, 3] = np.nan
    with pytest.raises(ValueError, match="layer 1: no penalty"):
        allocations(cost, w_pen, a_pen, 4.0, ws, as_, k=1)


def test_perturbed_allocations_are_seeded():
    cost, w_pen, a_pen, ws, as_ = two_layer_problem()
    assert allocations(cost, w_pen, a_pen, 4.0, ws, as_, k=3, seed=7) == allocations(cost, w_pen, a_pen, 4.0, ws, as_,
                                                                                       k=3, seed=7)


def test_sensitivity_is_made_monotone_in_the_bits_and_written_per_layer_and_bitwidth(tmp_path):
    weight = np.full((1, 8), np.nan)
    weight[0, 1:] = [0.9, 0.1, 0.3, 0.0, 0.02, 0.0, 0.0]  # 2..8 bits: 5 bits measured worse than 4 by chance
    act = np.full((1, 8), np.nan)
    act[0, [1, 3, 7]] = [0.5, 0.05, 0.0]  # 2, 4, 8 bits only (a hardware with those)
    sens = Sensitivity(("conv",), weight, act, base_loss=0.1, images=256)
    w, a = sens.monotone()
    assert w[0, 1:].tolist() == [0.9, 0.3, 0.3, 0.02, 0.02, 0.0, 0.0]
    assert np.isnan(a[0, [0, 2, 4, 5, 6]]).all() and a[0, [1, 3, 7]].tolist() == [0.5, 0.05, 0.0]
    sens.to_csv(tmp_path / "s.csv")
    lines = (tmp_path / "s.csv").read_text().splitlines()
    assert lines[0] == "layer,bits,weight_loss_rise,act_loss_rise"
    assert lines[1] == "conv,2,0.9,0.5" and lines[2] == "conv,3,0.1," and len(lines) == 8
