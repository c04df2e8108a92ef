"""What was sampled: the words of the shipped sentence sets, and tests calibrated at the level of words.

The word of every SEAT sentence is checked against WEFE's copy of Caliskan et al.'s word lists (an
independent source); the null rejection rate of the word-level p-value against the binomial law of a
calibrated test, in a simulated population whose words have their own offsets (clipprobe.world.eatsim).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest

from clipprobe.resources.eat import Resolver, get_suite, sentence_words

STIMULI = Path(__file__).resolve().parents[1] / "stimuli"
# SEAT set -> WEFE list with the same words (Caliskan et al. 2017; WEAT.json of dccuchile/wefe)
SAME_WORDS = {
    ("sent-weat1", "targ1"): "flowers", ("sent-weat1", "targ2"): "insects",
    ("sent-weat2", "targ1"): "instruments", ("sent-weat2", "targ2"): "weapons",
    ("sent-weat3", "targ1"): "european_american_names_5", ("sent-weat3", "targ2"): "african_american_names_5",
    ("sent-weat10", "targ2"): "old_people_names",
    ("sent-weat11", "targ1"): "male_names", ("sent-weat11", "targ2"): "female_names",
    ("sent-weat11b", "targ1"): "male_terms", ("sent-weat11b", "targ2"): "female_terms",
}
SEAT_ONLY = {  # SEAT's own attribute lists (not changed to NRC)
    ("sent-weat1", "attr1"): "pleasant_5", ("sent-weat1", "attr2"): "unpleasant_5a",
    ("sent-weat3", "attr2"): "unpleasant_5b", ("sent-weat10", "attr1"): "pleasant_9",
    ("sent-weat10", "attr2"): "unpleasant_9",
}


def _seat(folder: str, test: str) -> dict:
    return json.loads((STIMULI / folder / f"{test}.jsonl").read_text(encoding="utf-8"))


@pytest.mark.parametrize("folder", ["seat", "seat-nrc"])
def test_seat_sentences_map_to_caliskans_words(folder):
    wefe = json.loads((STIMULI / "wefe" / "WEAT.json").read_text(encoding="utf-8"))
    pairs = {**SAME_WORDS, **(SEAT_ONLY if folder == "seat" else {})}
    for (test, key), listed in pairs.items():
        sentences = _seat(folder, test)[key]["examples"]
        words = sentence_words(sentences)
        assert words is not None, (test, key)
        assert set(words) == {w.lower() for w in wefe[listed]}, (test, key)
        # every word's sentences are next to each other in the file: the grouping is no accident of spelling
        runs = [w for i, w in enumerate(words) if i == 0 or words[i - 1] != w]
        assert len(runs) == len(set(words)), (test, key)


def test_nrc_combinations_are_25_words_in_6_templates():
    data = json.loads((STIMULI / "seat-nrc" / "nrc_vad_combinations.json").read_text(encoding="utf-8"))
    for key in ("pleasant_combinations", "unpleasant_combinations"):
        counts = collections.Counter(sentence_words(data[key]))
        assert len(counts) == 25 and set(counts.values()) == {6}
    assert sentence_words(["This is Adam.", "Adam is a person.", "The men are here.", "This is a man."]) == [
        "adam", "adam", "man", "man"]
    assert sentence_words(["This is hers.", "This is her."]) == ["hers", "her"]  # a singular form stays itself
    assert sentence_words(["This is a rose.", "Roses smell sweet."]) is None  # not every sentence has a SEAT form


def test_resolved_sets_record_their_words(tmp_path):
    resolver = Resolver(offline=True)
    suite = get_suite("ghate2025").select(["race-names-weat3"], ["text"])
    test = resolver.resolve(suite.tests)[0]
    X, A = test.sets["X"], test.sets["A"]
    assert (len(X), X.n_stimuli, len(A), A.n_stimuli) == (256, 32, 150, 25)
    assert X.units[:8] == ("adam",) * 8 and X.items[8] == "This is Harry."
    path = tmp_path / "t.yaml"
    path.write_text("""tests:
  - name: t
    X: {words: [rose, tulip], templates: ["This is a {word}.", "A {word} is here."]}
    Y: {words: [ant, wasp]}
    A: {texts: [love, joy]}
    B: {file: list.json, key: bad, templates: ["This is {word}.", "That is {word}.", "It is {word}."]}
""", encoding="utf-8")
    (tmp_path / "list.json").write_text('{"bad": ["war", "hate"]}', encoding="utf-8")
    from clipprobe.resources.eat import load_tests

    sets = resolver.resolve(load_tests(path).tests)[0].sets
    assert sets["X"].units == ("rose", "rose", "tulip", "tulip") and sets["X"].n_stimuli == 2
    assert sets["Y"].units is None and sets["A"].units is None and sets["Y"].n_stimuli == 2
    assert sets["B"].units == ("war",) * 3 + ("hate",) * 3 and sets["B"].items[4] == "That is hate."


# ------------------------------------------------------------------ calibration where words vary


def _band(rate: float, level: float, reps: int) -> bool:
    from scipy.stats import binomtest

    return binomtest(round(rate * reps), reps, level).pvalue > 0.001


def test_word_level_p_value_is_calibrated_where_sentences_are_not():
    from clipprobe.world import eatsim

    r = eatsim.null_rejection(n_words=8, n_templates=8, variance_ratio=1.0, reps=300, n_permutations=1000, seed=3)
    assert r["sentences_per_word"] == 8
    assert _band(r["stimuli"][0.05], 0.05, 300)
    assert r["sentences"][0.05] > 0.15  # sentences permuted as if independent: a true null rejected far too often


@pytest.mark.slow
@pytest.mark.parametrize("n_words,templates,ratio", [(5, 8, 1.0), (10, 14, 4.0), (25, (3, 14), 1.0), (25, 8, 0.25),
                                                     (10, 1, 1.0)])
def test_word_level_null_rejection_grid(n_words, templates, ratio):
    from clipprobe.world import eatsim

    span = templates if isinstance(templates, tuple) else None
    r = eatsim.null_rejection(n_words=n_words, n_templates=span[1] if span else templates, templates=span,
                              variance_ratio=ratio, reps=1000, n_permutations=2000, seed=11)
    assert _band(r["stimuli"][0.05], 0.05, 1000) and _band(r["stimuli"][0.01], 0.01, 1000), r
    if templates == 1:
        assert r["sentences"] == r["stimuli"]  # one sentence per word: the same test
    elif ratio >= 1:
        assert r["sentences"][0.05] > 0.1


@pytest.mark.slow
def test_interval_coverage_one_cell():
    """Words vary, attributes sampled, 25 words per set: the published interval covers the population's d."""
    from scipy.stats import binomtest

    from clipprobe.world import eatsim

    c = eatsim.interval_coverage(n_words=25, word_sd=1.0, attributes="sampled", unequal=False, effect=0.8, reps=400,
                                 n_resamples=1000, seed=5, truth_words=20_000)
    hits = round(c["coverage_all"] * c["finite_all"])
    assert c["finite_all"] == 400
    assert binomtest(hits, 400, 0.95).pvalue > 0.001, c
    assert np.isfinite(c["truth"]) and c["width_all"] > 0
