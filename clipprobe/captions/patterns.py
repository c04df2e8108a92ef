"""The two passes of data balancing over parquet captions: count the patterns, then write the weights.

:func:`plan_files` expands the inputs (as ``captions count`` does), reads the footers and checks the
columns before anything is scanned. :func:`count_patterns` scans every file with
:func:`~clipprobe.captions.indicators.pattern_task` (chunks of row groups, local engine or Spark): each
task stores its chunk's pattern table and its captions' rows of that table (one small integer per
caption) in ``PARTS/patterns/chunks/``, and the driver stores each finished file's merged table in
``PARTS/patterns/`` (keyed by the file's path, size and content fingerprint and by everything its patterns
depend on); a rerun skips those files, so another keep rate or eps refits without reading any caption.
:func:`keep_ranks` finds, for each pattern of the fitted table, which of its captions the keep flags keep
(the first by the rank key, a hash of each caption's content stored by the pattern pass, as many as
``q x count`` rounded down or up): one light pass over the chunk files on the same engine counts each
pattern's captions below a window of rank keys around the expected boundary and gathers those inside
it; the driver ranks them (:mod:`clipprobe.analysis.keepflags`; a pattern whose window missed, which is
rare, takes two exact passes more) and stores the result in ``PARTS/weights/ranks-KEY.npz``.
:func:`write_weights` runs :func:`~clipprobe.captions.indicators.weights_task` on every chunk: from the
chunk file and the fitted solution it computes each caption's q and keep flag without reading the
captions again (only the key column), writes the chunk's weights file itself (``PARTS/weights/``), and
the driver then records the chunk as done with its kept counts. On Spark the executors write the chunk
and weights files, so the output folder must be on a filesystem every node sees.
:func:`publish_weights` gathers the chunk files, in input order, into one folder (a parquet dataset,
as Spark writes one) that replaces the previous one at once.

Every input file must be readable: a file that cannot be read stops the run with its name (a weights
table that silently lacks a file would let its captions through unbalanced). Ctrl-C stops a pass at
once (no chunk starts after it; parts already written stay) and so does ``kill -9``; a rerun resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from clipprobe.errors import DataError, UsageError

log = logging.getLogger(__name__)

MSG_COLUMN = "{path}: no {what} column {column!r}{hint}; columns: {columns}"
MSG_KEY_HINT = " (key_column=None writes no key column)"
MSG_HASH_TYPE = ("{path}: {what} column {column!r} holds {type}; the keep flags hash each caption's content, "
                 "which needs text or integers (name another id column, or none)")


@dataclass(frozen=True)
class EngineSettings:
    """How the passes run: ``engine`` 'local' or 'spark', ``workers`` (None: all cores), Spark's master
    and session settings, rows per chunk and the matcher ('auto', 'tokens', 'hyperscan')."""

    engine: str = "local"
    workers: int | None = None
    spark_master: str | None = None
    spark_conf: tuple[str, ...] = ()
    chunk_rows: int = 131_072
    matcher: str = "auto"

    def check(self) -> "EngineSettings":
        from clipprobe.captions.run import check_engine

        check_engine(self.engine, self.matcher, self.spark_conf)
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"workers must be 1 or more, got {self.workers}")
        if self.chunk_rows < 1:
            raise UsageError(f"chunk_rows must be 1 or more, got {self.chunk_rows}")
        return self

    @property
    def n_workers(self) -> int:
        return self.workers or os.cpu_count() or 1

    def method(self) -> str:
        """The matcher that runs: 'tokens' where numba is installed (for 'auto'), else 'hyperscan'."""
        from clipprobe.captions.run import ERR_NO_NUMBA
        from clipprobe.captions.tokens import available

        if self.matcher == "hyperscan":
            return "hyperscan"
        if not available():
            if self.matcher == "tokens":
                raise UsageError(ERR_NO_NUMBA)
            return "hyperscan"
        return "tokens"


@dataclass
class PlannedFile:
    """One input file: path, identity, caption column, row groups and the key of its pattern part."""

    path: str
    size: int | None
    mtime: Any
    column: str
    row_groups: list[int]
    rows_per_group: list[int]
    key: str = ""
    fingerprint: str = ""       # content fingerprint (clipprobe.captions.inputs.caption_fingerprint)

    @property
    def rows(self) -> int:
        return int(sum(self.rows_per_group))


def _numeric(t) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _textual(t) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t) or pa.types.is_null(t)


def _hashable(t) -> bool:
    """Text, binary or integer: what a caption's content hash can cover."""
    import pyarrow as pa

    from clipprobe.captions.inputs import _text_kind

    if pa.types.is_dictionary(t):
        t = t.value_type
    return _text_kind(t) is not None or pa.types.is_integer(t)


