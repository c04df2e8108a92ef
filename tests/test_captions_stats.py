"""Co-occurrence statistics against scipy and statsmodels."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.stats import fisher_exact
from statsmodels.stats.contingency_tables import Table2x2
from statsmodels.stats.multitest import multipletests

from clipprobe.analysis.cooccurrence import CI_MIN_EXPECTED, COLUMNS, cooccurrence_table, log_odds_interval


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
        if _smallest_expected(a, b, c, d) < CI_MIN_EXPECTED:
            assert np.isnan(r.log_odds_ci_low) and np.isnan(r.log_odds_ci_high)
            continue
        assert r.log_odds_ci_low == pytest.approx(t.log_oddsratio - 1.96 * t.log_oddsratio_se, rel=1e-12)
        assert r.log_odds_ci_high == pytest.approx(t.log_oddsratio + 1.96 * t.log_oddsratio_se, rel=1e-12)


def _smallest_expected(a, b, c, d):
    """The smallest expected cell count of a 2x2 table under independence given its margins, cell by cell."""
    n = a + b + c + d
    rows, cols = (a + b, c + d), (a + c, b + d)
    return min(r * q / n for r in rows for q in cols)


def test_interval_withheld_exactly_where_a_cell_expects_fewer_than_ten(table):
    df, _ = table
    assert df.log_odds_ci_low.isna().any() and df.log_odds_ci_low.notna().any()   # the fixture has both kinds
    lo, low, high = log_odds_interval([0, 10, 10], [100, 100, 99], [1000, 1000, 1000], 10000)
    assert np.isfinite(lo).all()
    # expected co-occurrences 10, 10 and 9.9: the last is withheld
    assert np.isfinite(low[:2]).all() and np.isnan(low[2]) and np.isnan(high[2])


def _coverage(n_captions, p_word, p_group, odds_ratio, replicates, rng):
    """Coverage of the published log-odds intervals over multinomial tables, and the share published."""
    from scipy.optimize import brentq

    def cells(p11):
        return np.array([p11, p_word - p11, p_group - p11, 1 - p_word - p_group + p11])

    lo, hi = max(0.0, p_word + p_group - 1) + 1e-15, min(p_word, p_group) - 1e-15
    p11 = brentq(lambda m: np.log(m * cells(m)[3] / (cells(m)[1] * cells(m)[2])) - np.log(odds_ratio), lo, hi)
    x = rng.multinomial(n_captions, cells(p11), size=replicates)
    a, b, c, d = x.T
    nw, ng = a + b, a + c
    defined = (nw > 0) & (nw < n_captions) & (ng > 0) & (ng < n_captions)
    est, low, high = log_odds_interval(a[defined], nw[defined], ng[defined], n_captions)
    shown = np.isfinite(low)
    covered = (low[shown] <= np.log(odds_ratio)) & (np.log(odds_ratio) <= high[shown])
    return covered.mean() if shown.sum() >= 200 else None, shown.mean()


GRID = [(n, pw, pg, odds) for n in (10_000, 1_000_000) for pw in (1e-4, 1e-3, 1e-2, 0.1)
        for pg in (0.02, 0.2, 0.5) for odds in (1.0, 2.0, 5.0, 10.0)]


def test_log_odds_interval_coverage_small():
    """Published intervals cover 0.93-0.97 in a few cells of the grid, small and large counts."""
    rng = np.random.default_rng(11)
    for n, pw, pg, odds in [(10_000, 0.01, 0.2, 2.0), (1_000_000, 1e-3, 0.5, 5.0), (10_000, 0.1, 0.02, 10.0)]:
        coverage, _ = _coverage(n, pw, pg, odds, 3000, rng)
        assert 0.93 <= coverage <= 0.97, (n, pw, pg, odds, coverage)


@pytest.mark.slow
def test_log_odds_interval_coverage_grid():
    """Every cell of the grid where intervals are published (at least 200 of 4,000 tables) covers 0.93-0.97."""
    rng = np.random.default_rng(12)
    measured = []
    for n, pw, pg, odds in GRID:
        coverage, _ = _coverage(n, pw, pg, odds, 4000, rng)
        if coverage is not None:
            measured.append(coverage)
            assert 0.93 <= coverage <= 0.97, (n, pw, pg, odds, coverage)
    assert len(measured) >= 60


def test_bh_over_all_rows(table):
    df, _ = table
    q = multipletests(df.p_value.to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(df.q_value.to_numpy(), q, rtol=1e-12)


def test_zero_expected_is_an_undefined_row():
    """A word that occurs in no caption has no association: lift, log-odds, interval and test are null."""
    df = cooccurrence_table(["w"], [("gender", "Male")], 10, [0], [3], [[0]])
    assert np.isnan(df.lift.iloc[0]) and df.expected.iloc[0] == 0
    assert np.isnan(df.p_value.iloc[0]) and np.isnan(df.q_value.iloc[0])
    assert df.status.iloc[0] == "word absent"


@pytest.fixture()
def sparse():
    """Words and groups that never occur (or occur in every caption) next to ordinary ones."""
    n_captions = 8000
    words = ["terrorist", "absent", "everywhere", "rare"]
    groups = [("race", "A"), ("race", "B"), ("gender", "none"), ("gender", "all")]
    n_word = np.array([300, 0, 8000, 3])
    n_group = np.array([250, 900, 0, 8000])
    n_both = np.array([[120, 40, 0, 300],
                       [0, 0, 0, 0],
                       [250, 900, 0, 8000],
                       [0, 3, 0, 3]])
    return cooccurrence_table(words, groups, n_captions, n_word, n_group, n_both), n_captions


def test_structural_zeros_are_null_with_a_status(sparse):
    df, n = sparse
    status = {(r.word, r.group): r.status for r in df.itertuples()}
    assert status[("terrorist", "A")] == "ok" and status[("rare", "A")] == "ok"
    assert status[("absent", "A")] == "word absent"
    assert status[("absent", "none")] == "word absent; group absent"
    assert status[("terrorist", "none")] == "group absent"
    assert status[("everywhere", "B")] == "word in every caption"
    assert status[("rare", "all")] == "group in every caption"
    assert status[("everywhere", "none")] == "group absent; word in every caption"
    bad = df[df.status != "ok"]
    assert len(bad) == 16 - 4
    for column in ("lift", "log_odds", "log_odds_ci_low", "log_odds_ci_high", "p_value", "q_value"):
        assert bad[column].isna().all(), column
    # the example: a cell where word and group are both absent got log-odds 9.68 [4.88, 14.48]
    both_absent = df[(df.word == "absent") & (df.group == "none")].iloc[0]
    assert np.isnan(both_absent.log_odds) and both_absent.n_captions == 8000
    # an absent word got +3.06 for every group: now it has no number for any group
    assert df[df.word == "absent"].log_odds.isna().all()
    # expected stays a count (0 for an absent word or group)
    assert (bad.expected == bad.n_word * bad.n_group / n).all()


def test_sampling_zero_keeps_a_finite_haldane_anscombe_estimate():
    """A zero cell with both margins positive is a sampling zero: 0.5 is added to every cell."""
    # a = 0, b = 0, c = 0 and d = 0 in turn, every margin positive
    # (every cell expects at least 10 captions, so the interval is published)
    tables = {"a0": (0, 100, 100, 800), "b0": (100, 0, 100, 800), "c0": (100, 100, 0, 800), "d0": (100, 100, 800, 0)}
    for name, (a, b, c, d) in tables.items():
        n = a + b + c + d
        df = cooccurrence_table(["w"], [("x", "g")], n, [a + b], [a + c], [[a]])
        r = df.iloc[0]
        assert r.status == "ok" and np.isfinite([r.log_odds, r.log_odds_ci_low, r.log_odds_ci_high]).all(), name
        # an independent computation, written out
        lo = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
        se = np.sqrt(sum(1 / (x + 0.5) for x in (a, b, c, d)))
        assert r.log_odds == pytest.approx(lo, rel=1e-12)
        assert (r.log_odds_ci_low, r.log_odds_ci_high) == pytest.approx((lo - 1.96 * se, lo + 1.96 * se), rel=1e-12)
        # and statsmodels on the table with 0.5 added to every cell
        t = Table2x2(np.array([[a, b], [c, d]], dtype=float) + 0.5)
        assert r.log_odds == pytest.approx(t.log_oddsratio, rel=1e-12)
        assert r.log_odds_ci_high - r.log_odds == pytest.approx(1.96 * t.log_oddsratio_se, rel=1e-12)
        assert r.p_value == pytest.approx(fisher_exact([[a, b], [c, d]], alternative="greater").pvalue, rel=1e-9)
    # the value documented in the module
    r = cooccurrence_table(["w"], [("x", "g")], 100, [10], [10], [[0]]).iloc[0]
    assert round(r.log_odds, 2) == -1.01
    assert np.isnan(r.log_odds_ci_low) and np.isnan(r.log_odds_ci_high)      # that table expects one co-occurrence


def test_defined_rows_match_statsmodels_and_bh_runs_over_them_only(sparse):
    df, n = sparse
    ok = df[df.status == "ok"]
    for r in ok.itertuples():
        a, b, c = r.n_both, r.n_word - r.n_both, r.n_group - r.n_both
        d = n - r.n_word - r.n_group + r.n_both
        t = Table2x2(np.array([[a, b], [c, d]], dtype=float) + 0.5)
        assert r.log_odds == pytest.approx(t.log_oddsratio, rel=1e-12)
        assert r.p_value == pytest.approx(fisher_exact([[a, b], [c, d]], alternative="greater").pvalue, rel=1e-9)
    q = multipletests(ok.p_value.to_numpy(), method="fdr_bh")[1]
    np.testing.assert_allclose(ok.q_value.to_numpy(), q, rtol=1e-12)
    # the undefined rows, had they been tested (p = 1), would have changed the family
    padded = np.concatenate([ok.p_value.to_numpy(), np.ones(len(df) - len(ok))])
    assert not np.allclose(multipletests(padded, method="fdr_bh")[1][:len(ok)], q)


def test_undefined_is_null_in_parquet(sparse, tmp_path):
    import pyarrow.parquet as pq

    from clipprobe._io import write_parquet

    df, _ = sparse
    write_parquet(tmp_path / "c.parquet", df)
    table = pq.read_table(tmp_path / "c.parquet")
    n_bad = int((df.status != "ok").sum())
    for column in ("lift", "log_odds", "p_value", "q_value"):
        assert table.column(column).null_count == n_bad, column
    # the interval is also null where it is withheld (a cell expecting fewer than 10 captions)
    n_withheld = int(((df.status == "ok") & df.log_odds_ci_low.isna()).sum())
    for column in ("log_odds_ci_low", "log_odds_ci_high"):
        assert table.column(column).null_count == n_bad + n_withheld, column
    assert table.column("status").null_count == 0


def test_with_status_reads_an_old_table_as_a_new_one(sparse):
    """A table written before the status column (absent rows with numbers, BH over every row) is
    corrected from its counts; a new table is unchanged."""
    from clipprobe.analysis.significance import bh_adjust
    from clipprobe.analysis.cooccurrence import defined_rows, with_status

    df, n = sparse
    pd.testing.assert_frame_equal(with_status(df), df)
    old = df.drop(columns="status").copy()
    a = old.n_both.to_numpy(float)
    b, c = old.n_word - a, old.n_group - a
    d = n - old.n_word - old.n_group + a
    old["log_odds"] = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    old["p_value"] = np.where(df.status == "ok", df.p_value, 1.0)
    old["q_value"] = bh_adjust(old["p_value"].to_numpy())
    pd.testing.assert_frame_equal(with_status(old)[list(COLUMNS)], df)
    assert list(defined_rows(old).index) == list(df.index[df.status == "ok"])


LEX_NOWHERE = """name: nowhere-lex
attributes:
  gender:
    Male: [hombre]
    Female: [mujer]
