"""Embedding folders computed elsewhere: clip-retrieval's layout, the one LAION ships its CLIP embeddings in.

The layout, as clip-retrieval's ``clip_inference`` writes it (``clip_retrieval/clip_inference/writer.py``,
``OutputSink``; ``mapper.py``, ``ClipMapper``) and embedding-reader reads it
(``embedding_reader/parquet_numpy_reader.py``, ``ParquetNumpyReader``), read in the public sources::

    DIR/img_emb/img_emb_<N>.npy          image embeddings of partition N, one row per sample:
                                         (rows, dim) float16, L2-normalised (the mapper divides by the
                                         norm, then casts to float16)
    DIR/text_emb/text_emb_<N>.npy        the captions' embeddings (when text was embedded; not read here)
    DIR/metadata/metadata_<N>.parquet    row i describes row i of the shard: ``image_path``, ``caption``
                                         (when text was embedded) and the columns of the input's metadata
                                         (img2dataset's ``url``, ``key``, ``width``, ... flattened from JSON)

``<N>`` is the partition number, written with as many digits as the partition count has
(``str(N).zfill(int(log10(count)) + 1)``: ``img_emb_0`` .. ``img_emb_9``, or ``img_emb_000`` ..); the
LAION-400M/5B releases follow it. embedding-reader pairs the sorted list of ``.npy`` files with the sorted
list of ``.parquet`` files and assumes they are aligned; nothing checks it. :func:`open_embedding_folder`
checks instead, before any work, and stops with one line naming the shard: the two file lists pair up by
``N`` (a shard without its metadata, or the reverse, is an error), the numbers run 0..max without a gap
(a missing shard would silently drop its rows), each ``.npy`` header is a 2-d C-order array of little-endian
float16 or float32 (no pickled objects: the header is parsed, ``allow_pickle`` is never on), the file is as
long as its header says, every shard has the same dimension (and the model's, when given), and each
shard's row count equals its metadata's.

Rows are read through a memory map (:meth:`EmbeddingFolder.reader`): the folder is never loaded
whole, and a pass gives back the pages of the rows it has finished, so its resident memory stays at about
one block whatever the number of rows. Rows that are NaN or zero are found by the pass that reads them
(the scores kernel of :mod:`clipprobe.analysis.zeroshot` flags them); checking them here would read every
byte twice.
Local folders only (fsspec URLs are not memory-mappable).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

KINDS = ("img", "text")
DTYPES = ("float16", "float32")
MAX_HEADER = 10_000          # bytes of an .npy header we parse (numpy's own limit for untrusted files)

MSG_NO_FOLDER = "embeddings {root}: no such folder"
MSG_NO_SUBFOLDER = ("embeddings {root}: no {sub}/ folder (clip-retrieval's layout: {sub}/{kind}_emb_N.npy beside "
                    "metadata/metadata_N.parquet)")
MSG_NO_SHARDS = "embeddings {root}: {sub}/ holds no {kind}_emb_N.npy file"
MSG_STRAY = "embeddings {root}: {path} is not named {pattern} (N a partition number)"
MSG_DUPLICATE = "embeddings {root}: {a} and {b} are the same shard number {n}"
MSG_NO_METADATA = "embeddings {root}: shard {path} has no metadata file metadata/metadata_{n}.parquet"
MSG_NO_EMBEDDINGS = "embeddings {root}: metadata {path} has no embedding shard {sub}/{kind}_emb_{n}.npy"
MSG_GAP = ("embeddings {root}: shard {n} is missing ({sub}/{kind}_emb_{n}.npy; found shards {first}..{last}): "
           "its rows would be left out")
MSG_HEADER = "embeddings {root}: shard {path} is not a readable .npy array ({why})"
MSG_DTYPE = "embeddings {root}: shard {path} holds {dtype}, not float16 or float32 embeddings"
MSG_SHAPE = "embeddings {root}: shard {path} has shape {shape}, not (rows, dimension)"
MSG_TRUNCATED = ("embeddings {root}: shard {path} is {size} bytes but its header describes {rows} x {dim} {dtype} "
                 "({want} bytes): truncated or corrupt")
MSG_DIM_MIXED = "embeddings {root}: shard {path} has dimension {dim}, shard {first} has {first_dim}"
MSG_DIM_MODEL = ("embeddings {root}: shard {path} has dimension {dim}, but the model's text tower gives {want}: "
                 "the embeddings come from another model")
MSG_ROWS = ("embeddings {root}: shard {path} has {rows} rows but its metadata {meta} has {meta_rows}: they are "
            "not row-aligned")
MSG_METADATA = "embeddings {root}: cannot read metadata {path} ({why})"
MSG_COLUMN = "embeddings {root}: metadata {path} has no column {column!r}{hint}; columns: {columns}"
MSG_KIND = "kind must be one of {kinds}, got {value!r}"


@dataclasses.dataclass(frozen=True)
class Shard:
    """One partition: its embedding file (``rows`` x ``dim`` of ``dtype`` at byte ``offset``) and metadata."""

    number: int
    embeddings: Path
    metadata: Path
    rows: int
    dim: int
    dtype: str
    offset: int

    @property
    def name(self) -> str:
        """The shard's embedding file, relative to the folder (for messages)."""
        return f"{self.embeddings.parent.name}/{self.embeddings.name}"


