"""Prompt templates as data, and the prompts they make for a word.

Template sets are YAML files in the top-level ``prompts/`` folder (installed as
``clipprobe.data.prompts``): ``default`` (one template per part of speech, as in
So-B-IT), ``ensemble`` (several phrasings, averaged), ``neutral`` and
``neutral-ensemble`` (baseline queries with no stereotype word). A user's own
file is accepted wherever a name is:

* YAML with ``templates: {noun: [...], adjective: [...]}`` (or one list used for
  both), optional ``baseline: [...]`` neutral prompts;
* or a plain text file, one template per line (``#`` starts a comment).

In a template, ``{word}`` is the word and ``{a}`` the article ("a"/"an") chosen
for whatever follows it. A template without ``{word}`` is an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from clipprobe._io import Bounded, load_yaml, shorten
from clipprobe.errors import ClipprobeError, DataError, did_you_mean
from clipprobe.resources import Registry

log = logging.getLogger(__name__)

DEFAULT_TEMPLATES = "default"
NEUTRAL_FOR = {"default": "neutral", "ensemble": "neutral-ensemble"}
_FIELDS = re.compile(r"\{(\w*)\}")
_ALLOWED_FIELDS = {"word", "a"}

ERR_NO_WORD = "template file {path}: template {template!r} has no '{{word}}' placeholder"
ERR_BAD_FIELD = "template file {path}: template {template!r} uses unknown placeholder '{{{field}}}'; use {{word}} and {{a}}"
ERR_EMPTY = "template file {path} has no templates"

# Words starting with a vowel letter but a consonant sound, and the reverse.
_CONSONANT_SOUND = ("uni", "use", "usu", "uti", "ura", "ure", "euro", "eu", "one", "once", "ewe", "ubiq", "uk")
_VOWEL_SOUND = ("honest", "honor", "honour", "hour", "heir", "herb")
# Letters whose spoken name starts with a vowel sound (for acronyms: "an FBI agent", "a CEO").
_VOWEL_LETTERS = set("AEFHILMNORSX")


def article(word: str) -> str:
    """'a' or 'an' for ``word`` by its spoken first sound (English, with common exceptions)."""
    first = word.strip().split()[0] if word.strip() else ""
    if not first:
        return "a"
    core = first.strip("\"'(")
    letters = re.sub(r"[^A-Za-z]", "", core)
    if len(letters) >= 2 and letters.isupper() and len(letters) <= 5:
        return "an" if letters[0] in _VOWEL_LETTERS else "a"
    low = core.lower()
    if low.startswith(_VOWEL_SOUND) or low.startswith(("unin", "unim")):  # "an uninsured", "an unimportant"
        return "an"
    if low.startswith(_CONSONANT_SOUND):
        return "a"
    return "an" if low[:1] in "aeiou" else "a"


def fill(template: str, word: str) -> str:
    """Fill one template: ``{word}`` and the article ``{a}`` for the text after it."""
    out = []
    pos = 0
    for match in _FIELDS.finditer(template):
        out.append(template[pos:match.start()])
        name = match.group(1)
        if name == "word":
            out.append(word)
        elif name == "a":
            rest = template[match.end():].replace("{word}", word).lstrip()
            out.append(article(rest))
        pos = match.end()
    out.append(template[pos:])
    return "".join(out)


@dataclass(frozen=True)
class TemplateSet:
    """Templates per part of speech, plus neutral baseline prompts."""

    name: str
    noun: tuple[str, ...]
    adjective: tuple[str, ...]
    baseline: tuple[str, ...] = ()
    source: str = ""
    description: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def prompts(self, word: str, pos: str = "noun") -> list[str]:
        """The prompt strings for ``word`` with part of speech ``pos``."""
        templates = self.adjective if pos == "adjective" else self.noun
        return [fill(t, word) for t in templates]


def _prompts_folder() -> Path:
    from clipprobe.data import data_dir

    return data_dir("prompts")


TEMPLATE_SETS: "Registry[TemplateSet]" = Registry("template set", folder=_prompts_folder,
                                                  suffixes=(".yaml", ".yml", ".txt"),
                                                  loader=lambda path: load_template_set(path),
                                                  default=DEFAULT_TEMPLATES, paths="a YAML or text file")


def list_template_sets() -> list[str]:
    """Names of the known template sets (shipped, then added)."""
    return TEMPLATE_SETS.names()


def get_template_set(name_or_path: str | Path | None = None) -> TemplateSet:
    """A template set by name (default ``default``) or a user's file by path."""
    return TEMPLATE_SETS.get(name_or_path)


def neutral_set_for(templates: TemplateSet) -> TemplateSet:
    """The neutral baseline matching ``templates``: its own ``baseline`` if it has one."""
    if templates.baseline:
        return templates
    return get_template_set(NEUTRAL_FOR.get(templates.name, "neutral"))


def _check(path: Path, templates: Sequence[Any], require_word: bool) -> tuple[str, ...]:
    out = []
    for t in templates:
        if not isinstance(t, str) or not t.strip():
            raise DataError(f"template file {path}: entry {Bounded(t)!r} is not a non-empty string")
        for name in _FIELDS.findall(t):
            if name not in _ALLOWED_FIELDS:
                raise DataError(ERR_BAD_FIELD.format(path=path, template=Bounded(t), field=shorten(name, 40)))
        if require_word and "{word}" not in t:
            raise DataError(ERR_NO_WORD.format(path=path, template=Bounded(t)))
        out.append(t.strip())
    return tuple(out)


