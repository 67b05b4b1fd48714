"""Run a HAQ search: build the parts, train the agent, write the run directory, resume.

Run directory layout::

    config.yaml         the resolved SearchConfig
    episodes.csv        one row per episode (append-only)
    best_policy.json    the best policy by reward, with its accuracy and cost
    summary.json        float accuracy, best policy, budget, uniform baselines that fit
    policy.png          per-layer bits of the best policy (depthwise layers marked)
    progress.png        reward and cost over episodes
    checkpoint.json     points at the latest complete checkpoint directory
    checkpoint-NNNNN/   agent (SB3 zip), replay buffer, RNG states, search state
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import pickle
import random
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor

import hw_models
from envs import MixedPrecisionEnv
from envs.mixed_precision import OBS_FEATURES
from haq.agent import HAQDDPG, EpisodeRewardReplayBuffer, TruncatedNormalNoise
from haq.config import SearchConfig, budget_kind
from haq.data import SearchData, load_dataset
from haq.evaluator import QuantEvaluator, RewardMeasure
from haq.models import checkpoint_classes, create_model, load_weights, model_entry, read_state_dict
from haq.policy import Policy

log = logging.getLogger(__name__)

EPISODE_FIELDS = ["episode", "reward", "accuracy", "cost", "cost_ratio", "wall_s", "w_bits", "a_bits", "phase",
                  "requested_w_bits", "requested_a_bits"]
"""Columns of episodes.csv; ``w_bits``/``a_bits`` are the evaluated policy, the ``requested_``
ones what the agent asked for before budget enforcement lowered it."""
EpisodeCallback = Callable[[dict[str, Any]], None]


@dataclasses.dataclass
class SearchParts:
    """Everything built from a config before the agent starts."""

    config: SearchConfig
    data: SearchData
    evaluator: QuantEvaluator
    cost_model: hw_models.CostModel
    env: MixedPrecisionEnv

    @property
    def layers(self) -> list[hw_models.LayerSpec]:
        return self.evaluator.layers


def resolve_budget(config: SearchConfig, cost_model: hw_models.CostModel,
                   layers: list[hw_models.LayerSpec]) -> float:
    """The budget in the metric's units."""
    table = cost_model.table(layers, config.metric)
    kind, value = budget_kind(config.budget)
    if kind == "uniform":
        return hw_models.policy_cost(table, [value] * len(layers))
    return float(value) * hw_models.policy_cost(table, [(8, 8)] * len(layers))


def load_search_data(model: str, dataset: str | None = None, data_root: str | None = None,
                     **data_kwargs: Any) -> SearchData:
    """The search data of a registered model: its own data set at its input size, unless
    `dataset` names another (no model is built or trained)."""
    entry = model_entry(model)
    if dataset is None or dataset == entry.dataset:  # the model's own data, at its input size
        data_kwargs = {**entry.data, **data_kwargs}
    return load_dataset(dataset or entry.dataset, data_root, **data_kwargs)


def load_model_and_data(model: str, weights: str | None = None, dataset: str | None = None,
                        data_root: str | None = None, **data_kwargs: Any) -> tuple[torch.nn.Module, SearchData, dict[str, Any]]:
    """A registered model (its own pretraining, or the local `weights`) and its search data
    (`load_search_data`), plus the factory keyword arguments that rebuild the same
    architecture (``create_model(model, pretrained=False, **kwargs)``)."""
    entry = model_entry(model)
    data = load_search_data(model, dataset, data_root, **data_kwargs)
    if weights is None:
        if entry.pretrain is not None:  # the digits networks: their own training, at their own class count
            return create_model(model), data, {}
        log.warning("%s has no trained weights (none given with --weights): the search quantizes an untrained "
                    "network, whose accuracy says nothing about the policies", model)
        kwargs = {"num_classes": data.num_classes}
        return create_model(model, **kwargs), data, kwargs
    state = read_state_dict(weights)  # read once: for its classifier's size, then loaded
    kwargs = {"num_classes": _head_classes(state, weights, data)}
    net = create_model(model, **kwargs)
    load_weights(net, weights, state)
    return net, data, kwargs


