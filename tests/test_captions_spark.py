"""The Spark engine (local[2]) gives the same counts and samples as the local engine (slow: a JVM)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_captions_count import LEXICON, TAXONOMY, TRAPS

from clipprobe.pipeline.captions import CountConfig, count_captions
from clipprobe.captions.synth import write_laion_parquet

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java"),
              pytest.mark.slow]  # starting a JVM takes 20-30 s


def test_spark_local2_equals_local_engine(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    for i in range(2):
        write_laion_parquet(tmp_path / f"p{i}.parquet", TRAPS + ["terrorist man", "Arab nurse", None] * (i + 1),
                            row_group_size=20, seed=i)
    (tmp_path / "zz.parquet").write_bytes(b"PAR1broken")
    common = dict(captions=(str(tmp_path / "*.parquet"),), taxonomy=str(tmp_path / "tax.yaml"),
                  lexicon=str(tmp_path / "lex.yaml"), samples=3, chunk_rows=30)
    local = count_captions(CountConfig(out=str(tmp_path / "local"), workers=1, **common))
    spark = count_captions(CountConfig(out=str(tmp_path / "spark"), engine="spark", workers=2, **common))
    pd.testing.assert_frame_equal(local.table, spark.table)
    assert spark.run["engine"] == "spark" and len(spark.run["skipped"]) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "spark" / "samples.parquet"))
    assert local.table.n_both.sum() > 0


def test_executors_without_clipprobe_fail_the_preflight_with_one_message(tmp_path):
    """local[2] whose executor Python is a bare venv: one line saying what every node needs, nothing scanned."""
    import os
    import platform
    import subprocess
    import sys

    from clipprobe import __version__
    from clipprobe.captions.spark import ERR_EXECUTORS

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = tmp_path / "bare" / "bin" / "python"
    write_laion_parquet(tmp_path / "a.parquet", TRAPS)
    env = dict(os.environ, PYSPARK_PYTHON=str(bare))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-c", "from clipprobe.cli import main; main()", "captions", "count",
                        "--captions", str(tmp_path / "a.parquet"), "--out", str(out), "--engine", "spark",
                        "--workers", "2"], env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    problem = f"Python {platform.python_version()} at {bare} on "
    last = r.stderr.strip().splitlines()[-1]
    expected = "Error: " + ERR_EXECUTORS.format(problems="PROBLEMS", python=".".join(platform.python_version_tuple()[:2]),
                                                 version=__version__, backends="")
    head, tail = expected.split("PROBLEMS")
    assert last.startswith(head + problem) and last.endswith(": clipprobe: ModuleNotFoundError: No module named "
                                                             "'clipprobe'" + tail), last
    assert "Traceback" not in r.stderr and "Py4J" not in r.stderr
    assert not (out / "cooccurrence.parquet").exists() and not list((out / "parts").glob("*.npz"))

    # --spark-conf reaches the executors: the same bare Python, given clipprobe and its dependencies on its
    # path, runs the scan and counts what the local engine counts
    import site
    from pathlib import Path

    import clipprobe

    path = os.pathsep.join([str(Path(clipprobe.__file__).resolve().parents[1]), *site.getsitepackages()])
    r = subprocess.run([sys.executable, "-c", "from clipprobe.cli import main; main()", "captions", "count",
                        "--captions", str(tmp_path / "a.parquet"), "--out", str(out), "--engine", "spark",
                        "--workers", "2", "--spark-conf", f"spark.executorEnv.PYTHONPATH={path}"],
                       env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    local = count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / "local"),
                                       workers=1))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "cooccurrence.parquet"), local.table)
