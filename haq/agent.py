"""HAQ's DDPG agent, built from stable-baselines3 through its hooks (never a copied DDPG).

HAQ (Wang et al., CVPR 2019, Section 3.4) trains DDPG (Lillicrap et al. 2016) with:
actor and critic MLPs of 300-300 units, actor lr 1e-4, critic lr 1e-3, tau 0.01,
gamma 1, batch 64; uniform random actions for the first warm-up episodes; exploration by
a truncated normal around the actor's action whose sigma (0.5) decays by 0.99 per
episode; every transition of an episode stored with the episode's final reward minus a
moving-average baseline; one gradient step per stored transition after each episode.

* `TruncatedNormalNoise` is an SB3 `ActionNoise` (sigma decay on `reset`, once per episode);
* `EpisodeRewardReplayBuffer` is an SB3 `ReplayBuffer` that holds an episode's
  transitions until it ends, then stores them all with the baselined final reward;
* `HAQDDPG` subclasses SB3's `DDPG` only to give the critic its own learning rate, to
  sample actions as HAQ does (warm-up counted in episodes, truncated-normal exploration),
  and, when every stored transition is terminal (episode targets), to skip the target
  networks that such targets never read and backpropagate the MLPs by hand (the same
  gradients as autograd, bit for bit).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise, VectorizedActionNoise
from stable_baselines3.common.utils import update_learning_rate
from torch import nn
from torch.nn import functional as F
from torch.optim.adam import adam

from envs import OBS_FEATURES

IS_WEIGHT = OBS_FEATURES.index("is_weight")


class TruncatedNormalNoise(ActionNoise):
    """Exploration noise of HAQ: a normal around the actor's action, truncated to the
    action bounds, with sigma decayed by `decay` per episode after `warmup` episodes:
    ``sigma = initial_sigma * decay ** max(0, episodes - warmup)``.

    The decay follows the episode count (`episodes`, which `HAQDDPG` keeps equal to its
    finished episodes) rather than calls to `reset`, because SB3 also resets the noise
    when `learn` starts, which would decay it once more on every resume.
    `__call__` returns an untruncated normal sample (the plain `ActionNoise` contract);
    `perturb` draws the truncated sample around a given action. Sigma is in units of the
    environment's action space.

    `offset_sigma` > 0 (not the paper's) adds exploration that is consistent within an
    episode, in the spirit of parameter-space noise (Plappert et al. 2018): each episode draws
    one offset per kind of step (weight, activation) from N(0, offset_sigma), decayed like
    sigma, and every step of that kind is perturbed around the actor's action plus its
    kind's offset. Per-step noise alone almost never moves all 2L requests the same way, so
    whole-network trades such as "one weight bit less, one activation bit more everywhere"
    go unexplored.
    """

    def __init__(self, sigma: float = 0.5, decay: float = 0.99, warmup: int = 20, seed: int | None = None,
                 dim: int = 1, offset_sigma: float = 0.0) -> None:
        super().__init__()
        if sigma <= 0 or not 0 < decay <= 1 or offset_sigma < 0:
            raise ValueError(f"noise needs sigma > 0, 0 < decay <= 1 and offset_sigma >= 0, got sigma={sigma}, "
                             f"decay={decay}, offset_sigma={offset_sigma}")
        self.offset_sigma = float(offset_sigma)
        self.offsets = np.zeros(2)
        self._offset_episode: int | None = None
        self.initial_sigma = float(sigma)
        self.decay = float(decay)
        self.warmup = int(warmup)
        self.episodes = 0
        self.dim = dim
        self.seed = seed
        self.stream = 0
        self.rng = np.random.default_rng(seed)

    @property
    def sigma(self) -> float:
        return self.initial_sigma * self.decay ** max(0, self.episodes - self.warmup)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.sigma, self.dim).astype(np.float32)

    def perturb(self, action: np.ndarray, low: np.ndarray, high: np.ndarray, kind: int = 0) -> np.ndarray:
        """Sample from N(action, sigma) truncated to [low, high]; with `offset_sigma`, around
        the action plus this episode's offset for `kind` (0: weight step, 1: activation)."""
        sigma = self.sigma
        mu = np.asarray(action, dtype=np.float64)
        if self.offset_sigma > 0:
            if self._offset_episode != self.episodes:  # a new episode: new offsets
                self.offsets = self.rng.normal(0.0, self.offset_sigma * sigma / self.initial_sigma, 2)
                self._offset_episode = self.episodes
            mu = mu + self.offsets[kind]
        mu = np.clip(mu, low, high)
        a, b = (low - mu) / sigma, (high - mu) / sigma
        sample = truncnorm.rvs(a, b, loc=mu, scale=sigma, random_state=self.rng)
        return np.clip(sample, low, high).astype(np.float32)

    def use_stream(self, stream: int) -> None:
        """Draw from the `stream`-th random stream of this seed (one per parallel
        environment; SB3 hands each environment a deep copy of the same noise)."""
        if stream != self.stream:
            self.stream = stream
            self.rng = np.random.default_rng(None if self.seed is None else [self.seed, stream])

    def reset(self) -> None:
        """Nothing to reset: the decay follows `episodes`."""

    def __repr__(self) -> str:
        return f"TruncatedNormalNoise(sigma={self.sigma:.4g}, decay={self.decay}, warmup={self.warmup})"


class EpisodeRewardReplayBuffer(ReplayBuffer):
    """Stores every transition of an episode with that episode's final reward minus a
    moving-average baseline (HAQ Section 3.4).

    Transitions are held back until the episode ends; then each is written with reward
    ``R - b`` where R is the final reward and b the moving average of earlier episodes'
    final rewards (0 before the first), updated as ``b += (1 - baseline_decay) * (R - b)``.
    With ``episode_targets=False`` episode boundaries (``done``) are stored as the
    environment gave them, so with gamma = 1 the critic bootstraps through the episode
    (the reference code's choice). With ``episode_targets=True`` every transition is
    stored as terminal, so the critic regresses each (state, action) straight onto the
    episode's baselined reward.
    With ``store_taken_actions=True`` and a final ``info`` carrying ``taken_actions`` (as
    `MixedPrecisionEnv` gives), the stored actions, and the previous-action feature of the
    observations at ``prev_action_index``, are those of the policy that was actually
    evaluated after budget enforcement, so the critic is not taught that bits the budget
    took away earned the episode's reward.
    With ``over_budget_penalty > 0`` (not the paper's), the final reward is first lowered by
    that factor times the fraction by which the requested policy overshot the budget
    (``info["requested_cost"] / info["budget"] - 1``, if positive).
    """

    def __init__(self, *args: Any, baseline_decay: float = 0.95, episode_targets: bool = False,
                 store_taken_actions: bool = False, prev_action_index: int | None = None,
                 over_budget_penalty: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if store_taken_actions and prev_action_index is None:
            raise ValueError("store_taken_actions needs prev_action_index (the observation's previous-action feature)")
        self.baseline_decay = float(baseline_decay)
        self.episode_targets = bool(episode_targets)
        self.store_taken_actions = bool(store_taken_actions)
        self.prev_action_index = prev_action_index
        self.over_budget_penalty = float(over_budget_penalty)
        self.baseline: float | None = None
        self._pending: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]] = []

    def add(self, obs: np.ndarray, next_obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            done: np.ndarray, infos: list[dict[str, Any]]) -> None:
        """Hold the transition; when the episodes end, store them with baselined rewards.

        With several environments (parallel evaluation) their episodes must end on the
        same step (they have the same length); each environment's transitions get its own
        episode's reward minus the baseline of before this round, and the baseline then
        takes the rewards in environment order.
        """
        self._pending.append((np.array(obs), np.array(next_obs), np.array(action), np.array(done), infos))
        dones = np.asarray(done, dtype=bool).reshape(-1)
        if not dones.any():
            return
        if not dones.all():
            raise ValueError("EpisodeRewardReplayBuffer needs every environment's episode to end on the same step")
        finals = np.asarray(reward, dtype=np.float64).reshape(-1)
        if self.over_budget_penalty:
            finals = finals - self.over_budget_penalty * np.array([self.overrun(info) for info in infos])
        base = 0.0 if self.baseline is None else self.baseline
        advantage = (finals - base).astype(np.float32)
        if self.store_taken_actions:
            for env_i, info in enumerate(infos):
                taken = (info or {}).get("taken_actions")
                if taken is not None:
                    self._rewrite_taken(env_i, np.asarray(taken, dtype=np.float32))
        for o, no, a, d, inf in self._pending:
            super().add(o, no, a, advantage, np.ones_like(d) if self.episode_targets else d, inf)
        self._pending = []
        for final in finals:
            self.baseline = float(final) if self.baseline is None else self.baseline + (1 - self.baseline_decay) * (
                float(final) - self.baseline)

    def sample_targets(self, batch_size: int) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Observations, actions and rewards of a batch drawn exactly as `sample` draws it
        (same calls on NumPy's global random state, same rows, same values), without building
        the next observations and done flags that episode targets never read, and handing
        NumPy's gathered rows to torch without another copy."""
        if self.optimize_memory_usage:
            data = self.sample(batch_size)
            return data.observations, data.actions, data.rewards
        upper_bound = self.buffer_size if self.full else self.pos
        batch_inds = np.random.randint(0, upper_bound, size=batch_size)
        env_indices = np.random.randint(0, high=self.n_envs, size=(len(batch_inds),))
        obs, act, rew = (th.from_numpy(a[batch_inds, env_indices]).to(self.device)
                         for a in (self.observations, self.actions, self.rewards))
        return obs, act, rew.reshape(-1, 1)

    def sample_targets_steps(self, batch_size: int, steps: int) -> list[tuple[th.Tensor, th.Tensor, th.Tensor]]:
        """The batches of `steps` calls of `sample_targets`, in order: the same rows and the same
        draws from NumPy's global random state. With one environment (its index draws are
        ``randint(0, 1)``, which take nothing from the state) and NumPy's bounded integers drawn
        one after the other as in one call (`_draws_batch`, checked once per process), the rows
        of all the steps are drawn in one call and gathered in one pass (a step's batch is a view
        of the result); otherwise `sample_targets` runs `steps` times."""
        if self.optimize_memory_usage or self.n_envs != 1 or not _draws_batch():
            return [self.sample_targets(batch_size) for _ in range(steps)]
        upper_bound = self.buffer_size if self.full else self.pos
        batch_inds = np.random.randint(0, upper_bound, size=(steps, batch_size))
        obs, act, rew = (th.from_numpy(a[batch_inds, 0]).to(self.device)
                         for a in (self.observations, self.actions, self.rewards))
        return [(obs[i], act[i], rew[i].reshape(-1, 1)) for i in range(steps)]

    @staticmethod
    def overrun(info: dict[str, Any] | None) -> float:
        """How far the requested policy overshot the budget, as a fraction of it (0 if within)."""
        info = info or {}
        if "requested_cost" not in info or not info.get("budget"):
            return 0.0
        return max(0.0, float(info["requested_cost"]) / float(info["budget"]) - 1.0)

    def _rewrite_taken(self, env_i: int, taken: np.ndarray) -> None:
        """Replace environment `env_i`'s pending actions (SB3 stores them rescaled to
        [-1, 1]) and previous-action features by the taken actions (env action units)."""
        if len(taken) != len(self._pending):
            raise ValueError(f"taken_actions has {len(taken)} entries for {len(self._pending)} transitions")
        low, high = self.action_space.low, self.action_space.high
        scaled = (2.0 * (taken[:, None] - low) / (high - low) - 1.0).astype(np.float32)
        k = self.prev_action_index
        for t, (o, no, a, d, inf) in enumerate(self._pending):
            n = self.n_envs
            o, no, a = o.reshape(n, -1).copy(), no.reshape(n, -1).copy(), a.reshape(n, -1).copy()
            if t > 0:
                o[env_i, k] = taken[t - 1]
            no[env_i, k] = taken[t]
            a[env_i] = scaled[t]
            self._pending[t] = (o, no, a, d, inf)


_DRAWS_BATCH: bool | None = None


def _draws_batch() -> bool:
    """Whether NumPy's global random state gives ``randint(0, n, size=(k, m))`` the values and
    the end state of k calls of ``randint(0, n, size=m)``, and ``randint(0, 1)`` draws nothing
    (true of the legacy MT19937 generator: checked once per process on small draws, the state
    put back after)."""
    global _DRAWS_BATCH
    if _DRAWS_BATCH is None:
        state = np.random.get_state()
        try:
            rows = [np.random.randint(0, 1000, size=5) for _ in range(3)]
            np.random.randint(0, high=1, size=(5,))
            after = np.random.get_state()
            np.random.set_state(state)
            together = np.random.randint(0, 1000, size=(3, 5))
            _DRAWS_BATCH = (np.array_equal(np.stack(rows), together)
                            and all(np.array_equal(a, b) for a, b in zip(after, np.random.get_state())))
        finally:
            np.random.set_state(state)
    return _DRAWS_BATCH


class _GradientStep:
    """``zero_grad(); loss.backward(); optimizer.step()`` for one optimiser, with the same
    arithmetic and less Python around it: the gradients of the optimiser's parameters
    come from ``torch.autograd.grad`` (nothing else is differentiated) or are written by
    hand into `grad_views`, and for a plain `torch.optim.Adam` whose state exists they go
    straight to torch's Adam arithmetic (`_adam`) with the optimiser's settings and state,
    skipping ``Optimizer.step``'s hooks, profiler records and state lookups (6-8% of a DDPG
    gradient step on the 300-300 MLPs on 2 CPU cores; docs/performance.md). The parameters,
    both Adam moments and the gradients are laid out as views of one contiguous buffer each
    (`_flat`, `grad_views`), so Adam runs once over the whole network instead of once per
    tensor: every operation in Adam is elementwise, so each element gets the same arithmetic
    (another 8-13% of the agent's time per episode). Any other case (first step, another
    optimiser, AMSGrad, foreach / fused / capturable Adam, a GPU parameter, a parameter
    without gradient) goes through ``optimizer.step()``.
    Parameters, optimiser state and checkpoints are exactly those of the plain loop (tested).
    """

    def __init__(self, optimizer: th.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        group = optimizer.param_groups[0]
        self.direct = (type(optimizer) is th.optim.Adam and len(optimizer.param_groups) == 1
                       and not group["amsgrad"] and not group["differentiable"] and not group["foreach"]
                       and not group["fused"] and not group["capturable"]
                       and all(p.device.type == "cpu" and p.dtype == self.params[0].dtype
                               and not th.is_complex(p) for p in self.params)
                       and getattr(optimizer, "grad_scale", None) is None
                       and getattr(optimizer, "found_inf", None) is None)
        self._buffers: tuple[th.Tensor, th.Tensor, th.Tensor] | None = None
        self._grad: th.Tensor | None = None
        self._grad_views: dict[th.Tensor, th.Tensor] | None = None
        self._denom: th.Tensor | None = None
        self._step: float | None = None  # Adam's step count while `_adam` runs, written back by `sync_steps`

    def __call__(self, loss: th.Tensor) -> None:
        self.apply(th.autograd.grad(loss, self.params, allow_unused=True))

    def ready(self) -> bool:
        """Whether the next step runs Adam over the flat buffers (a plain Adam whose state
        exists), so that gradients can be written straight into `grad_views`."""
        state = self.optimizer.state
        return self.direct and all(p in state for p in self.params)

    def grad_views(self) -> dict[th.Tensor, th.Tensor]:
        """One gradient tensor per parameter, all views of one flat buffer laid out as the
        parameters' (call only when `ready`): a gradient written into them goes to Adam
        without being concatenated first (`backprop_and_apply`)."""
        if self._buffers is None:
            self._buffers = self._flat()
        if self._grad_views is None:
            self._grad = th.empty_like(self._buffers[0])
            self._grad_views, offset = {}, 0
            for p in self.params:
                self._grad_views[p] = self._grad[offset:offset + p.numel()].view_as(p)
                offset += p.numel()
        return self._grad_views

    def backprop_and_apply(self, saved: list[tuple[nn.Module, th.Tensor, th.Tensor]], grad: th.Tensor) -> None:
        """One optimiser step for a net run by `_mlp_forward` whose parameters are this
        optimiser's, from ``grad`` (the loss's gradient with respect to the net's output),
        backpropagated by `_mlp_backward` straight into `grad_views` when `ready`."""
        flat = self.ready()
        with th.no_grad():
            grads, _ = _mlp_backward(saved, grad, param_grads=True, input_grad=False,
                                     out=self.grad_views() if flat else None)
        if flat:
            self._adam(self._grad)
        else:
            self.apply([grads[p] for p in self.params])

    def apply(self, grads: tuple[th.Tensor | None, ...] | list[th.Tensor | None]) -> None:
        """One optimiser step with these gradients (one per parameter, in the optimiser's order)."""
        if self.ready() and all(g is not None for g in grads):
            if self._buffers is None:
                self._buffers = self._flat()
            self._adam(th.cat([g.reshape(-1) for g in grads]))
            return
        self.sync_steps()
        for p, g in zip(self.params, grads):
            p.grad = g
        self.optimizer.step()
        for p in self.params:
            p.grad = None

    def _adam(self, grad: th.Tensor) -> None:
        """Adam over the flat buffers with the flat gradient: torch's single-tensor Adam
        (``torch.optim.adam._single_tensor_adam``: the same operations on the same values in
        the same order), written out here for the plain case (no weight decay, not
        ``maximize``, float hyperparameters; anything else goes to torch's functional
        ``adam``) so that two of its passes can be cheaper with the same results:

        * its ``exp_avg_sq.sqrt()`` runs on ``exp_avg_sq.clamp_min(tiny)``. ATen's CPU
          ``sqrt`` of float32 takes a slow path on exact zeros (10x slower over a buffer
          with 15% zeros, the second moments of dead ReLU units, than over one without).
          An entry below ``tiny`` (the smallest normal number, 1.2e-38 in float32: zero or
          subnormal) gives a square root of at most 1.1e-19 either way, which divided by the
          bias correction (at least ``sqrt(1 - beta2)``) stays below half a unit in the last
          place of ``eps``, so ``denom`` is exactly ``eps`` with or without the clamp; the
          clamp is used only where that bound holds (always, for SB3's and HAQ's settings in
          float32 and float64);
        * the denominators are computed in place in one buffer kept for the whole `train`
          call instead of two new tensors a step.

        The moments and the parameters are torch's bit for bit (tested against
        ``torch.optim.adam.adam`` on moments with zeros and subnormals, and against SB3's
        update). The step count is kept as a Python float meanwhile and written into the
        optimiser's state by `sync_steps` (end of `train`, or before any step that is not this one)."""
        group = self.optimizer.param_groups[0]
        param, exp_avg, exp_avg_sq = self._buffers
        lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
        if (group["weight_decay"] != 0 or group["maximize"]
                or not all(isinstance(x, float | int) for x in (lr, beta1, beta2, eps))):
            self.sync_steps()
            step_t = self.optimizer.state[self.params[0]]["step"]
            with th.no_grad():
                adam([param], [grad], [exp_avg], [exp_avg_sq], [], [step_t], amsgrad=False, has_complex=False,
                     beta1=beta1, beta2=beta2, lr=lr, weight_decay=group["weight_decay"], eps=eps,
                     maximize=group["maximize"], foreach=False, capturable=False, differentiable=False,
                     fused=None, decoupled_weight_decay=group["decoupled_weight_decay"])
            for p in self.params[1:]:
                self.optimizer.state[p]["step"].copy_(step_t)
            return
        if self._step is None:
            self._step = self.optimizer.state[self.params[0]]["step"].item()
        # the float32 step tensor's ``+= 1``, rounding included, on a Python float (a 0-d tensor op costs 12 us)
        self._step = step = float(np.float32(self._step + 1))
        with th.no_grad():
            exp_avg.lerp_(grad, 1 - beta1)
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            bias_correction2_sqrt = bias_correction2**0.5
            if self._denom is None:
                self._denom = th.empty_like(param)
            denom = self._denom
            tiny = th.finfo(param.dtype).tiny
            # eps as the kernels add it, and the bound below which adding leaves it unchanged
            # (half an ulp: more than eps * 2**-25 in float32, in which every dtype but float64 is computed)
            wide = param.dtype == th.float64
            eps_op = float(eps) if wide else float(np.float32(eps))
            if 2 * math.sqrt(tiny) / bias_correction2_sqrt < eps_op * th.finfo(th.float64 if wide else th.float32).eps / 4:
                th.clamp_min(exp_avg_sq, tiny, out=denom).sqrt_()
            else:
                th.sqrt(exp_avg_sq, out=denom)
            denom.div_(bias_correction2_sqrt).add_(eps)
            param.addcdiv_(exp_avg, denom, value=-step_size)

    def sync_steps(self) -> None:
        """Write the step count that `_adam` keeps into every parameter's Adam state (so the
        optimiser's state and checkpoints are as ``Optimizer.step`` leaves them)."""
        if self._step is None:
            return
        state = self.optimizer.state
        for p in self.params:
            state[p]["step"].fill_(self._step)
        self._step = None

    def flush_subnormal_moments(self) -> None:
        """Set the entries of Adam's two moments that are subnormal (nonzero, below float32's
        smallest normal number, about 1.2e-38) to zero.

        A parameter whose gradient stops (a dead ReLU unit) has its first moment decayed by
        beta1 each step into the subnormal range, where it sticks for good (0.9 times the
        smallest subnormal rounds back to it); on x86 every operation that reads or writes a
        subnormal takes a slow microcode path: at the end of the default 100-episode search
        37% of the critic's first moments were subnormal, and Adam's passes over such values
        ran 4-7x slower. Zeroing them once per `HAQDDPG.train` call takes 12-21% off the
        agent's time per episode from episode 25 on (docs/performance.md, session 20).
        This is the one place where the optimiser state leaves SB3's bit for bit, and the
        parameters do not follow it: with the default learning rates (<= 1e-3) and Adam's
        ``eps`` of 1e-8, a subnormal first moment's share of a step, at most
        ``lr / (1 - beta1) * 1.2e-38 / eps`` = 1.2e-32, is below half a unit in the last
        place of any parameter larger than about 1e-24 in magnitude; the next gradient
        larger than about 1e-29 leaves the same first moment whether it started from the
        subnormal or from zero; and a subnormal second moment is lost against ``eps`` in
        the denominator either way. Checked: the default search replays episode for episode
        with bit-identical actor and critic weights; tested on planted subnormals.
        Checkpoints keep the zeros."""
        if self._buffers is not None:
            moments = list(self._buffers[1:])
        else:
            state = self.optimizer.state
            moments = [state[p][k] for p in self.params if p in state for k in ("exp_avg", "exp_avg_sq")
                       if isinstance(state[p].get(k), th.Tensor) and state[p][k].is_floating_point()]
        with th.no_grad():
            for m in moments:  # hardshrink by the largest subnormal, in place: 12x faster than a bool mask
                largest_subnormal = th.tensor(th.finfo(m.dtype).tiny, dtype=m.dtype).nextafter(th.zeros((), dtype=m.dtype))
                th.ops.aten.hardshrink.out(m, largest_subnormal.item(), out=m)

    def _flat(self) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """One contiguous 1-d tensor each for the parameters, ``exp_avg`` and ``exp_avg_sq``,
        whose slices are the per-parameter tensors that the modules and the optimiser's
        state hold (their values unchanged). Tensors already laid out so (by an earlier
        call, or loaded that way from a checkpoint) are reused; others are copied into a
        new buffer once and replaced by views of it."""
        state = self.optimizer.state
        n = sum(p.numel() for p in self.params)
        out = []
        for key in ("param", "exp_avg", "exp_avg_sq"):
            tensors = [p if key == "param" else state[p][key] for p in self.params]
            storage = tensors[0].untyped_storage()
            offset, laid_out = 0, storage.nbytes() == n * tensors[0].element_size()
            for t in tensors:
                laid_out = (laid_out and t.is_contiguous() and t.storage_offset() == offset
                            and t.untyped_storage().data_ptr() == storage.data_ptr())
                offset += t.numel()
            if laid_out:
                out.append(th.empty(0, dtype=tensors[0].dtype).set_(storage, 0, (n,), (1,)))
                continue
            flat = th.cat([t.detach().reshape(-1) for t in tensors])
            offset = 0
            for p, t in zip(self.params, tensors):
                view = flat[offset:offset + t.numel()].view_as(t)
                if key == "param":
                    p.data = view
                else:
                    state[p][key] = view
                offset += t.numel()
            out.append(flat)
        return out[0], out[1], out[2]


def _run_mlp(net: nn.Sequential, x: th.Tensor) -> th.Tensor:
    """``net(x)`` for SB3's MLPs, calling the functional form of their linear, ReLU and
    tanh layers directly (the same kernels, hence the same values) instead of going through
    ``Module.__call__`` for each; any other layer is called as a module."""
    for m in net:
        kind = type(m)
        if kind is nn.Linear:
            x = F.linear(x, m.weight, m.bias)
        elif kind is nn.ReLU:
            x = F.relu(x, inplace=m.inplace)
        elif kind is nn.Tanh:
            x = th.tanh(x)
        else:
            x = m(x)
    return x


_MLP_LAYERS = (nn.Linear, nn.ReLU, nn.Tanh)


def _mlp_forward(net: nn.Sequential, x: th.Tensor) -> tuple[th.Tensor, list[tuple[nn.Module, th.Tensor, th.Tensor]]]:
    """``net(x)`` without autograd (call under ``th.no_grad``), for a net of `nn.Linear`,
    `nn.ReLU` and `nn.Tanh` layers only, with each layer's input and output kept for
    `_mlp_backward`. The same kernels as ``net(x)``, hence the same values."""
    saved = []
    for m in net:
        y = F.linear(x, m.weight, m.bias) if type(m) is nn.Linear else F.relu(x) if type(m) is nn.ReLU else th.tanh(x)
        saved.append((m, x, y))
        x = y
    return x, saved


def _mlp_backward(saved: list[tuple[nn.Module, th.Tensor, th.Tensor]], grad: th.Tensor, param_grads: bool,
                  input_grad: bool, out: dict[th.Tensor, th.Tensor] | None = None,
                  ) -> tuple[dict[th.Tensor, th.Tensor], th.Tensor | None]:
    """Backpropagate ``grad`` (the gradient of a loss with respect to the net's output)
    through a net run by `_mlp_forward`, calling the very aten operations that autograd's
    backward nodes call for these layers (``F.linear`` is ``addmm(b, x, W.t())``: the weight's
    gradient is ``grad.t().mm(x)``, the bias's ``grad.sum(0)``, the input's ``grad.mm(W)``;
    ReLU's is ``threshold_backward(grad, out, 0)``, tanh's ``tanh_backward(grad, out)``), so
    the gradients equal ``torch.autograd.grad``'s bit for bit (tested) without building and
    walking a graph. Returns the parameters' gradients (if ``param_grads``; written into the
    tensors of `out`, one per parameter, if given: the same kernels, hence the same values)
    and the input's (if ``input_grad``; otherwise the first layer's input gradient is not
    computed)."""
    grads: dict[th.Tensor, th.Tensor] = {}
    for i in range(len(saved) - 1, -1, -1):
        m, x, y = saved[i]
        if type(m) is nn.Linear:
            if param_grads:
                if out is None:
                    grads[m.weight] = grad.t().mm(x)
                else:
                    grads[m.weight] = th.mm(grad.t(), x, out=out[m.weight])
                if m.bias is not None:
                    grads[m.bias] = grad.sum(0) if out is None else th.sum(grad, 0, out=out[m.bias])
            if i == 0 and not input_grad:
                return grads, None
            grad = grad.mm(m.weight)
        elif type(m) is nn.ReLU:
            grad = th.ops.aten.threshold_backward(grad, y, 0)
        else:
            grad = th.ops.aten.tanh_backward(grad, y)
    return grads, grad


def _plain_mlp(net: nn.Module) -> bool:
    """Whether `_mlp_forward` / `_mlp_backward` can run this net: a `nn.Sequential` of 2-d
    `nn.Linear` layers, out-of-place `nn.ReLU` and `nn.Tanh`, starting with a linear layer."""
    return (type(net) is nn.Sequential and len(net) > 0 and type(net[0]) is nn.Linear
            and all(type(m) in _MLP_LAYERS and not getattr(m, "inplace", False) for m in net))


class HAQDDPG(DDPG):
    """SB3 DDPG with a separate critic learning rate and HAQ's action sampling.

    Args (beyond `DDPG`'s):
        critic_learning_rate: learning rate of the critic's optimiser (the actor uses
            ``learning_rate``).
        warmup_episodes: episodes of uniform random actions before the actor acts.
        final_layer_init: if > 0, the last layers of actor and critic start from U(-x, x)
            (DDPG's initialisation, Lillicrap et al. 2016: x = 3e-3); 0 keeps PyTorch's.
    """

    def __init__(self, *args: Any, critic_learning_rate: float = 1e-3, warmup_episodes: int = 20,
                 final_layer_init: float = 0.0, **kwargs: Any) -> None:
        self.critic_learning_rate = float(critic_learning_rate)
        self.warmup_episodes = int(warmup_episodes)
        self.final_layer_init = float(final_layer_init)
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        super()._setup_model()
        update_learning_rate(self.critic.optimizer, self.critic_learning_rate)
        if self.final_layer_init > 0:
            bound = self.final_layer_init
            with th.no_grad():
                for net in (self.actor.mu, *self.critic.q_networks):
                    last = [m for m in net if isinstance(m, nn.Linear)][-1]
                    last.weight.uniform_(-bound, bound)
                    last.bias.uniform_(-bound, bound)
            self.actor_target.load_state_dict(self.actor.state_dict())
            self.critic_target.load_state_dict(self.critic.state_dict())

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """SB3's DDPG update; with episode targets (every stored transition terminal) the
        critic's target ``r + (1 - done) * gamma * Q'(s', mu'(s'))`` is just ``r``, so the
        target networks' forward passes and their soft updates are skipped: the same
        updates with less work per step (tested against SB3's update; timed in
        docs/performance.md). The target networks keep their initial weights; nothing reads
        them. Each step differentiates only the parameters its optimiser updates (the actor's
        loss leaves the critic's weight gradients alone; SB3 computes and discards them) and
        applies Adam without `Optimizer.step`'s per-call bookkeeping (`_GradientStep`); batches
        come from `EpisodeRewardReplayBuffer.sample_targets_steps` (SB3's draws, only the fields
        read, all the steps' rows drawn and gathered at once).
        For SB3's plain MLPs and one critic the gradients are backpropagated by hand
        (`_manual_step`); other networks go through autograd, with the MLPs run by `_run_mlp`
        (no per-layer module calls). Same parameters, optimiser state and random-state draws
        as SB3's update (tested), but for Adam's subnormal moments, which each call ends by
        setting to zero (`_GradientStep.flush_subnormal_moments`: they slowed every step
        and do not move the parameters)."""
        buffer = self.replay_buffer
        if not (isinstance(buffer, EpisodeRewardReplayBuffer) and buffer.episode_targets):
            super().train(gradient_steps, batch_size)
            return
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        critic_step, actor_step = _GradientStep(self.critic.optimizer), _GradientStep(self.actor.optimizer)
        actor, critic = self.actor, self.critic
        actor_losses, critic_losses = [], []
        manual = self._backprop_by_hand()
        batches = buffer.sample_targets_steps(batch_size, gradient_steps) if self._vec_normalize_env is None else None
        try:
            for i in range(gradient_steps):
                self._n_updates += 1
                if batches is not None:
                    observations, actions, rewards = batches[i]
                else:
                    data = buffer.sample(batch_size, env=self._vec_normalize_env)
                    observations, actions, rewards = data.observations, data.actions, data.rewards
                if manual:
                    self._manual_step(observations, actions, rewards, critic_step, actor_step, critic_losses, actor_losses)
                    continue
                critic_in = th.cat([critic.extract_features(observations, critic.features_extractor), actions], dim=1)
                critic_loss = sum(F.mse_loss(_run_mlp(q_net, critic_in), rewards) for q_net in critic.q_networks)
                assert isinstance(critic_loss, th.Tensor)
                critic_losses.append(critic_loss.item())
                critic_step(critic_loss)
                if self._n_updates % self.policy_delay == 0:
                    policy_actions = _run_mlp(actor.mu, actor.extract_features(observations, actor.features_extractor))
                    with th.no_grad():
                        features = critic.extract_features(observations, critic.features_extractor)
                    actor_loss = -_run_mlp(critic.q_networks[0], th.cat([features, policy_actions], dim=1)).mean()
                    actor_losses.append(actor_loss.item())
                    actor_step(actor_loss)  # differentiates the actor's parameters only, not the critic's
        finally:  # Adam's step counts, kept by `_GradientStep` while it steps, into the optimisers' state
            critic_step.sync_steps()
            actor_step.sync_steps()
        critic_step.flush_subnormal_moments()
        actor_step.flush_subnormal_moments()
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if actor_losses:
            self.logger.record("train/actor_loss", float(np.mean(actor_losses)))
        if critic_losses:
            self.logger.record("train/critic_loss", float(np.mean(critic_losses)))

    def _backprop_by_hand(self) -> bool:
        """Whether `train` backpropagates by hand (`_manual_step`): one critic, plain MLPs
        (`_plain_mlp`), and their parameters are all that each optimiser updates (no trainable
        feature extractor)."""
        q_nets = self.critic.q_networks
        return (len(q_nets) == 1 and _plain_mlp(self.actor.mu) and _plain_mlp(q_nets[0])
                and all({id(p) for group in net_opt.param_groups for p in group["params"]}
                        == {id(p) for p in net.parameters()}
                        for net, net_opt in ((q_nets[0], self.critic.optimizer), (self.actor.mu, self.actor.optimizer))))

    def _manual_step(self, observations: th.Tensor, actions: th.Tensor, rewards: th.Tensor,
                     critic_step: _GradientStep, actor_step: _GradientStep, critic_losses: list[float],
                     actor_losses: list[float]) -> None:
        """One gradient step of `train` (critic, then the actor every ``policy_delay`` updates)
        for plain MLPs and one critic, backpropagated by hand (`_mlp_backward`): the same aten
        operations as autograd's backward, so the same gradients bit for bit, without building
        and walking an autograd graph (7-9% of the agent's time per episode on the 300-300
        MLPs; docs/performance.md). The gradients of ``mse_loss(q, r)`` and ``-q.mean()`` are
        autograd's formulas: ``mse_loss_backward`` (reduction 1: mean) and ``-1 / n`` per element."""
        actor, critic = self.actor, self.critic
        q_net = critic.q_networks[0]
        with th.no_grad():
            features = critic.extract_features(observations, critic.features_extractor)
            q, saved = _mlp_forward(q_net, th.cat([features, actions], dim=1))
            loss = F.mse_loss(q, rewards)
            critic_losses.append(loss.item())
            critic_step.backprop_and_apply(saved, th.ops.aten.mse_loss_backward(th.ones_like(loss), q, rewards, 1))
        if self._n_updates % self.policy_delay != 0:
            return
        with th.no_grad():
            policy_actions, actor_saved = _mlp_forward(actor.mu, actor.extract_features(observations,
                                                                                         actor.features_extractor))
            q, saved = _mlp_forward(q_net, th.cat([features, policy_actions], dim=1))
            actor_losses.append(-q.mean().item())
            _, grad_in = _mlp_backward(saved, th.full_like(q, -1.0).div(q.numel()), param_grads=False,
                                       input_grad=True)
            assert grad_in is not None
            actor_step.backprop_and_apply(actor_saved, grad_in.narrow(1, features.shape[1], policy_actions.shape[1]))

    def _update_learning_rate(self, optimizers: Any) -> None:
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        self.logger.record("train/critic_learning_rate", self.critic_learning_rate)
        update_learning_rate(self.actor.optimizer, lr)
        update_learning_rate(self.critic.optimizer, self.critic_learning_rate)

    def _actor_action(self, obs: np.ndarray) -> np.ndarray:
        """The actor's deterministic actions for a batch of observations, in the action space's
        units: what ``self.predict(obs, deterministic=True)[0]`` returns, without its per-call
        checks, with the actor's MLP run by `_run_mlp`, and without switching the networks to
        eval mode on every step (only when they are not already; `train` switches them back
        once per episode). Same values (tested)."""
        if self.policy.training:
            self.policy.set_training_mode(False)
        actor = self.actor
        with th.no_grad():
            obs_t = th.as_tensor(np.asarray(obs).reshape((-1, *self.observation_space.shape)), device=self.device)
            scaled = _run_mlp(actor.mu, actor.extract_features(obs_t, actor.features_extractor))
        assert isinstance(self.action_space, spaces.Box)
        return self.policy.unscale_action(scaled.cpu().numpy().reshape((-1, *self.action_space.shape)))

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        assert isinstance(self.action_space, spaces.Box)
        low, high = self.action_space.low, self.action_space.high
        if self._episode_num < self.warmup_episodes:
            action = np.array([self.action_space.sample() for _ in range(n_envs)])
        else:
            assert self._last_obs is not None
            action = self._actor_action(self._last_obs)
            noises = action_noise.noises if isinstance(action_noise, VectorizedActionNoise) else [action_noise]
            if all(isinstance(n, TruncatedNormalNoise) for n in noises):
                for i, n in enumerate(noises):
                    n.use_stream(i)
                    n.episodes = self._episode_num
                kinds = [0 if self._last_obs[i, IS_WEIGHT] > 0.5 else 1 for i in range(len(noises))]
                action = np.concatenate([n.perturb(action[i:i + 1], low, high, kinds[i])
                                         for i, n in enumerate(noises)])
            elif action_noise is not None:
                action = np.clip(action + action_noise(), low, high)
        return action, self.policy.scale_action(action)
