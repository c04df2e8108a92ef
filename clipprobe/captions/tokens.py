"""A second way to apply the matching rule: whole tokens, found and counted by one compiled pass (numba).

Under the rule of :mod:`clipprobe.captions.matching`, a caption is a sequence
of *tokens* (maximal runs of letters, digits and combining marks) with non-word
*gaps* between them. A term that is itself ASCII tokens joined by
separators (``"middle eastern"``, ``"5-year-old"``, ``"o'brien"``) then occurs
in such a caption exactly where consecutive tokens equal the term's tokens and
each gap equals the term's separator: a single space in the term is a gap made
only of whitespace (rule 3), any other separator is that exact string. The
maximal runs settle rule 2 by themselves.

:class:`TokenMatcher` does this for a whole record batch in one pass over the
Arrow buffers (:func:`_token_pass`, compiled by numba), with no Python per
caption or per match:

* each token's lower-cased first eight bytes, packed into one integer, and its
  length are looked up in a small open-addressing table of the terms'
  vocabulary (the packed key *is* the token up to eight bytes; longer tokens
  are compared byte by byte);
* a vocabulary token steps a trie of the terms, keyed by (state, separator of
  the gap, token): the states still open after the previous token carry
  multi-token terms along, and every state that completes a term records it
  once per caption;
* at the end of a caption its terms are turned into words and groups and
  counted right there (:meth:`TokenMatcher.count`): per-word, per-group and
  word x group caption counts, plus the captions that may become samples. Or
  the pass only reports the caption's (row, term) pairs
  (:meth:`TokenMatcher.scan`, the contract of
  :meth:`~clipprobe.captions.matching.Matcher.scan`).

What tokens cannot express exactly goes to Hyperscan
(:class:`~clipprobe.captions.matching.Matcher`), so the result is always that
of the rule; the captions concerned are reported as pairs and counted by the
caller, never by the pass:

* captions that are not well-formed UTF-8: the full Hyperscan matcher scans
  just those captions;
* terms with non-ASCII characters (they need Unicode case folding): a Hyperscan
  matcher of only those terms scans the captions with non-ASCII bytes (a token
  with a non-ASCII character never equals an ASCII token, rule 1; the pass
  reads non-ASCII characters only to tell letters and whitespace from the rest);
* terms that are not tokens with separators (ASCII terms that start or end with
  punctuation, such as ``"c.e.o."``, or whose separators mix whitespace with
  other characters, such as ``"a - b"``), or of more than :data:`MAX_TOKENS`
  tokens: a Hyperscan matcher of only those terms scans all captions.

The default So-B-IT words and FairFace lexicon have none of the last two kinds.
The pass itself is :func:`clipprobe.captions._tokenpass.token_pass` (how it
tokenises quickly is told there); where numba cannot be imported
(:func:`available`) the engines use Hyperscan alone.

Measured (``benchmarks/bench_captions.py``, 1M captions of ~81 bytes, 1,176
terms, one core): about 0.15 us of CPU per caption to match and count, against
~0.55 us to match with Hyperscan and count with numpy; reading the caption
column costs ~0.13 us.
"""

from __future__ import annotations

import functools
import logging
import re

from clipprobe.captions.hashing import BITMAP_BITS, MIX
from clipprobe.captions.matching import WHITESPACE, BatchMatches, Matcher, as_string_array, sorted_unique

log = logging.getLogger(__name__)

FIRST_ROOM = 1024         # (row, term) pairs and sample candidates the first output arrays of a batch hold
MAX_TOKENS = 16           # terms of more tokens go to Hyperscan (the pass keeps this many open trie states)
_WORD = re.compile(r"[a-z0-9]+")
_TERM = re.compile(r"[a-z0-9]+(?:[^a-z0-9]+[a-z0-9]+)*")
_SPACE = " "             # a separator that stands for a whitespace run
_MASK64 = (1 << 64) - 1
_IS_SPACE = 2              # bit of whitespace in the code point classes (bit 1: letter, digit, mark)


def split_term(term: str) -> tuple[list[str], list[str]] | None:
    """(tokens, separators) of a normalised ASCII term, or None if it is not tokens joined by separators
    that are one space or free of whitespace (then Hyperscan matches it)."""
    if not term.isascii() or not _TERM.fullmatch(term):
        return None
    tokens = _WORD.findall(term)
    seps = [term[m.end():n.start()] for m, n in zip(_WORD.finditer(term), list(_WORD.finditer(term))[1:])]
    for sep in seps:
        if sep != _SPACE and any(c in sep for c in WHITESPACE):
            return None
    return tokens, seps