def _head_classes(state: dict[str, torch.Tensor], weights: str, data: SearchData) -> int:
    """The classifier size to build for a weights file on `data`: the data's, or the file's when
    it has more outputs and the data's classes are the first of a folder holding as many classes
    as it has outputs (ImageNet-100 from a full ImageNet ``train/``, sorted folder names being the
    ImageNet class order): an ImageNet-1k checkpoint then keeps its 1000 outputs, as the paper's
    networks and their cost do, and the labels 0-99 are its own first 100 classes."""
    classes = checkpoint_classes(state)
    if classes is None or classes == data.num_classes:
        return data.num_classes
    source = data.source_classes or data.num_classes
    if classes < data.num_classes or source != classes:
        raise ValueError(f"weights file {weights} has {classes} output classes and the {data.name} search data "
                         f"{data.num_classes}" + (f" (the first of {source} class folders)" if source != data.num_classes
                                                  else "")
                         + ": the data's labels cannot be matched to its outputs; give weights trained on these "
                         f"{data.num_classes} classes, or a data folder whose class folders are the {classes} classes "
                         "the weights were trained on (e.g. a full ImageNet train/ for ImageNet-1k weights)")
    log.info("weights file %s: keeping its %d outputs; the data's %d classes are its first %d", weights, classes,
             data.num_classes, data.num_classes)
    return classes


def build_evaluator(config: SearchConfig) -> QuantEvaluator:
    """Load the model and the data and calibrate: the policy -> accuracy callable."""
    model, data, _ = load_model_and_data(config.model, config.weights, config.dataset, config.data_root, **config.data)
    evaluator = QuantEvaluator(model, data, config.quant, config.finetune, config.device, config.seed)
    evaluator.origin = evaluator_origin(config)
    return evaluator


def evaluator_origin(config: SearchConfig) -> dict[str, Any]:
    """What an evaluator was built from (model, weights, data), beside its quant and finetune."""
    return {"model": config.model, "weights": config.weights, "dataset": config.dataset,
            "data_root": config.data_root, "data": dict(config.data)}


def check_evaluator(config: SearchConfig, evaluator: QuantEvaluator) -> None:
    """Refuse a prebuilt evaluator that would not price policies the way `config` says:
    another model or data (when it records its origin), quantizer, finetune or device."""
    want: dict[str, Any] = {"device": torch.device(config.device), "quant": config.quant,
                            "finetune": config.finetune.resolve(config.device, config.quant.mode)}
    have: dict[str, Any] = {"device": evaluator.device, "quant": evaluator.qmodel.config,
                            "finetune": evaluator.finetune}
    if evaluator.origin is not None:
        want.update(evaluator_origin(config))
        have.update(evaluator.origin)
    diff = [k for k in want if want[k] != have[k]]
    if diff:
        raise ValueError(f"the prebuilt evaluator does not match the config in {diff}: build it with "
                         "build_evaluator(config) for this config")


def build_parts(config: SearchConfig, evaluator: QuantEvaluator | None = None) -> SearchParts:
    """Load the model and data, calibrate, price the layers and create the environment.

    A prebuilt `evaluator` (model, data and calibration: the expensive part) is reused if it
    matches `config` (`check_evaluator`); the cost model and environment are always built
    from `config`, so the budget, bit range and enforcement are the config's.
    """
    cost_model = hw_models.create_hw_model(config.hw, **config.hw_params)
    cost_model.check_metric(config.metric)
    if evaluator is None:
        evaluator = build_evaluator(config)
    else:
        check_evaluator(config, evaluator)
    evaluator.seed = config.seed
    data = evaluator.data
    layers = evaluator.layers
    budget = resolve_budget(config, cost_model, layers)
    reward_input: QuantEvaluator | RewardMeasure = evaluator
    if config.reward_measure != "top1":  # the reward reads another measure; episodes still record top-1
        reward_input = RewardMeasure(evaluator, config.reward_measure)
    env = MixedPrecisionEnv(layers, cost_model, budget, reward_input, metric=config.metric,
                            min_bits=config.min_bits, max_bits=config.max_bits,
                            pin_first_last=config.pin_first_last, reward_scale=config.reward_scale,
                            weights_only=config.weights_only, enforcement=config.enforcement,
                            fill_budget=config.fill_budget)
    return SearchParts(config, data, evaluator, cost_model, env)


