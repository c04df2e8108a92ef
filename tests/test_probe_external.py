"""`report`, `retrieve` and `subsets` with `--embeddings DIR`: the image side read from a folder in
clip-retrieval's layout (written here from the demo model's own embeddings of a generated face dataset)
gives the same numbers as embedding the images directly; rows that do not match are counted; bad folders
fail in one line, exit non-zero and write nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli
from facegen import write_fairface

N = 60
WORDS = """name: small
categories:
  occupation: [nurse, CEO, engineer]
  behavioral: [lazy, ambitious]
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """The dataset (one corrupt image), the demo model's embeddings of it, and three folders: the same
    vectors as float32 (rows shuffled, keyed by absolute path, one stray row of another image), the same
    as float16, and a folder of the wrong dimension."""
    from clipprobe.embeddings.external import write_embedding_folder
    from clipprobe.pipeline.probe import ProbeConfig, open_probe

    tmp = tmp_path_factory.mktemp("external")
    root = write_fairface(tmp / "ff", n=N, corrupt=(3,))
    cache = tmp / "cache"
    probe = open_probe(ProbeConfig(model="demo", dataset=f"fairface:{root}", cache_dir=str(cache), device="cpu",
                                   num_workers=0))
    vectors = np.asarray(probe.embeddings.vectors, np.float32)
    files = list(probe.files)
    order = np.random.default_rng(0).permutation(len(files))
    keys = [str(root / files[i]) for i in order] + ["/elsewhere/val/not-in-the-dataset.jpg"]
    rows = np.vstack([vectors[order], vectors[:1]])
    meta = pd.DataFrame({"image_path": keys, "caption": ["a face"] * len(keys)})
    half = len(keys) // 2

    def folder(name, arr):
        return write_embedding_folder(tmp / name, [(arr[:half], meta[:half]),
                                                   (arr[half:], meta[half:].reset_index(drop=True))])

    tax = tmp / "small.yaml"
    tax.write_text(WORDS)
    base = ["--model", "demo", "--dataset", f"fairface:{root}", "--cache-dir", str(cache), "--device", "cpu",
            "--workers", "0"]
    return {"tmp": tmp, "root": root, "base": base, "tax": tax, "probe": probe,
            "f32": folder("emb32", rows), "f16": folder("emb16", rows.astype(np.float16)),
            "wrong_dim": write_embedding_folder(tmp / "emb8", [(np.ones((3, 8), np.float16), meta[:3])])}


def invoke(args):
    return CliRunner().invoke(cli, args)


REPORT = ["--k", "10", "--bootstrap", "40", "--permutations", "50", "--seed", "2", "--no-figures", "--no-html",
          "--attributes", "race,gender"]


def _report(setup, out, *extra):
    r = invoke(["report", *setup["base"], "--taxonomy", str(setup["tax"]), *REPORT, "--out", str(out), *extra])
    assert r.exit_code == 0, r.output
    return json.loads((out / "run.json").read_text())


