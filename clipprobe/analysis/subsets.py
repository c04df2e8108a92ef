"""Bias measured on subsets of the data: is a model's bias global, or does it live in one corner?

Ramos et al. ("From Global to Local: Social Bias Transfer in CLIP", ICCVW 2025, arXiv 2508.17750)
find that the same model looks more or less biased depending on the slice of the face dataset it
is probed on, and that rankings of models by bias do not carry over consistently. This module is the
array side of that analysis, pure functions with no I/O:

* **Assignments** (:class:`Assignment`): each image in one subset or in none. From k-means labels
  (:func:`from_clusters`: clusters below ``min_size`` merged into their nearest cluster, or dropped),
  from a label column or an attribute (:func:`from_values`), or from a user's table
  (:func:`from_table`: every image of the dataset exactly once, no unknown image).
* **Local metrics** (:func:`subset_scores`): within each subset, the report's own statistics
  (:func:`clipprobe.analysis.probe.score_blocks`: :func:`~clipprobe.analysis.probe.score_words` on the
  subset's columns of the score matrix and its label rows, every subset at once, each subset's ranking
  taken from the one sort of each word's scores: counts, shares, skews against the subset's base shares, the published intervals, the
  hypergeometric test, the control-query test, the MaxSkew/MinSkew permutation null), with
  Benjamini-Hochberg over the whole family of local rows; the skew against the global base shares
  beside it; and the KL divergence of recall@k from uniform (:func:`kl_recall`), globally and per
  subset, with its permutation null.
* **Dispersion** (:func:`dispersion`): per word and attribute, the spread of local values across
  subsets (range, IQR) and whether the most over-represented group changes from subset to subset,
  with the share of subsets where it differs from the global top group compared against the control
  queries' shares (:func:`changes_vs_controls`; see "Top-group changes" below).
* **Transfer across models** (:func:`correlate_measures`, :func:`ranking_transfer`): Spearman rank
  correlations between per-model bias measures (the global one against each subset's, or any two a
  user supplies), with intervals over models and permutation p-values.

**k within a subset.** With ``k_mode="fixed"`` (default) every subset is probed with the report's
``k``; a subset of ``k`` images or fewer has no top-k that is not the whole subset, so it is skipped
and a note says so. With ``k_mode="fraction"`` a subset of ``n`` of the ``N`` images is probed with
``k_s = max(1, round(k * n / N))``: the same top fraction of the subset as the global probe takes of
the dataset (the same estimand, with far fewer images per test, hence far less power). Where a subset's
top-k is more than half of it, the share interval is withheld as in the report
(:data:`clipprobe.analysis.intervals.SHARE_INTERVAL_MAX_FRACTION`), and with it the interval of the skew
against the global base shares, which is made from it; the skew interval against the subset's own base
shares stays (measured: 0.93-0.98 at 150 images and k = 100).

**KL of recall@k.** ``r_a`` = the share of group ``a``'s images (of the subset) that are in the
top-k, ``p_a = r_a / sum r``, ``kl_recall = KL(p || uniform) = sum_a p_a ln(L p_a)`` over the ``L``
groups present (nats; 0 when every group is recalled at the same rate; NaN when fewer than two groups
are present). Since ``r_a`` is proportional to ``share_a / base_a``, it is the KL divergence from
uniform of the normalised share-to-base ratios. With nothing planted it is positive (a divergence of
noisy proportions), so like MaxSkew it comes with a permutation null: labels shuffled against the
images put a multivariate hypergeometric draw of labels in the top-k, the same for every word
(``kl_recall_null`` its mean, ``kl_recall_excess``, and the one-sided ``p_kl_recall``). No interval is
published for it (the statistic sits at its lower bound when nothing is planted, where the entropy
intervals of the report failed their coverage check).

This is this project's reading of Ramos et al.'s R@k bias measure, not a port of their code: a word's
query has no ground-truth image, so every image of group ``a`` counts as relevant to it and ``r_a`` is
the recall of that group. Under the other reading, R@k is retrieval recall in its usual sense (a caption
query is a hit when its own paired image is in the top-k) computed per group of the pictured person, and
its KL from uniform measures a gap in retrieval *accuracy* between groups; that needs image-caption
pairs, is not defined for the taxonomy's words, and its values are not comparable with ``kl_recall``.
(Nor is ``kl_recall`` the report's ``kl_to_base`` = KL(shares || base shares), which weights each group
by its share of the top-k rather than equally.)

**Top-group changes.** A word with no association at all changes its top group between subsets (its
top group is noise), so the share of words whose top group changes says nothing by itself. Each word's
``top_group_change_rate`` (the share of the subsets probed for the attribute where its local top group
differs from its global one) is compared with the same rate of each control query (nonsense and neutral
words, :mod:`clipprobe.analysis.probe`'s control queries) on the same subsets:
``p_changes_vs_controls = (1 + #{controls with a higher rate} + J) / (C + 1)``, ``J`` drawn uniformly
from ``0..T`` for the ``T`` controls with the same rate (seeded), so that under the null (the word is
exchangeable with the control queries) ``P(p <= a) = floor(a (C + 1)) / (C + 1)`` exactly, ties and
all; Benjamini-Hochberg over every (word, attribute) row gives ``q_changes_vs_controls`` and
``top_group_changes_vs_controls``. With ``C`` control queries no p-value is below ``1 / (C + 1)``.

**Intervals across models.** The Spearman correlation between two per-model measures gets a BCa
bootstrap interval over models (Efron 1987: models resampled with replacement, the acceleration from the
jackknife), published from :data:`MIN_MODELS_INTERVAL` models on. Its coverage was measured by
``benchmarks/bench_subsets.py --coverage rho`` (normal and t(3) copulas, 5 to 29 models, population
rho 0 to 0.9, 1000 samples per cell): 0.931-0.986 from 8 models on, the cells above 0.97 all at rho =
0.9 (conservative); with 5 models it fell to 0.73. Fisher's z with Bonett and Wright's (2000) variance
(``interval="fisher"``) covers 0.947-0.972 on the normal copula but 0.90 on the heavy-tailed one; the
percentile bootstrap 0.936-0.987 from 8 models (docs/probe.md, "Statistics"). p-values are permutation tests
(exact up to 8 models), computed from :data:`MIN_MODELS` models on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from typing import TYPE_CHECKING, Iterator, Mapping, Sequence

from clipprobe.errors import DataError, UsageError, did_you_mean, one_of

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

BY_KINDS = ("kmeans", "attribute", "column", "file")
SMALL_RULES = ("merge", "drop")
K_MODES = ("fixed", "fraction")
INTERVALS = ("bca", "fisher", "percentile")
GLOBAL = "all"                   # the ``subset`` of the global rows (``scope == "global"``)
SCOPES = ("global", "local")
NO_SUBSET = -1                   # the code of an image that is in no subset
MIN_MODELS = 4                   # fewer models: no correlation
MIN_MODELS_INTERVAL = 8          # fewer models: no interval (the BCa interval under-covered with 5)
EXACT_PERMUTATIONS_UP_TO = 8     # models; beyond, sampled permutations
DISPERSION_MEASURES = ("kl_recall", "max_skew_excess", "top_group_skew")
MODEL_STATISTICS = ("kl_recall", "max_skew_excess", "share_flagged")

KL_COLUMNS = ("kl_recall", "kl_recall_null", "kl_recall_excess", "p_kl_recall")
SUBSET_KEYS = ("scope", "subset", "n_images")
VS_GLOBAL_COLUMNS = ("global_base_share", "skew_vs_global", "skew_vs_global_ci_low", "skew_vs_global_ci_high")
INFO_COLUMNS = ("subset", "n_images", "k", "probed", "attributes", "note")
COMPOSITION_COLUMNS = ("subset", "attribute", "group", "count", "share", "dataset_share", "log_ratio")
DISPERSION_COLUMNS = (
    "word", "category", "attribute", "measure", "global", "n_subsets", "min", "q25", "median", "q75", "max",
    "range", "iqr", "subset_min", "subset_max", "top_group_global", "n_top_groups", "top_group_changes",
    "n_subsets_flagged", "flagged_top_groups", "flagged_top_group_changes",
    "top_group_change_rate", "p_changes_vs_controls", "q_changes_vs_controls", "top_group_changes_vs_controls",
)
CONTROL_CHANGE_COLUMNS = ("query", "attribute", "n_subsets", "top_group_global", "top_group_change_rate")
CORRELATION_COLUMNS = ("measure_a", "measure_b", "n_models", "rho", "ci_low", "ci_high", "ci_method", "p_value",
                       "q_value")
TRANSFER_COLUMNS = ("attribute", "statistic", "subset", "n_models", "rho", "ci_low", "ci_high", "ci_method",
                    "p_value", "q_value")

MSG_BY_FORM = "{name} must look like KIND:VALUE with KIND one of {kinds} (e.g. kmeans:20, attribute:age), got {value!r}"
MSG_BY_KIND = "unknown subset kind {kind!r}{hint} in {name} {value!r}; valid: {kinds}"
MSG_KMEANS_N = "kmeans: the number of clusters must be a whole number of at least 1, got {value!r}"
MSG_KMEANS_TOO_MANY = ("kmeans:{k} asks for more clusters than {n} image(s) allow with min_size={min_size} "
                       "(at most {most} cluster(s))")
MSG_MIN_SIZE = "min_size must be a whole number of at least 1 image, got {value!r}"
MSG_SMALL = "small must be 'merge' or 'drop', got {value!r}"
MSG_K_MODE = "k_mode must be 'fixed' or 'fraction', got {value!r}"
MSG_LENGTH = "assignment: {n} subset code(s) for {n_images} image(s) (columns of scores)"
MSG_NO_SUBSETS = "no subset has at least min_size={min_size} image(s) (the largest has {largest})"
MSG_NOTHING_PROBED = "no subset could be probed: {why}"
MSG_TABLE_COLUMNS = "{source}: needs a column 'image' (or 'file') and a column 'subset'; found {columns}"
MSG_TABLE_DUPLICATE = "{source}: image {image!r} is listed {n} times"
MSG_TABLE_UNKNOWN = "{source}: {n} image(s) are not in the dataset (first: {first!r})"
MSG_TABLE_MISSING = ("{source}: {n} image(s) of the dataset are not listed (first: {first!r}); list every image, "
                     "with an empty subset for an image in none")
MSG_COLUMN = "{what} {name!r} is not a column of the labels{hint}; columns: {columns}"
MSG_MEASURES_MODEL = "measures: needs a column 'model' and at least one numeric measure column; found {columns}"
MSG_MEASURES_DUPLICATE = "measures: model {model!r} is listed {n} times"
MSG_UNKNOWN_MEASURE = "measure {name!r} is not a column of the measures{hint}; columns: {columns}"
MSG_INTERVAL = "interval must be one of 'bca', 'fisher', 'percentile', got {value!r}"
MSG_N_BOOT = "n_boot must be a whole number of at least 100, got {value!r}"
MSG_LEVEL = "level must be between 0 and 1, got {value!r}"
MSG_CONTROL_WORDS = "control_words: {n} name(s) for {n_rows} row(s) of controls"


# ----------------------------------------------------------------------------------------------
# assignments


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Each image's subset: ``codes[i]`` is an index into ``names``, or -1 for an image in no subset.

    ``kind`` says where it came from (``kmeans``, ``attribute``, ``column``, ``file``); ``notes``
    what was merged or dropped; ``centroids`` the unit-length centre of each subset for k-means;
    ``dropped`` the ``(name, images)`` of each subset dropped below ``min_size`` (its images are in none).
    """

    codes: "np.ndarray"
    names: tuple[str, ...]
    kind: str = "file"
    notes: tuple[str, ...] = ()
    centroids: "np.ndarray | None" = None
    dropped: tuple[tuple[str, int], ...] = ()

    @property
    def n_images(self) -> int:
        return int(len(self.codes))

    @property
    def sizes(self) -> "np.ndarray":
        import numpy as np

        return np.bincount(self.codes[self.codes >= 0], minlength=len(self.names)).astype(np.int64)

    def members(self, index: int) -> "np.ndarray":
        """Image indices of subset ``index``, ascending (the tie rule of the top-k stays the report's)."""
        import numpy as np

        return np.flatnonzero(self.codes == index)

    def table(self, files: Sequence[str]) -> "pd.DataFrame":
        """``image, subset``: one row per image (an image in no subset has an empty subset)."""
        import numpy as np
        import pandas as pd

        if len(files) != self.n_images:
            raise DataError(MSG_LENGTH.format(n=self.n_images, n_images=len(files)))
        names = np.asarray(list(self.names) + [None], dtype=object)
        return pd.DataFrame({"image": [str(f) for f in files], "subset": names[self.codes]})


