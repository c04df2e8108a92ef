"""`clipprobe subsets` end to end on a tiny real model and a generated FairFace-layout dataset."""

from __future__ import annotations

import json

import click
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from facegen import write_fairface

N_IMAGES = 200
WORDS = """name: small
categories:
  occupation: [nurse, CEO, engineer]
  behavioral: [lazy, ambitious]
"""


def _root_group():
    """The command under a group that turns library errors into one-line messages, as `clipprobe` does."""
    from clipprobe.cli import _Group, cli
    from clipprobe.cli.subsets import subsets

    if "subsets" in cli.commands:
        return cli

    @click.group(cls=_Group)
    def root() -> None:
        pass

    root.add_command(subsets)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_files):
    tmp = tmp_path_factory.mktemp("subsets")
    root = write_fairface(tmp / "fairface", n=N_IMAGES, corrupt=(5,))
    config, weights, arch = tiny_model_files
    tax = tmp / "small.yaml"
    tax.write_text(WORDS)
    base = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{root}",
            "--cache-dir", str(tmp / "cache"), "--device", "cpu", "--workers", "0", "--taxonomy", str(tax),
            "--k", "12", "--permutations", "100", "--controls", "none", "--attributes", "race,gender"]
    out = tmp / "km"
    group = _root_group()
    r = CliRunner().invoke(group, ["subsets", *base, "--by", "kmeans:3", "--min-size", "30", "--typical", "4",
                                   "--no-figures", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "base": base, "out": out, "root": root, "output": r.output, "group": group}


def _run(setup, *args):
    return CliRunner().invoke(setup["group"], ["subsets", *setup["base"], *args])


def test_files_and_columns(setup):
    from clipprobe.analysis.probe import GROUP_COLUMNS, WORD_COLUMNS
    from clipprobe.analysis.subsets import DISPERSION_COLUMNS, KL_COLUMNS, SUBSET_KEYS, VS_GLOBAL_COLUMNS
    from clipprobe.report.subsets import load_subsets

    out = setup["out"]
    folder = load_subsets(out)
    assert list(folder.groups.columns) == [*SUBSET_KEYS, *GROUP_COLUMNS, *VS_GLOBAL_COLUMNS]
    assert list(folder.words.columns) == [*SUBSET_KEYS, *WORD_COLUMNS, *KL_COLUMNS]
    assert list(folder.dispersion.columns) == list(DISPERSION_COLUMNS)
    assert list(folder.assignment.columns) == ["image", "subset"]
    assert len(folder.assignment) == N_IMAGES - 1                      # the unreadable image is not embedded
    assert (folder.assignment["subset"].notna()).all()
    sizes = folder.assignment["subset"].value_counts()
    assert (sizes >= 30).all() and set(sizes.index) == set(folder.clusters["subset"])
    assert dict(zip(folder.clusters["subset"], folder.clusters["n_images"])) == sizes.to_dict()
    assert all(len(files) == 4 for files in folder.clusters["typical_files"])
    assert set(folder.groups["scope"]) == {"global", "local"}
    assert set(folder.groups["attribute"]) == {"race", "gender"}
    run = folder.run
    assert run["command"] == "subsets" and run["format_version"] == 1 and run["record_version"] == 1
    assert run["config"]["by"] == "kmeans:3" and run["config"]["probe"]["device"] == "cpu"
    assert run["assignment"]["kind"] == "kmeans" and sum(run["assignment"]["sizes"]) == N_IMAGES - 1
    assert (out / "subsets.html").is_file() and len(list((out / "sheets").glob("*.jpg"))) == len(sizes)
    assert "local rows flagged" in setup["output"]


def test_the_assignment_file_reproduces_the_run(setup):
    out2 = setup["tmp"] / "again"
    r = _run(setup, "--by", f"file:{setup['out'] / 'assignment.parquet'}", "--min-size", "30", "--typical", "0",
             "--no-figures", "--no-html", "--out", str(out2))
    assert r.exit_code == 0, r.output
    a = pd.read_parquet(setup["out"] / "subsets.parquet")
    b = pd.read_parquet(out2 / "subsets.parquet")
    pd.testing.assert_frame_equal(a, b)


def test_a_label_file_column_and_escaping(setup):
    """column:service_test cuts by a label-file column; subset names from a user's file are escaped."""
    out = setup["tmp"] / "col"
    r = _run(setup, "--by", "column:service_test", "--min-size", "20", "--typical", "0", "--no-figures",
             "--out", str(out))
    assert r.exit_code == 0, r.output
    info = pd.read_parquet(out / "clusters.parquet")
    assert set(info["subset"]) == {"True", "False"}
    labels = pd.read_csv(setup["root"] / "fairface_label_val.csv").drop(index=5)
    expected = labels["service_test"].astype(str).value_counts().to_dict()
    assert dict(zip(info["subset"], info["n_images"])) == expected
    table = pd.read_parquet(setup["out"] / "assignment.parquet")
    evil = "<script>alert(1)</script>"
    table["subset"] = np.where(table["subset"] == table["subset"].iloc[0], evil, "plain & simple")
    path = setup["tmp"] / "evil.csv"
    table.to_csv(path, index=False)
    out = setup["tmp"] / "evil"
    r = _run(setup, "--by", f"file:{path}", "--min-size", "10", "--typical", "2", "--no-figures", "--out", str(out))
    assert r.exit_code == 0, r.output
    page = (out / "subsets.html").read_text()
    assert evil not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "plain &amp; simple" in page


@pytest.mark.parametrize("args, code, message", [
    (["--by", "kmeans:0"], 2, "kmeans: the number of clusters must be a whole number of at least 1, got '0'"),
    (["--by", "kmeans:"], 2, "kmeans: the number of clusters must be a whole number of at least 1, got ''"),
    (["--by", "kmeans:7", "--min-size", "30"], 2,
     "kmeans:7 asks for more clusters than 199 image(s) allow with min_size=30 (at most 6 cluster(s))"),
    (["--by", "kmeans:200", "--min-size", "1"], 2,
     "kmeans:200 asks for more clusters than 199 image(s) allow with min_size=1 (at most 199 cluster(s))"),
    (["--by", "column:sevrice_test"], 1, "column 'sevrice_test' is not a column of the label file of fairface:"),
    (["--by", "attribute:rase"], 1, "unknown attribute 'rase' (did you mean 'race'?)"),
    (["--by", "colour:red"], 2, "unknown subset kind 'colour' (did you mean 'column'?) in --by 'colour:red'"),
    (["--by", "file:/nonexistent/assignment.csv"], 1, "assignment file /nonexistent/assignment.csv does not exist"),
    (["--min-size", "0"], 2, "--min-size must be 1 or more, got 0"),
])
def test_bad_input_is_one_line(setup, args, code, message):
    r = _run(setup, *args, "--out", str(setup["tmp"] / "bad"), "--no-figures", "--no-html")
    assert r.exit_code == code, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], r.output
    assert not (setup["tmp"] / "bad" / "run.json").exists()


