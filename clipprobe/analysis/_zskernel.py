"""The compiled scores pass of :mod:`clipprobe.analysis.zeroshot` (numba; imported only where it runs).

For each row ``x`` of a float16 or float32 embedding block and each class vector ``t_k``: the dot
product ``x . t_k`` and the squared norm ``x . x``, in float32. Every sum runs over the dimension in
index order, one row at a time, so a row's numbers do not depend on the block it is in, on the CPU's
vector width or on the number of threads: tiles of ``TILE`` rows are transposed into a buffer and the
vector lanes run across rows, never across the dimension. float16 values are widened with LLVM's
``fpext`` (one ``vcvtph2ps`` on CPUs with F16C), which is exact.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

TILE = 64


@intrinsic
def _half_to_float(typingctx, bits):
    """The float32 value of float16 bits (uint16): exact."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@njit(inline="always")
def _tile_sums(buf, acc, t, dots, norms, i0, m):
    """Dot products and squared norms of the ``m`` rows of a transposed tile, each summed in index order."""
    d = buf.shape[0]
    c = t.shape[0]
    acc[:, :] = 0
    for j in range(d):
        for k in range(c):
            w = t[k, j]
            for r in range(TILE):
                acc[k, r] += buf[j, r] * w
        for r in range(TILE):
            acc[c, r] += buf[j, r] * buf[j, r]
    for r in range(m):
        for k in range(c):
            dots[i0 + r, k] = acc[k, r]
        norms[i0 + r] = acc[c, r]


@njit(nogil=True)
def scores_half(x, t, dots, norms):
    """``x``: (n, d) uint16, the bits of float16 embeddings."""
    n, d = x.shape
    buf = np.zeros((d, TILE), np.float32)
    acc = np.empty((t.shape[0] + 1, TILE), np.float32)
    for i0 in range(0, n, TILE):
        m = min(TILE, n - i0)
        buf[:, m:] = 0
        for r in range(m):
            for j in range(d):
                buf[j, r] = _half_to_float(x[i0 + r, j])
        _tile_sums(buf, acc, t, dots, norms, i0, m)


@njit(nogil=True)
def scores_float(x, t, dots, norms):
    """``x``: (n, d) float32 embeddings."""
    n, d = x.shape
    buf = np.zeros((d, TILE), np.float32)
    acc = np.empty((t.shape[0] + 1, TILE), np.float32)
    for i0 in range(0, n, TILE):
        m = min(TILE, n - i0)
        buf[:, m:] = 0
        for r in range(m):
            for j in range(d):
                buf[j, r] = x[i0 + r, j]
        _tile_sums(buf, acc, t, dots, norms, i0, m)


def enable_cache() -> None:
    """Keep the compiled kernels in clipprobe's cache folder (see :mod:`clipprobe._jitcache`)."""
    from clipprobe._jitcache import enable_cache as cache

    for k in (scores_half, scores_float):
        cache(k)


def scores(x, t, dots, norms, threads: int = 1) -> None:
    """Fill ``dots`` (n, C) and ``norms`` (n,) float32 for ``x`` (n, d) float16/float32 and ``t`` (C, d) float32.

    With ``threads > 1`` the rows are cut into that many runs of whole tiles, one per thread (the
    kernels release the GIL); a row's numbers are the same either way."""
    from concurrent.futures import ThreadPoolExecutor

    kernel, data = (scores_half, x.view(np.uint16)) if x.dtype == np.float16 else (scores_float, x)
    n = data.shape[0]
    n_tiles = -(-n // TILE)
    threads = max(1, min(int(threads), n_tiles))
    if threads == 1:
        kernel(data, t, dots, norms)
        return
    per = -(-n_tiles // threads) * TILE
    runs = [(a, min(a + per, n)) for a in range(0, n, per)]
    with ThreadPoolExecutor(len(runs)) as pool:
        for f in [pool.submit(kernel, data[a:b], t, dots[a:b], norms[a:b]) for a, b in runs]:
            f.result()
