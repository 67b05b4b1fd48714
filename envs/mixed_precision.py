"""The HAQ search as a Gymnasium environment (Wang et al., CVPR 2019, Section 3)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from hw_models import CostModel, LayerSpec, check_layers, policy_cost

Evaluator = Callable[[list[tuple[int, int]]], float]
"""policy ``[(w_bits, a_bits), ...]`` -> accuracy in percent."""

ENFORCEMENTS = ("sequential", "highest-first")
"""Budget enforcement orders: the paper's walk from the last layer to the first, or lowering
the highest bitwidth first (ties: last layer first, activation before weight)."""

OBS_FEATURES = ("layer_index", "c_in", "c_out", "kernel", "stride", "feature_map", "n_params",
                "depthwise", "is_weight", "prev_action")


def action_to_bits(action: float, choices: Sequence[int]) -> int:
    """Map an action in [0, 1] to a bitwidth by equal-width bins over `choices` (sorted).

    For a contiguous range b_min..b_max this is the paper's
    ``round(b_min - 0.5 + a * (b_max - b_min + 1))``, clipped to the range.
    """
    k = len(choices)
    idx = int(np.round(-0.5 + float(action) * k))
    return int(choices[min(max(idx, 0), k - 1)])


def bits_to_action(bits: int, choices: Sequence[int]) -> float:
    """The centre of the action bin that `action_to_bits` maps to `bits` (its inverse)."""
    k = list(choices).index(int(bits))
    return (k + 0.5) / len(choices)


def layer_features(layers: Sequence[LayerSpec]) -> np.ndarray:
    """The 7 static features of each layer, min-max normalised over the model's layers, (L, 7)."""
    raw = np.array([[i, l.c_in, l.c_out, l.kernel, l.stride, l.in_h * l.in_w, l.n_weights]
                    for i, l in enumerate(layers)], dtype=np.float64)
    lo, hi = raw.min(axis=0), raw.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return (raw - lo) / span


