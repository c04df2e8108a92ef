"""The pieces of `captions count` below the pipeline: inputs -> per-file parts -> merged counts.

:func:`plan_counts` reads the parquet footers of the expanded inputs
(:mod:`clipprobe.captions.inputs`; in threads), checks each file's caption column type and finds the files
whose counts are stored in ``OUT/parts/`` already; :func:`prepare_scan` compiles the terms' matcher;
:func:`scan_counts` splits the other files into chunks of row groups, scans them with the chosen engine and
stores each finished file's counts atomically in ``OUT/parts/`` (keyed by the file's absolute path, size and
content fingerprint (:func:`~clipprobe.captions.inputs.caption_fingerprint`), the term set, the text column
and the sample count); :func:`merge_parts` adds the parts up. A rerun skips files whose part exists; a file
whose content changed is scanned again (logged), whatever its size and modification time say. The command
itself (the table, ``samples.parquet``, ``run.json``, ``lift_heatmap.png``) is
:func:`clipprobe.pipeline.captions.count_captions`.

Ctrl-C (KeyboardInterrupt) stops the scan at once: no chunk starts after it,
running ones stop at their next record batch (threads) or are terminated
(processes), and the parts of the files finished so far stay on disk for the
rerun. A part is written whole before Ctrl-C acts. Killing the process
(``kill -9``) leaves the same state, and its worker processes end with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from clipprobe.captions.inputs import (ERR_NO_INPUT, caption_fingerprint, check_text_type,  # noqa: F401
                                       expand_inputs, file_identity)
from clipprobe.errors import ClipprobeError, DataError

log = logging.getLogger(__name__)

# The first scan on a machine compiles the token pass (numba, about a minute); later runs load it from the
# cache folder in a second. A compile that has not finished after NOTICE_AFTER_S says so, then how long it
# has run every NOTICE_EVERY_S.
MSG_COMPILING = "compiling the caption kernels once (about a minute; later runs load them from {cache}) ..."
MSG_LOADING = "loading the compiled caption kernels from {cache} ..."
MSG_STILL_COMPILING = "still preparing the caption kernels ({seconds:.0f} s)"
MSG_COMPILED = "caption kernels ready in {seconds:.0f} s"
NOTICE_AFTER_S = 2.0
NOTICE_EVERY_S = 15.0


@contextlib.contextmanager
def compile_notice(after: float | None = None, every: float | None = None):
    """Log :data:`MSG_COMPILING` (or :data:`MSG_LOADING` where the cache folder holds compiled kernels) when
    the block runs longer than ``after`` seconds, then its progress every ``every`` seconds, and
    :data:`MSG_COMPILED` at the end (nothing when it was quick)."""
    import threading

    after = NOTICE_AFTER_S if after is None else after
    every = NOTICE_EVERY_S if every is None else every
    start = time.perf_counter()
    done = threading.Event()
    noticed = []

    def watch() -> None:
        if done.wait(after):
            return
        from clipprobe._jitcache import cache_dir

        noticed.append(True)
        folder = cache_dir()
        # numba's index files of the functions compiled from clipprobe/captions/ (one folder per source folder)
        cached = folder.is_dir() and any(folder.glob("captions_*/*.nbi"))
        log.info((MSG_LOADING if cached else MSG_COMPILING).format(cache=folder))
        while not done.wait(every):
            log.info(MSG_STILL_COMPILING.format(seconds=time.perf_counter() - start))

    watcher = threading.Thread(target=watch, name="clipprobe-compile-notice", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()
        if noticed:
            log.info(MSG_COMPILED.format(seconds=time.perf_counter() - start))

DEFAULT_TEXT_COLUMN = "TEXT"
FALLBACK_TEXT_COLUMNS = ("caption", "text")
CHUNK_ROWS = 131_072      # row groups are grouped into tasks of about this many rows
ENGINES = ("local", "spark")
MATCHERS = ("auto", "hyperscan", "tokens")   # tokens: clipprobe.captions.tokens, needs numba; auto: tokens if
                                               # numba is installed, else hyperscan (the same counts either way)

COUNTS_FORMAT_VERSION = 1   # the layout of a counts folder (cooccurrence.parquet, samples.parquet, parts/)
ERR_NO_INPUTS = "no caption files given (a path, glob, folder or URL)"
ERR_NO_COLUMN = "{path}: no caption column {column!r}{tried}; columns: {columns}"
ERR_UNREADABLE = "{path}: not a readable parquet file ({why})"
ERR_ENGINE = "unknown engine {engine!r}; valid: 'local', 'spark'"
ERR_MATCHER = "unknown matcher {matcher!r}; valid: 'auto', 'hyperscan', 'tokens'"
ERR_SPARK_CONF = "--spark-conf {item!r} is not KEY=VALUE (e.g. spark.archives=env.tar.gz#environment)"
ERR_NO_NUMBA = "matcher 'tokens' needs numba (pip install numba); use matcher 'hyperscan'"


def check_engine(engine: str, matcher: str, spark_conf) -> None:
    """UsageError for an unknown engine or matcher, or a Spark setting that is not KEY=VALUE (the checks every
    command that scans captions shares)."""
    from clipprobe.errors import UsageError

    if engine not in ENGINES:
        raise UsageError(ERR_ENGINE.format(engine=engine))
    if matcher not in MATCHERS:
        raise UsageError(ERR_MATCHER.format(matcher=matcher))
    for item in spark_conf:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(ERR_SPARK_CONF.format(item=item))
@dataclass
class FileInfo:
    path: str
    size: int | None
    mtime: float | None
    fingerprint: str = ""           # content fingerprint (caption_fingerprint): the resume key, not mtime
    key: str = ""
    column: str = ""
    row_groups: list[int] = field(default_factory=list)
    rows_per_group: list[int] = field(default_factory=list)
    matches: str = ""               # the key of its recorded matches (for_balance), else ""


@dataclass(frozen=True)
class Recording:
    """What a scan records for ``balance fit --from-scan`` (:mod:`clipprobe.captions.matches`): where,
    for which term set, the columns hashed beside the captions, and the rows per chunk."""

    folder: Path
    term_set: str
    columns: tuple[str, ...]
    chunk_rows: int

    def chunk_files(self, info: "FileInfo") -> list[Path]:
        from clipprobe.captions.matches import chunk_file

        return [chunk_file(self.folder, info.matches, rg, first) for rg, first in _chunks(info, self.chunk_rows)]


def part_key(info: FileInfo, fingerprint: str, column: str, samples: int) -> str:
    blob = json.dumps([info.path, info.size, info.fingerprint, fingerprint, column, samples], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def resolve_column(names: list[str], requested: str | None, path: str) -> str:
    """The text column of a file; the default falls back to caption/text (logged)."""
    if requested is not None:
        if requested in names:
            return requested
        raise DataError(ERR_NO_COLUMN.format(path=path, column=requested, tried="",
                                             columns=", ".join(names[:20])))
    if DEFAULT_TEXT_COLUMN in names:
        return DEFAULT_TEXT_COLUMN
    for candidate in FALLBACK_TEXT_COLUMNS:
        if candidate in names:
            log.info("%s: no column %r; using %r", path, DEFAULT_TEXT_COLUMN, candidate)
            return candidate
    lowered = {n.lower(): n for n in names}
    for candidate in (DEFAULT_TEXT_COLUMN, *FALLBACK_TEXT_COLUMNS):
        if candidate.lower() in lowered:
            log.info("%s: no column %r; using %r", path, DEFAULT_TEXT_COLUMN, lowered[candidate.lower()])
            return lowered[candidate.lower()]
    raise DataError(ERR_NO_COLUMN.format(path=path, column=DEFAULT_TEXT_COLUMN,
                                         tried=f" (also tried {', '.join(repr(c) for c in FALLBACK_TEXT_COLUMNS)})",
                                         columns=", ".join(names[:20])))


def _chunks(info: FileInfo, chunk_rows: int) -> list[tuple[tuple[int, ...], int]]:
    """Consecutive row groups grouped into (row groups, first row) of about chunk_rows rows."""
    out, current, rows, first, row = [], [], 0, 0, 0
    for rg, n in zip(info.row_groups, info.rows_per_group):
        if current and rows + n > chunk_rows:
            out.append((tuple(current), first))
            current, rows, first = [], 0, row
        current.append(rg)
        rows += n
        row += n
    if current or not out:
        out.append((tuple(current), first))
    return out


def prepare_scan(space, *, samples: int, method: str, engine: str, workers: int | None,
                 record_columns: tuple[str, ...] = ()):
    """The :class:`~clipprobe.captions.scan.ScanSpec` of a scan for the terms of ``space``: their matcher
    (compiled, or read from the cache folder), the sample count and the matcher that runs (``method``). For
    the local engine the matcher, the compiled pass and its tables are made ready in this process first
    (forked workers inherit them)."""
    from clipprobe._io import default_cache_dir
    from clipprobe.captions.matching import Matcher
    from clipprobe.captions.scan import ScanSpec

    matcher = Matcher.cached(space.terms, default_cache_dir() / "hyperscan")
    spec = ScanSpec(space=space.to_dict(), matcher=matcher.to_bytes(), n_samples=samples, method=method,
                    record_columns=tuple(record_columns))
    if engine == "local":
        from clipprobe.captions.scan import prepare_worker

        # matcher, compiled pass and tables, before the scan (forked workers inherit them)
        with compile_notice():
            prepare_worker(spec, workers or os.cpu_count() or 1)
    return spec


def plan_counts(paths: list[str], parts_dir: Path, *, term_set: str, text_column: str | None, samples: int,
                strict: bool, skipped: list[dict[str, str]], recording: Recording | None = None,
                ) -> tuple[dict[str, FileInfo], list[FileInfo]]:
    """``(done, todo)``: the files of ``paths`` whose part (for the term set ``term_set``, their caption
    column and ``samples``) is in ``parts_dir`` already (``{path: info}``), and those to scan. Footers are
    read in threads (I/O: object stores answer each request in tens of ms); the results are used in input
    order, so errors and skips come out as from a loop. An unreadable file is added to ``skipped``
    (an error under ``strict``). With ``recording``, a file is done when its matches are stored too, and
    a file without one of the hashed columns is an error."""
    done: dict[str, FileInfo] = {}
    todo: list[FileInfo] = []
    for path, footer in zip(paths, _read_footers(paths)):
        if isinstance(footer, DataError):
            raise footer
        if isinstance(footer, str):
            _skip(strict, skipped, path, footer)
            continue
        info, names, schema = footer
        info.column = resolve_column(names, text_column, path)
        check_text_type(path, info.column, schema.field(info.column).type)
        info.key = part_key(info, term_set, info.column, samples)
        finished = (parts_dir / f"{info.key}.npz").exists()
        if recording is not None:
            from clipprobe.captions.matches import matches_key

            _check_hashed(path, recording.columns, names, schema)
            info.matches = matches_key(info.path, info.size, info.fingerprint, info.column, term_set,
                                       recording.columns)
            finished = finished and all(p.exists() for p in recording.chunk_files(info))
        if finished:
            done[path] = info
        else:
            todo.append(info)
    return done, todo


def scan_counts(spec, space, todo: list[FileInfo], done: dict[str, FileInfo], parts_dir: Path, *, engine: str,
                workers: int, spark_master: str | None, spark_conf: tuple[str, ...], chunk_rows: int,
                samples: int, strict: bool, skipped: list[dict[str, str]],
                recording: Recording | None = None) -> dict[str, float]:
    """Scan the files of ``todo`` in chunks of about ``chunk_rows`` rows with ``engine`` and write each
    finished file's part (then add it to ``done``); a file that cannot be read is added to ``skipped``
    (an error under ``strict``). With ``recording``, each chunk's task also writes its matches file.
    Returns the workers' seconds per stage and ``rows_scanned``."""
    from clipprobe.captions.matches import chunk_file
    from clipprobe.captions.scan import ChunkCounts, consume_tasks

    tasks, task_file = [], []
    for fi, info in enumerate(todo):
        for row_groups, first in _chunks(info, chunk_rows):
            task = (len(tasks), info.path, row_groups, info.column, first)
            if recording is not None:
                task += (str(chunk_file(recording.folder, info.matches, row_groups, first)),)
            tasks.append(task)
            task_file.append(fi)
    per_file_tasks = [0] * len(todo)
    for fi in task_file:
        per_file_tasks[fi] += 1
    results: dict[int, dict[int, ChunkCounts]] = {fi: {} for fi in range(len(todo))}
    failed: dict[int, str] = {}
    worker_seconds: dict[str, float] = {"rows_scanned": 0.0}
    if engine == "spark":
        from clipprobe.captions.inputs import backend_packages
        from clipprobe.captions.spark import run_spark

        stream = run_spark(spec, tasks, master=spark_master, workers=workers, task_file=task_file, conf=spark_conf,
                           backends=backend_packages(info.path for info in todo))
    else:
        from clipprobe.captions.scan import run_local

        stream = run_local(spec, tasks, workers)
    # Ctrl-C or --strict: the engine stops as the block ends (no chunk is started after that); the parts
    # of the files finished so far are on disk, and a rerun resumes from them
    with consume_tasks(stream, len(tasks), "captions") as finished:
        for task_id, counts, error in finished:
            fi = task_file[task_id]
            info = todo[fi]
            if error is not None:
                if fi not in failed:
                    failed[fi] = error
                    _skip(strict, skipped, info.path, ERR_UNREADABLE.format(path=info.path, why=error))
                continue
            results[fi][task_id] = counts
            for k, v in counts.seconds.items():
                worker_seconds[k] = worker_seconds.get(k, 0.0) + v
            worker_seconds["rows_scanned"] += counts.n_rows
            if len(results[fi]) == per_file_tasks[fi] and fi not in failed:
                merged = ChunkCounts.zeros(len(space.words), len(space.groups))
                for tid in sorted(results[fi]):
                    merged.add(results[fi][tid], n_samples=samples)
                with _interrupt_deferred():        # a part is written whole, then Ctrl-C acts
                    _write_part(parts_dir, info, merged)
                done[info.path] = info
                results[fi] = {}
    return worker_seconds


