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
is ``c_k = w_k - pi_k m``. A soft table (:class:`~clipprobe.analysis.patterns.PatternTable` with
``levels``) gives each example probabilities ``E[s_k]`` instead: then ``m = sum_k E[s_k]`` and
``w_k m = E[s_k]``, and every statistic and constraint below takes them in place of the mention (0/1
probabilities give exactly the hard results). Proxies (``proxies=``) are labels that get the association
constraints but are left out of the reported statistics. When every example mentions exactly one group (one-hot ``s``, e.g. the
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
:class:`~clipprobe.analysis.patterns.PatternTable` (distinct patterns with their counts), so one evaluation costs
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

Keep flags (which examples a model is trained on, from ``q``) are :mod:`clipprobe.analysis.keepflags`;
the pattern table is :mod:`clipprobe.analysis.patterns`; model RB and AB (the same definitions measured on
a model's scores) are :mod:`clipprobe.analysis.association`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from clipprobe.analysis.intervals import level_z, newcombe_interval, weighted_share_interval
from clipprobe.analysis.patterns import MSG_SOLUTION_TABLE, PatternTable, _group_rows, encode_patterns
from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

SCALES = ("conditional", "all")
MIN_EVENTS = 5.0   # AB intervals need this many effective label events (and non-events) in each arm

MSG_TARGET_SUM = "target: shares must sum to 1, they sum to {total:.6g}"
MSG_TARGET_NEGATIVE = "target: shares must be between 0 and 1, got {value!r} for group {group!r}"
MSG_TARGET_LEN = "target: {got} shares for {n} groups ({groups})"
MSG_TARGET_GROUP = "target: unknown group {group!r}{hint}; groups: {groups}"
MSG_TARGET_MISSING = "target: no share for group(s) {missing}"
MSG_TARGET_NAME = ("target: {value!r} is not a known target; give 'uniform', a mapping group -> share "
                   "or a list of shares")
MSG_UNIT = "{name}={value!r} must be in (0, 1]"
MSG_SCALE = "scale={value!r} is not one of {choices}"
MSG_WEIGHTS = "q: expected {n} keep probabilities in [0, 1] (one per {what}), got {problem}"
MSG_PROXY = "proxies: {proxy!r} is not one of the table's labels{hint}"
MSG_INFEASIBLE = ("the balance constraints (eps_r={eps_r:g}, eps_a={eps_a:g}) cannot be met at keep rate {keep:g}: "
                  "the largest feasible keep rate is {max_keep:.4f}; lower the keep rate or loosen eps_r/eps_a")


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
    # second moments of the denominator m and of m x the numerator (m is 0/1 for mentions, fractional when soft)
    share, lo, hi, n_eff = weighted_share_interval(tot, a1 @ wm, (a2 @ (m * m))[..., None],
                                                   (a2 @ (wm * m[:, None]), a2 @ (wm * wm)), z)
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
        p, lo, hi, n_eff = weighted_share_interval(n_arm, x, sq, (sq_y, sq_y), z)
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


def _label_subset(labels: Sequence[str], proxies) -> tuple[tuple[str, ...], "np.ndarray"]:
    """(the labels that are not proxies, their columns); an unknown proxy name is an error."""
    import numpy as np

    proxies = tuple(proxies or ())
    for name in proxies:
        if name not in labels:
            raise UsageError(MSG_PROXY.format(proxy=name, hint=did_you_mean(str(name), labels)))
    cols = np.asarray([i for i, name in enumerate(labels) if name not in proxies], np.int64)
    return tuple(labels[i] for i in cols), cols


def data_bias(table: PatternTable, target="uniform", *, q=None, level: float = 0.95,
              min_events: float = MIN_EVENTS, proxies: Sequence[str] = ()) -> DataBias:
    """Data RB and AB of the examples counted in ``table``, optionally weighted by ``q``.

    ``q``: ``(table.n_rows,)`` keep probabilities per table row (a :class:`BalanceSolution`'s ``q``),
    for the statistics of the kept data ("after balancing"). ``proxies``: labels of the table that are
    proxies of the attribute (constrained by M4, not reported): left out of the cells and of data AB;
    :func:`data_bias` with ``proxies=()`` on the same table reports them. A soft table (``table.soft``)
    uses each row's membership ``E[s_k]`` in place of the 0/1 mention. Cost ``O(rows x labels)``.
    """
    import numpy as np

    z = level_z(level)
    pi = resolve_target(target, table.groups)
    labels, cols = _label_subset(table.labels, proxies)
    count = table.count.astype(np.float64)
    if q is None:
        a1, a2 = count, count
    else:
        qq = _check_q(q, table.n_rows, "table row")
        a1, a2 = count * qq, count * qq * qq
    w, m, y = _features(table.keys, table.n_groups, table.n_labels, table.levels, table.bins)
    return _make_bias(table.groups, labels, pi, level, q is not None,
                      bias_from_sums(w, m, y[:, cols].tocsr(), a1, a2, pi, z, min_events))


def data_bias_arrays(s, y, target="uniform", *, weights=None, groups=None, labels=None,
                     level: float = 0.95, min_events: float = MIN_EVENTS, soft_bins: int | None = None,
                     proxies: Sequence[str] = ()) -> DataBias:
    """:func:`data_bias` of per-example indicator arrays, optionally weighted per example (``weights`` in [0, 1]).

    ``soft_bins``: ``s`` holds group probabilities ``E[s_k]`` (rows summing to at most 1), quantised to
    ``1 / soft_bins`` (:func:`~clipprobe.analysis.patterns.encode_patterns`)."""
    import numpy as np

    table, ids = encode_patterns(s, y, groups=groups, labels=labels, soft_bins=soft_bins)
    z = level_z(level)
    pi = resolve_target(target, table.groups)
    kept_labels, cols = _label_subset(table.labels, proxies)
    if weights is None:
        a1 = a2 = table.count.astype(np.float64)
    else:
        wq = _check_q(weights, ids.size, "example")
        a1 = np.bincount(ids, weights=wq, minlength=table.n_rows)
        a2 = np.bincount(ids, weights=wq * wq, minlength=table.n_rows)
    w, m, yy = _features(table.keys, table.n_groups, table.n_labels, table.levels, table.bins)
    return _make_bias(table.groups, kept_labels, pi, level, weights is not None,
                      bias_from_sums(w, m, yy[:, cols].tocsr(), a1, a2, pi, z, min_events))


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


def _features(keys, n_groups: int, n_labels: int, levels=None, bins: int = 0):
    """(w (P, K) fractional membership, m (P,) mention indicator, y (P, R) CSR float64) of key rows.

    Soft rows (``levels`` in units of ``1 / bins``): ``m`` is the row's total membership ``sum_k E[s_k]``
    (its probability of being in the population) and ``w = E[s] / m``, so that ``w * m = E[s]``;
    a row of 0/1 levels gives exactly the mention's ``w`` and ``m``."""
    import numpy as np
    from scipy import sparse

    p = keys.shape[0]
    if levels is not None:
        prob = np.asarray(levels, np.float64) / bins
        m = prob.sum(axis=1)
        w = prob / np.where(m > 0, m, 1.0)[:, None]
    else:
        s = np.zeros((p, n_groups))
        rows, cols = _bits_coo(keys, 0, n_groups)
        s[rows, cols] = 1.0
        w, m = _membership(s)
    rows, cols = _bits_coo(keys, n_groups, n_groups + n_labels)
    y = sparse.csr_array((np.ones(rows.size), (rows, cols)), shape=(p, n_labels))
    return w, m, y


def _build_system(keys, count, n_groups: int, n_labels: int, pi, eps_r: float, eps_a: float, scale: str,
                  group: bool = True, levels=None, bins: int = 0):
    """(system, pattern of each row, examples per pattern) for rows ``keys`` with ``count`` examples
    (and soft ``levels`` in units of ``1 / bins``, see :func:`_features`).

    ``group=False`` keeps every row as its own pattern (the per-example baseline of the benchmark).
    """
    import numpy as np
    from scipy import sparse

    from clipprobe.analysis.patterns import _with_levels

    count = np.asarray(count, np.float64)
    if group:
        first, pat = _group_rows(_with_levels(keys, levels), np.zeros(keys.shape[0], np.int32))
        n_pat = np.bincount(pat, weights=count, minlength=first.size)
        keys = keys[first]
        levels = None if levels is None else levels[first]
    else:
        pat, n_pat = None, count
    w, m, y_all = _features(keys, n_groups, n_labels, levels, bins)
    c = (w - pi[None, :]) * m[:, None]         # w m = E[s]: the mention's w, or the soft membership
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


def _table_system(table: PatternTable, pi, eps_r: float, eps_a: float, scale: str):
    return _build_system(table.keys, table.count, table.n_groups, table.n_labels, pi, eps_r, eps_a, scale,
                         levels=table.levels, bins=table.bins)


def max_keep_rate(table: PatternTable, target="uniform", *, eps_r: float, eps_a: float,
                  scale: str = "conditional") -> float:
    """The largest mean keep probability of any ``q`` in ``[0, 1]`` meeting the M4 constraints (an LP).

    Solved with scipy's HiGHS on the pattern table (one variable per distinct pattern: averaging
    ``q`` over a pattern's examples keeps the constraints and the mean).
    """
    pi = resolve_target(target, table.groups)
    eps_r, eps_a = _check_unit("eps_r", eps_r), _check_unit("eps_a", eps_a)
    _check_scale(scale)
    system, _, n_pat = _table_system(table, pi, eps_r, eps_a, scale)
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
    proxies: tuple[str, ...] = ()

    def kept_residuals(self, kept) -> tuple["np.ndarray", "np.ndarray"]:
        """``(residual_r, residual_a)`` of the constraints on a kept set given as ``(table.n_rows,)``
        kept examples per table row (e.g. the keep flags' counts), in the units of ``residual_r/a``."""
        import numpy as np

        kept = _check_q(np.asarray(kept, np.float64) / np.maximum(self.table.count, 1), self.table.n_rows,
                        "table row") * self.table.count
        system, pat, n_pat = _table_system(self.table, self.target, self.eps_r, self.eps_a, self.scale)
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
            "constraint": ["representation"] * k + ["proxy" if name in self.proxies else "association"
                                                     for _ in groups for name in labels],
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
             start: BalanceSolution | None = None, proxies: Sequence[str] = ()) -> BalanceSolution:
    """Keep probabilities for the examples counted in ``table`` (M4, see the module docstring).

    ``keep``: the target keep rate ``eta``; ``eps_r`` / ``eps_a``: bounds of the representation and
    association constraints; ``scale``: ``'conditional'`` or ``'all'``; ``tol``: the largest
    constraint violation (share units) accepted as converged; ``max_iter``: L-BFGS-B iterations;
    ``start``: a previous solution (same groups and labels) to warm-start from; ``proxies``: labels of
    the table that are proxies of the attribute (words or concepts that stand for a group, such as
    "beard"): they get the association constraints as every label does (the paper's de-correlation
    of proxies), and :meth:`BalanceSolution.residual_frame` lists them as ``proxy`` constraints. A soft
    table (``table.soft``) enters every constraint with its membership ``E[s_k]``. Raises
    :class:`BalanceInfeasible` when no ``q`` meets the constraints with a mean keep rate of at least
    ``keep``. Cost independent of the number of examples: ``O(rows x labels per row)`` per evaluation.
    """
    import numpy as np

    pi = resolve_target(target, table.groups)
    proxies = tuple(proxies or ())
    _label_subset(table.labels, proxies)
    eta = _check_unit("keep", keep)
    eps_r, eps_a = _check_unit("eps_r", eps_r), _check_unit("eps_a", eps_a)
    _check_scale(scale)
    system, pat, n_pat = _table_system(table, pi, eps_r, eps_a, scale)
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
        converged=converged, n_evaluations=out.n_evaluations, message=out.message, log=out.log, proxies=proxies,
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


__all__ = [
    "BalanceInfeasible", "BalanceSolution", "ConvergenceLog", "DataBias", "bias_from_sums", "data_bias",
    "data_bias_arrays", "m4_solve", "max_keep_rate", "resolve_target",
]
