"""Run a HAQ search: build the parts, train the agent, write the run directory, resume.

Run directory layout::

    config.yaml         the resolved SearchConfig
    episodes.csv        one row per episode (append-only)
    best_policy.json    the best policy by reward, with its accuracy and cost
    selected_policy.json  the policy the search returns: the best mean of fresh finetunes (`haq.selection`)
    summary.json        float accuracy, best policy, budget, uniform baselines that fit, finetunes run
    sensitivity.csv     (method ilp) per-layer loss rises the integer program minimises (`haq.sensitivity`)
    policy.png          per-layer bits of the best policy (depthwise layers marked)
    progress.png        reward and cost over episodes
    checkpoint.json     points at the latest complete checkpoint directory
    checkpoint-NNNNN/   agent weights (agent.pt), replay buffer (replay.npz), RNG states and
                        progress (state.json): no pickles (`haq.checkpoint`)
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor

import hw_models
from haq import checkpoint
from haq.config import SearchConfig, budget_kind
from haq.evaluator import QuantEvaluator
from haq.fileio import atomic_write_text
from haq.parts import (
    build_parts,
    make_agent,
)
from haq.policy import Policy, parse_uniform
from haq.runlock import FolderLock
from haq.selection import choose, reevaluate, selection_seed

log = logging.getLogger(__name__)

EPISODE_FIELDS = ["episode", "reward", "accuracy", "cost", "cost_ratio", "wall_s", "w_bits", "a_bits", "phase",
                  "requested_w_bits", "requested_a_bits"]
"""Columns of episodes.csv; ``w_bits``/``a_bits`` are the evaluated policy, the ``requested_``
ones what the agent asked for before budget enforcement lowered it."""
EpisodeCallback = Callable[[dict[str, Any]], None]


# ---------------------------------------------------------------------------- run dir
def default_run_dir(config: SearchConfig) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    def safe(s: str) -> str:
        return "".join(c if c.isalnum() or c in "-_" else "_" for c in s)

    return Path("runs") / f"{stamp}-{safe(config.model)}-{safe(config.hw)}"


def check_fresh_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """Raise FileExistsError if `run_dir` already holds a search (a new one would mix its
    episodes into the old ``episodes.csv``)."""
    if any((Path(run_dir) / f).exists() for f in ("episodes.csv", "checkpoint.json")):
        raise FileExistsError(f"{run_dir} already holds a search; continue it with "
                              f"`haq search --resume {run_dir}` or choose another --out")


def read_episodes(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "episodes.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Refuse episode rows that a search did not write whole: a missing or non-numeric field, or
    episodes out of order; the error names the file and line."""
    for i, row in enumerate(rows):
        where = f"{path}: line {i + 2}"
        if None in row or any(row.get(k) in (None, "") for k in EPISODE_FIELDS if k != "phase"):
            raise ValueError(f"{where}: the row is incomplete (torn by a crash?); every row needs {EPISODE_FIELDS}")
        try:
            numbers = [float(row[k]) for k in ("reward", "accuracy", "cost", "cost_ratio", "wall_s")]
            episode = int(row["episode"])
        except ValueError:
            raise ValueError(f"{where}: a number field does not parse: {dict(row)}") from None
        if episode != i + 1 or not all(np.isfinite(numbers)):
            raise ValueError(f"{where}: episode {row['episode']} where {i + 1} belongs, or a value that is not finite")


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

    The search holds its run directory's lock (`haq.runlock.FolderLock`) from its setup until `run`
    ends (and again while `held_out` rewrites the summary), so a second process on the same folder
    is refused (`FolderInUse`) before it writes anything.

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
        # one process per run folder, from here (nothing is written before) to `release` or the process's end
        self.lock = FolderLock(self.run_dir).acquire()
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
               "w_bits": w, "a_bits": a, "phase": self._phase(),
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

    def _phase(self) -> str:
        """The episodes.csv phase of the episode being recorded: ``ilp``, ``random``, or the DDPG
        search's ``warmup`` and ``agent``."""
        if self.config.method != "ddpg":
            return self.config.method
        return "warmup" if self.episodes_done < self.config.warmup else "agent"

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
        checkpoint.save(self.agent, ckpt, {"episodes": n, "best": self.best})
        atomic_write_text(pointer, json.dumps({"episodes": n, "dir": ckpt.name}) + "\n")
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
                self.release()
                raise
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config.to_yaml(self.run_dir / "config.yaml")
        remaining = self.config.episodes - self.episodes_done
        steps, n = self.parts.env.n_steps, self.config.workers
        try:
            try:
                if remaining > 0 and self.config.method == "ilp":
                    self._run_ilp()
                elif remaining > 0:
                    self._last_time = time.perf_counter()
                    rounds = -(-remaining // n)
                    self.agent.learn(total_timesteps=rounds * n * steps, callback=_Recorder(self),
                                     reset_num_timesteps=self.episodes_done == 0)
                    self.checkpoint()
            finally:
                self.close()
            return self.finish()
        finally:  # done, or stopped: the folder is free for a resume
            self.lock.release()

    def _run_ilp(self) -> None:
        """Measure the sensitivities (``sensitivity.csv``), solve for ``episodes``
        allocations (`haq.ilp.allocations`) and play the ones not yet recorded as episodes, each
        finetuned once (deterministic, so a resumed run gets the same allocations)."""
        from haq.ilp import allocations
        from haq.models import cache_dir
        from haq.sensitivity import measure

        env = self.parts.env
        top = env.max_bits
        w_choices = [[top] if p else list(env.choices) for p in env.pinned]
        a_choices = [[top] if p or env.weights_only else list(env.choices) for p in env.pinned]
        start = time.perf_counter()
        sens = measure(self.parts.evaluator, w_choices, a_choices, cache=cache_dir() / "sensitivity")
        sens.to_csv(self.run_dir / "sensitivity.csv")
        w_pen, a_pen = sens.monotone()
        proposals = allocations(env.table, w_pen, a_pen, env.budget, w_choices, a_choices, self.config.episodes,
                                seed=self.config.seed)
        log.info("%d allocations from the integer program in %.1f s (sensitivity included)", len(proposals),
                 time.perf_counter() - start)
        self._last_time = time.perf_counter()
        todo, n = proposals[self.episodes_done:], self.config.workers
        for start in range(0, len(todo), n):  # rounds of one allocation per worker
            self.checkpoint()
            batch = todo[start:start + n]
            for info in self._play_batch(batch) if self.pool is not None else [self._play(batch[0])]:
                self.record_episode(info)
        self.checkpoint()

    def _play(self, bits: list[tuple[int, int]]) -> dict[str, Any]:
        """One episode of the environment whose actions ask for `bits`: its last step's info
        (the budget enforcement and the finetune as any episode has them)."""
        from envs.mixed_precision import bits_to_action

        env = self.parts.env
        env.reset()
        info: dict[str, Any] = {}
        for t in range(env.n_steps):
            i, j = env.slot(t)
            *_, info = env.step(np.array([bits_to_action(bits[i][j], env.choices)], np.float32))
        return info

    def _play_batch(self, batch: list[list[tuple[int, int]]]) -> list[dict[str, Any]]:
        """`_play` for up to ``workers`` allocations at once on the lock-stepped environments, their
        policies finetuned together by the Ray workers; a short last batch repeats its last allocation,
        which the pool evaluates once and is not recorded twice."""
        from envs.mixed_precision import bits_to_action

        env = self.parts.env
        padded = batch + [batch[-1]] * (self.env.num_envs - len(batch))
        self.env.reset()
        infos: list[dict[str, Any]] = []
        for t in range(env.n_steps):
            i, j = env.slot(t)
            actions = np.array([[bits_to_action(bits[i][j], env.choices)] for bits in padded], np.float32)
            *_, infos = self.env.step(actions)
        return list(infos[:len(batch)])

    def release(self) -> None:
        """Stop the workers and give up the run folder's lock (another process may then resume it)."""
        self.close()
        self.lock.release()

    def close(self) -> None:
        """Stop the parallel workers, if any (the search can still `finish`)."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None

    def finish(self) -> dict[str, Any]:
        """Evaluate the uniform baselines that fit the budget (every wbab, or every wba8 when only
        weights are searched, and the budget's own policy when it names one such as w3a4); write
        summary.json and plots."""
        from haq.report import plot_policy, plot_progress

        env, ev = self.parts.env, self.parts.evaluator
        baselines = []
        uniform = [(b, env.max_bits if env.weights_only else b) for b in range(self.config.min_bits, 9)]
        kind, named = budget_kind(self.config.budget)
        if kind == "uniform" and named not in uniform:  # a budget such as w3a4 names its own uniform policy
            uniform = sorted([*uniform, named])
        for w, a in uniform:
            pol = [(w, a)] * len(env.layers)
            cost = env.cost(pol)
            if cost <= env.budget * (1 + 1e-12):
                baselines.append({"policy": f"w{w}a{a}", "cost": cost, "cost_ratio": cost / env.reference_cost,
                                  "accuracy": ev(pol)})
        assert self.best is not None
        summary = {
            "model": self.config.model, "hw": self.config.hw, "metric": self.config.metric,
            "units": hw_models.METRIC_UNITS[self.config.metric], "fp_accuracy": ev.fp_accuracy,
            "reward_measure": self.config.reward_measure, "fp_reward_measure": env.fp_accuracy,
            "method": self.config.method,
            "budget": env.budget, "budget_ratio": env.budget / env.reference_cost, "budget_spec": self.config.budget,
            "w8a8_cost": env.reference_cost, "episodes": self.episodes_done,
            "best": {k: self.best[k] for k in ("episode", "reward", "accuracy", "cost", "cost_ratio", "w_bits", "a_bits")},
            "uniform_baselines": baselines,
            "mean_reward_warmup": _mean([r["reward"] for r in self.records[: self.config.warmup]]),
            "mean_reward_last_fifth": _mean([r["reward"] for r in self.records[-max(1, len(self.records) // 5):]]),
            "seconds_per_episode": _mean([r["wall_s"] for r in self.records]),
            # the other episodes repeated one of these (QuantEvaluator reuses its accuracy)
            "distinct_policies": len({(r["w_bits"], r["a_bits"]) for r in self.records}),
            "agent_distinct_policies": ((agent_exploration(self.records, self.config.warmup) or (0, 0.0))[0]
                                        if self.config.method == "ddpg" else None),
        }
        if self.config.select_finetunes > 0:
            summary.update(self._select(baselines))
        # each distinct policy is finetuned once (the evaluator reuses a repeated policy's result)
        selection = len(summary.get("selection", {}).get("candidates", [])) * self.config.select_finetunes
        summary["finetunes"] = {"search": summary["distinct_policies"], "uniform": len(baselines),
                                "selection": selection,
                                "total": summary["distinct_policies"] + len(baselines) + selection}
        # a resumed run that ends on the same best policy keeps what was measured held out for it
        earlier = self.run_dir / "summary.json"
        if earlier.is_file():
            try:
                before = json.loads(earlier.read_text())
            except json.JSONDecodeError:
                before = {}
            if "test_accuracy" in before.get("best", {}) and before["best"].get("episode") == summary["best"]["episode"]:
                summary["best"]["test_accuracy"] = before["best"]["test_accuracy"]
                held = {b["policy"]: b["test_accuracy"] for b in before.get("uniform_baselines", []) if "test_accuracy" in b}
                for b in baselines:
                    if b["policy"] in held:
                        b["test_accuracy"] = held[b["policy"]]
            sel, was = summary.get("selected"), before.get("selected") or {}
            if sel and "test_accuracy" in was and (was["w_bits"], was["a_bits"]) == (sel["w_bits"], sel["a_bits"]):
                sel["test_accuracy"] = was["test_accuracy"]
        stuck = stuck_agent(self.records, self.config.warmup) if self.config.method == "ddpg" else None
        if stuck:
            log.warning("%s: %s: the search explored next to nothing past its warm-up. A larger "
                        "agent.over_budget_penalty (3 kept the mini tables' collapsed searches exploring; "
                        "experiments/results/ablations/penalty.md) or min_bits: 3 avoids it", self.run_dir, stuck)
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        plot_policy(env.layers, self.best["policy"], self.run_dir / "policy.png",
                    title=f"{self.config.model} on {self.config.hw}: best policy "
                          f"({self.best['accuracy']:.1f}% top-1, {self.best['cost_ratio']:.2f}x w8a8 {self.config.constraint})",
                    cost_at_8=env.table[:, 7, 7], cost_label=f"{self.config.constraint} at w8a8")
        plot_progress(self.records, self.run_dir / "progress.png", budget_ratio=summary["budget_ratio"],
                      warmup=self.config.warmup if self.config.method != "ilp" else 0)
        return summary

    def _select(self, baselines: list[dict[str, Any]]) -> dict[str, Any]:
        """The final selection (`haq.selection`): the uniform policies within the budget and the
        ``select_top`` best distinct policies by reward, each finetuned ``select_finetunes`` more times
        with fresh seeds; the best mean is the policy the search returns (``selected_policy.json``)."""
        env, ev, layers = self.parts.env, self.parts.evaluator, self.parts.env.layers
        candidates = [(b["policy"], [parse_uniform(b["policy"])] * len(layers)) for b in baselines]
        seen = {tuple(bits) for _, bits in candidates}
        for r in sorted(self.records, key=lambda r: -r["reward"]):
            bits = tuple(Policy.from_strings(layers, r["w_bits"], r["a_bits"]).bits)
            if len(candidates) - len(baselines) >= self.config.select_top:
                break
            if bits not in seen:
                seen.add(bits)
                candidates.append((f"episode {r['episode']}", list(bits)))
        rows = reevaluate(ev, candidates, self.config.select_finetunes, self.config.seed)
        for row in rows:
            row["cost_ratio"] = env.cost(row["bits"]) / env.reference_cost
            row["bits"] = [list(b) for b in row["bits"]]
        chosen = rows[choose(rows)]
        bits = [tuple(b) for b in chosen["bits"]]
        policy = Policy.from_bits(layers, bits)
        selected = {"policy": chosen["policy"], "w_bits": policy.as_strings()[0], "a_bits": policy.as_strings()[1],
                    "cost": env.cost(bits), "cost_ratio": chosen["cost_ratio"], "accuracy": ev(bits),
                    "selection_mean": chosen["mean"]}
        policy.to_json(self.run_dir / "selected_policy.json", source=chosen["policy"], accuracy=selected["accuracy"],
                       selection_mean=chosen["mean"], cost=selected["cost"], cost_ratio=chosen["cost_ratio"],
                       metric=self.config.metric, hw=self.config.hw, model=self.config.model)
        return {"selection": {"finetunes": self.config.select_finetunes,
                              "seeds": [selection_seed(self.config.seed, j) for j in range(self.config.select_finetunes)],
                              "candidates": rows},
                "selected": selected}

    def held_out(self, summary: dict[str, Any]) -> dict[str, Any]:
        """`summary` (from `finish`) with each policy's top-1 on the held-out test split, which
        the search never saw: the best policy and the uniform baselines, each finetuned once
        more (the same finetune as its search-validation top-1). The best policy is the best of
        many noisy measurements on the search-validation split, so its top-1 there flatters it;
        held out, it does not. Rewrites summary.json."""
        assert self.best is not None
        self.lock.acquire()
        try:
            return self._held_out(summary)
        finally:
            self.lock.release()

    def _held_out(self, summary: dict[str, Any]) -> dict[str, Any]:
        assert self.best is not None  # for the type checker: held_out checked it
        ev, layers = self.parts.evaluator, self.parts.env.layers
        summary["best"]["test_accuracy"] = ev.evaluate(self.best["policy"], split="test")["top1"]
        for b in summary["uniform_baselines"]:
            b["test_accuracy"] = ev.evaluate(Policy.from_string(layers, b["policy"]), split="test")["top1"]
        if "selected" in summary:
            sel = summary["selected"]
            sel["test_accuracy"] = ev.evaluate(Policy.from_strings(layers, sel["w_bits"], sel["a_bits"]),
                                               split="test")["top1"]
        atomic_write_text(self.run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        return summary

    # ------------------------------------------------------------------ resume
    @classmethod
    def resume(cls, run_dir: str | os.PathLike[str], on_episode: EpisodeCallback | None = None,
               episodes: int | None = None, evaluator: QuantEvaluator | None = None,
               allow_plugins: bool = False) -> Search:
        """Continue a search from its last complete checkpoint (no episode lost or repeated);
        a prebuilt `evaluator` is borrowed, as for a new `Search`. A run whose config names a
        plugin (``module:attr``) resumes only with `allow_plugins` (`SearchConfig.from_run`)."""
        run_dir = Path(run_dir)
        cfg_path = run_dir / "config.yaml"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"{run_dir} is not a run directory (no config.yaml)")
        config = SearchConfig.from_run(cfg_path, allow_plugins)
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
        progress = checkpoint.load(search.agent, ckpt)
        if progress["episodes"] != n:
            raise checkpoint.CheckpointError(f"{ckpt}: holds {progress['episodes']} episodes, {pointer} says {n}")
        if len(rows) < n:
            raise ValueError(f"{run_dir / 'episodes.csv'} has {len(rows)} episodes but the checkpoint has {n}: the "
                             "file was cut; the run cannot be resumed as written")
        check_rows(run_dir / "episodes.csv", rows[:n])
        if episodes is not None and episodes < n:
            raise ValueError(f"{run_dir} has {n} episodes done; --episodes must be at least {n} (it extends a run, "
                             "it cannot shorten one)")
        # rows past the checkpoint belong to an episode that will be run again: drop them (atomically)
        text = io.StringIO()
        writer = csv.DictWriter(text, EPISODE_FIELDS)
        writer.writeheader()
        writer.writerows(rows[:n])
        atomic_write_text(run_dir / "episodes.csv", text.getvalue())
        search.records = [_typed_row(r) for r in rows[:n]]
        search.best = progress["best"]
        if search.best is not None:  # JSON keeps the policy's (w, a) pairs as lists
            search.best["policy"] = [tuple(p) for p in search.best["policy"]]
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