def test_assignment_files_missing_or_naming_unknown_images(setup):
    table = pd.read_parquet(setup["out"] / "assignment.parquet")
    missing = setup["tmp"] / "missing.csv"
    table.iloc[1:].to_csv(missing, index=False)
    r = _run(setup, "--by", f"file:{missing}", "--out", str(setup["tmp"] / "bad"))
    assert r.exit_code == 1
    assert f"Error: assignment file {missing}: 1 image(s) of the dataset are not listed (first: " \
           f"'{table['image'].iloc[0]}')" in r.output and len(r.output.strip().splitlines()) == 1
    unknown = setup["tmp"] / "unknown.csv"
    pd.concat([table, pd.DataFrame({"image": ["val/nope.jpg"], "subset": ["c00"]})]).to_csv(unknown, index=False)
    r = _run(setup, "--by", f"file:{unknown}", "--out", str(setup["tmp"] / "bad"))
    assert r.exit_code == 1 and "1 image(s) are not in the dataset (first: 'val/nope.jpg')" in r.output
    wrong = setup["tmp"] / "wrong.csv"
    table.rename(columns={"subset": "cluster"}).to_csv(wrong, index=False)
    r = _run(setup, "--by", f"file:{wrong}", "--out", str(setup["tmp"] / "bad"))
    assert r.exit_code == 1 and "needs a column 'image' (or 'file') and a column 'subset'" in r.output


def test_out_is_required_and_other_folders_refused(setup):
    r = _run(setup, "--by", "kmeans:2")
    assert r.exit_code == 2 and "--out is required" in r.output
    report_like = setup["tmp"] / "other"
    report_like.mkdir()
    (report_like / "run.json").write_text(json.dumps({"command": "report", "format_version": 2}))
    r = _run(setup, "--by", "kmeans:2", "--out", str(report_like))
    assert r.exit_code == 1 and "holds the output of 'report'" in r.output


