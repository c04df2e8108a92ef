"""The So-B-IT retrieval probe on arrays: word x image similarities and image labels in, report tables out.

:func:`probe_scores` is the function everything else builds on. It takes a ``(W, N)`` array of
similarities (one row per word, one column per image, from any model or pipeline) and a label table
(one row per image, one column per attribute) and returns the very tables ``clipprobe report``
writes (``groups.parquet``, ``words.parquet``, ``summary.csv``): same columns, same values for the
same inputs and seed. The report computes its words in resumable chunks with :func:`score_words`
and joins them with :func:`finish_tables`; :func:`probe_scores` is the two in one call.

The top-k of a word is its ``k`` highest scores, ties broken by the lower image index
(:func:`clipprobe.analysis.metrics.rank_topk`); the bootstrap resamples images with the same rule.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Sequence

from clipprobe.errors import DataError, UsageError, one_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

REFERENCES = ("base", "uniform")
CATEGORY_SEP = "; "
NO_CATEGORY = "(all words)"     # the category of a word when none is given
TOP_FILES_KEPT = 25

# The report's tables, column by column (report/store.py writes and checks them).
GROUP_COLUMNS = (
    "word", "category", "attribute", "group", "k", "count", "share", "base_share", "skew",
    "p_over", "p_under", "q_over", "flagged", "share_ci_low", "share_ci_high",
    "skew_ci_low", "skew_ci_high", "c_asc", "skew_vs_neutral",
)
WORD_COLUMNS = (
    "word", "category", "attribute", "prompts", "max_skew", "min_skew", "norm_entropy",
    "kl_to_base", "ndkl", "top_group", "max_skew_ci_low", "max_skew_ci_high",
    "norm_entropy_ci_low", "norm_entropy_ci_high", "stability", "top_files", "n_flagged",
)
SUMMARY_COLUMNS = (
    "category", "attribute", "n_words", "mean_norm_entropy", "mean_norm_entropy_ci_low",
    "mean_norm_entropy_ci_high", "share_flagged", "top_groups",
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


@dataclasses.dataclass(frozen=True)
class ReportTables:
    """The tables of one probe: ``groups`` (one row per word, attribute and group), ``words`` (one row
    per word and attribute), ``summary`` (one row per category and attribute).

    ``entropy_samples`` is the bootstrap distribution of each word's normalised entropy,
    ``(attributes, resamples, words)`` float32 (empty without a bootstrap); the summary's
    per-category intervals are computed from it.
    """

    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    summary: "pd.DataFrame"
    attributes: tuple[str, ...]
    k: int
    alpha: float
    entropy_samples: "np.ndarray"


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
    adjustment yet; :func:`finish_tables` adds ``q_over``, ``flagged``, ``n_flagged`` and the summary)."""

    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    entropy_samples: "np.ndarray"   # (attributes, resamples, words)


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


def check_settings(*, alpha: float = 0.05, bootstrap: int = 0, seed: int = 0, reference: str = "base") -> None:
    """Refuse settings outside their range (the same checks as ``clipprobe report``, made first)."""
    if reference not in REFERENCES:
        raise one_of(reference, REFERENCES, "reference")
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