def parse_by(by: str, *, name: str = "by") -> tuple[str, "int | str"]:
    """``"kmeans:20"`` -> ``("kmeans", 20)``; ``"attribute:age"``, ``"column:NAME"``, ``"file:PATH"``.

    ``name`` is what messages call the setting (the CLI passes its flag).
    """
    text = str(by)
    kind, sep, value = text.partition(":")
    kind = kind.strip()
    kinds = ", ".join(BY_KINDS)
    if sep and kind not in BY_KINDS:
        raise UsageError(MSG_BY_KIND.format(kind=kind, hint=did_you_mean(kind, BY_KINDS), name=name, value=text,
                                            kinds=kinds))
    if kind == "kmeans":
        raw = value.strip()
        if not raw.isdigit() or int(raw) < 1:
            raise UsageError(MSG_KMEANS_N.format(value=raw))
        return kind, int(raw)
    if not sep or not value.strip():
        raise UsageError(MSG_BY_FORM.format(name=name, kinds=kinds, value=text))
    return kind, value if kind == "file" else value.strip()


def check_min_size(min_size) -> int:
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise UsageError(MSG_MIN_SIZE.format(value=min_size))
    return int(min_size)


def check_kmeans(n_clusters: int, n_images: int, min_size: int) -> None:
    """Refuse a number of clusters that the images cannot fill with ``min_size`` each."""
    min_size = check_min_size(min_size)
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, int) or n_clusters < 1:
        raise UsageError(MSG_KMEANS_N.format(value=n_clusters))
    most = int(n_images) // min_size
    if n_clusters > most:
        raise UsageError(MSG_KMEANS_TOO_MANY.format(k=n_clusters, n=n_images, min_size=min_size, most=most))


def _natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def from_values(values, *, min_size: int = 1, kind: str = "column", order: Sequence[str] | None = None
                ) -> Assignment:
    """One subset per distinct value (missing values: in no subset); subsets below ``min_size`` dropped.

    ``order`` fixes the order of the names (default: natural sort of the values).
    """
    import numpy as np
    import pandas as pd

    min_size = check_min_size(min_size)
    series = pd.Series(values).astype("object").reset_index(drop=True)
    missing = series.isna() | (series.astype(str).str.strip() == "")
    text = series.where(missing, series.astype(str))
    distinct = [str(v) for v in pd.unique(text[~missing])]
    names = [n for n in (order or []) if n in set(distinct)]
    names += sorted((v for v in distinct if v not in set(names)), key=_natural_key)
    lookup = {n: i for i, n in enumerate(names)}
    codes = np.fromiter((lookup[v] if not m else NO_SUBSET for v, m in zip(text, missing)), dtype=np.int64,
                        count=len(text))
    notes = []
    if missing.any():
        notes.append(f"{int(missing.sum())} image(s) have no value and are in no subset")
    return _drop_small(Assignment(codes, tuple(names), kind, tuple(notes)), min_size)


