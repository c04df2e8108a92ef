"""The compiled permutation pass of :mod:`clipprobe.analysis.eat` (numba; imported only where it runs).

One call counts, for every test of one group (tests with the same ``N`` pooled values and ``k`` of them in
X), how many of ``n`` random ``k``-subsets give a statistic at least as extreme as the observed one. The
random numbers come from xoshiro256++ (Blackman and Vigna), whose 256-bit state the caller seeds from a
``numpy.random.SeedSequence``: the draws of a block depend on that state only.

Two exact ways to draw a uniform ``k``-subset of ``range(N)``, picked by the caller from ``(N, k)``:

* ``METHOD_BITS``: one random bit per stimulus (set with probability ``numer / 2^depth``, from ``depth`` raw
  64-bit words per 64 stimuli: 1/2 from one word, 1/4 or 3/4 from two, ...), then, while the number ``c``
  of set bits differs from ``k``, a uniform random position is drawn and cleared if it is set (``c > k``)
  or set if it is clear (``c < k``); other positions are drawn again. Every step treats the ``N``
  positions alike, so the law of the final subset is invariant under permutations of the stimuli: uniform
  over ``k``-subsets. With ``k`` near ``N / 2``: ``N / 64`` words and about ``0.4 sqrt(N)`` corrections
  (twice as many positions drawn) per subset, without a branch that depends on the bits;
* ``METHOD_DRAW``: the ``s = min(k, N - k)`` members of the smaller side drawn one by one, uniformly among
  the positions not yet drawn (rejection against a stamp per position). Cheap when ``s`` is small.

Uniform integers below ``N`` come from 32-bit halves of the raw words (Lemire's multiply-and-shift with
its exact rejection). Partitions are made ``BATCH`` at a time, then summed. Few tests: test by test, the
values in rows; with ``METHOD_BITS`` each byte of a subset's bits selects eight values for one masked
vector add (:func:`_masked_sum`). Many tests (``tiled``): the members of the smaller side are listed and
each adds one row of eight tests' values (:func:`_tile_sum`), ``TILE_BATCH`` partitions per pass over
eight tests, so that what is read stays in the first-level cache. Every sum is added in an order fixed
by the code (not by the CPU's vector width or the number of threads).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

METHOD_BITS = 0
METHOD_DRAW = 1
ALT_GREATER = 0
ALT_LESS = 1
ALT_TWO_SIDED = 2
BATCH = 256  # partitions drawn before they are summed
TILE_BATCH = 16  # partitions summed per pass over eight tests' values (tiled layout)

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)
_ONE = np.uint64(1)
_LOW6 = np.uint64(63)
_SIX = np.uint64(6)


@intrinsic
def _popcount(typingctx, value):
    """Number of set bits of a uint64."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])
    return types.uint64(types.uint64), codegen


