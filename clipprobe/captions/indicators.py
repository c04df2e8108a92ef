"""Per-caption indicators for data balancing: the groups of one attribute and the labels a caption mentions.

For data RB/AB and M4 (:mod:`clipprobe.analysis.balance`) every caption needs two 0/1 vectors:

* ``s``, which groups of one attribute it mentions: from the lexicon (a caption mentions a group when
  it contains any of the group's terms, by the matching rule of :mod:`clipprobe.captions.matching`,
  the rule ``captions count`` uses) or, for users who already have per-example attributes (an image
  classifier's output), from a column of the parquet that holds each example's group name (null or
  empty: no group);
* ``y``, which labels it carries: the words of a taxonomy category, every word of a taxonomy, or a
  user's word list, matched by the same rule; or, for users who already have per-example labels (a
  multi-label image classifier's output), from a column of the parquet that holds each example's labels
  (a list of label names, or one name; null or empty: no label), in place of the caption words or
  OR-ed with them (``label_source``).

A chunk (some row groups of one parquet file) is read and matched exactly as ``captions count`` does
(the same worker state: Hyperscan database, compiled token pass), then turned into a
:class:`~clipprobe.analysis.patterns.PatternTable` (the distinct ``(s, y, utility bin)`` rows with their
counts) and each caption's row of that table. The two task functions here run on the local engine
(:func:`clipprobe.captions.scan.run_local`) and on Spark (:func:`clipprobe.captions.spark.run_spark`)
alike:

* :func:`pattern_task`: the chunk's pattern table (mergeable: sum the chunks with ``merge_tables``),
  stored with each caption's row of it in a chunk file;
* :func:`rank_window_task`: after the solve, from that chunk file, the light pass that finds, for each
  pattern, which of its captions the keep flags keep (the first by a hash of their content, ``q x count``
  of them rounded: :mod:`clipprobe.analysis.keepflags`), from a window of rank keys around the expected
  boundary; :func:`rank_histogram_task` and :func:`rank_candidates_task`, the two exact passes for the
  patterns whose window missed (rare);
* :func:`weights_task`: from that chunk file and a fitted solution, each caption's keep probability
  and keep flag, written by the task itself as one parquet file (file, row group, row, key column, q,
  keep): no caption is read or matched a second time.

For a fit, the pattern pass also hashes each caption's content (its text and the key column, or an
id column the user names; never the file's path), and stores the hashes in the chunk file.

The passes over many files (plan, resumable parts, engines) are in :mod:`clipprobe.captions.patterns`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from clipprobe.captions.matches import column_hashes  # noqa: F401  (its home: the scan records the same hashes)
from clipprobe.captions.scan import ScanSpec
from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean

log = logging.getLogger(__name__)

LABELS_ALL = "all"
MSG_ATTRIBUTE = "attribute {attribute!r} is not in lexicon {lexicon!r}{hint}; valid: {valid}"
MSG_LABELS = ("labels {labels!r} is not a category of taxonomy {taxonomy!r}, {all!r} or a word-list file{hint}; "
              "categories: {valid}")
MSG_LABELS_FILE = "labels file {path}, line {line}: {why}"
MSG_LABELS_EMPTY = "labels file {path} lists no label (one per line; '#' starts a comment)"
MSG_LABELS_DUPLICATE = "labels file {path}, line {line}: {label!r} is the same label as line {first}"
MSG_GROUPS_NEEDED = "attribute_column {column!r} needs the list of its groups (groups)"
MSG_GROUPS_DUPLICATE = "groups: {group!r} is given twice"
MSG_GROUP_VALUE = ("{path}: attribute column {column!r} holds {value!r} at row {row}, not one of the groups "
                   "{groups} (null or empty means no group)")
MSG_GROUP_TYPE = "{path}: attribute column {column!r} holds {type}, not group names (string)"
MSG_LABEL_VALUE = ("{path}: label column {column!r} holds {value!r} at row {row}, not one of the labels "
                   "{labels} (null or empty means no label)")
MSG_LABEL_TYPE = ("{path}: label column {column!r} holds {type}, not label names (a string, or a list of "
                  "strings)")
MSG_LABEL_SOURCE = "label_source={value!r} is not one of {choices}"
MSG_LABEL_SOURCE_COLUMN = "label_source={value!r} reads the labels from a column: give label_column"
MSG_LABEL_COLUMN_SOURCE = ("label_column {column!r} is given but label_source='captions' reads the labels from "
                           "the caption words only: leave label_column out, or use 'column' or 'both'")
LABEL_SOURCES = ("captions", "column", "both")
MSG_UTILITY_MISSING = "{path}: utility column {column!r} has a missing value at row {row}"
MSG_UTILITY_VALUE = "{path}: utility column {column!r} has {value!r} at row {row}; utilities must be positive"
MSG_UTILITY_TYPE = "{path}: utility column {column!r} holds {type}, not numbers"
MSG_CHANGED = "{path}: {problem}; the file changed since its patterns were counted (delete {parts} and rerun)"
MSG_BAD_MATCHES = "{path}: a matches file that does not fit its chunk; delete it (and its scan's part) and count again"
MSG_NO_HASHES = "{path}: a chunk file without content hashes (written by another version); delete it and rerun"


# ----------------------------------------------------------------------------------------------
# what to match: the attribute's groups and the labels


def attribute_groups(lexicon, attribute: str) -> dict[str, tuple[str, ...]]:
    """group -> terms of one attribute of a lexicon, or a UsageError listing the lexicon's attributes."""
    if attribute not in lexicon.attributes:
        valid = list(lexicon.attributes)
        raise UsageError(MSG_ATTRIBUTE.format(attribute=attribute, lexicon=lexicon.name,
                                              hint=did_you_mean(attribute, valid),
                                              valid=", ".join(repr(a) for a in valid)))
    return dict(lexicon.attributes[attribute])