def test_help_lists_compare(setup):
    r = CliRunner().invoke(setup["group"], ["subsets", "--help"])
    assert r.exit_code == 0 and "compare" in r.output and "--by" in r.output
    r = CliRunner().invoke(setup["group"], ["subsets", "compare", "--help"])
    assert r.exit_code == 0 and "--measures" in r.output


def test_the_headline_compares_top_group_changes_with_the_control_queries(setup):
    """A word with no association changes top group too: the headline gives the words that change more
    often than the control queries first, the raw share second, and the control queries' rates beside it."""
    out = setup["tmp"] / "controls"
    r = _run(setup, "--controls", "controls", "--by", "kmeans:3", "--min-size", "30", "--typical", "0",
             "--no-figures", "--out", str(out))
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    n_controls = run["controls"]["n_queries"]
    controls = pd.read_parquet(out / "control_changes.parquet")
    assert len(controls) == 2 * n_controls and set(controls["attribute"]) == {"race", "gender"}
    dispersion = pd.read_parquet(out / "dispersion.parquet").drop_duplicates(["word", "attribute"])
    assert (dispersion["p_changes_vs_controls"] >= 1 / (n_controls + 1)).all()
    for row in run["dispersion"]:
        part = dispersion[dispersion["attribute"] == row["attribute"]]
        n_more = int(part["top_group_changes_vs_controls"].sum())
        c = controls[controls["attribute"] == row["attribute"]]["top_group_change_rate"]
        line = next(line for line in r.output.splitlines() if line.strip().startswith(row["attribute"] + ":"))
        assert (f"more often than for the {n_controls} control queries for {n_more} of {len(part)} words"
                in line), line
        assert line.index("control queries for") < line.index("raw: top group changes in at least one subset for "
                                                              f"{part['top_group_changes'].mean():.0%} of words")
        assert f"against {c.min():.0%}-{c.max():.0%}" in line
    page = (out / "subsets.html").read_text()
    assert "more often than for the" in page and "reading of Ramos et al.'s R@k" in page


def test_the_headline_without_control_queries_says_so(setup):
    line = next(line for line in setup["output"].splitlines() if line.strip().startswith("race:"))
    assert "no control queries to compare with" in line and "raw: top group changes" in line


def test_the_default_min_size_skips_no_subset_and_skips_are_reported(setup):
    """k = 12: a subset of exactly 12 images has no top-k but the whole subset. With --min-size 12 it is
    kept and not probed, and the output says so, with its images; the default min size (2 k = 24) drops it
    with a count instead, and every kept subset is probed."""
    table = pd.read_parquet(setup["out"] / "assignment.parquet")
    table["subset"] = ["exact"] * 12 + ["rest"] * (len(table) - 12)
    path = setup["tmp"] / "exact.csv"
    table.to_csv(path, index=False)
    out = setup["tmp"] / "exact-12"
    r = _run(setup, "--by", f"file:{path}", "--min-size", "12", "--typical", "0", "--no-figures", "--no-html",
             "--out", str(out))
    assert r.exit_code == 0, r.output
    skipped = json.loads((out / "run.json").read_text())["skipped"]
    assert skipped["not_probed"]["n_subsets"] == 1 and skipped["not_probed"]["n_images"] == 12
    assert skipped["n_images_probed"] == N_IMAGES - 1 - 12
    assert (f"{N_IMAGES - 1 - 12} of {N_IMAGES - 1} images probed; skipped: 1 subset(s) with 12 image(s) not probed "
            "(exact (12 images): 12 image(s), not more than k=12") in r.output
    out = setup["tmp"] / "exact-default"
    r = _run(setup, "--by", f"file:{path}", "--typical", "0", "--no-figures", "--no-html", "--out", str(out))
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["min_size"] == 24 and run["skipped"]["min_size"] == 24
    assert run["skipped"]["not_probed"]["n_subsets"] == 0
    assert "skipped: 1 subset(s) with 12 image(s) dropped below min_size=24" in r.output
    out = setup["tmp"] / "nothing-skipped"
    r = _run(setup, "--by", "kmeans:2", "--typical", "0", "--no-figures", "--no-html", "--out", str(out))
    assert r.exit_code == 0, r.output
    assert f"{N_IMAGES - 1} of {N_IMAGES - 1} images probed; skipped: nothing" in r.output
