"""The search end to end: determinism, kill-and-resume, run directory, CLI."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import truncnorm

from haq.agent import EpisodeRewardReplayBuffer, TruncatedNormalNoise
from haq.cli import main
from haq.config import AgentConfig, SearchConfig
from haq.evaluator import policy_seed
from haq.parts import build_evaluator, build_parts
from haq.policy import Policy
from haq.qmodel import QuantConfig
from haq.search import Search, agent_exploration, read_episodes, stuck_agent
from haq.train import FinetuneConfig

pytestmark = pytest.mark.slow


def tiny_config(tmp_path, name="run", **kw) -> SearchConfig:
    base = dict(method="ddpg", episodes=5, warmup=2, seed=0, out=str(tmp_path / name),
                finetune=FinetuneConfig(max_train_images=128), quant=QuantConfig(calib_images=128),
                agent=AgentConfig(batch_size=16))
    base.update(kw)
    return SearchConfig(**base)


@pytest.fixture(scope="module")
def shared_parts(tmp_path_factory):
    """Model, data and calibration built once for the module (the same for every tiny config).
    Its evaluator finetunes every policy it is given (no reuse of earlier results), so the
    tests that compare two searches compare two computations; the reuse has its own test."""
    parts = build_parts(tiny_config(tmp_path_factory.mktemp("parts")))
    parts.evaluator.memo = False
    return parts


def rows(run_dir):
    return [(r["episode"], r["reward"], r["w_bits"], r["a_bits"]) for r in read_episodes(run_dir)]


def test_search_writes_the_run_directory(tmp_path, shared_parts):
    config = tiny_config(tmp_path)
    summary = Search(config, evaluator=shared_parts.evaluator).run()
    run = tmp_path / "run"
    for name in ("config.yaml", "episodes.csv", "best_policy.json", "summary.json", "policy.png", "progress.png",
                 "checkpoint.json"):
        assert (run / name).is_file(), name
    episodes = read_episodes(run)
    assert [int(r["episode"]) for r in episodes] == list(range(1, 6))
    assert [r["phase"] for r in episodes] == ["warmup"] * 2 + ["agent"] * 3
    for r in episodes:
        assert float(r["cost"]) <= summary["budget"] * (1 + 1e-9)
        assert len(r["w_bits"].split()) == len(shared_parts.layers)
        # the request before budget enforcement: never below what was evaluated
        for req, got in (("requested_w_bits", "w_bits"), ("requested_a_bits", "a_bits")):
            assert all(int(q) >= int(g) for q, g in zip(r[req].split(), r[got].split(), strict=True))
    # random warm-up requests mostly exceed a w4a4 budget, so some were lowered
    assert any(r["requested_w_bits"] + r["requested_a_bits"] != r["w_bits"] + r["a_bits"] for r in episodes)
    best = json.loads((run / "best_policy.json").read_text())
    assert best["reward"] == max(float(r["reward"]) for r in episodes)
    assert summary["best"]["reward"] == best["reward"]
    assert {b["policy"] for b in summary["uniform_baselines"]} == {"w2a2", "w3a3"}  # the default budget: w3a3
    assert summary["distinct_policies"] == len({(r["w_bits"], r["a_bits"]) for r in episodes})
    assert summary["agent_distinct_policies"] == len({(r["w_bits"], r["a_bits"]) for r in episodes[2:]})
    assert SearchConfig.from_yaml(run / "config.yaml") == config


def test_a_search_whose_agent_evaluated_one_policy_after_the_warm_up_says_so():
    """`stuck_agent`: when one policy took 90% or more of the episodes after the warm-up (what the
    mini tables' digits32-mbv2 seed-1 latency searches did: 6-8 bits asked in every layer, each
    request lowered to the uniform policy of the budget), a sentence says so with the mean bits
    asked and given; a search that explored, or had too few agent episodes to tell, gets none."""
    def rec(w: str, a: str, rw: str = "8 8", ra: str = "8 7") -> dict[str, str]:
        return {"w_bits": w, "a_bits": a, "requested_w_bits": rw, "requested_a_bits": ra}

    warmup = [rec("2 8", "3 3"), rec("5 2", "4 6")]
    stuck = warmup + [rec("4 4", "4 4")] * 10
    assert stuck_agent(stuck, warmup=2).startswith(
        "all 10 episodes after the warm-up evaluated one policy (mean 4.00 weight / 4.00 activation bits); the agent "
        "asked for 8.00 / 7.50 bits on average and budget enforcement lowered every such request to it")
    assert stuck_agent(stuck[:-1], warmup=2) is None  # 9 agent episodes: too few to tell
    # 10 of 11 (91%) still one policy; 10 of 12 (83%) not
    assert stuck_agent(stuck + [rec("3 5", "4 4")], warmup=2).startswith("10 of the 11 episodes after the warm-up")
    assert stuck_agent(stuck + [rec("3 5", "4 4"), rec("5 3", "4 4")], warmup=2) is None
    assert stuck_agent(warmup * 6, warmup=0) is None  # the warm-up's random policies differ
    old = [{"w_bits": "4 4", "a_bits": "4 4"}] * 12  # a run written before requests were recorded
    assert stuck_agent(old, warmup=2) == ("all 10 episodes after the warm-up evaluated one policy (mean 4.00 weight / "
                                          "4.00 activation bits)")
    # what the tables' CSVs record of it: distinct policies after the warm-up and the top one's share
    assert agent_exploration(stuck + [rec("3 5", "4 4")], warmup=2) == (2, 10 / 11)
    assert agent_exploration(warmup * 2, warmup=0) == (2, 0.5)
    assert agent_exploration(warmup, warmup=2) is None  # random search: no agent episode


def test_a_borrowed_evaluator_is_checked_and_the_environment_is_the_configs(tmp_path, shared_parts):
    import dataclasses

    other = "sequential" if shared_parts.env.enforcement == "highest-first" else "highest-first"
    config = dataclasses.replace(tiny_config(tmp_path), enforcement=other, budget="w6a6", seed=3)
    search = Search(config, evaluator=shared_parts.evaluator)
    assert search.parts.evaluator is shared_parts.evaluator and search.parts.evaluator.seed == 3
    assert search.parts.env.enforcement == other and search.parts.env.budget > shared_parts.env.budget
    # an evaluator that would price policies otherwise is refused, naming what differs
    with pytest.raises(ValueError, match=r"evaluator does not match the config in \['finetune'\]"):
        Search(tiny_config(tmp_path, finetune=FinetuneConfig(max_train_images=64)), evaluator=shared_parts.evaluator)
    with pytest.raises(ValueError, match=r"evaluator does not match the config in \['quant'\]"):
        Search(tiny_config(tmp_path, quant=QuantConfig(calib_images=64)), evaluator=shared_parts.evaluator)
    with pytest.raises(ValueError, match=r"evaluator does not match the config in \['model'\]"):
        Search(tiny_config(tmp_path, model="digits32-mbv2"), evaluator=shared_parts.evaluator)


def test_a_fresh_search_refuses_a_directory_that_holds_one(tmp_path, shared_parts):
    Search(tiny_config(tmp_path, episodes=3), evaluator=shared_parts.evaluator).run()
    before = (tmp_path / "run" / "episodes.csv").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        Search(tiny_config(tmp_path, episodes=3), evaluator=shared_parts.evaluator).run()
    assert (tmp_path / "run" / "episodes.csv").read_text() == before


def test_replay_buffer_stores_the_actions_budget_enforcement_left(tmp_path):
    from gymnasium import spaces
    buf = EpisodeRewardReplayBuffer(10, spaces.Box(0, 1, (2,)), spaces.Box(0, 1, (1,)),
                                    store_taken_actions=True, prev_action_index=1)
    obs = [np.array([[0.0, 0.0]]), np.array([[0.5, 0.9]]), np.array([[1.0, 0.8]])]
    asked = [0.9, 0.8]  # scaled to [-1, 1] by SB3 before they reach the buffer
    for t in range(2):
        buf.add(obs[t], obs[t + 1], np.array([[2 * asked[t] - 1]]), np.array([-1.0 if t else 0.0]),
                np.array([t == 1]), [{"taken_actions": [0.9, 0.25]} if t else {}])
    np.testing.assert_allclose(buf.actions[:2, 0, 0], [0.8, -0.5])
    np.testing.assert_allclose(buf.observations[:2, 0, 1], [0.0, 0.9])
    np.testing.assert_allclose(buf.next_observations[:2, 0, 1], [0.9, 0.25])
    np.testing.assert_allclose(buf.rewards[:2, 0], [-1.0, -1.0])


def test_replay_buffer_charges_requests_over_the_budget():
    from gymnasium import spaces
    buf = EpisodeRewardReplayBuffer(10, spaces.Box(0, 1, (1,)), spaces.Box(-1, 1, (1,)), over_budget_penalty=2.0)
    obs, act = np.zeros((1, 1), np.float32), np.zeros((1, 1), np.float32)
    for final, requested in ((-1.0, 15.0), (-0.5, 8.0)):  # budget 10: 50% over, then within
        buf.add(obs, obs, act, np.array([0.0]), np.array([False]), [{}])
        buf.add(obs, obs, act, np.array([final]), np.array([True]),
                [{"requested_cost": requested, "budget": 10.0}])
    # -1 - 2 * 0.5 = -2 against baseline 0; then -0.5 against the baseline -2
    np.testing.assert_allclose(buf.rewards[:4, 0], [-2.0, -2.0, 1.5, 1.5])


def _twin_agents(batch: int):
    """The engine's agent and a second one to train with SB3's own update, on a two-layer
    env, with the same 6 episodes in both replay buffers."""
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor

    import hw_models as H
    from envs import MixedPrecisionEnv
    from haq.parts import make_agent
    layers = [H.LayerSpec("c0", "conv", 3, 16, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8), H.LayerSpec("fc", "fc", 16, 10)]
    env = MixedPrecisionEnv(layers, H.create_hw_model("bismo-edge"), 1.0, lambda policy: 90.0, fp_accuracy=95.0)
    cfg = SearchConfig(agent=AgentConfig(episode_targets=True, batch_size=batch))
    ours, sb3s = (make_agent(cfg, Monitor(env), env.n_steps) for _ in range(2))
    rng = np.random.default_rng(0)
    for agent in (ours, sb3s):
        agent.set_logger(configure(None, [""]))
    for _ in range(6):  # the same episodes in both buffers
        obs = rng.random((env.n_steps + 1, 1, 10), dtype=np.float32)
        act, final = rng.random((env.n_steps, 1, 1), dtype=np.float32), -rng.random()
        for t in range(env.n_steps):
            last = t == env.n_steps - 1
            for agent in (ours, sb3s):
                agent.replay_buffer.add(obs[t], obs[t + 1], act[t], np.array([final if last else 0.0]),
                                        np.array([last]), [{}])
    return env, ours, sb3s


@pytest.mark.parametrize("batch", [8, 37])
def test_episode_target_updates_equal_sb3s_ddpg_updates(tmp_path, batch):
    """The target-network-free update used with episode targets is SB3's update, exactly
    (37: loss normalisers that are not powers of two), and goes on so after a checkpoint."""
    from stable_baselines3 import DDPG
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor

    env, ours, sb3s = _twin_agents(batch)
    np.random.seed(3)
    ours.train(5, batch_size=batch)
    ours.train(3, batch_size=batch)
    after_ours = np.random.get_state()
    np.random.seed(3)
    DDPG.train(sb3s, 5, batch_size=batch)  # SB3's own update, target networks included
    DDPG.train(sb3s, 3, batch_size=batch)
    # the same draws from NumPy's global random state, so later batches stay the same too
    assert all(np.array_equal(x, y) for x, y in zip(after_ours, np.random.get_state()))
    for a, b in ((ours.actor, sb3s.actor), (ours.critic, sb3s.critic)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name
        mine, theirs = a.optimizer.state_dict(), b.optimizer.state_dict()
        assert mine["param_groups"] == theirs["param_groups"]
        for i, st in theirs["state"].items():
            for key, value in st.items():
                assert torch.equal(mine["state"][i][key], value), (i, key)
    assert not torch.equal(next(sb3s.actor_target.parameters()), next(sb3s.actor.parameters()))
    # through the engine's checkpoint (no pickles) into a fresh agent of the same config, training goes on the same
    from haq import checkpoint
    from haq.parts import make_agent

    checkpoint.save(ours, tmp_path / "ckpt", {})
    resumed = make_agent(SearchConfig(agent=AgentConfig(episode_targets=True, batch_size=batch)), Monitor(env),
                         env.n_steps)
    checkpoint.load(resumed, tmp_path / "ckpt")
    resumed.set_logger(configure(None, [""]))
    for agent in (resumed, sb3s):
        np.random.seed(4)
        agent.train(3, batch_size=batch) if agent is resumed else DDPG.train(agent, 3, batch_size=batch)
    for a, b in ((resumed.actor, sb3s.actor), (resumed.critic, sb3s.critic)):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(p, q), name


def test_final_layer_init_starts_every_action_mid_range():
    from stable_baselines3.common.monitor import Monitor

    import hw_models as H
    from envs import MixedPrecisionEnv
    from haq.parts import make_agent
    layers = [H.LayerSpec("c0", "conv", 3, 16, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8), H.LayerSpec("fc", "fc", 16, 10)]
    env = MixedPrecisionEnv(layers, H.create_hw_model("bismo-edge"), 1.0, lambda policy: 90.0, fp_accuracy=95.0)
    cfg = SearchConfig(agent=AgentConfig(final_layer_init=3e-3))
    agent = make_agent(cfg, Monitor(env), env.n_steps)
    for net in (agent.actor.mu, agent.critic.q_networks[0]):
        last = [m for m in net if hasattr(m, "weight")][-1]
        assert last.weight.abs().max() <= 3e-3 and last.bias.abs().max() <= 3e-3
    for p, q in zip(agent.actor.parameters(), agent.actor_target.parameters()):
        assert np.array_equal(p.detach().numpy(), q.detach().numpy())
    obs = np.random.default_rng(0).random((20, 10)).astype(np.float32)
    actions, _ = agent.predict(obs, deterministic=True)
    assert np.all(np.abs(actions - 0.5) < 0.01)  # 5 bits on 2..8, whatever the layer


def test_an_evaluation_is_a_function_of_the_policy_and_a_repeat_is_reused(shared_parts):
    """Evaluating a policy again, after others, gives the same metrics (the finetune is seeded
    by the policy and starts from the float weights), which is what makes answering a repeated
    policy from the first evaluation exact; a call does so, `evaluate` never does."""
    ev = shared_parts.evaluator
    seed0, calls, reused = ev.seed, ev.calls, ev.reused
    ev.memo, ev.seed = True, 0
    try:
        p, q = Policy.uniform(ev.layers, 4, 4), Policy.uniform(ev.layers, 3, 5)
        first = ev.evaluate(p)
        ev.evaluate(q)
        assert ev.evaluate(p) == first
        assert ev(p) == first["top1"] and (ev.calls - calls, ev.reused - reused) == (4, 0)
        assert ev(p) == first["top1"] and (ev.calls - calls, ev.reused - reused) == (4, 1)  # from the memo
        ev.seed = 1  # another finetune seed is another evaluation
        ev(p)
        assert (ev.calls - calls, ev.reused - reused) == (5, 1)
        ev.memo = False
        ev(p)
        assert (ev.calls - calls, ev.reused - reused) == (6, 1)
        # one finetune measured on several splits: each split's metrics as `evaluate` gives them
        ev.seed = 0
        both = ev.evaluate_splits(p, ("val", "test"))
        assert both["val"] == first and both["test"] == ev.evaluate(p, split="test")
        with pytest.raises(ValueError, match="split must be 'train', 'val' or 'test', got 'valid'"):
            ev.evaluate_splits(p, ("valid",))
    finally:
        ev.memo, ev.seed = False, seed0


def test_shared_shuffle_finetunes_every_policy_with_the_base_seeds_shuffle(shared_parts):
    """``finetune.shared_shuffle`` (common random numbers): every policy's finetune is seeded by
    the base seed alone, so two policies share it; without it the policy joins the seed. Either
    way an evaluation stays a function of the policy, and the two settings are not mixed up in
    the memo."""
    ev = shared_parts.evaluator
    finetune, seed0 = ev.finetune, ev.seed
    p, q = Policy.uniform(ev.layers, 4, 4), Policy.uniform(ev.layers, 3, 5)
    try:
        ev.memo, ev.seed = True, 0
        assert ev.finetune_seed(p) != ev.finetune_seed(q)
        ev(p)  # now in the memo
        calls, reused = ev.calls, ev.reused
        ev.finetune = dataclasses.replace(finetune, shared_shuffle=True)
        assert ev.finetune_seed(p) == ev.finetune_seed(q) == policy_seed(0, ())
        ev.seed = 1
        assert ev.finetune_seed(p) == policy_seed(1, ()) != policy_seed(0, ())
        ev.seed = 0
        first = ev.evaluate(p)
        ev.evaluate(q)
        assert ev.evaluate(p) == first
        assert ev(p) == first["top1"]
        assert (ev.calls - calls, ev.reused - reused) == (4, 0)  # the memo of the plain p was not read
    finally:
        ev.finetune, ev.seed, ev.memo = finetune, seed0, False


def test_same_seed_same_policies_and_rewards(tmp_path, shared_parts):
    a = Search(tiny_config(tmp_path, "a"), evaluator=shared_parts.evaluator)
    a.run()
    b = Search(tiny_config(tmp_path, "b"), evaluator=shared_parts.evaluator)
    b.run()
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    c = Search(tiny_config(tmp_path, "c", seed=1), evaluator=shared_parts.evaluator)
    c.run()
    assert rows(tmp_path / "c") != rows(tmp_path / "a")


def test_a_p_true_reward_reads_the_true_class_probability_and_the_episodes_still_record_top1(tmp_path, shared_parts):
    """``reward_measure: p_true``: each episode's reward is HAQ's Eq. 2 on the mean true-class
    probability (the policy's and the float model's, on search-validation), while its accuracy,
    the summary's and the fixed-bit rows' stay top-1; bad values and Ray workers are refused."""
    ev = shared_parts.evaluator
    summary = Search(tiny_config(tmp_path, "p", reward_measure="p_true", episodes=3), evaluator=ev).run()
    fp = ev.fp_metrics
    assert summary["reward_measure"] == "p_true" and summary["fp_reward_measure"] == fp["p_true"]
    assert summary["fp_accuracy"] == fp["top1"] and fp["p_true"] != fp["top1"]
    episodes = read_episodes(tmp_path / "p")
    assert len(episodes) == 3
    for r in episodes:  # an evaluation is a function of the policy: the episode's finetune again
        metrics = ev.evaluate(Policy.from_strings(ev.layers, r["w_bits"], r["a_bits"]))
        assert float(r["accuracy"]) == pytest.approx(metrics["top1"], abs=1e-9)
        assert float(r["reward"]) == pytest.approx(0.1 * (metrics["p_true"] - fp["p_true"]), abs=1e-9)
    for b in summary["uniform_baselines"]:
        assert b["accuracy"] == ev.evaluate(Policy.from_string(ev.layers, b["policy"]))["top1"]
    with pytest.raises(ValueError, match="reward_measure must be one of \\['top1', 'p_true'\\], got 'loss'"):
        tiny_config(tmp_path, reward_measure="loss")
    with pytest.raises(ValueError, match="reward_measure 'p_true' is read in the search's own process; set workers: 1"):
        tiny_config(tmp_path, reward_measure="p_true", workers=2)


class Crash(Exception):
    pass


def run_until_killed(search: Search, episode: int) -> None:
    """Run `search` until it dies in the middle of `episode` (in its evaluation), as a killed
    process would: the episodes before it complete, nothing of that one is kept."""
    env = search.parts.env  # the search's own environment (it borrows only the evaluator)
    evaluator, calls = env.evaluator, {"n": 0}

    def dying(policy):
        calls["n"] += 1
        if calls["n"] == episode:
            raise Crash
        return evaluator(policy)

    env.evaluator = dying
    with pytest.raises(Crash):
        search.run()


def test_killed_search_resumes_without_losing_or_repeating_episodes(tmp_path, shared_parts):
    reference = Search(tiny_config(tmp_path, "ref", episodes=7), evaluator=shared_parts.evaluator)
    reference.run()

    config = tiny_config(tmp_path, "killed", episodes=7)
    run_until_killed(Search(config, evaluator=shared_parts.evaluator), 5)  # after 4 complete episodes
    assert len(read_episodes(tmp_path / "killed")) == 4
    # a row written after the last checkpoint (killed between the CSV write and the checkpoint)
    with open(tmp_path / "killed" / "episodes.csv", "a", newline="") as fh:
        csv.writer(fh).writerow([5, -9, 0, 0, 0, 0, "x", "x", "agent"])

    resumed = Search.resume(tmp_path / "killed")
    assert resumed.episodes_done == 4
    resumed.run()
    got = rows(tmp_path / "killed")
    assert [int(r[0]) for r in got] == list(range(1, 8))
    assert got == rows(tmp_path / "ref")  # the same episodes as a run that was never interrupted


def test_a_checkpoint_holds_no_pickles_and_a_pickled_one_is_refused_without_running_it(tmp_path, shared_parts):
    """A run folder is data: the checkpoint is state dicts read weights-only, arrays read without
    pickles and JSON. A pickled checkpoint (an older engine's, or a crafted one) is refused by name
    and never unpickled; a truncated state.json is refused by name."""
    import pickle

    search = Search(tiny_config(tmp_path, "run", episodes=3), evaluator=shared_parts.evaluator)
    search.run()
    ckpt = tmp_path / "run" / "checkpoint-00003"
    assert sorted(p.name for p in ckpt.iterdir()) == ["agent.pt", "replay.npz", "state.json"]
    torch.load(ckpt / "agent.pt", weights_only=True)
    np.load(ckpt / "replay.npz", allow_pickle=False).close()
    assert json.loads((ckpt / "state.json").read_text())["progress"]["episodes"] == 3

    class Evil:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    (ckpt / "state.pkl").write_bytes(pickle.dumps(Evil()))
    for argv in (["search", "--resume", str(tmp_path / "run")],):
        proc = subprocess.run([sys.executable, "-m", "haq.cli", *argv], capture_output=True, text=True, check=False)
        assert proc.returncode == 2, proc.stderr
        assert "holds state.pkl, a pickled checkpoint of an older engine; loading it could run code" in proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "pwned").exists()
    (ckpt / "state.pkl").unlink()
    (ckpt / "state.json").write_text((ckpt / "state.json").read_text()[:40])
    with pytest.raises(ValueError, match=r"checkpoint-00003: cannot read the checkpoint \(JSONDecodeError"):
        Search.resume(tmp_path / "run", evaluator=shared_parts.evaluator)


def test_one_process_per_run_folder(tmp_path, shared_parts):
    """A second search on a folder another process (here: another Search, during its setup) holds is
    refused by name before it writes anything; once the holder's run ends, the folder is free."""
    from haq.runlock import FolderInUse, FolderLock

    first = Search(tiny_config(tmp_path, "run", episodes=2), evaluator=shared_parts.evaluator)
    with pytest.raises(FolderInUse, match=rf"{tmp_path / 'run'} is in use by process {os.getpid()} "):
        Search(tiny_config(tmp_path, "run", episodes=2, seed=1), evaluator=shared_parts.evaluator)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock"]  # nothing written by either yet
    first.run()  # a finished (or stopped) run lets go of its folder
    assert Search.resume(tmp_path / "run", evaluator=shared_parts.evaluator).episodes_done == 2
    # a killed holder frees it too: the lock belongs to the process, not to a file left behind
    code = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, b'%d' % os.getpid(), 0); print('held', flush=True); "
            "time.sleep(60)")
    (tmp_path / "other").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "other" / ".lock")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(FolderInUse, match=f"in use by process {holder.pid} "):
        FolderLock(tmp_path / "other").acquire()
    holder.kill()
    holder.wait()
    FolderLock(tmp_path / "other").acquire().release()