def resolve_labels(labels: str, taxonomy) -> tuple[str, ...]:
    """The label words: ``'all'`` (every word of the taxonomy), a category of the taxonomy
    (case-insensitive, aliases accepted) or a word-list file (one label per line, ``#`` comments)."""
    text = str(labels).strip()
    if text.lower() == LABELS_ALL:
        return _dedupe(taxonomy.words())
    lowered = {c.lower(): c for c in taxonomy.categories}
    lowered.update({a.lower(): c for a, c in taxonomy.aliases.items()})
    if text.lower() in lowered:
        return _dedupe(taxonomy.categories[lowered[text.lower()]])
    path = Path(text).expanduser()
    if path.is_file():
        return read_label_file(path)
    valid = list(taxonomy.categories)
    raise UsageError(MSG_LABELS.format(labels=text, taxonomy=taxonomy.name, all=LABELS_ALL,
                                       hint=did_you_mean(text, valid), valid=", ".join(repr(c) for c in valid)))


def _dedupe(words: Sequence[str]) -> tuple[str, ...]:
    """Words in order, the later of two that are the same term after normalisation left out."""
    from clipprobe.captions.matching import normalise_term

    seen: dict[str, str] = {}
    for w in words:
        seen.setdefault(normalise_term(w), w)
    return tuple(seen.values())


def read_label_file(path) -> tuple[str, ...]:
    """Labels of a word-list file: one per line, blank lines and lines starting with '#' skipped."""
    from clipprobe.captions.matching import TermError, normalise_term

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(MSG_LABELS_FILE.format(path=path, line=0, why=f"{type(err).__name__}: {err}")) from None
    out: list[str] = []
    first: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        label = line.strip()
        if not label or label.startswith("#"):
            continue
        try:
            norm = normalise_term(label)
        except TermError as err:
            raise DataError(MSG_LABELS_FILE.format(path=path, line=number, why=err)) from None
        if norm in first:
            raise DataError(MSG_LABELS_DUPLICATE.format(path=path, line=number, label=label, first=first[norm]))
        first[norm] = number
        out.append(label)
    if not out:
        raise DataError(MSG_LABELS_EMPTY.format(path=path))
    return tuple(out)


