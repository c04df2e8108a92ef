"""Attribute prompt sets: the shipped one, a user's file, and bad files with their messages."""

from __future__ import annotations

import pytest

from clipprobe.errors import ClipprobeError, DataError
from clipprobe.resources import attributes as ra


def test_shipped_gender_set():
    assert "gender" in ra.list_attribute_prompts()
    p = ra.get_attribute_prompts()
    assert p.name == "gender" and p.attribute == "gender"
    assert p.group_names == ("Female", "Male")              # FairFace's labels
    assert [n for n, _ in p.none] == ["no person"]
    assert [n for n, _ in p.classes] == ["Female", "Male", "no person"]
    assert all(prompts for _, prompts in p.classes)
    assert p.to_dict()["groups"]["Male"][0] == "a photo of a man"


def test_user_file(tmp_path):
    path = tmp_path / "world.yaml"
    path.write_text("attribute: gender\ngroups:\n  kind X: [a photo of a kind x person]\n"
                    "  kind Y: a photo of a kind y person\n")
    p = ra.get_attribute_prompts(str(path))
    assert p.name == "world" and p.group_names == ("kind X", "kind Y") and p.none == ()
    assert p.groups[1][1] == ("a photo of a kind y person",)


@pytest.mark.parametrize("text, message", [
    ("attribute: gender\ngroups: {a: [x]}\n", ra.MSG_GROUPS),
    ("attribute: gender\ngroups: {a: [x], b: [y]}\ncolour: 1\n", "unknown key 'colour'"),
    ("groups: {a: [x], b: [y]}\n", ra.MSG_ATTRIBUTE),
    ("attribute: gender\ngroups: {a: [x], b: []}\n", "give a non-empty list of prompts"),
    ("attribute: gender\ngroups: {a: [x], b: [3]}\n", "is not a non-empty string"),
    ("attribute: gender\ngroups: {a: [x], b: [y]}\nnone: {a: [z]}\n", ra.MSG_DUPLICATE),
    ("- a\n- b\n", ra.MSG_NOT_MAPPING),
])
def test_bad_files(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as err:
        ra.get_attribute_prompts(str(path))
    want = message.format(path=path, name="a") if "{path}" in message else message
    assert want in str(err.value)


def test_unknown_name():
    with pytest.raises(ClipprobeError, match="unknown attribute prompt set 'gendr'.*did you mean 'gender'"):
        ra.get_attribute_prompts("gendr")
