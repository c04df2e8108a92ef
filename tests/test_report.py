"""`clipprobe report` end to end on a tiny real model and a generated FairFace-layout dataset."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli
from clipprobe.report.store import FORMAT_VERSION
from facegen import write_fairface

WORDS = """name: small
categories:
  criminal justice: [terrorist, thief, mentally ill, aggressive]
  behavioral: [aggressive, lazy, ambitious]
  occupation: [nurse, CEO, engineer, doctor]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_files):
    tmp = tmp_path_factory.mktemp("report")
    root = write_fairface(tmp / "fairface", n=120, corrupt=(3,))
    config, weights, arch = tiny_model_files
    tax = tmp / "small.yaml"
    tax.write_text(WORDS)
    base = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{root}",
            "--cache-dir", str(tmp / "cache"), "--device", "cpu", "--workers", "0", "--taxonomy", str(tax),
            "--k", "15", "--bootstrap", "60", "--seed", "3"]
    out = tmp / "rep"
    r = CliRunner().invoke(cli, ["report", *base, "--out", str(out), "--no-figures", "--no-html"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "base": base, "out": out, "root": root, "output": r.output}


def test_files_and_columns(setup):
    out = setup["out"]
    groups = pd.read_parquet(out / "groups.parquet")
    words = pd.read_parquet(out / "words.parquet")
    summary = pd.read_csv(out / "summary.csv")
    run = json.loads((out / "run.json").read_text())
    from clipprobe.analysis.probe import GROUP_COLUMNS, SUMMARY_COLUMNS, WORD_COLUMNS

    assert list(groups.columns) == list(GROUP_COLUMNS)
    assert list(words.columns) == list(WORD_COLUMNS)
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    for col in ["share_ci_low", "skew_ci_high", "low_count", "q_vs_controls", "flagged_vs_controls"]:
        assert col in groups.columns
    for col in ["max_skew_null", "max_skew_excess", "p_max_skew", "p_min_skew", "norm_entropy_mm", "ndkl_at_k",
                "ndkl_full"]:
        assert col in words.columns
    # intervals that did not pass the coverage check are not published
    assert not {"max_skew_ci_low", "norm_entropy_ci_low"} & set(words.columns)
    assert (groups["low_count"] == (groups["count"] < 5)).all()
    assert run["controls"] == {"name": "controls", "n_queries": 220}
    # Each unique word once per attribute; a word in two categories keeps both.
    assert len(words) == 10 * 4
    # category is a list column (list<string> in the parquet files), not a joined string
    import pyarrow.parquet as pq

    for name in ("groups.parquet", "words.parquet"):
        assert str(pq.read_schema(out / name).field("category").type) in ("list<element: string>",
                                                                            "large_list<element: large_string>")
    assert all(list(c) == ["criminal justice", "behavioral"]
               for c in words.loc[words["word"] == "aggressive", "category"])
    assert all(list(c) == ["criminal justice"] for c in groups.loc[groups["word"] == "thief", "category"])
    # top_groups is structured: records of group and mean skew, the three of highest mean skew
    structured = pd.read_parquet(out / "summary.parquet")
    assert "struct" in str(pq.read_schema(out / "summary.parquet").field("top_groups").type)
    for row in structured.itertuples(index=False):
        tops = list(row.top_groups)
        gex = groups.explode("category")
        part = gex[(gex["category"] == row.category) & (gex["attribute"] == row.attribute)]
        means = part.groupby("group")["skew"].mean().sort_values(ascending=False)
        over = means[means > 0]          # only over-represented groups: none is an empty list
        assert len(tops) == min(3, len(over))
        assert [t["mean_skew"] for t in tops] == pytest.approx(list(over.iloc[:3]), abs=1e-12)
        assert all(t["mean_skew"] == pytest.approx(means[t["group"]], abs=1e-12) for t in tops)   # ties in any order
    for text, records in zip(summary["top_groups"], structured["top_groups"]):
        want = "; ".join(f"{t['group']} ({t['mean_skew']:+.2f})" for t in records)
        assert (text if isinstance(text, str) else "") == want
    assert list(words.loc[words["word"] == "lazy", "prompts"].iloc[0]) == ["a photo of a lazy person"]
    assert run["format_version"] == FORMAT_VERSION and run["k"] == 15 and run["bootstrap"] == 60
    assert run["command"] == "report" and run["record_version"] == 1
    assert run["dataset"]["n_images"] == 119 and run["dataset"]["fingerprint"]
    assert {"versions", "model", "timings_s", "config", "files"} <= set(run)
    assert set(summary["attribute"]) == {"race", "gender", "age", "race_gender"}


def test_statistics_agree_with_oracles(setup):
    from scipy.stats import hypergeom
    from statsmodels.stats.multitest import multipletests

    groups = pd.read_parquet(setup["out"] / "groups.parquet")
    n = 119
    # counts sum to k, shares to 1 per (word, attribute)
    sums = groups.groupby(["word", "attribute"])[["count", "share"]].sum()
    assert (sums["count"] == 15).all() and np.allclose(sums["share"], 1)
    # base shares: a hand-written groupby over the label file, without the unreadable image
    labels = pd.read_csv(setup["root"] / "fairface_label_val.csv").drop(index=3)
    race = labels["race"].value_counts(normalize=True)
    got = groups[(groups["attribute"] == "race") & (groups["word"] == "nurse")].set_index("group")["base_share"]
    assert np.allclose(got.sort_index(), race.sort_index())
    sizes = (groups["base_share"] * n).round().astype(int)
    expected = hypergeom.sf(groups["count"] - 1, n, sizes, 15)
    assert np.allclose(groups["p_over"], expected)
    assert np.allclose(groups["q_over"], multipletests(groups["p_over"], method="fdr_bh")[1])
    assert (groups["flagged"] == (groups["q_over"] < 0.05)).all()
    skew = np.log(np.maximum(groups["count"], 1) / 15 / groups["base_share"])
    assert np.allclose(groups["skew"], skew)
    assert (groups["share_ci_low"] <= groups["share_ci_high"]).all()


def test_rerun_reuses_finished_words(setup):
    out = setup["out"]
    before = pd.read_parquet(out / "groups.parquet")
    r = CliRunner().invoke(cli, ["report", *setup["base"], "--out", str(out), "--no-figures", "--no-html"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "reused 1 finished chunk(s), computed 0" in r.output
    pd.testing.assert_frame_equal(before, pd.read_parquet(out / "groups.parquet"))


def test_same_seed_same_intervals_other_seed_differs(setup, tmp_path):
    base = [a if a != "3" else "4" for a in setup["base"]]
    r = CliRunner().invoke(cli, ["report", *base, "--out", str(tmp_path / "b"), "--no-figures", "--no-html"])
    assert r.exit_code == 0, r.output
    a = pd.read_parquet(setup["out"] / "words.parquet")
    b = pd.read_parquet(tmp_path / "b" / "words.parquet")
    assert np.allclose(a["max_skew"], b["max_skew"])                       # point estimates do not depend on the seed
    assert not np.allclose(a["stability"], b["stability"], equal_nan=True)  # the bootstrap does
    assert not np.allclose(a["max_skew_null"], b["max_skew_null"])        # and so does the permutation null


def test_label_shuffled_dataset_flags_at_most_alpha(tmp_path, tiny_model_files):
    """Null calibration through the whole pipeline: labels shuffled against the images."""
    root = write_fairface(tmp_path / "ff", n=150, seed=7)
    csv = root / "fairface_label_val.csv"
    table = pd.read_csv(csv)
    rng = np.random.default_rng(0)
    for col in ("race", "gender", "age"):
        table[col] = rng.permutation(table[col].to_numpy())
    table.to_csv(csv, index=False)
    config, weights, arch = tiny_model_files
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", "--model", f"{arch}:{weights}", "--model-config", str(config),
                                 "--dataset", f"fairface:{root}", "--cache-dir", str(tmp_path / "c"),
                                 "--device", "cpu", "--workers", "0", "--taxonomy", "sobit-core", "--k", "20",
                                 "--bootstrap", "0", "--out", str(out), "--no-figures", "--no-html"])
    assert r.exit_code == 0, r.output
    groups = pd.read_parquet(out / "groups.parquet")
    assert len(groups) > 5000
    assert groups["flagged"].mean() <= 0.05
    assert groups["flagged_vs_controls"].mean() <= 0.05


def test_incompatible_report_folder(setup, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"format_version": 0}))
    r = CliRunner().invoke(cli, ["report", *setup["base"], "--out", str(out), "--no-figures", "--no-html"])
    assert r.exit_code == 1 and "format 0" in r.output and "use a new output folder" in r.output