class MixedPrecisionEnv(gym.Env):
    """Pick a weight and an activation bitwidth for each layer of a network.

    One episode walks the L quantizable layers; each layer takes two steps, first its
    weight bits, then its activation bits (2L steps; L steps with ``weights_only``). After the last step the policy is
    made to fit the budget, the evaluator measures its accuracy, and the reward is given.

    ## Observation
    ``Box(0, 1, (10,), float32)``, the state of HAQ's Section 3.1: (layer index, c_in,
    c_out, kernel, stride, input feature-map size, #params, depthwise flag,
    weight/activation flag, previous action). The first seven are min-max normalised over
    the model's layers; the flags are 0/1; the previous action is the raw action of the
    previous step (0 at the first step). Every field is set afresh each step.

    ## Action
    ``Box(0, 1, (1,), float32)``, mapped to bits by equal-width bins over the allowed
    bitwidths (``min_bits..max_bits``, intersected with the hardware's ``supported_bits``).
    With ``pin_first_last`` the first and last layers are held at ``max_bits`` whatever
    the action.

    ## Reward
    0 on every step but the last; there ``reward_scale * (acc - fp_accuracy)``, with
    accuracies in percent (HAQ Eq. 2, lambda = 0.1).

    ## Episode end
    Terminates after 2L steps; never truncates. Before the reward, the budget is enforced
    by HAQ's sequential decrease: while the cost exceeds the budget, walk from the last
    layer to the first lowering activation bits, then weight bits, one allowed step at a
    time, re-checking the cost after each.

    ## Info
    Every step: ``bits``, the bitwidth the action mapped to. Last step also: ``policy``
    (the enforced ``[(w, a), ...]``), ``requested_policy`` (before enforcement),
    ``requested_cost`` (its cost), ``accuracy``, ``cost``, ``cost_ratio`` (cost / cost of w8a8),
    ``budget``, ``reward``,
    ``taken_actions`` (the 2L actions consistent with the enforced policy: the agent's own
    where its bits survived, the centre of the lowered bitwidth's bin where they did not).

    ## Arguments
    * ``layers``: the model's `LayerSpec` list.
    * ``cost_model``: a `hw_models.CostModel`; ``metric`` selects what the budget limits.
    * ``budget``: the largest allowed total cost, in the metric's units.
    * ``evaluator``: ``policy -> accuracy (percent)``; this environment never trains.
    * ``fp_accuracy``: the float model's accuracy; defaults to ``evaluator.fp_accuracy``.
    * ``min_bits``, ``max_bits``: the bit range (paper: 2..8).
    * ``pin_first_last``: hold the first and last layer at ``max_bits`` (the reference code
      does; default off).
    * ``supported_bits``: bitwidths the hardware runs natively (default: the cost model's).
    * ``reward_scale``: lambda of the reward.
    * ``weights_only``: search weight bits only (one step per layer; activation bits held
      at ``max_bits``), as HAQ does under a model-size budget (Section 4.3).
    * ``enforcement``: ``"sequential"`` (the paper's, above) or ``"highest-first"``: lower
      the highest bitwidth one step at a time (ties: the last layer, activation before
      weight), which keeps the order of the agent's requests instead of cutting the last
      layers for what the first ones asked (not the paper's; docs/agent_testbed.md). The
      environment defaults to the paper's order; `haq search` defaults to ``highest-first``
      (docs/search.md measures both).
    * ``fill_budget``: after enforcement, spend what the policy left of the budget: raise the
      lowest bitwidth one allowed step at a time (ties: the first layer, weight before
      activation) while the raise keeps the cost within the budget, until no raise fits. Not the
      paper's (its reward ignores unspent budget, so on a noisy reward a search may end on a
      cheaper, less accurate policy than its budget allows); off by default.

    ## Version history
    * v0: initial version.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(
        self, layers: Sequence[LayerSpec], cost_model: CostModel, budget: float, evaluator: Evaluator,
        *, metric: str = "latency_ms", fp_accuracy: float | None = None, min_bits: int = 2, max_bits: int = 8,
        pin_first_last: bool = False, supported_bits: Sequence[int] | None = None, reward_scale: float = 0.1,
        weights_only: bool = False, enforcement: str = "sequential", fill_budget: bool = False,
    ) -> None:
        super().__init__()
        if enforcement not in ENFORCEMENTS:
            raise ValueError(f"enforcement must be one of {list(ENFORCEMENTS)}, got {enforcement!r}")
        self.enforcement = enforcement
        self.fill_budget = bool(fill_budget)
        self.weights_only = bool(weights_only)
        self.layers = check_layers(layers)
        if not 1 <= min_bits <= max_bits <= 8:
            raise ValueError(f"bit range must satisfy 1 <= min_bits <= max_bits <= 8, got {min_bits}..{max_bits}")
        supported = cost_model.supported_bits if supported_bits is None else tuple(supported_bits)
        self.choices = tuple(b for b in range(min_bits, max_bits + 1) if b in set(supported))
        if not self.choices:
            raise ValueError(f"no bitwidth in {min_bits}..{max_bits} is supported by the hardware ({list(supported)})")
        self.max_bits = max(self.choices)
        self.metric = metric
        self.cost_model = cost_model
        self.table = cost_model.table(self.layers, metric)
        self.evaluator = evaluator
        if fp_accuracy is None:
            fp_accuracy = getattr(evaluator, "fp_accuracy", None)
            if fp_accuracy is None:
                raise ValueError("pass fp_accuracy, or an evaluator with an fp_accuracy attribute")
        self.fp_accuracy = float(fp_accuracy)
        self.reward_scale = float(reward_scale)
        self.pinned = np.zeros(len(self.layers), dtype=bool)
        if pin_first_last:
            self.pinned[[0, -1]] = True
        self.budget = float(budget)
        self.reference_cost = self.cost([(8, 8)] * len(self.layers))
        self.min_cost = self.cost(self._floor_policy())
        if not np.isfinite(self.budget) or self.budget < self.min_cost - 1e-12 * max(1.0, abs(self.min_cost)):
            raise ValueError(
                f"budget {self.budget:.6g} {metric} cannot be met: the cheapest allowed policy costs "
                f"{self.min_cost:.6g} {metric} ({self.min_cost / self.reference_cost:.3f} of w8a8; "
                f"bits {self.choices[0]}..{self.max_bits}{', first/last layer pinned' if pin_first_last else ''})")
        self._static = layer_features(self.layers).astype(np.float32)
        self._dw = np.array([l.kind == "dwconv" for l in self.layers], dtype=np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (len(OBS_FEATURES),), np.float32)
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self._t = 0
        self._bits: list[list[int]] = []
        self._actions: list[float] = []
        self._prev_action = 0.0

    # ------------------------------------------------------------------ helpers
    @property
    def n_steps(self) -> int:
        return len(self.layers) if self.weights_only else 2 * len(self.layers)

    def slot(self, t: int) -> tuple[int, int]:
        """(layer, 0 for weight bits / 1 for activation bits) decided at step t."""
        return (t, 0) if self.weights_only else divmod(t, 2)

    def cost(self, policy: Sequence[tuple[int, int]]) -> float:
        """Total cost of a policy: one table lookup per layer."""
        return policy_cost(self.table, policy)

    def _floor_policy(self) -> list[tuple[int, int]]:
        lo, hi = self.choices[0], self.max_bits
        return [(hi, hi) if p else (lo, hi if self.weights_only else lo) for p in self.pinned]

    def _obs(self) -> np.ndarray:
        layer, is_act = self.slot(self._t)
        layer = min(layer, len(self.layers) - 1)
        obs = np.empty(len(OBS_FEATURES), dtype=np.float32)
        obs[:7] = self._static[layer]
        obs[7] = self._dw[layer]
        obs[8] = 0.0 if is_act else 1.0
        obs[9] = self._prev_action
        return obs

    def enforce_budget(self, policy: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
        """HAQ's sequential decrease: lower bits from the last layer to the first
        (activation, then weight), one allowed step at a time, until the cost fits. With
        ``enforcement="highest-first"``, lower the highest bitwidth first instead; with
        ``fill_budget``, then raise the lowest bitwidths while the budget allows."""
        bits = [list(p) for p in policy]
        rows = np.arange(len(bits))
        layer_cost = self.table[rows, [b[0] - 1 for b in bits], [b[1] - 1 for b in bits]]
        total = float(layer_cost.sum())
        lower = {b: self.choices[i - 1] for i, b in enumerate(self.choices) if i > 0}
        tol = 1e-12 * max(1.0, abs(self.budget))
        # walk order: last layer first, activation bits before weight bits
        slots = [(i, j) for i in reversed(range(len(bits))) if not self.pinned[i]
                 for j in ((0,) if self.weights_only else (1, 0))]
        cursor = 0  # the sequential walk resumes where it stopped, pass after pass

        def next_slot() -> tuple[int, int] | None:
            nonlocal cursor
            if self.enforcement == "highest-first":  # the first of the highest, in walk order
                movable = [(i, j) for i, j in slots if bits[i][j] in lower]
                return max(movable, key=lambda s: bits[s[0]][s[1]]) if movable else None
            for _ in range(len(slots)):
                i, j = slots[cursor]
                cursor = (cursor + 1) % len(slots)
                if bits[i][j] in lower:
                    return i, j
            return None

        while total > self.budget + tol:
            slot = next_slot()
            if slot is None:  # unreachable: guarded in __init__, kept as a safety net
                raise RuntimeError("budget enforcement made no progress")
            i, j = slot
            bits[i][j] = lower[bits[i][j]]
            new = float(self.table[i, bits[i][0] - 1, bits[i][1] - 1])
            total += new - layer_cost[i]
            layer_cost[i] = new
        if self.fill_budget:
            total = self._fill(bits, layer_cost, total, list(reversed(slots)), tol)
        return [(b[0], b[1]) for b in bits]

    def _fill(self, bits: list[list[int]], layer_cost: np.ndarray, total: float, order: list[tuple[int, int]],
              tol: float) -> float:
        """Raise the lowest bitwidth (first in `order` among equals) one allowed step while the
        raise fits the budget; the total cost when no raise fits any more."""
        higher = {b: self.choices[i + 1] for i, b in enumerate(self.choices[:-1])}
        while True:
            best: tuple[int, int, float] | None = None  # (bits, position in order, the layer's cost after)
            for k, (i, j) in enumerate(order):
                if bits[i][j] not in higher or (best is not None and bits[i][j] >= best[0]):
                    continue
                raised = [*bits[i]]
                raised[j] = higher[bits[i][j]]
                new = float(self.table[i, raised[0] - 1, raised[1] - 1])
                if total + new - layer_cost[i] <= self.budget + tol:
                    best = (bits[i][j], k, new)
            if best is None:
                return total
            i, j = order[best[1]]
            bits[i][j] = higher[bits[i][j]]
            total += best[2] - layer_cost[i]
            layer_cost[i] = best[2]

    def peek_policy(self, action: np.ndarray | float) -> list[tuple[int, int]]:
        """The enforced policy that `step(action)` would evaluate, without stepping.

        Only valid before the episode's last step; lets a caller evaluate the policies of
        several environments at once (parallel evaluation) before stepping them.
        """
        if self._t != self.n_steps - 1:
            raise RuntimeError(f"peek_policy is for the last step ({self.n_steps - 1}); this is step {self._t}")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        layer, is_act = self.slot(self._t)
        bits = self.max_bits if self.pinned[layer] else action_to_bits(a, self.choices)
        last = [*self._bits[layer], bits] if is_act else [bits, self.max_bits]
        return self.enforce_budget([(w, a_) for w, a_ in self._bits[:layer]] + [(last[0], last[1])])

    @property
    def last_step(self) -> bool:
        """True when the next `step` ends the episode."""
        return self._t == self.n_steps - 1

    def taken_actions(self, requested: Sequence[tuple[int, int]], policy: Sequence[tuple[int, int]]) -> list[float]:
        """The episode's 2L actions as the budget left them: the agent's own action where
        its bits survived, the centre of the enforced bitwidth's bin where they were lowered."""
        taken = []
        for t, a in enumerate(self._actions):
            layer, j = self.slot(t)
            same = requested[layer][j] == policy[layer][j] or self.pinned[layer]
            taken.append(a if same else bits_to_action(policy[layer][j], self.choices))
        return taken

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._t = 0
        self._bits = []
        self._actions = []
        self._prev_action = 0.0
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, SupportsFloat, bool, bool, dict[str, Any]]:
        if self._t >= self.n_steps:
            raise RuntimeError("episode is over: call reset()")
        a = float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], 0.0, 1.0))
        layer, is_act = self.slot(self._t)
        bits = self.max_bits if self.pinned[layer] else action_to_bits(a, self.choices)
        if is_act:
            self._bits[layer].append(bits)
        else:
            self._bits.append([bits, self.max_bits] if self.weights_only else [bits])
        self._prev_action = a
        self._actions.append(a)
        self._t += 1
        info: dict[str, Any] = {"bits": bits}
        if self._t < self.n_steps:
            return self._obs(), 0.0, False, False, info
        requested = [(w, a_) for w, a_ in self._bits]
        policy = self.enforce_budget(requested)
        accuracy = float(self.evaluator(policy))
        cost = self.cost(policy)
        reward = self.reward_scale * (accuracy - self.fp_accuracy)
        info.update(policy=policy, requested_policy=requested, requested_cost=self.cost(requested),
                    accuracy=accuracy, cost=cost,
                    cost_ratio=cost / self.reference_cost, budget=self.budget, reward=reward,
                    taken_actions=self.taken_actions(requested, policy))
        return self._obs(), reward, True, False, info
