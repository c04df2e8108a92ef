"""The matching rule: when does a caption contain a term? (one place, every engine)

A caption *contains* a term (a So-B-IT word or a lexicon term) when the term
occurs in it under these rules:

1. **Case-insensitive.** Two characters are equal when their lowercase forms are
   (Python's ``str.lower`` of the single character, where that is one character).
   ASCII letters only ever equal ASCII letters: the Kelvin sign (U+212A) is not a
   "k", and the Turkish dotted capital I (U+0130, whose lowercase is two
   characters) equals only itself. Non-ASCII letters fold as usual ("É" = "é",
   "Ж" = "ж"); no Unicode normalisation is applied (precomposed "é" is not
   "e" + U+0301).
2. **Whole words.** No letter, digit or combining mark (Unicode general
   category L*, N* or M*, per Python's :mod:`unicodedata`) immediately before or
   after the term. The start and end of a caption count as non-letters, and so
   do punctuation, apostrophes, hyphens, underscores, symbols and invalid UTF-8
   bytes: "terrorist's" contains "terrorist", "terrorists" does not; "smuggler"
   does not contain "mugger"; "woman" and "manager" do not contain "man";
   "mañana" does not contain "ma".
3. **Whitespace** inside a multi-word term matches any run of one or more
   whitespace characters (the Unicode White_Space property: space, tab, newline,
   no-break space, ideographic space, ...). A hyphen in a term matches only a
   hyphen ("african-american" is not "african american"); any other character
   matches itself (case-folded per rule 1).
4. **One caption at a time.** A match never spans two captions. Null captions
   are skipped and counted; an empty caption is a caption that contains nothing.

A caption either contains a term or not: repeats inside one caption count once.

How the local and Spark engines implement it (both call :meth:`Matcher.scan`):
the non-null captions of an Arrow record batch are copied into one buffer as
``\\0 c1 \\0 c2 \\0 ... cn \\0``, with every whitespace character turned into
ASCII spaces and every run of them collapsed to one space (which is what rule 3
needs, and changes nothing else: whitespace is never a letter). Each term then
has a fixed byte length per case variant and is compiled into one Hyperscan
database (byte mode, ASCII-caseless) between two bytes that are not ASCII
letters or digits, so rule 2 is settled inside Hyperscan for ASCII neighbours;
the few occurrences next to a non-ASCII byte are decided in Python by decoding
the neighbouring character. Non-ASCII letters of a term are expanded into the
UTF-8 encodings of their case variants (rule 1). The ``\\0`` separators make
matches across captions impossible, and offsets map each match to its caption.
One Hyperscan call scans a whole batch, so the per-caption cost is a few
hundred nanoseconds.
"""

from __future__ import annotations

import functools
import logging
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

log = logging.getLogger(__name__)

RULE_VERSION = "1"  # bump when the rule changes: it is part of the resume key

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


