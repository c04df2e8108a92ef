"""The attribute pass on Spark (optional extra ``spark``): one task per shard.

The driver checks the folder, loads the model, computes the class vectors and finds the shards not done
yet (exactly as the local engine, :func:`clipprobe.pipeline.attributes.run_attributes`); each shard then
becomes one Spark task running :func:`~clipprobe.pipeline.attributes.run_shard_job`: the executor
memory-maps its shard, classifies it block by block and writes the shard's attribute file atomically
under ``OUT/shards/`` itself, so a rerun resumes with the shards already written, whichever engine wrote
them (the files are the local engine's, byte for byte apart from the timings they record). A task
returns only the shard's counts.

**What every executor needs**: a Python of the driver's minor version with clipprobe and its compiled
parts (numba, pyarrow; Hyperscan with a lexicon), and the embedding folder and the output folder at the
same paths as on the driver (a shared filesystem; paths are made absolute on the driver). Before any
shard, a one-task job (:func:`clipprobe.captions.spark.preflight`) imports all that on an executor,
compiles the scores kernel and opens the first shard; if any of it fails, the run stops with one
message saying what the nodes need. Session set-up (``--spark-master``, ``--spark-conf``) is the
caption engine's (:func:`clipprobe.captions.spark.spark_session`).

A shard whose invalid rows stop the run (``nan_rows="error"``) is reported by its task; the run raises
the first such shard's message (in partition order) once the job is over, keeping the shards written.
"""

from __future__ import annotations

import logging
from typing import Sequence

from clipprobe.errors import ClipprobeError, DataError

log = logging.getLogger(__name__)

ERR_EXECUTORS = ("the Spark executors cannot run the attribute pass ({problems}); every node needs Python {python} "
                 "with clipprobe {version} and its compiled parts (numpy, numba, pyarrow){backends}, and the "
                 "embedding and output folders at the driver's paths: ship a packed environment with "
                 "spark.archives (venv-pack or conda-pack; docs/captions.md, 'Captions on a Spark cluster') or "
                 "install 'clipprobe[spark]' on every node")
ERR_TASK = "the attribute pass failed on Spark: {why}"
MODULES = ("numpy", "numba", "pyarrow.parquet", "clipprobe.pipeline.attributes", "clipprobe.analysis._zskernel")


def executor_setup(job) -> None:
    """Run on an executor by the pre-flight task: the shard is readable there, the output folder
    writable, the scores kernel compiled (or loaded from its cache) on a few of the shard's rows."""
    import os
    from pathlib import Path

    from clipprobe.analysis.zeroshot import classify
    from clipprobe.embeddings.external import EmbeddingFolder

    folder = EmbeddingFolder(root=Path(job.root), kind="img", shards=(job.shard,), dim=job.shard.dim, columns=())
    dest = Path(job.dest).parent
    dest.mkdir(parents=True, exist_ok=True)
    if not os.access(dest, os.W_OK):
        raise OSError(f"cannot write in {dest}")
    with folder.reader(job.shard) as rows:
        classify(rows.array[:8], job.classes, n_groups=len(job.groups), scale=job.scale, threshold=job.threshold)


def _task(run, job):
    """One shard on an executor (``run``: :func:`~clipprobe.pipeline.attributes.run_shard_job`):
    ``(number, counts, None)``, or ``(number, None, message)`` for a shard the pass refuses (a
    DataError, e.g. invalid rows)."""
    try:
        return job.shard.number, run(job), None
    except DataError as err:
        return job.shard.number, None, str(err)


def run_jobs_spark(run, jobs: Sequence, *, master: str | None, workers: int, conf: Sequence[str] = (),
                   session=None) -> dict[int, dict]:
    """Run the shard jobs (:class:`~clipprobe.pipeline.attributes.ShardJob`) with ``run``
    (:func:`~clipprobe.pipeline.attributes.run_shard_job`, sent to the executors by reference) as Spark
    tasks after the pre-flight; each shard's counts by its number."""
    from clipprobe.captions.spark import SESSION_LOG_LEVEL, _task_error, preflight, spark_session

    if not jobs:
        return {}
    spark = session or spark_session(master, workers, conf, app_name="clipprobe-attributes")
    sc = spark.sparkContext
    broadcast = sc.broadcast(jobs[0])
    backends = ("hyperscan",) if jobs[0].lexicon is not None else ()
    try:
        preflight(sc, broadcast, method="tokens", backends=backends,
                  log_level=None if session is not None else SESSION_LOG_LEVEL, modules=MODULES,
                  setup=("clipprobe.pipeline.attrspark", "executor_setup"), message=ERR_EXECUTORS)
    finally:
        broadcast.unpersist()
    log.info("attribute pass on Spark: %d shard(s), one task each", len(jobs))
    try:
        done = sc.parallelize(list(jobs), numSlices=len(jobs)).map(lambda job: _task(run, job)).collect()
    except Exception as err:  # a task failed outside the pass's own checks (e.g. a node lost a file)
        raise ClipprobeError(ERR_TASK.format(why=_task_error(err))) from None
    errors = sorted((number, message) for number, _, message in done if message is not None)
    if errors:
        raise DataError(errors[0][1])
    return {number: counts for number, counts, _ in done}
