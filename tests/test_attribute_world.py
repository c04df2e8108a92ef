"""The attribute pass on the planted world: the tiny world CLIP's own image embeddings in clip-retrieval's
layout, classified with its text tower and the world's prompts; every written value checked against an
oracle computed here, and the classifier good (but not perfect) on the images' true groups. Slow: it
loads the world model and draws the world's images (about 30 s on a loaded 2-core machine)."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.slow

SEED = 3
N = 400
N_VAL = 200
PROMPTS = ("attribute: gender\ngroups:\n  kind X: [a photo of a kind x person]\n"
           "  kind Y: [a photo of a kind y person]\n")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(root, world paths, float16 train-image embeddings, metadata, prompt file, model, tokenizer)."""
    import torch
    import yaml

    from clipprobe.embeddings.external import write_embedding_folder
    from clipprobe.world import generate as gen
    from clipprobe.world.train import _normalise, load_world_model

    root = tmp_path_factory.mktemp("attr-world")
    # a small labelled probe split in the FairFace layout, and the captions of N training images
    val = gen.sample_people(SEED, "val", N_VAL)
    gen._write_images(root / "fairface" / "val", val, "val")
    gen._write_csv(root / "fairface" / "fairface_label_val.csv", gen._labels_table(val, "val", SEED))
    lexicon = root / "lexicon.yaml"
    lexicon.write_text(yaml.safe_dump(gen.lexicon()))
    model, _, tokenizer = load_world_model()
    people = gen.sample_people(SEED, "train", N)
    texts, _ = gen.make_captions(SEED, people)
    with torch.no_grad():
        emb = model.encode_image(_normalise(gen.render_array(people)), normalize=True).numpy().astype(np.float16)
    meta = pd.DataFrame({"image_path": [f"{i}.png" for i in range(N)], "caption": texts,
                         "url": [f"https://world.invalid/{i}.png" for i in range(N)]})
    write_embedding_folder(root / "emb", [(emb[:250], meta[:250]), (emb[250:], meta[250:].reset_index(drop=True))])
    paths = SimpleNamespace(dataset_spec=f"fairface:{root / 'fairface'}", lexicon=lexicon)
    (root / "world.yaml").write_text(PROMPTS)
    truth = np.array([gen.ATTRIBUTES["gender"][p.gender] for p in people], dtype=object)
    return {"root": root, "paths": paths, "emb": emb, "meta": meta, "prompts": root / "world.yaml", "model": model,
            "tokenizer": tokenizer, "truth": truth}


def _config(world, out, **kw):
    from clipprobe.pipeline.attributes import AttributeConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.world.train import model_spec

    spec, cfg = model_spec()
    dataset = kw.pop("dataset", world["paths"].dataset_spec)
    probe = ProbeConfig(model=spec, model_config=cfg, dataset=dataset, device="cpu",
                        cache_dir=str(world["root"] / "cache"), num_workers=0)
    kw.setdefault("embeddings", str(world["root"] / "emb"))
    kw.setdefault("prompts", str(world["prompts"]))
    return AttributeConfig(out=str(out), probe=probe, workers=2, **kw)


def _oracle(world, emb):
    """(cos, probabilities) from the world model's text tower, in float64 numpy."""
    import torch
    from scipy.special import softmax

    model, tok = world["model"], world["tokenizer"]
    with torch.no_grad():
        t = model.encode_text(tok(["a photo of a kind x person", "a photo of a kind y person"]),
                              normalize=True).numpy().astype(np.float64)
        scale = float(model.logit_scale.exp())
    x = emb.astype(np.float64)
    cos = x @ t.T / np.linalg.norm(x, axis=1, keepdims=True)
    return cos, softmax(scale * cos, axis=1)


def _named_group(caption: str):
    x = re.search(r"(?<![A-Za-z0-9])kind x(?![A-Za-z0-9])", caption, re.IGNORECASE)
    y = re.search(r"(?<![A-Za-z0-9])kind y(?![A-Za-z0-9])", caption, re.IGNORECASE)
    return "kind X" if x and not y else "kind Y" if y and not x else None


def test_world_pass_writes_the_image_groups_row_aligned(world, tmp_path):
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.faces import load_dataset
    from clipprobe.pipeline.attributes import run_attributes

    res = run_attributes(_config(world, tmp_path / "a", lexicon=str(world["paths"].lexicon)))
    assert [p.name for p in res.shards] == ["attributes_0.parquet", "attributes_1.parquet"]
    got = pd.concat([pd.read_parquet(p) for p in res.shards], ignore_index=True)
    assert list(got.columns) == ["caption", "url", "image_gender", "both_gender", "p_kind X", "p_kind Y"]
    assert got["caption"].tolist() == world["meta"]["caption"].tolist()
    assert got["url"].tolist() == world["meta"]["url"].tolist()
    cos, probs = _oracle(world, world["emb"])
    want = np.where(cos[:, 0] >= cos[:, 1], "kind X", "kind Y")
    assert (got["image_gender"].to_numpy() == want).all()
    np.testing.assert_allclose(got[["p_kind X", "p_kind Y"]].to_numpy(), probs, atol=2e-5)
    # both: the caption's group where it names exactly one, else the image's
    named = [_named_group(c) for c in got["caption"]]
    both = [n if n is not None else g for n, g in zip(named, got["image_gender"])]
    assert got["both_gender"].tolist() == both
    assert 0.3 < np.mean([n is not None for n in named]) < 0.7       # the world names gender half the time
    # the image classifier is good but not perfect on the images' true groups
    accuracy = float((got["image_gender"].to_numpy() == world["truth"]).mean())
    assert 0.75 < accuracy < 1.0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["summary"]["counts"]["kind X"] == int((want == "kind X").sum())
    assert run["summary"]["both"]["from_caption"] == sum(n is not None for n in named)
    assert run["groups"] == ["kind X", "kind Y"] and run["column"] == "image_gender"
    # the calibration: the same classifier on the labelled probe images, counted independently
    dataset = load_dataset(world["paths"].dataset_spec)
    from clipprobe.models import load_model
    from clipprobe.world.train import model_spec

    spec, cfg = model_spec()
    emb = embed_dataset(load_model(spec, model_config=cfg, device="cpu"), dataset,
                        cache_dir=str(world["root"] / "cache"), num_workers=0)
    vcos, _ = _oracle(world, emb.vectors)
    pred = np.where(vcos[:, 0] >= vcos[:, 1], "kind X", "kind Y")
    truth = emb.labels["gender"].astype(str).to_numpy()
    cal = run["calibration"]
    assert cal["n"] == len(truth) == N_VAL
    assert cal["accuracy"] == pytest.approx(float((pred == truth).mean()))
    for row in cal["by_group"]:
        sel = truth == row["group"]
        assert row["n"] == int(sel.sum()) and row["correct"] == int((pred[sel] == row["group"]).sum())
    assert cal["confusion"]["kind X"]["kind Y"] == int(((truth == "kind X") & (pred == "kind Y")).sum())
    groups = pd.read_parquet(tmp_path / "a" / "calibration_groups.parquet")
    assert groups["group"].tolist() == ["kind X", "kind Y"]
    # the soft probabilities on the probe images: their means against the oracle's
    _, vprobs = _oracle(world, emb.vectors)
    for k, row in enumerate(cal["by_group"]):
        assert row["soft_share"] == pytest.approx(float(vprobs[:, k].mean()), abs=1e-5)
    reliability = pd.read_parquet(tmp_path / "a" / "calibration_reliability.parquet")
    assert reliability.groupby("group")["n"].sum().to_dict() == {"kind X": N_VAL, "kind Y": N_VAL}
