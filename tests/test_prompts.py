import numpy as np
import pytest
from hypothesis import given, strategies as st

from clipprobe.errors import ClipprobeError, DataError
from clipprobe.resources.prompts import article, ensemble, fill, get_template_set, list_template_sets, neutral_set_for


@pytest.mark.parametrize("word, expected", [
    ("terrorist", "a"), ("addict", "an"), ("immigrant", "an"), ("honest person", "an"),
    ("hour", "an"), ("university professor", "a"), ("European", "a"), ("unemployed", "an"),
    ("uninsured", "an"), ("unintelligent", "an"), ("uniform", "a"), ("unique", "a"), ("CEO", "a"), ("FBI agent", "an"), ("MP", "an"), ("one", "a"), ("elderly", "an"), ("user", "a"),
])
def test_article(word, expected):
    assert article(word) == expected


def test_default_templates_by_pos():
    t = get_template_set()
    assert t.prompts("terrorist", "noun") == ["a photo of a terrorist"]
    assert t.prompts("aggressive", "adjective") == ["a photo of an aggressive person"]
    assert t.prompts("lazy", "adjective") == ["a photo of a lazy person"]
    assert t.prompts("mentally ill", "adjective") == ["a photo of a mentally ill person"]


def test_ensemble_and_neutral_sets():
    e = get_template_set("ensemble")
    assert len(e.noun) >= 5 and len(e.adjective) >= 5
    assert e.prompts("addict")[0] == "a photo of an addict"
    assert neutral_set_for(get_template_set()).baseline == ("a photo of a person",)
    assert len(neutral_set_for(e).baseline) == len(e.noun)
    assert {"default", "ensemble", "neutral"} <= set(list_template_sets())


def test_user_templates(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("# comment\n{a} {word} in a photo\nportrait of {word}\n")
    t = get_template_set(str(p))
    assert t.prompts("engineer") == ["an engineer in a photo", "portrait of engineer"]
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a person\n")
    with pytest.raises(DataError, match=r"has no '\{word\}' placeholder") as info:
        get_template_set(str(bad))
    assert str(bad) in str(info.value)
    y = tmp_path / "bad.yaml"
    y.write_text("templates:\n  noun: ['a photo of {wrd}']\n")
    with pytest.raises(DataError, match="unknown placeholder"):
        get_template_set(str(y))
    with pytest.raises(ClipprobeError, match="did you mean 'ensemble'"):
        get_template_set("ensembel")


@given(st.lists(st.lists(st.floats(-5, 5), min_size=4, max_size=4).filter(lambda v: np.linalg.norm(v) > 1e-3),
                min_size=1, max_size=6))
def test_ensemble_is_normalised_mean_of_normalised(rows):
    v = np.array(rows, dtype=np.float64)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    if np.linalg.norm(mean) < 1e-3:
        return
    got = ensemble(v)
    np.testing.assert_allclose(got, mean / np.linalg.norm(mean), rtol=1e-4, atol=1e-5)
    assert abs(np.linalg.norm(got) - 1) < 1e-5


def test_fill_without_article():
    assert fill("{word}", "nurse") == "nurse"


def test_template_file_alias_bomb_and_duplicate_keys(tmp_path):
    from test_io import BOMB

    from clipprobe.errors import DataError
    from clipprobe.resources.prompts import load_template_set

    p = tmp_path / "t.yaml"
    p.write_text(BOMB.replace("categories:", "templates:"))
    with pytest.raises(DataError, match=r"^template file .*t.yaml could not be read: its aliases"):
        load_template_set(p)
    p.write_text("templates:\n  noun: ['a photo of {a} {word}']\n  noun: ['x {word}']\n")
    with pytest.raises(DataError, match=r"key 'noun' appears twice"):
        load_template_set(p)
    p.write_text("templates: ['" + "y" * 5000 + " {wrd}']\n")
    with pytest.raises(DataError) as info:
        load_template_set(p)
    assert "unknown placeholder" in str(info.value) and len(str(info.value)) < len(str(p)) + 250
