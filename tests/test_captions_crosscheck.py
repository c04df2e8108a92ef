"""crosscheck: retrieval skew joined with caption co-occurrence, Spearman against scipy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from clipprobe.analysis.cooccurrence import cooccurrence_table
from clipprobe.analysis.crosscheck import crosscheck
from clipprobe.report.crosscheck import crosscheck_scatter
from clipprobe.errors import DataError


@pytest.fixture()
def tables():
    rng = np.random.default_rng(1)
    words = [f"w{i}" for i in range(12)]
    groups = [("gender", "Male"), ("gender", "Female"), ("race", "White"), ("race", "Black")]
    n_word = rng.integers(50, 200, size=len(words))
    n_group = np.array([900, 800, 300, 250])
    n_both = (np.minimum.outer(n_word, n_group) * rng.uniform(0, 0.5, size=(12, 4))).astype(int)
    co = cooccurrence_table(words, groups, 5000, n_word, n_group, n_both)
    rep = co[["word", "attribute", "group"]].copy()
    rep["word"] = rep["word"].str.upper()                      # join is case-insensitive on the word
    rep["skew"] = rng.normal(size=len(rep))
    rep["flagged"] = rep["skew"] > 1
    rep["q_over"] = rng.uniform(size=len(rep))
    rep = rep[~((rep.word == "W0") & (rep.group == "Male"))]    # one cell only in the captions
    return rep, co


def test_join_and_spearman(tables):
    rep, co = tables
    joined, corr = crosscheck(rep, co)
    assert len(joined) == len(rep)
    assert {"skew", "flagged", "q_over", "caption_lift", "caption_log_odds", "caption_q_value",
            "caption_flagged"} <= set(joined.columns)
    row = joined[(joined.word == "W3") & (joined.group == "Black")].iloc[0]
    ref = co[(co.word == "w3") & (co.group == "Black")].iloc[0]
    assert row.caption_log_odds == ref.log_odds and row.caption_n_both == ref.n_both
    for attribute in ("gender", "race"):
        rows = joined[joined.attribute == attribute]
        expected = spearmanr(rows["skew"], rows.caption_log_odds)
        assert corr[attribute]["rho"] == pytest.approx(expected.statistic)
        assert corr[attribute]["p_value"] == pytest.approx(expected.pvalue)
        assert corr[attribute]["n"] == len(rows)
        g = rows[rows.group == rows.group.iloc[0]]
        assert corr[attribute]["by_group"][g.group.iloc[0]]["rho"] == pytest.approx(
            spearmanr(g["skew"], g.caption_log_odds).statistic)
    flagged = (joined.caption_q_value < 0.05) & (joined.caption_log_odds > 0)
    assert (joined.caption_flagged == flagged).all()


def test_missing_columns_are_named(tables):
    rep, co = tables
    with pytest.raises(DataError, match=r"report groups table lacks columns \['skew'\]"):
        crosscheck(rep.drop(columns="skew"), co)


def test_scatter_returns_axes_with_the_data(tables):
    rep, co = tables
    joined, corr = crosscheck(rep, co)
    ax = crosscheck_scatter(joined, attribute="race", correlations=corr)
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections])
    assert sorted(xs) == pytest.approx(sorted(joined[joined.attribute == "race"]["skew"]))
    assert "rho=" in ax.get_title() and ax.get_xlabel() == "skew = ln(share / base share)"   # as in every figure


@pytest.fixture()
def sparse_tables():
    """Counts where 4 of 12 words and one group never occur in the captions; the report's skew of those
    rows is low, as an absent word's is (what the old +3 log-odds of an absent word paired with)."""
    rng = np.random.default_rng(5)
    words = [f"w{i}" for i in range(12)]
    groups = [("gender", "Male"), ("gender", "Female"), ("race", "White"), ("race", "Black"), ("race", "Absent")]
    n_word = rng.integers(50, 200, size=len(words))
    n_word[8:] = 0
    n_group = np.array([900, 800, 300, 250, 0])
    n_both = (np.minimum.outer(n_word, n_group) * rng.uniform(0, 0.5, size=(12, 5))).astype(int)
    co = cooccurrence_table(words, groups, 5000, n_word, n_group, n_both)
    rep = co[["word", "attribute", "group"]].copy()
    # the model's skew follows the captions' log-odds where both exist
    rep["skew"] = co["log_odds"].fillna(-2.0).to_numpy() + rng.normal(0, 0.3, size=len(co))
    rep["flagged"] = rep["skew"] > 1
    return rep, co


