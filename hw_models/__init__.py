"""Hardware cost models for mixed-precision search (numpy and pandas only, no torch).

>>> import hw_models
>>> model = hw_models.create_hw_model("bismo-edge")
>>> layer = hw_models.LayerSpec("conv", "conv", 16, 32, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)
>>> model.layer_cost(layer, 4, 4)["latency_ms"] > 0
True
"""

from hw_models.base import METRIC_UNITS, CostModel, check_bits, policy_cost
from hw_models.bismo import BISMO_CLOUD, BISMO_EDGE, BismoConfig, BismoModel, bismo_cloud, bismo_edge
from hw_models.bitfusion import BitFusionConfig, BitFusionModel, brick_bits, products_per_cycle
from hw_models.layer import LAYER_KINDS, LayerSpec, check_layers
from hw_models.lookup import LookupConfig, LookupTableError, LookupTableModel, build_table, read_table, write_table
from hw_models.reference import HaqMobileNetV2Cloud, HaqTableConfig, reference_cycles, reference_layers
from hw_models.registry import ENTRY_POINT_GROUP, create_hw_model, list_hw_models, register_hw_model
from hw_models.scaling import SCALINGS, bit_scaling, shares
from hw_models.simple import ModelSizeConfig, ModelSizeModel, RooflineConfig, RooflineModel

register_hw_model("bismo-edge", bismo_edge)
register_hw_model("bismo-cloud", bismo_cloud)
register_hw_model("bitfusion", BitFusionModel)
register_hw_model("model-size", ModelSizeModel)
register_hw_model("roofline", RooflineModel)
register_hw_model("lookup", LookupTableModel)
register_hw_model("haq-mbv2-cloud", HaqMobileNetV2Cloud)

__all__ = [
    "BISMO_CLOUD", "BISMO_EDGE", "ENTRY_POINT_GROUP", "LAYER_KINDS", "METRIC_UNITS", "SCALINGS",
    "BismoConfig", "BismoModel", "BitFusionConfig", "BitFusionModel", "CostModel", "HaqMobileNetV2Cloud",
    "HaqTableConfig", "LayerSpec", "LookupConfig", "LookupTableError", "LookupTableModel", "ModelSizeConfig",
    "ModelSizeModel", "RooflineConfig", "RooflineModel", "bit_scaling", "brick_bits", "build_table", "check_bits",
    "check_layers", "create_hw_model", "list_hw_models", "policy_cost", "products_per_cycle", "read_table",
    "reference_cycles", "reference_layers", "register_hw_model", "shares", "write_table",
]
