"""Caption inputs: paths, globs, folders and URLs to parquet files; caption columns to Arrow strings.

* :func:`expand_inputs` turns each ``--captions`` value into files: a local path
  becomes absolute and normalised (so that a rerun finds its finished parts
  however the path is spelled), a glob its matching files, a folder the
  ``*.parquet`` files under it (hidden ``.*`` and ``_*`` entries left out, as
  Spark and pyarrow.dataset do), an fsspec URL (``s3://``, ``gs://``, ...) its
  files. A URL whose filesystem package is missing is a one-line error that
  names the package and the extra that installs it.
* :func:`open_parquet` opens one of them; :func:`file_identity` gives its size
  and modification stamp; :func:`caption_fingerprint` its content fingerprint,
  the resume key of everything computed from it (``captions count``'s parts,
  ``balance``'s pattern tables): a local file's XXH3-128 hash of every byte
  (remembered in the cache folder with its size, mtime, ctime and inode, so an
  unchanged file is hashed once; ``cp -p`` and ``rsync -a`` keep the size and mtime of a replaced file but
  not its ctime or inode), a URL's size, the object store's checksum (ETag, MD5,
  CRC32C where it gives one) and write time, and the parquet footer (every column
  chunk's offsets, sizes and min/max/null statistics): an object is not read
  whole just to be recognised.
* :func:`check_text_type` accepts caption columns of text (string, large
  string, string view, the binary kinds, dictionaries of those, all-null) and
  refuses numbers, booleans and nested types; :func:`caption_array` turns a
  column read from a file into one ``string``/``large_string`` array for the
  matchers: views are cast, binary bytes are taken as they are (malformed UTF-8
  is the matchers' business, never a reason to drop a file).
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from typing import Iterable

from clipprobe.errors import ClipprobeError, DataError, UsageError

log = logging.getLogger(__name__)

ERR_NO_INPUT = "caption input {pattern!r} matches no file"
ERR_EMPTY_FOLDER = "caption input {pattern!r} is a folder with no .parquet file"
ERR_NO_FSSPEC = "{url}: reading URLs needs fsspec and its {protocol} backend (pip install 'clipprobe[{extra}]')"
ERR_BACKEND = ("{url}: {protocol}:// paths need the package {package} (pip install {install}); with the spark "
               "engine every executor needs it too")
ERR_UNKNOWN_PROTOCOL = "{url}: unknown URL scheme {protocol!r} (no fsspec filesystem of that name)"
ERR_LIST = "{url}: cannot be listed ({why})"
ERR_TEXT_TYPE = ("{path}: caption column {column!r} holds {type}, not text (string or binary); "
                 "name the caption column (text_column)")

# fsspec protocols whose backend is a package of their own, and the clipprobe extra that installs it
BACKEND_EXTRAS = {"s3": ("s3fs", "s3"), "s3a": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "gcs": ("gcsfs", "gcs"),
                  "abfs": ("adlfs", "azure"), "abfss": ("adlfs", "azure"), "az": ("adlfs", "azure"),
                  "adl": ("adlfs", "azure")}
PARQUET_SUFFIX = ".parquet"
HIDDEN_PREFIXES = (".", "_")      # _SUCCESS, _common_metadata, .crc files: not data


def is_url(path: str) -> bool:
    """An fsspec URL (``file://`` paths are local)."""
    return "://" in path and not path.startswith("file://")


def url_protocol(url: str) -> str:
    """The scheme of a URL (of its last part for chained URLs such as ``simplecache::s3://...``)."""
    return url.split("::")[-1].split("://", 1)[0].lower()


def backend_package(protocol: str) -> str | None:
    """The package an fsspec protocol needs besides fsspec (None: fsspec's own or unknown)."""
    if protocol in BACKEND_EXTRAS:
        return BACKEND_EXTRAS[protocol][0]
    try:
        from fsspec.registry import known_implementations
    except ImportError:
        return None
    top = known_implementations.get(protocol, {}).get("class", "").split(".", 1)[0]
    return top if top and top != "fsspec" else None


def backend_packages(paths: Iterable[str]) -> list[str]:
    """The fsspec backend packages (``s3fs``, ``gcsfs``, ...) that reading ``paths`` needs, sorted."""
    return sorted({package for p in paths if is_url(p) for part in p.split("::") if "://" in part
                   if (package := backend_package(part.split("://", 1)[0].lower()))})


def _backend_error(url: str, protocol: str, err: ImportError) -> ClipprobeError:
    cause = err.__cause__ if isinstance(err.__cause__, ImportError) else err
    package = (getattr(cause, "name", None) or backend_package(protocol) or str(err)).split(".", 1)[0]
    install = f"'clipprobe[{BACKEND_EXTRAS[protocol][1]}]'" if protocol in BACKEND_EXTRAS else package
    return ClipprobeError(ERR_BACKEND.format(url=url, protocol=protocol, package=package, install=install))


def url_filesystem(url: str):
    """(fsspec filesystem, path inside it) of ``url``; a one-line error where a package is missing."""
    protocols = [part.split("://", 1)[0].lower() for part in url.split("::") if "://" in part] or [url_protocol(url)]
    try:
        import fsspec
        import fsspec.core
    except ImportError:
        extra = BACKEND_EXTRAS.get(protocols[-1], ("", "s3"))[1]
        raise ClipprobeError(ERR_NO_FSSPEC.format(url=url, protocol=protocols[-1], extra=extra)) from None
    for protocol in protocols:
        try:
            fsspec.get_filesystem_class(protocol)
        except ImportError as err:
            raise _backend_error(url, protocol, err) from None
        except ValueError:
            raise UsageError(ERR_UNKNOWN_PROTOCOL.format(url=url, protocol=protocol)) from None
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as err:     # a backend that imports its own dependencies late
        raise _backend_error(url, protocols[-1], err) from None


def _visible(relative: str) -> bool:
    return not any(part.startswith(HIDDEN_PREFIXES) for part in relative.replace("\\", "/").split("/"))


def _expand_url(pattern: str) -> list[str]:
    fs, path = url_filesystem(pattern)
    protocol = url_protocol(pattern)
    try:
        if glob.has_magic(path):
            found = [p for p in fs.glob(path) if fs.isfile(p)]
        elif fs.isdir(path):
            found = [p for p in fs.find(path) if p.endswith(PARQUET_SUFFIX)
                     and _visible(p[len(path.rstrip("/")) + 1:])]
            if not found:
                raise UsageError(ERR_EMPTY_FOLDER.format(pattern=pattern))
        else:
            found = [path]
    except ClipprobeError:
        raise
    except Exception as err:  # credentials, permissions, network: the backend's own words
        raise DataError(ERR_LIST.format(url=pattern, why=f"{type(err).__name__}: {' '.join(str(err).split())[:300]}")
                        ) from None
    chain = pattern.rsplit("::", 1)[0] + "::" if "::" in pattern else ""     # e.g. simplecache::s3://...
    return [chain + (p if "://" in p else f"{protocol}://{p}") for p in sorted(found)]


def _expand_local(pattern: str) -> list[str]:
    local = os.path.expanduser(pattern.removeprefix("file://"))
    if glob.has_magic(local):
        return [os.path.abspath(p) for p in sorted(glob.glob(local)) if os.path.isfile(p)]
    local = os.path.abspath(local)
    if os.path.isdir(local):
        found = []
        for root, dirs, files in os.walk(local):
            dirs[:] = sorted(d for d in dirs if not d.startswith(HIDDEN_PREFIXES))
            found += [os.path.join(root, f) for f in files
                      if f.endswith(PARQUET_SUFFIX) and not f.startswith(HIDDEN_PREFIXES)]
        if not found:
            raise UsageError(ERR_EMPTY_FOLDER.format(pattern=pattern))
        return sorted(found)
    return [local]


def expand_inputs(patterns: Iterable[str]) -> list[str]:
    """Files of the inputs (see the module docstring), sorted within each pattern, duplicates dropped."""
    out: dict[str, None] = {}
    for pattern in patterns:
        found = _expand_url(pattern) if is_url(pattern) else _expand_local(pattern)
        if not found:
            raise UsageError(ERR_NO_INPUT.format(pattern=pattern))
        for p in found:
            out.setdefault(p, None)
    return list(out)


def file_identity(path: str) -> tuple[int | None, float | str | None]:
    """(size, modification stamp) of a local file or an fsspec URL (None where unknown)."""
    if is_url(path):
        fs, inner = url_filesystem(path)
        info = fs.info(inner)
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("ETag")
        return info.get("size"), (str(mtime) if mtime is not None else None)
    st = os.stat(path.removeprefix("file://"))
    return st.st_size, st.st_mtime_ns


FINGERPRINT_MEMO = "fingerprints"       # folder of the cache folder: local files' SHA-256 by stat identity
# fields of an fsspec ``info()`` that are the object store's own checksum of the content
URL_CHECKSUMS = ("ETag", "etag", "md5Hash", "md5", "crc32c", "content_md5", "ContentMD5", "checksum",
                 "ChecksumSHA256", "ChecksumCRC32C", "sha256")
# ... and the times it stamps an object with when it is written (a client cannot set them)
URL_STAMPS = ("mtime", "LastModified", "last_modified", "updated", "created", "modificationTime")
MSG_CHANGED = ("caption file %s changed since clipprobe last read it (%s then, %s now): "
               "what was computed from the old content is not reused")
HASH_BLOCK = 1 << 22


# A file whose ctime is this recent is not remembered: the kernel stamps times from a coarse clock (a few ms),
# so a file rewritten within the same tick would keep the stamp (git's "racily clean" entries).
RECENT_NS = 2_000_000_000


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def hash_file(path: str) -> str:
    """``xxh3_128:<hex>`` of a file's bytes (``sha256:<hex>`` where xxhash is not installed). XXH3 is not a
    cryptographic hash: it recognises a changed file (1 in 2**128 chance of missing a change), at about ten
    times the speed of SHA-256 (benchmarks/bench_fingerprint.py), which keeps it a few per cent of a scan."""
    try:
        import xxhash
    except ImportError:          # pragma: no cover - installed with datasets
        from clipprobe._io import sha256_file

        return "sha256:" + sha256_file(path)
    h = xxhash.xxh3_128()
    buf = bytearray(HASH_BLOCK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            h.update(view[:n])
    return "xxh3_128:" + h.hexdigest()


def local_fingerprint(path: str) -> str:
    """The hash of a local file (:func:`hash_file`), remembered in the cache folder under its real path with
    its size, mtime, ctime, inode and device: while those stay, the file is not read again. A file replaced
    with another of the same size and mtime (``cp -p``, ``rsync -a``) has another ctime or inode, so it is
    hashed again; a changed hash is logged. A file changed less than :data:`RECENT_NS` ago is hashed on
    every run until it settles."""
    from clipprobe._io import default_cache_dir, write_json

    real = os.path.realpath(path)
    before = _stamp(os.stat(real))
    memo = default_cache_dir() / FINGERPRINT_MEMO / (hashlib.sha256(real.encode("utf-8", "surrogateescape"))
                                                     .hexdigest()[:32] + ".json")
    try:
        known = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = None
    if not isinstance(known, dict) or known.get("path") != real:
        known = None
    if known is not None and known.get("settled") and known.get("stamp") == before and \
            isinstance(known.get("hash"), str):
        return known["hash"]
    digest = hash_file(real)
    if _stamp(os.stat(real)) == before:          # not written to while it was read
        settled = time.time_ns() - before[2] >= RECENT_NS
        try:
            write_json(memo, {"path": real, "stamp": before, "hash": digest, "settled": settled})
        except (ClipprobeError, OSError) as err:     # a read-only cache folder: the next run hashes again
            log.debug("fingerprint of %s not remembered: %s", path, err)
    if known is not None and known.get("hash") not in (None, digest):
        log.info(MSG_CHANGED, path, known["hash"], digest)
    return digest


def _footer_digest(metadata) -> str:
    """SHA-256 of a parquet footer (the Thrift ``FileMetaData``: schema, row groups, every column chunk's
    offsets, encodings, compressed and uncompressed sizes, min/max/null statistics, key-value metadata)."""
    reduced = metadata.__reduce__()            # pyarrow pickles a footer as its serialised bytes
    args = reduced[1] if isinstance(reduced, tuple) and len(reduced) > 1 else ()
    if args and hasattr(args[0], "to_pybytes"):
        return hashlib.sha256(args[0].to_pybytes()).hexdigest()
    return hashlib.sha256(json.dumps(metadata.to_dict(), sort_keys=True, default=str).encode()).hexdigest()


def caption_fingerprint(path: str, metadata=None) -> str:
    """The content fingerprint of a caption file (see the module docstring): the hash of a local file's
    bytes (:func:`local_fingerprint`); for a URL ``url:<hex>``, a digest of its size, the store's checksum
    and write-time fields and the footer (``metadata``: ``ParquetFile.metadata`` as read before, else it is
    read here)."""
    if not is_url(path):
        return local_fingerprint(path.removeprefix("file://"))
    fs, inner = url_filesystem(path)
    info = fs.info(inner)
    if metadata is None:
        with open_parquet(path) as pf:
            metadata = pf.metadata
    store = {k: str(info[k]) for k in URL_CHECKSUMS + URL_STAMPS if info.get(k) is not None}
    blob = json.dumps([info.get("size"), store, _footer_digest(metadata)], sort_keys=True)
    return "url:" + hashlib.sha256(blob.encode()).hexdigest()


def open_parquet(path: str, metadata=None):
    """A ``pyarrow.parquet.ParquetFile`` for a local path or an fsspec URL (close it when done).

    ``metadata``: the file's footer as read before (``ParquetFile.metadata``), so that it is not read
    and parsed again (about a millisecond for a LAION file of 120 row groups).
    """
    import pyarrow.parquet as pq

    if is_url(path):
        fs, inner = url_filesystem(path)
        return pq.ParquetFile(inner, filesystem=fs, metadata=metadata)   # pyarrow opens (and closes) the file
    return pq.ParquetFile(path.removeprefix("file://"), metadata=metadata)


def _text_kind(t) -> str | None:
    """'string', 'binary', 'null' for the Arrow types a caption column may have, else None."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        return _text_kind(t.value_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_binary_view(t)
            or pa.types.is_fixed_size_binary(t)):
        return "binary"
    if pa.types.is_null(t):
        return "null"
    return None


def check_text_type(path: str, column: str, arrow_type) -> None:
    """Raise :class:`DataError` unless ``arrow_type`` can hold captions."""
    if _text_kind(arrow_type) is None:
        raise DataError(ERR_TEXT_TYPE.format(path=path, column=column, type=arrow_type))


def caption_array(column):
    """One Arrow ``string`` or ``large_string`` array of a caption column (any type check_text_type accepts).

    Binary bytes are reinterpreted, not validated: a caption that is not UTF-8 stays in the batch (the
    matchers treat its bad bytes as non-letters; samples show them as U+FFFD).
    """
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    t = column.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return column
    kind = _text_kind(t)
    if kind is None:
        raise TypeError(f"not a caption column type: {t}")
    if kind == "null":
        return pa.nulls(len(column), pa.large_string())
    if pa.types.is_dictionary(t):
        column = column.dictionary_decode()
        t = column.type
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return column
    if kind == "string":
        return column.cast(pa.large_string())           # string_view (Polars writes Utf8View)
    if not (pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        column = column.cast(pa.large_binary())         # binary_view, fixed_size_binary
        t = column.type
    string_type = pa.large_string() if pa.types.is_large_binary(t) else pa.string()
    validity, offsets, data = column.buffers()
    return pa.Array.from_buffers(string_type, len(column), [validity, offsets, data], column.null_count,
                                 column.offset)
