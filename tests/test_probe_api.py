"""The array API (`clipprobe.probe_scores`) is what `clipprobe report` writes; one ranking rule everywhere."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import clipprobe as cp
from clipprobe.analysis.probe import finish_tables, probe_scores, score_words
from clipprobe.cli import cli
from clipprobe.errors import ClipprobeError, DataError, UsageError
from facegen import write_fairface

WORDS = """name: small
categories:
  criminal justice: [terrorist, thief, aggressive]
  behavioral: [aggressive, lazy]
  occupation: [nurse, CEO, engineer]
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model_files):
    tmp = tmp_path_factory.mktemp("api")
    root = write_fairface(tmp / "fairface", n=90, corrupt=(5,))
    config, weights, arch = tiny_model_files
    tax = tmp / "small.yaml"
    tax.write_text(WORDS)
    probe_config = cp.ProbeConfig(model=f"{arch}:{weights}", model_config=str(config), dataset=f"fairface:{root}",
                                  cache_dir=str(tmp / "cache"), device="cpu", num_workers=0)
    return {"tmp": tmp, "root": root, "tax": tax, "probe_config": probe_config}


def test_probe_scores_equals_what_report_writes(world):
    from clipprobe.pipeline.probe import open_probe, query_vectors, similarities
    from clipprobe.resources.prompts import make_queries, neutral_query

    out = world["tmp"] / "report"
    result = cp.run_report(cp.ReportConfig(probe=world["probe_config"], out=str(out), taxonomy=str(world["tax"]),
                                           k=12, bootstrap=40, seed=5, figures=False, html=False))
    probe = open_probe(world["probe_config"])
    queries = make_queries(str(world["tax"]))
    controls = make_queries("controls")
    vectors = query_vectors(probe, queries + [neutral_query()] + controls)
    scores = similarities(probe, vectors)
    n = len(queries)
    tables = probe_scores(scores[:n], probe.labels, words=[q.word for q in queries], k=12, bootstrap=40, seed=5,
                          neutral=scores[n], controls=scores[n + 1:],
                          categories={q.word: q.categories for q in queries},
                          prompts=[q.prompts for q in queries], files=probe.files)
    written_groups = pd.read_parquet(out / "groups.parquet")
    written_words = pd.read_parquet(out / "words.parquet")
    pd.testing.assert_frame_equal(tables.groups, written_groups)
    # lists come back from parquet as arrays: compare them as lists, everything else exactly
    for col in ("prompts", "top_files"):
        assert [list(x) for x in tables.words[col]] == [list(x) for x in written_words[col]]
    pd.testing.assert_frame_equal(tables.words.drop(columns=["prompts", "top_files"]),
                                  written_words.drop(columns=["prompts", "top_files"]))
    from clipprobe.report.store import summary_csv_frame

    # summary.parquet holds top_groups as records; summary.csv the same as text
    assert cp.load_report(out).summary["top_groups"].tolist() == tables.summary["top_groups"].tolist()
    pd.testing.assert_frame_equal(summary_csv_frame(tables.summary), pd.read_csv(out / "summary.csv"),
                                  check_dtype=False)
    assert result.computed_chunks == 1


def test_chunks_joined_equal_one_call():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(9, 300)).astype(np.float32)
    labels = pd.DataFrame({"race": rng.choice(["White", "Black", "Indian"], 300),
                           "gender": rng.choice(["Male", "Female"], 300)})
    words = [f"w{i}" for i in range(9)]
    whole = probe_scores(scores, labels, words=words, k=20, bootstrap=30, seed=2)
    parts = [score_words(scores[i:i + 4], labels, words=words[i:i + 4], k=20, bootstrap=30, seed=2)
             for i in range(0, 9, 4)]
    joined = finish_tables(parts, k=20)
    pd.testing.assert_frame_equal(whole.groups, joined.groups)
    pd.testing.assert_frame_equal(whole.words, joined.words)
    # FairFace's canonical group order, not alphabetical
    assert list(whole.groups[whole.groups["attribute"] == "race"]["group"][:3]) == ["White", "Black", "Indian"]


@pytest.mark.parametrize("kwargs, error, message", [
    ({"words": ["a", "b"]}, DataError, "words: 2 word(s) given for 3 row(s)"),
    ({"words": ["a", "a", "b"]}, DataError, "'a' appears more than once"),
    ({"alpha": 1.0}, UsageError, "alpha must be between 0 and 1"),
    ({"bootstrap": -1}, UsageError, "bootstrap must be 0"),
    ({"seed": -3}, UsageError, "seed must be a non-negative integer"),
    ({"attributes": ["religion"]}, UsageError, "attribute 'religion' is not a column of labels"),
    ({"k": 0}, UsageError, "k=0 must be between 1"),
    ({"neutral": np.zeros(3)}, DataError, "neutral: expected 50 similarities"),
])
def test_bad_input_is_one_line(kwargs, error, message):
    rng = np.random.default_rng(1)
    args = {"words": ["a", "b", "c"], "k": 5, **kwargs}
    labels = pd.DataFrame({"race": rng.choice(["White", "Black"], 50)})
    with pytest.raises(error) as info:
        probe_scores(rng.normal(size=(3, 50)), labels, **args)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_labels_must_match_images():
    with pytest.raises(DataError, match="labels: 4 row"):
        probe_scores(np.zeros((1, 5)), pd.DataFrame({"race": ["White"] * 4}), words=["a"], k=2)


