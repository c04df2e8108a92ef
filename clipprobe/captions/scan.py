"""Scanning parquet captions into co-occurrence counts (the function every engine runs).

:class:`TermSpace` ties the taxonomy words and the lexicon groups to one set of
unique terms. :func:`scan_chunk` reads some row groups of one parquet file,
matches each record batch with :class:`~clipprobe.captions.matching.Matcher`
and returns a :class:`ChunkCounts`: per-word, per-group and word x group
caption counts plus up to ``n_samples`` example captions per cell. The local
engine runs it in a process pool (:func:`run_local`); the Spark engine
(:mod:`clipprobe.captions.spark`) runs the very same function in its tasks.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from clipprobe.captions.inputs import caption_array
from clipprobe.captions.matching import RULE_VERSION, Matcher, normalise_term, sorted_unique

log = logging.getLogger(__name__)

BATCH_ROWS = 65_536


@dataclass(frozen=True)
class TermSpace:
    """Words (taxonomy) and groups (lexicon) as one list of unique normalised terms."""

    words: tuple[str, ...]
    groups: tuple[tuple[str, str], ...]            # (attribute, group)
    terms: tuple[str, ...]
    word_terms: tuple[int, ...]                     # word i is terms[word_terms[i]]
    group_terms: tuple[tuple[int, ...], ...]        # group j is any of these terms

    @classmethod
    def build(cls, words: Sequence[str], lexicon) -> "TermSpace":
        terms: dict[str, int] = {}

        def index(term: str) -> int:
            return terms.setdefault(normalise_term(term), len(terms))

        word_terms = tuple(index(w) for w in words)
        groups, group_terms = [], []
        for attribute, group in lexicon.groups():
            groups.append((attribute, group))
            group_terms.append(tuple(index(t) for t in lexicon.attributes[attribute][group]))
        return cls(tuple(words), tuple(groups), tuple(terms), word_terms, tuple(group_terms))

    def fingerprint(self) -> str:
        blob = json.dumps({"rule": RULE_VERSION, "words": self.words, "groups": self.groups,
                           "terms": self.terms, "word_terms": self.word_terms,
                           "group_terms": self.group_terms}, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def term_maps(self):
        """(word_ptr, word_idx, group_ptr, group_idx): term t is word(s) ``word_idx[word_ptr[t]:word_ptr[t + 1]]``
        and belongs to group(s) ``group_idx[group_ptr[t]:group_ptr[t + 1]]`` (CSR layout, int64)."""
        import numpy as np

        def csr(pairs):
            k = len(self.terms)
            pairs = sorted(set(pairs))
            ptr = np.zeros(k + 1, np.int64)
            np.add.at(ptr, np.asarray([t + 1 for t, _ in pairs], np.int64), 1)
            return np.cumsum(ptr), np.asarray([j for _, j in pairs], np.int64)

        word_ptr, word_idx = csr((t, i) for i, t in enumerate(self.word_terms))
        group_ptr, group_idx = csr((t, j) for j, ts in enumerate(self.group_terms) for t in ts)
        return word_ptr, word_idx, group_ptr, group_idx

    def to_dict(self) -> dict[str, Any]:
        return {"words": list(self.words), "groups": [list(g) for g in self.groups], "terms": list(self.terms),
                "word_terms": list(self.word_terms), "group_terms": [list(g) for g in self.group_terms]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TermSpace":
        return cls(tuple(d["words"]), tuple(tuple(g) for g in d["groups"]), tuple(d["terms"]),
                   tuple(d["word_terms"]), tuple(tuple(g) for g in d["group_terms"]))


@dataclass
class ScanSpec:
    """Everything a worker needs: the term space, the compiled matcher, reading options."""

    space: dict[str, Any]
    matcher: bytes
    n_samples: int = 5
    batch_rows: int = BATCH_ROWS
    method: str = "hyperscan"      # or "tokens": clipprobe.captions.tokens.TokenMatcher (same results)
    record_columns: tuple[str, ...] = ()   # with a task's matches file: columns whose content hashes it stores


@dataclass
class ChunkCounts:
    """Counts of some row groups of one file (sum two with :meth:`add`)."""

    n_word: Any
    n_group: Any
    n_both: Any
    n_rows: int = 0
    n_captions: int = 0
    n_nulls: int = 0
    n_row_groups: int = 0
    samples: Any = None       # pyarrow Table of SAMPLE_COLUMNS (plus "file" once read back from a part); None: none
    seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def zeros(cls, n_words: int, n_groups: int) -> "ChunkCounts":
        import numpy as np

        return cls(np.zeros(n_words, np.int64), np.zeros(n_groups, np.int64),
                   np.zeros((n_words, n_groups), np.int64))

    def add(self, other: "ChunkCounts", n_samples: int | None = None) -> None:
        """Add ``other`` (which comes after self in file order); keep at most n_samples per cell."""
        self.n_word += other.n_word
        self.n_group += other.n_group
        self.n_both += other.n_both
        self.n_rows += other.n_rows
        self.n_captions += other.n_captions
        self.n_nulls += other.n_nulls
        self.n_row_groups += other.n_row_groups
        self.samples = merge_samples(self.samples, other.samples, n_samples)
        for key, value in other.seconds.items():
            self.seconds[key] = self.seconds.get(key, 0.0) + value


SAMPLE_COLUMNS = ("word_index", "group_index", "row", "caption")


def sample_table(words, groups, rows, captions):
    """Samples as a pyarrow Table (word and group indices, file row, caption as an Arrow string array)."""
    import pyarrow as pa

    if pa.types.is_large_string(captions.type):
        captions = captions.cast(pa.string())
    return pa.table([pa.array(words, pa.int64()), pa.array(groups, pa.int64()), pa.array(rows, pa.int64()),
                     captions], names=list(SAMPLE_COLUMNS))


def merge_samples(first, then, n_samples: int | None):
    """Samples ``first`` followed by ``then`` (tables or None), capped at ``n_samples`` per cell if given."""
    import pyarrow as pa

    parts = [t for t in (first, then) if t is not None and t.num_rows]
    if not parts:
        return first if first is not None else then
    table = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
    return table if n_samples is None else cap_samples(table, n_samples)


def cap_samples(table, n_samples: int):
    """Keep the first ``n_samples`` rows of each (word, group) cell of a samples table, in order."""
    import numpy as np

    if table is None or table.num_rows == 0:
        return table
    w = table.column("word_index").to_numpy()
    g = table.column("group_index").to_numpy()
    cell = w * (int(g.max()) + 1) + g
    order = np.argsort(cell, kind="stable")
    sorted_cells = cell[order]
    rank = np.arange(len(cell)) - np.searchsorted(sorted_cells, sorted_cells, side="left")
    keep = np.sort(order[rank < n_samples])
    return table if len(keep) == len(cell) else table.take(keep)


def sample_texts(array) -> list:
    """Captions as Python strings; bytes that are not UTF-8 become U+FFFD (a sample is for reading)."""
    import pyarrow as pa

    try:
        return array.to_pylist()
    except UnicodeDecodeError:
        binary = pa.large_binary() if pa.types.is_large_string(array.type) else pa.binary()
        return [None if b is None else b.decode("utf-8", "replace") for b in array.cast(binary).to_pylist()]


class _Worker:
    """A matcher and the term -> word / group maps, built once per process."""

    # one worker per (spec, thread): a Hyperscan scratch must not be used by two threads at once.
    # A forked process's main thread has the identity of the thread that forked it, so a pool
    # process finds the worker its parent prepared.
    _cache: dict[tuple[int, int], "_Worker"] = {}
    _spare: list["_Worker"] = []          # prepared for the threads of a thread pool (bind_thread)
    _lock = threading.Lock()

    def __init__(self, spec: ScanSpec):
        self.spec = spec
        self.space = TermSpace.from_dict(spec.space)
        self.matcher = Matcher.from_bytes(self.space.terms, spec.matcher)
        self.counts_directly = False      # the token pass counts captions itself (TokenMatcher.count)
        if spec.method == "tokens":
            from clipprobe.captions.tokens import TokenMatcher, available

            if available():
                self.matcher = TokenMatcher(self.matcher)
                self.matcher.warm_up()
                self.counts_directly = True
            else:     # e.g. a Spark executor without numba: the same counts, from Hyperscan
                log.warning("numba is not installed here: matching with Hyperscan instead of the token path")
        self.word_ptr, self.word_idx, self.group_ptr, self.group_idx = self.space.term_maps()
        import pyarrow.compute  # noqa: F401  (the scan needs them: loaded once, before any fork)
        import pyarrow.parquet  # noqa: F401
        # (path, column) -> (first row of the last chunk this process scanned there, samples taken per
        # cell in this process's chunks of that file so far): see scan_chunk
        self.taken: dict[tuple[str, str], tuple[int, Any]] = {}
        self.footers: dict[str, Any] = {}       # path -> footer (FileMetaData) of the files scanned here

    @classmethod
    def get(cls, spec: ScanSpec) -> "_Worker":
        key = (id(spec), threading.get_ident())
        worker = cls._cache.get(key)
        if worker is None or worker.spec is not spec:
            with cls._lock:
                for other in [k for k, w in cls._cache.items() if w.spec is not spec]:
                    del cls._cache[other]          # workers of an earlier run
                spare = [w for w in cls._spare if w.spec is spec]
                cls._spare = spare
                worker = cls._cache[key] = spare.pop() if spare else cls(spec)
        return worker

    @classmethod
    def prepare(cls, spec: ScanSpec, copies: int = 1) -> None:
        """A worker for this thread, and ``copies - 1`` spare ones for the threads of a pool."""
        cls.get(spec)
        spares = [cls(spec) for _ in range(copies - 1)]
        with cls._lock:
            cls._spare = spares


def prepare_worker(spec: ScanSpec, workers: int = 1) -> None:
    """Build the worker state for ``spec`` now: for this thread (forked pool processes inherit it) and,
    where the local engine will run threads (the token pass), for each of ``workers`` threads."""
    _Worker.prepare(spec, workers if spec.method == "tokens" and workers > 1 else 1)


def open_parquet(path: str, metadata=None):
    """A ``pyarrow.parquet.ParquetFile`` for a local path or an fsspec URL (see :mod:`.inputs`)."""
    from clipprobe.captions.inputs import open_parquet as open_

    return open_(path, metadata)


def scan_chunk(spec: ScanSpec, path: str, row_groups: Sequence[int], text_column: str,
               row_offset: int = 0, stop: threading.Event | None = None, record: str | None = None) -> ChunkCounts:
    """Count one chunk (some row groups of one parquet file). Raises on unreadable data.

    ``row_offset`` is the file row of the chunk's first row (for sample provenance). When ``stop`` is
    set, the chunk is left at its next record batch (:class:`Stopped`). ``record``: a file that then
    stores every (caption, term) match of the chunk and the content hashes of its captions and of
    ``spec.record_columns`` (:mod:`clipprobe.captions.matches`, for ``balance fit --from-scan``); the
    counts are the same.
    """
    import numpy as np

    worker = _Worker.get(spec)
    recorder = None
    if record is not None:
        from clipprobe.captions.matches import Recorder

        recorder = Recorder(spec.record_columns, text_column)
    space = worker.space
    out = ChunkCounts.zeros(len(space.words), len(space.groups))
    t_read = t_match = t_count = t_record = 0.0
    sample_parts: list = []
    # Samples are the first n_samples captions of each cell in file order. A cell that this process
    # already filled from earlier chunks of the file is full whatever the chunks in between hold, so
    # it needs no samples from this chunk (fewer captions to send back; the result is the same).
    file_key = (path, text_column)
    earlier = worker.taken.get(file_key)
    taken = earlier[1].copy() if earlier is not None and earlier[0] < row_offset else None
    t0 = time.perf_counter()
    if len(worker.footers) >= 256 and path not in worker.footers:
        worker.footers.clear()
    with open_parquet(path, worker.footers.get(path)) as pf:
        worker.footers[path] = pf.metadata          # the next chunk of this file skips parsing it
        columns = [text_column] if recorder is None else recorder.columns
        batches = pf.iter_batches(batch_size=spec.batch_rows, row_groups=list(row_groups), columns=columns,
                                  use_threads=False)
        row = row_offset
        for batch in batches_until_stopped(batches, stop, path):
            t1 = time.perf_counter()
            t_read += t1 - t0
            column = caption_array(batch.column(0))
            if recorder is not None:
                # every match is kept: the pass that lists them all (the counts come out the same)
                found, candidates = worker.matcher.scan(column), None
            elif worker.counts_directly:
                # the token pass counts as it matches; it leaves a few captions (if any) to count here
                if taken is None and spec.n_samples > 0:
                    taken = np.zeros(len(space.words) * len(space.groups), np.int64)
                found, candidates = worker.matcher.count(column, worker.word_ptr, worker.word_idx,
                                                         worker.group_ptr, worker.group_idx, out.n_word,
                                                         out.n_group, out.n_both, taken, spec.n_samples)
            else:
                found, candidates = worker.matcher.scan(column), None
            t2 = time.perf_counter()
            t_match += t2 - t1
            taken = _count_batch(worker, found, column, row, out, sample_parts, taken, candidates)
            if recorder is not None:
                t3 = time.perf_counter()
                recorder.add(found, column, batch)
                t_record += time.perf_counter() - t3
            out.n_rows += len(column)
            out.n_captions += found.n_captions
            out.n_nulls += found.n_nulls
            row += len(column)
            t0 = time.perf_counter()
            t_count += t0 - t2
    log.debug("scanned %s rows %d-%d", path, row_offset, row)
    out.n_row_groups = len(row_groups)
    if sample_parts:
        import pyarrow as pa

        out.samples = sample_parts[0] if len(sample_parts) == 1 else pa.concat_tables(sample_parts)
    out.seconds = {"read": t_read, "match": t_match, "count": t_count - t_record}
    if recorder is not None:
        t3 = time.perf_counter()
        recorder.save(record)
        out.seconds["record"] = t_record + time.perf_counter() - t3
    if taken is not None:
        if len(worker.taken) >= 64 and file_key not in worker.taken:
            worker.taken.clear()
        worker.taken[file_key] = (row_offset, taken)
    return out


def _count_batch(worker: _Worker, found, column, row_offset: int, out: ChunkCounts, sample_parts: list, taken,
                 candidates=None):
    """Add one batch's caption x term pairs to the counts and pick sample captions (a table appended to
    ``sample_parts``).

    ``candidates``: (row, word, group) of captions counted already (by the token pass) that may be samples.
    """
    import numpy as np

    n_words, n_groups = len(worker.space.words), len(worker.space.groups)
    if len(found.rows):
        terms = found.terms.astype(np.int64)
        # (caption, word): unique already, as each word is one term and the pairs (caption, term) are unique
        w_rows, words = _expand(found.rows, terms, worker.word_ptr, worker.word_idx)
        # (caption, group): several terms of one group in a caption count once
        g_rows, groups = _expand(found.rows, terms, worker.group_ptr, worker.group_idx)
        key = sorted_unique(g_rows * n_groups + groups)
        g_rows, groups = key // n_groups, key % n_groups
        out.n_word += np.bincount(words, minlength=n_words)
        out.n_group += np.bincount(groups, minlength=n_groups)
        cap, w, g = _cells(w_rows, words, g_rows, groups)
        out.n_both += np.bincount(w * n_groups + g, minlength=n_words * n_groups).reshape(n_words, n_groups)
    else:
        cap = w = g = np.zeros(0, np.int64)
    if candidates is not None and candidates.shape[1]:
        if len(cap):             # both in row order: merge them
            cap, w, g = np.concatenate((candidates, np.stack((cap, w, g))), axis=1)
            order = np.argsort(cap, kind="stable")
            cap, w, g = cap[order], w[order], g[order]
        else:
            cap, w, g = candidates
    n_samples = worker.spec.n_samples
    if n_samples <= 0 or len(cap) == 0:
        return taken
    if taken is None:
        taken = np.zeros(n_words * n_groups, np.int64)
    cell = w * n_groups + g
    open_ = np.flatnonzero(taken[cell] < n_samples)          # cells that still want samples
    if len(open_) == 0:
        return taken
    cap, w, g, cell = cap[open_], w[open_], g[open_], cell[open_]
    order = np.argsort(cell, kind="stable")                   # caption order kept inside each cell
    cell_sorted = cell[order]
    first = np.searchsorted(cell_sorted, cell_sorted, side="left")
    rank = np.arange(len(cell_sorted)) - first
    pick = order[rank < (n_samples - taken[cell_sorted])]
    if len(pick) == 0:
        return taken
    pick = pick[np.lexsort((g[pick], w[pick], cap[pick]))]      # by caption, word, group: one order for all
    np.add.at(taken, cell[pick], 1)
    rows = cap[pick]
    sample_parts.append(sample_table(w[pick], g[pick], rows + row_offset, column.take(rows)))
    return taken


def _expand(rows, terms, ptr, idx):
    """Map (row, term) pairs through a CSR term -> items map: (row, item) pairs, rows kept in order."""
    import numpy as np

    lo, hi = ptr[terms], ptr[terms + 1]
    n = hi - lo
    total = int(n.sum())
    if total == len(n) and (n == 1).all():                      # one item per term: no repeat needed
        return rows, idx[lo]
    start = np.cumsum(n) - n
    item = np.repeat(lo - start, n) + np.arange(total)
    return np.repeat(rows, n), idx[item]


def _cells(w_rows, words, g_rows, groups):
    """All (caption, word, group) triples with the word and the group both in the caption.

    Both pair lists are sorted by caption; the triples come out sorted by caption too.
    """
    import numpy as np

    lo = np.searchsorted(g_rows, w_rows, side="left")
    hi = np.searchsorted(g_rows, w_rows, side="right")
    n = hi - lo
    total = int(n.sum())
    if total == 0:
        z = np.zeros(0, np.int64)
        return z, z, z
    start = np.cumsum(n) - n
    gi = np.repeat(lo - start, n) + np.arange(total)
    return np.repeat(w_rows, n), np.repeat(words, n), groups[gi]


# --- the local engine -------------------------------------------------------------------------

_SPEC: ScanSpec | None = None


class Stopped(Exception):
    """A chunk left unfinished because its run is stopping (Ctrl-C)."""


def batches_until_stopped(batches, stop, path):
    """The record batches of ``batches`` in order; :class:`Stopped` (naming ``path``) as soon as ``stop`` is
    set, checked before each batch is read, so a stopping run leaves its chunk unfinished."""
    while True:
        if stop is not None and stop.is_set():
            raise Stopped(path)
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch


def _init_pool(spec: ScanSpec) -> None:
    global _SPEC
    _SPEC = spec


def _pool_task(task: tuple, stop: threading.Event | None = None, fn=None):
    """Run one task: :func:`scan_chunk` on ``(id, path, row groups, column, first row[, matches file])``, or ``fn(spec, task,
    stop)`` where a caller gives its own chunk function (same task layout, extra items at the end)."""
    task_id = task[0]
    try:
        if fn is not None:
            return task_id, fn(_SPEC, task, stop), None
        _, path, row_groups, column, row_offset = task[:5]
        record = task[5] if len(task) > 5 else None       # a matches file (captions count --for-balance)
        return task_id, scan_chunk(_SPEC, path, row_groups, column, row_offset, stop=stop, record=record), None
    except Stopped:
        raise
    except Exception as err:  # reported per file by the caller, never silent
        return task_id, None, f"{type(err).__name__}: {' '.join(str(err).split())[:300]}"


_PR_SET_PDEATHSIG = 1        # linux/prctl.h
WATCHDOG_SECONDS = 0.5


def _die_with_parent(parent: int | None) -> None:
    """Make this worker process end when the process that started it ends (even by kill -9).

    Linux: the kernel sends SIGKILL on the parent's death (``prctl(PR_SET_PDEATHSIG)``). Elsewhere, or
    where prctl is unavailable, a daemon thread checks the parent's pid every WATCHDOG_SECONDS.
    ``parent``: the pid the parent must have (None: whichever process started this one).
    """
    import os
    import signal
    import sys

    expected = parent if parent is not None else os.getppid()
    armed = False
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            armed = libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
    if os.getppid() != expected:      # the parent died before the signal was armed
        os._exit(1)
    if not armed:
        def watch():
            while os.getppid() == expected:
                time.sleep(WATCHDOG_SECONDS)
            os._exit(1)

        threading.Thread(target=watch, name="clipprobe-parent-watchdog", daemon=True).start()


def _init_process(spec: ScanSpec, parent: int | None) -> None:
    """Initialiser of a worker process: ends with its parent; Ctrl-C is the parent's to handle."""
    import signal

    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _init_pool(spec)


