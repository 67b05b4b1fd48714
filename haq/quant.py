"""Quantization numerics as pure tensor functions.

HAQ (Wang et al., CVPR 2019, Section 3.3) quantizes linearly: a weight or activation
x is clipped to [-c, c] (or [0, c] for activations after a ReLU) and rounded to one of
the levels of a b-bit grid, ``q(x) = round(clamp(x, -c, c) / s) * s`` with
``s = c / (2^(b-1) - 1)``; the clip value c is chosen per tensor by minimising the KL
divergence between the float and the quantized distributions. For the model-size
experiments (Section 4.3) weights are instead quantized by k-means with 2^b centroids.

Conventions used throughout:

* signed, b >= 2 bits: symmetric grid with levels -(2^(b-1)-1) .. 2^(b-1)-1 times s;
* signed, b == 1: binary {-c, +c} (the sign, scaled);
* unsigned, b bits: levels 0 .. 2^b - 1 times ``s = c / (2^b - 1)``.

Training uses the straight-through estimator: the gradient passes the rounding as the
identity inside the clip range and is zero outside it.
"""

from __future__ import annotations

from typing import Any

import torch

FLOAT_BITS = 32
"""Bitwidth that means "not quantized"."""


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range (qmin, qmax) of a b-bit grid; for signed 1-bit this is (-1, 1) with no zero."""
    if bits < 1:
        raise ValueError(f"bits must be >= 1, got {bits}")
    if not signed:
        return 0, 2**bits - 1
    if bits == 1:
        return -1, 1
    q = 2 ** (bits - 1) - 1
    return -q, q


def scale_for(clip: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Step size s of the grid that spans [-clip, clip] (signed) or [0, clip] (unsigned)."""
    _, qmax = qrange(bits, signed)
    return clip / qmax


