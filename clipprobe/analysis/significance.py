"""Significance of the representation metrics, and multiple comparisons.

* :func:`hypergeom_p`: is a group over- or under-represented in a top-k compared with ``k`` images
  drawn at random (without replacement) from the dataset? ``X ~ Hypergeom(N, group size, k)``,
  ``p_over = P(X >= count)``, ``p_under = P(X <= count)``.
* :func:`bh_adjust`: Benjamini-Hochberg adjusted p-values (``q``) over a whole family (all rows of a
  report); NaN entries are left out of the family and stay NaN.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipprobe.analysis.metrics import check_k, unique_columns
from clipprobe.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MSG_COUNTS_RANGE = "counts must lie between 0 and k={k}"
MSG_SIZES = "group_sizes must lie between 0 and n_total={n}"



def hypergeom_p(counts, group_sizes, n_total, k: int) -> tuple["np.ndarray", "np.ndarray"]:
    """``(p_over, p_under)`` for ``X ~ Hypergeom(n_total, group_size, k)``, broadcast elementwise.

    ``p_over = P(X >= count)`` and ``p_under = P(X <= count)`` (both include the observed count).
    ``n_total`` is one number or an array broadcast with the others (several image sets at once, e.g.
    subsets of a dataset). Groups of size 0 (absent from the dataset) get NaN. Float64 arrays of the
    broadcast shape.
    """
    import numpy as np
    from scipy.stats import hypergeom

    c = np.asarray(counts)
    sizes = np.asarray(group_sizes)
    totals = np.asarray(n_total).astype(np.int64)
    k = int(k)
    check_k(k, int(totals.min()) if totals.size else 0)
    if np.any(c < 0) or np.any(c > k):
        raise DataError(MSG_COUNTS_RANGE.format(k=k))
    c, sizes, totals = np.broadcast_arrays(c, sizes, totals)
    if np.any(sizes < 0) or np.any(sizes > totals):
        raise DataError(MSG_SIZES.format(n=int(totals.max()) if totals.ndim else int(totals)))
    shape = c.shape
    # A report has many rows but few distinct (count, size, total) triples: evaluate each triple once.
    triples, inverse = unique_columns(np.stack([c.ravel(), sizes.ravel(), totals.ravel()]).astype(np.int64))
    # scipy's (M, n, N) = (population, successes in population, draws).
    p_over = np.clip(hypergeom.sf(triples[0] - 1, triples[2], triples[1], k), 0.0, 1.0)[inverse].reshape(shape)
    p_under = np.clip(hypergeom.cdf(triples[0], triples[2], triples[1], k), 0.0, 1.0)[inverse].reshape(shape)
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