def test_report_folder_below_a_file_fails_before_any_work(setup, tmp_path, monkeypatch):
    import clipprobe.pipeline.probe as probe_mod

    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    monkeypatch.setattr(probe_mod, "open_probe", lambda *a, **k: pytest.fail("the probe was opened"))
    r = CliRunner().invoke(cli, ["report", *setup["base"], "--out", str(taken / "run"), "--no-figures", "--no-html"])
    assert r.exit_code == 1, r.output
    assert r.output.strip() == f"Error: report folder {taken / 'run'} cannot be made: {taken} is a file, not a folder"
    assert taken.read_text() == "mine"


@pytest.mark.parametrize("extra, message", [
    (["--attributes", "race,religion"], "unknown attribute 'religion'"),
    (["--k", "1000"], "k=1000 is larger than the dataset"),
    (["--alpha", "1.5"], "--alpha must be between 0 and 1"),
    (["--alpha", "0"], "--alpha must be between 0 and 1"),
    (["--bootstrap", "-5"], "--bootstrap must be 0 or more, got -5"),
    (["--seed", "-1"], "--seed must be 0 or more, got -1"),
])
def test_bad_input(setup, tmp_path, extra, message):
    r = CliRunner().invoke(cli, ["report", *setup["base"], *extra, "--out", str(tmp_path / "x")])
    assert r.exit_code in (1, 2), r.output
    assert message in r.output and "Traceback" not in r.output