def _drop_small(assignment: Assignment, min_size: int) -> Assignment:
    """Drop subsets below ``min_size`` (their images go to no subset) and renumber the rest."""
    import numpy as np

    sizes = assignment.sizes
    keep = np.flatnonzero(sizes >= min_size)
    if keep.size == 0:
        raise DataError(MSG_NO_SUBSETS.format(min_size=min_size, largest=int(sizes.max()) if sizes.size else 0))
    notes = list(assignment.notes)
    dropped = list(assignment.dropped)
    for i in np.flatnonzero(sizes < min_size):
        notes.append(f"subset {assignment.names[i]!r} ({int(sizes[i])} images) is below min_size={min_size}: dropped")
        dropped.append((str(assignment.names[i]), int(sizes[i])))
    remap = np.full(len(assignment.names) + 1, NO_SUBSET, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    codes = remap[assignment.codes]          # NO_SUBSET (-1) indexes the last entry, which stays -1
    centroids = assignment.centroids[keep] if assignment.centroids is not None else None
    return Assignment(codes, tuple(assignment.names[i] for i in keep), assignment.kind, tuple(notes), centroids,
                      tuple(dropped))


def from_clusters(labels, centroids, *, min_size: int, small: str = "merge") -> Assignment:
    """An assignment from k-means ``labels`` (``(N,)``) and ``centroids`` (``(K, d)``).

    ``small="merge"``: while a cluster has fewer than ``min_size`` images, the smallest such cluster
    joins the cluster whose centroid is nearest to its own (cosine), and the merged centroid is the
    size-weighted mean of the two (renormalised); ``small="drop"``: such clusters' images are in no
    subset. Clusters keep their k-means number in their name (``c07``), so notes stay traceable.
    """
    import numpy as np

    min_size = check_min_size(min_size)
    if small not in SMALL_RULES:
        raise UsageError(MSG_SMALL.format(value=small))
    labels = np.asarray(labels, dtype=np.int64)
    cents = np.asarray(centroids, dtype=np.float64).copy()
    n_clusters = len(cents)
    width = max(2, len(str(n_clusters - 1)))
    names = tuple(f"c{i:0{width}d}" for i in range(n_clusters))
    if small == "drop":
        cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
        return _drop_small(Assignment(labels, names, "kmeans", (), cents.astype(np.float32)), min_size)
    sizes = np.bincount(labels, minlength=n_clusters).astype(np.int64)
    alive = sizes > 0
    notes = [f"cluster {names[i]} is empty" for i in np.flatnonzero(~alive)]
    target = np.arange(n_clusters)
    unit = cents / np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    while True:
        small_ones = np.flatnonzero(alive & (sizes < min_size))
        if small_ones.size == 0 or alive.sum() <= 1:
            break
        i = int(small_ones[np.argmin(sizes[small_ones])])     # the smallest first (lowest number on ties)
        sims = unit @ unit[i]
        sims[~alive] = -np.inf
        sims[i] = -np.inf
        j = int(np.argmax(sims))
        merged = sizes[i] * cents[i] + sizes[j] * cents[j]
        cents[j] = merged / (sizes[i] + sizes[j])
        unit[j] = cents[j] / max(np.linalg.norm(cents[j]), 1e-12)
        notes.append(f"cluster {names[i]} ({int(sizes[i])} images) is below min_size={min_size}: "
                     f"merged into {names[j]}")
        sizes[j] += sizes[i]
        sizes[i] = 0
        alive[i] = False
        target[target == i] = j
    if int(sizes[alive].max(initial=0)) < min_size:
        raise DataError(MSG_NO_SUBSETS.format(min_size=min_size, largest=int(sizes.max(initial=0))))
    keep = np.flatnonzero(alive)
    remap = np.full(n_clusters, NO_SUBSET, dtype=np.int64)
    remap[keep] = np.arange(keep.size)
    codes = remap[target[labels]]
    return Assignment(codes, tuple(names[i] for i in keep), "kmeans", tuple(notes), unit[keep].astype(np.float32))


def from_table(table, files: Sequence[str], *, min_size: int = 1, source: str = "assignment") -> Assignment:
    """An assignment from a table with columns ``image`` (or ``file``) and ``subset``.

    Every image of ``files`` must be listed exactly once (an empty or missing subset: in no subset),
    and no other image; subsets below ``min_size`` are dropped with a note.
    """
    import pandas as pd

    columns = [str(c) for c in table.columns]
    image_col = "image" if "image" in columns else ("file" if "file" in columns else None)
    if image_col is None or "subset" not in columns:
        raise DataError(MSG_TABLE_COLUMNS.format(source=source, columns=", ".join(columns) or "(none)"))
    images = table[image_col].astype(str).str.strip()
    counts = images.value_counts()
    if (counts > 1).any():
        image = counts.index[counts > 1][0]
        raise DataError(MSG_TABLE_DUPLICATE.format(source=source, image=image, n=int(counts[image])))
    known = [str(f) for f in files]
    known_set = set(known)
    unknown = [i for i in images if i not in known_set]
    if unknown:
        raise DataError(MSG_TABLE_UNKNOWN.format(source=source, n=len(unknown), first=unknown[0]))
    listed = set(images)
    missing = [f for f in known if f not in listed]
    if missing:
        raise DataError(MSG_TABLE_MISSING.format(source=source, n=len(missing), first=missing[0]))
    subset = pd.Series(table["subset"].to_numpy(), index=images.to_numpy())
    return from_values(subset.loc[known].to_numpy(), min_size=min_size, kind="file")


def centroids_of(vectors, assignment: Assignment) -> "np.ndarray":
    """``(S, d)`` unit-length mean vector of each subset's images."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float64)
    out = np.zeros((len(assignment.names), v.shape[1]))
    keep = assignment.codes >= 0
    np.add.at(out, assignment.codes[keep], v[keep])
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def typical_members(vectors, assignment: Assignment, n: int = 20, centroids=None) -> dict[str, "np.ndarray"]:
    """Per subset, the indices of its ``n`` images most similar (cosine) to its centroid, most typical first."""
    import numpy as np

    from clipprobe.analysis.metrics import similarity_scores

    v = np.asarray(vectors, dtype=np.float32)
    cents = assignment.centroids if centroids is None else centroids
    if cents is None:
        cents = centroids_of(v, assignment)
    out = {}
    for i, name in enumerate(assignment.names):
        idx = assignment.members(i)
        sims = similarity_scores(np.asarray(cents[i], dtype=np.float32), v[idx])[0]   # the one scoring function
        order = np.argsort(-sims, kind="stable")[:n]
        out[name] = idx[order]
    return out


def composition(labels, assignment: Assignment, attributes: Sequence[str] | None = None) -> "pd.DataFrame":
    """Each subset's groups: ``count``, ``share`` of the subset, ``dataset_share`` and ``log_ratio``
    = ln(share / dataset share) (NaN for a group absent from the subset)."""
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.probe import encode_labels

    lab = encode_labels(labels, attributes)
    rows = []
    keep = assignment.codes >= 0
    for a in lab.attributes:
        codes, names = lab.codes[a], lab.names[a]
        total = np.bincount(codes, minlength=len(names)) / len(codes)
        table = np.zeros((len(assignment.names), len(names)), dtype=np.int64)
        np.add.at(table, (assignment.codes[keep], codes[keep]), 1)
        for s, subset in enumerate(assignment.names):
            n_s = max(int(table[s].sum()), 1)
            for g, group in enumerate(names):
                share = table[s, g] / n_s
                with np.errstate(divide="ignore"):
                    ratio = math.log(share / total[g]) if share > 0 and total[g] > 0 else math.nan
                rows.append((subset, a, group, int(table[s, g]), share, float(total[g]), ratio))
    return pd.DataFrame(rows, columns=list(COMPOSITION_COLUMNS))


# ----------------------------------------------------------------------------------------------
# KL divergence of recall@k from uniform


def kl_recall(counts, sizes) -> "np.ndarray":
    """``KL(p || uniform)`` of the normalised recalls ``p_a = r_a / sum r``, ``r_a = counts_a / sizes_a``.

    ``counts`` is ``(..., G)`` (top-k images per group), ``sizes`` ``(G,)`` (images per group in the
    probed set); groups of size 0 are left out. Nats; NaN with fewer than two groups present. This is this
    project's reading of Ramos et al.'s R@k measure (every image of a group relevant to the word); read
    as per-group retrieval accuracy on image-caption pairs it would be another quantity (module docstring).
    """
    import numpy as np

    c = np.asarray(counts, dtype=np.float64)
    s = np.asarray(sizes, dtype=np.float64)
    present = s > 0
    n_present = int(present.sum())
    out_shape = c.shape[:-1]
    if n_present < 2:
        return np.full(out_shape, np.nan)
    r = c[..., present] / s[present]
    total = r.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = r / total
        terms = np.where(p > 0, p * np.log(np.where(p > 0, p * n_present, 1.0)), 0.0)
    return np.where(total[..., 0] > 0, terms.sum(axis=-1), np.nan)


def kl_recall_null(sizes, k: int, *, n_perm: int = 1000, seed=0, draws: int | None = None) -> "np.ndarray":
    """``(n_perm,)`` KL-of-recall values of top-k drawn at random from the labels (the permutation null)."""
    import numpy as np

    sizes = np.asarray(sizes, dtype=np.int64)
    draws = int(k if draws is None else draws)
    rng = np.random.default_rng(np.random.SeedSequence([*np.atleast_1d(seed).tolist(), 0x4B1]))
    counts = rng.multivariate_hypergeometric(sizes, draws, size=int(n_perm))
    return kl_recall(counts, sizes)


def _upper_p(null, observed) -> "np.ndarray":
    """One-sided permutation p-values ``(1 + #{null >= observed}) / (n + 1)`` (ties count)."""
    from clipprobe.analysis.extremes import _tail

    return _tail(null, observed, upper=True)


# ----------------------------------------------------------------------------------------------
# local metrics


@dataclasses.dataclass(frozen=True)
class SubsetTables:
    """The tables of a subset analysis.

    ``groups``: the report's group columns (:data:`clipprobe.analysis.probe.GROUP_COLUMNS`) for every
    subset (``scope="local"``) and, with ``include_global``, for the whole dataset (``scope="global"``,
    ``subset="all"``: exactly the report's rows), with :data:`SUBSET_KEYS` first and the skew against
    the global base shares (:data:`VS_GLOBAL_COLUMNS`) last. ``q_over``/``flagged`` (and the control
    columns) of local rows are adjusted over every local row together. ``words``: the report's word
    columns, per subset, plus :data:`KL_COLUMNS`. ``info``: one row per subset (size, k, probed or
    skipped and why); ``composition``: each subset's groups; ``dispersion``: see :func:`dispersion`;
    ``controls``: each control query's top-group change rate (:data:`CONTROL_CHANGE_COLUMNS`; None
    without control queries).
    """

    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    info: "pd.DataFrame"
    composition: "pd.DataFrame"
    dispersion: "pd.DataFrame"
    notes: tuple[str, ...]
    k: int
    k_mode: str
    alpha: float
    controls: "pd.DataFrame | None" = None


@contextlib.contextmanager
def _quiet_absent_groups() -> Iterator[None]:
    """A subset lacks some groups by design; the metrics module's note on each absent group is muted."""
    logger = logging.getLogger("clipprobe.analysis.metrics")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def subset_k(k: int, n_subset: int, n_images: int, k_mode: str) -> int:
    """The k of a subset of ``n_subset`` of ``n_images`` images (see the module docstring)."""
    if k_mode == "fixed":
        return int(k)
    return max(1, int(round(k * n_subset / n_images)))


def _kl_columns(scored, block_attributes: Sequence[Sequence[str]], k: int, *, permutations: int, seed,
                seed_keys: Sequence[tuple]) -> "np.ndarray":
    """``(rows of scored.words, 4)``: the :data:`KL_COLUMNS` of every word row of :func:`score_blocks`' blocks,
    block ``b`` drawing its nulls from ``[seed, *seed_keys[b], attribute index]``."""
    import numpy as np

    parts = []
    for b, attrs in enumerate(block_attributes):
        for a_index, a in enumerate(attrs):
            size = scored.sizes[b][a]
            present = size > 0
            s = size[present]
            observed = kl_recall(scored.counts[b][a][:, present], s)
            drawn = scored.drawn[b][a]
            null_mean = np.full(len(drawn), np.nan)
            p = np.full(len(drawn), np.nan)
            for d in np.unique(drawn):
                rows = drawn == d
                null = kl_recall_null(s, k, n_perm=permutations, seed=[*seed, *seed_keys[b], a_index], draws=int(d))
                null_mean[rows] = float(np.mean(null)) if np.isfinite(null).any() else np.nan
                p[rows] = _upper_p(null, observed[rows]) if np.isfinite(null).any() else np.nan
            parts.append(np.column_stack([observed, null_mean, observed - null_mean, p]))
    return np.concatenate(parts).astype(np.float64)


def _category_column(word_codes, words: Sequence[str], categories) -> list:
    """Each row's categories as a list, from its word's position in ``words`` (the rows of a word share
    its list)."""
    from clipprobe.analysis.probe import category_lists

    lists = category_lists(categories, list(words))
    per_word = [lists[w] for w in words]
    return [per_word[c] for c in word_codes.tolist()]


def _scored_tables(scored, *, words, categories, subset_names, n_images, scope, kl):
    """:func:`score_blocks`' frames in the subset tables' columns (scope keys first, KL columns on word rows);
    local rows get their q-values and flag counts later, over the whole family of local rows."""
    import numpy as np

    from clipprobe.analysis.probe import GROUP_COLUMNS, WORD_COLUMNS

    groups = scored.groups
    word_rows = scored.words
    # a group row's word is its word row's (word rows: every block's attributes, each with all the words)
    groups = groups.assign(category=_category_column(scored.word_row % len(words), words, categories), q_over=np.nan,
                           flagged=False, q_vs_controls=np.nan, flagged_vs_controls=False)
    word_rows = word_rows.assign(category=_category_column(np.arange(len(word_rows)) % len(words), words, categories),
                                 n_flagged=0, n_flagged_vs_controls=0)
    groups, word_rows = groups[list(GROUP_COLUMNS)], word_rows[list(WORD_COLUMNS)]
    names = np.asarray(subset_names, dtype=object)
    sizes = np.asarray(n_images, dtype=np.int64)
    for df, block in ((groups, scored.group_block), (word_rows, scored.word_block)):
        df.insert(0, "n_images", sizes[block])
        df.insert(0, "subset", names[block])
        df.insert(0, "scope", scope)
    for j, col in enumerate(KL_COLUMNS):
        word_rows[col] = kl[:, j]
    return groups, word_rows


def _runs(frame: "pd.DataFrame", columns: Sequence[str]) -> "np.ndarray":
    """For each row, the number of the run of consecutive rows with the same values in ``columns``."""
    import numpy as np
    import pandas as pd

    if not len(frame):
        return np.zeros(0, dtype=np.int64)
    changed = np.zeros(len(frame) - 1, dtype=bool)
    for col in columns:
        codes = pd.factorize(frame[col])[0]
        changed |= codes[1:] != codes[:-1]
    return np.concatenate([[0], np.cumsum(changed)]).astype(np.int64)


def subset_scores(
    scores,
    labels,
    assignment: Assignment,
    *,
    words: Sequence[str],
    k: int,
    k_mode: str = "fixed",
    attributes: Sequence[str] | None = None,
    reference: str = "base",
    bootstrap: int = 0,
    seed: int = 0,
    alpha: float = 0.05,
    level: float = 0.95,
    permutations: int = 1000,
    ties: str = "index",
    neutral=None,
    controls=None,
    categories=None,
    prompts=None,
    files: Sequence[str] | None = None,
    include_global: bool = True,
    progress: bool | None = False,
    control_words: Sequence[str] | None = None,
) -> SubsetTables:
    """The report's metrics within each subset, the KL of recall@k, and their dispersion.

    ``scores`` (``(W, N)``), ``labels``, ``words`` and the settings are those of
    :func:`clipprobe.analysis.probe.probe_scores`; ``assignment`` puts each of the ``N`` images in a
    subset (or none). Each subset is probed on its own columns of ``scores`` and its own label rows
    (no re-retrieval: a subset's top-k are its images in the word's order), against its own base
    shares; BH runs over every local row together. ``bootstrap`` (only ``stability``) defaults to 0.
    ``control_words`` name the rows of ``controls`` (default ``control 1``, ...); the control queries' top
    groups per subset are the null of the top-group change rate (see the module docstring).
    """
    import numpy as np
    import pandas as pd
    from tqdm.auto import tqdm

    from clipprobe.analysis.metrics import check_k, rank_topk
    from clipprobe.analysis.probe import (
        MSG_DUPLICATE_WORDS, MSG_LABEL_ROWS, ProbeLabels, WordScores, _as_scores, check_settings, encode_labels,
        finish_tables, score_blocks,
    )
    from clipprobe.analysis.significance import bh_adjust

    check_settings(alpha=alpha, bootstrap=bootstrap, seed=seed, reference=reference, permutations=permutations,
                   ties=ties)
    if k_mode not in K_MODES:
        raise UsageError(MSG_K_MODE.format(value=k_mode))
    s = _as_scores(scores)
    n_images = s.shape[1]
    words = [str(w) for w in words]
    if len(set(words)) != len(words):
        dup = next(w for w in words if words.count(w) > 1)
        raise DataError(MSG_DUPLICATE_WORDS.format(word=dup))
    lab = encode_labels(labels, attributes)
    if lab.n_images != n_images:
        raise DataError(MSG_LABEL_ROWS.format(n_labels=lab.n_images, n_images=n_images))
    if assignment.n_images != n_images:
        raise DataError(MSG_LENGTH.format(n=assignment.n_images, n_images=n_images))
    k = check_k(k, n_images)
    attributes = lab.attributes
    settings = {"reference": reference, "bootstrap": bootstrap, "seed": seed, "level": level,
                "permutations": permutations, "ties": ties, "neutral": neutral, "controls": controls,
                "prompts": prompts, "files": files}
    control_m = None if controls is None else np.asarray(controls)
    order = rank_topk(s, n_images)          # every word's ranking, sorted once: each subset's is taken from it

    g_frames, w_frames, info_rows, notes = [], [], [], list(assignment.notes)
    control_tops = []
    control_names = None
    if control_m is not None:
        control_names = ([str(c) for c in control_words] if control_words is not None
                         else [f"control {i + 1}" for i in range(len(control_m))])
        if len(control_names) != len(control_m):
            raise DataError(MSG_CONTROL_WORDS.format(n=len(control_names), n_rows=len(control_m)))
    if include_global:
        scored = score_blocks(s, lab, np.zeros(n_images, dtype=np.int64), [attributes], words=words, k=k,
                              order=order, **settings)
        kl = _kl_columns(scored, [attributes], k, permutations=permutations, seed=[int(seed)], seed_keys=[(0,)])
        tables = finish_tables([WordScores(scored.groups, scored.words)], k=k, alpha=alpha, categories=categories)
        gg, gw = tables.groups.copy(), tables.words.copy()
        for df in (gg, gw):
            df.insert(0, "n_images", int(n_images))
            df.insert(0, "subset", GLOBAL)
            df.insert(0, "scope", "global")
        for j, col in enumerate(KL_COLUMNS):
            gw[col] = kl[:, j]
        g_frames.append(gg)
        w_frames.append(gw)
        if control_m is not None:
            control_tops.append(_top_groups(scored.control_counts[0], lab, k, queries=control_names,
                                            reference=reference).assign(scope="global", subset=GLOBAL))
    probed = []                               # (subset index, name, images, k, attributes)
    for i, name in enumerate(assignment.names):
        idx = assignment.members(i)
        n_s = int(idx.size)
        k_s = subset_k(k, n_s, n_images, k_mode)
        attrs = tuple(a for a in attributes if np.count_nonzero(np.bincount(lab.codes[a][idx])) >= 2)
        note = ""
        if n_s <= k_s:
            note = f"{n_s} image(s), not more than k={k_s}: no top-k that is not the whole subset"
        elif not attrs:
            note = "every attribute has a single group here"
        if note:
            notes.append(f"subset {name!r} skipped: {note}")
            info_rows.append((name, n_s, k_s, False, "", note))
            continue
        single = [a for a in attributes if a not in attrs]
        if single:
            note = "single group of " + ", ".join(single) + ": not probed"
        probed.append((i, name, n_s, k_s, attrs))
        info_rows.append((name, n_s, k_s, True, ",".join(attrs), note))
    if not probed:
        raise DataError(MSG_NOTHING_PROBED.format(why="; ".join(notes[-3:]) or "no subsets"))
    # The subsets with the same k are scored together (every subset with k_mode="fixed").
    local_g, local_w, local_tops = {}, {}, {}
    by_k = {}
    for entry in probed:
        by_k.setdefault(entry[3], []).append(entry)
    with _quiet_absent_groups():
        for k_s, entries in tqdm(by_k.items(), desc="subsets", unit="k", disable=None if progress is None
                                 else not progress):
            blocks = np.full(n_images, -1, dtype=np.int64)
            for b, (i, *_rest) in enumerate(entries):
                blocks[assignment.codes == i] = b
            block_attrs = [e[4] for e in entries]
            scored = score_blocks(s, lab, blocks, block_attrs, words=words, k=k_s, order=order, **settings)
            kl = _kl_columns(scored, block_attrs, k_s, permutations=permutations, seed=[int(seed)],
                             seed_keys=[(1, e[0]) for e in entries])
            if control_m is not None:
                for b, (i, name, _n, _k, attrs) in enumerate(entries):
                    idx = assignment.members(i)
                    sub = ProbeLabels({a: lab.codes[a][idx] for a in attrs}, {a: lab.names[a] for a in attrs})
                    local_tops[i] = _top_groups(scored.control_counts[b], sub, k_s, queries=control_names,
                                                reference=reference).assign(scope="local", subset=name)
            gs, ws = _scored_tables(scored, words=words, categories=categories, subset_names=[e[1] for e in entries],
                                    n_images=[e[2] for e in entries], scope="local", kl=kl)
            if len(by_k) == 1:
                lg, lw = gs, ws
                break
            for b, e in enumerate(entries):
                local_g[e[0]] = gs[scored.group_block == b]
                local_w[e[0]] = ws[scored.word_block == b]
    if len(by_k) > 1:                         # back into the subsets' order
        lg = pd.concat([local_g[e[0]] for e in probed], ignore_index=True)
        lw = pd.concat([local_w[e[0]] for e in probed], ignore_index=True)
    control_tops += [local_tops[e[0]] for e in probed if e[0] in local_tops]
    # One family: every local row together.
    lg["q_over"] = bh_adjust(lg["p_over"].to_numpy())
    lg["flagged"] = lg["q_over"] < alpha
    lg["q_vs_controls"] = bh_adjust(lg["p_vs_controls"].to_numpy())
    lg["flagged_vs_controls"] = lg["q_vs_controls"] < alpha
    # a word row's group rows are the run of group rows with its (subset, attribute, word)
    word_row = _runs(lg, ["subset", "attribute", "word"])
    for column, flag in (("n_flagged", "flagged"), ("n_flagged_vs_controls", "flagged_vs_controls")):
        lw[column] = np.bincount(word_row, weights=lg[flag].to_numpy(dtype=np.float64),
                                 minlength=len(lw)).astype(np.int64)
    groups = pd.concat(g_frames + [lg], ignore_index=True)
    words_df = pd.concat(w_frames + [lw], ignore_index=True)
    groups = _vs_global(groups, lab, level=level)
    info = pd.DataFrame(info_rows, columns=list(INFO_COLUMNS))
    info["n_images"] = info["n_images"].astype(np.int64)
    info["k"] = info["k"].astype(np.int64)
    control_rates = (top_group_change_rates(pd.concat(control_tops, ignore_index=True))
                     if control_m is not None and include_global else None)
    return SubsetTables(groups=groups, words=words_df, info=info, composition=composition(lab, assignment),
                        dispersion=dispersion(groups, words_df, controls=control_rates, alpha=alpha, seed=seed),
                        notes=tuple(notes), k=int(k), k_mode=k_mode, alpha=float(alpha), controls=control_rates)


def skipped_summary(assignment: Assignment, info: "pd.DataFrame") -> dict:
    """What a subset analysis left out, counted: subsets dropped below ``min_size`` (their images in no
    subset), subsets not probed and why (``info``: :attr:`SubsetTables.info`), and images with no subset
    value; with the number of images probed."""
    probed = info["probed"].to_numpy(dtype=bool)
    dropped_images = sum(int(n) for _name, n in assignment.dropped)
    not_probed = info[~probed]
    return {
        "n_images": assignment.n_images,
        "n_images_probed": int(info["n_images"].to_numpy()[probed].sum()),
        "dropped": {"n_subsets": len(assignment.dropped), "n_images": dropped_images,
                    "subsets": [{"subset": name, "n_images": int(n)} for name, n in assignment.dropped]},
        "not_probed": {"n_subsets": int(len(not_probed)), "n_images": int(not_probed["n_images"].sum()),
                       "subsets": [{"subset": str(r.subset), "n_images": int(r.n_images), "why": str(r.note)}
                                   for r in not_probed.itertuples(index=False)]},
        "no_value": {"n_images": int((assignment.codes < 0).sum()) - dropped_images},
    }


def _vs_global(groups: "pd.DataFrame", lab, *, level: float) -> "pd.DataFrame":
    """Skew of each row's share against the group's share of the whole dataset, with the share interval
    (Wilson) divided by that share: the report's interval against a fixed reference."""
    import numpy as np

    from clipprobe.analysis.intervals import skew_interval

    import pandas as pd

    keys, values = [], []
    for a in lab.attributes:
        counts = np.bincount(lab.codes[a], minlength=len(lab.names[a])) / lab.n_images
        keys += [(a, g) for g in lab.names[a]]
        values += [float(c) for c in counts]
    base = pd.Series(values, index=pd.MultiIndex.from_tuples(keys), dtype=np.float64)
    gb = base.reindex(pd.MultiIndex.from_arrays([groups["attribute"], groups["group"]])).to_numpy(dtype=np.float64)
    kk = groups["k"].to_numpy(dtype=np.float64)
    floored = np.maximum(groups["count"].to_numpy(dtype=np.float64), 1.0) / kk
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(gb > 0, np.log(floored / np.where(gb > 0, gb, 1.0)), np.nan)
    lo, hi = skew_interval(groups["share_ci_low"].to_numpy(), groups["share_ci_high"].to_numpy(), gb)
    out = groups.copy()
    out["global_base_share"] = gb
    out["skew_vs_global"] = skew
    out["skew_vs_global_ci_low"] = lo
    out["skew_vs_global_ci_high"] = hi
    return out


# ----------------------------------------------------------------------------------------------
# top-group changes against the control queries


def query_top_groups(scores, labels, attributes: Sequence[str], k: int, *, queries: Sequence[str],
                     ties: str = "index", reference: str = "base") -> "pd.DataFrame":
    """``query, attribute, top_group``: each query's top group (the group with the largest skew in its
    top-k, the lowest code on ties), computed as :func:`clipprobe.analysis.probe.score_words` computes a
    word's ``top_group``, without the rest of the statistics. ``labels`` is a
    :class:`clipprobe.analysis.probe.ProbeLabels` of the scored images."""
    import numpy as np

    from clipprobe.analysis.metrics import rank_topk
    from clipprobe.analysis.probe import _kept_counts

    s = np.asarray(scores)
    ids = rank_topk(s, k)
    counts = {}
    for a in attributes:
        counts[a], _ = _kept_counts(s, ids, labels.codes[a], len(labels.names[a]), k, ties)   # keep-all: ties too
    return _top_groups(counts, labels, k, queries=queries, reference=reference)


def _top_groups(counts: Mapping[str, "np.ndarray"], labels, k: int, *, queries: Sequence[str],
                reference: str = "base") -> "pd.DataFrame":
    """:func:`query_top_groups` from the queries' ``(C, G)`` top-k counts per attribute."""
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.metrics import reference_shares, word_stats

    query = [str(q) for q in queries]
    attribute, groups = [], []
    for a, c in counts.items():
        codes, names = labels.codes[a], labels.names[a]
        base = np.bincount(codes, minlength=len(names)) / len(codes)
        top = word_stats(c, reference_shares(reference, base_share=base), k, present=base > 0)["top_group"]
        groups.append(np.asarray(list(names) + [None], dtype=object)[np.where(top >= 0, top, len(names))])
        attribute += [a] * len(query)
    return pd.DataFrame({"query": query * len(groups), "attribute": attribute,
                         "top_group": np.concatenate(groups) if groups else np.zeros(0, dtype=object)})


def top_group_change_rates(tops: "pd.DataFrame") -> "pd.DataFrame":
    """Per query and attribute (:data:`CONTROL_CHANGE_COLUMNS`): the share of the subsets where the query's
    top group differs from its global one. ``tops``: :func:`query_top_groups` rows with ``scope``
    (``global``/``local``) and ``subset``."""
    import numpy as np

    key = ["query", "attribute"]
    glob = tops[tops["scope"] == "global"][key + ["top_group"]].rename(columns={"top_group": "top_group_global"})
    local = tops[tops["scope"] == "local"].merge(glob, on=key, how="inner")
    local["_changed"] = (local["top_group"] != local["top_group_global"]).astype(np.float64)
    out = local.groupby(key, sort=False).agg(n_subsets=("_changed", "size"),
                                             top_group_global=("top_group_global", "first"),
                                             top_group_change_rate=("_changed", "mean")).reset_index()
    out["n_subsets"] = out["n_subsets"].astype(np.int64)
    return out[list(CONTROL_CHANGE_COLUMNS)]


def tie_uniforms(keys: Sequence[str], seed=0) -> "np.ndarray":
    """One uniform draw in [0, 1) per key, from the seed and the key's text alone (so a word's draw does
    not depend on which other words are scored)."""
    import zlib

    import numpy as np

    seed = [int(x) for x in np.atleast_1d(seed)]
    return np.array([np.random.default_rng([*seed, 0x70C, zlib.crc32(str(key).encode("utf-8"))]).random()
                     for key in keys], dtype=np.float64)


def changes_vs_controls(rates, control_rates, *, uniforms=None, seed=0) -> "np.ndarray":
    """Upper-tail p-values of top-group change rates against the control queries' rates.

    ``p = (1 + #{controls > rate} + J) / (C + 1)``, ``J = floor(u (T + 1))`` for the ``T`` controls with
    the same rate and ``u`` uniform on [0, 1) (``uniforms``, one per rate; default drawn from ``seed``):
    the rank of the rate among the ``C + 1`` values with ties broken at random, so that a rate exchangeable
    with the controls' gets ``P(p <= a) = floor(a (C + 1)) / (C + 1)``. NaN for a NaN rate or no controls.
    """
    import numpy as np

    r = np.asarray(rates, dtype=np.float64)
    c = np.sort(np.asarray(control_rates, dtype=np.float64).ravel())
    c = c[np.isfinite(c)]
    if uniforms is None:
        uniforms = np.random.default_rng([*(int(x) for x in np.atleast_1d(seed)), 0x70C]).random(r.shape)
    u = np.asarray(uniforms, dtype=np.float64)
    eps = 1e-12
    above = np.searchsorted(c, r + eps, side="right")
    higher = c.size - above
    ties = above - np.searchsorted(c, r - eps, side="left")
    p = (1.0 + higher + np.floor(u * (ties + 1))) / (c.size + 1.0)
    return np.where(np.isfinite(r) & (c.size > 0), p, np.nan)


# ----------------------------------------------------------------------------------------------
# dispersion across subsets


def dispersion(groups: "pd.DataFrame", words: "pd.DataFrame",
               measures: Sequence[str] = DISPERSION_MEASURES, *, controls: "pd.DataFrame | None" = None,
               alpha: float = 0.05, seed: int = 0) -> "pd.DataFrame":
    """Per (word, attribute, measure): the global value and the spread of the local ones.

    ``measures``: word columns (``kl_recall``, ``max_skew_excess``, ...) or ``top_group_skew``, the
    skew, in each subset, of the word's top group in the global probe (of the subset's own top group
    where there is no global row). ``range = max - min`` and ``iqr = q75 - q25`` (linear interpolation,
    as ``numpy.percentile``) over the subsets where the word was probed and the value is finite;
    ``subset_min``/``subset_max`` name the subsets (the first on ties). Per (word, attribute), repeated
    on each measure's row: ``top_group_global``, ``n_top_groups`` (distinct top groups over the
    subsets), ``top_group_changes`` (more than one), ``n_subsets_flagged`` (subsets where the top group
    is flagged), ``flagged_top_groups`` (those flagged top groups, ``"; "``-joined, in subset order)
    and ``flagged_top_group_changes`` (more than one of them); ``top_group_change_rate`` (the share of
    subsets where the local top group is not the global one; NaN without a global row) and, against the
    control queries' rates (``controls``, :func:`top_group_change_rates`), ``p_changes_vs_controls``
    (:func:`changes_vs_controls`, the tie draw from ``seed``, the word and the attribute),
    ``q_changes_vs_controls`` (BH over every word and attribute) and ``top_group_changes_vs_controls``
    (``q < alpha``); NaN and False without controls.
    """
    import numpy as np
    import pandas as pd

    key = ["word", "attribute"]
    local_w = words[words["scope"] == "local"]
    global_w = words[words["scope"] == "global"]
    scope = groups["scope"]
    lg = groups.loc[scope == "local", ["subset", "word", "attribute", "group", "skew", "flagged"]]
    global_g = groups.loc[scope == "global", ["word", "attribute", "group", "skew"]]
    gtop = global_w[key + ["top_group"]].rename(columns={"top_group": "_top"})
    # the skew of the global top group (else the subset's own) in each subset, and in the global probe
    lw = local_w.merge(gtop, on=key, how="left")
    has_global = lw["_top"].notna()
    lw["_top"] = lw["_top"].fillna(lw["top_group"])
    lw["_changed"] = (lw["top_group"] != lw["_top"]).astype(np.float64).where(has_global)
    # a local group row per (subset, word, attribute, group): each word row looks up two of them
    found, at = _lookup(lw, ["subset", "word", "attribute", "_top"], lg, ["subset", "word", "attribute", "group"])
    lw["top_group_skew"] = np.where(found, lg["skew"].to_numpy(dtype=np.float64)[at], np.nan)
    found, at = _lookup(lw, ["subset", "word", "attribute", "top_group"], lg,
                        ["subset", "word", "attribute", "group"])
    lw["_top_flagged"] = found & lg["flagged"].to_numpy(dtype=bool)[at]
    gw = global_w.merge(global_g.rename(
        columns={"group": "top_group", "skew": "top_group_skew"}), on=key + ["top_group"], how="left")

    per_word = lw.groupby(key, sort=False).agg(category=("category", "first"),
                                                n_top_groups=("top_group", "nunique"),
                                                n_subsets_flagged=("_top_flagged", "sum"))
    flagged = lw[lw["_top_flagged"]]
    ftops = flagged.groupby(key, sort=False)["top_group"].agg(lambda v: "; ".join(dict.fromkeys(map(str, v))))
    per_word["flagged_top_groups"] = ftops.reindex(per_word.index).fillna("")
    per_word["top_group_changes"] = per_word["n_top_groups"] > 1
    per_word["flagged_top_group_changes"] = flagged.groupby(key, sort=False)["top_group"].nunique().reindex(
        per_word.index).fillna(0) > 1
    per_word["top_group_global"] = gtop.set_index(key)["_top"].reindex(per_word.index)
    per_word["top_group_change_rate"] = lw.groupby(key, sort=False)["_changed"].mean().reindex(
        per_word.index).astype(np.float64)
    per_word = _vs_controls(per_word, controls, alpha=alpha, seed=seed)

    long = lw.melt(id_vars=["subset", *key], value_vars=list(measures), var_name="measure", value_name="value")
    long = long[np.isfinite(long["value"].to_numpy(dtype=np.float64))]
    by = long.groupby([*key, "measure"], sort=False)["value"]
    stats = pd.DataFrame({
        "n_subsets": by.size(), "min": by.min(), "q25": by.quantile(0.25), "median": by.median(),
        "q75": by.quantile(0.75), "max": by.max(),
    })
    stats["range"] = stats["max"] - stats["min"]
    stats["iqr"] = stats["q75"] - stats["q25"]
    subset_of = long["subset"].astype(str)
    stats["subset_min"] = subset_of.loc[by.idxmin()].to_numpy()
    stats["subset_max"] = subset_of.loc[by.idxmax()].to_numpy()

    grid = pd.MultiIndex.from_tuples([(w, a, m) for (w, a) in per_word.index for m in measures],
                                     names=[*key, "measure"])
    out = stats.reindex(grid).reset_index()
    out["n_subsets"] = out["n_subsets"].fillna(0).astype(np.int64)
    glob = gw.melt(id_vars=key, value_vars=[m for m in measures if m in gw], var_name="measure",
                   value_name="global")
    out = out.merge(glob, on=[*key, "measure"], how="left")
    out = out.merge(per_word.reset_index(), on=key, how="left")
    out["n_subsets_flagged"] = out["n_subsets_flagged"].astype(np.int64)
    out["n_top_groups"] = out["n_top_groups"].astype(np.int64)
    out["top_group_changes_vs_controls"] = out["top_group_changes_vs_controls"].astype(bool)
    return out[list(DISPERSION_COLUMNS)]


def _lookup(left: "pd.DataFrame", left_on: Sequence[str], right: "pd.DataFrame", right_on: Sequence[str]
            ) -> tuple["np.ndarray", "np.ndarray"]:
    """For each row of ``left``: whether ``right`` has a row with the same key (``left_on`` against
    ``right_on``, matched as a left merge matches them, missing values equal to each other) and its
    position (0 where none). ``right``'s keys must be unique."""
    import numpy as np
    import pandas as pd

    n_left = len(left)
    key_left, key_right = np.zeros(n_left, np.int64), np.zeros(len(right), np.int64)
    for lc, rc in zip(left_on, right_on):
        codes, uniques = pd.factorize(pd.concat([left[lc], right[rc]], ignore_index=True), use_na_sentinel=True)
        width = len(uniques) + 1                             # code -1 (missing) -> 0
        key_left = key_left * width + codes[:n_left] + 1
        key_right = key_right * width + codes[n_left:] + 1
    order = np.argsort(key_right, kind="stable")
    if order.size > 1 and (np.diff(key_right[order]) == 0).any():
        raise ValueError("right keys are not unique")
    pos = np.searchsorted(key_right[order], key_left)
    pos = np.minimum(pos, max(len(right) - 1, 0))
    found = (key_right[order][pos] == key_left) if len(right) else np.zeros(n_left, dtype=bool)
    at = order[pos] if len(right) else np.zeros(n_left, dtype=np.int64)
    return found, np.where(found, at, 0)


def _vs_controls(per_word: "pd.DataFrame", controls: "pd.DataFrame | None", *, alpha: float, seed: int
                 ) -> "pd.DataFrame":
    """The control-query columns of :func:`dispersion` on its per-(word, attribute) frame."""
    import numpy as np

    from clipprobe.analysis.significance import bh_adjust

    p = np.full(len(per_word), np.nan)
    if controls is not None and len(per_word):
        words = per_word.index.get_level_values("word").astype(str)
        attributes = per_word.index.get_level_values("attribute").astype(str)
        rates = per_word["top_group_change_rate"].to_numpy(dtype=np.float64)
        for a, part in controls.groupby("attribute", sort=False):
            rows = np.flatnonzero(attributes == str(a))
            u = tie_uniforms([f"{words[i]}\0{a}" for i in rows], seed)
            p[rows] = changes_vs_controls(rates[rows], part["top_group_change_rate"].to_numpy(), uniforms=u)
    q = bh_adjust(p)
    out = per_word.copy()
    out["p_changes_vs_controls"] = p
    out["q_changes_vs_controls"] = q
    out["top_group_changes_vs_controls"] = np.where(np.isfinite(q), q < alpha, False)
    return out


def dispersion_summary(disp: "pd.DataFrame", controls: "pd.DataFrame | None" = None) -> "pd.DataFrame":
    """Per attribute: words and control queries; the share of words whose top group changes more often
    than the control queries' do (q < alpha), then the raw share whose top group changes at all, the
    median change rate of the words and the range and median of the control queries' rates; the share
    whose flagged top group changes; and the median range of each measure."""
    import math

    import numpy as np
    import pandas as pd

    rows = []
    for attribute, part in disp.groupby("attribute", sort=False):
        per_word = part.drop_duplicates(["word", "attribute"])
        c = (controls[controls["attribute"] == attribute]["top_group_change_rate"].to_numpy(dtype=np.float64)
             if controls is not None else np.zeros(0))
        rates = per_word["top_group_change_rate"].to_numpy(dtype=np.float64)
        row = {"attribute": attribute, "n_words": len(per_word), "n_controls": int(c.size),
               "share_top_group_changes_vs_controls": (float(per_word["top_group_changes_vs_controls"].mean())
                                                       if c.size else math.nan),
               "share_top_group_changes": float(per_word["top_group_changes"].mean()),
               "median_top_group_change_rate": float(np.nanmedian(rates)) if np.isfinite(rates).any() else math.nan,
               "control_change_rate_min": float(c.min()) if c.size else math.nan,
               "control_change_rate_median": float(np.median(c)) if c.size else math.nan,
               "control_change_rate_max": float(c.max()) if c.size else math.nan,
               "share_flagged_top_group_changes": float(per_word["flagged_top_group_changes"].mean())}
        for measure, m in part.groupby("measure", sort=False):
            row[f"median_range_{measure}"] = float(m["range"].median())
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# across models: rank correlations


def _ranks(x, axis: int = -1) -> "np.ndarray":
    from scipy.stats import rankdata

    return rankdata(x, axis=axis)      # average ranks for ties


def _pearson_rows(a, b) -> "np.ndarray":
    """Pearson correlation of matching rows of two ``(..., n)`` arrays (NaN where one is constant)."""
    import numpy as np

    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    den = np.sqrt((a * a).sum(axis=-1) * (b * b).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a * b).sum(axis=-1) / np.where(den > 0, den, 1.0), np.nan)


def spearman(x, y) -> float:
    """Spearman's rank correlation (average ranks for ties; NaN when either side is constant)."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    return float(_pearson_rows(_ranks(x), _ranks(y)))


def _check_level(level) -> float:
    if not 0 < float(level) < 1:
        raise UsageError(MSG_LEVEL.format(value=level))
    return float(level)


def fisher_interval(rho: float, n: int, *, level: float = 0.95) -> tuple[float, float]:
    """Interval of a Spearman correlation from Fisher's z with Bonett and Wright's (2000) variance
    ``(1 + rho^2 / 2) / (n - 3)``; NaN for ``n <= 3``. A |rho| of 1 is pulled in to 1 - 1/(2n^2)."""
    from scipy.stats import norm

    level = _check_level(level)
    if n <= 3 or not math.isfinite(rho):
        return math.nan, math.nan
    r = max(-1 + 0.5 / n ** 2, min(1 - 0.5 / n ** 2, rho))
    z = math.atanh(r)
    se = math.sqrt((1 + r * r / 2) / (n - 3))
    crit = float(norm.isf((1 - level) / 2))
    return math.tanh(z - crit * se), math.tanh(z + crit * se)


def bootstrap_rhos(x, y, *, n_boot: int = 2000, seed: int = 0) -> "np.ndarray":
    """``(n_boot,)`` Spearman correlations of models resampled with replacement (NaN for a resample
    where one side is constant)."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0xB007]))
    idx = rng.integers(0, len(x), size=(int(n_boot), len(x)))
    return _pearson_rows(_ranks(x[idx], axis=1), _ranks(y[idx], axis=1))


def bootstrap_interval(x, y, *, method: str = "bca", level: float = 0.95, n_boot: int = 2000,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile or BCa (Efron 1987; acceleration from the jackknife) bootstrap interval of Spearman's
    rho over models."""
    import numpy as np
    from scipy.stats import norm

    level = _check_level(level)
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    rho = spearman(x, y)
    if n < 3 or not math.isfinite(rho):
        return math.nan, math.nan
    boot = bootstrap_rhos(x, y, n_boot=n_boot, seed=seed)
    boot = boot[np.isfinite(boot)]
    if boot.size < 10:
        return math.nan, math.nan
    tail = (1 - level) / 2
    if method == "percentile":
        lo, hi = np.percentile(boot, [100 * tail, 100 * (1 - tail)])
        return float(lo), float(hi)
    below = (np.sum(boot < rho) + 0.5 * np.sum(boot == rho)) / boot.size
    z0 = float(norm.ppf(min(max(below, 0.5 / boot.size), 1 - 0.5 / boot.size)))
    jack = np.array([spearman(np.delete(x, i), np.delete(y, i)) for i in range(n)])
    jack = jack[np.isfinite(jack)]
    d = jack.mean() - jack
    den = 6.0 * (np.sum(d ** 2) ** 1.5)
    a = float(np.sum(d ** 3) / den) if den > 0 else 0.0
    out = []
    for q in (tail, 1 - tail):
        zq = float(norm.ppf(q))
        adj = norm.cdf(z0 + (z0 + zq) / (1 - a * (z0 + zq)))
        out.append(float(np.percentile(boot, 100 * float(adj))))
    return out[0], out[1]


def _all_permutations(n: int) -> "np.ndarray":
    import itertools

    import numpy as np

    return np.array(list(itertools.permutations(range(n))), dtype=np.int64)


def spearman_p(x, y, *, permutations: int = 9999, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's rho: exact (every ordering) up to
    :data:`EXACT_PERMUTATIONS_UP_TO` models, else ``(1 + #{|rho*| >= |rho|}) / (permutations + 1)``."""
    import numpy as np

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    n = len(x)
    rho = spearman(x, y)
    if not math.isfinite(rho):
        return math.nan
    rx, ry = _ranks(x), _ranks(y)
    if n <= EXACT_PERMUTATIONS_UP_TO:
        perms = _all_permutations(n)
        null = _pearson_rows(rx[None, :], ry[perms])
        eps = 1e-12
        return float(np.mean(np.abs(null) >= abs(rho) - eps))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EA2]))
    perms = rng.permuted(np.tile(np.arange(n), (int(permutations), 1)), axis=1)
    null = _pearson_rows(rx[None, :], ry[perms])
    eps = 1e-12
    return float((1 + np.sum(np.abs(null) >= abs(rho) - eps)) / (permutations + 1))