@dataclass
class IndicatorSpec(ScanSpec):
    """What a worker needs to turn a chunk into indicators: the scan's term space and matcher (words are
    the labels; groups are the attribute's, or none when ``group_column`` gives them), and the columns.

    ``hash_text`` / ``hash_columns``: what each caption's content hash covers (the caption text, then
    these columns, in order; neither: no hashes, as for ``balance measure``).
    ``label_column`` / ``label_source``: the column holding each example's labels (names among
    ``column_labels``, the first labels of ``labels``; the others, proxies, always come from the caption
    words) and whether the labels come from the caption words (``'captions'``), from that column alone
    (``'column'``: the term space then holds only the other words, from ``word_offset`` on) or from both
    (``'both'``: OR).
    ``fitted`` / ``fitted_q``: the fitted pattern table and its keep probabilities (passes after the
    solve); ``keep_counts``: the captions each of its rows keeps; ``seed``: of the rank order of the keep
    flags; ``ranks``: the
    :class:`~clipprobe.analysis.keepflags.KeepRanks` of the pass that runs. ``scan_terms``: for
    :func:`pattern_from_scan_task`, the map from a recorded scan's term indices to this spec's.
    """

    attribute: str = ""
    groups: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    group_column: str | None = None
    label_column: str | None = None
    label_source: str = "captions"
    column_labels: tuple[str, ...] = ()
    utility_column: str | None = None
    key_column: str | None = None
    hash_text: bool = False
    hash_columns: tuple[str, ...] = ()
    seed: int = 0
    fitted: Any = None
    fitted_q: Any = None
    keep_counts: Any = None
    ranks: Any = None
    scan_terms: Any = None       # from a recorded scan: each of its terms' index among this spec's terms (-1: none)

    @property
    def hashes(self) -> bool:
        return self.hash_text or bool(self.hash_columns)

    @property
    def word_offset(self) -> int:
        """The index in ``labels`` of the term space's first word (labels before it come from the column)."""
        return len(self.column_labels) if self.label_source == "column" else 0

    def fingerprint(self) -> str:
        """Hash of everything a chunk's patterns depend on (not the weights pass's settings)."""
        import hashlib
        import json

        from clipprobe.captions.scan import TermSpace

        what = {"format": PATTERNS_FORMAT, "space": TermSpace.from_dict(self.space).fingerprint(),
                "attribute": self.attribute, "groups": self.groups, "labels": self.labels,
                "group_column": self.group_column, "utility_column": self.utility_column,
                "hash_text": self.hash_text, "hash_columns": list(self.hash_columns)}
        if self.label_column is not None:        # (absent otherwise: earlier runs' parts stay valid)
            what.update(label_column=self.label_column, label_source=self.label_source,
                        column_labels=list(self.column_labels))
        blob = json.dumps(what, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


PATTERNS_FORMAT = 2   # bump when the way a chunk becomes a pattern table changes: it is part of the resume key


def build_spec(*, attribute: str, group_terms: dict[str, tuple[str, ...]] | None, groups: Sequence[str],
               labels: Sequence[str], method: str, group_column: str | None = None,
               utility_column: str | None = None, key_column: str | None = None, hash_text: bool = False,
               hash_columns: Sequence[str] = (), label_column: str | None = None, label_source: str = "captions",
               column_labels: Sequence[str] = ()) -> IndicatorSpec:
    """The spec of a scan for ``labels`` and the groups of ``attribute``: from their lexicon terms
    (``group_terms``), or from ``group_column`` (then ``group_terms`` is None). ``hash_text`` /
    ``hash_columns``: what the content hash of each caption covers (see :class:`IndicatorSpec`).
    ``label_column`` / ``label_source`` / ``column_labels`` (the first labels of ``labels``, those the
    column may name): where the labels come from (see :class:`IndicatorSpec`)."""
    from clipprobe._io import default_cache_dir
    from clipprobe.captions.matching import Matcher
    from clipprobe.captions.scan import TermSpace
    from clipprobe.resources.lexicon import Lexicon

    groups = tuple(str(g) for g in groups)
    for i, g in enumerate(groups):
        if g in groups[:i]:
            raise UsageError(MSG_GROUPS_DUPLICATE.format(group=g))
    labels, column_labels = tuple(labels), tuple(column_labels)
    if label_source not in LABEL_SOURCES:
        raise UsageError(MSG_LABEL_SOURCE.format(value=label_source, choices=", ".join(map(repr, LABEL_SOURCES))))
    if label_source != "captions" and label_column is None:
        raise UsageError(MSG_LABEL_SOURCE_COLUMN.format(value=label_source))
    if label_column is not None and label_source == "captions":
        raise UsageError(MSG_LABEL_COLUMN_SOURCE.format(column=label_column))
    if labels[:len(column_labels)] != column_labels:
        raise ValueError("column_labels must be the first labels")
    offset = len(column_labels) if label_source == "column" else 0
    attrs = {attribute: {g: tuple(group_terms[g]) for g in groups}} if group_terms is not None else {}
    space = TermSpace.build(list(labels[offset:]), Lexicon(name="balance", attributes=attrs))
    matcher = Matcher.cached(space.terms, default_cache_dir() / "hyperscan")
    return IndicatorSpec(space=space.to_dict(), matcher=matcher.to_bytes(), n_samples=0, method=method,
                         attribute=attribute, groups=groups, labels=labels, group_column=group_column,
                         label_column=label_column, label_source=label_source,
                         column_labels=column_labels if label_column is not None else (),
                         utility_column=utility_column, key_column=key_column, hash_text=hash_text,
                         hash_columns=tuple(hash_columns))


# ----------------------------------------------------------------------------------------------
# one chunk


@dataclass
class ChunkIndicators:
    """A chunk as a pattern table: ``table`` (PatternTable), ``ids`` (each caption's row of it),
    ``rows`` / ``nulls`` (captions read, null captions), ``seconds`` (read, match, encode, hash),
    ``hashes`` (each caption's content hash, when the spec asks for them), ``key`` (the key column as
    read, where the chunk's hashed columns include it: the weights pass need not read it again)."""

    table: Any
    ids: Any
    rows: int
    nulls: int
    seconds: dict[str, float] | None = None
    hashes: Any = None
    key: Any = None


def _group_codes(column, groups: tuple[str, ...], path: str, name: str, first_row: int):
    """Each row's group index (-1: none) from a column of group names; a name not in ``groups`` is an error."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
            or pa.types.is_null(t)):
        raise DataError(MSG_GROUP_TYPE.format(path=path, column=name, type=t))
    if pa.types.is_null(t):
        return np.full(len(column), -1, np.int64)
    column = column.cast(pa.large_string())
    codes = pc.index_in(column, value_set=pa.array(list(groups), pa.large_string()))
    present = pc.and_(pc.is_valid(column), pc.not_equal(column, ""))
    unknown = pc.and_kleene(present, pc.is_null(codes)).fill_null(False)
    if pc.any(unknown).as_py():
        row = int(np.flatnonzero(unknown.to_numpy(zero_copy_only=False))[0])
        raise DataError(MSG_GROUP_VALUE.format(path=path, column=name, value=column[row].as_py(),
                                               row=first_row + row, groups=", ".join(repr(g) for g in groups)))
    return codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def label_column_type_ok(t) -> bool:
    """A label column's type: text (one label or null per row) or a list of text (or of nothing)."""
    import pyarrow as pa

    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t) or (
            hasattr(pa.types, "is_list_view") and (pa.types.is_list_view(t) or pa.types.is_large_list_view(t))):
        t = t.value_type
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def _shown(names: Sequence[str], most: int = 20) -> str:
    listed = ", ".join(repr(x) for x in names[:most])
    return listed + (f", ... ({len(names)} in all)" if len(names) > most else "")