def _captions(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    texts = (["a nurse and a woman smiling"] * 30 + ["portrait of a man, engineer at work"] * 20
             + ["a lazy cat on a sofa"] * 10 + ["doctor with an asian patient"] * 5 + [None] * 3
             + ["a young man running"] * 40)
    table = pa.table({"URL": [f"http://x/{i}.jpg" for i in range(len(texts))], "TEXT": texts})
    path = tmp_path / "laion" / "part-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(table, path)
    return path


def test_crosscheck_joins_report_and_captions(setup, tmp_path):
    path = _captions(tmp_path)
    counts = tmp_path / "counts"
    tax = setup["tmp"] / "small.yaml"
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(path), "--taxonomy", str(tax),
                                 "--out", str(counts), "--workers", "1"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["crosscheck", str(setup["out"]), str(counts)])
    assert r.exit_code == 0, r.output
    # 4 of the 10 words (nurse, engineer, lazy, doctor) and 3 groups (Male, Female, an age) occur in the captions
    assert ("caption association defined for 12 of 180 rows; 6 of 10 words and 15 of 18 groups never occur in the "
            "captions") in r.output
    joined = pd.read_parquet(setup["out"] / "crosscheck.parquet")
    row = joined[(joined["word"] == "nurse") & (joined["attribute"] == "gender") & (joined["group"] == "Female")]
    assert int(row["caption_n_both"].iloc[0]) == 30 and int(row["caption_n_word"].iloc[0]) == 30
    report_row = pd.read_parquet(setup["out"] / "groups.parquet").query(
        "word == 'nurse' and attribute == 'gender' and group == 'Female'")
    assert float(row["skew"].iloc[0]) == pytest.approx(float(report_row["skew"].iloc[0]))
    data = json.loads((setup["out"] / "crosscheck.json").read_text())
    assert "gender" in data["spearman_skew_vs_caption_log_odds"]
    assert data["spearman_skew_vs_caption_log_odds"]["gender"]["n"] == 8          # 4 words x Male, Female
    assert data["words_absent"] == ["CEO", "aggressive", "ambitious", "mentally ill", "terrorist", "thief"]
    absent = joined[joined["word"] == "terrorist"]
    assert absent["caption_log_odds"].isna().all() and absent["caption_status"].str.startswith("word absent").all()
    assert (setup["out"] / "figures" / "crosscheck_gender.png").exists()


