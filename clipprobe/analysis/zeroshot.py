"""Zero-shot attribute classification of image embeddings, and how good (and how biased) the classifier is.

Pure functions on arrays; no files, no models. An attribute classifier here is a CLIP model's text tower:
each class (a group of the attribute, e.g. ``Female`` / ``Male``, and optionally classes that mean "no
group", e.g. ``no person``) is the normalised mean of its prompts' text embeddings
(:func:`class_vectors`), and an image embedding ``x`` gets

* ``cos_c = x . t_c / |x|`` (:func:`class_scores`; float16 or float32 rows, any number of them, read
  block by block: a memory-mapped LAION shard is never loaded whole);
* soft probabilities ``p = softmax(scale * cos)`` over all classes (:func:`probabilities`; ``scale`` the
  model's logit scale, 100 for OpenAI's CLIP). ``p_k`` for a group ``k`` is the image's ``E[s_k]`` in
  the moments of Alabdulmohsin et al. (ICLR 2024); the mass of the "no group" classes is ``1 - sum_k p_k``;
* a hard label (:func:`hard_labels`): the class with the highest cosine (the lower index on ties). A
  "no group" class gives :data:`NONE`; a winning group whose probability is below ``threshold`` gives
  :data:`UNSURE`; a row that is NaN, infinite or zero gives :data:`INVALID`. Only labels ``>= 0`` name a group.

Concept labels (several per image, e.g. the occupations an image shows) are yes/no questions, one per
concept: :func:`label_probabilities` gives ``P(y_r = 1) = softmax(scale * [cos(x, c_r), cos(x, n_r)])_0``
for the concept's class vector ``c_r`` (e.g. "a photo of a nurse") and its negation's ``n_r`` (e.g. "a
photo of a person who is not a nurse"), each concept on its own (multi-label: they need not sum to 1).

Every number is a pure function of the inputs: the dot products are summed in a fixed order
(:mod:`clipprobe.analysis._zskernel`), so the same embeddings give the same labels on any CPU and thread
count, and the probabilities are rounded to float32 from float64.

:func:`classifier_accuracy` measures the classifier on a labelled face dataset: per true group its
accuracy (Wilson interval, :func:`clipprobe.analysis.intervals.wilson_interval`: images are independent
draws), precision, the share it labels "no group" or unsure, the confusion matrix, and the shares of
the groups among the images it labels against the true shares. The attribute classifier is itself
biased; these numbers say how much, and they are stored with every run that uses it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

NONE = -1       # a "no group" class (e.g. "no person") won
UNSURE = -2     # a group won with a probability below the threshold
INVALID = -3    # the embedding is NaN, infinite or zero
STATUS = {NONE: "none", UNSURE: "unsure", INVALID: "invalid"}
BLOCK_ROWS = 65_536
CALIBRATION_BINS = 10      # equal-width bins of a probability, for the calibration error
CALIBRATION_RESAMPLES = 999     # draws of the truth from the probabilities themselves (the calibration test)
CALIBRATION_CHANCE = 0.95       # the quantile of those draws' calibration errors reported as "by chance"

MSG_SHAPE = "{name}: expected a 2-d (n, dim) array, got shape {shape}"
MSG_DIM = "{name} has dimension {got}, the class vectors {want}"
MSG_DTYPE = "{name}: expected float16 or float32 embeddings, got {dtype}"
MSG_CLASSES = "classes: expected finite (C, dim) class vectors with C >= 2, got {problem}"
MSG_GROUPS = "n_groups={value!r} must be between 1 and the number of classes ({c})"
MSG_SCALE = "scale={value!r} must be a positive finite number"
MSG_THRESHOLD = "threshold={value!r} must be in [0, 1)"
MSG_LEVEL = "level={value!r} must be strictly between 0 and 1"
MSG_LENGTHS = "true labels ({n_true}) and predicted labels ({n_pred}) differ in length"
MSG_PROBS = "probs: expected ({n}, C) probabilities with C >= {k} (the groups first), got shape {shape}"
MSG_NO_GROUP_IMAGES = "no image of the labelled data belongs to the groups {groups} (labels found: {found})"
MSG_PROMPTS = "class {name!r}: no prompt vectors"
MSG_NEGATIONS = ("negation_vectors: expected one (dim,) vector per concept, the shape of concept_vectors "
                 "{want}, got {got}")


@dataclasses.dataclass(frozen=True)
class Scores:
    """``cos`` ``(n, C)`` float32 cosine of each row with each class; ``valid`` ``(n,)`` bool (finite, nonzero)."""

    cos: "np.ndarray"
    valid: "np.ndarray"


def class_vectors(prompt_vectors: Sequence["np.ndarray"], names: Sequence[str] | None = None) -> "np.ndarray":
    """``(C, dim)`` float32 unit class vectors: each class's prompt embeddings (rows, any norm) normalised,
    averaged and normalised again (CLIP's prompt ensembling)."""
    import numpy as np

    out = []
    for i, v in enumerate(prompt_vectors):
        v = np.asarray(v, np.float64)
        if v.ndim == 1:
            v = v[None, :]
        if v.shape[0] == 0:
            raise DataError(MSG_PROMPTS.format(name=names[i] if names else i))
        v = v / np.linalg.norm(v, axis=1, keepdims=True)
        m = v.mean(axis=0)
        out.append(m / np.linalg.norm(m))
    return np.stack(out).astype(np.float32)


def _check_classes(classes) -> "np.ndarray":
    import numpy as np

    t = np.asarray(classes)
    if t.ndim != 2 or t.shape[0] < 2 or not np.issubdtype(t.dtype, np.floating) or not np.isfinite(t).all():
        raise UsageError(MSG_CLASSES.format(problem=f"shape {t.shape}, dtype {t.dtype}"))
    return np.ascontiguousarray(t, np.float32)


def _check_rows(x, name: str, dim: int):
    import numpy as np

    if not hasattr(x, "dtype") or not hasattr(x, "shape"):
        x = np.asarray(x)
    if len(x.shape) != 2:
        raise DataError(MSG_SHAPE.format(name=name, shape=tuple(x.shape)))
    if x.dtype not in (np.float16, np.float32):
        raise DataError(MSG_DTYPE.format(name=name, dtype=x.dtype))
    if x.shape[1] != dim:
        raise DataError(MSG_DIM.format(name=name, got=x.shape[1], want=dim))
    return x


def class_scores(x, classes, *, threads: int = 1, block_rows: int = BLOCK_ROWS, name: str = "embeddings") -> Scores:
    """Cosine of each row of ``x`` (``(n, dim)`` float16/float32, e.g. a memory map) with each class vector.

    Read ``block_rows`` rows at a time; ``threads`` threads per block. A row that is NaN, infinite or
    zero gets ``valid = False`` and cosines NaN.
    """
    import numpy as np

    from clipprobe.analysis import _zskernel

    t = _check_classes(classes)
    x = _check_rows(x, name, t.shape[1])
    n = int(x.shape[0])
    dots = np.empty((n, t.shape[0]), np.float32)
    norms = np.empty(n, np.float32)
    _zskernel.enable_cache()
    for start in range(0, n, block_rows):
        block = np.ascontiguousarray(np.asarray(x[start:start + block_rows]))
        _zskernel.scores(block, t, dots[start:start + len(block)], norms[start:start + len(block)], threads)
    norm = np.sqrt(norms)
    valid = np.isfinite(norm) & (norm > 0) & np.isfinite(dots).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dots / norm[:, None]
    cos[~valid] = np.nan
    return Scores(cos, valid)


def probabilities(cos, scale: float) -> "np.ndarray":
    """``(n, C)`` float32 softmax of ``scale * cos`` (NaN rows stay NaN)."""
    import numpy as np

    s = _check_scale(scale)
    z = np.asarray(cos, np.float64) * s
    with np.errstate(invalid="ignore"):
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        p = e / e.sum(axis=1, keepdims=True)
    return p.astype(np.float32)


SCALE_BOUNDS = (1e-2, 1e4)      # the softmax scales fit_scale searches (OpenAI's CLIP: 100)
MSG_FIT_ROWS = "fit_scale: {what}: no row has finite cosines and a true class"


def _mean_nll(cos, true, scale: float) -> float:
    """The mean of ``-log softmax(scale * cos)[true]`` over the rows (float64, shifted by each row's max)."""
    import numpy as np

    z = cos * scale
    z = z - z.max(axis=1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(true)), true]))


