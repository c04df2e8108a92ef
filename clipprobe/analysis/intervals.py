"""Intervals the report publishes, each chosen because its coverage was measured by simulation.

``benchmarks/coverage.py`` draws datasets from a population whose top-k composition is known and
counts how often each interval holds the true value (README, "Statistics"). What passed:

* a group's share of a word's top-k: the **Wilson score interval** on ``count / k`` (statsmodels'
  ``proportion_confint``). Of the two intervals Brown, Cai and DasGupta (2001) recommend, Wilson's
  exact binomial coverage at FairFace's group shares is 0.939-0.97 at k = 100 (Jeffreys dips to
  0.921 for the 60-69 age group); measured on simulated top-k it covers 0.93-0.97 in every cell.
  The percentile bootstrap it replaces collapsed to [0, 0] for a group absent from the top-k;
* skew against the dataset's base shares: ``skew = ln(p_top / base)`` where the base share mixes the
  top-k and the rest of the dataset, ``base = f p_top + (1 - f) p_rest`` with ``f = k / N``, so
  ``skew = -ln(f + (1 - f) rho)`` is a decreasing function of ``rho = p_rest / p_top``, the ratio of
  the group's share among the other ``N - k`` images to its share in the top-k. Its interval is the
  **Koopman score interval** for that ratio of two binomial proportions (statsmodels'
  ``confint_proportions_2indep``, Miettinen-Nurminen variance), mapped through the function. Dividing
  a share interval by a fixed base share instead over-covers (0.99) when k is a large fraction of N,
  because the base share then moves with the top-k. No ``1/k`` is substituted for a count of 0: the
  lower end is ``-inf`` there. Against uniform shares (a fixed reference) the share interval is logged;
* normalised entropy: **no interval passed** in every cell (percentile, basic and BCa bootstraps of
  the dataset or of the multinomial counts, with and without the Miller-Madow correction, and
  Dirichlet posteriors: the statistic sits next to its maximum, where none is calibrated), so none is
  published. The report gives the Miller-Madow corrected estimate ``norm_entropy_mm`` beside the
  plug-in one: the plug-in entropy of k draws is biased low by about ``(m - 1) / 2k`` nats (m groups
  in the top-k), which the correction adds back (bias -1.5 SD -> -0.1 SD on FairFace's race groups).

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
MSG_LEVEL = "level must be between 0 and 1, got {level}"
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
    if method == "jeffreys":
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


def skew_interval_vs_base(counts, k: int, group_sizes, n_total: int, *, level: float = 0.95,
                          drawn=None) -> tuple["np.ndarray", "np.ndarray"]:
    """``(low, high)`` of ``skew = ln(share / base share)`` from a score interval for the ratio of the
    group's share in the rest of the dataset to its share in the top-k (see the module docstring).

    ``counts`` is ``(W, G)``; ``group_sizes`` ``(G,)``; ``drawn`` the images retrieved per word
    (default ``k``; more when tied images are kept). NaN for groups absent from the dataset.
    """
    import numpy as np
    from statsmodels.stats.proportion import confint_proportions_2indep

    level = _check_level(level)
    c = np.asarray(counts, dtype=np.int64)
    sizes = np.broadcast_to(np.asarray(group_sizes, dtype=np.int64), c.shape)
    d = np.broadcast_to((np.full(c.shape[0], k) if drawn is None else np.asarray(drawn))[:, None], c.shape)
    n = int(n_total)
    low = np.full(c.shape, np.nan)
    high = np.full(c.shape, np.nan)
    cache: dict[tuple[int, int, int], tuple[float, float]] = {}
    for idx in zip(*np.nonzero(sizes > 0)):
        a, size, dd = int(c[idx]), int(sizes[idx]), int(d[idx])
        key = (a, size, dd)
        if key not in cache:
            cache[key] = _skew_bounds(a, size, dd, n, 1.0 - level, confint_proportions_2indep)
        low[idx], high[idx] = cache[key]
    return low, high


def _skew_bounds(a: int, size: int, drawn: int, n: int, alpha: float, confint) -> tuple[float, float]:
    import math
    import warnings

    f = drawn / n
    rest, n_rest = size - a, n - drawn
    if n_rest == 0:             # the top-k is the whole dataset: its shares are the base shares
        return 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rho_lo, rho_hi = confint(rest, n_rest, a, drawn, method="score", compare="ratio", alpha=alpha)
    rho_lo = max(float(rho_lo), 0.0)
    rho_hi = float(rho_hi) if math.isfinite(float(rho_hi)) else math.inf
    low = -math.inf if math.isinf(rho_hi) else -math.log(f + (1 - f) * rho_hi)
    return low, -math.log(f + (1 - f) * rho_lo)


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


def basic_interval(estimate, samples, *, level: float = 0.95) -> tuple["np.ndarray", "np.ndarray"]:
    """The basic (reverse-percentile) bootstrap interval ``[2 t - q_hi, 2 t - q_lo]``.

    ``samples`` are ``(B, ...)`` resampled values of the statistic whose full-data value is
    ``estimate`` (shape ``...``); NaN samples are left out; a column without samples gives NaN.
    """
    import numpy as np

    from clipprobe.analysis.bootstrap import percentile_interval

    q_lo, q_hi = percentile_interval(samples, _check_level(level))
    t = np.asarray(estimate, dtype=np.float64)
    return 2.0 * t - q_hi, 2.0 * t - q_lo


__all__ = ["SHARE_METHODS", "basic_interval", "miller_madow", "share_interval", "skew_interval",
           "skew_interval_vs_base"]