def test_search_killed_in_its_warm_up_resumes_with_the_warm_ups_next_random_policies(tmp_path, shared_parts):
    """The warm-up's uniform random actions come from the action space's own generator, which
    SB3 reseeds when it loads an agent: a resumed warm-up drew its first policies again."""
    reference = Search(tiny_config(tmp_path, "ref", episodes=5, warmup=4), evaluator=shared_parts.evaluator)
    reference.run()
    search = Search(tiny_config(tmp_path, "killed", episodes=5, warmup=4), evaluator=shared_parts.evaluator)
    run_until_killed(search, 3)  # dies in warm-up episode 3
    resumed = Search.resume(tmp_path / "killed", evaluator=shared_parts.evaluator)
    assert resumed.episodes_done == 2
    resumed.run()
    got = rows(tmp_path / "killed")
    assert len({r[2] for r in got}) == 5  # five different warm-up and agent policies, none drawn twice
    assert got == rows(tmp_path / "ref")


def test_paper_agent_config_file_is_the_papers_agent():
    from haq.config import PAPER_AGENT

    root = Path(__file__).resolve().parents[1]
    cfg = SearchConfig.from_yaml(root / "experiments" / "configs" / "paper_agent.yaml")
    assert cfg.agent == PAPER_AGENT and cfg.enforcement == "sequential" and cfg.method == "ddpg"
    # the paper's numbers (Section 3.4), not the engine's defaults
    assert (PAPER_AGENT.noise_sigma, PAPER_AGENT.noise_decay, PAPER_AGENT.gamma, PAPER_AGENT.tau) == (0.5, 0.99, 1.0, 0.01)
    assert not PAPER_AGENT.episode_targets and PAPER_AGENT.over_budget_penalty == 0


