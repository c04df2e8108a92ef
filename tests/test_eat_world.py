"""Association tests on the offline planted world: planted associations found, shuffled labels calibrated.

Targets are world groups (face-dataset selections of the world's FairFace-layout images); attributes are the
prompts of a planted word against the prompts of control words (truth.json), embedded by the shipped tiny
world model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from clipprobe.resources.prompts import fill

pytestmark = pytest.mark.slow

ADJ_TEMPLATES = ("a photo of {a} {word} person", "{a} {word} person", "{word} face", "looking {word}")
NOUN_TEMPLATES = ("a photo of {a} {word}", "{a} {word}", "portrait of {a} {word}", "the {word}")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipprobe.world.generate import generate_world

    return generate_world(tmp_path_factory.mktemp("eat-world"), seed=0, n_images=600, n_captions=500)


@pytest.fixture(scope="module")
def world_encoder():
    from clipprobe.models import load_model
    from clipprobe.world import WORLD_ARCH
    from clipprobe.world.train import config_path, weights_path

    return load_model(f"{WORLD_ARCH}:{weights_path()}", model_config=str(config_path()), device="cpu")


def _prompts(word: str, pos: str) -> list[str]:
    return [fill(t, word) for t in (NOUN_TEMPLATES if pos == "noun" else ADJ_TEMPLATES)]


def _controls(truth: dict, pos: str, n: int = 4) -> list[str]:
    return [c["word"] for c in truth["control_details"] if c["pos"] == pos][:n]


def _planted_tests(world) -> tuple[list[dict], dict]:
    truth = json.loads(Path(world.truth).read_text())
    tests = []
    for p in truth["planted"]:
        others = [g for g in truth["attributes"][p["attribute"]] if g != p["group"]]
        spec = f"fairface:{world.fairface}"
        tests.append({
            "name": f"{p['word']}-{p['group']}",
            "X": {"faces": spec, "where": {p["attribute"]: p["group"]}},
            "Y": {"faces": spec, "where": {p["attribute"]: others}},
            "A": {"texts": _prompts(p["word"], p["pos"])},
            "B": {"texts": [t for c in _controls(truth, p["pos"]) for t in _prompts(c, p["pos"])]},
        })
    return tests, truth


def test_planted_associations_have_large_effects(world, world_encoder, tmp_path):
    from clipprobe.pipeline.eat import EatConfig, run_eat

    tests, truth = _planted_tests(world)
    path = tmp_path / "planted.yaml"
    path.write_text(yaml.safe_dump({"tests": tests}), encoding="utf-8")
    run = run_eat(EatConfig(out=str(tmp_path / "out"), tests_file=str(path), cache_dir=str(tmp_path / "cache"),
                            permutations=100_000, sc_permutations=1000, device="cpu", fixed_attributes=True,
                            num_workers=0), encoder=world_encoder)
    table = run.table.set_index("test")
    race = [f"{p['word']}-{p['group']}" for p in truth["planted"] if p["attribute"] == "race"]
    assert len(race) == 7
    for name in race:  # the seven race-planted words: every test large and significant
        row = table.loc[name]
        assert row["effect_size"] > 0.5 and row["effect_ci_low"] > 0 and row["q_value"] < 1e-3, name
        # one prompt per stimulus here (texts), so the stimulus and sentence tests are one test
        assert row["p_value_sentences"] == row["p_value"] and row["ci_resample"] == "targets", name
    # across all twelve planted words the direction is the planted one for most
    assert (table["effect_size"] > 0).sum() >= 10
    assert (table["q_value"] < 0.05).sum() >= 9


def test_shuffled_labels_give_uniform_p_values(world, world_encoder, tmp_path):
    """Race labels permuted against the images: 280 tests (40 shuffles x 7 groups), KS against uniform."""
    from scipy.stats import binomtest, kstest

    from clipprobe.analysis import eat
    from clipprobe.embeddings.cache import embed_dataset, embed_texts
    from clipprobe.faces import load_dataset

    truth = json.loads(Path(world.truth).read_text())
    ds = load_dataset(world.dataset_spec)
    emb = embed_dataset(world_encoder, ds, cache_dir=tmp_path / "cache", num_workers=0)
    images = emb.vectors
    race = ds.table["race"].to_numpy()[emb.rows]
    planted = {p["group"]: p for p in truth["planted"] if p["attribute"] == "race"}
    values, n_x = [], []
    for shuffle in range(40):
        labels = np.random.default_rng(1000 + shuffle).permutation(race)
        for group, p in planted.items():
            A = embed_texts(world_encoder, _prompts(p["word"], p["pos"]), cache_dir=tmp_path / "cache")
            B = embed_texts(world_encoder, [t for c in _controls(truth, p["pos"]) for t in _prompts(c, p["pos"])],
                            cache_dir=tmp_path / "cache")
            X, Y = images[labels == group], images[labels != group]
            values.append(np.concatenate([eat.association(X, A, B), eat.association(Y, A, B)]))
            n_x.append(len(X))
    p = np.array([r.p_value for r in eat.permutation_tests(values, n_x, n_permutations=5_000, seed=0)])
    assert len(p) == 280
    assert kstest(p, "uniform").pvalue > 0.01
    assert binomtest(int((p < 0.05).sum()), len(p), 0.05).pvalue > 0.01