def _label_pairs(column, labels: tuple[str, ...], path: str, name: str, first_row: int):
    """``(rows, label indices)`` of a column of label names (a list per row, or one name; null or empty:
    none; a repeat within a row is the same label); a name not in ``labels`` is an error naming its row."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if not label_column_type_ok(t):
        raise DataError(MSG_LABEL_TYPE.format(path=path, column=name, type=t))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t) \
            or pa.types.is_dictionary(t):
        values, rows = column, np.arange(len(column), dtype=np.int64)
    else:
        if hasattr(pa.types, "is_list_view") and (pa.types.is_list_view(t) or pa.types.is_large_list_view(t)):
            column = column.cast(pa.large_list(t.value_type))
        values = pc.list_flatten(column)
        rows = pc.list_parent_indices(column).to_numpy(zero_copy_only=False).astype(np.int64)
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_null(values.type):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    values = values.cast(pa.large_string())
    codes = pc.index_in(values, value_set=pa.array(list(labels), pa.large_string()))
    present = pc.and_(pc.is_valid(values), pc.not_equal(values, "")).fill_null(False)
    unknown = pc.and_kleene(present, pc.is_null(codes)).fill_null(False)
    if pc.any(unknown).as_py():
        at = int(np.flatnonzero(unknown.to_numpy(zero_copy_only=False))[0])
        raise DataError(MSG_LABEL_VALUE.format(path=path, column=name, value=values[at].as_py(),
                                               row=first_row + int(rows[at]), labels=_shown(labels)))
    codes = codes.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    has = codes >= 0
    return rows[has], codes[has]


def _utility_values(column, path: str, name: str, first_row: int):
    import numpy as np
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    t = column.type
    if not (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)):
        raise DataError(MSG_UTILITY_TYPE.format(path=path, column=name, type=t))
    if column.null_count:
        row = int(np.flatnonzero(~np.asarray(column.is_valid()))[0])
        raise DataError(MSG_UTILITY_MISSING.format(path=path, column=name, row=first_row + row))
    u = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    bad = np.flatnonzero(~(np.isfinite(u) & (u > 0)))
    if bad.size:
        raise DataError(MSG_UTILITY_VALUE.format(path=path, column=name, value=float(u[bad[0]]),
                                                 row=first_row + int(bad[0])))
    return u


def chunk_indicators(spec: IndicatorSpec, path: str, row_groups: Sequence[int], text_column: str,
                     row_offset: int = 0, stop: threading.Event | None = None) -> ChunkIndicators:
    """Read and match one chunk (some row groups of one file) into its pattern table and caption ids.

    ``row_offset``: the file row of the chunk's first row (for messages). When ``stop`` is set the chunk
    is left at its next record batch (:class:`~clipprobe.captions.scan.Stopped`).
    """
    import time

    import numpy as np

    from clipprobe.captions.inputs import caption_array
    from clipprobe.captions.scan import _expand, _Worker, batches_until_stopped, open_parquet

    from clipprobe.analysis.keepflags import combine_hashes

    worker = _Worker.get(spec)
    columns = [text_column]
    for extra in (spec.group_column, spec.label_column, spec.utility_column, *spec.hash_columns):
        if extra is not None and extra not in columns:
            columns.append(extra)
    s_rows, s_cols, y_rows, y_cols, utils, hashes, key = [], [], [], [], [], [], []
    keep_key = spec.key_column is not None and spec.key_column in spec.hash_columns
    n = nulls = 0
    t_read = t_match = t_hash = 0.0
    t0 = time.perf_counter()
    if len(worker.footers) >= 256 and path not in worker.footers:
        worker.footers.clear()
    with open_parquet(path, worker.footers.get(path)) as pf:
        worker.footers[path] = pf.metadata
        batches = pf.iter_batches(batch_size=spec.batch_rows, row_groups=list(row_groups), columns=columns,
                                  use_threads=False)
        for batch in batches_until_stopped(batches, stop, path):
            t1 = time.perf_counter()
            t_read += t1 - t0
            text = caption_array(batch.column(text_column))
            found = worker.matcher.scan(text)
            terms = found.terms.astype(np.int64)
            rows, words = _expand(found.rows, terms, worker.word_ptr, worker.word_idx)
            y_rows.append(rows + n)
            y_cols.append(words + spec.word_offset)
            if spec.label_column is not None:
                rows, labels = _label_pairs(batch.column(spec.label_column), spec.column_labels, path,
                                            spec.label_column, row_offset + n)
                y_rows.append(rows + n)
                y_cols.append(labels)
            if spec.group_column is None:
                rows, groups = _expand(found.rows, terms, worker.group_ptr, worker.group_idx)
                s_rows.append(rows + n)
                s_cols.append(groups)
            else:
                codes = _group_codes(batch.column(spec.group_column), spec.groups, path, spec.group_column,
                                     row_offset + n)
                has = np.flatnonzero(codes >= 0)
                s_rows.append(has + n)
                s_cols.append(codes[has])
            if spec.utility_column is not None:
                utils.append(_utility_values(batch.column(spec.utility_column), path, spec.utility_column,
                                             row_offset + n))
            t0 = time.perf_counter()
            t_match += t0 - t1
            if spec.hashes:
                parts = [column_hashes(text)] if spec.hash_text else []
                parts += [column_hashes(batch.column(name)) for name in spec.hash_columns]
                hashes.append(combine_hashes(parts))
                if keep_key:
                    key.append(batch.column(spec.key_column))
                t1 = time.perf_counter()
                t_hash += t1 - t0
                t0 = t1
            n += len(text)
            nulls += found.n_nulls
    t2 = time.perf_counter()
    table, ids = encode_chunk(np.concatenate(s_rows) if s_rows else np.zeros(0, np.int64),
                              np.concatenate(s_cols) if s_cols else np.zeros(0, np.int64),
                              np.concatenate(y_rows) if y_rows else np.zeros(0, np.int64),
                              np.concatenate(y_cols) if y_cols else np.zeros(0, np.int64),
                              n, spec.groups, spec.labels, np.concatenate(utils) if utils else None)
    seconds = {"read": t_read, "match": t_match, "encode": time.perf_counter() - t2}
    if spec.hashes:
        seconds["hash"] = t_hash
    out = ChunkIndicators(table, ids, n, nulls, seconds=seconds,
                          hashes=(np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)) if spec.hashes
                          else None, key=_key_array(key) if keep_key and key else None)
    log.debug("indicators of %s rows %d-%d", path, row_offset, row_offset + n)
    return out


def _key_array(parts):
    """The key column of a chunk as one array, as a weights file holds it (the string types as string)."""
    import pyarrow as pa

    column = pa.chunked_array(parts) if isinstance(parts, list) else parts
    if pa.types.is_large_string(column.type) or pa.types.is_string_view(column.type):
        column = column.cast(pa.string())       # one schema for every part, whatever a file's string type
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _distinct_rows(keys):
    """``(distinct rows, inverse)`` of a ``(m, W)`` uint64 array. Rows of several words are told apart by a
    64-bit hash of their words (one sort of m numbers instead of a sort of m rows); a collision, checked,
    falls back to the exact row sort."""
    import numpy as np

    if keys.shape[1] == 1:
        uniq, inv = np.unique(keys[:, 0], return_inverse=True)
        return uniq[:, None], inv.reshape(-1)
    with np.errstate(over="ignore"):
        h = np.zeros(keys.shape[0], np.uint64)
        for w in range(keys.shape[1]):
            z = (h ^ keys[:, w]) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(w + 1)
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            h = z ^ (z >> np.uint64(31))
    _, first, inv = np.unique(h, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    uniq = keys[first]
    if not np.array_equal(uniq[inv], keys):        # two patterns with one hash: sort the rows themselves
        uniq, inv = np.unique(keys, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
    return uniq, inv


def _pattern_kernel():
    """The compiled encoder (:mod:`clipprobe.analysis._patternkernel`, in clipprobe's numba cache folder) where
    numba is installed, else None (the numpy path below: the same table and ids)."""
    from clipprobe._jitcache import optional_kernel

    return optional_kernel("clipprobe.analysis._patternkernel", "distinct_keys")


def encode_chunk(s_rows, s_cols, y_rows, y_cols, n: int, groups, labels, utility=None):
    """``(table, ids)`` of ``n`` captions given as (row, column) pairs of their group and label indicators
    (repeats allowed): the same table and ids as :func:`~clipprobe.analysis.patterns.encode_patterns` on
    the dense matrices (tested), built for the scan's sparse output: the captions' bit keys are set
    pair by pair, and only the captions with an indicator (or, with a utility, all) are sorted."""
    import numpy as np

    from clipprobe.analysis.patterns import UTILITY_BINS_PER_OCTAVE, PatternTable, merge_tables, table_lookup

    groups, labels = tuple(groups), tuple(labels)
    k = len(groups)
    n_words = max(1, -(-(k + len(labels)) // 64))
    cols = np.concatenate([np.asarray(s_cols, np.int64), np.asarray(y_cols, np.int64) + k])
    rows = np.concatenate([np.asarray(s_rows, np.int64), np.asarray(y_rows, np.int64)])
    if rows.size and (rows.min() < 0 or rows.max() >= n or cols.min() < 0 or cols.max() >= n_words * 64):
        raise ValueError(f"encode_chunk: indicator pairs outside {n} captions x {k + len(labels)} columns")
    keys = np.zeros((n, n_words), np.uint64)
    kernel = _pattern_kernel() if utility is None else None
    if kernel is None:                          # else the kernel sets the bits as it numbers the keys
        np.bitwise_or.at(keys.reshape(-1), rows * n_words + cols // 64,
                         np.left_shift(np.uint64(1), (cols % 64).astype(np.uint64)))
    if utility is not None:
        u = np.asarray(utility, np.float64)
        ubin = np.floor(np.log2(u) * UTILITY_BINS_PER_OCTAVE).astype(np.int32)
        code = np.column_stack([keys, (ubin.astype(np.int64) + 2**31).astype(np.uint64)])
        uniq, inv = np.unique(code, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        count = np.bincount(inv, minlength=len(uniq)).astype(np.int64)
        table = PatternTable(groups, labels, np.ascontiguousarray(uniq[:, :n_words]),
                             (uniq[:, n_words].astype(np.int64) - 2**31).astype(np.int32), count,
                             np.bincount(inv, weights=u, minlength=len(uniq)), True)
        canonical = merge_tables([table])
        return canonical, table_lookup(table, canonical)[inv]
    # inv: each caption's distinct key, -1 for a caption with no indicator
    if kernel is not None:
        inv = np.empty(n, np.int64)
        first, count = np.empty(n, np.int64), np.empty(n, np.int64)
        n_distinct = kernel.distinct_keys(rows, cols, keys, inv, first, count)
        uniq, count = keys[first[:n_distinct]], count[:n_distinct]
    else:
        marked = np.flatnonzero(keys.any(axis=1))
        uniq, inv_marked = _distinct_rows(keys[marked])
        count = np.bincount(inv_marked, minlength=len(uniq)).astype(np.int64)
        inv = np.full(n, -1, np.int64)
        inv[marked] = inv_marked
    n_empty = n - int(count.sum())
    empty = 1 if n_empty else 0                # the all-zero pattern, when some caption has no indicator
    table = PatternTable(groups, labels, np.concatenate([np.zeros((empty, n_words), np.uint64), uniq]),
                         np.zeros(len(uniq) + empty, np.int32),
                         np.concatenate([[n_empty] * empty, count]).astype(np.int64),
                         np.concatenate([[n_empty] * empty, count]).astype(np.float64), False)
    canonical = merge_tables([table])
    where = table_lookup(table, canonical)
    return canonical, np.append(where[empty:], where[0] if empty else -1)[inv]      # inv -1: the last, empty


# ----------------------------------------------------------------------------------------------
# the task functions (local engine and Spark alike). A pattern task is
# (id, path, row groups, text column, first row, chunk file); a rank task adds (file ordinal,);
# a weights task adds (weights file, source, rows per row group, file ordinal).


class ChunkCache:
    """The chunk files this process wrote lately, held in memory for the passes after the solve (which then
    read no chunk file): the arrays of each, by path and the file's identity (inode, size, modification
    time: a file replaced since is read from disk). Off until :meth:`start`; it fills up to ``limit``
    bytes (the one :meth:`start` gives, else the one it was made with) and then takes no more (the passes read the chunks in the order they were written, so keeping
    the first ones serves them; evicting the oldest would serve none); :meth:`stop` empties it."""

    def __init__(self, limit: int):
        self.default_limit = self.limit = limit
        self.on = False
        self.used = 0
        self.items: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self.lock = threading.Lock()

    def start(self, limit: int | None = None) -> None:
        with self.lock:
            self.items.clear()
            self.used = 0
            self.limit = self.default_limit if limit is None else limit
            self.on = self.limit > 0

    def stop(self) -> None:
        with self.lock:
            self.items.clear()
            self.used = 0
            self.on = False

    @staticmethod
    def _identity(path) -> tuple[int, int, int] | None:
        import os

        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def put(self, path, arrays: dict[str, Any]) -> None:
        """Hold a chunk's numpy arrays (made read-only) and, as ``"key"``, a ``(column name, Arrow array)``."""
        if not self.on:
            return
        size = sum(_nbytes(a) for a in arrays.values())
        identity = self._identity(path)
        with self.lock:
            if identity is None or self.used + size > self.limit:
                return
            for a in arrays.values():
                if hasattr(a, "flags"):
                    a.flags.writeable = False
            old = self.items.pop(str(path), None)
            self.used += size - (0 if old is None else sum(_nbytes(a) for a in old[1].values()))
            self.items[str(path)] = (identity, arrays)

    def get(self, path) -> dict[str, Any] | None:
        if not self.on:
            return None
        with self.lock:
            held = self.items.get(str(path))
        if held is None or self._identity(path) != held[0]:
            return None
        return held[1]


