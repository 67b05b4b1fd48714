"""Quantizers against reference formulas; KL calibration against a loop implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from haq import quant


def ref_quantize(x: np.ndarray, c: float, bits: int, signed: bool) -> np.ndarray:
    """The paper's linear quantizer written out with numpy (float64)."""
    if signed and bits == 1:
        return np.where(x >= 0, c, -c)
    if signed:
        n = 2 ** (bits - 1) - 1
        s = c / n
        return np.round(np.clip(x, -c, c) / s) * s
    n = 2**bits - 1
    s = c / n
    return np.round(np.clip(x, 0, c) / s) * s


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_linear_quantizer_matches_reference_formula(bits, signed):
    rng = np.random.default_rng(bits)
    x = rng.normal(0, 1.5, 4096)
    c = 2.0
    got = quant.quantize(torch.tensor(x), torch.tensor(c, dtype=torch.float64), bits, signed).numpy()
    np.testing.assert_array_equal(got, ref_quantize(x, c, bits, signed))
    levels = np.unique(got)
    qmin, qmax = quant.qrange(bits, signed)
    assert len(levels) <= qmax - qmin + 1 - (1 if signed and bits == 1 else 0)


@pytest.mark.parametrize("bits", range(1, 9))
@pytest.mark.parametrize("signed", [True, False])
def test_fused_fake_quant_matches_the_reference_quantizer_and_its_gradient(bits, signed):
    torch.manual_seed(bits)
    x = (torch.randn(2, 3, 8, 8) * 1.7).requires_grad_(True)
    clip = torch.tensor(1.5)
    fused = quant.fake_quant(x, clip, bits, signed)
    ref = quant.quantize(x.detach(), clip, bits, signed)
    torch.testing.assert_close(fused, ref, rtol=0, atol=1e-6)
    g_fused, = torch.autograd.grad(fused.sum(), x)
    if not (signed and bits == 1):
        # straight-through where the rounded value lies on the grid, zero where it is clipped
        qmin, qmax = quant.qrange(bits, signed)
        q = torch.round(x.detach() / (clip / qmax))
        assert torch.equal(g_fused, ((q >= qmin) & (q <= qmax)).float())
    w = torch.randn(6, 3, 3, 3)
    c = quant.minmax_clip(w, signed=True, dim=0)
    torch.testing.assert_close(quant.fake_quant(w, c, bits, True, axis=0),
                               quant.quantize(w, c.view(-1, 1, 1, 1), bits, True), rtol=0, atol=1e-6)


def test_per_channel_clip_broadcasts_per_output_channel():
    w = torch.randn(8, 4, 3, 3, dtype=torch.float64)
    clip = quant.minmax_clip(w, signed=True, dim=0).view(-1, 1, 1, 1)
    q = quant.quantize(w, clip, 4, True)
    for ch in range(8):
        c = float(w[ch].abs().max())
        np.testing.assert_array_equal(q[ch].numpy(), ref_quantize(w[ch].numpy(), c, 4, True))


def test_straight_through_gradient_is_identity_inside_clip_and_zero_outside():
    x = torch.tensor([-3.0, -0.7, 0.0, 0.4, 0.9, 2.5], requires_grad=True)
    y = quant.quantize_ste(x, torch.tensor(1.0), 3, signed=True)
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    np.testing.assert_allclose(y.detach().numpy(), ref_quantize(x.detach().numpy(), 1.0, 3, True), rtol=0, atol=1e-7)
    x2 = torch.tensor([-1.0, 0.5, 7.0], requires_grad=True)
    quant.quantize_ste(x2, torch.tensor(4.0), 2, signed=False).sum().backward()
    assert x2.grad.tolist() == [0.0, 1.0, 0.0]


