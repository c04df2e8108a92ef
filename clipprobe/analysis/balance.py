"""Representation and association bias of data and models, and M4 data balancing.

Definitions follow Alabdulmohsin et al., "CLIP the Bias: How Useful is Balancing Data in Multimodal
Learning?" (ICLR 2024, arXiv 2403.04547). Pure functions on arrays; no files, no models.

Indicators
----------
For ``n`` examples (captions), ``s`` is an ``(n, K)`` 0/1 matrix: which of the ``K`` groups of one
attribute an example mentions; ``y`` is an ``(n, R)`` 0/1 matrix: which of ``R`` labels it carries
(dense arrays or ``scipy.sparse`` matrices). A caption may mention no group or several:

* **no group**: the caption is outside the attribute's population. It enters none of the
  statistics and none of the balancing constraints (it cannot be over- or under-represented), so
  M4 keeps it at the requested rate. Counting it as "``s_k = 0`` for every ``k``", as the paper's
  formulas would literally do over all examples, makes ``E[s_k]`` the (tiny) share of captions that
  mention group ``k`` at all, so with a target ``pi`` that sums to 1 every group would look
  under-represented and the constraints could only be met by discarding most of the data.
* **several groups**: the caption counts as a fraction ``1/j`` in each of its ``j`` groups
  (``w = s / sum(s)``), so the group shares of the mentioning captions sum to 1 and can be compared
  with ``pi``; "a man and a woman" is balanced on its own and is left alone by M4.

With ``m = 1[caption mentions a group]`` and ``w`` the fractional membership, the centred indicator
is ``c_k = w_k - pi_k m``. When every example mentions exactly one group (one-hot ``s``, e.g. the
output of an image classifier) ``w = s``, ``m = 1`` and every definition below is the paper's.

Data statistics (:func:`data_bias`), over the mentioning captions, optionally weighted by keep
probabilities ``q`` ("after balancing"):

* ``rb_k = E_q[w_k | m] - pi_k``; data RB ``= max_k |rb_k|``;
* ``ab_kr = P_q(y_r | group k) - P_q(y_r | not group k)`` where "group k" weighs a caption by
  ``w_k`` and "not group k" by ``m - w_k``; data AB ``= max_{k,r} |ab_kr|``.

Intervals (per group and per group x label; none for the maxima, see below) treat captions as
independent draws from a population and ``q`` as fixed. A share is a ratio of weighted sums; its
interval is Wilson's score interval with the effective sample size ``n_eff = p(1 - p) / var``, ``var``
the linearisation (delta-method) variance of the ratio (for unweighted 0/1 data ``n_eff`` is the
plain count and this is exactly Wilson's interval). A difference of two shares uses Newcombe's
hybrid score interval (method 10) on the two Wilson intervals, with the correlation term of Zou and
Donner's MOVER (2008) because a caption that mentions several groups is in both arms. An AB interval
is withheld (NaN) when an arm has fewer than ``MIN_EVENTS`` = 5 effective label events or
non-events. Coverage of the nominal 95% measured by simulation (``tests/test_balance_slow.py``):
shares 0.94-0.96 in every setting; AB 0.93-0.97 wherever each arm expects at least 10 label events;
with fewer the published intervals are conservative or, below 5, mostly withheld. The maxima
``max |.|`` are non-regular where groups tie or a value is near 0 (the interval ``max |.|`` maps the
per-group intervals to covers 97.5% for one value 1 standard error from 0, and about 0.95^K when K
independent values tie at 0), so they are point estimates only.

M4 (:func:`m4_solve`)
---------------------
Keep probabilities ``q_i`` in ``[0, 1]`` minimising ``sum_i u_i (q_i - eta)^2`` subject to, for
every group ``k`` and label ``r``:

* ``scale="conditional"`` (default): ``|sum_i q_i c_ik| <= eps_r sum_i q_i m_i`` and
  ``|sum_i q_i c_ik y_ir| <= eps_a sum_i q_i m_i y_ir``; i.e. on the kept data, the share of group
  ``k`` among the mentioning captions, overall and among those carrying label ``r``, is within
  ``eps`` of ``pi_k``. The kept data's ``rb_k`` is therefore within ``eps_r``. Captions that
  mention several groups in the target's proportions have ``c = 0`` but count in the denominator,
  so M4 may keep them above ``eta``.
* ``scale="all"``: the form of the paper's constraints, ``|E[q c_k]| <= eps_r`` and
  ``|E[q c_k y_r]| <= eps_a`` with ``E`` the mean over all ``n`` examples; an example that mentions
  no group has ``c = 0`` (the paper's ``s_k - pi_k`` read literally would give it ``-pi_k``). On
  caption data where few captions mention a group these bounds are loose: eps on the mean over all
  examples is eps divided by the mentioning share on the group's share among them.

The paper's update rules are not reproduced. Here: the Lagrangian dual. For duals ``lambda >= 0`` of
the linear constraints ``a_j . q <= b_j`` the minimiser over ``q`` is, example by example,
``q_i = clip(eta - (A^T lambda)_i / (2 u_i), 0, 1)``, which depends only on the example's
``(s, y)`` pattern and ``u_i``. The dual ``g(lambda)`` is concave and continuously differentiable
with gradient ``A q(lambda) - b``; it is maximised with L-BFGS-B (bounds ``lambda >= 0``) over a
:class:`PatternTable` (distinct patterns with their counts), so one evaluation costs
``O(patterns)``, not ``O(n)``. The gradient has kinks where some ``q`` reaches 0 or 1; L-BFGS-B
gets near the optimum and projected Newton steps on the working set finish it (the dual is
quadratic between kinks), restarting L-BFGS-B if it stalled. Strong duality holds (linear
constraints, ``q = 0`` feasible), so ``q(lambda*)`` is the primal optimum. A utility ``u`` is
quantised to 32 bins per octave (relative error below 2.2%); the optimum is exact for the quantised
utilities, which are also used when the weights are written, so written weights meet the reported
residuals.

The requested keep rate ``eta`` is a target, not a constraint: the achieved mean keep rate is
reported. If no ``q`` meets the constraints with mean ``>= eta`` (the largest feasible mean keep rate
is a linear programme on the pattern table), :class:`BalanceInfeasible` says so and gives it.

The constraints are hard. The paper describes its M4 as a dual decomposition with streaming updates of
the duals and an enforcement level that makes the constraints soft; neither is reproduced here.

Keep flags (:func:`flag_counts`, :func:`assign_keep` and the rank functions below): a model is trained
on a kept set, not on ``q``. Each pattern keeps ``q n`` of its examples rounded down or up (systematic
rounding within each combination of groups), the first by a seeded 64-bit hash of their content, so
the kept set meets each constraint up to one example per pattern and does not depend on where the
data sit or how they are chunked (:meth:`BalanceSolution.kept_residuals` gives its constraint values).

Model RB and AB (:func:`model_rb`, :func:`model_ab`): the share of person-free images for which a
model prefers "Male" over "Female", minus 0.5; for occupation pairs, how often it prefers the first
occupation on images of women and of men, and the difference. Ties count half. Wilson / Newcombe
intervals (images are independent draws).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

SCALES = ("conditional", "all")
UTILITY_BINS_PER_OCTAVE = 32
MIN_EVENTS = 5.0   # AB intervals need this many effective label events (and non-events) in each arm
DEFAULT_OCCUPATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("librarian", "scientist"),
    ("nurse", "doctor"),
    ("housekeeper", "homeowner"),
    ("receptionist", "executive"),
    ("secretary", "manager"),
)
DEFAULT_GENDER_GROUPS = ("Female", "Male")

MSG_NDIM = "{name}: expected a 2-d (n, {what}) indicator matrix, got shape {shape}"
MSG_BINARY = "{name}: indicators must be 0 or 1, found {value!r}"
MSG_ROWS = "{name} has {got} rows but {other} has {n}"
MSG_NO_COLUMNS = "{name}: needs at least one column ({what})"
MSG_UTILITY = "utility: values must be positive and finite; row {row} has {value!r}"
MSG_UTILITY_SHAPE = "utility: expected {n} values (one per example), got shape {shape}"
MSG_NAMES = "{name}: {got} names for {n} columns"
MSG_MERGE = "cannot merge pattern tables with different {what}: {a!r} vs {b!r}"
MSG_MERGE_EMPTY = "merge_tables needs at least one table"
MSG_TARGET_SUM = "target: shares must sum to 1, they sum to {total:.6g}"
MSG_TARGET_NEGATIVE = "target: shares must be between 0 and 1, got {value!r} for group {group!r}"
MSG_TARGET_LEN = "target: {got} shares for {n} groups ({groups})"
MSG_TARGET_GROUP = "target: unknown group {group!r}{hint}; groups: {groups}"
MSG_TARGET_MISSING = "target: no share for group(s) {missing}"
MSG_TARGET_NAME = ("target: {value!r} is not a known target; give 'uniform', a mapping group -> share "
                   "or a list of shares")
MSG_UNIT = "{name}={value!r} must be in (0, 1]"
MSG_LEVEL = "level={level!r} must be strictly between 0 and 1"
MSG_SCALE = "scale={value!r} is not one of {choices}"
MSG_WEIGHTS = "q: expected {n} keep probabilities in [0, 1] (one per {what}), got {problem}"
MSG_INFEASIBLE = ("the balance constraints (eps_r={eps_r:g}, eps_a={eps_a:g}) cannot be met at keep rate {keep:g}: "
                  "the largest feasible keep rate is {max_keep:.4f}; lower the keep rate or loosen eps_r/eps_a")
MSG_UNKNOWN_PATTERN = ("{n} example(s) have (s, y) patterns that are not in the fitted table (first: row {row}); "
                       "the data differ from the data the weights were fitted on")
MSG_SOLUTION_TABLE = "the table's {what} ({got!r}) differ from the fitted table's ({want!r})"
MSG_KEYS = "keys: expected {n} integer keys (one per example), got {problem}"
MSG_RANK_COUNTS = ("pattern {pattern}: {got} examples where the fit counted {want}; the data changed since its "
                   "patterns were counted")
MSG_ASSIGN_ALL = ("assign_keep: got {n} examples, not the {fitted} the solution was fitted on (each pattern keeps "
                  "q x count of all its examples, rounded)")
MSG_SCORES = "{name}: expected {shape} finite scores, got {problem}"
MSG_PAIRS = "pairs: {got} pairs for {n} score columns"
MSG_GROUP_NAMES = "group_names: expected two distinct group names, got {got!r}"
MSG_GROUP_EMPTY = "groups: no image is labelled {group!r} (labels found: {found})"
MSG_NO_IMAGES = "{name}: no images"


# ----------------------------------------------------------------------------------------------
# small validation helpers


def _check_unit(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UsageError(MSG_UNIT.format(name=name, value=value)) from None
    if not (0.0 < v <= 1.0):
        raise UsageError(MSG_UNIT.format(name=name, value=value))
    return v


def _z(level: float) -> float:
    from scipy.stats import norm

    try:
        lv = float(level)
    except (TypeError, ValueError):
        raise UsageError(MSG_LEVEL.format(level=level)) from None
    if not (0.0 < lv < 1.0):
        raise UsageError(MSG_LEVEL.format(level=level))
    return float(norm.ppf(0.5 + lv / 2.0))


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
    (``count`` without a utility). Rows are in a canonical order (lexicographic in keys, then bin), so
    equal data give equal tables whatever the chunking. Sum tables of chunks with :func:`merge_tables`.
    """

    groups: tuple[str, ...]
    labels: tuple[str, ...]
    keys: "np.ndarray"
    ubin: "np.ndarray"
    count: "np.ndarray"
    u_sum: "np.ndarray"
    has_utility: bool = False

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
        return out

    @classmethod
    def from_arrays(cls, d: Mapping[str, Any]) -> "PatternTable":
        import numpy as np

        groups, labels = tuple(d["groups"]), tuple(d["labels"])
        n_words = max(1, -(-(len(groups) + len(labels)) // 64))
        keys = np.stack([np.asarray(d[f"key{w}"], np.uint64) for w in range(n_words)], axis=1)
        table = cls(groups, labels, keys, np.asarray(d["ubin"], np.int32), np.asarray(d["count"], np.int64),
                    np.asarray(d["u_sum"], np.float64), bool(d["has_utility"]))
        return merge_tables([table])  # re-canonicalise (and fold duplicate rows)


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
                    labels: Sequence[str] | None = None) -> tuple[PatternTable, "np.ndarray"]:
    """Count the distinct ``(s, y)`` patterns of ``n`` examples: ``(table, ids)``.

    ``s``: ``(n, K)`` and ``y``: ``(n, R)`` 0/1 indicators (numpy arrays or scipy.sparse matrices;
    a scanner builds ``scipy.sparse.coo_array((ones, (rows, cols)), shape=(n, K))`` from its
    (caption, group) pairs). ``utility``: optional ``(n,)`` positive utilities. ``ids``: ``(n,)``
    int64, each example's row of ``table``. Cost ``O(n + nnz)`` plus a sort of the examples that
    carry at least one indicator.
    """
    import numpy as np

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
    first, ids = _group_rows(keys, ubin)
    count = np.bincount(ids, minlength=first.size).astype(np.int64)
    u_sum = count.astype(np.float64) if u is None else np.bincount(ids, weights=u, minlength=first.size)
    table = PatternTable(group_names, label_names, keys[first], ubin[first], count, u_sum, u is not None)
    return table, ids


def merge_tables(tables: Sequence[PatternTable]) -> PatternTable:
    """Sum pattern tables of chunks of the same data layout (same groups, labels, utility or not)."""
    import numpy as np

    tables = list(tables)
    if not tables:
        raise UsageError(MSG_MERGE_EMPTY)
    ref = tables[0]
    for t in tables[1:]:
        for what in ("groups", "labels", "has_utility"):
            if getattr(t, what) != getattr(ref, what):
                raise DataError(MSG_MERGE.format(what=what, a=getattr(ref, what), b=getattr(t, what)))
    keys = np.concatenate([t.keys for t in tables])
    ubin = np.concatenate([t.ubin for t in tables])
    count = np.concatenate([t.count for t in tables])
    u_sum = np.concatenate([t.u_sum for t in tables])
    first, code = _group_rows(keys, ubin)
    return PatternTable(ref.groups, ref.labels, keys[first], ubin[first],
                        np.bincount(code, weights=count, minlength=first.size).round().astype(np.int64),
                        np.bincount(code, weights=u_sum, minlength=first.size), ref.has_utility)


def table_lookup(table: PatternTable, into: PatternTable) -> "np.ndarray":
    """``(table.n_rows,)`` int64: the row of ``into`` holding each row of ``table`` (-1 where absent)."""
    import numpy as np

    for what in ("groups", "labels", "has_utility"):
        if getattr(table, what) != getattr(into, what):
            raise DataError(MSG_SOLUTION_TABLE.format(what=what, got=getattr(table, what), want=getattr(into, what)))
    keys = np.concatenate([into.keys, table.keys])
    ubin = np.concatenate([into.ubin, table.ubin])
    first, code = _group_rows(keys, ubin)
    where = np.full(first.size, -1, np.int64)
    where[code[: into.n_rows]] = np.arange(into.n_rows)
    return where[code[into.n_rows:]]


# ----------------------------------------------------------------------------------------------
# target distribution and pattern features


def resolve_target(target, groups: Sequence[str]) -> "np.ndarray":
    """``(K,)`` float64 target shares from ``'uniform'``, a mapping group -> share, or a sequence."""
    import numpy as np

    groups = tuple(groups)
    k = len(groups)
    if isinstance(target, str):
        if target != "uniform":
            raise UsageError(MSG_TARGET_NAME.format(value=target))
        return np.full(k, 1.0 / k)
    if isinstance(target, Mapping):
        for g in target:
            if g not in groups:
                raise UsageError(MSG_TARGET_GROUP.format(group=g, hint=did_you_mean(str(g), groups),
                                                         groups=", ".join(map(repr, groups))))
        missing = [g for g in groups if g not in target]
        if missing:
            raise UsageError(MSG_TARGET_MISSING.format(missing=", ".join(map(repr, missing))))
        values = [target[g] for g in groups]
    else:
        values = list(np.asarray(target, dtype=object).reshape(-1))
        if len(values) != k:
            raise UsageError(MSG_TARGET_LEN.format(got=len(values), n=k, groups=", ".join(map(repr, groups))))
    out = np.empty(k)
    for i, (g, v) in enumerate(zip(groups, values)):
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            raise UsageError(MSG_TARGET_NEGATIVE.format(value=v, group=g)) from None
        if not (0.0 <= out[i] <= 1.0):
            raise UsageError(MSG_TARGET_NEGATIVE.format(value=v, group=g))
    if abs(out.sum() - 1.0) > 1e-6:
        raise UsageError(MSG_TARGET_SUM.format(total=out.sum()))
    return out / out.sum()


def _membership(s) -> tuple["np.ndarray", "np.ndarray"]:
    """(w, m): fractional group membership ``s / sum(s)`` and the mention indicator, float64."""
    import numpy as np

    s = np.asarray(s, np.float64)
    j = s.sum(axis=-1)
    m = (j > 0).astype(np.float64)
    w = s / np.maximum(j, 1.0)[..., None]
    return w, m


# ----------------------------------------------------------------------------------------------
# intervals


def wilson_interval(p, n, z: float) -> tuple["np.ndarray", "np.ndarray"]:
    """Wilson score interval for a share ``p`` out of ``n`` (``n`` may be an effective, non-integer size).

    NaN where ``n <= 0`` or ``p`` is NaN. Equal to statsmodels' ``proportion_confint(x, n,
    method='wilson')`` for integer counts ``x = p n``.
    """
    import numpy as np

    p = np.asarray(p, np.float64)
    n = np.asarray(n, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2n = z * z / n
        centre = (p + z2n / 2) / (1 + z2n)
        half = z / (1 + z2n) * np.sqrt(p * (1 - p) / n + z2n / (4 * n))
    ok = (n > 0) & np.isfinite(p)
    lo = np.where(ok, np.clip(centre - half, 0.0, 1.0), np.nan)
    hi = np.where(ok, np.clip(centre + half, 0.0, 1.0), np.nan)
    return lo, hi


def newcombe_interval(p1, lo1, hi1, p0, lo0, hi0, rho=0.0) -> tuple["np.ndarray", "np.ndarray"]:
    """Interval for ``p1 - p0`` from the two shares' own intervals: Newcombe's hybrid score interval
    (method 10) for independent estimates, and its extension to correlated ones (MOVER, Zou and
    Donner 2008) when ``rho``, the correlation of the two estimates, is not 0."""
    import numpy as np

    d = np.asarray(p1) - np.asarray(p0)
    dl1, du1, dl0, du0 = p1 - lo1, hi1 - p1, p0 - lo0, hi0 - p0
    lo = d - np.sqrt(np.maximum(dl1 ** 2 + du0 ** 2 - 2 * rho * dl1 * du0, 0.0))
    hi = d + np.sqrt(np.maximum(du1 ** 2 + dl0 ** 2 - 2 * rho * du1 * dl0, 0.0))
    return lo, hi


def _ratio_interval(total, weighted, sq_total, sq_num_parts, z):
    """Share ``weighted / total`` with its Wilson-effective-n interval.

    ``sq_num_parts = (sum a^2 v, sum a^2 v^2)`` over the examples (weights ``a``, values ``v``),
    ``sq_total = sum a^2``; the linearisation variance numerator is
    ``sum a^2 (v - p)^2 = sum a^2 v^2 - 2 p sum a^2 v + p^2 sum a^2``.
    """
    import numpy as np

    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(total > 0, weighted / np.where(total > 0, total, 1.0), np.nan)
        av, av2 = sq_num_parts
        num = np.maximum(av2 - 2 * p * av + p * p * sq_total, 0.0)
        var = num / (total * total)
        kish = total * total / sq_total
        pq = p * (1 - p)
        n_eff = np.where((var > 1e-300) & (pq > 0), pq / var, kish)
    n_eff = np.where(total > 0, n_eff, np.nan)
    lo, hi = wilson_interval(p, n_eff, z)
    return p, lo, hi, n_eff


# ----------------------------------------------------------------------------------------------
# data RB and AB


@dataclasses.dataclass(frozen=True, eq=False)
class DataBias:
    """Data RB and AB of one attribute (see the module docstring for the definitions).

    Per group (``(K,)``): ``share`` (``E_q[w_k | m]``), ``share_low/high``, ``rb`` (``share - target``),
    ``rb_low/high``, ``n_eff``. Per group x label (``(K, R)``): ``p_in`` / ``p_out`` (the label's rate
    among the group's / the other groups' mentioning captions), ``ab`` (``p_in - p_out``),
    ``ab_low/high`` (NaN where an arm has fewer than ``min_events`` effective label events or
    non-events: ``events_in`` / ``events_out``, the smaller of the two per arm).
    ``rb_max`` / ``ab_max`` with their arg-max: point estimates only.
    ``n_examples``: all examples (summed weight ``q`` when weighted); ``n_mention``: of those, the
    ones that mention a group; ``n_multi``: the ones that mention several.
    """

    groups: tuple[str, ...]
    labels: tuple[str, ...]
    target: "np.ndarray"
    level: float
    weighted: bool
    n_examples: float
    n_mention: float
    n_multi: float
    share: "np.ndarray"
    share_low: "np.ndarray"
    share_high: "np.ndarray"
    rb: "np.ndarray"
    rb_low: "np.ndarray"
    rb_high: "np.ndarray"
    n_eff: "np.ndarray"
    n_in: "np.ndarray"
    n_out: "np.ndarray"
    p_in: "np.ndarray"
    p_out: "np.ndarray"
    ab: "np.ndarray"
    ab_low: "np.ndarray"
    ab_high: "np.ndarray"
    events_in: "np.ndarray"
    events_out: "np.ndarray"
    rb_max: float
    rb_argmax: str | None
    ab_max: float
    ab_argmax: tuple[str, str] | None

    def group_frame(self) -> "pd.DataFrame":
        import pandas as pd

        return pd.DataFrame({
            "group": list(self.groups), "target": self.target, "share": self.share,
            "share_low": self.share_low, "share_high": self.share_high, "rb": self.rb,
            "rb_low": self.rb_low, "rb_high": self.rb_high, "n_eff": self.n_eff, "weighted": self.weighted,
        })

    def cell_frame(self) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        k, r = len(self.groups), len(self.labels)
        return pd.DataFrame({
            "group": np.repeat(np.asarray(self.groups, dtype=object), r),
            "label": np.tile(np.asarray(self.labels, dtype=object), k),
            "n_in": np.repeat(self.n_in, r), "n_out": np.repeat(self.n_out, r),
            "p_in": self.p_in.ravel(), "p_out": self.p_out.ravel(), "ab": self.ab.ravel(),
            "ab_low": self.ab_low.ravel(), "ab_high": self.ab_high.ravel(),
            "events_in": self.events_in.ravel(), "events_out": self.events_out.ravel(), "weighted": self.weighted,
        })


def bias_from_sums(w, m, y, a1, a2, target, z: float, min_events: float = MIN_EVENTS) -> dict[str, "np.ndarray"]:
    """The statistics of :class:`DataBias` from per-row sums; vectorised over leading axes of ``a1``/``a2``.

    Rows are patterns (or examples): ``w`` ``(P, K)`` fractional membership, ``m`` ``(P,)``
    mention indicator, ``y`` ``(P, R)`` labels (dense or scipy.sparse), ``a1`` ``(..., P)`` the summed
    weights of each row's examples (their count when unweighted), ``a2`` ``(..., P)`` the summed
    squared weights. Returns arrays with the leading shape of ``a1``. ``ab_low/high`` are NaN
    where either arm has fewer than ``min_events`` effective label events or non-events.
    """
    import numpy as np

    a1 = np.asarray(a1, np.float64)
    a2 = np.asarray(a2, np.float64)
    lead = a1.shape[:-1]
    n_rows = w.shape[0]
    r = y.shape[1]

    def yt(x):  # y^T x for x (..., P, M) -> (..., R, M)
        xm = np.moveaxis(x, -2, 0).reshape(n_rows, -1)
        out = np.asarray(y.T @ xm)
        return np.moveaxis(out.reshape((r,) + lead + (x.shape[-1],)), 0, -2)

    wm = w * m[:, None]
    out: dict[str, np.ndarray] = {}
    out["n_examples"] = a1.sum(-1)
    n_m = a1 @ m
    out["n_mention"] = n_m
    out["n_multi"] = a1 @ (m * (w.max(axis=1) < 1.0))
    # RB: values w_k on the mentioning rows
    tot = n_m[..., None]
    share, lo, hi, n_eff = _ratio_interval(tot, a1 @ wm, (a2 @ m)[..., None], (a2 @ wm, a2 @ (wm * wm)), z)
    out.update(share=share, share_low=lo, share_high=hi, n_eff=n_eff)
    out["rb"] = share - target
    out["rb_low"] = lo - target
    out["rb_high"] = hi - target
    # AB: arm "in" weighs a row by w_k, arm "out" by m - w_k; values y_r (binary: y^2 = y)
    w_out = m[:, None] - wm
    arms = []
    for ww in (wm, w_out):
        n_arm = (a1 @ ww)[..., None]                           # (..., K, 1)
        x = np.swapaxes(yt(a1[..., :, None] * ww), -1, -2)     # (..., K, R)
        sq = (a2 @ (ww * ww))[..., None]                      # (..., K, 1)
        sq_y = np.swapaxes(yt(a2[..., :, None] * ww * ww), -1, -2)
        p, lo, hi, n_eff = _ratio_interval(n_arm, x, sq, (sq_y, sq_y), z)
        var_num = np.maximum(sq_y * (1 - 2 * p) + p * p * sq, 0.0)
        arms.append((n_arm[..., 0], p, lo, hi, var_num, p * n_eff, (1 - p) * n_eff))
    (n_in, p1, l1, h1, v1, ev1, nev1), (n_out, p0, l0, h0, v0, ev0, nev0) = arms
    # A caption in several groups is in both arms with the same labels: the estimates are correlated.
    both = wm * w_out                                         # (P, K)
    c_y = np.swapaxes(yt(a2[..., :, None] * both), -1, -2)    # (..., K, R)
    cov_num = c_y * (1 - p1 - p0) + p1 * p0 * (a2 @ both)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where((v1 > 0) & (v0 > 0), cov_num / np.sqrt(v1 * v0), 0.0)
    rho = np.clip(np.nan_to_num(rho), -1.0, 1.0)
    lo, hi = newcombe_interval(p1, l1, h1, p0, l0, h0, rho=rho)
    events_in, events_out = np.minimum(ev1, nev1), np.minimum(ev0, nev0)
    few = ~((events_in >= min_events) & (events_out >= min_events))
    out.update(n_in=n_in, n_out=n_out, p_in=p1, p_out=p0, ab=p1 - p0, ab_low=np.where(few, np.nan, lo),
               ab_high=np.where(few, np.nan, hi), events_in=events_in, events_out=events_out)
    return out


def _argmax_abs(values):
    import numpy as np

    v = np.abs(np.asarray(values, np.float64))
    if v.size == 0 or np.all(np.isnan(v)):
        return float("nan"), None
    i = int(np.nanargmax(v))
    return float(v.reshape(-1)[i]), np.unravel_index(i, v.shape)


def _check_q(q, n: int, what: str) -> "np.ndarray":
    import numpy as np

    arr = np.asarray(q)
    if arr.shape != (n,):
        raise DataError(MSG_WEIGHTS.format(n=n, what=what, problem=f"shape {arr.shape}"))
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(MSG_WEIGHTS.format(n=n, what=what, problem=f"dtype {arr.dtype}"))
    arr = arr.astype(np.float64)
    bad = ~((arr >= 0) & (arr <= 1))
    if bad.any():
        raise DataError(MSG_WEIGHTS.format(n=n, what=what, problem=f"{arr[np.flatnonzero(bad)[0]]!r}"))
    return arr


def data_bias(table: PatternTable, target="uniform", *, q=None, level: float = 0.95,
              min_events: float = MIN_EVENTS) -> DataBias:
    """Data RB and AB of the examples counted in ``table``, optionally weighted by ``q``.

    ``q``: ``(table.n_rows,)`` keep probabilities per table row (a :class:`BalanceSolution`'s ``q``),
    for the statistics of the kept data ("after balancing"). Cost ``O(rows x labels)``.
    """
    import numpy as np

    z = _z(level)
    pi = resolve_target(target, table.groups)
    count = table.count.astype(np.float64)
    if q is None:
        a1, a2 = count, count
    else:
        qq = _check_q(q, table.n_rows, "table row")
        a1, a2 = count * qq, count * qq * qq
    w, m, y = _features(table.keys, table.n_groups, table.n_labels)
    return _make_bias(table.groups, table.labels, pi, level, q is not None,
                      bias_from_sums(w, m, y, a1, a2, pi, z, min_events))


def data_bias_arrays(s, y, target="uniform", *, weights=None, groups=None, labels=None,
                     level: float = 0.95, min_events: float = MIN_EVENTS) -> DataBias:
    """:func:`data_bias` of per-example indicator arrays, optionally weighted per example (``weights`` in [0, 1])."""
    import numpy as np

    table, ids = encode_patterns(s, y, groups=groups, labels=labels)
    z = _z(level)
    pi = resolve_target(target, table.groups)
    if weights is None:
        a1 = a2 = table.count.astype(np.float64)
    else:
        wq = _check_q(weights, ids.size, "example")
        a1 = np.bincount(ids, weights=wq, minlength=table.n_rows)
        a2 = np.bincount(ids, weights=wq * wq, minlength=table.n_rows)
    w, m, yy = _features(table.keys, table.n_groups, table.n_labels)
    return _make_bias(table.groups, table.labels, pi, level, weights is not None,
                      bias_from_sums(w, m, yy, a1, a2, pi, z, min_events))


def _make_bias(groups, labels, pi, level, weighted, st) -> DataBias:
    rb_max, i = _argmax_abs(st["rb"])
    ab_max, j = _argmax_abs(st["ab"])
    return DataBias(
        groups=tuple(groups), labels=tuple(labels), target=pi, level=float(level), weighted=weighted,
        n_examples=float(st["n_examples"]), n_mention=float(st["n_mention"]), n_multi=float(st["n_multi"]),
        share=st["share"], share_low=st["share_low"], share_high=st["share_high"], rb=st["rb"],
        rb_low=st["rb_low"], rb_high=st["rb_high"], n_eff=st["n_eff"], n_in=st["n_in"], n_out=st["n_out"],
        p_in=st["p_in"], p_out=st["p_out"], ab=st["ab"], ab_low=st["ab_low"], ab_high=st["ab_high"],
        events_in=st["events_in"], events_out=st["events_out"],
        rb_max=rb_max, rb_argmax=None if i is None else groups[i[0]],
        ab_max=ab_max, ab_argmax=None if j is None else (groups[j[0]], labels[j[1]]),
    )


# ----------------------------------------------------------------------------------------------
# M4: the constraint system on the pattern table


class BalanceInfeasible(ClipprobeError):
    """The constraints cannot be met at the requested keep rate; ``max_keep`` is the largest one."""

    def __init__(self, message: str, max_keep: float):
        super().__init__(message)
        self.max_keep = max_keep


@dataclasses.dataclass(frozen=True, eq=False)
class _System:
    """The M4 constraints as ``G(q) = a @ kept / n - b <= 0`` over patterns.

    ``kept``: ``(P0,)`` kept mass of each pattern (``sum`` of ``q`` over its examples). Rows are
    the constraints that can bind (a row whose left side cannot exceed ``b`` for any ``q`` in
    ``[0, 1]`` is left out), in the order of :meth:`join`: representation rows ``(k, side)``, then
    association rows ``(k, r, side)`` for the labels ``act`` seen with a group; side 0 is the upper
    bound, 1 the lower. Each row is divided by its subpopulation's share of the data (examples that
    mention a group, and carry label r), so ``G`` is in share units.
    """

    n: float
    a: Any                   # (J, P0) CSR
    b: "np.ndarray"          # (J,)
    active_r: "np.ndarray"   # (K, 2) bool
    active_a: "np.ndarray"   # (K, R_act, 2) bool
    c: "np.ndarray"          # (P0, K) centred indicator
    m: "np.ndarray"          # (P0,)
    y: Any                   # (P0, R_act) CSR
    act: "np.ndarray"        # (R_act,) label indices
    cond: bool

    @property
    def n_duals(self) -> int:
        return int(self.a.shape[0])

    def split(self, lam):
        import numpy as np

        lr = np.zeros(self.active_r.shape)
        la = np.zeros(self.active_a.shape)
        nr = int(self.active_r.sum())
        lr[self.active_r] = lam[:nr]
        la[self.active_a] = lam[nr:]
        return lr, la

    def join(self, lr, la):
        import numpy as np

        return np.concatenate([lr[self.active_r], la[self.active_a]])


def _bits_coo(keys, lo: int, hi: int):
    """(rows, cols - lo) of the set bits ``lo <= col < hi`` of ``keys`` (sorted by row, then column)."""
    import numpy as np

    rows_out, cols_out = [], []
    for w in range(lo // 64, (hi - 1) // 64 + 1 if hi > lo else lo // 64):
        word = keys[:, w]
        nz = np.flatnonzero(word != 0)
        vals = word[nz]
        for b in range(max(lo - 64 * w, 0), min(hi - 64 * w, 64)):
            hit = ((vals >> np.uint64(b)) & np.uint64(1)).astype(bool)
            rows_out.append(nz[hit])
            cols_out.append(np.full(int(hit.sum()), 64 * w + b - lo, np.int64))
    if not rows_out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.concatenate(rows_out), np.concatenate(cols_out)
    order = np.lexsort((cols, rows))
    return rows[order].astype(np.int64), cols[order]


def _features(keys, n_groups: int, n_labels: int):
    """(w (P, K) fractional membership, m (P,) mention indicator, y (P, R) CSR float64) of key rows."""
    import numpy as np
    from scipy import sparse

    p = keys.shape[0]
    s = np.zeros((p, n_groups))
    rows, cols = _bits_coo(keys, 0, n_groups)
    s[rows, cols] = 1.0
    w, m = _membership(s)
    rows, cols = _bits_coo(keys, n_groups, n_groups + n_labels)
    y = sparse.csr_array((np.ones(rows.size), (rows, cols)), shape=(p, n_labels))
    return w, m, y


def _build_system(keys, count, n_groups: int, n_labels: int, pi, eps_r: float, eps_a: float, scale: str,
                  group: bool = True):
    """(system, pattern of each row, examples per pattern) for rows ``keys`` with ``count`` examples.

    ``group=False`` keeps every row as its own pattern (the per-example baseline of the benchmark).
    """
    import numpy as np
    from scipy import sparse

    count = np.asarray(count, np.float64)
    if group:
        first, pat = _group_rows(keys, np.zeros(keys.shape[0], np.int32))
        n_pat = np.bincount(pat, weights=count, minlength=first.size)
        keys = keys[first]
    else:
        pat, n_pat = None, count
    w, m, y_all = _features(keys, n_groups, n_labels)
    c = w - pi[None, :] * m[:, None]
    n = float(count.sum())
    cond = scale == "conditional"
    k = n_groups
    mass_r = float(n_pat @ m) / n
    mass_all = np.asarray(y_all.T @ (n_pat * m)) / n                      # (R,)
    act = np.flatnonzero(mass_all > 0)
    y = y_all[:, act].tocsr()
    mass_a = mass_all[act]
    r_act = act.size
    # every candidate row as COO (row id, pattern, unscaled coefficient)
    ids, pats, vals = [], [], []
    mp = np.flatnonzero(m > 0)
    for kk in range(k):
        for side, sign in ((0, 1.0), (1, -1.0)):
            ids.append(np.full(mp.size, 2 * kk + side, np.int64))
            pats.append(mp)
            vals.append(sign * c[mp, kk] - (eps_r * m[mp] if cond else 0.0))
    yc = y.tocoo()
    yp, yr = np.asarray(yc.row, np.int64), np.asarray(yc.col, np.int64)
    sel = m[yp] > 0
    yp, yr = yp[sel], yr[sel]
    for kk in range(k):
        for side, sign in ((0, 1.0), (1, -1.0)):
            ids.append(2 * k + (kk * r_act + yr) * 2 + side)
            pats.append(yp)
            vals.append(sign * c[yp, kk] - (eps_a * m[yp] if cond else 0.0))
    ids_a, pats_a, vals_a = np.concatenate(ids), np.concatenate(pats), np.concatenate(vals)
    n_rows = 2 * k + 2 * k * r_act
    scale_row = np.concatenate([np.full(2 * k, mass_r if mass_r > 0 else 1.0),
                                np.broadcast_to(mass_a[None, :, None], (k, r_act, 2)).ravel()])
    b_row = np.zeros(n_rows) if cond else np.concatenate([np.full(2 * k, eps_r), np.full(2 * k * r_act, eps_a)])
    # A row can bind only if max over q in [0, 1] of its left side exceeds b.
    reach = np.bincount(ids_a, weights=n_pat[pats_a] * np.maximum(vals_a, 0.0), minlength=n_rows) / n
    active = reach > b_row + 1e-15
    new_id = np.cumsum(active) - 1
    keep = active[ids_a] & (vals_a != 0)
    a = sparse.csr_array((vals_a[keep] / scale_row[ids_a[keep]], (new_id[ids_a[keep]], pats_a[keep])),
                         shape=(int(active.sum()), keys.shape[0]))
    b = (b_row / scale_row)[active]
    system = _System(n, a, b, active[: 2 * k].reshape(k, 2), active[2 * k:].reshape(k, r_act, 2), c, m, y, act, cond)
    return system, pat, n_pat


def max_keep_rate(table: PatternTable, target="uniform", *, eps_r: float, eps_a: float,
                  scale: str = "conditional") -> float:
    """The largest mean keep probability of any ``q`` in ``[0, 1]`` meeting the M4 constraints (an LP).

    Solved with scipy's HiGHS on the pattern table (one variable per distinct pattern: averaging
    ``q`` over a pattern's examples keeps the constraints and the mean).
    """
    pi = resolve_target(target, table.groups)
    eps_r, eps_a = _check_unit("eps_r", eps_r), _check_unit("eps_a", eps_a)
    _check_scale(scale)
    system, _, n_pat = _build_system(table.keys, table.count, table.n_groups, table.n_labels, pi, eps_r, eps_a,
                                     scale)
    return _max_keep(system, n_pat)


def _max_keep(system: _System, n_pat) -> float:
    import numpy as np
    from scipy.optimize import linprog

    if system.n_duals == 0:
        return 1.0
    # Variables x_p = kept_p / n in [0, n_p / n]: G = a x - b <= 0.
    upper = np.asarray(n_pat, np.float64) / system.n
    res = linprog(-np.ones(upper.size), A_ub=system.a, b_ub=system.b,
                  bounds=np.stack([np.zeros_like(upper), upper], 1), method="highs")
    if res.status != 0:  # pragma: no cover - x = 0 is feasible and the objective is bounded
        raise ClipprobeError(f"max_keep_rate: the linear programme failed: {res.message}")
    return float(min(1.0, -res.fun))


def _check_scale(scale: str) -> None:
    if scale not in SCALES:
        raise UsageError(MSG_SCALE.format(value=scale, choices=", ".join(map(repr, SCALES))))


# ----------------------------------------------------------------------------------------------
# M4: the dual solve


@dataclasses.dataclass(frozen=True, eq=False)
class ConvergenceLog:
    """One entry per dual evaluation: the dual and primal objectives (mean per example), the largest
    constraint violation (share units: 0 when all constraints hold), the mean keep rate and the
    phase (``'lbfgsb'`` or ``'newton'``)."""

    dual: "np.ndarray"
    primal: "np.ndarray"
    max_violation: "np.ndarray"
    keep_rate: "np.ndarray"
    phase: tuple[str, ...]

    def frame(self) -> "pd.DataFrame":
        import numpy as np
        import pandas as pd

        return pd.DataFrame({"evaluation": np.arange(1, self.dual.size + 1), "phase": list(self.phase),
                             "dual": self.dual, "primal": self.primal, "max_violation": self.max_violation,
                             "keep_rate": self.keep_rate})


@dataclasses.dataclass(frozen=True, eq=False)
class BalanceSolution:
    """The M4 optimum on a pattern table.

    ``q``: ``(table.n_rows,)`` keep probability of each table row. ``duals_r``: ``(K, 2)`` and
    ``duals_a``: ``(K, R, 2)`` Lagrange multipliers of the upper (``[..., 0]``) and lower
    (``[..., 1]``) side of each constraint, for the constraint divided by its subpopulation's share
    of the data (0 for constraints that cannot bind). ``residual_r``: ``(K,)`` the kept data's
    constraint values (conditional scale: ``E_q[w_k | m] - pi_k``; all: ``E[q c_k]``);
    ``residual_a``: ``(K, R)`` (NaN for labels never seen with a group); ``|residual| <= eps`` up to
    ``max_violation`` (in share units). ``keep_rate``: mean of ``q`` over the examples;
    ``max_keep``: the largest feasible one (LP). ``objective``: ``mean u (q - eta)^2``;
    ``dual_objective``: the dual's value (the difference is the duality gap, ``>= 0``).
    """

    table: PatternTable
    target: "np.ndarray"
    keep: float
    eps_r: float
    eps_a: float
    scale: str
    q: "np.ndarray"
    duals_r: "np.ndarray"
    duals_a: "np.ndarray"
    residual_r: "np.ndarray"
    residual_a: "np.ndarray"
    keep_rate: float
    max_keep: float
    objective: float
    dual_objective: float
    max_violation: float
    converged: bool
    n_evaluations: int
    message: str
    log: ConvergenceLog

    def kept_residuals(self, kept) -> tuple["np.ndarray", "np.ndarray"]:
        """``(residual_r, residual_a)`` of the constraints on a kept set given as ``(table.n_rows,)``
        kept examples per table row (e.g. the keep flags' counts), in the units of ``residual_r/a``."""
        import numpy as np

        kept = _check_q(np.asarray(kept, np.float64) / np.maximum(self.table.count, 1), self.table.n_rows,
                        "table row") * self.table.count
        system, pat, n_pat = _build_system(self.table.keys, self.table.count, self.table.n_groups,
                                           self.table.n_labels, self.target, self.eps_r, self.eps_a, self.scale)
        return _residuals(system, np.bincount(pat, weights=kept, minlength=n_pat.size), self.table.n_labels)

    def residual_frame(self, kept=None) -> "pd.DataFrame":
        """One row per constraint: its value on the data weighted by q (``residual``), its bound and
        duals; with ``kept`` (examples kept per table row) also its value on that kept set
        (``residual_kept``)."""
        import numpy as np
        import pandas as pd

        groups, labels = self.table.groups, self.table.labels
        k, r = len(groups), len(labels)
        out = pd.DataFrame({
            "constraint": ["representation"] * k + ["association"] * (k * r),
            "group": list(groups) + list(np.repeat(np.asarray(groups, dtype=object), r)),
            "label": [None] * k + list(np.tile(np.asarray(labels, dtype=object), k)),
            "residual": np.concatenate([self.residual_r, self.residual_a.ravel()]),
            "bound": [self.eps_r] * k + [self.eps_a] * (k * r),
            "dual_upper": np.concatenate([self.duals_r[:, 0], self.duals_a[..., 0].ravel()]),
            "dual_lower": np.concatenate([self.duals_r[:, 1], self.duals_a[..., 1].ravel()]),
        })
        if kept is not None:
            res_r, res_a = self.kept_residuals(kept)
            out.insert(4, "residual_kept", np.concatenate([res_r, res_a.ravel()]))
        return out


@dataclasses.dataclass(frozen=True, eq=False)
class _DualResult:
    lam: "np.ndarray"
    q: "np.ndarray"          # per row
    kept: "np.ndarray"       # per pattern
    primal: float
    dual: float
    max_violation: float
    n_evaluations: int
    message: str
    log: ConvergenceLog


def _dual_solve(system: _System, pat, cnt, u_rows, eta: float, *, tol: float, max_iter: int, lam0,
                newton_steps: int = 50, restarts: int = 5, callback=None) -> _DualResult:
    """Maximise the concave dual: L-BFGS-B (bounds ``lambda >= 0``), then projected Newton steps.

    ``pat``: pattern of each row (None: every row is its own pattern); ``cnt`` / ``u_rows``: examples
    and mean utility per row. State: the duals only; every evaluation recomputes ``q`` from them.
    ``callback(lam, phase)``: called with the duals of every evaluation (the benchmark replays them).
    """
    import numpy as np
    from scipy.optimize import minimize

    n = system.n
    a, at, b = system.a, system.a.T.tocsr(), system.b
    n_pat = a.shape[1]
    two_u = 2.0 * u_rows
    rows: list[tuple[float, float, float, float, str]] = []

    def state(lam, phase):
        if callback is not None:
            callback(lam, phase)
        t = at @ lam
        t_rows = t if pat is None else t[pat]
        q = np.clip(eta - t_rows / two_u, 0.0, 1.0)
        dev = cnt * u_rows * (q - eta) ** 2
        primal = float(dev.sum() / n)
        kept = cnt * q if pat is None else np.bincount(pat, weights=cnt * q, minlength=n_pat)
        g = a @ kept / n - b
        dual = primal + float(lam @ g)
        viol = max(0.0, float(g.max())) if g.size else 0.0
        rows.append((dual, primal, viol, float((cnt * q).sum() / n), phase))
        return q, kept, g, primal, dual, t_rows

    message = "no constraint can bind: q = keep everywhere"
    lam = np.asarray(lam0, np.float64)
    if system.n_duals:
        def fun(x):
            _, _, g, _, dual, _ = state(x, "lbfgsb")
            return -dual, -g

        notes = []
        for _ in range(restarts + 1):
            # L-BFGS-B can stall on the kinks of the dual's gradient (where some q reaches 0 or 1);
            # a restart drops its curvature memory.
            res = minimize(fun, lam, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * system.n_duals,
                           options={"maxiter": int(max_iter), "maxfun": 2 * int(max_iter), "ftol": 0.0,
                                    "gtol": tol * 1e-2, "maxcor": 20})
            lam = np.maximum(res.x, 0.0)
            lam, note = _newton(system, pat, cnt, two_u, lam, state, tol=tol, steps=newton_steps)
            notes.append(f"L-BFGS-B: {res.message}; {note}")
            if rows[-1][2] <= tol and "optimal" in note:
                break
        message = " | ".join(notes)
    q, kept, _, primal, dual, _ = state(lam, "final")
    viol = rows[-1][2]
    arr = np.asarray([r[:4] for r in rows], np.float64)
    return _DualResult(lam, q, kept, primal, dual, viol, len(rows), message,
                       ConvergenceLog(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], tuple(r[4] for r in rows)))


def _newton(system: _System, pat, cnt, two_u, lam, state, *, tol: float, steps: int):
    """Projected Newton steps on the piecewise-quadratic dual, from ``lam`` (a polish after L-BFGS-B).

    On the working set (duals that are positive or whose constraint is violated) the dual is
    quadratic while no ``q`` crosses 0 or 1: its Hessian is ``-a_W D a_W^T / n`` with ``D`` the
    examples (over ``2u``) whose ``q`` is strictly inside ``(0, 1)``. A full step lands on the
    optimum once the active sets are right; steps are halved until the dual does not decrease.
    """
    import numpy as np

    n = system.n
    a = system.a
    n_pat = a.shape[1]
    q, _, g, primal, dual, _ = state(lam, "newton")
    for it in range(steps):
        viol = max(0.0, float(g.max()))
        gap = abs(float(lam @ g))
        if viol <= tol * 1e-3 and gap <= 1e-12 * max(primal, 1e-300):
            return lam, f"Newton: optimal after {it} step(s)"
        # The working set: duals that are positive or whose constraint is violated; the others stay 0.
        work = (lam > 0) | (g > 0)
        if not work.any():
            return lam, f"Newton: optimal after {it} step(s)"
        free = (q > 0) & (q < 1)
        d_rows = np.where(free, cnt / two_u, 0.0)
        d = d_rows if pat is None else np.bincount(pat, weights=d_rows, minlength=n_pat)
        aw = a[np.flatnonzero(work)]
        h = (aw.multiply(d[None, :] / n).tocsr() @ aw.T).toarray()
        reg = 1e-12 * max(float(np.trace(h)) / max(h.shape[0], 1), 1e-300)
        step, *_ = np.linalg.lstsq(h + reg * np.eye(h.shape[0]), g[work], rcond=None)
        alpha, improved = 1.0, False
        for _ in range(40):
            trial = lam.copy()
            trial[work] = np.maximum(lam[work] + alpha * step, 0.0)
            tq, _, tg, tprimal, tdual, _ = state(trial, "newton")
            if tdual >= dual - 1e-15 * max(abs(dual), 1e-300):
                improved = True
                break
            alpha /= 2
        if not improved:
            return lam, f"Newton: no ascent after {it} step(s)"
        if np.array_equal(trial, lam):
            return lam, f"Newton: stalled after {it} step(s)"
        lam, q, g, primal, dual = trial, tq, tg, tprimal, tdual
    return lam, f"Newton: {steps} steps"


def m4_solve(table: PatternTable, target="uniform", *, keep: float = 0.9, eps_r: float = 0.01,
             eps_a: float = 0.01, scale: str = "conditional", tol: float = 1e-9, max_iter: int = 5000,
             start: BalanceSolution | None = None) -> BalanceSolution:
    """Keep probabilities for the examples counted in ``table`` (M4, see the module docstring).

    ``keep``: the target keep rate ``eta``; ``eps_r`` / ``eps_a``: bounds of the representation and
    association constraints; ``scale``: ``'conditional'`` or ``'all'``; ``tol``: the largest
    constraint violation (share units) accepted as converged; ``max_iter``: L-BFGS-B iterations;
    ``start``: a previous solution (same groups and labels) to warm-start from. Raises
    :class:`BalanceInfeasible` when no ``q`` meets the constraints with a mean keep rate of at least
    ``keep``. Cost independent of the number of examples: ``O(rows x labels per row)`` per evaluation.
    """
    import numpy as np

    pi = resolve_target(target, table.groups)
    eta = _check_unit("keep", keep)
    eps_r, eps_a = _check_unit("eps_r", eps_r), _check_unit("eps_a", eps_a)
    _check_scale(scale)
    system, pat, n_pat = _build_system(table.keys, table.count, table.n_groups, table.n_labels, pi, eps_r, eps_a,
                                       scale)
    max_keep = _max_keep(system, n_pat)
    if max_keep < eta - 1e-7:
        raise BalanceInfeasible(MSG_INFEASIBLE.format(eps_r=eps_r, eps_a=eps_a, keep=eta, max_keep=max_keep),
                                max_keep)
    if start is not None:
        if start.table.groups != table.groups or start.table.labels != table.labels:
            raise UsageError(MSG_SOLUTION_TABLE.format(what="groups and labels",
                                                       got=(table.groups, table.labels),
                                                       want=(start.table.groups, start.table.labels)))
        lam0 = np.maximum(system.join(start.duals_r, start.duals_a[:, system.act, :]), 0.0)
    else:
        lam0 = np.zeros(system.n_duals)
    out = _dual_solve(system, pat, table.count.astype(np.float64), table.u_mean, eta, tol=tol,
                      max_iter=max_iter, lam0=lam0)
    res_r, res_a = _residuals(system, out.kept, table.n_labels)
    lr, la = system.split(out.lam)
    duals_a = np.zeros((table.n_groups, table.n_labels, 2))
    duals_a[:, system.act, :] = la
    converged = out.max_violation <= tol
    if not converged:
        log.warning("M4 solve stopped with a constraint violated by %.3g (tolerance %.3g): %s",
                    out.max_violation, tol, out.message)
    log.info("M4: keep rate %.6f (target %g, largest feasible %.6f), %d evaluations, %s",
             float(out.kept.sum() / system.n), eta, max_keep, out.n_evaluations, out.message)
    return BalanceSolution(
        table=table, target=pi, keep=eta, eps_r=eps_r, eps_a=eps_a, scale=scale, q=out.q, duals_r=lr,
        duals_a=duals_a, residual_r=res_r, residual_a=res_a, keep_rate=float(out.kept.sum() / system.n),
        max_keep=max_keep, objective=out.primal, dual_objective=out.dual, max_violation=out.max_violation,
        converged=converged, n_evaluations=out.n_evaluations, message=out.message, log=out.log,
    )


def _residuals(system: _System, kept, n_labels: int):
    """(K,) and (K, R) constraint values in the documented units (NaN where a subpopulation is empty)."""
    import numpy as np

    n = system.n
    cr = system.c.T @ kept
    ca_act = np.asarray(system.y.T @ (system.c * kept[:, None])).T        # (K, R_act)
    ca = np.full((system.c.shape[1], n_labels), np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        if system.cond:
            mk = system.m @ kept
            res_r = cr / mk if mk > 0 else np.full(cr.shape, np.nan)
            my = np.asarray(system.y.T @ (system.m * kept))
            ca[:, system.act] = np.where(my > 0, ca_act / np.where(my > 0, my, 1.0), np.nan)
        else:
            res_r = cr / n
            ca[:, system.act] = ca_act / n
    return res_r, ca


# ----------------------------------------------------------------------------------------------
# weights per example and keep flags by rank within each pattern
#
# A pattern (row of the fitted table) of n_p examples with keep probability q_p keeps k_p of them,
# q_p n_p rounded down or up (:func:`flag_counts`: systematic rounding in blocks of the same groups,
# so the keep rate and each combination of groups are met within one example): the k_p first in the
# order of their rank key (a 64-bit hash of the example's content, mixed with the seed;
# :func:`rank_keys`), ties (examples with the same content) by their position (file ordinal << 40 |
# row). So the kept set meets every constraint that q meets, up to one example per pattern, and the
# same examples keep the same flags wherever their files are. Over many chunks and workers the first
# dropped example of a pattern is found in two light passes over the stored hashes: a histogram of the
# rank keys per pattern
# (:func:`rank_histogram`, merged by :func:`rank_boundaries`), then the examples in each pattern's
# boundary bucket (:func:`rank_candidates`, :func:`rank_thresholds`); :func:`rank_keep` sets the flags.
# :func:`assign_keep` runs the same functions on data held in memory.

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


_HASH_KERNEL: list = []           # [module or None] once looked up
_HASH_KERNEL_LOCK = threading.Lock()


def _hash_kernel():
    """The compiled hash (:mod:`clipprobe.analysis._hashkernel`, in clipprobe's numba cache folder) where
    numba is installed, else None (the numpy path: the same hashes, several times slower)."""
    with _HASH_KERNEL_LOCK:         # the scan's threads may ask at once
        if not _HASH_KERNEL:
            try:
                from clipprobe._jitcache import enable_cache
                from clipprobe.analysis import _hashkernel
            except ImportError:
                _HASH_KERNEL.append(None)
            else:
                enable_cache(_hashkernel.hash_block)
                _HASH_KERNEL.append(_hashkernel)
        return _HASH_KERNEL[0]


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
    """``(P,)`` int64 code of each row's groups (the same code for the same combination of groups),
    numbered in the canonical order of the combinations."""
    import numpy as np

    k = table.n_groups
    keys = table.keys[:, : (k - 1) // 64 + 1].copy()
    for w in range(keys.shape[1]):
        bits = min(64, k - 64 * w)
        if bits < 64:
            keys[:, w] &= np.uint64((1 << bits) - 1)
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
                  "t_key": np.uint64, "t_pos": np.int64}
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

    ``table`` and ``ids`` are what :func:`encode_patterns` returned for the chunk; its rows are
    looked up in the fitted (merged) table. A pattern the fit never saw is a DataError.
    """
    return solution.q[fitted_rows(solution.table, table, ids)]


def fitted_rows(fitted: PatternTable, table: PatternTable, ids) -> "np.ndarray":
    """``(n,)`` the fitted table's row of each example of a chunk (``table``, ``ids``); DataError where absent."""
    import numpy as np

    where = table_lookup(table, fitted)
    rows = where[np.asarray(ids, np.int64)]
    missing = np.flatnonzero(rows < 0)
    if missing.size:
        raise DataError(MSG_UNKNOWN_PATTERN.format(n=missing.size, row=int(missing[0])))
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


# ----------------------------------------------------------------------------------------------
# model RB and AB


def _scores(x, name: str, shape_text: str, ndim_ok=(1, 2)):
    import numpy as np

    arr = np.asarray(x)
    if arr.ndim not in ndim_ok or not np.issubdtype(arr.dtype, np.number):
        raise DataError(MSG_SCORES.format(name=name, shape=shape_text, problem=f"shape {arr.shape} dtype {arr.dtype}"))
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(MSG_SCORES.format(name=name, shape=shape_text, problem="NaN or infinite values"))
    return arr


def _preference(first, second):
    """Wins of ``first`` over ``second`` with ties counted half, summed over axis 0."""
    return (first > second).sum(axis=0) + 0.5 * (first == second).sum(axis=0), (first == second).sum(axis=0)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelRB:
    """Model representation bias on images without people: ``rb = share_male - 0.5``."""

    n: int
    n_ties: int
    share_male: float
    rb: float
    rb_low: float
    rb_high: float
    level: float


def model_rb(male_scores, female_scores, *, level: float = 0.95) -> ModelRB:
    """Share of the images for which the model scores "Male" above "Female", minus 0.5, with a
    Wilson interval (ties count half)."""
    z = _z(level)
    male = _scores(male_scores, "male_scores", "(N,)", (1,))
    female = _scores(female_scores, "female_scores", f"({male.size},)", (1,))
    if female.shape != male.shape:
        raise DataError(MSG_SCORES.format(name="female_scores", shape=f"({male.size},)",
                                          problem=f"shape {female.shape}"))
    if male.size == 0:
        raise DataError(MSG_NO_IMAGES.format(name="male_scores"))
    wins, ties = _preference(male, female)
    share = float(wins) / male.size
    lo, hi = wilson_interval(share, male.size, z)
    return ModelRB(int(male.size), int(ties), share, share - 0.5, float(lo) - 0.5, float(hi) - 0.5, float(level))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelAB:
    """Model association bias on face images, per occupation pair.

    ``share``: ``(P, 2)`` how often the model prefers the pair's first occupation on images of
    ``group_names[0]`` and ``group_names[1]`` (ties half), with ``share_low/high``; ``diff``:
    ``(P,)`` ``share[:, 0] - share[:, 1]`` with Newcombe's interval ``diff_low/high``; ``n``: images
    per group.
    """

    pairs: tuple[tuple[str, str], ...]
    group_names: tuple[str, str]
    n: tuple[int, int]
    share: "np.ndarray"
    share_low: "np.ndarray"
    share_high: "np.ndarray"
    diff: "np.ndarray"
    diff_low: "np.ndarray"
    diff_high: "np.ndarray"
    level: float

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        g0, g1 = self.group_names
        return pd.DataFrame({
            "first": [p[0] for p in self.pairs], "second": [p[1] for p in self.pairs],
            f"share_{g0}": self.share[:, 0], f"share_{g0}_low": self.share_low[:, 0],
            f"share_{g0}_high": self.share_high[:, 0],
            f"share_{g1}": self.share[:, 1], f"share_{g1}_low": self.share_low[:, 1],
            f"share_{g1}_high": self.share_high[:, 1],
            "diff": self.diff, "diff_low": self.diff_low, "diff_high": self.diff_high,
            f"n_{g0}": self.n[0], f"n_{g1}": self.n[1],
        })


def model_ab(first_scores, second_scores, groups, *, pairs: Sequence[Sequence[str]] = DEFAULT_OCCUPATION_PAIRS,
             group_names: Sequence[str] = DEFAULT_GENDER_GROUPS, level: float = 0.95) -> ModelAB:
    """How often the model prefers each pair's first occupation, per group of face images.

    ``first_scores`` / ``second_scores``: ``(N, P)`` (or ``(N,)`` for one pair) similarities of each
    image to the prompts of the first and second occupation of each pair; ``groups``: ``(N,)``
    labels of the images; images labelled with neither of ``group_names`` are left out.
    """
    import numpy as np

    z = _z(level)
    first = _scores(first_scores, "first_scores", "(N, P)")
    if first.ndim == 1:
        first = first[:, None]
    second = _scores(second_scores, "second_scores", f"{first.shape}")
    if second.ndim == 1:
        second = second[:, None]
    if second.shape != first.shape:
        raise DataError(MSG_SCORES.format(name="second_scores", shape=f"{first.shape}",
                                          problem=f"shape {second.shape}"))
    pair_t = tuple((str(a), str(b)) for a, b in pairs)
    if len(pair_t) != first.shape[1]:
        raise UsageError(MSG_PAIRS.format(got=len(pair_t), n=first.shape[1]))
    names = tuple(str(g) for g in group_names)
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(MSG_GROUP_NAMES.format(got=tuple(group_names)))
    lab = np.asarray(groups).astype(str)
    if lab.shape != (first.shape[0],):
        raise DataError(MSG_SCORES.format(name="groups", shape=f"({first.shape[0]},)", problem=f"shape {lab.shape}"))
    shares, los, his, ns = [], [], [], []
    for g in names:
        sel = lab == g
        if not sel.any():
            found = ", ".join(repr(v) for v in sorted(set(lab.tolist()))[:10])
            raise DataError(MSG_GROUP_EMPTY.format(group=g, found=found))
        wins, _ = _preference(first[sel], second[sel])
        sh = wins / sel.sum()
        lo, hi = wilson_interval(sh, float(sel.sum()), z)
        shares.append(sh)
        los.append(lo)
        his.append(hi)
        ns.append(int(sel.sum()))
    share, lo, hi = np.stack(shares, 1), np.stack(los, 1), np.stack(his, 1)
    dlo, dhi = newcombe_interval(share[:, 0], lo[:, 0], hi[:, 0], share[:, 1], lo[:, 1], hi[:, 1])
    return ModelAB(pair_t, (names[0], names[1]), (ns[0], ns[1]), share, lo, hi, share[:, 0] - share[:, 1],
                   dlo, dhi, float(level))


__all__ = [
    "BalanceInfeasible", "BalanceSolution", "ConvergenceLog", "DataBias", "KeepRanks", "ModelAB", "ModelRB",
    "PatternTable", "assign_keep", "bias_from_sums", "combine_hashes", "content_hashes", "data_bias",
    "data_bias_arrays", "encode_patterns", "fitted_rows", "flag_counts", "group_signature", "hash_strings",
    "keep_counts", "keep_probabilities",
    "m4_solve", "max_keep_rate", "merge_tables", "model_ab", "model_rb", "newcombe_interval", "positions",
    "rank_boundaries", "rank_candidates", "rank_histogram", "rank_keep", "rank_keys", "rank_plan",
    "rank_thresholds", "resolve_target", "table_lookup", "wilson_interval",
]