def fit_scale(cos, true, *, what: str = "labelled images") -> float:
    """The softmax scale ``s`` whose probabilities ``softmax(s * cos)`` give the true classes the highest
    likelihood: temperature scaling (Guo et al., ICML 2017) of a zero-shot classifier on labelled images.

    ``cos``: ``(n, C)`` cosines (:func:`class_scores`); ``true``: ``(n,)`` the column of each row's true
    class (negative: none of them; such rows and rows with non-finite cosines are left out). ``s`` is
    searched on a log scale in :data:`SCALE_BOUNDS` (Brent's bounded method, to a relative 1e-9): a pure
    function of the inputs. One scale moves every probability toward or away from its row's best class;
    it does not change which class is best.
    """
    import math

    import numpy as np
    from scipy.optimize import minimize_scalar

    c = np.asarray(cos, np.float64)
    t = np.asarray(true, np.int64).reshape(-1)
    ok = (t >= 0) & (t < c.shape[1]) & np.isfinite(c).all(axis=1)
    if not ok.any():
        raise DataError(MSG_FIT_ROWS.format(what=what))
    c, t = c[ok], t[ok]
    lo, hi = (math.log(b) for b in SCALE_BOUNDS)
    best = minimize_scalar(lambda u: _mean_nll(c, t, math.exp(u)), bounds=(lo, hi), method="bounded",
                           options={"xatol": 1e-9})
    return float(math.exp(best.x))


