"""The planted-bias world: determinism, layout, truth, and the shipped model's check.

Oracles: a plain per-caption regular expression for caption counts, scipy's
hypergeometric and statsmodels' Benjamini-Hochberg for the probe statistics,
numpy brute force for top-k counts, and clipprobe's own loaders for the layout.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipprobe.errors import UsageError
from clipprobe.world import WORLD_ARCH
from clipprobe.world import generate as gen
from clipprobe.world.evaluate import bh_adjust, probe_rows

SMALL = {"n_images": 600, "n_captions": 700}


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return gen.generate_world(tmp_path_factory.mktemp("small"), seed=3, write_train_images=True, **SMALL)


@pytest.fixture(scope="module")
def full_world(tmp_path_factory):
    """The world at its default size and seed: the one the shipped model was trained for."""
    return gen.generate_world(tmp_path_factory.mktemp("full"), seed=0)


def test_generation_is_deterministic(small_world, tmp_path):
    again = gen.generate_world(tmp_path / "again", seed=3, write_train_images=True, **SMALL)
    for a, b in [(small_world.labels_val, again.labels_val), (small_world.labels_train, again.labels_train),
                 (small_world.captions, again.captions), (small_world.truth, again.truth),
                 (small_world.content, again.content), (small_world.lexicon, again.lexicon)]:
        assert _sha(a) == _sha(b), a.name
    for name in ("val/1.png", "val/600.png", "train/17.png"):
        assert _sha(small_world.fairface / name) == _sha(again.fairface / name)
    other = gen.generate_world(tmp_path / "other", seed=4, **SMALL)
    assert _sha(other.labels_val) != _sha(small_world.labels_val)
    assert _sha(other.captions) != _sha(small_world.captions)


def test_sizes_are_checked(tmp_path):
    with pytest.raises(UsageError) as err:
        gen.generate_world(tmp_path, n_images=10)
    assert str(err.value) == gen.ERR_BAD_SIZE.format(minimum=500, value=10)
    with pytest.raises(UsageError) as err:
        gen.generate_world(tmp_path, n_captions=3)
    assert str(err.value) == gen.ERR_BAD_CAPTIONS.format(minimum=500, value=3)


def test_labels_are_synthetic_only(small_world):
    real = {"White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern",
            "Male", "Female", "0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"}
    for labels in (small_world.labels_val, small_world.labels_train):
        df = pd.read_csv(labels, dtype=str)
        assert df["race"].str.fullmatch(r"group [A-G]").all()
        assert df["gender"].str.fullmatch(r"kind [XY]").all()
        assert df["age"].str.fullmatch(r"stage [1-4]").all()
        assert not (set(df["race"]) | set(df["gender"]) | set(df["age"])) & real
    lex = gen.lexicon()["attributes"]
    for attr, groups in lex.items():
        assert set(groups) == set(gen.ATTRIBUTES[attr])
    # Every value shows up, with shares near the planned uneven ones.
    df = pd.read_csv(small_world.labels_val, dtype=str)
    shares = df["race"].value_counts(normalize=True).reindex(gen.ATTRIBUTES["race"])
    np.testing.assert_allclose(shares.to_numpy(), gen.SHARES["race"], atol=0.04)


def test_layout_loads_as_fairface(small_world):
    from clipprobe.faces import load_dataset

    df = pd.read_csv(small_world.labels_val, dtype=str)
    assert list(df.columns) == list(gen.LABEL_COLUMNS)
    ds = load_dataset(small_world.dataset_spec)
    assert len(ds) == SMALL["n_images"]
    assert list(ds.table["race"]) == list(df["race"])
    img = ds.load_image(0)
    assert img.size == (gen.IMAGE_SIZE, gen.IMAGE_SIZE) and img.mode == "RGB"
    train = load_dataset(small_world.dataset_spec, split="train")
    assert len(train) == SMALL["n_captions"]
    # The drawing on disk is the drawing in memory (training draws in memory).
    people = gen.sample_people(3, "val", SMALL["n_images"])
    np.testing.assert_array_equal(np.asarray(img), gen.render_array(people[:1])[0])


def test_world_words_are_sobit_words(small_world):
    from clipprobe.resources.taxonomy import get_taxonomy, load_taxonomy

    sobit = get_taxonomy("sobit")
    for word, category, pos, *_ in gen.PLANTED + gen.CONTROLS:
        entry = sobit.word(word)
        assert entry is not None, word
        assert entry.pos == pos, word
        assert category in entry.categories, word
    world = load_taxonomy(small_world.taxonomy)
    assert sorted(world.words()) == sorted(w for w, *_ in gen.PLANTED + gen.CONTROLS)
    assert len({w for w, *_ in gen.PLANTED} & {w for w, *_ in gen.CONTROLS}) == 0


def test_lexicon_file_loads(small_world):
    from clipprobe.resources.lexicon import load_lexicon

    lex = load_lexicon(small_world.lexicon)
    assert lex.groups() == [(a, g) for a, gs in gen.ATTRIBUTES.items() for g in gs]
    data = __import__("yaml").safe_load(small_world.lexicon.read_text())
    assert data == gen.lexicon()


def test_caption_parquet_schema(small_world):
    import pyarrow.parquet as pq

    schema = pq.read_schema(small_world.captions)
    expected = {"URL": "string", "TEXT": "string", "WIDTH": "int32", "HEIGHT": "int32", "similarity": "double",
                "hash": "int64", "punsafe": "float", "pwatermark": "float"}
    assert {f.name: str(f.type) for f in schema if f.name in expected} == expected
    assert [f.name for f in schema][:len(gen.PARQUET_COLUMNS)] == list(gen.PARQUET_COLUMNS)
    df = pd.read_parquet(small_world.captions)
    assert len(df) == SMALL["n_captions"] and df["TEXT"].notna().all()
    assert df["hash"].is_unique


def _regex_counts(texts, word, attr, groups):
    def rx(term):
        return re.compile(r"(?<![^\W_])" + r"\s+".join(map(re.escape, term.split())) + r"(?![^\W_])", re.I)

    has_word = np.array([bool(rx(word).search(t)) for t in texts])
    terms = gen.lexicon()["attributes"][attr]
    both = {g: int(np.sum(has_word & np.array([any(rx(term).search(t) for term in terms[g]) for t in texts])))
            for g in groups}
    return int(has_word.sum()), both


def test_truth_matches_captions(small_world):
    truth = json.loads(small_world.truth.read_text())
    texts = pd.read_parquet(small_world.captions)["TEXT"].tolist()
    counts = truth["caption_counts"]
    assert counts["n_captions"] == len(texts)
    for p in truth["planted"]:
        n_word, both = _regex_counts(texts, p["word"], p["attribute"], gen.ATTRIBUTES[p["attribute"]])
        assert n_word == counts["words"][p["word"]]["n_word"]
        assert both == counts["words"][p["word"]]["n_both"][p["attribute"]]
        assert both[p["group"]] == p["caption_count"] > 0
        # Planted: the word appears with its group and with no other group of the attribute.
        assert p["caption_count_other_groups"] == 0
        assert sum(both.values()) == both[p["group"]]
    for word in truth["controls"]:
        for attr, groups in gen.ATTRIBUTES.items():
            n_word, both = _regex_counts(texts, word, attr, groups)
            assert n_word == counts["words"][word]["n_word"]
            assert both == counts["words"][word]["n_both"][attr]
    assert set(truth["controls"]) == {c["word"] for c in truth["control_details"]}


def test_controls_are_tied_to_content_not_groups(small_world):
    """A control word's captions come from one (accessory, background) pair; its group mix is the base mix."""
    from scipy.stats import chi2_contingency

    truth = json.loads(small_world.truth.read_text())
    df = pd.read_parquet(small_world.captions)
    content = pd.read_csv(small_world.content)
    content = content[content["split"] == "train"].reset_index(drop=True)
    train = pd.read_csv(small_world.labels_train, dtype=str)
    for c in truth["control_details"]:
        has = df["TEXT"].str.contains(rf"\b{c['word']}\b", case=False, regex=True).to_numpy()
        assert (content.loc[has, "accessory"] == c["accessory"]).all()
        assert (content.loc[has, "background"] == c["background"]).all()
    # Accessory and background are drawn independently of race.
    table = pd.crosstab(train["race"], content["accessory"] + "/" + content["background"])
    assert chi2_contingency(table.to_numpy())[1] > 0.001