def _per_word(value, words: Sequence[str], default) -> list:
    if value is None:
        return [default() for _ in words]
    if isinstance(value, Mapping):
        return [value.get(w, default()) for w in words]
    value = list(value)
    if len(value) != len(words):
        raise DataError(f"{len(value)} value(s) for {len(words)} word(s)")
    return value


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
    neutral=None,
    prompts=None,
    files: Sequence[str] | None = None,
) -> WordScores:
    """Point estimates, tests and bootstrap intervals of some words (see :func:`probe_scores`).

    Each word's numbers depend only on its own row of ``scores`` and on the seed, so words can be
    scored in chunks and the chunks joined by :func:`finish_tables`.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.bootstrap import bootstrap_counts, bootstrap_intervals, bootstrap_metrics
    from clipprobe.analysis.metrics import c_asc, check_k, point_estimates, rank_topk
    from clipprobe.analysis.significance import hypergeom_p

    check_settings(bootstrap=bootstrap, seed=seed, reference=reference)
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
    if files is not None and len(files) != n_images:
        raise DataError(MSG_FILES.format(n_files=len(files), n_images=n_images))
    prompt_lists = _per_word(prompts, words, list)
    attributes = lab.attributes

    ids = rank_topk(s, k)
    boot = None
    if bootstrap > 0:
        boot = bootstrap_counts(s, dict(lab.codes), {a: len(lab.names[a]) for a in attributes}, k,
                                n_boot=int(bootstrap), seed=int(seed))
    top = ids[:, :TOP_FILES_KEPT]
    top_files = ([[str(files[i]) for i in row] for row in top] if files is not None
                 else [[str(int(i)) for i in row] for row in top])
    group_frames, word_rows, entropy = [], [], []
    for a in attributes:
        codes, groups = lab.codes[a], lab.names[a]
        g_n = len(groups)
        est = point_estimates(ids, codes, g_n, reference=reference)
        if neutral_ids is not None:
            vs_neutral = point_estimates(ids, codes, g_n, reference="neutral", neutral_ids=neutral_ids)["skew"]
        else:
            vs_neutral = np.full((n_words, g_n), np.nan)
        sizes = np.bincount(codes, minlength=g_n)
        p_over, p_under = hypergeom_p(est["count"], sizes[None, :], n_images, k)
        casc = c_asc(s, codes, g_n)
        if boot is not None:
            samples = bootstrap_metrics(boot[a], reference=reference)
            ci = bootstrap_intervals(boot[a], top_group=est["top_group"], reference=reference, level=level,
                                     samples=samples)
            entropy.append(samples["norm_entropy"].astype(np.float32))   # (B, W), for category means
        else:
            nan_wg = np.full((n_words, g_n), np.nan)
            nan_w = np.full(n_words, np.nan)
            ci = {"share_ci_low": nan_wg, "share_ci_high": nan_wg, "skew_ci_low": nan_wg,
                  "skew_ci_high": nan_wg, "max_skew_ci_low": nan_w, "max_skew_ci_high": nan_w,
                  "norm_entropy_ci_low": nan_w, "norm_entropy_ci_high": nan_w, "stability": nan_w}
        present = np.flatnonzero(sizes > 0)
        names = [groups[i] for i in present]
        for w, word in enumerate(words):
            group_frames.append(pd.DataFrame({
                "word": word, "attribute": a, "group": names, "k": k,
                "count": est["count"][w][present].astype(np.int64),
                "share": est["share"][w][present],
                "base_share": est["base_share"][w][present],
                "skew": est["skew"][w][present],
                "p_over": p_over[w][present], "p_under": p_under[w][present],
                "share_ci_low": ci["share_ci_low"][w][present], "share_ci_high": ci["share_ci_high"][w][present],
                "skew_ci_low": ci["skew_ci_low"][w][present], "skew_ci_high": ci["skew_ci_high"][w][present],
                "c_asc": casc[w][present], "skew_vs_neutral": vs_neutral[w][present],
            }))
            word_rows.append({
                "word": word, "attribute": a, "prompts": list(prompt_lists[w]),
                "max_skew": float(est["max_skew"][w]), "min_skew": float(est["min_skew"][w]),
                "norm_entropy": float(est["norm_entropy"][w]), "kl_to_base": float(est["kl_to_base"][w]),
                "ndkl": float(est["ndkl"][w]), "top_group": groups[int(est["top_group"][w])],
                "max_skew_ci_low": float(ci["max_skew_ci_low"][w]),
                "max_skew_ci_high": float(ci["max_skew_ci_high"][w]),
                "norm_entropy_ci_low": float(ci["norm_entropy_ci_low"][w]),
                "norm_entropy_ci_high": float(ci["norm_entropy_ci_high"][w]),
                "stability": float(ci["stability"][w]), "top_files": top_files[w],
            })
    ent = np.stack(entropy) if entropy else np.zeros((0, 0, n_words), np.float32)
    return WordScores(groups=pd.concat(group_frames, ignore_index=True), words=pd.DataFrame(word_rows),
                      entropy_samples=ent)


def finish_tables(parts: Sequence[WordScores], *, k: int, alpha: float = 0.05, level: float = 0.95,
                  categories=None) -> ReportTables:
    """Join scored chunks of words: categories, Benjamini-Hochberg over every row (``q_over``,
    ``flagged = q_over < alpha``), ``n_flagged`` per word and attribute, and the per-category summary.

    ``categories`` maps a word to its categories (a string, joined by ``"; "``, or a sequence).
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.significance import bh_adjust

    check_settings(alpha=alpha)
    if not parts:
        raise DataError("no words to report")
    groups = pd.concat([p.groups for p in parts], ignore_index=True)
    words = pd.concat([p.words for p in parts], ignore_index=True)
    with_samples = [p.entropy_samples for p in parts if p.entropy_samples.size]
    entropy = (np.concatenate(with_samples, axis=2) if len(with_samples) == len(parts)
               else np.zeros((0, 0, 0), np.float32))
    word_order = list(dict.fromkeys(words["word"]))
    attributes = tuple(dict.fromkeys(words["attribute"]))
    # One row order however the words were chunked: attribute by attribute, words in their order.
    rank = {(a, w): i for i, (a, w) in enumerate((a, w) for a in attributes for w in word_order)}
    groups = groups.iloc[np.argsort([rank[k] for k in zip(groups["attribute"], groups["word"])],
                                    kind="stable")].reset_index(drop=True)
    words = words.iloc[np.argsort([rank[k] for k in zip(words["attribute"], words["word"])],
                                  kind="stable")].reset_index(drop=True)
    joined = {w: (CATEGORY_SEP.join(c) if isinstance(c, (list, tuple)) else str(c)) or NO_CATEGORY
              for w, c in zip(word_order, _per_word(categories, word_order, str))}
    groups["category"] = groups["word"].map(joined)
    words["category"] = words["word"].map(joined)
    groups["q_over"] = bh_adjust(groups["p_over"].to_numpy())
    groups["flagged"] = groups["q_over"] < alpha
    n_flagged = groups.groupby(["word", "attribute"], sort=False)["flagged"].sum()
    words["n_flagged"] = [int(n_flagged.get((w, a), 0)) for w, a in zip(words["word"], words["attribute"])]
    groups = groups[list(GROUP_COLUMNS)]
    words = words[list(WORD_COLUMNS)]
    summary = summarise(groups, words, entropy, attributes, word_order, level)
    return ReportTables(groups=groups, words=words, summary=summary, attributes=attributes, k=int(k),
                        alpha=float(alpha), entropy_samples=entropy)