def check_interval_settings(interval: str = "bca", level: float = 0.95, n_boot: int = 2000) -> None:
    if interval not in INTERVALS:
        raise UsageError(MSG_INTERVAL.format(value=interval))
    _check_level(level)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 100:
        raise UsageError(MSG_N_BOOT.format(value=n_boot))


def rho_interval(x, y, *, interval: str = "bca", level: float = 0.95, n_boot: int = 2000, seed: int = 0
                 ) -> tuple[float, float]:
    """The interval of Spearman's rho by ``interval`` (``bca``, ``fisher`` or ``percentile``), whatever
    the number of models (the tables publish it from :data:`MIN_MODELS_INTERVAL` models on)."""
    check_interval_settings(interval, level, n_boot)
    if interval == "fisher":
        return fisher_interval(spearman(x, y), len(x), level=level)
    return bootstrap_interval(x, y, method=interval, level=level, n_boot=n_boot, seed=seed)


def check_measures(wide) -> "pd.DataFrame":
    """A per-model measures table: a ``model`` column (unique) and numeric measure columns."""
    import pandas as pd

    df = pd.DataFrame(wide).copy()
    columns = [str(c) for c in df.columns]
    df.columns = columns
    numeric = [c for c in columns if c != "model" and pd.api.types.is_numeric_dtype(df[c])]
    if "model" not in columns or not numeric:
        raise DataError(MSG_MEASURES_MODEL.format(columns=", ".join(columns) or "(none)"))
    df["model"] = df["model"].astype(str)
    counts = df["model"].value_counts()
    if (counts > 1).any():
        model = counts.index[counts > 1][0]
        raise DataError(MSG_MEASURES_DUPLICATE.format(model=model, n=int(counts[model])))
    return df[["model", *numeric]]


