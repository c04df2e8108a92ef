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

* Arrow frames every caption of a record batch as ``\\0 caption \\0`` in one
  buffer (``binary_join_element_wise``, in C++; null rows become empty slots).
  The ``\\0`` bytes keep matches from spanning two captions, and the frame
  offsets map each match to its row.
* Each term has a fixed byte length per case variant (non-ASCII letters are
  expanded into the UTF-8 encodings of their case variants, rule 1) and is
  compiled into one Hyperscan database (byte mode, ASCII-caseless) between two
  bytes that are not ASCII letters or digits, so rule 2 is settled inside
  Hyperscan for ASCII neighbours. A neighbour that is a non-ASCII character is
  decoded with numpy for two- and three-byte characters up to U+2FFF and looked
  up in a table built from :mod:`unicodedata`; anything else (four-byte
  characters, invalid UTF-8) is decoded in Python.
* A multi-word term is compiled with single ASCII spaces, which is rule 3
  wherever a caption separates words by single spaces. The few captions with any
  other whitespace (tabs, newlines, no-break spaces, runs of spaces: marked by
  extra expressions in the same Hyperscan scan) are rescanned after Arrow
  replaces each whitespace run by one space, and only the rescan's matches count
  for them (whitespace is never a letter, so nothing else changes).

