"""Lexicons: the shipped FairFace lexicon, loading a user's file, validation messages."""

from __future__ import annotations

import pytest

from clipprobe.resources import lexicon as lx
from clipprobe.errors import ClipprobeError, DataError

FAIRFACE_RACE = ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"]
FAIRFACE_AGE = ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"]


def test_default_lexicon_has_every_fairface_group():
    lex = lx.get_lexicon()
    assert "fairface" in lx.list_lexicons()
    assert list(lex.attributes) == ["race", "gender", "age"]
    assert list(lex.attributes["race"]) == FAIRFACE_RACE
    assert list(lex.attributes["gender"]) == ["Male", "Female"]
    assert list(lex.attributes["age"]) == FAIRFACE_AGE
    male, female = lex.attributes["gender"]["Male"], lex.attributes["gender"]["Female"]
    # inflected forms are written out, not stemmed
    assert {"man", "men", "boy", "boys"} <= set(male) and {"woman", "women", "girl", "girls"} <= set(female)
    assert {"arab", "arabs", "middle eastern"} <= set(lex.attributes["race"]["Middle Eastern"])
    # bare colour words are not race terms (documented choice)
    assert "white" not in lex.attributes["race"]["White"] and "black" not in lex.attributes["race"]["Black"]
    assert "7-year-old" in lex.attributes["age"]["3-9"] and "70-year-old" in lex.attributes["age"]["more than 70"]


def test_lexicon_file_header_says_it_is_a_starting_point():
    text = (lx.lexicon_dir() / "fairface.yaml").read_text()
    assert "THE LEXICON DRIVES THE RESULT" in text and "not ground truth" in text
    assert "not ground truth" in lx.__doc__


def test_user_lexicon_minimal_form(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("attributes:\n  race:\n    Middle Eastern: [middle eastern, arab, arabs]\n"
                    "    East Asian: [east asian, chinese, japanese, korean]\n"
                    "  gender:\n    Male: [man, men, male, boy]\n    Female: [Woman, women, female, girl]\n")
    lex = lx.get_lexicon(str(path))
    assert lex.name == "mine"
    assert lex.groups() == [("race", "Middle Eastern"), ("race", "East Asian"), ("gender", "Male"),
                            ("gender", "Female")]
    assert lex.attributes["gender"]["Female"][0] == "woman"   # normalised
    assert lex.terms()[:3] == ["middle eastern", "arab", "arabs"]


@pytest.mark.parametrize("body, template, fields", [
    ("name: x\n", lx.ERR_NO_ATTRIBUTES, {}),
    ("attributes: {race: {A: [x]}}\ncolour: 1\n", lx.ERR_UNKNOWN_KEY, {"key": "colour", "hint": ""}),
    ("attributes: {race: [x, y]}\n", lx.ERR_BAD_ATTRIBUTE, {"attribute": "race"}),
    ("attributes: {race: {A: []}}\n", lx.ERR_BAD_GROUP, {"attribute": "race", "group": "A"}),
    ("attributes: {race: {A: [x, X]}}\n", lx.ERR_DUPLICATE, {"attribute": "race", "group": "A", "term": "X"}),
    ("attributes: {race: {A: [3]}}\n", lx.ERR_BAD_TERM,
     {"attribute": "race", "group": "A", "term": 3, "why": "not a string"}),
    ("attributes: {race: {A: ['  ']}}\n", lx.ERR_BAD_TERM,
     {"attribute": "race", "group": "A", "term": "  ", "why": "empty term"}),
])
def test_validation_messages_name_file_and_problem(tmp_path, body, template, fields):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(DataError) as err:
        lx.load_lexicon(path)
    assert str(err.value) == template.format(path=path, **fields)


def test_unparseable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("attributes: [unclosed\n")
    with pytest.raises(DataError, match=r"^lexicon file .*bad.yaml could not be read: "):
        lx.load_lexicon(bad)
    with pytest.raises(DataError, match="does not exist"):
        lx.get_lexicon(str(tmp_path / "nope.yaml"))
    with pytest.raises(ClipprobeError) as err:
        lx.get_lexicon("fairfce")
    assert str(err.value).startswith("unknown lexicon 'fairfce' (did you mean 'fairface'?)")
