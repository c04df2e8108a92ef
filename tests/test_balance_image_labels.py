"""Concept labels from the images (`--label-prompts`): the attribute pass's image_labels column against a
numpy brute force of the yes/no zero-shot probabilities, the fit on it against `--label-column` on copies
of the shard files, the label prompt file's checks and the resume key, with the tiny CLIP."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli

N = 240
CAPTIONS = ("a woman reading a book", "a man and a woman at work", "a photo of a dog", "the man at work",
            "ladies reading", "a doctor at work")
LABELS_YAML = """\
name: demo
labels:
  doctor:
    prompts: [a photo of a doctor, a doctor at work]
    negations: a photo of a person who is not a doctor
  dog:
    prompts: [a photo of a dog]
    negations: [a photo of a cat, a photo of a person]
  reading:
    prompts: [a person reading a book]
    negations: [a person sleeping]
"""
THRESHOLD = 0.5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_files):
    from clipprobe.embeddings.external import write_embedding_folder

    root = tmp_path_factory.mktemp("imglabels")
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((N, 32)).astype(np.float16)
    meta = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(N)],
                         "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(N)],
                         "url": [f"https://x.invalid/{i}.jpg" for i in range(N)]})
    write_embedding_folder(root / "emb", [(emb[:120], meta[:120]), (emb[120:], meta[120:].reset_index(drop=True))])
    (root / "labels.txt").write_text("reading\nwork\ndoctor\ndog\n")
    (root / "labels.yaml").write_text(LABELS_YAML)
    config, weights, arch = tiny_model_files
    model = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--device", "cpu",
             "--cache-dir", str(root / "cache")]
    return {"root": root, "model": model, "emb": emb, "files": tiny_model_files}


def _run(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def _brute_force(setup, scale):
    """(N, R) float64 yes/no probabilities: each label's prompt and negation embeddings averaged (unit
    vectors), then 1 / (1 + exp(-scale (cos(x, c) - cos(x, n)))) on the float16 embeddings."""
    from clipprobe.embeddings.cache import embed_texts
    from clipprobe.models import load_model
    from clipprobe.resources.attributes import load_label_prompts

    config, weights, arch = setup["files"]
    encoder = load_model(f"{arch}:{weights}", model_config=config, device="cpu")
    labels = load_label_prompts(setup["root"] / "labels.yaml")

    def unit_mean(texts):
        v = np.asarray(embed_texts(encoder, list(texts)), np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        m = v.mean(axis=0)
        return m / np.linalg.norm(m)

    c = np.stack([unit_mean(yes) for _, yes, _ in labels.labels])
    n = np.stack([unit_mean(no) for _, _, no in labels.labels])
    x = setup["emb"].astype(np.float64)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return labels.label_names, 1 / (1 + np.exp(-scale * (x @ c.T - x @ n.T)))


def test_image_labels_equal_a_numpy_brute_force(setup, tmp_path):
    root = setup["root"]
    r = _run(["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "a"),
              "--label-prompts", str(root / "labels.yaml"), *setup["model"]])
    assert r.exit_code == 0, r.output
    assert "labels above 0.5 (column image_labels)" in r.output
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    shards = sorted((tmp_path / "a" / "shards").glob("attributes_*.parquet"))
    table = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    names, p = _brute_force(setup, run["scale"])
    np.testing.assert_allclose(table[[f"pl_{n}" for n in names]].to_numpy(np.float64), p, atol=2e-5)
    want = [[n for j, n in enumerate(names) if p[i, j] > THRESHOLD] for i in range(N)]
    got = [list(v) for v in table["image_labels"]]
    near = (np.abs(p - THRESHOLD) < 1e-4).any(axis=1)
    assert near.sum() <= 2
    assert [g for g, f in zip(got, near) if not f] == [w for w, f in zip(want, near) if not f]
    on = np.array([[n in g for n in names] for g in got])
    assert 0 < on.mean() < 1 and on.any(axis=0).all()          # labels on and off: the test can fail
    assert run["summary"]["labels"] == {n: int(on[:, j].sum()) for j, n in enumerate(names)}
    assert run["label_threshold"] == THRESHOLD and set(run["label_prompts"]["labels"]) == set(names)
    # a higher threshold: fewer labels, and the resumed run recomputes every shard
    r = _run(["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "a"),
              "--label-prompts", str(root / "labels.yaml"), "--label-threshold", "0.9", *setup["model"]])
    assert r.exit_code == 0, r.output
    again = json.loads((tmp_path / "a" / "run.json").read_text())
    assert again["summary"]["shards_done_before"] == 0
    assert again["summary"]["labels"] == {n: int((p[:, j] > 0.9).sum()) for j, n in enumerate(names)}


def test_other_label_prompts_recompute_and_the_same_resume(setup, tmp_path):
    root = setup["root"]
    args = ["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "a"), *setup["model"]]
    assert _run([*args, "--label-prompts", str(root / "labels.yaml")]).exit_code == 0
    assert _run([*args, "--label-prompts", str(root / "labels.yaml")]).exit_code == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["summary"]["shards_done_before"] == 2
    other = tmp_path / "other.yaml"
    other.write_text(LABELS_YAML.replace("a person sleeping", "a person running"))
    assert _run([*args, "--label-prompts", str(other)]).exit_code == 0
    assert json.loads((tmp_path / "a" / "run.json").read_text())["summary"]["shards_done_before"] == 0
    # without label prompts: no label columns, recomputed
    assert _run(args).exit_code == 0
    table = pd.read_parquet(tmp_path / "a" / "shards" / "attributes_0.parquet")
    assert "image_labels" not in table.columns and not any(c.startswith("pl_") for c in table.columns)


def _weights(folder):
    return pd.read_parquet(folder / "weights.parquet").sort_values(["file", "row"]).reset_index(drop=True)


def test_fit_on_image_labels_equals_the_label_column_route(setup, tmp_path):
    root = setup["root"]
    common = ["--labels", str(root / "labels.txt"), "--keep", "0.4", "--eps-r", "0.05", "--eps-a", "0.05",
              "--no-figure"]
    r = _run(["balance", "fit", "--attribute-source", "images", "--embeddings", str(root / "emb"),
              "--label-prompts", str(root / "labels.yaml"), "--label-source", "column",
              "--out", str(tmp_path / "img"), *setup["model"], *common])
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "img" / "run.json").read_text())
    assert run["labels_from"] == "column 'image_labels'"
    assert run["attribute_source"]["label_column"] == "image_labels" and run["attribute_source"]["labels_used"]
    shards = sorted((tmp_path / "img" / "attributes" / "shards").glob("attributes_*.parquet"))
    copies = []
    for s in shards:
        copies.append(tmp_path / "copy" / s.name)
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy(s, copies[-1])
    r2 = _run(["balance", "fit", *[a for s in copies for a in ("--captions", str(s))], "--attribute-column",
               "image_gender", "--groups", "Female,Male", "--text-column", "caption", "--key", "url",
               "--label-column", "image_labels", "--out", str(tmp_path / "col"), *common])
    assert r2.exit_code == 0, r2.output
    a, b = _weights(tmp_path / "img"), _weights(tmp_path / "col")
    assert a["row"].tolist() == b["row"].tolist() and a["url"].tolist() == b["url"].tolist()
    np.testing.assert_array_equal(a["q"].to_numpy(), b["q"].to_numpy())
    col = json.loads((tmp_path / "col" / "run.json").read_text())
    assert col["before"] == run["before"] and col["fit"]["max_residual_a"] == run["fit"]["max_residual_a"]
    # and it differs from the caption words' fit: the labels really came from the images
    r3 = _run(["balance", "fit", "--attribute-source", "images", "--embeddings", str(root / "emb"),
               "--label-prompts", str(root / "labels.yaml"), "--label-source", "captions",
               "--out", str(tmp_path / "cap"), *setup["model"], *common])
    assert r3.exit_code == 0, r3.output
    cap = json.loads((tmp_path / "cap" / "run.json").read_text())
    assert cap["labels_from"] != run["labels_from"] and cap["before"] != run["before"]


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "label prompt file {path}: expected a mapping with 'labels'"),
    ("labels: {}\n", "label prompt file {path}: 'labels' must map at least one label name"),
    ("lables:\n  dog: {prompts: [a dog], negations: [a cat]}\n", "unknown key 'lables' (did you mean 'labels'?)"),
    ("labels:\n  dog: {prompts: [a dog]}\n", "label prompt file {path}: label 'dog': 'negations': give a non-empty"),
    ("labels:\n  dog: {prompts: [a dog], negatons: [a cat]}\n",
     "label prompt file {path}: label 'dog': unknown key 'negatons' (did you mean 'negations'?)"),
    ("labels:\n  dog: [a dog]\n", "label prompt file {path}: label 'dog': give a mapping with 'prompts' and"),
    ("labels:\n  dog: {prompts: [a dog, 3], negations: [a cat]}\n",
     "label prompt file {path}: label 'dog': 'prompts': prompt 3 is not a non-empty string"),
    ("labels:\n  dog: {prompts: [a dog], negations: [a cat]\n", "label prompt file {path} could not be read"),
])
@pytest.mark.parametrize("command", ["attributes", "fit"])
def test_bad_label_prompts_one_line_nothing_written(setup, tmp_path, text, message, command):
    root = setup["root"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    args = (["balance", "attributes"] if command == "attributes" else
            ["balance", "fit", "--attribute-source", "images", "--labels", str(root / "labels.txt")])
    r = CliRunner().invoke(cli, [*args, "--embeddings", str(root / "emb"), "--out", str(tmp_path / "o"),
                                 "--label-prompts", str(bad), *setup["model"]])
    assert r.exit_code == 1, r.output
    line = message.format(path=bad)
    assert line in r.output and "Traceback" not in r.output
    assert len([x for x in r.output.splitlines() if x.strip()]) == 1
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("extra, message", [
    (["--captions", "c.parquet", "--label-prompts", "l.yaml"], "--label-prompts is for --attribute-source images"),
    (["--captions", "c.parquet", "--label-threshold", "0.7"], "--label-threshold is for --attribute-source images"),
    (["--attribute-source", "images", "--embeddings", "E", "--model", "x", "--label-threshold", "1"],
     "--label-threshold must be in [0, 1), got 1.0"),
])
def test_label_option_combinations(tmp_path, extra, message):
    r = CliRunner().invoke(cli, ["balance", "fit", "--out", str(tmp_path / "o"), *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()
