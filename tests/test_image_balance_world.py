"""Balancing on image-derived attributes, on the planted world: the data side, and the tiny CLIP retrained on
the kept sets of one world of 32,000 captions (``scripts/validate_image_balance.py`` runs five).

The world's 8,000 training images are embedded with the shipped tiny world CLIP and classified zero-shot
("a photo of a kind x person" / "... kind y person") by ``balance fit --attribute-source images``; M4
then balances those labels. Asserted, because it holds by construction or was measured on every seed
run: the classifier's accuracy is measured on the labelled probe split and stored; the kept data are
balanced on the classifier's labels within the constraints; and the reason image-derived M4 leaves much
of the planted association on the images' *true* gender in place: every kept "rural" caption whose image
the classifier calls kind Y is a misclassified kind-X image (rural is planted with kind X only), and M4
meets its constraint by keeping about as many of those as of correctly labelled ones.
About 2-4 minutes on 2 idle cores for the data side; 6-10 minutes for the retraining.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
SEED = 0
KEEP = 0.25
EPS = 0.01


@pytest.mark.slow
def test_image_derived_m4_balances_the_labels_not_the_truth(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    import validate_image_balance as vib

    from clipprobe.pipeline.attributes import AttributeConfig, AttributeSource
    from clipprobe.pipeline.balance import BalanceConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.world import generate as gen
    from clipprobe.world.train import model_spec

    paths = gen.generate_world(tmp_path / "world", seed=SEED)
    vib._embed_train_images(SEED, paths, tmp_path / "emb")
    (tmp_path / "world-gender.yaml").write_text(vib.PROMPTS)
    spec, cfg = model_spec()
    source = AttributeSource("images", AttributeConfig(
        embeddings=str(tmp_path / "emb"), out="", prompts=str(tmp_path / "world-gender.yaml"), workers=2,
        probe=ProbeConfig(model=spec, model_config=cfg, dataset=paths.dataset_spec, device="cpu",
                          cache_dir=str(tmp_path / "cache"), num_workers=0)))
    fit = vib._fit(BalanceConfig(captions=(), out=str(tmp_path / "fit"), attribute="gender", labels="all",
                                 taxonomy=str(paths.taxonomy), keep=KEEP, eps_r=EPS, eps_a=EPS, seed=SEED,
                                 figure=False, key="url", attribute_source=source))
    run = fit.run
    print(json.dumps({k: run[k] for k in ("fit", "before", "kept")}, indent=1, default=float))
    cal = run["attribute_source"]["calibration"]
    assert cal["n"] == 3600 and 0.75 < cal["accuracy"] < 0.97          # good, not perfect
    assert cal["by_group"][0]["group"] == "kind X" and cal["by_group"][1]["group"] == "kind Y"
    assert run["fit"]["max_violation"] <= 1e-6
    assert run["after"]["rb_max"] <= EPS + 1e-9                          # balanced on the classifier's labels

    texts = pd.read_parquet(paths.captions)["TEXT"].astype(str).tolist()
    people = gen.sample_people(SEED, "train", len(texts))
    truth = np.array([gen.ATTRIBUTES["gender"][p.gender] for p in people], dtype=object)
    labels = pd.read_parquet(tmp_path / "fit" / "attributes" / "shards" / "attributes_0.parquet")["image_gender"]
    labels = labels.astype(object).where(labels.notna(), None).to_numpy()
    kept = vib._flags(tmp_path / "fit" / "weights.parquet", len(texts))
    rural = vib._word(texts, "rural")
    before = vib.data_association(texts, truth, np.ones(len(texts), bool))
    after = vib.data_association(texts, truth, kept)
    assert before["P(rural|kind Y)"] == 0 and after["P(rural|kind Y)"] == 0   # planted with kind X only
    # M4's constraint holds on the labels of the rural captions, weighted by q ...
    weights = pd.read_parquet(tmp_path / "fit" / "weights.parquet").sort_values("row")
    q = weights["q"].to_numpy()
    share_y = q[rural & (labels == "kind Y")].sum() / q[rural & (labels != None)].sum()  # noqa: E711
    assert abs(share_y - 0.5) <= EPS + 1e-6
    kept_rural = kept & rural
    # ... and every one of them labelled kind Y is a kind-X image the classifier got wrong
    assert (truth[kept_rural & (labels == "kind Y")] == "kind X").all()
    assert (truth[kept_rural] == "kind X").all()
    # so the kept data still tie rural to kind-X images, on their true gender
    assert after["P(rural|kind X)"] > 0.3


@pytest.mark.slow
def test_models_retrained_on_image_derived_m4_learn_less_of_the_planted_association_than_on_random_subsets(
        tmp_path):
    """docs/balancing.md: in worlds of 32,000 captions (3,555-3,669 kept pairs), the tiny CLIP retrained on
    image-derived M4's kept set learned less of the planted gender association than one retrained on a random
    subset of the same size, in model AB (rural vs architect) and architect skew, over five worlds (the
    ranges do not overlap). Here world 0 is run again with image-derived and caption-derived M4 only, so the
    common size is set by those two (3,948 pairs, where five conditions gave 3,555), and two trainings of
    868 steps: the kept data and the retrained models must keep that order. Measured (6 min on 2 idle
    cores): data P(rural | kind X) 0.53 against 0.70, model AB 0.07 against 0.54."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import validate_image_balance as vib

    result = vib.run_seed(SEED, tmp_path, keep=KEEP, both=False, threads=2, train_threads=1, steps=868,
                          train_both=False, n_captions=32_000, retrain=("image", "random"))
    print(json.dumps({"n_pairs": result["n_pairs"], "data": result["data"],
                      "models": {c: {"ab": m["model_ab_rural_vs_architect"], "rb": m["model_rb_objects"],
                                     "architect": m["planted"]["architect/kind Y"],
                                     "rural": m["planted"]["rural/kind X"]}
                                 for c, m in result["models"].items()}}, indent=1, default=float))
    assert set(result["models"]) == {"image", "random"}
    assert result["models"]["image"]["n_trained"] == result["models"]["random"]["n_trained"] == result["n_pairs"]
    assert result["n_pairs"] > 3000
    data = result["data"]
    for word in ("P(rural|kind X)", "P(architect|kind Y)"):          # image M4 takes the planted words apart
        assert data["image"][word] < data["random"][word]
    assert data["random"]["P(rural|kind X)"] > 0.6                      # a random subset keeps the planting
    ab = {c: result["models"][c]["model_ab_rural_vs_architect"]["diff"] for c in ("image", "random")}
    assert ab["image"] < ab["random"]
