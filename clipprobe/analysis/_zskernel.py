"""The compiled scores pass of :mod:`clipprobe.analysis.zeroshot` (numba; imported only where it runs).

For each row ``x`` of a float16 or float32 embedding block and each class vector ``t_k``: the dot
product ``x . t_k`` and the squared norm ``x . x``, in float32. Every sum runs over the dimension in
index order, one row at a time, so a row's numbers do not depend on the block it is in, on the CPU's
vector width or on the number of threads: tiles of ``TILE`` rows are transposed into a buffer and the
vector lanes run across rows, never across the dimension. float16 values are widened with LLVM's
``fpext`` (one ``vcvtph2ps`` on CPUs with F16C), which is exact.

With 2 to 7 classes, runs of eight rows never go through a buffer (:func:`_rows8_half`,
:func:`_rows8_float`, LLVM IR written here): eight rows by eight dimensions are loaded, widened and
transposed in vector registers, and each class's sum and the norm are vector registers with one lane
per row, updated dimension by dimension in index order with a float32 product and a float32 sum (no
fused multiply-add, as in the tiles). The class count is a compile-time constant of each of these
kernels. The remaining rows (and other class counts) go through the tiles, whose transposition is also
done eight by eight in registers (:func:`_transpose8_half`, :func:`_transpose8_float`). Both only
reorder the work: every row's sums are the same operations in the same order.

:func:`logits` and :func:`finish` turn a block's dot products and squared norms into cosines, the
soft-max's shifted logits (exponentiated by numpy between the two, as
:func:`clipprobe.analysis.zeroshot.probabilities` does) and then the probabilities and hard labels, with
the same operations in the same order as the numpy functions of :mod:`clipprobe.analysis.zeroshot` (so
the same bits), without their temporary arrays.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

TILE = 64
# the shuffle network of an 8 x 8 float transposition (AVX's unpack, shuffle and 128-bit permute steps)
_LO = (0, 8, 1, 9, 4, 12, 5, 13)
_HI = (2, 10, 3, 11, 6, 14, 7, 15)
_A = (0, 1, 8, 9, 4, 5, 12, 13)
_B = (2, 3, 10, 11, 6, 7, 14, 15)
_L = (0, 1, 2, 3, 8, 9, 10, 11)
_H = (4, 5, 6, 7, 12, 13, 14, 15)
SEQUENTIAL_SUM_CLASSES = 7      # numpy sums a row of fewer than 8 values left to right (beyond: pairwise)
REGISTER_CLASSES = (2, 7)       # class counts whose eight-row sums run in registers (:func:`_rows8_half`)


@intrinsic
def _half_to_float(typingctx, bits):
    """The float32 value of float16 bits (uint16): exact."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


def _transpose8_codegen(half: bool):
    def codegen(context, builder, signature, args):
        src, src_step, dst, dst_step = args
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        f8 = ir.VectorType(ir.FloatType(), 8)
        src_p = builder.inttoptr(src, i8p)
        dst_p = builder.inttoptr(dst, i8p)
        r = []
        for i in range(8):
            p = builder.gep(src_p, [builder.mul(src_step, ir.Constant(src_step.type, i))])
            if half:
                v = builder.load(builder.bitcast(p, ir.VectorType(ir.IntType(16), 8).as_pointer()), align=2)
                v = builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), f8)
            else:
                v = builder.load(builder.bitcast(p, f8.as_pointer()), align=4)
            r.append(v)

        def sh(a, b, mask):
            return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 8), [ir.Constant(i32, m) for m in mask]))

        t = [sh(r[0], r[1], _LO), sh(r[0], r[1], _HI), sh(r[2], r[3], _LO), sh(r[2], r[3], _HI),
             sh(r[4], r[5], _LO), sh(r[4], r[5], _HI), sh(r[6], r[7], _LO), sh(r[6], r[7], _HI)]
        u = [sh(t[0], t[2], _A), sh(t[0], t[2], _B), sh(t[1], t[3], _A), sh(t[1], t[3], _B),
             sh(t[4], t[6], _A), sh(t[4], t[6], _B), sh(t[5], t[7], _A), sh(t[5], t[7], _B)]
        o = [sh(u[0], u[4], _L), sh(u[1], u[5], _L), sh(u[2], u[6], _L), sh(u[3], u[7], _L),
             sh(u[0], u[4], _H), sh(u[1], u[5], _H), sh(u[2], u[6], _H), sh(u[3], u[7], _H)]
        for c in range(8):
            p = builder.gep(dst_p, [builder.mul(dst_step, ir.Constant(dst_step.type, c))])
            builder.store(o[c], builder.bitcast(p, f8.as_pointer()), align=4)
        return context.get_dummy_value()
    return codegen