def summarise(groups: "pd.DataFrame", words: "pd.DataFrame", entropy: "np.ndarray", attributes: Sequence[str],
              word_order: list[str], level: float) -> "pd.DataFrame":
    """Per category and attribute: mean normalised entropy with its bootstrap interval, share of
    flagged words, and the groups with the highest mean skew among the category's words."""
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.bootstrap import percentile_interval

    position = {w: i for i, w in enumerate(word_order)}
    attributes = list(attributes)
    rows = []
    exploded = words.assign(category=words["category"].str.split(CATEGORY_SEP)).explode("category")
    g_exploded = groups.assign(category=groups["category"].str.split(CATEGORY_SEP)).explode("category")
    for (category, attribute), part in exploded.groupby(["category", "attribute"], sort=False):
        a = attributes.index(attribute)
        idx = [position[w] for w in part["word"]]
        lo = hi = float("nan")
        if entropy.size:
            samples = np.nanmean(entropy[a][:, idx], axis=1)
            low, high = percentile_interval(samples[:, None], level)
            lo, hi = float(low[0]), float(high[0])
        gpart = g_exploded[(g_exploded["category"] == category) & (g_exploded["attribute"] == attribute)]
        mean_skew = gpart.groupby("group", sort=False)["skew"].mean().sort_values(ascending=False)
        top = "; ".join(f"{g} ({s:+.2f})" for g, s in mean_skew.head(3).items())
        rows.append({"category": category, "attribute": attribute, "n_words": len(part),
                     "mean_norm_entropy": float(part["norm_entropy"].mean()),
                     "mean_norm_entropy_ci_low": lo, "mean_norm_entropy_ci_high": hi,
                     "share_flagged": float((part["n_flagged"] > 0).mean()), "top_groups": top})
    return pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))


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
    neutral=None,
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
        resamples of the image set for the intervals (0: no intervals) and their seed.
    alpha, level
        the false-discovery rate of ``flagged``; the level of the intervals.
    neutral
        optional ``(N,)`` similarities of a neutral prompt ("a photo of a person"): the
        ``skew_vs_neutral`` column measures each word against what it retrieves (NaN without it).
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
    check_settings(alpha=alpha, bootstrap=bootstrap, seed=seed, reference=reference)
    words = [str(w) for w in words]
    seen: set[str] = set()
    for w in words:
        if w in seen:
            raise DataError(MSG_DUPLICATE_WORDS.format(word=w))
        seen.add(w)
    part = score_words(scores, labels, words=words, k=k, attributes=attributes, reference=reference,
                       bootstrap=bootstrap, seed=seed, level=level, neutral=neutral, prompts=prompts, files=files)
    return finish_tables([part], k=k, alpha=alpha, level=level, categories=categories)


__all__ = [
    "GROUP_COLUMNS", "ProbeLabels", "ReportTables", "SUMMARY_COLUMNS", "WORD_COLUMNS", "WordScores",
    "encode_labels", "finish_tables", "probe_scores", "score_words", "summarise",
]