def merge_parts(paths: list[str], done: dict[str, FileInfo], parts_dir: Path, space, samples: int):
    """``(total, files)``: the counts of the finished files of ``paths`` added up (samples: the first ones in
    input order), and one record per file (path, size, fingerprint, text column, row groups, rows,
    captions, nulls, part)."""
    from clipprobe.captions.scan import ChunkCounts

    total = ChunkCounts.zeros(len(space.words), len(space.groups))
    files = []
    for path in paths:  # input order: samples are the first ones in that order
        if path not in done:
            continue
        info = done[path]
        part = _read_part(parts_dir, info, len(space.words), len(space.groups))
        total.add(part, n_samples=samples)
        files.append({"path": path, "size": info.size, "fingerprint": info.fingerprint,
                      "text_column": info.column, "row_groups": part.n_row_groups, "rows": part.n_rows,
                      "captions": part.n_captions, "nulls": part.n_nulls, "part": f"parts/{info.key}.npz"})
    return total, files


def changed_since_last_run(out: Path, todo: list[FileInfo]) -> list[str]:
    """Paths of ``todo`` that the last run into ``out`` counted with other content (its run.json)."""
    try:
        previous = json.loads((out / "run.json").read_text(encoding="utf-8"))
        before = {f["path"]: f for f in previous.get("files") or () if isinstance(f, dict) and "path" in f}
    except (OSError, ValueError, TypeError, AttributeError):
        return []
    return [i.path for i in todo if i.path in before and before[i.path].get("fingerprint") != i.fingerprint]


