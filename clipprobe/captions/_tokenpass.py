"""The compiled pass of :mod:`clipprobe.captions.tokens` (numba; imported only where it runs).

ASCII captions take the fast way: 64 bytes at a time are classified with one
vector load and compares (:func:`_block_word_mask`: LLVM emits AVX-512 or AVX2
where the CPU has them, plain code elsewhere) into a 64-bit mask of word bytes,
and a second mask says whether any byte is >= 0x80. Within the last 64 bytes of
the buffer, eight-byte words are classified with SWAR arithmetic instead
(letters and digits set the high bit of their byte) and gathered into the same
mask. The tokens are the runs of ones in that mask: their first and last bytes
are two masks (a bit shifted against its neighbour), walked together with
count-trailing-zeros. A token's key is one
unaligned eight-byte load, lower-cased by setting bit 5 of each byte (letters
and digits only: digits have it already) and cut to the token's length. A
bitmap of the vocabulary's key hashes rejects nearly every token with one load;
the few left are looked up in the vocabulary table. No branch depends on where
a token starts or ends, which is what made a byte-at-a-time loop slow
(mispredicted branches at every token edge).

A caption with any byte >= 0x80 takes the exact way: byte by byte, decoding
UTF-8 and asking the code point table whether a character is a letter, digit or
combining mark. Both ways feed the same lookup and trie step, so they agree.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from clipprobe.captions.hashing import BITMAP_BITS, MIX

_MIX = np.uint64(MIX)
_ONES = np.uint64(0x0101010101010101)
_HIGH = np.uint64(0x8080808080808080)
_CASE = np.uint64(0x2020202020202020)
_GATHER = np.uint64(0x0102040810204080)    # multiplies eight 0/1 bytes into one byte of bits


@intrinsic
def _load_u64(typingctx, array, index):
    """Eight bytes of a uint8 array from ``index`` as one little-endian uint64 (unaligned load)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        return builder.load(builder.bitcast(ptr, ir.IntType(64).as_pointer()), align=1)
    return types.uint64(array, index), codegen


@intrinsic
def _block_word_mask(typingctx, array, index):
    """Bit j set where byte ``index + j`` of a uint8 array is an ASCII letter or digit, for the 64 bytes
    from ``index`` (one vector load and compares: AVX-512 or AVX2 where the CPU has them)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        vec_t = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=1)

        def splat(x):
            return ir.Constant(vec_t, [x] * 64)

        low = builder.or_(v, splat(0x20))
        alpha = builder.icmp_unsigned("<", builder.sub(low, splat(0x61)), splat(26))
        digit = builder.icmp_unsigned("<", builder.sub(v, splat(0x30)), splat(10))
        bits = builder.or_(alpha, digit)
        return builder.bitcast(bits, ir.IntType(64))
    return types.uint64(array, index), codegen


@intrinsic
def _block_high_mask(typingctx, array, index):
    """Bit j set where byte ``index + j`` of a uint8 array is >= 0x80 (64 bytes, vector compare)."""
    def codegen(context, builder, signature, args):
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        ptr = builder.gep(ary.data, [args[1]])
        vec_t = ir.VectorType(ir.IntType(8), 64)
        v = builder.load(builder.bitcast(ptr, vec_t.as_pointer()), align=1)
        high = builder.icmp_signed("<", v, ir.Constant(vec_t, [0] * 64))
        return builder.bitcast(high, ir.IntType(64))
    return types.uint64(array, index), codegen


@intrinsic
def _ctz(typingctx, value):
    """Count trailing zeros of a nonzero integer."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return value(value), codegen


@njit(inline="always")
def _load8(data, p, n):
    """data[p:p + 8] as a little-endian uint64, zero past the end of the array."""
    if p + 8 <= n:
        return _load_u64(data, p)
    x = np.uint64(0)
    for j in range(min(8, n - p)):
        x |= np.uint64(data[p + j]) << np.uint64(8 * j)
    return x


@njit(inline="always")
def _word_bits(x):
    """Bit j set where byte j of x is an ASCII letter or digit (bytes of x must be < 0x80)."""
    y = x | _CASE
    alpha = (y + np.uint64(0x80 - 0x61) * _ONES) & ~(y + np.uint64(0x7F - 0x7A) * _ONES)
    digit = (x + np.uint64(0x80 - 0x30) * _ONES) & ~(x + np.uint64(0x7F - 0x39) * _ONES)
    w = ((alpha | digit) & _HIGH) >> np.uint64(7)
    return (w * _GATHER) >> np.uint64(56)


@njit(inline="always")
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