def fake_quant_step(clip: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """The float32 step `fake_quant` uses: ``scale_for`` in float32, kept above zero (an
    all-zero tensor has clip 0). Export and the compiled path take it from here too, so all
    three stay bit-identical."""
    return scale_for(clip.float(), bits, signed).clamp_min(torch.finfo(torch.float32).tiny)


def quantize(x: torch.Tensor, clip: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Fake-quantize `x` (quantize then dequantize) with clip value `clip` (broadcastable).

    No gradient trick: use `quantize_ste` in training.
    """
    clip = clip.to(x.dtype)
    if signed and bits == 1:
        return torch.where(x >= 0, clip, -clip).expand_as(x)
    lo = -clip if signed else torch.zeros_like(clip)
    s = scale_for(clip, bits, signed).clamp_min(torch.finfo(x.dtype).tiny)
    return torch.round(torch.clamp(x, lo, clip) / s) * s


def quantize_ste(x: torch.Tensor, clip: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """`quantize` with a straight-through gradient: identity inside the clip range, 0 outside."""
    clip = clip.to(x.dtype)
    lo = -clip if signed else torch.zeros_like(clip)
    y = torch.clamp(x, lo, clip)
    return y + (quantize(y, clip, bits, signed) - y).detach()


_CPU_VECTORISED_MIN_NUMEL = 32768
"""Below this size PyTorch's fused CPU kernel wins (the Python autograd overhead dominates)."""


class _FakeQuantAffine(torch.autograd.Function):
    """``torch.fake_quantize_per_{tensor,channel}_affine`` with zero point 0, as a few
    vectorised elementwise passes: the same arithmetic (``round(x * (1 / scale))``, clamp,
    times scale) and the same gradient mask (taken as "clamping changed nothing", one
    comparison instead of two and an and), hence bit-identical outputs (tested). On CPU
    it is about 2.5x faster than PyTorch's kernel on activation-sized tensors; and with
    `scale`, `qmin`, `qmax` as tensors a compiled graph does not depend on the bitwidth.

    On CPU the mask is kept as float 0 / 1, written over the rounded values' buffer: ATen's
    CPU kernels that write or read a bool tensor beside float ones are not vectorised (the
    comparison into bool and the backward's ``grad * mask``, which first casts the mask,
    took 2-2.5x as long as into and with float), and ``grad * 1.0`` / ``grad * 0.0`` are
    what the bool mask gives after its cast, so the gradients are the same bit for bit
    (tested). It costs 3 more bytes an element of saved mask; elsewhere the mask stays bool."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, qmin: int | torch.Tensor,
                qmax: int | torch.Tensor) -> torch.Tensor:
        q = (x * torch.reciprocal(scale)).round_()
        out = torch.clamp(q, qmin, qmax)
        # on the grid iff clamping left it alone: (q >= qmin) & (q <= qmax)
        ctx.save_for_backward(torch.eq(q, out, out=q) if q.device.type == "cpu" else q == out)
        return out.mul_(scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        (mask,) = ctx.saved_tensors
        return grad * mask, None, None, None


def fake_quant_tensors(x: torch.Tensor, scale: torch.Tensor, qmin: torch.Tensor, qmax: torch.Tensor) -> torch.Tensor:
    """`fake_quant` with the grid given as tensors (step `scale`, broadcastable to `x`, and
    integer bounds as float tensors), so that `torch.compile` sees no bitwidth and a new
    policy reuses the compiled graph. Use `grid` to get the three tensors."""
    return _FakeQuantAffine.apply(x, scale, qmin, qmax)


def grid(clip: torch.Tensor, bits: int, signed: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale, qmin, qmax) of `fake_quant`'s grid as float32 tensors on `clip`'s device."""
    if signed and bits == 1:
        raise ValueError("signed 1-bit (binary) weights have no zero level and no affine grid; "
                         "use bits >= 2 with compiled finetuning")
    qmin, qmax = qrange(bits, signed)
    scale = fake_quant_step(clip, bits, signed)
    return scale, torch.tensor(float(qmin), device=clip.device), torch.tensor(float(qmax), device=clip.device)


def fake_quant(x: torch.Tensor, clip: torch.Tensor, bits: int, signed: bool, axis: int | None = None) -> torch.Tensor:
    """Training-time fake quantization with PyTorch's fused kernels (on CPU, large
    per-tensor inputs take `_FakeQuantAffine`, bit-identical and faster there).

    Same values as `quantize`; straight-through gradient wherever the rounded value lies
    on the grid and zero where it is clipped (PyTorch's convention, which lets values
    within half a step beyond the clip still pass, unlike `quantize_ste`). One kernel
    instead of five elementwise passes, and no host syncs. `clip` is a scalar tensor, or a vector of
    per-channel clips along `axis`. Signed 1-bit (binary) falls back to `quantize_ste`.
    """
    if signed and bits == 1:
        shape = [1] * x.ndim
        if axis is not None:
            shape[axis] = -1
        return quantize_ste(x, clip.reshape(shape) if axis is not None else clip, bits, signed)
    qmin, qmax = qrange(bits, signed)
    scale = fake_quant_step(clip, bits, signed)
    if axis is None:
        if x.device.type == "cpu" and x.dtype == torch.float32 and x.numel() >= _CPU_VECTORISED_MIN_NUMEL:
            return _FakeQuantAffine.apply(x, scale.reshape(()), qmin, qmax)
        zero = torch.zeros(1, dtype=torch.int32, device=x.device)
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zero, qmin, qmax)
    zero = torch.zeros(scale.numel(), dtype=torch.int32, device=x.device)
    return torch.fake_quantize_per_channel_affine(x, scale.reshape(-1), zero, axis, qmin, qmax)


def minmax_clip(x: torch.Tensor, signed: bool, dim: int | None = None) -> torch.Tensor:
    """Clip value from the range of `x`: max |x| (signed) or max x (unsigned), optionally per `dim`."""
    v = x.abs() if signed else x.clamp_min(0)
    if dim is None:
        return v.max()
    reduce = [d for d in range(x.ndim) if d != dim]
    return v.amax(dim=reduce)


def histogram(x: torch.Tensor, signed: bool, bins: int = 2048, max_value: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of |x| (signed) or max(x, 0) (unsigned) on [0, max]; returns (counts, bin width).

    Exact zeros are left out: every grid with a zero level represents them exactly, and
    after a ReLU they form a spike (often half the mass) that would otherwise drive the
    KL criterion to clip at the first candidate threshold.
    """
    v = (x.abs() if signed else x.clamp_min(0)).detach().flatten().float()
    top = v.max() if max_value is None else max_value.float()
    top = torch.clamp(top, min=torch.finfo(torch.float32).tiny)
    counts = torch.histc(v, bins=bins, min=0.0, max=float(top))
    counts[0] -= (v == 0).sum()
    return counts.double(), (top / bins).double()


def kl_candidates(n_bins: int, n_levels: int, stride: int) -> torch.Tensor:
    """Candidate clip thresholds, in bins: n_levels, n_levels + stride, ..., and n_bins."""
    if n_levels >= n_bins:
        return torch.tensor([n_bins])
    cand = list(range(n_levels, n_bins + 1, stride))
    if cand[-1] != n_bins:
        cand.append(n_bins)
    return torch.tensor(cand)


def kl_levels(bits: int, signed: bool) -> int:
    """Number of quantized bins of the one-sided histogram: 2^(b-1) (signed) or 2^b (unsigned)."""
    return 2 ** (bits - 1) if signed else 2**bits


def kl_divergences(counts: torch.Tensor, n_levels: int, candidates: torch.Tensor) -> torch.Tensor:
    """KL(P || Q) for each candidate threshold, vectorised over candidates.

    For threshold t (in bins), P is the histogram's first t bins with the mass beyond t
    folded into bin t-1; Q merges those t bins into `n_levels` equal groups (bin j goes to
    group floor(j * n_levels / t)), spreads each group's mass (without the folded tail)
    evenly over the group's non-empty bins, and is zero where P is. As in TensorRT's
    entropy calibration, which HAQ's reference follows.
    """
    counts = counts.double()
    n = counts.numel()
    dev = counts.device
    t = candidates.to(dev).view(-1, 1)
    j = torch.arange(n, device=dev).view(1, -1)
    inside = j < t
    hist = counts.view(1, -1) * inside
    tail = counts.sum() - hist.sum(dim=1, keepdim=True)
    p = hist.clone()
    p.scatter_add_(1, t - 1, tail)
    nonzero = p > 0
    group = torch.where(inside, torch.div(j * n_levels, t, rounding_mode="floor"), n_levels)
    group_sum = torch.zeros(t.shape[0], n_levels + 1, dtype=torch.float64, device=dev).scatter_add_(1, group, hist)
    group_cnt = torch.zeros_like(group_sum).scatter_add_(1, group, nonzero.double())
    q = torch.where(nonzero, group_sum.gather(1, group) / group_cnt.gather(1, group).clamp_min(1), 0.0)
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True).clamp_min(1e-300)
    eps = 1e-12
    terms = torch.where(nonzero, p * torch.log(p / q.clamp_min(eps)), 0.0)
    return terms.sum(dim=1)


def kl_clip(x: torch.Tensor, bits: int, signed: bool, bins: int = 2048, stride: int = 8) -> torch.Tensor:
    """Clip value minimising KL divergence between the float and quantized histograms of `x`."""
    counts, width = histogram(x, signed, bins)
    return kl_clip_from_histogram(counts, width, bits, signed, stride)


def kl_clip_from_histogram(counts: torch.Tensor, width: torch.Tensor, bits: int, signed: bool, stride: int = 8) -> torch.Tensor:
    """`kl_clip` on a precomputed one-sided histogram (`histogram`) with bin width `width`."""
    n_levels = kl_levels(bits, signed)
    cand = kl_candidates(counts.numel(), n_levels, stride)
    kl = kl_divergences(counts, n_levels, cand)
    best = cand.to(kl.device)[torch.argmin(kl)]
    return (best.double() * width).float()


def mse_clip_from_histogram(counts: torch.Tensor, width: torch.Tensor, bits: int, signed: bool, stride: int = 8) -> torch.Tensor:
    """Clip value minimising the histogram-estimated mean squared quantization error
    (each bin's mass placed at its centre), over the same candidates as `kl_clip`."""
    counts = counts.double()
    n = counts.numel()
    cand = kl_candidates(n, 1, stride).to(counts.device).double()
    centres = (torch.arange(n, device=counts.device, dtype=torch.float64) + 0.5) * width
    clips = (cand * width).view(-1, 1)
    q = quantize(centres.view(1, -1).expand(clips.shape[0], -1), clips, bits, signed)
    err = ((centres.view(1, -1) - q) ** 2 * counts.view(1, -1)).sum(dim=1)
    return (cand[torch.argmin(err)] * width).float()


# --------------------------------------------------------------------------- k-means
def kmeans_1d(x: torch.Tensor, bits: int, iters: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on the values of `x` with 2^bits centroids, linearly initialised
    over [min, max] as in Deep Compression (Han et al., ICLR 2016). Returns (sorted
    centroids of shape (2^bits,), index tensor shaped like x) with every value assigned
    to its nearest centroid. Deterministic."""
    k = 2**bits
    flat = x.detach().flatten().float()
    lo, hi = flat.min(), flat.max()
    centroids = torch.linspace(0, 1, k, device=flat.device) * (hi - lo) + lo

    def assign(c: torch.Tensor) -> torch.Tensor:  # nearest centroid in 1-D: bucketize on midpoints
        return torch.bucketize(flat, (c[1:] + c[:-1]) / 2)

    for _ in range(iters):
        idx = assign(centroids)
        sums = torch.zeros(k, device=flat.device).scatter_add_(0, idx, flat)
        cnt = torch.zeros(k, device=flat.device).scatter_add_(0, idx, torch.ones_like(flat))
        new, _ = torch.sort(torch.where(cnt > 0, sums / cnt.clamp_min(1), centroids))
        if torch.equal(new, centroids):
            break
        centroids = new
    return centroids, assign(centroids).view_as(x)
