"""Pattern tables: the distinct ``(s, y, utility bin)`` rows of some examples, with their counts.

Data balancing (:mod:`clipprobe.analysis.balance`) never needs the examples one by one: every
statistic and every M4 constraint depends on an example only through its pattern, the groups ``s`` it
mentions, the labels ``y`` it carries and (optionally) its utility bin. :func:`encode_patterns` counts
the patterns of ``n`` examples given as 0/1 indicator matrices (dense or ``scipy.sparse``) and gives
each example's row of the table; tables of chunks of the same data are summed by :func:`merge_tables`
(rows in a canonical order, so equal data give equal tables whatever the chunking) and
:func:`table_lookup` finds the rows of one table in another. The caption engine
(:mod:`clipprobe.captions.indicators`) builds these tables from its scans and stores them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

UTILITY_BINS_PER_OCTAVE = 32

MSG_NDIM = "{name}: expected a 2-d (n, {what}) indicator matrix, got shape {shape}"
MSG_BINARY = "{name}: indicators must be 0 or 1, found {value!r}"
MSG_ROWS = "{name} has {got} rows but {other} has {n}"
MSG_NO_COLUMNS = "{name}: needs at least one column ({what})"
MSG_UTILITY = "utility: values must be positive and finite; row {row} has {value!r}"
MSG_UTILITY_SHAPE = "utility: expected {n} values (one per example), got shape {shape}"
MSG_NAMES = "{name}: {got} names for {n} columns"
MSG_MERGE = "cannot merge pattern tables with different {what}: {a!r} vs {b!r}"
MSG_MERGE_EMPTY = "merge_tables needs at least one table"
MSG_SOLUTION_TABLE = "the table's {what} ({got!r}) differ from the fitted table's ({want!r})"
MSG_SOFT_BINS = "soft_bins={value!r} must be an integer from 1 to {most}"
MSG_PROBABILITIES = ("{name}: soft group probabilities must be finite, in [0, 1] and sum to at most 1 per row; "
                     "row {row} has {value}")
MSG_SOFT_VIRTUAL = "{name}: group {group!r} is not a quantised membership (expected e.g. {example!r})"

MAX_SOFT_BINS = 1024
MAX_SOFT_GROUPS = 4096
MSG_SOFT_GROUPS = ("soft memberships of {k} groups in steps of 1/{bins} take {n} values, more than {most}: "
                   "use fewer bins")


# ----------------------------------------------------------------------------------------------
# indicator matrices


def _coo(x, name: str, what: str, n: int | None):
    """(n_rows, n_cols, rows, cols) of the ones of a dense or scipy.sparse 0/1 matrix, each (row, col) once."""
    import numpy as np

    if hasattr(x, "tocoo") and not isinstance(x, np.ndarray):
        coo = x.tocoo()
        shape = coo.shape
        if len(shape) != 2:
            raise DataError(MSG_NDIM.format(name=name, what=what, shape=shape))
        data = np.asarray(coo.data)
        bad = np.flatnonzero((data != 0) & (data != 1))
        if bad.size:
            raise DataError(MSG_BINARY.format(name=name, value=data[bad[0]].item()))
        keep = data != 0
        rows = np.asarray(coo.row, np.int64)[keep]
        cols = np.asarray(coo.col, np.int64)[keep]
        if rows.size:
            flat = np.unique(rows * shape[1] + cols)
            rows, cols = flat // shape[1], flat % shape[1]
    else:
        arr = np.asarray(x)
        if arr.ndim != 2:
            raise DataError(MSG_NDIM.format(name=name, what=what, shape=arr.shape))
        shape = arr.shape
        if arr.dtype != bool:
            if not (np.issubdtype(arr.dtype, np.number)):
                raise DataError(MSG_BINARY.format(name=name, value=f"dtype {arr.dtype}"))
            bad = (arr != 0) & (arr != 1)
            if bad.any():
                i = np.argwhere(bad)[0]
                raise DataError(MSG_BINARY.format(name=name, value=arr[tuple(i)].item()))
        rows, cols = np.nonzero(arr)
        rows, cols = rows.astype(np.int64), cols.astype(np.int64)
    if shape[1] == 0:
        raise DataError(MSG_NO_COLUMNS.format(name=name, what=what))
    if n is not None and shape[0] != n:
        raise DataError(MSG_ROWS.format(name=name, got=shape[0], other="s", n=n))
    return int(shape[0]), int(shape[1]), rows, cols


def _names(names, n: int, name: str, prefix: str) -> tuple[str, ...]:
    if names is None:
        return tuple(f"{prefix}{i}" for i in range(n))
    out = tuple(str(v) for v in names)
    if len(out) != n:
        raise DataError(MSG_NAMES.format(name=name, got=len(out), n=n))
    return out

# ----------------------------------------------------------------------------------------------
# pattern table


def _dense_rank(values) -> tuple["np.ndarray", "np.ndarray"]:
    """(sorted unique values, inverse) of a 1-d integer array; bincount when the range is small."""
    import numpy as np

    if values.size == 0:
        return values[:0], np.zeros(0, np.int64)
    lo, hi = int(values.min()), int(values.max())
    if hi - lo <= 4 * values.size + 1024:
        present = np.bincount((values - lo).astype(np.int64), minlength=hi - lo + 1) > 0
        rank = np.cumsum(present) - 1
        return np.flatnonzero(present).astype(values.dtype) + values.dtype.type(lo), rank[values - lo]
    uniq, inv = np.unique(values, return_inverse=True)
    return uniq, inv.reshape(-1).astype(np.int64)


def _rank_u64(col) -> tuple["np.ndarray", "np.ndarray"]:
    """Like :func:`_dense_rank` for uint64 bit words, sorting only the nonzero ones (most are 0)."""
    import numpy as np

    nz = col != 0
    n_nz = int(nz.sum())
    if n_nz == col.size:
        uniq, inv = np.unique(col, return_inverse=True)
        return uniq, inv.reshape(-1).astype(np.int64)
    uniq, inv = np.unique(col[nz], return_inverse=True)
    out = np.zeros(col.size, np.int64)
    out[nz] = inv.reshape(-1) + 1
    return np.concatenate([np.zeros(1, np.uint64), uniq]), out


def _group_rows(keys, ubin) -> tuple["np.ndarray", "np.ndarray"]:
    """Rows of ``(keys (n, W) uint64, ubin (n,) int)`` grouped: (first row of each group, group id per row).

    Groups are numbered in lexicographic order of (word 0, ..., word W-1, ubin): a canonical order
    that does not depend on the order of the rows.
    """
    import numpy as np

    n = keys.shape[0]
    code = np.zeros(n, np.int64)
    for w in range(keys.shape[1]):
        uniq, rank = _rank_u64(keys[:, w])
        _, code = _dense_rank(code * len(uniq) + rank)
    ub_uniq, ub_rank = _dense_rank(ubin.astype(np.int64))
    _, code = _dense_rank(code * max(len(ub_uniq), 1) + ub_rank)
    n_codes = int(code.max()) + 1 if n else 0
    first = np.full(n_codes, n, np.int64)
    np.minimum.at(first, code, np.arange(n, dtype=np.int64))
    return first, code


@dataclasses.dataclass(frozen=True, eq=False)
class PatternTable:
    """The distinct ``(s, y, utility bin)`` rows of some examples with their counts (mergeable).

    ``keys``: ``(P, W)`` uint64, bit ``j`` of the row is column ``j`` of ``[s | y]`` (bit ``j % 64``
    of word ``j // 64``); ``ubin``: ``(P,)`` int32 utility bin (``floor(32 log2 u)``; 0 without a
    utility); ``count``: ``(P,)`` int64 examples; ``u_sum``: ``(P,)`` float64 sum of their utilities
    (``count`` without a utility). Rows are in a canonical order (lexicographic in keys, then the
    levels, then bin), so equal data give equal tables whatever the chunking. Sum tables of chunks with
    :func:`merge_tables`.

    Soft groups (``bins > 0``): each example's group membership is a probability vector ``E[s_k]``
    (e.g. an image classifier's), quantised to multiples of ``1 / bins`` (:func:`quantise_probabilities`).
    ``levels``: ``(P, K)`` int32, the row's membership in units of ``1 / bins`` (part of the pattern);
    the group bits of ``keys`` are ``levels > 0``. Hard tables have ``levels`` None and ``bins`` 0.
    """

    groups: tuple[str, ...]
    labels: tuple[str, ...]
    keys: "np.ndarray"
    ubin: "np.ndarray"
    count: "np.ndarray"
    u_sum: "np.ndarray"
    has_utility: bool = False
    levels: "np.ndarray | None" = None
    bins: int = 0

    @property
    def soft(self) -> bool:
        """Whether the group memberships are soft probabilities (``levels``), not 0/1 mentions."""
        return self.bins > 0

    @property
    def group_keys(self) -> "np.ndarray":
        """``(P, W [+ K])`` uint64: the columns that tell rows apart (``keys``, then ``levels`` when soft)."""
        return _with_levels(self.keys, self.levels)

    @property
    def membership(self) -> "np.ndarray":
        """``(P, K)`` float64 group membership of each row's examples: ``levels / bins`` when soft; else the
        mention's ``s / sum(s)`` (a caption naming ``j`` groups counts ``1/j`` in each)."""
        import numpy as np

        if self.soft:
            return self.levels.astype(np.float64) / self.bins
        s = self.s.astype(np.float64)
        return s / np.maximum(s.sum(axis=1), 1.0)[:, None]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    @property
    def n_rows(self) -> int:
        return int(self.count.shape[0])

    @property
    def n_examples(self) -> int:
        return int(self.count.sum())

    def _bits(self, lo: int, hi: int) -> "np.ndarray":
        import numpy as np

        cols = np.arange(lo, hi)
        words = self.keys[:, cols // 64]
        return ((words >> (cols % 64).astype(np.uint64)) & np.uint64(1)).astype(bool)

    @property
    def s(self) -> "np.ndarray":
        """``(P, K)`` bool group indicators of each row."""
        return self._bits(0, self.n_groups)

    @property
    def y(self) -> "np.ndarray":
        """``(P, R)`` bool label indicators of each row."""
        return self._bits(self.n_groups, self.n_groups + self.n_labels)

    @property
    def u_mean(self) -> "np.ndarray":
        """``(P,)`` mean utility of each row's examples (1 without a utility)."""
        return self.u_sum / self.count

    def to_arrays(self) -> dict[str, Any]:
        """Plain arrays and lists (for parquet/JSON by the caller); :meth:`from_arrays` reads them back."""
        out: dict[str, Any] = {f"key{w}": self.keys[:, w] for w in range(self.keys.shape[1])}
        out.update(ubin=self.ubin, count=self.count, u_sum=self.u_sum, groups=list(self.groups),
                   labels=list(self.labels), has_utility=self.has_utility)
        if self.soft:
            out.update({f"level{k}": self.levels[:, k] for k in range(self.n_groups)}, bins=self.bins)
        return out

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any]) -> "PatternTable":
        import numpy as np

        groups, labels = tuple(d["groups"]), tuple(d["labels"])
        n_words = max(1, -(-(len(groups) + len(labels)) // 64))
        keys = np.stack([np.asarray(d[f"key{w}"], np.uint64) for w in range(n_words)], axis=1)
        bins = int(d.get("bins", 0) or 0)
        levels = (np.stack([np.asarray(d[f"level{k}"], np.int32) for k in range(len(groups))], axis=1)
                  if bins else None)
        table = cls(groups, labels, keys, np.asarray(d["ubin"], np.int32), np.asarray(d["count"], np.int64),
                    np.asarray(d["u_sum"], np.float64), bool(d["has_utility"]), levels, bins)
        return merge_tables([table])  # re-canonicalise (and fold duplicate rows)


def _with_levels(keys, levels) -> "np.ndarray":
    import numpy as np

    if levels is None:
        return keys
    return np.concatenate([keys, np.asarray(levels).astype(np.uint64)], axis=1)


def check_soft_bins(bins) -> int:
    """``bins`` as an int in ``[1, MAX_SOFT_BINS]`` (UsageError otherwise)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or not 1 <= bins <= MAX_SOFT_BINS:
        raise UsageError(MSG_SOFT_BINS.format(value=bins, most=MAX_SOFT_BINS))
    return bins


def quantise_probabilities(p, bins: int, *, name: str = "s") -> "np.ndarray":
    """``(n, K)`` int32 levels: each row of ``p`` (``(n, K)`` group probabilities summing to at most 1;
    the rest is "no group") in units of ``1 / bins``, by the largest-remainder rule over the ``K``
    groups and the rest, so each row's levels sum to at most ``bins`` and a row of 0s and 1s is exact.
    Ties go to the lower column (the rest counts as the last). Error at most ``1 / bins`` per entry."""
    import numpy as np

    bins = check_soft_bins(bins)
    arr = np.asarray(p)
    if arr.ndim != 2:
        raise DataError(MSG_NDIM.format(name=name, what="groups", shape=arr.shape))
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != bool:
        raise DataError(MSG_PROBABILITIES.format(name=name, row=0, value=f"dtype {arr.dtype}"))
    x = arr.astype(np.float64)
    total = x.sum(axis=1)
    bad = ~(np.isfinite(x).all(axis=1) & (x >= 0).all(axis=1) & (x <= 1).all(axis=1) & (total <= 1 + 1e-6))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(MSG_PROBABILITIES.format(name=name, row=i, value=x[i].tolist()))
    full = np.concatenate([x, np.maximum(1.0 - total, 0.0)[:, None]], axis=1) * bins
    base = np.floor(full + 1e-9).astype(np.int64)
    base = np.minimum(base, bins)
    short = bins - base.sum(axis=1)                            # units still to hand out (>= 0)
    rem = full - base
    # the `short` largest remainders get one more unit; a stable order makes ties go to the lower column
    order = np.argsort(-rem, axis=1, kind="stable")
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(full.shape[1])[None, :].repeat(full.shape[0], 0), axis=1)
    base += rank < short[:, None]
    return base[:, :-1].astype(np.int32)


def soft_group_name(levels, groups: Sequence[str], bins: int) -> str:
    """The name of one quantised membership as a group value, e.g. ``'Female=5/16,Male=11/16'``
    (groups at level 0 left out); :func:`soften_table` reads it back."""
    return ",".join(f"{g}={int(v)}/{bins}" for g, v in zip(groups, levels) if int(v) > 0)


def soft_group_names(groups: Sequence[str], bins: int) -> tuple[tuple[str, ...], "np.ndarray"]:
    """Every quantised membership of ``groups`` at ``bins`` with some group above 0: ``(names, levels)``,
    ``levels`` ``(G, K)`` int32 (``C(bins + K, K) - 1`` of them, in lexicographic order of the levels)."""
    import itertools
    import math

    import numpy as np

    k = len(groups)
    bins = check_soft_bins(bins)
    if math.comb(bins + k, k) - 1 > MAX_SOFT_GROUPS:
        raise UsageError(MSG_SOFT_GROUPS.format(k=k, bins=bins, n=math.comb(bins + k, k) - 1, most=MAX_SOFT_GROUPS))
    combos = [c for c in itertools.product(range(bins + 1), repeat=k) if 0 < sum(c) <= bins]
    levels = np.asarray(combos, np.int32).reshape(-1, k)
    return tuple(soft_group_name(row, groups, bins) for row in levels), levels


def soften_table(table: PatternTable, groups: Sequence[str], bins: int) -> PatternTable:
    """A soft table from a table whose "groups" are quantised memberships named by :func:`soft_group_name`
    (a group column holding one such name per example, e.g. the attribute pass's ``soft_<attribute>``):
    the same rows in the same order (so its ``q`` is the input table's), with the real ``groups`` and
    each row's ``levels``. A row naming no membership has levels 0 (no group)."""
    import numpy as np

    bins = check_soft_bins(bins)
    groups = tuple(groups)
    index = {g: k for k, g in enumerate(groups)}
    virtual = np.zeros((table.n_groups, len(groups)), np.int32)
    for j, name in enumerate(table.groups):
        for part in name.split(","):
            g, eq, frac = part.rpartition("=")
            num, slash, den = frac.partition("/")
            if not (eq and slash and g in index and num.isdigit() and den == str(bins)):
                raise DataError(MSG_SOFT_VIRTUAL.format(name="groups", group=name,
                                                        example=soft_group_name([bins] + [0] * (len(groups) - 1),
                                                                                groups, bins)))
            virtual[j, index[g]] = int(num)
    s = table.s.astype(np.int64)
    if (s.sum(axis=1) > 1).any():
        raise DataError(MSG_SOFT_VIRTUAL.format(name="rows", group="several memberships in one row",
                                                example=table.groups[0]))
    levels = (s @ virtual).astype(np.int32)
    n_words = max(1, -(-(len(groups) + table.n_labels) // 64))
    keys = np.zeros((table.n_rows, n_words), np.uint64)
    bit_rows, bit_cols = np.nonzero(levels > 0)
    y_rows, y_cols = np.nonzero(table.y)
    rows = np.concatenate([bit_rows, y_rows]).astype(np.int64)
    cols = np.concatenate([bit_cols, y_cols + len(groups)]).astype(np.int64)
    flat = keys.reshape(-1)
    np.add.at(flat, rows * n_words + cols // 64, np.left_shift(np.uint64(1), (cols % 64).astype(np.uint64)))
    return PatternTable(groups, table.labels, keys, table.ubin.copy(), table.count.copy(), table.u_sum.copy(),
                        table.has_utility, levels, bins)


def _utility_bins(utility, n: int) -> tuple["np.ndarray", "np.ndarray"]:
    import numpy as np

    u = np.asarray(utility)
    if u.shape != (n,):
        raise DataError(MSG_UTILITY_SHAPE.format(n=n, shape=u.shape))
    if not np.issubdtype(u.dtype, np.number) or np.issubdtype(u.dtype, np.complexfloating):
        raise DataError(MSG_UTILITY.format(row=0, value=f"dtype {u.dtype}"))
    u = u.astype(np.float64)
    bad = np.flatnonzero(~(np.isfinite(u) & (u > 0)))
    if bad.size:
        raise DataError(MSG_UTILITY.format(row=int(bad[0]), value=float(u[bad[0]])))
    return np.floor(np.log2(u) * UTILITY_BINS_PER_OCTAVE).astype(np.int32), u


def encode_patterns(s, y, *, utility=None, groups: Sequence[str] | None = None,
                    labels: Sequence[str] | None = None, soft_bins: int | None = None) -> tuple[PatternTable, "np.ndarray"]:
    """Count the distinct ``(s, y)`` patterns of ``n`` examples: ``(table, ids)``.

    ``s``: ``(n, K)`` and ``y``: ``(n, R)`` 0/1 indicators (numpy arrays or scipy.sparse matrices;
    a scanner builds ``scipy.sparse.coo_array((ones, (rows, cols)), shape=(n, K))`` from its
    (caption, group) pairs). ``utility``: optional ``(n,)`` positive utilities. ``ids``: ``(n,)``
    int64, each example's row of ``table``. Cost ``O(n + nnz)`` plus a sort of the examples that
    carry at least one indicator. With ``soft_bins``, ``s`` is instead a dense ``(n, K)`` matrix of
    group probabilities ``E[s_k]`` (each row summing to at most 1), quantised to ``1 / soft_bins``
    (:func:`quantise_probabilities`): a soft table.
    """
    import numpy as np

    levels = None
    if soft_bins is not None:
        soft_bins = check_soft_bins(soft_bins)
        levels = quantise_probabilities(s, soft_bins)
        s = levels > 0
    n, n_groups, s_rows, s_cols = _coo(s, "s", "groups", None)
    _, n_labels, y_rows, y_cols = _coo(y, "y", "labels", n)
    group_names = _names(groups, n_groups, "groups", "group")
    label_names = _names(labels, n_labels, "labels", "label")
    n_words = max(1, -(-(n_groups + n_labels) // 64))
    keys = np.zeros((n, n_words), np.uint64)
    rows = np.concatenate([s_rows, y_rows])
    cols = np.concatenate([s_cols, y_cols + n_groups])
    # Each (row, column) once, so adding distinct powers of two is an OR.
    flat = keys.reshape(-1)
    np.add.at(flat, rows * n_words + cols // 64, np.left_shift(np.uint64(1), (cols % 64).astype(np.uint64)))
    if utility is None:
        ubin = np.zeros(n, np.int32)
        u = None
    else:
        ubin, u = _utility_bins(utility, n)
    first, ids = _group_rows(_with_levels(keys, levels), ubin)
    count = np.bincount(ids, minlength=first.size).astype(np.int64)
    u_sum = count.astype(np.float64) if u is None else np.bincount(ids, weights=u, minlength=first.size)
    table = PatternTable(group_names, label_names, keys[first], ubin[first], count, u_sum, u is not None,
                         None if levels is None else levels[first], soft_bins or 0)
    return table, ids


def merge_tables(tables: Sequence[PatternTable]) -> PatternTable:
    """Sum pattern tables of chunks of the same data layout (same groups, labels, utility or not)."""
    import numpy as np

    tables = list(tables)
    if not tables:
        raise UsageError(MSG_MERGE_EMPTY)
    ref = tables[0]
    for t in tables[1:]:
        for what in ("groups", "labels", "has_utility", "bins"):
            if getattr(t, what) != getattr(ref, what):
                raise DataError(MSG_MERGE.format(what=what, a=getattr(ref, what), b=getattr(t, what)))
    keys = np.concatenate([t.keys for t in tables])
    levels = np.concatenate([t.levels for t in tables]) if ref.soft else None
    ubin = np.concatenate([t.ubin for t in tables])
    count = np.concatenate([t.count for t in tables])
    u_sum = np.concatenate([t.u_sum for t in tables])
    first, code = _group_rows(_with_levels(keys, levels), ubin)
    return PatternTable(ref.groups, ref.labels, keys[first], ubin[first],
                        np.bincount(code, weights=count, minlength=first.size).round().astype(np.int64),
                        np.bincount(code, weights=u_sum, minlength=first.size), ref.has_utility,
                        None if levels is None else levels[first], ref.bins)


def table_lookup(table: PatternTable, into: PatternTable) -> "np.ndarray":
    """``(table.n_rows,)`` int64: the row of ``into`` holding each row of ``table`` (-1 where absent)."""
    import numpy as np

    for what in ("groups", "labels", "has_utility", "bins"):
        if getattr(table, what) != getattr(into, what):
            raise DataError(MSG_SOLUTION_TABLE.format(what=what, got=getattr(table, what), want=getattr(into, what)))
    keys = np.concatenate([into.group_keys, table.group_keys])
    ubin = np.concatenate([into.ubin, table.ubin])
    first, code = _group_rows(keys, ubin)
    where = np.full(first.size, -1, np.int64)
    where[code[: into.n_rows]] = np.arange(into.n_rows)
    return where[code[into.n_rows:]]



__all__ = ["MAX_SOFT_BINS", "MAX_SOFT_GROUPS", "UTILITY_BINS_PER_OCTAVE", "PatternTable", "check_soft_bins", "encode_patterns",
           "merge_tables", "quantise_probabilities", "soft_group_name", "soft_group_names", "soften_table",
           "table_lookup"]
