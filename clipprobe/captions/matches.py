"""Each caption's matches, kept by a ``captions count`` scan for ``balance fit --from-scan``.

``captions count --for-balance`` stores, for every chunk of row groups of every file it counts, the
(caption, term) pairs its matcher found (the caption's row in the chunk and the term's index in the
scan's term set), the chunk's rows and null captions, and the content hash of each caption's text and
of each of the hashed columns (``URL`` by default): about ten bytes per caption. The chunk files are in
``OUT/parts/matches/``, named by the file's key (:func:`matches_key`: its path, size, content
fingerprint and caption column, the term set, which includes the matching rule, the hashed columns and
:data:`MATCHES_FORMAT`), then the chunk's first row and number of row groups, and written atomically by
the task that scanned the chunk; the term set is stored once as ``terms-FINGERPRINT.json``.

A term matches by the matching rule alone, whatever other terms are searched with it, so a balance fit
whose labels and group terms are all among the scan's terms finds in these pairs exactly the indicators
its own scan would (:func:`clipprobe.captions.indicators.pattern_from_scan_task`; the checks that refuse
another scan are :func:`clipprobe.captions.patterns.open_scan`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Sequence

MATCHES_FORMAT = 1          # bump when what a matches file holds changes: part of every key
FOLDER = "matches"          # under OUT/parts/
DEFAULT_HASH_COLUMNS = ("URL",)


def matches_key(path: str, size, fingerprint: str, column: str, term_set: str, columns: Sequence[str]) -> str:
    """The key of one file's matches: what they depend on (the file as it is, the terms, the hashed columns)."""
    blob = json.dumps([MATCHES_FORMAT, path, size, fingerprint, column, term_set, list(columns)], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def chunk_file(folder, key: str, row_groups: Sequence[int], first: int) -> Path:
    """The matches file of some row groups of a file (another chunking of the file never reads it)."""
    return Path(folder) / f"{key}-{first:012d}-{len(row_groups)}.npz"


def terms_file(folder, term_set: str) -> Path:
    return Path(folder) / f"terms-{term_set}.json"


def column_hashes(column):
    """``(n,)`` uint64 content hash of each value of an Arrow column (text and binary as their bytes,
    other types, e.g. integer ids, as Arrow's text form), by
    :func:`~clipprobe.analysis.keepflags.hash_strings`: the same value gives the same hash whatever the
    column's storage type (string, large_string, dictionary, view)."""
    import numpy as np
    import pyarrow as pa

    from clipprobe.analysis.keepflags import hash_strings
    from clipprobe.captions.inputs import _text_kind, caption_array

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if _text_kind(column.type) is None:
        column = column.cast(pa.large_string())
    column = caption_array(column)
    _, offsets, data = column.buffers()
    width = np.int64 if pa.types.is_large_string(column.type) else np.int32
    n = len(column)
    off = np.frombuffer(offsets, width)[column.offset:column.offset + n + 1] if n else np.zeros(1, np.int64)
    buf = np.frombuffer(data, np.uint8) if data is not None else np.zeros(0, np.uint8)
    valid = column.is_valid().to_numpy(zero_copy_only=False) if column.null_count else None
    return hash_strings(off, buf, valid)


class Recorder:
    """The matches of one chunk, batch by batch (:meth:`add`), then written to its file (:meth:`save`).

    ``columns``: the columns to read (the caption column first, then the hashed ones)."""

    def __init__(self, hashed: Sequence[str], text_column: str):
        self.hashed = tuple(hashed)
        self.columns = [text_column] + [c for c in dict.fromkeys(self.hashed) if c != text_column]
        self.rows: list = []
        self.terms: list = []
        self.text: list = []
        self.other: dict[str, list] = {c: [] for c in self.hashed}
        self.n = 0
        self.nulls = 0

    def add(self, found, text, batch) -> None:
        """One batch: its matches (a :class:`~clipprobe.captions.matching.BatchMatches`), its caption
        column as the scan reads it and the record batch (for the hashed columns)."""
        self.rows.append(found.rows + self.n)
        self.terms.append(found.terms)
        self.text.append(column_hashes(text))
        for name in self.other:
            self.other[name].append(column_hashes(batch.column(name)))
        self.n += len(text)
        self.nulls += found.n_nulls

    def save(self, path) -> None:
        import numpy as np

        from clipprobe._io import atomic_path

        def cat(parts, dtype):
            return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

        terms = cat(self.terms, np.int64)
        hashed = {f"hash_{i}": cat(v, np.uint64) for i, v in enumerate(self.other.values())}
        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, rows=cat(self.rows, np.uint32),
                         terms=terms.astype(np.uint16 if terms.size == 0 or terms.max() < 2**16 else np.uint32),
                         totals=np.asarray([self.n, self.nulls], np.int64), text=cat(self.text, np.uint64),
                         columns=np.asarray(list(self.other), dtype=str), **hashed)


def load_matches(path) -> dict[str, Any]:
    """What :meth:`Recorder.save` wrote: ``rows`` and ``terms`` (int64), ``n``, ``nulls``, ``text`` (the
    captions' hashes) and ``columns`` (column name -> hashes)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as z:
        names = [str(c) for c in z["columns"]]
        n, nulls = (int(x) for x in z["totals"])
        return {"rows": z["rows"].astype(np.int64), "terms": z["terms"].astype(np.int64), "n": n, "nulls": nulls,
                "text": z["text"], "columns": {name: z[f"hash_{i}"] for i, name in enumerate(names)}}