@intrinsic
def _masked_sum(typingctx, values, v_start, words, w_start, n_words):
    """Sum of ``values[v_start + 64 w + j]`` over the set bits ``j`` of ``words[w_start + w]``, ``w < n_words``.

    Each byte of a word selects eight consecutive values (bit ``j`` of the byte: value ``j``), added into one
    of eight 8-lane accumulators; the accumulators and then their lanes are added in a fixed order, so the
    result does not depend on the CPU's vector width. ``values`` must hold ``64 n_words`` values from
    ``v_start`` (padded with zeros past the last stimulus).
    """
    sig = types.float64(values, types.intp, words, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        vals = context.make_array(signature.args[0])(context, builder, args[0])
        wds = context.make_array(signature.args[2])(context, builder, args[2])
        vptr = builder.gep(vals.data, [args[1]])
        wptr = builder.gep(wds.data, [args[3]])
        dbl = ir.DoubleType()
        vec = ir.VectorType(dbl, 8)
        mask_t = ir.VectorType(ir.IntType(1), 8)
        i64 = ir.IntType(64)
        intp = context.get_value_type(types.intp)
        zero = ir.Constant(vec, [0.0] * 8)
        accs = [cgutils.alloca_once(builder, vec) for _ in range(8)]
        for acc in accs:
            builder.store(zero, acc)
        with cgutils.for_range(builder, args[4]) as loop:
            w = builder.load(builder.gep(wptr, [loop.index]))
            base = builder.gep(vptr, [builder.mul(loop.index, ir.Constant(intp, 64))])
            for b in range(8):
                byte = builder.trunc(builder.lshr(w, ir.Constant(i64, 8 * b)), ir.IntType(8))
                mask = builder.bitcast(byte, mask_t)
                ptr = builder.bitcast(builder.gep(base, [ir.Constant(intp, 8 * b)]), vec.as_pointer())
                v = builder.load(ptr, align=8)
                acc = builder.load(accs[b])
                builder.store(builder.fadd(acc, builder.select(mask, v, zero)), accs[b])
        a = [builder.load(acc) for acc in accs]
        while len(a) > 1:
            a = [builder.fadd(a[i], a[i + 1]) for i in range(0, len(a), 2)]
        lanes = [builder.extract_element(a[0], ir.Constant(ir.IntType(32), i)) for i in range(8)]
        while len(lanes) > 1:
            lanes = [builder.fadd(lanes[i], lanes[i + 1]) for i in range(0, len(lanes), 2)]
        return lanes[0]

    return sig, codegen


@intrinsic
def _ctz(typingctx, value):
    """Count trailing zeros of a nonzero uint64."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
    return types.uint64(types.uint64), codegen


@intrinsic
def _tile_sum(typingctx, values, row_len, col, positions, p_start, count, out):
    """``out[l] = sum_j values[positions[p_start + j] * row_len + col + l]`` for the eight lanes ``l``, ``j <
    count``: one 8-lane vector add per position, into four accumulators (position ``j`` into ``j mod 4``
    for ``j < 4 (count // 4)``, the rest into the first), added as ``(a0 + a1) + (a2 + a3)``. ``values``
    must hold eight values from ``col`` in every row."""
    sig = types.void(values, types.intp, types.intp, positions, types.intp, types.intp, out)

    def codegen(context, builder, signature, args):
        vals = context.make_array(signature.args[0])(context, builder, args[0])
        pos = context.make_array(signature.args[3])(context, builder, args[3])
        res = context.make_array(signature.args[6])(context, builder, args[6])
        intp = args[1].type
        vec = ir.VectorType(ir.DoubleType(), 8)
        base = builder.gep(vals.data, [args[2]])
        pptr = builder.gep(pos.data, [args[4]])
        accs = [cgutils.alloca_once(builder, vec) for _ in range(4)]
        for acc in accs:
            builder.store(ir.Constant(vec, [0.0] * 8), acc)

        def add(j, acc):
            row = builder.load(builder.gep(pptr, [j]))
            if row.type.width < intp.width:
                row = builder.sext(row, intp)
            ptr = builder.bitcast(builder.gep(base, [builder.mul(row, args[1])]), vec.as_pointer())
            builder.store(builder.fadd(builder.load(acc), builder.load(ptr, align=8)), acc)

        four = ir.Constant(intp, 4)
        quads = builder.udiv(args[5], four)
        with cgutils.for_range(builder, quads) as loop:
            j0 = builder.mul(loop.index, four)
            for a in range(4):
                add(builder.add(j0, ir.Constant(intp, a)), accs[a])
        with cgutils.for_range(builder, builder.sub(args[5], builder.mul(quads, four))) as loop:
            add(builder.add(builder.mul(quads, four), loop.index), accs[0])
        a = [builder.load(acc) for acc in accs]
        total = builder.fadd(builder.fadd(a[0], a[1]), builder.fadd(a[2], a[3]))
        builder.store(total, builder.bitcast(res.data, vec.as_pointer()), align=8)
        return context.get_dummy_value()

    return sig, codegen


@njit(inline="always")
def _rotl(x, r):
    return (x << np.uint64(r)) | (x >> np.uint64(64 - r))


@njit(inline="always")
def _next(s0, s1, s2, s3):
    """xoshiro256++: the next raw 64-bit output and the new state."""
    out = _rotl(s0 + s3, 23) + s0
    t = s1 << np.uint64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    return s0, s1, s2, s3, out


@njit(nogil=True)
def xoshiro_raw(state, n):
    """``n`` raw outputs of xoshiro256++ from ``state`` (uint64[4]); for tests against a reference."""
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        s0, s1, s2, s3, out[i] = _next(s0, s1, s2, s3)
    return out


@njit(inline="always")
def _hit(stat, threshold, center, alternative):
    """Whether a partition counts: ``threshold`` is ``observed - tol`` (greater), ``observed + tol`` (less)
    or ``|observed - center| - tol`` (two-sided)."""
    if alternative == ALT_GREATER:
        return stat >= threshold
    if alternative == ALT_LESS:
        return stat <= threshold
    return abs(stat - center) >= threshold


@njit(nogil=True)
def random_counts(state, n, N, k, method, depth, numer, values, tiled, total, center, threshold, alternative,
                  thresh32):
    """Counts, per test, of ``n`` random ``k``-subsets whose statistic is as extreme as the observed one.

    ``state``: uint64[4], the generator's seed state (not all zero). ``method``: ``METHOD_BITS`` (initial
    bits set with probability ``numer / 2^depth``, ``numer`` odd) or ``METHOD_DRAW``. ``values``: the T
    tests' pooled values, either as rows, (T, 64 W) float64 padded with zeros (``W = ceil(N / 64)``), or
    ``tiled``: (N ceil(T / 8), 8), tests ``8 u`` to ``8 u + 7`` in rows ``N u`` to ``N u + N - 1``, a test per
    column (zeros past the last test), for many tests: eight at a time per vector add.
    ``total``: (T,) sums of the values. ``threshold``, ``center``: (T,) per test, see :func:`_hit`.
    ``thresh32``: ``2^32 mod N``, the rejection bound of the bounded draws. The partitions drawn do not
    depend on ``values`` or ``tiled``.
    """
    T = total.shape[0]
    W = (N + 63) // 64
    Nu = np.uint64(N)
    rem = N - 64 * (W - 1)
    last = np.uint64(0xFFFFFFFFFFFFFFFF) if rem == 64 else (_ONE << np.uint64(rem)) - _ONE
    s0, s1, s2, s3 = state[0], state[1], state[2], state[3]
    counts = np.zeros(T, dtype=np.int64)
    side = min(k, N - k)
    sampled_x = side == k
    masks = np.zeros((BATCH if method == METHOD_BITS else 1, W), dtype=np.uint64)
    positions = np.zeros((BATCH if tiled or method == METHOD_DRAW else 1, side), dtype=np.int32)
    stamp = np.full(N, -1, dtype=np.int64)
    lanes = np.zeros(8)
    done = 0
    while done < n:
        m = min(BATCH, n - done)
        if method == METHOD_BITS:
            for i in range(m):
                c = 0
                for w in range(W):
                    # bits with probability numer / 2^depth: U < p compared digit by digit, 64 at once
                    x = np.uint64(0)
                    for j in range(depth):
                        s0, s1, s2, s3, y = _next(s0, s1, s2, s3)
                        x = (y | x) if (numer >> j) & 1 else (y & x)
                    if w == W - 1:
                        x &= last
                    masks[i, w] = x
                    c += np.int64(_popcount(x))
                # branch-free steps: only the loop's exit depends on the random bits
                remove = np.uint64(c > k)
                step = -1 if c > k else 1
                while c != k:
                    s0, s1, s2, s3, r = _next(s0, s1, s2, s3)
                    for h in range(2):
                        prod = ((r >> _S32) if h else (r & _M32)) * Nu
                        pos = prod >> _S32
                        wi = np.int64(pos >> _SIX)
                        sh = pos & _LOW6
                        x = masks[i, wi]
                        flip = (((x >> sh) & _ONE) ^ remove ^ _ONE) & np.uint64((prod & _M32) >= thresh32) \
                            & np.uint64(c != k)
                        masks[i, wi] = x ^ (flip << sh)
                        c += step * np.int64(flip)
                if tiled:  # the members of the smaller side, in increasing order
                    got = 0
                    for w in range(W):
                        x = masks[i, w] if sampled_x else ~masks[i, w] & (last if w == W - 1 else ~np.uint64(0))
                        while x:
                            positions[i, got] = np.int32(64 * w + np.int64(_ctz(x)))
                            got += 1
                            x &= x - _ONE
        else:
            for i in range(m):
                tag = done + i
                got = 0
                while got < side:
                    s0, s1, s2, s3, r = _next(s0, s1, s2, s3)
                    for h in range(2):
                        prod = ((r >> _S32) if h else (r & _M32)) * Nu
                        if (prod & _M32) < thresh32:
                            continue
                        pos = np.int64(prod >> _S32)
                        if stamp[pos] != tag:
                            stamp[pos] = tag
                            positions[i, got] = np.int32(pos)
                            got += 1
                            if got == side:
                                break
        if tiled:
            for lo in range(0, m, TILE_BATCH):  # a few partitions' members and eight tests' values: in L1
                for t0 in range(0, T, 8):
                    for i in range(lo, min(m, lo + TILE_BATCH)):
                        _tile_sum(values, 8, t0 * N, positions, i * side, side, lanes)
                        for lane in range(min(8, T - t0)):
                            t = t0 + lane
                            stat = lanes[lane] if sampled_x else total[t] - lanes[lane]
                            counts[t] += _hit(stat, threshold[t], center[t], alternative)
        else:
            for t in range(T):
                thr = threshold[t]
                cen = center[t]
                tot = total[t]
                hits = 0
                if method == METHOD_BITS:
                    for i in range(m):
                        stat = _masked_sum(values, t * 64 * W, masks, i * W, W)
                        hits += _hit(stat, thr, cen, alternative)
                else:
                    row = values[t]
                    for i in range(m):
                        acc = 0.0
                        for j in range(side):
                            acc += row[positions[i, j]]
                        stat = acc if sampled_x else tot - acc
                        hits += _hit(stat, thr, cen, alternative)
                counts[t] += hits
        done += m
    return counts


@njit(nogil=True)
def exact_counts(first, n, N, values, total, center, threshold, alternative, sampled_x):
    """Counts, per test, over ``n`` consecutive ``s``-subsets in lexicographic order from ``first`` (int64[s]).

    ``values``: (T, >= N) float64; the statistic is the subset's sum (``sampled_x``) or the total minus it.
    """
    T = values.shape[0]
    s = first.shape[0]
    combo = first.copy()
    counts = np.zeros(T, dtype=np.int64)
    for done in range(n):
        if done:
            i = s - 1
            while combo[i] == N - s + i:
                i -= 1
            combo[i] += 1
            for j in range(i + 1, s):
                combo[j] = combo[j - 1] + 1
        for t in range(T):
            acc = 0.0
            for j in range(s):
                acc += values[t, combo[j]]
            stat = acc if sampled_x else total[t] - acc
            counts[t] += _hit(stat, threshold[t], center[t], alternative)
    return counts
