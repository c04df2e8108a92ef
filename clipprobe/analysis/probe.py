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
import logging
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
MSG_ORDER = "order: expected an array of image indices shaped like the scores {expected}, got {shape}"
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
    from scipy.stats import binom

    from clipprobe.analysis.significance import betabinom_sf

    c = np.asarray(counts)
    kk = np.broadcast_to(np.asarray(k), c.shape)
    over = np.isfinite(a) & (a > 0) & (b > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_bb = betabinom_sf(c - 1, kk, np.where(over, a, 1.0), np.where(over, b, 1.0))    # scipy's numbers
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
    order=None,
) -> WordScores:
    """Point estimates, tests and intervals of some words (see :func:`probe_scores`).

    Each word's numbers depend only on its own row of ``scores``, on the controls and on the seed,
    so words can be scored in chunks and the chunks joined by :func:`finish_tables`. ``order``: each
    row's image indices best first (``rank_topk(scores, N)``: ties by the lower index), where the caller
    has it already.
    """
    import numpy as np

    check_settings(bootstrap=bootstrap, seed=seed, reference=reference, permutations=permutations, ties=ties)
    s = _as_scores(scores)
    lab = encode_labels(labels, attributes)
    if lab.n_images != s.shape[1]:
        raise DataError(MSG_LABEL_ROWS.format(n_labels=lab.n_images, n_images=s.shape[1]))
    scored = score_blocks(s, lab, np.zeros(s.shape[1], dtype=np.int64), [lab.attributes], words=words, k=k,
                          reference=reference, bootstrap=bootstrap, seed=seed, level=level, permutations=permutations,
                          ties=ties, neutral=neutral, controls=controls, prompts=prompts, files=files, order=order)
    return WordScores(groups=scored.groups, words=scored.words)


@dataclasses.dataclass(frozen=True)
class ScoredBlocks:
    """:func:`score_blocks`' tables, block after block (in each block attribute by attribute, words in
    their order, the present groups in their order), with each row's block; ``word_row`` is the row of
    ``words`` that each row of ``groups`` belongs to; ``counts[b][a]`` the ``(W, G)`` top-k counts,
    ``sizes[b][a]`` the ``(G,)`` images per group, ``drawn[b][a]`` the ``(W,)`` images retrieved and
    ``control_counts[b][a]`` the control queries' ``(C, G)`` top-k counts (empty without controls)."""

    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    group_block: "np.ndarray"
    word_block: "np.ndarray"
    word_row: "np.ndarray"
    counts: list
    sizes: list
    drawn: list
    control_counts: list


def _block_orders(order, blocks, n_blocks: int) -> list:
    """Each block's ``(W, n_b)`` image indices in each row's rank order: the rows of ``order`` with the
    other blocks' images taken out (a stable sort by block keeps the order within a block)."""
    import numpy as np

    n_words, n_images = order.shape
    if n_blocks == 1 and (blocks == 0).all():
        return [order]
    dtype = np.int8 if n_blocks < 127 else (np.int16 if n_blocks < 32767 else np.int64)
    code = np.where(blocks >= 0, blocks, n_blocks).astype(dtype)
    by_block = np.take_along_axis(order, np.argsort(code[order], axis=1, kind="stable"), axis=1)
    sizes = np.bincount(code, minlength=n_blocks + 1)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    return [by_block[:, starts[b]:starts[b + 1]] for b in range(n_blocks)]