def cross_fit_probabilities(cos, true, *, folds: int = 2, seed: int = 0) -> tuple["np.ndarray", list[float]]:
    """Held-out probabilities of a fitted scale: the rows split at random (``seed``) into ``folds`` parts,
    each part's probabilities at the scale :func:`fit_scale` finds on the other parts. ``(probs, scales)``:
    ``(n, C)`` float32 and the scale of each part. The calibration measured on these is not flattered by
    the fit."""
    import numpy as np

    c = np.asarray(cos)
    t = np.asarray(true, np.int64).reshape(-1)
    part = np.random.default_rng([int(seed), 0x5CA1E]).permutation(len(t)) % int(folds)
    probs = np.full(c.shape, np.nan, np.float32)
    scales = []
    for f in range(int(folds)):
        scale = fit_scale(c[part != f], t[part != f], what=f"the rows outside part {f + 1} of {folds}")
        probs[part == f] = probabilities(c[part == f], scale)
        scales.append(scale)
    return probs, scales


def label_probabilities(x, concept_vectors, negation_vectors, scale: float, *, threads: int = 1,
                        block_rows: int = BLOCK_ROWS, name: str = "embeddings") -> "np.ndarray":
    """``(n, R)`` float32 multi-label zero-shot probabilities: for each row of ``x`` and each concept ``r``,
    the softmax of ``scale * cos`` over the pair (concept ``r``, its negation ``r``), taken at the concept,
    i.e. ``1 / (1 + exp(-scale * (cos(x, c_r) - cos(x, n_r))))``. ``concept_vectors`` and
    ``negation_vectors``: ``(R, dim)`` unit class vectors (:func:`class_vectors`). A NaN, infinite or zero
    row gives NaN. The cosines are :func:`class_scores`' (the same on any CPU and thread count)."""
    import numpy as np

    c = np.asarray(concept_vectors)
    neg = np.asarray(negation_vectors)
    if neg.shape != c.shape:
        raise UsageError(MSG_NEGATIONS.format(want=tuple(c.shape), got=tuple(neg.shape)))
    r = c.shape[0] if c.ndim == 2 else 0
    classes = np.concatenate([c, neg]) if c.ndim == 2 and neg.ndim == 2 else c
    cos = class_scores(x, classes, threads=threads, block_rows=block_rows, name=name).cos
    return pair_probabilities(cos[:, :r], cos[:, r:], scale)


