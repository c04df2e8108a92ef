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


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_public_api_round_trip(world):
    config, weights, arch = None, None, None
    pc = world["probe_config"]
    enc = cp.load_model(pc.model, model_config=pc.model_config, device="cpu")
    faces = cp.load_faces(pc.dataset)
    emb = cp.embed_images(enc, faces, cache_dir=pc.cache_dir, num_workers=0)
    assert len(emb.labels) == len(emb.vectors) == len(faces) - 1   # the corrupt image is left out
    texts = cp.embed_texts(enc, cp.make_queries(str(world["tax"])), cache_dir=pc.cache_dir)
    tables = cp.probe_scores(cp.similarity_scores(texts.vectors, emb.vectors), emb.labels, words=texts.words, k=10)
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


# ------------------------------------------------------------------ one score for a word, alone or in a batch


def _exact_f32(a, b) -> np.float32:
    """Oracle: the exact dot product (rational arithmetic) rounded once to the nearest float32, ties to even."""
    from fractions import Fraction

    exact = sum((Fraction(float(x)) * Fraction(float(y)) for x, y in zip(a, b)), Fraction(0))
    guess = np.float32(float(exact))
    candidates = [guess, np.nextafter(guess, np.float32(np.inf)), np.nextafter(guess, np.float32(-np.inf))]
    best = min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.int32)) & 1))
    return np.float32(best) + np.float32(0.0)


def test_similarity_scores_are_the_exact_dot_product_rounded_once():
    from clipprobe.analysis.metrics import similarity_scores

    rng = np.random.default_rng(4)
    queries = rng.standard_normal((6, 24)).astype(np.float32)
    images = rng.standard_normal((50, 24)).astype(np.float32)
    images[3] = 0.0                                             # a zero score: +0.0, not -0.0
    images[4, :12], images[4, 12:] = queries[0, 12:], -queries[0, :12]   # orthogonal to query 0
    images[5] = -images[6]
    images[7] = images[8] * np.float32(2.0 ** -20)              # tiny scores
    # The exact sum is just above a float32 midpoint, and its float64 rounding lands on the midpoint:
    # rounding twice (float64, then float32) gives 1.0, rounding once gives 1 + 2**-23.
    queries[5, :] = 0.0
    queries[5, :3] = [1.0, 2.0 ** -24, 2.0 ** -60]
    images[9, :] = 0.0
    images[9, :3] = 1.0
    got = similarity_scores(queries, images)
    want = np.array([[_exact_f32(q, x) for x in images] for q in queries], dtype=np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))
    assert got[5, 9] == np.float32(1.0 + 2.0 ** -23)


def test_similarity_scores_with_more_open_scores_than_the_buffer_holds():
    """Orthogonal vectors: every score is 0 (or tiny) and the bound settles none, more than the compiled
    pass lists; they are found again and summed exactly."""
    from clipprobe.analysis.metrics import _similarity_scores

    rng = np.random.default_rng(5)
    queries = np.zeros((3, 8), dtype=np.float32)
    queries[:, :4] = rng.standard_normal((3, 4))
    images = np.zeros((500, 8), dtype=np.float32)
    images[:, 4:] = rng.standard_normal((500, 4))
    images[::50, 0] = np.float32(2.0 ** -30)                    # a few tiny non-zero scores
    got, n_open = _similarity_scores(queries, images)
    assert n_open > 1024
    want = np.array([[_exact_f32(q, x) for x in images] for q in queries], dtype=np.float32)
    np.testing.assert_array_equal(got.view(np.int32), want.view(np.int32))