@intrinsic
def _transpose8_half(typingctx, src, src_step, dst, dst_step):
    """Eight rows of eight float16 values (bits) at address ``src`` (rows ``src_step`` bytes apart), widened
    to float32 and stored transposed at ``dst`` (rows ``dst_step`` bytes apart)."""
    return types.void(types.intp, types.intp, types.intp, types.intp), _transpose8_codegen(True)


@intrinsic
def _transpose8_float(typingctx, src, src_step, dst, dst_step):
    """As :func:`_transpose8_half`, for float32 values."""
    return types.void(types.intp, types.intp, types.intp, types.intp), _transpose8_codegen(False)


def _transpose_values(builder, r):
    """The 8 x 8 transposition of eight <8 x float> vectors (``r[i][c]`` -> ``out[c][i]``)."""
    i32 = ir.IntType(32)

    def sh(a, b, mask):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(i32, 8), [ir.Constant(i32, m) for m in mask]))

    t = [sh(r[0], r[1], _LO), sh(r[0], r[1], _HI), sh(r[2], r[3], _LO), sh(r[2], r[3], _HI),
         sh(r[4], r[5], _LO), sh(r[4], r[5], _HI), sh(r[6], r[7], _LO), sh(r[6], r[7], _HI)]
    u = [sh(t[0], t[2], _A), sh(t[0], t[2], _B), sh(t[1], t[3], _A), sh(t[1], t[3], _B),
         sh(t[4], t[6], _A), sh(t[4], t[6], _B), sh(t[5], t[7], _A), sh(t[5], t[7], _B)]
    return [sh(u[0], u[4], _L), sh(u[1], u[5], _L), sh(u[2], u[6], _L), sh(u[3], u[7], _L),
            sh(u[0], u[4], _H), sh(u[1], u[5], _H), sh(u[2], u[6], _H), sh(u[3], u[7], _H)]


def _rows8_codegen(n_classes: int, half: bool):
    """Eight rows' dot products with ``n_classes`` class vectors and squared norms, the accumulators in
    vector registers (one lane per row): the dimension walked in index order, ``acc = acc + x * w`` (a
    float32 product, then a float32 sum: no fused multiply-add), exactly as :func:`_tile_sums` does."""
    def codegen(context, builder, signature, args):
        src, src_step, d, t_addr, t_step, dots, dots_step, norms = args[:8]
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        f32 = ir.FloatType()
        f8 = ir.VectorType(f32, 8)
        intp = src_step.type
        size = 2 if half else 4
        src_p = builder.inttoptr(src, i8p)
        t_p = builder.inttoptr(t_addr, i8p)
        zero = ir.Constant(f8, [0.0] * 8)
        undef = ir.Constant(f8, ir.Undefined)
        accs = [cgutils.alloca_once_value(builder, zero) for _ in range(n_classes + 1)]

        def const(v):
            return ir.Constant(intp, v)

        def update(vecs, j_first):
            """vecs[c]: dimension j_first + c of the eight rows."""
            for c, v in enumerate(vecs):
                j = builder.add(j_first, const(c))
                for k in range(n_classes):
                    off = builder.add(builder.mul(t_step, const(k)), builder.mul(j, const(4)))
                    w = builder.load(builder.bitcast(builder.gep(t_p, [off]), f32.as_pointer()))
                    w = builder.shuffle_vector(builder.insert_element(undef, w, ir.Constant(i32, 0)), undef,
                                               ir.Constant(ir.VectorType(i32, 8), [ir.Constant(i32, 0)] * 8))
                    builder.store(builder.fadd(builder.load(accs[k]), builder.fmul(v, w)), accs[k])
                builder.store(builder.fadd(builder.load(accs[n_classes]), builder.fmul(v, v)), accs[n_classes])

        def address(row, j):
            return builder.gep(src_p, [builder.add(builder.mul(src_step, const(row)), builder.mul(j, const(size)))])

        d8 = builder.mul(builder.udiv(d, const(8)), const(8))
        with cgutils.for_range_slice(builder, const(0), d8, const(8), intp=intp) as (j0, _):
            rows = []
            for i in range(8):
                p = address(i, j0)
                if half:
                    v = builder.load(builder.bitcast(p, ir.VectorType(ir.IntType(16), 8).as_pointer()), align=2)
                    v = builder.fpext(builder.bitcast(v, ir.VectorType(ir.HalfType(), 8)), f8)
                else:
                    v = builder.load(builder.bitcast(p, f8.as_pointer()), align=4)
                rows.append(v)
            update(_transpose_values(builder, rows), j0)
        with cgutils.for_range_slice(builder, d8, d, const(1), intp=intp) as (j, _):
            v = zero
            for i in range(8):
                p = address(i, j)
                if half:
                    x = builder.load(builder.bitcast(p, ir.IntType(16).as_pointer()))
                    x = builder.fpext(builder.bitcast(x, ir.HalfType()), f32)
                else:
                    x = builder.load(builder.bitcast(p, f32.as_pointer()))
                v = builder.insert_element(v, x, ir.Constant(i32, i))
            update([v], j)
        dots_p = builder.inttoptr(dots, i8p)
        norms_p = builder.inttoptr(norms, i8p)
        for k in range(n_classes + 1):
            acc = builder.load(accs[k])
            for r in range(8):
                if k < n_classes:
                    p = builder.gep(dots_p, [builder.add(builder.mul(dots_step, const(r)), const(4 * k))])
                else:
                    p = builder.gep(norms_p, [const(4 * r)])
                builder.store(builder.extract_element(acc, ir.Constant(i32, r)), builder.bitcast(p, f32.as_pointer()))
        return context.get_dummy_value()
    return codegen