def test_a_run_written_before_a_key_existed_keeps_its_behaviour_on_resume(tmp_path):
    import yaml

    cfg = SearchConfig(seed=4)
    cfg.to_yaml(tmp_path / "config.yaml")
    assert SearchConfig.from_run(tmp_path / "config.yaml") == cfg  # a complete file is read as written
    old = yaml.safe_load((tmp_path / "config.yaml").read_text())
    del old["enforcement"]
    for key in ("final_layer_init", "over_budget_penalty", "store_taken_actions", "noise_offset_sigma"):
        del old["agent"][key]
    del old["quant"]["kmeans_grad"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(old))
    got = SearchConfig.from_run(tmp_path / "config.yaml")
    assert got.enforcement == "sequential" and got.seed == 4
    assert (got.agent.final_layer_init, got.agent.over_budget_penalty, got.agent.store_taken_actions) == (0, 0, False)
    assert cfg.agent.noise_offset_sigma == 0.2 and got.agent.noise_offset_sigma == 0  # no offsets before the key
    assert got.agent.noise_sigma == cfg.agent.noise_sigma  # keys the file has are kept
    assert cfg.quant.kmeans_grad == "mean" and got.quant.kmeans_grad == "sum"  # k-means steps as they were
    assert got.quant.calib_images == cfg.quant.calib_images