def test_undefined_rows_are_kept_but_left_out_of_the_correlations(sparse_tables):
    rep, co = sparse_tables
    joined, corr = crosscheck(rep, co)
    assert len(joined) == len(rep)
    defined = joined[joined.caption_status == "ok"]
    assert len(defined) == 8 * 4
    undefined = joined[joined.caption_status != "ok"]
    assert undefined.caption_log_odds.isna().all() and undefined.caption_lift.isna().all()
    assert undefined.caption_q_value.isna().all() and undefined.caption_flagged.isna().all()
    assert set(undefined[undefined.group == "Absent"].caption_status) == {"group absent", "word absent; group absent"}
    for attribute in ("gender", "race"):
        rows = defined[defined.attribute == attribute]
        expected = spearmanr(rows["skew"], rows.caption_log_odds)
        assert corr[attribute]["n"] == len(rows)
        assert corr[attribute]["rho"] == pytest.approx(expected.statistic)
        assert corr[attribute]["p_value"] == pytest.approx(expected.pvalue)
    assert corr["race"]["by_group"]["Absent"]["n"] == 0 and np.isnan(corr["race"]["by_group"]["Absent"]["rho"])
    ok_flag = (defined.caption_q_value < 0.05) & (defined.caption_log_odds > 0)
    assert (defined.caption_flagged.astype(bool) == ok_flag).all()


def test_coverage_counts_absent_words_and_groups(sparse_tables):
    from clipprobe.analysis.crosscheck import coverage

    rep, co = sparse_tables
    joined, _ = crosscheck(rep, co)
    cover = coverage(joined)
    assert cover == {"n_rows": 60, "n_defined": 32, "n_words": 12, "n_words_absent": 4,
                     "words_absent": ["w10", "w11", "w8", "w9"], "n_groups": 5, "n_groups_absent": 1,
                     "groups_absent": ["race:Absent"]}


def test_a_table_from_before_the_status_column_gives_the_same_crosscheck(sparse_tables):
    """A counts folder written by an older clipprobe (absent words and groups with numbers, q-values over
    every row) is read from its counts: the same join and correlations as a new one."""
    from clipprobe.analysis.significance import bh_adjust

    rep, co = sparse_tables
    old = co.drop(columns="status").copy()
    a = old.n_both.to_numpy(float)
    b, c = old.n_word - a, old.n_group - a
    d = old.n_captions - old.n_word - old.n_group + a
    old["log_odds"] = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    old["p_value"] = old["p_value"].fillna(1.0)
    old["q_value"] = bh_adjust(old["p_value"].to_numpy())
    j_new, c_new = crosscheck(rep, co)
    j_old, c_old = crosscheck(rep, old)
    pd.testing.assert_frame_equal(j_old[j_new.columns], j_new)
    assert repr(c_old) == repr(c_new)          # nan == nan in a repr


def test_too_few_defined_rows_is_a_one_line_refusal(sparse_tables):
    from clipprobe.analysis.crosscheck import MIN_ROWS

    rep, co = sparse_tables
    few = rep[rep.word.isin(["w0", "w9", "w10"])]          # one word present: 4 defined rows
    assert MIN_ROWS == 10
    with pytest.raises(DataError) as err:
        crosscheck(few, co, source="caption counts folder X")
    assert str(err.value) == ("caption counts folder X: 4 (word, attribute, group) row(s) in common with the report "
                              "have a defined caption association, fewer than the 10 the cross-check needs "
                              "(2 of 3 words and 1 of 5 groups never occur in the captions)")
    joined, _ = crosscheck(few, co, min_rows=4)
    assert (joined.caption_status == "ok").sum() == 4


def test_scatter_draws_defined_rows_only(sparse_tables):
    rep, co = sparse_tables
    joined, corr = crosscheck(rep, co)
    ax = crosscheck_scatter(joined, attribute="race", correlations=corr)
    ys = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections])
    want = joined[(joined.attribute == "race") & (joined.caption_status == "ok")]
    assert sorted(ys) == pytest.approx(sorted(want.caption_log_odds))
    assert f"n={len(want)}" in ax.get_title()


def test_write_crosscheck_records_and_the_cli_prints_what_is_absent(sparse_tables, tmp_path):
    import json

    from clipprobe._io import write_parquet
    from clipprobe.report.crosscheck import write_crosscheck

    rep, co = sparse_tables
    counts = tmp_path / "counts"
    write_parquet(counts / "cooccurrence.parquet", co)
    written = write_crosscheck(rep, counts, tmp_path / "out")
    data = json.loads(written[1].read_text())
    assert (data["n_rows"], data["n_defined"], data["n_words_absent"], data["n_groups_absent"]) == (60, 32, 4, 1)
    assert data["groups_absent"] == ["race:Absent"] and data["min_rows"] == 10
    assert data["spearman_skew_vs_caption_log_odds"]["race"]["n"] == 16        # 8 words x White, Black
    table = pd.read_parquet(written[0])
    assert table.caption_log_odds.isna().sum() == 28 and set(table.caption_status) >= {"ok", "word absent"}
    # too few rows: nothing is written
    with pytest.raises(DataError, match="fewer than the 10 the cross-check needs"):
        write_crosscheck(rep[rep.word.isin(["w0", "w9"])], counts, tmp_path / "few")
    assert not (tmp_path / "few").exists()
    # the command's line (tests/test_report.py runs the command)
    from clipprobe.cli.report import crosscheck_coverage_line

    line = crosscheck_coverage_line(data)
    assert line.startswith("caption association defined for 32 of 60 rows; 4 of 12 words and 1 of 5 groups")
    assert "race:Absent" in line