def test_accessory_size_does_not_depend_on_attributes():
    """An accessory is drawn at a fixed size, so its visibility carries no demographic signal.

    If it scaled with the head (gender shape, age size), a control word tied to an accessory
    would retrieve the groups whose accessories are larger, which is exactly a false positive.
    """
    base = gen.sample_people(0, "val", 1)[0]
    params = list(base.params)
    params[9] = 30 / 45  # accessory grey 40, a shade no other part of the drawing uses
    for a, name in enumerate(gen.ACCESSORIES):
        counts = []
        for gender in range(len(gen.ATTRIBUTES["gender"])):
            for age in range(len(gen.ATTRIBUTES["age"])):
                img = np.asarray(gen.render(gen.Person(0, gender, age, a, 0, tuple(params))))
                counts.append(int(np.all(img == 40, axis=2).sum()))
        assert min(counts) > 20, (name, counts)
        # Rasterisation moves a few pixels; a head-scaled drawing would differ by a factor of 2 or more.
        assert max(counts) / min(counts) <= 1.3, (name, counts)


def test_hair_shows_age():
    """The hair's grey gets lighter with each age stage (the age cue), whatever the other attributes."""
    base = gen.sample_people(0, "val", 1)[0]
    for race in (0, 6):
        for gender in range(2):
            greys = []
            for age in range(4):
                p = gen.Person(race, gender, age, gen.ACCESSORIES.index("mask"), gen.BACKGROUNDS.index("plain"),
                               base.params)
                img = np.asarray(gen.render(p)).astype(int)
                neutral = img[np.ptp(img, axis=2) == 0][:, 0]
                # On a plain background the neutral greys are the background, the dark eyes and mask, and the hair.
                hair = {int(v) for v in neutral} - {int(img[0, 0, 0])} - set(range(60))
                assert len(hair) == 1, (race, gender, age, hair)
                greys.append(hair.pop())
            assert greys == sorted(greys) and len(set(greys)) == 4, greys


