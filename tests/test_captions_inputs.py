"""`captions count` inputs: folders, path spellings, fsspec URLs, caption column types (issues 11 and 12)."""

from __future__ import annotations

import logging
import os
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_captions_count import EXTRA, LEXICON, TAXONOMY, TRAPS, _check_against_oracle

from clipprobe.captions import inputs
from clipprobe.pipeline.captions import CountConfig, count_captions
from clipprobe.captions.synth import write_laion_parquet
from clipprobe.cli import cli
from clipprobe.errors import DataError, UsageError

CAPTIONS = TRAPS + EXTRA


@pytest.fixture()
def setup(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    return tmp_path


def _count(root, captions, out="out", **kw):
    base = dict(captions=tuple(captions), out=str(root / out), taxonomy=str(root / "tax.yaml"),
                lexicon=str(root / "lex.yaml"), workers=1, samples=2)
    base.update(kw)
    return count_captions(CountConfig(**base))


def _cli(root, *args):
    return CliRunner().invoke(cli, ["captions", "count", "--taxonomy", str(root / "tax.yaml"),
                                    "--lexicon", str(root / "lex.yaml"), "--workers", "1", *args])


# --- folders and path spellings ----------------------------------------------------------------

def test_a_folder_is_its_parquet_files(setup):
    data = setup / "laion"
    (data / "year=2021").mkdir(parents=True)
    (data / ".hidden").mkdir()
    write_laion_parquet(data / "part-0.parquet", CAPTIONS[:40])
    write_laion_parquet(data / "year=2021" / "part-1.parquet", CAPTIONS[40:])
    write_laion_parquet(data / ".hidden" / "part-2.parquet", ["terrorist man"] * 5)   # not data
    write_laion_parquet(data / ".part-3.parquet", ["terrorist man"] * 5)
    (data / "_SUCCESS").write_text("")
    (data / "notes.txt").write_text("not parquet")
    result = _count(setup, [str(data)])
    assert [os.path.relpath(f["path"], data) for f in result.run["files"]] == [
        "part-0.parquet", os.path.join("year=2021", "part-1.parquet")]
    assert result.run["skipped"] == []
    _check_against_oracle(result.table, CAPTIONS)
    (setup / "empty").mkdir()
    with pytest.raises(UsageError) as err:
        _count(setup, [str(setup / "empty")], out="out2")
    assert str(err.value) == inputs.ERR_EMPTY_FOLDER.format(pattern=str(setup / "empty"))


def test_resume_does_not_depend_on_how_the_path_is_spelled(setup, monkeypatch):
    (setup / "data").mkdir()
    write_laion_parquet(setup / "data" / "a.parquet", CAPTIONS)
    monkeypatch.chdir(setup)
    first = _count(setup, ["data/a.parquet"])
    assert first.run["rows_scanned_this_run"] == len(CAPTIONS)
    assert first.run["files"][0]["path"] == str(setup / "data" / "a.parquet")
    for spelling in (str(setup / "data" / "a.parquet"), "./data/../data//a.parquet", "data/*.parquet",
                     f"file://{setup}/data/a.parquet"):
        again = _count(setup, [spelling])
        assert again.run["rows_scanned_this_run"] == 0, spelling          # resumed from the first run's part
        pd.testing.assert_frame_equal(again.table, first.table)


def test_footers_are_read_in_parallel_in_input_order(setup, monkeypatch):
    import threading
    import time

    from clipprobe.captions import run as runmod

    (setup / "data").mkdir()
    for i in range(6):
        write_laion_parquet(setup / "data" / f"p{i}.parquet", CAPTIONS[i::6])
    (setup / "data" / "p3.parquet").write_bytes(b"PAR1 broken")
    active, peak, lock = [0], [0], threading.Lock()
    real = inputs.open_parquet

    def slow_open(path, metadata=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.2)          # an object store's latency
            return real(path, metadata)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(inputs, "open_parquet", slow_open)
    result = _count(setup, [str(setup / "data")])
    assert peak[0] > 1
    assert [os.path.basename(f["path"]) for f in result.run["files"]] == [f"p{i}.parquet" for i in (0, 1, 2, 4, 5)]
    assert [os.path.basename(s["path"]) for s in result.run["skipped"]] == ["p3.parquet"]
    assert runmod.FOOTER_THREADS > 1
    with pytest.raises(DataError, match="p3.parquet: not a readable parquet file"):
        _count(setup, [str(setup / "data")], out="strict", strict=True)


# --- fsspec URLs -----------------------------------------------------------------------------

@pytest.mark.parametrize("url, package, extra", [("s3://bucket/laion/*.parquet", "s3fs", "s3"),
                                                 ("gs://bucket/laion/part-0.parquet", "gcsfs", "gcs"),
                                                 ("s3a://bucket/laion", "s3fs", "s3")])
def test_url_without_its_filesystem_package_is_a_one_line_error(setup, monkeypatch, url, package, extra):
    pytest.importorskip("fsspec")
    import importlib

    protocol = url.split("://")[0]
    monkeypatch.setitem(sys.modules, package, None)                 # as if it were not installed
    monkeypatch.delitem(importlib.import_module("fsspec.registry")._registry, protocol, raising=False)
    r = _cli(setup, "--captions", url, "--out", str(setup / "out"))
    assert r.exit_code == 1, r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert lines == ["Error: " + inputs.ERR_BACKEND.format(url=url, protocol=protocol, package=package,
                                                            install=f"'clipprobe[{extra}]'")]
    assert "every executor" in lines[0]


def test_unknown_url_scheme_is_a_usage_error(setup):
    pytest.importorskip("fsspec")
    with pytest.raises(UsageError) as err:
        _count(setup, ["nosuchfs://bucket/x.parquet"])
    assert str(err.value) == inputs.ERR_UNKNOWN_PROTOCOL.format(url="nosuchfs://bucket/x.parquet", protocol="nosuchfs")


def test_fsspec_urls_are_read(setup):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    table = pa.table({"TEXT": pa.array(CAPTIONS, pa.string())})
    for name in ("bucket/laion/part-0.parquet", "bucket/laion/sub/part-1.parquet"):
        with fs.open(name, "wb") as fh:
            pq.write_table(table, fh)
    with fs.open("bucket/laion/_SUCCESS", "wb") as fh:
        fh.write(b"")
    try:
        result = _count(setup, ["memory://bucket/laion"])
    finally:
        fs.rm("bucket", recursive=True)
    assert [f["path"] for f in result.run["files"]] == ["memory:///bucket/laion/part-0.parquet",
                                                         "memory:///bucket/laion/sub/part-1.parquet"]
    _check_against_oracle(result.table, CAPTIONS + CAPTIONS)


# --- caption column types ----------------------------------------------------------------------

def _write(path, array):
    pq.write_table(pa.table({"URL": pa.array([f"u{i}" for i in range(len(array))]), "TEXT": array}), path)


@pytest.mark.parametrize("kind", ["string_view", "large_string", "dictionary"])
def test_string_kinds_are_counted_with_samples(setup, kind):
    array = {"string_view": pa.array(CAPTIONS, pa.string_view()),
             "large_string": pa.array(CAPTIONS, pa.large_string()),
             "dictionary": pa.array(CAPTIONS, pa.string()).dictionary_encode()}[kind]
    _write(setup / "x.parquet", array)
    assert pq.read_schema(setup / "x.parquet").field("TEXT").type == array.type     # read back as written
    result = _count(setup, [str(setup / "x.parquet")])
    assert result.run["skipped"] == [] and result.run["captions"] == sum(c is not None for c in CAPTIONS)
    _check_against_oracle(result.table, CAPTIONS)
    samples = pd.read_parquet(setup / "out" / "samples.parquet")
    assert len(samples) > 0 and all(CAPTIONS[r] == c for r, c in zip(samples["row"], samples["caption"]))


BAD_UTF8 = [b"terrorist \xffman", b"\xc3(arab nurse", b"nurse\xe2\x82 woman", b"ok man", None, b"CEO \xed\xa0\x80 girl",
            b"\xff", b"terrorist\xc0\xafman"]


@pytest.mark.parametrize("binary_type", [pa.binary(), pa.large_binary(), pa.binary_view()])
def test_binary_captions_with_malformed_utf8_are_counted(setup, binary_type):
    raw = BAD_UTF8 + [c.encode() if c is not None else None for c in CAPTIONS]
    _write(setup / "b.parquet", pa.array(raw, binary_type))
    result = _count(setup, [str(setup / "b.parquet")])
    assert result.run["skipped"] == []
    # rule 2: bytes that are not UTF-8 are non-letters, as U+FFFD is
    decoded = [None if b is None else b.decode("utf-8", "replace") for b in raw]
    _check_against_oracle(result.table, decoded)
    samples = pd.read_parquet(setup / "out" / "samples.parquet")
    assert "terrorist \ufffdman" in set(samples["caption"])
    assert all(decoded[r] == c for r, c in zip(samples["row"], samples["caption"]))


def test_all_null_column_counts_nulls(setup):
    """Only null captions: nothing to associate, an error naming the rows; run.json records the nulls."""
    import json

    _write(setup / "n.parquet", pa.nulls(4))
    with pytest.raises(DataError, match=r"^no captions to count: the 1 file\(s\) read hold 4 row\(s\), every caption null"):
        _count(setup, [str(setup / "n.parquet")])
    run = json.loads((setup / "out" / "run.json").read_text())
    assert (run["captions"], run["nulls"]) == (0, 4)
    assert not (setup / "out" / "cooccurrence.parquet").exists()


@pytest.mark.parametrize("array", [pa.array([1, 2, 3], pa.int64()), pa.array([0.5, None, 1.0]),
                                   pa.array([True, False, None]), pa.array([["man"], ["woman"], None])],
                         ids=["int", "float", "bool", "list"])
def test_a_caption_column_that_is_not_text_is_an_error(setup, array):
    _write(setup / "t.parquet", array)
    with pytest.raises(DataError) as err:
        _count(setup, [str(setup / "t.parquet")])
    stored = pq.read_schema(setup / "t.parquet").field("TEXT").type
    assert str(err.value) == inputs.ERR_TEXT_TYPE.format(path=str(setup / "t.parquet"), column="TEXT", type=stored)
    r = _cli(setup, "--captions", str(setup / "t.parquet"), "--out", str(setup / "cli"))
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == ["Error: " + str(err.value)]
    assert not (setup / "cli" / "cooccurrence.parquet").exists()


def test_caption_array_keeps_slices_and_nulls():
    raw = pa.array([b"a", None, b"b \xff", b"c"], pa.binary()).slice(1, 3)
    out = inputs.caption_array(raw)
    assert out.type == pa.string() and out.null_count == 1 and len(out) == 3
    assert out.cast(pa.binary()).to_pylist() == [None, b"b \xff", b"c"]
    assert inputs.caption_array(pa.chunked_array([pa.array(["x"], pa.string_view()),
                                                   pa.array(["y"], pa.string_view())])).to_pylist() == ["x", "y"]
    with pytest.raises(TypeError):
        inputs.caption_array(pa.array(np.arange(3)))



# --- content fingerprints: a replaced file is read again (issue 24) -----------------------------

# Two caption lists of equal byte lengths whose counts differ ("thief" -> "chief", "woman" -> "wom4n").
BEFORE = ["a thief and a man", "nurse woman", "CEO girl", "terrorist man", None, "arab nurse"] * 5
AFTER = ["a chief and a man", "nurse wom4n", "CEO girl", "terrorist man", None, "arab nurse"] * 5


def _plain(path, captions):
    """Uncompressed, plain-encoded, no statistics: two files of equal-length captions have the same size
    and the same footer (a fingerprint of footer and size could not tell them apart)."""
    pq.write_table(pa.table({"TEXT": pa.array(captions, pa.string())}), path, compression="none",
                   use_dictionary=False, write_statistics=False)


def _replace_keeping_size_and_mtime(path, captions):
    """Rewrite ``path`` with ``captions`` and give it back its modification time, as ``cp -p`` does."""
    st = os.stat(path)
    tmp = path.with_name("incoming.parquet")
    _plain(tmp, captions)
    os.replace(tmp, path)                  # rsync -a: a new file renamed over the old one
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size and os.stat(path).st_mtime_ns == st.st_mtime_ns


@pytest.fixture()
def memo_cache(tmp_path, monkeypatch):
    """Fingerprints remembered in tmp_path (not the user's cache folder), however recently the files were
    written."""
    monkeypatch.setattr(inputs, "FINGERPRINT_MEMO", str(tmp_path / "memo"), raising=False)
    monkeypatch.setattr(inputs, "RECENT_NS", 0, raising=False)
    return tmp_path / "memo"


def test_a_file_replaced_with_the_same_size_and_mtime_is_counted_again(setup, memo_cache, caplog):
    (setup / "data").mkdir()
    path, other = setup / "data" / "a.parquet", setup / "data" / "b.parquet"
    _plain(path, BEFORE)
    _plain(other, BEFORE[::-1])
    _plain(setup / "after.parquet", AFTER)
    assert pq.ParquetFile(path).metadata.equals(pq.ParquetFile(setup / "after.parquet").metadata)
    first = _count(setup, [str(path), str(other)])
    _check_against_oracle(first.table, BEFORE + BEFORE[::-1])
    time.sleep(0.05)                       # past the kernel's timestamp tick
    _replace_keeping_size_and_mtime(path, AFTER)
    with caplog.at_level(logging.INFO, logger="clipprobe"):
        again = _count(setup, [str(path), str(other)])
    _check_against_oracle(again.table, AFTER + BEFORE[::-1])
    assert again.run["rows_scanned_this_run"] == len(AFTER)        # the replaced file only
    assert again.run["files"][0]["fingerprint"] != first.run["files"][0]["fingerprint"]
    assert again.run["files"][1]["fingerprint"] == first.run["files"][1]["fingerprint"]
    said = [r.getMessage() for r in caplog.records]
    assert any("1 caption file(s) changed since the last run" in m and str(path) in m for m in said), said
    assert any(m.startswith(f"caption file {path} changed since clipprobe last read it") for m in said), said


def test_a_touched_file_with_the_same_content_is_not_counted_again(setup, memo_cache, monkeypatch):
    path = setup / "a.parquet"
    _plain(path, BEFORE)
    first = _count(setup, [str(path)])
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))       # touch: new mtime, same bytes
    again = _count(setup, [str(path)])
    assert again.run["rows_scanned_this_run"] == 0
    pd.testing.assert_frame_equal(again.table, first.table)
    hashed = []
    real = inputs.hash_file
    monkeypatch.setattr(inputs, "hash_file", lambda p: hashed.append(p) or real(p))
    third = _count(setup, [str(path)])          # unchanged since it was hashed: remembered, not read again
    assert hashed == [] and third.run["rows_scanned_this_run"] == 0