def pair_probabilities(cos_yes, cos_no, scale: float) -> "np.ndarray":
    """``probabilities`` of each pair ``(cos_yes, cos_no)`` (arrays of one shape), taken at ``cos_yes``: the
    same float32 bits as ``probabilities(np.stack([cos_yes, cos_no], -1).reshape(-1, 2), scale)[:, 0]``.

    Of ``exp(z - max(z))`` over a pair one term is ``exp(0) = 1``; only the other is computed (one ``exp``
    per pair instead of two), and the sum is ``e_yes + e_no`` in that order, as the row sum of two."""
    import numpy as np

    s = _check_scale(scale)
    z_yes = np.asarray(cos_yes, np.float64) * s
    z_no = np.asarray(cos_no, np.float64) * s
    top = np.maximum(z_yes, z_no)                       # NaN where either is NaN, as max over the pair
    yes_wins = z_yes >= z_no                            # False where either is NaN
    with np.errstate(invalid="ignore"):
        e = np.exp(np.minimum(z_yes - top, z_no - top))  # the term that is not exp(0) (exp(0) on a tie)
        e_yes = np.where(yes_wins, 1.0, e)
        e_no = np.where(yes_wins, e, 1.0)
        return (e_yes / (e_yes + e_no)).astype(np.float32)


def hard_labels(cos, probs, *, n_groups: int, threshold: float = 0.0) -> "np.ndarray":
    """``(n,)`` int8: the group (``0..n_groups-1``) of the class with the highest cosine, or :data:`NONE`
    (a class ``>= n_groups`` won), :data:`UNSURE` (its probability ``< threshold``), :data:`INVALID` (NaN row)."""
    import numpy as np

    cos = np.asarray(cos)
    c = cos.shape[1]
    if not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= c:
        raise UsageError(MSG_GROUPS.format(value=n_groups, c=c))
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise UsageError(MSG_THRESHOLD.format(value=threshold))
    valid = np.isfinite(cos).all(axis=1)
    best = np.argmax(np.where(valid[:, None], cos, 0), axis=1)
    codes = best.astype(np.int8)
    codes[best >= n_groups] = NONE
    p_best = np.take_along_axis(np.asarray(probs), best[:, None], axis=1)[:, 0]
    codes[(codes >= 0) & (p_best < threshold)] = UNSURE
    codes[~valid] = INVALID
    return codes


@dataclasses.dataclass(frozen=True)
class Classification:
    """``probs`` ``(n, C)`` float32, ``codes`` ``(n,)`` int8 (see :func:`hard_labels`), ``cos`` ``(n, C)``."""

    probs: "np.ndarray"
    codes: "np.ndarray"
    cos: "np.ndarray"

    def counts(self, groups: Sequence[str]) -> dict[str, int]:
        """Rows per group and per status (none, unsure, invalid)."""
        import numpy as np

        out = {g: int(np.count_nonzero(self.codes == k)) for k, g in enumerate(groups)}
        out.update({name: int(np.count_nonzero(self.codes == code)) for code, name in STATUS.items()})
        return out

    def soft_shares(self, n_groups: int) -> "np.ndarray":
        """``(K,)`` the groups' shares from the soft probabilities: ``sum_i p_ik / sum_i sum_k p_ik`` over
        the valid rows (``E[s_k]`` normalised over the group mass)."""
        import numpy as np

        p = self.probs[np.isfinite(self.probs).all(axis=1), :n_groups].astype(np.float64)
        total = p.sum()
        return p.sum(axis=0) / total if total > 0 else np.full(n_groups, np.nan)


