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


# ----------------------------------------------------------------------------------------------
# concept label prompts: a yes and a no prompt set per label (multi-label zero-shot)

LABEL_KEYS = ("name", "description", "labels")
LABEL_ENTRY_KEYS = ("prompts", "negations")

MSG_LABELS_NOT_MAPPING = "label prompt file {path}: expected a mapping with 'labels'"
MSG_LABELS_KEY = "label prompt file {path}: unknown key {key!r}{hint}; keys: " + ", ".join(LABEL_KEYS)
MSG_LABELS = "label prompt file {path}: 'labels' must map at least one label name to its prompts and negations"
MSG_LABEL_ENTRY = "label prompt file {path}: label {name!r}: {why}"


@dataclasses.dataclass(frozen=True)
class LabelPrompts:
    """Concept labels for multi-label zero-shot classification: each label's name, its prompts (the
    concept, "a photo of a nurse") and its negations ("a photo of a person who is not a nurse").

    The file::

        name: occupations            # optional; default: the file's stem
        description: ...
        labels:                      # at least one; each label on its own (yes against no)
          nurse:
            prompts: [a photo of a nurse]
            negations: [a photo of a person who is not a nurse]

    (The keys are ``prompts`` / ``negations``, not ``yes`` / ``no``: YAML 1.1 reads those two as booleans.)
    """

    name: str
    labels: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]
    description: str = ""
    source: str = ""

    @property
    def label_names(self) -> tuple[str, ...]:
        return tuple(name for name, _, _ in self.labels)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "labels": {n: {"prompts": list(p), "negations": list(q)} for n, p, q in self.labels}}


def _label_prompt_list(path: Path, name: str, key: str, raw) -> tuple[str, ...]:
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise DataError(MSG_LABEL_ENTRY.format(path=path, name=Bounded(name), why=f"{key!r}: give a non-empty list "
                                                                                   "of prompts"))
    out = []
    for p in raw:
        if not isinstance(p, str) or not p.strip() or len(p) > MAX_PROMPT_CHARS:
            raise DataError(MSG_LABEL_ENTRY.format(path=path, name=Bounded(name),
                                                   why=f"{key!r}: prompt {Bounded(p)!r} is not a non-empty string "
                                                       f"of at most {MAX_PROMPT_CHARS} characters"))
        out.append(" ".join(p.split()))
    return tuple(out)


def load_label_prompts(path: str | Path) -> LabelPrompts:
    """Read and check a label prompt file (see :class:`LabelPrompts`); a problem raises :class:`DataError`
    with one line naming the file and the entry."""
    path = Path(path)
    data = read_mapping(path, what="label prompt file")
    if not isinstance(data, Mapping):
        raise DataError(MSG_LABELS_NOT_MAPPING.format(path=path))
    for key in data:
        if key not in LABEL_KEYS:
            raise DataError(MSG_LABELS_KEY.format(path=path, key=Bounded(key),
                                                  hint=did_you_mean(shorten(str(key), 60), LABEL_KEYS)))
    raw = data.get("labels")
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(MSG_LABELS.format(path=path))
    labels, seen = [], set()
    for name, entry in raw.items():
        if not isinstance(name, str) or not name.strip():
            raise DataError(MSG_LABEL_ENTRY.format(path=path, name=Bounded(name),
                                                   why="a label name must be a non-empty string"))
        label = name.strip()
        if label in seen:
            raise DataError(MSG_LABEL_ENTRY.format(path=path, name=label, why="given twice"))
        seen.add(label)
        if not isinstance(entry, Mapping):
            raise DataError(MSG_LABEL_ENTRY.format(path=path, name=Bounded(name),
                                                   why="give a mapping with 'prompts' and 'negations'"))
        for key in entry:
            if key not in LABEL_ENTRY_KEYS:
                raise DataError(MSG_LABEL_ENTRY.format(
                    path=path, name=Bounded(name),
                    why=f"unknown key {Bounded(key)!r}{did_you_mean(shorten(str(key), 60), LABEL_ENTRY_KEYS)}; "
                        "keys: prompts, negations"))
        labels.append((label, _label_prompt_list(path, label, "prompts", entry.get("prompts")),
                       _label_prompt_list(path, label, "negations", entry.get("negations"))))
    return LabelPrompts(name=str(data.get("name") or path.stem), labels=tuple(labels),
                        description=str(data.get("description") or ""), source=str(path))
