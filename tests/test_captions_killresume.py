"""Kill -9 `captions count` at random points, resume, and get the uninterrupted run's files bit for bit.

The seed of the kill points is printed on failure; set CLIPPROBE_KILL_SEED to replay a failing one.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest
from test_captions_count import LEXICON, TAXONOMY
from test_captions_interrupt import command, kill_at_random_points, write_files

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
    kills = kill_at_random_points(command(root, out, *extra), rng=rng, whole=whole, times=KILLS, seed=seed)
    final = subprocess.run(command(root, out, *extra), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    context = f"seed {seed}, kills at {kills} s of a {whole:.1f} s run"
    for name in OUTPUTS:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), f"{name} differs ({context})"
    assert _record(out) == _record(reference), context
