"""Significance of the representation metrics, and multiple comparisons.

* :func:`hypergeom_p`: is a group over- or under-represented in a top-k compared with ``k`` images
  drawn at random (without replacement) from the dataset? ``X ~ Hypergeom(N, group size, k)``,
  ``p_over = P(X >= count)``, ``p_under = P(X <= count)``.
* :func:`betabinom_sf`: ``scipy.stats.betabinom.sf`` at integer points, the same numbers with scipy's own
  probability mass function evaluated once per distribution instead of once per point.
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


def betabinom_sf(x, n, a, b) -> "np.ndarray":
    """``scipy.stats.betabinom.sf(x, n, a, b)`` for integer ``x`` and ``n``, bit for bit, broadcast elementwise.

    scipy sums the probability mass function (its ``_pmf``) over ``0..x`` one point at a time (a Python
    call per point); here ``_pmf`` runs once per distinct ``(n, a, b)`` on ``0..max(x)`` and each point sums
    the same values with the same ``np.sum``. Points outside the support or with invalid parameters go to
    scipy itself (which computes nothing for them).
    """
    import numpy as np
    from scipy.stats import betabinom

    x, n, a, b = np.broadcast_arrays(np.asarray(x), np.asarray(n), np.asarray(a, dtype=np.float64),
                                     np.asarray(b, dtype=np.float64))
    shape = x.shape
    x, n, a, b = (v.ravel() for v in (x, n, a, b))
    if not (np.issubdtype(x.dtype, np.integer) and np.issubdtype(n.dtype, np.integer)):
        return np.asarray(betabinom.sf(x, n, a, b), dtype=np.float64).reshape(shape)
    out = np.empty(x.shape, dtype=np.float64)
    fast = (n >= 0) & np.isfinite(a) & np.isfinite(b) & (a > 0) & (b > 0) & (x >= 0) & (x < n)
    rest = np.flatnonzero(~fast)
    if rest.size:
        out[rest] = betabinom.sf(x[rest], n[rest], a[rest], b[rest])
    cells = np.flatnonzero(fast)
    if cells.size:
        params = np.stack([n[cells].astype(np.float64), a[cells], b[cells]])
        dists, inverse = np.unique(params, axis=1, return_inverse=True)
        inverse = inverse.ravel()
        top = np.zeros(dists.shape[1], dtype=np.int64)
        np.maximum.at(top, inverse, x[cells])
        m = np.arange(0, int(top.max()) + 1, dtype=np.float64)
        # scipy's generic cdf: np.sum(_pmf(arange(0, x + 1), n, a, b)) with Python scalars n, a, b
        with np.errstate(all="ignore"):
            pmf = betabinom._pmf(m[None, :], dists[0].astype(np.int64)[:, None], dists[1][:, None],
                                 dists[2][:, None])
        rows, total = list(pmf), np.add.reduce          # np.sum's own reduction, on each point's prefix
        values = np.array([total(rows[d][:xi + 1]) for d, xi in zip(inverse.tolist(), x[cells].tolist())],
                          dtype=np.float64)
        out[cells] = np.clip(1.0 - values, 0, 1)
    return out.reshape(shape)


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


__all__ = ["betabinom_sf", "bh_adjust", "hypergeom_p"]