def run_local(spec: ScanSpec, tasks: Sequence[tuple[int, str, tuple[int, ...], str, int]], workers: int,
              fn=None) -> Iterator[tuple[int, ChunkCounts | None, str | None]]:
    """Yield (task id, counts or None, error or None) for each task, as they finish.

    ``fn``: a module-level function ``fn(spec, task, stop)`` run on each task instead of
    :func:`scan_chunk` (its result is yielded in place of the counts); it should leave its chunk at
    the next record batch once ``stop`` (a ``threading.Event`` or None) is set, raising :class:`Stopped`.

    ``workers == 1`` scans in this process. Otherwise, with the token pass (which reads and counts
    without holding the GIL: pyarrow's reader and the compiled pass release it), a pool of ``workers``
    threads of this process; with Hyperscan alone (whose Python binding calls back per match) a pool
    of ``workers`` processes.

    Closing the generator early (Ctrl-C in the caller's loop) stops the scan at once: chunks not
    started are cancelled, threads leave their chunk at the next record batch, worker processes are
    terminated. Worker processes also end when this process dies (:func:`_die_with_parent`).
    """
    if workers <= 1 or len(tasks) <= 1:
        _init_pool(spec)
        for task in tasks:
            yield _pool_task(task, None, fn)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed

    # The token pass runs in threads (as _Worker does: "tokens" where numba is installed), and so do the
    # tasks of a run with that matcher (``fn``: they build a worker themselves where they match, none
    # where they only read stored chunks). Hyperscan runs in processes: the worker state (imports,
    # matcher, term maps) is built before they start, and forked ones inherit it.
    from clipprobe.captions.tokens import available

    threads = spec.method == "tokens" and available()
    if not threads:
        _Worker.get(spec)
    if threads:
        # Threads share the worker state; its per-file sample bookkeeping (``taken``) only ever hands
        # a chunk the samples of chunks before it, whichever thread scanned them (see scan_chunk).
        _init_pool(spec)
        stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=min(workers, len(tasks)), thread_name_prefix="clipprobe-scan")
        try:
            futures = [pool.submit(_pool_task, t, stop, fn) for t in tasks]
            for fut in as_completed(futures):
                yield fut.result()
        finally:
            stop.set()                  # a no-op once all are done; else running chunks end at their next batch
            pool.shutdown(wait=True, cancel_futures=True)
        return

    # The platform's default start method: fork on Linux up to Python 3.13 (workers start at once,
    # with the libraries already imported), forkserver / spawn elsewhere.
    ctx = multiprocessing.get_context()
    import os
    import signal

    parent = None if ctx.get_start_method() == "forkserver" else os.getpid()
    # Objects made so far (libraries, the worker state) are left out of garbage collection until the
    # scan ends: collections here and in forked workers then walk only the scan's own objects, and
    # do not copy the workers' inherited pages by touching them (the advice of the gc.freeze docs).
    gc.freeze()
    pool = None
    finished = False
    # Ctrl-C is held back while the workers start (they inherit the mask and then ignore SIGINT), so
    # that a new worker never dies of it half started; it is delivered here right after.
    block = hasattr(signal, "pthread_sigmask") and threading.current_thread() is threading.main_thread()
    try:
        if block:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)), mp_context=ctx,
                                       initializer=_init_process, initargs=(spec, parent))
            futures = [pool.submit(_pool_task, t, None, fn) for t in tasks]
        finally:
            if block:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        for fut in as_completed(futures):
            yield fut.result()
        pool.shutdown(wait=True)
        finished = True
    finally:
        if pool is not None and not finished:
            _stop_processes(pool)
        gc.unfreeze()


