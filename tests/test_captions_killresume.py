"""Kill -9 `captions count` at random points, resume, and get the uninterrupted run's files bit for bit.

The seed of the kill points is printed on failure; set CLIPPROBE_KILL_SEED to replay a failing one.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
from test_captions_count import LEXICON, TAXONOMY
from test_captions_interrupt import alive, children, command, write_files

pytestmark = [pytest.mark.slow,       # a dozen runs of the command on 2.4M captions
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")]

KILLS = 6
OUTPUTS = ("cooccurrence.parquet", "samples.parquet", "lift_heatmap.png")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("killresume")
    (root / "tax.yaml").write_text(TAXONOMY)
    (root / "lex.yaml").write_text(LEXICON)
    write_files(root / "data", n_files=8, rows=300_000, seed=1)
    return root


def _record(out):
    run = json.loads((out / "run.json").read_text())
    return {k: run[k] for k in ("files", "rows", "captions", "nulls", "row_groups", "term_set", "skipped")}


@pytest.mark.parametrize("matcher", ["tokens", "hyperscan"])
def test_killed_runs_resume_to_the_uninterrupted_result(root, tmp_path, matcher):
    seed = int(os.environ.get("CLIPPROBE_KILL_SEED", random.SystemRandom().randrange(2**32)))
    rng = random.Random(seed)
    extra = ("--matcher", matcher, "--workers", "2")
    reference = tmp_path / "reference"
    t0 = time.monotonic()
    done = subprocess.run(command(root, reference, *extra), capture_output=True, text=True, timeout=600)
    whole = time.monotonic() - t0
    assert done.returncode == 0, done.stderr

    out = tmp_path / "killed"
    kills = []
    for _ in range(KILLS):
        proc = subprocess.Popen(command(root, out, *extra), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        at = rng.uniform(0.0, whole)
        workers: set[int] = set()
        end = time.monotonic() + at
        while time.monotonic() < end and proc.poll() is None:
            workers |= children(proc.pid)
            time.sleep(0.01)
        if proc.poll() is not None:          # finished before the kill point: nothing left to interrupt
            break
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        kills.append(round(at, 2))
        deadline = time.monotonic() + 15
        while any(alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not any(alive(p) for p in workers), f"workers outlived the killed run (seed {seed})"
    final = subprocess.run(command(root, out, *extra), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    context = f"seed {seed}, kills at {kills} s of a {whole:.1f} s run"
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs ({context})"
    assert _record(out) == _record(reference), context
