"""HAQ engine: hardware-aware automated mixed-precision quantization (Wang et al., CVPR 2019)."""

from haq.layers import extract_layers
from haq.policy import Policy

__version__ = "0.1.0"
__all__ = ["Policy", "__version__", "extract_layers"]