def _why(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


FOOTER_THREADS = 16


def _read_footer(path: str):
    """(FileInfo without column and key, column names, Arrow schema) of one file, or the skip message
    (a str) if it cannot be read, or the :class:`DataError` to raise."""
    from clipprobe.captions.inputs import open_parquet

    try:
        size, mtime = file_identity(path)
    except ClipprobeError as err:
        return DataError(str(err))
    except (OSError, ValueError) as err:
        return ERR_UNREADABLE.format(path=path, why=_why(err))
    info = FileInfo(path, size, mtime)
    try:
        with open_parquet(path) as pf:
            schema = pf.schema_arrow
            meta = pf.metadata
            info.row_groups = list(range(meta.num_row_groups))
            info.rows_per_group = [meta.row_group(i).num_rows for i in info.row_groups]
        info.fingerprint = caption_fingerprint(path, meta)
    except ClipprobeError as err:
        return DataError(str(err))
    except Exception as err:  # corrupt footer, not parquet, permission: skipped and reported by the caller
        return ERR_UNREADABLE.format(path=path, why=_why(err))
    return info, schema.names, schema


def _read_footers(paths: list[str]):
    """:func:`_read_footer` of each path, in order, read by up to FOOTER_THREADS threads."""
    if len(paths) <= 1:
        return [_read_footer(p) for p in paths]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(FOOTER_THREADS, len(paths)),
                            thread_name_prefix="clipprobe-footer") as pool:
        return list(pool.map(_read_footer, paths))