def plan_files(captions: Sequence[str], text_column: str | None, spec) -> list[PlannedFile]:
    """The input files with their footers read and their columns checked (nothing scanned yet)."""
    from clipprobe.captions.indicators import MSG_GROUP_TYPE, MSG_LABEL_TYPE, MSG_UTILITY_TYPE, label_column_type_ok
    from clipprobe.captions.inputs import check_text_type, expand_inputs
    from clipprobe.captions.run import ERR_NO_INPUTS, ERR_UNREADABLE, _read_footers, resolve_column

    if not captions:
        raise UsageError(ERR_NO_INPUTS)
    paths = expand_inputs(captions)
    fingerprint = spec.fingerprint()
    out = []
    for path, footer in zip(paths, _read_footers(paths)):
        if isinstance(footer, DataError):
            raise footer
        if isinstance(footer, str):
            raise DataError(footer if footer.startswith(path) else ERR_UNREADABLE.format(path=path, why=footer))
        info, names, schema = footer
        column = resolve_column(names, text_column, path)
        check_text_type(path, column, schema.field(column).type)
        shown = ", ".join(names[:20])
        hashed = getattr(spec, "hash_columns", ())
        checks = [("attribute", spec.group_column, _textual, MSG_GROUP_TYPE),
                  ("label", spec.label_column, label_column_type_ok, MSG_LABEL_TYPE),
                  ("utility", spec.utility_column, _numeric, MSG_UTILITY_TYPE),
                  ("key", spec.key_column, _hashable if spec.key_column in hashed else None, MSG_HASH_TYPE)]
        checks += [("id", name, _hashable, MSG_HASH_TYPE) for name in hashed if name != spec.key_column]
        for what, name, ok, bad in checks:
            if name is None:
                continue
            if name not in names:
                from clipprobe.errors import did_you_mean

                hint = did_you_mean(name, names) + (MSG_KEY_HINT if what == "key" else "")
                raise DataError(MSG_COLUMN.format(path=path, what=what, column=name, hint=hint, columns=shown))
            if ok is not None and not ok(schema.field(name).type):
                raise DataError(bad.format(path=path, what=what, column=name, type=schema.field(name).type))
        planned = PlannedFile(info.path, info.size, info.mtime, column, info.row_groups, info.rows_per_group,
                              fingerprint=info.fingerprint)
        blob = json.dumps([planned.path, planned.size, planned.fingerprint, fingerprint, column], default=str)
        planned.key = hashlib.sha256(blob.encode()).hexdigest()[:24]
        out.append(planned)
    return out


def _chunks(info: PlannedFile, chunk_rows: int) -> list[tuple[tuple[int, ...], int]]:
    from clipprobe.captions.run import FileInfo, _chunks as chunks

    return chunks(FileInfo(info.path, info.size, info.mtime, row_groups=info.row_groups,
                           rows_per_group=info.rows_per_group), chunk_rows)


def _chunk_file(folder: Path, info: PlannedFile, row_groups: Sequence[int], first: int) -> Path:
    """The chunk file of some row groups of a file (named by the file's key, the first row and the
    number of row groups: another chunking of the file never reads it)."""
    return folder / "chunks" / f"{info.key}-{first:012d}-{len(row_groups)}.npz"


