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
    models = [H.create_hw_model(n) for n in H.list_hw_models() if n not in ("lookup", "haq-mbv2-cloud")]
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


def test_haq_table_model_is_finite_and_monotone_on_its_network():
    t = H.create_hw_model("haq-mbv2-cloud").table(H.reference_layers(), "latency_ms")
    assert np.isfinite(t).all() and (t > 0).all()
    assert (np.diff(t, axis=1) >= 0).all() and (np.diff(t, axis=2) >= 0).all()


def test_bitfusion_bricks_price_3_bits_as_4_and_5_to_7_as_8_in_every_metric():
    tables = H.create_hw_model("bitfusion").tables(SHAPES)
    for metric, t in tables.items():
        for low, high in ((0, 1), (2, 3), (4, 7), (5, 7), (6, 7)):  # bits 1~2, 3~4, 5~8, 6~8, 7~8
            assert np.array_equal(t[:, low, :], t[:, high, :]), (metric, low + 1, high + 1)
            assert np.array_equal(t[:, :, low], t[:, :, high]), (metric, low + 1, high + 1)
        assert (t[:, 1, 1] < t[:, 3, 3]).all() and (t[:, 3, 3] < t[:, 7, 7]).all(), metric


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


EDGE_FETCH = 0.285 * 4 * 64  # bits per cycle: port efficiency x 4 x 64-bit ports (below the DDR3's 170.6)
CLOUD_FETCH = 0.285 * 4 * 256  # 291.84 (below four DDR4-2400 channels' 3072)


def test_bismo_edge_compute_bound_pointwise_by_hand():
    # 1x1 conv 64 -> 128 at 14x14, batch 1: M=128, K=64 (one 256-bit word), N=196, on 8x256x8.
    layer = LayerSpec("pw", "conv", 64, 128, in_h=14, in_w=14, out_h=14, out_w=14)
    model = H.create_hw_model("bismo-edge")
    assert model.config.bits_per_cycle == pytest.approx(EDGE_FETCH)
    s = model.stage_cycles([layer])
    assert s["execute"][0, 7, 7] == 16 * 25 * 64  # ceil(128/8) * ceil(196/8) * w * a = 25600
    assert s["fetch"][0, 7, 7] == pytest.approx(256 * (128 * 8 + 196 * 8) / EDGE_FETCH)  # 9094.7
    assert s["result"][0, 7, 7] == pytest.approx(128 * 196 * 8 / EDGE_FETCH)  # 2750.9
    assert model.layer_cost(layer, 8, 8)["latency_ms"] == pytest.approx(25600 / 200e3)
    assert model.layer_cost(layer, 4, 8)["latency_ms"] == pytest.approx(12800 / 200e3)  # follows w * a
    assert not model.memory_bound([layer])[0, 7, 7]


def test_bismo_edge_memory_bound_depthwise_by_hand():
    # 3x3 depthwise on 32 channels at 28x28, batch 1, channel-parallel: 4 chunks of 8 channels,
    # each M=8, K=72 (one 256-bit word), N=784.
    layer = LayerSpec("dw", "dwconv", 32, 32, kernel=3, groups=32, in_h=28, in_w=28, out_h=28, out_w=28)
    model = H.create_hw_model("bismo-edge")
    s = model.stage_cycles([layer])
    assert s["execute"][0, 7, 7] == 4 * 98 * 64  # 4 chunks * ceil(784/8) * w * a = 25088
    fetch = 4 * 256 * (8 * 8 + 784 * 8) / EDGE_FETCH  # 88926.3: padded words of weights and activations
    assert s["fetch"][0, 7, 7] == pytest.approx(fetch)
    assert model.layer_cost(layer, 8, 8)["latency_ms"] == pytest.approx(fetch / 200e3)
    # activation-bound: half the activation bits halves it, half the weight bits barely moves it
    assert model.layer_cost(layer, 8, 4)["latency_ms"] == pytest.approx(4 * 256 * (64 + 784 * 4) / EDGE_FETCH / 200e3)
    assert model.layer_cost(layer, 4, 8)["latency_ms"] == pytest.approx(4 * 256 * (32 + 784 * 8) / EDGE_FETCH / 200e3)
    assert model.memory_bound([layer])[0, 7, 7]


def test_bismo_cloud_compute_and_memory_bound_by_hand():
    model = H.create_hw_model("bismo-cloud")
    assert model.config.bits_per_cycle == pytest.approx(CLOUD_FETCH)
    # MobileNetV2 expansion 64 -> 384 at 14x14, batch 16: M=384, K=64, N=3136 on 16x256x16.
    expand = LayerSpec("expand", "conv", 64, 384, in_h=14, in_w=14, out_h=14, out_w=14)
    s = model.stage_cycles([expand])
    assert s["execute"][0, 7, 7] == 24 * 196 * 64  # ceil(384/16) * ceil(3136/16) * 64 = 301056
    assert s["fetch"][0, 7, 7] == pytest.approx(256 * (384 * 8 + 3136 * 8) / CLOUD_FETCH)  # 24701.6
    assert model.layer_cost(expand, 8, 8)["latency_ms"] == pytest.approx(301056 / 200e3)
    # MobileNetV2's first projection 32 -> 16 at 112x112: M=16 fills one array row, N=200704.
    project = LayerSpec("project", "conv", 32, 16, in_h=112, in_w=112, out_h=112, out_w=112)
    s = model.stage_cycles([project])
    assert s["execute"][0, 7, 7] == 12544 * 64  # 802816
    fetch = 256 * (16 * 8 + 200704 * 8) / CLOUD_FETCH  # 1408561.7
    assert s["fetch"][0, 7, 7] == pytest.approx(fetch)
    assert s["result"][0, 7, 7] == pytest.approx(16 * 200704 * 8 / CLOUD_FETCH)
    assert model.layer_cost(project, 8, 8)["latency_ms"] == pytest.approx(fetch / 200e3)
    assert H.bit_scaling(model.table([expand, project], "latency_ms")) == ["w*a", "activation"]