def test_noise_and_replay_buffer_follow_haq():
    noise = TruncatedNormalNoise(sigma=0.5, decay=0.99, warmup=2, seed=0)
    samples = np.array([noise.perturb(np.array([0.9]), np.array([0.0]), np.array([1.0]))[0] for _ in range(4000)])
    assert samples.min() >= 0 and samples.max() <= 1
    expected = truncnorm.median((0 - 0.9) / 0.5, (1 - 0.9) / 0.5, loc=0.9, scale=0.5)
    assert abs(np.median(samples) - expected) < 0.03
    noise.episodes = 2
    noise.reset()  # SB3 resets at every learn(); that must not decay sigma
    assert noise.sigma == 0.5
    noise.episodes = 4
    assert noise.sigma == pytest.approx(0.5 * 0.99**2)

    # episode offsets (opt-in): every step of a kind in an episode is shifted by the same draw
    lo, hi = np.array([0.0]), np.array([1.0])
    off = TruncatedNormalNoise(sigma=1e-6, decay=0.5, warmup=0, seed=0, offset_sigma=0.2)
    off.episodes = 0
    w = [off.perturb(np.array([0.5]), lo, hi, kind=0)[0] for _ in range(5)]
    a = [off.perturb(np.array([0.5]), lo, hi, kind=1)[0] for _ in range(5)]
    assert np.ptp(w) < 1e-4 and np.ptp(a) < 1e-4 and abs(w[0] - a[0]) > 1e-3
    assert w[0] == pytest.approx(np.clip(0.5 + off.offsets[0], 0, 1), abs=1e-4)
    off.episodes = 1  # the next episode draws new offsets, decayed with sigma
    w1 = off.perturb(np.array([0.5]), lo, hi, kind=0)[0]
    assert abs(w1 - w[0]) > 1e-3
    # ... and without offsets the random stream is the one the recorded searches used
    plain, zero = (TruncatedNormalNoise(0.5, 0.99, 2, seed=3), TruncatedNormalNoise(0.5, 0.99, 2, seed=3, offset_sigma=0))
    assert [plain.perturb(np.array([0.3]), lo, hi)[0] for _ in range(3)] == [
        zero.perturb(np.array([0.3]), lo, hi, kind=1)[0] for _ in range(3)]
    with pytest.raises(ValueError, match="offset_sigma >= 0"):
        TruncatedNormalNoise(offset_sigma=-0.1)

    from gymnasium import spaces

    buf = EpisodeRewardReplayBuffer(100, spaces.Box(0, 1, (2,)), spaces.Box(-1, 1, (1,)), baseline_decay=0.5)
    obs = np.zeros((1, 2), np.float32)
    act = np.zeros((1, 1), np.float32)
    for episode_reward in (-2.0, -1.0):
        for t in range(3):
            done = np.array([t == 2])
            buf.add(obs, obs, act, np.array([episode_reward if t == 2 else 0.0]), done, [{}])
    # first episode: baseline 0 -> -2; second: baseline -2 -> -1 - (-2) = 1
    np.testing.assert_allclose(buf.rewards[:6, 0], [-2, -2, -2, 1, 1, 1])
    np.testing.assert_array_equal(buf.dones[:6, 0], [0, 0, 1, 0, 0, 1])
    assert buf.baseline == pytest.approx(-1.5)


