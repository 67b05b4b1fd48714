"""The search configuration: one dataclass tree that validates itself and round-trips
through YAML (the CLI's flags and ``--config`` file are views of it)."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import yaml

from envs import ENFORCEMENTS
from haq.evaluator import REWARD_MEASURES
from haq.fileio import atomic_write_text
from haq.policy import parse_uniform
from haq.qmodel import QuantConfig
from haq.train import FinetuneConfig, auto_compile

CONSTRAINTS = {"latency": "latency_ms", "energy": "energy_mj", "size": "size_mb"}
METHODS = {
    "ddpg": "HAQ's DDPG agent (the paper's method)",
    "ilp": "per-layer sensitivity and an integer program (haq.ilp): the k best allocations, each finetuned",
    "random": "uniformly random actions in every episode, under the same budget enforcement",
}
"""How a search proposes its policies (``SearchConfig.method``)."""


_SCALARS: dict[str, tuple[tuple[type, ...], str]] = {
    "int": ((int,), "an integer"), "float": ((int, float), "a number"), "bool": ((bool,), "true or false"),
    "str": ((str,), "a string")}


def check_field_types(config: Any) -> None:
    """Raise TypeError naming the first scalar field of a config dataclass whose value is not of its
    declared type (``episodes: 2.5``, ``seed: "x"``, ``reward_scale: yes``); ``X | None`` admits None."""
    for field in dataclasses.fields(config):
        declared = str(field.type).replace(" ", "")
        optional = declared.endswith("|None")
        base = declared.removesuffix("|None")
        if base not in _SCALARS:
            continue
        value = getattr(config, field.name)
        if value is None and optional:
            continue
        kinds, want = _SCALARS[base]
        if not isinstance(value, kinds) or (base != "bool" and isinstance(value, bool)):
            raise TypeError(f"{type(config).__name__}.{field.name} must be {want}"
                            f"{' or null' if optional else ''}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """DDPG settings. Network sizes, learning rates, tau, gamma, batch and warm-up are HAQ's
    (Section 3.4). Exploration, targets, stored actions, reward shaping and
    the last layer's initialisation default to the settings that learnt on every seed of the
    default search (docs/search.md, docs/agent_testbed.md); `PAPER_AGENT` holds the paper's.

    Attributes:
        actor_lr: actor learning rate.
        critic_lr: critic learning rate.
        tau: soft target-update rate.
        gamma: discount.
        batch_size: replay minibatch size.
        hidden: hidden layer sizes of actor and critic.
        noise_sigma: initial exploration sigma (in action units, actions are in [0, 1]).
            The paper's 0.5 spreads the first learnt requests over the whole bit range;
            the default 0.1 explores around what the actor asks for.
        noise_decay: per-episode sigma decay after warm-up. The paper's 0.99 is tuned to 600
            episodes; over the default 100 it would leave sigma at 0.22 of 0.5 at the end, so
            the default is 0.97. Paper-scale configs set 0.99.
        baseline_decay: decay of the moving-average reward baseline (not given by the paper).
        buffer_size: replay capacity in transitions.
        episode_targets: store every transition as terminal so the critic learns the
            episode's reward directly instead of bootstrapping through 2L steps (on by
            default; the paper bootstraps with gamma = 1, which reaches early actions only
            through the previous-action feature of the state).
        updates_per_transition: gradient steps per stored transition after each episode
            (paper: 1).
        store_taken_actions: store the actions of the policy as budget enforcement left it
            (what was evaluated) instead of the actions the agent asked for. The paper does
            not say. Off by default: with the over-budget penalty the critic needs the
            request to see what asking too much costs.
        over_budget_penalty: shaping of the stored reward (not the paper's): the episode's
            reward minus this times the fraction by which the *requested* policy overshot
            the budget, so the agent is charged for asking more than it can have. Meant with
            ``store_taken_actions=False``. 0 is the paper's reward; default 1.
        final_layer_init: if > 0, the last layer of actor and critic starts from
            U(-x, x), DDPG's initialisation (Lillicrap et al. 2016, x = 3e-3, the default),
            so the first learnt actions sit mid-range (5 bits on 2..8) on every layer; 0
            keeps PyTorch's initialisation (the paper does not say which it uses).
        noise_offset_sigma: if > 0 (default 0.2, not the paper's), exploration also shifts
            every weight step of an episode by one shared offset and every activation step by
            another, each drawn per episode from N(0, x) and decayed like the noise
            (`TruncatedNormalNoise`), so whole-network trades such as w3a5 for w4a4 get
            explored; 0 (the paper) explores each step independently. Measured in
            experiments/results/ablations/noise-offset.md and docs/search.md.
    """

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    gamma: float = 1.0
    batch_size: int = 64
    hidden: tuple[int, ...] = (300, 300)
    noise_sigma: float = 0.1
    noise_decay: float = 0.97
    baseline_decay: float = 0.95
    buffer_size: int = 20_000
    episode_targets: bool = True
    store_taken_actions: bool = False
    updates_per_transition: int = 1
    over_budget_penalty: float = 1.0
    final_layer_init: float = 3e-3
    noise_offset_sigma: float = 0.2

    def __post_init__(self) -> None:
        check_field_types(self)
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if min(self.actor_lr, self.critic_lr, self.tau, self.noise_sigma) <= 0 or self.batch_size < 1:
            raise ValueError("agent: learning rates, tau, noise_sigma must be > 0 and batch_size >= 1")
        if min(self.over_budget_penalty, self.final_layer_init, self.noise_offset_sigma) < 0:
            raise ValueError(f"agent: over_budget_penalty, final_layer_init and noise_offset_sigma must be >= 0, "
                             f"got {self.over_budget_penalty}, {self.final_layer_init}, {self.noise_offset_sigma}")
        if self.updates_per_transition < 1:
            raise ValueError(f"agent: updates_per_transition must be >= 1, got {self.updates_per_transition}")
        if not 0 <= self.gamma <= 1 or not 0 <= self.baseline_decay < 1 or not 0 < self.noise_decay <= 1:
            raise ValueError("agent: gamma in [0, 1], baseline_decay in [0, 1), noise_decay in (0, 1]")


PAPER_AGENT = AgentConfig(noise_sigma=0.5, noise_decay=0.99, episode_targets=False, store_taken_actions=False,
                          over_budget_penalty=0.0, final_layer_init=0.0, noise_offset_sigma=0.0)
"""The paper's agent (Section 3.4): sigma 0.5 decaying 0.99 per episode, independent noise on
every step, bootstrapped targets with gamma = 1, the plain reward, PyTorch's initialisation, the
requested actions stored. Use it with ``enforcement="sequential"``;
experiments/configs/paper_agent.yaml is the same as a ``--config`` file."""


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything a search needs. Defaults: the embedded default (digits, bismo-edge, the integer program,
    latency no more than uniform w3a3: uniform bits lose about 8 points of held-out top-1 there, so
    a search has something to win; at w4a4 they lose about one).

    Attributes:
        model: registered model name or ``"package.module:factory"``.
        weights: local state-dict file for the model (None: the model's own pretraining).
        dataset: ``digits``, ``cifar10``, ``imagenet``, ``imagenet100``, ``folder`` (any class-per-folder
            image tree at ``data_root``, at the model's input) or ``"package.module:function"``
            (`haq.parts.load_plugin_data`); None: the model's.
        data_root: local folder of a data set that is not shipped.
        data: extra keyword arguments of the data loader (split sizes, image size).
        hw: hardware cost model name (see ``haq hw list``) or ``"package.module:Class"``.
        hw_params: overrides of the hardware model's parameters.
        constraint: ``latency``, ``energy`` or ``size``.
        budget: a ratio of the w8a8 cost (``"0.5"``) or a uniform policy (``"w4a4"``:
            no more than that policy costs).
        method: how policies are proposed (`METHODS`): ``ilp`` (default: ``episodes`` allocations
            of the integer program over measured per-layer sensitivities, `haq.ilp`; fewer when
            fewer exist; it beat the other methods at every budget of the mini tables,
            docs/methods.md), ``ddpg`` (HAQ's agent, the paper's method) or ``random`` (every
            episode a warm-up episode). Each proposal is finetuned once, as an episode, and the same final
            selection ends every method, so their finetune counts match.
        episodes: episodes in total, warm-up included (the paper uses 600).
        warmup: episodes of random actions before the agent learns (paper: 20); with
            ``method: random`` it is set to ``episodes``.
        seed: seeds the agent, the exploration and the finetune.
        device: ``cpu``, ``cuda``, ``cuda:1``, ...
        out: run directory (None: ``runs/<timestamp>-<model>-<hw>``).
        min_bits, max_bits: bit range of the search (paper: 2..8).
        pin_first_last: keep the first and last layer at max_bits (the reference code does;
            the paper does not say so; off by default).
        reward_scale: lambda of the reward (paper: 0.1).
        reward_measure: what the reward reads on search-validation (`haq.evaluator.REWARD_MEASURES`):
            ``top1`` (default, the paper's Eq. 2) or ``p_true``, the mean true-class probability,
            which varies less between finetunes (`haq.evaluator.RewardMeasure`). Either way the
            episodes' and the summary's ``accuracy`` is top-1. One process only (``workers: 1``).
        workers: policies evaluated at once, each by its own Ray worker with its own model
            copy (and GPU when ``device`` is CUDA); 1 evaluates in-process.
        ray_address: a Ray cluster to join for the workers (None: a local Ray instance).
        weights_only: search weight bits only, activations held at max_bits (the paper's
            model-size experiments, with ``quant.mode = "kmeans"``, which leaves them float).
        enforcement: how a policy over the budget is lowered: ``highest-first`` (default,
            not the paper's: the highest bitwidth first, so the order of the request
            survives) or ``sequential`` (the paper's, last layer to first); see
            `envs.MixedPrecisionEnv` and docs/search.md.
        fill_budget: after enforcement, raise the lowest bitwidths while the budget allows, so
            every evaluated policy spends its budget (not the paper's; off by default;
            `envs.MixedPrecisionEnv`).
        select_top, select_finetunes: the search ends by finetuning its `select_top` best distinct
            policies (by reward) and the uniform policies within the budget `select_finetunes` more
            times each, with fresh seeds, on search-validation, and returns the best by that mean
            (`haq.selection`); a uniform policy wins ties. The best of many noisy one-finetune
            measurements is inflated by its luck (the winner's curse); the mean of fresh finetunes
            is not. ``select_finetunes: 0`` returns the best by reward (the paper's).
        quant: quantizer settings.
        finetune: finetune settings. Its ``compile: None`` (auto) is decided here, from
            ``device``, ``quant.mode`` (`haq.train.auto_compile`) and ``min_bits >= 2``, so
            that a run's ``config.yaml`` says whether it compiled.
        agent: DDPG settings.
    """

    model: str = "digits-mbv2"
    weights: str | None = None
    dataset: str | None = None
    data_root: str | None = None
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
    hw: str = "bismo-edge"
    hw_params: dict[str, Any] = dataclasses.field(default_factory=dict)
    constraint: str = "latency"
    budget: str = "w3a3"
    method: str = "ilp"
    episodes: int = 100
    warmup: int = 20
    seed: int = 0
    device: str = "cpu"
    out: str | None = None
    min_bits: int = 2
    max_bits: int = 8
    pin_first_last: bool = False
    reward_scale: float = 0.1
    reward_measure: str = "top1"
    weights_only: bool = False
    enforcement: str = "highest-first"
    fill_budget: bool = False
    select_top: int = 3
    select_finetunes: int = 3
    workers: int = 1
    ray_address: str | None = None
    quant: QuantConfig = dataclasses.field(default_factory=QuantConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    agent: AgentConfig = dataclasses.field(default_factory=AgentConfig)

    def __post_init__(self) -> None:
        check_field_types(self)
        if not math.isfinite(self.reward_scale) or self.reward_scale <= 0:
            raise ValueError(f"reward_scale must be a finite number > 0 (the paper's 0.1), got {self.reward_scale!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.constraint not in CONSTRAINTS:
            raise ValueError(f"constraint must be one of {list(CONSTRAINTS)}, got {self.constraint!r}")
        budget_kind(self.budget)
        if self.enforcement not in ENFORCEMENTS:
            raise ValueError(f"enforcement must be one of {list(ENFORCEMENTS)}, got {self.enforcement!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {list(METHODS)}, got {self.method!r}")
        if self.method == "random" and self.warmup != self.episodes:  # frozen: set once, as compile below
            object.__setattr__(self, "warmup", self.episodes)
        if self.select_top < 1 or self.select_finetunes < 0:
            raise ValueError(f"select_top must be >= 1 and select_finetunes >= 0, got {self.select_top}, "
                             f"{self.select_finetunes}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.reward_measure not in REWARD_MEASURES:
            raise ValueError(f"reward_measure must be one of {list(REWARD_MEASURES)}, got {self.reward_measure!r}")
        if self.reward_measure != "top1" and self.workers > 1:
            raise ValueError(f"reward_measure {self.reward_measure!r} is read in the search's own process; "
                             f"set workers: 1 (got {self.workers}) or reward_measure: top1")
        if self.episodes < 1 or self.warmup < 0:
            raise ValueError(f"episodes must be >= 1 and warmup >= 0, got {self.episodes}, {self.warmup}")
        if not 1 <= self.min_bits <= self.max_bits <= 8:
            raise ValueError(f"bit range must satisfy 1 <= min_bits <= max_bits <= 8, got {self.min_bits}..{self.max_bits}")
        if self.finetune.compile is None:  # frozen: set once (the compiled grids have no binary weights)
            compile_ = auto_compile(str(self.device).startswith("cuda"), self.quant.mode) and self.min_bits >= 2
            object.__setattr__(self, "finetune", dataclasses.replace(self.finetune, compile=compile_))

    @property
    def metric(self) -> str:
        return CONSTRAINTS[self.constraint]

    # ------------------------------------------------------------------ round trip
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["agent"]["hidden"] = list(self.agent.hidden)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> SearchConfig:
        nested = {"quant": QuantConfig, "finetune": FinetuneConfig, "agent": AgentConfig}
        _check_keys(cls, data, source)
        kwargs = dict(data)
        for key, sub in nested.items():
            if key in kwargs:
                value = kwargs[key]
                if isinstance(value, sub):
                    continue
                if not isinstance(value, dict):
                    raise ValueError(f"{source}: '{key}' must be a mapping of {sub.__name__} fields")
                _check_keys(sub, value, f"{source}: {key}")
                try:
                    kwargs[key] = sub(**value)
                except (TypeError, ValueError) as exc:
                    raise type(exc)(f"{source}: {key}: {exc}") from None
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:  # name the file (or the flags) the value came from
            raise type(exc)(f"{source}: {exc}") from None

    def to_yaml(self, path: str | os.PathLike[str]) -> None:
        """Write the config as YAML, atomically (a temporary file renamed over `path`)."""
        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> SearchConfig:
        return cls.from_dict(load_yaml(path), str(path))

    @classmethod
    def from_run(cls, path: str | os.PathLike[str], allow_plugins: bool = False) -> SearchConfig:
        """The config a run directory's ``config.yaml`` was run with. A run writes every key,
        so a missing key means the run predates it; it gets the behaviour the run had then
        (`RUN_LEGACY`), not today's default, so that resuming an old run does not switch its
        enforcement or agent halfway.

        A run folder is data: a ``model`` or ``hw`` that names code (``package.module:attr``, a
        plugin that would be imported and run) is refused unless `allow_plugins` (the CLI's
        ``--allow-plugins``: the user vouches for the folder).

        Raises:
            ValueError: the file names code and `allow_plugins` is False, or a key is invalid.
        """
        data = load_yaml(path)
        missing = sorted(f.name for f in dataclasses.fields(cls) if f.name not in data and f.name not in RUN_LEGACY)
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}: a run writes every key, so the file is damaged "
                             "(truncated?) or was not written by a search; it cannot be resumed as written")
        plugins = [f"{key}: {data[key]}" for key in PLUGIN_KEYS if isinstance(data.get(key), str) and ":" in data[key]]
        if plugins and not allow_plugins:
            raise ValueError(f"{path} names code to import ({', '.join(plugins)}); a run folder is data and is not "
                             "allowed to run code: pass --allow-plugins if you trust it")
        for key, value in RUN_LEGACY.items():
            if isinstance(value, dict):
                data[key] = {**value, **(data.get(key) or {})}
            else:
                data.setdefault(key, value)
        return cls.from_dict(data, str(path))


PLUGIN_KEYS = ("model", "hw", "dataset")
"""Config keys whose ``package.module:attr`` value is imported: code, not data."""

RUN_LEGACY: dict[str, Any] = {
    "enforcement": "sequential",
    "method": "ddpg",
    "select_finetunes": 0,
    "quant": {"kmeans_grad": "sum"},
    "agent": {"final_layer_init": 0.0, "over_budget_penalty": 0.0, "store_taken_actions": False,
              "noise_offset_sigma": 0.0},
}
"""What runs written before a key existed did: the paper's sequential enforcement, no final
selection (the best by reward), PyTorch's init, no penalty, the requested actions stored, no exploration offsets, k-means centroids moved
by their weights' summed gradients (``episode_targets`` has always been written)."""


def check_device(device: str) -> str:
    """`device` if it names a torch device this machine has; ValueError saying what would be valid."""
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but this torch has no CUDA device; use --device cpu")
    return device


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A YAML mapping from a file, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top level")
    return data


def _check_keys(cls: type, data: dict[str, Any], source: str) -> None:
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(valid))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; valid keys: {valid}")


def budget_kind(budget: str) -> tuple[str, Any]:
    """``("ratio", 0.5)`` or ``("uniform", (4, 4))``; ValueError for anything else."""
    text = str(budget).strip()
    try:
        ratio = float(text)
    except ValueError:
        try:
            return "uniform", parse_uniform(text)
        except ValueError:
            raise ValueError(f"budget must be a ratio of the w8a8 cost (e.g. 0.5) or a uniform policy "
                             f"(e.g. w4a4), got {budget!r}") from None
    if not 0 < ratio:
        raise ValueError(f"budget ratio must be > 0, got {ratio}")
    return "ratio", ratio
