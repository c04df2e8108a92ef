"""Co-occurrence statistics against scipy and statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import fisher_exact
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests

from clipprobe.captions.stats import COLUMNS, cooccurrence_table


@pytest.fixture()
def table():
    rng = np.random.default_rng(3)
    n_captions = 5000
    words = ["terrorist", "nurse", "ceo", "rare"]
    groups = [("race", "Middle Eastern"), ("race", "White"), ("gender", "Female")]
    n_word = np.array([300, 120, 80, 2])
    n_group = np.array([250, 900, 1400])
    n_both = np.minimum.outer(n_word, n_group) * rng.uniform(0, 0.6, size=(4, 3))
    n_both = n_both.astype(np.int64)
    n_both[3] = [0, 2, 1]
    return cooccurrence_table(words, groups, n_captions, n_word, n_group, n_both), n_captions


def test_columns_and_counts(table):
    df, n = table
    assert list(df.columns) == list(COLUMNS)
    assert len(df) == 12
    row = df[(df.word == "nurse") & (df.group == "White")].iloc[0]
    assert row.n_word == 120 and row.n_group == 900 and row.n_captions == n
    assert row.expected == pytest.approx(120 * 900 / n)
    assert row.lift == pytest.approx(row.n_both / row.expected)


def test_fisher_exact_greater(table):
    df, n = table
    for r in df.itertuples():
        a, b, c = r.n_both, r.n_word - r.n_both, r.n_group - r.n_both
        d = n - r.n_word - r.n_group + r.n_both
        p = fisher_exact([[a, b], [c, d]], alternative="greater").pvalue
        assert r.p_value == pytest.approx(p, rel=1e-9, abs=1e-300)


def test_log_odds_and_interval_match_statsmodels(table):
    df, n = table
    for r in df.itertuples():
        a, b, c = r.n_both, r.n_word - r.n_both, r.n_group - r.n_both
        d = n - r.n_word - r.n_group + r.n_both
        t = Table2x2(np.array([[a, b], [c, d]], dtype=float) + 0.5)
        assert r.log_odds == pytest.approx(t.log_oddsratio, rel=1e-12)
        assert r.log_odds_ci_low == pytest.approx(t.log_oddsratio - 1.96 * t.log_oddsratio_se, rel=1e-12)
        assert r.log_odds_ci_high == pytest.approx(t.log_oddsratio + 1.96 * t.log_oddsratio_se, rel=1e-12)


def test_bh_over_all_rows(table):
    df, _ = table
    q = multipletests(df.p_value.to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(df.q_value.to_numpy(), q, rtol=1e-12)


def test_zero_expected_gives_nan_lift():
    df = cooccurrence_table(["w"], [("gender", "Male")], 10, [0], [3], [[0]])
    assert np.isnan(df.lift.iloc[0]) and df.expected.iloc[0] == 0
    assert df.p_value.iloc[0] == pytest.approx(1.0)
