"""Representation metrics of a retrieval: who is in a word's top-k, compared with whom we expect.

Everything here is vectorised over many words at once. Shapes:

* ``W`` words (query rows), ``N`` images, ``k`` retrieved images per word;
* ``G`` groups of one attribute, coded ``0..G-1`` (the caller keeps the names);
* ``labels`` is an ``(N,)`` integer array of group codes, one per image.

Conventions, chosen to match the common public implementations:

* ``share = count / k``.
* ``skew = ln(share / reference)``; a group with **count 0 uses share = 1/k inside the log**
  (the MaxSkew convention of the widely used implementations), so the skew of an absent group is
  finite: ``ln((1/k) / reference)``. ``share`` itself stays 0.
* Natural logarithms throughout. NDKL uses KL in nats with the ``1/log2(i + 1)`` position discount
  of Geyik et al. (2019); with nats it reproduces the published test vector (NDKL = 0.359497 on the
  10-item list in the tests; log2 would give 0.518645).
* A group **absent from the dataset** (base share 0) is excluded: its skew is NaN, it is left out
  of max/min skew and out of the ``L`` of the normalised entropy. Nothing is ever divided by zero.

Reference distributions (``reference=``):

``"base"`` (default)
    The group's share of the dataset.
``"uniform"``
    Equal representation: ``1/L`` for each of the ``L`` groups present in the dataset.
``"neutral"``
    The top-k shares of a neutral prompt ("a photo of a person"), so a word's skew says how it
    differs from what the model retrieves for *anyone*. A neutral share of 0 would make the skew
    infinite, so the neutral counts are smoothed with half a pseudo-count per present group
    (Jeffreys): ``(count + 1/2) / (k + L/2)``. The smoothed reference sums to 1 and is positive on
    every present group.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from clipprobe.errors import DataError, UsageError, one_of

if TYPE_CHECKING:  # pragma: no cover
    from typing import Sequence

    import numpy as np

log = logging.getLogger(__name__)

REFERENCES = ("base", "uniform", "neutral")

MSG_LABEL_RANGE = "labels: group codes must be integers in 0..{hi}, found {bad}"
MSG_ITEM_RANGE = "ranked items: expected integer indices in 0..{hi} into the items' group codes, found {bad}"
MSG_K_RANGE = "k={k} must be between 1 and the number of images ({n})"
MSG_NEUTRAL_MISSING = "reference 'neutral' needs the neutral prompt's top-k (neutral_ids/neutral_counts)"
MSG_SHAPE = "{what}: expected shape {expected}, got {got}"
MSG_EMPTY_DATASET = "labels: the dataset has no images"
MSG_NAN_SCORES = "scores: {n} value(s) are NaN (first in row {row}); a ranking needs comparable scores"
MSG_NOT_FINITE = "{what}: {n} row(s) hold NaN or infinite values (first: row {row})"
MSG_DIM = "queries have dimension {q} but the images have dimension {x}"


# ----------------------------------------------------------------------------------------------
# validation helpers


def check_labels(labels, n_groups: int) -> "np.ndarray":
    """Return ``labels`` as an int64 array after checking every code is in ``0..n_groups-1``."""
    import numpy as np

    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise DataError(MSG_SHAPE.format(what="labels", expected="(N,)", got=arr.shape))
    if arr.size == 0:
        raise DataError(MSG_EMPTY_DATASET)
    if not np.issubdtype(arr.dtype, np.integer):
        raise DataError(MSG_LABEL_RANGE.format(hi=n_groups - 1, bad=f"dtype {arr.dtype}"))
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_groups:
        raise DataError(MSG_LABEL_RANGE.format(hi=n_groups - 1, bad=lo if lo < 0 else hi))
    return arr.astype(np.int64, copy=False)


def check_k(k: int, n_total: int) -> int:
    if not (1 <= int(k) <= int(n_total)):
        raise UsageError(MSG_K_RANGE.format(k=k, n=n_total))
    return int(k)


# ----------------------------------------------------------------------------------------------
# retrieval-side primitives


def base_shares(labels, n_groups: int) -> "np.ndarray":
    """``(G,)`` float64: each group's share of the dataset (0 for groups absent from it)."""
    import numpy as np

    lab = check_labels(labels, n_groups)
    return np.bincount(lab, minlength=n_groups).astype(np.float64) / lab.size


