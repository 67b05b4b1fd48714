"""The tables' comparison of methods: against the uniform policy of the budget, free weight bits,
and each hardware's policies priced on the other hardware (worked examples, no training)."""

import numpy as np
import pandas as pd
import pytest

import hw_models
from haq.models import model_layers
from haq.tables.compare import against_uniform, budget_policy, cross_pricing, free_weight_bits, methods_section
from hw_models.scaling import bit_scaling


def row(method, policy, budget, mean, sd, cost=1.0, seed=0, **kw):
    return {"model": "m", "hw": "h", "method": method, "policy": policy, "budget": budget, "seed": seed,
            "cost": cost, "cost_ratio": cost / 4.0, "test_accuracy_refits": mean, "test_accuracy_refits_sd": sd,
            "refits": 4, "finetunes": 80, **kw}


def test_each_method_against_the_uniform_policy_of_its_budget():
    df = pd.DataFrame([
        row("fixed", "w3a3", "", 90.0, 1.0), row("fixed", "w8a8", "", 99.0, 0.1, cost=4.0),
        row("haq", "searched", "w3a3", 95.0, 1.0),  # +5 points, t = 7.1 with 6 degrees of freedom: significant
        row("ilp", "searched", "w3a3", 91.0, 2.0),  # +1 point over a spread of 2: not significant
    ])
    cmp = against_uniform(df)
    assert cmp["method"].tolist() == ["haq", "ilp"] and (cmp["uniform"] == "w3a3").all()
    assert cmp["gain"].tolist() == [5.0, 1.0] and cmp["significant"].tolist() == [True, False]
    assert cmp["uniform_loss"].tolist() == [9.0, 9.0]
    text = "\n".join(methods_section(df, "4 refits"))
    assert "| m | h | w3a3 | -9.00 | +5.00, 1 of 1 | +1.00, 0 of 1 | 80 / 80 |" in text
    assert "DDPG (HAQ) at 1 of 1 budgets" in text and "DDPG loses to ILP" not in text
    assert "at 1 of them: m on h at w3a3: DDPG (HAQ), 1 of 1" in text
    df.loc[3, "test_accuracy_refits"] = 97.0
    assert "DDPG loses to ILP (a smaller mean gain) at 1 of 1 budgets" in "\n".join(methods_section(df, "4 refits"))


def test_a_ratio_budget_is_compared_with_the_costliest_uniform_policy_within_it():
    fixed = pd.DataFrame([row("fixed", p, "", 50.0, 1.0, cost=c) for p, c in
                          (("w2a2", 2.0), ("w4a2", 2.2), ("w4a4", 2.7), ("w8a8", 4.0))])
    assert budget_policy(fixed, "0.6", 4.0)["policy"] == "w4a2"  # 2.4 allowed: w4a2 (2.2) is the costliest within
    assert budget_policy(fixed, "w4a4", 4.0)["policy"] == "w4a4"
    assert budget_policy(fixed, "0.4", 4.0) is None


def test_free_weight_bits_and_cross_pricing_read_the_cost_models():
    layers = {"digits-mbv2": model_layers("digits-mbv2")}
    scaling = np.array(bit_scaling(hw_models.create_hw_model("bismo-edge").table(layers["digits-mbv2"], "latency_ms")))
    free = scaling == "activation"
    assert 0 < free.sum() < len(free)  # the edge preset has memory-bound layers whose latency ignores weight bits
    w = " ".join("8" if f else "3" for f in free)
    a = " ".join("3" for _ in free)
    df = pd.DataFrame([{"model": "digits-mbv2", "hw": "bismo-edge", "method": "ilp", "budget": "w3a3", "seed": 0,
                        "w_bits": w, "a_bits": a}])
    text = "\n".join(free_weight_bits(df, layers, "latency_ms"))
    assert f"| digits-mbv2 | bismo-edge | ILP | {free.sum()} of {len(free)} | 8.00 | 3.00 |" in text
    assert "more weight bits in 1 of 1 rows" in text
    priced = "\n".join(cross_pricing(df, layers, "latency_ms", ["bismo-edge", "bismo-cloud"]))
    for hw in ("bismo-edge", "bismo-cloud"):  # the policy's cost over w8a8's on each preset, by hand
        t = hw_models.create_hw_model(hw).table(layers["digits-mbv2"], "latency_ms")
        ratio = sum(t[i, (7 if f else 2), 2] for i, f in enumerate(free)) / t[:, 7, 7].sum()
        assert f"{ratio:.3f}" in priced
    assert cross_pricing(df, layers, "latency_ms", ["bismo-edge"]) == []


@pytest.mark.parametrize("missing", ["test_accuracy_refits_sd", "refits"])
def test_no_comparison_without_the_refit_columns(missing):
    df = pd.DataFrame([row("fixed", "w3a3", "", 90.0, 1.0), row("haq", "searched", "w3a3", 95.0, 1.0)]).drop(columns=missing)
    assert against_uniform(df).empty and methods_section(df, "4 refits") == []


def test_edge_and_cloud_policies_are_compared_bit_by_bit():
    from haq.tables.compare import policy_differences

    def searched(hw, seed, w, a):
        return {"model": "m", "budget": "w3a3", "method": "ilp", "seed": seed, "hw": hw, "w_bits": w, "a_bits": a}

    df = pd.DataFrame([searched("edge", 0, "8 3", "3 3"), searched("cloud", 0, "3 3", "3 4"),
                       searched("edge", 1, "3 3", "3 3"), searched("cloud", 1, "3 3", "3 3"),
                       searched("edge", 2, "3 3", "3 3")])  # seed 2 has no cloud search: not a pair
    pairs = policy_differences(df, "edge", "cloud")
    assert pairs["seed"].tolist() == [0, 1] and pairs["bits_changed"].tolist() == [2, 0]