def make_agent(config: SearchConfig, env: Any, steps: int) -> HAQDDPG:
    """SB3 DDPG with HAQ's settings (DESIGN.md item 6). `steps` is the episode length.

    One gradient step per stored transition, once per episode; with N parallel
    environments (``config.workers``) once per round of N episodes, N * steps of them
    (SB3 counts episodic training frequencies only for a single environment).
    """
    a = config.agent
    n = config.workers
    noise = TruncatedNormalNoise(a.noise_sigma, a.noise_decay, config.warmup, seed=config.seed,
                                 offset_sigma=a.noise_offset_sigma)
    return HAQDDPG(
        "MlpPolicy", env,
        learning_rate=a.actor_lr, critic_learning_rate=a.critic_lr, warmup_episodes=config.warmup,
        final_layer_init=a.final_layer_init,
        buffer_size=a.buffer_size, learning_starts=max(0, config.warmup * steps - 1), batch_size=a.batch_size,
        tau=a.tau, gamma=a.gamma, train_freq=(1, "episode") if n == 1 else (steps, "step"),
        gradient_steps=-1 if n == 1 and a.updates_per_transition == 1 else n * steps * a.updates_per_transition,
        action_noise=noise,
        replay_buffer_class=EpisodeRewardReplayBuffer,
        replay_buffer_kwargs={"baseline_decay": a.baseline_decay, "episode_targets": a.episode_targets,
                              "store_taken_actions": a.store_taken_actions,
                              "over_budget_penalty": a.over_budget_penalty,
                              "prev_action_index": OBS_FEATURES.index("prev_action")},
        policy_kwargs={"net_arch": {"pi": list(a.hidden), "qf": list(a.hidden)}},
        seed=config.seed, device="cpu", verbose=0,
    )


# ---------------------------------------------------------------------------- run dir
def default_run_dir(config: SearchConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)
    return Path("runs") / f"{stamp}-{safe(config.model)}-{safe(config.hw)}"


