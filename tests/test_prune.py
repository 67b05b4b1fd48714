"""Gradual magnitude pruning (Zhu & Gupta 2017) and sparsity-aware model size."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import hw_models as H
from haq.cli import main
from haq.prune import MagnitudePruner, cubic_sparsity


def test_cubic_schedule_is_zhu_and_gupta_eq_1():
    s_i, s_f, t0, n, dt = 0.1, 0.8, 100, 10, 5
    assert cubic_sparsity(50, s_f, s_i, t0, n, dt) == s_i
    assert cubic_sparsity(t0, s_f, s_i, t0, n, dt) == s_i
    for t in (105, 120, 125, 140):
        assert cubic_sparsity(t, s_f, s_i, t0, n, dt) == pytest.approx(s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** 3)
    assert cubic_sparsity(t0 + n * dt, s_f, s_i, t0, n, dt) == pytest.approx(s_f)
    assert cubic_sparsity(10_000, s_f, s_i, t0, n, dt) == pytest.approx(s_f)


def test_magnitude_masks_drop_the_smallest_weights_and_only_grow():
    model = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 10, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(1, 41, dtype=torch.float32).view(10, 4) * torch.tensor([1, -1, 1, -1]))
    pruner = MagnitudePruner(model, skip_first=True)
    assert list(pruner.modules) == ["1"]
    pruner.prune_to(0.25)
    w = model[1].weight
    assert int((w == 0).sum()) == 10 and (w.abs()[w != 0] > 10).all()
    with torch.no_grad():
        w.add_(100.0)  # even if the pruned weights grew back, they stay masked
    pruner.apply()
    pruner.prune_to(0.5)
    assert int((w == 0).sum()) == 20 and pruner.sparsity()["1"] == pytest.approx(0.5)


def test_model_size_counts_non_zero_weights_with_their_indices():
    dense = H.LayerSpec("fc", "fc", 100, 10)
    sparse = H.LayerSpec("fc", "fc", 100, 10, density=0.25)
    model = H.create_hw_model("model-size")
    assert model.exploits_sparsity and not H.create_hw_model("bismo-edge").exploits_sparsity
    # 1000 weights at 4 bits dense = 4000 bits; 250 non-zeros * (4 + 4 index bits) = 2000 bits
    assert model.layer_cost(dense, 4, 8)["size_mb"] == pytest.approx(4000 / 8 / 1e6)
    assert model.layer_cost(sparse, 4, 8)["size_mb"] == pytest.approx(2000 / 8 / 1e6)
    # a nearly dense layer is stored dense, whichever is smaller
    assert model.layer_cost(H.LayerSpec("fc", "fc", 100, 10, density=0.9), 4, 8)["size_mb"] == pytest.approx(4000 / 8 / 1e6)
    with pytest.raises(ValueError, match="density must be in"):
        H.LayerSpec("fc", "fc", 100, 10, density=1.5)


@pytest.mark.slow
def test_haq_prune_writes_a_sparse_model_that_a_search_accepts(tmp_path, capsys):
    from haq.config import SearchConfig
    from haq.parts import build_parts
    from haq.qmodel import QuantConfig
    from haq.train import FinetuneConfig

    out = tmp_path / "pruned.pt"
    assert main(["prune", "--sparsity", "0.5", "--epochs", "2", "--out", str(out)]) == 0
    assert "sparsity 0.500" in capsys.readouterr().out
    parts = build_parts(SearchConfig(weights=str(out), finetune=FinetuneConfig(max_train_images=128),
                                     quant=QuantConfig(calib_images=128)))
    densities = [layer.density for layer in parts.layers]
    assert densities[0] == 1.0 and all(d == pytest.approx(0.5, abs=0.01) for d in densities[1:])
    # the quantized finetune keeps the pruned weights at zero
    parts.evaluator([(4, 4)] * len(parts.layers))
    for name, wrapper in parts.evaluator.qmodel.wrappers.items():
        if wrapper.w_mask is not None:
            assert (wrapper.quantized_weight()[wrapper.w_mask == 0] == 0).all(), name
    assert main(["prune", "--out", str(tmp_path / "x.txt")]) == 2
