"""`captions count` as a function: inputs -> per-file parts -> co-occurrence table.

:func:`count_captions` expands the inputs (paths, globs, folders, fsspec URLs;
:mod:`clipprobe.captions.inputs`), reads the parquet footers (in threads),
checks each file's caption column type, splits files into chunks of row groups,
scans them with the chosen engine and stores each finished file's counts
atomically in ``OUT/parts/`` (keyed by the file's absolute path, size and
content fingerprint (:func:`~clipprobe.captions.inputs.caption_fingerprint`), the
term set, the text column and the sample count). A rerun skips files whose part
exists; a file whose content changed is scanned again (logged), whatever its
size and modification time say. When every file is done it writes ``cooccurrence.parquet``,
``samples.parquet``, ``run.json`` and ``lift_heatmap.png``.

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
from typing import Any

from clipprobe.captions.inputs import (ERR_NO_INPUT, caption_fingerprint, check_text_type,  # noqa: F401
                                       expand_inputs, file_identity)
from clipprobe.errors import ClipprobeError, DataError, UsageError

log = logging.getLogger(__name__)

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
ERR_NOTHING_READ = "no caption file could be read ({n} skipped; see {run_json})"
ERR_ENGINE = "unknown engine {engine!r}; valid: 'local', 'spark'"
ERR_MATCHER = "unknown matcher {matcher!r}; valid: 'auto', 'hyperscan', 'tokens'"
ERR_SPARK_CONF = "--spark-conf {item!r} is not KEY=VALUE (e.g. spark.archives=env.tar.gz#environment)"
ERR_NO_NUMBA = "matcher 'tokens' needs numba (pip install numba); use matcher 'hyperscan'"
ERR_NO_CAPTIONS = ("no captions to count: the {n_files} file(s) read hold {rows:,} row(s), every caption null "
                   "(see {run_json})")
ERR_LEXICON_NO_MATCH = ("lexicon {name!r} ({source}) matches none of the {n:,} captions: no group occurs, so no "
                        "word-group association is defined (are its terms in the captions' language?)")
ERR_TAXONOMY_NO_MATCH = ("taxonomy {name!r}: none of its {n_words} words occurs in the {n:,} captions, so no "
                         "word-group association is defined")


@dataclass(frozen=True)
class CountConfig:
    """Settings of one `captions count` run."""

    captions: tuple[str, ...]
    out: str
    taxonomy: str | None = None
    lexicon: str | None = None
    text_column: str | None = None          # None: TEXT, falling back to caption / text
    engine: str = "local"
    workers: int | None = None              # None: all cores
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()         # KEY=VALUE settings of the Spark session (spark.archives=...)
    samples: int = 5
    strict: bool = False
    top_words: int = 30                      # rows of the heatmap
    chunk_rows: int = CHUNK_ROWS
    matcher: str = "auto"                    # see MATCHERS


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


@dataclass
class CountResult:
    out: Path
    table: Any                     # pandas DataFrame (cooccurrence.parquet)
    run: dict[str, Any]            # run.json


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


def count_captions(config: CountConfig) -> CountResult:
    """Run `captions count`; see the module docstring."""
    from clipprobe._io import ensure_dir, write_json
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.captions.matching import Matcher
    from clipprobe.captions.scan import ChunkCounts, ScanSpec, TermSpace, cap_samples
    from clipprobe.runinfo import StageTimer
    from clipprobe.resources.taxonomy import get_taxonomy

    if config.engine not in ENGINES:
        raise UsageError(ERR_ENGINE.format(engine=config.engine))
    if not config.captions:
        raise UsageError(ERR_NO_INPUTS)
    if config.matcher not in MATCHERS:
        raise UsageError(ERR_MATCHER.format(matcher=config.matcher))
    for item in config.spark_conf:
        key, eq, _ = item.partition("=")
        if not eq or not key.strip():
            raise UsageError(ERR_SPARK_CONF.format(item=item))
    method = config.matcher
    if method in ("auto", "tokens"):
        from clipprobe.captions.tokens import available

        if not available():
            if method == "tokens":
                raise UsageError(ERR_NO_NUMBA)
            method = "hyperscan"
        else:
            method = "tokens"
    timer = StageTimer()
    started = time.time()
    out = Path(config.out)
    parts_dir = out / "parts"
    ensure_dir(parts_dir)

    with timer("plan"):
        taxonomy = get_taxonomy(config.taxonomy)
        lexicon = get_lexicon(config.lexicon)
        space = TermSpace.build(taxonomy.words(), lexicon)
        fingerprint = space.fingerprint()
        paths = expand_inputs(config.captions)
    with timer("compile"):
        from clipprobe._io import default_cache_dir

        matcher = Matcher.cached(space.terms, default_cache_dir() / "hyperscan")
        spec = ScanSpec(space=space.to_dict(), matcher=matcher.to_bytes(), n_samples=config.samples,
                        method=method)
        if config.engine == "local":
            from clipprobe.captions.scan import prepare_worker

            # matcher, compiled pass and tables, before the scan (forked workers inherit them)
            prepare_worker(spec, config.workers or os.cpu_count() or 1)

    skipped: list[dict[str, str]] = []
    done: dict[str, FileInfo] = {}
    todo: list[FileInfo] = []
    with timer("plan"):
        # footers are read in threads (I/O: object stores answer each request in tens of ms); the
        # results are used in input order, so errors and skips come out as from a loop
        for path, footer in zip(paths, _read_footers(paths)):
            if isinstance(footer, DataError):
                raise footer
            if isinstance(footer, str):
                _skip(config, skipped, path, footer)
                continue
            info, names, schema = footer
            info.column = resolve_column(names, config.text_column, path)
            check_text_type(path, info.column, schema.field(info.column).type)
            info.key = part_key(info, fingerprint, info.column, config.samples)
            if (parts_dir / f"{info.key}.npz").exists():
                done[path] = info
            else:
                todo.append(info)
    changed = _changed_since_last_run(out, todo)
    if changed:
        log.info("%d caption file(s) changed since the last run into %s (content fingerprint differs), scanned "
                 "again: %s", len(changed), out, ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
    log.info("%d files: %d done before, %d to scan, %d skipped", len(paths), len(done), len(todo), len(skipped))

    tasks, task_file = [], []
    for fi, info in enumerate(todo):
        for row_groups, first in _chunks(info, config.chunk_rows):
            tasks.append((len(tasks), info.path, row_groups, info.column, first))
            task_file.append(fi)
    per_file_tasks = [0] * len(todo)
    for fi in task_file:
        per_file_tasks[fi] += 1
    results: dict[int, dict[int, ChunkCounts]] = {fi: {} for fi in range(len(todo))}
    failed: dict[int, str] = {}
    worker_seconds: dict[str, float] = {"rows_scanned": 0.0}
    workers = config.workers or os.cpu_count() or 1

    cpu_before = _cpu_seconds()
    with timer("scan"):
        if config.engine == "spark":
            from clipprobe.captions.inputs import backend_packages
            from clipprobe.captions.spark import run_spark

            stream = run_spark(spec, tasks, master=config.spark_master, workers=workers, task_file=task_file,
                               conf=config.spark_conf,
                               backends=backend_packages(info.path for info in todo))
        else:
            from clipprobe.captions.scan import run_local

            stream = run_local(spec, tasks, workers)
        from clipprobe.captions.scan import progress

        bar = progress(stream, total=len(tasks), desc="captions")
        try:
            for task_id, counts, error in bar:
                fi = task_file[task_id]
                info = todo[fi]
                if error is not None:
                    if fi not in failed:
                        failed[fi] = error
                        _skip(config, skipped, info.path, ERR_UNREADABLE.format(path=info.path, why=error))
                    continue
                results[fi][task_id] = counts
                for k, v in counts.seconds.items():
                    worker_seconds[k] = worker_seconds.get(k, 0.0) + v
                worker_seconds["rows_scanned"] += counts.n_rows
                if len(results[fi]) == per_file_tasks[fi] and fi not in failed:
                    merged = ChunkCounts.zeros(len(space.words), len(space.groups))
                    for tid in sorted(results[fi]):
                        merged.add(results[fi][tid], n_samples=config.samples)
                    with _interrupt_deferred():        # a part is written whole, then Ctrl-C acts
                        _write_part(parts_dir, info, merged)
                    done[info.path] = info
                    results[fi] = {}
        finally:
            # Ctrl-C or --strict: the engine stops now (no chunk is started after this); the parts of the
            # files finished so far are on disk, and a rerun resumes from them
            stream.close()
            if hasattr(bar, "close"):
                bar.close()

    cpu_after = _cpu_seconds()
    scan_cpu = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after} if cpu_after else None

    with timer("merge"):
        total = ChunkCounts.zeros(len(space.words), len(space.groups))
        files = []
        for path in paths:  # input order: samples are the first ones in that order
            if path not in done:
                continue
            info = done[path]
            part = _read_part(parts_dir, info, len(space.words), len(space.groups))
            total.add(part, n_samples=config.samples)
            files.append({"path": path, "size": info.size, "fingerprint": info.fingerprint,
                          "text_column": info.column, "row_groups": part.n_row_groups, "rows": part.n_rows,
                          "captions": part.n_captions, "nulls": part.n_nulls, "part": f"parts/{info.key}.npz"})
    if not files:
        write_json(out / "run.json", _run_record(config, space, lexicon, taxonomy, fingerprint, files, skipped,
                                                 total, timer, worker_seconds, started, scan_cpu, method))
        raise DataError(ERR_NOTHING_READ.format(n=len(skipped), run_json=out / "run.json"))

    # Nothing to associate: an error naming the input, not a table of undefined rows (no table is written)
    if total.n_captions == 0:
        write_json(out / "run.json", _run_record(config, space, lexicon, taxonomy, fingerprint, files, skipped,
                                                 total, timer, worker_seconds, started, scan_cpu, method))
        raise DataError(ERR_NO_CAPTIONS.format(n_files=len(files), rows=sum(f["rows"] for f in files),
                                               run_json=out / "run.json"))
    if not total.n_group.any():
        raise DataError(ERR_LEXICON_NO_MATCH.format(name=lexicon.name, source=lexicon.source, n=total.n_captions))
    if not total.n_word.any():
        raise DataError(ERR_TAXONOMY_NO_MATCH.format(name=taxonomy.name, n_words=len(space.words),
                                                     n=total.n_captions))
    with timer("stats"):
        from clipprobe.captions.stats import cooccurrence_table

        table = cooccurrence_table(space.words, space.groups, total.n_captions, total.n_word, total.n_group,
                                   total.n_both)
    with timer("write"):
        from clipprobe._io import write_parquet

        write_parquet(out / "cooccurrence.parquet", table)
        write_parquet(out / "samples.parquet", samples_frame(space, cap_samples(total.samples, config.samples)))
    with timer("figure"):
        try:
            from clipprobe.captions.figures import save_lift_heatmap

            save_lift_heatmap(table, out / "lift_heatmap.png", top=config.top_words)
        except ImportError as err:
            log.warning("no heatmap: %s", err)
    run = _run_record(config, space, lexicon, taxonomy, fingerprint, files, skipped, total, timer,
                      worker_seconds, started, scan_cpu, method)
    write_json(out / "run.json", run)
    return CountResult(out=out, table=table, run=run)


def _changed_since_last_run(out: Path, todo: list[FileInfo]) -> list[str]:
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


def _skip(config: CountConfig, skipped: list, path: str, message: str) -> None:
    if config.strict:
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


def _input_files(config) -> dict[str, dict]:
    """The taxonomy and lexicon files with the SHA-256 of their bytes (for the record: the parts are keyed by
    the term set read from them, :meth:`TermSpace.fingerprint`, so an edit that changes no term reuses them)."""
    from clipprobe._io import sha256_file
    from clipprobe.resources.lexicon import LEXICONS
    from clipprobe.resources.taxonomy import TAXONOMIES

    out = {}
    for role, registry, value in (("taxonomy", TAXONOMIES, config.taxonomy), ("lexicon", LEXICONS, config.lexicon)):
        path = registry.file(value)
        try:
            out[role] = {"path": str(path), "sha256": sha256_file(path)}
        except OSError:           # read a moment ago: gone since
            out[role] = {"path": str(path), "sha256": None}
    return out


def _cpu_seconds() -> dict[str, float] | None:
    """CPU seconds so far of this process and of its finished child processes (None where unknown)."""
    try:
        import resource
    except ImportError:   # not on Windows
        return None
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"main": own.ru_utime + own.ru_stime, "workers": kids.ru_utime + kids.ru_stime}


def _run_record(config, space, lexicon, taxonomy, fingerprint, files, skipped, total, timer, worker_seconds,
                started, scan_cpu=None, matcher=None) -> dict[str, Any]:
    from clipprobe.config import to_dict
    from clipprobe.runinfo import run_record

    scan_s = timer.seconds.get("scan", 0.0)
    worker_seconds = dict(worker_seconds)
    scanned = int(worker_seconds.pop("rows_scanned", 0))
    return run_record(
        "captions count",
        format_version=COUNTS_FORMAT_VERSION,
        config=to_dict(config),
        timings=timer.seconds,
        started=started,
        engine=config.engine,
        matcher=matcher,     # the one that ran (config.matcher may say "auto")
        workers=config.workers or os.cpu_count(),
        taxonomy=taxonomy.name, lexicon=lexicon.name, lexicon_source=lexicon.source,
        inputs=_input_files(config),
        n_words=len(space.words), n_groups=len(space.groups), n_terms=len(space.terms),
        term_set=fingerprint,
        files=files,
        n_files=len(files),
        row_groups=int(sum(f["row_groups"] for f in files)),
        rows=int(total.n_rows), captions=int(total.n_captions), nulls=int(total.n_nulls),
        skipped=skipped,
        worker_seconds={k: round(v, 4) for k, v in worker_seconds.items()},
        # CPU seconds of the scan stage: this process, and its worker processes (local engine)
        scan_cpu_s=scan_cpu,
        rows_scanned_this_run=scanned,
        rows_per_s_scan=(round(scanned / scan_s) if scan_s > 0 and scanned else None),
    )