def correlate_measures(wide, *, pairs: Sequence[tuple[str, str]] | None = None, interval: str = "bca",
                       level: float = 0.95, n_boot: int = 2000, seed: int = 0, permutations: int = 9999
                       ) -> "pd.DataFrame":
    """Spearman's rho between per-model measures, across models.

    ``wide``: one row per model, a ``model`` column and one numeric column per measure (e.g. a
    downstream bias CSV joined with clipprobe's own measures). ``pairs``: the (measure_a, measure_b)
    to correlate (default: every pair). Each pair uses the models with both values; fewer than
    :data:`MIN_MODELS` give NaN, fewer than :data:`MIN_MODELS_INTERVAL` no interval. ``q_value`` is
    Benjamini-Hochberg over the pairs.
    """
    import itertools

    import numpy as np
    import pandas as pd

    from clipprobe.analysis.significance import bh_adjust

    check_interval_settings(interval, level, n_boot)
    df = check_measures(wide)
    measures = [c for c in df.columns if c != "model"]
    if pairs is None:
        pairs = list(itertools.combinations(measures, 2))
    for pair in pairs:
        for name in pair:
            if name not in measures:
                raise DataError(MSG_UNKNOWN_MEASURE.format(name=name, hint=did_you_mean(name, measures),
                                                           columns=", ".join(measures)))
    rows = []
    for i, (a, b) in enumerate(pairs):
        both = df[[a, b]].to_numpy(dtype=np.float64)
        both = both[np.isfinite(both).all(axis=1)]
        n = len(both)
        if n < MIN_MODELS:
            rows.append((a, b, n, np.nan, np.nan, np.nan, interval, np.nan))
            continue
        x, y = both[:, 0], both[:, 1]
        rho = spearman(x, y)
        lo, hi = (rho_interval(x, y, interval=interval, level=level, n_boot=n_boot, seed=seed + i)
                  if n >= MIN_MODELS_INTERVAL else (np.nan, np.nan))
        rows.append((a, b, n, rho, lo, hi, interval, spearman_p(x, y, permutations=permutations, seed=seed + i)))
    out = pd.DataFrame(rows, columns=[c for c in CORRELATION_COLUMNS if c != "q_value"])
    out["n_models"] = out["n_models"].astype(np.int64)
    out["q_value"] = bh_adjust(out["p_value"].to_numpy(dtype=np.float64))
    return out[list(CORRELATION_COLUMNS)]