def test_bh_matches_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(0)
    p = np.concatenate([rng.random(300), rng.random(20) * 1e-4, [1.0, 0.0, 0.5, 0.5]])
    np.testing.assert_allclose(bh_adjust(p), multipletests(p, method="fdr_bh")[1], rtol=1e-12)


def test_probe_rows_against_brute_force():
    from scipy.stats import hypergeom

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(400, 8)).astype(np.float32)
    labels = {"race": rng.choice(np.array(["a", "b", "c"], dtype=object), size=400)}
    words = {"w1": rng.normal(size=8), "w2": rng.normal(size=8)}
    rows = probe_rows(emb, words, labels, k=50)
    for r in rows:
        scores = emb @ np.asarray(words[r["word"]], dtype=np.float32)
        top = np.argsort(-scores)[:50]
        count = int(np.sum(labels["race"][top] == r["group"]))
        size = int(np.sum(labels["race"] == r["group"]))
        assert r["count"] == count
        assert r["p_over"] == pytest.approx(hypergeom(400, size, 50).sf(count - 1))


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_shipped_weights_load_and_meet_targets(full_world):
    """The shipped model, loaded through open_clip from config + safetensors, finds the planted bias."""
    import open_clip

    from clipprobe.world.evaluate import check_model_on_world
    from clipprobe.world.train import config_path, meta_path, weights_path

    assert weights_path().stat().st_size < 5 * 2**20
    open_clip.add_model_config(config_path())
    assert WORLD_ARCH in open_clip.list_models()
    model, _, preprocess = open_clip.create_model_and_transforms(WORLD_ARCH, pretrained=str(weights_path()))
    model.eval()
    tokenizer = open_clip.get_tokenizer(WORLD_ARCH)
    check = check_model_on_world(model, preprocess, tokenizer, full_world.root, k=100)
    assert check.recall >= 0.9, check.summary()
    assert check.false_positive_rate <= 0.05, check.summary()
    assert check.null_flagged_rate <= 0.05, check.summary()
    meta = json.loads(meta_path().read_text())
    assert meta["world"]["generator_version"] == gen.GENERATOR_VERSION
    assert meta["config"]["seed"] == 0
    # The weights reproduce the check recorded at training time.
    assert check.recall == pytest.approx(meta["check"]["recall"])
    assert check.false_positive_rate == pytest.approx(meta["check"]["false_positive_rate"], abs=0.01)


def test_training_data_hash_matches_shipped_meta():
    """The shipped weights were trained on exactly the data this generator draws."""
    from clipprobe.world.train import meta_path

    meta = json.loads(meta_path().read_text())
    people = gen.sample_people(meta["config"]["seed"], "train", meta["config"]["n_captions"])
    texts, _ = gen.make_captions(meta["config"]["seed"], people)
    h = hashlib.sha256()
    h.update(gen.render_array(people).tobytes())
    h.update("\n".join(texts).encode("utf-8"))
    assert h.hexdigest() == meta["training_data_sha256"]


