"""Atomic file writes: a reader never sees a half-written file.

Every writer goes to a temporary file in the destination's folder and then
``os.replace``-s it into place, so an interrupted run leaves either the old file
or the new one, never a torn one. The final file gets the mode any new file of the
process would get (``0o666`` less the umask), not the owner-only mode of the
temporary file. A write that fails because the disk is full, the folder is read-only
or not writable raises :class:`WriteError` (one line naming the path), and leaves
nothing half-written behind. A run killed with SIGKILL can leave a temporary file
(``.NAME.XXXXXXXX.tmp...``); :func:`clean_stale_temporaries` removes those of a
folder that are older than the current run.

Data files (taxonomies, prompt templates, lexicons, test suites) are read with
:func:`read_mapping` / :func:`load_yaml`: YAML with the safe loader, refusing duplicate
keys, aliases that expand beyond :data:`MAX_ALIAS_NODES` entries ("billion laughs"),
nesting deeper than :data:`MAX_DEPTH` and files larger than :data:`MAX_DATA_FILE_BYTES`.

Paths listed inside a data file (an image manifest, a face dataset's label CSV) follow one
rule, :func:`relative_inside`: relative, and not leading out of the file's root with ``..``.
CSV files meant for spreadsheets are written with :func:`csv_text`: a text cell that a
spreadsheet would run as a formula gets a leading single quote (OWASP's advice on CSV injection).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import posixpath
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

from clipprobe.errors import ClipprobeError, DataError

MSG_WRITE_FAILED = "cannot write {path}: {reason}"
# Errors of a writer that mean "this place cannot take the file" (as opposed to a bug in the writer).
_WRITE_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES, errno.EPERM,
                      errno.EFBIG)
    if code is not None
)
_WRITE_WORDS = re.compile(r"no space left|disk quota|file too large|read-only file system|permission denied",
                          re.IGNORECASE)
# numpy's tofile reports a short write without an errno.
_SHORT_WRITE = re.compile(r"^\d+ requested and \d+ written$")
WHY_SHORT_WRITE = "only part of the file could be written (is the disk full?)"
# The temporary files of atomic_path: ".<name>.<8 random characters of mkstemp>.tmp[<suffix>]".
_TMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\.[A-Za-z0-9]+)?$")
_TEMP_INFIX = ".tmp"


class WriteError(ClipprobeError):
    """A file could not be written (disk full, read-only or not writable folder, ...)."""


def _reason(err: BaseException) -> str:
    if _SHORT_WRITE.match(str(err).strip()):
        return WHY_SHORT_WRITE
    text = getattr(err, "strerror", None)
    if not text:
        lines = str(err).strip().splitlines()
        text = lines[0] if lines else type(err).__name__
    return shorten(text)


def _is_write_failure(err: BaseException) -> bool:
    if not isinstance(err, OSError):
        return False
    return (err.errno in _WRITE_ERRNOS or bool(_WRITE_WORDS.search(str(err)))
            or bool(_SHORT_WRITE.match(str(err).strip())))


def process_umask() -> int:
    """The process umask, read without changing it where the system allows (Linux ``/proc``)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, then put it back at once
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The permission bits a new file of this process gets: ``0o666`` less the umask."""
    return 0o666 & ~process_umask()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    ``suffix`` lets writers that insist on an extension (``np.save`` appends
    ``.npy``) keep it. On an exception the temporary file is removed; a failure to
    write (disk full, read-only or non-writable folder) becomes :class:`WriteError`.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMP_INFIX + suffix, dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise WriteError(MSG_WRITE_FAILED.format(path=path, reason=_reason(err))) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if _is_write_failure(err):
            raise WriteError(MSG_WRITE_FAILED.format(path=path, reason=_reason(err))) from None
        raise
    try:
        os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise WriteError(MSG_WRITE_FAILED.format(path=path, reason=_reason(err))) from None


def check_writable(folder: str | os.PathLike) -> Path:
    """Create ``folder`` if needed and check that a file can be made in it, before a run writes there;
    a folder that cannot take files (read-only, not writable, a file in the way, disk full) is a
    :class:`WriteError` naming it. Returns the path."""
    folder = ensure_dir(folder)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-check.", suffix=_TEMP_INFIX, dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise WriteError(MSG_WRITE_FAILED.format(path=folder, reason=_reason(err))) from None
    return folder


def ensure_dir(path: str | os.PathLike) -> Path:
    """Create folder ``path`` (and its parents) if needed; a failure (read-only, not writable, a file in
    the way) is a :class:`WriteError` naming the folder. Returns the path."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise WriteError(MSG_WRITE_FAILED.format(path=path, reason=_reason(err))) from None
    return path


