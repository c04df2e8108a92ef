"""Power of the retrieval probe: how large an over-representation can it flag?

Simulates top-k draws with a planted over-representation of one group and runs the report's own
statistics on them: the hypergeometric ``p_over`` of every row, Benjamini-Hochberg over the whole
family, ``flagged = q_over < alpha``. The power is the probability that the planted row is flagged.

Model of one simulated report (one attribute):

* the BH family has ``family_size`` rows (default ``n_words * G``): one planted word and enough
  null words to fill it. Each null word's top-k is ``k`` images drawn at random from the dataset
  (multivariate hypergeometric), so its ``G`` rows are true nulls. Treating every other word as
  null is the conservative case: real reports have more non-null rows, which makes BH more lenient;
* the planted word's count of group ``g`` is ``X ~ Hypergeom(N, round(ratio * K_g), k)``: a draw
  from a dataset in which ``g``'s share is ``ratio`` times its base share, so ``E[X] / k`` is
  ``ratio * base_share`` (capped at a share of 1 when ``ratio * base_share > 1``); at ratio 1 it
  is exactly the null. The remaining ``k - X`` slots go to the
  other groups at random (sequential hypergeometric draws from their sizes).

Ratios share their random numbers (the planted count is an inverse-CDF draw of one uniform per
simulation), so a curve is smooth and monotone in the ratio up to the other rows' noise.

The default dataset is the FairFace validation split (``N = 10954``). Its group counts below are
the ones commonly reported for FairFace 0.25 validation labels (shares: White 0.19, Latino_Hispanic
0.15, Black 0.14, East Asian 0.14, Indian 0.14, Southeast Asian 0.13, Middle Eastern 0.11; Male
0.53, Female 0.47). They are approximate defaults: pass your own sizes for your own dataset.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Mapping, Sequence

from clipprobe.errors import UsageError, one_of
from clipprobe.faces import FAIRFACE_VALIDATION_COUNTS, FAIRFACE_VALIDATION_SIZE

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_RATIOS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)
DEFAULT_KS = (10, 50, 100)

MSG_BOTH = "give either group_sizes or base_shares, not both"
MSG_SIZES_POSITIVE = "group sizes must be positive integers; got {sizes}"
MSG_SHARES_POSITIVE = "base shares must be positive numbers; got {shares}"
MSG_SHARES_SUM = "base shares must sum to 1 (within 0.02); they sum to {total:.4f}"
MSG_N_TOTAL = "n_total={n} must equal the sum of group_sizes ({total})"
MSG_RATIO = "ratios must be >= 1 (a ratio is the planted share divided by the base share); got {bad}"
MSG_ALPHA = "alpha={alpha} must be strictly between 0 and 1"
MSG_FAMILY = "family_size={m} must be at least the number of groups ({g})"
MSG_POSITIVE_INT = "{what}={value} must be a positive integer"
MSG_K = "k={k} must be between 1 and the dataset size minus the largest group ({hi})"
MSG_TARGET = "target power {p} must be strictly between 0 and 1"


def fairface_sizes(attribute: str = "race") -> dict[str, int]:
    """FairFace validation group counts of ``attribute`` (``race``, ``gender`` or ``age``); a copy."""
    if attribute not in FAIRFACE_VALIDATION_COUNTS:
        raise one_of(attribute, FAIRFACE_VALIDATION_COUNTS, "FairFace attribute")
    return dict(FAIRFACE_VALIDATION_COUNTS[attribute])


def resolve_sizes(
    *,
    n_total: int | None = None,
    group_sizes: Mapping[str, int] | None = None,
    base_shares: Mapping[str, float] | None = None,
    attribute: str = "race",
) -> dict[str, int]:
    """Group sizes from either explicit sizes or base shares and a dataset size.

    Shares are scaled to ``n_total`` (default FairFace's 10954) and rounded so that the sizes sum to
    ``n_total`` exactly (largest remainders). With neither given: the FairFace validation counts of
    ``attribute``, scaled to ``n_total`` when that differs from FairFace's size.
    """
    if group_sizes is not None and base_shares is not None:
        raise UsageError(MSG_BOTH)
    if group_sizes is None and base_shares is None:
        sizes = fairface_sizes(attribute)
        if n_total is not None and int(n_total) != FAIRFACE_VALIDATION_SIZE:
            base_shares = {g: v / FAIRFACE_VALIDATION_SIZE for g, v in sizes.items()}
        else:
            return sizes
    if group_sizes is not None:
        sizes = {str(g): v for g, v in group_sizes.items()}
        if not sizes or any(int(v) != v or v <= 0 for v in sizes.values()):
            raise UsageError(MSG_SIZES_POSITIVE.format(sizes=sizes))
        total = int(sum(sizes.values()))
        if n_total is not None and int(n_total) != total:
            raise UsageError(MSG_N_TOTAL.format(n=n_total, total=total))
        return {g: int(v) for g, v in sizes.items()}
    shares = {str(g): float(v) for g, v in base_shares.items()}
    if not shares or any(not (v > 0) for v in shares.values()):
        raise UsageError(MSG_SHARES_POSITIVE.format(shares=shares))
    total_share = sum(shares.values())
    if abs(total_share - 1.0) > 0.02:
        raise UsageError(MSG_SHARES_SUM.format(total=total_share))
    n = FAIRFACE_VALIDATION_SIZE if n_total is None else int(n_total)
    exact = {g: v / total_share * n for g, v in shares.items()}
    sizes = {g: int(math.floor(x)) for g, x in exact.items()}
    left = n - sum(sizes.values())
    for g in sorted(exact, key=lambda g: exact[g] - sizes[g], reverse=True)[:left]:
        sizes[g] += 1
    if any(v <= 0 for v in sizes.values()):
        raise UsageError(MSG_SIZES_POSITIVE.format(sizes=sizes))
    return sizes


# ----------------------------------------------------------------------------------------------
# simulation pieces (kept separate so tests can check them against the plain statistics)


def _null_pvalues(rng, sizes, k: int, n_rows: int, n_sim: int, table):
    """``(n_sim, n_rows)`` p_over of null rows: whole null words, truncated to ``n_rows``."""
    import numpy as np

    n_groups = sizes.size
    n_null_words = max(0, -(-n_rows // n_groups))
    if n_null_words == 0:
        return np.empty((n_sim, 0))
    draws = rng.multivariate_hypergeometric(sizes, k, size=(n_sim, n_null_words))  # (S, Wn, G)
    p = table[np.arange(n_groups), draws].reshape(n_sim, -1)
    return p[:, :n_rows]


def _planted_counts(rng, uniforms, sizes, n_total: int, k: int, group: int, ratio: float):
    """``(n_sim, G)`` counts of the planted word's top-k for one ratio."""
    import numpy as np
    from scipy.stats import hypergeom

    n_sim = uniforms.size
    inflated = min(n_total, int(round(ratio * sizes[group])))
    # Inverse CDF, x = min{x : F(x) >= u}, from one vectorised CDF table over the support.
    cdf = hypergeom.cdf(np.arange(k + 1), n_total, inflated, k)
    x = np.minimum(np.searchsorted(cdf, uniforms, side="left"), k).astype(np.int64)
    counts = np.zeros((n_sim, sizes.size), dtype=np.int64)
    counts[:, group] = x
    remaining = k - x
    pool = n_total - sizes[group]
    for j in range(sizes.size):
        if j == group:
            continue
        pool -= sizes[j]
        draw = rng.hypergeometric(sizes[j], pool, np.minimum(remaining, sizes[j] + pool))
        counts[:, j] = draw
        remaining = remaining - draw
    return counts


def _flag_planted(null_p, planted_p, group: int, alpha: float, family_size: int):
    """Whether the planted row has ``q_over < alpha`` under BH over the whole family.

    ``null_p``: ``(S, n_null)``; ``planted_p``: ``(S, R, G)``. Only p-values below ``alpha`` can be
    rejected, so BH runs on those alone, with the family size ``m`` kept: flagged iff the planted p
    is at most ``p_(R*)`` where ``R* = max{i : p_(i) * m / i < alpha}``. Exactly the rows that
    :func:`clipprobe.analysis.significance.bh_adjust` gives ``q < alpha``.
    """
    import numpy as np

    n_sim, n_ratio, _ = planted_p.shape
    small = np.where(null_p < alpha, null_p, np.inf)
    small.sort(axis=1)
    width = int(np.isfinite(small).sum(axis=1).max()) if small.size else 0
    small = small[:, :width]
    values = np.concatenate(
        [np.broadcast_to(small[:, None, :], (n_sim, n_ratio, width)), np.where(planted_p < alpha, planted_p, np.inf)],
        axis=2,
    )
    values.sort(axis=2)
    ranks = np.arange(1, values.shape[2] + 1)
    below = values * family_size / ranks < alpha
    any_below = below.any(axis=2)
    last = values.shape[2] - 1 - np.argmax(below[:, :, ::-1], axis=2)
    threshold = np.take_along_axis(values, last[:, :, None], axis=2)[:, :, 0]
    return any_below & (planted_p[:, :, group] <= threshold)


def _check_common(ratios, alpha, n_words, n_sim):
    import numpy as np

    r = np.asarray(sorted(set(float(x) for x in ratios)), dtype=np.float64)
    if r.size == 0 or np.any(r < 1.0):
        raise UsageError(MSG_RATIO.format(bad=[x for x in r if x < 1.0] or "none"))
    if not (0.0 < float(alpha) < 1.0):
        raise UsageError(MSG_ALPHA.format(alpha=alpha))
    for what, value in (("n_words", n_words), ("n_sim", n_sim)):
        if int(value) != value or int(value) < 1:
            raise UsageError(MSG_POSITIVE_INT.format(what=what, value=value))
    return r


def power_curve(
    *,
    n_total: int | None = None,
    group_sizes: Mapping[str, int] | None = None,
    base_shares: Mapping[str, float] | None = None,
    k: int | Sequence[int] = DEFAULT_KS,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    alpha: float = 0.05,
    n_words: int = 400,
    family_size: int | None = None,
    n_sim: int = 500,
    seed: int = 0,
    groups: Sequence[str] | None = None,
    attribute: str = "race",
) -> "pd.DataFrame":
    """Probability of flagging a planted over-representation, per group, k and ratio.

    ``ratios`` are planted share / base share (>= 1). ``groups`` restricts which groups are planted
    (default all). Without sizes or shares, FairFace's validation counts of ``attribute`` are used
    (scaled to ``n_total``). Returns a DataFrame with columns ``group, base_share, k, ratio, power`` (power is
    a fraction of ``n_sim`` simulations), one row per combination, sorted by group order, k, ratio.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.significance import hypergeom_p

    sizes_map = resolve_sizes(n_total=n_total, group_sizes=group_sizes, base_shares=base_shares, attribute=attribute)
    names = list(sizes_map)
    sizes = np.array([sizes_map[g] for g in names], dtype=np.int64)
    n = int(sizes.sum())
    ks = [int(k)] if np.ndim(k) == 0 else [int(x) for x in k]
    r = _check_common(ratios, alpha, n_words, n_sim)
    n_groups = sizes.size
    m = int(family_size) if family_size is not None else int(n_words) * n_groups
    if m < n_groups:
        raise UsageError(MSG_FAMILY.format(m=m, g=n_groups))
    planted_groups = names if groups is None else list(groups)
    for g in planted_groups:
        if g not in sizes_map:
            raise one_of(g, names, "group")
    hi = n - int(sizes.max())
    rows = []
    seeds = np.random.SeedSequence(seed).spawn(len(ks))
    for kk, ss in zip(ks, seeds):
        if not (1 <= kk <= hi):
            raise UsageError(MSG_K.format(k=kk, hi=hi))
        table = hypergeom_p(np.arange(kk + 1)[None, :], sizes[:, None], n, kk)[0]  # (G, k+1)
        null_seed, *group_seeds = ss.spawn(1 + n_groups)
        null_p = _null_pvalues(np.random.default_rng(null_seed), sizes, kk, m - n_groups, int(n_sim), table)
        for gi, name in enumerate(names):
            if name not in planted_groups:
                continue
            uniform_seed, others_seed = group_seeds[gi].spawn(2)
            u = np.random.default_rng(uniform_seed).random(int(n_sim))
            planted = np.empty((int(n_sim), r.size, n_groups))
            for ri, ratio in enumerate(r):
                counts = _planted_counts(np.random.default_rng(others_seed), u, sizes, n, kk, gi, ratio)
                planted[:, ri, :] = table[np.arange(n_groups), counts]
            power = _flag_planted(null_p, planted, gi, float(alpha), m).mean(axis=0)
            for ri, ratio in enumerate(r):
                rows.append((name, sizes[gi] / n, kk, float(ratio), float(power[ri])))
        log.debug("power: k=%d done", kk)
    return pd.DataFrame(rows, columns=["group", "base_share", "k", "ratio", "power"])


def minimum_detectable_ratio(
    curve: "pd.DataFrame | None" = None, *, target_power: float = 0.8, **power_kwargs
) -> "pd.DataFrame":
    """Smallest ratio reaching ``target_power`` per (group, k), by linear interpolation.

    Either pass a ``curve`` from :func:`power_curve` or the keyword arguments of
    :func:`power_curve` (default ratios 1.0 to 4.0 in steps of 0.1). Returns a DataFrame with
    columns ``group, base_share, k, min_ratio``; ``min_ratio`` is NaN where no ratio on the grid
    reaches the target and equals the first grid ratio if that one already does.
    """
    import numpy as np
    import pandas as pd

    if not (0.0 < float(target_power) < 1.0):
        raise UsageError(MSG_TARGET.format(p=target_power))
    if curve is None:
        power_kwargs.setdefault("ratios", tuple(np.round(np.arange(1.0, 4.0001, 0.1), 10)))
        curve = power_curve(**power_kwargs)
    rows = []
    for (group, kk), part in curve.groupby(["group", "k"], sort=False):
        part = part.sort_values("ratio")
        ratio = part["ratio"].to_numpy()
        power = part["power"].to_numpy()
        hit = np.flatnonzero(power >= target_power)
        if hit.size == 0:
            value = np.nan
        elif hit[0] == 0:
            value = float(ratio[0])
        else:
            i = hit[0]
            x0, x1, y0, y1 = ratio[i - 1], ratio[i], power[i - 1], power[i]
            value = float(x0 + (target_power - y0) * (x1 - x0) / (y1 - y0))
        rows.append((group, float(part["base_share"].iloc[0]), int(kk), value))
    return pd.DataFrame(rows, columns=["group", "base_share", "k", "min_ratio"])


__all__ = [
    "DEFAULT_KS",
    "DEFAULT_RATIOS",
    "fairface_sizes",
    "minimum_detectable_ratio",
    "power_curve",
    "resolve_sizes",
]


def power_plot(curve, *, k: int | None = None, ax=None):
    """Power against planted ratio, one line per group (at one ``k``; the largest by default); returns the
    Axes (one column wide, :mod:`clipprobe.figstyle`)."""
    from clipprobe import figstyle as F

    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 2.7)
        k = int(curve["k"].max()) if k is None else int(k)
        part = curve[curve["k"] == k]
        for i, (group, g) in enumerate(part.groupby("group", sort=False)):
            share = float(g["base_share"].iloc[0])
            color, marker = F.series_style(i)
            ax.plot(g["ratio"], g["power"], marker=marker, ms=F.scaled(3), lw=F.scaled(1.0), color=color,
                    label=f"{F.short(group, 20)} ({share:.0%})")
        ax.axhline(0.8, color="0.6", lw=F.scaled(0.6), ls="--")
        ax.set_xlabel("planted share / base share")
        ax.set_ylabel("P(flagged)")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"Power at k = {k}", **F.TITLE_AT_TOP)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.figure.legend(handles, labels, loc="outside lower center", ncol=F.legend_columns(ax.figure, labels),
                             handletextpad=0.5, columnspacing=1.4)
    return ax
