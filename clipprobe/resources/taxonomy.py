"""Stereotype taxonomies as data: categories of words, each with a part of speech.

Shipped taxonomies are files in the top-level ``taxonomy/`` folder (installed as
``clipprobe.data.taxonomy``), listed by :func:`list_taxonomies` and loaded by
:func:`get_taxonomy`. A user's own file works wherever a name does.

Two file forms are read:

* JSON or YAML with ``categories: {category: [entry, ...]}`` where an entry is a
  plain string or ``{word, pos, lists}`` (the form of ``sobit.json``);
* the minimal YAML form::

      name: my-words
      categories:
        criminal justice: [terrorist, thief, mentally ill]
        occupation: [nurse, CEO]

  with an optional ``pos: {word: noun|adjective}`` mapping and ``aliases:
  {old category name: category}``.

A word's part of speech picks its prompt ("a photo of a nurse" vs "a photo of
a lazy person"). Where a user's file gives none, the So-B-IT tag of the same
word is used, else a suffix rule, and the word is marked ``pos_source="guessed"``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from clipprobe._io import Bounded
from clipprobe.errors import ClipprobeError, DataError, did_you_mean
from clipprobe.resources import Registry, read_data_mapping

log = logging.getLogger(__name__)

DEFAULT_TAXONOMY = "sobit"
POS_VALUES = ("noun", "adjective")
_SUFFIXES = (".json", ".yaml", ".yml")
_TOP_LEVEL_KEYS = ("name", "title", "citation", "note", "description", "aliases", "pos", "pos_source",
                   "categories")
# Endings that mark most English adjectives of a stereotype vocabulary; nouns otherwise.
_ADJECTIVE_ENDINGS = ("ous", "ive", "ful", "less", "able", "ible", "ic", "ical", "ish", "ent", "ant",
                      "ed", "al", "ary", "y", "ile")
_ADJECTIVE_EXCEPTIONS = ("ill",)

ERR_PARSE = "taxonomy file {path} could not be read: {why}"
ERR_NO_CATEGORIES = "taxonomy file {path} has no 'categories' mapping (category -> list of words)"
ERR_EMPTY_CATEGORY = "taxonomy file {path}: category {category!r} is empty"
ERR_DUPLICATE = "taxonomy file {path}: word {word!r} appears twice in category {category!r}"
ERR_NOT_STRING = "taxonomy file {path}: category {category!r} has a non-string entry {entry!r} at position {pos}"
ERR_BAD_POS = "taxonomy file {path}: word {word!r} has part of speech {value!r}; valid: 'noun', 'adjective'"
ERR_UNKNOWN_KEY = "taxonomy file {path}: unknown key {key!r}{hint}"


@dataclass(frozen=True)
class Word:
    text: str
    pos: str
    categories: tuple[str, ...]
    lists: tuple[str, ...] = ()
    pos_source: str = "file"


@dataclass(frozen=True)
class Taxonomy:
    """Categories of stereotype words. ``categories`` keeps file order."""

    name: str
    categories: dict[str, tuple[str, ...]]
    pos: dict[str, str]
    aliases: dict[str, str] = field(default_factory=dict)
    lists: dict[str, tuple[str, ...]] = field(default_factory=dict)
    pos_source: dict[str, str] = field(default_factory=dict)
    source: str = ""
    note: str = ""
    citation: str = ""

    def words(self) -> list[str]:
        """Unique words, in order of first appearance."""
        seen: dict[str, None] = {}
        for words in self.categories.values():
            for w in words:
                seen.setdefault(w, None)
        return list(seen)

    def categories_of(self, word: str) -> tuple[str, ...]:
        return tuple(c for c, words in self.categories.items() if word in words)

    def word(self, text: str) -> Word | None:
        if text not in self.pos:
            return None
        return Word(text, self.pos[text], self.categories_of(text), self.lists.get(text, ()),
                    self.pos_source.get(text, "file"))

    def resolve_category(self, name: str) -> str:
        """The category called ``name`` (case-insensitive, aliases accepted)."""
        lowered = {c.lower(): c for c in self.categories}
        key = name.strip().lower()
        if key in lowered:
            return lowered[key]
        alias = {a.lower(): c for a, c in self.aliases.items()}
        if key in alias:
            return alias[key]
        valid = list(self.categories)
        raise ClipprobeError(
            f"unknown category {name!r} in taxonomy {self.name!r}{did_you_mean(name, valid)}; "
            f"valid: {', '.join(repr(c) for c in valid)}"
        )

    def category(self, name: str) -> tuple[str, ...]:
        return self.categories[self.resolve_category(name)]

    def summary(self) -> dict[str, Any]:
        """The JSON form of ``taxonomy list``."""
        return {
            "name": self.name,
            "categories": {c: len(w) for c, w in self.categories.items()},
            "unique_words": len(self.words()),
        }


def _taxonomy_folder() -> Path:
    from clipprobe.data import data_dir

    return data_dir("taxonomy")


TAXONOMIES: "Registry[Taxonomy]" = Registry("taxonomy", folder=_taxonomy_folder, suffixes=_SUFFIXES,
                                            loader=lambda path: load_taxonomy(path), default=DEFAULT_TAXONOMY,
                                            paths="a YAML/JSON file")


def list_taxonomies() -> list[str]:
    """Names of the known taxonomies (shipped, then added)."""
    return TAXONOMIES.names()


def get_taxonomy(name_or_path: str | Path | None = None) -> Taxonomy:
    """A taxonomy by name (default ``sobit``) or a user's file by path."""
    return TAXONOMIES.get(name_or_path)


