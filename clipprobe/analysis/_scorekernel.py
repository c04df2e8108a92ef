"""The compiled pass of :func:`clipprobe.analysis.metrics.similarity_scores` (numba; imported only where it
runs).

:func:`settle` reads a block of float64 dot products (a float64 matrix product of float32 vectors) and
each row's error bound, and writes each score's float32 where every value within the bound rounds to the
same float32 (then that is the float32 of the exact dot product). The positions where the bound leaves
the rounding open are listed for an exact sum. One pass over the block, element by element: a cast and
two comparisons, no reordered arithmetic, so the answer is the same on every CPU.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True)
def settle(exact, err, out, open_at):
    """Fill ``out`` (W, C) float32 from ``exact`` (W, C) float64 and ``err`` (W,) float64; list the flat
    positions ``i * C + j`` left open in ``open_at`` (as many as fit) and return how many there are."""
    n_rows, n_cols = exact.shape
    capacity = open_at.shape[0]
    count = 0
    zero = np.float32(0.0)
    for i in range(n_rows):
        e = err[i]
        for j in range(n_cols):
            v = exact[i, j]
            lo = np.float32(v - e)
            hi = np.float32(v + e)
            if lo == hi:
                out[i, j] = np.float32(v) + zero     # + 0.0 turns -0.0 into +0.0
            else:
                if count < capacity:
                    open_at[count] = i * n_cols + j
                count += 1
    return count
