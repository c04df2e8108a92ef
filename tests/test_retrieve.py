"""End-to-end `clipprobe retrieve` / `index build` through the CLI, on a tiny real model."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli
from facegen import write_fairface


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_files):
    root = write_fairface(tmp_path_factory.mktemp("ff") / "fairface", n=60, corrupt=(5,))
    config, weights, arch = tiny_model_files
    cache = tmp_path_factory.mktemp("cache")
    base = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{root}",
            "--cache-dir", str(cache), "--device", "cpu", "--workers", "0", "--batch-size", "16"]
    return {"root": root, "base": base, "cache": cache}


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_retrieve_json(world):
    r = invoke(["retrieve", "--word", "terrorist", "--k", "10", "--format", "json", *world["base"]])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert data["word"] == "terrorist" and data["prompts"] == ["a photo of a terrorist"]
    assert data["k"] == 10 and len(data["results"]) == 10
    assert [x["rank"] for x in data["results"]] == list(range(1, 11))
    scores = [x["score"] for x in data["results"]]
    assert scores == sorted(scores, reverse=True)
    assert data["dataset"]["n_images"] == 59 and data["dataset"]["fingerprint"]
    assert len(data["skipped"]) == 1 and data["skipped"][0]["file"] == "val/6.jpg"
    for attribute in ("race", "gender", "race_gender"):
        groups = data["groups"][attribute]
        assert sum(g["count"] for g in groups) == 10
        assert abs(sum(g["share"] for g in groups) - 1) < 1e-9
        for g in groups:
            share = max(g["count"], 1) / 10
            assert g["skew"] == pytest.approx(np.log(share / g["base_share"]))
    # The results are the brute-force top-k of the cosine similarities (oracle: numpy).
    files = {x["file"] for x in data["results"]}
    assert "val/6.jpg" not in files


def test_retrieve_matches_numpy_bruteforce(world, tiny_encoder):
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.faces import load_dataset

    ds = load_dataset(f"fairface:{world['root']}")
    emb = embed_dataset(tiny_encoder, ds, cache_dir=world["cache"], num_workers=0)
    q = tiny_encoder.encode_text(["a photo of an aggressive person"])[0]
    order = np.argsort(-(emb.vectors @ q), kind="stable")[:7]
    expected = [ds.table["file"].iloc[emb.rows[i]] for i in order]
    r = invoke(["retrieve", "--word", "aggressive", "--k", "7", "--format", "json", *world["base"]])
    data = json.loads(r.output[r.output.index("{"):])
    assert data["prompts"] == ["a photo of an aggressive person"]
    assert [x["file"] for x in data["results"]] == expected


def test_retrieve_table_csv_grid(world, tmp_path):
    r = invoke(["retrieve", "--word", "nurse", "--k", "12", *world["base"]])
    assert r.exit_code == 0, r.output
    assert "most over-represented" in r.output and "race_gender" in r.output
    out = tmp_path / "n.csv"
    grid = tmp_path / "grid.png"
    r = invoke(["retrieve", "--word", "mentally ill", "--k", "12", "--format", "csv", "--out", str(out),
                "--grid", str(grid), "--attributes", "race,age", *world["base"]])
    assert r.exit_code == 0, r.output
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(out)
    assert set(table["attribute"]) == {"race", "age"}
    assert table.groupby("attribute")["count"].sum().tolist() == [12, 12]
    assert Image.open(grid).size[0] > 100


def test_word_not_in_taxonomy_and_ensemble(world):
    r = invoke(["retrieve", "--word", "astronaut on mars", "--k", "5", "--templates", "ensemble", "--format", "json",
                *world["base"]])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output[r.output.index("{"):])
    assert data["in_taxonomy"] is False and len(data["prompts"]) == 8


@pytest.mark.parametrize("extra, message", [
    (["--attributes", "race,skin"], "unknown attribute 'skin'"),
    (["--k", "500"], "k=500 is larger than the dataset"),
])
def test_bad_input(world, extra, message):
    r = CliRunner().invoke(cli, ["retrieve", "--word", "thief", *world["base"], *extra])
    assert r.exit_code == 1, r.output
    assert message in r.output and "Traceback" not in r.output


def test_k_must_be_positive_is_a_usage_error(world):
    r = CliRunner().invoke(cli, ["retrieve", "--word", "thief", "--k", "0", *world["base"]])
    assert r.exit_code == 2 and "k must be a positive number" in r.output


def test_bad_dataset_and_templates(world, tmp_path):
    base = list(world["base"])
    i = base.index("--dataset")
    base[i + 1] = f"fairface:{tmp_path / 'nope'}"
    r = CliRunner().invoke(cli, ["retrieve", "--word", "thief", *base])
    assert r.exit_code == 1 and str(tmp_path / "nope") in r.output and "Traceback" not in r.output
    t = tmp_path / "t.txt"
    t.write_text("a photo of somebody\n")
    r = CliRunner().invoke(cli, ["retrieve", "--word", "thief", "--templates", str(t), *world["base"]])
    assert r.exit_code == 1 and "{word}" in r.output


def test_unknown_model_tag_lists_close_matches():
    r = CliRunner().invoke(cli, ["retrieve", "--word", "thief", "--model", "ViT-B-32:openaii", "--offline",
                                 "--dataset", "fairface:/nonexistent"])
    assert r.exit_code in (1, 2)
    assert "Traceback" not in r.output


def test_index_build_then_retrieve_embeds_nothing(world):
    r = invoke(["index", "build", *world["base"]])
    assert r.exit_code == 0, r.output


def test_an_approximate_index_orders_its_candidates_by_the_one_score_and_rule():
    """hnsw/ivf pick the candidates; their order is that of the exact scores, ties by the lower image index
    (FAISS's own scores and tie order can differ in the last bit from the scores the report ranks by)."""
    import types

    from clipprobe.analysis.metrics import rank_topk, similarity_scores
    from clipprobe.embeddings.index import build_index
    from clipprobe.pipeline.probe import topk

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((300, 16)).astype(np.float32)
    for dup in (40, 41, 250, 299):
        vectors[dup] = vectors[7]
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = (vectors[[7, 100]] + 0.05 * rng.standard_normal((2, 16))).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    scores = similarity_scores(queries, vectors)
    probe = types.SimpleNamespace(index=build_index(vectors, kind="ivf", nlist=4, nprobe=4, gpu="never"),
                                  check_k=lambda k: k)
    got = topk(probe, scores, queries, 20)
    np.testing.assert_array_equal(got, rank_topk(scores, 20))        # every cell visited: the exact set
    assert list(got[0][:5]) == [7, 40, 41, 250, 299]
