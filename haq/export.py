"""Export a quantized, finetuned network: a PyTorch artifact with integer weights packed
at their bitwidths, and an ONNX model with QuantizeLinear / DequantizeLinear pairs.

* PyTorch (``model.haq.pt``): for each quantized layer its integer weights packed at
  ``w_bits`` bits each, the per-channel (or per-tensor) weight clip, the activation bits,
  clip and signedness; every other tensor (biases, BatchNorm) in float. `load_quantized`
  rebuilds the network in one call and gives the same outputs as the fake-quantized model.
* ONNX (``model.onnx``): each quantized layer's input goes through Clip (the b-bit range
  ``[qmin, qmax] * scale``), QuantizeLinear and DequantizeLinear; its weight (on the b-bit
  grid) through a per-channel QuantizeLinear / DequantizeLinear pair. The b-bit integer
  ranges ride in 8-bit ONNX types: the Clip bounds and the grid keep every value inside
  the layer's own range. Runs on onnxruntime's CPU provider.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from haq import quant
from haq.qmodel import QuantizedModel, QuantLayer

FORMAT = "haq-quantized/1"


# ---------------------------------------------------------------------------- bit packing
def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack signed integers of the symmetric b-bit range into a uint8 stream, b bits each."""
    qmax = 2 ** (bits - 1) - 1
    u = (np.asarray(q, dtype=np.int64).ravel() + qmax).astype(np.uint8)
    if u.size and (u.max() > 2 * qmax):
        raise ValueError(f"values outside the {bits}-bit range [-{qmax}, {qmax}]")
    planes = np.unpackbits(u[:, None], axis=1)[:, 8 - bits:]  # (n, bits), most significant first
    return np.packbits(planes.ravel())


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of `pack_bits`: n signed integers."""
    qmax = 2 ** (bits - 1) - 1
    planes = np.unpackbits(np.asarray(packed, dtype=np.uint8))[: n * bits].reshape(n, bits)
    full = np.zeros((n, 8), dtype=np.uint8)
    full[:, 8 - bits:] = planes
    return np.packbits(full, axis=1).ravel().astype(np.int64) - qmax


# ---------------------------------------------------------------------------- PyTorch artifact
def _weight_scale(clip: torch.Tensor, bits: int, ndim: int) -> torch.Tensor:
    """The weight grid's step exactly as `quant.fake_quant` computes it, shaped to broadcast
    over a weight of `ndim` dimensions (per output channel when `clip` is a vector)."""
    scale = quant.fake_quant_step(clip, bits, True)
    return scale.reshape([-1] + [1] * (ndim - 1)) if scale.numel() > 1 else scale


def _weight_ints(wrapper: QuantLayer) -> tuple[np.ndarray, torch.Tensor]:
    """The layer's quantized weight as integers, and its clip (what fake_quant uses)."""
    clip = wrapper.w_clip.detach().float().cpu()
    w = wrapper.quantized_weight().detach().float().cpu()
    q = torch.round(w / _weight_scale(clip, wrapper.w_bits, w.ndim))
    return q.numpy().astype(np.int64), clip


def export_pytorch(qmodel: QuantizedModel, path: str | os.PathLike[str], meta: dict[str, Any]) -> int:
    """Write the artifact; returns its size in bytes. `meta` must name the model
    (``model``: a registered name, ``model_kwargs``: its factory arguments).

    Few records, so a small network is not dominated by per-tensor overhead: one uint8
    blob of every layer's packed weights, one float tensor of their clips, and the
    remaining tensors concatenated by dtype, with offsets and shapes beside them.
    """
    if qmodel.config.mode != "linear":
        raise ValueError("export supports linear quantization (k-means codebooks are not exported)")
    layers: dict[str, Any] = {}
    blobs, clips, skip = [], [], set()
    offset = clip_offset = 0
    for name, wrapper in qmodel.wrappers.items():
        if wrapper.w_bits >= quant.FLOAT_BITS:
            raise ValueError(f"layer {name!r} is not quantized: apply a policy before exporting")
        if wrapper.w_bits < 2:
            raise ValueError(f"layer {name!r}: {wrapper.w_bits}-bit weights are not exported (2..8 bits)")
        q, clip = _weight_ints(wrapper)
        packed = pack_bits(q, wrapper.w_bits)
        layers[name] = {"w_bits": wrapper.w_bits, "a_bits": wrapper.a_bits, "a_signed": wrapper.a_signed,
                        "a_clip": float(wrapper.a_clip), "w_shape": list(q.shape), "w_offset": offset,
                        "w_bytes": int(packed.size), "clip_offset": clip_offset, "clip_n": int(clip.numel())}
        blobs.append(packed)
        clips.append(clip.reshape(-1))
        offset += packed.size
        clip_offset += clip.numel()
        skip.add(f"{name}.layer.weight")
    rest: dict[str, Any] = {"index": [], "float": [], "int": []}
    for k, v in qmodel.model.state_dict().items():
        if k in skip:
            continue
        kind = "float" if v.is_floating_point() else "int"
        start = sum(t.numel() for t in rest[kind])
        rest["index"].append([k, kind, start, list(v.shape)])
        rest[kind].append(v.detach().cpu().reshape(-1).to(torch.float32 if kind == "float" else torch.int64))
    artifact = {
        "format": FORMAT, **meta, "input_shape": list(qmodel.input_shape), "layers": layers,
        "weights": torch.from_numpy(np.concatenate(blobs)), "clips": torch.cat(clips),
        "rest_index": rest["index"],
        "rest_float": torch.cat(rest["float"]) if rest["float"] else torch.zeros(0),
        "rest_int": torch.cat(rest["int"]) if rest["int"] else torch.zeros(0, dtype=torch.int64),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(artifact, path)
    return path.stat().st_size


def load_quantized(path: str | os.PathLike[str]) -> nn.Module:
    """Rebuild an exported network (eval mode, on the CPU) in one call."""
    from haq.models import create_model
    from haq.qmodel import QuantConfig

    art = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(art, dict) or art.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} artifact")
    model = create_model(art["model"], pretrained=False, **art.get("model_kwargs", {}))
    qmodel = QuantizedModel(model, tuple(art["input_shape"]), QuantConfig())
    missing = set(qmodel.wrappers) ^ set(art["layers"])
    if missing:
        raise ValueError(f"{path}: layers do not match model {art['model']!r}: {sorted(missing)[:5]}")
    state = qmodel.model.state_dict()
    with torch.no_grad():
        for key, kind, start, shape in art["rest_index"]:
            flat = art["rest_float"] if kind == "float" else art["rest_int"]
            n = int(np.prod(shape)) if shape else 1
            state[key].copy_(flat[start:start + n].reshape(shape).to(state[key].dtype))
        blob = art["weights"].numpy()
        for name, d in art["layers"].items():
            wrapper = qmodel.wrappers[name]
            bits = int(d["w_bits"])
            n = int(np.prod(d["w_shape"]))
            packed = blob[d["w_offset"]:d["w_offset"] + d["w_bytes"]]
            q = torch.from_numpy(unpack_bits(packed, bits, n)).float().reshape(d["w_shape"])
            clip = art["clips"][d["clip_offset"]:d["clip_offset"] + d["clip_n"]].clone()
            clip = clip.reshape(()) if d["clip_n"] == 1 else clip
            wrapper.layer.weight.copy_(q * _weight_scale(clip, bits, q.ndim))
            wrapper.w_bits, wrapper.a_bits = bits, int(d["a_bits"])
            wrapper.w_clip = clip
            wrapper.a_clip = torch.tensor(float(d["a_clip"]))
            wrapper.a_signed = bool(d["a_signed"])
    return qmodel.model.eval()


