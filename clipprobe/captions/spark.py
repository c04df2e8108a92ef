"""The Spark engine: the same scan function, run in Spark tasks (optional extra ``spark``).

Each task scans one chunk (whole files or runs of row groups of one file) with
:func:`clipprobe.captions.scan.scan_chunk` and returns its count arrays; the
driver sums them per file, writes each finished file's part (so a rerun
resumes) and then the outputs, exactly as the local engine does. The compiled
Hyperscan database travels to the executors as a broadcast variable.

**What every executor needs.** The matcher is compiled code (Hyperscan, the
numba pass, pyarrow), so a zip of the sources (``spark.submit.pyFiles``) cannot
work: every node needs a Python of the driver's minor version with clipprobe
installed, plus the fsspec backend of the input URLs (``s3fs`` for ``s3://``,
``gcsfs`` for ``gs://``). The usual way is one packed environment shipped with
the job (``conda-pack`` or ``venv-pack``, then ``--spark-conf
spark.archives=ENV.tar.gz#environment`` and ``PYSPARK_PYTHON=./environment/bin/python``;
see docs/captions.md). Before any scan, a
one-task job (:func:`preflight`) imports clipprobe and its compiled parts on an
executor, builds the scan's worker state there and opens the backends; if any
of it fails, the run stops with one message saying what the nodes need.

Executors open the input paths themselves: local paths must be the same on
every node (a shared filesystem; they are made absolute on the driver), URLs
are read through fsspec with the executor's own credentials (environment,
instance role), not Spark's ``fs.s3a.*`` settings. With no ``--spark-master``
a ``local[N]`` session is started (N = ``--workers``). Tasks are submitted in
waves of about four per core so that finished files are stored while the job
runs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from typing import Iterator, Sequence

from clipprobe.errors import ClipprobeError

log = logging.getLogger(__name__)

SESSION_LOG_LEVEL = "WARN"      # Spark's log in sessions clipprobe starts (PySpark's own default)
ERR_NO_PYSPARK = "the spark engine needs pyspark (pip install 'clipprobe[spark]'): {why}"
ERR_EXECUTORS = ("the Spark executors cannot run the caption scan ({problems}); every node needs Python {python} "
                 "with clipprobe {version} and its compiled parts (pyarrow, hyperscan, numba){backends}: ship a "
                 "packed environment with spark.archives (venv-pack or conda-pack; docs/captions.md, 'Captions on a Spark "
                 "cluster') or install 'clipprobe[spark]' on every node")


def _scan_task(spec_value, task, fn=None):
    from clipprobe.captions.scan import _init_pool, _pool_task

    _init_pool(spec_value)
    return _pool_task(task, None, fn)


def spark_session(master: str | None, workers: int, conf: Sequence[str] = (), app_name: str = "clipprobe-captions"):
    """A SparkSession on ``master`` (default ``local[workers]``), with ``conf`` (``KEY=VALUE`` strings)
    set on it, e.g. ``spark.archives=clipprobe-env.tar.gz#environment``."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise ClipprobeError(ERR_NO_PYSPARK.format(why=err)) from None
    master = master or f"local[{max(1, workers)}]"
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")     # clipprobe shows its own progress
               .config("spark.sql.shuffle.partitions", str(max(1, workers))))
    for item in conf:
        key, _, value = item.partition("=")
        builder = builder.config(key.strip(), value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(SESSION_LOG_LEVEL)
    return spark


def _make_probe(spec_broadcast, modules: tuple[str, ...], driver: dict, setup: tuple[str, str] | None = None):
    """The function the pre-flight task runs on an executor.

    It is a closure, so Spark's cloudpickle sends it by value: the executor can run it (and report
    what is missing) even where clipprobe itself cannot be imported. ``setup``: (module, function) called
    with the broadcast value to build the task's state there (None: the caption scan's worker state).
    """

    def probe(_partition):
        import importlib
        import platform
        import socket
        import sys as executor_sys

        where = f"Python {platform.python_version()} at {executor_sys.executable} on {socket.gethostname()}"
        problems = []

        def need(name):
            try:
                importlib.import_module(name)
                return True
            except Exception as err:  # each missing piece is reported, not raised
                problems.append(f"{name}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
                return False

        if need("clipprobe"):
            import clipprobe

            if clipprobe.__version__ != driver["version"]:
                problems.append(f"clipprobe {clipprobe.__version__} (the driver has {driver['version']})")
            for name in modules:
                need(name)
            if not problems:
                try:     # the worker state of the scan: loads the Hyperscan database, compiles the pass
                    if setup is None:
                        from clipprobe.captions.scan import _Worker

                        _Worker.get(spec_broadcast.value)
                    else:
                        getattr(importlib.import_module(setup[0]), setup[1])(spec_broadcast.value)
                except Exception as err:  # reported to the driver as one line
                    what = "scan set-up" if setup is None else "set-up"
                    problems.append(f"{what}: {type(err).__name__}: {' '.join(str(err).split())[:200]}")
        yield {"where": where, "problems": problems}

    return probe


_EXCEPTION_LINE = re.compile(r"^((?:\w+\.)*\w*(?:Error|Exception)): (.*)$")


def _short(text: str) -> str:
    return " ".join(text.split())[:300]


def _task_error(err: BaseException) -> str:
    """What failed in a Spark job, in the executor's own words: the exception line of the Python
    worker's traceback, else the task's failure (e.g. ``java.io.IOException: Cannot run program``)."""
    text = str(err)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "Traceback (most recent call last)" in line:
            for later in lines[i + 1:]:
                m = _EXCEPTION_LINE.match(later)
                if m:
                    return _short(f"{m.group(1).rsplit('.', 1)[-1]}: {m.group(2)}")
            break
    m = re.search(r"most recent failure: .*?\): (.+)", text)
    if m:
        return _short(m.group(1))
    return _short(next((line for line in lines if line.strip()), type(err).__name__))


@contextlib.contextmanager
def _quiet(sc, after: str | None):
    """Spark's log at FATAL for the block, then ``after`` (None: the log is left alone): a failing
    pre-flight task would log its traceback twice, and the error message says it all."""
    if after:
        sc.setLogLevel("FATAL")
    try:
        yield
    finally:
        if after:
            sc.setLogLevel(after)


def preflight(sc, spec_broadcast, *, method: str, backends: Sequence[str] = (), log_level: str | None = None,
              modules: Sequence[str] | None = None, setup: tuple[str, str] | None = None,
              message: str = ERR_EXECUTORS) -> None:
    """Run one task that sets up the scan on an executor; raise :class:`ClipprobeError` (``message``,
    by default ERR_EXECUTORS) with what is missing there. ``backends``: fsspec backend packages the
    inputs need (``s3fs``, ...). ``log_level``: Spark's log level to restore after the task (None:
    Spark's log is not quietened). Another pass than the caption scan gives its own ``modules`` and
    ``setup`` (see :func:`_make_probe`) and message (the same fields)."""
    import platform

    from clipprobe import __version__

    if modules is None:
        modules = ("pyarrow.parquet", "hyperscan", "clipprobe.captions.scan",
                   *(("numba",) if method == "tokens" else ()))
    probe = _make_probe(spec_broadcast, (*modules, *backends), {"version": __version__}, setup)
    try:
        with _quiet(sc, log_level):
            reports = sc.parallelize([0], 1).mapPartitions(probe).collect()
    except Exception as err:  # the task could not even start (e.g. no such Python, another version)
        problems = _task_error(err)
    else:
        problems = "; ".join(f"{r['where']}: {', '.join(r['problems'])}" for r in reports if r["problems"])
    if problems:
        extra = f" and {', '.join(backends)}" if backends else ""
        raise ClipprobeError(message.format(problems=problems, python=".".join(platform.python_version_tuple()[:2]),
                                            version=__version__, backends=extra))
    log.info("Spark executors can run the %s (checked on one executor)", "scan" if setup is None else "pass")


def run_spark(spec, tasks: Sequence[tuple], *, master: str | None, workers: int,
              task_file: Sequence[int] | None = None, session=None, backends: Sequence[str] = (),
              conf: Sequence[str] = (), fn=None) -> Iterator[tuple[int, object, str | None]]:
    """Yield (task id, ChunkCounts or None, error or None) for every task, wave by wave, after
    :func:`preflight` passed. ``fn``: a module-level chunk function run instead of the count scan
    (see :func:`clipprobe.captions.scan.run_local`)."""
    spark = session or spark_session(master, workers, conf)
    sc = spark.sparkContext
    own_log = None if session is not None else SESSION_LOG_LEVEL
    broadcast = sc.broadcast(spec)
    try:
        if tasks:
            preflight(sc, broadcast, method=spec.method, backends=backends, log_level=own_log)
        wave_size = max(1, 4 * sc.defaultParallelism)
        waves: list[list[tuple]] = []
        current: list[tuple] = []
        for i, task in enumerate(tasks):
            # never split a file across waves when it fits: its part is written as soon as the wave ends
            boundary = task_file is None or i == 0 or task_file[i] != task_file[i - 1]
            if len(current) >= wave_size and boundary:
                waves.append(current)
                current = []
            current.append(task)
        if current:
            waves.append(current)
        for wave in waves:
            rdd = sc.parallelize(wave, numSlices=len(wave))
            for result in rdd.map(lambda t: _scan_task(broadcast.value, t, fn)).collect():
                yield result
    finally:
        broadcast.unpersist()