One Arrow call frames a whole batch and one Hyperscan call scans it, so the
per-caption cost is well under a microsecond. The compiled database can be
cached on disk (:meth:`Matcher.cached`): compiling ~1,200 terms takes seconds.
Where numba is installed (a dependency), the engines match and count with
:class:`clipprobe.captions.tokens.TokenMatcher` instead (the same result, about
a third of the matching CPU), which calls this class only for what tokens cannot
express.
"""

from __future__ import annotations

import functools
import logging
import threading
from dataclasses import dataclass
from typing import Sequence

# The term side of the rule (case folding, word characters, whitespace, a term's canonical form) lives with
# the resources whose terms it validates; changing it changes the rule.
from clipprobe.resources.terms import WHITESPACE, TermError, fold_char, is_word_char, normalise_term

log = logging.getLogger(__name__)

RULE_VERSION = "1"  # bump when the rule changes (here or in clipprobe.resources.terms): part of the resume key


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
CACHE_FORMAT = 1          # bump when the compiled expressions change shape: it is part of the cache key


@dataclass
class BatchMatches:
    """Which captions of a batch contain which terms (each pair once, sorted by row then term)."""

    rows: "object"        # int64 array: row of the batch (nulls included in the numbering)
    terms: "object"       # int32 array: index into Matcher.terms
    n_captions: int       # non-null captions
    n_nulls: int


def as_string_array(array):
    """One Arrow ``string``/``large_string`` array from a (chunked) array of captions."""
    import pyarrow as pa

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks() if array.num_chunks != 1 else array.chunk(0)
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        array = array.cast(pa.large_string())
    return array


class Matcher:
    """Finds the terms in Arrow string arrays by the rule of this module.

    ``Matcher(terms)`` normalises and compiles the terms (duplicates after
    normalisation are an error). The compiled database can be shipped to worker
    processes or Spark executors with :meth:`to_bytes` / :meth:`from_bytes`
    instead of compiling again, and kept on disk with :meth:`cached`.
    """

    def __init__(self, terms: Sequence[str], *, _db_bytes: bytes | None = None, _compile: bool = True):
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
        self._use(None)
        if _db_bytes:
            self._load(_db_bytes)
        elif _compile:
            self._compile()

    def _expressions(self) -> list[bytes]:
        """One expression per term variant (ids 0..), then the irregular-whitespace markers."""
        return [_NOT_ALNUM + _literal_regex(v) + _NOT_ALNUM for v in self._variants] + list(_IRREGULAR_WHITESPACE)

    def _compile(self) -> None:
        import hyperscan

        if not self._variants:
            return
        expressions = self._expressions()
        db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        db.compile(expressions=expressions, ids=list(range(len(expressions))), elements=len(expressions),
                   flags=[hyperscan.HS_FLAG_CASELESS] * len(expressions))
        self._use(db)

    def _load(self, data: bytes) -> None:
        import hyperscan

        self._use(hyperscan.loadb(data, hyperscan.HS_MODE_BLOCK))

    def _use(self, db) -> None:
        """Scan with ``db`` from now on; scratch spaces are made for one database, per thread (:meth:`_scratch`)."""
        self._db = db
        self._scratches = threading.local()

    def _scratch(self):
        """This thread's scratch space: hyperscan refuses a scratch that another thread is scanning
        with (ScratchInUseError), so a matcher shared by threads keeps one per thread."""
        import hyperscan

        scratch = getattr(self._scratches, "scratch", None)
        if scratch is None:
            scratch = self._scratches.scratch = hyperscan.Scratch(self._db)
        return scratch

    def to_bytes(self) -> bytes:
        import hyperscan

        return hyperscan.dumpb(self._db) if self._db is not None else b""

    @classmethod
    def from_bytes(cls, terms: Sequence[str], data: bytes) -> "Matcher":
        """The matcher of ``terms`` from :meth:`to_bytes`; compiled afresh if this CPU cannot load it."""
        import hyperscan

        try:
            return cls(terms, _db_bytes=data or None)
        except hyperscan.error as err:   # e.g. a database built for another CPU generation
            log.warning("compiled term database not usable here (%s: %s); compiling again",
                        type(err).__name__, err)
            return cls(terms)

    def cache_key(self) -> str:
        """Hash of everything the compiled database depends on (expressions, Hyperscan, CPU type)."""
        import hashlib
        import platform

        import hyperscan

        h = hashlib.sha256(f"{CACHE_FORMAT}|{hyperscan.__version__}|{platform.machine()}|".encode())
        for expression in self._expressions():
            h.update(expression + b"\n")
        return h.hexdigest()[:32]

    @classmethod
    def cached(cls, terms: Sequence[str], cache_dir) -> "Matcher":
        """The matcher of ``terms``, its compiled database kept in ``cache_dir`` (one file per term set).

        A cache file that is corrupt or was built for another CPU is compiled
        again and replaced; a cache folder that cannot be written is only logged.
        """
        import hashlib
        from pathlib import Path

        import hyperscan

        from clipprobe._io import write_bytes

        matcher = cls(terms, _compile=False)
        if not matcher._variants:
            return matcher
        path = Path(cache_dir) / f"{matcher.cache_key()}.hsdb"
        try:
            blob = path.read_bytes()
        except OSError:
            blob = b""
        digest, data = blob[:32], blob[32:]
        if data and hashlib.sha256(data).digest() == digest:
            try:
                matcher._load(data)
                log.debug("term database from %s", path)
                return matcher
            except hyperscan.error as err:
                log.info("cached term database %s not usable (%s); compiling again", path, type(err).__name__)
        elif blob:
            log.info("cached term database %s is corrupt; compiling again", path)
        matcher._compile()
        data = matcher.to_bytes()
        try:
            write_bytes(path, hashlib.sha256(data).digest() + data)
        except OSError as err:
            log.warning("could not cache the term database in %s: %s", path.parent, err)
        return matcher

    def scan(self, array) -> BatchMatches:
        """Match one Arrow string array (``string``/``large_string``; a chunked array is combined)."""
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc

        array = as_string_array(array)
        n_nulls = array.null_count
        n_captions = len(array) - n_nulls
        empty = np.zeros(0, np.int64)
        if n_captions == 0 or self._db is None:
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls)
        buf, offsets = _framed(array)
        rows, terms, irregular = self._find(buf, offsets)
        if len(irregular):
            # their matches come from a rescan with every whitespace run as one space (rule 3)
            keep = ~np.isin(rows, irregular)
            fixed = pc.replace_substring_regex(array.take(pa.array(irregular)), pattern=_WS_RUN_RE2,
                                               replacement=" ")
            sub_rows, sub_terms, _ = self._find(*_framed(fixed))
            rows = np.concatenate([rows[keep], irregular[sub_rows]])
            terms = np.concatenate([terms[keep], sub_terms])
        k = len(self.terms)
        key = sorted_unique(rows * k + terms)
        return BatchMatches(key // k, (key % k).astype(np.int32), n_captions, n_nulls)

    def _find(self, buf, offsets):
        """(row, term) of every whole-word occurrence in a framed buffer (repeats included), and the
        sorted rows with whitespace other than single ASCII spaces."""
        import numpy as np

        found_ids: list[int] = []
        found_ends: list[int] = []
        add_id, add_end = found_ids.append, found_ends.append

        def on_match(pid, _from, end, _flags, _ctx):
            add_id(pid)
            add_end(end)

        self._db.scan(buf, match_event_handler=on_match, scratch=self._scratch())
        empty = np.zeros(0, np.int64)
        if not found_ids:
            return empty, empty, empty
        pid = np.asarray(found_ids, dtype=np.int64)
        end = np.asarray(found_ends, dtype=np.int64) - 1      # exclusive end of the term itself
        n_variants = len(self._variants)
        irregular = empty
        marker = pid >= n_variants
        if marker.any():       # end - 1 is the marker's last byte: inside its caption
            irregular = sorted_unique(np.searchsorted(offsets, end[marker], side="right") - 1)
            pid, end = pid[~marker], end[~marker]
        begin = end - self._variant_len[pid]
        row = np.searchsorted(offsets, begin, side="right") - 1
        term = self._variant_term[pid]
        odd = (buf[begin - 1] >= 0x80) | (buf[end] >= 0x80)
        if odd.any():
            keep = ~odd
            j = np.flatnonzero(odd)
            ok, known = _non_word_neighbours(buf, begin[j], end[j])
            keep[j[known]] = ok[known]
            for i in j[~known]:
                keep[i] = _whole_word(buf, int(offsets[row[i]]) + 1, int(begin[i]), int(end[i]))
            row, term = row[keep], term[keep]
        return row, term, irregular


def sorted_unique(values):
    """The distinct values of an int array, sorted (``np.unique`` by sorting: numpy 2's default hashing
    is several times slower on these nearly sorted keys)."""
    import numpy as np

    values = np.sort(values, kind="stable")      # nearly sorted already: timsort is fast
    if len(values) < 2:
        return values
    return values[np.concatenate(([True], values[1:] != values[:-1]))]


# Every whitespace run (rule 3) as an RE2 pattern for Arrow's replace_substring_regex.
_WS_RUN_RE2 = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in WHITESPACE) + "]+"
# Hyperscan expressions that mark whitespace other than one ASCII space: \t \n \v \f \r (the ASCII
# White_Space besides the space), two spaces, and the UTF-8 encoding of each non-ASCII White_Space character.
_IRREGULAR_WHITESPACE = (rb"[\x09-\x0d]", rb"\x20\x20") + tuple(
    _literal_regex(c.encode()) for c in WHITESPACE if ord(c) >= 0x80)


def _framed(array):
    """Each caption as ``\\0 caption \\0`` in one uint8 buffer (null rows empty), and the int64 row offsets."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    empty, nul = pa.scalar("", type=array.type), pa.scalar("\x00", type=array.type)
    framed = pc.binary_join_element_wise(empty, array, empty, nul)
    n = len(framed)
    offset_type = np.int64 if pa.types.is_large_string(framed.type) else np.int32
    _, offsets_buf, data_buf = framed.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=framed.offset + n + 1)[framed.offset:]
    offsets = offsets.astype(np.int64)
    buf = np.frombuffer(data_buf, dtype=np.uint8, count=int(offsets[-1])) if data_buf is not None and n \
        else np.zeros(0, np.uint8)
    return buf, offsets


