"""A second way to apply the matching rule: whole tokens, found by one compiled pass (numba).

Under the rule of :mod:`clipprobe.captions.matching`, a caption is a sequence
of *tokens* (maximal runs of letters, digits and combining marks) with non-word
*gaps* between them. A term that is itself ASCII tokens joined by
separators (``"middle eastern"``, ``"5-year-old"``, ``"o'brien"``) then occurs
in such a caption exactly where consecutive tokens equal the term's tokens and
each gap equals the term's separator: a single space in the term is a gap made
only of whitespace (rule 3), any other separator is that exact string. The
maximal runs settle rule 2 by themselves.

:class:`TokenMatcher` does this for a whole record batch: one pass over the
Arrow buffers (:func:`_scan_tokens`, compiled by numba) hashes every token and
keeps those of the terms' vocabulary (a bitmap of hash buckets rejects nearly
all others at once; the rest are compared byte by byte); numpy then joins
consecutive vocabulary tokens into n-grams and checks their gaps. There is no
Python per caption or per match. What it cannot express exactly goes to
Hyperscan (:class:`Matcher`), so the result is always that of the rule:

* captions that are not well-formed UTF-8: the full Hyperscan matcher scans
  just those captions;
* terms with non-ASCII characters (they need Unicode case folding): a Hyperscan
  matcher of only those terms scans the captions with non-ASCII bytes (a token
  with a non-ASCII character never equals an ASCII token, rule 1; the kernel
  reads non-ASCII characters only to tell letters from separators);
* terms that are not tokens with separators (ASCII terms that start or end with
  punctuation, such as ``"c.e.o."``, or whose separators mix whitespace with
  other characters, such as ``"a - b"``): a Hyperscan matcher of only those
  terms scans all captions.

Measured on the benchmark's captions (1,176 terms, one core): about 0.4 us of
CPU per caption to match, against 0.55 for the Hyperscan path (whose Python
callback per match and the scan itself are its floor). A pure-numpy version of
the same idea (Arrow splitting, or numpy passes over the bytes) was slower than
Hyperscan: it needs a dozen passes over the data. Without numba the kernel runs
as plain Python (correct, for tests, far too slow for data), so the engines use
this path only where numba is installed (:func:`available`).
"""

from __future__ import annotations

import functools
import logging
import re
from typing import Sequence

from clipprobe.captions.matching import WHITESPACE, BatchMatches, Matcher, as_string_array, sorted_unique

log = logging.getLogger(__name__)

_WORD = re.compile(r"[a-z0-9]+")
_TERM = re.compile(r"[a-z0-9]+(?:[^a-z0-9]+[a-z0-9]+)*")
_ASCII_WS = bytes(ord(c) for c in WHITESPACE if ord(c) < 0x80)
_SPACE = " "             # a separator that stands for a whitespace run
_MASK64 = (1 << 64) - 1
# the token hash: FNV-1a over the lower-cased bytes, then a multiplicative mix into a bucket
_FNV_BASIS, _FNV_PRIME, _MIX = 0xCBF29CE484222325, 0x100000001B3, 0x9E3779B97F4A7C15


