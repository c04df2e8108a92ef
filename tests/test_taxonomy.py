import json

import pytest
from click.testing import CliRunner
from hypothesis import given, strategies as st

from clipprobe.cli import cli
from clipprobe.errors import ClipprobeError, DataError
from clipprobe.resources.taxonomy import (
    ERR_DUPLICATE, ERR_EMPTY_CATEGORY, ERR_NOT_STRING, get_taxonomy, guess_pos, list_taxonomies, load_taxonomy,
)

REFERENCE = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared/reference/sobit"


def test_shipped_sobit_matches_public_lists():
    tax = get_taxonomy()
    assert tax.name == "sobit"
    assert list(tax.categories) == [
        "appearance", "behavioral", "education and wealth", "criminal justice", "healthcare",
        "portrayal in media", "political", "religion", "occupation", "stereotyping"]
    counts = {c: len(w) for c, w in tax.categories.items()}
    # Per-category entry counts of the union of the three public lists (PROVENANCE.md).
    assert sum(counts.values()) == 441
    assert len(tax.words()) == 434
    assert tax.categories_of("terrorist") == ("criminal justice", "political")
    assert all(p in ("noun", "adjective") for p in tax.pos.values())
    assert tax.pos["terrorist"] == "noun" and tax.pos["lazy"] == "adjective"
    assert tax.lists["terrorist"] == ("ameliagmz", "fairclip", "broken_mirror")
    assert "374" in tax.note and "not public" in tax.note


@pytest.mark.skipif(not REFERENCE.exists(), reason="shared reference data not beside the checkout")
def test_shipped_sobit_equals_reference_union():
    union = json.loads((REFERENCE / "derivative_lists_union.json").read_text())
    tax = get_taxonomy("sobit")
    for category, entries in union.items():
        name = "behavioral" if category == "behavorial" else category
        assert tax.categories[name] == tuple(e["word"] for e in entries)


def test_core_keeps_words_in_all_three_lists():
    core = get_taxonomy("sobit-core")
    assert "stereotyping" not in core.categories
    assert sum(len(w) for w in core.categories.values()) == 397
    full = get_taxonomy()
    assert all(full.lists[w] == ("ameliagmz", "fairclip", "broken_mirror") for w in core.words())


def test_behavioral_alias_and_case():
    tax = get_taxonomy()
    assert tax.resolve_category("behavorial") == "behavioral"
    assert tax.resolve_category("Criminal Justice") == "criminal justice"
    with pytest.raises(ClipprobeError, match="did you mean 'criminal justice'"):
        tax.resolve_category("criminal justic")


def test_minimal_yaml_form(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("name: my-words\ncategories:\n  criminal justice: [terrorist, thief, mentally ill]\n"
                 "  occupation: [nurse, CEO, overly cautious]\n")
    tax = get_taxonomy(str(p))
    assert tax.name == "my-words"
    assert tax.words() == ["terrorist", "thief", "mentally ill", "nurse", "CEO", "overly cautious"]
    assert tax.pos["terrorist"] == "noun"           # from the So-B-IT tags
    assert tax.pos["mentally ill"] == "adjective"   # So-B-IT tag
    assert tax.pos["overly cautious"] == "adjective"   # guessed from "-ous"
    assert tax.pos_source["overly cautious"] == "guessed"
    assert tax.pos_source["nurse"] == "sobit"


@pytest.mark.parametrize("body, template", [
    ("categories:\n  a: []\n", ERR_EMPTY_CATEGORY),
    ("categories:\n  a: [x, y, x]\n", ERR_DUPLICATE),
    ("categories:\n  a: [x, 3]\n", ERR_NOT_STRING),
    ("categories:\n  a: [x, [y]]\n", ERR_NOT_STRING),
])
def test_validation_errors_name_file_and_problem(tmp_path, body, template):
    p = tmp_path / "bad.yaml"
    p.write_text(body)
    with pytest.raises(DataError) as info:
        load_taxonomy(p)
    msg = str(info.value)
    assert str(p) in msg
    assert msg.startswith(template.split("{path}")[0] + str(p))


def test_unknown_key_and_missing_file(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text("name: x\ncategory:\n  a: [b]\n")
    with pytest.raises(DataError, match="unknown key 'category'.*did you mean 'categories'"):
        load_taxonomy(p)
    with pytest.raises(DataError, match="does not exist"):
        get_taxonomy(str(tmp_path / "nope.yaml"))
    with pytest.raises(ClipprobeError, match="unknown taxonomy 'sobti'.*did you mean 'sobit'"):
        get_taxonomy("sobti")


def test_list_taxonomies():
    assert {"sobit", "sobit-core"} <= set(list_taxonomies())


@given(st.sampled_from(["lazy", "dangerous", "aggressive", "hopeless", "foolish", "mentally ill"]))
def test_guess_pos_adjectives(word):
    assert guess_pos(word) == "adjective"


def test_cli_list_json_and_show():
    r = CliRunner().invoke(cli, ["taxonomy", "list", "--format", "json"])
    assert r.exit_code == 0, r.output
    data = json.loads(r.output)
    assert data["unique_words"] == 434 and data["categories"]["occupation"] == 167
    r = CliRunner().invoke(cli, ["taxonomy", "show", "criminal justice"])
    assert r.exit_code == 0 and "terrorist" in r.output
    r = CliRunner().invoke(cli, ["taxonomy", "show", "nope"])
    assert r.exit_code == 1 and "unknown category 'nope'" in r.output and "Traceback" not in r.output


def test_cli_validate(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text("categories:\n  a: [nurse]\n")
    r = CliRunner().invoke(cli, ["taxonomy", "validate", str(good)])
    assert r.exit_code == 0 and "valid taxonomy" in r.output
    bad = tmp_path / "b.yaml"
    bad.write_text("categories:\n  a: []\n")
    r = CliRunner().invoke(cli, ["taxonomy", "validate", str(bad)])
    assert r.exit_code == 1 and "is empty" in r.output


def test_a_huge_entry_is_shown_bounded_in_the_message(tmp_path):
    # Aliases within the limit still make an entry of thousands of items: the message stays short.
    p = tmp_path / "big.yaml"
    p.write_text("note: [&a [" + ", ".join(["lol"] * 60) + "], &b [" + ", ".join(["*a"] * 60) + "]]\n"
                 "categories:\n  jobs: [nurse, *b]\n")
    with pytest.raises(DataError) as info:
        load_taxonomy(p)
    msg = str(info.value)
    assert msg.startswith(f"taxonomy file {p}: category 'jobs' has a non-string entry [['lol', ")
    assert msg.endswith("at position 2") and len(msg) < len(str(p)) + 250


def test_alias_bomb_and_duplicate_keys_in_a_taxonomy(tmp_path):
    from test_io import BOMB

    p = tmp_path / "bomb.yaml"
    p.write_text(BOMB)
    with pytest.raises(DataError, match="aliases .* expand to more than 10000 entries"):
        load_taxonomy(p)
    p.write_text("categories:\n  jobs: [nurse]\n  jobs: [pilot]\n")
    with pytest.raises(DataError, match=r"key 'jobs' appears twice in one mapping \(lines 2 and 3\)"):
        load_taxonomy(p)