def _nbytes(value) -> int:
    return value.nbytes if hasattr(value, "nbytes") else _nbytes(value[1])


CHUNK_CACHE = ChunkCache(256 << 20)


def save_chunk(path, table, ids, hashes=None, key=None) -> None:
    """A chunk's pattern table, its captions' rows of it (the smallest integer type that holds them) and,
    for a fit, their content hashes; all also kept in :data:`CHUNK_CACHE` where it is on, with ``key``
    (``(column name, Arrow array)``, the key column as the chunk's weights file holds it; not stored)."""
    import numpy as np

    from clipprobe._io import atomic_path

    dtype = np.uint8 if table.n_rows <= 2**8 else np.uint16 if table.n_rows <= 2**16 else np.int64
    arrays = {"keys": np.asarray(table.keys, np.uint64), "ubin": np.asarray(table.ubin, np.int32),
              "count": np.asarray(table.count, np.int64), "u_sum": np.asarray(table.u_sum, np.float64),
              "ids": np.asarray(ids).astype(dtype)}
    if hashes is not None:
        arrays["hashes"] = np.asarray(hashes, np.uint64)
    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    held = {name: a.copy() for name, a in arrays.items()}
    if key is not None:
        held["key"] = key
    CHUNK_CACHE.put(path, held)


