"""The attribute pass: each image's group from its embedding, written beside its caption.

:func:`run_attributes` reads a clip-retrieval embedding folder (LAION's layout,
:mod:`clipprobe.embeddings.external`), classifies every image embedding zero-shot with the model's text
tower and a prompt set (:mod:`clipprobe.resources.attributes`, :mod:`clipprobe.analysis.zeroshot`), and
writes, per shard, one parquet file row-aligned with the shard's metadata::

    OUT/shards/attributes_<N>.parquet    the caption column and the key column (url) copied from the
                                         metadata; image_<attribute> (the group, null when the image gets
                                         none: "no person", unsure or an invalid row); p_<class> (float32
                                         soft probability of each class); with a lexicon also
                                         both_<attribute> (the group the caption names when it names
                                         exactly one, else the image's); with soft_bins also
                                         soft_<attribute> (and soft_both_<attribute>): each image's
                                         E[s_k] over the groups in steps of 1/soft_bins, as a group
                                         name such as "Female=5/16,Male=11/16" (balance's soft mode);
                                         with label_prompts also image_labels (list<string>: the labels
                                         whose probability is above label_threshold; null: an invalid
                                         row) and pl_<label> (float32 yes/no probability of each label,
                                         :func:`~clipprobe.analysis.zeroshot.label_probabilities`)
    OUT/calibration_groups.parquet       the classifier on a labelled face dataset: accuracy, precision,
    OUT/calibration_confusion.parquet    rates of none/unsure per true group, confusion matrix; its soft
    OUT/calibration_reliability.parquet  probabilities: mean p_k against the true share, calibration
                                         error (with the error reached by chance and the p-value of
                                         calibration) and Brier score per group, and the reliability bins
    OUT/run.json                         settings, prompts, logit scale, calibration, per-shard counts

``clipprobe balance measure|fit --attribute-column image_<attribute>`` reads the shard files as captions
(``--attribute-source images`` runs this pass first and does exactly that).

Before any image row is read: the folder's structure (:func:`~clipprobe.embeddings.external.open_embedding_folder`:
shards paired with their metadata, no gap, dtype, row counts), the model's dimension against every shard,
the metadata's columns, and the classifier's accuracy on the labelled dataset (``probe.dataset``; a run
without one says so in ``run.json``). A shard with NaN, infinite or zero rows stops the run with one line
naming the shard (``nan_rows="error"``, before that shard is written) or is counted and its rows get no
group (``"skip"``). A shard's file is written atomically and records the settings it was made with; a
rerun skips the shards already done with the same settings.

Shards are the unit of work (:class:`ShardJob`, :func:`run_shard_job`): the local engine runs
``workers`` of them at a time on threads, the Spark engine one task per shard
(:mod:`clipprobe.pipeline.attrspark`); both write the same files, and a run resumes from either's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from clipprobe.errors import DataError, UsageError
from clipprobe.pipeline.probe import ProbeConfig

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
NAN_ROWS = ("error", "skip")
TEXT_COLUMNS = ("caption", "TEXT", "text")
KEY_COLUMNS = ("url", "URL")
DEFAULT_SCALE = 100.0          # CLIP's logit scale, for a model that does not have one
BLOCK_ROWS = 65_536
SCALE_FOLDS = 2       # parts of the labelled images for the held-out calibration of a fitted scale
FILES = {"run": "run.json", "groups": "calibration_groups.parquet", "confusion": "calibration_confusion.parquet",
         "reliability": "calibration_reliability.parquet", "shards": "shards"}
META_KEY = b"clipprobe_attributes"

MSG_NAN_ROWS = "nan_rows={value!r} is not one of " + ", ".join(map(repr, NAN_ROWS))
MSG_THRESHOLD = "threshold={value!r} must be in [0, 1)"
MSG_SCALE = "scale={value!r} must be a positive number"
MSG_WORKERS = "workers={value!r} must be 1 or more"
MSG_FIT_SCALE_AND_SCALE = "fit_scale fits the softmax scale on the labelled dataset; scale={value!r} sets it: give one"
MSG_FIT_SCALE_DATASET = ("fit_scale needs a labelled dataset (probe.dataset, --dataset) to fit the softmax scale on")
MSG_INVALID_ROWS = ("embeddings {root}: shard {path} has {n} row(s) that are NaN, infinite or zero (first: row {row}); "
                    "fix the shard or rerun with nan_rows='skip' to leave them without a group")
MSG_DATASET_GROUP = ("dataset {dataset}: attribute {attribute!r} has no images of group {group!r} of prompt set "
                     "{prompts!r} (groups found: {found}); the classifier's accuracy cannot be measured")
MSG_LEXICON_GROUPS = ("lexicon {lexicon!r}: attribute {attribute!r} has groups {got}, the prompt set {prompts!r} "
                      "{want}: give a lexicon whose groups are the prompt set's")
MSG_COLUMN_CLASH = "prompt set {prompts!r}: column {column!r} would be written twice (rename a class)"
MSG_LABEL_THRESHOLD = "label_threshold={value!r} must be in [0, 1)"
MSG_SOURCE_LABEL_COLUMN = ("label_prompts writes the label column {column!r} and label_column {given!r} names "
                           "another: give one")
LABEL_COLUMN = "image_labels"


@dataclasses.dataclass(frozen=True)
class AttributeConfig:
    """Settings of the attribute pass (see the module docstring).

    ``probe``: the model (its text tower classifies; its dimension must be the embeddings') and the
    labelled face dataset the classifier is measured on (``probe.dataset``; None: not measured).
    ``prompts``: an attribute prompt set (name or path). ``threshold``: a group whose probability is lower
    gives no group (0: the best class always wins). ``scale``: the softmax temperature (None: the model's
    logit scale). ``lexicon``: also write ``both_<attribute>``. ``text_column`` / ``key_column``: metadata
    columns copied into the output (None: the first of caption/TEXT/text, url/URL present). ``workers``:
    shards classified at a time (threads; None: all cores), or Spark's ``local[workers]``. ``engine``:
    ``"local"`` or ``"spark"`` (one task per shard, see :mod:`clipprobe.pipeline.attrspark`; the same files),
    with ``spark_master`` (None: ``local[workers]``) and ``spark_conf`` (``KEY=VALUE`` session settings).
    """

    embeddings: str
    out: str
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    prompts: str = "gender"
    threshold: float = 0.0
    scale: float | None = None
    fit_scale: bool = False         # fit the softmax scale on the labelled dataset (temperature scaling)
    lexicon: str | None = None
    text_column: str | None = None
    key_column: str | None = None
    nan_rows: str = "error"
    workers: int | None = None
    level: float = 0.95
    soft_bins: int | None = None    # also write soft_<attribute>: each image's E[s_k], quantised to 1/soft_bins
    engine: str = "local"
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()
    label_prompts: str | None = None    # a label prompt file: also write image_labels and pl_<label>
    label_threshold: float = 0.5        # a label is on when its probability is above this

    def check(self) -> "AttributeConfig":
        from clipprobe.captions.run import check_engine

        check_engine(self.engine, "auto", self.spark_conf)
        if self.nan_rows not in NAN_ROWS:
            raise UsageError(MSG_NAN_ROWS.format(value=self.nan_rows))
        if not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold < 1:
            raise UsageError(MSG_THRESHOLD.format(value=self.threshold))
        if not isinstance(self.label_threshold, (int, float)) or not 0 <= self.label_threshold < 1:
            raise UsageError(MSG_LABEL_THRESHOLD.format(value=self.label_threshold))
        if self.scale is not None and (not isinstance(self.scale, (int, float)) or not self.scale > 0):
            raise UsageError(MSG_SCALE.format(value=self.scale))
        if self.fit_scale and self.scale is not None:
            raise UsageError(MSG_FIT_SCALE_AND_SCALE.format(value=self.scale))
        if self.fit_scale and not self.probe.dataset:
            raise UsageError(MSG_FIT_SCALE_DATASET)
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise UsageError(MSG_WORKERS.format(value=self.workers))
        if not 0 < self.level < 1:
            raise UsageError(f"level={self.level!r} must be strictly between 0 and 1")
        if self.soft_bins is not None:
            from clipprobe.analysis.patterns import check_soft_bins

            check_soft_bins(self.soft_bins)
        self.probe.check()
        return self

    def threads(self) -> int:
        return self.workers or os.cpu_count() or 1


@dataclasses.dataclass(frozen=True)
class AttributeResult:
    """What the pass wrote: ``shards`` (the per-shard files, in partition order), the attribute column's
    name, the groups, the caption and key columns, the calibration (or None) and the run record."""

    out: Path
    shards: tuple[Path, ...]
    column: str
    both_column: str | None
    groups: tuple[str, ...]
    text_column: str
    key_column: str | None
    calibration: Any
    run: dict
    soft_column: str | None = None
    soft_both_column: str | None = None
    label_column: str | None = None     # image_labels, with label prompts
    labels: tuple[str, ...] = ()        # the label prompts' labels


def attribute_column(attribute: str) -> str:
    """The column holding each image's group."""
    return f"image_{attribute}"


def both_column(attribute: str) -> str:
    """The column holding the caption's group where it names one, else the image's."""
    return f"both_{attribute}"


def soft_column(attribute: str, both: bool = False) -> str:
    """The column holding each image's quantised membership E[s_k] as a group name
    (:func:`~clipprobe.analysis.patterns.soft_group_name`); ``both``: the caption's group, one-hot, where it
    names exactly one."""
    return f"soft_both_{attribute}" if both else f"soft_{attribute}"


def _soft_names(probs, k: int, groups, bins: int, named=None):
    """Each row's quantised membership name (None: no group or an invalid row); ``named``: rows whose
    caption names group ``named[i] >= 0`` get that group whole."""
    import numpy as np

    from clipprobe.analysis.patterns import quantise_probabilities, soft_group_names

    names, levels = soft_group_names(groups, bins)
    valid = np.isfinite(probs).all(axis=1)
    p = np.where(valid[:, None], np.clip(probs[:, :k].astype(np.float64), 0.0, 1.0), 0.0)
    total = p.sum(axis=1)
    p = p / np.maximum(total, 1.0)[:, None]          # float32 softmax rounding may sum a hair above 1
    lev = quantise_probabilities(p, bins, name="probabilities")
    if named is not None:
        one = named >= 0
        lev[one] = 0
        lev[np.flatnonzero(one), named[one]] = bins
    # the index of each row's levels among all combinations (mixed radix bins + 1)
    radix = (bins + 1) ** np.arange(k - 1, -1, -1, dtype=np.int64)
    known = levels.astype(np.int64) @ radix              # ascending: the names are in lexicographic order
    code = lev.astype(np.int64) @ radix
    at = np.minimum(np.searchsorted(known, code), len(names) - 1)
    at = np.where(known[at] == code, at, len(names))     # all levels 0: no group
    return np.asarray(list(names) + [None], dtype=object)[at]


def probability_column(name: str) -> str:
    return f"p_{name}"


def label_probability_column(name: str) -> str:
    """The column holding each image's probability of concept label ``name``."""
    return f"pl_{name}"


def _logit_scale(encoder) -> float:
    scale = getattr(getattr(encoder, "model", None), "logit_scale", None)
    if scale is None:
        return DEFAULT_SCALE
    try:
        return float(scale.detach().float().exp().item())
    except AttributeError:
        return DEFAULT_SCALE


def _class_vectors(encoder, prompts, cache_dir):
    from clipprobe.analysis.zeroshot import class_vectors
    from clipprobe.embeddings.cache import embed_texts

    texts = sorted({p for _, ps in prompts.classes for p in ps})
    vectors = embed_texts(encoder, texts, cache_dir=cache_dir)
    row = {t: i for i, t in enumerate(texts)}
    names = [name for name, _ in prompts.classes]
    return class_vectors([vectors[[row[p] for p in ps]] for _, ps in prompts.classes], names)


def _label_vectors(encoder, labels, cache_dir):
    """``(concepts, negations)``: the ``(R, dim)`` class vectors of each label's prompts and negations."""
    from clipprobe.analysis.zeroshot import class_vectors
    from clipprobe.embeddings.cache import embed_texts

    texts = sorted({p for _, yes, no in labels.labels for p in yes + no})
    vectors = embed_texts(encoder, texts, cache_dir=cache_dir)
    row = {t: i for i, t in enumerate(texts)}
    names = list(labels.label_names)
    return (class_vectors([vectors[[row[p] for p in yes]] for _, yes, _ in labels.labels], names),
            class_vectors([vectors[[row[p] for p in no]] for _, _, no in labels.labels], names))


def _calibrate(labels, vectors, spec: str, prompts, classes, scale: float, config: AttributeConfig):
    """The classifier's accuracy on a labelled face dataset's images (checked: each group has images), the
    softmax scale of the pass, and with ``config.fit_scale`` what the fit did (else None): the scale fitted
    on all the images is the pass's, the soft measures are of 2-fold held-out probabilities, and the raw
    scale's are kept beside them."""
    import numpy as np

    from clipprobe.analysis.zeroshot import (classifier_accuracy, classify, cross_fit_probabilities, fit_scale,
                                             hard_labels, probabilities)
    from clipprobe.errors import one_of

    if prompts.attribute not in labels.columns:
        raise one_of(prompts.attribute, list(labels.columns), f"attribute of dataset {spec!r}")
    truth = labels[prompts.attribute].astype(str).to_numpy()
    present = sorted(set(truth.tolist()))
    for group in prompts.group_names:
        if group not in present:
            raise DataError(MSG_DATASET_GROUP.format(dataset=spec, attribute=prompts.attribute, group=group,
                                                     prompts=prompts.name, found=", ".join(map(repr, present[:20]))))
    result = classify(vectors, classes, n_groups=len(prompts.groups), scale=scale, threshold=config.threshold,
                      threads=config.threads(), name=f"dataset {spec}")
    accuracy = classifier_accuracy(truth, result.codes, groups=prompts.group_names, level=config.level,
                                   probs=result.probs)
    if not config.fit_scale:
        return accuracy, scale, None
    index = {g: k for k, g in enumerate(prompts.group_names)}
    true = np.array([index.get(t, -1) for t in truth], np.int64)
    fitted = fit_scale(result.cos, true, what=f"dataset {spec}")
    held, fold_scales = cross_fit_probabilities(result.cos, true, folds=SCALE_FOLDS, seed=0)
    # the labels at the fitted scale from the same cosines (only --threshold's unsure labels can change)
    codes = hard_labels(result.cos, probabilities(result.cos, fitted), n_groups=len(prompts.groups),
                        threshold=config.threshold)
    fitted_accuracy = classifier_accuracy(truth, codes, groups=prompts.group_names, level=config.level, probs=held)
    info = {"scale_before": scale, "scale": fitted, "folds": SCALE_FOLDS, "fold_scales": fold_scales,
            "before": {"soft_share_error_max": accuracy.soft_share_error_max,
                       "calibration_error_max": accuracy.calibration_error_max,
                       "by_group": accuracy.by_group[["group", "soft_share", "soft_share_error", "calibration_error",
                                                      "calibration_error_by_chance", "calibration_p",
                                                      "brier"]].to_dict(orient="records")}}
    return fitted_accuracy, fitted, info


def _lexicon_matcher(config: AttributeConfig, prompts):
    """(lexicon name, Matcher, (terms, groups) bool matrix of which group each term names) for
    both_<attribute>, or None. A term listed under two groups names both."""
    import numpy as np

    from clipprobe._io import default_cache_dir
    from clipprobe.captions.indicators import attribute_groups
    from clipprobe.captions.matching import Matcher, normalise_term
    from clipprobe.resources.lexicon import get_lexicon

    if config.lexicon is None:
        return None
    lexicon = get_lexicon(config.lexicon)
    terms = attribute_groups(lexicon, prompts.attribute)
    if tuple(sorted(terms)) != tuple(sorted(prompts.group_names)):
        raise UsageError(MSG_LEXICON_GROUPS.format(lexicon=lexicon.name, attribute=prompts.attribute,
                                                   got=sorted(terms), prompts=prompts.name,
                                                   want=sorted(prompts.group_names)))
    index = {g: k for k, g in enumerate(prompts.group_names)}
    owners: dict[str, set[int]] = {}
    for g, ts in terms.items():
        for t in ts:
            owners.setdefault(normalise_term(t), set()).add(index[g])
    flat = sorted(owners)
    owner = np.zeros((len(flat), len(index)), bool)
    for i, t in enumerate(flat):
        owner[i, sorted(owners[t])] = True
    matcher = Matcher.cached(flat, default_cache_dir() / "hyperscan")
    return lexicon.name, matcher, owner, lexicon


def caption_groups(matcher, owner, texts, n_groups: int):
    """``(n,)`` int64: the one group each caption names (-1: none or several), by the matching rule;
    ``owner`` is the (terms, groups) bool matrix of the groups each of the matcher's terms names."""
    import numpy as np

    from clipprobe.captions.matching import as_string_array

    found = matcher.scan(as_string_array(texts))
    n = len(texts)
    named = np.zeros((n, n_groups), np.int8)
    if len(found.rows):
        np.maximum.at(named, np.asarray(found.rows, np.int64),
                      owner[np.asarray(found.terms, np.int64)].astype(np.int8))
    count = named.sum(axis=1)
    return np.where(count == 1, named.argmax(axis=1), -1).astype(np.int64)


def _settings_key(config: AttributeConfig, encoder, prompts, scale: float, lexicon_name,
                  text_column: str, key_column: str | None, labels=None) -> str:
    from clipprobe.embeddings.cache import model_cache_key

    blob = json.dumps({"format": FORMAT_VERSION, "model": model_cache_key(encoder),     # the weights' digest too
                       "prompts": prompts.to_dict() | {"source": None},
                       "scale": scale, "threshold": config.threshold, "lexicon": lexicon_name,
                       "text": text_column, "key": key_column, "nan_rows": config.nan_rows}
                      | ({"soft_bins": config.soft_bins} if config.soft_bins else {})
                      | ({"labels": labels.to_dict() | {"source": None, "name": None, "description": None},
                          "label_threshold": config.label_threshold} if labels is not None else {}),
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _shard_key(settings: str, shard) -> str:
    stats = [(p.stat().st_size, p.stat().st_mtime_ns) for p in (shard.embeddings, shard.metadata)]
    return f"{settings}:{shard.number}:{stats}"


def _done(path: Path, key: str) -> dict | None:
    """The counts stored in a finished shard file made with ``key``, else None."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return None
    try:
        meta = pq.ParquetFile(path).metadata.metadata or {}
        stored = json.loads(meta.get(META_KEY, b"{}"))
    except (OSError, ValueError):
        return None
    return stored.get("counts") if stored.get("key") == key else None


def _schema(text_column: str, key_column: str | None, text_type, key_type, column: str, both: str | None,
            prob_columns: list[str], soft: tuple[str, ...] = (), label_columns: list[str] | None = None):
    import pyarrow as pa

    fields = [pa.field(text_column, text_type)]
    if key_column is not None:
        fields.append(pa.field(key_column, key_type))
    fields.append(pa.field(column, pa.string()))
    if both is not None:
        fields.append(pa.field(both, pa.string()))
    fields += [pa.field(c, pa.float32()) for c in prob_columns]
    fields += [pa.field(c, pa.string()) for c in soft]
    if label_columns:
        fields.append(pa.field(LABEL_COLUMN, pa.list_(pa.string())))
        fields += [pa.field(c, pa.float32()) for c in label_columns]
    return pa.schema(fields)


@dataclasses.dataclass(frozen=True)
class ShardJob:
    """Everything one shard's pass needs, without the model (the class vectors are computed once): what the
    local engine's threads and the Spark engine's tasks run (:func:`run_shard_job`)."""

    root: str
    shard: Any                      # clipprobe.embeddings.external.Shard
    dest: str
    key: str
    classes: Any                    # (C, dim) float32 class vectors
    names: tuple[str, ...]          # the classes' names
    groups: tuple[str, ...]
    attribute: str
    scale: float
    threshold: float
    nan_rows: str
    text_column: str
    key_column: str | None
    lexicon: str | None             # the lexicon's name or file (both_<attribute>), or None
    threads: int = 1
    soft_bins: int | None = None    # also write soft_<attribute> (AttributeConfig.soft_bins)
    labels: tuple[str, ...] = ()    # concept labels (image_labels, pl_<label>; AttributeConfig.label_prompts)
    label_vectors: Any = None       # ((R, dim) concept, (R, dim) negation) float32 class vectors
    label_threshold: float = 0.5


def _job_lexicon(job: ShardJob):
    """The lexicon matcher of a job (built where the job runs: a Spark executor builds its own)."""
    if job.lexicon is None:
        return None
    config = AttributeConfig(embeddings="", out="", lexicon=job.lexicon)
    return _lexicon_matcher(config, _GroupsOnly(job.attribute, job.groups))


@dataclasses.dataclass(frozen=True)
class _GroupsOnly:
    """What :func:`_lexicon_matcher` reads of a prompt set."""

    attribute: str
    group_names: tuple[str, ...]
    name: str = "(the pass's prompt set)"


def run_shard_job(job: ShardJob, lexicon=None) -> dict:
    """Classify one shard block by block and write its attribute file atomically; return its counts.
    A shard with invalid rows under ``nan_rows="error"`` raises :class:`DataError` (MSG_INVALID_ROWS)
    and writes nothing. ``lexicon``: the matcher of :func:`_lexicon_matcher` (None: built from ``job``)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe._io import atomic_path
    from clipprobe.analysis.zeroshot import INVALID, STATUS, classify
    from clipprobe.embeddings.external import EmbeddingFolder

    shard = job.shard
    folder = EmbeddingFolder(root=Path(job.root), kind="img", shards=(shard,), dim=shard.dim, columns=())
    if lexicon is None:
        lexicon = _job_lexicon(job)
    groups = job.groups
    k = len(groups)
    column = attribute_column(job.attribute)
    both = both_column(job.attribute) if lexicon is not None else None
    prob_columns = [probability_column(n) for n in job.names]
    soft_cols: tuple[str, ...] = ()
    if job.soft_bins:
        soft_cols = (soft_column(job.attribute),) + ((soft_column(job.attribute, both=True),) if both else ())
    pf = pq.ParquetFile(shard.metadata)
    key_column = job.key_column
    wanted = [job.text_column] + ([key_column] if key_column is not None else [])
    arrow = pf.schema_arrow
    schema = _schema(job.text_column, key_column, arrow.field(job.text_column).type,
                     arrow.field(key_column).type if key_column is not None else None, column, both, prob_columns,
                     soft_cols, [label_probability_column(n) for n in job.labels] if job.labels else None)
    label_counts = np.zeros(len(job.labels), np.int64)
    label_values = pa.array(list(job.labels), pa.string())
    counts = {g: 0 for g in groups} | {name: 0 for name in STATUS.values()}
    soft = np.zeros(k, np.float64)
    both_counts = {"from_caption": 0, "from_image": 0, "none": 0}
    first_invalid = None
    seconds = {"scores": 0.0, "metadata": 0.0, "write": 0.0}
    group_values = pa.array(list(groups) + [None], pa.string())      # code k: no group
    status = {code: name for code, name in STATUS.items()}
    with atomic_path(Path(job.dest), suffix=".parquet") as tmp, folder.reader(shard) as rows:
        # dictionary pages and statistics only where they pay: the group columns, the probabilities
        writer = pq.ParquetWriter(tmp, schema, use_dictionary=[c for c in (column, both, *soft_cols) if c is not None],
                                  write_statistics=prob_columns)
        try:
            start = 0
            for batch in pf.iter_batches(batch_size=BLOCK_ROWS, columns=wanted, use_threads=False):
                t0 = time.perf_counter()
                n = batch.num_rows
                result = classify(rows.array[start:start + n], job.classes, n_groups=k, scale=job.scale,
                                  threshold=job.threshold, threads=job.threads,
                                  name=f"embeddings {job.root}: shard {shard.name}")
                t1 = time.perf_counter()
                codes = result.codes
                tally = np.bincount(np.where(codes >= 0, codes, k - codes.astype(np.int64) - 1), minlength=k + 3)
                for j, g in enumerate(groups):
                    counts[g] += int(tally[j])
                for code, name in status.items():
                    counts[name] += int(tally[k - code - 1])
                if tally[k - INVALID - 1] and first_invalid is None:
                    first_invalid = start + int(np.flatnonzero(codes == INVALID)[0])
                valid = np.isfinite(result.probs).all(axis=1)
                soft += result.probs[valid, :k].astype(np.float64).sum(axis=0)
                image_code = np.where(codes >= 0, codes, k).astype(np.int32)
                arrays = [batch.column(0)] + ([batch.column(1)] if key_column is not None else [])
                arrays.append(group_values.take(pa.array(image_code)))
                if lexicon is not None:
                    _, matcher, owner, _ = lexicon
                    named = caption_groups(matcher, owner, batch.column(0), k)
                    chosen = np.where(named >= 0, named, codes)
                    both_counts["from_caption"] += int((named >= 0).sum())
                    both_counts["from_image"] += int(((named < 0) & (codes >= 0)).sum())
                    both_counts["none"] += int(((named < 0) & (codes < 0)).sum())
                    arrays.append(group_values.take(pa.array(np.where(chosen >= 0, chosen, k).astype(np.int32))))
                probs = np.asfortranarray(result.probs)             # one contiguous column per class
                arrays += [pa.array(probs[:, j]) for j in range(len(job.names))]
                if soft_cols:
                    arrays.append(pa.array(_soft_names(result.probs, k, groups, job.soft_bins), pa.string()))
                    if both is not None:
                        arrays.append(pa.array(_soft_names(result.probs, k, groups, job.soft_bins, named),
                                               pa.string()))
                if job.labels:
                    arrays += _label_arrays(rows.array[start:start + n], job, label_values, label_counts,
                                            name=f"embeddings {job.root}: shard {shard.name}")
                t2 = time.perf_counter()
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                seconds["scores"] += t1 - t0
                seconds["metadata"] += t2 - t1
                seconds["write"] += time.perf_counter() - t2
                start += n
                rows.release(start)
            if counts["invalid"] and job.nan_rows == "error":
                raise DataError(MSG_INVALID_ROWS.format(root=job.root, path=shard.name, n=counts["invalid"],
                                                        row=first_invalid))
            done = {"rows": shard.rows, "counts": counts, "soft_sum": [float(v) for v in soft],
                    "first_invalid_row": first_invalid, "seconds": {k_: round(v, 4) for k_, v in seconds.items()}}
            if lexicon is not None:
                done["both"] = both_counts
            if job.labels:
                done["labels"] = {name: int(c) for name, c in zip(job.labels, label_counts)}
            writer.add_key_value_metadata({META_KEY: json.dumps({"key": job.key, "counts": done}).encode()})
        finally:
            writer.close()
    return done


def _label_arrays(x, job: ShardJob, label_values, label_counts, *, name: str) -> list:
    """The block's ``image_labels`` (each row's labels above the threshold, in the prompt file's order;
    null for an invalid row) and ``pl_<label>`` arrays; adds each label's count to ``label_counts``."""
    import numpy as np
    import pyarrow as pa

    from clipprobe.analysis.zeroshot import label_probabilities

    concepts, negations = job.label_vectors
    probs = label_probabilities(x, concepts, negations, job.scale, threads=job.threads, name=name)
    invalid = ~np.isfinite(probs).all(axis=1)
    on = probs > job.label_threshold                        # NaN: off
    label_counts += on.sum(axis=0)
    offsets = np.zeros(len(probs) + 1, np.int32)
    np.cumsum(on.sum(axis=1), out=offsets[1:])
    rows, cols = np.nonzero(on)                             # row-major: each row's labels in file order
    lists = pa.ListArray.from_arrays(pa.array(offsets), label_values.take(pa.array(cols.astype(np.int32))),
                                     mask=pa.array(invalid) if invalid.any() else None)
    probs = np.asfortranarray(probs)
    return [lists] + [pa.array(probs[:, j]) for j in range(probs.shape[1])]


def _run_jobs_local(jobs: list[ShardJob], threads: int, lexicon) -> dict[int, dict]:
    """Run the shard jobs, ``threads`` shards at a time on threads (the scores kernel, the parquet reading
    and writing and numpy release the GIL); a shard's counts by its number. Fewer shards than threads:
    each shard's scores get the spare threads. After a failure no shard is started; the error of the first
    failed shard in partition order is raised once the running ones are done (they are kept)."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    if not jobs:
        return {}
    parallel = max(1, min(threads, len(jobs)))
    jobs = [dataclasses.replace(j, threads=max(1, threads // parallel)) for j in jobs]
    if parallel == 1:
        return {j.shard.number: run_shard_job(j, lexicon) for j in jobs}
    results: dict[int, dict] = {}
    errors: dict[int, BaseException] = {}
    with ThreadPoolExecutor(parallel) as pool:
        pending = iter(jobs)
        running = {}
        for job in pending:
            running[pool.submit(run_shard_job, job, lexicon)] = job.shard.number
            if len(running) == parallel:
                break
        while running:
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                number = running.pop(f)
                try:
                    results[number] = f.result()
                except BaseException as err:  # re-raised below, after the running shards are done
                    errors[number] = err
            if not errors:
                for job in pending:
                    running[pool.submit(run_shard_job, job, lexicon)] = job.shard.number
                    if len(running) == parallel:
                        break
    if errors:
        raise errors[min(errors)]
    return results


def run_attributes(config: AttributeConfig, *, progress: bool | None = None) -> AttributeResult:
    """Run the attribute pass (see the module docstring)."""
    import numpy as np

    from clipprobe._io import check_writable, write_json, write_parquet
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.embeddings.external import MSG_DIM_MODEL, open_embedding_folder
    from clipprobe.faces import load_dataset
    from clipprobe.models import load_model
    from clipprobe.resources.attributes import get_attribute_prompts, load_label_prompts
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    started = time.time()
    timer = StageTimer()
    with timer("check"):
        prompts = get_attribute_prompts(config.prompts)
        labels = load_label_prompts(config.label_prompts) if config.label_prompts is not None else None
        folder = open_embedding_folder(config.embeddings)
        text_column = folder.find_column(TEXT_COLUMNS, "the captions", given=config.text_column)
        key_column = (folder.find_column(KEY_COLUMNS, "the key", given=config.key_column)
                      if config.key_column is not None or any(c in folder.columns for c in KEY_COLUMNS) else None)
        column = attribute_column(prompts.attribute)
        names = [name for name, _ in prompts.classes]
        written = [text_column, key_column, column, both_column(prompts.attribute)] + \
            [probability_column(n) for n in names] + \
            ([soft_column(prompts.attribute), soft_column(prompts.attribute, True)] if config.soft_bins else []) + \
            ([LABEL_COLUMN] + [label_probability_column(n) for n in labels.label_names] if labels else [])
        for i, c in enumerate(written):
            if c is not None and c in written[:i]:
                raise DataError(MSG_COLUMN_CLASH.format(prompts=prompts.name, column=c))
        lexicon = _lexicon_matcher(config, prompts)
    pc = config.probe
    dataset = None
    if pc.dataset:          # the label file first: a wrong dataset fails before the model loads
        with timer("load_dataset"):
            dataset = load_dataset(pc.dataset, split=pc.split, image_root=pc.image_root, offline=pc.offline or None,
                                   hf_config=pc.hf_config)
    else:
        log.warning("no labelled dataset: the attribute classifier's accuracy is not measured")
    out = check_writable(config.out)
    with timer("load_model"):
        encoder = load_model(pc.model, device=pc.device, model_config=pc.model_config, offline=pc.offline or None,
                             preprocess=pc.preprocess, precision=pc.precision, quick_gelu=pc.quick_gelu)
    if encoder.embed_dim != folder.dim:
        raise DataError(MSG_DIM_MODEL.format(root=folder.root, path=folder.shards[0].name, dim=folder.dim,
                                             want=encoder.embed_dim))
    scale = float(config.scale) if config.scale is not None else _logit_scale(encoder)
    with timer("classes"):
        classes = _class_vectors(encoder, prompts, pc.cache_dir)
        label_vectors = _label_vectors(encoder, labels, pc.cache_dir) if labels is not None else None
    calibration = dataset_info = scale_fit = None
    if dataset is not None:
        with timer("embed_dataset"):
            emb = embed_dataset(encoder, dataset, cache_dir=pc.cache_dir, batch_size=pc.batch_size,
                                num_workers=pc.num_workers, progress=progress)
        with timer("calibration"):
            calibration, scale, scale_fit = _calibrate(emb.labels, emb.vectors, dataset.spec, prompts, classes, scale,
                                                       config)
        dataset_info = {"spec": dataset.spec, "kind": dataset.kind, "split": dataset.split,
                        "fingerprint": dataset.fingerprint, "n_images": len(emb.files), "skipped": len(emb.skipped)}
        log.info("attribute classifier on %s: accuracy %.3f (gap between groups %.3f)", dataset.spec,
                 calibration.accuracy, calibration.accuracy_gap)
        if scale_fit is not None:
            log.info("softmax scale fitted on %s: %.4g (the model's %.4g); held-out calibration error %.3f "
                     "(at the model's scale %.3f)", dataset.spec, scale, scale_fit["scale_before"],
                     calibration.calibration_error_max, scale_fit["before"]["calibration_error_max"])
    info = encoder.info()
    settings = _settings_key(config, encoder, prompts, scale, lexicon[0] if lexicon else None, text_column, key_column,
                             labels)
    shard_dir = out / FILES["shards"]
    paths, results, todo = [], {}, []
    for shard in folder.shards:
        dest = shard_dir / ("attributes_" + shard.metadata.name[len("metadata_"):])
        key = _shard_key(settings, shard)
        paths.append(dest)
        done = _done(dest, key)
        if done is None:
            todo.append(ShardJob(root=str(folder.root), shard=shard, dest=str(dest), key=key, classes=classes,
                                 names=tuple(names), groups=tuple(prompts.group_names), attribute=prompts.attribute,
                                 scale=scale, threshold=config.threshold, nan_rows=config.nan_rows,
                                 text_column=text_column, key_column=key_column,
                                 lexicon=config.lexicon if lexicon is not None else None,
                                 soft_bins=config.soft_bins,
                                 labels=labels.label_names if labels is not None else (),
                                 label_vectors=label_vectors, label_threshold=config.label_threshold))
        else:
            results[shard.number] = done
    n_skipped = len(results)
    with timer("pass"):
        if config.engine == "spark":
            from clipprobe.pipeline.attrspark import run_jobs_spark

            results.update(run_jobs_spark(run_shard_job, todo, master=config.spark_master, workers=config.threads(),
                                          conf=config.spark_conf))
        else:
            results.update(_run_jobs_local(todo, config.threads(), lexicon))
    per_shard = [{"shard": shard.name, "file": dest.name, **results[shard.number]}
                 for shard, dest in zip(folder.shards, paths)]
    groups = prompts.group_names
    totals = {name: sum(s["counts"][name] for s in per_shard) for name in per_shard[0]["counts"]}
    labelled = sum(totals[g] for g in groups)
    soft = np.sum([s["soft_sum"] for s in per_shard], axis=0)
    summary = {
        "rows": folder.rows, "counts": totals,
        "hard_shares": {g: (totals[g] / labelled if labelled else None) for g in groups},
        "soft_shares": {g: (float(soft[k] / soft.sum()) if soft.sum() > 0 else None) for k, g in enumerate(groups)},
        "shards_done_before": n_skipped,
    }
    if lexicon is not None:
        summary["both"] = {k_: sum(s["both"][k_] for s in per_shard) for k_ in ("from_caption", "from_image", "none")}
    if labels is not None:
        summary["labels"] = {name: sum(s["labels"][name] for s in per_shard) for name in labels.label_names}
    record = run_record(
        "balance attributes", format_version=FORMAT_VERSION, config=_config_dict(config), model=info,
        dataset=dataset_info, timings=timer.seconds, started=started,
        embeddings=folder.summary(), prompts=prompts.to_dict(), scale=scale, threshold=config.threshold,
        attribute=prompts.attribute, groups=list(groups), column=column,
        both_column=both_column(prompts.attribute) if lexicon else None, lexicon=lexicon[0] if lexicon else None,
        text_column=text_column, key_column=key_column,
        calibration=calibration.summary() if calibration is not None else None, scale_fit=scale_fit,
        calibration_note=None if calibration is not None else "not measured: no labelled dataset was given",
        summary=summary, shards=per_shard,
        label_prompts=labels.to_dict() if labels is not None else None,
        label_threshold=config.label_threshold if labels is not None else None,
        label_column=LABEL_COLUMN if labels is not None else None)
    if calibration is not None:
        write_parquet(out / FILES["groups"], calibration.by_group)
        write_parquet(out / FILES["confusion"], calibration.confusion.reset_index())
        write_parquet(out / FILES["reliability"], calibration.reliability)
    write_json(out / FILES["run"], record)
    return AttributeResult(out=out, shards=tuple(paths), column=column,
                           both_column=both_column(prompts.attribute) if lexicon else None, groups=groups,
                           text_column=text_column, key_column=key_column, calibration=calibration, run=record,
                           soft_column=soft_column(prompts.attribute) if config.soft_bins else None,
                           soft_both_column=(soft_column(prompts.attribute, True)
                                             if config.soft_bins and lexicon else None),
                           label_column=LABEL_COLUMN if labels is not None else None,
                           labels=labels.label_names if labels is not None else ())


def _config_dict(config: AttributeConfig) -> dict:
    from clipprobe.config import to_dict

    data = to_dict(dataclasses.replace(config, probe=ProbeConfig()))
    data["probe"] = to_dict(config.probe)
    return data


# ----------------------------------------------------------------------------------------------
# balance measure|fit --attribute-source images|both

SOURCES = ("captions", "images", "both")
MODES = ("hard", "soft")
MSG_MODE = "attribute_source: mode={value!r} is not one of " + ", ".join(map(repr, MODES))
MSG_SOURCE = "attribute_source: source={value!r} is not one of " + ", ".join(map(repr, SOURCES[1:]))
MSG_SOURCE_COLUMN = "attribute_source and attribute_column are two ways to give the groups: give one"
MSG_SOURCE_ATTRIBUTE = ("attribute {attribute!r} is not the attribute of prompt set {prompts!r} ({want!r}): "
                        "balance the prompt set's attribute or give another prompt set")
MSG_SOURCE_CAPTIONS = ("captions come from the metadata of the embedding folder with attribute_source; "
                       "do not give captions as well")


@dataclasses.dataclass(frozen=True)
class AttributeSource:
    """Groups from the images for ``balance measure|fit``: ``source`` ``"images"`` (the image's group) or
    ``"both"`` (the group the caption names where it names exactly one, else the image's), from the
    attribute pass with ``attributes`` (its ``out`` is replaced by the balance run's ``OUT/attributes``)."""

    source: str
    attributes: AttributeConfig
    mode: str = "hard"              # "soft": balance each image's E[s_k] (quantised to 1/bins), not its label
    bins: int = 16

    def check(self) -> "AttributeSource":
        if self.source not in SOURCES[1:]:
            raise UsageError(MSG_SOURCE.format(value=self.source))
        if self.mode not in MODES:
            raise UsageError(MSG_MODE.format(value=self.mode))
        if self.mode == "soft":
            from clipprobe.analysis.patterns import check_soft_bins

            check_soft_bins(self.bins)
        self.attributes.check()
        return self


def resolve_attribute_source(config):
    """``(config, record)``: a :class:`~clipprobe.pipeline.balance.BalanceConfig` whose groups come from
    the images rewritten to read the attribute pass's shard files with their group column, after running
    the pass (resumable) into ``OUT/attributes``; ``record`` is what the balance run stores about it (the
    classifier's accuracy per group included). A config without ``attribute_source`` comes back as it is."""
    source = getattr(config, "attribute_source", None)
    if source is None:
        return config, None
    from clipprobe.resources.attributes import get_attribute_prompts

    source = source.check()
    label_prompts = source.attributes.label_prompts
    if label_prompts is not None:
        if config.label_column not in (None, LABEL_COLUMN):
            raise UsageError(MSG_SOURCE_LABEL_COLUMN.format(column=LABEL_COLUMN, given=config.label_column))
        if config.label_source != "captions":       # fit on the image labels (default 'column')
            config = dataclasses.replace(config, label_column=LABEL_COLUMN)
    config.check()                  # the balance settings too, before the pass reads any image
    if config.attribute_column is not None:
        raise UsageError(MSG_SOURCE_COLUMN)
    if config.captions:
        raise UsageError(MSG_SOURCE_CAPTIONS)
    prompts = get_attribute_prompts(source.attributes.prompts)
    if prompts.attribute != config.attribute:
        raise UsageError(MSG_SOURCE_ATTRIBUTE.format(attribute=config.attribute, prompts=prompts.name,
                                                     want=prompts.attribute))
    lexicon = None
    if source.source == "both":
        from clipprobe.resources.lexicon import get_lexicon

        lexicon = get_lexicon(config.lexicon).name if config.lexicon is None else config.lexicon
    soft = source.mode == "soft"
    engine = getattr(config, "engine", None)        # the balance run's engine runs the pass too
    engine_settings = {} if engine is None else {"engine": engine.engine, "workers": engine.workers,
                                                  "spark_master": engine.spark_master,
                                                  "spark_conf": tuple(engine.spark_conf)}
    attr_config = dataclasses.replace(source.attributes, out=str(Path(config.out) / "attributes"), lexicon=lexicon,
                                      soft_bins=source.bins if soft else None, **engine_settings)
    result = run_attributes(attr_config)
    if soft:
        column = result.soft_column if source.source == "images" else result.soft_both_column
    else:
        column = result.column if source.source == "images" else result.both_column
    balanced = dataclasses.replace(config, captions=tuple(str(p) for p in result.shards), attribute_column=column,
                                   groups=result.groups, text_column=result.text_column,
                                   key=result.key_column if config.key is not None else None, attribute_source=None,
                                   soft_bins=source.bins if soft else 0)
    if label_prompts is not None and config.label_source != "captions":
        balanced = dataclasses.replace(balanced, label_column=result.label_column)
    record = {"source": source.source, "mode": source.mode, "bins": source.bins if soft else None,
              "column": column, "folder": str(result.out),
              "embeddings": result.run["embeddings"], "model": result.run["model"].get("spec"),
              "prompts": result.run["prompts"], "scale": result.run["scale"], "threshold": result.run["threshold"],
              "calibration": result.run["calibration"], "calibration_note": result.run["calibration_note"],
              "scale_fit": result.run.get("scale_fit"), "summary": result.run["summary"]}
    if label_prompts is not None:
        record |= {"label_column": result.label_column, "label_prompts": result.run["label_prompts"],
                   "label_threshold": result.run["label_threshold"], "labels_used": config.label_source != "captions"}
    return balanced, record