# ---------------------------------------------------------------------------- ONNX
class _QDQLayer(nn.Module):
    """A QuantLayer as ONNX sees it: Clip + Q/DQ on the input, Q/DQ on the weight."""

    def __init__(self, wrapper: QuantLayer) -> None:
        super().__init__()
        self.layer = wrapper.layer
        self.a_bits = wrapper.a_bits
        lo, hi = quant.qrange(wrapper.a_bits, wrapper.a_signed) if wrapper.a_bits < quant.FLOAT_BITS else (0, 0)
        clip = float(wrapper.a_clip)
        self.a_scale = max(clip / hi, float(torch.finfo(torch.float32).tiny)) if hi else 1.0
        self.a_lo, self.a_hi = lo * self.a_scale, hi * self.a_scale
        self.a_range = (-128, 127) if wrapper.a_signed else (0, 255)
        q, clip_w = _weight_ints(wrapper)
        scale = _weight_scale(clip_w, wrapper.w_bits, q.ndim)
        self.register_buffer("w_grid", torch.from_numpy(q).float() * scale)
        self.register_buffer("w_scale", scale.reshape(-1).expand(q.shape[0]).contiguous())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits < quant.FLOAT_BITS:
            x = torch.clamp(x, self.a_lo, self.a_hi)
            x = torch.fake_quantize_per_tensor_affine(x, self.a_scale, 0, *self.a_range)
        zero = torch.zeros(self.w_scale.numel(), dtype=torch.int32)
        w = torch.fake_quantize_per_channel_affine(self.w_grid, self.w_scale, zero, 0, -128, 127)
        if isinstance(self.layer, nn.Conv2d):
            return self.layer._conv_forward(x, w, self.layer.bias)
        return nn.functional.linear(x, w, self.layer.bias)


@contextmanager
def _qdq_view(qmodel: QuantizedModel) -> Iterator[nn.Module]:
    """The model with its QuantLayers swapped for their Q/DQ form (restored after)."""
    originals = dict(qmodel.wrappers)
    try:
        for name, wrapper in originals.items():
            _set(qmodel.model, name, _QDQLayer(wrapper))
        yield qmodel.model
    finally:
        for name, wrapper in originals.items():
            _set(qmodel.model, name, wrapper)


def _set(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, child, module)


def export_onnx(qmodel: QuantizedModel, path: str | os.PathLike[str], opset: int = 13) -> int:
    """Write the ONNX model (CPU, float32 input NCHW, batch dimension dynamic); returns bytes."""
    model = qmodel.model
    was_training = model.training
    device = next(model.parameters()).device
    model.cpu().eval()
    try:
        with _qdq_view(qmodel) as view, torch.no_grad():
            buf = io.BytesIO()
            dummy = torch.zeros((1, *qmodel.input_shape))
            torch.onnx.export(view, (dummy,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.to(device)
        model.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return path.stat().st_size


def onnx_logits(path: str | os.PathLike[str], images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Run the ONNX model on onnxruntime's CPU provider."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = [sess.run(["logits"], {"input": images[i:i + batch].astype(np.float32)})[0]
           for i in range(0, len(images), batch)]
    return np.concatenate(out)
