"""`balance measure|fit --label-column`: concept labels y_r read from a column of the caption files.

Captions are generated with known group words and label words, so each caption's groups and caption-word
labels are known without the scanner. A label column equal to the caption words gives the caption path's
results exactly; a label column that differs gives the pattern table and the data bias a numpy brute
force computes from (lexicon groups, column labels); ``both`` gives those of the OR.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from clipprobe.captions.indicators import (MSG_LABEL_COLUMN_SOURCE, MSG_LABEL_SOURCE_COLUMN, MSG_LABEL_TYPE,
                                           MSG_LABEL_VALUE)
from clipprobe.captions.patterns import MSG_SCAN_COLUMN, EngineSettings
from clipprobe.cli import cli
from clipprobe.cli.balance import balance as balance_group
from clipprobe.errors import DataError, UsageError
from clipprobe.pipeline.balance import BalanceConfig, fit_balance, measure_bias

LEXICON = """name: mini-gender
attributes:
  gender:
    Male: [man, men]
    Female: [woman, women]
"""
GROUPS = ("Male", "Female")
LABELS = ("nurse", "CEO", "engineer")
N = 800

if "balance" not in cli.commands:      # until the command is registered in clipprobe.cli
    cli.add_command(balance_group)


def _captions(rng):
    """(captions, s, y): captions built from group and label words, and their 0/1 indicators."""
    who = rng.choice(["a man", "a woman", "men and women", "a dog"], size=N, p=[0.35, 0.35, 0.1, 0.2])
    s = np.stack([np.isin(who, ["a man", "men and women"]), np.isin(who, ["a woman", "men and women"])], 1)
    male = s[:, 0] & ~s[:, 1]
    p = np.where(male[:, None], [0.15, 0.5, 0.3], [0.5, 0.15, 0.1])
    y = rng.random((N, len(LABELS))) < p
    caps = []
    for i in range(N):
        jobs = [w for w, on in zip(LABELS, y[i]) if on]
        caps.append(f"{who[i]} " + (" and ".join(jobs) if jobs else "on a beach") + " at work")
    return caps, s.astype(np.int8), y.astype(np.int8)


def _lists(y, rng, empty_as):
    """The label column of 0/1 rows ``y``: a list per row, rows without labels null or empty (``empty_as``)."""
    out = []
    for row in y:
        names = [w for w, on in zip(LABELS, row) if on]
        rng.shuffle(names)
        out.append(names if names else empty_as[len(out) % len(empty_as)])
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("labels")
    (root / "lex.yaml").write_text(LEXICON)
    (root / "labels.txt").write_text("\n".join(LABELS) + "\n")
    rng = np.random.default_rng(11)
    caps, s, y = _captions(rng)
    other = (rng.random((N, len(LABELS))) < 0.3).astype(np.int8)        # labels unrelated to the captions
    one = rng.integers(-1, len(LABELS), size=N)                           # one label (or none) per row
    table = pa.table({
        "URL": [f"u{i}" for i in range(N)], "TEXT": pa.array(caps, pa.string()),
        "same": pa.array(_lists(y, rng, [None, []]), pa.list_(pa.string())),
        "other": pa.array(_lists(other, rng, [None, [], [""]]), pa.large_list(pa.string())),
        "one": pa.array([LABELS[j] if j >= 0 else (None if i % 2 else "") for i, j in enumerate(one)], pa.string()),
    })
    (root / "data").mkdir()
    pq.write_table(table, root / "data" / "a.parquet", row_group_size=300)
    one_hot = np.zeros((N, len(LABELS)), np.int8)
    one_hot[one >= 0, one[one >= 0]] = 1
    return root, s, y, {"other": other, "one": one_hot}


def config(root, out, **kw):
    base = dict(captions=(str(root / "data"),), out=str(out), attribute="gender", labels=str(root / "labels.txt"),
                lexicon=str(root / "lex.yaml"), figure=False, engine=EngineSettings(workers=1))
    base.update(kw)
    return BalanceConfig(**base)


def pattern_counts(frame) -> dict:
    return {(tuple(g), tuple(lab)): int(c) for g, lab, c in zip(frame["groups"], frame["labels"], frame["count"])}


def brute_patterns(s, y) -> dict:
    rows, counts = np.unique(np.concatenate([s, y], 1), axis=0, return_counts=True)
    return {(tuple(g for g, on in zip(GROUPS, r[:2]) if on), tuple(w for w, on in zip(LABELS, r[2:]) if on)): int(c)
            for r, c in zip(rows, counts)}


def brute_bias(s, y):
    """Shares of the mentioning captions (a caption of k groups counts 1/k to each) and AB = P(y | in) - P(y | out)."""
    m = s.any(1)
    w = np.where(m[:, None], s / np.maximum(s.sum(1, keepdims=True), 1), 0.0)
    share = w.sum(0) / m.sum()
    out = m[:, None] - w
    p_in = (w.T @ y) / w.sum(0)[:, None]
    p_out = (out.T @ y) / out.sum(0)[:, None]
    return share, p_in - p_out


def check_bias(result, s, y):
    share, ab = brute_bias(s, y)
    g = result.groups[result.groups["data"] == "before"].set_index("group")
    np.testing.assert_allclose(g.loc[list(GROUPS), "share"], share, rtol=1e-12)
    c = result.cells[result.cells["data"] == "before"].set_index(["group", "label"])
    got = np.array([[c.loc[(k, r), "ab"] for r in LABELS] for k in GROUPS])
    np.testing.assert_allclose(got, ab, rtol=1e-10, atol=1e-12)


def test_a_column_equal_to_the_caption_words_gives_the_same_fit(data, tmp_path):
    root, s, y, _ = data
    fit = dict(keep=0.6, eps_r=0.05, eps_a=0.05)
    words = fit_balance(config(root, tmp_path / "w", **fit))
    column = fit_balance(config(root, tmp_path / "c", label_column="same", **fit))
    both = fit_balance(config(root, tmp_path / "b", label_column="same", label_source="both", **fit))
    assert pattern_counts(pd.read_parquet(tmp_path / "w" / "patterns.parquet")) == brute_patterns(s, y)
    a = pd.read_parquet(tmp_path / "w" / "weights.parquet")
    for other, name in ((column, "c"), (both, "b")):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name / "weights.parquet"), a)
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / name / "patterns.parquet"),
                                      pd.read_parquet(tmp_path / "w" / "patterns.parquet"))
        pd.testing.assert_frame_equal(other.groups, words.groups)
        pd.testing.assert_frame_equal(other.cells, words.cells)
        np.testing.assert_array_equal(other.solution.q, words.solution.q)
    assert words.run["labels_from"] == "caption words"
    assert column.run["labels_from"] == "column 'same'"
    assert both.run["labels_from"] == "caption words or column 'same'"
    assert column.run["config"]["label_column"] == "same"


@pytest.mark.parametrize("column", ["other", "one"])
def test_a_column_other_than_the_captions_gives_the_brute_force_patterns_and_bias(data, tmp_path, column):
    root, s, y, labels = data
    result = measure_bias(config(root, tmp_path / "m", label_column=column))
    assert pattern_counts(pd.read_parquet(tmp_path / "m" / "patterns.parquet")) == brute_patterns(s, labels[column])
    check_bias(result, s, labels[column])
    # both: a label where the caption or the column has it
    result = measure_bias(config(root, tmp_path / "b", label_column=column, label_source="both"))
    either = y | labels[column]
    assert pattern_counts(pd.read_parquet(tmp_path / "b" / "patterns.parquet")) == brute_patterns(s, either)
    check_bias(result, s, either)


def test_a_label_column_with_an_attribute_column_and_a_proxy(data, tmp_path):
    """Groups and labels both from columns: no label word is matched; a proxy still comes from the caption."""
    root, s, _, labels = data
    t = pq.read_table(root / "data" / "a.parquet")
    who = np.where(s[:, 0] & ~s[:, 1], "Male", np.where(s[:, 1] & ~s[:, 0], "Female", None))
    t = t.append_column("who", pa.array(list(who), pa.string()))
    (tmp_path / "d").mkdir()
    pq.write_table(t, tmp_path / "d" / "a.parquet")
    result = measure_bias(config(root, tmp_path / "m", captions=(str(tmp_path / "d"),), attribute_column="who",
                                 groups=GROUPS, label_column="other", proxies=("work",)))
    s1 = np.stack([who == "Male", who == "Female"], 1).astype(np.int8)
    frame = pd.read_parquet(tmp_path / "m" / "patterns.parquet")
    assert all("work" in lab for lab in frame["labels"])       # every caption says "at work"
    got = {(g, tuple(x for x in lab if x != "work")): c for (g, lab), c in pattern_counts(frame).items()}
    assert got == brute_patterns(s1, labels["other"])
    check_bias(result, s1, labels["other"])


def _bad(tmp_path, name, column):
    (tmp_path / "bad").mkdir(exist_ok=True)
    path = tmp_path / "bad" / name
    pq.write_table(pa.table({"URL": ["a", "b", "c"], "TEXT": ["man nurse", "woman", "CEO"], "lab": column}), path)
    return str(path)


@pytest.mark.parametrize("column, message", [
    (pa.array([["nurse"], None, ["CEO", "Nurse"]], pa.list_(pa.string())),
     MSG_LABEL_VALUE.format(path="{path}", column="lab", value="Nurse", row=2, labels="'nurse', 'CEO', 'engineer'")),
    (pa.array(["nurse", "pilot", None], pa.string()),
     MSG_LABEL_VALUE.format(path="{path}", column="lab", value="pilot", row=1, labels="'nurse', 'CEO', 'engineer'")),
    (pa.array([1, 2, 3], pa.int64()), MSG_LABEL_TYPE.format(path="{path}", column="lab", type="int64")),
    (pa.array([[1], [], None], pa.list_(pa.int32())),
     MSG_LABEL_TYPE.format(path="{path}", column="lab", type="list<element: int32>")),
])
def test_bad_label_values_and_types_are_one_line_errors_and_nothing_is_written(data, tmp_path, column, message):
    root, *_ = data
    path = _bad(tmp_path, "x.parquet", column)
    out = tmp_path / "out"
    argv = ["balance", "fit", "--captions", path, "--out", str(out), "--lexicon", str(root / "lex.yaml"),
            "--labels", str(root / "labels.txt"), "--label-column", "lab", "--workers", "1", "--no-figure"]
    r = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert message.format(path=path) in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (out / "run.json").exists() and not (out / "weights.parquet").exists()


def test_a_missing_label_column_is_named(data, tmp_path):
    root, *_ = data
    with pytest.raises(DataError, match=r"no label column 'lbl' \(did you mean 'lab'\?\); columns: URL, TEXT, lab"):
        measure_bias(config(root, tmp_path / "o", captions=(_bad(tmp_path, "x.parquet", ["nurse"] * 3),),
                            label_column="lbl"))


def test_label_source_settings_and_from_scan_are_refused(data, tmp_path):
    root, *_ = data
    for kw, message in [
        (dict(label_source="column"), MSG_LABEL_SOURCE_COLUMN.format(value="column")),
        (dict(label_source="both"), MSG_LABEL_SOURCE_COLUMN.format(value="both")),
        (dict(label_column="same", label_source="captions"), MSG_LABEL_COLUMN_SOURCE.format(column="same")),
        (dict(label_source="image"), "label_source='image' is not one of 'captions', 'column', 'both'"),
        (dict(label_column="same", from_scan=str(tmp_path)),
         MSG_SCAN_COLUMN.format(what="the label column 'same'")),
    ]:
        with pytest.raises(UsageError) as err:
            measure_bias(config(root, tmp_path / "never", **kw))
        assert str(err.value) == message
    assert not (tmp_path / "never").exists()
    argv = ["balance", "measure", "--captions", str(root / "data"), "--out", str(tmp_path / "cli"), "--lexicon",
            str(root / "lex.yaml"), "--labels", str(root / "labels.txt"), "--label-source", "both", "--no-figure"]
    r = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert r.exit_code == 2 and MSG_LABEL_SOURCE_COLUMN.format(value="both") in r.output, r.output


def test_the_cli_reads_a_label_column(data, tmp_path):
    root, s, _, labels = data
    argv = ["balance", "measure", "--captions", str(root / "data"), "--out", str(tmp_path / "m"), "--lexicon",
            str(root / "lex.yaml"), "--labels", str(root / "labels.txt"), "--label-column", "one", "--workers", "1",
            "--no-figure", "--format", "json"]
    r = CliRunner().invoke(cli, argv, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = json.loads(r.output)
    assert run["labels_from"] == "column 'one'" and run["config"]["label_source"] is None
    assert pattern_counts(pd.read_parquet(tmp_path / "m" / "patterns.parquet")) == brute_patterns(s, labels["one"])
