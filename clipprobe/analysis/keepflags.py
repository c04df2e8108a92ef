"""Keep flags: which examples of each pattern a model is trained on, from M4's keep probabilities.

A model is trained on a kept set, not on ``q``. A pattern (row of the fitted table) of ``n_p``
examples with keep probability ``q_p`` keeps ``k_p`` of them, ``q_p n_p`` rounded down or up
(:func:`flag_counts`: systematic rounding in blocks of the same groups, so the keep rate and each
combination of groups are met within one example): the ``k_p`` first in the order of their rank key (a
64-bit hash of the example's content, mixed with the seed; :func:`rank_keys`), ties (examples with the
same content) by their position (file ordinal << 40 | row). So the kept set meets every constraint that
``q`` meets, up to one example per pattern, and the same examples keep the same flags wherever their
files are. Over many chunks and workers the first dropped example of a pattern is found in two light
passes over the stored hashes: a histogram of the rank keys per pattern (:func:`rank_histogram`, merged
by :func:`rank_boundaries`), then the examples in each pattern's boundary bucket
(:func:`rank_candidates`, :func:`rank_thresholds`); :func:`rank_keep` sets the flags.
:func:`assign_keep` runs the same functions on data held in memory.

Content hashes (:func:`hash_strings`, :func:`combine_hashes`, :func:`content_hashes`) are pure 64-bit
integer arithmetic, the same on every CPU; the scan computes them from Arrow buffers
(:mod:`clipprobe.captions.indicators`). The kept set's constraint values are
:meth:`~clipprobe.analysis.balance.BalanceSolution.kept_residuals`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipprobe.analysis.balance import MSG_WEIGHTS
from clipprobe.analysis.patterns import _group_rows, table_lookup
from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from clipprobe.analysis.balance import BalanceSolution
    from clipprobe.analysis.patterns import PatternTable

MSG_UNKNOWN_PATTERN = ("{n} example(s) have (s, y) patterns that are not in the fitted table (first: row {row}); "
                       "the data differ from the data the weights were fitted on")
MSG_KEYS = "keys: expected {n} integer keys (one per example), got {problem}"
MSG_RANK_COUNTS = ("pattern {pattern}: {got} examples where the fit counted {want}; the data changed since its "
                   "patterns were counted")
MSG_ASSIGN_ALL = ("assign_keep: got {n} examples, not the {fitted} the solution was fitted on (each pattern keeps "
                  "q x count of all its examples, rounded)")


class UnknownPatterns(DataError):
    """Examples whose ``(s, y)`` pattern is not in the fitted table (:func:`fitted_rows`): the data are not
    the data the keep probabilities were fitted on."""


_GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB
_LEN_TAG = 0x6C656E67746821C5       # mixed with a string's byte length
_NULL_TAG = 0x6E756C6C2D76616C      # the hash of a null value is _mix64(_NULL_TAG)
_ROW_TAG = 0x726F772D68617368       # start of the fold over a row's columns
_HASH_BLOCK_BYTES = 1 << 20         # strings hashed a block of about this many bytes at a time
POSITION_ROW_BITS = 40              # position = file ordinal << 40 | row


def _mix64(x) -> "np.ndarray":
    """splitmix64's finaliser, vectorised (uint64 arithmetic wraps modulo 2**64)."""
    import numpy as np

    with np.errstate(over="ignore"):  # numpy scalars warn on the intended wrap-around
        z = np.asarray(x, np.uint64) + np.uint64(_GOLDEN)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(_M1)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(_M2)
        return z ^ (z >> np.uint64(31))