def token_bucket(token: bytes, bits: int) -> int:
    """The bucket of a lower-cased token (as the kernel computes it, with 64-bit wrap-around)."""
    h = _FNV_BASIS
    for byte in token:
        h = ((h ^ byte) * _FNV_PRIME) & _MASK64
    return ((h * _MIX) & _MASK64) >> (64 - bits)


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
            if parts is None:
                rest.append(k)
            else:
                parsed.append((k, *parts))
        vocab: dict[str, int] = {}
        for _, tokens, _ in parsed:
            for t in tokens:
                vocab.setdefault(t, len(vocab))
        self.n_vocab = n_vocab = max(len(vocab), 1)
        # n-gram codes are ids in base n_vocab: at most max_n tokens per term fit in an int64
        self.max_n = max_n = max(1, int(62 // np.log2(n_vocab + 1)))
        self.by_length: dict[int, list[tuple[int, list[int], list[str]]]] = {}
        for k, tokens, seps in parsed:
            if len(tokens) > max_n:
                rest.append(k)
            else:
                self.by_length.setdefault(len(tokens), []).append((k, [vocab[t] for t in tokens], seps))
        rest.sort()
        self.rest_terms = np.asarray(rest, np.int64)
        self.rest = Matcher([terms[k] for k in rest]) if rest else None
        self.wide_terms = np.asarray(wide, np.int64)
        self.wide = Matcher([terms[k] for k in wide]) if wide else None
        words = list(vocab)
        encoded = [w.encode() for w in words]
        self.vocab_lengths = np.asarray([len(w) for w in encoded] or [0], np.int64)
        self.vocab_offsets = np.concatenate(([0], np.cumsum([len(w) for w in encoded], dtype=np.int64)))
        self.vocab_bytes = np.frombuffer(b"".join(encoded) or b"\0", np.uint8)
        # buckets of a hash of the token, in CSR form: bucket b holds the vocabulary ids
        # bucket_vid[bucket_ptr[b]:bucket_ptr[b + 1]] (mostly zero or one; the kernel compares whole tokens)
        self.bits = max(12, int(np.ceil(np.log2(max(len(words), 1)))) + 6)
        h = np.asarray([token_bucket(w, self.bits) for w in encoded], np.int64)
        order = np.argsort(h, kind="stable")
        self.bucket_vid = order.astype(np.int32)
        self.bucket_ptr = np.searchsorted(h[order], np.arange((1 << self.bits) + 1)).astype(np.int32)
        self.bitmap = np.zeros(1 << (self.bits - 6), np.uint64)
        for bucket in np.unique(h).tolist():
            self.bitmap[bucket >> 6] |= np.uint64(1 << (bucket & 63))
        lower = np.zeros(256, np.uint8)
        for byte in b"0123456789abcdefghijklmnopqrstuvwxyz":
            lower[byte] = byte
            lower[bytes([byte]).upper()[0]] = byte
        lower[0x80:] = 1
        self.lower = lower
        # single-token terms by vocabulary id; n-gram codes -> entries (term, separators), sorted by code
        self.single = np.full(n_vocab, -1, np.int64)
        self.starts_gram = np.zeros(n_vocab, bool)       # the first token of a term of 2+ tokens
        self.grams: dict[int, tuple] = {}
        sep_index: dict[str, int] = {}
        for n, entries in sorted(self.by_length.items()):
            if n == 1:
                for k, ids, _ in entries:
                    self.single[ids[0]] = k
                continue
            for _, ids, _ in entries:
                self.starts_gram[ids[0]] = True
            codes = np.asarray([self._code(ids) for _, ids, _ in entries], np.int64)
            order = np.argsort(codes, kind="stable")
            term = np.asarray([entries[i][0] for i in order], np.int64)
            seps = np.asarray([[sep_index.setdefault(s, len(sep_index)) for s in entries[i][2]] for i in order],
                              np.int64).reshape(len(order), n - 1)
            self.grams[n] = (codes[order], term, seps)
        self.top_n = max(self.by_length, default=0)
        self.sep_bytes = [s.encode() for s in sep_index]
        self.sep_is_space = np.asarray([s == _SPACE for s in sep_index] or [False], bool)
        self.sep_len = np.asarray([len(s) for s in sep_index] or [0], np.int64)
        self.sep_first = np.asarray([s.encode()[0] for s in sep_index] or [0], np.int64)
        ws = np.zeros(256, bool)
        ws[list(_ASCII_WS)] = True
        ws[0x80:] = True
        self.ws_byte = ws
        log.debug("token path: %d terms, %d vocabulary tokens, %d terms left to Hyperscan",
                  sum(len(v) for v in self.by_length.values()), len(words), len(rest))

    @property
    def terms(self) -> tuple[str, ...]:
        return self.matcher.terms

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the kernel and build the character table now, e.g. before
        worker processes fork."""
        import pyarrow as pa

        self.scan(pa.array(["warm up é"], type=pa.string()))

    def _code(self, ids: Sequence[int]) -> int:
        code = 0
        for i in ids:
            code = code * self.n_vocab + i
        return code

    def scan(self, array) -> BatchMatches:
        """Same contract and result as :meth:`Matcher.scan`."""
        import numpy as np
        import pyarrow as pa

        array = as_string_array(array)
        n_nulls = array.null_count
        n_captions = len(array) - n_nulls
        empty = np.zeros(0, np.int64)
        if n_captions == 0 or not len(self.matcher.terms):
            return BatchMatches(empty, empty.astype(np.int32), n_captions, n_nulls)
        rows, terms, flags = self._find(array)
        malformed = np.flatnonzero(flags & 2)
        parts_r, parts_t = [rows], [terms]
        if self.rest is not None:            # terms the tokens cannot express: Hyperscan, every caption
            found = self.rest.scan(array)
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
        rows = np.concatenate(parts_r)
        terms = np.concatenate(parts_t)
        k = len(self.matcher.terms)
        key = sorted_unique(rows * k + terms)
        return BatchMatches(key // k, (key % k).astype(np.int32), n_captions, n_nulls)

    def _find(self, array):
        """(row, term) of every occurrence of a token-path term (repeats included; none in captions of
        malformed UTF-8), and the kernel's flags per caption."""
        import numpy as np
        import pyarrow as pa

        empty = np.zeros(0, np.int64)
        n = len(array)
        offset_type = np.int64 if pa.types.is_large_string(array.type) else np.int32
        validity, offsets_buf, data_buf = array.buffers()
        offsets = np.frombuffer(offsets_buf, dtype=offset_type, count=array.offset + n + 1)[array.offset:]
        data = np.frombuffer(data_buf, np.uint8, count=int(offsets[-1])) if data_buf is not None and n \
            else np.zeros(0, np.uint8)
        valid = np.ones(n, bool) if array.null_count == 0 else \
            np.asarray(array.is_valid()).astype(bool, copy=False)
        c, out, flags = _kernel()(offsets, data, valid, self.lower, word_table(), self.bitmap, self.bucket_ptr,
                                  self.bucket_vid, self.vocab_bytes, self.vocab_offsets, self.vocab_lengths, self.bits)
        row, tok, vid, start, end = out
        if not self.by_length or c == 0:
            return empty, empty, flags
        row, tok, vid, start, end = row[:c], tok[:c], vid[:c], start[:c], end[:c]
        term = self.single[vid]
        one = np.flatnonzero(term >= 0)
        out_rows, out_terms = [row[one]], [term[one]]
        at = np.flatnonzero(self.starts_gram[vid])   # survivor index of an n-gram's first token
        code = vid[at]
        last = at
        for n_tok in range(2, self.top_n + 1):
            nxt = last + 1              # the next token, if a vocabulary token, is the next survivor
            ok = nxt < c
            ok[ok] = tok[nxt[ok]] == tok[last[ok]] + 1
            at, last = at[ok], nxt[ok]
            if not len(at):
                break
            code = code[ok] * self.n_vocab + vid[last]
            if n_tok not in self.grams:
                continue
            codes, terms, seps = self.grams[n_tok]
            lo = np.searchsorted(codes, code, side="left")
            cnt = np.searchsorted(codes, code, side="right") - lo
            m = np.flatnonzero(cnt)
            if not len(m):
                continue
            reps = cnt[m]
            which = at[np.repeat(m, reps)]
            entry = np.repeat(lo[m] - (np.cumsum(reps) - reps), reps) + np.arange(int(reps.sum()))
            good = np.ones(len(which), bool)
            for j in range(n_tok - 1):
                good &= self._gap_ok(data, end[which + j], start[which + j + 1], seps[entry, j])
            out_rows.append(row[which[good]])
            out_terms.append(terms[entry[good]])
        return np.concatenate(out_rows), np.concatenate(out_terms), flags

    def _gap_ok(self, data, gap_start, gap_end, sep):
        """Whether each gap data[gap_start:gap_end] is what separator ``sep`` allows."""
        import numpy as np

        glen = gap_end - gap_start
        first = data[gap_start]
        space = self.sep_is_space[sep]
        # ws_byte is also true for bytes >= 0x80 (maybe a non-ASCII whitespace character): checked below
        ok = np.where(space, self.ws_byte[first], (glen == self.sep_len[sep]) & (first == self.sep_first[sep]))
        for i in np.flatnonzero(ok & ((glen > 1) | (first >= 0x80))):       # rare: look at every character
            gap = bytes(data[gap_start[i]:gap_end[i]])
            ok[i] = all(ch in WHITESPACE for ch in gap.decode()) if space[i] else gap == self.sep_bytes[sep[i]]
        return ok


def _utf8_at(data, i, hi):
    """(code point, length) of the UTF-8 character at data[i] (a byte >= 0x80), or (0, 0) if it is not
    well-formed (as Python's strict decoder judges)."""
    b0 = np.int64(data[i])
    if 0xC2 <= b0 <= 0xDF:
        if i + 1 < hi and 0x80 <= data[i + 1] <= 0xBF:
            return ((b0 & 0x1F) << 6) | (np.int64(data[i + 1]) & 0x3F), 2
        return 0, 0
    if 0xE0 <= b0 <= 0xEF:
        if i + 2 >= hi:
            return 0, 0
        b1 = np.int64(data[i + 1])
        b2 = np.int64(data[i + 2])
        lo1 = 0xA0 if b0 == 0xE0 else 0x80
        hi1 = 0x9F if b0 == 0xED else 0xBF
        if lo1 <= b1 <= hi1 and 0x80 <= b2 <= 0xBF:
            return ((b0 & 0x0F) << 12) | ((b1 & 0x3F) << 6) | (b2 & 0x3F), 3
        return 0, 0
    if 0xF0 <= b0 <= 0xF4:
        if i + 3 >= hi:
            return 0, 0
        b1 = np.int64(data[i + 1])
        b2 = np.int64(data[i + 2])
        b3 = np.int64(data[i + 3])
        lo1 = 0x90 if b0 == 0xF0 else 0x80
        hi1 = 0x8F if b0 == 0xF4 else 0xBF
        if lo1 <= b1 <= hi1 and 0x80 <= b2 <= 0xBF and 0x80 <= b3 <= 0xBF:
            return ((b0 & 0x07) << 18) | ((b1 & 0x3F) << 12) | ((b2 & 0x3F) << 6) | (b3 & 0x3F), 4
    return 0, 0


def _scan_tokens(offsets, data, valid, lower, word, bitmap, bucket_ptr, bucket_vid, vocab_bytes, vocab_offsets,
                 vocab_lengths, bits):
    """One pass over the captions of an Arrow string array: every token that is a vocabulary token.

    Returns (count, out, flags): ``out[:, :count]`` holds row, token number, vocabulary id, start and
    end of each such token, in caption order; token numbers are consecutive inside a caption and jump by
    two between captions (so no n-gram spans two). ``flags[row]`` has bit 1 for a caption with a byte
    >= 0x80 and bit 2 for one with malformed UTF-8, which reports no tokens here (Hyperscan scans it).
    ``lower[byte]`` is 0 for ASCII bytes that are not letters or digits, 1 for bytes >= 0x80, else the
    lower-cased byte; ``word[code point]`` says whether a character is a letter, digit or combining
    mark. A token with a non-ASCII character equals no vocabulary token (all ASCII: rule 1) and is only
    counted. Each other token's FNV-1a hash picks a bucket; a bitmap of the non-empty buckets rejects
    nearly all at once, the rest are compared byte by byte. Plain Python that numba compiles
    (:func:`_kernel`; ``np`` and ``_utf8_at`` are this module's globals, set there).
    """
    n = len(valid)
    cap = 1024 + len(data) // 16
    out = np.empty((5, cap), np.int64)
    flags = np.zeros(n, np.uint8)
    shift = np.uint64(64 - bits)
    basis = np.uint64(_FNV_BASIS)
    prime = np.uint64(_FNV_PRIME)
    mix = np.uint64(_MIX)
    c = 0
    t = 0
    for r in range(n):
        if not valid[r]:
            continue
        row_c = c
        bad = False
        i = np.int64(offsets[r])
        hi = np.int64(offsets[r + 1])
        while i < hi:
            low = lower[data[i]]
            if low == 0:
                i += 1
                continue
            if low == 1:
                flags[r] |= 1
                cp, size = _utf8_at(data, i, hi)
                if size == 0:
                    bad = True
                    break
                if not word[cp]:
                    i += size
                    continue
            s = i                        # a token starts: hash it
            h = basis
            ascii_only = True
            while i < hi:
                low = lower[data[i]]
                if low == 0:
                    break
                if low == 1:
                    flags[r] |= 1
                    cp, size = _utf8_at(data, i, hi)
                    if size == 0:
                        bad = True
                        break
                    if not word[cp]:
                        break
                    ascii_only = False
                    i += size
                    continue
                h = (h ^ np.uint64(low)) * prime
                i += 1
            if bad:
                break
            t += 1
            if not ascii_only:
                continue
            bucket = (h * mix) >> shift
            if not (bitmap[bucket >> np.uint64(6)] >> (bucket & np.uint64(63))) & np.uint64(1):
                continue
            length = i - s
            for q in range(bucket_ptr[bucket], bucket_ptr[bucket + 1]):
                v = bucket_vid[q]
                if vocab_lengths[v] != length:
                    continue
                o = vocab_offsets[v]
                same = True
                for j in range(length):
                    if lower[data[s + j]] != vocab_bytes[o + j]:
                        same = False
                        break
                if same:
                    if c == cap:          # grow the output
                        cap *= 2
                        bigger = np.empty((5, cap), np.int64)
                        bigger[:, :c] = out[:, :c]
                        out = bigger
                    out[0, c] = r
                    out[1, c] = t
                    out[2, c] = v
                    out[3, c] = s
                    out[4, c] = i
                    c += 1
                    break
        if bad:
            flags[r] |= 2
            c = row_c                    # Hyperscan scans this caption
        t += 2
    return c, out, flags


_KERNEL = None
np = None       # numpy, set by _kernel (the CLI imports no numpy at start)


def _kernel():
    """:func:`_scan_tokens` compiled by numba (cached on disk), or the plain function without numba."""
    global _KERNEL, np, _utf8_at
    if _KERNEL is None:
        import numpy

        np = numpy
        try:
            import numba
        except ImportError:
            _KERNEL = _plain_kernel
        else:
            _utf8_at = numba.njit(cache=True, nogil=True)(_utf8_at)
            _KERNEL = numba.njit(cache=True, nogil=True)(_scan_tokens)
    return _KERNEL


@functools.lru_cache(maxsize=1)
def word_table():
    """Boolean table: code point -> is a letter, digit or combining mark (rule 2; built once, ~0.1 s)."""
    import unicodedata

    import numpy

    return numpy.fromiter((unicodedata.category(chr(cp))[0] in "LNM" for cp in range(0x110000)), bool,
                          count=0x110000)


def _plain_kernel(*args):
    with np.errstate(over="ignore"):      # the hash multiplies wrap around, as in the compiled kernel
        return _scan_tokens(*args)


def available() -> bool:
    """Whether the token path runs compiled (numba installed): only then is it faster than Hyperscan."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True