ERR_HASH_COLUMN = ("{path}: no column {column!r} to hash for balance fit --from-scan{hint}; columns: {columns} "
                   "(name the columns to hash, or none)")
ERR_HASH_TYPE = "{path}: column {column!r} holds {type}; content hashes need text or integers"


def _check_hashed(path: str, columns, names: list[str], schema) -> None:
    """Each column a recording hashes is in the file and holds text, binary or integers."""
    import pyarrow as pa

    from clipprobe.captions.inputs import _text_kind
    from clipprobe.errors import did_you_mean

    for column in columns:
        if column not in names:
            raise DataError(ERR_HASH_COLUMN.format(path=path, column=column, hint=did_you_mean(column, names),
                                                   columns=", ".join(names[:20])))
        t = schema.field(column).type
        t = t.value_type if pa.types.is_dictionary(t) else t
        if _text_kind(t) is None and not pa.types.is_integer(t):
            raise DataError(ERR_HASH_TYPE.format(path=path, column=column, type=t))


def _skip(strict: bool, skipped: list, path: str, message: str) -> None:
    if strict:
        raise DataError(message)
    log.warning("skipped %s", message)
    skipped.append({"path": path, "why": message})


@contextlib.contextmanager
def _interrupt_deferred():
    """Hold Ctrl-C (SIGINT) back until the block ends, then act on it as the handler before would.

    Only in the main thread (the only one that gets Python's signal handlers); elsewhere a no-op.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, None)        # Python's default handler raises KeyboardInterrupt here
            elif previous == signal.SIG_DFL:
                os.kill(os.getpid(), signal.SIGINT)


def _write_part(parts_dir: Path, info: FileInfo, counts) -> None:
    """Samples first, counts last: the counts file marks the part as finished."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe._io import atomic_path

    from clipprobe.captions.scan import SAMPLE_COLUMNS

    samples = counts.samples
    if samples is None:
        samples = pa.table({name: pa.array([], type=pa.string() if name == "caption" else pa.int64())
                            for name in SAMPLE_COLUMNS})
    with atomic_path(parts_dir / f"{info.key}.samples.parquet", suffix=".parquet") as tmp:
        pq.write_table(samples, tmp)
    with atomic_path(parts_dir / f"{info.key}.npz", suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, n_word=counts.n_word, n_group=counts.n_group, n_both=counts.n_both,
                     totals=np.asarray([counts.n_rows, counts.n_captions, counts.n_nulls, counts.n_row_groups],
                                       np.int64))