def test_public_api_round_trip(world):
    config, weights, arch = None, None, None
    pc = world["probe_config"]
    enc = cp.load_model(pc.model, model_config=pc.model_config, device="cpu")
    faces = cp.load_faces(pc.dataset)
    emb = cp.embed_images(enc, faces, cache_dir=pc.cache_dir, num_workers=0)
    assert len(emb.labels) == len(emb.vectors) == len(faces) - 1   # the corrupt image is left out
    texts = cp.embed_texts(enc, cp.make_queries(str(world["tax"])), cache_dir=pc.cache_dir)
    tables = cp.probe_scores(texts.vectors @ emb.vectors.T, emb.labels, words=texts.words, k=10)
    out = world["tmp"] / "api-report"
    cp.write_report(tables, out, html=False)
    back = cp.load_report(out)
    pd.testing.assert_frame_equal(back.groups, tables.groups)
    assert back.run["command"] == "report" and back.run["k"] == 10
    with pytest.raises(DataError, match="labels: 90 row"):
        cp.probe_scores(texts.vectors @ emb.vectors.T, faces.labels, words=texts.words, k=10)
    del config, weights, arch


def test_precision_is_part_of_the_resume_key(world):
    """An fp32 and a bf16 run into one folder never reuse each other's chunks (the settings hash
    uses the embedding cache's precision-aware model key)."""
    from dataclasses import replace

    out = world["tmp"] / "precision"
    base = cp.ReportConfig(probe=world["probe_config"], out=str(out), taxonomy=str(world["tax"]), k=10,
                           bootstrap=0, figures=False, html=False)
    first = cp.run_report(base)
    again = cp.run_report(base)
    other = cp.run_report(replace(base, probe=replace(world["probe_config"], precision="bf16")))
    assert (first.computed_chunks, again.reused_chunks, other.reused_chunks, other.computed_chunks) == (1, 1, 0, 1)
    assert len(list((out / "parts").iterdir())) == 2


def test_retrieve_and_report_rank_exact_ties_alike(world, tmp_path, tiny_model_files):
    """Duplicate images have identical embeddings: retrieve and report break the tie the same way."""
    root = tmp_path / "dups"
    shutil.copytree(world["root"], root)
    labels = pd.read_csv(root / "fairface_label_val.csv", dtype=str).drop(index=5)   # the corrupt one
    copies = labels.iloc[:30].copy()
    for i, f in enumerate(copies["file"]):
        dst = f"val/dup{i}.jpg"
        shutil.copy(root / f, root / dst)
        copies.iloc[i, copies.columns.get_loc("file")] = dst
    pd.concat([labels, copies]).to_csv(root / "fairface_label_val.csv", index=False)
    config, weights, arch = tiny_model_files
    base = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset", f"fairface:{root}",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"]
    out = tmp_path / "rep"
    r = CliRunner().invoke(cli, ["report", *base, "--taxonomy", str(world["tax"]), "--k", "20", "--bootstrap", "0",
                                 "--out", str(out), "--no-figures", "--no-html"])
    assert r.exit_code == 0, r.output
    words = pd.read_parquet(out / "words.parquet")
    for word in ("nurse", "thief"):
        r = CliRunner().invoke(cli, ["retrieve", *base, "--taxonomy", str(world["tax"]), "--word", word,
                                     "--k", "20", "--format", "json"])
        assert r.exit_code == 0, r.output
        got = [row["file"] for row in json.loads(r.output)["results"]]
        want = list(words.loc[(words["word"] == word) & (words["attribute"] == "race"), "top_files"].iloc[0])
        assert got == want[:20]


def test_probe_shuffled_keeps_images_and_permutes_labels(world):
    from clipprobe.pipeline.probe import open_probe

    probe = open_probe(world["probe_config"])
    null = probe.shuffled(3)
    assert null.files == probe.files and null.embeddings is probe.embeddings
    assert sorted(null.labels["race"]) == sorted(probe.labels["race"])
    assert not null.labels["race"].equals(probe.labels["race"])
    with pytest.raises(ClipprobeError, match="labels: 3 row"):
        probe.with_labels(probe.labels.iloc[:3])
