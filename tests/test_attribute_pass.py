"""The attribute pass (clip-retrieval folder -> per-shard image groups) with the tiny random CLIP: every
written value against an oracle computed here, resuming, bad rows, another model's embeddings.
(The planted world, where the classifier is good, is in test_attribute_world.py, slow.)"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from clipprobe.errors import DataError

N = 300
CAPTIONS = ("a woman reading", "a man and a woman", "a photo of a dog", "the man at work", "ladies night", None)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_files, tiny_encoder):
    from facegen import write_fairface

    from clipprobe.embeddings.external import write_embedding_folder

    root = tmp_path_factory.mktemp("attr")
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((N, tiny_encoder.embed_dim)).astype(np.float16)
    meta = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(N)],
                         "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(N)],
                         "url": [f"https://x.invalid/{i}.jpg" for i in range(N)]})
    write_embedding_folder(root / "emb", [(emb[:100], meta[:100]), (emb[100:], meta[100:].reset_index(drop=True))])
    write_fairface(root / "ff", n=28)
    config, weights, arch = tiny_model_files
    return {"root": root, "emb": emb, "meta": meta, "model": (f"{arch}:{weights}", str(config)),
            "encoder": tiny_encoder}


def _config(setup, out, **kw):
    from clipprobe.pipeline.attributes import AttributeConfig
    from clipprobe.pipeline.probe import ProbeConfig

    spec, cfg = setup["model"]
    dataset = kw.pop("dataset", f"fairface:{setup['root'] / 'ff'}")
    probe = ProbeConfig(model=spec, model_config=cfg, dataset=dataset, device="cpu",
                        cache_dir=str(setup["root"] / "cache"), num_workers=0)
    kw.setdefault("embeddings", str(setup["root"] / "emb"))
    kw.setdefault("workers", 2)
    return AttributeConfig(out=str(out), probe=probe, **kw)


def _oracle(setup, x):
    """cos and softmax probabilities of the shipped gender prompt set, in float64 numpy."""
    from scipy.special import softmax

    from clipprobe.resources.attributes import get_attribute_prompts

    enc = setup["encoder"]
    classes = []
    for _, prompts in get_attribute_prompts("gender").classes:
        v = enc.encode_text(list(prompts)).astype(np.float64)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        m = v.mean(axis=0)
        classes.append(m / np.linalg.norm(m))
    t = np.stack(classes)
    scale = float(enc.model.logit_scale.detach().exp())
    x = np.asarray(x, np.float64)
    cos = x @ t.T / np.linalg.norm(x, axis=1, keepdims=True)
    return cos, softmax(scale * cos, axis=1)


def _values(series) -> list:
    """A string column as a list, None for null (pandas reads nulls as NaN)."""
    return [None if pd.isna(v) else v for v in series]


def _named(caption):
    if caption is None:
        return None
    f = re.search(r"\b(woman|ladies)\b", caption)
    m = re.search(r"\bman\b", caption)
    return "Female" if f and not m else "Male" if m and not f else None


def test_pass_against_an_oracle(setup, tmp_path):
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.faces import load_dataset
    from clipprobe.pipeline.attributes import run_attributes

    res = run_attributes(_config(setup, tmp_path / "a", lexicon="fairface"))
    assert [p.name for p in res.shards] == ["attributes_0.parquet", "attributes_1.parquet"]
    assert res.column == "image_gender" and res.groups == ("Female", "Male")
    got = pd.concat([pd.read_parquet(p) for p in res.shards], ignore_index=True)
    assert list(got.columns) == ["caption", "url", "image_gender", "both_gender", "p_Female", "p_Male",
                                 "p_no person"]
    assert _values(got["caption"]) == _values(setup["meta"]["caption"])
    assert got["url"].tolist() == setup["meta"]["url"].tolist()
    cos, probs = _oracle(setup, setup["emb"])
    best = cos.argmax(axis=1)
    want = np.array(["Female", "Male", None], dtype=object)[best]
    assert _values(got["image_gender"]) == want.tolist()
    np.testing.assert_allclose(got[["p_Female", "p_Male", "p_no person"]].to_numpy(), probs, atol=2e-5)
    named = [_named(c) for c in _values(got["caption"])]
    assert _values(got["both_gender"]) == [n if n is not None else g for n, g in zip(named, want)]
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    counts = run["summary"]["counts"]
    assert [counts["Female"], counts["Male"], counts["none"]] == np.bincount(best, minlength=3).tolist()
    assert run["summary"]["both"]["from_caption"] == sum(n is not None for n in named)
    assert run["embeddings"]["rows"] == N and run["prompts"]["name"] == "gender"
    # the calibration, from the probe images' cached embeddings and the true labels
    spec, cfg = setup["model"]
    emb = embed_dataset(setup["encoder"], load_dataset(f"fairface:{setup['root'] / 'ff'}"),
                        cache_dir=str(setup["root"] / "cache"), num_workers=0)
    vcos, _ = _oracle(setup, emb.vectors)
    pred = np.array(["Female", "Male", "none"], dtype=object)[vcos.argmax(axis=1)]
    truth = emb.labels["gender"].astype(str).to_numpy()
    cal = run["calibration"]
    assert cal["n"] == 28 and cal["accuracy"] == pytest.approx(float((pred == truth).mean()))
    for group in ("Female", "Male"):
        for col in ("Female", "Male", "none"):
            assert cal["confusion"][group][col] == int(((truth == group) & (pred == col)).sum())
    assert pd.read_parquet(tmp_path / "a" / "calibration_confusion.parquet")["true"].tolist() == ["Female", "Male"]


def test_threshold_and_resume(setup, tmp_path):
    from clipprobe.pipeline.attributes import run_attributes

    first = run_attributes(_config(setup, tmp_path / "t", threshold=0.5, dataset=None))
    assert first.calibration is None and first.run["calibration_note"].startswith("not measured")
    got = pd.concat([pd.read_parquet(p) for p in first.shards], ignore_index=True)
    cos, probs = _oracle(setup, setup["emb"])
    best = cos.argmax(axis=1)
    unsure = (best < 2) & (probs.max(axis=1) < 0.5)
    assert first.run["summary"]["counts"]["unsure"] == int(unsure.sum()) > 0
    assert got["image_gender"].isna().to_numpy().tolist() == ((best == 2) | unsure).tolist()
    stamps = [p.stat().st_mtime_ns for p in first.shards]
    again = run_attributes(_config(setup, tmp_path / "t", threshold=0.5, dataset=None))
    assert again.run["summary"]["shards_done_before"] == 2
    assert [p.stat().st_mtime_ns for p in again.shards] == stamps
    assert again.run["summary"]["counts"] == first.run["summary"]["counts"]
    other = run_attributes(_config(setup, tmp_path / "t", threshold=0.0, dataset=None))
    assert other.run["summary"]["shards_done_before"] == 0 and other.run["summary"]["counts"]["unsure"] == 0


def test_invalid_rows_stop_the_run_or_are_counted(setup, tmp_path):
    from clipprobe.embeddings.external import write_embedding_folder
    from clipprobe.pipeline.attributes import MSG_INVALID_ROWS, run_attributes

    emb = setup["emb"].copy()
    emb[150] = np.nan
    emb[151] = 0
    meta = setup["meta"]
    write_embedding_folder(tmp_path / "bad", [(emb[:100], meta[:100]), (emb[100:], meta[100:].reset_index(drop=True))])
    with pytest.raises(DataError) as err:
        run_attributes(_config(setup, tmp_path / "o", embeddings=str(tmp_path / "bad"), dataset=None))
    assert str(err.value) == MSG_INVALID_ROWS.format(root=tmp_path / "bad", path="img_emb/img_emb_1.npy", n=2, row=50)
    assert (tmp_path / "o" / "shards" / "attributes_0.parquet").is_file()
    assert not (tmp_path / "o" / "shards" / "attributes_1.parquet").exists()      # nothing half-written
    assert not [p for p in (tmp_path / "o" / "shards").iterdir() if p.name.startswith(".")]
    res = run_attributes(_config(setup, tmp_path / "o", embeddings=str(tmp_path / "bad"), dataset=None,
                                 nan_rows="skip"))
    assert res.run["summary"]["counts"]["invalid"] == 2
    assert res.run["shards"][1]["first_invalid_row"] == 50
    got = pd.read_parquet(res.shards[1])
    assert got["image_gender"].isna().to_numpy()[[50, 51]].all()
    assert got[["p_Female", "p_Male"]].iloc[50:52].isna().all().all()


def test_embeddings_of_another_model_fail_before_any_work(setup, tmp_path):
    from clipprobe.embeddings.external import MSG_DIM_MODEL, write_embedding_folder
    from clipprobe.pipeline.attributes import run_attributes

    write_embedding_folder(tmp_path / "e", [(np.ones((4, 512), np.float16), setup["meta"][:4])])
    with pytest.raises(DataError) as err:
        run_attributes(_config(setup, tmp_path / "o", embeddings=str(tmp_path / "e")))
    assert str(err.value) == MSG_DIM_MODEL.format(root=tmp_path / "e", path="img_emb/img_emb_0.npy", dim=512, want=32)
    assert not (tmp_path / "o" / "shards").exists() and not (tmp_path / "o" / "run.json").exists()


def test_settings_checked_before_anything_loads(setup, tmp_path):
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.attributes import MSG_LEXICON_GROUPS, run_attributes

    other = tmp_path / "kinds.yaml"
    other.write_text("attribute: gender\ngroups:\n  kind X: [a photo of a kind x person]\n  kind Y: [a kind y]\n")
    with pytest.raises(DataError, match="has no images of group 'kind X'"):
        run_attributes(_config(setup, tmp_path / "o", prompts=str(other)))
    with pytest.raises(UsageError) as err:
        run_attributes(_config(setup, tmp_path / "o", prompts=str(other), lexicon="fairface"))
    assert str(err.value) == MSG_LEXICON_GROUPS.format(lexicon="fairface", attribute="gender",
                                                       got=["Female", "Male"], prompts="kinds",
                                                       want=["kind X", "kind Y"])
    with pytest.raises(DataError, match="has no column 'captoin'"):
        run_attributes(_config(setup, tmp_path / "o", text_column="captoin"))
    for bad in ({"threshold": 1.0}, {"nan_rows": "drop"}, {"workers": 0}, {"scale": -1.0}):
        with pytest.raises(UsageError):
            run_attributes(_config(setup, tmp_path / "o", **bad))
    assert not (tmp_path / "o" / "run.json").exists() and not (tmp_path / "o" / "shards").exists()


def test_caption_groups_with_a_term_of_two_groups(tmp_path):
    import pyarrow as pa

    from clipprobe.pipeline.attributes import AttributeConfig, _lexicon_matcher, caption_groups
    from clipprobe.resources.attributes import get_attribute_prompts

    lexicon = tmp_path / "lex.yaml"
    lexicon.write_text("name: twoway\nattributes:\n  gender:\n    Male: [man, person]\n    Female: [woman, person]\n")
    _, matcher, owner, _ = _lexicon_matcher(AttributeConfig(embeddings="e", out="o", lexicon=str(lexicon)),
                                            get_attribute_prompts("gender"))
    texts = pa.array(["a Woman", "a person", "the man", "a man and a woman", "manager", None, "woman, man's hat"])
    assert caption_groups(matcher, owner, texts, 2).tolist() == [0, -1, 1, -1, -1, -1, -1]


def test_attribute_source_checked_before_the_pass(setup, tmp_path):
    import dataclasses

    from clipprobe.errors import UsageError
    from clipprobe.pipeline import attributes as pa_
    from clipprobe.pipeline.balance import BalanceConfig, fit_balance

    source = pa_.AttributeSource("images", _config(setup, ""))
    base = BalanceConfig(captions=(), out=str(tmp_path / "o"), attribute="gender", attribute_source=source)
    cases = [
        (dataclasses.replace(base, attribute_source=pa_.AttributeSource("pixels", _config(setup, ""))),
         pa_.MSG_SOURCE.format(value="pixels")),
        (dataclasses.replace(base, attribute_column="g", groups=("a", "b")), pa_.MSG_SOURCE_COLUMN),
        (dataclasses.replace(base, captions=("c.parquet",)), pa_.MSG_SOURCE_CAPTIONS),
        (dataclasses.replace(base, attribute="race"),
         pa_.MSG_SOURCE_ATTRIBUTE.format(attribute="race", prompts="gender", want="gender")),
        (dataclasses.replace(base, keep=2.0), "keep=2.0 must be in (0, 1]"),
    ]
    for config, message in cases:
        with pytest.raises(UsageError) as err:
            fit_balance(config)
        assert message in str(err.value)
    assert not (tmp_path / "o" / "attributes").exists()