@pytest.mark.slow
def test_retraining_from_scratch_meets_targets(tmp_path):
    from clipprobe.world.train import TrainConfig, train_world_model, weights_path

    meta = train_world_model(tmp_path, TrainConfig())
    assert weights_path(tmp_path).is_file()
    assert meta["check"]["recall"] >= 0.9
    assert meta["check"]["false_positive_rate"] <= 0.05
    assert meta["check"]["null_flagged_rate"] <= 0.05
    assert meta["loss_curve"][-1] < meta["loss_curve"][0]


# --------------------------------------------------------------------------- world variants


def test_default_spec_is_the_demo_world():
    from clipprobe.world.generate import DEFAULT_SPEC, WorldSpec

    people = gen.sample_people(3, "train", 300)
    assert gen.make_captions(3, people) == gen.make_captions(3, people, WorldSpec())
    assert DEFAULT_SPEC == WorldSpec()


def test_rate_scale_scales_every_planted_word():
    from clipprobe.world.generate import WorldSpec

    people = gen.sample_people(4, "train", 4000)
    full = gen.caption_counts(gen.make_captions(4, people)[1])
    half = gen.caption_counts(gen.make_captions(4, people, WorldSpec(rate_scale=0.5))[1])
    none = gen.caption_counts(gen.make_captions(4, people, WorldSpec(rate_scale=0.0))[1])
    for word, _c, _p, attr, group, rate in gen.PLANTED:
        n_group = sum(1 for p in people if gen.ATTRIBUTES[attr][getattr(p, attr)] == group)
        assert none["words"][word]["n_word"] == 0
        assert full["words"][word]["n_word"] > half["words"][word]["n_word"]
        assert abs(half["words"][word]["n_word"] - 0.5 * rate * n_group) < 5 * (n_group * 0.25) ** 0.5
    with pytest.raises(UsageError, match="rate_scale must be between 0 and"):
        WorldSpec(rate_scale=3.0).check()


def test_local_plant_only_within_its_background(tmp_path):
    from clipprobe.world.generate import LocalPlant, WorldSpec

    lp = LocalPlant("nomad", "portrayal in media", "noun", "race", "group B", "striped", 0.9)
    spec = WorldSpec(local=(lp,))
    people = gen.sample_people(5, "train", 3000)
    _, records = gen.make_captions(5, people, spec)
    for p, rec in zip(people, records):
        if "nomad" in rec["words"]:
            assert gen.ATTRIBUTES["race"][p.race] == "group B" and gen.BACKGROUNDS[p.background] == "striped"
    eligible = sum(1 for p in people if p.race == 1 and gen.BACKGROUNDS[p.background] == "striped")
    hits = sum("nomad" in r["words"] for r in records)
    assert 0.75 * eligible < hits <= eligible
    with pytest.raises(UsageError, match="local plant 'terrorist': the word is already planted"):
        WorldSpec(local=(LocalPlant("terrorist", "c", "noun", "race", "group B", "striped", 0.5),)).check()
    with pytest.raises(UsageError, match="unknown background 'wavy'"):
        WorldSpec(local=(LocalPlant("nomad", "c", "noun", "race", "group B", "wavy", 0.5),)).check()
    paths = gen.generate_world(tmp_path / "w", seed=5, n_images=600, n_captions=600, spec=spec)
    truth = json.loads(paths.truth.read_text())
    assert truth["local"][0]["word"] == "nomad" and truth["local"][0]["caption_count"] > 0
    assert "nomad" in paths.taxonomy.read_text()


def test_person_free_images(tmp_path):
    from clipprobe.world.generate import WorldSpec

    paths = gen.generate_world(tmp_path / "w", seed=6, n_images=600, n_captions=600, spec=WorldSpec(n_objects=12))
    table = pd.read_csv(paths.objects / "objects.csv")
    assert len(table) == 12 and set(table["object"]) <= set(gen.ACCESSORIES)
    from PIL import Image

    img = np.asarray(Image.open(paths.objects / table["file"][0]).convert("RGB"))
    # no skin: every pixel is a grey (background, pattern or the dark object)
    assert np.all(img.max(axis=2) - img.min(axis=2) == 0)


def test_wider_world_model_is_another_architecture():
    from clipprobe.world.train import WORLD_ARCH, arch_config, arch_name

    assert arch_name(1.0) == WORLD_ARCH and arch_name(1.5) == f"{WORLD_ARCH}-w150"
    base, wide = arch_config(1.0), arch_config(1.5)
    assert wide["vision_cfg"]["width"] == 96 and wide["text_cfg"]["width"] == 48 and wide["embed_dim"] == 72
    assert wide["vision_cfg"]["width"] % wide["vision_cfg"]["head_width"] == 0
    assert base["vision_cfg"]["width"] == 64
