"""The So-B-IT retrieval probe on arrays: word x image similarities and image labels in, report tables out.

:func:`probe_scores` is the function everything else builds on. It takes a ``(W, N)`` array of
similarities (one row per word, one column per image, from any model or pipeline) and a label table
(one row per image, one column per attribute) and returns the very tables ``clipprobe report``
writes (``groups.parquet``, ``words.parquet``, ``summary.csv``): same columns, same values for the
same inputs and seed. The report computes its words in resumable chunks with :func:`score_words`
and joins them with :func:`finish_tables`; :func:`probe_scores` is the two in one call.

The top-k of a word is its ``k`` highest scores, ties broken by the lower image index
(:func:`clipprobe.analysis.metrics.rank_topk`; ``ties="keep-all"`` keeps every image tied with the
k-th score instead, shares still ``count / k``, as oxai/debias-vision-lang's ``nlargest(keep="all")``).

What each column estimates, and which intervals are published (those whose coverage was measured
by ``benchmarks/bench_coverage.py``), is in docs/probe.md ("Statistics") and :mod:`clipprobe.analysis.intervals`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Sequence

from clipprobe.errors import DataError, UsageError, one_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

REFERENCES = ("base", "uniform")
TIES = ("index", "keep-all")
DEFAULT_PERMUTATIONS = 1000
LOW_COUNT = 5                   # counts below this are marked low_count: their skew is unstable
CATEGORY_SEP = "; "             # how a row's categories are written as text (summary.csv, old report folders)
TOP_GROUPS = 3                  # over-represented groups (positive mean skew) listed per category and attribute
NO_CATEGORY = "(all words)"     # the category of a word when none is given
TOP_FILES_KEPT = 25

# The report's tables, column by column (report/store.py writes and checks them).
GROUP_COLUMNS = (
    "word", "category", "attribute", "group", "k", "count", "share", "base_share", "skew",
    "share_ci_low", "share_ci_high", "skew_ci_low", "skew_ci_high", "low_count",
    "p_over", "p_under", "q_over", "flagged",
    "control_share", "p_vs_controls", "q_vs_controls", "flagged_vs_controls",
    "c_asc", "skew_vs_neutral",
)
WORD_COLUMNS = (
    "word", "category", "attribute", "prompts", "top_group",
    "max_skew", "max_skew_null", "max_skew_excess", "p_max_skew",
    "min_skew", "min_skew_null", "min_skew_excess", "p_min_skew",
    "norm_entropy", "norm_entropy_mm", "kl_to_base", "ndkl_at_k", "ndkl_full",
    "stability", "n_retrieved", "top_files", "n_flagged", "n_flagged_vs_controls",
)
SUMMARY_COLUMNS = (
    "category", "attribute", "n_words", "mean_norm_entropy", "mean_max_skew_excess", "share_flagged",
    "share_flagged_vs_controls", "top_groups",
)

MSG_SCORES_SHAPE = "scores must be a 2-D array (words x images), got shape {shape}"
MSG_WORDS = "words: {n_words} word(s) given for {n_rows} row(s) of scores"
MSG_DUPLICATE_WORDS = "words: {word!r} appears more than once"
MSG_LABEL_ROWS = "labels: {n_labels} row(s) for {n_images} image(s) (columns of scores)"
MSG_NO_ATTRIBUTES = "labels: no attribute columns to probe (give a DataFrame with one column per attribute)"
MSG_UNKNOWN_ATTRIBUTE = "attribute {attribute!r} is not a column of labels{hint}; columns: {columns}"
MSG_NEUTRAL = "neutral: expected {n_images} similarities (one per image), got shape {shape}"
MSG_FILES = "files: {n_files} name(s) for {n_images} image(s)"
MSG_ALPHA = "alpha must be between 0 and 1, got {alpha}"
MSG_BOOTSTRAP = "bootstrap must be 0 (no intervals) or a positive number of resamples, got {n}"
MSG_SEED = "seed must be a non-negative integer, got {seed}"
MSG_PERMUTATIONS = "permutations must be a positive number, got {n}"
MSG_CONTROLS = "controls: expected an array of at least 2 control queries x {n_images} images, got shape {shape}"


@dataclasses.dataclass(frozen=True)
class ReportTables:
    """The tables of one probe: ``groups`` (one row per word, attribute and group), ``words`` (one row
    per word and attribute), ``summary`` (one row per category and attribute).

    """

    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    summary: "pd.DataFrame"
    attributes: tuple[str, ...]
    k: int
    alpha: float


@dataclasses.dataclass(frozen=True)
class ProbeLabels:
    """Group codes of the images, per attribute: ``codes[a]`` is ``(N,)`` int64, ``names[a]`` the groups."""

    codes: Mapping[str, "np.ndarray"]
    names: Mapping[str, list[str]]

    @property
    def attributes(self) -> tuple[str, ...]:
        return tuple(self.codes)

    @property
    def n_images(self) -> int:
        return int(len(next(iter(self.codes.values()))))


@dataclasses.dataclass(frozen=True)
class WordScores:
    """The part of the tables that one chunk of words determines on its own (no multiple-testing
    adjustment yet; :func:`finish_tables` adds the q-values, flags, their counts and the summary)."""

    groups: "pd.DataFrame"
    words: "pd.DataFrame"


def encode_labels(labels, attributes: Sequence[str] | None = None) -> ProbeLabels:
    """Group codes of a label table (FairFace's groups in their canonical order, see :mod:`clipprobe.faces`)."""
    import pandas as pd

    from clipprobe.errors import did_you_mean
    from clipprobe.faces import group_codes

    if isinstance(labels, ProbeLabels):
        if attributes is None:
            return labels
        missing = [a for a in attributes if a not in labels.codes]
        if missing:
            raise UsageError(MSG_UNKNOWN_ATTRIBUTE.format(attribute=missing[0], hint="",
                                                          columns=", ".join(labels.codes)))
        return ProbeLabels({a: labels.codes[a] for a in attributes}, {a: labels.names[a] for a in attributes})
    if not isinstance(labels, pd.DataFrame):
        labels = pd.DataFrame(labels)
    columns = [str(c) for c in labels.columns]
    if attributes is None:
        attributes = [c for c in columns if c not in ("file", "image", "path")]
    if not attributes:
        raise UsageError(MSG_NO_ATTRIBUTES)
    codes, names = {}, {}
    for a in attributes:
        if a not in columns:
            raise UsageError(MSG_UNKNOWN_ATTRIBUTE.format(attribute=a, hint=did_you_mean(a, columns),
                                                          columns=", ".join(columns)))
        codes[a], names[a] = group_codes(labels[a], a)
    return ProbeLabels(codes, names)


def check_settings(*, alpha: float = 0.05, bootstrap: int = 0, seed: int = 0, reference: str = "base",
                   permutations: int = DEFAULT_PERMUTATIONS, ties: str = "index") -> None:
    """Refuse settings outside their range (the same checks as ``clipprobe report``, made first)."""
    if reference not in REFERENCES:
        raise UsageError(str(one_of(reference, REFERENCES, "reference")))
    if ties not in TIES:
        raise UsageError(str(one_of(ties, TIES, "tie rule")))
    if isinstance(permutations, bool) or int(permutations) != permutations or permutations < 1:
        raise UsageError(MSG_PERMUTATIONS.format(n=permutations))
    if not 0 < float(alpha) < 1:
        raise UsageError(MSG_ALPHA.format(alpha=alpha))
    if isinstance(bootstrap, bool) or int(bootstrap) != bootstrap or bootstrap < 0:
        raise UsageError(MSG_BOOTSTRAP.format(n=bootstrap))
    if isinstance(seed, bool) or int(seed) != seed or seed < 0:
        raise UsageError(MSG_SEED.format(seed=seed))


def _as_scores(scores) -> "np.ndarray":
    import numpy as np

    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise DataError(MSG_SCORES_SHAPE.format(shape=s.shape))
    return s


def category_lists(categories, words: Sequence[str]) -> dict[str, list[str]]:
    """Each word's categories as a list (the ``category`` column: a list of strings per row): a word's
    list or tuple as given, one string as a one-item list, none as ``[NO_CATEGORY]``."""
    out = {}
    for w, c in zip(words, _per_word(categories, list(words), str)):
        items = [str(x) for x in c] if isinstance(c, (list, tuple)) else ([str(c)] if str(c) else [])
        out[w] = [x for x in items if x] or [NO_CATEGORY]
    return out


def _per_word(value, words: Sequence[str], default) -> list:
    if value is None:
        return [default() for _ in words]
    if isinstance(value, Mapping):
        return [value.get(w, default()) for w in words]
    value = list(value)
    if len(value) != len(words):
        raise DataError(f"{len(value)} value(s) for {len(words)} word(s)")
    return value


def _kept_counts(s, ids, codes, n_groups: int, k: int, ties: str):
    """``(counts (W, G), drawn (W,))``: group counts of each word's top-k and how many images they hold.

    ``ties="index"``: exactly ``k`` (ties at the k-th score broken by the lower image index);
    ``ties="keep-all"``: every image tied with the k-th score is kept too (``drawn >= k``).
    """
    import numpy as np

    from clipprobe.analysis.metrics import topk_counts

    if ties == "index":
        return topk_counts(ids, codes, n_groups), np.full(len(ids), k, dtype=np.int64)
    kth = np.take_along_axis(s, ids[:, k - 1:k], axis=1)            # (W, 1): the k-th highest score
    kept = s >= kth
    onehot = np.zeros((s.shape[1], n_groups))
    onehot[np.arange(s.shape[1]), codes] = 1.0
    return np.rint(kept.astype(np.float64) @ onehot).astype(np.int64), kept.sum(axis=1).astype(np.int64)


def control_null(control_counts, k: int) -> "tuple[np.ndarray, np.ndarray, np.ndarray]":
    """A beta-binomial per group fitted (by moments) to the control queries' top-k counts.

    Returns ``(mean_share, a, b)`` per group; ``a = b = inf`` where the controls vary no more than
    binomially (the null is then Binomial(k, mean_share)).
    """
    import numpy as np

    c = np.asarray(control_counts, dtype=np.float64)
    p = c.mean(axis=0) / k
    var = c.var(axis=0, ddof=1) if len(c) > 1 else np.zeros(c.shape[1])
    binomial = k * p * (1 - p)
    with np.errstate(divide="ignore", invalid="ignore"):
        # Var = k p (1 - p) (1 + (k - 1) rho), rho = 1 / (a + b + 1)
        rho = (var / binomial - 1.0) / (k - 1) if k > 1 else np.zeros_like(p)
        total = np.where(rho > 0, 1.0 / rho - 1.0, np.inf)
    finite = np.isfinite(total)
    safe = np.where(finite, total, 0.0)
    a = np.where(finite, p * safe, np.inf)
    b = np.where(finite, (1 - p) * safe, np.inf)
    return p, a, b


def p_vs_controls(counts, k, mean_share, a, b) -> "np.ndarray":
    """Upper-tail p-values of counts under the controls' beta-binomial (binomial where not overdispersed)."""
    import numpy as np
    from scipy.stats import betabinom, binom

    c = np.asarray(counts)
    kk = np.broadcast_to(np.asarray(k), c.shape)
    over = np.isfinite(a) & (a > 0) & (b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bb = betabinom.sf(c - 1, kk, np.where(over, a, 1.0), np.where(over, b, 1.0))
        p_bin = binom.sf(c - 1, kk, np.clip(mean_share, 0.0, 1.0))
    return np.clip(np.where(over, p_bb, p_bin), 0.0, 1.0)


def score_words(
    scores,
    labels,
    *,
    words: Sequence[str],
    k: int,
    attributes: Sequence[str] | None = None,
    reference: str = "base",
    bootstrap: int = 0,
    seed: int = 0,
    level: float = 0.95,
    permutations: int = DEFAULT_PERMUTATIONS,
    ties: str = "index",
    neutral=None,
    controls=None,
    prompts=None,
    files: Sequence[str] | None = None,
) -> WordScores:
    """Point estimates, tests and intervals of some words (see :func:`probe_scores`).

    Each word's numbers depend only on its own row of ``scores``, on the controls and on the seed,
    so words can be scored in chunks and the chunks joined by :func:`finish_tables`.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.bootstrap import bootstrap_counts, bootstrap_metrics
    from clipprobe.analysis.extremes import extreme_skew_null
    from clipprobe.analysis.intervals import (SHARE_INTERVAL_MAX_FRACTION, miller_madow, share_interval, skew_interval,
                                              skew_interval_vs_base)
    from clipprobe.analysis.metrics import c_asc, check_k, group_stats, ndkl, point_estimates, rank_topk, word_stats
    from clipprobe.analysis.significance import hypergeom_p

    check_settings(bootstrap=bootstrap, seed=seed, reference=reference, permutations=permutations, ties=ties)
    s = _as_scores(scores)
    n_words, n_images = s.shape
    words = [str(w) for w in words]
    if len(words) != n_words:
        raise DataError(MSG_WORDS.format(n_words=len(words), n_rows=n_words))
    lab = encode_labels(labels, attributes)
    if lab.n_images != n_images:
        raise DataError(MSG_LABEL_ROWS.format(n_labels=lab.n_images, n_images=n_images))
    k = check_k(k, n_images)
    neutral_ids = None
    if neutral is not None:
        nv = np.asarray(neutral)
        if nv.shape != (n_images,):
            raise DataError(MSG_NEUTRAL.format(n_images=n_images, shape=nv.shape))
        neutral_ids = rank_topk(nv[None, :], k)[0]
    control_scores = None
    if controls is not None:
        control_scores = np.asarray(controls)
        if control_scores.ndim != 2 or control_scores.shape[1] != n_images or len(control_scores) < 2:
            raise DataError(MSG_CONTROLS.format(n_images=n_images, shape=control_scores.shape))
    if files is not None and len(files) != n_images:
        raise DataError(MSG_FILES.format(n_files=len(files), n_images=n_images))
    prompt_lists = _per_word(prompts, words, list)
    attributes = lab.attributes

    ids = rank_topk(s, k)
    control_ids = rank_topk(control_scores, k) if control_scores is not None else None
    full_rank = rank_topk(s, n_images)                                # (W, N): for NDKL over the whole ranking
    boot = None
    if bootstrap > 0:
        boot = bootstrap_counts(s, dict(lab.codes), {a: len(lab.names[a]) for a in attributes}, k,
                                n_boot=int(bootstrap), seed=int(seed))
    top = ids[:, :TOP_FILES_KEPT]
    top_files = ([[str(files[i]) for i in row] for row in top] if files is not None
                 else [[str(int(i)) for i in row] for row in top])
    nan_w = np.full(n_words, np.nan)
    group_frames, word_rows = [], []
    for a_index, a in enumerate(attributes):
        codes, groups = lab.codes[a], lab.names[a]
        g_n = len(groups)
        est = point_estimates(ids, codes, g_n, reference=reference)
        sizes = np.bincount(codes, minlength=g_n)
        present_mask = sizes > 0
        ref = est["reference_share"][0]
        counts, drawn = _kept_counts(s, ids, codes, g_n, k, ties)
        if ties != "index":     # the tied images count too; shares stay count / k (oxai's convention)
            g = group_stats(counts, ref, k)
            w_stats = word_stats(counts, ref, k, present=present_mask, topk_labels=codes[ids])
            est = {**est, "count": counts, "share": g["share"], "skew": np.where(present_mask, g["skew"], np.nan),
                   **{key: w_stats[key] for key in ("max_skew", "min_skew", "norm_entropy", "kl_to_base",
                                                      "top_group")}}
        if neutral_ids is not None:
            vs_neutral = point_estimates(ids, codes, g_n, reference="neutral", neutral_ids=neutral_ids)["skew"]
        else:
            vs_neutral = np.full((n_words, g_n), np.nan)
        p_over = np.empty((n_words, g_n))
        p_under = np.empty((n_words, g_n))
        max_null, min_null = np.empty(n_words), np.empty(n_words)
        p_max, p_min = np.empty(n_words), np.empty(n_words)
        for draws in np.unique(drawn):
            rows = drawn == draws
            p_over[rows], p_under[rows] = hypergeom_p(counts[rows], sizes[None, :], n_images, int(draws))
            null = extreme_skew_null(sizes, k, ref, n_perm=permutations, seed=int(seed) * 1000 + a_index,
                                     draws=int(draws))
            max_null[rows], min_null[rows] = float(np.mean(null.max_skew)), float(np.mean(null.min_skew))
            p_max[rows], p_min[rows] = null.p_max(est["max_skew"][rows]), null.p_min(est["min_skew"][rows])
        share_lo, share_hi = share_interval(np.minimum(counts, k), k, level=level)
        if k > SHARE_INTERVAL_MAX_FRACTION * n_images:             # not measured to cover there: withheld
            share_lo, share_hi = np.full_like(share_lo, np.nan), np.full_like(share_hi, np.nan)
        if reference == "base":
            skew_lo, skew_hi = skew_interval_vs_base(counts, k, sizes, n_images, level=level, drawn=drawn)
        else:
            skew_lo, skew_hi = skew_interval(share_lo, share_hi, est["reference_share"])
        casc = c_asc(s, codes, g_n)
        nd_full = np.concatenate([ndkl(codes[full_rank[i:i + 8]], ref, g_n) for i in range(0, n_words, 8)])
        mm = miller_madow(est["norm_entropy"], counts, present_mask, k)
        if control_ids is not None:
            control_counts, _ = _kept_counts(control_scores, control_ids, codes, g_n, k, ties)
            c_mean, c_a, c_b = control_null(control_counts, k)
            p_ctrl = p_vs_controls(counts, k, c_mean[None, :], c_a[None, :], c_b[None, :])
            ctrl_share = np.broadcast_to(c_mean, (n_words, g_n))
        else:
            p_ctrl = np.full((n_words, g_n), np.nan)
            ctrl_share = np.full((n_words, g_n), np.nan)
        stability = nan_w
        if boot is not None:
            samples = bootstrap_metrics(boot[a], reference=reference)
            stability = (samples["top_group"] == est["top_group"][None, :]).mean(axis=0).astype(np.float64)
        present = np.flatnonzero(present_mask)
        n_present = len(present)

        def per_group(values) -> "np.ndarray":   # (W, G) -> the present groups, word by word
            return np.asarray(values)[:, present].ravel()

        group_frames.append(pd.DataFrame({
            "word": np.repeat(np.asarray(words, dtype=object), n_present), "attribute": a,
            "group": np.tile(np.asarray([groups[i] for i in present], dtype=object), n_words), "k": k,
            "count": per_group(counts).astype(np.int64),
            "share": per_group(est["share"]), "base_share": per_group(est["base_share"]),
            "skew": per_group(est["skew"]),
            "p_over": per_group(p_over), "p_under": per_group(p_under),
            "share_ci_low": per_group(share_lo), "share_ci_high": per_group(share_hi),
            "skew_ci_low": per_group(skew_lo), "skew_ci_high": per_group(skew_hi),
            "low_count": per_group(counts) < LOW_COUNT,
            "c_asc": per_group(casc), "skew_vs_neutral": per_group(vs_neutral),
            "control_share": per_group(ctrl_share), "p_vs_controls": per_group(p_ctrl),
        }))
        word_rows.append(pd.DataFrame({
            "word": np.asarray(words, dtype=object), "attribute": a,
            "prompts": [list(p) for p in prompt_lists],
            "max_skew": est["max_skew"], "max_skew_null": max_null,
            "max_skew_excess": est["max_skew"] - max_null, "p_max_skew": p_max,
            "min_skew": est["min_skew"], "min_skew_null": min_null,
            "min_skew_excess": est["min_skew"] - min_null, "p_min_skew": p_min,
            "norm_entropy": est["norm_entropy"], "norm_entropy_mm": mm,
            "kl_to_base": est["kl_to_base"], "ndkl_at_k": est["ndkl"], "ndkl_full": nd_full,
            "top_group": np.asarray(groups, dtype=object)[est["top_group"]],
            "stability": stability, "n_retrieved": drawn.astype(np.int64), "top_files": top_files,
        }))
    return WordScores(groups=pd.concat(group_frames, ignore_index=True),
                      words=pd.concat(word_rows, ignore_index=True))


def finish_tables(parts: Sequence[WordScores], *, k: int, alpha: float = 0.05, categories=None) -> ReportTables:
    """Join scored chunks of words: categories, Benjamini-Hochberg over every row (``q_over`` and
    ``flagged = q_over < alpha``; ``q_vs_controls`` and ``flagged_vs_controls`` the same against the
    control queries; null, not False, where no control test ran, and so are ``n_flagged_vs_controls``
    and ``share_flagged_vs_controls``), the flag counts per word and attribute, and the per-category summary.

    ``categories`` maps a word to its categories (a string or a sequence); each row's ``category`` is the
    list of its word's categories. The summary's ``top_groups`` lists up to :data:`TOP_GROUPS` groups of
    highest positive mean skew (over-represented) as ``{"group", "mean_skew"}`` records; none: an empty list.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.significance import bh_adjust

    check_settings(alpha=alpha)
    if not parts:
        raise DataError("no words to report")
    groups = pd.concat([p.groups for p in parts], ignore_index=True)
    words = pd.concat([p.words for p in parts], ignore_index=True)
    word_order = list(dict.fromkeys(words["word"]))
    attributes = tuple(dict.fromkeys(words["attribute"]))
    # One row order however the words were chunked: attribute by attribute, words in their order.
    rank = {(a, w): i for i, (a, w) in enumerate((a, w) for a in attributes for w in word_order)}
    groups = groups.iloc[np.argsort([rank[k] for k in zip(groups["attribute"], groups["word"])],
                                    kind="stable")].reset_index(drop=True)
    words = words.iloc[np.argsort([rank[k] for k in zip(words["attribute"], words["word"])],
                                  kind="stable")].reset_index(drop=True)
    lists = category_lists(categories, word_order)
    groups["category"] = [list(lists[w]) for w in groups["word"]]
    words["category"] = [list(lists[w]) for w in words["word"]]
    groups["q_over"] = bh_adjust(groups["p_over"].to_numpy())
    groups["flagged"] = groups["q_over"] < alpha
    groups["q_vs_controls"] = bh_adjust(groups["p_vs_controls"].to_numpy())
    # null (not False) where no control test ran: a nullable boolean, and a nullable count per word
    groups["flagged_vs_controls"] = (groups["q_vs_controls"] < alpha).astype("boolean").mask(
        groups["q_vs_controls"].isna())
    for column, flag in (("n_flagged", "flagged"), ("n_flagged_vs_controls", "flagged_vs_controls")):
        n = groups.groupby(["word", "attribute"], sort=False)[flag].sum()
        words[column] = [int(n.get((w, a), 0)) for w, a in zip(words["word"], words["attribute"])]
    tested = groups.groupby(["word", "attribute"], sort=False)["q_vs_controls"].count()
    words["n_flagged_vs_controls"] = pd.array(
        [n if tested.get((w, a), 0) else pd.NA
         for n, w, a in zip(words["n_flagged_vs_controls"], words["word"], words["attribute"])], dtype="Int64")
    groups = groups[list(GROUP_COLUMNS)]
    words = words[list(WORD_COLUMNS)]
    summary = summarise(groups, words)
    return ReportTables(groups=groups, words=words, summary=summary, attributes=attributes, k=int(k),
                        alpha=float(alpha))


def summarise(groups: "pd.DataFrame", words: "pd.DataFrame") -> "pd.DataFrame":
    """Per category and attribute: mean normalised entropy and MaxSkew excess over the null, the
    share of words with a flagged group (by the hypergeometric test and against the controls), and
    the most over-represented groups: up to three with the highest positive mean skew among the
    category's words (null when no group's mean skew is above 0)."""
    import pandas as pd

    rows = []
    exploded = words.explode("category")
    g_exploded = groups.explode("category")
    for (category, attribute), part in exploded.groupby(["category", "attribute"], sort=False):
        gpart = g_exploded[(g_exploded["category"] == category) & (g_exploded["attribute"] == attribute)]
        mean_skew = gpart.groupby("group", sort=False)["skew"].mean().sort_values(ascending=False)
        over = mean_skew[mean_skew > 0]         # over-represented: a positive mean skew, none otherwise
        top = [{"group": str(g), "mean_skew": float(s)} for g, s in over.head(TOP_GROUPS).items()]
        rows.append({"category": category, "attribute": attribute, "n_words": len(part),
                     "mean_norm_entropy": float(part["norm_entropy"].mean()),
                     "mean_max_skew_excess": float(part["max_skew_excess"].mean()),
                     "share_flagged": float((part["n_flagged"] > 0).mean()),
                     "share_flagged_vs_controls": _share_positive(part["n_flagged_vs_controls"]),
                     "top_groups": top})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


def _share_positive(counts) -> float:
    """Share of the non-null counts above 0; NaN where every count is null (no control test ran)."""
    tested = counts.dropna()
    return float((tested.to_numpy(dtype="float64") > 0).mean()) if len(tested) else float("nan")


def controls_ran(groups: "pd.DataFrame") -> bool:
    """Whether the test against control queries ran for a report's rows (``p_vs_controls`` is not null
    somewhere; ``controls=None`` / ``--controls none`` leaves it null everywhere)."""
    return "p_vs_controls" in groups.columns and bool(groups["p_vs_controls"].notna().any())


def headline_flag(groups: "pd.DataFrame") -> str:
    """The flag that a report's headlines, filters and filled markers use: ``flagged_vs_controls`` where
    the control test ran (is the group over-represented beyond what queries with no meaning retrieve?),
    else ``flagged`` (the hypergeometric test alone: the word's top-k is not a random sample of faces)."""
    return "flagged_vs_controls" if controls_ran(groups) else "flagged"


def flag_mask(groups: "pd.DataFrame", column: str | None = None) -> "np.ndarray":
    """A plain boolean array of a flag column (``column``, default :func:`headline_flag`); null is False."""
    import numpy as np

    column = column or headline_flag(groups)
    return groups[column].astype("boolean").fillna(False).to_numpy(dtype=bool) if len(groups) else np.zeros(0, bool)


def probe_scores(
    scores,
    labels,
    *,
    words: Sequence[str],
    k: int,
    attributes: Sequence[str] | None = None,
    reference: str = "base",
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
    level: float = 0.95,
    permutations: int = DEFAULT_PERMUTATIONS,
    ties: str = "index",
    neutral=None,
    controls=None,
    categories=None,
    prompts=None,
    files: Sequence[str] | None = None,
) -> ReportTables:
    """The report's tables from a word x image similarity array.

    Parameters
    ----------
    scores
        ``(W, N)`` similarities, one row per word and one column per image (cosine similarities of
        L2-normalised embeddings in ``clipprobe report``; any score where larger means closer works).
    labels
        a pandas DataFrame with one row per image, in the columns' order, and one column per
        attribute (``race``, ``gender``, ``age``, ``race_gender``, or your own); a column named
        ``file`` is not an attribute.
    words
        the ``W`` words, in the rows' order (unique).
    k
        images retrieved per word.
    attributes
        the label columns to probe (default: every column but ``file``).
    reference
        ``"base"`` (skew against the dataset's group shares) or ``"uniform"``.
    bootstrap, seed
        resamples of the image set for ``stability`` (0: none) and the seed of every random draw.
    alpha, level
        the false-discovery rate of ``flagged`` and ``flagged_vs_controls``; the level of the intervals.
    permutations
        label shuffles for the null of MaxSkew and MinSkew (``p_max_skew``, ``max_skew_null``, ...).
    ties
        ``"index"`` (exactly k images, ties at the k-th score broken by the lower image index) or
        ``"keep-all"`` (every image tied with the k-th score kept, shares still ``count / k``).
    neutral
        optional ``(N,)`` similarities of a neutral prompt ("a photo of a person"): the
        ``skew_vs_neutral`` column measures each word against what it retrieves (NaN without it).
    controls
        optional ``(M, N)`` similarities of control queries (neutral and nonsense words): each
        group's count is then also tested against the controls' counts (``p_vs_controls``, a
        beta-binomial fitted to them by moments), which asks whether the word retrieves the group
        more than queries with no meaning do, not only more than random images.
    categories, prompts, files
        optional: each word's categories and prompts (mappings from word, or sequences in the
        words' order; a word without categories is in ``"(all words)"``), and each image's name
        (for ``top_files``; default: the image's column index).

    Returns
    -------
    ReportTables
        ``.groups``, ``.words`` and ``.summary`` with exactly the columns and values that
        ``clipprobe report`` writes for the same inputs and seed.
    """
    check_settings(alpha=alpha, bootstrap=bootstrap, seed=seed, reference=reference, permutations=permutations,
                   ties=ties)
    words = [str(w) for w in words]
    seen: set[str] = set()
    for w in words:
        if w in seen:
            raise DataError(MSG_DUPLICATE_WORDS.format(word=w))
        seen.add(w)
    part = score_words(scores, labels, words=words, k=k, attributes=attributes, reference=reference,
                       bootstrap=bootstrap, seed=seed, level=level, permutations=permutations, ties=ties,
                       neutral=neutral, controls=controls, prompts=prompts, files=files)
    return finish_tables([part], k=k, alpha=alpha, categories=categories)


__all__ = [
    "GROUP_COLUMNS", "ProbeLabels", "ReportTables", "SUMMARY_COLUMNS", "WORD_COLUMNS", "WordScores",
    "controls_ran", "encode_labels", "finish_tables", "flag_mask", "headline_flag", "probe_scores", "score_words",
    "summarise",
]