@njit(inline="always")
def _gap_separator(data, a, b, classes, sep_bytes, sep_offsets):
    """The separator that the gap data[a:b] between two tokens is: 0 for a whitespace run, q for the
    exact string of separator q, -1 for none. The gap is well-formed UTF-8 (the pass decoded it)."""
    j = a
    space = True
    while j < b:
        c = data[j]
        if c < 0x80:
            if not (c == 0x20 or 0x09 <= c <= 0x0D):
                space = False
                break
            j += 1
        else:
            cp, size = _utf8_at(data, j, b)
            if size == 0 or not classes[cp] & 2:
                space = False
                break
            j += size
    if space:
        return 0
    for q in range(1, len(sep_offsets) - 1):
        lo = sep_offsets[q]
        if sep_offsets[q + 1] - lo != b - a:
            continue
        same = True
        for x in range(b - a):
            if data[a + x] != sep_bytes[lo + x]:
                same = False
                break
        if same:
            return q
    return -1


@njit(inline="always")
def _lookup(data, s, length, key, lower, slot_packed, slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets):
    """The vocabulary id of the ASCII token data[s:s + length] whose key (first eight lower-cased bytes,
    little-endian) is ``key``, or -1."""
    mask = np.uint64(len(slot_len) - 1)
    slot = ((key ^ np.uint64(length)) * _MIX) >> t_shift
    while slot_len[slot] != 0:
        if slot_packed[slot] == key and slot_len[slot] == length:
            same = True
            if length > 8:
                o = vocab_offsets[slot_vid[slot]]
                for j in range(8, length):
                    if lower[data[s + j]] != vocab_bytes[o + j]:
                        same = False
                        break
            if same:
                return slot_vid[slot]
        slot = (slot + np.uint64(1)) & mask
    return -1


@njit(inline="always")
def _edge(edge_key, edge_next, e_shift, key):
    """The trie state an edge key leads to, or -1 (open-addressing lookup)."""
    mask = np.uint64(len(edge_key) - 1)
    slot = (np.uint64(key) * _MIX) >> e_shift
    while edge_key[slot] >= 0:
        if edge_key[slot] == key:
            return edge_next[slot]
        slot = (slot + np.uint64(1)) & mask
    return -1


@njit(inline="always")
def _step(data, vid, s, e, tok, r, st, active, fresh, hits, seen_term, classes, edge_key, edge_next, e_shift,
          state_term, n_seps, n_vocab, sep_bytes, sep_offsets):
    """Advance the trie by vocabulary token ``vid`` (data[s:e], token number ``tok`` of caption r) and
    record the terms it completes. ``st``: [open states, token number of the last vocabulary token,
    its end, terms found in the caption]; ``active`` holds the open states, ``fresh`` (17 long) is
    scratch space."""
    n_active = st[0] if st[1] == tok - 1 else 0       # states stay open only across adjacent tokens
    n_fresh = 0
    state = _edge(edge_key, edge_next, e_shift, vid)  # the root's edge: (0 * n_seps + 0) * n_vocab + vid
    if state >= 0:
        fresh[n_fresh] = state
        n_fresh += 1
    if n_active > 0:
        sep = _gap_separator(data, st[2], s, classes, sep_bytes, sep_offsets)
        if sep >= 0:
            for a in range(n_active):
                state = _edge(edge_key, edge_next, e_shift, (active[a] * n_seps + sep) * n_vocab + vid)
                if state >= 0:
                    fresh[n_fresh] = state
                    n_fresh += 1
    n_active = 0
    for a in range(n_fresh):
        state = fresh[a]
        term = state_term[state]
        if term >= 0 and seen_term[term] != r:
            seen_term[term] = r
            hits[st[3]] = term
            st[3] += 1
        if n_active < len(active):                   # a state of the deepest level has no children
            active[n_active] = state
            n_active += 1
    st[0] = n_active
    st[1] = tok
    st[2] = e