def model_measures(words: "pd.DataFrame", statistics: Sequence[str] = MODEL_STATISTICS) -> "pd.DataFrame":
    """One model's bias per scope, subset and attribute, averaged over words: ``subset, attribute,
    statistic, value`` (``share_flagged``: the share of words with a flagged group)."""
    import numpy as np
    import pandas as pd

    rows = []
    for (subset, attribute), part in words.groupby(["subset", "attribute"], sort=False):
        for stat in statistics:
            if stat == "share_flagged":
                value = float((part["n_flagged"] > 0).mean())
            elif stat in part:
                value = float(np.nanmean(part[stat].to_numpy(dtype=np.float64))) if part[stat].notna().any() \
                    else np.nan
            else:
                raise UsageError(str(one_of(stat, [*KL_COLUMNS, "max_skew_excess", "share_flagged"], "statistic")))
            rows.append((str(subset), attribute, stat, value))
    return pd.DataFrame(rows, columns=["subset", "attribute", "statistic", "value"])


def ranking_transfer(per_model: "pd.DataFrame", *, interval: str = "bca", level: float = 0.95,
                     n_boot: int = 2000, seed: int = 0, permutations: int = 9999) -> "pd.DataFrame":
    """Does the ranking of models by their global bias hold on each subset?

    ``per_model``: ``model, subset, attribute, statistic, value`` (:func:`model_measures` of each
    model, with a ``model`` column; the global rows have ``subset == "all"``). Per attribute,
    statistic and subset: Spearman's rho, across models, between the global value and the subset's,
    its interval (from :data:`MIN_MODELS_INTERVAL` models), permutation p-value and BH q-value over
    every row.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.significance import bh_adjust

    check_interval_settings(interval, level, n_boot)
    rows = []
    i = 0
    for (attribute, statistic), part in per_model.groupby(["attribute", "statistic"], sort=False):
        wide = part.pivot_table(index="model", columns="subset", values="value", aggfunc="first", dropna=False)
        if GLOBAL not in wide.columns:
            continue
        for subset in [c for c in wide.columns if c != GLOBAL]:
            both = wide[[GLOBAL, subset]].to_numpy(dtype=np.float64)
            both = both[np.isfinite(both).all(axis=1)]
            n = len(both)
            if n < MIN_MODELS:
                rows.append((attribute, statistic, subset, n, np.nan, np.nan, np.nan, interval, np.nan))
                continue
            x, y = both[:, 0], both[:, 1]
            lo, hi = (rho_interval(x, y, interval=interval, level=level, n_boot=n_boot, seed=seed + i)
                      if n >= MIN_MODELS_INTERVAL else (np.nan, np.nan))
            rows.append((attribute, statistic, subset, n, spearman(x, y), lo, hi, interval,
                         spearman_p(x, y, permutations=permutations, seed=seed + i)))
            i += 1
    out = pd.DataFrame(rows, columns=[c for c in TRANSFER_COLUMNS if c != "q_value"])
    out["n_models"] = out["n_models"].astype(np.int64)
    out["q_value"] = bh_adjust(out["p_value"].to_numpy(dtype=np.float64)) if len(out) else []
    return out[list(TRANSFER_COLUMNS)]


__all__ = [
    "MIN_MODELS", "MIN_MODELS_INTERVAL", "Assignment", "SubsetTables", "bootstrap_interval", "centroids_of", "check_kmeans", "check_measures",
    "composition", "correlate_measures", "dispersion", "dispersion_summary", "fisher_interval", "from_clusters",
    "from_table", "from_values", "kl_recall", "kl_recall_null", "model_measures", "parse_by", "ranking_transfer",
    "rho_interval", "spearman", "spearman_p", "subset_k", "subset_scores", "typical_members",
    "changes_vs_controls", "query_top_groups", "skipped_summary", "tie_uniforms", "top_group_change_rates",
]
