"""``captions count`` as a function: inputs -> per-file parts -> co-occurrence table.

:func:`count_captions` checks the settings, reads the taxonomy and the lexicon, expands the inputs (paths,
globs, folders, fsspec URLs; :mod:`clipprobe.captions.inputs`), plans, scans and merges the files with
:mod:`clipprobe.captions.run` (a rerun skips the files whose part exists; Ctrl-C keeps the finished ones),
computes the statistics (:mod:`clipprobe.analysis.cooccurrence`) and writes ``cooccurrence.parquet``,
``samples.parquet``, ``lift_heatmap.png`` and, last, ``run.json`` (:mod:`clipprobe.report.captions`).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipprobe.captions.run import CHUNK_ROWS, COUNTS_FORMAT_VERSION, ERR_NO_INPUTS, check_engine
from clipprobe.errors import DataError, UsageError

log = logging.getLogger(__name__)

ERR_NOTHING_READ = "no caption file could be read ({n} skipped; see {run_json})"
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
    matcher: str = "auto"                    # see clipprobe.captions.run.MATCHERS
    for_balance: bool = False                # also store each caption's matches (balance fit --from-scan)
    hash_columns: tuple[str, ...] = ("URL",)  # for_balance: columns hashed beside each caption's text

    def check(self) -> "CountConfig":
        check_engine(self.engine, self.matcher, self.spark_conf)
        if not self.captions:
            raise UsageError(ERR_NO_INPUTS)
        return self


@dataclass
class CountResult:
    out: Path
    table: Any                     # pandas DataFrame (cooccurrence.parquet)
    run: dict[str, Any]            # run.json


def count_captions(config: CountConfig) -> CountResult:
    """Run `captions count`; see the module docstring."""
    from clipprobe._io import ensure_dir
    from clipprobe.captions.inputs import expand_inputs
    from clipprobe.captions.patterns import EngineSettings
    from clipprobe.captions.run import changed_since_last_run, merge_parts, plan_counts, prepare_scan, scan_counts
    from clipprobe.captions.scan import TermSpace
    from clipprobe.report.captions import write_heatmap, write_record, write_tables
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.resources.taxonomy import get_taxonomy
    from clipprobe.runinfo import StageTimer

    config.check()
    method = EngineSettings(matcher=config.matcher).method()    # the matcher that runs ('auto' resolved)
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
    recording = None
    if config.for_balance:
        from clipprobe._io import write_json
        from clipprobe.captions.matches import FOLDER, terms_file
        from clipprobe.captions.run import Recording

        recording = Recording((parts_dir / FOLDER).resolve(), fingerprint, tuple(config.hash_columns),
                              config.chunk_rows)
        ensure_dir(recording.folder)
        if not terms_file(recording.folder, fingerprint).exists():
            write_json(terms_file(recording.folder, fingerprint), space.to_dict())
    with timer("compile"):
        spec = prepare_scan(space, samples=config.samples, method=method, engine=config.engine,
                            workers=config.workers, record_columns=recording.columns if recording else ())

    skipped: list[dict[str, str]] = []
    with timer("plan"):
        done, todo = plan_counts(paths, parts_dir, term_set=fingerprint, text_column=config.text_column,
                                 samples=config.samples, strict=config.strict, skipped=skipped, recording=recording)
    changed = changed_since_last_run(out, todo)
    if changed:
        log.info("%d caption file(s) changed since the last run into %s (content fingerprint differs), scanned "
                 "again: %s", len(changed), out, ", ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
    log.info("%d files: %d done before, %d to scan, %d skipped", len(paths), len(done), len(todo), len(skipped))

    cpu_before = _cpu_seconds()
    with timer("scan"):
        worker_seconds = scan_counts(spec, space, todo, done, parts_dir, engine=config.engine,
                                     workers=config.workers or os.cpu_count() or 1, spark_master=config.spark_master,
                                     spark_conf=config.spark_conf, chunk_rows=config.chunk_rows,
                                     samples=config.samples, strict=config.strict, skipped=skipped,
                                     recording=recording)
    cpu_after = _cpu_seconds()
    scan_cpu = {k: round(cpu_after[k] - cpu_before[k], 3) for k in cpu_after} if cpu_after else None

    with timer("merge"):
        total, files = merge_parts(paths, done, parts_dir, space, config.samples)

    def record() -> dict[str, Any]:
        return _run_record(config, space, lexicon, taxonomy, fingerprint, files, skipped, total, timer,
                           worker_seconds, started, scan_cpu, method, recording)

    if not files:
        run_json = write_record(out, record())
        raise DataError(ERR_NOTHING_READ.format(n=len(skipped), run_json=run_json))
    # Nothing to associate: an error naming the input, not a table of undefined rows (no table is written)
    if total.n_captions == 0:
        run_json = write_record(out, record())
        raise DataError(ERR_NO_CAPTIONS.format(n_files=len(files), rows=sum(f["rows"] for f in files),
                                               run_json=run_json))
    if not total.n_group.any():
        raise DataError(ERR_LEXICON_NO_MATCH.format(name=lexicon.name, source=lexicon.source, n=total.n_captions))
    if not total.n_word.any():
        raise DataError(ERR_TAXONOMY_NO_MATCH.format(name=taxonomy.name, n_words=len(space.words),
                                                     n=total.n_captions))
    with timer("stats"):
        from clipprobe.analysis.cooccurrence import cooccurrence_table

        table = cooccurrence_table(space.words, space.groups, total.n_captions, total.n_word, total.n_group,
                                   total.n_both)
    with timer("write"):
        from clipprobe.captions.run import samples_frame
        from clipprobe.captions.scan import cap_samples

        write_tables(out, table, samples_frame(space, cap_samples(total.samples, config.samples)))
    with timer("figure"):
        write_heatmap(out, table, top=config.top_words)
    run = record()
    write_record(out, run)
    return CountResult(out=out, table=table, run=run)


def _input_files(config: CountConfig) -> dict[str, dict]:
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
                started, scan_cpu=None, matcher=None, recording=None) -> dict[str, Any]:
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
        for_balance=_recording_record(recording),
    )


def _recording_record(recording) -> dict[str, Any] | None:
    """What ``balance fit --from-scan`` reads of a scan's recording (None: none made)."""
    if recording is None:
        return None
    from clipprobe.captions.matches import FOLDER, MATCHES_FORMAT, terms_file

    return {"format": MATCHES_FORMAT, "folder": f"parts/{FOLDER}", "hash_columns": list(recording.columns),
            "chunk_rows": recording.chunk_rows,
            "terms": f"parts/{FOLDER}/{terms_file(recording.folder, recording.term_set).name}"}