def test_bismo_dram_caps_the_fetch_bandwidth():
    # full port efficiency on the edge asks 256 bits/cycle of a DDR3 that delivers 4.264 GB/s = 170.56
    assert H.create_hw_model("bismo-edge", port_efficiency=1.0).config.bits_per_cycle == pytest.approx(170.56)
    with pytest.raises(ValueError, match=r"port_efficiency must be in \(0, 1\], got 1.5"):
        H.create_hw_model("bismo-edge", port_efficiency=1.5)


def test_bismo_cloud_agrees_with_haqs_published_table():
    """The calibration's promises: same bit scaling per layer, ranked shares, uniform totals."""
    from scipy.stats import spearmanr

    layers = H.reference_layers()
    model = H.create_hw_model("bismo-cloud").table(layers, "latency_ms")
    table = H.reference_cycles().astype(float)
    same = np.mean([a == b for a, b in zip(H.bit_scaling(model), H.bit_scaling(table))])
    assert same >= 0.85
    assert spearmanr(H.shares(model), H.shares(table))[0] >= 0.8
    for b, share in ((2, 0.178), (4, 0.397), (6, 0.673)):
        assert table[:, b - 1, b - 1].sum() / table[:, 7, 7].sum() == pytest.approx(share, abs=5e-4)
        assert model[:, b - 1, b - 1].sum() / model[:, 7, 7].sum() == pytest.approx(share, abs=0.05)
    dw = np.array([layer.kind == "dwconv" for layer in layers])
    assert H.shares(table)[dw].sum() == pytest.approx(0.47, abs=0.005)
    assert H.shares(model)[dw].sum() == pytest.approx(0.47, abs=0.08)


def test_edge_and_cloud_price_mobilenets_differently():
    from haq.models import model_layers

    for name in ("mobilenet_v1", "mobilenet_v2"):
        layers = model_layers(name)
        edge, cloud = H.create_hw_model("bismo-edge"), H.create_hw_model("bismo-cloud")
        dw = np.array([layer.kind == "dwconv" for layer in layers])
        assert edge.memory_bound(layers)[dw, 7, 7].all(), name
        assert set(np.array(H.bit_scaling(edge.table(layers, "latency_ms")))[dw]) == {"activation"}
        e, c = H.shares(edge.table(layers, "latency_ms")), H.shares(cloud.table(layers, "latency_ms"))
        assert np.abs(e - c).sum() >= 0.1, name
        assert e[dw].sum() > c[dw].sum() + 0.1  # depthwise layers weigh more on the edge's narrow memory


def test_haq_table_model_serves_the_published_numbers_and_only_for_its_network():
    layers = H.reference_layers()
    model = H.create_hw_model("haq-mbv2-cloud")
    raw = pd.read_csv(H.reference.TABLE_FILE)
    assert len(raw) == 53 * 64 and raw.iloc[0].tolist() == [0, 1, 1, 200720]
    table = model.table(layers, "latency_ms")
    cycles = H.reference_cycles()
    assert cycles[raw["layer"], raw["w_bits"] - 1, raw["a_bits"] - 1].tolist() == raw["latency"].tolist()
    assert np.array_equal(table, cycles / 200e3)
    assert table[52, 7, 7] == 40021 / 200e3
    assert model.policy_cost(layers, [(8, 8)] * 53, "latency_ms") == pytest.approx(cycles[:, 7, 7].sum() / 200e3)
    with pytest.raises(ValueError, match=r"the network has 6 quantizable layers, the table has 53; .*imagenet100"):
        model.table(SHAPES, "latency_ms")
    wrong_head = layers[:-1] + [LayerSpec("classifier.1", "fc", 1280, 1000)]
    with pytest.raises(ValueError, match=r"layer 52 \('classifier.1'\) has c_out=1000, the table's layer 52 "
                                         r"\(classifier.1\) has c_out=100"):
        model.table(wrong_head, "latency_ms")


def test_reference_layers_are_the_engines_mobilenet_v2_for_imagenet100():
    import dataclasses

    from haq.layers import extract_layers
    from haq.models import create_model

    engine = extract_layers(create_model("mobilenet_v2", pretrained=False, num_classes=100), (3, 224, 224))
    # shapes only: a randomly initialised layer may hold an exact zero weight, which lowers its density
    assert [dataclasses.replace(layer, density=1.0) for layer in engine] == H.reference_layers()


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
