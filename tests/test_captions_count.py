"""`count_captions` end to end on generated LAION-schema parquet, against a per-caption oracle."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_captions_matching import TRAPS, oracle_contains

from clipprobe.captions import run as runmod
from clipprobe.pipeline.captions import CountConfig, count_captions
from clipprobe.captions.synth import realistic_captions, write_laion_parquet
from clipprobe.errors import DataError

TAXONOMY = """name: mini
categories:
  criminal justice: [terrorist, thief, mugger]
  occupation: [nurse, CEO, delivery man, élève]
"""
LEXICON = """name: mini-lex
attributes:
  race:
    Middle Eastern: [middle eastern, arab, arabs]
    East Asian: [east asian, chinese]
    Black: [african-american, african american]
  gender:
    Male: [man, men, male, boy]
    Female: [woman, women, female, girl]
"""
WORDS = ["terrorist", "thief", "mugger", "nurse", "CEO", "delivery man", "élève"]
GROUPS = {("race", "Middle Eastern"): ["middle eastern", "arab", "arabs"],
          ("race", "East Asian"): ["east asian", "chinese"],
          ("race", "Black"): ["african-american", "african american"],
          ("gender", "Male"): ["man", "men", "male", "boy"],
          ("gender", "Female"): ["woman", "women", "female", "girl"]}

EXTRA = ["terrorist man", "Arab terrorist's car", "terrorists and women", "a smuggler", "CEO, girl.",
         "nurse\u00a0\u00a0Woman", "delivery  man", "delivery-man", "ÉLÈVE chinese", "middle\teastern thief",
         "african-american nurse", "african american CEO", "mugger boy", "thief", "man", None, "", "manager"]


def oracle_counts(captions):
    groups = list(GROUPS)
    n_word = np.zeros(len(WORDS), np.int64)
    n_group = np.zeros(len(groups), np.int64)
    n_both = np.zeros((len(WORDS), len(groups)), np.int64)
    n = 0
    for c in captions:
        if c is None:
            continue
        n += 1
        w = np.array([oracle_contains(c, x) for x in WORDS])
        g = np.array([any(oracle_contains(c, t) for t in GROUPS[k]) for k in groups])
        n_word += w
        n_group += g
        n_both += np.outer(w, g)
    return n, n_word, n_group, n_both


@pytest.fixture()
def world(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    pool = TRAPS + EXTRA
    files = []
    for i in range(3):
        caps = [pool[j] for j in rng.integers(0, len(pool), size=120)]
        caps = ["man at the start of the file"] + caps + ["file ends with a terrorist man"]
        write_laion_parquet(data / f"part-{i:05d}.parquet", caps, row_group_size=17, seed=i)
        files.append(caps)
    (data / "part-99999.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    return tmp_path, files


def _config(root, **kw):
    base = dict(captions=(str(root / "data" / "*.parquet"),), out=str(root / "out"),
                taxonomy=str(root / "tax.yaml"), lexicon=str(root / "lex.yaml"), workers=1, samples=2,
                chunk_rows=40)
    base.update(kw)
    return CountConfig(**base)


def _check_against_oracle(table, captions):
    n, n_word, n_group, n_both = oracle_counts(captions)
    groups = list(GROUPS)
    assert (table.n_captions == n).all()
    for r in table.itertuples():
        wi, gi = WORDS.index(r.word), groups.index((r.attribute, r.group))
        assert (r.n_word, r.n_group, r.n_both) == (n_word[wi], n_group[gi], n_both[wi, gi]), r


@pytest.mark.parametrize("workers", [1, 2])
def test_counts_equal_oracle_and_corrupt_file_is_skipped(world, workers):
    root, files = world
    result = count_captions(_config(root, workers=workers))
    all_caps = [c for caps in files for c in caps]
    _check_against_oracle(result.table, all_caps)
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["n_files"] == 3 and run["captions"] == sum(c is not None for c in all_caps)
    assert run["nulls"] == sum(c is None for c in all_caps)
    assert run["row_groups"] == sum(pq.ParquetFile(root / "data" / f"part-{i:05d}.parquet").num_row_groups
                                    for i in range(3))
    assert len(run["skipped"]) == 1 and run["skipped"][0]["path"].endswith("part-99999.parquet")
    assert "not a readable parquet file" in run["skipped"][0]["why"]
    assert run["engine"] == "local" and "scan" in run["timings_s"]
    assert (root / "out" / "lift_heatmap.png").stat().st_size > 0
    on_disk = pd.read_parquet(root / "out" / "cooccurrence.parquet")
    pd.testing.assert_frame_equal(on_disk, result.table)


def test_samples_contain_both_and_are_capped(world):
    root, files = world
    result = count_captions(_config(root))
    samples = pd.read_parquet(root / "out" / "samples.parquet")
    assert list(samples.columns) == ["word", "attribute", "group", "file", "row", "caption"]
    per_cell = samples.groupby(["word", "attribute", "group"]).size()
    for r in result.table.itertuples():
        got = per_cell.get((r.word, r.attribute, r.group), 0)
        assert got == min(2, r.n_both)
    for s in samples.itertuples():
        assert oracle_contains(s.caption, s.word)
        assert any(oracle_contains(s.caption, t) for t in GROUPS[(s.attribute, s.group)])
        i = int(os.path.basename(s.file).split("-")[1].split(".")[0])
        assert files[i][s.row] == s.caption          # provenance: file and row point at the caption


def test_resume_skips_finished_files_and_rescans_changed_ones(world):
    root, files = world
    first = _config(root, captions=(str(root / "data" / "part-00000.parquet"),))
    count_captions(first)
    parts = sorted((root / "out" / "parts").glob("*.npz"))
    assert len(parts) == 1
    stamp = parts[0].stat().st_mtime_ns
    result = count_captions(_config(root))
    run = result.run
    assert run["rows_scanned_this_run"] == len(files[1]) + len(files[2])   # file 0 came from its part
    assert parts[0].stat().st_mtime_ns == stamp
    _check_against_oracle(result.table, [c for caps in files for c in caps])
    again = count_captions(_config(root))
    assert again.run["rows_scanned_this_run"] == 0
    pd.testing.assert_frame_equal(again.table, result.table)
    # a changed file is scanned again, and its new content counts
    changed = files[1][:50] + ["terrorist woman"] * 7
    write_laion_parquet(root / "data" / "part-00001.parquet", changed, row_group_size=17, seed=1)
    after = count_captions(_config(root))
    assert after.run["rows_scanned_this_run"] == len(changed)
    _check_against_oracle(after.table, files[0] + changed + files[2])


def test_strict_makes_a_corrupt_file_fatal(world):
    root, _ = world
    with pytest.raises(DataError) as err:
        count_captions(_config(root, strict=True))
    bad = str(root / "data" / "part-99999.parquet")
    try:
        pq.ParquetFile(bad)
    except Exception as exc:  # the reader's own words are part of the message
        why = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    assert str(err.value) == runmod.ERR_UNREADABLE.format(path=bad, why=why)
    assert "\n" not in str(err.value)


def test_text_column_fallback_and_missing_column(tmp_path, caplog):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    (tmp_path / "data").mkdir()
    caps = ["a terrorist man", "nurse", None]
    write_laion_parquet(tmp_path / "data" / "a.parquet", caps, text_column="caption")
    with caplog.at_level("INFO"):
        result = count_captions(_config(tmp_path))
    assert "no column 'TEXT'; using 'caption'" in caplog.text
    _check_against_oracle(result.table, caps)
    with pytest.raises(DataError) as err:
        count_captions(_config(tmp_path, text_column="alt_text", out=str(tmp_path / "out2")))
    assert str(err.value).startswith(f"{tmp_path / 'data' / 'a.parquet'}: no caption column 'alt_text'; columns: ")
    pq.write_table(pa.table({"URL": ["u"]}), tmp_path / "data" / "b.parquet")
    with pytest.raises(DataError, match=r"b.parquet: no caption column 'TEXT' \(also tried 'caption', 'text'\)"):
        count_captions(_config(tmp_path, out=str(tmp_path / "out3")))


def test_no_matching_input_is_a_usage_error(tmp_path):
    from clipprobe.errors import UsageError

    with pytest.raises(UsageError, match="matches no file"):
        count_captions(CountConfig(captions=(str(tmp_path / "*.parquet"),), out=str(tmp_path / "o")))


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_default_taxonomy_and_lexicon_equal_oracle(tmp_path):
    """So-B-IT words and the FairFace lexicon on realistic captions: engine == oracle."""
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.resources.taxonomy import get_taxonomy

    words = get_taxonomy().words()
    lex = get_lexicon()
    caps = realistic_captions(300, words, lex.terms(), word_rate=0.5, term_rate=0.5, null_rate=0.02, seed=5)
    write_laion_parquet(tmp_path / "x.parquet", caps, row_group_size=64)
    result = count_captions(CountConfig(captions=(str(tmp_path / "x.parquet"),), out=str(tmp_path / "out"),
                                        workers=1))
    t = result.table
    present = [c for c in caps if c is not None]
    for w in words:
        n = sum(oracle_contains(c, w) for c in present)
        assert t.loc[t.word == w, "n_word"].iloc[0] == n, w
    groups = lex.groups()
    has = {(a, g): [any(oracle_contains(c, term) for term in lex.attributes[a][g]) for c in present]
           for a, g in groups}
    for a, g in groups:
        assert t.loc[(t.attribute == a) & (t.group == g), "n_group"].iloc[0] == sum(has[(a, g)]), (a, g)
    assert t.n_word.sum() > 0 and t.n_both.sum() > 0


def test_run_json_records_the_content_of_taxonomy_and_lexicon(world):
    import hashlib

    root, _ = world
    count_captions(_config(root))
    run = json.loads((root / "out" / "run.json").read_text())
    assert run["inputs"] == {name: {"path": str(root / f"{short}.yaml"),
                                    "sha256": hashlib.sha256((root / f"{short}.yaml").read_bytes()).hexdigest()}
                             for name, short in (("taxonomy", "tax"), ("lexicon", "lex"))}