def _stop_processes(pool) -> None:
    """Cancel what a process pool has not started and end its workers now (their chunks are lost)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())     # shutdown() forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=5)


def progress(iterable: Iterable, total: int, desc: str) -> Iterable:
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit="chunk", disable=None)


@contextlib.contextmanager
def consume_tasks(stream: Iterator, total: int, desc: str) -> Iterator[Iterator]:
    """The results of a task stream (:func:`run_local`, :func:`~clipprobe.captions.spark.run_spark`) with a
    progress bar, for a ``with`` block; leaving the block (its end, an error, Ctrl-C) stops the stream.

    The stream is stopped here, by name, and not when the loop's iterator is dropped as an exception
    leaves the loop: stopping waits for running chunks, and a second Ctrl-C during that wait is then an
    ordinary KeyboardInterrupt for the caller (the CLI's "Interrupted", exit 130). Raised inside a
    generator that the interpreter closes as it drops it, it would only be printed, as an ignored
    exception with a traceback.
    """
    bar = progress(stream, total=total, desc=desc)
    results = iter(bar)
    try:
        yield results
    finally:
        try:
            if hasattr(results, "close"):
                results.close()         # the bar's generator, which closes the stream it was reading
            stream.close()              # a no-op once closed; closes it where the bar never started it
        finally:
            if hasattr(bar, "close"):
                bar.close()