def load_chunk(path, spec: IndicatorSpec, hashes: bool = False):
    """``(table, ids)`` as :func:`save_chunk` wrote them; with ``hashes``, ``(table, ids, hashes)``."""
    import numpy as np

    from clipprobe.analysis.patterns import PatternTable

    held = CHUNK_CACHE.get(path)
    with (_held(held) if held is not None else np.load(path, allow_pickle=False)) as z:
        table = PatternTable(tuple(spec.groups), tuple(spec.labels), z["keys"].astype(np.uint64),
                             z["ubin"].astype(np.int32), z["count"].astype(np.int64), z["u_sum"].astype(np.float64),
                             spec.utility_column is not None)
        if not hashes:
            return table, z["ids"].astype(np.int64)
        if "hashes" not in z:
            raise DataError(MSG_NO_HASHES.format(path=path))
        return table, z["ids"].astype(np.int64), z["hashes"]


class _held(dict):
    """A cached chunk's arrays, used as ``np.load``'s result is (``with``, ``[name]``, ``in``)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def pattern_task(spec: IndicatorSpec, task: tuple, stop=None):
    """Match a chunk, store its pattern table and caption ids (and content hashes) in the task's chunk
    file (for the passes after the solve) and return the table and counts, or ``{"error": message}`` for
    bad data in it (a ClipprobeError, e.g. a missing utility), which the caller raises: such data is not
    skipped."""
    _, path, row_groups, column, row_offset, chunk_file = task[:6]
    try:
        chunk = chunk_indicators(spec, path, row_groups, column, row_offset, stop)
        save_chunk(chunk_file, chunk.table, chunk.ids, chunk.hashes,
                   None if chunk.key is None else (spec.key_column, chunk.key))
    except ClipprobeError as err:  # bad data, or a chunk file that cannot be written (named in the message)
        return {"error": str(err)}
    return {"table": chunk.table, "rows": chunk.rows, "nulls": chunk.nulls, "row_groups": len(row_groups),
            "seconds": chunk.seconds}


def indicators_from_matches(spec: IndicatorSpec, matches_file: str) -> ChunkIndicators:
    """A chunk's pattern table, caption ids and content hashes from the matches a ``captions count`` scan
    recorded (:mod:`clipprobe.captions.matches`): the scan's terms mapped to this spec's
    (``spec.scan_terms``), then the same indicators as :func:`chunk_indicators` (no caption is read)."""
    import time

    import numpy as np

    from clipprobe.analysis.keepflags import combine_hashes
    from clipprobe.captions.matches import load_matches
    from clipprobe.captions.scan import TermSpace, _expand

    t0 = time.perf_counter()
    m = load_matches(matches_file)
    n = m["n"]
    if m["text"].size != n or (m["rows"].size and int(m["rows"].max()) >= n):
        raise DataError(MSG_BAD_MATCHES.format(path=matches_file))
    t1 = time.perf_counter()
    mapped = np.asarray(spec.scan_terms, np.int64)[m["terms"]]
    mine = mapped >= 0
    rows, terms = m["rows"][mine], mapped[mine]
    word_ptr, word_idx, group_ptr, group_idx = TermSpace.from_dict(spec.space).term_maps()
    y_rows, y_cols = _expand(rows, terms, word_ptr, word_idx)
    y_cols = y_cols + spec.word_offset          # (0: a recorded scan serves no label column)
    s_rows, s_cols = _expand(rows, terms, group_ptr, group_idx)
    t2 = time.perf_counter()
    table, ids = encode_chunk(s_rows, s_cols, y_rows, y_cols, n, spec.groups, spec.labels)
    t3 = time.perf_counter()
    hashes = None
    if spec.hashes:
        parts = [m["text"]] if spec.hash_text else []
        parts += [m["columns"][name] for name in spec.hash_columns]
        hashes = combine_hashes(parts)
    return ChunkIndicators(table, ids, n, m["nulls"], hashes=hashes,
                           seconds={"read": t1 - t0, "match": t2 - t1, "encode": t3 - t2,
                                    "hash": time.perf_counter() - t3})


def pattern_from_scan_task(spec: IndicatorSpec, task: tuple, stop=None):
    """:func:`pattern_task` from a recorded scan: the task's 7th item is the chunk's matches file."""
    from clipprobe.captions.scan import Stopped

    _, path, row_groups, _, _, chunk_file, matches_file = task[:7]
    if stop is not None and stop.is_set():
        raise Stopped(path)
    try:
        chunk = indicators_from_matches(spec, matches_file)
        save_chunk(chunk_file, chunk.table, chunk.ids, chunk.hashes)
    except ClipprobeError as err:
        return {"error": str(err)}
    return {"table": chunk.table, "rows": chunk.rows, "nulls": chunk.nulls, "row_groups": len(row_groups),
            "seconds": chunk.seconds}


def _ranked_chunk(spec: IndicatorSpec, path: str, chunk_file: str, row_offset: int, ordinal: int):
    """``(table, ids, pattern, rank key, position)`` of a chunk's captions, from its chunk file (``pattern``:
    each caption's row of the fitted table, :func:`~clipprobe.analysis.keepflags.fitted_rows`)."""
    import numpy as np

    from clipprobe.analysis.keepflags import UnknownPatterns, fitted_rows, positions, rank_keys

    table, ids, hashes = load_chunk(chunk_file, spec, hashes=True)
    try:
        pattern = fitted_rows(spec.fitted, table, ids)
    except UnknownPatterns:
        raise DataError(MSG_CHANGED.format(path=path, problem="it holds patterns the fit never saw",
                                           parts=Path(chunk_file).parent)) from None
    if hashes.size != ids.size:
        raise DataError(MSG_CHANGED.format(path=path, problem=f"{ids.size} captions but {hashes.size} hashes",
                                           parts=Path(chunk_file).parent))
    rows = row_offset + np.arange(ids.size, dtype=np.int64)
    return table, ids, pattern, rank_keys(hashes, spec.seed), positions(ordinal, rows)


