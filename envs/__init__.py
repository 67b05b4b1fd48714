"""Gymnasium environments of the HAQ search (no training code here)."""

import gymnasium

from envs.mixed_precision import ENFORCEMENTS, OBS_FEATURES, MixedPrecisionEnv, action_to_bits, layer_features

ENV_ID = "haq/MixedPrecision-v0"
if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="envs.mixed_precision:MixedPrecisionEnv")

__all__ = ["ENFORCEMENTS", "ENV_ID", "OBS_FEATURES", "MixedPrecisionEnv", "action_to_bits", "layer_features"]