def _check_scale(scale) -> float:
    import numpy as np

    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise UsageError(MSG_SCALE.format(value=scale)) from None
    if not (np.isfinite(s) and s > 0):
        raise UsageError(MSG_SCALE.format(value=scale))
    return s


def classify(x, classes, *, n_groups: int, scale: float, threshold: float = 0.0, threads: int = 1,
             name: str = "embeddings") -> Classification:
    """:func:`class_scores`, :func:`probabilities` and :func:`hard_labels` in one call.

    With fewer than 8 classes the three run fused, block by block (:func:`clipprobe.analysis._zskernel.finish`):
    the same numbers, without the temporary arrays of the separate functions."""
    import numpy as np

    from clipprobe.analysis import _zskernel

    t = _check_classes(classes)
    c = t.shape[0]
    if c > _zskernel.SEQUENTIAL_SUM_CLASSES:
        scores = class_scores(x, t, threads=threads, name=name)
        probs = probabilities(scores.cos, scale)
        return Classification(probs, hard_labels(scores.cos, probs, n_groups=n_groups, threshold=threshold),
                              scores.cos)
    x = _check_rows(x, name, t.shape[1])
    s = _check_scale(scale)
    if not isinstance(n_groups, (int, np.integer)) or not 1 <= n_groups <= c:
        raise UsageError(MSG_GROUPS.format(value=n_groups, c=c))
    if not isinstance(threshold, (int, float)) or not 0 <= threshold < 1:
        raise UsageError(MSG_THRESHOLD.format(value=threshold))
    n = int(x.shape[0])
    cos = np.empty((n, c), np.float32)
    probs = np.empty((n, c), np.float32)
    codes = np.empty(n, np.int8)
    rows = min(n, BLOCK_ROWS)
    dots, norms, z = np.empty((rows, c), np.float32), np.empty(rows, np.float32), np.empty((rows, c), np.float64)
    _zskernel.enable_cache()
    for start in range(0, n, BLOCK_ROWS):
        block = np.ascontiguousarray(np.asarray(x[start:start + BLOCK_ROWS]))
        m = len(block)
        stop = start + m
        _zskernel.scores(block, t, dots[:m], norms[:m], threads)
        _zskernel.logits(dots[:m], norms[:m], s, cos[start:stop], z[:m])
        np.exp(z[:m], out=z[:m])
        _zskernel.finish(z[:m], cos[start:stop], int(n_groups), np.float32(threshold), probs[start:stop],
                         codes[start:stop])
    return Classification(probs, codes, cos)


