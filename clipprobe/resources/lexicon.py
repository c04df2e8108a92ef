"""Lexicons: the caption terms that denote each demographic group, as data.

A lexicon maps attribute -> group -> terms, for example::

    attributes:
      race:
        Middle Eastern: [middle eastern, arab, arabs]
        East Asian: [east asian, chinese, japanese, korean]
      gender:
        Male: [man, men, male, boy]
        Female: [woman, women, female, girl]

Every inflected form is its own entry (``arab`` and ``arabs``); nothing is
stemmed or guessed. Terms are matched by the rule of
:mod:`clipprobe.captions.matching`.

**The lexicon drives the result.** Which captions count as "mentioning a Black
person" or "a woman" is decided entirely by these lists, so the shipped
``fairface`` lexicon (``taxonomy/lexicons/fairface.yaml``) is a starting point
written for English captions, not ground truth: read its header for the choices
it makes, and pass your own file with ``--lexicon PATH`` where they do not fit.

Shipped lexicons are the files ``taxonomy/lexicons/NAME.yaml`` (installed with
``clipprobe.data.taxonomy``), listed by :func:`list_lexicons` and loaded by
:func:`get_lexicon`, which also takes a path.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from clipprobe._io import Bounded, shorten
from clipprobe.errors import DataError
from clipprobe.resources import Registry, read_data_mapping

log = logging.getLogger(__name__)

DEFAULT_LEXICON = "fairface"
_SUFFIXES = (".yaml", ".yml", ".json")
_TOP_LEVEL_KEYS = ("name", "description", "note", "attributes")

ERR_NO_ATTRIBUTES = "lexicon file {path} has no 'attributes' mapping (attribute -> group -> list of terms)"
ERR_UNKNOWN_KEY = "lexicon file {path}: unknown key {key!r}{hint}"
ERR_BAD_ATTRIBUTE = "lexicon file {path}: attribute {attribute!r} must map group names to lists of terms"
ERR_BAD_GROUP = "lexicon file {path}: group {group!r} of attribute {attribute!r} must be a non-empty list of terms"
ERR_BAD_TERM = "lexicon file {path}: group {group!r} of attribute {attribute!r} has an invalid term {term!r}: {why}"
ERR_DUPLICATE = "lexicon file {path}: term {term!r} appears twice in group {group!r} of attribute {attribute!r}"


@dataclass(frozen=True)
class Lexicon:
    """attribute -> group -> terms (normalised, file order kept)."""

    name: str
    attributes: dict[str, dict[str, tuple[str, ...]]]
    source: str = ""
    description: str = ""

    def groups(self) -> list[tuple[str, str]]:
        """(attribute, group) pairs in file order."""
        return [(a, g) for a, groups in self.attributes.items() for g in groups]

    def terms(self) -> list[str]:
        """Unique terms, in order of first appearance."""
        seen: dict[str, None] = {}
        for groups in self.attributes.values():
            for terms in groups.values():
                for t in terms:
                    seen.setdefault(t, None)
        return list(seen)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "source": self.source,
                "attributes": {a: {g: len(t) for g, t in gs.items()} for a, gs in self.attributes.items()}}


def lexicon_dir() -> Path:
    """The folder of the shipped lexicons (``taxonomy/lexicons/``)."""
    from clipprobe.data import data_dir

    return data_dir("taxonomy") / "lexicons"


LEXICONS: "Registry[Lexicon]" = Registry("lexicon", folder=lexicon_dir, suffixes=_SUFFIXES,
                                         loader=lambda path: load_lexicon(path), default=DEFAULT_LEXICON,
                                         paths="a YAML/JSON file")


def list_lexicons() -> list[str]:
    """Names of the known lexicons (``fairface``, ...; shipped, then added)."""
    return LEXICONS.names()


def get_lexicon(name_or_path: str | Path | None = None) -> Lexicon:
    """A lexicon by name (default ``fairface``) or a user's file by path."""
    return LEXICONS.get(name_or_path)


def load_lexicon(path: str | Path) -> Lexicon:
    """Read and validate a lexicon file; every problem names the file and the entry."""
    from clipprobe.resources.terms import TermError, normalise_term

    path = Path(path)
    data = read_data_mapping(path, what="lexicon file", keys=_TOP_LEVEL_KEYS, not_mapping=ERR_NO_ATTRIBUTES,
                             unknown_key=ERR_UNKNOWN_KEY)
    raw = data.get("attributes")
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(ERR_NO_ATTRIBUTES.format(path=path))
    attributes: dict[str, dict[str, tuple[str, ...]]] = {}
    for attribute, groups in raw.items():
        attribute = str(attribute).strip()
        if not isinstance(groups, Mapping) or not groups:
            raise DataError(ERR_BAD_ATTRIBUTE.format(path=path, attribute=Bounded(attribute)))
        out: dict[str, tuple[str, ...]] = {}
        for group, terms in groups.items():
            group = str(group).strip()
            if not isinstance(terms, list) or not terms:
                raise DataError(ERR_BAD_GROUP.format(path=path, attribute=Bounded(attribute), group=Bounded(group)))
            seen: dict[str, None] = {}
            for term in terms:
                if not isinstance(term, str):
                    raise DataError(ERR_BAD_TERM.format(path=path, attribute=Bounded(attribute), group=Bounded(group),
                                                        term=Bounded(term), why="not a string"))
                try:
                    norm = normalise_term(term)
                except TermError as err:
                    raise DataError(ERR_BAD_TERM.format(path=path, attribute=Bounded(attribute), group=Bounded(group),
                                                        term=Bounded(term), why=shorten(str(err)))) from None
                if norm in seen:
                    raise DataError(ERR_DUPLICATE.format(path=path, attribute=Bounded(attribute), group=Bounded(group),
                                                         term=Bounded(term)))
                seen[norm] = None
            out[group] = tuple(seen)
        attributes[attribute] = out
    name = str(data.get("name") or path.stem)
    return Lexicon(name=name, attributes=attributes, source=str(path),
                   description=str(data.get("description") or ""))