def test_report_rejects_missing_counts_folder_early(setup, tmp_path):
    r = CliRunner().invoke(cli, ["report", *setup["base"], "--out", str(tmp_path / "r"),
                                 "--captions-counts", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "has no cooccurrence.parquet" in r.output


def test_report_model_label_is_short_for_a_weights_file(setup, tiny_model_files):
    from clipprobe.report.store import load_report

    _, weights, arch = tiny_model_files
    report = load_report(setup["out"])
    assert report.model_label == f"{arch}:{weights.name}"
    assert str(weights) in report.model_spec


def test_report_refuses_counts_with_too_few_defined_rows_early(setup, tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import clipprobe.pipeline.probe as probe_mod

    texts = ["a nurse and a woman"] * 5 + ["a man at the beach"] * 3
    path = tmp_path / "laion" / "part-0.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"TEXT": texts}), path)
    counts = tmp_path / "counts"
    r = CliRunner().invoke(cli, ["captions", "count", "--captions", str(path), "--taxonomy",
                                 str(setup["tmp"] / "small.yaml"), "--out", str(counts), "--workers", "1"])
    assert r.exit_code == 0, r.output
    monkeypatch.setattr(probe_mod, "open_probe", lambda *a, **k: pytest.fail("the probe was opened"))
    r = CliRunner().invoke(cli, ["report", *setup["base"], "--out", str(tmp_path / "r"),
                                 "--captions-counts", str(counts)])
    assert r.exit_code == 1, r.output
    assert r.output.strip() == (f"Error: caption counts folder {counts}: 2 (word, attribute, group) row(s) in common "
                                "with the report have a defined caption association, fewer than the 10 the "
                                "cross-check needs (9 of 10 words and 16 of 18 groups never occur in the captions)")
    assert not (tmp_path / "r" / "groups.parquet").exists()


def _summary(output):
    return next(line for line in output.splitlines() if line.startswith("report: "))


def test_summary_line_leads_with_the_flag_against_controls(setup):
    run = json.loads((setup["out"] / "run.json").read_text())
    groups = pd.read_parquet(setup["out"] / "groups.parquet")
    assert run["controls_ran"] is True and run["headline_flag"] == "flagged_vs_controls"
    assert run["n_flagged_vs_controls"] == int(groups["flagged_vs_controls"].sum())
    assert run["n_flagged"] == int(groups["flagged"].sum())
    line = _summary(setup["output"])
    assert line == (f"report: 10 words x 4 attributes, {len(groups)} rows: {run['n_flagged_vs_controls']} flagged "
                    f"against the control queries at FDR 0.05; {run['n_flagged']} with a top-k that is not a random "
                    "sample of faces (hypergeometric test, FDR 0.05)")


def test_controls_none_leaves_the_control_columns_null_and_says_so(setup, tmp_path):
    import pyarrow.parquet as pq

    base = [a if a != "60" else "0" for a in setup["base"]]           # no bootstrap: faster
    out = tmp_path / "r"
    r = CliRunner().invoke(cli, ["report", *base, "--out", str(out), "--controls", "none", "--permutations", "20",
                                 "--no-figures", "--no-html"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    groups = pq.read_table(out / "groups.parquet")
    for column in ("control_share", "p_vs_controls", "q_vs_controls", "flagged_vs_controls"):
        assert groups.column(column).null_count == groups.num_rows, column
    assert pq.read_table(out / "words.parquet").column("n_flagged_vs_controls").null_count == 40
    assert pd.read_csv(out / "summary.csv")["share_flagged_vs_controls"].isna().all()
    run = json.loads((out / "run.json").read_text())
    assert run["controls_ran"] is False and run["n_flagged_vs_controls"] is None and run["controls"] is None
    assert _summary(r.output).endswith("rows: no control test was run (no control queries), so none is flagged "
                                       f"against them; {run['n_flagged']} with a top-k that is not a random sample "
                                       "of faces (hypergeometric test, FDR 0.05)")


def test_interval_ends_at_exact_bounds_are_exact():
    """A count of 0 of k has a share interval starting at exactly 0 (and k of k ending at exactly 1): the Wilson
    formula leaves 3.5e-18 in floating point, which a reader of the tables would take for a number."""
    from statsmodels.stats.proportion import proportion_confint

    from clipprobe.analysis.intervals import share_interval

    counts = np.arange(0, 101)
    for method in ("wilson", "jeffreys"):
        lo, hi = share_interval(counts, 100, method=method)
        assert lo[0] == 0.0 and hi[-1] == 1.0
        ref_lo, ref_hi = proportion_confint(counts, 100, alpha=0.05, method=method)
        np.testing.assert_allclose(lo[1:], ref_lo[1:], rtol=0, atol=1e-15)
        np.testing.assert_allclose(hi[:-1], ref_hi[:-1], rtol=0, atol=1e-15)
        assert (lo[1:] > 1e-4).all() and (hi[:-1] < 1 - 1e-4).all()


def test_report_tables_have_no_floating_residue_at_zero(setup):
    groups = pd.read_parquet(setup["out"] / "groups.parquet")
    zero = groups[groups["count"] == 0]
    assert len(zero) and (zero["share_ci_low"] == 0.0).all()
    lows = groups["share_ci_low"].to_numpy()
    assert not ((lows > 0) & (lows < 1e-12)).any()


def test_an_old_report_folder_reads_into_the_same_types(tmp_path):
    """A folder written before categories were lists and top_groups records (categories joined by "; ",
    no summary.parquet) loads with list categories and top_groups records."""
    from clipprobe.report.store import load_report
    from reportgen import make_report

    folder = make_report(tmp_path / "old", words={"ceo": ("occupation", "status"), "nurse": "occupation"},
                         images=False, n_boot=5)
    assert not (folder / "summary.parquet").exists()
    assert pd.read_parquet(folder / "words.parquet")["category"].map(type).eq(str).all()
    report = load_report(folder)
    assert report.words.loc[report.words["word"] == "ceo", "category"].iloc[0] == ["occupation", "status"]
    assert report.categories == ["occupation", "status"]
    assert all(isinstance(t, list) and all(set(r) == {"group", "mean_skew"} for r in t)
               for t in report.summary["top_groups"])


def test_top_groups_text_reads_back():
    from clipprobe.report.store import top_groups_of, top_groups_text

    records = [{"group": "Middle Eastern", "mean_skew": 0.4196}, {"group": "group (B)", "mean_skew": -1.5},
               {"group": "x", "mean_skew": float("inf")}]
    text = top_groups_text(records)
    assert text == "Middle Eastern (+0.42); group (B) (-1.50); x (+inf)"
    assert top_groups_of(text) == [{"group": "Middle Eastern", "mean_skew": 0.42}, {"group": "group (B)", "mean_skew": -1.5},
                                   {"group": "x", "mean_skew": float("inf")}]
    assert top_groups_of("White; Black") == [{"group": "White", "mean_skew": None}, {"group": "Black", "mean_skew": None}]
