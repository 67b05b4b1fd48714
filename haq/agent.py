"""HAQ's DDPG agent, built from stable-baselines3 through its hooks (never a copied DDPG).

HAQ (Wang et al., CVPR 2019, Section 3.4) trains DDPG (Lillicrap et al. 2016) with actor and
critic MLPs of 300-300 units, actor lr 1e-4, critic lr 1e-3, tau 0.01, gamma 1, batch 64;
uniform random actions for the first warm-up episodes; exploration by a truncated normal
around the actor's action whose sigma (0.5) decays by 0.99 per episode; every transition of
an episode stored with the episode's final reward minus a moving-average baseline; one
gradient step per stored transition after each episode. Each difference from SB3's DDPG is
one piece here:

* `TruncatedNormalNoise`, an SB3 `ActionNoise`: truncated-normal exploration, decayed per episode;
* `EpisodeRewardReplayBuffer`, an SB3 `ReplayBuffer`: holds an episode's transitions until it
  ends, then stores them all with the baselined final reward;
* `HAQDDPG`, an SB3 `DDPG`: the critic's own learning rate, warm-up counted in episodes,
  and, when every stored transition is terminal (episode targets), the update without the
  target networks that such targets never read.
"""

from __future__ import annotations

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

from envs import OBS_FEATURES

IS_WEIGHT = OBS_FEATURES.index("is_weight")


class TruncatedNormalNoise(ActionNoise):
    """Exploration noise of HAQ: a normal around the actor's action, truncated to the
    action bounds, with sigma decayed by `decay` per episode after `warmup` episodes:
    ``sigma = initial_sigma * decay ** max(0, episodes - warmup)``.

    The decay follows the episode count (`episodes`, kept by `HAQDDPG`), not calls to
    `reset`, which SB3 also makes when `learn` starts (so on every resume). `__call__`
    returns an untruncated normal sample (the `ActionNoise` contract); `perturb` draws the
    truncated sample around a given action, in the action space's units.

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
        """SB3's DDPG update. With episode targets (every stored transition terminal) the
        critic's target ``r + (1 - done) * gamma * Q'(s', mu'(s'))`` is ``r``, so the target
        networks are neither run nor updated: the same updates as SB3's, with less work."""
        buffer = self.replay_buffer
        if not (isinstance(buffer, EpisodeRewardReplayBuffer) and buffer.episode_targets):
            super().train(gradient_steps, batch_size)
            return
        self.policy.set_training_mode(True)
        self._update_learning_rate([self.actor.optimizer, self.critic.optimizer])
        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            data = buffer.sample(batch_size, env=self._vec_normalize_env)
            critic_loss = sum(F.mse_loss(q, data.rewards) for q in self.critic(data.observations, data.actions))
            assert isinstance(critic_loss, th.Tensor)
            critic_losses.append(critic_loss.item())
            self.critic.optimizer.zero_grad()
            critic_loss.backward()
            self.critic.optimizer.step()
            if self._n_updates % self.policy_delay == 0:
                actor_loss = -self.critic.q1_forward(data.observations, self.actor(data.observations)).mean()
                actor_losses.append(actor_loss.item())
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if actor_losses:
            self.logger.record("train/actor_loss", float(np.mean(actor_losses)))
        if critic_losses:
            self.logger.record("train/critic_loss", float(np.mean(critic_losses)))

    def _update_learning_rate(self, optimizers: Any) -> None:
        """The actor follows SB3's schedule; the critic keeps `critic_learning_rate`."""
        lr = self.lr_schedule(self._current_progress_remaining)
        self.logger.record("train/learning_rate", lr)
        self.logger.record("train/critic_learning_rate", self.critic_learning_rate)
        update_learning_rate(self.actor.optimizer, lr)
        update_learning_rate(self.critic.optimizer, self.critic_learning_rate)

    def _sample_action(self, learning_starts: int, action_noise: ActionNoise | None = None,
                       n_envs: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Uniform random actions for the first `warmup_episodes` episodes (SB3 counts warm-up
        in steps), then the actor's action perturbed by `TruncatedNormalNoise` (or any other
        `ActionNoise`, added and clipped). Returns the action and its scaled form, as SB3's."""
        assert isinstance(self.action_space, spaces.Box)
        low, high = self.action_space.low, self.action_space.high
        if self._episode_num < self.warmup_episodes:
            action = np.array([self.action_space.sample() for _ in range(n_envs)])
        else:
            assert self._last_obs is not None
            action, _ = self.predict(self._last_obs, deterministic=True)
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