def _stream(spec, tasks, task_file, files, settings: EngineSettings, fn, prepare: bool = True):
    if settings.engine == "spark":
        from clipprobe.captions.inputs import backend_packages
        from clipprobe.captions.spark import run_spark

        return run_spark(spec, tasks, master=settings.spark_master, workers=settings.n_workers, task_file=task_file,
                         conf=settings.spark_conf, backends=backend_packages(f.path for f in files), fn=fn)
    from clipprobe.captions.scan import prepare_worker, run_local

    if tasks and prepare:
        prepare_worker(spec, settings.n_workers)
    return run_local(spec, tasks, settings.n_workers, fn=fn)


def _in_process(spec, settings: EngineSettings) -> bool:
    """Whether the engine runs every task in this process (as :func:`~clipprobe.captions.scan.run_local`
    does with one worker, or with the token pass in threads)."""
    if settings.engine != "local":
        return False
    from clipprobe.captions.tokens import available

    return settings.n_workers <= 1 or (spec.method == "tokens" and available())


def _consume(stream, n_tasks: int, desc: str, on_result, path_of) -> None:
    """Feed each (task id, result) to ``on_result``; a failed task (unreadable data) is fatal, naming
    the file (``path_of(task id)``)."""
    from clipprobe.captions.run import ERR_UNREADABLE
    from clipprobe.captions.scan import consume_tasks

    # Ctrl-C or an error: no chunk starts after the block; what is written stays for the rerun
    with consume_tasks(stream, n_tasks, desc) as results:
        for task_id, result, error in results:
            if error is not None:
                raise DataError(ERR_UNREADABLE.format(path=path_of(task_id), why=error))
            if "error" in result:
                raise DataError(result["error"])
            on_result(task_id, result)


# ----------------------------------------------------------------------------------------------
# pass 1: the pattern tables


@dataclass
class PatternPass:
    """The merged pattern table of all files, per-file summaries, and what this run scanned."""

    table: Any
    files: list[dict[str, Any]]
    rows: int
    nulls: int
    rows_scanned: int = 0
    worker_seconds: dict[str, float] = field(default_factory=dict)


def _save_table(path: Path, table, totals) -> None:
    import numpy as np

    from clipprobe._io import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, keys=table.keys, ubin=table.ubin, count=table.count, u_sum=table.u_sum,
                     totals=np.asarray(totals, np.int64))