_TABLE_LIMIT = 0x3000     # code points below this are decoded with numpy (2- and 3-byte UTF-8)


@functools.lru_cache(maxsize=1)
def _word_table():
    """Boolean table: code point (< _TABLE_LIMIT) -> is a letter, digit or combining mark (rule 2)."""
    import numpy as np

    return np.fromiter((is_word_char(chr(cp)) for cp in range(_TABLE_LIMIT)), dtype=bool, count=_TABLE_LIMIT)


def _non_word_neighbours(buf, begin, end):
    """Rule 2 for occurrences next to non-ASCII bytes, vectorised where the neighbours are simple.

    Returns (ok, known): ``known`` where both neighbours are ASCII or a well-formed
    two- or three-byte UTF-8 character below U+3000, and then ``ok`` is whether
    neither neighbour is a letter, digit or combining mark. The rest (four-byte
    characters, invalid UTF-8) is left to :func:`_whole_word`.
    """
    import numpy as np

    table = _word_table()
    last = len(buf) - 1

    def at(i):
        return buf[np.clip(i, 0, last)].astype(np.int64)

    def cont(b):
        return (b & 0xC0) == 0x80

    # the character that starts at `end`
    b0, b1, b2 = at(end), at(end + 1), at(end + 2)
    two = (b0 >= 0xC2) & (b0 <= 0xDF) & cont(b1)
    three = (((b0 == 0xE0) & (b1 >= 0xA0)) | ((b0 >= 0xE1) & (b0 <= 0xE2))) & cont(b1) & cont(b2)
    cp = np.where(two, ((b0 & 0x1F) << 6) | (b1 & 0x3F), ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F))
    after_known = (b0 < 0x80) | two | three
    after_word = (two | three) & table[np.where(two | three, cp, 0)]
    # the character that ends just before `begin`
    a1, a2, a3 = at(begin - 1), at(begin - 2), at(begin - 3)
    two = cont(a1) & (a2 >= 0xC2) & (a2 <= 0xDF)
    three = cont(a1) & cont(a2) & (((a3 == 0xE0) & (a2 >= 0xA0)) | ((a3 >= 0xE1) & (a3 <= 0xE2)))
    cp = np.where(two, ((a2 & 0x1F) << 6) | (a1 & 0x3F), ((a3 & 0x0F) << 12) | ((a2 & 0x3F) << 6) | (a1 & 0x3F))
    before_known = (a1 < 0x80) | two | three
    before_word = (two | three) & table[np.where(two | three, cp, 0)]
    return ~(after_word | before_word), after_known & before_known


def _whole_word(buffer, caption_start: int, begin: int, end: int) -> bool:
    """Rule 2 for one occurrence next to a non-ASCII byte: decode the neighbours."""
    before = bytes(buffer[max(caption_start, begin - 4):begin]).decode("utf-8", errors="replace")[-1:]
    after = bytes(buffer[end:end + 4]).decode("utf-8", errors="replace")[:1]
    return not (before and is_word_char(before)) and not (after and is_word_char(after))
