"""Prompt sets of image attributes: the classes a zero-shot classifier tells apart, as data.

A prompt set is a YAML file in ``prompts/attributes/`` (installed as ``clipprobe.data.prompts``), or a
user's file given by path::

    name: gender                  # optional; default: the file's stem
    attribute: gender             # the attribute the groups belong to (a face dataset's column)
    description: ...
    groups:                       # at least two; the group names of the attribute, each with its prompts
      Female: [a photo of a woman, ...]
      Male: [a photo of a man, ...]
    none:                         # optional classes that mean "no group" (e.g. no person in the image)
      no person: [a photo of an object, ...]

Prompts are plain text (no placeholders). Shipped: ``gender`` (FairFace's Female / Male and "no person").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

from clipprobe._io import Bounded, read_mapping, shorten
from clipprobe.errors import DataError, did_you_mean
from clipprobe.resources import Registry

DEFAULT_ATTRIBUTE_PROMPTS = "gender"
MAX_PROMPT_CHARS = 300
KEYS = ("name", "attribute", "description", "groups", "none")

MSG_NOT_MAPPING = "attribute prompt file {path}: expected a mapping with 'attribute' and 'groups'"
MSG_KEY = "attribute prompt file {path}: unknown key {key!r}{hint}; keys: " + ", ".join(KEYS)
MSG_ATTRIBUTE = "attribute prompt file {path}: 'attribute' must be a non-empty string"
MSG_GROUPS = "attribute prompt file {path}: 'groups' must map at least two group names to prompt lists"
MSG_PROMPTS = "attribute prompt file {path}: {section} {name!r}: {why}"
MSG_DUPLICATE = "attribute prompt file {path}: class {name!r} is given twice"


@dataclasses.dataclass(frozen=True)
class AttributePrompts:
    """The classes of one attribute: ``groups`` (name, prompts) then ``none`` classes (name, prompts)."""

    name: str
    attribute: str
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    none: tuple[tuple[str, tuple[str, ...]], ...] = ()
    description: str = ""
    source: str = ""

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g for g, _ in self.groups)

    @property
    def classes(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Every class, groups first (class ``k < len(groups)`` is group ``k``)."""
        return self.groups + self.none

    def to_dict(self) -> dict:
        return {"name": self.name, "attribute": self.attribute, "description": self.description,
                "source": self.source, "groups": {g: list(p) for g, p in self.groups},
                "none": {g: list(p) for g, p in self.none}}


def _prompts_folder() -> Path:
    from clipprobe.data import data_dir

    return data_dir("prompts") / "attributes"


def _classes(path: Path, raw, section: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(raw, Mapping):
        raise DataError(MSG_GROUPS.format(path=path))
    out = []
    for name, prompts in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(MSG_PROMPTS.format(path=path, section=section, name=Bounded(name),
                                               why="a class name must be a non-empty string"))
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not prompts:
            raise DataError(MSG_PROMPTS.format(path=path, section=section, name=Bounded(name),
                                               why="give a non-empty list of prompts"))
        checked = []
        for p in prompts:
            if not isinstance(p, str) or not p.strip() or len(p) > MAX_PROMPT_CHARS:
                raise DataError(MSG_PROMPTS.format(path=path, section=section, name=Bounded(name),
                                                   why=f"prompt {Bounded(p)!r} is not a non-empty string of at "
                                                       f"most {MAX_PROMPT_CHARS} characters"))
            checked.append(" ".join(p.split()))
        out.append((name.strip(), tuple(checked)))
    return tuple(out)


def load_attribute_prompts(path: str | Path) -> AttributePrompts:
    """Read and check an attribute prompt file (see the module docstring)."""
    path = Path(path)
    data = read_mapping(path, what="attribute prompt file")
    if not isinstance(data, Mapping):
        raise DataError(MSG_NOT_MAPPING.format(path=path))
    for key in data:
        if key not in KEYS:
            raise DataError(MSG_KEY.format(path=path, key=Bounded(key), hint=did_you_mean(shorten(str(key), 60), KEYS)))
    attribute = data.get("attribute")
    if not isinstance(attribute, str) or not attribute.strip():
        raise DataError(MSG_ATTRIBUTE.format(path=path))
    groups = _classes(path, data.get("groups"), "group")
    if len(groups) < 2:
        raise DataError(MSG_GROUPS.format(path=path))
    none = _classes(path, data.get("none"), "none class") if data.get("none") is not None else ()
    seen: set[str] = set()
    for name, _ in groups + none:
        if name in seen:
            raise DataError(MSG_DUPLICATE.format(path=path, name=name))
        seen.add(name)
    return AttributePrompts(name=str(data.get("name") or path.stem), attribute=attribute.strip(), groups=groups,
                            none=none, description=str(data.get("description") or ""), source=str(path))


ATTRIBUTE_PROMPTS: "Registry[AttributePrompts]" = Registry(
    "attribute prompt set", folder=_prompts_folder, suffixes=(".yaml", ".yml"), loader=load_attribute_prompts,
    default=DEFAULT_ATTRIBUTE_PROMPTS, paths="a YAML file")


def list_attribute_prompts() -> list[str]:
    """Names of the known attribute prompt sets (shipped, then added)."""
    return ATTRIBUTE_PROMPTS.names()


def get_attribute_prompts(name_or_path: str | Path | None = None) -> AttributePrompts:
    """An attribute prompt set by name (default ``gender``) or a user's file by path."""
    return ATTRIBUTE_PROMPTS.get(name_or_path)