@njit(inline="always")
def _caption_ascii(data, lo, hi, r, st, active, fresh, hits, seen_term, lower, classes, bitmap, slot_packed, slot_len,
                   slot_vid, t_shift, vocab_bytes, vocab_offsets, edge_key, edge_next, e_shift, state_term, n_seps,
                   n_vocab, sep_bytes, sep_offsets):
    """Find the terms of the caption data[lo:hi] the fast way; False (nothing recorded) if it has a byte
    >= 0x80."""
    n = len(data)
    tok = 0
    p = lo
    while p < hi:
        span = min(64, hi - p)
        if p + 64 <= n:
            keep = np.uint64(0xFFFFFFFFFFFFFFFF) if span == 64 else (np.uint64(1) << np.uint64(span)) - np.uint64(1)
            if _block_high_mask(data, p) & keep:
                return False
            mask = _block_word_mask(data, p) & keep
        else:
            mask = np.uint64(0)
            high = np.uint64(0)
            for k in range(0, span, 8):
                x = _load8(data, p + k, n)
                high |= x
                mask |= _word_bits(x) << np.uint64(k)
            if high & _HIGH:                             # maybe a byte >= 0x80 (or one past the caption)
                for j in range(p, p + span):
                    if data[j] >= 0x80:
                        return False
            if span < 64:
                mask &= (np.uint64(1) << np.uint64(span)) - np.uint64(1)
        next_p = p + 64
        starts = mask & ~(mask << np.uint64(1))      # first byte of each token in the block
        ends = mask & ~(mask >> np.uint64(1))        # last byte of each (bit 63: maybe it runs on)
        while starts:
            s = np.int64(_ctz(starts))
            e = np.int64(_ctz(ends))
            starts &= starts - np.uint64(1)
            ends &= ends - np.uint64(1)
            length = e - s + 1
            start = p + s
            if e == 63:                              # the token runs on past this block
                q = p + 64
                while q < hi and lower[data[q]] > 1:
                    q += 1
                if q < hi and data[q] >= 0x80:
                    return False
                length = q - start
                next_p = q
            tok += 1
            key = _load8(data, start, n) | _CASE
            if length < 8:
                key &= (np.uint64(1) << np.uint64(8 * length)) - np.uint64(1)
            h = ((key ^ np.uint64(length)) * _MIX) >> np.uint64(64 - BITMAP_BITS)
            if not (bitmap[h >> np.uint64(6)] >> (h & np.uint64(63))) & np.uint64(1):
                continue
            vid = _lookup(data, start, length, key, lower, slot_packed, slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets)
            if vid >= 0:
                _step(data, vid, start, start + length, tok, r, st, active, fresh, hits, seen_term, classes, edge_key, edge_next, e_shift,
                      state_term, n_seps, n_vocab, sep_bytes, sep_offsets)
        p = next_p
    return True


@njit(inline="always")
def _caption_unicode(data, lo, hi, r, st, active, fresh, hits, seen_term, lower, classes, slot_packed, slot_len,
                     slot_vid, t_shift, vocab_bytes, vocab_offsets, edge_key, edge_next, e_shift, state_term, n_seps,
                     n_vocab, sep_bytes, sep_offsets):
    """Find the terms of the caption data[lo:hi] byte by byte (any UTF-8); False if it is not
    well-formed."""
    tok = 0
    i = lo
    while i < hi:
        low = lower[data[i]]
        if low == 0:
            i += 1
            continue
        if low == 1:
            cp, size = _utf8_at(data, i, hi)
            if size == 0:
                return False
            if not classes[cp] & 1:
                i += size
                continue
        s = i                                        # a token starts
        key = np.uint64(0)
        shift = 0
        ascii_only = True
        while i < hi:
            low = lower[data[i]]
            if low == 0:
                break
            if low == 1:
                cp, size = _utf8_at(data, i, hi)
                if size == 0:
                    return False
                if not classes[cp] & 1:
                    break
                ascii_only = False
                i += size
                continue
            if shift < 64:
                key |= np.uint64(low) << np.uint64(shift)
                shift += 8
            i += 1
        tok += 1
        if ascii_only:                               # a token with a non-ASCII character is no vocabulary
            vid = _lookup(data, s, i - s, key, lower, slot_packed, slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets)
            if vid >= 0:
                _step(data, vid, s, i, tok, r, st, active, fresh, hits, seen_term, classes, edge_key, edge_next, e_shift,
                      state_term, n_seps, n_vocab, sep_bytes, sep_offsets)
    return True