def _load_table(path: Path, spec):
    import numpy as np

    from clipprobe.analysis.patterns import PatternTable

    with np.load(path, allow_pickle=False) as z:
        n_words = max(1, -(-(len(spec.groups) + len(spec.labels)) // 64))
        keys = z["keys"]
        if keys.ndim != 2 or keys.shape[1] != n_words:
            raise DataError(f"{path}: a pattern part of another layout; delete the parts folder and rerun")
        table = PatternTable(tuple(spec.groups), tuple(spec.labels), keys.astype(np.uint64), z["ubin"].astype(np.int32),
                             z["count"].astype(np.int64), z["u_sum"].astype(np.float64),
                             spec.utility_column is not None)
        return table, [int(x) for x in z["totals"]]


# ----------------------------------------------------------------------------------------------
# a recorded scan (captions count --for-balance) in place of pass 1's reading and matching

MSG_NOT_SCAN = "from_scan {folder}: not a finished `captions count --for-balance` folder ({why})"
MSG_SCAN_TERMS = ("from_scan {folder}: its term set ({terms}) is not the one its run.json names, or was matched "
                  "under another matching rule; count again")
MSG_SCAN_MISSING = ("from_scan {folder}: the scan searched for none of {n} term(s) of this fit (e.g. {what} "
                    "{term!r}); count with a taxonomy and lexicon that hold them, or fit without from_scan")
MSG_SCAN_HASHES = ("from_scan {folder}: the keep flags hash {wanted}, the scan hashed the caption text and "
                   "{had}; count with those columns hashed, or fit with a key/id column it hashed")
MSG_SCAN_CHUNKS = "from_scan {folder}: scanned in chunks of {theirs} rows, this fit reads chunks of {ours} rows"
MSG_SCAN_FILE = ("from_scan {folder}: holds no finished scan of {path} as it is now (its content, size or caption "
                 "column {column!r} differ, or it was not counted there)")
MSG_SCAN_COLUMN = ("from_scan reads what a caption scan recorded; {what} comes from the caption files: fit "
                   "without from_scan")


@dataclass
class ScanSource:
    """A recorded scan that pass 1 reads instead of the captions: its matches folder, each planned file's
    matches key (by the file's pattern key), the map of its terms to the fit's, its rows per chunk."""

    folder: Path
    keys: dict[str, str]
    term_map: Any
    chunk_rows: int

    def chunk(self, info: PlannedFile, row_groups: Sequence[int], first: int) -> Path:
        from clipprobe.captions.matches import chunk_file

        return chunk_file(self.folder, self.keys[info.key], row_groups, first)


def open_scan(folder, spec, files: Sequence[PlannedFile], chunk_rows: int) -> ScanSource:
    """Check that ``folder`` is a finished ``captions count --for-balance`` whose recording serves this fit,
    and say where to read it; refuse, in one line, a scan of other files (or of these files with other
    content or caption column), one that did not search for every term of ``spec``, that did not hash
    the columns the keep flags hash, or that was cut into other chunks."""
    import numpy as np

    from clipprobe._io import relative_inside
    from clipprobe.captions.matches import MATCHES_FORMAT, matches_key
    from clipprobe.captions.scan import TermSpace

    folder = Path(folder).expanduser()
    for what, column in (("the attribute column", spec.group_column), ("the label column", spec.label_column),
                         ("the utility column", spec.utility_column)):
        if column is not None:
            raise UsageError(MSG_SCAN_COLUMN.format(what=f"{what} {column!r}"))
    try:
        run = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why=f"no readable run.json: {type(err).__name__}")) from None
    record = run.get("for_balance") if isinstance(run, dict) else None
    if not isinstance(run, dict) or run.get("command") != "captions count":
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why="its run.json is not a caption count's"))
    if not isinstance(record, dict):
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why="counted without --for-balance"))
    if record.get("format") != MATCHES_FORMAT:
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why=f"matches format {record.get('format')!r}, this "
                                                               f"version reads {MATCHES_FORMAT}"))
    term_set = str(run.get("term_set"))
    terms_name, matches_dir = relative_inside(record.get("terms")), relative_inside(record.get("folder"))
    if terms_name is None or matches_dir is None:
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why="its run.json names no matches folder inside it"))
    try:
        scanned = TermSpace.from_dict(json.loads((folder / terms_name).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise DataError(MSG_NOT_SCAN.format(folder=folder, why=f"no readable term set: {type(err).__name__}")) from None
    if scanned.fingerprint() != term_set:
        raise DataError(MSG_SCAN_TERMS.format(folder=folder, terms=folder / terms_name))
    mine = TermSpace.from_dict(spec.space)
    index = {t: i for i, t in enumerate(scanned.terms)}
    term_map = np.full(len(scanned.terms), -1, np.int64)
    labels = set(mine.word_terms)
    missing = []
    for j, term in enumerate(mine.terms):
        if term in index:
            term_map[index[term]] = j
        else:
            missing.append((j, term))
    if missing:
        j, term = missing[0]
        raise DataError(MSG_SCAN_MISSING.format(folder=folder, n=len(missing), term=term,
                                                what="label" if j in labels else "group term"))
    hashed = [str(c) for c in record.get("hash_columns") or ()]
    if not set(spec.hash_columns) <= set(hashed):
        wanted = " + ".join((["the caption text"] if spec.hash_text else []) + [repr(c) for c in spec.hash_columns])
        raise DataError(MSG_SCAN_HASHES.format(folder=folder, wanted=wanted,
                                               had=", ".join(map(repr, hashed)) or "no column"))
    if record.get("chunk_rows") != chunk_rows:
        raise DataError(MSG_SCAN_CHUNKS.format(folder=folder, theirs=record.get("chunk_rows"), ours=chunk_rows))
    source = ScanSource((folder / matches_dir).resolve(), {}, term_map, chunk_rows)
    for info in files:
        source.keys[info.key] = matches_key(info.path, info.size, info.fingerprint, info.column, term_set, hashed)
        if not all(source.chunk(info, rg, first).exists() for rg, first in _chunks(info, chunk_rows)):
            raise DataError(MSG_SCAN_FILE.format(folder=folder, path=info.path, column=info.column))
    return source


def count_patterns(spec, files: Sequence[PlannedFile], parts_dir, settings: EngineSettings,
                   source: ScanSource | None = None) -> PatternPass:
    """Pass 1: each file's pattern table (stored in ``parts_dir/patterns``), all of them merged. With
    ``source`` (:func:`open_scan`), each chunk's indicators come from the matches a caption count
    recorded (no caption is read); the chunk files and tables are the same."""
    import dataclasses

    from clipprobe.analysis.patterns import merge_tables
    from clipprobe.captions.indicators import CHUNK_CACHE, pattern_from_scan_task, pattern_task
    from clipprobe.captions.run import _interrupt_deferred

    folder = (Path(parts_dir) / "patterns").resolve()
    (folder / "chunks").mkdir(parents=True, exist_ok=True)
    # a fit's passes after the solve read the chunks this pass writes: held in memory where every pass runs
    # in this process (the local engine's threads; its worker processes would each hold their own)
    if getattr(spec, "hashes", False) and _in_process(spec, settings):
        CHUNK_CACHE.start()
    else:
        CHUNK_CACHE.stop()

    def done(info):
        return (folder / f"{info.key}.npz").exists() and all(
            _chunk_file(folder, info, rg, first).exists() for rg, first in _chunks(info, settings.chunk_rows))

    todo = [f for f in files if not done(f)]
    log.info("%d files: %d counted before, %d to scan", len(files), len(files) - len(todo), len(todo))
    tasks, task_file = [], []
    for fi, info in enumerate(todo):
        for row_groups, first in _chunks(info, settings.chunk_rows):
            task = (len(tasks), info.path, row_groups, info.column, first, str(_chunk_file(folder, info, row_groups,
                                                                                         first)))
            if source is not None:
                task += (str(source.chunk(info, row_groups, first)),)
            tasks.append(task)
            task_file.append(fi)
    pending = [0] * len(todo)
    for fi in task_file:
        pending[fi] += 1
    results: dict[int, dict[int, Any]] = {fi: {} for fi in range(len(todo))}
    seconds: dict[str, float] = {}
    scanned = [0]

    def on_result(task_id, result):
        fi = task_file[task_id]
        results[fi][task_id] = result
        scanned[0] += result["rows"]
        for k, v in (result.get("seconds") or {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
        if len(results[fi]) == pending[fi]:
            parts = [results[fi][t] for t in sorted(results[fi])]
            table = merge_tables([p["table"] for p in parts])
            totals = [sum(p["rows"] for p in parts), sum(p["nulls"] for p in parts),
                      sum(p["row_groups"] for p in parts)]
            with _interrupt_deferred():        # a part is written whole, then Ctrl-C acts
                _save_table(folder / f"{todo[fi].key}.npz", table, totals)
            results[fi] = {}

    if tasks:
        if source is None:
            stream = _stream(spec, tasks, task_file, todo, settings, pattern_task)
        else:
            stream = _stream(dataclasses.replace(spec, scan_terms=source.term_map), tasks, task_file, todo, settings,
                             pattern_from_scan_task, prepare=False)
        _consume(stream, len(tasks), "patterns", on_result, lambda task_id: tasks[task_id][1])
    tables, summaries, rows, nulls = [], [], 0, 0
    for info in files:
        table, (n_rows, n_nulls, n_groups) = _load_table(folder / f"{info.key}.npz", spec)
        tables.append(table)
        rows += n_rows
        nulls += n_nulls
        summaries.append({"path": info.path, "size": info.size, "text_column": info.column, "row_groups": n_groups,
                          "rows": n_rows, "nulls": n_nulls, "patterns": table.n_rows,
                          "part": f"parts/patterns/{info.key}.npz"})
    if not tables:
        raise DataError("no caption file to balance")
    return PatternPass(merge_tables(tables), summaries, rows, nulls, scanned[0],
                       {k: round(v, 4) for k, v in seconds.items()})


# ----------------------------------------------------------------------------------------------
# pass 2: the weights


def solution_key(table, q, extra: Sequence[Any] = ()) -> str:
    """A hash of a fitted table, its keep probabilities and the settings of the weights (seed, key column,
    what the content hash covers, the input files in order)."""
    import numpy as np

    h = hashlib.sha256()
    for a in (table.keys, table.ubin, table.count, np.asarray(q, np.float64)):
        h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps([list(table.groups), list(table.labels), *extra], default=str).encode())
    return h.hexdigest()[:24]


def _chunk_tasks(files: Sequence[PlannedFile], patterns: Path, settings: EngineSettings):
    """Every chunk of every file as ``(task, file index)``: (id, path, row groups, column, first row,
    chunk file, file ordinal)."""
    out = []
    for fi, info in enumerate(files):
        for row_groups, first in _chunks(info, settings.chunk_rows):
            out.append(((len(out), info.path, row_groups, info.column, first,
                         str(_chunk_file(patterns, info, row_groups, first)), fi), fi))
    return out


@dataclass
class RankPass:
    """The keep ranks (:class:`~clipprobe.analysis.keepflags.KeepRanks`) with what finding them read."""

    ranks: Any
    boundary_captions: int = 0
    rows_read: int = 0
    seconds: float = 0.0


def keep_ranks(spec, files: Sequence[PlannedFile], parts_dir, settings: EngineSettings, key: str) -> RankPass:
    """Which captions of each pattern the keep flags keep: the ``spec.keep_counts`` first of the pattern
    by rank key (``spec.fitted``, ``spec.seed``; None: ``round(spec.fitted_q x count)``), found from
    the chunk files of the pattern pass by one light pass on the engine: per pattern, its captions below
    a window of rank keys around the expected boundary and those inside it
    (:func:`~clipprobe.analysis.keepflags.rank_windows`). The patterns whose window misses (rare) take
    two more passes (a histogram of their rank keys, then the captions of each one's boundary bucket).
    Stored in
    ``parts_dir/weights/ranks-KEY.npz``; a rerun with the same ``key`` reads it."""
    import dataclasses
    import time

    import numpy as np

    from clipprobe._io import atomic_path
    from clipprobe.analysis.keepflags import (KeepRanks, keep_counts, rank_boundaries, rank_plan, rank_thresholds,
                                              rank_windows, window_thresholds)
    from clipprobe.captions.indicators import rank_candidates_task, rank_histogram_task, rank_window_task
    from clipprobe.captions.run import _interrupt_deferred

    folder = (Path(parts_dir) / "weights").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    stored = folder / f"ranks-{key}.npz"
    if stored.exists():
        with np.load(stored, allow_pickle=False) as z:
            ranks = KeepRanks.from_arrays({name: z[name] for name in z.files if name != "boundary"})
            return RankPass(ranks, int(z["boundary"][0]))
    t0 = time.perf_counter()
    counts = spec.fitted.count
    planned = rank_plan(keep_counts(spec.fitted_q, counts) if spec.keep_counts is None else spec.keep_counts, counts)
    pairs = _chunk_tasks(files, (Path(parts_dir) / "patterns").resolve(), settings)
    tasks, task_file = [t for t, _ in pairs], [f for _, f in pairs]
    read = [0]

    def run(ranks, fn, names, desc, sums=()):
        gathered: dict[str, list] = {name: [] for name in names}
        summed = {name: np.zeros(ranks.k.size, np.int64) for name in sums}

        def on_result(task_id, result):
            read[0] += result["rows"]
            for name in names:
                gathered[name].append(result[name])
            for name in sums:
                summed[name] += result[name]

        if ranks.split.any() and tasks:
            stream = _stream(dataclasses.replace(spec, ranks=ranks), tasks, task_file, files, settings, fn,
                             prepare=False)
            _consume(stream, len(tasks), desc, on_result, lambda task_id: tasks[task_id][1])
        return [summed[n] for n in sums] + [np.concatenate(gathered[n]) if gathered[n] else None for n in names]

    # one pass: each pattern's captions below and inside a window of rank keys around its expected boundary
    ranks = rank_windows(planned)
    seen, below, pattern, rank_key, pos = run(ranks, rank_window_task, ("pattern", "key", "pos"), "ranks",
                                              ("seen", "below"))
    pattern = _or_empty(pattern, np.int64)
    ranks, missed = window_thresholds(ranks, seen, below, pattern, _or_empty(rank_key, np.uint64),
                                      _or_empty(pos, np.int64))
    boundary = int(pattern.size)
    if missed.any():
        # the patterns whose window missed its boundary (rare): a histogram of their rank keys, then the
        # captions of each one's boundary bucket, exactly
        log.info("keep ranks: %d pattern(s) outside their window; two more passes", int(missed.sum()))
        exact = rank_plan(np.where(missed, planned.k, 0), counts)
        cells, cell_counts = run(exact, rank_histogram_task, ("cells", "counts"), "ranks (exact)")
        exact = rank_boundaries(exact, _or_empty(cells, np.int64), _or_empty(cell_counts, np.int64))
        pattern, rank_key, pos = run(exact, rank_candidates_task, ("pattern", "key", "pos"), "boundaries")
        pattern = _or_empty(pattern, np.int64)
        exact = rank_thresholds(exact, pattern, _or_empty(rank_key, np.uint64), _or_empty(pos, np.int64))
        boundary += int(pattern.size)
        t_key, t_pos = ranks.t_key.copy(), ranks.t_pos.copy()
        t_key[missed], t_pos[missed] = exact.t_key[missed], exact.t_pos[missed]
        ranks = dataclasses.replace(ranks, t_key=t_key, t_pos=t_pos)
    with _interrupt_deferred(), atomic_path(stored, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, boundary=np.asarray([boundary], np.int64), **ranks.to_arrays())
    log.info("keep ranks: %d of %d patterns keep some but not all of their captions; %d captions in "
             "their windows", int(ranks.split.sum()), ranks.k.size, boundary)
    return RankPass(ranks, boundary, read[0], time.perf_counter() - t0)


def _or_empty(values, dtype):
    import numpy as np

    return np.zeros(0, dtype) if values is None else np.asarray(values, dtype)


@dataclass
class WeightsPass:
    """The chunk weight files in input order, and per row of the fitted table the captions counted and
    kept by the flags; totals of rows, kept flags and q."""

    chunk_files: list[Path]
    count: Any
    kept: Any
    rows: int
    n_kept: int
    q_sum: float
    rows_scanned: int = 0
    worker_seconds: dict[str, float] = field(default_factory=dict)


def _save_marker(path: Path, result) -> None:
    import numpy as np

    from clipprobe._io import atomic_path

    with atomic_path(path, suffix=".npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, fit_rows=np.asarray(result["fit_rows"], np.int64), count=np.asarray(result["count"], np.int64),
                     kept_rows=np.asarray(result["kept_rows"], np.int64),
                     totals=np.asarray([result["rows"], result["kept"]], np.int64),
                     q_sum=np.asarray([result["q_sum"]], np.float64))


def write_weights(spec, files: Sequence[PlannedFile], parts_dir, settings: EngineSettings, key: str) -> WeightsPass:
    """Pass 2: every chunk's weights file (``parts_dir/weights``), for the fitted table and the keep
    ranks in ``spec`` (:func:`keep_ranks`).

    ``key``: :func:`solution_key` of the fit; chunks already written for it are not scanned again.
    """
    import numpy as np

    from clipprobe.captions.indicators import CHUNK_CACHE, weights_task
    from clipprobe.captions.run import _interrupt_deferred

    folder = (Path(parts_dir) / "weights").resolve()
    patterns = (Path(parts_dir) / "patterns").resolve()
    folder.mkdir(parents=True, exist_ok=True)
    order: list[Path] = []
    tasks, task_file, todo_files = [], [], []
    for fi, info in enumerate(files):
        added = False
        sizes = dict(zip(info.row_groups, info.rows_per_group))
        for row_groups, first in _chunks(info, settings.chunk_rows):
            blob = json.dumps([info.key, list(row_groups), first, key])
            name = hashlib.sha256(blob.encode()).hexdigest()[:24]
            order.append(folder / f"{name}.parquet")
            if (folder / f"{name}.npz").exists() and (folder / f"{name}.parquet").exists():
                continue
            if not added:
                todo_files.append(info)
                added = True
            tasks.append((len(tasks), info.path, row_groups, info.column, first,
                          str(_chunk_file(patterns, info, row_groups, first)), str(folder / f"{name}.parquet"),
                          info.path, [sizes[g] for g in row_groups], fi))
            task_file.append(len(todo_files) - 1)
    log.info("weights: %d chunks, %d to write", len(order), len(tasks))
    seconds: dict[str, float] = {}
    scanned = [0]

    def on_result(task_id, result):
        scanned[0] += result["rows"]
        for k, v in (result.get("seconds") or {}).items():
            seconds[k] = seconds.get(k, 0.0) + v
        with _interrupt_deferred():
            _save_marker(Path(tasks[task_id][6]).with_suffix(".npz"), result)

    try:
        if tasks:
            stream = _stream(spec, tasks, task_file, todo_files, settings, weights_task, prepare=False)
            _consume(stream, len(tasks), "weights", on_result, lambda task_id: tasks[task_id][1])
    finally:
        CHUNK_CACHE.stop()          # the last pass that reads the chunks
    n_fit = spec.fitted.n_rows
    count = np.zeros(n_fit, np.int64)
    kept = np.zeros(n_fit, np.int64)
    rows = n_kept = 0
    q_sum = 0.0
    for path in order:
        with np.load(path.with_suffix(".npz"), allow_pickle=False) as z:
            np.add.at(count, z["fit_rows"], z["count"])
            np.add.at(kept, z["fit_rows"], z["kept_rows"])
            r, k = (int(x) for x in z["totals"])
            rows += r
            n_kept += k
            q_sum += float(z["q_sum"][0])
    return WeightsPass(order, count, kept, rows, n_kept, q_sum, scanned[0],
                       {k: round(v, 4) for k, v in seconds.items()})


def publish_weights(chunk_files: Sequence[Path], dest) -> Path:
    """Gather the chunk files as ``dest/part-NNNNN.parquet`` (hard links where possible) in a new folder
    that then replaces ``dest``: a reader sees the old folder or the new one, never a half-filled one."""
    import shutil
    import tempfile

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        for i, src in enumerate(chunk_files):
            target = tmp / f"part-{i:05d}.parquet"
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
        os.chmod(tmp, 0o777 & ~_umask())
        old = None
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
            os.replace(dest, old / dest.name)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest


def _umask() -> int:
    from clipprobe._io import process_umask

    return process_umask()
