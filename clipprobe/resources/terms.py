"""What a term is: the character classes of the caption matching rule and a term's canonical form.

A lexicon's terms and a taxonomy's words are matched in captions by the rule of
:mod:`clipprobe.captions.matching` (rule 1: case folding; rule 2: whole words, a word character being a
letter, digit or combining mark; rule 3: any run of whitespace inside a term). The term side of that rule
lives here, below both: a lexicon file is validated with :func:`normalise_term` when it is read, and the
matcher compiles the same canonical forms. A change here changes the rule: bump
:data:`clipprobe.captions.matching.RULE_VERSION` (it is part of the caption counts' resume key).
"""

from __future__ import annotations

import re
import unicodedata

# Unicode White_Space (PropList.txt), the whitespace of rule 3.
WHITESPACE = ("\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
              "\u200a\u2028\u2029\u202f\u205f\u3000")
_WS_SPLIT = re.compile("[" + re.escape(WHITESPACE) + "]+")


class TermError(ValueError):
    """A term that cannot be matched (empty, control characters)."""


def fold_char(ch: str) -> str:
    """The case-folded form of one character under rule 1."""
    low = ch.lower()
    if len(low) != 1 or low.isascii() != ch.isascii():
        return ch
    return low


def fold(text: str) -> str:
    """``text`` with every character folded by :func:`fold_char` (same length)."""
    if text.isascii():
        return text.lower()
    return "".join(fold_char(c) for c in text)


def is_word_char(ch: str) -> bool:
    """A letter, digit or combining mark (rule 2)."""
    return unicodedata.category(ch)[0] in "LNM"


def normalise_term(term: str) -> str:
    """A term's canonical form: folded, whitespace runs as one space, trimmed."""
    parts = [p for p in _WS_SPLIT.split(term) if p]
    if not parts:
        raise TermError("empty term")
    text = " ".join(parts)
    for ch in text:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch in "\u200b\ufeff":
            raise TermError(f"control character {ch!r}")
    return fold(text)


__all__ = ["WHITESPACE", "TermError", "fold", "fold_char", "is_word_char", "normalise_term"]