@njit(nogil=True, _nrt=False)
def token_pass(offsets, data, valid, defer, emit_all, defer_non_ascii, lower, classes, bitmap, vocab, trie, counting,
               scratch, out, first_row, n_pairs, n_cand):
    """One pass over the captions of an Arrow string array, from row ``first_row`` (see
    :mod:`clipprobe.captions.tokens`).

    ``counting`` is (word_ptr, word_idx, group_ptr, group_idx, n_word, n_group, n_both, taken, n_samples):
    a caption's terms are counted into ``n_word``, ``n_group`` and ``n_both`` (flat, word-major) unless
    ``emit_all``, ``defer[row]`` (when given), or ``defer_non_ascii`` and the caption has a byte >= 0x80:
    then they are written to ``out`` as (row, term) pairs. A caption that is not well-formed UTF-8 is
    neither (``flags`` bit 2; bit 1: a byte >= 0x80). ``out`` is (pairs (2, m), candidates (3, m') of
    (row, word, group), flags); ``n_pairs`` and ``n_cand`` of them are filled already. Returns (next row,
    n_pairs, n_cand): the next row is ``len(valid)`` when all are done, else the row that did not fit in
    ``out`` (call again with larger arrays from that row; nothing of it was counted).

    ``lower[byte]`` is 0 for ASCII bytes that are not letters or digits, 1 for bytes >= 0x80, else the
    lower-cased byte; ``classes[code point]`` has bit 1 for a letter, digit or combining mark and bit 2
    for whitespace. ``scratch`` is (seen_term, hits, seen_word, row_words, seen_group, row_groups,
    active (16), fresh (17), st (4), local_taken): per-batch work arrays, the seen_* filled with -1 and
    local_taken a copy of taken. Compiled without numba's reference counting (it allocates nothing), as
    the counts of the arrays handed to the inlined helpers cost more than the pass itself. Cached on
    disk by :func:`clipprobe.captions.tokens._kernel` in clipprobe's cache folder, never next to this file
    (:mod:`clipprobe._jitcache`).
    """
    slot_packed, slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets = vocab
    edge_key, edge_next, e_shift, state_term, n_seps, n_vocab, sep_bytes, sep_offsets = trie
    word_ptr, word_idx, group_ptr, group_idx, n_word, n_group, n_both, taken, n_samples = counting
    seen_term, hits, seen_word, row_words, seen_group, row_groups, active, fresh, st, local_taken = scratch
    pairs, cand, flags = out
    n = len(valid)
    n_groups = len(n_group)
    has_defer = len(defer) > 0
    n_p = n_pairs
    n_c = n_cand
    for r in range(first_row, n):
        if not valid[r]:
            continue
        lo = np.int64(offsets[r])
        hi = np.int64(offsets[r + 1])
        st[0] = 0
        st[1] = -2
        st[3] = 0
        flags[r] = 0
        if not _caption_ascii(data, lo, hi, r, st, active, fresh, hits, seen_term, lower, classes, bitmap, slot_packed,
                              slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets, edge_key, edge_next, e_shift,
                              state_term, n_seps, n_vocab, sep_bytes, sep_offsets):
            flags[r] = 1
            _forget(seen_term, hits, st[3])          # what the fast way found before the first byte >= 0x80
            st[0] = 0
            st[1] = -2
            st[3] = 0
            if not _caption_unicode(data, lo, hi, r, st, active, fresh, hits, seen_term, lower, classes, slot_packed,
                                    slot_len, slot_vid, t_shift, vocab_bytes, vocab_offsets, edge_key, edge_next,
                                    e_shift, state_term, n_seps, n_vocab, sep_bytes, sep_offsets):
                flags[r] = 3                         # Hyperscan scans this caption
                _forget(seen_term, hits, st[3])
                continue
        n_hits = st[3]
        if n_hits == 0:
            continue
        if emit_all or (has_defer and defer[r]) or (defer_non_ascii and flags[r]):
            if n_p + n_hits > pairs.shape[1]:
                _forget(seen_term, hits, n_hits)
                return r, n_p, n_c
            for h in range(n_hits):
                pairs[0, n_p] = r
                pairs[1, n_p] = hits[h]
                n_p += 1
            continue
        # count the caption: its distinct words and groups, and every word x group cell
        nw = 0
        ng = 0
        for h in range(n_hits):
            term = hits[h]
            for q in range(word_ptr[term], word_ptr[term + 1]):
                w = word_idx[q]
                if seen_word[w] != r:
                    seen_word[w] = r
                    row_words[nw] = w
                    nw += 1
            for q in range(group_ptr[term], group_ptr[term + 1]):
                g = group_idx[q]
                if seen_group[g] != r:
                    seen_group[g] = r
                    row_groups[ng] = g
                    ng += 1
        if n_samples > 0 and n_c + nw * ng > cand.shape[1]:
            _forget(seen_term, hits, n_hits)
            _forget(seen_word, row_words, nw)
            _forget(seen_group, row_groups, ng)
            return r, n_p, n_c
        for a in range(nw):
            n_word[row_words[a]] += 1
        for b in range(ng):
            n_group[row_groups[b]] += 1
        for a in range(nw):
            base = row_words[a] * n_groups
            for b in range(ng):
                cell = base + row_groups[b]
                n_both[cell] += 1
                if n_samples > 0 and local_taken[cell] < n_samples:
                    local_taken[cell] += 1
                    cand[0, n_c] = r
                    cand[1, n_c] = row_words[a]
                    cand[2, n_c] = row_groups[b]
                    n_c += 1
    return n, n_p, n_c


@njit(inline="always")
def _forget(seen, items, count):
    """Unmark the first ``count`` items of a caption (so that it can be scanned again)."""
    for h in range(count):
        seen[items[h]] = -1