def load_template_set(path: str | Path) -> TemplateSet:
    """Read and validate a template file (YAML or one template per line)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"template file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"template file {path} could not be read: {shorten(str(err))}") from None
    if path.suffix not in (".yaml", ".yml"):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        if not lines:
            raise DataError(ERR_EMPTY.format(path=path))
        checked = _check(path, lines, require_word=True)
        return TemplateSet(name=path.stem, noun=checked, adjective=checked, source=str(path))

    data = load_yaml(text, what="template file", path=path)
    if not isinstance(data, Mapping):
        raise DataError(ERR_EMPTY.format(path=path))
    allowed = ("name", "description", "templates", "baseline")
    for key in data:
        if key not in allowed:
            raise DataError(f"template file {path}: unknown key {Bounded(key)!r}"
                            f"{did_you_mean(shorten(str(key), 60), allowed)}")
    raw = data.get("templates")
    baseline = _check(path, data.get("baseline") or [], require_word=False)
    if isinstance(raw, list):
        noun = adjective = _check(path, raw, require_word=True)
    elif isinstance(raw, Mapping):
        for key in raw:
            if key not in ("noun", "adjective"):
                raise DataError(f"template file {path}: unknown part of speech {Bounded(key)!r}; "
                                "use 'noun' and 'adjective'")
        noun = _check(path, raw.get("noun") or raw.get("adjective") or [], require_word=True)
        adjective = _check(path, raw.get("adjective") or raw.get("noun") or [], require_word=True)
    elif raw is None and baseline:
        noun = adjective = ()
    else:
        raise DataError(ERR_EMPTY.format(path=path))
    if not noun and not baseline:
        raise DataError(ERR_EMPTY.format(path=path))
    return TemplateSet(
        name=str(data.get("name") or path.stem),
        noun=noun,
        adjective=adjective,
        baseline=baseline,
        source=str(path),
        description=str(data.get("description") or ""),
    )


def ensemble(vectors):
    """Average L2-normalised text embeddings (rows) and normalise the mean: CLIP prompt ensembling."""
    import numpy as np

    v = np.asarray(vectors, dtype=np.float32)
    if v.ndim == 1:
        v = v[None, :]
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    mean = v.mean(axis=0)
    return (mean / np.linalg.norm(mean)).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Queries: a word and the exact prompts whose embeddings form its query vector

MSG_EMPTY_WORD = "the word to probe is empty"


@dataclass(frozen=True)
class Query:
    """A word and the exact prompt strings whose (ensembled) embeddings form its query."""

    word: str
    prompts: tuple[str, ...]
    pos: str
    categories: tuple[str, ...] = ()
    in_taxonomy: bool = True


def make_query(word: str, *, taxonomy=None, templates=None) -> Query:
    """The prompts for ``word``: its part of speech in the taxonomy picks the templates.

    ``taxonomy`` and ``templates`` are loaded objects or names/paths (None: the defaults). A word
    that is not in the taxonomy is allowed; its part of speech is guessed (and logged).
    """
    from clipprobe.resources.taxonomy import get_taxonomy, guess_pos

    word = " ".join(str(word).split())
    if not word:
        raise ClipprobeError(MSG_EMPTY_WORD)
    tax = taxonomy if taxonomy is not None and not isinstance(taxonomy, (str, Path)) else get_taxonomy(taxonomy)
    tmpl = templates if templates is not None and not isinstance(templates, (str, Path)) else get_template_set(templates)
    entry = tax.word(word)
    if entry is None:
        lowered = {w.lower(): w for w in tax.words()}
        if word.lower() in lowered:
            entry = tax.word(lowered[word.lower()])
    if entry is None:
        pos = guess_pos(word)
        log.info("%r is not in taxonomy %r; using it as %s %s", word, tax.name,
                 "an" if pos == "adjective" else "a", pos)
        return Query(word, tuple(tmpl.prompts(word, pos)), pos, (), False)
    return Query(word, tuple(tmpl.prompts(word, entry.pos)), entry.pos, entry.categories, True)


def make_queries(taxonomy=None, *, templates=None, words: Sequence[str] | None = None) -> list[Query]:
    """One query per unique word of a taxonomy (default ``sobit``), in the taxonomy's order.

    ``words`` restricts them to some words (each may also be outside the taxonomy).
    """
    from clipprobe.resources.taxonomy import get_taxonomy

    tax = taxonomy if taxonomy is not None and not isinstance(taxonomy, (str, Path)) else get_taxonomy(taxonomy)
    tmpl = templates if templates is not None and not isinstance(templates, (str, Path)) else get_template_set(templates)
    chosen = tax.words() if words is None else list(dict.fromkeys(str(w) for w in words))
    return [make_query(w, taxonomy=tax, templates=tmpl) for w in chosen]


def neutral_query(templates=None) -> Query:
    """The neutral baseline query ("a photo of a person") that matches a template set."""
    tmpl = templates if templates is not None and not isinstance(templates, (str, Path)) else get_template_set(templates)
    return Query("(neutral)", tuple(neutral_set_for(tmpl).baseline), "noun", (), False)