def test_report_from_a_folder_equals_the_report_from_the_images(setup):
    tmp = setup["tmp"]
    direct = _report(setup, tmp / "direct")
    folder = _report(setup, tmp / "folder", "--embeddings", str(setup["f32"]))
    for name in ("groups.parquet", "words.parquet", "summary.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp / "folder" / name), pd.read_parquet(tmp / "direct" / name))
    assert folder["n_flagged"] == direct["n_flagged"]
    # run.json: the folder, its content fingerprint, the key column and every row that did not match
    emb = folder["dataset"]["embeddings"]
    assert emb["root"] == str(setup["f32"]) and len(emb["fingerprint"]) == 24
    assert emb["key_column"] == "image_path" and emb["dim"] == 48 and emb["dtypes"] == ["float32"]
    assert emb["n_matched"] == N - 1 and emb["n_dataset_rows_without_embedding"] == 1
    assert emb["n_embeddings_without_dataset_row"] == 1 and emb["n_duplicate_embeddings"] == 0
    assert emb["n_normalised"] == 0                 # unit-length float32 rows are used as stored
    assert emb["examples"]["unmatched"] == ["/elsewhere/val/not-in-the-dataset.jpg"]
    assert folder["config"]["probe"]["embeddings"] == str(setup["f32"])
    assert [s["file"] for s in folder["skipped_images"]] == ["val/4.jpg"]
    assert "embeddings" not in direct["dataset"] and direct["config"]["probe"]["embeddings"] is None
    assert folder["dataset"]["n_images"] == direct["dataset"]["n_images"] == N - 1


def test_another_folder_into_the_same_report_reuses_no_chunk(setup):
    out = setup["tmp"] / "resume"
    first = _report(setup, out, "--embeddings", str(setup["f32"]))
    again = _report(setup, out, "--embeddings", str(setup["f32"]))
    assert again["chunks"] == {"reused": 1, "computed": 0}
    other = _report(setup, out, "--embeddings", str(setup["f16"]))
    assert other["chunks"] == {"reused": 0, "computed": 1}
    assert other["settings_hash"] != first["settings_hash"]
    fp16, fp32 = other["dataset"]["embeddings"], first["dataset"]["embeddings"]
    assert fp16["fingerprint"] != fp32["fingerprint"] and fp16["dtypes"] == ["float16"]
    assert fp16["n_normalised"] > 0                 # float16 rows are renormalised in float32


def test_retrieve_from_a_folder_equals_retrieve_from_the_images(setup):
    args = ["retrieve", "--word", "nurse", "--k", "8", "--format", "json", *setup["base"]]
    a, b = invoke(args), invoke([*args, "--embeddings", str(setup["f32"])])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    direct, folder = (json.loads(r.stdout[r.stdout.index("{"):]) for r in (a, b))
    assert folder["results"] == direct["results"] and folder["groups"] == direct["groups"]
    assert folder["dataset"]["embeddings"]["key_column"] == "image_path"


def test_subsets_from_a_folder_equal_subsets_from_the_images(setup):
    tmp = setup["tmp"]
    args = ["subsets", *setup["base"], "--taxonomy", str(setup["tax"]), "--by", "kmeans:2", "--min-size", "10",
            "--k", "8", "--permutations", "30", "--bootstrap", "0", "--controls", "none", "--typical", "0",
            "--attributes", "gender", "--no-figures", "--no-html"]
    a = invoke([*args, "--out", str(tmp / "sub-direct")])
    b = invoke([*args, "--out", str(tmp / "sub-folder"), "--embeddings", str(setup["f32"])])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    written = sorted(p.name for p in (tmp / "sub-direct").glob("*.parquet"))
    assert written
    for name in written:
        pd.testing.assert_frame_equal(pd.read_parquet(tmp / "sub-folder" / name),
                                      pd.read_parquet(tmp / "sub-direct" / name))
    run = json.loads((tmp / "sub-folder" / "run.json").read_text())
    assert run["dataset"]["embeddings"]["fingerprint"]


def _bad_shard(path, tmp):
    from clipprobe._io import write_parquet

    folder = tmp / "truncated"
    (folder / "img_emb").mkdir(parents=True)
    np.save(folder / "img_emb" / "img_emb_0.npy", np.ones((4, 48), np.float16))
    data = (folder / "img_emb" / "img_emb_0.npy").read_bytes()
    (folder / "img_emb" / "img_emb_0.npy").write_bytes(data[:-10])
    write_parquet(folder / "metadata" / "metadata_0.parquet", pd.DataFrame({"image_path": ["val/1.jpg"] * 4}))
    return folder


@pytest.mark.parametrize("case", ["missing", "dimension", "key", "nomatch", "truncated"])
def test_bad_folders_fail_in_one_line_and_write_nothing(setup, tmp_path, case):
    from clipprobe.embeddings import external as ext

    if case == "missing":
        args, want = ["--embeddings", str(tmp_path / "nope")], ext.MSG_NO_FOLDER.format(root=tmp_path / "nope")
    elif case == "dimension":
        args = ["--embeddings", str(setup["wrong_dim"])]
        want = ext.MSG_DIM_MODEL.format(root=setup["wrong_dim"], path="img_emb/img_emb_0.npy", dim=8, want=48)
    elif case == "key":
        args, want = ["--embeddings", str(setup["f32"]), "--embeddings-key", "imagepath"], "has no column 'imagepath'"
    elif case == "nomatch":
        args, want = ["--embeddings", str(setup["f32"]), "--embeddings-key", "caption"], "no value of metadata column"
    else:
        folder = _bad_shard("img_emb_0.npy", tmp_path)
        args, want = ["--embeddings", str(folder)], "truncated or corrupt"
    out = tmp_path / "out"
    r = invoke(["report", *setup["base"], "--taxonomy", str(setup["tax"]), *REPORT, "--out", str(out), *args])
    assert r.exit_code == 1, r.output
    assert want in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output
    assert not out.exists()


def test_key_without_folder_is_a_usage_error(setup, tmp_path):
    r = invoke(["retrieve", "--word", "nurse", *setup["base"], "--embeddings-key", "url"])
    assert r.exit_code == 2 and "--embeddings-key url is given without --embeddings" in r.output


# ------------------------------------------------------------------------------------------ the reader's side


def test_match_keys_by_the_longest_trailing_path():
    from clipprobe.embeddings.external import match_keys

    files = ["val/1.jpg", "1.jpg", "train/2.jpg", "a b/3.png"]
    keys = ["/data/ff/val/1.jpg", "1.jpg", "val/1.jpg", "https://host.invalid/x/train/2.jpg?sig=1", None, "",
            "C:\\faces\\a b\\3.png", "val/9.jpg", "./train/2.jpg", float("nan")]
    assert match_keys(keys, files).tolist() == [0, 1, 0, 2, -1, -1, 3, -1, 2, -1]


def test_counts_duplicates_invalid_rows_and_normalises(setup, tmp_path):
    from clipprobe.embeddings.external import dataset_embeddings, open_embedding_folder, write_embedding_folder

    probe = setup["probe"]
    dataset = probe.dataset
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((6, 5)).astype(np.float32) * 3
    raw[4] = np.nan
    keys = ["val/1.jpg", "val/2.jpg", "val/1.jpg", None, "val/5.jpg", "val/6.jpg"]
    write_embedding_folder(tmp_path / "e", [(raw, pd.DataFrame({"path": keys}))])
    folder = open_embedding_folder(tmp_path / "e")
    match = dataset_embeddings(folder, dataset)
    emb, rec = match.embeddings, match.record
    assert rec["key_column"] == "path"
    assert rec["n_duplicate_embeddings"] == 1 and rec["n_embeddings_without_key"] == 1
    assert rec["n_invalid_embeddings"] == 1 and rec["n_matched"] == 3
    # dataset rows 0, 1, 5 (files val/1, val/2, val/6), row 0 from the first of its two embeddings
    assert emb.rows.tolist() == [0, 1, 5] and emb.files == ("val/1.jpg", "val/2.jpg", "val/6.jpg")
    expect = raw[[0, 1, 5]].astype(np.float64)
    np.testing.assert_allclose(emb.norms, np.linalg.norm(expect, axis=1), rtol=1e-6)
    np.testing.assert_allclose(emb.vectors, expect / np.linalg.norm(expect, axis=1, keepdims=True), atol=1e-7)
    assert emb.labels["race"].tolist() == dataset.table["race"].iloc[[0, 1, 5]].tolist()
    reasons = {s["file"]: s["reason"] for s in emb.skipped}
    assert len(reasons) == N - 3 and "NaN, infinite or zero" in reasons["val/5.jpg"]
    assert "no embedding in" in reasons["val/3.jpg"]


def test_the_images_are_never_read(setup, tmp_path):
    """Only the text tower is used: a dataset whose label file is there but whose images are not gives
    the same retrieval from the folder (matched by the key's trailing path, another root)."""
    import shutil

    labels = tmp_path / "labels-only"
    labels.mkdir()
    shutil.copy(setup["root"] / "fairface_label_val.csv", labels)
    args = ["retrieve", "--word", "engineer", "--k", "6", "--format", "json", "--model", "demo", "--device", "cpu",
            "--cache-dir", str(setup["tmp"] / "cache"), "--embeddings", str(setup["f32"])]
    a = invoke([*args, "--dataset", f"fairface:{setup['root']}"])
    b = invoke([*args, "--dataset", f"fairface:{labels}"])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    here, there = (json.loads(r.stdout[r.stdout.index("{"):]) for r in (a, b))
    assert there["results"] == here["results"] and there["groups"] == here["groups"]
    assert there["dataset"]["embeddings"]["n_matched"] == N - 1
