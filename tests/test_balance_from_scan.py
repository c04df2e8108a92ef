"""`balance fit --from-scan DIR`: the matches a `captions count --for-balance` recorded give the very outputs
of a fit that reads the captions itself; a scan that does not fit the files or the terms is refused in one
line; a count or a fit cut short and rerun gives the same."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_balance_pipeline import config, data  # noqa: F401  (the fixture: generated LAION-schema parquet)

from clipprobe.captions.matches import load_matches
from clipprobe.captions.patterns import EngineSettings
from clipprobe.captions.synth import write_laion_parquet
from clipprobe.cli import cli
from clipprobe.errors import ClipprobeError, UsageError
from clipprobe.pipeline.balance import fit_balance, measure_bias
from clipprobe.pipeline.captions import CountConfig, count_captions

TABLES = ("patterns.parquet", "bias_groups.parquet", "bias_cells.parquet", "residuals.parquet")
CHUNK_ROWS = 300


def scan(root, out, captions=None, lexicon="lex.yaml", **kw):
    base = dict(captions=captions or (str(root / "data"),), out=str(out), taxonomy=str(root / "tax.yaml"),
                lexicon=str(root / lexicon), workers=1, chunk_rows=CHUNK_ROWS, for_balance=True)
    base.update(kw)
    return count_captions(CountConfig(**base))


def same_outputs(a, b):
    pd.testing.assert_frame_equal(pd.read_parquet(a / "weights.parquet"), pd.read_parquet(b / "weights.parquet"))
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))


@pytest.fixture(scope="module")
def scanned(data, tmp_path_factory):  # noqa: F811
    root, _ = data
    out = tmp_path_factory.mktemp("scan") / "counts"
    scan(root, out)
    return out


@pytest.fixture(scope="module")
def cold(data, tmp_path_factory):  # noqa: F811
    root, _ = data
    out = tmp_path_factory.mktemp("cold") / "out"
    fit_balance(config(root, out, seed=7, engine=EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_from_scan_writes_what_a_cold_fit_writes(data, scanned, cold, tmp_path, workers):  # noqa: F811
    root, _ = data
    out = tmp_path / "warm"
    result = fit_balance(config(root, out, seed=7, from_scan=str(scanned),
                                engine=EngineSettings(workers=workers, chunk_rows=CHUNK_ROWS)))
    same_outputs(cold, out)
    assert result.run["from_scan"] == str(scanned.resolve())
    cold_run = json.loads((cold / "run.json").read_text())
    assert result.run["fit"]["solution_key"] == cold_run["fit"]["solution_key"]
    # measure reads the same recorded matches
    before = measure_bias(config(root, tmp_path / "m", from_scan=str(scanned),
                                 engine=EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)))
    pd.testing.assert_frame_equal(before.groups, result.groups[result.groups["data"] == "before"].reset_index(drop=True))


def test_the_recording_leaves_the_counts_as_they_are(data, scanned, tmp_path):  # noqa: F811
    root, _ = data
    plain = tmp_path / "plain"
    scan(root, plain, for_balance=False)
    for name in ("cooccurrence.parquet", "samples.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(plain / name), pd.read_parquet(scanned / name))
    run = json.loads((scanned / "run.json").read_text())
    assert run["for_balance"]["hash_columns"] == ["URL"] and run["for_balance"]["chunk_rows"] == CHUNK_ROWS
    assert json.loads((plain / "run.json").read_text())["for_balance"] is None
    # every caption's matches: as many hashes as rows, rows inside the chunk
    files = sorted((scanned / "parts" / "matches").glob("*.npz"))
    total = 0
    for f in files:
        m = load_matches(f)
        assert m["text"].size == m["n"] == m["columns"]["URL"].size
        assert m["rows"].size == m["terms"].size and (m["rows"].size == 0 or m["rows"].max() < m["n"])
        total += m["n"]
    assert total == run["rows"]


def test_key_and_id_column_choices_read_the_recorded_hashes(data, scanned, tmp_path):  # noqa: F811
    root, _ = data
    for name, kw in (("nokey", {"key": None}), ("id", {"id_column": "URL"})):
        eng = EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)
        fit_balance(config(root, tmp_path / f"{name}-cold", engine=eng, **kw))
        fit_balance(config(root, tmp_path / f"{name}-warm", engine=eng, from_scan=str(scanned), **kw))
        same_outputs(tmp_path / f"{name}-cold", tmp_path / f"{name}-warm")


def _refusal(fn, *args, **kwargs) -> str:
    with pytest.raises(ClipprobeError) as err:
        fn(*args, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_scan_that_does_not_fit_is_refused_in_one_line(data, scanned, tmp_path):  # noqa: F811
    root, _ = data
    eng = EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)
    # other files: a scan of the first file only
    partial = tmp_path / "partial"
    scan(root, partial, captions=(str(root / "data" / "part-0.parquet"),))
    message = _refusal(fit_balance, config(root, tmp_path / "a", engine=eng, from_scan=str(partial)))
    assert "part-1.parquet" in message and "no finished scan" in message
    # another lexicon, without some of this fit's group terms
    (root / "lex2.yaml").write_text("name: other\nattributes:\n  gender:\n    Male: [man, men]\n"
                                    "    Female: [woman, women]\n")
    other = tmp_path / "other"
    scan(root, other, lexicon="lex2.yaml")
    message = _refusal(fit_balance, config(root, tmp_path / "b", engine=eng, from_scan=str(other)))
    assert "4 term(s)" in message and "group term 'boy'" in message
    # a count without --for-balance, and a folder that is no count at all
    plain = tmp_path / "plain"
    scan(root, plain, for_balance=False)
    assert "without --for-balance" in _refusal(fit_balance, config(root, tmp_path / "c", engine=eng,
                                                                   from_scan=str(plain)))
    assert "no readable run.json" in _refusal(fit_balance, config(root, tmp_path / "d", engine=eng,
                                                                  from_scan=str(tmp_path)))
    # other chunks
    message = _refusal(fit_balance, config(root, tmp_path / "e", engine=EngineSettings(workers=1, chunk_rows=97),
                                           from_scan=str(scanned)))
    assert "chunks of 300 rows" in message
    # a column the scan did not hash
    message = _refusal(fit_balance, config(root, tmp_path / "f", engine=eng, key="SIMILARITY",
                                           from_scan=str(scanned)))
    assert "'SIMILARITY'" in message
    # columns read from the files
    with pytest.raises(UsageError, match="utility column 'SIMILARITY'"):
        fit_balance(config(root, tmp_path / "g", engine=eng, utility="SIMILARITY", from_scan=str(scanned)))
    for name in "abcdefg":
        assert not (tmp_path / name / "weights.parquet").exists()


def test_a_file_changed_since_the_scan_is_refused(data, tmp_path):  # noqa: F811
    root, files = data
    work = tmp_path / "data"
    work.mkdir()
    for i, caps in enumerate(files):
        write_laion_parquet(work / f"part-{i}.parquet", caps, row_group_size=97, seed=i)
    scanned = tmp_path / "scan"
    scan(root, scanned, captions=(str(work),))
    eng = EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)
    fit_balance(config(root, tmp_path / "ok", captions=(str(work),), engine=eng, from_scan=str(scanned)))
    write_laion_parquet(work / "part-1.parquet", list(reversed(files[1])), row_group_size=97, seed=1)
    message = _refusal(fit_balance, config(root, tmp_path / "x", captions=(str(work),), engine=eng,
                                           from_scan=str(scanned)))
    assert "part-1.parquet" in message and "as it is now" in message


def test_a_count_and_a_fit_cut_short_resume_to_the_same(data, scanned, cold, tmp_path):  # noqa: F811
    root, _ = data
    out = tmp_path / "counts"
    scan(root, out)
    # as a count killed after one file's chunks were recorded, before its part: one part and one matches file gone
    parts = sorted((out / "parts").glob("*.npz"))
    matches = sorted((out / "parts" / "matches").glob("*.npz"))
    parts[1].unlink()
    matches[0].unlink()
    (out / "run.json").unlink()
    again = scan(root, out)
    assert again.run["rows_scanned_this_run"] > 0
    for name in ("cooccurrence.parquet", "samples.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(scanned / name))
    for a, b in zip(sorted((out / "parts" / "matches").glob("*.npz")),
                    sorted((scanned / "parts" / "matches").glob("*.npz"))):
        assert a.name == b.name
        ma, mb = load_matches(a), load_matches(b)
        for key in ("rows", "terms", "text"):
            np.testing.assert_array_equal(ma[key], mb[key])
    # a fit from the scan killed after some of its pattern chunks: the rerun finishes the same
    warm = tmp_path / "warm"
    eng = EngineSettings(workers=1, chunk_rows=CHUNK_ROWS)
    fit_balance(config(root, warm, seed=7, engine=eng, from_scan=str(out)))
    for f in list((warm / "parts" / "patterns").glob("*.npz"))[:1] + list((warm / "parts" / "weights").glob("*"))[:3]:
        f.unlink()
    (warm / "run.json").unlink()
    fit_balance(config(root, warm, seed=7, engine=eng, from_scan=str(out)))
    same_outputs(cold, warm)


def test_cli_count_for_balance_then_fit_from_scan(data, tmp_path):  # noqa: F811
    root, _ = data
    common = ["--taxonomy", str(root / "tax.yaml"), "--lexicon", str(root / "lex.yaml"), "--workers", "1"]
    runner = CliRunner()
    r = runner.invoke(cli, ["captions", "count", "--captions", str(root / "data"), "--out", str(tmp_path / "c"),
                            "--for-balance", *common], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    fit = ["balance", "fit", "--captions", str(root / "data"), "--attribute", "gender", "--labels",
           str(root / "labels.txt"), "--keep", "0.6", "--eps-r", "0.02", "--eps-a", "0.03", "--no-figure", *common]
    r = runner.invoke(cli, [*fit, "--out", str(tmp_path / "w"), "--from-scan", str(tmp_path / "c")],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, [*fit, "--out", str(tmp_path / "k")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    same_outputs(tmp_path / "k", tmp_path / "w")
    r = runner.invoke(cli, [*fit, "--out", str(tmp_path / "x"), "--from-scan", str(tmp_path / "k")])
    assert r.exit_code == 1 and "not a caption count's" in r.output
    r = runner.invoke(cli, ["captions", "count", "--captions", str(root / "data"), "--out", str(tmp_path / "y"),
                            "--hash-column", "URL", *common])
    assert r.exit_code == 2 and "--for-balance" in r.output
    assert pq.read_metadata(next((tmp_path / "w" / "weights.parquet").glob("*.parquet"))).num_rows > 0
