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
from numba import njit, prange
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
def _load_half(x, i, j):
    return _half_to_float(x[i, j])


@njit(inline="always")
def _load_float(x, i, j):
    return x[i, j]


def _make(load):
    @njit(parallel=True)
    def kernel(x, t, dots, norms):
        n, d = x.shape
        c = t.shape[0]
        n_tiles = (n + TILE - 1) // TILE
        for tile in prange(n_tiles):
            i0 = tile * TILE
            m = min(TILE, n - i0)
            buf = np.zeros((d, TILE), np.float32)
            acc = np.zeros((c + 1, TILE), np.float32)
            for r in range(m):
                for j in range(d):
                    buf[j, r] = load(x, i0 + r, j)
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
    return kernel


scores_half = _make(_load_half)
scores_float = _make(_load_float)


def enable_cache() -> None:
    """Keep the compiled kernels in clipprobe's cache folder (see :mod:`clipprobe._jitcache`)."""
    from clipprobe._jitcache import enable_cache as cache

    for k in (scores_half, scores_float):
        cache(k)


def scores(x, t, dots, norms, threads: int = 1) -> None:
    """Fill ``dots`` (n, C) and ``norms`` (n,) float32 for ``x`` (n, d) float16/float32 and ``t`` (C, d) float32."""
    import numba

    previous = numba.get_num_threads()
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
    try:
        if x.dtype == np.float16:
            scores_half(x.view(np.uint16), t, dots, norms)
        else:
            scores_float(x, t, dots, norms)
    finally:
        numba.set_num_threads(previous)
