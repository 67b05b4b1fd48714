"""Export: bit packing, the PyTorch integer artifact, ONNX with Q/DQ on onnxruntime."""

from __future__ import annotations

import json

import numpy as np
import pytest

from haq.export import pack_bits, unpack_bits


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 7, 8])
def test_bit_packing_round_trips_and_takes_b_bits_per_value(bits):
    qmax = 2 ** (bits - 1) - 1
    q = np.random.default_rng(bits).integers(-qmax, qmax + 1, size=1001)
    packed = pack_bits(q, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-1001 * bits // 8)
    np.testing.assert_array_equal(unpack_bits(packed, bits, q.size), q)
    with pytest.raises(ValueError, match="range"):
        pack_bits(np.array([qmax + 1]), bits)


@pytest.mark.slow
def test_haq_export_matches_the_fake_quantized_model(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    import onnx

    from haq.cli import main
    from haq.models import model_layers
    from haq.policy import Policy

    layers = model_layers("digits-mbv2")
    bits = [(4, 4), (3, 5), (5, 3), (2, 8), (8, 2), (6, 6)] * 3
    policy = Policy.from_bits(layers, bits[: len(layers)])
    policy.to_json(tmp_path / "policy.json", model="digits-mbv2")
    assert main(["export", "--policy", str(tmp_path / "policy.json"), "--out", str(tmp_path / "out"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_artifact"] == report["top1_fake_quant"]
    assert report["max_abs_logit_diff_artifact"] < 1e-5
    assert abs(report["top1_onnxruntime"] - report["top1_fake_quant"]) <= 0.5
    # a value exactly on a rounding boundary may land one quantization step apart in
    # onnxruntime (x / scale) and torch (x * (1 / scale)): small, never a top-1 change here
    assert report["max_abs_logit_diff_onnxruntime"] < 0.5
    assert report["bytes_artifact"] < 0.5 * report["bytes_float_state_dict"]
    graph = onnx.load(str(tmp_path / "out" / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 2 * len(layers) and ops.count("DequantizeLinear") >= 2 * len(layers)
    assert ops.count("Clip") >= len(layers)
