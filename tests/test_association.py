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


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_rb_and_ab_on_the_world_against_a_direct_computation(world):
    from clipprobe.models import load_model
    from clipprobe.world.train import model_spec

    tmp, w = world
    out = tmp / "a"
    args = ["association", *_base(tmp, w), "--objects", str(w.objects), "--no-person-filter", "--rb-prompts",
            "a photo of a kind x person|a photo of a kind y person", "--attribute", "gender",
            "--groups", "kind X,kind Y", "--pairs", "rural/architect,doctor/thief", "--out", str(out)]
    r = CliRunner().invoke(cli, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rb = pd.read_parquet(out / "rb.parquet")
    ab = pd.read_parquet(out / "ab.parquet")
    run = json.loads((out / "run.json").read_text())
    assert run["command"] == "association" and run["prompts"]["rb"][0] == "a photo of a kind x person"
    assert int(rb["n"].iloc[0]) == 60 and rb["rb_ci_low"].iloc[0] <= rb["rb"].iloc[0] <= rb["rb_ci_high"].iloc[0]
    assert run["objects"]["person_filter"] == {"on": False} and not (out / "objects_filter.parquet").exists()
    assert "No person filter: the object images were taken to be free of people as given" in r.output
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


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
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
    assert "Person filter: " in page and "a model&#x27;s own judgement, not a person detector" in page


def test_the_person_filter_removes_what_the_model_takes_for_a_person(world, tmp_path):
    """Object images with faces mixed in: the images whose zero-shot P("a photo of a person" rather than "a
    photo of an object") at the model's logit scale is above the threshold are removed before RB, and the
    threshold, the prompts and the count removed are recorded, written and printed. (The world's tiny model
    never saw an image without a face in training, so it is a poor person detector: what is checked here is
    that the filter does what it says, against a direct computation, not how well a real CLIP detects people.)"""
    import shutil

    import torch
    from PIL import Image

    from clipprobe.models import load_model
    from clipprobe.world.train import model_spec

    tmp, w = world
    folder = tmp_path / "objects"
    shutil.copytree(w.objects, folder)
    faces = sorted((w.root / "fairface" / "val").glob("*.png"), key=lambda p: int(p.stem))[:20]
    for face in faces:
        shutil.copy(face, folder / f"face-{face.name}")
    out = tmp_path / "a"
    r = CliRunner().invoke(cli, ["association", *_base(tmp, w), "--no-ab", "--objects", str(folder),
                                 "--person-threshold", "0.6", "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = json.loads((out / "run.json").read_text())
    table = pd.read_parquet(out / "objects_filter.parquet")
    rb = pd.read_parquet(out / "rb.parquet")
    # the same probabilities computed by hand from the model
    model, config = model_spec()
    enc = load_model(model, model_config=config, device="cpu", offline=True)
    files = list(table["file"])
    assert sorted(files) == sorted(p.name for p in folder.glob("*.png"))
    img = enc.encode_images(torch.stack([enc.preprocess(Image.open(folder / f).convert("RGB")) for f in files]))
    txt = enc.encode_text(["a photo of a person", "a photo of an object"])
    scale = min(float(enc.model.logit_scale.detach().exp()), 100.0)
    logits = scale * (img.astype(np.float64) @ txt.T.astype(np.float64))
    p = np.exp(logits[:, 0]) / np.exp(logits).sum(axis=1)
    np.testing.assert_allclose(table["p_person"].to_numpy(), p, rtol=1e-5, atol=1e-6)
    assert (table["removed"].to_numpy() == (p > 0.6)).all()
    n_removed = int((p > 0.6).sum())
    assert 0 < n_removed < len(files)
    record = run["objects"]["person_filter"]
    assert record["on"] and record["threshold"] == 0.6 and record["n_before"] == 80
    assert record["n_removed"] == n_removed and record["prompts"] == ["a photo of a person", "a photo of an object"]
    assert record["logit_scale"] == pytest.approx(scale, rel=1e-6)
    assert int(rb["n"].iloc[0]) == run["objects"]["n"] == 80 - n_removed
    assert f"Person filter: {n_removed} of 80 image(s) removed" in r.output and "> 0.6" in r.output
    # RB on the images kept, by hand
    kept = ~(p > 0.6)
    s = img[kept] @ enc.encode_text(["a photo of a man", "a photo of a woman"]).T
    want = (np.sum(s[:, 0] > s[:, 1]) + 0.5 * np.sum(s[:, 0] == s[:, 1])) / int(kept.sum())
    assert rb["share_first"].iloc[0] == pytest.approx(want)
    # a threshold that removes every image is refused, with nothing written
    r = CliRunner().invoke(cli, ["association", *_base(tmp, w), "--no-ab", "--objects", str(folder),
                                 "--person-threshold", str(float(p.min()) / 2), "--out", str(tmp_path / "none")])
    assert r.exit_code == 1 and "the person filter removed all 80 image(s)" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "none" / "run.json").exists()


@pytest.mark.parametrize("extra, message", [
    (["--no-ab"], "nothing to measure"),
    (["--groups", "kind X,kind X"], "give two different groups"),
    (["--groups", "kind X,kind Z"], "'kind Z' is not a group of attribute 'gender'"),
    (["--pairs", "nurse"], "--pairs must look like first/second"),
    (["--rb-prompts", "only one", "--objects", "x"], "--rb-prompts must be two prompts"),
    (["--objects", "/nonexistent/folder"], "objects: /nonexistent/folder does not exist"),
    (["--objects", "x", "--person-threshold", "1"], "--person-threshold must be between 0 and 1 (exclusive), got 1.0"),
    (["--objects", "x", "--person-prompts", "a person"], "--person-prompts must be two different prompts"),
])
def test_bad_input_is_one_line(world, tmp_path, extra, message):
    tmp, w = world
    r = CliRunner().invoke(cli, ["association", *_base(tmp, w), "--out", str(tmp_path / "x"), *extra])
    assert r.exit_code in (1, 2) and message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("settings, message", [
    ({"person_threshold": 1.5}, "person_threshold must be between 0 and 1 (exclusive), got 1.5"),
    ({"person_threshold": 0.0}, "person_threshold must be between 0 and 1 (exclusive), got 0.0"),
    ({"person_prompts": ("a person", "a person")}, "person_prompts: give two different, non-empty prompts"),
    ({"person_prompts": ("a person", " ")}, "person_prompts: give two different, non-empty prompts"),
])
def test_person_filter_settings_are_checked_before_anything_loads(settings, message):
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.association import AssociationConfig

    with pytest.raises(UsageError) as err:
        AssociationConfig(out="x", objects="somewhere", **settings).check()
    assert str(err.value).startswith(message)


def test_person_probability_is_the_two_prompt_softmax():
    from scipy.special import softmax

    from clipprobe.pipeline.association import person_probability

    rng = np.random.default_rng(0)
    images = rng.standard_normal((50, 8))
    prompts = rng.standard_normal((2, 8))
    for scale in (1.0, 27.3, 100.0):
        want = softmax(scale * images @ prompts.T, axis=1)[:, 0]
        np.testing.assert_allclose(person_probability(images, prompts, scale), want, rtol=1e-12)
    big = person_probability(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1000.0, 0.0], [0.0, 1000.0]]), 100.0)
    assert big[0] == 1.0 and big[1] == 0.0             # no overflow warning or NaN at extreme logits