def _rows8_typer(half: bool):
    def typer(typingctx, src, src_step, d, t_addr, t_step, dots, dots_step, norms, n_classes):
        if not isinstance(n_classes, types.IntegerLiteral):
            return None
        sig = types.void(*([types.intp] * 8), n_classes)
        return sig, _rows8_codegen(n_classes.literal_value, half)
    return typer


_rows8_half = intrinsic(_rows8_typer(True))
_rows8_half.__doc__ = ("Eight rows of float16 bits at ``src`` (``src_step`` bytes apart), ``d`` dimensions, against "
                       "``n_classes`` (a literal) class vectors at ``t_addr``: dot products to ``dots``, squared norms "
                       "to ``norms`` (addresses; see :func:`_rows8_codegen`).")
_rows8_float = intrinsic(_rows8_typer(False))


def _make_eights(rows8):
    """The loop of the register kernel ``rows8`` (:func:`_rows8_half` or :func:`_rows8_float`)."""

    @njit(inline="always")
    def eights(x, t, dots, norms):
        """The rows of ``x`` in runs of eight, for 2..7 classes: the number of rows done (the rest go
        through the tiles)."""
        n, d = x.shape
        c = t.shape[0]
        if c < REGISTER_CLASSES[0] or c > REGISTER_CLASSES[1]:
            return 0
        n8 = n - n % 8
        xa, ta, da, na = x.ctypes.data, t.ctypes.data, dots.ctypes.data, norms.ctypes.data
        xs, ts, ds = x.strides[0], t.strides[0], dots.strides[0]
        for i0 in range(0, n8, 8):
            src, dst, nrm = xa + i0 * xs, da + i0 * ds, na + i0 * 4
            if c == 2:      # the class count must be a literal: one specialised kernel each
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 2)
            elif c == 3:
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 3)
            elif c == 4:
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 4)
            elif c == 5:
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 5)
            elif c == 6:
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 6)
            else:
                rows8(src, xs, d, ta, ts, dst, ds, nrm, 7)
        return n8

    return eights


_eights_half = _make_eights(_rows8_half)
_eights_float = _make_eights(_rows8_float)


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


@njit(inline="always")
def _fill_tile(x, buf, i0, m, half):
    """Rows ``i0 .. i0 + m`` of ``x`` into ``buf`` transposed (as float32), the columns of missing rows zero."""
    n, d = x.shape
    step = x.strides[0]
    size = x.itemsize
    d8 = d - d % 8
    m8 = m - m % 8
    xa = x.ctypes.data
    ba = buf.ctypes.data
    for r0 in range(0, m8, 8):
        src = xa + (i0 + r0) * step
        dst = ba + r0 * 4
        for j0 in range(0, d8, 8):
            if half:
                _transpose8_half(src + j0 * size, step, dst + j0 * TILE * 4, TILE * 4)
            else:
                _transpose8_float(src + j0 * size, step, dst + j0 * TILE * 4, TILE * 4)
    for r in range(m):
        for j in range(d8 if r < m8 else 0, d):
            if half:
                buf[j, r] = _half_to_float(x[i0 + r, j])
            else:
                buf[j, r] = x[i0 + r, j]
    buf[:, m:] = 0


