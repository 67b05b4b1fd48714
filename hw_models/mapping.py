"""How a layer's GEMM is tiled onto a 2-D array of processing elements.

A convolution with ``groups`` groups is ``groups`` GEMMs of M = c_out/g rows,
K = c_in/g * k * k reduction length and N = batch * H_out * W_out columns. An array that
holds ``tile_m`` rows and ``tile_k`` reduction lanes needs
``groups * ceil(M / tile_m) * ceil(K / tile_k)`` passes, each streaming the N columns.

Depthwise convolutions are a modelling decision. Taken literally they are c_in GEMMs with
M = 1, which leaves all but one row of the array idle. We map them *channel-parallel* by
default: ``tile_m`` channels at a time form one block-diagonal GEMM (M = tile_m,
K = tile_m * k * k, zeros off the diagonal blocks), so every row computes a different
channel. This is realisable on a plain GEMM array (the zeros are real weights of the packed
matrix) and is what an accelerator compiler would do; the literal mapping is available as
``depthwise="literal"`` for comparison. Fitted against HAQ's published BISMO table, the
channel-parallel mapping is the one that reproduces it (docs/hardware.md).
"""

from __future__ import annotations

import numpy as np

DEPTHWISE_MAPPINGS = ("channel-parallel", "literal")


def ceil_div(a: np.ndarray, b: float) -> np.ndarray:
    return np.ceil(a / b)


def mapped_gemm(
    arrays: dict[str, np.ndarray], tile_m: int, depthwise: str = "channel-parallel"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (groups, M, K) per layer as the array runs it, shapes (L, 1, 1).

    Dense and grouped layers run as they are. Channel-parallel depthwise layers run as
    ``ceil(c / tile_m)`` block-diagonal GEMMs of ``min(c, tile_m)`` rows and
    ``min(c, tile_m) * k * k`` reduction lanes; literal ones as c GEMMs with M = 1.
    """
    if depthwise not in DEPTHWISE_MAPPINGS:
        raise ValueError(f"depthwise mapping must be one of {DEPTHWISE_MAPPINGS}, got {depthwise!r}")
    g, m, k = arrays["groups"], arrays["M"], arrays["K"]
    if depthwise == "literal":
        return g, m, k
    dw = arrays["depthwise"] > 0
    chunk = np.minimum(g, tile_m)  # depthwise: one channel per group, M = 1, K = k*k
    return np.where(dw, ceil_div(g, tile_m), g), np.where(dw, chunk, m), np.where(dw, chunk * k, k)


def gemm_passes(
    arrays: dict[str, np.ndarray], tile_m: int, tile_k: int, depthwise: str = "channel-parallel"
) -> tuple[np.ndarray, np.ndarray]:
    """Return (passes, streamed_k) per layer, shapes (L, 1, 1).

    ``passes`` counts (M-tile, K-tile) pairs; each pass streams all N columns.
    ``streamed_k`` is the reduction length of the activation matrix that is streamed
    (summed over groups), i.e. the activation bits fetched are ``streamed_k * N * a``.
    """
    g, m, k = mapped_gemm(arrays, tile_m, depthwise)
    return g * ceil_div(m, tile_m) * ceil_div(k, tile_k), arrays["groups"] * arrays["K"]
