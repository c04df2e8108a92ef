"""`balance fit` on Spark (local[2]) equals the local engine; Ctrl-C and kill -9 leave a run that resumes
to the uninterrupted run's files, byte for byte (slow: a JVM, and real processes on 2.4M captions).

The seed of the kill points is printed on failure; set CLIPPROBE_KILL_SEED to replay a failing one.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from test_captions_count import LEXICON, TAXONOMY
from test_captions_interrupt import DEFAULT_SIGINT, Run, kill_at_random_points, wait_for, write_files

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

CLI = (DEFAULT_SIGINT + "from clipprobe.cli import cli, main\nfrom clipprobe.cli.balance import balance\n"
       "if 'balance' not in cli.commands:\n    cli.add_command(balance)\nmain()")
OUTPUTS = ("bias_groups.parquet", "bias_cells.parquet", "patterns.parquet", "residuals.parquet",
           "convergence.parquet")
KILLS = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance-engines")
    (root / "tax.yaml").write_text(TAXONOMY)
    (root / "lex.yaml").write_text(LEXICON)
    write_files(root / "data", n_files=8, rows=300_000, seed=2)
    return root


def command(root, out, *extra):
    return [sys.executable, "-c", CLI, "-vv", "balance", "fit", "--captions", str(root / "data" / "*.parquet"),
            "--out", str(out), "--taxonomy", str(root / "tax.yaml"), "--lexicon", str(root / "lex.yaml"),
            "--labels", "all", "--keep", "0.8", "--eps-r", "0.02", "--eps-a", "0.02", "--key", "none",
            "--workers", "2", "--no-figure", *extra]


def same_outputs(out, reference, context=""):
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs {context}"
    a = sorted((out / "weights.parquet").iterdir())
    b = sorted((reference / "weights.parquet").iterdir())
    assert [p.name for p in a] == [p.name for p in b], context
    for x, y in zip(a, b):
        assert x.read_bytes() == y.read_bytes(), f"{x.name} differs {context}"


@pytest.fixture(scope="module")
def reference(root, tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "out"
    t0 = time.monotonic()
    done = subprocess.run(command(root, out), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return out, time.monotonic() - t0


@pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")
def test_spark_local2_equals_local_engine(tmp_path):
    pytest.importorskip("pyspark")
    import numpy as np
    from test_balance_pipeline import LABELS, config, make_captions
    from test_balance_pipeline import LEXICON as LEX
    from test_balance_pipeline import TAXONOMY as TAX

    from clipprobe.captions.patterns import EngineSettings
    from clipprobe.captions.synth import write_laion_parquet
    from clipprobe.pipeline.balance import fit_balance

    (tmp_path / "lex.yaml").write_text(LEX)
    (tmp_path / "tax.yaml").write_text(TAX)
    (tmp_path / "labels.txt").write_text("\n".join(LABELS))
    rng = np.random.default_rng(11)
    for i in range(3):
        write_laion_parquet(tmp_path / "data" / f"p{i}.parquet", make_captions(900, rng), row_group_size=150, seed=i)
    local = fit_balance(config(tmp_path, tmp_path / "local", engine=EngineSettings(workers=1, chunk_rows=300)))
    spark = fit_balance(config(tmp_path, tmp_path / "spark", engine=EngineSettings(engine="spark", workers=2,
                                                                                   chunk_rows=300)))
    assert spark.run["engine"] == "spark"
    # the keep flags: round(q x count) per pattern, found by the rank passes on each engine, bit for bit alike
    assert spark.run["rows_scanned_this_run"]["ranks"] > 0 and local.run["rows_scanned_this_run"]["ranks"] > 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "weights.parquet"),
                                  pd.read_parquet(tmp_path / "spark" / "weights.parquet"))
    from clipprobe.analysis.keepflags import flag_counts

    patterns = pd.read_parquet(tmp_path / "spark" / "patterns.parquet")
    np.testing.assert_array_equal(patterns["kept"], flag_counts(spark.solution))
    pd.testing.assert_frame_equal(local.groups, spark.groups)
    pd.testing.assert_frame_equal(local.cells, spark.cells)


def test_killed_runs_resume_to_the_uninterrupted_result(root, reference, tmp_path):
    ref, whole = reference
    seed = int(os.environ.get("CLIPPROBE_KILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    out = tmp_path / "killed"
    kills = kill_at_random_points(command(root, out), rng=rng, whole=whole, times=KILLS, seed=seed)
    final = subprocess.run(command(root, out), capture_output=True, text=True, timeout=900)
    assert final.returncode == 0, final.stderr
    same_outputs(out, ref, f"(seed {seed}, kills at {kills} s of a {whole:.1f} s run)")


def test_ctrl_c_stops_promptly_and_the_rerun_finishes_the_same(root, reference, tmp_path):
    ref, _ = reference
    out = tmp_path / "out"
    run = Run(command(root, out))
    wait_for(lambda: len(list((out / "parts" / "patterns").glob("*.npz"))) >= 1 or run.proc.poll() is not None, 600,
             "the first counted file")
    assert run.proc.poll() is None, "".join(run.lines)
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    rc = run.wait(timeout=120)
    err = "".join(run.lines)
    assert rc == 130, err
    assert time.monotonic() - t0 < 30
    assert "Traceback" not in err and "Interrupted; finished work is kept" in err
    assert not (out / "run.json").exists() and not (out / "weights.parquet").exists()
    assert len(list((out / "parts" / "patterns").glob("*.npz"))) < 8
    rerun = subprocess.run(command(root, out), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr
    same_outputs(out, ref)
