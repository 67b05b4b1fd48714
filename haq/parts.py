"""What a search is assembled from: the model and its data, the evaluator, the cost model and
budget, the environment and the agent, each built from a `SearchConfig`."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

import hw_models
from envs import MixedPrecisionEnv
from envs.mixed_precision import OBS_FEATURES
from haq.agent import HAQDDPG, EpisodeRewardReplayBuffer, TruncatedNormalNoise
from haq.config import SearchConfig, budget_kind, check_device
from haq.data import SearchData, load_dataset
from haq.evaluator import QuantEvaluator, RewardMeasure
from haq.models import checkpoint_classes, create_model, load_weights, model_entry, read_state_dict
from haq.plugins import import_plugin

log = logging.getLogger(__name__)


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
    channels, height, _ = entry.input_shape
    if dataset == "folder":  # any image folder, decoded at the model's input
        data_kwargs = {"size": height, "channels": channels, **data_kwargs}
    if dataset is not None and ":" in dataset:
        return load_plugin_data(dataset, data_root, entry.input_shape, **data_kwargs)
    return load_dataset(dataset or entry.dataset, data_root, **data_kwargs)


def load_plugin_data(spec: str, data_root: str | None, input_shape: tuple[int, int, int],
                     **kwargs: Any) -> SearchData:
    """A user's data set, ``"package.module:function"``: the function is called as
    ``function(data_root, input_shape, **kwargs)`` (`kwargs`: the config's ``data``) and returns a
    `haq.data.SearchData` whose images have the model's input shape (docs/usage.md has an example)."""
    loader = import_plugin("dataset", spec)
    try:
        data = loader(data_root, tuple(input_shape), **kwargs)
    except Exception as exc:
        raise ValueError(f"dataset {spec!r}: the loader raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(data, SearchData):
        raise ValueError(f"dataset {spec!r}: the loader returned {type(data).__name__}, not a haq.data.SearchData")
    if data.input_shape != tuple(input_shape):
        raise ValueError(f"dataset {spec!r}: its images are {data.input_shape}, the model takes {tuple(input_shape)}")
    return data


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
    check_device(config.device)
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
    """SB3 DDPG with HAQ's settings (Section 3.4). `steps` is the episode length.

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
