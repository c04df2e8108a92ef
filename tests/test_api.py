"""The one-vocabulary API (clipprobe/api.py): each function equals the function it wraps, its options are
keyword-only, and an already-built open_clip model gives what its spec gives."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest

import clipprobe as cp
from clipprobe import api
from clipprobe.errors import DataError, ModelError, UsageError

GROUPS = ("Female", "Male")


def _labels(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"gender": rng.choice(GROUPS, n), "kind": rng.choice(["kind X", "kind Y", "kind Z"], n)})


def _scores(n_words: int, n_images: int, labels: pd.DataFrame, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(n_words, n_images))
    s[0] += 1.5 * (labels["gender"] == "Female").to_numpy()      # one planted association
    return s.astype(np.float32)


WORDS = ["nurse", "pilot", "clerk", "baker"]


# ------------------------------------------------------------------------------------------ the vocabulary


@pytest.mark.parametrize("name, data", [("probe", 2), ("association_tests", 1), ("data_bias", 2), ("balance", 2),
                                        ("subsets", 2)])
def test_options_are_keyword_only_and_share_their_names(name, data):
    fn = getattr(cp, name)
    params = list(inspect.signature(fn).parameters.values())
    assert [p.kind for p in params[:data]] == [inspect.Parameter.POSITIONAL_OR_KEYWORD] * data
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[data:])
    shared = {"seed", "alpha", "bootstrap", "permutations", "level"} & {p.name for p in params}
    assert "level" in shared
    # the names of the underlying functions that meant the same (q, n_permutations, confidence) are gone
    assert not {"q", "n_permutations", "n_bootstrap", "confidence", "n_boot"} & {p.name for p in params}


def test_a_positional_option_is_refused():
    labels = _labels(40)
    with pytest.raises(TypeError):
        cp.probe(_scores(4, 40, labels), labels, WORDS, 5)
    with pytest.raises(TypeError):
        cp.data_bias(np.eye(2)[[0, 1]], np.eye(2)[[0, 1]], "uniform")


def test_every_result_is_a_frozen_dataclass_of_frames():
    import dataclasses

    for cls in (cp.ReportTables, cp.AssociationTables, cp.DataBiasTables, cp.BalanceTables, cp.SubsetTables):
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
        frames = [f.name for f in dataclasses.fields(cls) if "DataFrame" in str(f.type)]
        assert frames, cls


# ------------------------------------------------------------------------------------------ probe


def test_probe_equals_probe_scores():
    from clipprobe.analysis.probe import probe_scores

    labels = _labels(80)
    scores = _scores(len(WORDS), 80, labels)
    got = cp.probe(scores, labels, words=WORDS, k=10, bootstrap=20, permutations=50, seed=3, alpha=0.1)
    want = probe_scores(scores, labels, words=WORDS, k=10, bootstrap=20, permutations=50, seed=3, alpha=0.1)
    for table in ("groups", "words", "summary"):
        pd.testing.assert_frame_equal(getattr(got, table), getattr(want, table))
    assert got.groups["flagged"].any()      # the planted word is found: the comparison is not of empty tables


# ------------------------------------------------------------------------------------------ association tests


def _eat_sets(seed: int, n: int = 7, dim: int = 12, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    a_dir = rng.normal(size=dim)
    sets = {name: rng.normal(size=(n, dim)) for name in ("X", "Y", "A", "B")}
    sets["X"] = sets["X"] + shift * a_dir
    sets["A"] = sets["A"] + shift * a_dir
    return sets


def test_association_tests_equal_run_eats():
    from clipprobe.analysis.eat import EatInput, EatSettings, run_eats

    tests = {"planted": _eat_sets(0, shift=2.0), "null": _eat_sets(1)}
    tests["null"]["units"] = {"X": [0, 0, 1, 1, 2, 2, 3]}      # sentences of 4 stimuli
    got = cp.association_tests(tests, seed=4, permutations=3000, bootstrap=200, level=0.9, alpha=0.05,
                               sc_permutations=500)
    want = run_eats([EatInput(name=n, **t) for n, t in tests.items()],
                    EatSettings(seed=4, n_permutations=3000, n_bootstrap=200, confidence=0.9, sc_permutations=500))
    assert list(got.tests.columns) == list(api.TEST_COLUMNS)
    assert list(got.tests["test"]) == ["planted", "null"]
    for row, r in zip(got.tests.itertuples(), want):
        assert (row.effect_size, row.p_value, row.q_value, row.statistic) == (
            r.effect_size, r.p_value, r.q_value, r.statistic)
        assert (row.n_x, row.n_x_rows, row.p_value_rows) == (r.n_x, r.n_x_texts, r.p_value_sentences)
        np.testing.assert_array_equal([row.ci_low, row.ci_high], [r.ci_low, r.ci_high])
        assert row.flagged == (r.q_value < 0.05) and row.ci_level == 0.9
    assert got.tests["flagged"].tolist() == [True, False]
    sc = got.sc_weat
    assert list(sc.columns) == list(api.SC_WEAT_COLUMNS)
    planted = sc[(sc["test"] == "planted") & (sc["side"] == "targets")]
    np.testing.assert_array_equal(planted["p_value"], want[0].sc_targets.p_value)
    np.testing.assert_array_equal(planted["q_value"], want[0].sc_targets.q_value)
    assert planted["set"].tolist() == ["X"] * 7 + ["Y"] * 7 and planted["row"].tolist() == list(range(7)) * 2
    attrs = sc[(sc["test"] == "null") & (sc["side"] == "attributes")]
    np.testing.assert_array_equal(attrs["effect_size"], want[1].sc_attributes.effect_size)


def test_association_tests_without_bootstrap_have_no_interval():
    got = cp.association_tests({"t": _eat_sets(2)}, bootstrap=0, permutations=500, sc_weat=False)
    assert got.tests[["ci_low", "ci_high"]].isna().all().all() and got.tests["ci_method"].isna().all()
    assert got.sc_weat.empty and list(got.sc_weat.columns) == list(api.SC_WEAT_COLUMNS)


@pytest.mark.parametrize("kwargs, error, text", [
    ({"tests": {"t": {"X": 1, "Y": 1, "A": 1}}}, UsageError, "missing: B"),
    ({"tests": {"t": {"X": 1, "Y": 1, "A": 1, "B": 1, "C": 1}}}, UsageError, "unknown key(s) C"),
    ({"tests": 3}, UsageError, "expected a suite name"),
    ({"tests": "weat"}, UsageError, "give model= as well"),
    ({"tests": {"t": _eat_sets(0)}, "model": "demo"}, UsageError, "nothing to embed"),
    ({"tests": {"t": _eat_sets(0)}, "oasis_root": "/data/oasis"}, UsageError, "no images to find"),
    ({"tests": {"t": _eat_sets(0)}, "alpha": 1.5}, UsageError, "alpha must be between 0 and 1"),
    ({"tests": {"t": _eat_sets(0)}, "bootstrap": -1}, UsageError, "bootstrap must be 0"),
])
def test_association_tests_refuse_bad_input(kwargs, error, text):
    tests = kwargs.pop("tests")
    with pytest.raises(error) as info:
        cp.association_tests(tests, **kwargs)
    assert text in str(info.value)


# ------------------------------------------------------------------------------------------ data bias, balance


def _captions(n: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = rng.choice(3, n, p=[0.6, 0.3, 0.1])
    s = np.zeros((n, 2), np.int8)
    s[g == 0, 0] = 1
    s[g == 1, 1] = 1
    s[:20, :] = 1                                                   # some mention both, g == 2 neither
    y = (rng.random((n, 3)) < np.where(s[:, :1] == 1, [0.5, 0.2, 0.3], [0.2, 0.2, 0.3])).astype(np.int8)
    return s, y


def test_data_bias_equals_data_bias_arrays_and_calls_its_weights_weights():
    from clipprobe.analysis.balance import data_bias_arrays

    s, y = _captions()
    w = np.random.default_rng(5).random(len(s))
    for weights, data in ((None, "all"), (w, "weighted")):
        got = cp.data_bias(s, y, weights=weights, groups=GROUPS, labels=["a", "b", "c"], level=0.9)
        want = data_bias_arrays(s, y, weights=weights, groups=GROUPS, labels=["a", "b", "c"], level=0.9)
        assert set(got.groups["data"]) == set(got.cells["data"]) == {data}
        pd.testing.assert_frame_equal(got.groups.drop(columns="data"), want.group_frame())
        pd.testing.assert_frame_equal(got.cells.drop(columns="data"), want.cell_frame())
        row = got.summary.iloc[0]
        assert list(got.summary.columns) == list(api.BIAS_SUMMARY_COLUMNS)
        assert (row["rb_max"], row["rb_argmax"], row["ab_max"]) == (want.rb_max, want.rb_argmax, want.ab_max)
        assert (row["ab_argmax_group"], row["ab_argmax_label"]) == want.ab_argmax
    assert got.groups["share"].iloc[0] > 0.6                       # over-represented: a non-trivial comparison


def test_balance_equals_m4_solve_and_its_flags():
    from clipprobe.analysis import balance as bal
    from clipprobe.analysis.keepflags import assign_keep, content_hashes, flag_counts
    from clipprobe.analysis.patterns import encode_patterns

    s, y = _captions()
    got = cp.balance(s, y, keep=0.5, eps_r=0.05, eps_a=0.05, groups=GROUPS, seed=7)
    table, ids = encode_patterns(s, y, groups=GROUPS)
    solution = bal.m4_solve(table, keep=0.5, eps_r=0.05, eps_a=0.05)
    q, keep = assign_keep(solution, table, ids, content_hashes([str(i) for i in range(len(s))]), seed=7)
    assert list(got.examples.columns) == list(api.EXAMPLE_COLUMNS)
    np.testing.assert_array_equal(got.examples["q"], q)
    np.testing.assert_array_equal(got.examples["keep"], keep)
    np.testing.assert_array_equal(np.bincount(ids, weights=keep, minlength=table.n_rows), flag_counts(solution))
    assert got.keep_rate == solution.keep_rate and got.converged
    after = got.groups[got.groups["data"] == "after"].drop(columns="data").reset_index(drop=True)
    pd.testing.assert_frame_equal(after, bal.data_bias(table, q=solution.q).group_frame())
    assert (after["rb"].abs() <= 0.05 + 1e-6).all()                 # balanced
    before = got.summary.set_index("data").loc["before", "rb_max"]
    assert before > 0.1 and list(got.summary["data"]) == ["before", "after", "kept"]
    assert {"residual", "residual_kept", "bound"} <= set(got.constraints.columns)
    other = cp.balance(s, y, keep=0.5, eps_r=0.05, eps_a=0.05, groups=GROUPS, seed=8)
    assert not np.array_equal(other.examples["keep"], got.examples["keep"])     # the seed picks the flags
    with pytest.raises(DataError, match=r"content: 2 value\(s\) for 400 example\(s\)"):
        cp.balance(s, y, keep=0.5, eps_r=0.05, eps_a=0.05, content=["a", "b"])


# ------------------------------------------------------------------------------------------ subsets


def test_subsets_equal_subset_scores_for_every_form_of_by():
    from clipprobe.analysis import subsets as sub

    labels = _labels(120)
    scores = _scores(len(WORDS), 120, labels)
    kwargs = dict(words=WORDS, k=8, permutations=40, seed=2, alpha=0.1)
    want = sub.subset_scores(scores, labels, sub.from_values(labels["kind"], min_size=16), **kwargs, progress=False)
    for by in ("column:kind", list(labels["kind"]), sub.from_values(labels["kind"], min_size=16)):
        got = cp.subsets(scores, labels, by=by, **kwargs)
        for table in ("groups", "words", "info", "composition", "dispersion"):
            pd.testing.assert_frame_equal(getattr(got, table), getattr(want, table))
    assert set(want.info["subset"]) == {"kind X", "kind Y", "kind Z"}


def test_subsets_by_kmeans_uses_the_vectors_and_the_seed():
    from clipprobe.analysis import subsets as sub
    from clipprobe.embeddings.cluster import kmeans

    labels = _labels(120)
    scores = _scores(len(WORDS), 120, labels)
    vectors = np.random.default_rng(9).normal(size=(120, 8)).astype(np.float32)
    got = cp.subsets(scores, labels, by="kmeans:3", vectors=vectors, words=WORDS, k=8, permutations=20, seed=1,
                     min_size=10)
    km = kmeans(vectors, 3, seed=1)
    want = sub.subset_scores(scores, labels, sub.from_clusters(km.labels, km.centroids, min_size=10), words=WORDS,
                             k=8, permutations=20, seed=1)
    pd.testing.assert_frame_equal(got.groups, want.groups)
    with pytest.raises(UsageError, match="needs vectors="):
        cp.subsets(scores, labels, by="kmeans:3", words=WORDS, k=8)
    with pytest.raises(DataError, match="3 subset name"):
        cp.subsets(scores, labels, by=["a", "b", "c"], words=WORDS, k=8)


# ------------------------------------------------------------------------------------------ models


def test_as_encoder_refuses_what_is_not_a_model():
    from clipprobe.models import as_encoder

    with pytest.raises(ModelError, match="got a tuple of 2"):
        as_encoder((1, 2))
    with pytest.raises(ModelError, match="no encode_image"):
        as_encoder((object(), lambda x: x, lambda x: x))


def _built_demo():
    """The demo model built by open_clip itself, as a user would: (model, preprocess, tokenizer)."""
    import open_clip

    from clipprobe.models import register_model_config
    from clipprobe.models.spec import shipped_model

    shipped = shipped_model("demo")
    arch = register_model_config(shipped.config_path)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(shipped.weights_path),
                                                                 device="cpu")
    return model, preprocess, open_clip.get_tokenizer(arch)


def _png(path, seed: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_a_built_model_embeds_as_its_spec(tmp_path):
    built = _built_demo()
    encoder = cp.as_encoder(built)
    assert encoder.info()["kind"] == "built" and encoder.precision == "fp32" and encoder.device == "cpu"
    assert encoder.embed_dim == 48 and not encoder.model.training
    spec_encoder = cp.load_model("demo", device="cpu", offline=True)
    words = ["a photo of a nurse", "a photo of a pilot"]
    got = cp.embed_texts(built, words, cache_dir=tmp_path / "c1").vectors
    np.testing.assert_allclose(got, cp.embed_texts(spec_encoder, words, cache_dir=tmp_path / "c2").vectors, atol=1e-6)
    assert abs(float(got[0] @ got[1])) < 0.9999                       # two different vectors were compared
    image = __import__("PIL.Image").Image.new("RGB", (40, 30), (200, 40, 90))
    batch = np.stack([np.asarray(built[1](image)), np.asarray(spec_encoder.preprocess(image))])
    np.testing.assert_allclose(encoder.encode_images(batch[:1]), spec_encoder.encode_images(batch[1:]), atol=1e-6)
    # the two never share a cache folder; another transform gets another one
    from clipprobe.embeddings.cache import model_cache_key

    other = cp.as_encoder((built[0], lambda image: image, built[2]))
    assert len({model_cache_key(encoder), model_cache_key(spec_encoder), model_cache_key(other)}) == 3


@pytest.mark.slow
def test_association_tests_with_a_built_model_equal_the_spec(tmp_path):
    built = _built_demo()
    for cat, offset in (("flower", 0), ("insect", 50)):
        for i in range(3):
            _png(tmp_path / "stimuli" / cat / f"{cat}{i}.png", seed=offset + i)
    tests = tmp_path / "tests.yaml"
    tests.write_text("""tests:
  - name: images
    X: {images: stimuli/flower}
    Y: {images: stimuli/insect}
    A: {texts: [This is the word love., This is the word happy.]}
    B: {words: [hate, ugly], templates: ["This is the word {word}."]}
  - name: words
    X: {words: [rose, tulip, daisy]}
    Y: {words: [ant, wasp, flea]}
    A: {texts: [love, joy]}
    B: {texts: [hate, war]}