def _read_part(parts_dir: Path, info: FileInfo, n_words: int, n_groups: int):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe.captions.scan import SAMPLE_COLUMNS, ChunkCounts

    with np.load(parts_dir / f"{info.key}.npz", allow_pickle=False) as z:
        counts = ChunkCounts(z["n_word"].copy(), z["n_group"].copy(), z["n_both"].copy())
        n_rows, n_captions, n_nulls, n_row_groups = (int(x) for x in z["totals"])
    if counts.n_both.shape != (n_words, n_groups):
        raise DataError(f"{parts_dir / info.key}.npz: counts of shape {counts.n_both.shape}, "
                        f"expected {(n_words, n_groups)}; delete the parts folder and rerun")
    counts.n_rows, counts.n_captions, counts.n_nulls, counts.n_row_groups = n_rows, n_captions, n_nulls, n_row_groups
    samples = pq.read_table(parts_dir / f"{info.key}.samples.parquet", columns=list(SAMPLE_COLUMNS))
    counts.samples = samples.append_column("file", pa.array([info.path] * samples.num_rows, pa.string()))
    return counts


def samples_frame(space, samples):
    """samples.parquet: word, attribute, group, file, row, caption (``samples``: a table of SAMPLE_COLUMNS and file)."""
    import numpy as np
    import pandas as pd

    from clipprobe.captions.scan import sample_texts

    columns = ["word", "attribute", "group", "file", "row", "caption"]
    if samples is None or samples.num_rows == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "row" else object) for c in columns})
    w = samples.column("word_index").to_numpy()
    g = samples.column("group_index").to_numpy()
    words = np.asarray(space.words, dtype=object)
    attributes = np.asarray([a for a, _ in space.groups], dtype=object)
    groups = np.asarray([b for _, b in space.groups], dtype=object)
    return pd.DataFrame({"word": words[w], "attribute": attributes[g], "group": groups[g],
                         "file": samples.column("file").to_pylist(), "row": samples.column("row").to_numpy(),
                         "caption": sample_texts(samples.column("caption").combine_chunks())}, columns=columns)
