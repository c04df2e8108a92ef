"""Significance of the representation metrics, and multiple comparisons.

* :func:`hypergeom_p`: is a group over- or under-represented in a top-k compared with ``k`` images
  drawn at random (without replacement) from the dataset? ``X ~ Hypergeom(N, group size, k)``,
  ``p_over = P(X >= count)``, ``p_under = P(X <= count)``.
* :func:`bh_adjust`: Benjamini-Hochberg adjusted p-values (``q``) over a whole family (all rows of a
  report); NaN entries are left out of the family and stay NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipprobe.analysis.metrics import check_k
from clipprobe.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MSG_COUNTS_RANGE = "counts must lie between 0 and k={k}"
MSG_SIZES = "group_sizes must lie between 0 and n_total={n}"



def hypergeom_p(counts, group_sizes, n_total: int, k: int) -> tuple["np.ndarray", "np.ndarray"]:
    """``(p_over, p_under)`` for ``X ~ Hypergeom(n_total, group_size, k)``, broadcast elementwise.

    ``p_over = P(X >= count)`` and ``p_under = P(X <= count)`` (both include the observed count).
    Groups of size 0 (absent from the dataset) get NaN. Float64 arrays of the broadcast shape.
    """
    import numpy as np
    from scipy.stats import hypergeom

    c = np.asarray(counts)
    sizes = np.asarray(group_sizes)
    n_total, k = int(n_total), int(k)
    check_k(k, n_total)
    if np.any(c < 0) or np.any(c > k):
        raise DataError(MSG_COUNTS_RANGE.format(k=k))
    if np.any(sizes < 0) or np.any(sizes > n_total):
        raise DataError(MSG_SIZES.format(n=n_total))
    c, sizes = np.broadcast_arrays(c, sizes)
    shape = c.shape
    # A report has many rows but few distinct (count, size) pairs: evaluate each pair once.
    pairs, inverse = np.unique(np.stack([c.ravel(), sizes.ravel()]).astype(np.int64), axis=1, return_inverse=True)
    inverse = inverse.ravel()
    # scipy's (M, n, N) = (population, successes in population, draws).
    p_over = np.clip(hypergeom.sf(pairs[0] - 1, n_total, pairs[1], k), 0.0, 1.0)[inverse].reshape(shape)
    p_under = np.clip(hypergeom.cdf(pairs[0], n_total, pairs[1], k), 0.0, 1.0)[inverse].reshape(shape)
    absent = sizes == 0
    p_over = np.where(absent, np.nan, p_over)
    p_under = np.where(absent, np.nan, p_under)
    return np.asarray(p_over, dtype=np.float64), np.asarray(p_under, dtype=np.float64)


def bh_adjust(p) -> "np.ndarray":
    """Benjamini-Hochberg adjusted p-values of an array of any shape (same shape back).

    The family is every non-NaN entry; NaN entries stay NaN. Equal to statsmodels'
    ``multipletests(p, method="fdr_bh")[1]`` on the non-NaN entries.
    """
    import numpy as np

    arr = np.asarray(p, dtype=np.float64)
    flat = arr.ravel()
    q = np.full(flat.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(flat))
    m = valid.size
    if m == 0:
        return q.reshape(arr.shape)
    pv = flat[valid]
    order = np.argsort(pv, kind="stable")
    scaled = pv[order] * m / np.arange(1, m + 1)
    # Step-up: the running minimum from the largest p-value downwards.
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    q[valid] = out
    return q.reshape(arr.shape)


__all__ = ["bh_adjust", "hypergeom_p"]
