"""Hardware cost models for mixed-precision search (numpy and pandas only, no torch).

>>> import hw_models
>>> model = hw_models.create_hw_model("bismo-edge")
>>> layer = hw_models.LayerSpec("conv", "conv", 16, 32, kernel=3, in_h=8, in_w=8, out_h=8, out_w=8)
>>> model.layer_cost(layer, 4, 4)["latency_ms"] > 0
True
"""

from hw_models.base import METRIC_UNITS, CostModel, check_bits, policy_cost
from hw_models.bismo import BISMO_CLOUD, BISMO_EDGE, BismoConfig, BismoModel, bismo_cloud, bismo_edge
from hw_models.bitfusion import BitFusionConfig, BitFusionModel, products_per_cycle
from hw_models.layer import LAYER_KINDS, LayerSpec, check_layers
from hw_models.lookup import LookupConfig, LookupTableError, LookupTableModel, build_table, read_table, write_table
from hw_models.registry import ENTRY_POINT_GROUP, create_hw_model, list_hw_models, register_hw_model
from hw_models.simple import ModelSizeConfig, ModelSizeModel, RooflineConfig, RooflineModel

register_hw_model("bismo-edge", bismo_edge)
register_hw_model("bismo-cloud", bismo_cloud)
register_hw_model("bitfusion", BitFusionModel)
register_hw_model("model-size", ModelSizeModel)
register_hw_model("roofline", RooflineModel)
register_hw_model("lookup", LookupTableModel)

__all__ = [
    "BISMO_CLOUD", "BISMO_EDGE", "ENTRY_POINT_GROUP", "LAYER_KINDS", "METRIC_UNITS",
    "BismoConfig", "BismoModel", "BitFusionConfig", "BitFusionModel", "CostModel", "LayerSpec",
    "LookupConfig", "LookupTableError", "LookupTableModel", "ModelSizeConfig", "ModelSizeModel",
    "RooflineConfig", "RooflineModel", "build_table", "check_bits", "check_layers", "create_hw_model",
    "list_hw_models", "policy_cost", "products_per_cycle", "read_table", "register_hw_model", "write_table",
]