def hash_strings(offsets, data, valid=None) -> "np.ndarray":
    """``(n,)`` uint64 hashes of ``n`` byte strings held as Arrow holds them: string ``i`` is
    ``data[offsets[i]:offsets[i + 1]]``; ``valid``: ``(n,)`` bool, False for a null value.

    The hash of a string of ``L`` bytes: its bytes zero-padded to 8-byte little-endian words
    ``w_0 .. w_{m-1}``, ``acc = sum_j mix(w_j ^ mix(j))`` modulo 2**64 and ``mix(acc ^ mix(L ^ LEN_TAG))``
    with ``mix`` splitmix64's finaliser; a null value hashes to ``mix(NULL_TAG)``. Pure integer
    arithmetic: the same on every CPU (tests check it against a plain-Python implementation).
    """
    import numpy as np

    off = np.asarray(offsets, np.int64)
    n = off.size - 1
    buf = np.asarray(data, np.uint8).reshape(-1)
    out = np.empty(max(n, 0), np.uint64)
    if n <= 0:
        return out
    lens = np.diff(off)
    if (lens < 0).any() or off[0] < 0 or off[-1] > buf.size:
        raise DataError("hash_strings: offsets must be non-decreasing and within the data")
    kernel = _hash_kernel()
    if kernel is not None:
        kernel.hash_block(np.ascontiguousarray(off), np.ascontiguousarray(buf), np.uint64(_LEN_TAG), out)
    else:
        start = 0
        while start < n:
            # a block of strings of about _HASH_BLOCK_BYTES (at least one string)
            stop = int(np.searchsorted(off, off[start] + _HASH_BLOCK_BYTES, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            out[start:stop] = _hash_block(off[start:stop + 1], buf)
            start = stop
    if valid is not None:
        ok = np.asarray(valid, bool).reshape(-1)
        if ok.shape != (n,):
            raise DataError(f"hash_strings: valid has {ok.size} values for {n} strings")
        out[~ok] = _mix64(np.uint64(_NULL_TAG))
    return out


def _hash_kernel():
    """The compiled hash (:mod:`clipprobe.analysis._hashkernel`, in clipprobe's numba cache folder) where
    numba is installed, else None (the numpy path: the same hashes, several times slower)."""
    from clipprobe._jitcache import optional_kernel

    return optional_kernel("clipprobe.analysis._hashkernel", "hash_block")


def _hash_block(off, buf):
    """:func:`hash_strings` of the strings ``buf[off[i]:off[i + 1]]``: each 8-byte word is read where it
    starts (one of eight shifted uint64 views of the bytes) and its bytes past the string's end masked."""
    import numpy as np

    lens = np.diff(off)
    n = lens.size
    nw = (lens + 7) // 8
    total = int(nw.sum())
    acc = np.zeros(n, np.uint64)
    if total:
        base = int(off[0])
        raw = np.zeros(int(off[-1]) - base + 16, np.uint8)
        raw[: int(off[-1]) - base] = buf[base:int(off[-1])]
        wstart = np.concatenate([[0], np.cumsum(nw)[:-1]])
        owner = np.repeat(np.arange(n), nw)
        j = np.arange(total, dtype=np.int64) - wstart[owner]
        at = off[:-1][owner] - base + 8 * j                 # where each word starts in raw
        words = np.empty(total, np.uint64)
        shift = at % 8
        for sft in range(8):
            sel = np.flatnonzero(shift == sft)
            if sel.size:
                view = raw[sft: sft + 8 * ((raw.size - sft) // 8)].view(np.dtype("<u8"))
                words[sel] = view[at[sel] // 8]
        left = lens[owner] - 8 * j                           # bytes of the string from this word on
        part = left < 8
        words[part] &= (np.uint64(1) << (8 * left[part]).astype(np.uint64)) - np.uint64(1)
        top = int(nw.max())
        if top > len(_POSITION_MIX):
            _POSITION_MIX[:] = list(_mix64(np.arange(max(top, 2 * len(_POSITION_MIX)), dtype=np.uint64)))
        terms = _mix64(words ^ np.asarray(_POSITION_MIX[:top], np.uint64)[j])
        nonempty = nw > 0
        acc[nonempty] = np.add.reduceat(terms, wstart[nonempty])
    return _mix64(acc ^ _mix64(lens.astype(np.uint64) ^ np.uint64(_LEN_TAG)))


_POSITION_MIX: list[int] = []     # mix(j) of word positions j, grown on demand


def combine_hashes(hashes: Sequence["np.ndarray"]) -> "np.ndarray":
    """One uint64 per row from the hashes of its columns, in order: ``r = mix(r ^ h_c)`` from ``ROW_TAG``."""
    import numpy as np

    hashes = [np.asarray(h, np.uint64) for h in hashes]
    if not hashes:
        raise UsageError("combine_hashes needs the hashes of at least one column")
    r = np.full(hashes[0].shape, np.uint64(_ROW_TAG))
    for h in hashes:
        if h.shape != r.shape:
            raise DataError(f"combine_hashes: columns of {r.size} and {h.size} rows")
        r = _mix64(r ^ h)
    return r


def content_hashes(*columns: Sequence) -> "np.ndarray":
    """``(n,)`` uint64 content hash of each row of ``columns`` (sequences of str, bytes or None, one per
    column, e.g. the caption text and its URL): :func:`hash_strings` of each column (str as UTF-8),
    folded by :func:`combine_hashes`. The scan computes the same hashes from Arrow buffers."""
    import numpy as np

    hashed = []
    for col in columns:
        values = list(col)
        encoded = [b"" if v is None else (v if isinstance(v, bytes) else str(v).encode("utf-8")) for v in values]
        offsets = np.zeros(len(encoded) + 1, np.int64)
        np.cumsum([len(b) for b in encoded], out=offsets[1:])
        data = np.frombuffer(b"".join(encoded), np.uint8)
        hashed.append(hash_strings(offsets, data, np.array([v is not None for v in values], bool)))
    return combine_hashes(hashed)


def rank_keys(hashes, seed: int = 0) -> "np.ndarray":
    """``(n,)`` uint64 rank keys: content hashes mixed with ``seed`` (another seed, another order)."""
    import numpy as np

    h = np.asarray(hashes)
    if h.ndim != 1 or not np.issubdtype(h.dtype, np.integer):
        raise DataError(MSG_KEYS.format(n=h.size, problem=f"shape {h.shape} dtype {h.dtype}"))
    return _mix64(h.astype(np.uint64) ^ _mix64(np.uint64(int(seed) % (1 << 64))))


def positions(file_ordinal: int, rows) -> "np.ndarray":
    """``(n,)`` int64 tie-break positions ``file_ordinal << 40 | row`` (the file's place among the inputs)."""
    import numpy as np

    r = np.asarray(rows, np.int64)
    if r.size and (r.min() < 0 or r.max() >= 1 << POSITION_ROW_BITS):
        raise DataError(MSG_KEYS.format(n=r.size, problem="rows outside [0, 2**40)"))
    return (np.int64(file_ordinal) << np.int64(POSITION_ROW_BITS)) | r


def keep_counts(q, count, blocks=None) -> "np.ndarray":
    """``(P,)`` int64 examples each pattern keeps: ``q_p n_p`` rounded down or up by systematic rounding.

    Patterns are grouped by ``blocks`` (``(P,)`` integer codes, e.g. :func:`group_signature`; None:
    each pattern its own block) and taken in order of their index; with ``C_p`` the running sum of
    ``q n`` within the block, pattern ``p`` keeps ``floor(C_p + 1/2) - floor(C_{p-1} + 1/2)``. So each
    pattern keeps within one example of ``q_p n_p`` (``round(q_p n_p)``, halves up, when it is alone
    in its block), and each block keeps ``round`` of its ``q`` mass: rounding every pattern on its own
    would instead keep every single-example pattern with ``q >= 1/2``. ``q n`` is counted in exact
    integer millionths of an example (``rint(q n 10^6)``), so no last-bit difference in ``q`` moves a
    half across and the sums do not depend on their order.
    """
    import numpy as np

    c = np.asarray(count, np.int64)
    qq = np.asarray(q, np.float64)
    if qq.shape != c.shape or c.ndim != 1:
        raise DataError(MSG_WEIGHTS.format(n=c.size, what="pattern", problem=f"shape {qq.shape}"))
    micro = np.rint(qq * c * 1e6).astype(np.int64)
    b = np.arange(c.size, dtype=np.int64) if blocks is None else np.asarray(blocks, np.int64)
    if b.shape != c.shape:
        raise DataError(MSG_WEIGHTS.format(n=c.size, what="pattern", problem=f"{b.size} block codes"))
    order = np.lexsort((np.arange(c.size), b))
    run = np.cumsum(micro[order])
    first = np.concatenate([[True], b[order][1:] != b[order][:-1]]) if c.size else np.zeros(0, bool)
    base = np.maximum.accumulate(np.where(first, np.arange(c.size), 0)) if c.size else np.zeros(0, np.int64)
    start = (run - micro[order])[base]                       # the running sum before the block
    within = run - start
    edge = (within + 500_000) // 1_000_000
    prev = np.where(first, 0, np.concatenate([[0], edge[:-1]]))
    k = np.empty(c.size, np.int64)
    k[order] = edge - prev
    return np.clip(k, 0, c)


def group_signature(table: PatternTable) -> "np.ndarray":
    """``(P,)`` int64 code of each row's groups (the same code for the same combination of groups; for a
    soft table, the same membership levels), numbered in the canonical order of the combinations."""
    import numpy as np

    k = table.n_groups
    keys = table.keys[:, : (k - 1) // 64 + 1].copy()
    for w in range(keys.shape[1]):
        bits = min(64, k - 64 * w)
        if bits < 64:
            keys[:, w] &= np.uint64((1 << bits) - 1)
    if table.soft:
        keys = np.concatenate([keys, table.levels.astype(np.uint64)], axis=1)
    _, code = _group_rows(keys, np.zeros(table.n_rows, np.int32))
    return code


def flag_counts(solution: BalanceSolution) -> "np.ndarray":
    """``(P,)`` the examples the keep flags keep of each row of the solution's table:
    :func:`keep_counts` of ``q`` in blocks of the same groups, so each combination of groups (those
    that mention none among them) keeps within one example of its ``q`` mass."""
    return keep_counts(solution.q, solution.table.count, group_signature(solution.table))


@dataclasses.dataclass(frozen=True, eq=False)
class KeepRanks:
    """Which examples of each pattern the flags keep: the ``k`` first by (rank key, position).

    ``k``, ``count``: ``(P,)`` examples kept and counted per pattern. ``bits``: ``(P,)`` width of the
    pattern's rank-key buckets (the top ``bits`` bits of the key; about ``sqrt(count)`` buckets).
    After :func:`rank_boundaries`: ``bucket`` (the bucket of the pattern's first dropped example, -1
    where ``k`` is 0 or ``count``) and ``need`` (kept examples in that bucket). After
    :func:`rank_thresholds`: ``t_key`` / ``t_pos``, the first dropped example's key and position.
    An example is kept when its pattern keeps all, or ``(key, pos) < (t_key, t_pos)``.
    """

    k: "np.ndarray"
    count: "np.ndarray"
    bits: "np.ndarray"
    bucket: "np.ndarray | None" = None
    need: "np.ndarray | None" = None
    t_key: "np.ndarray | None" = None
    t_pos: "np.ndarray | None" = None
    lo: "np.ndarray | None" = None
    hi: "np.ndarray | None" = None

    @property
    def split(self) -> "np.ndarray":
        """``(P,)`` bool: patterns that keep some but not all of their examples."""
        return (self.k > 0) & (self.k < self.count)

    def to_arrays(self) -> dict[str, "np.ndarray"]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any]) -> "KeepRanks":
        import numpy as np

        dtypes = {"k": np.int64, "count": np.int64, "bits": np.int64, "bucket": np.int64, "need": np.int64,
                  "t_key": np.uint64, "t_pos": np.int64, "lo": np.uint64, "hi": np.uint64}
        return cls(**{name: np.asarray(d[name], dt) for name, dt in dtypes.items() if name in d})


def rank_plan(k, count) -> KeepRanks:
    """The :class:`KeepRanks` of patterns that keep ``k`` of their ``count`` examples (e.g.
    :func:`flag_counts`), without boundaries yet."""
    import numpy as np

    c = np.asarray(count, np.int64)
    k = np.asarray(k, np.int64)
    if k.shape != c.shape or (k < 0).any() or (k > c).any():
        raise DataError(MSG_WEIGHTS.format(n=c.size, what="pattern", problem="kept counts outside [0, count]"))
    bits = np.clip(np.ceil(np.log2(np.maximum(c, 1)) / 2), 0, 30).astype(np.int64)
    return KeepRanks(k, c, bits)


def _bucket_of(ranks: KeepRanks, pattern, keys):
    import numpy as np

    b = ranks.bits[pattern].astype(np.uint64)
    shift = np.uint64(64) - b
    with np.errstate(over="ignore"):
        return np.where(b > 0, keys >> np.minimum(shift, np.uint64(63)), np.uint64(0)).astype(np.int64)


def _check_pattern(pattern, n_patterns: int):
    import numpy as np

    p = np.asarray(pattern, np.int64)
    if p.size and (p.min() < 0 or p.max() >= n_patterns):
        raise DataError(MSG_KEYS.format(n=p.size, problem=f"patterns outside [0, {n_patterns})"))
    return p


def rank_histogram(ranks: KeepRanks, pattern, keys) -> tuple["np.ndarray", "np.ndarray"]:
    """``(cells, counts)``: examples per (pattern, bucket) cell of a chunk, for the patterns that keep
    some but not all (``cell = pattern << 32 | bucket``, sorted). Sum the chunks' with :func:`rank_boundaries`."""
    import numpy as np

    p = _check_pattern(pattern, ranks.k.size)
    sel = ranks.split[p]
    p = p[sel]
    keys = np.asarray(keys, np.uint64)[sel]
    cells = (p << np.int64(32)) | _bucket_of(ranks, p, keys)
    uniq, counts = np.unique(cells, return_counts=True)
    return uniq, counts.astype(np.int64)


def rank_boundaries(ranks: KeepRanks, cells, counts) -> KeepRanks:
    """Each pattern's boundary bucket and the kept examples in it, from the chunks' histograms
    (``cells`` / ``counts`` concatenated; a cell may repeat). A pattern whose histogram does not add up
    to its count is a DataError (the data changed since they were counted)."""
    import numpy as np

    cells = np.asarray(cells, np.int64)
    uniq, inv = np.unique(cells, return_inverse=True)
    tot = np.bincount(inv.reshape(-1), weights=np.asarray(counts, np.float64), minlength=uniq.size).round()
    tot = tot.astype(np.int64)
    pat = uniq >> np.int64(32)
    bucket = uniq & np.int64(0xFFFFFFFF)
    n_p = ranks.k.size
    seen = np.bincount(pat, weights=tot, minlength=n_p).round().astype(np.int64)
    want = np.where(ranks.split, ranks.count, 0)
    if not np.array_equal(seen, want):
        bad = int(np.flatnonzero(seen != want)[0])
        raise DataError(MSG_RANK_COUNTS.format(pattern=bad, got=int(seen[bad]), want=int(want[bad])))
    # cumulative examples within each pattern, up to and including each cell (cells are sorted)
    cum = np.cumsum(tot)
    first_of = np.searchsorted(pat, np.arange(n_p), side="left")
    before = np.concatenate([[0], cum])[first_of]                # examples of the patterns before
    within = cum - before[pat]
    past = within > ranks.k[pat]                                 # the cell holds the first dropped example
    hit_p, hit_i = np.unique(pat[past], return_index=True)
    cell_i = np.flatnonzero(past)[hit_i]
    out_bucket = np.full(n_p, -1, np.int64)
    out_need = np.zeros(n_p, np.int64)
    out_bucket[hit_p] = bucket[cell_i]
    out_need[hit_p] = ranks.k[hit_p] - (within[cell_i] - tot[cell_i])
    return dataclasses.replace(ranks, bucket=out_bucket, need=out_need)


def rank_candidates(ranks: KeepRanks, pattern, keys, pos):
    """``(pattern, key, pos)`` of a chunk's examples that sit in their pattern's boundary bucket."""
    import numpy as np

    if ranks.bucket is None:
        raise UsageError("rank_candidates needs the boundaries (rank_boundaries)")
    p = _check_pattern(pattern, ranks.k.size)
    keys = np.asarray(keys, np.uint64)
    sel = ranks.bucket[p] >= 0
    sel[sel] = _bucket_of(ranks, p[sel], keys[sel]) == ranks.bucket[p[sel]]
    return p[sel], keys[sel], np.asarray(pos, np.int64)[sel]


def rank_thresholds(ranks: KeepRanks, pattern, keys, pos) -> KeepRanks:
    """The first dropped example of each pattern, from all chunks' candidates (concatenated)."""
    import numpy as np

    if ranks.bucket is None:
        raise UsageError("rank_thresholds needs the boundaries (rank_boundaries)")
    p = np.asarray(pattern, np.int64)
    keys = np.asarray(keys, np.uint64)
    pos = np.asarray(pos, np.int64)
    order = np.lexsort((pos, keys, p))
    p, keys, pos = p[order], keys[order], pos[order]
    n_p = ranks.k.size
    start = np.searchsorted(p, np.arange(n_p), side="left")
    stop = np.searchsorted(p, np.arange(n_p), side="right")
    t_key = np.zeros(n_p, np.uint64)
    t_pos = np.zeros(n_p, np.int64)
    todo = np.flatnonzero(ranks.bucket >= 0)
    short = todo[stop[todo] - start[todo] <= ranks.need[todo]]
    if short.size:
        bad = int(short[0])
        raise DataError(MSG_RANK_COUNTS.format(pattern=bad, got=int(stop[bad] - start[bad]),
                                               want=f"more than {int(ranks.need[bad])} in its boundary bucket"))
    i = start[todo] + ranks.need[todo]
    same = (p[1:] == p[:-1]) & (keys[1:] == keys[:-1]) & (pos[1:] == pos[:-1])
    if same.any():
        raise DataError("rank_thresholds: two examples share a rank key and a position")
    t_key[todo] = keys[i]
    t_pos[todo] = pos[i]
    return dataclasses.replace(ranks, t_key=t_key, t_pos=t_pos)


WINDOW_SIGMAS = 6.0                 # half-width of a rank window, in standard deviations of the first dropped rank
WINDOW_MIN_SIGMAS = 3.0
WINDOW_BUDGET = 1 << 23             # examples the driver may gather from all windows together (expected)


def rank_windows(ranks: KeepRanks, sigmas: float | None = None, budget: int | None = None) -> KeepRanks:
    """A window of rank keys ``[lo, hi]`` for each pattern that keeps some but not all of its examples,
    meant to hold its first dropped example (``lo > hi`` elsewhere: an empty window).

    Rank keys are seeded 64-bit hashes, spread uniformly, so the key of a pattern's ``k``-th example is
    near the quantile ``k / count``: the window covers the ranks ``k -+ sigmas x sd`` (``sd`` the
    binomial standard deviation ``sqrt(k (count - k) / count)``, plus one example). Where the windows
    would hold more than ``budget`` examples in all (expected), ``sigmas`` shrinks (to no less than
    ``WINDOW_MIN_SIGMAS``); None: ``WINDOW_SIGMAS``, ``WINDOW_BUDGET``. A window is only a guess: :func:`window_thresholds` says which ones hold
    their pattern's first dropped example, and the rest take the exact passes (:func:`rank_histogram`,
    :func:`rank_candidates`)."""
    import numpy as np

    sigmas = WINDOW_SIGMAS if sigmas is None else float(sigmas)
    budget = WINDOW_BUDGET if budget is None else int(budget)
    n = ranks.count.astype(np.float64)
    k = ranks.k.astype(np.float64)
    split = ranks.split
    sd = np.sqrt(np.where(split, k * (n - k) / np.maximum(n, 1), 0.0))
    expected = float(np.where(split, 2 * sigmas * sd + 3, 0.0).sum())
    if expected > budget:
        sigmas = max(min(sigmas, WINDOW_MIN_SIGMAS), sigmas * budget / expected)
    width = sigmas * sd + 1.0
    scale = 2.0 ** 64
    lo_f = np.clip((k - width) / np.maximum(n, 1), 0.0, 1.0) * scale
    hi_f = np.clip((k + 1 + width) / np.maximum(n, 1), 0.0, 1.0) * scale
    top = np.float64(np.nextafter(scale, 0))              # the largest float64 below 2**64
    lo = np.where(lo_f <= 0, np.uint64(0), np.minimum(lo_f, top).astype(np.uint64))
    hi = np.where(hi_f >= scale, np.uint64(2**64 - 1), np.minimum(hi_f, top).astype(np.uint64))
    lo = np.where(split, lo, np.uint64(1)).astype(np.uint64)
    hi = np.where(split, hi, np.uint64(0)).astype(np.uint64)
    return dataclasses.replace(ranks, lo=lo, hi=hi)


def window_scan(ranks: KeepRanks, pattern, keys, pos):
    """One chunk's part of the windows (:func:`rank_windows`): ``(seen, below, (pattern, key, pos))``,
    the examples of each pattern and those with a key below its window (``(P,)`` int64 each), and the
    examples inside their pattern's window."""
    import numpy as np

    if ranks.lo is None:
        raise UsageError("window_scan needs the windows (rank_windows)")
    p = _check_pattern(pattern, ranks.k.size)
    keys = np.asarray(keys, np.uint64)
    lo, hi = ranks.lo[p], ranks.hi[p]
    n_p = ranks.k.size
    seen = np.bincount(p, minlength=n_p).astype(np.int64)
    below = np.bincount(p[keys < lo], minlength=n_p).astype(np.int64)
    inside = np.flatnonzero((keys >= lo) & (keys <= hi))
    return seen, below, (p[inside], keys[inside], np.asarray(pos, np.int64)[inside])


def window_thresholds(ranks: KeepRanks, seen, below, pattern, keys, pos) -> tuple[KeepRanks, "np.ndarray"]:
    """The first dropped example of each pattern whose window holds it, from all chunks' :func:`window_scan`
    (``seen`` and ``below`` summed, the examples inside concatenated); and ``(P,)`` bool, the patterns
    that keep some but not all and whose window missed (for the exact passes). Exact: every key below a
    window sorts before every key inside it, and those after it, so where ``below <= k < below +
    inside``, the first dropped example is the ``k - below``-th inside, in (key, position) order. A
    pattern whose examples do not add up to its count is a DataError (the data changed)."""
    import numpy as np

    if ranks.lo is None:
        raise UsageError("window_thresholds needs the windows (rank_windows)")
    seen = np.asarray(seen, np.int64)
    below = np.asarray(below, np.int64)
    split = ranks.split
    want = np.where(split, ranks.count, 0)
    got = np.where(split, seen, 0)
    if not np.array_equal(got, want):
        bad = int(np.flatnonzero(got != want)[0])
        raise DataError(MSG_RANK_COUNTS.format(pattern=bad, got=int(got[bad]), want=int(want[bad])))
    p = np.asarray(pattern, np.int64)
    keys = np.asarray(keys, np.uint64)
    pos = np.asarray(pos, np.int64)
    order = np.lexsort((pos, keys, p))
    p, keys, pos = p[order], keys[order], pos[order]
    if p.size > 1:
        same = (p[1:] == p[:-1]) & (keys[1:] == keys[:-1]) & (pos[1:] == pos[:-1])
        if same.any():
            raise DataError("window_thresholds: two examples share a rank key and a position")
    n_p = ranks.k.size
    start = np.searchsorted(p, np.arange(n_p), side="left")
    inside = np.searchsorted(p, np.arange(n_p), side="right") - start
    at = ranks.k - below
    hit = split & (at >= 0) & (at < inside)
    t_key = np.zeros(n_p, np.uint64)
    t_pos = np.zeros(n_p, np.int64)
    i = start[hit] + at[hit]
    t_key[hit] = keys[i]
    t_pos[hit] = pos[i]
    return dataclasses.replace(ranks, t_key=t_key, t_pos=t_pos), split & ~hit


def rank_keep(ranks: KeepRanks, pattern, keys, pos) -> "np.ndarray":
    """``(n,)`` bool keep flags of a chunk's examples (their patterns, rank keys and positions)."""
    import numpy as np

    if ranks.t_key is None:
        raise UsageError("rank_keep needs the thresholds (rank_thresholds)")
    p = _check_pattern(pattern, ranks.k.size)
    keys = np.asarray(keys, np.uint64)
    pos = np.asarray(pos, np.int64)
    tk, tp = ranks.t_key[p], ranks.t_pos[p]
    below = (keys < tk) | ((keys == tk) & (pos < tp))
    return (ranks.k[p] == ranks.count[p]) | ((ranks.k[p] > 0) & below)


def keep_probabilities(solution: BalanceSolution, table: PatternTable, ids) -> "np.ndarray":
    """``(n,)`` keep probability of each example of a chunk, from the chunk's own ``(table, ids)``.

    ``table`` and ``ids`` are what :func:`~clipprobe.analysis.patterns.encode_patterns` returned for the chunk; its rows are
    looked up in the fitted (merged) table. A pattern the fit never saw is a DataError.
    """
    return solution.q[fitted_rows(solution.table, table, ids)]


def fitted_rows(fitted: PatternTable, table: PatternTable, ids) -> "np.ndarray":
    """``(n,)`` the fitted table's row of each example of a chunk (``table``, ``ids``);
    :class:`UnknownPatterns` (a DataError) where absent."""
    import numpy as np

    where = table_lookup(table, fitted)
    rows = where[np.asarray(ids, np.int64)]
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise UnknownPatterns(MSG_UNKNOWN_PATTERN.format(n=missing.size, row=int(missing[0])))
    return rows


def assign_keep(solution: BalanceSolution, table: PatternTable, ids, hashes, *, seed: int = 0, position=None):
    """``(q, keep)`` for examples held in memory: all the examples the solution was fitted on.

    ``hashes``: ``(n,)`` content hashes (:func:`content_hashes`); ``position``: ``(n,)`` distinct
    int64 tie-breaks for examples of equal content (default: their index). Each pattern keeps
    :func:`flag_counts` examples, the first by :func:`rank_keys` (the same functions as the chunked passes).
    """
    import numpy as np

    rows = fitted_rows(solution.table, table, ids)
    count = np.bincount(rows, minlength=solution.table.n_rows)
    if not np.array_equal(count, solution.table.count):
        raise DataError(MSG_ASSIGN_ALL.format(n=rows.size, fitted=solution.table.n_examples))
    keys = rank_keys(hashes, seed)
    if keys.shape != rows.shape:
        raise DataError(MSG_KEYS.format(n=rows.size, problem=f"{keys.size} hashes"))
    pos = np.arange(rows.size, dtype=np.int64) if position is None else np.asarray(position, np.int64)
    ranks = rank_plan(flag_counts(solution), solution.table.count)
    ranks = rank_boundaries(ranks, *rank_histogram(ranks, rows, keys))
    ranks = rank_thresholds(ranks, *rank_candidates(ranks, rows, keys, pos))
    return solution.q[rows], rank_keep(ranks, rows, keys, pos)

__all__ = [
    "POSITION_ROW_BITS", "KeepRanks", "UnknownPatterns", "assign_keep", "combine_hashes", "content_hashes", "fitted_rows",
    "flag_counts", "group_signature", "hash_strings", "keep_counts", "keep_probabilities", "positions",
    "rank_boundaries", "rank_candidates", "rank_histogram", "rank_keep", "rank_keys", "rank_plan",
    "rank_thresholds", "rank_windows", "window_scan", "window_thresholds",
]