@njit(nogil=True)
def scores_half(x, t, dots, norms):
    """``x``: (n, d) uint16, the bits of float16 embeddings (C-contiguous rows)."""
    n, d = x.shape
    buf = np.zeros((d, TILE), np.float32)
    acc = np.empty((t.shape[0] + 1, TILE), np.float32)
    for i0 in range(_eights_half(x, t, dots, norms), n, TILE):
        m = min(TILE, n - i0)
        _fill_tile(x, buf, i0, m, True)
        _tile_sums(buf, acc, t, dots, norms, i0, m)


@njit(nogil=True)
def scores_float(x, t, dots, norms):
    """``x``: (n, d) float32 embeddings (C-contiguous rows)."""
    n, d = x.shape
    buf = np.zeros((d, TILE), np.float32)
    acc = np.empty((t.shape[0] + 1, TILE), np.float32)
    for i0 in range(_eights_float(x, t, dots, norms), n, TILE):
        m = min(TILE, n - i0)
        _fill_tile(x, buf, i0, m, False)
        _tile_sums(buf, acc, t, dots, norms, i0, m)


@njit(nogil=True)
def logits(dots, norms, scale, cos, z):
    """``cos`` (n, C) float32 and ``z`` (n, C) float64, as :func:`clipprobe.analysis.zeroshot.class_scores`
    and the first steps of :func:`~clipprobe.analysis.zeroshot.probabilities` compute them: the norm
    ``sqrt(norms)`` in float32, a row valid when its norm is finite and positive and its dot products are
    finite (else cosines NaN), ``cos = dots / norm``; ``z = float64(cos) * scale - max``."""
    n, c = dots.shape
    for i in range(n):
        norm = np.sqrt(norms[i])
        ok = np.isfinite(norm) and norm > 0
        for k in range(c):
            if not np.isfinite(dots[i, k]):
                ok = False
        for k in range(c):
            cos[i, k] = dots[i, k] / norm if ok else np.float32(np.nan)
        top = np.float64(cos[i, 0]) * scale
        for k in range(c):
            z[i, k] = np.float64(cos[i, k]) * scale
            if z[i, k] > top or np.isnan(z[i, k]):       # numpy's max: NaN wins
                top = z[i, k]
                if np.isnan(top):
                    break
        for k in range(c):
            z[i, k] = np.float64(cos[i, k]) * scale - top


@njit(nogil=True)
def finish(e, cos, n_groups, threshold, probs, codes):
    """From ``e = exp(z)`` (:func:`logits`): ``probs = float32(e / sum(e))`` (the sum left to right, as
    numpy sums fewer than 8 values) and the hard labels of
    :func:`~clipprobe.analysis.zeroshot.hard_labels` (``threshold`` a float32: numpy compares float32
    probabilities with a Python float in float32)."""
    n, c = e.shape
    for i in range(n):
        s = e[i, 0]
        for k in range(1, c):
            s += e[i, k]
        for k in range(c):
            probs[i, k] = np.float32(e[i, k] / s)
        valid = True
        for k in range(c):
            if not np.isfinite(cos[i, k]):
                valid = False
        if not valid:
            codes[i] = -3
            continue
        best = 0
        for k in range(1, c):
            if cos[i, k] > cos[i, best]:
                best = k
        if best >= n_groups:
            codes[i] = -1
        elif probs[i, best] < threshold:
            codes[i] = -2
        else:
            codes[i] = best


_CACHED_IN: list = []      # the cache folder the kernels were last pointed at (once per process and folder)


def enable_cache() -> None:
    """Keep the compiled kernels in clipprobe's cache folder (see :mod:`clipprobe._jitcache`); a call
    after the first with the same folder does nothing (the pass calls it for every block)."""
    from clipprobe._jitcache import cache_dir
    from clipprobe._jitcache import enable_cache as cache

    where = str(cache_dir())
    if _CACHED_IN == [where]:
        return
    for k in (scores_half, scores_float, logits, finish):
        cache(k)
    _CACHED_IN[:] = [where]


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
