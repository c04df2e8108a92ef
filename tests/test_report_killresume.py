"""Kill -9 `clipprobe report` at random points, resume, and get the uninterrupted run's files bit for bit.

A tiny real model and a generated FairFace-layout dataset; the killed runs start from an empty
embedding cache, so the kill points fall in every stage (embedding, scoring chunks of words, the
tables, figures, HTML). The seed of the kill points is printed on failure; set CLIPPROBE_KILL_SEED to
replay a failing one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from facegen import write_fairface

pytestmark = pytest.mark.slow   # seven runs of the command, about half a minute each on a loaded 2-core machine

KILLS = 5
TABLES = ("groups.parquet", "words.parquet", "summary.csv")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory, tiny_model_files):
    root = tmp_path_factory.mktemp("report-killresume")
    return {"faces": write_fairface(root / "fairface", n=150, size=36, corrupt=(7,)), "model": tiny_model_files}


def _command(data, out: Path, cache: Path) -> list[str]:
    config, weights, arch = data["model"]
    return [sys.executable, "-c", "from clipprobe.cli import main; main()", "report",
            "--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{data['faces']}",
            "--cache-dir", str(cache), "--device", "cpu", "--workers", "1", "--batch-size", "16",
            "--k", "10", "--bootstrap", "50", "--permutations", "50", "--seed", "1", "--out", str(out)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def test_killed_reports_resume_to_the_uninterrupted_result(data, tmp_path):
    from clipprobe.report.store import load_report

    seed = int(os.environ.get("CLIPPROBE_KILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    done = subprocess.run(_command(data, reference, tmp_path / "cache-reference"), capture_output=True, text=True,
                          timeout=600, env=_env(), check=False)
    whole = time.monotonic() - t0
    assert done.returncode == 0, done.stderr[-3000:]

    out, cache = tmp_path / "killed", tmp_path / "cache-killed"
    kills = []
    for _ in range(KILLS):
        proc = subprocess.Popen(_command(data, out, cache), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=_env(), start_new_session=True)
        at = rng.uniform(0.0, whole)
        try:
            proc.wait(timeout=at)
            break                               # finished before the kill point: nothing left to interrupt
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)    # the command and its image-decoding worker
        proc.wait(timeout=30)
        kills.append(round(at, 2))
    context = f"seed {seed}, kills at {kills} s of a {whole:.1f} s run"
    final = subprocess.run(_command(data, out, cache), capture_output=True, text=True, timeout=600, env=_env(),
                           check=False)
    assert final.returncode == 0, f"{context}: {final.stderr[-3000:]}"

    for name in TABLES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs ({context})"
    figures = sorted(p.name for p in (reference / "figures").iterdir())
    assert sorted(p.name for p in (out / "figures").iterdir()) == figures, f"figures/ differs ({context})"
    for name in figures:
        assert (out / "figures" / name).read_bytes() == (reference / "figures" / name).read_bytes(), (
            f"figures/{name} differs ({context})")
    load_report(out)   # run.json's checksums match the tables: not a mixed folder
    assert (out / "report.html").stat().st_size > 0
