"""The Spark engine: the same scan function, run in Spark tasks (optional extra ``spark``).

Each task scans one chunk (whole files or runs of row groups of one file) with
:func:`clipprobe.captions.scan.scan_chunk` and returns its count arrays; the
driver sums them per file, writes each finished file's part (so a rerun
resumes) and then the outputs, exactly as the local engine does. The compiled
Hyperscan database travels to the executors as a broadcast variable.

Executors must be able to import clipprobe (``pip install clipprobe[spark]``
on every node, or ship a zip with ``spark.submit.pyFiles``) and to open the
input paths (shared filesystem or an fsspec URL such as ``s3://``). With no
``--spark-master`` a ``local[N]`` session is started (N = ``--workers``).
Tasks are submitted in waves of about four per core so that finished files are
stored while the job runs.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Iterator, Sequence

from clipprobe.errors import ClipprobeError

log = logging.getLogger(__name__)

ERR_NO_PYSPARK = "the spark engine needs pyspark (pip install 'clipprobe[spark]'): {why}"


def _scan_task(spec_value, task):
    from clipprobe.captions.scan import _init_pool, _pool_task

    _init_pool(spec_value)
    return _pool_task(task)


def spark_session(master: str | None, workers: int):
    """A SparkSession on ``master`` (default ``local[workers]``)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as err:
        raise ClipprobeError(ERR_NO_PYSPARK.format(why=err)) from None
    master = master or f"local[{max(1, workers)}]"
    if master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    builder = (SparkSession.builder.master(master).appName("clipprobe-captions")
               .config("spark.ui.enabled", "false")
               .config("spark.sql.shuffle.partitions", str(max(1, workers))))
    return builder.getOrCreate()


def run_spark(spec, tasks: Sequence[tuple], *, master: str | None, workers: int,
              task_file: Sequence[int] | None = None, session=None,
              ) -> Iterator[tuple[int, object, str | None]]:
    """Yield (task id, ChunkCounts or None, error or None) for every task, wave by wave."""
    spark = session or spark_session(master, workers)
    sc = spark.sparkContext
    broadcast = sc.broadcast(spec)
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
    try:
        for wave in waves:
            rdd = sc.parallelize(wave, numSlices=len(wave))
            for result in rdd.map(lambda t: _scan_task(broadcast.value, t)).collect():
                yield result
    finally:
        broadcast.unpersist()
