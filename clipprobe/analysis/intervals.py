"""Intervals the report publishes, each chosen because its coverage was measured by simulation.

``benchmarks/bench_coverage.py`` draws datasets from a population whose top-k composition is known and
counts how often each interval holds the true value (docs/probe.md, "Statistics"). What passed:

* a group's share of a word's top-k: the **Wilson score interval** on ``count / k`` (statsmodels'
  ``proportion_confint``). Of the two intervals Brown, Cai and DasGupta (2001) recommend, Wilson's
  exact binomial coverage at FairFace's group shares is 0.939-0.97 at k = 100 (Jeffreys dips to
  0.921 for the 60-69 age group); measured on simulated top-k it covers 0.93-0.97 in every cell.
  The percentile bootstrap it replaces collapsed to [0, 0] for a group absent from the top-k.
  It is published only while ``k <= N / 2`` (:data:`SHARE_INTERVAL_MAX_FRACTION`, the largest
  fraction of the grid): when the top-k is most of the images, where its threshold falls adds
  variance the binomial interval lacks (gender with a moderate planting, 150 images, k = 100:
  coverage 0.928 in ``benchmarks/bench_subsets.py --coverage local``), so the columns are NaN there;
* skew against the dataset's base shares: ``skew = ln(p_top / base)`` where the base share mixes the
  top-k and the rest of the dataset, ``base = f p_top + (1 - f) p_rest`` with ``f = k / N``, so
  ``skew = -ln(f + (1 - f) rho)`` is a decreasing function of ``rho = p_rest / p_top``, the ratio of
  the group's share among the other ``N - k`` images to its share in the top-k. Its interval is the
  **Koopman score interval** for that ratio of two binomial proportions (Miettinen-Nurminen variance;
  :func:`ratio_score_interval`, equal to statsmodels' ``confint_proportions_2indep`` where that is
  defined), mapped through the function. Dividing
  a share interval by a fixed base share instead over-covers (0.99) when k is a large fraction of N,
  because the base share then moves with the top-k. No ``1/k`` is substituted for a count of 0: the
  lower end is ``-inf`` there. Against uniform shares (a fixed reference) the share interval is logged;
* normalised entropy: **no interval passed** in every cell (percentile, basic and BCa bootstraps of
  the dataset or of the multinomial counts, with and without the Miller-Madow correction, and
  Dirichlet posteriors: the statistic sits next to its maximum, where none is calibrated), so none is
  published. The report gives the Miller-Madow corrected estimate ``norm_entropy_mm`` beside the
  plug-in one: the plug-in entropy of k draws is biased low by about ``(m - 1) / 2k`` nats (m groups
  in the top-k), which the correction adds back (bias -1.5 SD -> -0.1 SD on FairFace's race groups).

Balancing (:mod:`clipprobe.analysis.balance`), model RB/AB (:mod:`clipprobe.analysis.association`) and
the zero-shot classifier's accuracy (:mod:`clipprobe.analysis.zeroshot`) use **Wilson's score interval on
an effective sample size** (:func:`wilson_interval`; for a weighted share, :func:`weighted_share_interval`
takes ``n_eff`` from the share's linearisation variance) and, for a difference of two shares,
**Newcombe's hybrid score interval** (:func:`newcombe_interval`, with Zou and Donner's MOVER correlation
term when the two estimates share examples). Their coverage is measured in ``tests/test_balance_slow.py``
(see :mod:`clipprobe.analysis.balance`). :func:`wilson_interval` is the formula written out (it takes a
non-integer ``n``); :func:`share_interval` calls statsmodels, and the two agree on integer counts (tested).

MaxSkew and MinSkew get no interval either (a maximum of noisy skews is biased up when nothing is
planted, and its bootstrap does not cover 0); see :mod:`clipprobe.analysis.extremes` for their
permutation null.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clipprobe.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SHARE_METHODS = ("wilson", "jeffreys")
SHARE_INTERVAL_MAX_FRACTION = 0.5     # share intervals are published for k <= this fraction of the images
MSG_LEVEL = "level must be between 0 and 1, got {level}"
MSG_Z_LEVEL = "level={level!r} must be strictly between 0 and 1"
MSG_METHOD = "unknown share interval {method!r}; valid: 'wilson', 'jeffreys'"


def _check_level(level: float) -> float:
    if not 0 < float(level) < 1:
        raise UsageError(MSG_LEVEL.format(level=level))
    return float(level)


def share_interval(counts, k: int, *, level: float = 0.95, method: str = "wilson") -> tuple["np.ndarray", "np.ndarray"]:
    """``(low, high)`` of the share ``count / k`` (arrays shaped like ``counts``).

    ``method="wilson"`` (default) or ``"jeffreys"`` (with the end-point rule of Brown, Cai and
    DasGupta), both from ``statsmodels.stats.proportion.proportion_confint``.
    """
    import numpy as np
    from statsmodels.stats.proportion import proportion_confint

    level = _check_level(level)
    if method not in SHARE_METHODS:
        raise UsageError(MSG_METHOD.format(method=method))
    c = np.asarray(counts, dtype=np.float64)
    lo, hi = proportion_confint(c, int(k), alpha=1.0 - level, method=method)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    # A count of 0 (of k) has lower end exactly 0 (and upper end exactly 1): Jeffreys by the end-point rule,
    # Wilson by its formula, which in floating point leaves 3.5e-18 instead of 0.
    lo = np.where(c <= 0, 0.0, lo)
    hi = np.where(c >= k, 1.0, hi)
    return np.clip(lo, 0.0, 1.0), np.clip(hi, 0.0, 1.0)


def skew_interval(share_low, share_high, reference_share) -> tuple["np.ndarray", "np.ndarray"]:
    """``ln(share / reference)`` at both ends of a share interval (``-inf`` for a lower end of 0);
    NaN where the reference is 0 (a group absent from the dataset)."""
    import numpy as np

    ref = np.asarray(reference_share, dtype=np.float64)
    lo, hi = np.asarray(share_low, dtype=np.float64), np.asarray(share_high, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        safe = np.where(ref > 0, ref, 1.0)
        low = np.where(ref > 0, np.log(lo / safe), np.nan)
        high = np.where(ref > 0, np.log(hi / safe), np.nan)
    return low, high


def ratio_score_interval(x1, n1, x2, n2, *, level: float = 0.95) -> tuple["np.ndarray", "np.ndarray"]:
    """The score interval for the ratio ``theta = p1 / p2`` of two independent binomial proportions
    (Koopman 1984, with the Miettinen-Nurminen variance factor ``n / (n - 1)``, ``n = n1 + n2``): the
    ``theta`` whose score test is not rejected at ``1 - level``. Vectorised over arrays.

    statsmodels' ``confint_proportions_2indep(..., compare="ratio", method="score")`` computes the
    same interval from the roots of a cubic; at ``x2 == n2`` its roots turn complex and the interval
    collapses to a point, so the interval is found here by bisection of the score statistic, which is
    defined everywhere. ``x2 == 0`` gives an upper end of ``inf``; ``x1 == 0`` a lower end of 0.
    """
    import numpy as np
    from scipy.stats import norm

    level = _check_level(level)
    x1, n1, x2, n2 = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(x1, n1, x2, n2))
    n = n1 + n2
    crit = norm.isf((1.0 - level) / 2.0) ** 2 * n / (n - 1.0)
    p1, p2 = x1 / n1, x2 / n2

    flat = [np.ravel(v) for v in np.broadcast_arrays(x1, n1, x2, n2, n, p1, p2, crit)]

    def excess(log_theta, at):
        """Score statistic minus the critical value at theta = exp(log_theta), for the elements ``at``."""
        x1_, n1_, x2_, n2_, n_, p1_, p2_, crit_ = (v[at] for v in flat)
        theta = np.exp(log_theta)
        a = theta * n_
        b = -(theta * (n1_ + x2_) + x1_ + n2_)
        c = x1_ + x2_
        disc = np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))
        q2 = (-b - disc) / (2.0 * a)                  # restricted MLE of p2 under p1 = theta p2
        q1 = theta * q2
        var = q1 * (1.0 - q1) / n1_ + theta * theta * q2 * (1.0 - q2) / n2_
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = (p1_ - theta * p2_) ** 2 / var
        return np.where(var > 0, stat, np.where((p1_ - theta * p2_) == 0, 0.0, np.inf)) - crit_

    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.log(np.where((x1 > 0) & (x2 > 0), p1 / p2, 1.0))
    far = 60.0                                          # exp(+-60): far beyond any ratio of counts

    def bisect(lo, hi, inside_is_low: bool):
        # 200 halvings at most. A step is a function of (lo, hi) alone, so an element whose step left both
        # unchanged stays there: it leaves the active set (the same bits as running all 200 steps).
        lo, hi = lo.astype(np.float64).ravel(), hi.astype(np.float64).ravel()
        active = np.arange(lo.size)
        for _ in range(200):
            if not active.size:
                break
            a, b = lo[active], hi[active]
            mid = 0.5 * (a + b)
            inside = excess(mid, active) <= 0
            if inside_is_low:      # the interval's upper end: inside below it
                new_a, new_b = np.where(inside, mid, a), np.where(inside, b, mid)
            else:                  # the lower end: inside above it
                new_a, new_b = np.where(inside, a, mid), np.where(inside, mid, b)
            lo[active], hi[active] = new_a, new_b
            moved = (new_a != a) | (new_b != b)
            active = active[moved]
        return (0.5 * (lo + hi)).reshape(centre.shape)

    centre_lo = np.where(x2 == 0, far, centre)           # theta-hat is infinite: search below infinity
    centre_hi = np.where(x1 == 0, -far, centre)          # theta-hat is 0: search above 0
    low = np.exp(bisect(np.full_like(centre, -far), centre_lo, inside_is_low=False))
    high = np.exp(bisect(centre_hi, np.full_like(centre, far), inside_is_low=True))
    low = np.where(x1 == 0, 0.0, low)
    high = np.where(x2 == 0, np.inf, high)
    return low, high


def skew_interval_vs_base(counts, k: int, group_sizes, n_total, *, level: float = 0.95,
                          drawn=None) -> tuple["np.ndarray", "np.ndarray"]:
    """``(low, high)`` of ``skew = ln(share / base share)`` from a score interval for the ratio of the
    group's share in the rest of the dataset to its share in the top-k (see the module docstring).

    ``counts`` is ``(W, G)``; ``group_sizes`` ``(G,)`` or ``(W, G)``; ``n_total`` one number or ``(W,)``
    (rows from several image sets at once); ``drawn`` the images retrieved per word (default ``k``; more
    when tied images are kept). NaN for groups absent from the dataset.
    """
    import numpy as np

    from clipprobe.analysis.metrics import unique_columns

    level = _check_level(level)
    c = np.asarray(counts, dtype=np.float64)
    sizes = np.broadcast_to(np.asarray(group_sizes, dtype=np.float64), c.shape)
    d = np.broadcast_to((np.full(c.shape[0], k) if drawn is None else np.asarray(drawn))[:, None],
                        c.shape).astype(np.float64)
    totals = np.asarray(n_total, dtype=np.float64)
    n = np.broadcast_to(totals[:, None] if totals.ndim == 1 else totals, c.shape)
    present = sizes > 0
    low = np.full(c.shape, np.nan)
    high = np.full(c.shape, np.nan)
    whole = present & (d >= n)                     # the top-k is the whole dataset: skew 0 exactly
    low[whole] = high[whole] = 0.0
    use = present & (d < n)
    if use.any():
        # Few distinct (count, size, drawn, total) cells in a report: solve each once.
        cells, inverse = unique_columns(np.stack([c[use], sizes[use], d[use], n[use]]))
        a, size, dd, nn = cells
        rho_lo, rho_hi = ratio_score_interval(size - a, nn - dd, a, dd, level=level)
        f = dd / nn
        with np.errstate(divide="ignore"):
            s_low = np.where(np.isinf(rho_hi), -np.inf, -np.log(f + (1 - f) * np.minimum(rho_hi, 1e300)))
            s_high = -np.log(f + (1 - f) * rho_lo)
        low[use], high[use] = s_low[inverse.ravel()], s_high[inverse.ravel()]
    return low, high


def miller_madow(norm_entropy, counts, present, k: int) -> "np.ndarray":
    """The normalised entropy with the Miller-Madow correction: ``(H + (m - 1) / (2k)) / ln(L)``.

    ``norm_entropy`` is ``H / ln(L)`` (plug-in, natural logs) over the ``L`` groups present in the
    dataset; ``m`` counts the groups with a non-zero count (last axis of ``counts``). The result is
    not clipped: above 1 it says the top-k is as even as k draws can show.
    """
    import numpy as np

    c = np.asarray(counts)
    pres = np.broadcast_to(np.asarray(present, dtype=bool), c.shape)
    n_present = pres.sum(axis=-1)
    m = ((c > 0) & pres).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        correction = (m - 1) / (2.0 * float(k)) / np.log(np.maximum(n_present, 2))
    return np.where(n_present >= 2, np.asarray(norm_entropy, dtype=np.float64) + correction, np.nan)


# ----------------------------------------------------------------------------------------------
# score intervals on effective sample sizes (balancing, model RB/AB, zero-shot accuracy)


def level_z(level: float) -> float:
    """The standard normal quantile of a two-sided interval at ``level`` (1.96 at 0.95)."""
    from scipy.stats import norm

    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise UsageError(MSG_Z_LEVEL.format(level=level)) from None
    if not (0.0 < lv < 1.0):
        raise UsageError(MSG_Z_LEVEL.format(level=level))
    return float(norm.ppf(0.5 + lv / 2.0))


def wilson_interval(p, n, z: float) -> tuple["np.ndarray", "np.ndarray"]:
    """Wilson score interval for a share ``p`` out of ``n`` (``n`` may be an effective, non-integer size).

    NaN where ``n <= 0`` or ``p`` is NaN. Equal to statsmodels' ``proportion_confint(x, n,
    method='wilson')`` for integer counts ``x = p n``.
    """
    import numpy as np

    p = np.asarray(p, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2n = z * z / n
        centre = (p + z2n / 2) / (1 + z2n)
        half = z / (1 + z2n) * np.sqrt(p * (1 - p) / n + z2n / (4 * n))
    ok = (n > 0) & np.isfinite(p)
    lo = np.where(ok, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(ok, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


def newcombe_interval(p1, lo1, hi1, p0, lo0, hi0, rho=0.0) -> tuple["np.ndarray", "np.ndarray"]:
    """Interval for ``p1 - p0`` from the two shares' own intervals: Newcombe's hybrid score interval
    (method 10) for independent estimates, and its extension to correlated ones (MOVER, Zou and
    Donner 2008) when ``rho``, the correlation of the two estimates, is not 0."""
    import numpy as np

    d = np.asarray(p1) - np.asarray(p0)
    dl1, du1, dl0, du0 = p1 - lo1, hi1 - p1, p0 - lo0, hi0 - p0
    lo = d - np.sqrt(np.maximum(dl1 ** 2 + du0 ** 2 - 2 * rho * dl1 * du0, 0.0))
    hi = d + np.sqrt(np.maximum(du1 ** 2 + dl0 ** 2 - 2 * rho * du1 * dl0, 0.0))
    return lo, hi


def weighted_share_interval(total, weighted, sq_total, sq_num_parts, z):
    """``(p, low, high, n_eff)`` of a share ``p = weighted / total``, a ratio of weighted sums, with
    Wilson's interval on the effective sample size ``n_eff = p (1 - p) / var`` (``var`` its linearisation
    variance; Kish's ``total^2 / sq_total`` where ``p`` is 0 or 1). Vectorised; NaN where ``total`` is 0.

    ``sq_num_parts = (sum a^2 v, sum a^2 v^2)`` over the examples (weights ``a``, values ``v``),
    ``sq_total = sum a^2``; the linearisation variance numerator is
    ``sum a^2 (v - p)^2 = sum a^2 v^2 - 2 p sum a^2 v + p^2 sum a^2``.
    """
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)
        av, av2 = sq_num_parts
        num = np.maximum(av2 - 2 * p * av + p * p * sq_total, 0.0)
        var = num / (total * total)
        kish = total * total / sq_total
        pq = p * (1 - p)
        n_eff = np.where((var > 1e-300) & (pq > 0), pq / var, kish)
    n_eff = np.where(total > 0, n_eff, np.nan)
    lo, hi = wilson_interval(p, n_eff, z)
    return p, lo, hi, n_eff


__all__ = ["SHARE_METHODS", "level_z", "miller_madow", "newcombe_interval", "ratio_score_interval", "share_interval",
           "skew_interval", "skew_interval_vs_base", "weighted_share_interval", "wilson_interval"]