def score_blocks(
    scores,
    lab: ProbeLabels,
    blocks,
    attributes: Sequence[Sequence[str]],
    *,
    words: Sequence[str],
    k: int,
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
    order=None,
) -> ScoredBlocks:
    """:func:`score_words` on several blocks of images at once, each block probed on its own images and
    label rows as if it were the whole dataset (its own base shares, ``N`` and tests).

    ``blocks`` is ``(N,)``: each image's block ``0..B-1`` (-1: in none); ``attributes[b]`` the attributes
    probed in block ``b`` (the seeds of its permutation nulls follow their positions there). The ranking
    is sorted once (``order``, or ``rank_topk(scores, N)``) and each block's ranking taken from it; the
    statistics run over every block's rows together, each the same function of the same numbers as for a
    block alone. Rows come block after block, as :func:`score_words` would give them block by block.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.bootstrap import bootstrap_counts, bootstrap_metrics
    from clipprobe.analysis.extremes import extreme_skew_null
    from clipprobe.analysis.intervals import (SHARE_INTERVAL_MAX_FRACTION, miller_madow, share_interval, skew_interval,
                                              skew_interval_vs_base)
    from clipprobe.analysis.metrics import (c_asc_attributes, check_k, group_stats, ndkl, rank_topk, reference_shares,
                                            topk_counts, unique_columns, word_stats)
    from clipprobe.analysis.significance import hypergeom_p

    check_settings(bootstrap=bootstrap, seed=seed, reference=reference, permutations=permutations, ties=ties)
    s = _as_scores(scores)
    n_words, n_images = s.shape
    words = [str(w) for w in words]
    if len(words) != n_words:
        raise DataError(MSG_WORDS.format(n_words=len(words), n_rows=n_words))
    if lab.n_images != n_images:
        raise DataError(MSG_LABEL_ROWS.format(n_labels=lab.n_images, n_images=n_images))
    blocks = np.asarray(blocks, dtype=np.int64)
    n_blocks = len(attributes)
    members = [np.flatnonzero(blocks == b) for b in range(n_blocks)]
    for idx in members:
        k = check_k(k, int(idx.size))
    if neutral is not None:
        nv = np.asarray(neutral)
        if nv.shape != (n_images,):
            raise DataError(MSG_NEUTRAL.format(n_images=n_images, shape=nv.shape))
    control_scores = None
    if controls is not None:
        control_scores = np.asarray(controls)
        if control_scores.ndim != 2 or control_scores.shape[1] != n_images or len(control_scores) < 2:
            raise DataError(MSG_CONTROLS.format(n_images=n_images, shape=control_scores.shape))
    if files is not None and len(files) != n_images:
        raise DataError(MSG_FILES.format(n_files=len(files), n_images=n_images))
    prompt_lists = [list(p) for p in _per_word(prompts, words, list)]     # a word's rows share its list
    if order is None:
        order = rank_topk(s, n_images)
    else:
        order = np.asarray(order)
        if order.shape != s.shape:
            raise DataError(MSG_ORDER.format(shape=order.shape, expected=s.shape))
    whole = n_blocks == 1 and members[0].size == n_images
    rankings = _block_orders(order, blocks, n_blocks)
    position = np.zeros(n_images, dtype=np.int64)             # an image's index within its block
    for idx in members:
        position[idx] = np.arange(idx.size)
    all_attributes = [a for a in lab.attributes if any(a in attrs for attrs in attributes)]
    # What every attribute of a block shares: its columns, its top-k, its controls' top-k, its bootstrap.
    cols, ids, local_ids, control_s, control_ids, neutral_ids, boots, top_files = [], [], [], [], [], [], [], []
    file_names = None if files is None else np.asarray([str(f) for f in files], dtype=object)
    for b, idx in enumerate(members):
        s_b = s if whole else s[:, idx]
        cols.append(s_b)
        ids.append(rankings[b][:, :k])
        local_ids.append(position[ids[b]] if not whole else ids[b])
        if control_scores is not None:
            control_s.append(control_scores if whole else control_scores[:, idx])
            control_ids.append(rank_topk(control_s[b], k))
        if neutral is not None:
            neutral_ids.append(rank_topk((nv if whole else nv[idx])[None, :], k)[0])
        boots.append(bootstrap_counts(s_b, {a: lab.codes[a][idx] for a in attributes[b]},
                                      {a: len(lab.names[a]) for a in attributes[b]}, k, n_boot=int(bootstrap),
                                      seed=int(seed)) if bootstrap > 0 else None)
        top = rankings[b][:, :TOP_FILES_KEPT]
        top_files.append(file_names[top].tolist() if file_names is not None else position[top].astype(str).tolist())
    casc = []                      # C-ASC of every attribute of a block, from one pass over its similarities
    for b, idx in enumerate(members):
        codes_b = [lab.codes[a] if whole else lab.codes[a][idx] for a in attributes[b]]
        casc.append(dict(zip(attributes[b], c_asc_attributes(cols[b], codes_b,
                                                             [len(lab.names[a]) for a in attributes[b]]))))
    group_chunks: dict = {}
    word_chunks: dict = {}
    counts_out = [dict() for _ in range(n_blocks)]
    sizes_out = [dict() for _ in range(n_blocks)]
    drawn_out = [dict() for _ in range(n_blocks)]
    control_out = [dict() for _ in range(n_blocks)]
    all_names = [str(g) for a in all_attributes for g in lab.names[a]]
    name_starts = np.cumsum([0] + [len(lab.names[a]) for a in all_attributes]).tolist()
    for a_code, a in enumerate(all_attributes):
        name_start = name_starts[a_code]
        in_a = [b for b in range(n_blocks) if a in attributes[b]]
        codes, names = lab.codes[a], lab.names[a]
        g_n = len(names)
        per = {key: [] for key in ("counts", "ids_counts", "drawn", "sizes", "ref", "n", "lab_top", "vs_neutral",
                                   "casc", "nd_full", "c_mean", "c_a", "c_b")}
        for b in in_a:
            idx = members[b]
            codes_b = codes if whole else codes[idx]
            sizes = np.bincount(codes_b, minlength=g_n)
            base = sizes / codes_b.size
            if (sizes == 0).any():
                logging.getLogger("clipprobe.analysis.metrics").info("groups %s are absent from the dataset and are excluded from skew and entropy",
                         np.flatnonzero(sizes == 0).tolist())
            ref = reference_shares(reference, base_share=base)
            ids_counts = topk_counts(ids[b], codes, g_n)
            if ties == "index":
                counts, drawn = ids_counts, np.full(n_words, k, dtype=np.int64)
            else:
                counts, drawn = _kept_counts(cols[b], local_ids[b], codes_b, g_n, k, ties)
            if neutral is not None:
                neutral_counts = topk_counts(neutral_ids[b][None, :], codes_b, g_n)[0]
                n_ref = reference_shares("neutral", base_share=base, neutral_counts=neutral_counts, k=k)
                vs_neutral = np.where(base > 0, group_stats(ids_counts, n_ref, k)["skew"], np.nan)
            else:
                vs_neutral = np.full((n_words, g_n), np.nan)
            if control_scores is not None:
                c_counts, _ = _kept_counts(control_s[b], control_ids[b], codes_b, g_n, k, ties)
                c_mean, c_a, c_b = control_null(c_counts, k)
                control_out[b][a] = c_counts
            else:
                c_mean = c_a = c_b = np.full(g_n, np.nan)
            for key, value in (("counts", counts), ("ids_counts", ids_counts), ("drawn", drawn),
                               ("sizes", np.broadcast_to(sizes, (n_words, g_n))),
                               ("ref", np.broadcast_to(ref, (n_words, g_n))),
                               ("n", np.full(n_words, codes_b.size, dtype=np.int64)),
                               ("lab_top", codes[ids[b]]), ("vs_neutral", vs_neutral),
                               ("casc", casc[b][a]),
                               ("nd_full", ndkl(rankings[b], ref, g_n, codes=codes)),
                               ("c_mean", np.broadcast_to(c_mean, (n_words, g_n))),
                               ("c_a", np.broadcast_to(c_a, (n_words, g_n))),
                               ("c_b", np.broadcast_to(c_b, (n_words, g_n)))):
                per[key].append(value)
            counts_out[b][a], sizes_out[b][a], drawn_out[b][a] = counts, sizes, drawn
        cat = {key: np.concatenate(value) for key, value in per.items()}
        counts, ids_counts, drawn, sizes, ref, n_rows = (cat[key] for key in ("counts", "ids_counts", "drawn", "sizes",
                                                                            "ref", "n"))
        present_mask = sizes > 0
        # point estimates, as metrics.point_estimates computes them, on every block's rows at once
        g_stats = group_stats(ids_counts, ref, k)
        est = word_stats(ids_counts, ref, k, present=present_mask, topk_labels=cat["lab_top"])
        est.update(count=ids_counts, share=g_stats["share"], skew=np.where(present_mask, g_stats["skew"], np.nan))
        if ties != "index":     # the tied images count too; shares stay count / k (oxai's convention)
            g = group_stats(counts, ref, k)
            w_stats = word_stats(counts, ref, k, present=present_mask, topk_labels=cat["lab_top"])
            est = {**est, "count": counts, "share": g["share"], "skew": np.where(present_mask, g["skew"], np.nan),
                   **{key: w_stats[key] for key in ("max_skew", "min_skew", "norm_entropy", "kl_to_base",
                                                      "top_group")}}
        n_all = len(counts)
        p_over, p_under = np.empty((n_all, g_n)), np.empty((n_all, g_n))
        for draws in np.unique(drawn):
            rows = drawn == draws
            p_over[rows], p_under[rows] = hypergeom_p(counts[rows], sizes[rows], n_rows[rows, None], int(draws))
        max_null, min_null, p_max, p_min = (np.empty(n_all) for _ in range(4))
        for j, b in enumerate(in_a):
            block_rows = slice(j * n_words, (j + 1) * n_words)
            d_b = drawn[block_rows]
            for draws in np.unique(d_b):
                rows = np.flatnonzero(d_b == draws) + j * n_words
                null = extreme_skew_null(sizes[rows[0]], k, ref[rows[0]], n_perm=permutations,
                                         seed=int(seed) * 1000 + list(attributes[b]).index(a), draws=int(draws))
                max_null[rows], min_null[rows] = float(np.mean(null.max_skew)), float(np.mean(null.min_skew))
                p_max[rows], p_min[rows] = null.p_max(est["max_skew"][rows]), null.p_min(est["min_skew"][rows])
        share_lo, share_hi = share_interval(np.minimum(counts, k), k, level=level)
        withheld = k > SHARE_INTERVAL_MAX_FRACTION * n_rows             # not measured to cover there
        share_lo[withheld], share_hi[withheld] = np.nan, np.nan
        if reference == "base":
            skew_lo, skew_hi = skew_interval_vs_base(counts, k, sizes, n_rows, level=level, drawn=drawn)
        else:
            skew_lo, skew_hi = skew_interval(share_lo, share_hi, ref)
        mm = miller_madow(est["norm_entropy"], counts, present_mask, k)
        stability = np.full(n_all, np.nan)
        for j, b in enumerate(in_a):
            if boots[b] is not None:
                rows = slice(j * n_words, (j + 1) * n_words)
                samples = bootstrap_metrics(boots[b][a], reference=reference)
                stability[rows] = (samples["top_group"] == est["top_group"][rows][None, :]).mean(axis=0)
        if control_scores is not None:
            # the beta-binomial tail has no closed form: once per distinct (count, block, group)
            key = np.stack([counts.ravel(), np.repeat(np.arange(n_all) // n_words, g_n),
                            np.tile(np.arange(g_n), n_all)])
            cells, inverse = unique_columns(key)
            rows = cells[1] * n_words
            values = p_vs_controls(cells[0], k, cat["c_mean"][rows, cells[2]], cat["c_a"][rows, cells[2]],
                                   cat["c_b"][rows, cells[2]])
            p_ctrl = values[inverse.ravel()].reshape(n_all, g_n)
        else:
            p_ctrl = np.full((n_all, g_n), np.nan)
        for j, b in enumerate(in_a):
            rows = slice(j * n_words, (j + 1) * n_words)
            present = np.flatnonzero(present_mask[j * n_words])
            n_present = len(present)

            def per_group(values, rows=rows, present=present) -> "np.ndarray":   # the present groups, word by word
                return np.asarray(values)[rows][:, present].ravel()

            group_chunks[(b, a)] = {
                # text columns as codes: into words, all_attributes and the attributes' names laid end to end
                "word": np.repeat(np.arange(n_words), n_present), "attribute": np.full(n_words * n_present, a_code),
                "group": np.tile(present + name_start, n_words),
                "k": np.full(n_words * n_present, k, dtype=np.int64),
                "count": per_group(est["count"]).astype(np.int64),
                "share": per_group(est["share"]), "base_share": per_group(sizes / n_rows[:, None]),
                "skew": per_group(est["skew"]),
                "p_over": per_group(p_over), "p_under": per_group(p_under),
                "share_ci_low": per_group(share_lo), "share_ci_high": per_group(share_hi),
                "skew_ci_low": per_group(skew_lo), "skew_ci_high": per_group(skew_hi),
                "low_count": per_group(est["count"]) < LOW_COUNT,
                "c_asc": per_group(cat["casc"]), "skew_vs_neutral": per_group(cat["vs_neutral"]),
                "control_share": per_group(cat["c_mean"]), "p_vs_controls": per_group(p_ctrl),
            }
            word_chunks[(b, a)] = {
                "word": np.arange(n_words), "attribute": np.full(n_words, a_code),
                "prompts": prompt_lists,
                "max_skew": est["max_skew"][rows], "max_skew_null": max_null[rows],
                "max_skew_excess": est["max_skew"][rows] - max_null[rows], "p_max_skew": p_max[rows],
                "min_skew": est["min_skew"][rows], "min_skew_null": min_null[rows],
                "min_skew_excess": est["min_skew"][rows] - min_null[rows], "p_min_skew": p_min[rows],
                "norm_entropy": est["norm_entropy"][rows], "norm_entropy_mm": mm[rows],
                "kl_to_base": est["kl_to_base"][rows], "ndkl_at_k": est["ndkl"][rows],
                "ndkl_full": cat["nd_full"][rows],
                "top_group": np.asarray(est["top_group"][rows]) % g_n + name_start,     # names[top] (-1: the last)
                "stability": stability[rows], "n_retrieved": drawn[rows].astype(np.int64),
                "top_files": top_files[b],
            }
    keys = [(b, a) for b in range(n_blocks) for a in lab.attributes if a in attributes[b]]
    g_sizes = np.array([len(group_chunks[key]["word"]) for key in keys], dtype=np.int64)
    group_cols = {}
    for col in group_chunks[keys[0]]:
        group_cols[col] = np.concatenate([group_chunks[key][col] for key in keys])
    word_cols = {}
    for col in word_chunks[keys[0]]:
        if col in ("prompts", "top_files"):
            word_cols[col] = [row for key in keys for row in word_chunks[key][col]]
        else:
            word_cols[col] = np.concatenate([word_chunks[key][col] for key in keys])
    block_of = np.array([b for b, _ in keys], dtype=np.int64)
    n_present_of = g_sizes // n_words
    word_row = np.repeat(np.arange(len(keys) * n_words), np.repeat(n_present_of, n_words))
    for cols_, text in ((group_cols, {"word": words, "attribute": all_attributes, "group": all_names}),
                        (word_cols, {"word": words, "attribute": all_attributes, "top_group": all_names})):
        for col, names_ in text.items():
            cols_[col] = text_column(cols_[col], names_)
    return ScoredBlocks(groups=pd.DataFrame(group_cols), words=pd.DataFrame(word_cols),
                        group_block=np.repeat(block_of, g_sizes), word_block=np.repeat(block_of, n_words),
                        word_row=word_row, counts=counts_out, sizes=sizes_out, drawn=drawn_out,
                        control_counts=control_out)


def text_column(codes, names: Sequence[str]):
    """The column that pandas makes of ``np.asarray(names, dtype=object)[codes]`` (pandas' ``str`` dtype where
    that is its default, else object), made from the codes: pyarrow decodes them without a Python string
    per row."""
    import numpy as np
    import pandas as pd

    dtype = pd.Series(np.asarray(["x"], dtype=object)).dtype
    if isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow":
        import pyarrow as pa

        arr = pa.DictionaryArray.from_arrays(pa.array(np.asarray(codes, dtype=np.int32)),
                                             pa.array([str(n) for n in names], type=pa.large_string()))
        return pd.array(arr.dictionary_decode(), dtype=dtype)
    return np.asarray(list(names), dtype=object)[np.asarray(codes, dtype=np.int64)]


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
    word_index, attribute_index = pd.Index(word_order), pd.Index(attributes)

    def rank(frame) -> "np.ndarray":        # a row's (attribute, word) position in that order
        return (attribute_index.get_indexer(frame["attribute"]).astype(np.int64) * len(word_order)
                + word_index.get_indexer(frame["word"]))

    groups = groups.iloc[np.argsort(rank(groups), kind="stable")].reset_index(drop=True)
    words = words.iloc[np.argsort(rank(words), kind="stable")].reset_index(drop=True)
    lists = category_lists(categories, word_order)
    groups["category"] = [list(lists[w]) for w in groups["word"]]
    words["category"] = [list(lists[w]) for w in words["word"]]
    groups["q_over"] = bh_adjust(groups["p_over"].to_numpy())
    groups["flagged"] = groups["q_over"] < alpha
    groups["q_vs_controls"] = bh_adjust(groups["p_vs_controls"].to_numpy())
    # null (not False) where no control test ran: a nullable boolean, and a nullable count per word
    groups["flagged_vs_controls"] = (groups["q_vs_controls"] < alpha).astype("boolean").mask(
        groups["q_vs_controls"].isna())
    keys = pd.MultiIndex.from_arrays([words["word"], words["attribute"]])
    by = groups.groupby(["word", "attribute"], sort=False)
    for column, flag in (("n_flagged", "flagged"), ("n_flagged_vs_controls", "flagged_vs_controls")):
        words[column] = by[flag].sum().reindex(keys).fillna(0).to_numpy().astype(np.int64)
    tested = by["q_vs_controls"].count().reindex(keys).fillna(0).to_numpy() > 0
    counted = pd.array(words["n_flagged_vs_controls"].to_numpy(), dtype="Int64")
    counted[~tested] = pd.NA
    words["n_flagged_vs_controls"] = counted
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
