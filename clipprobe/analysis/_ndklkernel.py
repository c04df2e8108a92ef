"""The compiled pass of :func:`clipprobe.analysis.metrics.ndkl` (numba; imported only where it runs).

NDKL over a whole ranking of ``N`` images is a sum over its ``N`` prefixes of the KL divergence of the
prefix's group shares from the reference. Each prefix differs from the one before by a single image, so
``S_i = sum_g c_g ln(c_g / r_g)`` (over the groups with ``c_g > 0`` among the first ``i`` images) changes
in one term: ``S_i = S_{i-1} + (c + 1) ln(c + 1) - c ln c - ln r_g`` for the image's group ``g`` with
``c`` images before it, and ``KL_i = S_i / i - ln i``. One pass over each row, element by element in rank
order (the running sum compensated), no reordered arithmetic: the same answer on every CPU and thread count.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(nogil=True)
def ndkl_rows(ranked, codes, log_ref, clogc, log_i, discount, out):
    """``out[w]`` = NDKL of row ``w`` of ``ranked`` ((W, N) items, best first, whose group codes are
    ``codes[item]``: items may be group codes themselves, with ``codes = 0..G-1``).

    ``log_ref`` (W, G) holds ``ln r_g`` per row; ``clogc[c] = c ln c`` (``clogc[0] = 0``) for
    ``c = 0..N``; ``log_i[i] = ln i`` and ``discount[i] = 1 / log2(i + 1)`` for ``i = 1..N`` (index 0
    unused). ``out`` is divided by the sum of the discounts."""
    n_rows, n_items = ranked.shape
    n_groups = log_ref.shape[1]
    counts = np.zeros(n_groups, dtype=np.int64)
    z = 0.0
    for i in range(1, n_items + 1):
        z += discount[i]
    for w in range(n_rows):
        for g in range(n_groups):
            counts[g] = 0
        s = 0.0
        comp = 0.0                  # Neumaier's compensation: S grows to about N ln N
        acc = 0.0
        for i in range(1, n_items + 1):
            g = codes[ranked[w, i - 1]]
            c = counts[g]
            step = clogc[c + 1] - clogc[c] - log_ref[w, g]
            t = s + step
            if abs(s) >= abs(step):
                comp += (s - t) + step
            else:
                comp += (step - t) + s
            s = t
            counts[g] = c + 1
            kl = (s + comp) / i - log_i[i]
            acc += (kl if kl > 0.0 else 0.0) * discount[i]     # KL >= 0; rounding can leave -1e-16
        out[w] = acc / z