@dataclasses.dataclass(frozen=True)
class EmbeddingFolder:
    """A checked embedding folder: its shards in partition order, their common dimension, the metadata's
    columns (of the first shard)."""

    root: Path
    kind: str
    shards: tuple[Shard, ...]
    dim: int
    columns: tuple[str, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(sorted({s.dtype for s in self.shards}))

    def embeddings(self, shard: Shard) -> "np.ndarray":
        """The shard's ``(rows, dim)`` array, memory-mapped read-only (nothing is read until used)."""
        import numpy as np

        if shard.rows == 0:
            return np.zeros((0, shard.dim), shard.dtype)
        return np.memmap(shard.embeddings, dtype=np.dtype(shard.dtype).newbyteorder("<"), mode="r",
                         offset=shard.offset, shape=(shard.rows, shard.dim), order="C")

    @contextlib.contextmanager
    def reader(self, shard: Shard) -> Iterator["ShardRows"]:
        """The shard memory-mapped for one pass from start to end: ``rows.array`` is the ``(rows, dim)``
        array; ``rows.release(stop)`` gives back the pages of the rows before ``stop`` (they stay in the
        page cache, not in this process's resident memory), so a pass over any number of rows holds
        about one block of them."""
        import mmap

        import numpy as np

        if shard.rows == 0:
            yield ShardRows(np.zeros((0, shard.dim), shard.dtype), None, shard.offset, 0)
            return
        with open(shard.embeddings, "rb") as fh:
            mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        dtype = np.dtype(shard.dtype).newbyteorder("<")
        array = np.frombuffer(mm, dtype=dtype, count=shard.rows * shard.dim, offset=shard.offset)
        rows = ShardRows(array.reshape(shard.rows, shard.dim), mm, shard.offset, shard.dim * dtype.itemsize)
        try:
            yield rows
        finally:
            rows.array = array = None
            with contextlib.suppress(BufferError):     # a caller still holds a view: closed when it goes
                mm.close()

    def metadata(self, shard: Shard, columns: Sequence[str] | None = None):
        """The shard's metadata as a pyarrow Table (``columns``: those only)."""
        import pyarrow.parquet as pq

        try:
            return pq.read_table(shard.metadata, columns=list(columns) if columns is not None else None)
        except (OSError, ValueError) as err:
            raise DataError(MSG_METADATA.format(root=self.root, path=_rel(self.root, shard.metadata),
                                                why=str(err).splitlines()[0] if str(err) else type(err).__name__)
                            ) from None

    def find_column(self, wanted: Sequence[str], what: str, *, given: str | None = None) -> str:
        """The metadata column to use: ``given`` (checked), else the first of ``wanted`` present."""
        from clipprobe.errors import did_you_mean

        if given is not None:
            if given not in self.columns:
                raise DataError(MSG_COLUMN.format(root=self.root, path=_rel(self.root, self.shards[0].metadata),
                                                  column=given, hint=did_you_mean(given, self.columns),
                                                  columns=", ".join(map(repr, self.columns))))
            return given
        for name in wanted:
            if name in self.columns:
                return name
        raise DataError(MSG_COLUMN.format(root=self.root, path=_rel(self.root, self.shards[0].metadata),
                                          column=f"{wanted[0]} ({what})", hint="",
                                          columns=", ".join(map(repr, self.columns))))

    def summary(self) -> dict:
        return {"root": str(self.root), "kind": self.kind, "shards": len(self.shards), "rows": self.rows,
                "dim": self.dim, "dtypes": list(self.dtypes), "columns": list(self.columns)}


@dataclasses.dataclass
class ShardRows:
    """A shard's rows through a read-only memory map (see :meth:`EmbeddingFolder.reader`)."""

    array: "np.ndarray"
    _map: object
    _offset: int
    _row_bytes: int
    _released: int = 0

    def release(self, stop: int) -> None:
        """Drop the resident pages of rows ``< stop`` (``madvise(MADV_DONTNEED)`` where the OS has it)."""
        import mmap

        end = self._offset + stop * self._row_bytes
        begin = self._released // mmap.PAGESIZE * mmap.PAGESIZE
        end = end // mmap.PAGESIZE * mmap.PAGESIZE
        if self._map is None or end <= begin or not hasattr(self._map, "madvise") \
                or not hasattr(mmap, "MADV_DONTNEED"):
            return
        self._map.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        self._released = end


def _rel(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _numbered(folder: Path, prefix: str, suffix: str, root: Path) -> dict[int, Path]:
    """``{N: path}`` of ``<prefix><N><suffix>`` files; another visible file of that suffix is an error."""
    pattern = re.compile(rf"^{re.escape(prefix)}(\d+){re.escape(suffix)}$")
    found: dict[int, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.name.endswith(suffix):
            continue
        m = pattern.match(p.name)
        if not m:
            raise DataError(MSG_STRAY.format(root=root, path=_rel(root, p), pattern=f"{prefix}N{suffix}"))
        n = int(m.group(1))
        if n in found:
            raise DataError(MSG_DUPLICATE.format(root=root, a=_rel(root, found[n]), b=_rel(root, p), n=n))
        found[n] = p
    return found


def read_npy_header(path: Path) -> tuple[tuple[int, ...], "np.dtype", bool, int]:
    """``(shape, dtype, fortran_order, data offset)`` of an .npy file, from its header only.

    Raises ValueError (with numpy's reason) for a file that is not an .npy array; object dtypes are
    reported, never loaded."""
    import numpy as np
    from numpy.lib import format as npformat

    with open(path, "rb") as fh:
        version = npformat.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(fh, max_header_size=MAX_HEADER)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npformat.read_array_header_2_0(fh, max_header_size=MAX_HEADER)
        else:  # pragma: no cover - read_magic accepts only these
            raise ValueError(f"unsupported .npy version {version}")
        return tuple(int(x) for x in shape), np.dtype(dtype), bool(fortran), fh.tell()


def _shard(root: Path, number: int, emb: Path, meta: Path) -> Shard:
    import numpy as np

    name = _rel(root, emb)
    try:
        shape, dtype, fortran, offset = read_npy_header(emb)
    except (OSError, ValueError, SyntaxError, TypeError) as err:
        raise DataError(MSG_HEADER.format(root=root, path=name, why=str(err).splitlines()[0] or "bad header")) \
            from None
    if dtype.hasobject or dtype.kind != "f" or dtype.itemsize not in (2, 4) or dtype.byteorder == ">":
        raise DataError(MSG_DTYPE.format(root=root, path=name, dtype=dtype.str if not dtype.hasobject else "objects"))
    if len(shape) != 2 or fortran:
        shown = shape if not fortran else f"{shape} (Fortran order)"
        raise DataError(MSG_SHAPE.format(root=root, path=name, shape=shown))
    rows, dim = shape
    want = offset + rows * dim * dtype.itemsize
    size = emb.stat().st_size
    if size != want:
        raise DataError(MSG_TRUNCATED.format(root=root, path=name, size=size, rows=rows, dim=dim,
                                             dtype=dtype.name, want=want))
    return Shard(number, emb, meta, int(rows), int(dim), np.dtype(dtype).name, int(offset))


def open_embedding_folder(root: str | Path, *, kind: str = "img", dim: int | None = None) -> EmbeddingFolder:
    """Check a clip-retrieval embedding folder (see the module docstring) and return its shards.

    ``kind``: ``"img"`` (``img_emb/``) or ``"text"`` (``text_emb/``). ``dim``: the dimension the
    model's towers give (checked against every shard). Reads only the .npy headers and the parquet footers.
    """
    import pyarrow.parquet as pq

    if kind not in KINDS:
        raise UsageError(MSG_KIND.format(kinds=", ".join(map(repr, KINDS)), value=kind))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(MSG_NO_FOLDER.format(root=root))
    sub = f"{kind}_emb"
    emb_dir, meta_dir = root / sub, root / "metadata"
    for folder in (emb_dir, meta_dir):
        if not folder.is_dir():
            raise DataError(MSG_NO_SUBFOLDER.format(root=root, sub=folder.name, kind=kind))
    embs = _numbered(emb_dir, f"{kind}_emb_", ".npy", root)
    metas = _numbered(meta_dir, "metadata_", ".parquet", root)
    if not embs:
        raise DataError(MSG_NO_SHARDS.format(root=root, sub=sub, kind=kind))
    for n in sorted(embs):
        if n not in metas:
            raise DataError(MSG_NO_METADATA.format(root=root, path=_rel(root, embs[n]), n=n))
    for n in sorted(metas):
        if n not in embs:
            raise DataError(MSG_NO_EMBEDDINGS.format(root=root, path=_rel(root, metas[n]), sub=sub, kind=kind, n=n))
    numbers = sorted(embs)
    for expected, n in enumerate(numbers):
        if n != expected:
            raise DataError(MSG_GAP.format(root=root, n=expected, sub=sub, kind=kind, first=numbers[0],
                                           last=numbers[-1]))
    shards = []
    columns: tuple[str, ...] = ()
    for n in numbers:
        shard = _shard(root, n, embs[n], metas[n])
        if shards and shard.dim != shards[0].dim:
            raise DataError(MSG_DIM_MIXED.format(root=root, path=shard.name, dim=shard.dim, first=shards[0].name,
                                                 first_dim=shards[0].dim))
        if dim is not None and shard.dim != dim:
            raise DataError(MSG_DIM_MODEL.format(root=root, path=shard.name, dim=shard.dim, want=dim))
        try:
            pf = pq.ParquetFile(metas[n])
            meta_rows = pf.metadata.num_rows
            if not columns:
                columns = tuple(pf.schema_arrow.names)
        except (OSError, ValueError) as err:
            raise DataError(MSG_METADATA.format(root=root, path=_rel(root, metas[n]),
                                                why=str(err).splitlines()[0] if str(err) else type(err).__name__)
                            ) from None
        if meta_rows != shard.rows:
            raise DataError(MSG_ROWS.format(root=root, path=shard.name, rows=shard.rows, meta=_rel(root, metas[n]),
                                            meta_rows=meta_rows))
        shards.append(shard)
    folder = EmbeddingFolder(root, kind, tuple(shards), shards[0].dim, columns)
    log.info("embeddings %s: %d shard(s), %d rows of dimension %d (%s)", root, len(shards), folder.rows,
             folder.dim, ", ".join(folder.dtypes))
    return folder


def write_embedding_folder(root: str | Path, shards: Sequence[tuple["np.ndarray", object]], *,
                           kind: str = "img") -> Path:
    """Write ``(embeddings, metadata DataFrame)`` pairs in clip-retrieval's layout (partition numbers
    zero-padded as clip-retrieval pads them); for tests, benchmarks and embeddings computed here."""
    import math

    import numpy as np

    from clipprobe._io import write_npy, write_parquet

    root = Path(root)
    width = int(math.log10(max(len(shards), 1))) + 1
    for n, (emb, meta) in enumerate(shards):
        emb = np.asarray(emb)
        if len(meta) != len(emb):
            raise DataError(f"shard {n}: {len(emb)} embeddings for {len(meta)} metadata rows")
        tag = str(n).zfill(width)
        write_npy(root / f"{kind}_emb" / f"{kind}_emb_{tag}.npy", emb)
        write_parquet(root / "metadata" / f"metadata_{tag}.parquet", meta)
    return root


# ----------------------------------------------------------------------------------------------
# A face dataset's image embeddings from a folder: rows matched to the dataset's images by a key column

KEY_COLUMNS = ("image_path", "path", "file", "filepath", "key", "url", "URL")
UNIT_TOLERANCE = 1e-6      # a row this close to unit length is used as stored (normalising moves its last bits)
HASH_BLOCK = 1 << 20
EXAMPLES = 5

MSG_NO_MATCH = ("embeddings {root}: no value of metadata column {column!r} names an image of dataset {dataset} "
                "(e.g. {key!r}; the dataset lists {file!r}); give the column that holds the images' paths as the key")
MSG_NO_VALID = ("embeddings {root}: all {n} embedding(s) matched to dataset {dataset} are NaN, infinite or zero "
                "(first: {shard} row {row})")
REASON_MISSING = "no embedding in {root} (key column {column!r})"
REASON_INVALID = "its embedding ({shard} row {row}) is NaN, infinite or zero"


def folder_fingerprint(folder: EmbeddingFolder) -> str:
    """SHA-256 (24 hex digits) of the folder's content: every shard's embedding file and metadata file,
    byte for byte, in partition order (file names and times do not count)."""
    import hashlib

    h = hashlib.sha256()
    for shard in folder.shards:
        for path in (shard.embeddings, shard.metadata):
            part = hashlib.sha256()
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(HASH_BLOCK), b""):
                    part.update(block)
            h.update(f"{shard.number}:{path.parent.name}:".encode() + part.digest())
    return h.hexdigest()[:24]


def _trailing_paths(key: str) -> list[str]:
    """The trailing parts of a path or URL, longest first: ``/d/val/1.jpg`` -> ``d/val/1.jpg``,
    ``val/1.jpg``, ``1.jpg`` (query strings and fragments of a URL left out)."""
    text = key.replace("\\", "/")
    if "://" in text:
        text = text.split("://", 1)[1].split("?", 1)[0].split("#", 1)[0]
    parts = [p for p in text.split("/") if p and p != "."]
    return ["/".join(parts[i:]) for i in range(len(parts))]


def match_keys(keys: Sequence, files: Sequence[str]) -> "np.ndarray":
    """``(len(keys),)`` int64: the index in ``files`` of the image each key names, -1 where none.

    A key names the file that is the longest trailing part of its path: ``/data/fairface/val/1.jpg``,
    ``val/1.jpg`` and ``https://host/fairface/val/1.jpg`` all name ``val/1.jpg`` (so the folder may have
    been made on another machine, under another root). Null and empty keys name nothing."""
    return _match(keys, _file_index(files))


def _file_index(files: Sequence[str]) -> dict[str, int]:
    from clipprobe._io import relative_inside

    return {relative_inside(str(f)) or str(f): i for i, f in enumerate(files)}


def _no_key(key) -> bool:
    return key is None or key == "" or (isinstance(key, float) and key != key)


def _match(keys: Sequence, index: dict[str, int]) -> "np.ndarray":
    import numpy as np

    out = np.full(len(keys), -1, np.int64)
    for j, key in enumerate(keys):
        if _no_key(key):
            continue
        key = str(key)
        i = index.get(key)                       # the common case: the key is the dataset's path
        if i is None:
            for tail in _trailing_paths(key):
                i = index.get(tail)
                if i is not None:
                    break
        if i is not None:
            out[j] = i
    return out


def _unit_rows(raw: "np.ndarray", block: int = 8192) -> tuple["np.ndarray", "np.ndarray", int]:
    """``(vectors, norms, n_scaled)``: ``raw`` (float32, changed in place) L2-normalised row by row, each
    row's norm (float64) and how many rows were scaled (those within :data:`UNIT_TOLERANCE` of unit
    length are left as they are). In blocks, so the float64 copy stays small."""
    import numpy as np

    norms = np.empty(len(raw), np.float64)
    scaled = 0
    for lo in range(0, len(raw), block):
        part = raw[lo:lo + block].astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            n = np.sqrt(np.einsum("ij,ij->i", part, part))
        norms[lo:lo + block] = n
        scale = np.isfinite(n) & (n > 0) & (np.abs(n - 1.0) > UNIT_TOLERANCE)
        if scale.any():
            raw[lo:lo + block][scale] = (part[scale] / n[scale, None]).astype(np.float32)
            scaled += int(scale.sum())
    return raw, norms, scaled


@dataclasses.dataclass(frozen=True)
class DatasetMatch:
    """The image embeddings of a face dataset read from a folder (:func:`dataset_embeddings`):
    ``embeddings`` (an :class:`~clipprobe.embeddings.cache.ImageEmbeddings`, row for row with the dataset's
    matched images) and ``record`` (what a run stores: the folder, its fingerprint, the key column and the
    counts of every row that did not match)."""

    embeddings: object
    record: dict


def dataset_embeddings(folder: EmbeddingFolder, dataset, *, key: str | None = None,
                       cache_dir: str | Path | None = None) -> DatasetMatch:
    """The embeddings of ``dataset``'s images from ``folder``, matched by the metadata column ``key``
    (None: the first of :data:`KEY_COLUMNS` present) to the dataset's image paths (:func:`match_keys`).

    Rows are read through the memory map, matched rows only. Per-row problems are counted, not fatal:
    a dataset image without an embedding (it is left out of the population, as an image that fails to
    decode is), an embedding whose key names no dataset image, a second embedding of the same image (the
    first, in partition order, is used), an embedding that is NaN, infinite or zero (its image is left
    out). No image matched at all: :class:`DataError`. Vectors are float32 and L2-normalised (a row within
    :data:`UNIT_TOLERANCE` of unit length is used as stored); ``norms`` are the stored rows' norms.
    ``cache_dir``: the clipprobe cache folder (an approximate index built on these vectors is kept under
    ``<cache>/external/<fingerprint>``)."""
    import hashlib
    import time

    import numpy as np

    from clipprobe._io import default_cache_dir
    from clipprobe.embeddings.cache import ImageEmbeddings

    started = time.perf_counter()
    column = folder.find_column(KEY_COLUMNS, "the images' paths", given=key)
    files = [str(f) for f in dataset.table["file"]]
    index = _file_index(files)
    n_data = len(files)
    owner = np.full(n_data, -1, np.int64)          # the folder row (global) of each dataset row
    no_key = unmatched = duplicates = 0
    examples: dict[str, list] = {"unmatched": [], "duplicate": []}
    first_key = None
    base = 0
    for s, shard in enumerate(folder.shards):
        keys = folder.metadata(shard, [column]).column(column).to_pylist()
        hits = _match(keys, index)
        empty = np.fromiter((_no_key(k) for k in keys), bool, len(keys))
        if first_key is None and not empty.all():
            first_key = keys[int(np.flatnonzero(~empty)[0])]
        no_key += int(empty.sum())
        stray = np.flatnonzero(~empty & (hits < 0))
        unmatched += len(stray)
        examples["unmatched"] += [str(keys[j]) for j in stray[:EXAMPLES - len(examples["unmatched"])]]
        found = np.flatnonzero(hits >= 0)
        images, first = np.unique(hits[found], return_index=True)    # an image's first row in this shard
        fresh = owner[images] < 0                                     # and not matched by an earlier shard
        owner[images[fresh]] = base + found[first[fresh]]
        repeated = np.setdiff1d(found, found[first[fresh]], assume_unique=True)
        duplicates += len(repeated)
        examples["duplicate"] += [str(keys[j]) for j in repeated[:EXAMPLES - len(examples["duplicate"])]]
        base += shard.rows
    matched_rows = np.flatnonzero(owner >= 0)
    if not len(matched_rows):
        raise DataError(MSG_NO_MATCH.format(root=folder.root, column=column, dataset=dataset.spec,
                                            key=first_key, file=files[0] if files else None))
    match_s = time.perf_counter() - started

    start = time.perf_counter()
    raw = np.empty((len(matched_rows), folder.dim), np.float32)
    sources = owner[matched_rows]
    starts = np.cumsum([0] + [shard.rows for shard in folder.shards])
    shard_of = np.searchsorted(starts, sources, side="right") - 1
    local_of = sources - starts[shard_of]
    for s, shard in enumerate(folder.shards):
        pick = np.flatnonzero(shard_of == s)
        if not len(pick):
            continue
        order = np.argsort(local_of[pick], kind="stable")     # read the shard front to back
        raw[pick[order]] = np.asarray(folder.embeddings(shard)[local_of[pick[order]]], dtype=np.float32)
    read_s = time.perf_counter() - start
    raw, norms, n_scaled = _unit_rows(raw)
    valid = np.isfinite(raw).all(axis=1) & np.isfinite(norms) & (norms > 0)
    skipped = [{"row": int(r), "file": files[r], "reason": REASON_MISSING.format(root=folder.root, column=column)}
               for r in np.flatnonzero(owner < 0)]
    bad = np.flatnonzero(~valid)
    for b in bad:
        skipped.append({"row": int(matched_rows[b]), "file": files[matched_rows[b]],
                        "reason": REASON_INVALID.format(shard=folder.shards[shard_of[b]].name, row=int(local_of[b]))})
    if len(bad) == len(matched_rows):
        raise DataError(MSG_NO_VALID.format(root=folder.root, n=len(bad), dataset=dataset.spec,
                                            shard=folder.shards[shard_of[bad[0]]].name, row=int(local_of[bad[0]])))
    skipped.sort(key=lambda rec: rec["row"])
    rows = matched_rows[valid]
    vectors, norms = (raw, norms) if valid.all() else (raw[valid], norms[valid])
    fp_start = time.perf_counter()
    fingerprint = folder_fingerprint(folder)
    fingerprint_s = time.perf_counter() - fp_start

    table = dataset.table.iloc[rows]
    attributes = list(dataset.attributes()) if hasattr(dataset, "attributes") else []
    result = ImageEmbeddings(
        vectors=vectors, rows=rows.astype(np.int64), skipped=skipped, norms=norms.astype(np.float32),
        cache_dir=(Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir())
        / "external" / fingerprint,
        labels=table[attributes].reset_index(drop=True), files=tuple(str(f) for f in table["file"]),
        timings={"n_rows": n_data, "n_embedded": 0, "match_s": round(match_s, 4), "read_s": round(read_s, 4),
                 "fingerprint_s": round(fingerprint_s, 4)})
    h = hashlib.sha256()
    for arr in (result.rows, result.vectors, result.norms):
        h.update(np.ascontiguousarray(arr).tobytes())
    result.digest = h.hexdigest()
    record = {
        **folder.summary(), "fingerprint": fingerprint, "key_column": column,
        "n_matched": int(len(rows)), "n_dataset_rows": n_data,
        "n_dataset_rows_without_embedding": int((owner < 0).sum()),
        "n_embeddings_without_dataset_row": unmatched, "n_embeddings_without_key": no_key,
        "n_duplicate_embeddings": duplicates, "n_invalid_embeddings": int(len(bad)),
        "n_normalised": n_scaled,
        "examples": {k: v for k, v in examples.items() if v},
    }
    problems = [(record["n_dataset_rows_without_embedding"], "dataset image(s) have no embedding"),
                (unmatched, "embedding(s) name no image of the dataset"), (no_key, "embedding(s) have no key"),
                (duplicates, "embedding(s) repeat an image already matched (the first is used)"),
                (len(bad), "matched embedding(s) are NaN, infinite or zero (their images are left out)")]
    for n, what in problems:
        if n:
            log.warning("embeddings %s: %d %s", folder.root, n, what)
    log.info("embeddings %s: %d of %d images of %s matched by %r (fingerprint %s)", folder.root, len(rows), n_data,
             dataset.spec, column, fingerprint)
    return DatasetMatch(embeddings=result, record=record)