def test_the_hash_is_of_every_byte_and_a_recent_file_is_hashed_again(setup, tmp_path, monkeypatch):
    xxhash = pytest.importorskip("xxhash")
    monkeypatch.setattr(inputs, "FINGERPRINT_MEMO", str(tmp_path / "memo"), raising=False)
    path = setup / "a.parquet"
    path.write_bytes(bytes(range(256)) * 40_000)              # more than one read block
    want = "xxh3_128:" + xxhash.xxh3_128(path.read_bytes()).hexdigest()
    hashed = []
    real = inputs.hash_file
    monkeypatch.setattr(inputs, "hash_file", lambda p: hashed.append(p) or real(p))
    assert inputs.local_fingerprint(str(path)) == want
    assert inputs.local_fingerprint(str(path)) == want and len(hashed) == 2      # too fresh to be trusted
    monkeypatch.setattr(inputs, "RECENT_NS", 0)
    inputs.local_fingerprint(str(path))
    assert inputs.local_fingerprint(str(path)) == want and len(hashed) == 3
    data = bytearray(path.read_bytes())
    data[5_000_000] ^= 1                                      # one bit, same size, mtime given back
    st = path.stat()
    time.sleep(0.05)                                          # past the kernel's timestamp tick
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert inputs.local_fingerprint(str(path)) == "xxh3_128:" + xxhash.xxh3_128(bytes(data)).hexdigest() != want