def as_scores(scores) -> "np.ndarray":
    """``scores`` as a ``(W, N)`` array (one row for a 1-d input); any other shape is a DataError."""
    import numpy as np

    s = np.asarray(scores)
    if s.ndim == 1:
        s = s[None, :]
    if s.ndim != 2:
        raise DataError(MSG_SHAPE.format(what="scores", expected="(W, N)", got=s.shape))
    return s


# Chunks of the exact scoring: at most this many images per float64 block, and this many scores.
_SCORE_CHUNK_IMAGES = 8192
_SCORE_CHUNK_CELLS = 1 << 22


def _finite_rows(arr, what: str) -> None:
    import numpy as np

    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise DataError(MSG_NOT_FINITE.format(what=what, n=int(bad.sum()), row=int(np.flatnonzero(bad)[0])))


def similarity_scores(queries, images) -> "np.ndarray":
    """``(W, N)`` float32 dot products of ``W`` query rows with ``N`` image rows (cosine similarities
    when both are L2-normalised): the one scoring function of ``retrieve``, ``report``, the bootstrap
    and ``subsets``.

    Each score is the exact dot product of the float32 vectors rounded once to float32 (round to
    nearest, ties to even; zero is +0.0). It is therefore the same number on every CPU, for every
    number of threads, for a word scored alone or among many, and for an image at any position: a
    float32 matrix product is none of these (its kernels block and sum in orders that depend on the
    shapes and the machine, which moves the last bit and with it near-ties). Duplicate images tie
    exactly, and :func:`rank_topk` breaks the tie by the lower image index.

    How: a float64 matrix product, whose error is at most ``gamma * |q| * |x|`` with
    ``gamma = 2 (D + 2) 2**-53`` (twice the classic bound of any order of summation of ``D``
    products); where every value within that bound rounds to the same float32 (nearly every score),
    that is the answer; the rest (measured: 1 to 3 scores in 10^5 for CLIP-like cosines around 0.25, up to
    1 in 10^3 for random vectors, whose cosines crowd near 0 where float32 is finest) are summed exactly
    (``math.fsum`` of the exact float64 products, with the rounding to float32 decided exactly at a
    midpoint). Cost: 2.5 to 3.5 times a float32 matrix product for a report's 435 queries over 10,954
    images (``benchmarks/bench_scores.py``). Rows holding NaN or infinite values are a DataError.
    """
    return _similarity_scores(queries, images)[0]


