"""One Registry for every kind of resource: shipped names, a user's file by path, files added by name."""

import pytest

from clipprobe.errors import ClipprobeError
from clipprobe.resources.lexicon import LEXICONS, get_lexicon
from clipprobe.resources.prompts import TEMPLATE_SETS
from clipprobe.resources.taxonomy import TAXONOMIES, get_taxonomy


def test_shipped_names():
    assert {"sobit", "sobit-core"} <= set(TAXONOMIES.names())
    assert "fairface" in LEXICONS.names() and "fairface" not in TAXONOMIES.names()
    assert {"default", "ensemble", "neutral"} <= set(TEMPLATE_SETS.names())


@pytest.mark.parametrize("registry, kind, paths", [
    (TAXONOMIES, "taxonomy", "a YAML/JSON file"),
    (LEXICONS, "lexicon", "a YAML/JSON file"),
    (TEMPLATE_SETS, "template set", "a YAML or text file"),
])
def test_unknown_name_lists_valid_ones(registry, kind, paths):
    with pytest.raises(ClipprobeError) as info:
        registry.get("nope")
    msg = str(info.value)
    assert msg.startswith(f"unknown {kind} 'nope'") and f"or a path to {paths}" in msg
    assert repr(registry.names()[0]) in msg


def test_add_a_users_file_by_name(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("name: mine\ncategories:\n  jobs: [nurse, pilot]\n")
    try:
        assert TAXONOMIES.add(path) == "mine"
        assert "mine" in TAXONOMIES.names()
        assert get_taxonomy("mine").words() == ["nurse", "pilot"]
        assert get_taxonomy(str(path)).words() == ["nurse", "pilot"]
    finally:
        TAXONOMIES._added.pop("mine", None)
    with pytest.raises(ClipprobeError, match="taxonomy file .*absent.yaml does not exist"):
        TAXONOMIES.add(tmp_path / "absent.yaml")


def test_a_bad_file_is_refused_when_added(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("attributes: [1, 2]\n")
    with pytest.raises(ClipprobeError, match="lexicon file"):
        LEXICONS.add(path)
    assert "bad" not in LEXICONS.names()
    assert get_lexicon().name == "fairface"
