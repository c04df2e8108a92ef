"""Model comparison: tables against hand-computed oracles, intersections, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli
from clipprobe.report.compare import compare_entropy_plot, compare_reports, compare_skew_scatter, write_comparison
from clipprobe.errors import ClipprobeError
from clipprobe.report.store import load_report, table_checksums
from reportgen import make_report

WORDS = {"nurse": "occupation", "engineer": "occupation", "janitor": "occupation", "ceo": ("occupation", "status"),
         "rich": "status", "poor": "status", "kind": "traits", "lazy": "traits"}


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    root = tmp_path_factory.mktemp("cmp")
    a = make_report(root / "a", words=WORDS, model="A:x", seed=0, images=False, n_boot=5)
    b = make_report(root / "b", words=WORDS, model="B:y", seed=3, images=False, n_boot=5)
    return load_report(a), load_report(b)


def _rank_corr(x, y):
    """Spearman rho as the Pearson correlation of average ranks (numpy/pandas oracle)."""
    rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
    return float(np.corrcoef(rx, ry)[0, 1])


def test_correlations_match_rank_oracle(two):
    a, b = two
    res = compare_reports([a, b])
    assert res.names == ["A:x", "B:y"]
    for attr in ("race", "gender", "race_gender"):
        row = res.correlations[res.correlations["attribute"] == attr].iloc[0]
        wa = a.words[a.words["attribute"] == attr].set_index("word")["max_skew"]
        wb = b.words[b.words["attribute"] == attr].set_index("word")["max_skew"].loc[wa.index]
        assert row["n_words"] == len(WORDS)
        if wa.std() > 0 and wb.std() > 0:
            assert row["spearman_rho"] == pytest.approx(_rank_corr(wa.to_numpy(), wb.to_numpy()), abs=1e-12)


def test_category_table_matches_hand_computation(two):
    a, b = two
    res = compare_reports([a, b])
    for name, rep in zip(res.names, (a, b)):
        for cat in ("occupation", "status", "traits"):
            for attr in ("race", "gender"):
                w = rep.words[(rep.words["attribute"] == attr)]
                members = [r for r in w.itertuples() if cat in r.category]
                want_ent = sum(r.norm_entropy for r in members) / len(members)
                want_flag = sum(r.n_flagged > 0 for r in members) / len(members)
                got = res.categories[(res.categories["model"] == name) & (res.categories["category"] == cat)
                                     & (res.categories["attribute"] == attr)]
                assert len(got) == 1
                assert got["n_words"].iloc[0] == len(members)
                assert got["mean_norm_entropy"].iloc[0] == pytest.approx(want_ent)
                assert got["share_flagged"].iloc[0] == pytest.approx(want_flag)


def test_identical_reports_agree_and_edited_ones_disagree(two, tmp_path):
    a, _ = two
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in ("groups.parquet", "words.parquet", "summary.csv", "run.json"):
        (copy / f).write_bytes((a.path / f).read_bytes())
    same = compare_reports([a, load_report(copy)], names=["one", "two"])
    assert same.disagreements.empty
    rhos = same.correlations["spearman_rho"].dropna().tolist()
    assert rhos and rhos == pytest.approx([1.0] * len(rhos))
    # change one top group and flag one more group in the copy
    w = pd.read_parquet(copy / "words.parquet")
    sel = (w["word"] == "kind") & (w["attribute"] == "gender")
    w.loc[sel, "top_group"] = "Male" if w.loc[sel, "top_group"].iloc[0] != "Male" else "Female"
    w.to_parquet(copy / "words.parquet", index=False)
    g = pd.read_parquet(copy / "groups.parquet")
    target = (g["word"] == "poor") & (g["attribute"] == "race") & (g["group"] == "Indian")
    g.loc[target, "flagged"] = ~g.loc[target, "flagged"]
    g.to_parquet(copy / "groups.parquet", index=False)
    run = json.loads((copy / "run.json").read_text())
    run["files"] = table_checksums(copy)  # a report of its own now, not a half-replaced one
    (copy / "run.json").write_text(json.dumps(run))
    res = compare_reports([a, load_report(copy)], names=["one", "two"])
    got = {(r.word, r.attribute, r.top_group_differs, r.flagged_differs) for r in res.disagreements.itertuples()}
    assert got == {("kind", "gender", True, False), ("poor", "race", False, True)}


def test_different_taxonomies_compare_on_intersection_with_note(two, tmp_path):
    a, _ = two
    fewer = dict(list(WORDS.items())[:5], extra="traits")
    c = load_report(make_report(tmp_path / "c", words=fewer, model="C:z", seed=5, images=False, n_boot=5))
    res = compare_reports([a, c])
    shared = set(fewer) & set(WORDS)
    assert set(res.words["word"]) == shared
    assert any("A:x: 12 of 32" in n for n in res.notes)
    assert any("C:z: 4 of 24" in n for n in res.notes)


def test_compare_refuses_bad_input(two, tmp_path):
    a, _ = two
    with pytest.raises(ClipprobeError, match="at least two reports, got 1"):
        compare_reports([a])
    other = load_report(make_report(tmp_path / "o", words={"x": "c", "y": "c"}, images=False, n_boot=5))
    with pytest.raises(ClipprobeError, match="share no \\(word, attribute\\) pair"):
        compare_reports([a, other])


def test_same_model_spec_gets_distinct_names(two, tmp_path):
    a, _ = two
    again = load_report(make_report(tmp_path / "again", words=WORDS, model="A:x", seed=9, images=False, n_boot=5))
    res = compare_reports([a, again])
    assert len(set(res.names)) == 2 and all(n.startswith("A:x") for n in res.names)


def test_plots_carry_the_data(two):
    res = compare_reports(list(two))
    ax = compare_entropy_plot(res, "race")
    assert len(ax.collections) == 2
    cats = res.categories[res.categories["attribute"] == "race"]
    for coll, name in zip(ax.collections, res.names):
        assert sorted(coll.get_offsets()[:, 0]) == pytest.approx(
            sorted(cats.loc[cats["model"] == name, "mean_norm_entropy"]))
    ax = compare_skew_scatter(res, "gender", *res.names)
    xy = ax.collections[0].get_offsets()
    assert len(xy) == len(WORDS)
    assert "Spearman" in ax.get_title()
    with pytest.raises(ClipprobeError, match="unknown model 'C'"):
        compare_skew_scatter(res, "gender", "C", res.names[0])


def test_write_comparison_and_cli(two, tmp_path):
    a, b = two
    paths = write_comparison(compare_reports([a, b]), tmp_path / "w", formats=("png",))
    names = {p.name for p in paths}
    assert {"compare_categories.csv", "compare_correlations.parquet", "compare_disagreements.csv",
            "compare_entropy_race.png", "compare_skew_gender.png"} <= names
    back = pd.read_csv(tmp_path / "w" / "compare_correlations.csv")
    assert set(back["attribute"]) == {"race", "gender", "age", "race_gender"}

    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["compare", str(a.path), str(b.path), "--out", str(out), "--format", "pdf"])
    assert res.exit_code == 0, res.output
    assert "race: spearman rho(A:x, B:y)" in res.output
    assert (out / "compare_entropy_gender.pdf").read_bytes().startswith(b"%PDF")
    res = CliRunner().invoke(cli, ["compare", str(a.path), str(b.path), "--out", str(out), "--name", "only"])
    assert res.exit_code == 2 and "--name given 1 times for 2 reports" in res.output