def _similarity_scores(queries, images) -> tuple["np.ndarray", int]:
    """:func:`similarity_scores` and the number of scores it summed exactly."""
    import numpy as np

    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    x = np.asarray(images, dtype=np.float32)
    if q.ndim != 2:
        raise DataError(MSG_SHAPE.format(what="queries", expected="(W, D)", got=q.shape))
    if x.ndim != 2:
        raise DataError(MSG_SHAPE.format(what="images", expected="(N, D)", got=x.shape))
    if q.shape[1] != x.shape[1]:
        raise DataError(MSG_DIM.format(q=q.shape[1], x=x.shape[1]))
    _finite_rows(q, "queries")
    _finite_rows(x, "images")
    n_words, dim = q.shape
    n_images = x.shape[0]
    out = np.empty((n_words, n_images), dtype=np.float32)
    if n_words == 0 or n_images == 0:
        return out, 0
    q64 = q.astype(np.float64)
    gamma = 2.0 * (dim + 2) * 2.0 ** -53
    q_bound = gamma * np.sqrt(np.einsum("ij,ij->i", q64, q64))                # (W,)
    step = max(1, min(_SCORE_CHUNK_IMAGES, _SCORE_CHUNK_CELLS // n_words))
    kernel = _score_kernel()
    open_at = np.empty(max(1024, (n_words * step) >> 8), dtype=np.int64)
    n_open = 0
    for lo in range(0, n_images, step):
        hi = min(n_images, lo + step)
        x64 = x[lo:hi].astype(np.float64)
        exact = q64 @ x64.T                                                  # (W, c) float64
        err = q_bound * float(np.sqrt(np.einsum("ij,ij->i", x64, x64).max()))
        block = np.empty(exact.shape, dtype=np.float32)
        count = kernel.settle(exact, err, block, open_at)
        if count > len(open_at):            # more than the buffer holds: find them all again
            where = np.flatnonzero((exact - err[:, None]).astype(np.float32)
                                   != (exact + err[:, None]).astype(np.float32))
        else:
            where = open_at[:count]
        for flat in where.tolist():
            w, j = divmod(flat, exact.shape[1])
            block[w, j] = _exact_dot_f32(q64[w], x64[j]) + np.float32(0.0)     # -0.0 -> +0.0
        n_open += count
        out[:, lo:hi] = block
    log.debug("scores: %d of %d summed exactly", n_open, n_words * n_images)
    return out, n_open


_SCORE_KERNEL = None


def _score_kernel():
    """The compiled pass (:mod:`clipprobe.analysis._scorekernel`), cached in clipprobe's cache folder."""
    global _SCORE_KERNEL
    if _SCORE_KERNEL is None:
        from clipprobe._jitcache import enable_cache
        from clipprobe.analysis import _scorekernel

        enable_cache(_scorekernel.settle)
        _SCORE_KERNEL = _scorekernel
    return _SCORE_KERNEL


def _exact_dot_f32(a, b) -> "np.float32":
    """The exact dot product of two float64 vectors holding float32 values, rounded once to float32."""
    import math

    import numpy as np

    products = (a * b).tolist()          # exact: a float32 x float32 product fits in a float64
    s = math.fsum(products)              # the exact sum, correctly rounded to float64
    near = np.float32(s)
    if float(near) == s:
        return near
    other = np.nextafter(near, np.float32(np.inf) if float(near) < s else np.float32(-np.inf))
    midpoint = (float(near) + float(other)) / 2.0    # exact: two neighbouring float32 values
    if s != midpoint:
        return near                      # the exact sum lies on the same side of the midpoint as s
    side = math.fsum(products + [-midpoint])   # its sign is the sign of (exact sum - midpoint)
    if side == 0.0:
        return near                      # a true tie: round half to even, as np.float32 did
    return other if (side > 0) == (float(other) > float(near)) else near


def unique_columns(rows) -> tuple["np.ndarray", "np.ndarray"]:
    """``np.unique(rows, axis=1, return_inverse=True)`` for a ``(m, n)`` array of whole numbers (the same
    columns in the same order, and each column's index among them), through one int64 key per column
    where the values' ranges allow it (a sort of ``n`` integers instead of ``n`` records)."""
    import numpy as np

    arr = np.asarray(rows)
    if arr.ndim != 2 or arr.shape[1] == 0:
        cells, inverse = np.unique(arr, axis=1, return_inverse=True)
        return cells, inverse.ravel()
    whole = arr.astype(np.int64)
    lo = whole.min(axis=1)
    span = whole.max(axis=1) - lo + 1
    if not np.array_equal(whole, arr) or float(np.prod(span.astype(np.float64))) >= 2.0 ** 62:
        cells, inverse = np.unique(arr, axis=1, return_inverse=True)
        return cells, inverse.ravel()
    key = np.zeros(arr.shape[1], dtype=np.int64)
    for i in range(arr.shape[0]):                       # the first row most significant: np.unique's order
        key = key * span[i] + (whole[i] - lo[i])
    keys, inverse = np.unique(key, return_inverse=True)
    cells = np.empty((arr.shape[0], keys.size), dtype=np.int64)
    for i in range(arr.shape[0] - 1, -1, -1):
        keys, digit = np.divmod(keys, span[i])
        cells[i] = digit + lo[i]
    return cells.astype(arr.dtype), inverse.ravel()


def rank_topk(scores, k: int) -> "np.ndarray":
    """``(W, k)`` int64 ids of each row's ``k`` highest scores, best first.

    Ties are broken by the lower image index, so the result is deterministic and identical to a
    stable ``argsort(-scores)[:, :k]``; :func:`clipprobe.analysis.bootstrap.bootstrap_counts` uses the same rule.
    Runs in O(W·N) with ``np.partition`` instead of a full sort.
    """
    import numpy as np

    s = as_scores(scores)
    n_words, n_total = s.shape
    k = check_k(k, n_total)
    nan = np.isnan(s)
    if nan.any():
        raise DataError(MSG_NAN_SCORES.format(n=int(nan.sum()), row=int(np.flatnonzero(nan.any(axis=1))[0])))
    if k == n_total:
        return np.argsort(-s, axis=1, kind="stable").astype(np.int64, copy=False)
    # The k-th largest value of each row; everything strictly above it is in, and the ties at it
    # are filled in index order until k are chosen.
    kth = np.partition(s, n_total - k, axis=1)[:, n_total - k]
    chosen = s >= kth[:, None]
    excess = np.flatnonzero(chosen.sum(axis=1) > k)  # rows with more ties at the k-th value than slots
    if excess.size:
        sub = s[excess]
        above = sub > kth[excess, None]
        at = sub == kth[excess, None]
        need = k - above.sum(axis=1)
        chosen[excess] = above | (at & (np.cumsum(at, axis=1) <= need[:, None]))
    ids = np.nonzero(chosen)[1].reshape(n_words, k)  # row-major: ascending index within a row
    picked = np.take_along_axis(s, ids, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")  # stable keeps lower index first on ties
    return np.take_along_axis(ids, order, axis=1).astype(np.int64)


def topk_counts(topk_ids, labels, n_groups: int) -> "np.ndarray":
    """``(W, G)`` int64: how many of each word's top-k images belong to each group."""
    import numpy as np

    lab = check_labels(labels, n_groups)
    ids = np.asarray(topk_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    if ids.ndim != 2:
        raise DataError(MSG_SHAPE.format(what="topk_ids", expected="(W, k)", got=ids.shape))
    n_words = ids.shape[0]
    flat = lab[ids] + n_groups * np.arange(n_words)[:, None]
    return np.bincount(flat.ravel(), minlength=n_words * n_groups).reshape(n_words, n_groups)


# ----------------------------------------------------------------------------------------------
# reference distributions


def reference_shares(reference: str, *, base_share, neutral_counts=None, k: int | None = None) -> "np.ndarray":
    """The reference distribution that skews are measured against (see the module docstring).

    ``base_share`` is ``(G,)`` or ``(..., G)``; ``neutral_counts`` (the neutral prompt's top-k
    group counts) broadcasts against it. Returns float64 of the broadcast shape, 0 on groups
    absent from the dataset.
    """
    import numpy as np

    if reference not in REFERENCES:
        raise one_of(reference, REFERENCES, "reference")
    base = np.asarray(base_share, dtype=np.float64)
    present = base > 0
    n_present = present.sum(axis=-1, keepdims=True)
    if reference == "base":
        return base.copy()
    if reference == "uniform":
        return np.where(present, 1.0 / np.maximum(n_present, 1), 0.0)
    if neutral_counts is None:
        raise UsageError(MSG_NEUTRAL_MISSING)
    counts = np.asarray(neutral_counts, dtype=np.float64)
    if k is None:
        k = counts.sum(axis=-1, keepdims=True)
    return np.where(present, (counts + 0.5) / (np.asarray(k, dtype=np.float64) + 0.5 * n_present), 0.0)


# ----------------------------------------------------------------------------------------------
# group- and word-level statistics


def group_stats(counts, reference_share, k: int) -> dict[str, "np.ndarray"]:
    """Per (word, group): ``share`` and ``skew`` (float64 arrays shaped like ``counts``).

    ``reference_share`` is ``(G,)`` or broadcastable to ``counts``. ``skew`` is
    ``ln(max(count, 1) / k / reference)`` and NaN where the reference is 0 (group absent).
    """
    import numpy as np

    c = np.asarray(counts)
    ref = np.asarray(reference_share, dtype=np.float64)
    share = c / float(k)
    floored = np.maximum(c, 1) / float(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        skew = np.where(ref > 0, np.log(floored / np.where(ref > 0, ref, 1.0)), np.nan)
    return {"share": share.astype(np.float64), "skew": skew}


def norm_entropy(shares, present) -> "np.ndarray":
    """``H(shares) / ln(L)`` over the ``L`` present groups, natural logs; NaN when ``L < 2``."""
    import numpy as np

    p = np.asarray(shares, dtype=np.float64)
    pres = np.broadcast_to(np.asarray(present, dtype=bool), p.shape)
    n_present = pres.sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pres & (p > 0), p * np.log(np.where(p > 0, p, 1.0)), 0.0)
        h = -terms.sum(axis=-1)
        return np.where(n_present >= 2, h / np.log(np.maximum(n_present, 2)), np.nan)


def kl_divergence(shares, reference_share) -> "np.ndarray":
    """``sum over share > 0 of share * ln(share / reference)`` along the last axis (nats)."""
    import numpy as np

    p = np.asarray(shares, dtype=np.float64)
    q = np.broadcast_to(np.asarray(reference_share, dtype=np.float64), p.shape)
    use = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        # A retrieved group with reference 0 cannot happen for the base reference; if a caller's
        # reference allows it, the divergence is +inf, which is the honest answer.
        ratio = np.where(use, p / np.where(use, q, 1.0), 1.0)
        return np.where(use, p * np.log(ratio), 0.0).sum(axis=-1)


_NDKL_KERNEL = None


def _ndkl_kernel():
    """The compiled pass (:mod:`clipprobe.analysis._ndklkernel`), cached in clipprobe's cache folder."""
    global _NDKL_KERNEL
    if _NDKL_KERNEL is None:
        from clipprobe._jitcache import enable_cache
        from clipprobe.analysis import _ndklkernel

        enable_cache(_ndklkernel.ndkl_rows)
        _NDKL_KERNEL = _ndklkernel
    return _NDKL_KERNEL


def ndkl(ranked_labels, reference_share, n_groups: int, *, codes=None) -> "np.ndarray":
    """Normalised discounted KL divergence (Geyik et al. 2019) of each ranked list.

    ``ranked_labels`` is ``(W, n)`` group codes in rank order (a top-k or a whole ranking), or, with
    ``codes`` (``(N,)`` group codes of ``N`` items), item indices into ``codes`` in rank order;
    ``reference_share`` is ``(G,)`` or ``(W, G)``. ``NDKL = (1/Z) sum_{i=1..n} KL(P_i || reference) /
    log2(i + 1)`` with ``Z = sum_{i=1..n} 1 / log2(i + 1)`` and ``P_i`` the group shares of the top ``i``;
    KL in nats. One compiled pass of ``O(W n)`` (:mod:`clipprobe.analysis._ndklkernel`: each prefix's
    KL divergence is updated from the one before).
    """
    import numpy as np

    lab = np.asarray(ranked_labels)
    if lab.ndim == 1:
        lab = lab[None, :]
    n_words, n = lab.shape
    if codes is None:
        lab = check_labels(lab.ravel(), n_groups).reshape(n_words, n)
        item_codes = np.arange(n_groups, dtype=np.int64)
    else:
        item_codes = check_labels(codes, n_groups)
        if not np.issubdtype(lab.dtype, np.integer):
            raise DataError(MSG_ITEM_RANGE.format(hi=item_codes.size - 1, bad=f"dtype {lab.dtype}"))
        if lab.size and (lab.min() < 0 or lab.max() >= item_codes.size):
            bad = int(lab.min()) if lab.min() < 0 else int(lab.max())
            raise DataError(MSG_ITEM_RANGE.format(hi=item_codes.size - 1, bad=bad))
        lab = lab.astype(np.int64, copy=False)       # a view of a ranking (rows of a block) stays a view
    ref = np.broadcast_to(np.asarray(reference_share, dtype=np.float64), (n_words, n_groups))
    with np.errstate(divide="ignore"):
        log_ref = np.ascontiguousarray(np.log(ref))
    c = np.arange(n + 1, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        clogc = np.where(c > 0, c * np.log(np.where(c > 0, c, 1.0)), 0.0)
    log_i = np.log(np.maximum(c, 1.0))
    discount = 1.0 / np.log2(np.maximum(c, 1.0) + 1.0)         # index 0 unused
    out = np.empty(n_words)
    _ndkl_kernel().ndkl_rows(lab, item_codes, log_ref, clogc, log_i, discount, out)
    return out


def word_stats(counts, reference_share, k: int, *, present=None, topk_labels=None) -> dict[str, "np.ndarray"]:
    """Per word: ``max_skew``, ``min_skew``, ``norm_entropy``, ``kl_to_base``, ``ndkl``, ``top_group``.

    ``counts`` is ``(..., G)``; ``reference_share`` broadcasts to it. ``present`` marks the groups of
    the dataset (default: reference > 0) and sets the ``L`` of the normalised entropy. ``kl_to_base``
    is the KL divergence to the chosen reference (the base shares by default). ``ndkl`` needs the
    rank-ordered ``topk_labels`` (``(W, k)``); without them it is NaN. ``top_group`` is the group
    with the largest skew (the lowest code on ties), -1 if no group is present.
    All values are float64 arrays of shape ``counts.shape[:-1]`` except ``top_group`` (int64).
    """
    import numpy as np

    c = np.asarray(counts)
    ref = np.broadcast_to(np.asarray(reference_share, dtype=np.float64), c.shape)
    pres = ref > 0 if present is None else np.broadcast_to(np.asarray(present, dtype=bool), c.shape)
    g = group_stats(c, ref, k)
    skew = np.where(pres, g["skew"], np.nan)
    any_present = np.isfinite(skew).any(axis=-1)
    safe = np.where(np.isfinite(skew), skew, -np.inf)
    max_skew = np.where(any_present, safe.max(axis=-1), np.nan)
    min_skew = np.where(any_present, np.where(np.isfinite(skew), skew, np.inf).min(axis=-1), np.nan)
    top_group = np.where(any_present, safe.argmax(axis=-1), -1).astype(np.int64)
    if topk_labels is not None:
        nd = ndkl(topk_labels, reference_share, c.shape[-1])
        nd = nd.reshape(c.shape[:-1])
    else:
        nd = np.full(c.shape[:-1], np.nan)
    return {
        "max_skew": max_skew,
        "min_skew": min_skew,
        "norm_entropy": norm_entropy(g["share"], pres),
        "kl_to_base": kl_divergence(g["share"], ref),
        "ndkl": nd,
        "top_group": top_group,
    }


def c_asc(similarities, labels, n_groups: int) -> "np.ndarray":
    """C-ASC per (word, group): (mean similarity to the group's images - mean to the other images)
    divided by the standard deviation (population, ddof=0) of the similarity over all images.

    ``similarities`` is ``(W, N)``. NaN for a group absent from the dataset, for a group that holds
    every image, and for a word whose similarities are all equal.
    """
    return c_asc_attributes(similarities, [labels], [n_groups])[0]


def c_asc_attributes(similarities, labels: "Sequence", n_groups: "Sequence[int]") -> list:
    """:func:`c_asc` of several attributes of the same images (``labels[i]`` with ``n_groups[i]`` groups),
    the similarities' sums and spread computed once."""
    import numpy as np

    labs = [check_labels(lab, int(g)) for lab, g in zip(labels, n_groups)]
    sims = np.asarray(similarities, dtype=np.float64)
    if sims.ndim == 1:
        sims = sims[None, :]
    for lab in labs:
        if sims.ndim != 2 or sims.shape[1] != lab.size:
            raise DataError(MSG_SHAPE.format(what="similarities", expected=f"(W, {lab.size})", got=sims.shape))
    total = sims.sum(axis=1, keepdims=True)
    try:                                  # numpy >= 2: the mean from the sum above (the same numbers)
        std = sims.std(axis=1, keepdims=True, mean=total / sims.shape[1])
    except TypeError:
        std = sims.std(axis=1, keepdims=True)
    # every attribute's group sums from one product (one pass over the similarities)
    widths = [int(g) for g in n_groups]
    starts = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64)
    onehot = np.zeros((sims.shape[1], int(starts[-1])))
    rows = np.arange(sims.shape[1])
    for lab, start in zip(labs, starts):
        onehot[rows, lab + start] = 1.0
    sums = sims @ onehot  # (W, sum of G)
    out = []
    for lab, n_g, start in zip(labs, n_groups, starts.tolist()):
        n_total = lab.size
        sizes = np.bincount(lab, minlength=int(n_g)).astype(np.float64)
        group_sum = sums[:, start:start + int(n_g)]  # (W, G)
        with np.errstate(divide="ignore", invalid="ignore"):
            mean_in = group_sum / sizes
            mean_out = (total - group_sum) / (n_total - sizes)
            values = (mean_in - mean_out) / std
        valid = (sizes > 0) & (sizes < n_total)
        out.append(np.where(valid[None, :] & (std > 0), values, np.nan))
    return out


# ----------------------------------------------------------------------------------------------
# everything for one attribute


def point_estimates(
    topk_ids, labels, n_groups: int, *, reference: str = "base", neutral_ids=None
) -> dict[str, "np.ndarray"]:
    """All point estimates of one attribute for ``W`` words from their ranked top-k ids.

    Returns a dict of arrays: per (word, group) ``count`` (int64), ``share``, ``base_share``,
    ``reference_share``, ``skew`` (``(W, G)``); per word ``max_skew``, ``min_skew``,
    ``norm_entropy``, ``kl_to_base``, ``ndkl``, ``top_group`` (``(W,)``). With
    ``reference="neutral"``, ``neutral_ids`` are the neutral prompt's ranked top-k ids.
    Groups absent from the dataset are excluded (NaN skew) and logged once.
    """
    import numpy as np

    lab = check_labels(labels, n_groups)
    ids = np.asarray(topk_ids)
    if ids.ndim == 1:
        ids = ids[None, :]
    k = check_k(ids.shape[1], lab.size)
    base = np.bincount(lab, minlength=n_groups) / lab.size
    absent = np.flatnonzero(base == 0)
    if absent.size:
        log.info("groups %s are absent from the dataset and are excluded from skew and entropy", absent.tolist())
    if reference == "neutral":
        if neutral_ids is None:
            raise UsageError(MSG_NEUTRAL_MISSING)
        nids = np.asarray(neutral_ids).reshape(1, -1)
        neutral = topk_counts(nids, lab, n_groups)[0]
        ref = reference_shares("neutral", base_share=base, neutral_counts=neutral, k=nids.shape[1])
    else:
        ref = reference_shares(reference, base_share=base)
    counts = topk_counts(ids, lab, n_groups)
    g = group_stats(counts, ref, k)
    w = word_stats(counts, ref, k, present=base > 0, topk_labels=lab[ids])
    out = {
        "count": counts,
        "share": g["share"],
        "base_share": np.broadcast_to(base, counts.shape).copy(),
        "reference_share": np.broadcast_to(ref, counts.shape).copy(),
        "skew": np.where(base > 0, g["skew"], np.nan),
    }
    out.update(w)
    return out


__all__ = [
    "REFERENCES",
    "base_shares",
    "c_asc",
    "c_asc_attributes",
    "check_k",
    "check_labels",
    "group_stats",
    "kl_divergence",
    "ndkl",
    "norm_entropy",
    "point_estimates",
    "rank_topk",
    "reference_shares",
    "similarity_scores",
    "topk_counts",
    "unique_columns",
    "word_stats",
]
