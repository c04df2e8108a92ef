"""The first `captions count` on a machine compiles the token pass (about a minute): it says so, with progress."""

from __future__ import annotations

import logging
import time

import pytest

from clipprobe.captions import run


def test_a_slow_compile_is_announced_with_progress(caplog, tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "empty-cache"))    # nothing compiled yet
    caplog.set_level(logging.INFO, logger="clipprobe.captions.run")
    with run.compile_notice(after=0.05, every=0.1):
        time.sleep(0.45)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("compiling the caption kernels once (about a minute; later runs load them from ")
    still = [m for m in messages if m.startswith("still preparing the caption kernels (")]
    assert 2 <= len(still) <= 4
    assert messages[-1].startswith("caption kernels ready in ")


def test_a_slow_load_from_the_cache_is_not_called_a_compile(caplog, tmp_path, monkeypatch):
    from clipprobe._jitcache import cache_dir

    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache"))
    caplog.set_level(logging.INFO, logger="clipprobe.captions.run")
    (cache_dir() / "analysis_abc").mkdir(parents=True)      # another module's kernels are not the caption kernels
    (cache_dir() / "analysis_abc" / "_eatkernel.exact_counts-1.py311.nbi").write_bytes(b"index")
    with run.compile_notice(after=0.05, every=10):
        time.sleep(0.2)
    assert caplog.records[0].getMessage().startswith("compiling the caption kernels once")
    caplog.clear()
    (cache_dir() / "captions_abc").mkdir(parents=True)
    (cache_dir() / "captions_abc" / "tokens.count-1.py311.nbi").write_bytes(b"index")
    with run.compile_notice(after=0.05, every=10):
        time.sleep(0.2)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == f"loading the compiled caption kernels from {cache_dir()} ..."


def test_a_quick_load_from_the_cache_says_nothing(caplog):
    caplog.set_level(logging.INFO, logger="clipprobe.captions.run")
    with run.compile_notice(after=5.0):
        pass
    assert caplog.records == []


@pytest.mark.slow
def test_captions_count_wraps_the_compile_in_the_notice(tmp_path, caplog, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from click.testing import CliRunner

    from clipprobe.captions import scan
    from clipprobe.cli import cli

    real = scan.prepare_worker

    def slow(*args, **kwargs):
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(scan, "prepare_worker", slow)
    monkeypatch.setattr(run, "NOTICE_AFTER_S", 0.05)
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"TEXT": ["a nurse and a woman", "a man"] * 20}), path)
    taxonomy = tmp_path / "small.yaml"
    taxonomy.write_text("name: small\ncategories:\n  jobs: [nurse, doctor]\n")
    caplog.set_level(logging.INFO, logger="clipprobe.captions.run")
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(path), "--taxonomy", str(taxonomy),
                                 "--out", str(tmp_path / "out"), "--workers", "1"])
    assert r.exit_code == 0, r.output
    assert any(m.getMessage().startswith(("compiling the caption kernels once", "loading the compiled caption"))
               for m in caplog.records)
