"""`clipprobe association` on the demo world: model RB on its person-free images, AB on its faces."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipprobe.world.generate import WorldSpec, generate_world

    tmp = tmp_path_factory.mktemp("assoc")
    return tmp, generate_world(tmp / "world", seed=2, n_images=600, n_captions=600, spec=WorldSpec(n_objects=60))


def _base(tmp, world):
    from clipprobe.world.train import model_spec

    model, config = model_spec()
    return ["--model", model, "--model-config", config, "--dataset", world.dataset_spec, "--cache-dir",
            str(tmp / "cache"), "--device", "cpu", "--workers", "0", "--offline"]


def test_rb_and_ab_on_the_world_against_a_direct_computation(world):
    from clipprobe.models import load_model
    from clipprobe.world.train import model_spec

    tmp, w = world
    out = tmp / "a"
    args = ["association", *_base(tmp, w), "--objects", str(w.objects), "--rb-prompts",
            "a photo of a kind x person|a photo of a kind y person", "--attribute", "gender",
            "--groups", "kind X,kind Y", "--pairs", "rural/architect,doctor/thief", "--out", str(out)]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rb = pd.read_parquet(out / "rb.parquet")
    ab = pd.read_parquet(out / "ab.parquet")
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "association" and run["prompts"]["rb"][0] == "a photo of a kind x person"
    assert int(rb["n"].iloc[0]) == 60 and rb["rb_ci_low"].iloc[0] <= rb["rb"].iloc[0] <= rb["rb_ci_high"].iloc[0]
    # the same share computed by hand from the model
    import torch
    from PIL import Image

    model, config = model_spec()
    enc = load_model(model, model_config=config, device="cpu", offline=True)
    files = sorted(w.objects.glob("*.png"), key=lambda p: int(p.stem))
    img = enc.encode_images(torch.stack([enc.preprocess(Image.open(f).convert("RGB")) for f in files]))
    txt = enc.encode_text(["a photo of a kind x person", "a photo of a kind y person"])
    s = img @ txt.T
    want = (np.sum(s[:, 0] > s[:, 1]) + 0.5 * np.sum(s[:, 0] == s[:, 1])) / len(files)
    assert rb["share_first"].iloc[0] == pytest.approx(want)
    # "rural" is planted on kind X, "architect" on kind Y: kind X faces prefer rural more often
    row = ab[ab["first"] == "rural"].iloc[0]
    assert row["diff"] > 0 and row["diff_low"] > 0
    assert list(ab["first"]) == ["rural", "doctor"]


def test_the_report_page_shows_the_association_section(world, tmp_path):
    tmp, w = world
    rep = tmp_path / "rep"
    tax = tmp_path / "words.yaml"
    tax.write_text("name: w\ncategories:\n  jobs: [doctor, thief, rural]\n")
    r = CliRunner().invoke(cli, ["association", *_base(tmp, w), "--no-ab", "--objects", str(w.objects),
                                 "--out", str(rep / "association")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["report", *_base(tmp, w), "--taxonomy", str(tax), "--k", "20", "--bootstrap", "0",
                                 "--permutations", "50", "--no-figures", "--out", str(rep)])
    assert r.exit_code == 0, r.output
    page = (rep / "report.html").read_text()
    assert '<section id="association">' in page and 'href="#association"' in page


@pytest.mark.parametrize("extra, message", [
    (["--no-ab"], "nothing to measure"),
    (["--groups", "kind X,kind X"], "give two different groups"),
    (["--groups", "kind X,kind Z"], "'kind Z' is not a group of attribute 'gender'"),
    (["--pairs", "nurse"], "--pairs must look like first/second"),
    (["--rb-prompts", "only one", "--objects", "x"], "--rb-prompts must be two prompts"),
    (["--objects", "/nonexistent/folder"], "objects: /nonexistent/folder does not exist"),
])
def test_bad_input_is_one_line(world, tmp_path, extra, message):
    tmp, w = world
    r = CliRunner().invoke(cli, ["association", *_base(tmp, w), "--out", str(tmp_path / "x"), *extra])
    assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output