def pack_token(token: bytes) -> int:
    """The first eight bytes of a lower-cased token as one little-endian integer (as the pass builds it)."""
    return int.from_bytes(token[:8], "little")


def _slot(key: int, bits: int) -> int:
    return ((key * MIX) & _MASK64) >> (64 - bits)


def _table_bits(n: int) -> int:
    """Bits of an open-addressing table for n keys: at most 1/8 full, so most lookups probe one slot."""
    return max(10, (max(n, 1) * 8 - 1).bit_length())


class TokenMatcher:
    """The token path for ``matcher.terms``, with ``matcher`` (Hyperscan) for what it cannot express."""

    def __init__(self, matcher: Matcher):
        import numpy as np

        self.matcher = matcher
        terms = matcher.terms
        parsed: list[tuple[int, list[str], list[str]]] = []
        rest: list[int] = []
        wide: list[int] = []
        for k, term in enumerate(terms):
            if not term.isascii():
                wide.append(k)                    # only in captions with non-ASCII bytes (rule 1)
                continue
            parts = split_term(term)
            if parts is None or len(parts[0]) > MAX_TOKENS:
                rest.append(k)
            else:
                parsed.append((k, *parts))
        self.rest_terms = np.asarray(rest, np.int64)
        self.rest = Matcher([terms[k] for k in rest]) if rest else None
        self.wide_terms = np.asarray(wide, np.int64)
        self.wide = Matcher([terms[k] for k in wide]) if wide else None

        # the vocabulary: every token of a token-path term, in an open-addressing table keyed by
        # (packed first eight bytes, length); bytes of the tokens for comparing longer ones
        vocab: dict[str, int] = {}
        for _, tokens, _ in parsed:
            for t in tokens:
                vocab.setdefault(t, len(vocab))
        encoded = [w.encode() for w in vocab]
        self.vocab_offsets = np.concatenate(([0], np.cumsum([len(w) for w in encoded], dtype=np.int64)))
        self.vocab_bytes = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
        self.token_bits = bits = _table_bits(len(encoded))
        self.bitmap = np.zeros(1 << (BITMAP_BITS - 6), np.uint64)      # hashes of the vocabulary's keys
        self.slot_packed = np.zeros(1 << bits, np.uint64)
        self.slot_len = np.zeros(1 << bits, np.int64)            # 0: an empty slot
        self.slot_vid = np.zeros(1 << bits, np.int64)
        for vid, w in enumerate(encoded):
            packed = pack_token(w)
            s = _slot(packed ^ len(w), bits)
            while self.slot_len[s]:
                s = (s + 1) & ((1 << bits) - 1)
            self.slot_packed[s], self.slot_len[s], self.slot_vid[s] = packed, len(w), vid
            h = _slot(packed ^ len(w), BITMAP_BITS)
            self.bitmap[h >> 6] |= np.uint64(1 << (h & 63))

        # separators: 0 is a whitespace run (a space in the term), the others exact strings
        seps: dict[str, int] = {_SPACE: 0}
        for _, _, term_seps in parsed:
            for sep in term_seps:
                seps.setdefault(sep, len(seps))
        sep_encoded = [s.encode() for s in seps]
        self.sep_offsets = np.concatenate(([0], np.cumsum([len(s) for s in sep_encoded], dtype=np.int64)))
        self.sep_bytes = np.frombuffer(b"".join(sep_encoded), np.uint8)

        # the trie: state 0 is the root; an edge is keyed (state * n_seps + separator) * n_vocab + token
        # (separator 0 from the root) and stored in an open-addressing table
        self.n_vocab, self.n_seps = max(len(vocab), 1), len(seps)
        children: dict[tuple[int, int, int], int] = {}
        state_term = [-1]
        for k, tokens, term_seps in parsed:
            state = 0
            for j, token in enumerate(tokens):
                edge = (state, seps[term_seps[j - 1]] if j else 0, vocab[token])
                if edge not in children:
                    children[edge] = len(state_term)
                    state_term.append(-1)
                state = children[edge]
            state_term[state] = k
        self.state_term = np.asarray(state_term, np.int64)
        self.edge_bits = ebits = _table_bits(len(children))
        self.edge_key = np.full(1 << ebits, -1, np.int64)
        self.edge_next = np.zeros(1 << ebits, np.int64)
        for (state, sep, vid), nxt in children.items():
            key = (state * self.n_seps + sep) * self.n_vocab + vid
            s = _slot(key, ebits)
            while self.edge_key[s] >= 0:
                s = (s + 1) & ((1 << ebits) - 1)
            self.edge_key[s], self.edge_next[s] = key, nxt

        lower = np.zeros(256, np.uint8)      # 0: ASCII non-word byte, 1: a byte >= 0x80, else lower-cased
        for byte in b"0123456789abcdefghijklmnopqrstuvwxyz":
            lower[byte] = byte
            lower[bytes([byte]).upper()[0]] = byte
        lower[0x80:] = 1
        self.lower = lower
        self.n_parsed = len(parsed)
        log.debug("token path: %d terms, %d vocabulary tokens, %d trie states, %d terms left to Hyperscan",
                  len(parsed), len(vocab), len(state_term), len(rest) + len(wide))

    @property
    def terms(self) -> tuple[str, ...]:
        return self.matcher.terms

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the pass and build the character table now, e.g. before
        worker processes fork."""
        import numpy as np
        import pyarrow as pa

        array = pa.array(["warm up é"], type=pa.string())
        self.scan(array)
        no_items = np.zeros(len(self.terms) + 1, np.int64), np.zeros(0, np.int64)    # terms map to nothing
        one = np.zeros(1, np.int64)
        self.count(array, *no_items, *no_items, one, one.copy(), one.reshape(1, 1).copy(), None, 0)

    def _tables(self):
        import numpy as np

        vocab = (self.slot_packed, self.slot_len, self.slot_vid, np.uint64(64 - self.token_bits), self.vocab_bytes,
                 self.vocab_offsets)
        trie = (self.edge_key, self.edge_next, np.uint64(64 - self.edge_bits), self.state_term, self.n_seps,
                self.n_vocab, self.sep_bytes, self.sep_offsets)
        return self.lower, char_classes(), self.bitmap, vocab, trie

    def scan(self, array) -> BatchMatches:
        """Same contract and result as :meth:`Matcher.scan`."""
        import numpy as np

        array = as_string_array(array)
        n_nulls = array.null_count
        n_captions = len(array) - n_nulls
        empty = np.zeros(0, np.int64)
        if n_captions == 0 or not len(self.matcher.terms):
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls)
        none = np.zeros(1, np.int64)
        rows, terms, _, flags = self._run(array, None, True, (none, none, none, none, none, none, none, none, 0))
        rows, terms = self._add_hyperscan(array, rows, terms, flags, None)
        k = len(self.matcher.terms)
        key = sorted_unique(rows * k + terms)
        return BatchMatches(key // k, (key % k).astype(np.int32), n_captions, n_nulls)

    def count(self, array, word_ptr, word_idx, group_ptr, group_idx, n_word, n_group, n_both, taken, n_samples):
        """Count a batch into ``n_word``, ``n_group``, ``n_both`` (int64 arrays, updated in place).

        ``word_ptr, word_idx`` and ``group_ptr, group_idx`` map terms to words and groups (CSR, as
        :meth:`~clipprobe.captions.scan.TermSpace.term_maps`). Returns ``(deferred, candidates)``:
        ``deferred`` is a :class:`BatchMatches` of the captions the pass did not count (see the module
        docstring; the caller counts them) and ``candidates`` an int64 array (3, m) of (row, word, group),
        in row order, for every counted caption that could be one of the first ``n_samples`` of its cell
        given ``taken`` (samples taken per cell before this batch; None: none).
        """
        import numpy as np

        array = as_string_array(array)
        n_nulls = array.null_count
        n_captions = len(array) - n_nulls
        empty = np.zeros(0, np.int64)
        if n_captions == 0 or not len(self.matcher.terms):
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls), np.zeros((3, 0), np.int64)
        defer = None
        rest = None
        if self.rest is not None:               # captions with a Hyperscan-only term: not counted by the pass
            rest = self.rest.scan(array)
            defer = np.zeros(len(array), np.uint8)
            defer[rest.rows] = 1
        if taken is None or n_samples <= 0:
            taken = np.zeros(1, np.int64)
            n_samples = 0
        rows, terms, cand, flags = self._run(array, defer, False, (word_ptr, word_idx, group_ptr, group_idx, n_word,
                                                                   n_group, n_both.reshape(-1), taken, n_samples))
        rows, terms = self._add_hyperscan(array, rows, terms, flags, rest)
        k = len(self.matcher.terms)
        key = sorted_unique(rows * k + terms)
        return BatchMatches(key // k, (key % k).astype(np.int32), n_captions, n_nulls), cand

    def _run(self, array, defer, emit_all, counting):
        import numpy as np
        import pyarrow as pa

        n = len(array)
        offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
        validity, offsets_buf, data_buf = array.buffers()
        # int64 offsets whatever the string type: one compiled version of the pass
        offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=array.offset + n + 1)[array.offset:] \
            .astype(np.int64, copy=False)
        data = np.frombuffer(data_buf, np.uint8, count=int(offsets[-1])) if data_buf is not None and n \
            else np.zeros(0, np.uint8)
        valid = np.ones(n, np.bool_) if array.null_count == 0 else \
            np.asarray(array.is_valid()).astype(np.bool_, copy=False)
        if defer is None:
            defer = np.zeros(0, np.uint8)
        word_ptr, word_idx, group_ptr, group_idx, n_word, n_group, n_both, taken, n_samples = counting
        n_terms = max(len(self.matcher.terms), 1)
        scratch = (np.full(n_terms, -1, np.int64), np.empty(n_terms, np.int64),
                   np.full(len(n_word), -1, np.int64), np.empty(len(n_word), np.int64),
                   np.full(len(n_group), -1, np.int64), np.empty(len(n_group), np.int64),
                   np.empty(16, np.int64), np.empty(17, np.int64), np.zeros(4, np.int64), taken.copy())
        pairs = np.empty((2, FIRST_ROOM + len(data) // 64), np.int64)    # grown below when full
        cand = np.empty((3, FIRST_ROOM), np.int64)
        flags = np.zeros(n, np.uint8)
        lower, classes, bitmap, vocab, trie = self._tables()
        row = n_pairs = n_cand = 0
        while True:
            row, n_pairs, n_cand = _kernel()(offsets, data, valid, defer, emit_all, self.wide is not None, lower,
                                             classes, bitmap, vocab, trie, counting, scratch,
                                             (pairs, cand, flags), row, n_pairs, n_cand)
            if row >= n:
                break
            if n_pairs + n_terms > pairs.shape[1]:           # out of room for a caption's pairs: grow
                pairs = np.concatenate((pairs, np.empty_like(pairs)), axis=1)
            else:
                cand = np.concatenate((cand, np.empty_like(cand)), axis=1)
        return pairs[0, :n_pairs], pairs[1, :n_pairs], cand[:, :n_cand], flags

    def _add_hyperscan(self, array, rows, terms, flags, rest):
        """The pass's pairs plus what Hyperscan finds (module docstring); ``rest``: the rest matcher's
        result on ``array`` if already scanned."""
        import numpy as np
        import pyarrow as pa

        malformed = np.flatnonzero(flags & 2)
        parts_r, parts_t = [rows], [terms]
        if self.rest is not None:            # terms the tokens cannot express: Hyperscan, every caption
            found = rest if rest is not None else self.rest.scan(array)
            keep = ~np.isin(found.rows, malformed)
            parts_r.append(found.rows[keep])
            parts_t.append(self.rest_terms[found.terms[keep]])
        if self.wide is not None:            # non-ASCII terms: Hyperscan, captions with non-ASCII bytes
            wide_rows = np.flatnonzero(flags == 1)
            if len(wide_rows):
                found = self.wide.scan(array.take(pa.array(wide_rows)))
                parts_r.append(wide_rows[found.rows])
                parts_t.append(self.wide_terms[found.terms])
        if len(malformed):                   # malformed UTF-8: Hyperscan, every term
            found = self.matcher.scan(array.take(pa.array(malformed)))
            parts_r.append(malformed[found.rows])
            parts_t.append(found.terms.astype(np.int64))
        return np.concatenate(parts_r), np.concatenate(parts_t)


_KERNEL = None


def _kernel():
    """The compiled pass (:func:`clipprobe.captions._tokenpass.token_pass`), kept on disk in clipprobe's
    cache folder (:mod:`clipprobe._jitcache`), never in the installed package."""
    global _KERNEL
    if _KERNEL is None:
        if not available():
            raise ImportError("the token matcher needs numba (pip install numba)")
        from clipprobe._jitcache import enable_cache
        from clipprobe.captions._tokenpass import token_pass

        enable_cache(token_pass)
        _KERNEL = token_pass
    return _KERNEL


@functools.lru_cache(maxsize=1)
def char_classes():
    """uint8 table over code points: bit 1 a letter, digit or combining mark (rule 2), bit 2 whitespace
    (rule 3). Built once (~0.2 s)."""
    import unicodedata

    import numpy

    table = numpy.fromiter((unicodedata.category(chr(cp))[0] in "LNM" for cp in range(0x110000)), numpy.uint8,
                           count=0x110000)
    for ch in WHITESPACE:
        table[ord(ch)] |= _IS_SPACE
    return table


def available() -> bool:
    """Whether the token path runs compiled (numba installed): only then is it faster than Hyperscan."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
