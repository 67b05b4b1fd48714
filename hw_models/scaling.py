"""How a layer's cost follows the bits: the signature a roofline leaves in a cost table.

A layer bound by streaming its activations costs half as much at half the activation bits
and the same at half the weight bits; a bit-serial compute-bound layer halves with either;
a layer bound by streaming its weights (a classifier at batch 1) halves with the weight
bits only. `bit_scaling` reads that signature from a (L, 8, 8) table at w8a4 and w4a8.
"""

from __future__ import annotations

import numpy as np

SCALINGS = ("activation", "w*a", "weight")
"""Signatures, in the order of `SIGNATURES`."""
SIGNATURES = np.array([[0.5, 1.0], [0.5, 0.5], [1.0, 0.5]])
"""(cost at w8a4, cost at w4a8) over the cost at w8a8 of each signature in `SCALINGS`."""


def bit_scaling(table: np.ndarray) -> list[str]:
    """Per layer, the signature in `SCALINGS` nearest (L1) to its (w8a4, w4a8) cost ratios.

    Args:
        table: a cost table of shape (L, 8, 8) indexed ``[layer, w_bits - 1, a_bits - 1]``.

    Returns:
        One of ``"activation"``, ``"w*a"``, ``"weight"`` per layer.
    """
    table = np.asarray(table, dtype=np.float64)
    ratios = np.stack([table[:, 7, 3], table[:, 3, 7]], axis=1) / table[:, 7, 7, None]
    nearest = np.abs(ratios[:, None, :] - SIGNATURES[None]).sum(-1).argmin(1)
    return [SCALINGS[i] for i in nearest]


def shares(table: np.ndarray, w_bits: int = 8, a_bits: int = 8) -> np.ndarray:
    """Each layer's share of the network's cost at uniform (w_bits, a_bits)."""
    col = np.asarray(table, dtype=np.float64)[:, w_bits - 1, a_bits - 1]
    return col / col.sum()
