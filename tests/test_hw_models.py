"""Cost models: the registry contract, worked examples by hand, lookup tables."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import hw_models as H
from hw_models import LayerSpec

SHAPES = [
    LayerSpec("stem", "conv", 3, 32, kernel=3, stride=2, in_h=224, in_w=224, out_h=112, out_w=112),
    LayerSpec("dw", "dwconv", 96, 96, kernel=3, stride=2, groups=96, in_h=112, in_w=112, out_h=56, out_w=56),
    LayerSpec("pw", "conv", 96, 24, in_h=56, in_w=56, out_h=56, out_w=56),
    LayerSpec("grouped", "conv", 64, 128, kernel=3, groups=4, in_h=14, in_w=14, out_h=14, out_w=14),
    LayerSpec("big", "conv", 512, 512, kernel=3, in_h=14, in_w=14, out_h=14, out_w=14),
    LayerSpec("fc", "fc", 1280, 1000),
]


def registry_models(tmp_path) -> list[H.CostModel]:
    models = [H.create_hw_model(n) for n in H.list_hw_models() if n != "lookup"]
    path = tmp_path / "edge.csv"
    H.build_table(H.create_hw_model("bismo-edge"), SHAPES, path)
    models.append(H.create_hw_model("lookup", path=str(path)))
    return models


def test_every_registered_model_is_finite_nonnegative_and_monotone(tmp_path):
    assert set(H.list_hw_models()) >= {"bismo-edge", "bismo-cloud", "bitfusion", "model-size", "roofline", "lookup"}
    for model in registry_models(tmp_path):
        assert model.metrics and set(model.metrics) <= set(H.METRIC_UNITS)
        for metric in model.metrics:
            t = model.table(SHAPES, metric)
            assert t.shape == (len(SHAPES), 8, 8)
            assert np.isfinite(t).all() and (t >= 0).all(), (model.name, metric)
            assert (np.diff(t, axis=1) >= -1e-15).all(), f"{model.name} {metric} decreases in w_bits"
            assert (np.diff(t, axis=2) >= -1e-15).all(), f"{model.name} {metric} decreases in a_bits"
            assert (t[:, 7, 7] > 0).all()


def test_layer_cost_and_policy_cost_agree_with_table():
    model = H.create_hw_model("bitfusion")
    policy = [(8, 8), (2, 4), (4, 2), (3, 5), (8, 2), (6, 6)]
    total = model.policy_cost(SHAPES, policy, "energy_mj")
    by_layer = sum(model.layer_cost(l, w, a)["energy_mj"] for l, (w, a) in zip(SHAPES, policy))
    assert total == pytest.approx(by_layer, rel=1e-12)
    with pytest.raises(ValueError, match="w_bits must be an integer in 1..8"):
        model.layer_cost(SHAPES[0], 9, 4)
    with pytest.raises(ValueError, match="does not report 'size_mb'"):
        model.table(SHAPES, "size_mb")


def test_bismo_edge_worked_example():
    # conv 3x3, 16 -> 32 channels, 8x8 maps, batch 1, on 8x256x8 at 200 MHz, 4x64-bit ports.
    layer = LayerSpec("c", "conv", 16, 32, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)
    model = H.create_hw_model("bismo-edge")
    cyc = model.cycles([layer])
    # GEMM M=32, K=16*9=144, N=64: ceil(32/8)*ceil(64/8)*ceil(144/256) = 4*8*1 = 32 passes.
    assert cyc["compute"][0, 3, 3] == 32 * 4 * 4  # w4a4
    assert cyc["compute"][0, 1, 2] == 32 * 2 * 3  # w2a3
    # memory bits at w4a4: weights 32*144*4 = 18432, im2col acts 144*64*4 = 36864,
    # outputs 32*64*8 = 16384 -> 71680 bits / 256 bits per cycle = 280 cycles.
    assert cyc["memory"][0, 3, 3] == pytest.approx(280.0)
    lat = model.layer_cost(layer, 4, 4)["latency_ms"]
    assert lat == pytest.approx(max(512, 280) / 200e3)
    # w1a1: compute 32 cycles, memory (4608 + 9216 + 16384) / 256 = 118 -> memory bound.
    assert model.memory_bound([layer])[0, 0, 0] and not model.memory_bound([layer])[0, 7, 7]
    assert model.layer_cost(layer, 1, 1)["latency_ms"] == pytest.approx(118 / 200e3)


def test_bismo_depthwise_mapping_channel_parallel_vs_literal():
    dw = LayerSpec("dw", "dwconv", 96, 96, kernel=3, groups=96, in_h=56, in_w=56, out_h=56, out_w=56)
    packed = H.create_hw_model("bismo-edge").cycles([dw])["compute"][0, 7, 7]
    literal = H.create_hw_model("bismo-edge", depthwise="literal").cycles([dw])["compute"][0, 7, 7]
    # channel-parallel: ceil(96/8) chunks * ceil(8*9/256) K tiles * ceil(3136/8) columns * 64
    assert packed == 12 * 1 * 392 * 64
    # literal: 96 GEMMs with M=1: 96 * 1 * 1 * 392 * 64
    assert literal == 96 * 392 * 64


def test_bismo_weights_that_do_not_fit_refetch_activations():
    big = LayerSpec("big", "conv", 512, 512, kernel=3, in_h=14, in_w=14, out_h=14, out_w=14)
    tiny_bram = H.create_hw_model("bismo-edge", bram_blocks=2)
    roomy = H.create_hw_model("bismo-edge", bram_blocks=100000)
    assert tiny_bram.cycles([big])["memory"][0, 7, 7] > roomy.cycles([big])["memory"][0, 7, 7]


def test_bitfusion_worked_example():
    layer = LayerSpec("c", "conv", 16, 32, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)
    model = H.create_hw_model("bitfusion", batch=1)
    b = model.breakdown([layer])
    # M=32 on 32 columns, K=144 on 16 rows -> 1*9 = 9 passes; N=64.
    # w4a4: 2*2 = 4 products per cycle -> ceil(64/4) = 16 cycles per pass -> 144 cycles.
    assert b["compute_cycles"][0, 3, 3] == 144
    assert b["compute_cycles"][0, 2, 2] == 144  # 3 bits cost what 4 bits cost
    assert b["compute_cycles"][0, 7, 7] == 9 * 64
    assert b["compute_cycles"][0, 5, 6] == 9 * 64  # 6 and 7 bits cost what 8 costs
    # DRAM bits at w4a4: weights 4608*4 = 18432, inputs 16*64*4 = 4096, outputs 32*64*8 = 16384.
    assert b["dram_bits"][0, 3, 3] == 18432 + 4096 + 16384
    energy_pj = (
        144 * 235.1                                   # core
        + 18432 * (0.029 + 0.021)                     # weight buffer write + read
        + 4096 * 0.114 + 144 * 64 * 4 * 1 * 0.059     # input write + im2col read once per M tile
        + 32 * 64 * 32 * 9 * (0.073 + 0.033)          # 32-bit partial sums per K tile
        + 38912 * 15.0                                # DRAM
    )
    assert model.layer_cost(layer, 4, 4)["energy_mj"] == pytest.approx(energy_pj * 1e-9, rel=1e-12)
    lat_cycles = max(144, 38912 / 192)
    assert model.layer_cost(layer, 4, 4)["latency_ms"] == pytest.approx(lat_cycles / 500e3)
    assert H.products_per_cycle(np.array(2), np.array(2)) == 16


def test_model_size_worked_example():
    fc = LayerSpec("fc", "fc", 1280, 1000)
    assert H.create_hw_model("model-size").layer_cost(fc, 4, 8)["size_mb"] == pytest.approx(1280 * 1000 * 4 / 8 / 1e6)
    kmeans = H.create_hw_model("model-size", codebook_bits=32)
    assert kmeans.layer_cost(fc, 2, 8)["size_mb"] == pytest.approx((1280 * 1000 * 2 + 4 * 32) / 8 / 1e6)


def test_roofline_worked_example():
    layer = LayerSpec("c", "conv", 16, 32, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)
    model = H.create_hw_model("roofline", peak_gmacs=1.0, bandwidth_gbs=1.0, scaling="bit-serial")
    macs = 32 * 144 * 64
    compute_ms = macs / (1e9 * 64 / 16) * 1e3
    memory_ms = (4608 * 4 + 16 * 64 * 4 + 32 * 64 * 8) / 8 / 1e9 * 1e3
    assert model.layer_cost(layer, 4, 4)["latency_ms"] == pytest.approx(max(compute_ms, memory_ms))


def test_registry_errors_and_user_models():
    with pytest.raises(ValueError, match="Did you mean 'bismo-edge'"):
        H.create_hw_model("bismo-egde")
    with pytest.raises(TypeError, match="valid: .*batch"):
        H.create_hw_model("bismo-cloud", bach=4)
    with pytest.raises(ValueError, match="batch must be > 0"):
        H.create_hw_model("bismo-edge", batch=0)
    with pytest.raises(TypeError, match=r"BismoConfig.batch must be an integer \(default 1\), got 'x'"):
        H.create_hw_model("bismo-edge", batch="x")
    with pytest.raises(TypeError, match="batch must be an integer"):
        H.create_hw_model("bismo-edge", batch=2.5)
    with pytest.raises(TypeError, match="freq_mhz must be a number"):
        H.create_hw_model("bismo-edge", freq_mhz=True)
    assert H.create_hw_model("bismo-edge", freq_mhz=100).config.freq_mhz == 100  # an int is a number
    model = H.create_hw_model("hw_models.simple:RooflineModel", batch=2)
    assert model.config.batch == 2
    with pytest.raises(ValueError, match="has no attribute"):
        H.create_hw_model("hw_models.simple:Nope")
    assert H.list_hw_models("bismo-*") == ["bismo-cloud", "bismo-edge"]
    assert H.create_hw_model("bismo-edge", batch=4).config.batch == 4


def test_register_own_model_in_a_few_lines():
    @H.register_hw_model("test-ops-counter")
    class OpsCounter(H.CostModel):
        """Latency proportional to MACs * w * a (1 ns per bit-MAC)."""

        metrics = ("latency_ms",)

        def _tables(self, layers):
            macs = np.array([l.macs() for l in layers], dtype=float).reshape(-1, 1, 1)
            w, a = np.meshgrid(np.arange(1, 9), np.arange(1, 9), indexing="ij")
            return {"latency_ms": macs * (w * a)[None] * 1e-6}

    model = H.create_hw_model("test-ops-counter")
    assert "test-ops-counter" in H.list_hw_models()
    assert model.layer_cost(SHAPES[-1], 2, 4)["latency_ms"] == pytest.approx(1280 * 1000 * 8 * 1e-6)


def test_lookup_round_trip_gives_the_same_totals(tmp_path):
    edge = H.create_hw_model("bismo-edge")
    path = tmp_path / "edge.csv"
    H.build_table(edge, SHAPES, path)
    served = H.create_hw_model("lookup", path=str(path))
    rng = np.random.default_rng(0)
    for _ in range(20):
        policy = [tuple(int(x) for x in rng.integers(1, 9, 2)) for _ in SHAPES]
        assert served.policy_cost(SHAPES, policy, "latency_ms") == pytest.approx(
            edge.policy_cost(SHAPES, policy, "latency_ms"), rel=1e-9)


def test_lookup_partial_bit_coverage_restricts_supported_bits(tmp_path):
    path = tmp_path / "measured.csv"
    H.build_table(H.create_hw_model("bitfusion"), SHAPES, path, bits=[2, 4, 8])
    model = H.create_hw_model("lookup", path=str(path))
    assert model.supported_bits == (2, 4, 8)
    t = model.table(SHAPES, "energy_mj")
    assert np.isinf(t[:, 2, 2]).all() and np.isfinite(t[:, 3, 3]).all()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda df: df.assign(latency_ms=df["latency_ms"].where(df.index != 5, -1.0)), r"line 7: latency_ms must be a finite non-negative"),
        (lambda df: df.assign(latency_ms=df["latency_ms"].where(df.index != 3, np.nan)), r"line 5: latency_ms is missing \(NaN\)"),
        (lambda df: df.astype({"latency_ms": object}).assign(latency_ms=lambda d: d["latency_ms"].where(d.index != 2, "fast")), r"line 4: latency_ms is not a number \('fast'\)"),
        (lambda df: df.drop(index=10), r"missing row for layer 'stem' w_bits=2 a_bits=3"),
        (lambda df: df.assign(w_bits=df["w_bits"].where(df.index != 0, 9)), r"line 2: w_bits must be an integer in 1..8"),
        (lambda df: pd.concat([df, df.iloc[[4]]]), r"duplicate row for layer 'stem' w_bits=1 a_bits=5"),
        (lambda df: df.drop(columns=["a_bits"]), r"missing column\(s\) \['a_bits'\]"),
        (lambda df: df.assign(power_w=1.0), r"unknown column\(s\) \['power_w'\]"),
    ],
)
def test_corrupted_lookup_tables_name_the_file_and_row(tmp_path, mutate, message):
    path = tmp_path / "bad.csv"
    df = H.build_table(H.create_hw_model("bismo-edge"), SHAPES)
    mutate(df).to_csv(path, index=False)
    with pytest.raises(H.LookupTableError, match=message) as info:
        H.create_hw_model("lookup", path=str(path))
    assert str(path) in str(info.value)


def test_lookup_rejects_layers_of_another_model(tmp_path):
    path = tmp_path / "edge.csv"
    H.build_table(H.create_hw_model("bismo-edge"), SHAPES, path)
    model = H.create_hw_model("lookup", path=str(path))
    with pytest.raises(H.LookupTableError, match=r"line \d+: layer 'fc' is not a layer of this model"):
        model.table(SHAPES[:-1], "latency_ms")
    other = SHAPES + [LayerSpec("extra", "fc", 10, 10)]
    with pytest.raises(H.LookupTableError, match="no rows for layer 'extra'"):
        model.table(other, "latency_ms")
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        H.create_hw_model("lookup", path=str(tmp_path / "nope.csv"))


def test_layerspec_validates_itself():
    with pytest.raises(ValueError, match="groups=3 must divide c_in=16"):
        LayerSpec("x", "conv", 16, 32, groups=3)
    with pytest.raises(ValueError, match="c_out must be a positive integer"):
        LayerSpec("x", "conv", 16, 0)
    with pytest.raises(ValueError, match="kind must be one of"):
        LayerSpec("x", "lstm", 16, 16)
    with pytest.raises(ValueError, match="depthwise layer has groups == c_in"):
        LayerSpec("x", "dwconv", 16, 16, groups=1)
    spec = SHAPES[1]
    assert LayerSpec.from_dict(spec.to_dict()) == spec
    assert spec.n_weights == 96 * 9 and spec.macs() == 96 * 9 * 56 * 56


def test_hw_models_never_imports_torch():
    code = "import sys, hw_models; hw_models.create_hw_model('bitfusion'); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"



def test_installed_plugin_is_found_through_its_entry_point(tmp_path, monkeypatch):
    """A distribution that declares `haq.hw_models` entry points adds models by name."""
    pkg = tmp_path / "npu_plugin"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "import hw_models\n\n"
        "def tiny_npu(**kw):\n"
        "    return hw_models.create_hw_model('roofline', peak_gmacs=10.0, **kw)\n")
    dist = tmp_path / "npu_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: npu-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[haq.hw_models]\ntiny-npu = npu_plugin:tiny_npu\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "tiny-npu" in H.list_hw_models()
    model = H.create_hw_model("tiny-npu", batch=2)
    assert model.config.peak_gmacs == 10.0 and model.config.batch == 2