@functools.lru_cache(maxsize=1)
def _fold_classes() -> dict[str, tuple[str, ...]]:
    """folded non-ASCII char -> all non-ASCII chars that fold to it (computed once)."""
    classes: dict[str, list[str]] = {}
    for cp in range(0x80, 0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        f = fold_char(ch)
        if f != ch:
            classes.setdefault(f, [f]).append(ch)
    return {k: tuple(v) for k, v in classes.items()}



MAX_VARIANTS = 256   # case variants of one term with non-ASCII letters


def term_variants(term: str) -> list[bytes]:
    """UTF-8 byte strings of a normalised term that rule 1 equates (ASCII case left to Hyperscan)."""
    import itertools

    pieces: list[tuple[bytes, ...]] = []
    for ch in term:
        if ch.isascii():
            pieces.append((ch.encode(),))
        else:
            pieces.append(tuple(v.encode() for v in _fold_classes().get(ch, (ch,))))
    n = 1
    for p in pieces:
        n *= len(p)
    if n > MAX_VARIANTS:
        raise TermError(f"{n} case variants (more than {MAX_VARIANTS})")
    return [b"".join(combo) for combo in itertools.product(*pieces)]


def _literal_regex(data: bytes) -> bytes:
    return b"".join(bytes([b]) if (0x30 <= b <= 0x39 or 0x61 <= b <= 0x7a or 0x41 <= b <= 0x5a)
                    else b"\\x%02x" % b for b in data)


_NOT_ALNUM = rb"[^a-zA-Z0-9]"


@dataclass
class BatchMatches:
    """Which captions of a batch contain which terms (each pair once)."""

    rows: "object"        # int64 array: row of the batch (nulls included in the numbering)
    terms: "object"       # int32 array: index into Matcher.terms
    n_captions: int       # non-null captions
    n_nulls: int


class Matcher:
    """Finds the terms in Arrow string arrays by the rule of this module.

    ``Matcher(terms)`` normalises and compiles the terms (duplicates after
    normalisation are an error). The compiled database can be shipped to worker
    processes or Spark executors with :meth:`to_bytes` / :meth:`from_bytes`
    instead of compiling again.
    """

    def __init__(self, terms: Sequence[str], *, _db_bytes: bytes | None = None):
        import hyperscan
        import numpy as np

        self.terms = tuple(normalise_term(t) for t in terms)
        if len(set(self.terms)) != len(self.terms):
            raise TermError("duplicate terms after normalisation")
        variant_term, variant_len, self._variants = [], [], []
        for k, term in enumerate(self.terms):
            for v in term_variants(term):
                variant_term.append(k)
                variant_len.append(len(v))
                self._variants.append(v)
        self._variant_term = np.asarray(variant_term, np.int64)
        self._variant_len = np.asarray(variant_len, np.int64)
        if _db_bytes is not None:
            self._db = hyperscan.loadb(_db_bytes, hyperscan.HS_MODE_BLOCK)
        else:
            self._db = self._compile()
        self._scratch = hyperscan.Scratch(self._db) if self._variants else None

    def _compile(self):
        import hyperscan

        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        if self._variants:
            expressions = [_NOT_ALNUM + _literal_regex(v) + _NOT_ALNUM for v in self._variants]
            db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
                       flags=[hyperscan.HS_FLAG_CASELESS] * len(expressions))
        return db

    def to_bytes(self) -> bytes:
        import hyperscan

        return hyperscan.dumpb(self._db) if self._variants else b""

    @classmethod
    def from_bytes(cls, terms: Sequence[str], data: bytes) -> "Matcher":
        return cls(terms, _db_bytes=data or None)

    def scan(self, array) -> BatchMatches:
        """Match one Arrow string array (``string``/``large_string``; a chunked array is combined)."""
        import numpy as np
        import pyarrow as pa

        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
        if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
            array = array.cast(pa.large_string())
        n_nulls = array.null_count
        rows = None
        if n_nulls and not _nulls_are_empty(array):
            rows = np.flatnonzero(_validity(array))
            array = array.drop_null()
        n = len(array)
        n_captions = n - n_nulls if rows is None else n
        empty = np.zeros(0, np.int64)
        if n_captions == 0 or not self._variants:
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls)
        buffer, starts = joined_buffer(array)

        found_ids: list[int] = []
        found_ends: list[int] = []
        add_id, add_end = found_ids.append, found_ends.append

        def on_match(pid, _from, end, _flags, _ctx):
            add_id(pid)
            add_end(end)

        self._db.scan(buffer, match_event_handler=on_match, scratch=self._scratch)
        if not found_ids:
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls)
        pid = np.asarray(found_ids, dtype=np.int64)
        end = np.asarray(found_ends, dtype=np.int64) - 1         # exclusive end of the term itself
        begin = end - self._variant_len[pid]
        caption = np.searchsorted(starts, begin, side="right") - 1
        term = self._variant_term[pid]
        odd = (buffer[begin - 1] >= 0x80) | (buffer[end] >= 0x80)
        if odd.any():
            keep = ~odd
            for j in np.flatnonzero(odd):
                keep[j] = _whole_word(buffer, int(starts[caption[j]]), int(begin[j]), int(end[j]))
            caption, term = caption[keep], term[keep]
        k = len(self.terms)
        key = np.unique(caption * k + term)
        caption, term = key // k, (key % k).astype(np.int32)
        if rows is not None:
            caption = rows[caption]
        return BatchMatches(caption.astype(np.int64), term, n_captions, n_nulls)


