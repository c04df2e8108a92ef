"""The compiled string hash of :func:`clipprobe.analysis.keepflags.hash_strings` (numba; imported only where it
runs). The same definition as the numpy path, string by string: the bytes as 8-byte little-endian words
(the last one zero-padded), ``acc = sum_j mix(w_j ^ mix(j))`` modulo 2**64, ``mix(acc ^ mix(L ^ LEN_TAG))``
with ``mix`` splitmix64's finaliser. Unsigned 64-bit arithmetic throughout (it wraps, on every CPU).
"""

from __future__ import annotations

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_B1, _B2, _B3, _B4, _B5, _B6, _B7 = (np.uint64(8 * b) for b in range(1, 8))


@njit(nogil=True, cache=False)
def _mix(x):
    z = x + _GOLDEN
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(nogil=True, cache=False)
def hash_block(off, buf, len_tag, out):
    """``out[i]`` = the hash of ``buf[off[i]:off[i + 1]]`` (``off`` int64, ``buf`` uint8, ``out`` uint64).
    A whole word is assembled from its eight bytes in one expression (compiled to one load), the last,
    partial one byte by byte."""
    for i in range(off.size - 1):
        start = off[i]
        end = off[i + 1]
        acc = np.uint64(0)
        j = np.uint64(0)
        p = start
        while p + 8 <= end:
            word = (np.uint64(buf[p]) | (np.uint64(buf[p + 1]) << _B1) | (np.uint64(buf[p + 2]) << _B2)
                    | (np.uint64(buf[p + 3]) << _B3) | (np.uint64(buf[p + 4]) << _B4)
                    | (np.uint64(buf[p + 5]) << _B5) | (np.uint64(buf[p + 6]) << _B6)
                    | (np.uint64(buf[p + 7]) << _B7))
            acc += _mix(word ^ _mix(j))
            j += np.uint64(1)
            p += 8
        if p < end:
            word = np.uint64(0)
            for b in range(end - p):
                word |= np.uint64(buf[p + b]) << np.uint64(8 * b)
            acc += _mix(word ^ _mix(j))
        out[i] = _mix(acc ^ _mix(np.uint64(end - start) ^ len_tag))
