"""Parallel evaluation of policies: N environments stepped in lock-step, whose policies
are finetuned and validated at once by N Ray workers (``haq search --workers N``).

In HAQ the observations never depend on the accuracy: only the last step's reward
does. So N episodes can be chosen by the same actor step by step, and their N policies
evaluated together at the end. Each worker holds its own copy of the model, data and
calibration on its own device (one GPU per worker when the search runs on CUDA). The
evaluator seeds each finetune from the policy itself, so a policy's accuracy does not
depend on which worker evaluated it, and a search is deterministic for a given seed and N.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv

from envs import MixedPrecisionEnv
from haq.config import SearchConfig

log = logging.getLogger(__name__)

Policy = list[tuple[int, int]]


class _Results:
    """The evaluator of the lock-stepped environments: accuracies computed in a batch."""

    def __init__(self, fp_accuracy: float) -> None:
        self.fp_accuracy = fp_accuracy
        self.values: dict[tuple[tuple[int, int], ...], float] = {}

    def __call__(self, policy: Sequence[tuple[int, int]]) -> float:
        return self.values[tuple(tuple(p) for p in policy)]


class BatchEvalVecEnv(DummyVecEnv):
    """N copies of a `MixedPrecisionEnv` stepped together; before the last step the N
    policies are evaluated at once by ``evaluate_many(policies) -> accuracies``."""

    def __init__(self, template: MixedPrecisionEnv, n: int, evaluate_many: Callable[[list[Policy]], list[float]]) -> None:
        self.results = _Results(template.fp_accuracy)
        self.evaluate_many = evaluate_many

        def make() -> Monitor:
            t = template
            return Monitor(MixedPrecisionEnv(
                t.layers, t.cost_model, t.budget, self.results, metric=t.metric, fp_accuracy=t.fp_accuracy,
                min_bits=t.choices[0], max_bits=t.max_bits, pin_first_last=bool(t.pinned[0]),
                supported_bits=t.choices, reward_scale=t.reward_scale, weights_only=t.weights_only,
                enforcement=t.enforcement, fill_budget=t.fill_budget))

        super().__init__([make for _ in range(n)])

    def step_wait(self) -> Any:
        inner = [e.unwrapped for e in self.envs]
        if inner[0].last_step:
            policies = [env.peek_policy(self.actions[i]) for i, env in enumerate(inner)]
            self.results.values = {tuple(p): float(a) for p, a in zip(policies, self.evaluate_many(policies))}
        return super().step_wait()


class RayEvaluatorPool:
    """N Ray actors, each with its own `QuantEvaluator` built from the search config.

    Args:
        config: the search config (model, data, quantization, finetune, device, seed).
        workers: number of actors.
        address: a Ray cluster to join (``ray start --head`` prints it); None starts a
            local Ray instance sized for the workers.
    """

    def __init__(self, config: SearchConfig, workers: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ValueError("--workers > 1 evaluates on Ray, which is not installed: pip install 'haq-engine[ray]' "
                             "(or pip install ray)") from exc
        self._ray = ray
        self._owns = False
        self.known: dict[tuple[tuple[int, int], ...], float] = {}  # accuracy of every policy evaluated
        self.dispatched = 0  # evaluations sent to the workers
        gpu = config.device.startswith("cuda")
        threads = max(1, (os.cpu_count() or 1) // workers)
        env_vars = {"OMP_NUM_THREADS": str(threads)}
        if "HAQ_CACHE_DIR" in os.environ:
            env_vars["HAQ_CACHE_DIR"] = os.environ["HAQ_CACHE_DIR"]
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                      "runtime_env": {"env_vars": env_vars}}
            if address:
                ray.init(address=address, **kwargs)
            else:
                ray.init(num_cpus=max(workers, os.cpu_count() or 1), **kwargs)
            self._owns = True
        # each actor sees only its own GPU (or its share of one) as "cuda"
        try:
            share = gpus_per_worker(workers, ray.cluster_resources().get("GPU", 0.0)) if gpu else 0.0
        except ValueError:
            self.workers = []
            self.close()
            raise
        if gpu and share < 1:
            log.info("%d workers share the Ray cluster's GPUs, %g of a GPU each", workers, share)
        cfg = dataclasses.replace(config, device="cuda") if gpu else config
        actor = ray.remote(num_gpus=share, num_cpus=0 if gpu else 1)(_EvalWorker)
        self.workers = [actor.remote(cfg.to_dict(), threads) for _ in range(workers)]
        fps = ray.get([w.fp_accuracy.remote() for w in self.workers])
        log.info("%d Ray workers ready (float top-1 %s)", workers, fps)

    def map(self, policies: list[Policy]) -> list[float]:
        """Accuracies of the policies, in order. Policies not evaluated before are sent
        round-robin to the workers, each once; a repeat (in this batch or an earlier one) takes
        the recorded accuracy, since an evaluation is a function of the policy (see
        `QuantEvaluator`), whichever worker ran it."""
        keys = [tuple((int(w), int(a)) for w, a in p) for p in policies]
        new = [k for k in dict.fromkeys(keys) if k not in self.known]
        futures = [self.workers[i % len(self.workers)].evaluate.remote(list(k)) for i, k in enumerate(new)]
        for k, acc in zip(new, self._ray.get(futures)):
            self.known[k] = float(acc)
        self.dispatched += len(new)
        return [self.known[k] for k in keys]

    def close(self) -> None:
        for w in self.workers:
            self._ray.kill(w)
        self.workers = []
        if self._owns:
            self._ray.shutdown()
            self._owns = False


def gpus_per_worker(workers: int, gpus: float) -> float:
    """The GPUs each of `workers` Ray actors asks for on a cluster with `gpus` GPUs: a whole
    one while there are enough, else an equal share of one, ``1 / ceil(workers / gpus)``, so
    that the actors fill the GPUs evenly and every one of them fits (Ray places a fractional
    request on a single GPU: 3 workers on 2 GPUs ask for 0.5 each, not 0.67, which would
    leave the third unplaced and the search waiting for ever). Shares are rounded down to
    Ray's resource step of 0.0001 (3 workers on one GPU: 0.3333 each).

    Raises:
        ValueError: the cluster has no GPU (a CUDA search needs at least one).
    """
    whole = int(gpus)
    if whole < 1:
        raise ValueError(f"the search runs on CUDA but the Ray cluster has {gpus:g} GPUs: run it with --device cpu, "
                         "or join a cluster with GPUs (--ray-address)")
    if workers <= whole:
        return 1.0
    # Ray counts resources in steps of 1/10000: round the share down to one, so k shares fit one GPU
    return math.floor(10000 / math.ceil(workers / whole)) / 10000


class _EvalWorker:
    """The body of a Ray actor: one evaluator."""

    def __init__(self, config: dict[str, Any], threads: int) -> None:
        import torch

        from haq.parts import build_evaluator

        torch.set_num_threads(threads)
        self.evaluator = build_evaluator(SearchConfig.from_dict(config, "worker config"))

    def fp_accuracy(self) -> float:
        return self.evaluator.fp_accuracy

    def evaluate(self, policy: Policy) -> float:
        return float(self.evaluator([tuple(p) for p in policy]))


def rounds(remaining: int, workers: int) -> int:
    """Rounds of `workers` parallel episodes needed for `remaining` episodes."""
    return int(np.ceil(max(0, remaining) / workers))
