"""`clipprobe report --eat`: association tests with the report's model, shown in its HTML page."""

import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli
from facegen import write_fairface

TESTS = """tests:
  - name: "<b>flowers</b> & insects"
    X: {texts: [a rose, a tulip, a daisy]}
    Y: {texts: [a wasp, a beetle, a moth]}
    A: {words: [love, happy], templates: ["This is the word {word}."]}
    B: {words: [hate, ugly], templates: ["This is the word {word}."]}
"""


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_report_runs_eat_and_the_page_shows_it(tmp_path, tiny_model_files):
    root = write_fairface(tmp_path / "ff", n=40)
    (tmp_path / "tests.yaml").write_text(TESTS)
    (tmp_path / "words.yaml").write_text("name: w\ncategories:\n  jobs: [nurse, pilot, thief]\n")
    config, weights, arch = tiny_model_files
    out = tmp_path / "rep"
    args = ["report", "--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{root}",
            "--cache-dir", str(tmp_path / "c"), "--device", "cpu", "--workers", "0", "--taxonomy",
            str(tmp_path / "words.yaml"), "--k", "8", "--bootstrap", "0", "--permutations", "50",
            "--eat", str(tmp_path / "tests.yaml"), "--out", str(out)]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "eat" / "eat.parquet")
    assert list(table["test"]) == ["<b>flowers</b> & insects"] and table["n_x"].iloc[0] == 3
    page = (out / "report.html").read_text()
    assert '<section id="eat">' in page and 'href="#eat"' in page
    assert "&lt;b&gt;flowers&lt;/b&gt; &amp; insects" in page and "<b>flowers</b>" not in page


def test_report_with_unresolvable_eat_fails_before_the_long_part(tmp_path, tiny_model_files):
    root = write_fairface(tmp_path / "ff", n=20)
    config, weights, arch = tiny_model_files
    (tmp_path / "bad.yaml").write_text("tests:\n  - name: t\n    X: {images: nowhere/}\n    Y: {images: nowhere/}\n"
                                       "    A: {texts: [c, d]}\n    B: {texts: [e, f]}\n")
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", "--model", f"{arch}:{weights}", "--model-config", str(config),
                                 "--dataset", f"fairface:{root}", "--cache-dir", str(tmp_path / "c"), "--device",
                                 "cpu", "--workers", "0", "--taxonomy", "sobit-core", "--k", "5",
                                 "--eat", str(tmp_path / "bad.yaml"), "--out", str(out)])
    assert r.exit_code == 1 and "nowhere" in r.output and "Traceback" not in r.output
    assert not (out / "groups.parquet").exists()