def test_balance_reads_a_replaced_file_again(setup, memo_cache):
    from test_balance_pipeline import LEXICON as BAL_LEXICON

    from clipprobe.captions.patterns import EngineSettings
    from clipprobe.pipeline.balance import BalanceConfig, measure_bias

    (setup / "bal-lex.yaml").write_text(BAL_LEXICON)
    (setup / "labels.txt").write_text("nurse\nthief\nCEO\n")
    path = setup / "a.parquet"
    _plain(path, BEFORE)

    def measure(out):
        return measure_bias(BalanceConfig(captions=(str(path),), out=str(setup / out), attribute="gender",
                                          labels=str(setup / "labels.txt"), lexicon=str(setup / "bal-lex.yaml"),
                                          figure=False, engine=EngineSettings(workers=1)))

    before = measure("m")
    time.sleep(0.05)
    _replace_keeping_size_and_mtime(path, AFTER)
    again = measure("m")
    fresh = measure("fresh")
    pd.testing.assert_frame_equal(again.cells, fresh.cells)
    pd.testing.assert_frame_equal(again.groups, fresh.groups)
    assert not before.groups.equals(fresh.groups)


def test_a_replaced_url_is_counted_again(setup):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    try:
        for captions in (BEFORE, AFTER):
            buf = pa.BufferOutputStream()
            _plain(buf, captions)
            with fs.open("bucket/replaced/a.parquet", "wb") as fh:
                fh.write(buf.getvalue().to_pybytes())
            time.sleep(0.01)
            result = _count(setup, ["memory://bucket/replaced/a.parquet"])
            assert result.run["rows_scanned_this_run"] == len(captions)
            _check_against_oracle(result.table, captions)
    finally:
        fs.rm("bucket/replaced", recursive=True)