""", encoding="utf-8")
    options = dict(permutations=500, bootstrap=0, sc_permutations=200, seed=1, device="cpu", offline=True)
    by_spec = cp.association_tests(tests, model="demo", cache_dir=tmp_path / "c1", **options)
    by_built = cp.association_tests(tests, model=built, cache_dir=tmp_path / "c2", **options)
    assert by_spec.tests["test"].tolist() == by_built.tests["test"].tolist() == ["images (image-text)",
                                                                                "words (text)"]
    cols = ["effect_size", "p_value", "statistic", "n_x", "n_a_rows"]
    np.testing.assert_allclose(by_built.tests[cols].to_numpy(float), by_spec.tests[cols].to_numpy(float),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_built.sc_weat["effect_size"], by_spec.sc_weat["effect_size"], rtol=1e-5, atol=1e-6)
    assert by_spec.tests["effect_size"].abs().min() > 1e-3           # non-trivial values were compared


def test_association_tests_return_the_tests_of_a_file_that_were_not_computed(tmp_path):
    """A suite's unavailable test and a test whose OASIS images were not given are returned in `skipped` with
    their reasons (they were only logged), named as the computed tests are; arrays given directly skip none."""
    tests = tmp_path / "tests.yaml"
    tests.write_text("""tests:
  - name: words
    X: {words: [rose, tulip, daisy]}
    Y: {words: [ant, wasp, flea]}
    A: {texts: [love, joy]}
    B: {texts: [hate, war]}
  - name: weapons
    X: {unavailable: the words were never published, modality: text}
    Y: {words: [ant, wasp, flea]}
    A: {texts: [love, joy]}
    B: {texts: [hate, war]}
  - name: valence
    X: {words: [rose, tulip, daisy]}
    Y: {words: [ant, wasp, flea]}
    A: {oasis: pleasant}
    B: {oasis: unpleasant}
""", encoding="utf-8")
    got = cp.association_tests(tests, model="demo", cache_dir=tmp_path / "c", permutations=200, bootstrap=0,
                               sc_weat=False, device="cpu", offline=True)
    assert got.tests["test"].tolist() == ["words (text)"]
    assert list(got.skipped.columns) == list(api.SKIPPED_COLUMNS)
    rows = {r.test.split(" (")[0]: r for r in got.skipped.itertuples(index=False)}
    assert sorted(rows) == ["valence", "weapons"] and got.skipped["test"].str.endswith(")").all()
    assert rows["weapons"].status == "unavailable" and "the words were never published" in rows["weapons"].reason
    assert rows["valence"].status == "skipped" and "OASIS" in rows["valence"].reason
    assert set(got.skipped["test"]).isdisjoint(got.tests["test"])
    direct = cp.association_tests({"t": _eat_sets(2)}, bootstrap=0, permutations=200, sc_weat=False)
    assert direct.skipped.empty and list(direct.skipped.columns) == list(api.SKIPPED_COLUMNS)
