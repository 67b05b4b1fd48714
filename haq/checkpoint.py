"""A search's checkpoint without pickles: loading one runs no code from the run folder.

A checkpoint folder holds

* ``agent.pt``: the networks' and both optimisers' state dicts, read back with
  ``torch.load(weights_only=True)`` (tensors, numbers and strings only);
* ``replay.npz``: the replay buffer's arrays, read with ``numpy.load(allow_pickle=False)``;
* ``state.json``: the agent's counters, the replay buffer's position and reward baseline, the
  exploration noise's random state, the torch / NumPy / Python random states, and the search's
  own progress (episodes done, best policy).

`save` writes them from a live search; `load` puts them into an agent freshly built with the
run's config, so the search goes on exactly as if it had not stopped (tested against an
uninterrupted run). A folder from an older engine that holds ``state.pkl`` is refused by
`check_no_pickles` with a message that names it.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from haq.agent import HAQDDPG, EpisodeRewardReplayBuffer, TruncatedNormalNoise

AGENT_FILE, REPLAY_FILE, STATE_FILE = "agent.pt", "replay.npz", "state.json"
BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
PICKLED = ("state.pkl", "replay.pkl", "agent.zip")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read back; the message names the file and what is wrong."""


def check_no_pickles(ckpt: Path) -> None:
    """Refuse a checkpoint written by an older engine (pickled state, which could run code)."""
    old = [name for name in PICKLED if (ckpt / name).exists()]
    if old:
        raise CheckpointError(f"{ckpt} holds {', '.join(old)}, a pickled checkpoint of an older engine; loading it "
                              "could run code, so it is refused: start the search again in a new folder")


def _noises(agent: HAQDDPG) -> list[TruncatedNormalNoise]:
    noise = agent.action_noise
    noises = getattr(noise, "noises", [noise])
    return [n for n in noises if isinstance(n, TruncatedNormalNoise)]


def _rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {"torch": torch.get_rng_state().tolist(),
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
            "python": [version, list(internal), gauss]}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def save(agent: HAQDDPG, ckpt: Path, progress: dict[str, Any]) -> None:
    """Write `agent` and the search's `progress` (JSON-able) into the folder `ckpt`."""
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"policy": agent.policy.state_dict(), "actor_optimizer": agent.actor.optimizer.state_dict(),
                "critic_optimizer": agent.critic.optimizer.state_dict()}, ckpt / AGENT_FILE)
    buffer = agent.replay_buffer
    assert isinstance(buffer, EpisodeRewardReplayBuffer)
    if buffer._pending:
        raise RuntimeError("a checkpoint is taken between episodes, with no transition held back")
    with open(ckpt / REPLAY_FILE, "wb") as fh:
        np.savez(fh, **{k: getattr(buffer, k) for k in BUFFER_ARRAYS})
        fh.flush()
        os.fsync(fh.fileno())
    state = {
        "progress": progress,
        "agent": {"num_timesteps": agent.num_timesteps, "episode_num": agent._episode_num,
                  "n_updates": agent._n_updates, "total_timesteps": agent._total_timesteps,
                  "progress_remaining": agent._current_progress_remaining},
        "replay": {"pos": buffer.pos, "full": buffer.full, "baseline": buffer.baseline},
        "noise": [{"episodes": n.episodes, "stream": n.stream, "rng": n.rng.bit_generator.state,
                   "offsets": n.offsets.tolist(), "offset_episode": n._offset_episode} for n in _noises(agent)],
        "rng": {**_rng_state(), "action_space": agent.action_space.np_random.bit_generator.state},
    }
    _fsync_write(ckpt / STATE_FILE, (json.dumps(state) + "\n").encode())


def load(agent: HAQDDPG, ckpt: Path) -> dict[str, Any]:
    """Put the checkpoint in `ckpt` into `agent` (built with the run's config) and restore the
    random states; returns the search's progress as `save` was given it.

    Raises:
        CheckpointError: a file is missing, truncated or does not fit the agent.
    """
    check_no_pickles(ckpt)
    try:
        state = json.loads((ckpt / STATE_FILE).read_text())
        nets = torch.load(ckpt / AGENT_FILE, map_location=agent.device, weights_only=True)
        with np.load(ckpt / REPLAY_FILE, allow_pickle=False) as arrays:
            replay = {k: arrays[k] for k in BUFFER_ARRAYS}
    except FileNotFoundError as exc:
        raise CheckpointError(f"{ckpt}: {Path(exc.filename).name} is missing: the checkpoint is incomplete") from None
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as exc:
        raise CheckpointError(f"{ckpt}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    buffer = agent.replay_buffer
    try:
        agent.policy.load_state_dict(nets["policy"])
        agent.actor.optimizer.load_state_dict(nets["actor_optimizer"])
        agent.critic.optimizer.load_state_dict(nets["critic_optimizer"])
        for key, value in replay.items():
            if value.shape != getattr(buffer, key).shape:
                raise ValueError(f"{REPLAY_FILE}: {key} has shape {value.shape}, the agent's {getattr(buffer, key).shape}")
            getattr(buffer, key)[...] = value
        a, r = state["agent"], state["replay"]
        agent.num_timesteps, agent._episode_num, agent._n_updates = a["num_timesteps"], a["episode_num"], a["n_updates"]
        agent._total_timesteps, agent._current_progress_remaining = a["total_timesteps"], a["progress_remaining"]
        buffer.pos, buffer.full, buffer.baseline = int(r["pos"]), bool(r["full"]), r["baseline"]
        noises = _noises(agent)
        if len(noises) != len(state["noise"]):
            raise ValueError(f"{STATE_FILE}: {len(state['noise'])} noise states for {len(noises)} environments")
        for n, s in zip(noises, state["noise"]):
            n.episodes, n.stream, n._offset_episode = s["episodes"], s["stream"], s["offset_episode"]
            n.rng = np.random.default_rng()
            n.rng.bit_generator.state = s["rng"]
            n.offsets = np.asarray(s["offsets"], dtype=np.float64)
        _set_rng_state(state["rng"])
        agent.action_space.np_random.bit_generator.state = state["rng"]["action_space"]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{ckpt}: the checkpoint does not fit this search ({type(exc).__name__}: {exc})") from None
    agent._last_obs = None  # the fresh environment is reset before its first step
    return state["progress"]