def load_taxonomy(path: str | Path) -> Taxonomy:
    """Read and validate a taxonomy file (JSON or YAML)."""
    path = Path(path)
    data = read_data_mapping(path, what="taxonomy file", keys=_TOP_LEVEL_KEYS, not_mapping=ERR_NO_CATEGORIES,
                             unknown_key=ERR_UNKNOWN_KEY)
    raw = data.get("categories")
    if not isinstance(raw, Mapping) or not raw:
        raise DataError(ERR_NO_CATEGORIES.format(path=path))
    explicit_pos = data.get("pos") or {}
    if not isinstance(explicit_pos, Mapping):
        raise DataError(ERR_PARSE.format(path=path, why="'pos' must map words to 'noun' or 'adjective'"))

    categories: dict[str, tuple[str, ...]] = {}
    pos: dict[str, str] = {}
    pos_source: dict[str, str] = {}
    lists: dict[str, tuple[str, ...]] = {}
    for category, entries in raw.items():
        category = str(category).strip()
        if not isinstance(entries, list) or not entries:
            raise DataError(ERR_EMPTY_CATEGORY.format(path=path, category=Bounded(category)))
        words: list[str] = []
        for i, entry in enumerate(entries):
            word_pos = None
            if isinstance(entry, Mapping) and isinstance(entry.get("word"), str):
                word = entry["word"]
                word_pos = entry.get("pos")
                if entry.get("lists"):
                    known = lists.get(word.strip(), ())
                    lists[word.strip()] = known + tuple(x for x in entry["lists"] if x not in known)
                if entry.get("pos_source"):
                    pos_source[word.strip()] = str(entry["pos_source"])
            elif isinstance(entry, str):
                word = entry
            else:
                raise DataError(ERR_NOT_STRING.format(path=path, category=Bounded(category), entry=Bounded(entry),
                                                      pos=i + 1))
            word = " ".join(word.split())
            if not word:
                raise DataError(ERR_NOT_STRING.format(path=path, category=Bounded(category), entry=Bounded(entry),
                                                      pos=i + 1))
            if word in words:
                raise DataError(ERR_DUPLICATE.format(path=path, word=Bounded(word), category=Bounded(category)))
            words.append(word)
            word_pos = word_pos or explicit_pos.get(word)
            if word_pos is not None:
                value = str(word_pos).lower()
                value = {"adj": "adjective", "n": "noun"}.get(value, value)
                if value not in POS_VALUES:
                    raise DataError(ERR_BAD_POS.format(path=path, word=Bounded(word), value=Bounded(word_pos)))
                pos[word] = value
                pos_source.setdefault(word, "file")
        categories[category] = tuple(words)

    missing = [w for ws in categories.values() for w in ws if w not in pos]
    if missing:
        reference = _reference_pos()
        for word in missing:
            pos[word] = reference.get(word) or reference.get(word.lower()) or guess_pos(word)
            pos_source[word] = "sobit" if word in reference or word.lower() in reference else "guessed"
        guessed = [w for w in missing if pos_source[w] == "guessed"]
        if guessed:
            log.info("taxonomy %s: part of speech guessed for %d word(s) (%s); give a 'pos' mapping to set it",
                     path, len(guessed), ", ".join(guessed[:5]) + (" ..." if len(guessed) > 5 else ""))

    aliases = {str(k): str(v) for k, v in (data.get("aliases") or {}).items()}
    for alias, target in aliases.items():
        if target not in categories:
            raise DataError(f"taxonomy file {path}: alias {Bounded(alias)!r} points to unknown category "
                            f"{Bounded(target)!r}")
    return Taxonomy(
        name=str(data.get("name") or path.stem),
        categories=categories,
        pos=pos,
        aliases=aliases,
        lists=lists,
        pos_source=pos_source,
        source=str(path),
        note=str(data.get("note") or data.get("description") or ""),
        citation=str(data.get("citation") or ""),
    )


def guess_pos(word: str) -> str:
    """A suffix rule for a word with no tag: 'adjective' or 'noun'.

    A multi-word term is judged by its last word ("mentally ill" -> adjective,
    "soccer mom" -> noun).
    """
    last = word.split()[-1].lower()
    if last in _ADJECTIVE_EXCEPTIONS or last.endswith(_ADJECTIVE_ENDINGS):
        return "adjective"
    return "noun"


_REFERENCE_POS: dict[str, str] | None = None


def _reference_pos() -> dict[str, str]:
    """Part-of-speech tags of the shipped So-B-IT words (used for users' files without tags)."""
    global _REFERENCE_POS
    if _REFERENCE_POS is None:
        from clipprobe.data import data_dir

        tags: dict[str, str] = {}
        path = data_dir("taxonomy") / f"{DEFAULT_TAXONOMY}.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        for entries in data["categories"].values():
            for e in entries:
                tags[e["word"]] = e["pos"]
                tags.setdefault(e["word"].lower(), e["pos"])
        _REFERENCE_POS = tags
    return _REFERENCE_POS