@dataclasses.dataclass(frozen=True)
class ClassifierAccuracy:
    """How a zero-shot attribute classifier does on labelled images.

    ``by_group``: one row per true group: ``n``, ``correct``, ``accuracy`` with its Wilson interval
    (``accuracy_ci_low``/``_high``), ``precision`` (of the images it labels with the group, the share that
    truly are) with its interval, ``none_rate`` / ``unsure_rate`` / ``invalid_rate`` (its images labelled
    so), ``true_share`` (of the group's images among the labelled images) and ``predicted_share`` (of the
    images labelled with the group among those labelled with any group). ``confusion``: true group x
    predicted (groups, then none, unsure, invalid), counts. ``accuracy``: overall; ``accuracy_gap``:
    highest minus lowest group accuracy (a point estimate). ``other_labels``: images of the data whose true
    label is not one of the groups (not counted).

    With the soft probabilities (``probs``), how far they are from what they stand for, per group ``k``
    over the labelled images: ``soft_share`` (the mean of ``p_k``: the share that the soft moments
    ``E[s_k]`` give the group) and ``soft_share_error = soft_share - true_share``; ``calibration_error``
    (the expected calibration error of ``p_k`` as the probability that the image is of group ``k``: the
    images binned by ``p_k`` into :data:`CALIBRATION_BINS` equal-width bins, the mean over bins, weighted
    by their images, of ``|share of group-k images - mean p_k|``) and ``brier`` (the mean of
    ``(p_k - 1[group k])^2``); ``calibration_error_by_chance`` (the 95th percentile of the calibration error
    that probabilities exactly calibrated, at these values and this number of images, show from sampling
    alone) and ``calibration_p`` (the p-value of the hypothesis that ``p_k`` is calibrated), both from
    :func:`calibration_test`. ``soft_share_error_max`` and ``calibration_error_max``: the largest over
    the groups (absolute); ``reliability``: one row per (group, non-empty bin) with ``n``,
    ``mean_probability`` and ``observed`` (the bins behind ``calibration_error``). NaN and empty without
    ``probs``.
    """

    by_group: "pd.DataFrame"
    confusion: "pd.DataFrame"
    accuracy: float
    accuracy_gap: float
    n: int
    other_labels: int
    soft_share_error_max: float = float("nan")
    calibration_error_max: float = float("nan")
    reliability: "pd.DataFrame | None" = None

    def summary(self) -> dict:
        rows = self.by_group.to_dict(orient="records")
        out = {"accuracy": self.accuracy, "accuracy_gap": self.accuracy_gap, "n": self.n,
               "other_labels": self.other_labels, "by_group": rows,
               "confusion": {str(k): {str(c): int(v) for c, v in row.items()}
                             for k, row in self.confusion.to_dict(orient="index").items()}}
        if self.reliability is not None:
            out["soft"] = {"soft_share_error_max": self.soft_share_error_max,
                           "calibration_error_max": self.calibration_error_max, "bins": CALIBRATION_BINS,
                           "reliability": self.reliability.to_dict(orient="records")}
        return out


