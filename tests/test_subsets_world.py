"""Planted truth (issue 16, item 4): a world whose captions tie one word to a different group in each of three
backgrounds (group B on striped, group D on plain, group F on dotted images), beside the demo world's global
associations (terrorist -> group C everywhere), and a tiny CLIP trained on it (about 5 minutes on 2 cores).

What the trained model learned, and what the probes say (README, "Bias on subsets"):
* the global probe does not see group B or group D for the word (its top 100 hold 1 and 0 of them): the
  model's "nomad" is, over the whole dataset, mostly group F;
* the subset probe finds group B in the striped subset only and group D in the plain subset only, and
  group F everywhere (the model did not keep that plant local), most of all on dotted images;
* the global association is flagged in every subset; with the labels shuffled, nothing is flagged.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from test_subsets_cli import _root_group

pytestmark = pytest.mark.slow

LOCAL = (("group B", "striped"), ("group D", "plain"), ("group F", "dotted"))
CATEGORIES = ("portrayal in media", "occupation", "behavioral")   # one word, a category per plant


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from clipprobe.pipeline.probe import ProbeConfig, open_probe
    from clipprobe.world.generate import LocalPlant, WorldSpec, generate_world
    from clipprobe.world.train import TrainConfig, model_spec, train_world_model

    tmp = tmp_path_factory.mktemp("subsets-world")
    spec = WorldSpec(local=tuple(LocalPlant("nomad", c, "noun", "race", g, bg, 1.0)
                                 for c, (g, bg) in zip(CATEGORIES, LOCAL)))
    paths = generate_world(tmp / "world", seed=0, spec=spec)
    weights = _trained_before(spec)
    if weights is None:
        weights = tmp / "model"
        train_world_model(weights, TrainConfig(spec=spec), evaluate=False)
    model, config = model_spec(weights)
    probe_config = ProbeConfig(model=model, model_config=config, dataset=paths.dataset_spec,
                               cache_dir=str(tmp / "cache"), device="cpu", num_workers=0, batch_size=256,
                               offline=True)
    probe = open_probe(probe_config)
    content = pd.read_csv(paths.content)
    content = content[content["split"] == "val"]
    backgrounds = tmp / "backgrounds.csv"
    content.rename(columns={"file": "image", "background": "subset"})[["image", "subset"]].to_csv(backgrounds,
                                                                                                  index=False)
    base = ["--model", model, "--model-config", config, "--dataset", paths.dataset_spec, "--cache-dir",
            str(tmp / "cache"), "--device", "cpu", "--workers", "0", "--taxonomy", str(paths.taxonomy), "--k", "100",
            "--attributes", "race,gender,age", "--offline"]
    out = tmp / "by-background"
    r = CliRunner().invoke(_root_group(), ["subsets", *base, "--by", f"file:{backgrounds}", "--out", str(out),
                                           "--typical", "10"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "paths": paths, "probe": probe, "probe_config": probe_config, "out": out,
            "backgrounds": backgrounds, "content": content.set_index("file"),
            "truth": json.loads(paths.truth.read_text())}


def _trained_before(spec):
    """A folder named by $CLIPPROBE_SUBSETS_WORLD_MODEL holding this test's model trained before (same world,
    same settings, by its meta.json), to skip the 5 minutes of training; None otherwise."""
    from clipprobe.world.train import TrainConfig, meta_path

    folder = os.environ.get("CLIPPROBE_SUBSETS_WORLD_MODEL")
    if not folder or not meta_path(folder).is_file():
        return None
    meta = json.loads(meta_path(folder).read_text())
    expected = {k: v for k, v in dataclasses.asdict(TrainConfig()).items() if k != "spec"}
    same = (meta.get("world", {}).get("local") == [dataclasses.asdict(lp) for lp in spec.local]
            and {k: meta["config"].get(k) for k in expected} == expected)
    return Path(folder) if same else None


def _rows(groups, word, attribute, group):
    return groups[(groups["word"] == word) & (groups["attribute"] == attribute) & (groups["group"] == group)]


def test_local_associations_are_found_in_their_background_only(world):
    groups = pd.read_parquet(world["out"] / "subsets.parquet")
    for group, background in LOCAL[:2]:
        rows = _rows(groups, "nomad", "race", group)
        glob = rows[rows["scope"] == "global"].iloc[0]
        assert not glob["flagged"] and glob["skew"] < 0, glob          # the global probe does not see it
        flagged = set(rows.loc[(rows["scope"] == "local") & rows["flagged"], "subset"])
        assert flagged == {background}, (group, flagged)
        local = rows[rows["scope"] == "local"].set_index("subset")
        assert local["skew"].idxmax() == background
    rows = _rows(groups, "nomad", "race", "group F")
    local = rows[rows["scope"] == "local"].set_index("subset")
    assert rows[rows["scope"] == "global"]["flagged"].iloc[0]             # this one leaked everywhere
    assert local["skew"].idxmax() == "dotted"


def test_the_global_association_is_found_in_every_subset(world):
    groups = pd.read_parquet(world["out"] / "subsets.parquet")
    local = groups[groups["scope"] == "local"]
    n_subsets = local["subset"].nunique()
    assert n_subsets == 5
    terrorist = _rows(local, "terrorist", "race", "group C")
    assert terrorist["flagged"].all() and terrorist["flagged_vs_controls"].all()
    everywhere = 0
    for p in world["truth"]["planted"]:
        rows = _rows(local, p["word"], p["attribute"], p["group"])
        assert rows["flagged"].sum() >= 3, p
        everywhere += bool(rows["flagged"].all())
    assert everywhere >= 10                                              # measured: 10 of 12 in all five


def test_kmeans_clusters_and_the_local_association(world):
    """k-means of the model's image embeddings into 5 clusters: the dotted images form a cluster of their own;
    the clusters where group B (group D) is flagged for the word are those where striped (plain) images are
    the most common background."""
    from clipprobe.pipeline.subsets import SubsetsConfig, make_assignment, probe_subsets

    probe = world["probe"]
    a = make_assignment(probe, "kmeans:5", min_size=100, seed=0)
    background = world["content"].loc[list(probe.files), "background"].to_numpy()
    table = pd.crosstab(np.asarray(a.names, dtype=object)[a.codes], background)
    purity = table.max(axis=1) / table.sum(axis=1)
    dominant = table.idxmax(axis=1)
    assert purity[dominant == "dotted"].max() >= 0.95
    config = SubsetsConfig(probe=world["probe_config"], taxonomy=str(world["paths"].taxonomy), k=100,
                           attributes=("race", "gender", "age"))
    tables = probe_subsets(probe, config, a)
    local = tables.groups[tables.groups["scope"] == "local"]
    for group, background_name in LOCAL[:2]:
        flagged = local[(local["word"] == "nomad") & (local["attribute"] == "race") & (local["group"] == group)
                        & local["flagged"]]["subset"]
        assert len(flagged) >= 1 and all(dominant[s] == background_name for s in flagged), (group, list(flagged))


def test_nothing_is_flagged_with_the_labels_shuffled(world):
    from clipprobe.analysis.subsets import from_table
    from clipprobe.pipeline.subsets import SubsetsConfig, probe_subsets

    probe = world["probe"]
    a = from_table(pd.read_csv(world["backgrounds"]), probe.files)
    config = SubsetsConfig(probe=world["probe_config"], taxonomy=str(world["paths"].taxonomy), k=100,
                           attributes=("race", "gender", "age"))
    p_over, p_kl, flagged = [], [], 0
    for seed in (1, 2, 3):
        tables = probe_subsets(probe.shuffled(seed), config, a)
        local = tables.groups[tables.groups["scope"] == "local"]
        words = tables.words[tables.words["scope"] == "local"]
        flagged += int(local["flagged"].sum() + local["flagged_vs_controls"].sum())
        p_over.append(local["p_over"].to_numpy())
        p_kl.append(words["p_kl_recall"].to_numpy())
    assert flagged == 0
    assert np.mean(np.concatenate(p_over) <= 0.05) <= 0.06          # measured 0.039-0.047
    assert np.mean(np.concatenate(p_kl) <= 0.05) <= 0.075           # measured 0.059-0.063 (words share images)


def test_the_page_describes_each_background(world):
    page = (world["out"] / "subsets.html").read_text()
    for background in ("striped", "plain", "dotted", "barred", "checked"):
        assert background in page
    clusters = pd.read_parquet(world["out"] / "clusters.parquet")
    assert (clusters["n_images"] == 720).all() and clusters["probed"].all()
    assert len(list((world["out"] / "sheets").glob("*.jpg"))) == 5
