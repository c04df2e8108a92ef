"""Uncertainty of the representation metrics: an exact bootstrap of the top-k retrieval.

* :func:`bootstrap_counts` / :func:`bootstrap_intervals`: resample the face dataset with
  replacement, redo the retrieval on every resample, and take percentile intervals.

The bootstrap never re-sorts the dataset. For each word the ``T`` best images are ranked once
(``T`` a few times ``k``). A resample is a vector of multiplicities ``m`` (how often each image was
drawn; multinomial with ``N`` draws). Copies of an image share its score, so the resample's top-k
is the prefix of the word's ranking where the cumulative multiplicity reaches ``k``, the last image
counted only as often as needed to fill exactly ``k`` slots. Group counts are then sums of
multiplicities. When a resample's top-``T`` holds fewer than ``k`` copies the word falls back to
its full ranking, so the result is always exact: identical to materialising the resampled dataset
and sorting it (ties broken by image index, as in :func:`clipprobe.analysis.metrics.rank_topk`). Each
resample has its own random stream spawned from ``seed``, so results do not depend on chunking.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Mapping

from clipprobe.errors import DataError, UsageError, one_of
from clipprobe.analysis.metrics import (
    REFERENCES,
    as_scores,
    check_k,
    check_labels,
    rank_topk,
    reference_shares,
)

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

MSG_LEVEL = "level={level} must be strictly between 0 and 1"
MSG_NBOOT = "n_boot={n} must be a positive integer"
MSG_NEUTRAL_ROW = "reference 'neutral' needs neutral_row, the row of the neutral prompt in the scores (0..{hi})"
MSG_LABELS_LEN = "labels[{name!r}] has {got} entries but scores have {n} images"
MSG_NO_ATTRIBUTES = "bootstrap_counts needs at least one attribute's labels"


# ----------------------------------------------------------------------------------------------
# bootstrap


@dataclasses.dataclass(frozen=True)
class BootstrapCounts:
    """Group counts of every word's top-k in every resample, for one attribute.

    ``counts``: ``(B, W, G)`` int32; ``base_share``: ``(B, G)`` float64, each resample's own group
    shares; ``present``: ``(G,)`` bool, the groups present in the full dataset; ``k``; ``n_total``;
    ``n_fallback``: how many (resample, word) pairs needed the full ranking.
    """

    counts: "np.ndarray"
    base_share: "np.ndarray"
    present: "np.ndarray"
    k: int
    n_total: int
    n_fallback: int = 0


def resample_multiplicities(n_total: int, n_boot: int, *, seed: int = 0, start: int = 0, stop: int | None = None):
    """``(stop - start, n_total)`` int32 multiplicities of resamples ``start..stop-1``.

    Resample ``b`` draws ``n_total`` image indices uniformly with replacement from its own stream
    (``SeedSequence(seed).spawn(n_boot)[b]``), so any chunking gives the same resamples.
    """
    import numpy as np

    stop = n_boot if stop is None else stop
    children = np.random.SeedSequence(seed).spawn(n_boot)[start:stop]
    out = np.empty((len(children), n_total), dtype=np.int32)
    for row, child in enumerate(children):
        draws = np.random.default_rng(child).integers(0, n_total, size=n_total)
        out[row] = np.bincount(draws, minlength=n_total)
    return out


def _prefix_weights(mult, k: int):
    """Given multiplicities in rank order (last axis), how many copies of each fill the top k."""
    import numpy as np

    cum = np.cumsum(mult, axis=-1, dtype=np.int64)
    before = cum - mult
    return np.clip(k - before, 0, mult), cum[..., -1] < k


def bootstrap_counts(
    scores,
    labels: Mapping[str, "np.ndarray"],
    n_groups: Mapping[str, int],
    k: int,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    depth: int | None = None,
    chunk_size: int | None = None,
) -> dict[str, BootstrapCounts]:
    """Redo the top-k retrieval on ``n_boot`` resamples of the dataset, for several attributes.

    ``scores`` is ``(W, N)`` (word x image similarity); ``labels`` maps attribute name to ``(N,)``
    group codes and ``n_groups`` the same names to their number of groups. All attributes see the
    same resamples. ``depth`` is the ranked prefix ``T`` kept per word (default ``min(N, 2k + 50)``);
    it changes speed only, never the result. Returns ``{attribute: BootstrapCounts}``.
    """
    import numpy as np

    s = as_scores(scores)
    n_words, n_total = s.shape
    k = check_k(k, n_total)
    if int(n_boot) < 1:
        raise UsageError(MSG_NBOOT.format(n=n_boot))
    n_boot = int(n_boot)
    if not labels:
        raise UsageError(MSG_NO_ATTRIBUTES)
    names = list(labels)
    labs, offsets, total_groups = {}, {}, 0
    for name in names:
        if name not in n_groups:
            raise one_of(name, list(n_groups), "attribute in n_groups")
        arr = check_labels(labels[name], int(n_groups[name]))
        if arr.size != n_total:
            raise DataError(MSG_LABELS_LEN.format(name=name, got=arr.size, n=n_total))
        labs[name] = arr
        offsets[name] = total_groups
        total_groups += int(n_groups[name])
    all_codes = np.stack([labs[n] + offsets[n] for n in names], axis=1)  # (N, A), global group codes

    depth = min(n_total, 2 * k + 50) if depth is None else max(k, min(int(depth), n_total))
    ranked = rank_topk(s, depth)  # (W, T)
    onehot = np.zeros((n_words, depth, total_groups), dtype=np.float32)
    w_idx, t_idx = np.meshgrid(np.arange(n_words), np.arange(depth), indexing="ij")
    for a in range(len(names)):
        onehot[w_idx, t_idx, all_codes[ranked, a]] = 1.0
    image_onehot = np.zeros((n_total, total_groups))
    for a in range(len(names)):
        image_onehot[np.arange(n_total), all_codes[:, a]] = 1.0

    if chunk_size is None:
        chunk_size = max(1, min(n_boot, (1 << 23) // max(1, n_words * depth)))
    # float32 sums of integers are exact below 2**24; larger datasets use float64.
    exact_dtype = np.float32 if n_total < (1 << 24) else np.float64
    onehot_t = np.ascontiguousarray(onehot.transpose(0, 2, 1), dtype=exact_dtype)  # (W, G, T)
    counts = np.empty((n_boot, n_words, total_groups), dtype=np.int32)
    base = np.empty((n_boot, total_groups))
    full_rank: dict[int, np.ndarray] = {}
    n_fallback = 0
    for start in range(0, n_boot, chunk_size):
        stop = min(n_boot, start + chunk_size)
        mult = resample_multiplicities(n_total, n_boot, seed=seed, start=start, stop=stop)
        base[start:stop] = (mult @ image_onehot) / n_total
        # Layout (W, T, b): resamples innermost, so the running sum over ranks adds whole rows.
        weights = np.ascontiguousarray(mult.T, dtype=exact_dtype)[ranked]  # (W, T, b)
        filled = np.cumsum(weights, axis=1)
        short = filled[:, -1, :] < k  # (W, b)
        np.subtract(filled, weights, out=filled)  # copies ranked before this image
        np.subtract(float(k), filled, out=filled)  # slots still free when it comes
        np.maximum(filled, 0.0, out=filled)
        np.minimum(filled, weights, out=filled)  # copies of it that fill the top k
        # (W, G, T) @ (W, T, b) -> (W, G, b): one batched matmul for all attributes at once.
        chunk = np.matmul(onehot_t, filled)
        counts[start:stop] = np.rint(chunk.transpose(2, 0, 1)).astype(np.int32)
        for word, b_local in zip(*np.nonzero(short)):
            n_fallback += 1
            if word not in full_rank:
                full_rank[word] = rank_topk(s[word], n_total)[0]
            order = full_rank[word]
            w_full, _ = _prefix_weights(mult[b_local, order], k)
            counts[start + b_local, word] = np.bincount(
                all_codes[order].ravel(),
                weights=np.repeat(w_full, len(names)),
                minlength=total_groups,
            ).astype(np.int32)
    if n_fallback:
        log.debug("bootstrap: %d (resample, word) pairs used the full ranking (depth %d)", n_fallback, depth)

    out = {}
    for name in names:
        lo, hi = offsets[name], offsets[name] + int(n_groups[name])
        out[name] = BootstrapCounts(
            counts=np.ascontiguousarray(counts[:, :, lo:hi]),
            base_share=np.ascontiguousarray(base[:, lo:hi]),
            present=np.bincount(labs[name], minlength=hi - lo) > 0,
            k=k,
            n_total=n_total,
            n_fallback=n_fallback,
        )
    return out


def percentile_interval(samples, level: float = 0.95) -> tuple["np.ndarray", "np.ndarray"]:
    """Percentile interval along axis 0, ignoring NaN (linear interpolation, as ``np.nanpercentile``).

    Columns with no finite value give NaN. Vectorised: one sort instead of a loop over columns.
    """
    import numpy as np

    if not (0.0 < float(level) < 1.0):
        raise UsageError(MSG_LEVEL.format(level=level))
    x = np.sort(np.asarray(samples, dtype=np.float64), axis=0)  # NaN sorts last
    n_valid = (~np.isnan(x)).sum(axis=0)
    tail = (1.0 - float(level)) / 2.0

    def at(q):
        pos = q * np.maximum(n_valid - 1, 0)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, np.maximum(n_valid - 1, 0))
        frac = pos - lo
        x_lo = np.take_along_axis(x, lo[None, ...], axis=0)[0]
        x_hi = np.take_along_axis(x, hi[None, ...], axis=0)[0]
        return np.where(n_valid > 0, x_lo + (x_hi - x_lo) * frac, np.nan)

    return at(tail), at(1.0 - tail)


def bootstrap_metrics(
    boot: BootstrapCounts, *, reference: str = "base", neutral_row: int | None = None
) -> dict[str, "np.ndarray"]:
    """The metrics of every resample: ``share``, ``skew`` (``(B, W, G)``), ``max_skew``,
    ``norm_entropy`` (``(B, W)``, float64) and ``top_group`` (``(B, W)``, int64, -1 if none).

    ``reference`` is as in :mod:`clipprobe.analysis.metrics`; in each resample ``"base"`` uses that
    resample's own base shares and ``"neutral"`` the neutral prompt's top-k in that resample (row
    ``neutral_row`` of the scores). A group missing from a resample has no skew there (NaN).
    ``norm_entropy`` uses the ``L`` groups of the full dataset. Same definitions as
    :func:`clipprobe.analysis.metrics.group_stats` / :func:`~clipprobe.analysis.metrics.word_stats`.
    """
    import numpy as np

    if reference not in REFERENCES:
        raise one_of(reference, REFERENCES, "reference")
    counts = boot.counts
    n_boot, n_words, n_g = counts.shape
    present = boot.present
    if reference == "base":
        ref = boot.base_share[:, None, :]
    elif reference == "uniform":
        ref = reference_shares("uniform", base_share=present.astype(np.float64))[None, None, :]
    else:
        if neutral_row is None or not (0 <= int(neutral_row) < n_words):
            raise UsageError(MSG_NEUTRAL_ROW.format(hi=n_words - 1))
        ref = reference_shares(
            "neutral", base_share=boot.base_share, neutral_counts=counts[:, int(neutral_row), :], k=boot.k
        )[:, None, :]
    ref = np.where(present, ref, 0.0)
    # Per-count lookup tables keep this fast on (B, W, G) arrays. skew uses the very same float
    # expression as group_stats, ln((max(c, 1) / k) / ref), so exact ties between groups resolve as
    # in the point estimate (lowest code wins).
    k = boot.k
    levels = np.arange(k + 1) / k
    floored = np.maximum(np.arange(k + 1), 1) / float(k)
    safe_ref = np.where(ref > 0, ref, np.nan)  # NaN where absent from the dataset or the resample
    share = levels[counts]
    skew = np.log(floored[counts] / safe_ref)
    finite = ~np.isnan(skew)
    masked = np.where(finite, skew, -np.inf)
    any_present = finite.any(axis=-1)
    plogp = np.zeros(k + 1)
    plogp[1:] = levels[1:] * np.log(levels[1:])
    n_present = int(present.sum())
    if n_present >= 2:
        entropy = -plogp[counts[:, :, present]].sum(axis=-1) / np.log(n_present)
    else:
        entropy = np.full((n_boot, n_words), np.nan)
    return {
        "share": share,
        "skew": skew,
        "max_skew": np.where(any_present, masked.max(axis=-1), np.nan),
        "norm_entropy": entropy,
        "top_group": np.where(any_present, masked.argmax(axis=-1), -1).astype(np.int64),
    }


def bootstrap_intervals(
    boot: BootstrapCounts,
    *,
    top_group,
    reference: str = "base",
    neutral_row: int | None = None,
    level: float = 0.95,
    samples: Mapping[str, "np.ndarray"] | None = None,
) -> dict[str, "np.ndarray"]:
    """Percentile intervals of the metrics over the resamples, and the stability of the top group.

    ``top_group`` is the point estimate's most over-represented group per word (``(W,)``, from
    :func:`clipprobe.analysis.metrics.point_estimates`); ``reference`` and ``neutral_row`` as in
    :func:`bootstrap_metrics`. NaN samples (a group missing from a resample) are left out.
    ``samples``: the output of :func:`bootstrap_metrics` for the same arguments, when the caller
    already has it (it is then not computed again).

    Returns float64 arrays ``share_ci_low/high``, ``skew_ci_low/high`` (``(W, G)``),
    ``max_skew_ci_low/high``, ``norm_entropy_ci_low/high`` and ``stability`` (``(W,)``): the
    fraction of resamples whose top group equals ``top_group``.
    """
    import numpy as np

    m = samples if samples is not None else bootstrap_metrics(boot, reference=reference, neutral_row=neutral_row)
    n_words = boot.counts.shape[1]
    out = {}
    for key in ("share", "skew", "max_skew", "norm_entropy"):
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = percentile_interval(m[key], level)
    out["stability"] = (m["top_group"] == np.asarray(top_group).reshape(1, n_words)).mean(axis=0).astype(np.float64)
    return out


__all__ = [
    "BootstrapCounts",
    "bootstrap_counts",
    "bootstrap_intervals",
    "bootstrap_metrics",
    "percentile_interval",
    "resample_multiplicities",
]
