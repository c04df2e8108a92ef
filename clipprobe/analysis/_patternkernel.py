"""The compiled core of the caption scan's pattern encoder (:func:`clipprobe.captions.indicators.encode_chunk`;
numba, imported only where it runs): a chunk's captions' bit keys set from their (row, column) indicator
pairs, and the distinct keys found in one pass with an open-addressing hash table whose slots are
compared word by word (so two keys with one hash are never merged: no collision check is needed after).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_C1 = np.uint64(0xFF51AFD7ED558CCD)         # MurmurHash3's 64-bit finaliser (fmix64): every input bit moves
_C2 = np.uint64(0xC4CEB9FE1A85EC53)         # about half of the output bits, the low ones (the slot) included
_S33 = np.uint64(33)
_ONE = np.uint64(1)
_LOW6 = np.int64(63)


@njit(nogil=True, cache=False)
def _fmix(h):
    h = (h ^ (h >> _S33)) * _C1
    h = (h ^ (h >> _S33)) * _C2
    return h ^ (h >> _S33)


@njit(nogil=True, cache=False)
def distinct_keys(rows, cols, keys, inv, first, count):
    """Set ``keys[rows[i], cols[i] // 64]``'s bit ``cols[i] % 64`` for every pair (``keys``: ``(n, W)`` uint64,
    zero on entry; ``rows``, ``cols`` int64 within it, checked by the caller), then number the distinct
    non-zero rows of ``keys`` in the order of their first caption: ``inv[r]`` each row's number (-1 for an
    all-zero row), ``first[d]`` the first row of number ``d`` and ``count[d]`` its rows. Returns how many."""
    n, n_words = keys.shape
    for i in range(rows.size):
        c = cols[i]
        keys[rows[i], c >> 6] |= _ONE << np.uint64(c & _LOW6)
    marked = 0
    for r in range(n):
        for w in range(n_words):
            if keys[r, w] != 0:
                marked += 1
                break
    size = 16
    while size < 2 * marked:
        size *= 2
    mask = np.uint64(size - 1)
    slots = np.full(size, -1, np.int64)
    n_distinct = 0
    for r in range(n):
        h = np.uint64(0)
        nonzero = False
        for w in range(n_words):
            v = keys[r, w]
            if v != 0:
                nonzero = True
            h = _fmix(h ^ v)
        if not nonzero:
            inv[r] = -1
            continue
        s = h & mask
        while True:
            d = slots[s]
            if d < 0:
                slots[s] = n_distinct
                first[n_distinct] = r
                count[n_distinct] = 1
                inv[r] = n_distinct
                n_distinct += 1
                break
            f = first[d]
            same = True
            for w in range(n_words):
                if keys[f, w] != keys[r, w]:
                    same = False
                    break
            if same:
                count[d] += 1
                inv[r] = d
                break
            s = (s + _ONE) & mask
    return n_distinct