def test_a_score_is_the_same_alone_in_a_batch_and_at_any_image_position():
    """A float32 matrix product gives one word other last bits alone (a matrix-vector product) than among
    many (a matrix-matrix product), and a kernel's edge blocks treat the last images differently: near-ties
    then break one way in retrieve and another in report."""
    from clipprobe.analysis.metrics import rank_topk, similarity_scores

    rng = np.random.default_rng(7)
    queries = rng.standard_normal((37, 64)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    images = rng.standard_normal((1003, 64)).astype(np.float32)
    images /= np.linalg.norm(images, axis=1, keepdims=True)
    for dup in (17, 512, 998, 1001, 1002):                      # copies of image 3, the last ones at the edge
        images[dup] = images[3]
    batch = similarity_scores(queries, images)
    for w in (0, 17, 36):
        alone = similarity_scores(queries[w], images)[0]
        np.testing.assert_array_equal(alone.view(np.int32), batch[w].view(np.int32))
        np.testing.assert_array_equal(rank_topk(alone, 50)[0], rank_topk(batch[w], 50)[0])
    reordered = similarity_scores(queries[::-1], images[::-1])[::-1, ::-1]
    np.testing.assert_array_equal(reordered.view(np.int32), batch.view(np.int32))
    for dup in (17, 512, 998, 1001, 1002):
        np.testing.assert_array_equal(batch[:, dup].view(np.int32), batch[:, 3].view(np.int32))


def test_probe_scores_a_word_alone_as_among_all_words(world):
    """What retrieve computes for one word (alone) is bit for bit what report computes for it (in a batch)."""
    from clipprobe.pipeline.probe import open_probe, query_vectors, similarities
    from clipprobe.resources.prompts import make_queries, neutral_query

    probe = open_probe(world["probe_config"])
    queries = make_queries(str(world["tax"])) + [neutral_query()] + make_queries("controls")
    vectors = query_vectors(probe, queries)
    for score in ("cosine", "dot"):
        batch = similarities(probe, vectors, score)
        for i in range(len(queries)):
            alone = similarities(probe, vectors[i:i + 1], score)[0]
            np.testing.assert_array_equal(alone.view(np.int32), batch[i].view(np.int32), err_msg=queries[i].word)


def test_nan_scores_are_a_one_line_error():
    from clipprobe.analysis.metrics import rank_topk, similarity_scores

    scores = np.linspace(0, 1, 40).reshape(2, 20)
    scores[1, 7] = np.nan
    with pytest.raises(DataError, match=r"scores: 1 value\(s\) are NaN \(first in row 1\)"):
        rank_topk(scores, 5)
    images = np.ones((4, 3), dtype=np.float32)
    images[2, 1] = np.inf
    with pytest.raises(DataError, match=r"images: 1 row\(s\) hold NaN or infinite values \(first: row 2\)"):
        similarity_scores(np.ones((1, 3)), images)
    with pytest.raises(DataError, match="queries have dimension 2 but the images have dimension 3"):
        similarity_scores(np.ones((1, 2)), images)


# ------------------------------------------------------------------ embeddings that cannot be ranked


def _edited_weights(tmp_path, tiny_model_files, edit) -> str:
    """The tiny model's weights with ``edit(state)`` applied, as a model spec."""
    from safetensors.torch import load_file, save_file

    config, weights, arch = tiny_model_files
    state = load_file(str(weights))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return f"{arch}:{path}"


def _set_nan(state):
    state["visual.proj"][0, 0] = float("nan")


def _constant(state):
    state["visual.ln_post.weight"].zero_()      # the pooled token is the bias whatever the image
    state["visual.ln_post.bias"].fill_(0.5)


@pytest.mark.parametrize("edit, message", [
    (_set_nan, "gave NaN, infinite or zero embeddings to 89 of 89 images of dataset"),
    (_constant, "gave the same embedding to all 89 images of dataset"),
])
def test_embeddings_that_cannot_be_ranked_are_a_one_line_error(world, tmp_path, tiny_model_files, edit, message):
    """NaN embeddings crashed retrieve, report and subsets ("cannot reshape array of size 0"); equal ones ran
    a full report in which every score tied, without a word."""
    config, _weights, _arch = tiny_model_files
    model = _edited_weights(tmp_path, tiny_model_files, edit)
    base = ["--model", model, "--model-config", str(config), "--dataset", f"fairface:{world['root']}",
            "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--workers", "0"]
    runs = {
        "retrieve": ["retrieve", *base, "--taxonomy", str(world["tax"]), "--word", "nurse", "--k", "5"],
        "report": ["report", *base, "--taxonomy", str(world["tax"]), "--k", "5", "--bootstrap", "0",
                   "--out", str(tmp_path / "rep"), "--no-figures", "--no-html"],
        "subsets": ["subsets", *base, "--taxonomy", str(world["tax"]), "--k", "5", "--by", "attribute:gender",
                    "--min-size", "5", "--out", str(tmp_path / "sub")],
    }
    for name, args in runs.items():
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 1, (name, r.output)
        assert message in r.output and "Traceback" not in r.output, (name, r.output)
        assert len([line for line in r.output.splitlines() if line.startswith("Error")]) == 1, r.output


def test_duplicate_embeddings_are_counted_in_a_warning(world, caplog):
    import dataclasses
    import logging

    from clipprobe.pipeline.probe import check_embeddings, open_probe

    emb = open_probe(world["probe_config"]).embeddings
    vectors = emb.vectors.copy()
    vectors[[10, 20, 30]] = vectors[4]
    with caplog.at_level(logging.WARNING):
        check_embeddings(dataclasses.replace(emb, vectors=vectors), model="m", dataset="d")
    assert "3 of 89 image embeddings are exact copies of another image's (86 distinct" in caplog.text


def test_a_report_rerun_after_an_image_changed_in_place_recomputes(world, tmp_path, caplog):
    """Same file name, same byte size, other pixels: the embedding cache embeds it again and the report's
    finished chunks (keyed by the embeddings themselves) are not reused."""
    import logging
    from dataclasses import replace

    root = tmp_path / "ff"
    shutil.copytree(world["root"], root)
    corrupt = {"6.jpg"}                                                   # the world's corrupt image (row 5)
    files = sorted((p for p in (root / "val").glob("*.jpg") if p.name not in corrupt), key=lambda p: p.stat().st_size)
    large = files[-1]
    original = large.read_bytes()
    large.write_bytes(files[0].read_bytes().ljust(len(original), b"\0"))   # a JPEG decoder stops at its end
    probe = replace(world["probe_config"], dataset=f"fairface:{root}", cache_dir=str(tmp_path / "cache"))
    config = cp.ReportConfig(probe=probe, out=str(tmp_path / "rep"), taxonomy=str(world["tax"]), k=10,
                             bootstrap=0, permutations=200, controls=None, figures=False, html=False)
    cp.run_report(config)
    large.write_bytes(original)                                            # back, in place: the same size
    with caplog.at_level(logging.INFO, logger="clipprobe.embeddings.cache"):
        again = cp.run_report(config)
    assert (again.computed_chunks, again.reused_chunks) == (1, 0)
    assert "1 image(s) of fairface:" in caplog.text
    cp.run_report(replace(config, out=str(tmp_path / "fresh"),
                          probe=replace(probe, cache_dir=str(tmp_path / "fresh-cache"))))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "rep" / "groups.parquet"),
                                  pd.read_parquet(tmp_path / "fresh" / "groups.parquet"))