def _table_rows(table, ids, pattern):
    """``(table.n_rows,)`` the fitted table's row of each row of a chunk's table (every row holds a caption)."""
    import numpy as np

    where = np.full(table.n_rows, -1, np.int64)
    where[ids] = pattern
    return where


def rank_histogram_task(spec: IndicatorSpec, task: tuple, stop=None):
    """The chunk's captions per (pattern, rank-key bucket) (:func:`~clipprobe.analysis.keepflags.rank_histogram`),
    from its chunk file: ``{"cells", "counts", "rows"}`` (or ``{"error": message}``)."""
    from clipprobe.analysis.keepflags import rank_histogram
    from clipprobe.captions.scan import Stopped

    _, path, _, _, row_offset, chunk_file, ordinal = task
    if stop is not None and stop.is_set():
        raise Stopped(path)
    try:
        _, ids, pattern, keys, _ = _ranked_chunk(spec, path, chunk_file, row_offset, ordinal)
    except ClipprobeError as err:
        return {"error": str(err)}
    cells, counts = rank_histogram(spec.ranks, pattern, keys)
    return {"cells": cells, "counts": counts, "rows": int(ids.size)}


def rank_candidates_task(spec: IndicatorSpec, task: tuple, stop=None):
    """The chunk's captions in their pattern's boundary bucket
    (:func:`~clipprobe.analysis.keepflags.rank_candidates`): ``{"pattern", "key", "pos", "rows"}``."""
    from clipprobe.analysis.keepflags import rank_candidates
    from clipprobe.captions.scan import Stopped

    _, path, _, _, row_offset, chunk_file, ordinal = task
    if stop is not None and stop.is_set():
        raise Stopped(path)
    try:
        _, ids, pattern, keys, pos = _ranked_chunk(spec, path, chunk_file, row_offset, ordinal)
    except ClipprobeError as err:
        return {"error": str(err)}
    p, k, q = rank_candidates(spec.ranks, pattern, keys, pos)
    return {"pattern": p, "key": k, "pos": q, "rows": int(ids.size)}