def classifier_accuracy(true_labels, codes, *, groups: Sequence[str], level: float = 0.95,
                        probs=None) -> ClassifierAccuracy:
    """Accuracy and confusion per group of hard labels ``codes`` (:func:`hard_labels`) against the true
    group names ``true_labels`` of the same images (see :class:`ClassifierAccuracy`); with ``probs``
    (``(n, C)``, :func:`probabilities`: the groups' columns first), how well the soft probabilities
    stand for the groups."""
    import numpy as np
    import pandas as pd
    from scipy.stats import norm

    from clipprobe.analysis.intervals import wilson_interval

    if not isinstance(level, (int, float)) or not 0 < level < 1:
        raise UsageError(MSG_LEVEL.format(value=level))
    z = float(norm.ppf(0.5 + level / 2))
    true_labels = np.asarray(true_labels, dtype=object).astype(str)
    codes = np.asarray(codes).astype(np.int64)
    if true_labels.shape != codes.shape:
        raise DataError(MSG_LENGTHS.format(n_true=len(true_labels), n_pred=len(codes)))
    groups = tuple(str(g) for g in groups)
    index = {g: k for k, g in enumerate(groups)}
    true = np.array([index.get(t, -1) for t in true_labels], np.int64)
    inside = true >= 0
    if not inside.any():
        found = sorted(set(true_labels.tolist()))[:10]
        raise DataError(MSG_NO_GROUP_IMAGES.format(groups=", ".join(map(repr, groups)),
                                                   found=", ".join(map(repr, found))))
    t, c = true[inside], codes[inside]
    k = len(groups)
    columns = list(groups) + [STATUS[NONE], STATUS[UNSURE], STATUS[INVALID]]
    col_of = np.where(c >= 0, c, np.select([c == NONE, c == UNSURE], [k, k + 1], k + 2))
    confusion = np.zeros((k, k + 3), np.int64)
    np.add.at(confusion, (t, col_of), 1)
    n_true = confusion.sum(axis=1)
    correct = np.diag(confusion[:, :k])
    predicted = confusion[:, :k].sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = correct / n_true
        prec = correct / predicted
        acc_lo, acc_hi = wilson_interval(acc, n_true, z)
        prec_lo, prec_hi = wilson_interval(prec, predicted, z)
        by_group = pd.DataFrame({
            "group": list(groups), "n": n_true, "correct": correct, "accuracy": acc,
            "accuracy_ci_low": acc_lo, "accuracy_ci_high": acc_hi, "n_predicted": predicted, "precision": prec,
            "precision_ci_low": prec_lo, "precision_ci_high": prec_hi,
            "none_rate": confusion[:, k] / n_true, "unsure_rate": confusion[:, k + 1] / n_true,
            "invalid_rate": confusion[:, k + 2] / n_true,
            "true_share": n_true / n_true.sum(),
            "predicted_share": predicted / predicted.sum() if predicted.sum() else np.full(k, np.nan),
        })
    accs = acc[n_true > 0]
    soft = {}
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        if p.ndim != 2 or p.shape[0] != len(codes) or p.shape[1] < k:
            raise DataError(MSG_PROBS.format(n=len(codes), k=k, shape=p.shape))
        calibration = _soft_calibration(p[inside][:, :k], t, groups)
        by_group["soft_share"] = calibration["share"]
        by_group["soft_share_error"] = calibration["share"] - by_group["true_share"].to_numpy()
        by_group["calibration_error"] = calibration["ece"]
        by_group["calibration_error_by_chance"] = calibration["chance"]
        by_group["calibration_p"] = calibration["p"]
        by_group["brier"] = calibration["brier"]
        soft = {"soft_share_error_max": float(np.nanmax(np.abs(by_group["soft_share_error"].to_numpy()))),
                "calibration_error_max": float(np.nanmax(calibration["ece"])),
                "reliability": calibration["reliability"]}
    return ClassifierAccuracy(
        by_group=by_group,
        confusion=pd.DataFrame(confusion, index=pd.Index(list(groups), name="true"), columns=columns),
        accuracy=float(correct.sum() / n_true.sum()), accuracy_gap=float(accs.max() - accs.min()),
        n=int(n_true.sum()), other_labels=int((~inside).sum()), **soft)


def _soft_calibration(p, true, groups: Sequence[str]) -> dict:
    """Per group: the mean probability, the expected calibration error over :data:`CALIBRATION_BINS`
    equal-width bins, the Brier score, and the reliability rows (see :class:`ClassifierAccuracy`).
    ``p``: ``(n, K)`` the groups' probabilities of the labelled images; ``true``: their group codes.
    Probabilities that are NaN (invalid rows) are left out of that group's measures. ``chance`` and ``p``:
    :func:`calibration_test` of each group's probabilities."""
    import numpy as np
    import pandas as pd

    n_bins = CALIBRATION_BINS
    share, ece, brier, rows, chance, pvalue = [], [], [], [], [], []
    for k, group in enumerate(groups):
        pk = p[:, k]
        ok = np.isfinite(pk)
        pk, hit = pk[ok], (true[ok] == k).astype(np.float64)
        if not pk.size:
            for measure in (share, ece, brier, chance, pvalue):
                measure.append(np.nan)
            continue
        share.append(float(pk.mean()))
        brier.append(float(np.mean((pk - hit) ** 2)))
        b = _calibration_bins(pk)
        n_b = np.bincount(b, minlength=n_bins)
        mean_p = np.bincount(b, weights=pk, minlength=n_bins)
        observed = np.bincount(b, weights=hit, minlength=n_bins)
        used = n_b > 0
        mean_p[used] /= n_b[used]
        observed[used] /= n_b[used]
        ece.append(float(np.sum(n_b[used] * np.abs(observed[used] - mean_p[used])) / pk.size))
        chance_k, p_k = calibration_test(pk, hit, seed=k)
        chance.append(chance_k), pvalue.append(p_k)
        rows += [{"group": group, "bin": int(j), "bin_low": j / n_bins, "bin_high": (j + 1) / n_bins,
                  "n": int(n_b[j]), "mean_probability": float(mean_p[j]), "observed": float(observed[j])}
                 for j in np.flatnonzero(used)]
    return {"share": np.asarray(share), "ece": np.asarray(ece), "brier": np.asarray(brier),
            "chance": np.asarray(chance), "p": np.asarray(pvalue),
            "reliability": pd.DataFrame(rows, columns=["group", "bin", "bin_low", "bin_high", "n",
                                                       "mean_probability", "observed"])}


