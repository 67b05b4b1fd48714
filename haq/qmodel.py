"""Apply a mixed-precision policy to a model: fake-quant wrappers and a calibration cache.

`QuantizedModel` wraps each quantizable layer of a model *in place* (the layer module
stays, a thin `QuantLayer` holds it), keeps the float weights as an in-memory state
dict, and applies a `Policy` by setting bits and clip values on the wrappers: no model
rewrite and no copy per episode. Clip values depend only on the float model, the layer
and the bitwidth, so `Calibration` computes each once and caches it for the whole
search (HAQ's public code recomputes them every episode).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from haq import quant
from haq.layers import extract_layers, quantizable_modules
from haq.models import state_fingerprint
from haq.policy import Policy
from hw_models import LayerSpec

CLIP_METHODS = ("kl", "mse", "minmax")


@dataclasses.dataclass(frozen=True)
class QuantConfig:
    """How tensors are quantized.

    The defaults (per-channel min-max weights, MSE-optimal activation clips) gave the best
    accuracy at 2-4 bits on the embedded default (docs/quantization.md); the paper's
    choice, KL-optimal clips per tensor for both, is
    ``QuantConfig(weight_clip="kl", per_channel=False, act_clip="kl")``.

    Attributes:
        weight_clip: ``"kl"`` (the paper's choice: minimise KL divergence), ``"mse"``
            (minimise the quantization error) or ``"minmax"``.
        per_channel: one weight clip per output channel (min-max only) instead of per tensor.
        act_clip: ``"kl"``, ``"mse"`` or ``"minmax"`` for activations. The network's
            input (an image, 8-bit data already) is always clipped min-max: its few
            discrete values defeat histogram criteria.
        mode: ``"linear"`` (HAQ's linear quantization) or ``"kmeans"`` (weights only,
            2^b centroids per layer, for the model-size experiments; activations stay float).
        kmeans_grad: how the finetune moves a k-means centroid: ``"mean"`` (default) by the mean
            of its weights' gradients, ``"sum"`` by their sum (Deep Compression's, the true
            gradient of the shared value). A centroid stands for up to tens of thousands of
            weights, so with the finetune's learning rate the summed step is that many times
            too long: on the 53-layer `digits32-mbv2`, uniform 2-bit k-means did not train and
            long finetunes of searched policies could collapse (CHANGELOG).
        calib_images: images of the search-train split used to calibrate activations.
        kl_bins: histogram bins for KL calibration.
        kl_stride: candidate thresholds are every `kl_stride` bins.
    """

    weight_clip: str = "minmax"
    per_channel: bool = True
    act_clip: str = "mse"
    mode: str = "linear"
    kmeans_grad: str = "mean"
    calib_images: int = 512
    kl_bins: int = 2048
    kl_stride: int = 8

    def __post_init__(self) -> None:
        for field in ("weight_clip", "act_clip"):
            if getattr(self, field) not in CLIP_METHODS:
                raise ValueError(f"QuantConfig.{field} must be one of {CLIP_METHODS}, got {getattr(self, field)!r}")
        if self.per_channel and self.weight_clip != "minmax":
            raise ValueError("per-channel weight clipping supports weight_clip='minmax' only")
        if self.mode not in ("linear", "kmeans"):
            raise ValueError(f"QuantConfig.mode must be 'linear' or 'kmeans', got {self.mode!r}")
        if self.kmeans_grad not in ("mean", "sum"):
            raise ValueError(f"QuantConfig.kmeans_grad must be 'mean' or 'sum', got {self.kmeans_grad!r}")
        if self.calib_images < 1 or self.kl_bins < 16 or self.kl_stride < 1:
            raise ValueError("QuantConfig: calib_images >= 1, kl_bins >= 16 and kl_stride >= 1 are required")


class _MeanGradient(torch.autograd.Function):
    """Identity on a codebook; its gradient (the sum over each centroid's weights) divided by
    `counts`, each centroid's number of weights (`QuantConfig.kmeans_grad`)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, codebook: torch.Tensor,
                counts: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(counts)
        return codebook.view_as(codebook)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (counts,) = ctx.saved_tensors
        return grad / counts, None


class QuantLayer(nn.Module):
    """Fake-quantizes the input activation and the weight of one Conv2d / Linear.

    Bits of 32 mean "float". Clip values are buffers set by `QuantizedModel.apply`.
    In k-means mode the weight is ``codebook[index]`` with a trainable codebook, so the
    finetune updates centroids by the gradients of their weights: summed (Deep Compression),
    or divided by ``code_count`` (each centroid's number of weights) when that is set.
    """

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.w_bits = quant.FLOAT_BITS
        self.a_bits = quant.FLOAT_BITS
        self.a_signed = True
        dev = layer.weight.device  # the buffers live with the weight (a model wrapped after .to("cuda"))
        self.register_buffer("w_clip", torch.zeros((), device=dev), persistent=False)
        self.register_buffer("a_clip", torch.zeros((), device=dev), persistent=False)
        self.codebook: nn.Parameter | None = None  # registered as a parameter once set
        self.register_buffer("code_index", None, persistent=False)
        self.register_buffer("code_count", None, persistent=False)
        # a pruned layer keeps its zeros through the finetune (haq.prune)
        zeros = layer.weight.detach() == 0
        self.register_buffer("w_mask", (~zeros).to(layer.weight.dtype) if bool(zeros.any()) else None,
                             persistent=False)
        # the grids as tensors, for a compiled model (`QuantizedModel.use_tensor_bits`): the
        # forward then reads no bitwidth, so a new policy does not trigger a recompilation
        self.tensor_bits = False
        self.w_on = self.a_on = False
        for kind, shape in (("w", (layer.weight.shape[0],) + (1,) * (layer.weight.ndim - 1)), ("a", ())):
            self.register_buffer(f"{kind}_scale", torch.ones(shape, device=dev), persistent=False)
            self.register_buffer(f"{kind}_qmin", torch.zeros((), device=dev), persistent=False)
            self.register_buffer(f"{kind}_qmax", torch.zeros((), device=dev), persistent=False)

    def set_grids(self) -> None:
        """Copy the grids of the current bits and clips into the tensor buffers (in place)."""
        self.w_on = self.codebook is None and self.w_bits < quant.FLOAT_BITS
        self.a_on = self.a_bits < quant.FLOAT_BITS
        with torch.no_grad():
            if self.w_on:
                scale, lo, hi = quant.grid(self.w_clip, self.w_bits, True)
                self.w_scale.copy_(scale.reshape(-1, *self.w_scale.shape[1:]).expand_as(self.w_scale))
                self.w_qmin.copy_(lo)
                self.w_qmax.copy_(hi)
            if self.a_on:
                scale, lo, hi = quant.grid(self.a_clip, self.a_bits, self.a_signed)
                self.a_scale.copy_(scale.reshape(()))
                self.a_qmin.copy_(lo)
                self.a_qmax.copy_(hi)

    def quantized_weight(self) -> torch.Tensor:
        w = self.layer.weight
        if self.codebook is not None:
            codebook = self.codebook if self.code_count is None else _MeanGradient.apply(self.codebook, self.code_count)
            w = codebook[self.code_index]
        elif self.tensor_bits:
            if self.w_on:
                w = quant.fake_quant_tensors(w, self.w_scale, self.w_qmin, self.w_qmax)
        elif self.w_bits < quant.FLOAT_BITS:
            axis = 0 if self.w_clip.numel() > 1 else None
            w = quant.fake_quant(w, self.w_clip, self.w_bits, True, axis)
        return w if self.w_mask is None else w * self.w_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tensor_bits:
            if self.a_on:
                x = quant.fake_quant_tensors(x.float(), self.a_scale, self.a_qmin, self.a_qmax)
        elif self.a_bits < quant.FLOAT_BITS:  # in float32 also under bf16 autocast
            x = quant.fake_quant(x.float(), self.a_clip, self.a_bits, self.a_signed)
        w = self.quantized_weight()
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return F.linear(x, w, self.layer.bias)


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


class Calibration:
    """Clip values per (layer, kind, bits), computed once from the float model.

    Activation histograms come from one pass over calibration images (after a pass that
    finds each input's range); weight statistics from the float weights.
    """

    def __init__(self, config: QuantConfig) -> None:
        self.config = config
        self._act_hist: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._act_max: dict[str, torch.Tensor] = {}
        self.act_signed: dict[str, bool] = {}
        self.network_inputs: set[str] = set()
        """Layers that read the network's input directly (clipped min-max)."""
        self._cache: dict[tuple[str, str, int], torch.Tensor] = {}
        self._kmeans: dict[tuple[str, str, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self.computed = 0
        """How many clip values were computed (cache misses); for tests and benchmarks."""

    def observe_activations(self, model: nn.Module, names: Sequence[str], images: Iterable[torch.Tensor]) -> None:
        """Record each named layer's input range and histogram on `images` (float model)."""
        modules = {n: model.get_submodule(n) for n in names}
        batches = list(images)
        state: dict[str, str] = {"phase": "range"}
        mins: dict[str, torch.Tensor] = {}

        current: dict[str, torch.Tensor] = {}

        def hook(name: str):
            def _obs(_m: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
                if inputs[0] is current["input"]:
                    self.network_inputs.add(name)
                x = inputs[0].detach()
                if state["phase"] == "range":
                    mx, mn = x.abs().max(), x.min()
                    self._act_max[name] = torch.maximum(self._act_max.get(name, mx), mx)
                    mins[name] = torch.minimum(mins.get(name, mn), mn)
                else:
                    signed = self.act_signed[name]
                    counts, width = quant.histogram(x, signed, self.config.kl_bins, self._act_max[name])
                    prev = self._act_hist.get(name)
                    self._act_hist[name] = (counts if prev is None else prev[0] + counts, width)
            return _obs

        handles = [m.register_forward_pre_hook(hook(n)) for n, m in modules.items()]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for xb in batches:
                    current["input"] = xb
                    model(xb)
                self.act_signed.update({n: bool(mins[n] < 0) for n in names})
                state["phase"] = "hist"
                for xb in batches:
                    current["input"] = xb
                    model(xb)
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)

    def fingerprint(self) -> str:
        """A short hash of the settings and activation statistics the clip values are computed
        from: two calibrations with the same fingerprint give the same clips for the same weights."""
        names = sorted(self._act_max)
        flags = [(n, self.act_signed.get(n), n in self.network_inputs) for n in names]
        stats = {f"{n}.max": self._act_max[n] for n in names}
        stats |= {f"{n}.hist{i}": t for n in names for i, t in enumerate(self._act_hist.get(n, ()))}
        return hashlib.sha256(f"{self.config!r}|{flags!r}|{state_fingerprint(stats)}".encode()).hexdigest()[:16]

    def act_clip(self, name: str, bits: int) -> torch.Tensor:
        key = (name, "a", bits)
        if key not in self._cache:
            self.computed += 1
            if self.config.act_clip == "minmax" or name in self.network_inputs:
                self._cache[key] = self._act_max[name].float()
            else:
                counts, width = self._act_hist[name]
                fn = quant.kl_clip_from_histogram if self.config.act_clip == "kl" else quant.mse_clip_from_histogram
                self._cache[key] = fn(counts, width, bits, self.act_signed[name], self.config.kl_stride)
        return self._cache[key]

    def weight_clip(self, name: str, weight: torch.Tensor, bits: int) -> torch.Tensor:
        key = (name, "w", bits)
        if key not in self._cache:
            self.computed += 1
            w = weight.detach()
            if self.config.per_channel:
                clip = quant.minmax_clip(w, signed=True, dim=0)
            elif self.config.weight_clip == "minmax":
                clip = quant.minmax_clip(w, signed=True)
            else:
                counts, width = quant.histogram(w, True, self.config.kl_bins)
                fn = quant.kl_clip_from_histogram if self.config.weight_clip == "kl" else quant.mse_clip_from_histogram
                clip = fn(counts, width, bits, True, self.config.kl_stride)
            self._cache[key] = clip
        return self._cache[key]

    def kmeans(self, name: str, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(centroids, index) of the layer's float weights with 2^bits clusters, cached."""
        key = (name, "k", bits)
        if key not in self._kmeans:
            self.computed += 1
            self._kmeans[key] = quant.kmeans_1d(weight, bits)
        return self._kmeans[key]


class QuantizedModel:
    """A model whose quantizable layers are wrapped for fake quantization.

    Args:
        model: the float model; it is wrapped in place (pass a copy to keep the original).
        input_shape: ``(C, H, W)`` of one sample, for layer discovery.
        config: quantization settings.
    """

    def __init__(self, model: nn.Module, input_shape: Sequence[int], config: QuantConfig | None = None) -> None:
        self.config = config or QuantConfig()
        self.input_shape = tuple(input_shape)
        self.layers: list[LayerSpec] = extract_layers(model, input_shape)
        names = [layer.name for layer in self.layers]
        modules = quantizable_modules(model)
        self.wrappers: dict[str, QuantLayer] = {}
        for name in names:
            wrapper = QuantLayer(modules[name])
            _set_submodule(model, name, wrapper)
            self.wrappers[name] = wrapper
        self.model = model
        self.float_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.calibration = Calibration(self.config)
        self.tensor_bits = False

    @property
    def names(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def calibrate(self, images: Iterable[torch.Tensor]) -> None:
        """Record activation statistics of the float model (call once, before `apply`)."""
        self.restore()
        self.calibration.observe_activations(self.model, self.names, images)

    def restore(self) -> None:
        """Float weights, BN statistics and no quantization: the model as it was given."""
        for w in self.wrappers.values():
            w.w_bits = w.a_bits = quant.FLOAT_BITS
            w.codebook = None
            w.code_index = None
            w.code_count = None
            w.w_on = w.a_on = False
        state = self.model.state_dict()
        with torch.no_grad():
            for k, v in self.float_state.items():
                state[k].copy_(v)

    def apply(self, policy: Policy) -> None:
        """Restore float weights, then quantize every layer with its (w_bits, a_bits)."""
        policy.check(self.layers)
        if self.config.mode == "linear" and not self.calibration.act_signed:
            raise RuntimeError("call calibrate() before apply(): activation clip values need statistics")
        self.restore()
        for name, (w_bits, a_bits) in zip(policy.layers, policy.bits):
            wrapper = self.wrappers[name]
            weight = self.float_state[f"{name}.layer.weight"]
            if self.config.mode == "kmeans":
                centroids, index = self.calibration.kmeans(name, weight, w_bits)
                wrapper.codebook = nn.Parameter(centroids.clone())
                wrapper.code_index = index
                if self.config.kmeans_grad == "mean":  # each centroid's weights (at least 1: an empty one gets 0)
                    wrapper.code_count = torch.bincount(index.reshape(-1), minlength=centroids.numel()).clamp_min(
                        1).to(centroids.dtype).reshape(centroids.shape)
                continue
            wrapper.w_bits, wrapper.a_bits = w_bits, a_bits
            wrapper.w_clip = self.calibration.weight_clip(name, weight, w_bits)
            wrapper.a_signed = self.calibration.act_signed[name]
            wrapper.a_clip = self.calibration.act_clip(name, a_bits)
        if self.tensor_bits:
            for wrapper in self.wrappers.values():
                wrapper.set_grids()

    def use_tensor_bits(self, on: bool = True) -> None:
        """Make the wrappers read their grids from tensors (for `torch.compile`): the same
        values and gradients, and one compiled graph for every policy. Linear mode only."""
        if on and self.config.mode != "linear":
            raise ValueError("compiled finetuning supports quant.mode='linear' only (k-means swaps the weight tensor)")
        self.tensor_bits = on
        for wrapper in self.wrappers.values():
            wrapper.tensor_bits = on
            wrapper.set_grids()

    def parameters(self) -> list[nn.Parameter]:
        """Trainable parameters; in k-means mode the codebooks replace the layers' weights."""
        replaced = {id(w.layer.weight) for w in self.wrappers.values() if w.codebook is not None}
        return [p for p in self.model.parameters() if p.requires_grad and id(p) not in replaced]