def clean_stale_temporaries(folder: str | os.PathLike, before: float | None = None) -> list[Path]:
    """Remove the temporary files of :func:`atomic_path` in ``folder`` last modified before ``before``.

    ``before`` is a ``time.time()`` value (default: now), normally the start of the run
    that writes into ``folder``: files older than it belong to runs that were killed.
    Only names of our own pattern (``.NAME.XXXXXXXX.tmp[.EXT]``) are touched. Returns
    the paths removed.
    """
    folder = Path(folder)
    cutoff = time.time() if before is None else before
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not _TMP_NAME.match(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


# A spreadsheet runs a cell that starts with one of these as a formula (OWASP, "CSV Injection"). Leading
# single quotes are counted in, so that protect and unprotect are exact inverses ("'=x" <-> "''=x").
_FORMULA_CELL = re.compile(r"^'*[=+\-@\t\r]")
_PROTECTED_CELL = re.compile(r"^'+[=+\-@\t\r]")
_NUMBER_CELL = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|nan)$", re.IGNORECASE)


def csv_protect(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a text value starting with ``=``, ``+``, ``-``, ``@``, a tab or
    a carriage return gets a leading single quote; numbers (also written as text, ``-1.5``) and other
    values are returned as they are."""
    if isinstance(value, str) and _FORMULA_CELL.match(value) and not _NUMBER_CELL.match(value):
        return "'" + value
    return value


def csv_unprotect(value: Any) -> Any:
    """The value :func:`csv_protect` was given (for CSV files clipprobe reads back)."""
    if isinstance(value, str) and _PROTECTED_CELL.match(value):
        return value[1:]
    return value


def _text_columns(df) -> list:
    import pandas as pd

    return [c for c in df.columns
            if pd.api.types.is_object_dtype(df[c]) or pd.api.types.is_string_dtype(df[c])
            or isinstance(df[c].dtype, pd.CategoricalDtype)]


def csv_text(df, **kwargs) -> str:
    """``df.to_csv(index=False, **kwargs)`` with every text cell and column name passed through
    :func:`csv_protect`; numeric columns are written as they are. Where a text cell holds a carriage
    return (which the CSV writer leaves unquoted with ``\\n`` line ends, so that a spreadsheet starts a
    new row there), every text cell is quoted."""
    import csv

    out = df.copy()
    carriage_return = False
    for column in _text_columns(df):
        out[column] = out[column].astype(object).map(csv_protect)
        carriage_return = carriage_return or any(isinstance(v, str) and "\r" in v for v in out[column])
    out.columns = [csv_protect(c) for c in out.columns]
    if carriage_return:
        kwargs.setdefault("quoting", csv.QUOTE_NONNUMERIC)
    return out.to_csv(index=False, **kwargs)


def csv_records_text(columns, rows, *, lineterminator: str = "\n") -> str:
    """:func:`csv_text` for rows given as dicts (no pandas): the header ``columns``, then one line per row;
    text cells and names through :func:`csv_protect`, None (and NaN) as an empty cell, floats as Python
    writes them (``8000.0``, as pandas does); every text cell quoted where one holds a carriage return."""
    import csv
    import io
    import math

    def cell(value: Any) -> Any:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        return csv_protect(value) if isinstance(value, str) else value

    body = [[cell(r.get(c)) for c in columns] for r in rows]
    carriage_return = any(isinstance(v, str) and "\r" in v for line in body for v in line)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=lineterminator,
                        quoting=csv.QUOTE_NONNUMERIC if carriage_return else csv.QUOTE_MINIMAL)
    writer.writerow([csv_protect(str(c)) for c in columns])
    writer.writerows(body)
    return buffer.getvalue()


def csv_unprotected(df):
    """A table read from a CSV written by :func:`csv_text`, with its text cells and names restored."""
    out = df.copy()
    for column in _text_columns(df):
        out[column] = out[column].map(csv_unprotect)
    out.columns = [csv_unprotect(c) for c in out.columns]
    return out


def write_parquet(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame to parquet atomically (no index column).

    A table with no rows keeps its column types: an object column, which would be written with
    parquet's null type (there are no values to tell its type by), is written as text."""
    if len(df) == 0:
        text = [c for c in df.columns if df[c].dtype == object]
        if text:
            df = df.astype({c: "string" for c in text})
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def read_npy(path: str | os.PathLike):
    import numpy as np

    return np.load(path, allow_pickle=False)


HASH_BLOCK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in blocks (hashlib releases the GIL: threads hash in parallel)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            h.update(block)
    return h.hexdigest()


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


ENV_CACHE = "CLIPPROBE_CACHE"


def default_cache_dir() -> Path:
    """clipprobe's cache folder: ``$CLIPPROBE_CACHE``, else ``$XDG_CACHE_HOME/clipprobe``, else
    ``~/.cache/clipprobe``. Never inside the installed package."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clipprobe"


# ---------------------------------------------------------------------------------------------
# Data files: YAML and JSON, safely

# How many entries aliases (``*name``) may add to a YAML file in all: a shared list reused a few
# times is fine; a "billion laughs" (aliases of aliases, exponential) is refused before it is built.
MAX_ALIAS_NODES = 10_000
# How deeply lists and mappings may nest (the shipped files need 4 levels).
MAX_DEPTH = 50
# Longest quoted value or parser message put into an error message.
MAX_SHOWN = 200

# Largest data file read (the shipped ones are below 100 kB): a larger one is refused before it is
# parsed, so that a stray huge file costs a one-line error, not minutes.
MAX_DATA_FILE_BYTES = 8 * 2**20

MSG_UNREADABLE = "{what} {path} could not be read: {why}"
WHY_TOO_LARGE = "it has {size:,} bytes, more than the limit of {limit:,} for a data file"
WHY_NOT_UTF8 = "it is not UTF-8 text ({why})"
WHY_ALIAS_BOMB = (
    "its aliases (*name) expand to more than {limit} entries; write the entries out instead of nesting aliases"
)
WHY_RECURSIVE_ALIAS = "an alias (*name) refers to an entry that contains it (line {line})"
WHY_TOO_DEEP = "lists and mappings are nested more than {limit} levels deep"
WHY_DUPLICATE_KEY = "key {key} appears twice in one mapping (lines {first} and {second})"
WHY_DUPLICATE_JSON_KEY = "key {key} appears twice in one object"


def shorten(text: str, limit: int = MAX_SHOWN) -> str:
    """``text`` on one line, cut to ``limit`` characters (with ``...`` where cut)."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


def shown(value: Any, limit: int = 60) -> str:
    """A bounded ``repr`` of a value from a user's file, for error messages.

    Nested values are cut by level and length before they are turned into text, so a huge
    (or alias-expanded) entry costs no more to show than a small one.
    """
    import reprlib

    r = reprlib.Repr()
    r.maxlevel, r.maxstring, r.maxother = 3, limit, limit
    r.maxlist = r.maxtuple = r.maxdict = r.maxset = 6
    text = r.repr(value)
    cap = 2 * limit + 20
    return text if len(text) <= cap else text[: cap - 3] + "..."


class Bounded:
    """Wraps a value from a user's file so that ``{value!r}`` / ``{value}`` in a message template shows it
    bounded (:func:`shown`); short values look exactly as their ``repr``."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return shown(self.value)

    __str__ = __repr__


class _DataError(Exception):
    """Internal: a problem found while reading; turned into a DataError naming the file."""


def _node_children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_yaml_graph(root) -> None:
    """Refuse alias bombs, recursive aliases, excessive nesting and duplicate keys in a composed YAML
    document, without building it: sizes and heights are computed once per node (aliases share nodes)."""
    import yaml

    size: dict[int, int] = {}
    height: dict[int, int] = {}
    on_path: set[int] = set()
    unique = 0
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        children = _node_children(node)
        if done:
            on_path.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in children)
            height[key] = 1 + max((height[id(c)] for c in children), default=0)
            if height[key] > MAX_DEPTH:
                raise _DataError(WHY_TOO_DEEP.format(limit=MAX_DEPTH))
            if size[key] - unique > MAX_ALIAS_NODES:
                raise _DataError(WHY_ALIAS_BOMB.format(limit=MAX_ALIAS_NODES))
            continue
        if key in size:
            continue
        if key in on_path:
            raise _DataError(WHY_RECURSIVE_ALIAS.format(line=node.start_mark.line + 1))
        if len(on_path) > MAX_DEPTH:
            raise _DataError(WHY_TOO_DEEP.format(limit=MAX_DEPTH))
        unique += 1
        on_path.add(key)
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key_node, _ in node.value:
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                ident = (key_node.tag, key_node.value)
                line = key_node.start_mark.line + 1
                if ident in seen:
                    raise _DataError(WHY_DUPLICATE_KEY.format(key=shown(key_node.value), first=seen[ident],
                                                              second=line))
                seen[ident] = line
        stack.append((node, True))
        stack.extend((c, False) for c in reversed(children))
    if size.get(id(root), 0) - unique > MAX_ALIAS_NODES:
        raise _DataError(WHY_ALIAS_BOMB.format(limit=MAX_ALIAS_NODES))


def _parse_yaml(text: str) -> Any:
    import yaml

    # libyaml's parser where PyYAML was built with it (the same documents, several times faster on the
    # shipped lexicons); the pure-Python one otherwise
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_yaml_graph(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_depth(obj: Any) -> None:
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise _DataError(WHY_TOO_DEEP.format(limit=MAX_DEPTH))
            items = value.values() if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise _DataError(WHY_DUPLICATE_JSON_KEY.format(key=shown(key)))
        out[key] = value
    return out


def load_yaml(text: str, *, what: str, path: str | os.PathLike) -> Any:
    """Parse YAML text of a data file safely (see the module docstring); problems raise a one-line
    :class:`~clipprobe.errors.DataError` ``"{what} {path} could not be read: {why}"``."""
    import yaml

    try:
        return _parse_yaml(text)
    except _DataError as err:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=str(err))) from None
    except RecursionError:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path,
                                              why=WHY_TOO_DEEP.format(limit=MAX_DEPTH))) from None
    except yaml.YAMLError as err:
        if "nesting depth" in str(getattr(err, "problem", "")):       # libyaml's own limit, far above ours
            raise DataError(MSG_UNREADABLE.format(what=what, path=path,
                                                  why=WHY_TOO_DEEP.format(limit=MAX_DEPTH))) from None
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=shorten(str(err)))) from None


def load_json(text: str, *, what: str, path: str | os.PathLike) -> Any:
    """Parse JSON text of a data file, refusing duplicate keys and excessive nesting (one-line DataError)."""
    try:
        data = json.loads(text, object_pairs_hook=_json_pairs)
        _check_depth(data)
        return data
    except _DataError as err:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=str(err))) from None
    except RecursionError:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path,
                                              why=WHY_TOO_DEEP.format(limit=MAX_DEPTH))) from None
    except ValueError as err:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=shorten(str(err)))) from None


def read_data_text(path: str | os.PathLike, *, what: str, limit: int = MAX_DATA_FILE_BYTES,
                   encoding: str = "utf-8") -> str:
    """The text of a data file: "{what} {path} does not exist" / "could not be read: {why}" (too large,
    not UTF-8, unreadable) as one-line :class:`~clipprobe.errors.DataError`. A byte-order mark at the start
    is dropped."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    try:
        size = path.stat().st_size
        if size > limit:
            raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=WHY_TOO_LARGE.format(size=size,
                                                                                                limit=limit)))
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as err:
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=_reason(err))) from None
    if len(data) > limit:  # grew, or not a regular file
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=WHY_TOO_LARGE.format(size=len(data),
                                                                                            limit=limit)))
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as err:
        why = WHY_NOT_UTF8.format(why=f"byte 0x{data[err.start]:02x} at offset {err.start}")
        raise DataError(MSG_UNREADABLE.format(what=what, path=path, why=why)) from None
    return text[1:] if text.startswith("\ufeff") else text


def relative_inside(name: str) -> str | None:
    """``name`` (a path listed in a data file) as a normalised relative POSIX path, or None where it is
    empty, absolute (``/x``, ``C:x``, ``\\\\server``) or leads out of its root with ``..``. The one rule for
    every list of files under a root (face datasets, image manifests)."""
    if not isinstance(name, str) or not name.strip():
        return None
    norm = posixpath.normpath(name.replace("\\", "/"))
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm) or norm == ".." or norm.startswith("../"):
        return None
    return norm


def read_mapping(path: str | os.PathLike, *, what: str) -> Any:
    """Read a YAML or JSON data file (by suffix) and return its content.

    ``what`` names the kind of file in the errors: "{what} {path} does not exist" and
    "{what} {path} could not be read: {why}" (both :class:`clipprobe.errors.DataError`).
    YAML is read with the safe loader and the checks of :func:`load_yaml`.
    """
    path = Path(path)
    text = read_data_text(path, what=what)
    if path.suffix == ".json":
        return load_json(text, what=what, path=path)
    return load_yaml(text, what=what, path=path)