def ref_kl_threshold(counts: np.ndarray, n_levels: int, candidates: list[int]) -> int:
    """Straightforward loop version of the KL threshold search (TensorRT-style)."""
    best_t, best_kl = None, np.inf
    total = counts.sum()
    for t in candidates:
        p = counts[:t].astype(np.float64).copy()
        p[t - 1] += total - counts[:t].sum()
        nonzero = p > 0
        q = np.zeros(t)
        groups = np.array([j * n_levels // t for j in range(t)])
        for g in range(n_levels):
            members = groups == g
            mass = counts[:t][members].sum()
            nz = nonzero & members
            if nz.sum():
                q[nz] = mass / nz.sum()
        p = p / p.sum()
        q = q / q.sum() if q.sum() > 0 else q
        kl = 0.0
        for pi, qi in zip(p, q):
            if pi > 0:
                kl += pi * np.log(pi / max(qi, 1e-12))
        if kl < best_kl:
            best_kl, best_t = kl, t
    return best_t


@pytest.mark.parametrize("bits,signed", [(2, True), (3, False), (4, True), (6, False), (8, True)])
def test_kl_threshold_matches_loop_reference(bits, signed):
    rng = np.random.default_rng(bits)
    x = torch.tensor(rng.standard_t(3, 50_000), dtype=torch.float32)
    if not signed:
        x = x.clamp_min(0)
    bins, stride = 256, 4
    counts, width = quant.histogram(x, signed, bins)
    n_levels = quant.kl_levels(bits, signed)
    cand = quant.kl_candidates(bins, n_levels, stride).tolist()
    expected_t = ref_kl_threshold(counts.numpy(), n_levels, cand)
    got = quant.kl_clip_from_histogram(counts, width, bits, signed, stride)
    assert float(got) == pytest.approx(expected_t * float(width), rel=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_kl_clipping_beats_minmax_on_heavy_tailed_tensor(bits):
    torch.manual_seed(0)
    x = torch.distributions.StudentT(3.0).sample((200_000,))  # heavy tails, finite variance
    def mse(c):
        return float(((quant.quantize(x, c, bits, True) - x) ** 2).mean())
    kl = quant.kl_clip(x, bits, signed=True)
    mm = quant.minmax_clip(x, signed=True)
    assert kl < mm
    assert mse(kl) < mse(mm)
    assert mse(quant.mse_clip_from_histogram(*quant.histogram(x, True), bits, True)) <= mse(mm)


def test_histogram_leaves_out_exact_zeros():
    x = torch.cat([torch.zeros(1000), torch.rand(100) + 0.5])
    counts, width = quant.histogram(x, signed=False, bins=64)
    assert counts.sum() == 100


def test_kmeans_is_a_fixed_point_of_lloyd():
    torch.manual_seed(0)
    w = torch.randn(64, 32)
    centroids, index = quant.kmeans_1d(w, 3)
    assert centroids.numel() == 8 and index.shape == w.shape
    for k in range(8):
        members = w[index == k]
        if members.numel():
            assert float(centroids[k]) == pytest.approx(float(members.mean()), abs=1e-5)
    # every weight sits at its nearest centroid
    nearest = (w.view(-1, 1) - centroids.view(1, -1)).abs().argmin(dim=1).view_as(w)
    assert torch.equal(centroids[nearest], centroids[index])


def test_bf16_autocast_and_channels_last_finetune_agree_with_float32(digits_evaluator):
    """The GPU fast path's settings, run on the CPU: same policy, close accuracy."""
    from haq.data import load_digits_data
    from haq.evaluator import QuantEvaluator
    from haq.models import create_model
    from haq.train import FinetuneConfig

    fast = QuantEvaluator(create_model("digits-mbv2"), load_digits_data(),
                          finetune=FinetuneConfig(bf16=True, channels_last=True), seed=0)
    assert fast.finetune.bf16 and fast.finetune.channels_last
    assert digits_evaluator.finetune.bf16 is False and digits_evaluator.finetune.channels_last is False
    assert fast.fp_accuracy == pytest.approx(digits_evaluator.fp_accuracy, abs=1.0)
    policy = [(4, 4)] * len(fast.layers)
    assert fast(policy) == pytest.approx(digits_evaluator(policy), abs=2.0)


@pytest.mark.parametrize("bits,signed", [(2, False), (4, False), (8, False), (3, True), (8, True)])
def test_cpu_fake_quant_is_bit_identical_to_pytorchs_fused_kernel(bits, signed):
    # the CPU activation path is our own autograd function; it must give exactly what
    # torch.fake_quantize_per_tensor_affine gives, values and gradient, rounding ties included
    torch.manual_seed(bits)
    clip = torch.tensor(1.3)
    qmin, qmax = quant.qrange(bits, signed)
    scale = (clip / qmax).reshape(1)
    ties = (torch.arange(-40, 41, dtype=torch.float32) + 0.5) * scale  # exactly half-way between levels
    x = torch.cat([torch.randn(40000) * 1.5, ties]).requires_grad_(True)
    assert x.numel() >= quant._CPU_VECTORISED_MIN_NUMEL  # large enough to take the vectorised path
    ours = quant.fake_quant(x, clip, bits, signed)
    x2 = x.detach().clone().requires_grad_(True)
    ref = torch.fake_quantize_per_tensor_affine(x2, scale, torch.zeros(1, dtype=torch.int32), qmin, qmax)
    assert torch.equal(ours, ref)
    g = torch.randn_like(ours)
    ours.backward(g)
    ref.backward(g)
    assert torch.equal(x.grad.view(torch.int32), x2.grad.view(torch.int32))  # bit for bit, signs of zeros too


@pytest.mark.parametrize("per_channel", [True, False])
def test_tensor_bits_mode_is_bit_identical_to_the_eager_wrappers(per_channel):
    # the compiled path reads its grids from tensors; it must compute exactly what the
    # normal wrappers compute, forward and backward, for any policy
    from haq.models import create_model
    from haq.policy import Policy
    from haq.qmodel import QuantConfig, QuantizedModel

    torch.manual_seed(0)
    qm = QuantizedModel(create_model("digits-mbv2", pretrained=False), (1, 16, 16),
                        QuantConfig(per_channel=per_channel, weight_clip="minmax"))
    x = torch.rand(8, 1, 16, 16)
    qm.calibrate([x])
    gen = np.random.default_rng(0)
    for _ in range(3):
        bits = [(int(gen.integers(2, 9)), int(gen.integers(2, 9))) for _ in qm.layers]
        outs = []
        for tensor_bits in (False, True):
            qm.use_tensor_bits(tensor_bits)
            qm.apply(Policy.from_bits(qm.layers, bits))
            qm.model.zero_grad()
            y = qm.model(x)
            y.square().sum().backward()
            outs.append((y.detach(), [p.grad.clone() for p in qm.model.parameters() if p.grad is not None]))
        assert torch.equal(outs[0][0], outs[1][0])
        assert all(torch.equal(a, b) for a, b in zip(outs[0][1], outs[1][1]))


def test_compiled_finetune_compiles_once_for_every_policy(digits_evaluator):
    from torch._dynamo import register_backend

    from haq.data import load_digits_data
    from haq.evaluator import QuantEvaluator
    from haq.models import create_model
    from haq.train import FinetuneConfig

    graphs = []

    @register_backend(name="haq_test_counting")
    def counting(gm, example_inputs):  # noqa: ANN001, ANN202 (a dynamo backend)
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    ev = QuantEvaluator(create_model("digits-mbv2"), load_digits_data(),
                        finetune=FinetuneConfig(compile=True, compile_backend="haq_test_counting"), seed=0)
    first = ev([(4, 4)] * len(ev.layers))
    compiled = len(graphs)
    assert compiled >= 1
    ev([(8, 3)] * len(ev.layers))
    ev([(2 + i % 7, 8 - i % 6) for i in range(len(ev.layers))])
    assert len(graphs) == compiled, "a new policy recompiled the model"
    # same numbers as the eager evaluator (graphs run eagerly by this backend)
    assert first == digits_evaluator([(4, 4)] * len(ev.layers))
    torch._dynamo.reset()


def test_wrapping_a_model_keeps_every_quantizer_buffer_on_the_weights_device():
    # a compiled CUDA finetune failed on a (channels, 1, 1, 1) step that was made on the default
    # device (the CPU) for a model already on the GPU; here the default device is "meta" instead
    from haq.models import create_model
    from haq.qmodel import QuantLayer

    model = create_model("digits-mbv2", pretrained=False)
    with torch.device("meta"):
        wrappers = [QuantLayer(m) for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert wrappers
    for w in wrappers:
        assert {b.device.type for b in w.buffers()} == {"cpu"}