def _calibration_bins(p):
    """The bin of each probability among :data:`CALIBRATION_BINS` equal-width bins: ``[j/B, (j+1)/B)``, 1.0 in
    the last. The calibration error and its test bin alike through this one definition."""
    import numpy as np

    return np.minimum((p * CALIBRATION_BINS).astype(np.int64), CALIBRATION_BINS - 1)


def _binned_error(hits, psum, n: int):
    """The calibration error from each bin's count of hits and sum of probabilities (the last axis: the bins),
    added up bin by bin in order: ``sum_b |hits_b - psum_b| / n``."""
    import numpy as np

    total = np.zeros(np.shape(hits)[:-1], np.float64)
    for j in range(np.shape(hits)[-1]):
        total += np.abs(hits[..., j] - psum[j])
    return total / n


def calibration_test(p, hit, *, seed: int = 0, resamples: int = CALIBRATION_RESAMPLES,
                     quantile: float = CALIBRATION_CHANCE, chunk: int = 64) -> tuple[float, float]:
    """``(chance, p_value)``: how large a calibration error (:class:`ClassifierAccuracy`) sampling alone gives
    probabilities ``p`` of ``len(p)`` images, and whether the observed one (outcomes ``hit``, 0 or 1) is larger.

    Consistency resampling (Broecker and Smith, Weather and Forecasting 22, 2007; Vaicenavicius et al.,
    AISTATS 2019): if ``p`` is calibrated, each image's outcome is a draw of Bernoulli(p_i), independent of
    the others (the image is what was sampled). ``resamples`` outcome vectors are drawn so (from ``seed``:
    the same numbers on any machine) and each one's calibration error is computed over the same bins.
    ``chance``: the ``quantile`` of those errors; ``p_value``: ``(1 + #{resampled >= observed}) /
    (1 + resamples)``, uniform or larger under the hypothesis (tested). The observed and the resampled
    errors are computed the same way (:func:`_binned_error`), so a tie is a tie on every CPU."""
    import numpy as np

    p = np.asarray(p, np.float64).reshape(-1)
    hit = np.asarray(hit, np.float64).reshape(-1)
    n, n_bins = len(p), CALIBRATION_BINS
    if n == 0:
        return float("nan"), float("nan")
    b = _calibration_bins(p)
    psum = np.bincount(b, weights=p, minlength=n_bins)
    observed = float(_binned_error(np.bincount(b, weights=hit, minlength=n_bins), psum, n))
    order = np.argsort(b, kind="stable")
    edges = np.searchsorted(b[order], np.arange(n_bins + 1))      # bin j: images edges[j]:edges[j + 1]
    p_sorted = p[order]
    rng = np.random.default_rng([int(seed), 0xCA1B])
    errors = np.empty(int(resamples), np.float64)
    for first in range(0, int(resamples), int(chunk)):
        m = min(int(chunk), int(resamples) - first)
        drawn = rng.random((m, n)) < p_sorted
        cum = np.zeros((m, n + 1), np.int64)
        np.cumsum(drawn, axis=1, out=cum[:, 1:])
        hits = (cum[:, edges[1:]] - cum[:, edges[:-1]]).astype(np.float64)     # each bin's hits in this draw
        errors[first:first + m] = _binned_error(hits, psum, n)
    chance = float(np.quantile(errors, quantile))
    p_value = float((1 + np.count_nonzero(errors >= observed)) / (1 + len(errors)))
    return chance, p_value