def test_cli_lists_and_costs(capsys):
    assert main(["hw", "list", "--json"]) == 0
    names = {m["name"] for m in json.loads(capsys.readouterr().out)["hw_models"]}
    assert {"bismo-edge", "bismo-cloud", "bitfusion", "model-size", "roofline", "lookup"} <= names
    assert main(["models", "list"]) == 0
    assert "digits-mbv2" in capsys.readouterr().out
    assert main(["cost", "--model", "mobilenet_v2", "--hw", "bismo-cloud", "--uniform", "w4a4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["layers"]) == 53
    assert out["total"]["latency_ms"] < out["total_w8a8"]["latency_ms"]
    # HAQ's published table prices mobilenet_v2 with a 100-class head: w4a4 is 0.397 of w8a8 there
    assert main(["cost", "--model", "mobilenet_v2", "--hw", "haq-mbv2-cloud", "--num-classes", "100",
                 "--uniform", "w4a4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["latency_ms"] / out["total_w8a8"]["latency_ms"] == pytest.approx(0.397, abs=5e-4)


@pytest.mark.parametrize("argv, message", [
    (["search", "--budget", "w9a9"], "budget must be a ratio"),
    (["search", "--budget", "0.001", "--episodes", "1"], "cannot be met: the cheapest allowed policy costs"),
    (["search", "--hw", "bismo-egde"], "Did you mean 'bismo-edge'"),
    (["search", "--model", "mobilenet_v2", "--dataset", "imagenet"], "pass --data-root PATH"),
    (["cost", "--model", "digits-mbv2", "--policy", "missing.json"], "missing.json does not exist"),
    (["cost", "--model", "digits-mbv2", "--hw-param", "batch"], "--hw-param expects KEY=VALUE"),
    (["cost", "--model", "digits-mbv2", "--hw-param", "bach=2"], "unknown parameter(s) ['bach']"),
    (["cost", "--model", "digits-mbv2", "--hw-param", "batch=x"], "BismoConfig.batch must be an integer (default 1), got 'x'"),
    (["cost", "--model", "digits-mbv2", "--hw", "roofline", "--hw-param", "scaling=8"],
     "RooflineConfig.scaling must be a string"),
    (["cost", "--model", "mobilenet_v2", "--hw", "haq-mbv2-cloud"],
     "layer 52 ('classifier.1') has c_out=1000, the table's layer 52 (classifier.1) has c_out=100"),
])
def test_cli_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"haq {argv[0]}: error:") and message in last and "Traceback" not in err


def test_eval_and_export_take_the_settings_of_the_run_that_wrote_the_policy(tmp_path):
    from haq.cli import build_parser, policy_settings

    run = tmp_path / "run"
    run.mkdir()
    SearchConfig.from_dict({"model": "digits32-mbv2", "seed": 7, "weights": "w.pt", "data": {"size": 32},
                            "finetune": {"max_train_images": 256, "epochs": 2},
                            "quant": {"calib_images": 64}}).to_yaml(run / "config.yaml")
    (run / "best_policy.json").write_text('{"model": "digits32-mbv2", "layers": []}')
    parse = build_parser().parse_args
    st = policy_settings(parse(["eval", "--policy", str(run / "best_policy.json")]))
    assert (st.model, st.seed, st.weights, st.data, st.run_config) == ("digits32-mbv2", 7, "w.pt", {"size": 32},
                                                                       run / "config.yaml")
    assert (st.finetune.max_train_images, st.finetune.epochs, st.quant.calib_images) == (256, 2, 64)
    st = policy_settings(parse(["export", "--policy", str(run / "best_policy.json"), "--out", "x", "--seed", "1",
                                "--finetune-epochs", "0"]))  # flags override the run's
    assert (st.seed, st.finetune.epochs, st.finetune.max_train_images) == (1, 0, 256)
    # the paper's final finetune of a table search's policy: longer, on the whole train split
    st = policy_settings(parse(["eval", "--policy", str(run / "best_policy.json"), "--finetune-epochs", "3",
                                "--train-images", "all"]))
    assert (st.finetune.epochs, st.finetune.max_train_images, st.seed) == (3, None, 7)
    st = policy_settings(parse(["export", "--policy", str(run / "best_policy.json"), "--out", "x", "--train-images", "64"]))
    assert (st.finetune.epochs, st.finetune.max_train_images) == (2, 64)
    # another model than the run's: none of the run's settings apply
    st = policy_settings(parse(["eval", "--policy", str(run / "best_policy.json"), "--model", "digits-mbv2"]))
    assert (st.model, st.seed, st.weights, st.run_config, st.quant.calib_images) == ("digits-mbv2", 0, None, None, 512)
    # a policy file outside a run: its own model, else the default
    (tmp_path / "p.json").write_text('{"model": "digits32-mbv2", "layers": []}')
    assert policy_settings(parse(["export", "--policy", str(tmp_path / "p.json"), "--out", "x"])).model == "digits32-mbv2"


@pytest.mark.parametrize("value", ["0", "-5", "al", "1.5"])
def test_eval_train_images_is_all_or_a_positive_count(value, capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--train-images", value])
    assert f"--train-images: must be 'all' or an integer >= 1, got '{value}'" in capsys.readouterr().err


def test_cli_search_and_resume_as_a_user_runs_them(tmp_path):
    run = tmp_path / "cli-run"
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("method: ddpg\nepisodes: 3\nwarmup: 2\nfinetune: {max_train_images: 96}\nquant: {calib_images: 96}\n")
    cmd = [sys.executable, "-m", "haq.cli", "search", "--config", str(cfg), "--out", str(run), "--seed", "3",
           "--fill-budget"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert SearchConfig.from_run(run / "config.yaml").fill_budget  # the flag reached the run's config
    assert "best policy" in done.stdout and "search" in done.stderr  # summary and progress bar
    assert len(read_episodes(run)) == 3
    # the best and the uniform policies measured on the test split too: the same finetune again
    summary = json.loads((run / "summary.json").read_text())
    assert "held-out" in done.stdout and summary["uniform_baselines"]
    evaluator = build_evaluator(SearchConfig.from_run(run / "config.yaml"))
    best = summary["best"]
    again = evaluator.evaluate_splits(Policy.from_strings(evaluator.layers, best["w_bits"], best["a_bits"]),
                                      ("val", "test"))
    assert again["val"]["top1"] == best["accuracy"] and again["test"]["top1"] == best["test_accuracy"]
    assert all(0 <= b["test_accuracy"] <= 100 for b in summary["uniform_baselines"])
    more = subprocess.run([sys.executable, "-m", "haq.cli", "search", "--resume", str(run), "--episodes", "4",
                           "--no-held-out"], capture_output=True, text=True, timeout=600)
    assert more.returncode == 0, more.stderr
    assert [int(r["episode"]) for r in read_episodes(run)] == [1, 2, 3, 4]
    # the best policy is still episode 2's: the summary keeps what was measured held out for it
    resumed = json.loads((run / "summary.json").read_text())
    assert resumed["best"]["episode"] == best["episode"]
    assert resumed["best"]["test_accuracy"] == best["test_accuracy"]
    assert [b.get("test_accuracy") for b in resumed["uniform_baselines"]] == [
        b["test_accuracy"] for b in summary["uniform_baselines"]]
    bad = subprocess.run([sys.executable, "-m", "haq.cli", "search", "--resume", str(run), "--hw", "bitfusion"],
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "--resume continues a run" in bad.stderr
    ev = subprocess.run([sys.executable, "-m", "haq.cli", "eval", "--policy", str(run / "best_policy.json"),
                         "--finetune-epochs", "0", "--json"], capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert 0 <= result["top1"] <= 100 and result["costs"]["latency_ms"]["ratio_to_w8a8"] < 1
    assert 0 <= result["test_top1"] <= result["test_top5"] <= 100  # the same network on the held-out split
    # with the run's own settings (its 96-image finetune and calibration, seed 3) beside the policy file,
    # `haq eval` reproduces the top-1 the search reported for it
    assert result["run_config"] == str(run / "config.yaml") and result["seed"] == 3
    ev = subprocess.run([sys.executable, "-m", "haq.cli", "eval", "--policy", str(run / "best_policy.json"), "--json"],
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["top1"] == json.loads((run / "best_policy.json").read_text())["accuracy"]


def test_two_ray_workers_give_the_requested_distinct_episodes_deterministically(tmp_path, shared_parts):
    pytest.importorskip("ray")
    # at w4a4 the random warm-up's five policies stay distinct after enforcement (at w3a3 two collapse onto it)
    one = Search(tiny_config(tmp_path, "one", episodes=5, budget="w4a4"), evaluator=shared_parts.evaluator)
    one.run()
    runs = []
    for name in ("two-a", "two-b"):
        cfg = tiny_config(tmp_path, name, episodes=5, workers=2, budget="w4a4")
        Search(cfg, evaluator=shared_parts.evaluator).run()  # 3 rounds of 2; the 6th episode is not recorded
        runs.append(read_episodes(tmp_path / name))
    a, b = runs
    assert [int(r["episode"]) for r in a] == [1, 2, 3, 4, 5]
    assert list(a[0]) == list(read_episodes(tmp_path / "one")[0])  # the same columns as one worker
    assert [(r["reward"], r["w_bits"], r["a_bits"]) for r in a] == [(r["reward"], r["w_bits"], r["a_bits"]) for r in b]
    assert len({(r["w_bits"], r["a_bits"]) for r in a}) == 5
    for r in a:  # each worker's accuracy is the one the local evaluator gives the same policy
        pol = Policy.from_strings(shared_parts.evaluator.layers, r["w_bits"], r["a_bits"])
        assert float(r["accuracy"]) == pytest.approx(shared_parts.evaluator(pol), abs=0.6)
    summary = json.loads((tmp_path / "two-a" / "summary.json").read_text())
    assert summary["episodes"] == 5
    # the pool sends each distinct policy to a worker once; repeats take the recorded accuracy
    from haq.parallel import RayEvaluatorPool
    pool = RayEvaluatorPool(tiny_config(tmp_path, "pool", workers=2), 2)
    try:
        p, q = [(4, 4)] * len(shared_parts.layers), [(3, 5)] * len(shared_parts.layers)
        first = pool.map([p, q, p])
        assert first[0] == first[2] and pool.dispatched == 2
        assert pool.map([q, p]) == [first[1], first[0]] and pool.dispatched == 2
    finally:
        pool.close()
    # the integer program's allocations, 2 at a time (a short last round of 1), are the one-process run's
    ilp = {w: tiny_config(tmp_path, f"ilp-{w}", method="ilp", budget="w3a3", episodes=3, workers=w, select_finetunes=0)
           for w in (1, 2)}
    for cfg in ilp.values():
        Search(cfg, evaluator=shared_parts.evaluator).run()
    one, two = (read_episodes(tmp_path / f"ilp-{w}") for w in (1, 2))
    assert [(r["episode"], r["w_bits"], r["a_bits"], r["phase"]) for r in two] == [
        (r["episode"], r["w_bits"], r["a_bits"], r["phase"]) for r in one]
    assert [float(r["accuracy"]) for r in two] == pytest.approx([float(r["accuracy"]) for r in one], abs=0.6)


def test_cuda_workers_share_the_gpus_evenly_when_they_outnumber_them():
    from haq.parallel import gpus_per_worker
    assert gpus_per_worker(2, 8.0) == 1.0 and gpus_per_worker(8, 8.0) == 1.0
    assert gpus_per_worker(2, 1.0) == 0.5  # two workers on one GPU
    assert gpus_per_worker(3, 2.0) == 0.5  # 0.67 each would leave the third worker unplaced
    assert gpus_per_worker(3, 1.0) == 0.3333  # Ray's resource step is 0.0001: three shares fit one GPU
    with pytest.raises(ValueError, match="has 0 GPUs.*--device cpu"):
        gpus_per_worker(2, 0.0)


def test_compile_is_on_by_default_for_cuda_searches_and_said_so_in_the_config(tmp_path):
    # on one H200 a MobileNetV2@224 episode takes 3-4 s compiled against 11 s eager (docs/performance.md)
    assert SearchConfig().finetune.compile is False  # CPU: the embedded default stays eager
    assert SearchConfig(device="cuda").finetune.compile is True
    assert SearchConfig(device="cuda:1").finetune.compile is True
    # k-means codebooks change size with the bits (a recompile each); binary weights have no affine grid
    assert SearchConfig(device="cuda", quant=QuantConfig(mode="kmeans", weight_clip="minmax")).finetune.compile is False
    assert SearchConfig(device="cuda", min_bits=1).finetune.compile is False
    assert SearchConfig(device="cuda", finetune=FinetuneConfig(compile=False)).finetune.compile is False
    assert SearchConfig(finetune=FinetuneConfig(compile=True)).finetune.compile is True
    cfg = SearchConfig.from_dict({"device": "cuda", "finetune": {"epochs": 2}})
    cfg.to_yaml(tmp_path / "config.yaml")  # a run records what it did, not "auto"
    assert "compile: true" in (tmp_path / "config.yaml").read_text()
    assert SearchConfig.from_run(tmp_path / "config.yaml") == cfg
    # an evaluator built without a SearchConfig decides the same way
    assert FinetuneConfig().resolve("cuda").compile is True
    assert FinetuneConfig().resolve("cuda", "kmeans").compile is False
    assert FinetuneConfig().resolve("cpu").compile is False
    from haq.cli import build_parser
    parse = build_parser().parse_args
    assert parse(["search"]).compile is None and parse(["search", "--no-compile"]).compile is False
    assert parse(["search", "--compile"]).compile is True


def test_a_run_folder_cannot_run_code_unless_the_user_allows_plugins(tmp_path):
    """A config.yaml in a run folder that names code (here subprocess:run with a shell command as its
    parameters) is refused by `haq eval` and `haq search --resume` with one line naming the file, and
    the command never runs; `--allow-plugins` is the user's explicit opt-in."""
    run = tmp_path / "run"
    run.mkdir()
    SearchConfig(out=str(run)).to_yaml(run / "config.yaml")
    text = (run / "config.yaml").read_text().replace("hw: bismo-edge", "hw: subprocess:run")
    text = text.replace("hw_params: {}", f"hw_params: {{args: 'touch {tmp_path / 'pwned'}', shell: true}}")
    assert "subprocess:run" in text and "shell: true" in text
    (run / "config.yaml").write_text(text)
    (run / "best_policy.json").write_text("{}")
    for argv in (["eval", "--policy", str(run / "best_policy.json")], ["search", "--resume", str(run)]):
        proc = subprocess.run([sys.executable, "-m", "haq.cli", *argv], capture_output=True, text=True, check=False)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"haq {argv[0]}: error: {run / 'config.yaml'} names code to import (hw: "
                                       "subprocess:run); a run folder is data and is not allowed to run code: pass "
                                       "--allow-plugins if you trust it")
    assert not (tmp_path / "pwned").exists()
    assert SearchConfig.from_run(run / "config.yaml", allow_plugins=True).hw == "subprocess:run"


def test_the_search_returns_the_best_mean_of_fresh_finetunes_and_never_less_than_uniform(tmp_path, shared_parts):
    """The final selection: the uniform policies within the budget and the best distinct policies by
    reward, each finetuned again with fresh seeds on search-validation; the best mean is returned
    (selected_policy.json), a uniform policy winning ties; the search's own seed is put back."""
    from haq.selection import choose, selection_seed

    cfg = tiny_config(tmp_path, "run", episodes=4, select_top=2, select_finetunes=2)
    summary = Search(cfg, evaluator=shared_parts.evaluator).run()
    sel = summary["selection"]
    assert sel["seeds"] == [selection_seed(0, 0), selection_seed(0, 1)] == [100_000, 200_000]
    labels = [c["policy"] for c in sel["candidates"]]
    uniform = [b["policy"] for b in summary["uniform_baselines"]]
    assert labels[: len(uniform)] == uniform and len(labels) == len(uniform) + 2
    ev = shared_parts.evaluator
    assert ev.seed == 0
    first = sel["candidates"][-1]  # recomputed by hand: the same finetunes with the selection seeds
    for j, score in enumerate(first["scores"]):
        ev.seed = selection_seed(0, j)
        assert ev.evaluate([tuple(b) for b in first["bits"]])["top1"] == score
    ev.seed = 0
    means = [c["mean"] for c in sel["candidates"]]
    chosen = sel["candidates"][choose(sel["candidates"])]
    assert chosen["mean"] == max(means) and summary["selected"]["selection_mean"] == max(means)
    assert all(summary["selected"]["selection_mean"] >= c["mean"] for c in sel["candidates"][: len(uniform)])
    saved = json.loads((tmp_path / "run" / "selected_policy.json").read_text())
    assert saved["source"] == summary["selected"]["policy"] and saved["selection_mean"] == max(means)
    assert choose([{"mean": 97.0}, {"mean": 97.0}, {"mean": 96.0}]) == 0  # ties go to the first (a uniform policy)
    off = Search(tiny_config(tmp_path, "off", episodes=3, select_finetunes=0), evaluator=shared_parts.evaluator).run()
    assert "selected" not in off and not (tmp_path / "off" / "selected_policy.json").exists()


def test_a_weights_only_search_compares_with_uniform_weight_bits_at_float_activations(tmp_path, shared_parts):
    cfg = tiny_config(tmp_path, "wo", method="random", episodes=2, budget="w3a8", weights_only=True, select_finetunes=1)
    summary = Search(cfg, evaluator=shared_parts.evaluator).run()
    assert [b["policy"] for b in summary["uniform_baselines"]] == ["w2a8", "w3a8"]
    assert [c["policy"] for c in summary["selection"]["candidates"]][:2] == ["w2a8", "w3a8"]


def test_the_ilp_method_finetunes_its_allocations_as_episodes_and_resumes_to_the_same_ones(tmp_path, shared_parts,
                                                                                           caplog):
    """``method: ilp``: the sensitivities are written, each allocation fits the budget and is
    played as one episode (phase ``ilp``), the first is the integer program's optimum, the summary
    counts the finetunes, and a search killed halfway resumes to the rows of one never killed."""
    from haq.ilp import allocations
    from haq.sensitivity import cache_key, measure

    cfg = tiny_config(tmp_path, "ilp", method="ilp", budget="w3a3", episodes=4, select_finetunes=1)
    summary = Search(cfg, evaluator=shared_parts.evaluator).run()
    run = tmp_path / "ilp"
    episodes = read_episodes(run)
    assert [r["phase"] for r in episodes] == ["ilp"] * 4 and summary["method"] == "ilp"
    assert all(float(r["cost"]) <= summary["budget"] * (1 + 1e-9) for r in episodes)
    assert (run / "sensitivity.csv").read_text().startswith("layer,bits,weight_loss_rise,act_loss_rise\n")
    env = build_parts(cfg, shared_parts.evaluator).env
    choices = [list(env.choices)] * len(env.layers)
    fresh = measure(shared_parts.evaluator, choices, choices)
    w_pen, a_pen = fresh.monotone()
    optimum = allocations(env.table, w_pen, a_pen, env.budget, choices, choices, 1)[0]
    assert Policy.from_strings(env.layers, episodes[0]["w_bits"], episodes[0]["a_bits"]).bits == tuple(optimum)
    n = summary["finetunes"]
    assert n["search"] == summary["distinct_policies"] and n["selection"] == len(summary["selection"]["candidates"])
    assert n["total"] == n["search"] + n["uniform"] + n["selection"]

    # a cached measurement is the one measured, and other bit choices are measured anew
    measure(shared_parts.evaluator, choices, choices, cache=tmp_path / "cache")
    with caplog.at_level(logging.INFO, logger="haq.sensitivity"):
        again = measure(shared_parts.evaluator, choices, choices, cache=tmp_path / "cache")
    assert "sensitivity read from" in caplog.text and again.layers == fresh.layers
    np.testing.assert_array_equal(again.weight, fresh.weight)
    np.testing.assert_array_equal(again.act, fresh.act)
    assert cache_key(shared_parts.evaluator, choices, [c[1:] for c in choices]) != cache_key(
        shared_parts.evaluator, choices, choices)

    killed = tiny_config(tmp_path, "killed", method="ilp", budget="w3a3", episodes=4, select_finetunes=1)
    run_until_killed(Search(killed, evaluator=shared_parts.evaluator), 3)
    Search.resume(tmp_path / "killed", evaluator=shared_parts.evaluator).run()
    assert rows(tmp_path / "killed") == rows(run)


def test_the_random_method_is_warm_up_in_every_episode_and_the_budgets_policy_is_a_candidate(tmp_path, shared_parts):
    cfg = tiny_config(tmp_path, "random", method="random", episodes=3, budget="w3a4", select_finetunes=1)
    assert cfg.warmup == 3 and SearchConfig.from_dict({**cfg.to_dict(), "episodes": 6}).warmup == 6
    summary = Search(cfg, evaluator=shared_parts.evaluator).run()
    assert [r["phase"] for r in read_episodes(tmp_path / "random")] == ["random"] * 3
    assert summary["method"] == "random"
    # a budget that names a uniform policy other than wbab has it among the uniform candidates
    assert [b["policy"] for b in summary["uniform_baselines"]] == ["w2a2", "w3a3", "w3a4"]
    assert [c["policy"] for c in summary["selection"]["candidates"]][:3] == ["w2a2", "w3a3", "w3a4"]
    with pytest.raises(ValueError, match="method must be one of"):
        SearchConfig(method="anneal")
    assert SearchConfig().method == "ilp" and SearchConfig(workers=2).workers == 2
