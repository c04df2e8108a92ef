"""`clipprobe captions` / `laion` through click's CliRunner."""

from __future__ import annotations

import json

import pandas as pd
from click.testing import CliRunner
from test_captions_count import LEXICON, TAXONOMY

from clipprobe.captions.synth import write_laion_parquet
from clipprobe.cli import cli


def _setup(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    write_laion_parquet(tmp_path / "a.parquet", ["a terrorist man", "Arab terrorist's car", "nurse woman", None,
                                                 "terrorists", "the thief"])
    return ["--taxonomy", str(tmp_path / "tax.yaml"), "--lexicon", str(tmp_path / "lex.yaml")]


def test_count_then_show(tmp_path):
    opts = _setup(tmp_path)
    out = tmp_path / "counts"
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "*.parquet"), "--out", str(out),
                                 "--workers", "1", *opts])
    assert r.exit_code == 0, r.output
    assert "5 captions (1 null) in 1 files" in r.output
    table = pd.read_parquet(out / "cooccurrence.parquet")
    row = table[(table.word == "terrorist") & (table.group == "Middle Eastern")].iloc[0]
    assert (row.n_word, row.n_group, row.n_both) == (2, 1, 1)
    r = CliRunner().invoke(cli, ["laion", "show", str(out), "--word", "Terrorist"])
    assert r.exit_code == 0, r.output
    assert "terrorist: in 2 of 5 captions" in r.output and "- Arab terrorist's car" in r.output
    r = CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "terorist", "--format", "json"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1].endswith("word 'terorist' is not in caption counts folder " + str(out)
                                                      + " (did you mean 'terrorist'?)")
    r = CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "nurse", "--format", "json"])
    data = json.loads(r.output)
    assert data["word"] == "nurse" and any(g["n_both"] == 1 and g["group"] == "Female" for g in data["groups"])


def test_strict_is_a_one_line_error(tmp_path):
    opts = _setup(tmp_path)
    (tmp_path / "b.parquet").write_bytes(b"nope")
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "*.parquet"),
                                 "--out", str(tmp_path / "o"), "--workers", "1", "--strict", *opts])
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "b.parquet: not a readable parquet file" in lines[0]
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "*.parquet"),
                                 "--out", str(tmp_path / "o"), "--workers", "1", "--format", "json", *opts])
    assert r.exit_code == 0
    assert len(json.loads(r.output)["skipped"]) == 1


def test_lexicons_and_bad_engine(tmp_path):
    r = CliRunner().invoke(cli, ["captions", "lexicons"])
    assert r.exit_code == 0 and "Middle Eastern" in r.output and "fairface" in r.output
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", "x", "--out", str(tmp_path), "--engine", "dask"])
    assert r.exit_code == 2 and "'dask' is not one of 'local', 'spark'" in r.output


def test_show_escapes_terminal_controls_in_captions(tmp_path):
    opts = _setup(tmp_path)
    hostile = ["\x1b[2J\x1b]0;owned\x07a terrorist man\x1b[0m", "terrorist \u202eArab\u202c\r\x08\x9b31m woman"]
    write_laion_parquet(tmp_path / "a.parquet", hostile)
    out = tmp_path / "counts"
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "a.parquet"), "--out", str(out),
                                 "--workers", "1", *opts])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "terrorist"])
    assert r.exit_code == 0, r.output
    assert "- \\x1b[2J\\x1b]0;owned\\x07a terrorist man\\x1b[0m" in r.output
    assert "- terrorist \\u202eArab\\u202c\\x0d\\x08\\x9b31m woman" in r.output
    for raw in ("\x1b", "\x07", "\x08", "\r", "\x9b", "\u202e", "\u202c"):
        assert raw not in r.output
    r = CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "terrorist", "--format", "json"])
    assert "\x1b" not in r.output and json.loads(r.output)["samples"][0]["caption"] == hostile[0]


def test_spark_conf_must_be_key_value(tmp_path):
    opts = _setup(tmp_path)
    for bad in ("spark.archives", "=value"):
        r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "a.parquet"), "--out",
                                     str(tmp_path / "o"), "--engine", "spark", "--spark-conf", bad, *opts])
        assert r.exit_code == 2
        assert r.output.strip().splitlines() == [
            f"Error: --spark-conf {bad!r} is not KEY=VALUE (e.g. spark.archives=env.tar.gz#environment)"]