def _validity(array):
    """Boolean numpy array: True where the entry is not null (from the validity bitmap)."""
    import numpy as np

    bitmap = array.buffers()[0]
    if bitmap is None:
        return np.ones(len(array), bool)
    bits = np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little")
    return bits[array.offset:array.offset + len(array)].astype(bool)


def _nulls_are_empty(array) -> bool:
    """Whether every null slot has zero length (then nulls can stay in place as empty captions)."""
    import numpy as np
    import pyarrow as pa

    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    offsets = np.frombuffer(array.buffers()[1], dtype=offset_type, count=array.offset + len(array) + 1)
    lengths = np.diff(offsets[array.offset:])
    return not lengths[~_validity(array)].any()


def _whole_word(buffer, caption_start: int, begin: int, end: int) -> bool:
    """Rule 2 for one occurrence next to a non-ASCII byte: decode the neighbours."""
    before = bytes(buffer[max(caption_start, begin - 4):begin]).decode("utf-8", errors="replace")[-1:]
    after = bytes(buffer[end:end + 4]).decode("utf-8", errors="replace")[:1]
    return not (before and is_word_char(before)) and not (after and is_word_char(after))


# Multi-byte UTF-8 encodings of the WHITESPACE characters (the ASCII ones are handled by a table).
_MULTIBYTE_SPACES = tuple(c.encode() for c in WHITESPACE if ord(c) >= 0x80)


@functools.lru_cache(maxsize=1)
def _space_lut():
    """uint8 -> is ASCII whitespace (a 256-entry table)."""
    import numpy as np

    lut = np.zeros(256, bool)
    lut[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20]] = True
    return lut


def joined_buffer(array):
    """``\\0 c1 \\0 c2 ... cn \\0`` (whitespace runs -> one ASCII space) as uint8, and caption starts."""
    import numpy as np
    import pyarrow as pa

    n = len(array)
    offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
    _, offsets_buf, data_buf = array.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=array.offset + n + 1)[array.offset:]
    offsets = offsets.astype(np.int64)
    lo, hi = int(offsets[0]), int(offsets[-1])
    if data_buf is None or hi == lo:
        data = np.zeros(0, np.uint8)
    else:
        data = np.frombuffer(data_buf, dtype=np.uint8, count=hi)[lo:]
    rel = offsets - lo
    # 1. every whitespace character -> ASCII spaces (same length); rare, so found by position
    ctrl = np.flatnonzero(data < 0x20)
    ctrl = ctrl[_space_lut()[data[ctrl]]]
    high = np.flatnonzero(data >= 0xC2)
    fix = [ctrl] if len(ctrl) else []
    for seq in _MULTIBYTE_SPACES if len(high) else ():
        cand = high[high <= len(data) - len(seq)]
        hit = np.ones(len(cand), bool)
        for i, b in enumerate(seq):
            hit &= data[cand + i] == b
        fix.extend(cand[hit] + i for i in range(len(seq)))
    if fix:
        data = data.copy()
        data[np.concatenate(fix)] = 0x20
    # 2. drop a space that follows a space of the same caption
    if len(data) > 1:
        space = data == 0x20
        drop = np.zeros(len(data), bool)
        np.logical_and(space[1:], space[:-1], out=drop[1:])
        inner = rel[:-1][(rel[:-1] > 0) & (rel[:-1] < len(data))]
        drop[inner] = False                                  # a caption's first byte follows another caption
        if drop.any():
            dropped = np.concatenate([[0], np.cumsum(drop, dtype=np.int64)])
            rel = rel - dropped[rel]
            data = data[~drop]
    starts = rel[:-1] + np.arange(1, n + 1, dtype=np.int64)
    out = np.zeros(len(data) + n + 1, dtype=np.uint8)
    mask = np.ones(len(out), dtype=bool)
    mask[starts - 1] = False
    mask[-1] = False
    out[mask] = data
    return out, starts
