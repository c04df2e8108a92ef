"""crosscheck: retrieval skew joined with caption co-occurrence, Spearman against scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from clipprobe.captions.stats import cooccurrence_table
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
    assert "rho=" in ax.get_title() and ax.get_xlabel() == "retrieval skew (model)"
