"""How a layer's GEMM is tiled onto a 2-D array of processing elements.

A convolution with ``groups`` groups is ``groups`` GEMMs of M = c_out/g rows,
K = c_in/g * k * k reduction length and N = batch * H_out * W_out columns. An array that
holds ``tile_m`` rows and ``tile_k`` reduction lanes needs
``groups * ceil(M / tile_m) * ceil(K / tile_k)`` passes, each streaming the N columns.

Depthwise convolutions are the modelling decision (DESIGN.md). Taken literally they are
c_in GEMMs with M = 1, which leaves all but one row of the array idle. We map them
*channel-parallel* by default: ``tile_m`` channels at a time form one block-diagonal GEMM
(M = tile_m, K = tile_m * k * k, zeros off the diagonal blocks), so every row computes a
different channel. This is realisable on a plain GEMM array (the zeros are real weights
of the packed matrix) and is what an accelerator compiler would do; the literal mapping
is available as ``depthwise="literal"`` for comparison.
"""

from __future__ import annotations

import numpy as np

DEPTHWISE_MAPPINGS = ("channel-parallel", "literal")


def ceil_div(a: np.ndarray, b: float) -> np.ndarray:
    return np.ceil(a / b)


def gemm_passes(
    arrays: dict[str, np.ndarray], tile_m: int, tile_k: int, depthwise: str = "channel-parallel"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (passes, streamed_k) per layer, shapes (L, 1, 1).

    ``passes`` counts (M-tile, K-tile) pairs; each pass streams all N columns.
    ``streamed_k`` is the reduction length of the activation matrix that is streamed
    (summed over groups), i.e. the activation bits fetched are ``streamed_k * N * a``.
    """
    if depthwise not in DEPTHWISE_MAPPINGS:
        raise ValueError(f"depthwise mapping must be one of {DEPTHWISE_MAPPINGS}, got {depthwise!r}")
    g, m, k = arrays["groups"], arrays["M"], arrays["K"]
    dense_passes = g * ceil_div(m, tile_m) * ceil_div(k, tile_k)
    streamed_k = g * k
    if depthwise == "literal":
        return dense_passes, streamed_k
    dw = arrays["depthwise"] > 0
    channels = g  # depthwise: one channel per group, M = 1, K = k*k
    chunk = np.minimum(channels, tile_m)
    dw_passes = ceil_div(channels, tile_m) * ceil_div(chunk * k, tile_k)
    return np.where(dw, dw_passes, dense_passes), streamed_k