def rank_window_task(spec: IndicatorSpec, task: tuple, stop=None):
    """The chunk's part of the rank windows (:func:`~clipprobe.analysis.keepflags.window_scan`): per
    pattern its captions and those below its window (``"seen"``, ``"below"``), and the captions inside
    their pattern's window (``"pattern"``, ``"key"``, ``"pos"``)."""
    from clipprobe.analysis.keepflags import window_scan
    from clipprobe.captions.scan import Stopped

    _, path, _, _, row_offset, chunk_file, ordinal = task
    if stop is not None and stop.is_set():
        raise Stopped(path)
    try:
        _, ids, pattern, keys, pos = _ranked_chunk(spec, path, chunk_file, row_offset, ordinal)
    except ClipprobeError as err:
        return {"error": str(err)}
    seen, below, (p, k, q) = window_scan(spec.ranks, pattern, keys, pos)
    return {"seen": seen, "below": below, "pattern": p, "key": k, "pos": q, "rows": int(ids.size)}


def _weights_writer(table) -> dict:
    """Parquet settings of a weights file, for speed (the columns and values are the same whatever they are):
    dictionary encoding where values repeat (the file, the row group, q: one value per pattern, and a
    dictionary-typed key column), none for the row (delta-encoded: consecutive integers) or the key column
    (mostly distinct values: a dictionary is built, then dropped); min/max statistics for every column
    but the key (a reader can still skip by file, row group and row)."""
    import pyarrow as pa

    fixed = ("file", "row_group", "row", "q", "keep")
    key = [name for name in table.column_names if name not in fixed]
    dictionary = ["file", "row_group", "q"] + [n for n in key if pa.types.is_dictionary(table.schema.field(n).type)]
    return {"use_dictionary": dictionary, "write_statistics": list(fixed),
            "column_encoding": {"row": "DELTA_BINARY_PACKED"}}


def weights_task(spec: IndicatorSpec, task: tuple, stop=None):
    """Keep probabilities and keep flags of a chunk, written to the task's weights file.

    The captions' patterns and content hashes come from the chunk file of the pattern pass (no caption
    is read again); only the key column is read. A caption is kept when its rank in its pattern is
    below the pattern's kept count (``spec.ranks``, see
    :func:`~clipprobe.analysis.keepflags.rank_keep`). Returns the chunk's summary: its rows, kept flags,
    the sum of q, and per row of its pattern table the fitted table's row, the captions and the kept
    captions (or ``{"error": message}``).
    """
    import time

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe._io import atomic_path
    from clipprobe.analysis.keepflags import rank_keep
    from clipprobe.captions.scan import Stopped, open_parquet

    _, path, row_groups, column, row_offset, chunk_file, weights_file, source, sizes, ordinal = task
    if stop is not None and stop.is_set():
        raise Stopped(path)
    t0 = time.perf_counter()
    try:
        table, ids, pattern, keys, pos = _ranked_chunk(spec, path, chunk_file, row_offset, ordinal)
    except ClipprobeError as err:
        return {"error": str(err)}
    n = ids.size
    q = spec.fitted_q[pattern]                 # keep_probabilities: the fitted q of each caption's pattern
    keep = rank_keep(spec.ranks, pattern, keys, pos)
    rows = row_offset + np.arange(n, dtype=np.int64)
    columns = {
        "file": pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([source])),
        "row_group": pa.array(np.repeat(np.asarray(list(row_groups), np.int32), sizes), pa.int32()),
        "row": pa.array(rows, pa.int64()),
    }
    t1 = time.perf_counter()
    if spec.key_column is not None:
        held = (CHUNK_CACHE.get(chunk_file) or {}).get("key")
        if held is not None and held[0] == spec.key_column and len(held[1]) == n:
            keys_col = held[1]                  # read by the pattern pass in this process
        else:
            with open_parquet(path) as pf:
                keys_col = _key_array(pf.read_row_groups(list(row_groups), columns=[spec.key_column],
                                                         use_threads=False).column(0))
        columns[spec.key_column] = keys_col
    t2 = time.perf_counter()
    columns["q"] = pa.array(q, pa.float64())
    columns["keep"] = pa.array(keep, pa.bool_())
    try:
        out = pa.table(columns)
        with atomic_path(weights_file, suffix=".parquet") as tmp:
            pq.write_table(out, tmp, **_weights_writer(out))
    except ClipprobeError as err:  # the weights file cannot be written (disk full): the message names it
        return {"error": str(err)}
    kept_rows = np.bincount(ids, weights=keep, minlength=table.n_rows).round().astype(np.int64)
    return {"rows": n, "kept": int(keep.sum()), "q_sum": float(q.sum()),
            "fit_rows": _table_rows(table, ids, pattern), "count": table.count,
            "kept_rows": kept_rows, "seconds": {"weights": (t1 - t0) + (time.perf_counter() - t2),
                                                "read_key": t2 - t1}}