def check_fresh_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Raise FileExistsError if `run_dir` already holds a search (a new one would mix its
    episodes into the old ``episodes.csv``)."""
    if any((Path(run_dir) / f).exists() for f in ("episodes.csv", "checkpoint.json")):
        raise FileExistsError(f"{run_dir} already holds a search; continue it with "
                              f"`haq search --resume {run_dir}` or choose another --out")


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_episodes(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "episodes.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


class _Recorder(BaseCallback):
    """Writes one CSV row per finished episode and a checkpoint before each new one."""

    def __init__(self, search: Search) -> None:
        super().__init__()
        self.search = search

    def _on_rollout_start(self) -> None:
        self.search.checkpoint()

    def _on_step(self) -> bool:
        infos = self.locals["infos"]
        for i in np.flatnonzero(self.locals["dones"]):
            # a last round of parallel episodes may overshoot the requested count: not recorded
            if self.search.episodes_done < self.search.config.episodes:
                self.search.record_episode(infos[i])
        return True


class Search:
    """A search in a run directory; `run` it, or `Search.resume(run_dir)` to continue one.

    `evaluator` lends a prebuilt `QuantEvaluator` (`build_evaluator`; the model, data and
    calibration: the slow part of the setup) to several searches of the same model; it must
    match the config (`check_evaluator`).
    """

    def __init__(self, config: SearchConfig, run_dir: str | os.PathLike[str] | None = None,
                 on_episode: EpisodeCallback | None = None, evaluator: QuantEvaluator | None = None) -> None:
        self.config = config
        self.run_dir = Path(run_dir or config.out or default_run_dir(config))
        self.on_episode = on_episode
        # a prebuilt evaluator (model, data, calibration) is borrowed; the environment is this config's
        self.parts = build_parts(config, evaluator)
        self.pool: Any = None
        if config.workers > 1:
            from haq.parallel import BatchEvalVecEnv, RayEvaluatorPool

            self.pool = RayEvaluatorPool(config, config.workers, config.ray_address)
            self.env: Any = BatchEvalVecEnv(self.parts.env, config.workers, self.pool.map)
        else:
            self.env = Monitor(self.parts.env)
        self.agent = make_agent(config, self.env, self.parts.env.n_steps)
        self.records: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self._last_time = time.perf_counter()

    # ------------------------------------------------------------------ state
    @property
    def episodes_done(self) -> int:
        return len(self.records)

    def record_episode(self, info: dict[str, Any]) -> None:
        now = time.perf_counter()
        policy = Policy.from_bits(self.parts.layers, info["policy"])
        w, a = policy.as_strings()
        req_w, req_a = Policy.from_bits(self.parts.layers, info.get("requested_policy", info["policy"])).as_strings()
        accuracy = info["accuracy"]
        if self.config.reward_measure != "top1":  # the reward read another measure of the same finetune
            accuracy = self.parts.evaluator.recorded(policy)["top1"]
        row = {"episode": self.episodes_done + 1, "reward": info["reward"], "accuracy": accuracy,
               "cost": info["cost"], "cost_ratio": info["cost_ratio"], "wall_s": round(now - self._last_time, 4),
               "w_bits": w, "a_bits": a, "phase": "warmup" if self.episodes_done < self.config.warmup else "agent",
               "requested_w_bits": req_w, "requested_a_bits": req_a}
        self._last_time = now
        path = self.run_dir / "episodes.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, EPISODE_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
        self.records.append(row)
        if self.best is None or row["reward"] > self.best["reward"]:
            self.best = {**row, "policy": info["policy"]}
            self._write_best()
        if self.on_episode is not None:
            self.on_episode({**row, "best_reward": self.best["reward"], "best_accuracy": self.best["accuracy"]})

    def _write_best(self) -> None:
        b = self.best
        assert b is not None
        Policy.from_bits(self.parts.layers, b["policy"]).to_json(
            self.run_dir / "best_policy.json", episode=b["episode"], accuracy=b["accuracy"], cost=b["cost"],
            cost_ratio=b["cost_ratio"], reward=b["reward"], metric=self.config.metric, hw=self.config.hw,
            model=self.config.model)

    def checkpoint(self) -> None:
        """Save agent, replay buffer, RNG states and progress; then point checkpoint.json at it."""
        n = self.episodes_done
        if n == 0:
            return
        pointer = self.run_dir / "checkpoint.json"
        if pointer.is_file() and json.loads(pointer.read_text())["episodes"] == n:
            return
        ckpt = self.run_dir / f"checkpoint-{n:05d}"
        if ckpt.exists():
            shutil.rmtree(ckpt)
        ckpt.mkdir(parents=True)
        self.agent.save(ckpt / "agent.zip")
        self.agent.save_replay_buffer(ckpt / "replay.pkl")
        state = {"episodes": n, "best": self.best, "rng": {
            "torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            # the warm-up's uniform random actions (SB3 reseeds the space when it loads an agent)
            "action_space": self.agent.action_space.np_random.bit_generator.state}}
        with open(ckpt / "state.pkl", "wb") as fh:
            pickle.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _atomic_write(pointer, json.dumps({"episodes": n, "dir": ckpt.name}) + "\n")
        for old in self.run_dir.glob("checkpoint-*"):
            if old.name != ckpt.name:
                shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ run
    def run(self) -> dict[str, Any]:
        """Run the remaining episodes, then write the summary and plots.

        Raises:
            FileExistsError: a fresh search was pointed at a run directory that already
                holds one (its episodes would be mixed into the new ``episodes.csv``).
        """
        if self.episodes_done == 0:
            try:
                check_fresh_run_dir(self.run_dir)
            except FileExistsError:
                self.close()
                raise
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_yaml(self.run_dir / "config.yaml")
        remaining = self.config.episodes - self.episodes_done
        steps, n = self.parts.env.n_steps, self.config.workers
        try:
            if remaining > 0:
                self._last_time = time.perf_counter()
                rounds = -(-remaining // n)
                self.agent.learn(total_timesteps=rounds * n * steps, callback=_Recorder(self),
                                 reset_num_timesteps=self.episodes_done == 0)
                self.checkpoint()
        finally:
            self.close()
        return self.finish()

    def close(self) -> None:
        """Stop the parallel workers, if any (the search can still `finish`)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def finish(self) -> dict[str, Any]:
        """Evaluate the uniform baselines that fit the budget; write summary.json and plots."""
        from haq.report import plot_policy, plot_progress

        env, ev = self.parts.env, self.parts.evaluator
        baselines = []
        for b in range(self.config.min_bits, 9):
            pol = [(b, b)] * len(env.layers)
            cost = env.cost(pol)
            if cost <= env.budget * (1 + 1e-12):
                baselines.append({"policy": f"w{b}a{b}", "cost": cost, "cost_ratio": cost / env.reference_cost,
                                  "accuracy": ev(pol)})
        assert self.best is not None
        summary = {
            "model": self.config.model, "hw": self.config.hw, "metric": self.config.metric,
            "units": hw_models.METRIC_UNITS[self.config.metric], "fp_accuracy": ev.fp_accuracy,
            "reward_measure": self.config.reward_measure, "fp_reward_measure": env.fp_accuracy,
            "budget": env.budget, "budget_ratio": env.budget / env.reference_cost, "budget_spec": self.config.budget,
            "w8a8_cost": env.reference_cost, "episodes": self.episodes_done,
            "best": {k: self.best[k] for k in ("episode", "reward", "accuracy", "cost", "cost_ratio", "w_bits", "a_bits")},
            "uniform_baselines": baselines,
            "mean_reward_warmup": _mean([r["reward"] for r in self.records[: self.config.warmup]]),
            "mean_reward_last_fifth": _mean([r["reward"] for r in self.records[-max(1, len(self.records) // 5):]]),
            "seconds_per_episode": _mean([r["wall_s"] for r in self.records]),
            # the other episodes repeated one of these (QuantEvaluator reuses its accuracy)
            "distinct_policies": len({(r["w_bits"], r["a_bits"]) for r in self.records}),
            "agent_distinct_policies": (agent_exploration(self.records, self.config.warmup) or (0, 0.0))[0],
        }
        stuck = stuck_agent(self.records, self.config.warmup)
        if stuck:
            log.warning("%s: %s: the search explored next to nothing past its warm-up. A larger "
                        "agent.over_budget_penalty (3 kept the mini tables' collapsed searches exploring; "
                        "experiments/results/ablations/penalty.md) or min_bits: 3 avoids it", self.run_dir, stuck)
        _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_policy(env.layers, self.best["policy"], self.run_dir / "policy.png",
                    title=f"{self.config.model} on {self.config.hw}: best policy "
                          f"({self.best['accuracy']:.1f}% top-1, {self.best['cost_ratio']:.2f}x w8a8 {self.config.constraint})",
                    cost_at_8=env.table[:, 7, 7], cost_label=f"{self.config.constraint} at w8a8")
        plot_progress(self.records, self.run_dir / "progress.png", budget_ratio=summary["budget_ratio"],
                      warmup=self.config.warmup)
        return summary

    def held_out(self, summary: dict[str, Any]) -> dict[str, Any]:
        """`summary` (from `finish`) with each policy's top-1 on the held-out test split, which
        the search never saw: the best policy and the uniform baselines, each finetuned once
        more (the same finetune as its search-validation top-1). The best policy is the best of
        many noisy measurements on the search-validation split, so its top-1 there flatters it;
        held out, it does not. Rewrites summary.json."""
        assert self.best is not None
        ev, layers = self.parts.evaluator, self.parts.env.layers
        summary["best"]["test_accuracy"] = ev.evaluate(self.best["policy"], split="test")["top1"]
        for b in summary["uniform_baselines"]:
            b["test_accuracy"] = ev.evaluate(Policy.from_string(layers, b["policy"]), split="test")["top1"]
        _atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | os.PathLike[str], on_episode: EpisodeCallback | None = None,
               episodes: int | None = None, evaluator: QuantEvaluator | None = None) -> Search:
        """Continue a search from its last complete checkpoint (no episode lost or repeated);
        a prebuilt `evaluator` is borrowed, as for a new `Search`."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        config = SearchConfig.from_run(cfg_path)
        if episodes is not None:
            config = dataclasses.replace(config, episodes=episodes)
        search = cls(config, run_dir, on_episode, evaluator)
        pointer = run_dir / "checkpoint.json"
        rows = read_episodes(run_dir)
        if not pointer.is_file():
            log.info("no checkpoint in %s yet: starting from the first episode", run_dir)
            (run_dir / "episodes.csv").unlink(missing_ok=True)
            (run_dir / "best_policy.json").unlink(missing_ok=True)
            return search
        info = json.loads(pointer.read_text())
        ckpt = run_dir / info["dir"]
        n = int(info["episodes"])
        search.agent = HAQDDPG.load(ckpt / "agent.zip", env=search.env, device="cpu")
        search.agent.load_replay_buffer(ckpt / "replay.pkl")
        search.agent._last_obs = None  # the fresh env must be reset before its first step
        with open(ckpt / "state.pkl", "rb") as fh:
            state = pickle.load(fh)
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if "action_space" in state["rng"]:  # checkpoints written before it was kept resume as they did
            search.agent.action_space.np_random.bit_generator.state = state["rng"]["action_space"]
        if len(rows) < n:
            raise RuntimeError(f"{run_dir}/episodes.csv has {len(rows)} rows but the checkpoint has {n} episodes")
        # rows past the checkpoint belong to an episode that will be run again: drop them
        with open(run_dir / "episodes.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, EPISODE_FIELDS)
            writer.writeheader()
            writer.writerows(rows[:n])
        search.records = [_typed_row(r) for r in rows[:n]]
        search.best = state["best"]
        if search.best is not None:
            search._write_best()
        log.info("resuming %s after episode %d of %d", run_dir, n, config.episodes)
        return search


def _typed_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = dict(row)
    out["episode"] = int(row["episode"])
    for k in ("reward", "accuracy", "cost", "cost_ratio", "wall_s"):
        out[k] = float(row[k])
    return out


def _agent_policies(records: list[dict[str, Any]], warmup: int) -> tuple[list[tuple[str, str]], tuple[str, str], int]:
    """The policy (w_bits, a_bits) of each episode after the warm-up, the most frequent of them and how
    many episodes evaluated it (``("", ""), 0`` when there were none)."""
    keys = [(r["w_bits"], r["a_bits"]) for r in records[warmup:]]
    if not keys:
        return keys, ("", ""), 0
    top = max(set(keys), key=keys.count)
    return keys, top, keys.count(top)


def agent_exploration(records: list[dict[str, Any]], warmup: int) -> tuple[int, float] | None:
    """How much the agent explored after the warm-up: (distinct policies it evaluated, the share of
    its episodes that evaluated the most frequent one); None when it ran no episode."""
    keys, _, top_count = _agent_policies(records, warmup)
    return (len(set(keys)), top_count / len(keys)) if keys else None


STUCK_SHARE = 0.9
"""`stuck_agent`'s threshold: the share of the agent's episodes one policy took."""
STUCK_AT_LEAST = 10
"""`stuck_agent` judges no search whose agent ran fewer episodes than this."""


def stuck_agent(records: list[dict[str, Any]], warmup: int, at_least: int = STUCK_AT_LEAST,
                share: float = STUCK_SHARE) -> str | None:
    """A description when one policy took ``share`` or more of the episodes the agent chose after the
    warm-up (``at_least`` of them or more): how many, the policy's mean bits and what was asked;
    else None. Seen in the mini tables: after a warm-up of random policies, many with 2-bit layers
    and a point or many below, the actor asks for 6-8 bits in every layer and budget enforcement
    lowers each such request to the same policy (the uniform one of the budget), so the search
    evaluates next to nothing new after its warm-up."""
    agent = records[warmup:]
    if len(agent) < at_least:
        return None
    keys, top, top_count = _agent_policies(records, warmup)
    if top_count < share * len(agent):
        return None
    same = [r for r, k in zip(agent, keys, strict=True) if k == top]

    def mean_bits(rows: list[dict[str, Any]], key: str) -> float:
        return float(np.mean([float(b) for r in rows for b in str(r[key]).split()]))

    text = (f"{'all' if len(same) == len(agent) else f'{len(same)} of the'} {len(agent)} episodes after the warm-up "
            f"evaluated one policy (mean {mean_bits(same, 'w_bits'):.2f} weight / {mean_bits(same, 'a_bits'):.2f} "
            "activation bits)")
    if all("requested_w_bits" in r for r in same):
        text += (f"; the agent asked for {mean_bits(same, 'requested_w_bits'):.2f} / "
                 f"{mean_bits(same, 'requested_a_bits'):.2f} bits on average and budget enforcement lowered every "
                 "such request to it")
    return text


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_search(config: SearchConfig, on_episode: EpisodeCallback | None = None) -> tuple[Path, dict[str, Any]]:
    """Run a search from scratch; returns (run directory, summary)."""
    search = Search(config, on_episode=on_episode)
    return search.run_dir, search.run()
