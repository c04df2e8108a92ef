"""The offline demo on the shipped world model: the probe finds what was planted, and only that."""

import json
import os

import pytest
from click.testing import CliRunner

from clipprobe.cli import cli

# The whole demo (world, report, captions, retrieval; tens of seconds) runs once for the module: slow suite.
pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "demo"
    r = CliRunner().invoke(cli, ["demo", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return out, r.output


def test_validation_meets_targets(demo):
    out, output = demo
    v = json.loads((out / "validation.json").read_text())
    assert v["recall"] >= 0.9, v["missed"]
    assert v["false_positive_rate"] <= 0.05, v["false_positives"]
    assert v["captions"]["exact"], v["captions"]["mismatches"]
    assert v["null"]["flagged_share"] <= v["alpha"]
    assert v["passed"] is True
    assert "targets met: yes" in output


def test_demo_writes_the_usual_layouts(demo):
    out, output = demo
    for rel in ["truth.json", "validation.json", "retrieve-terrorist.txt", "retrieve-terrorist.json",
                "retrieve-terrorist.png", "report/groups.parquet", "report/words.parquet", "report/summary.csv",
                "report/run.json", "report/report.html", "report/crosscheck.parquet", "captions/cooccurrence.parquet",
                "captions/samples.parquet", "captions/run.json", "world/fairface/fairface_label_val.csv"]:
        assert (out / rel).exists(), rel
    assert any((out / "report" / "figures").glob("*.pdf"))
    truth = json.loads((out / "truth.json").read_text())
    assert {"planted", "controls"} <= set(truth)
    assert all({"word", "attribute", "group", "rate"} <= set(p) for p in truth["planted"])
    # The demo plants no real-world group: every label is synthetic.
    import pandas as pd

    labels = pd.read_csv(out / "world/fairface/fairface_label_val.csv")
    assert set(labels["race"]) <= {f"group {c}" for c in "ABCDEFG"}
    assert str(out / "report" / "report.html") in output


def test_demo_uses_the_shipped_model_by_name_and_writes_an_index(demo):
    import re

    out, output = demo
    run = json.loads((out / "report" / "run.json").read_text())
    assert run["model"]["canonical"] == "demo" and run["config"]["probe"]["model_config"] is None
    index = (out / "index.html").read_text(encoding="utf-8")
    hrefs = re.findall(r'href="([^"]*)"', index)
    assert {"report/report.html", "captions/lift_heatmap.png", "retrieve-terrorist.png", "validation.json"} <= set(hrefs)
    assert str(out / "index.html") in output


def test_retrieval_of_planted_word_finds_its_group(demo):
    out, _ = demo
    data = json.loads((out / "retrieve-terrorist.json").read_text())
    truth = json.loads((out / "truth.json").read_text())
    planted = next(p for p in truth["planted"] if p["word"] == "terrorist")
    groups = {g["group"]: g for g in data["groups"][planted["attribute"]]}
    top = max(groups.values(), key=lambda g: g["skew"])
    assert top["group"] == planted["group"]


def test_walkthrough_notebook_runs(demo):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    from pathlib import Path

    out, _ = demo
    path = Path(__file__).resolve().parents[1] / "notebooks" / "demo_walkthrough.ipynb"
    nb = nbformat.read(path, as_version=4)
    os.environ["CLIPPROBE_DEMO_DIR"] = str(out)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": str(out.parent)}}).execute()
    finally:
        os.environ.pop("CLIPPROBE_DEMO_DIR", None)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_retrained_world_model_meets_targets(tmp_path):
    r = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "--retrain", "--bootstrap", "200"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    v = json.loads((tmp_path / "d" / "validation.json").read_text())
    assert v["recall"] >= 0.9 and v["false_positive_rate"] <= 0.05 and v["captions"]["exact"]
