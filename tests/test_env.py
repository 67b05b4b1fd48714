"""The environment: Gymnasium's checker, the paper's action mapping, budget enforcement, reward."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
import hw_models as H
from envs import MixedPrecisionEnv, action_to_bits

LAYERS = [
    H.LayerSpec("c0", "conv", 3, 16, kernel=3, in_h=16, in_w=16, out_h=16, out_w=16),
    H.LayerSpec("dw1", "dwconv", 16, 16, kernel=3, groups=16, in_h=16, in_w=16, out_h=16, out_w=16),
    H.LayerSpec("pw1", "conv", 16, 32, in_h=16, in_w=16, out_h=16, out_w=16),
    H.LayerSpec("dw2", "dwconv", 32, 32, kernel=3, stride=2, groups=32, in_h=16, in_w=16, out_h=8, out_w=8),
    H.LayerSpec("pw2", "conv", 32, 64, in_h=8, in_w=8, out_h=8, out_w=8),
    H.LayerSpec("fc", "fc", 64, 10),
]


def fake_evaluator(policy):
    """Accuracy that grows with the mean bitwidth (a stand-in for finetuning in env tests)."""
    return 50.0 + 5.0 * float(np.mean([w + a for w, a in policy])) / 2


def make_env(budget_policy=(4, 4), **kw):
    model = kw.pop("cost_model", H.create_hw_model("bismo-edge"))
    budget = model.policy_cost(LAYERS, [budget_policy] * len(LAYERS), "latency_ms")
    return MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0, **kw)


def run_episode(env, actions):
    obs, _ = env.reset(seed=0)
    observations = [obs]
    for i, a in enumerate(actions):
        obs, reward, terminated, truncated, info = env.step(np.array([a], dtype=np.float32))
        observations.append(obs)
        assert terminated == (i == len(actions) - 1) and not truncated
    return observations, reward, info


@pytest.mark.filterwarnings("ignore:.*not having a spec")  # the registered one below has a spec: render modes checked
def test_passes_gymnasium_env_checker_and_is_registered():
    check_env(make_env())
    env = gym.make(envs.ENV_ID, layers=LAYERS, cost_model=H.create_hw_model("bitfusion"), budget=1.0,
                   evaluator=fake_evaluator, fp_accuracy=90.0, metric="energy_mj")
    assert isinstance(env.unwrapped, MixedPrecisionEnv)
    check_env(env.unwrapped)


def test_action_mapping_is_the_papers_equal_width_bins():
    choices = tuple(range(2, 9))
    for a in np.linspace(0, 1, 101):
        expected = int(np.clip(np.round(2 - 0.5 + a * (8 - 2 + 1)), 2, 8))
        assert action_to_bits(a, choices) == expected
    assert action_to_bits(0.0, choices) == 2 and action_to_bits(1.0, choices) == 8
    # each bitwidth gets an equal share of [0, 1]
    counts = np.bincount([action_to_bits(a, choices) for a in np.linspace(0, 0.9999, 7000)], minlength=9)[2:]
    assert counts.min() >= 999 and counts.max() <= 1001


def test_observation_is_the_10_dim_state_set_cleanly_each_step():
    env = make_env(budget_policy=(8, 8))
    actions = [0.1, 0.9, 0.3, 0.6, 1.0, 0.0, 0.5, 0.5, 0.2, 0.8, 0.7, 0.4]
    obs, _, _ = run_episode(env, actions)
    obs = np.array(obs[:-1])
    assert obs.shape == (12, 10) and obs.min() >= 0 and obs.max() <= 1
    np.testing.assert_allclose(obs[::2, 0], np.linspace(0, 1, 6), atol=1e-6)  # layer index, min-max normalised
    np.testing.assert_array_equal(obs[::2, 0], obs[1::2, 0])  # weight and activation step of one layer
    assert list(obs[:, 8]) == [1, 0] * 6  # weight / activation flag
    np.testing.assert_allclose(obs[1:, 9], actions[:-1], atol=1e-6)  # previous action
    assert obs[0, 9] == 0
    assert list(obs[::2, 7]) == [0, 1, 0, 1, 0, 0]  # depthwise flag
    assert obs[::2, 6].argmax() == 4 and obs[::2, 6].min() == 0  # #params normalised: pw2 largest


def test_reward_is_a_tenth_of_the_accuracy_change_at_the_last_step_only():
    env = make_env(budget_policy=(8, 8))
    env.reset(seed=0)
    rewards = []
    for _ in range(env.n_steps):
        _, r, _, _, info = env.step(np.array([1.0], dtype=np.float32))
        rewards.append(r)
    assert rewards[:-1] == [0.0] * (env.n_steps - 1)
    assert info["policy"] == [(8, 8)] * 6
    assert rewards[-1] == pytest.approx(0.1 * (fake_evaluator([(8, 8)] * 6) - 90.0))
    assert info["cost_ratio"] == pytest.approx(1.0)


def test_budget_is_enforced_from_the_last_layer_backwards():
    model = H.create_hw_model("bismo-edge")
    budget = 0.9 * model.policy_cost(LAYERS, [(8, 8)] * 6, "latency_ms")
    env = MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0)
    _, _, info = run_episode(env, [1.0] * 12)  # ask for w8a8 everywhere
    policy = info["policy"]
    assert info["cost"] <= env.budget * (1 + 1e-9)
    # the first layers keep 8 bits while the last ones were lowered
    assert policy[0] == (8, 8)
    assert policy[-1][0] < 8 and policy[-1][1] < 8
    # reproduce the paper's sequential decrease by hand
    bits = [[8, 8] for _ in LAYERS]
    table = env.table

    def total():
        return sum(table[i, w - 1, a - 1] for i, (w, a) in enumerate(bits))

    while total() > env.budget:
        for i in reversed(range(len(bits))):
            for j in (1, 0):
                if total() > env.budget and bits[i][j] > 2:
                    bits[i][j] -= 1
    assert policy == [tuple(b) for b in bits]
    assert info["requested_policy"] == [(8, 8)] * 6
    assert info["requested_cost"] == pytest.approx(env.reference_cost)
    # the taken actions map back to the enforced policy; untouched ones are the agent's own
    taken = info["taken_actions"]
    assert [action_to_bits(a, env.choices) for a in taken] == [b for p in policy for b in p]
    assert taken[:2] == [1.0, 1.0]
    assert taken[-1] == pytest.approx((policy[-1][1] - 2 + 0.5) / 7)


def test_highest_first_enforcement_lowers_the_highest_bitwidth_first():
    model = H.create_hw_model("bismo-edge")
    budget = model.policy_cost(LAYERS, [(4, 4)] * 6, "latency_ms")
    env = MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0, enforcement="highest-first")
    asked = [(8, 3), (6, 6), (3, 8), (8, 8), (5, 2), (8, 4)]
    policy = env.enforce_budget(asked)
    assert env.cost(policy) <= budget * (1 + 1e-9)
    # by hand: lower the highest bitwidth (ties: last layer, activation before weight) one step at a time
    bits = [list(p) for p in asked]
    order = [(i, j) for i in reversed(range(6)) for j in (1, 0)]
    while env.cost(bits) > budget:
        i, j = max((s for s in order if bits[s[0]][s[1]] > 2), key=lambda s: bits[s[0]][s[1]])
        bits[i][j] -= 1
    assert policy == [tuple(b) for b in bits]
    # the order of the request survives where the sequential decrease would cut the last layers
    assert policy[3][0] >= policy[4][0] and policy[1] != (2, 2)
    assert env.enforce_budget([(4, 4)] * 6) == [(4, 4)] * 6
    with pytest.raises(ValueError, match="enforcement must be one of"):
        MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0, enforcement="random")


def test_fill_budget_raises_the_lowest_bitwidths_while_the_budget_allows():
    """`fill_budget`: after enforcement, the lowest bitwidth (ties: first layer, weight before
    activation) goes up one step while the raise fits, until none fits, so no budget is left unspent
    that a single raise could use. Off, a policy under the budget is left alone."""
    model = H.create_hw_model("bismo-edge")
    budget = model.policy_cost(LAYERS, [(4, 4)] * 6, "latency_ms")
    for enforcement in ("sequential", "highest-first"):
        env = MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0, enforcement=enforcement,
                                fill_budget=True)
        # all 2-bit: raised round by round, every slot 2 -> 3, then 3 -> 4, where the budget is spent exactly
        assert env.enforce_budget([(2, 2)] * 6) == [(4, 4)] * 6
        for asked in ([(8, 3), (6, 6), (3, 8), (8, 8), (5, 2), (8, 4)], [(2, 5), (3, 2), (2, 2), (6, 2), (2, 3), (2, 2)]):
            policy = env.enforce_budget(asked)
            # by hand: enforce as without filling, then raise the lowest-first in the order first layer, w before a
            bits = [list(p) for p in MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, fp_accuracy=90.0,
                                                       enforcement=enforcement).enforce_budget(asked)]
            order = [(i, j) for i in range(6) for j in (0, 1)]
            while True:
                fits = [(i, j) for i, j in order if bits[i][j] < 8
                        and env.cost([b if k != i else [b[0] + (j == 0), b[1] + (j == 1)]
                                      for k, b in enumerate(bits)]) <= budget * (1 + 1e-12)]
                if not fits:
                    break
                i, j = min(fits, key=lambda s: bits[s[0]][s[1]])  # min keeps the first of equals
                bits[i][j] += 1
            assert policy == [tuple(b) for b in bits]
            assert env.cost(policy) <= budget * (1 + 1e-9)
    unfilled = make_env(budget_policy=(4, 4))
    assert unfilled.enforce_budget([(2, 2)] * 6) == [(2, 2)] * 6
    # pinned first and last layers stay at 8 bits; the episode reports the filled policy
    env = make_env(budget_policy=(5, 5), fill_budget=True, pin_first_last=True)
    _, _, info = run_episode(env, [0.0] * 12)
    assert info["requested_policy"] == [(8, 8)] + [(2, 2)] * 4 + [(8, 8)]
    assert info["policy"][0] == info["policy"][-1] == (8, 8) and info["cost"] <= env.budget * (1 + 1e-9)
    assert min(b for p in info["policy"] for b in p) > 2


def test_policy_within_budget_is_left_alone():
    env = make_env(budget_policy=(8, 8))
    _, _, info = run_episode(env, [0.0, 1.0] * 6)
    assert info["policy"] == info["requested_policy"] == [(2, 8)] * 6


def test_unreachable_budget_names_the_minimum_cost():
    model = H.create_hw_model("bismo-edge")
    w2a2 = model.policy_cost(LAYERS, [(2, 2)] * 6, "latency_ms")
    with pytest.raises(ValueError, match=r"cannot be met: the cheapest allowed policy costs"):
        MixedPrecisionEnv(LAYERS, model, 0.5 * w2a2, fake_evaluator, fp_accuracy=90.0)
    with pytest.raises(ValueError, match="first/last layer pinned"):
        MixedPrecisionEnv(LAYERS, model, 1.01 * w2a2, fake_evaluator, fp_accuracy=90.0, pin_first_last=True)
    MixedPrecisionEnv(LAYERS, model, 1.01 * w2a2, fake_evaluator, fp_accuracy=90.0)


def test_pinned_first_and_last_layers_stay_at_8_bits():
    env = make_env(budget_policy=(5, 5), pin_first_last=True)
    _, _, info = run_episode(env, [0.0] * 12)
    assert info["policy"][0] == (8, 8) and info["policy"][-1] == (8, 8)
    assert all(w == 2 and a == 2 for w, a in info["policy"][1:-1])


def test_supported_bits_of_bitfusion_restrict_the_choices():
    env = make_env(budget_policy=(8, 8), cost_model=H.create_hw_model("bitfusion"))
    assert env.choices == (2, 4, 8)
    _, _, info = run_episode(env, [0.0, 0.5, 0.5, 1.0, 0.3, 0.7] * 2)
    assert {b for p in info["policy"] for b in p} <= {2, 4, 8}
    assert info["policy"][0] == (2, 4) and info["policy"][1] == (4, 8)


def test_same_actions_give_the_same_episode():
    env = make_env()
    rng = np.random.default_rng(0)
    actions = rng.random(12).tolist()
    a = run_episode(env, actions)
    b = run_episode(env, actions)
    np.testing.assert_array_equal(np.array(a[0]), np.array(b[0]))
    assert a[1] == b[1] and a[2]["policy"] == b[2]["policy"]


def test_weights_only_search_takes_one_step_per_layer_and_lowers_only_weights():
    model = H.create_hw_model("model-size")
    budget = model.policy_cost(LAYERS, [(4, 8)] * 6, "size_mb")
    env = MixedPrecisionEnv(LAYERS, model, budget, fake_evaluator, metric="size_mb", fp_accuracy=90.0,
                            weights_only=True)
    check_env(env, skip_render_check=True)
    assert env.n_steps == len(LAYERS)
    observations, _, info = run_episode(env, [1.0] * len(LAYERS))
    assert all(obs[8] == 1.0 for obs in observations)  # every step decides weight bits
    assert all(a == 8 for _, a in info["policy"])
    assert info["cost"] <= budget * (1 + 1e-9) and info["policy"][-1][0] <= info["policy"][0][0] < 8


@pytest.mark.parametrize("weights_only", [False, True])
def test_peek_policy_is_the_policy_the_last_step_evaluates(weights_only):
    seen = []
    env = MixedPrecisionEnv(LAYERS, H.create_hw_model("bismo-edge"),
                            H.create_hw_model("bismo-edge").policy_cost(LAYERS, [(4, 8)] * 6, "latency_ms"),
                            lambda p: seen.append(p) or 50.0, fp_accuracy=90.0, weights_only=weights_only)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    with pytest.raises(RuntimeError, match="last step"):
        env.peek_policy(0.5)
    while not env.last_step:
        env.step(rng.random(1).astype(np.float32))
    peeked = env.peek_policy(np.array([0.9]))
    *_, info = env.step(np.array([0.9], dtype=np.float32))
    assert peeked == info["policy"] == seen[0]
