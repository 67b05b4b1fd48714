"""Knowledge distillation in the finetune (Hinton, Vinyals, Dean 2015)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from haq.train import FinetuneConfig, distillation_loss


def test_distillation_loss_is_hintons_formula():
    g = torch.Generator().manual_seed(0)
    zs, zt = torch.randn(8, 10, generator=g), torch.randn(8, 10, generator=g)
    y = torch.randint(0, 10, (8,), generator=g)
    t, alpha = 3.0, 0.7
    p_t, p_s = torch.softmax(zt / t, 1), torch.softmax(zs / t, 1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(1).mean()
    ce = -torch.log_softmax(zs, 1)[torch.arange(8), y].mean()
    expected = alpha * t * t * kl + (1 - alpha) * ce
    assert distillation_loss(zs, zt, y, t, alpha).item() == pytest.approx(expected.item(), rel=1e-5)
    assert distillation_loss(zs, zt, y, t, 0.0).item() == pytest.approx(F.cross_entropy(zs, y).item(), rel=1e-6)
    assert distillation_loss(zt, zt, y, t, 1.0).item() == pytest.approx(0.0, abs=1e-6)


def test_bad_distillation_settings_are_refused():
    with pytest.raises(ValueError, match="temperature > 0"):
        FinetuneConfig(distill=True, distill_temperature=0)
    with pytest.raises(ValueError, match="alpha"):
        FinetuneConfig(distill=True, distill_alpha=1.5)


def test_teacher_logits_are_computed_once_from_the_float_model():
    from haq.data import batches, load_digits_data
    from haq.evaluator import QuantEvaluator
    from haq.models import create_model

    data, model = load_digits_data(), create_model("digits-mbv2")
    ev = QuantEvaluator(model, data, finetune=FinetuneConfig(distill=True, max_train_images=256), seed=0)
    model.eval()
    with torch.no_grad():
        expected = torch.cat([model(x) for x, _ in batches(data.train, data, 512)])
    assert ev.teacher_logits is not None and ev.teacher_logits.shape == (len(data.train), data.num_classes)
    torch.testing.assert_close(ev.teacher_logits, expected)
    cached = ev.teacher_logits
    policy = [(3, 3)] * len(ev.layers)
    distilled = ev.evaluate(policy)
    assert ev.teacher_logits is cached
    plain = QuantEvaluator(model, data, finetune=FinetuneConfig(max_train_images=256), seed=0)
    assert plain.teacher_logits is None
    assert plain.evaluate(policy)["train_loss"] != pytest.approx(distilled["train_loss"])