"""


def _count_cli(tmp_path, texts, lexicon):
    from click.testing import CliRunner
    from test_captions_count import LEXICON, TAXONOMY

    from clipprobe.captions.synth import write_laion_parquet
    from clipprobe.cli import cli

    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(lexicon if lexicon is not None else LEXICON)
    write_laion_parquet(tmp_path / "a.parquet", texts)
    out = tmp_path / "counts"
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(tmp_path / "a.parquet"), "--out", str(out),
                                 "--workers", "1", "--taxonomy", str(tmp_path / "tax.yaml"),
                                 "--lexicon", str(tmp_path / "lex.yaml")])
    return r, out


def test_count_lists_only_defined_associations(tmp_path):
    texts = (["a terrorist man"] * 3 + ["a nurse woman"] * 4 + ["a man"] * 5 + ["a thief"] * 2
             + ["an arab woman"] * 2 + ["a cat"] * 10)
    r, out = _count_cli(tmp_path, texts, None)
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "cooccurrence.parquet")
    defined = table[table.status == "ok"]
    # 3 of 7 words (terrorist, nurse, thief) and 3 of 5 groups (Middle Eastern, Male, Female) occur
    assert len(defined) == 9 and set(defined.word) == {"terrorist", "nurse", "thief"}
    assert "9 of 35 word-group rows have a defined association; 4 of 7 words and 2 of 5 groups occur in no caption" \
        in r.output
    listed = r.output.split("strongest word-group associations (log-odds):")[1].splitlines()[1:10]
    assert len(listed) == 9 and not any("nan" in line for line in listed)
    assert {line.split()[0] for line in listed} == {"terrorist", "nurse", "thief"}
    from click.testing import CliRunner

    from clipprobe.cli import cli

    shown = CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "mugger"])
    assert shown.exit_code == 0 and "undefined (word absent)" in shown.output and "nan" not in shown.output
    data = json.loads(CliRunner().invoke(cli, ["captions", "show", str(out), "--word", "mugger",
                                                "--format", "json"]).output)
    assert all(g["log_odds"] is None and g["status"].startswith("word absent") for g in data["groups"])


def test_a_lexicon_that_matches_nothing_is_an_error_naming_it(tmp_path):
    r, out = _count_cli(tmp_path, ["a terrorist man", "a nurse woman", "a thief"], LEX_NOWHERE)
    assert r.exit_code == 1
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output
    assert lines[0].startswith("Error: lexicon 'nowhere-lex' (") and "matches none of the 3 captions" in lines[0]
    assert not (out / "cooccurrence.parquet").exists()


def test_a_taxonomy_that_matches_nothing_is_an_error_naming_it(tmp_path):
    r, out = _count_cli(tmp_path, ["a man", "a woman", "arab men"], None)
    assert r.exit_code == 1
    assert r.output.strip() == ("Error: taxonomy 'mini': none of its 7 words occurs in the 3 captions, so no "
                                "word-group association is defined")
    assert not (out / "cooccurrence.parquet").exists()


def test_strongest_words_and_heatmap_use_defined_rows_only(sparse):
    """An old table gave an absent word log-odds +3 for every group: it topped the strongest words."""
    from clipprobe.captions.figures import lift_heatmap, strongest_words

    df, n = sparse
    assert strongest_words(df, top=10) == ["terrorist"]                  # n_both >= 5 first
    assert set(strongest_words(df, top=10, min_both=0)) == {"terrorist", "rare"}
    old = df.drop(columns="status").copy()
    a = old.n_both.to_numpy(float)
    b, c = old.n_word - a, old.n_group - a
    d = n - old.n_word - old.n_group + a
    old["log_odds"] = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    old["lift"] = old["lift"].fillna(1.0)
    assert strongest_words(old, top=10) == ["terrorist"]                 # not "everywhere" (n_both 8000)
    assert set(strongest_words(old, top=10, min_both=0)) == {"terrorist", "rare"}      # not "absent"
    ax = lift_heatmap(old, words=["terrorist", "absent"])
    data = ax.images[0].get_array()
    assert data.mask[1].all()                                      # the absent word: every cell grey
    assert list(data.mask[0]) == [False, False, True, True]        # terrorist: groups "none" and "all" grey


def test_heatmap_of_a_table_without_a_defined_row_is_drawn_with_a_note():
    from clipprobe.captions.figures import lift_heatmap

    df = cooccurrence_table(["w", "v"], [("g", "a"), ("g", "b")], 2, [2, 0], [1, 0], [[1, 0], [0, 0]])
    assert (df.status != "ok").all()
    ax = lift_heatmap(df)
    assert ax.images[0].get_array().mask.all() and [t.get_text() for t in ax.texts] == [
        "no defined word-group association"]
