"""Embedding Association Tests (WEAT, SEAT, iEAT and their cross-modal mixes) on arrays.

A test has target sets ``X``, ``Y`` and attribute sets ``A``, ``B`` of embeddings (rows; any modality, any
norm: rows are L2-normalised here). With ``cos`` the cosine similarity:

* association of a stimulus: ``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` (:func:`association`);
* effect size: ``d = (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w)`` with ``ddof=1`` (Caliskan et al.
  2017, sent-bias, Ghate et al. 2025); ``ddof=0`` gives WEFE's value, ``d * sqrt(N / (N - 1))`` with
  ``N = |X| + |Y|`` (:func:`effect_size`);
* p-value (:func:`permutation_tests`): the test statistic ``sum_x s(x)`` over re-partitions of ``X u Y`` into
  sets of sizes ``|X|`` and ``|Y|`` (unequal sizes are fine). When the number of partitions
  ``C(|X| + |Y|, |X|)`` is at most the budget ``n`` they are all enumerated (``exact``); otherwise ``n - 1``
  random partitions plus the observed one are used, so ``p >= 1 / n``. Ties count as exceedances: a
  partition counts when its statistic is at least the observed one minus ``1e-11 * sum |s|`` (sums of the
  same numbers in another order differ by rounding). ``alternative``: ``"greater"`` (X more associated with
  A than Y is; the published convention), ``"less"``, or ``"two-sided"`` (``|S - E S| >= |S_obs - E S|``,
  ``E S = |X| * mean(s)``, the permutation mean);
* SC-WEAT (single-category, Caliskan et al.): for one stimulus ``w`` and two sets ``A``, ``B``, the same
  statistics with ``X u Y`` replaced by the cosines of ``w`` to ``A u B`` (:func:`sc_weat`);
* an interval of ``d`` over the target stimuli, the attribute sets fixed (:func:`effect_size_interval`):
  by default from the noncentral t distribution, or a bootstrap (BCa via scipy.stats.bootstrap, or
  percentile); coverage of each measured by simulation (see the function);
* BH over the tests of a run (:func:`run_eats`, with :func:`clipprobe.analysis.significance.bh_adjust`).

Randomness. The random partitions of a test depend only on ``(seed, |X| + |Y|, |X|)`` and the block index:
block ``b`` of ``PERMUTATION_BLOCK`` partitions draws from a xoshiro256++ generator whose state is
``SeedSequence(seed, spawn_key=(N, n_x, b)).generate_state(4, uint64)`` (:func:`block_state`). Reruns are
identical, whatever the number of threads, and tests of the same sizes share their partitions, which is
what lets one pass serve many tests. The pass is compiled (numba, :mod:`clipprobe.analysis._eatkernel`,
cached in clipprobe's cache folder); within a block a uniform ``n_x``-subset of the ``N`` pooled stimuli
is drawn in one of two exact ways, picked from ``(N, n_x)`` by an estimate of their cost (:func:`_plan`):

* *bits, then corrected*: every stimulus gets a random bit (probability 1/2, or 1/4, 3/4, ... when ``n_x``
  is far from ``N / 2``), then uniformly drawn positions are cleared or set until ``n_x`` bits are set.
  Every step treats the stimuli alike, so the subset is uniform. About ``N / 64`` raw words and
  ``0.8 sqrt(N)`` bounded draws per partition when ``n_x`` is near ``N / 2``; the sums add eight values
  per masked vector add;
* *one by one*: the ``min(n_x, n_y)`` members of the smaller side drawn uniformly among those not drawn yet.

Exact enumeration walks the ``min(n_x, n_y)``-subsets in lexicographic order (``itertools.combinations``'s),
each block from its first subset (:func:`_unrank_combination`). A job counts one block for up to
``_TEST_SLICE`` tests of a group; the jobs of all groups share the threads.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Sequence

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

ALTERNATIVES = ("greater", "less", "two-sided")
DEFAULT_PERMUTATIONS = 1_000_000
DEFAULT_SC_PERMUTATIONS = 10_000
DEFAULT_BOOTSTRAP = 2_000
DEFAULT_CONFIDENCE = 0.95
MIN_SET_SIZE = 2
PERMUTATION_BLOCK = 65536  # partitions per seeded block (results do not depend on threads)
TIE_RTOL = 1e-11  # ties: statistic >= observed - TIE_RTOL * sum|s|
_TEST_SLICE = 256  # tests of one group counted per job (a group of thousands of tests is split over threads)
_TILED_TESTS = 32  # from this many tests in a job, their values are read eight tests at a time

MSG_TOO_FEW = "set {name} of test {test!r} has {n} stimulus/stimuli; an association test needs at least {min} per set"
MSG_NOT_2D = "set {name} of test {test!r} must be a 2-d array of embeddings (rows), got shape {shape}"
MSG_DIM = "set {name} of test {test!r} has dimension {dim} but set X has {dim_x}"
MSG_NOT_FINITE = "set {name} of test {test!r} holds NaN or infinite values"
MSG_ZERO_NORM = "set {name} of test {test!r}: row {row} has zero norm (no direction, no cosine)"
MSG_PERMUTATIONS = "number of permutations must be an integer of at least 2, not {value!r}"
MSG_ALTERNATIVE = "alternative {value!r} is not one of " + ", ".join(repr(a) for a in ALTERNATIVES)
MSG_DDOF = "ddof must be 0 or 1, not {value!r}"
MSG_CONFIDENCE = "confidence level must lie strictly between 0 and 1, not {value!r}"
MSG_BOOTSTRAP = "number of bootstrap resamples must be at least 100, not {value!r}"
MSG_SEED = "seed must be a non-negative integer, not {value!r}"
MSG_POOLED = "test {test}: pooled values must be a 1-d finite array with 0 < n_x < its length ({n}), n_x = {n_x}"
MSG_TOO_LARGE = "a permutation test over {n} pooled values is not supported (at most 2^31 - 1)"
INTERVAL_METHODS = ("noncentral-t", "BCa", "percentile")
DEFAULT_INTERVAL = "noncentral-t"
MSG_CI_METHOD = "interval method {value!r} is not one of " + ", ".join(repr(m) for m in INTERVAL_METHODS)


# ----------------------------------------------------------------------------------------------
# checks


def _check_int(value, minimum: int, message: str) -> int:
    """``value`` as an int if it is a whole number (not a bool) of at least ``minimum``, else a UsageError."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < minimum:
        raise UsageError(message.format(value=value))
    return int(value)


def check_alternative(alternative: str) -> str:
    if alternative not in ALTERNATIVES:
        raise UsageError(MSG_ALTERNATIVE.format(value=alternative))
    return alternative


def check_ddof(ddof) -> int:
    if isinstance(ddof, bool) or ddof not in (0, 1):
        raise UsageError(MSG_DDOF.format(value=ddof))
    return int(ddof)


def check_permutations(n) -> int:
    return _check_int(n, 2, MSG_PERMUTATIONS)


def check_seed(seed) -> int:
    return _check_int(seed, 0, MSG_SEED)


def check_set(array, name: str, test: str = "", dim: int | None = None) -> "np.ndarray":
    """A float64 copy of one stimulus set (rows L2-normalised); one-line errors for bad input."""
    import numpy as np

    arr = np.asarray(array, dtype=np.float64)
    if arr.ndim != 2:
        raise DataError(MSG_NOT_2D.format(name=name, test=test, shape=arr.shape))
    if arr.shape[0] < MIN_SET_SIZE:
        raise DataError(MSG_TOO_FEW.format(name=name, test=test, n=arr.shape[0], min=MIN_SET_SIZE))
    if dim is not None and arr.shape[1] != dim:
        raise DataError(MSG_DIM.format(name=name, test=test, dim=arr.shape[1], dim_x=dim))
    if not np.all(np.isfinite(arr)):
        raise DataError(MSG_NOT_FINITE.format(name=name, test=test))
    norms = np.linalg.norm(arr, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise DataError(MSG_ZERO_NORM.format(name=name, test=test, row=int(zero[0])))
    return arr / norms[:, None]


# ----------------------------------------------------------------------------------------------
# point statistics


def association(W, A, B) -> "np.ndarray":
    """``s(w, A, B)`` for every row ``w`` of ``W``: mean cosine to ``A`` minus mean cosine to ``B``."""

    W, A, B = (_unit(v) for v in (W, A, B))
    return W @ A.mean(axis=0) - W @ B.mean(axis=0)


def _unit(v) -> "np.ndarray":
    import numpy as np

    arr = np.atleast_2d(np.asarray(v, dtype=np.float64))
    return arr / np.linalg.norm(arr, axis=1, keepdims=True)


def effect_size(s_x, s_y, ddof: int = 1) -> float:
    """``(mean s_x - mean s_y) / std(s_x u s_y)`` with ``ddof`` (1: Caliskan/sent-bias, 0: WEFE); NaN if std is 0."""
    import numpy as np

    ddof = check_ddof(ddof)
    s_x = np.asarray(s_x, dtype=np.float64)
    s_y = np.asarray(s_y, dtype=np.float64)
    sd = np.concatenate([s_x, s_y]).std(ddof=ddof)
    if not sd > 0:
        return float("nan")
    return float((s_x.mean() - s_y.mean()) / sd)


def _effect_sizes_rows(values, n_x: int, ddof: int) -> "np.ndarray":
    """Effect sizes of pooled rows ``values[:, :n_x]`` vs ``values[:, n_x:]`` (NaN where the std is 0)."""
    import numpy as np

    sd = values.std(axis=1, ddof=ddof)
    diff = values[:, :n_x].mean(axis=1) - values[:, n_x:].mean(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, diff / np.where(sd > 0, sd, 1.0), np.nan)


# ----------------------------------------------------------------------------------------------
# permutation test


@dataclasses.dataclass(frozen=True)
class PermutationResult:
    """One permutation test: ``p_value`` over ``n_permutations`` partitions (``exact``: all of them)."""

    statistic: float  # sum over X of the values
    p_value: float
    n_permutations: int
    exact: bool
    alternative: str


@dataclasses.dataclass(frozen=True)
class _Group:
    """Tests that share (N, n_x): their pooled values as rows of one matrix."""

    n_total: int
    n_x: int
    values: "np.ndarray"  # (T, N) float64


def permutation_tests(values: Sequence, n_x: Sequence[int] | int, *, n_permutations: int = DEFAULT_PERMUTATIONS,
                      alternative: str = "greater", seed: int = 0, n_jobs: int | None = None,
                      names: Sequence[str] | None = None) -> tuple[PermutationResult, ...]:
    """Permutation p-values of many tests at once.

    ``values[i]`` is test ``i``'s pooled 1-d array (its ``n_x[i]`` X values first, then the Y values); the
    statistic is the sum of the X values. Tests with the same ``(len, n_x)`` share one pass over the same
    partitions. ``n_jobs`` threads (default: the cores this process may use) work on blocks of partitions
    (of all groups at once); the result does not depend on it.
    """
    import numpy as np

    n_permutations = check_permutations(n_permutations)
    alternative = check_alternative(alternative)
    seed = check_seed(seed)
    workers = _workers(n_jobs)
    values = [np.asarray(v, dtype=np.float64) for v in values]
    if isinstance(n_x, (int, np.integer)):
        n_x = [int(n_x)] * len(values)
    names = list(names) if names is not None else [str(i) for i in range(len(values))]
    members: dict[tuple[int, int], list[int]] = {}
    for i, (v, k) in enumerate(zip(values, n_x)):
        k = int(k)
        if v.ndim != 1 or not 0 < k < v.size or not np.all(np.isfinite(v)):
            raise DataError(MSG_POOLED.format(test=names[i], n=v.size if v.ndim == 1 else v.shape, n_x=k))
        members.setdefault((v.size, k), []).append(i)
    runs = [_GroupRun(_Group(N, k, np.vstack([values[i] for i in idx])), n_permutations, alternative, seed)
            for (N, k), idx in members.items()]
    jobs = [(g, job) for g, run in enumerate(runs) for job in run.jobs()]
    kernel = _kernel() if jobs else None
    counts = [np.zeros(run.n_tests, dtype=np.int64) for run in runs]
    for g, rows, part in _run_jobs(jobs, kernel, workers):
        counts[g][rows] += part
    out: list[PermutationResult | None] = [None] * len(values)
    for run, idx, c in zip(runs, members.values(), counts):
        p = run.p_values(c)
        for j, i in enumerate(idx):
            out[i] = PermutationResult(float(run.observed[j]), float(p[j]), int(run.n_used), bool(run.exact),
                                       alternative)
    return tuple(out)  # type: ignore[arg-type]


def permutation_test(values, n_x: int, **kwargs) -> PermutationResult:
    """:func:`permutation_tests` for one test."""
    return permutation_tests([values], [n_x], **kwargs)[0]


def _workers(n_jobs: int | None) -> int:
    if n_jobs is None:
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # pragma: no cover - not on Linux
            return max(1, os.cpu_count() or 1)
    return _check_int(n_jobs, 1, "n_jobs must be a positive integer, not {value!r}")


_KERNEL = None


def _kernel():
    """The compiled pass (:mod:`clipprobe.analysis._eatkernel`), kept on disk in clipprobe's cache folder
    (:mod:`clipprobe._jitcache`), never in the installed package."""
    global _KERNEL
    if _KERNEL is None:
        from clipprobe._jitcache import enable_cache
        from clipprobe.analysis import _eatkernel

        for dispatcher in (_eatkernel.random_counts, _eatkernel.exact_counts):
            enable_cache(dispatcher)
        _KERNEL = _eatkernel
    return _KERNEL


def _run_jobs(jobs, kernel, workers: int):
    """``(group, rows, counts)`` of every job, run on ``workers`` threads (the kernels release the GIL)."""
    def one(item):
        g, job = item
        return g, job.rows, job(kernel)

    if workers <= 1 or len(jobs) <= 1:
        return [one(item) for item in jobs]
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs))) as pool:
        return list(pool.map(one, jobs))


_ALTERNATIVE_CODES = {"greater": 0, "less": 1, "two-sided": 2}  # as in clipprobe.analysis._eatkernel


class _GroupRun:
    """The permutation test of one group: its jobs (blocks of partitions x slices of tests) and p-values."""

    def __init__(self, group: _Group, n_permutations: int, alternative: str, seed: int) -> None:
        import numpy as np

        V = group.values
        N, k = group.n_total, group.n_x
        self.N, self.k, self.seed = N, k, seed
        self.n_tests = V.shape[0]
        self.observed = V[:, :k].sum(axis=1)
        self.total = V.sum(axis=1)
        self.center = k * self.total / N
        tol = TIE_RTOL * np.abs(V).sum(axis=1)
        # a partition counts when its statistic is at least as extreme as the observed one, ties included
        if alternative == "greater":
            self.threshold = self.observed - tol
        elif alternative == "less":
            self.threshold = self.observed + tol
        else:
            self.threshold = abs(self.observed - self.center) - tol
        self.alternative = _ALTERNATIVE_CODES[alternative]
        n_partitions = math.comb(N, k)
        self.exact = n_partitions <= n_permutations
        self.n_used = n_partitions if self.exact else n_permutations
        self.n_random = 0 if self.exact else n_permutations - 1
        self.V = V
        if not self.exact:
            self.plan = _plan(N, k)

    def jobs(self) -> list["_Job"]:
        n = self.n_used if self.exact else self.n_random
        n_blocks = -(-n // PERMUTATION_BLOCK)
        jobs = []
        for lo in range(0, self.n_tests, _TEST_SLICE):
            rows = slice(lo, min(lo + _TEST_SLICE, self.n_tests))
            values, tiled = _layout(self.V[rows], self.exact)
            jobs += [_Job(self, b, min(PERMUTATION_BLOCK, n - b * PERMUTATION_BLOCK), rows, values, tiled)
                     for b in range(n_blocks)]
        return jobs

    def p_values(self, counts):
        if self.exact:
            return counts / self.n_used
        # The observed partition is one of the n: it always counts.
        return (counts + 1) / self.n_used


def _layout(V, exact: bool, tiled: bool | None = None):
    """The values of some tests as the kernel reads them, and whether tiled: rows (padded to whole 64-bit
    words in random mode), or tiles of eight tests (column by column) when there are many tests (one vector
    add serves eight). ``tiled``: force one layout (random mode)."""
    import numpy as np

    T, N = V.shape
    if exact:
        return np.ascontiguousarray(V), False
    if tiled if tiled is not None else T >= _TILED_TESTS:
        tiles = -(-T // 8)
        padded = np.zeros((8 * tiles, N))
        padded[:T] = V
        return np.ascontiguousarray(padded.reshape(tiles, 8, N).transpose(0, 2, 1).reshape(tiles * N, 8)), True
    rows = np.zeros((T, 64 * -(-N // 64)))
    rows[:, :N] = V
    return rows, False


@dataclasses.dataclass(frozen=True)
class _Job:
    """``size`` partitions of block ``block`` of one group, counted for the tests ``rows``."""

    run: _GroupRun
    block: int
    size: int
    rows: slice
    values: "np.ndarray"  # the tests' values as the kernel reads them (_GroupRun._layout)
    tiled: bool

    def __call__(self, kernel):
        import numpy as np

        run, r = self.run, self.rows
        if run.exact:
            side = min(run.k, run.N - run.k)
            first = np.array(_unrank_combination(self.block * PERMUTATION_BLOCK, run.N, side), dtype=np.int64)
            return kernel.exact_counts(first, self.size, run.N, self.values, run.total[r], run.center[r],
                                       run.threshold[r], run.alternative, side == run.k)
        plan = run.plan
        state = block_state(run.seed, run.N, run.k, self.block)
        return kernel.random_counts(state, self.size, run.N, run.k, plan.method, plan.depth, plan.numer,
                                    self.values, self.tiled, run.total[r], run.center[r], run.threshold[r],
                                    run.alternative, np.uint64(plan.thresh32))


def block_state(seed: int, N: int, k: int, block: int) -> "np.ndarray":
    """The generator state (uint64[4], xoshiro256++) of block ``block`` of the random partitions of ``(N, k)``."""
    import numpy as np

    state = np.random.SeedSequence(seed, spawn_key=(N, k, block)).generate_state(4, np.uint64)
    if not state.any():  # pragma: no cover - xoshiro's one forbidden state, probability 2^-256
        state[0] = 1
    return state


# ------------------------------------------------------------------ exact enumeration


def _unrank_combination(rank: int, N: int, side: int) -> list[int]:
    """The ``rank``-th ``side``-subset of ``range(N)`` in lexicographic order (``itertools.combinations``'s)."""
    combo, x = [], 0
    for i in range(side):
        while True:
            c = math.comb(N - x - 1, side - i - 1)  # subsets with x at position i
            if rank < c:
                break
            rank -= c
            x += 1
        combo.append(x)
        x += 1
    return combo


# ------------------------------------------------------------------ random partitions


@dataclasses.dataclass(frozen=True)
class _Plan:
    """How the kernel draws uniform ``k``-subsets of ``N`` (see :mod:`clipprobe.analysis._eatkernel`).

    ``method`` 0: initial bits set with probability ``numer / 2^depth``, then corrected to ``k`` bits;
    1: the smaller side drawn stimulus by stimulus. ``thresh32 = 2^32 mod N``: the rejection bound of
    uniform integers below ``N``.
    """

    method: int
    depth: int
    numer: int
    thresh32: int
    cost: float  # estimated nanoseconds per partition (one test)


@functools.lru_cache(maxsize=256)
def _plan(N: int, k: int) -> _Plan:
    """The cheaper exact way for ``(N, k)``, from an estimate of the draws each needs (a function of
    ``(N, k)`` only, so tests of the same sizes see the same partitions whatever else runs with them)."""
    import numpy as np

    if N >= 2**31:
        raise DataError(MSG_TOO_LARGE.format(n=N))
    side = min(k, N - k)
    words = -(-N // 64)
    harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, N + 1))])
    c = np.arange(N + 1)
    # candidates drawn to move from c set bits to k: N (H(c) - H(k)) removing, N (H(N - c) - H(N - k)) adding
    tries = np.where(c > k, N * (harmonic[c] - harmonic[k]), N * (harmonic[N - c] - harmonic[N - k]))
    log_comb = np.array([math.lgamma(N + 1) - math.lgamma(i + 1) - math.lgamma(N - i + 1) for i in range(N + 1)])
    thresh32 = (1 << 32) % N
    best = _Plan(1, 0, 0, thresh32, float(10.0 + 2.5 * N * (harmonic[N] - harmonic[N - side]) + 2.0 * side))
    for depth in (1, 2, 3):
        for numer in range(1, 1 << depth, 2):
            p = numer / (1 << depth)
            pmf = np.exp(log_comb + c * math.log(p) + (N - c) * math.log1p(-p))  # Binomial(N, p)
            expected = float(pmf @ tries)
            cost = 10.0 + (4.0 * depth + 5.0) * words + 2.0 * expected
            if cost < best.cost:
                best = _Plan(0, depth, numer, thresh32, cost)
    return best


# ----------------------------------------------------------------------------------------------
# SC-WEAT


@dataclasses.dataclass(frozen=True)
class ScWeat:
    """Single-category association of each stimulus ``w`` with ``A`` vs ``B``.

    ``association[i] = s(w_i, A, B)``; ``effect_size[i]`` = that difference of means over the standard
    deviation of ``cos(w_i, A u B)`` (with the run's ddof); ``p_value[i]`` from a permutation test over the
    partitions of ``A u B`` (one-sided as the run's alternative).
    """

    association: "np.ndarray"
    effect_size: "np.ndarray"
    p_value: "np.ndarray"
    n_permutations: int
    exact: bool


def sc_weat(W, A, B, *, ddof: int = 1, n_permutations: int = DEFAULT_SC_PERMUTATIONS, alternative: str = "greater",
            seed: int = 0, n_jobs: int | None = None) -> ScWeat:
    """SC-WEAT of every row of ``W`` against ``A`` vs ``B`` (see :class:`ScWeat`)."""
    import numpy as np

    ddof = check_ddof(ddof)
    W, A, B = (_unit(v) for v in (W, A, B))
    pooled = W @ np.vstack([A, B]).T  # (n, |A| + |B|)
    n_a = A.shape[0]
    perms = permutation_tests(list(pooled), n_a, n_permutations=n_permutations, alternative=alternative,
                              seed=seed, n_jobs=n_jobs)
    assoc = pooled[:, :n_a].mean(axis=1) - pooled[:, n_a:].mean(axis=1)
    return ScWeat(
        association=assoc,
        effect_size=_effect_sizes_rows(pooled, n_a, ddof),
        p_value=np.array([p.p_value for p in perms]),
        n_permutations=perms[0].n_permutations if perms else 0,
        exact=bool(perms[0].exact) if perms else False,
    )


# ----------------------------------------------------------------------------------------------
# bootstrap interval of the effect size


@dataclasses.dataclass(frozen=True)
class Interval:
    low: float
    high: float
    method: str
    confidence: float
    n_resamples: int


class _TargetsStatistic:
    """Effect size of resampled X and Y associations (A and B fixed), vectorised over leading axes."""

    def __init__(self, ddof: int) -> None:
        self.ddof = ddof

    def __call__(self, sx, sy, axis: int = -1):
        import numpy as np

        sx, sy = np.asarray(sx, dtype=np.float64), np.asarray(sy, dtype=np.float64)
        shape = np.broadcast_shapes(sx.shape[:-1], sy.shape[:-1])
        sx = np.broadcast_to(sx, shape + sx.shape[-1:]).reshape(-1, sx.shape[-1])
        sy = np.broadcast_to(sy, shape + sy.shape[-1:]).reshape(-1, sy.shape[-1])
        return _effect_sizes_rows(np.concatenate([sx, sy], axis=1), sx.shape[1], self.ddof).reshape(shape)


def _mixture_effect(delta, p: float):
    """The WEAT effect size of two normal populations with standardised mean difference ``delta``, mixed p:1-p."""
    import numpy as np

    return delta / np.sqrt(1.0 + p * (1.0 - p) * delta ** 2)


def noncentral_t_interval(s_x, s_y, *, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """Interval of the WEAT effect size from the noncentral t distribution (normal associations, equal variances).

    With the pooled within-set standard deviation, ``t = (mean s_x - mean s_y) / (sp sqrt(1/n_x + 1/n_y))``
    has a noncentral t distribution with ``n_x + n_y - 2`` degrees of freedom and noncentrality
    ``delta sqrt(n_x n_y / N)``; inverting it bounds ``delta`` (Steiger and Fouladi's method for Cohen's d),
    and ``d = delta / sqrt(1 + p (1 - p) delta^2)`` (``p = n_x / N``, the sets' mix) maps the bounds to
    the effect size used here, whose denominator is the standard deviation over X u Y. NaN when the
    associations do not vary within the sets.
    """
    import numpy as np
    from scipy.optimize import brentq
    from scipy.stats import nct

    s_x, s_y = np.asarray(s_x, dtype=np.float64), np.asarray(s_y, dtype=np.float64)
    nx, ny = len(s_x), len(s_y)
    N = nx + ny
    df = N - 2
    sp2 = ((nx - 1) * s_x.var(ddof=1) + (ny - 1) * s_y.var(ddof=1)) / df
    if not sp2 > 0:
        return float("nan"), float("nan")
    scale = math.sqrt(nx * ny / N)
    t = (s_x.mean() - s_y.mean()) / math.sqrt(sp2) * scale
    alpha = (1.0 - confidence) / 2.0

    def tail(ncp: float, upper: bool) -> float:
        # scipy returns NaN far in a tail; there the probability is 0 or 1 by monotonicity in ncp
        v = float(nct.sf(t, df, ncp) if upper else nct.cdf(t, df, ncp))
        if v != v:
            v = (0.0 if ncp < t else 1.0) if upper else (1.0 if ncp < t else 0.0)
        return v - alpha

    span = 4.0 + abs(t)
    for _ in range(60):
        lo_a, hi_a = t - span, t + span
        if tail(lo_a, True) < 0 < tail(hi_a, True) and tail(lo_a, False) > 0 > tail(hi_a, False):
            break
        span *= 2.0
    else:  # pragma: no cover - a bracket always exists for finite t
        return float("nan"), float("nan")
    ncp_low = brentq(tail, lo_a, hi_a, args=(True,), xtol=1e-10)
    ncp_high = brentq(tail, lo_a, hi_a, args=(False,), xtol=1e-10)
    p = nx / N
    return float(_mixture_effect(ncp_low / scale, p)), float(_mixture_effect(ncp_high / scale, p))


def effect_size_interval(X, Y, A, B, *, ddof: int = 1, n_resamples: int = DEFAULT_BOOTSTRAP,
                         confidence: float = DEFAULT_CONFIDENCE, method: str = DEFAULT_INTERVAL,
                         seed: int = 0) -> Interval:
    """Interval of the effect size over the target stimuli (the attribute sets as given).

    It estimates the effect size that these attribute sets show on the populations the target stimuli
    are drawn from (mixed in the proportions |X| : |Y|). ``method``:

    * ``"noncentral-t"`` (default): :func:`noncentral_t_interval`, no resampling;
    * ``"BCa"``: bootstrap, X and Y resampled with replacement within themselves, bias-corrected and
      accelerated (scipy.stats.bootstrap), ``n_resamples`` resamples seeded by ``seed``;
    * ``"percentile"``: the same resamples, percentile interval.

    Coverage of nominal 95% intervals, measured by simulation (benchmarks/bench_eat.py --coverage):
    noncentral-t within 0.93-0.97 from 6 to 350 targets per set, small and large effects; BCa too from 25
    targets per set, but 0.88-0.90 with 6-8 per set and d near 1.5; percentile 0.83-0.91 with 6-8 per set.
    NaN bounds when the associations are degenerate.
    """
    import warnings

    import numpy as np
    from scipy.stats import bootstrap

    ddof = check_ddof(ddof)
    if method not in INTERVAL_METHODS:
        raise UsageError(MSG_CI_METHOD.format(value=method))
    if not 0 < confidence < 1:
        raise UsageError(MSG_CONFIDENCE.format(value=confidence))
    sx, sy = association(X, A, B), association(Y, A, B)
    if method == "noncentral-t":
        low, high = noncentral_t_interval(sx, sy, confidence=confidence)
        return Interval(low, high, method, float(confidence), 0)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 100:
        raise UsageError(MSG_BOOTSTRAP.format(value=n_resamples))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xB007,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate distribution gives NaN bounds, reported as such
        res = bootstrap((sx, sy), _TargetsStatistic(ddof), n_resamples=int(n_resamples), confidence_level=confidence,
                        method=method, vectorized=True, rng=rng, batch=min(int(n_resamples), 1000))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return Interval(low, high, method, float(confidence), int(n_resamples))


# ----------------------------------------------------------------------------------------------
# whole tests


@dataclasses.dataclass(frozen=True)
class EatInput:
    """One test's embeddings: rows of X, Y (targets) and A, B (attributes)."""

    name: str
    X: "np.ndarray"
    Y: "np.ndarray"
    A: "np.ndarray"
    B: "np.ndarray"


@dataclasses.dataclass(frozen=True)
class EatResult:
    """One test's statistics (see the module docstring).

    ``s_x``/``s_y``: ``s(w, A, B)`` of each X/Y stimulus. ``sc_targets``: SC-WEAT of the X then Y stimuli
    against A vs B; ``sc_attributes``: SC-WEAT of the A then B stimuli against X vs Y (None when not
    computed). ``q_value``: BH over the tests of the run. ``ci_low``/``ci_high``: NaN without an interval.
    """

    name: str
    n_x: int
    n_y: int
    n_a: int
    n_b: int
    effect_size: float
    ci_low: float
    ci_high: float
    ci_method: str | None
    p_value: float
    q_value: float
    n_permutations: int
    exact: bool
    alternative: str
    ddof: int
    statistic: float
    s_x: "np.ndarray"
    s_y: "np.ndarray"
    sc_targets: ScWeat | None = None
    sc_attributes: ScWeat | None = None


@dataclasses.dataclass(frozen=True)
class EatSettings:
    """How :func:`run_eats` computes (defaults: the published conventions)."""

    ddof: int = 1
    n_permutations: int = DEFAULT_PERMUTATIONS
    alternative: str = "greater"
    seed: int = 0
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    confidence: float = DEFAULT_CONFIDENCE
    ci_method: str | None = DEFAULT_INTERVAL  # None: no interval
    sc_weat: bool = True
    sc_permutations: int = DEFAULT_SC_PERMUTATIONS
    n_jobs: int | None = None


def run_eats(tests: Sequence[EatInput], settings: EatSettings = EatSettings()) -> tuple[EatResult, ...]:
    """Every statistic of every test; permutation p-values in one vectorised pass, then BH over the tests."""
    import numpy as np

    from clipprobe.analysis.significance import bh_adjust

    ddof = check_ddof(settings.ddof)
    check_alternative(settings.alternative)
    check_permutations(settings.n_permutations)
    check_seed(settings.seed)
    if settings.ci_method is not None and settings.ci_method not in INTERVAL_METHODS:
        raise UsageError(MSG_CI_METHOD.format(value=settings.ci_method))
    if settings.ci_method in ("BCa", "percentile"):
        _check_int(settings.n_bootstrap, 100, MSG_BOOTSTRAP)
    prepared = []
    for t in tests:
        X = check_set(t.X, "X", t.name)
        dim = X.shape[1]
        prepared.append((X, check_set(t.Y, "Y", t.name, dim), check_set(t.A, "A", t.name, dim),
                         check_set(t.B, "B", t.name, dim)))
    s_pairs = [(association(X, A, B), association(Y, A, B)) for X, Y, A, B in prepared]
    perms = permutation_tests([np.concatenate(p) for p in s_pairs], [len(p[0]) for p in s_pairs],
                              n_permutations=settings.n_permutations, alternative=settings.alternative,
                              seed=settings.seed, n_jobs=settings.n_jobs, names=[t.name for t in tests])
    q = bh_adjust(np.array([p.p_value for p in perms])) if perms else np.zeros(0)
    sc = _all_sc_weat(prepared, settings) if settings.sc_weat else [(None, None)] * len(tests)
    out = []
    for i, (t, (X, Y, A, B), (sx, sy), perm) in enumerate(zip(tests, prepared, s_pairs, perms)):
        if settings.ci_method is not None:
            ci = effect_size_interval(X, Y, A, B, ddof=ddof, n_resamples=settings.n_bootstrap,
                                      confidence=settings.confidence, method=settings.ci_method, seed=settings.seed)
            low, high, method = ci.low, ci.high, ci.method
        else:
            low, high, method = float("nan"), float("nan"), None
        out.append(EatResult(
            name=t.name, n_x=len(X), n_y=len(Y), n_a=len(A), n_b=len(B),
            effect_size=effect_size(sx, sy, ddof), ci_low=low, ci_high=high, ci_method=method,
            p_value=perm.p_value, q_value=float(q[i]), n_permutations=perm.n_permutations, exact=perm.exact,
            alternative=settings.alternative, ddof=ddof, statistic=perm.statistic, s_x=sx, s_y=sy,
            sc_targets=sc[i][0], sc_attributes=sc[i][1],
        ))
    return tuple(out)


def _all_sc_weat(prepared, settings: EatSettings) -> list[tuple[ScWeat, ScWeat]]:
    """SC-WEAT of every target (vs A, B) and attribute (vs X, Y) of every test, in one permutation pass."""
    import numpy as np

    pooled, n_first, spans = [], [], []
    for X, Y, A, B in prepared:
        targets, attributes = np.vstack([X, Y]), np.vstack([A, B])
        t_rows = targets @ attributes.T  # each target against A u B
        a_rows = attributes @ targets.T  # each attribute against X u Y
        start = len(pooled)
        pooled.extend(t_rows)
        n_first.extend([len(A)] * len(t_rows))
        pooled.extend(a_rows)
        n_first.extend([len(X)] * len(a_rows))
        spans.append((start, len(t_rows), len(a_rows), len(A), len(X), t_rows, a_rows))
    perms = permutation_tests(pooled, n_first, n_permutations=settings.sc_permutations,
                              alternative=settings.alternative, seed=settings.seed, n_jobs=settings.n_jobs)
    out = []
    for start, n_t, n_a_rows, n_a, n_x, t_rows, a_rows in spans:
        parts = []
        for lo, rows, first in ((start, t_rows, n_a), (start + n_t, a_rows, n_x)):
            ps = perms[lo:lo + len(rows)]
            parts.append(ScWeat(
                association=rows[:, :first].mean(axis=1) - rows[:, first:].mean(axis=1),
                effect_size=_effect_sizes_rows(rows, first, settings.ddof),
                p_value=np.array([p.p_value for p in ps]),
                n_permutations=ps[0].n_permutations, exact=ps[0].exact,
            ))
        out.append((parts[0], parts[1]))
    return out


__all__ = [
    "ALTERNATIVES", "DEFAULT_INTERVAL", "DEFAULT_PERMUTATIONS", "INTERVAL_METHODS", "noncentral_t_interval", "DEFAULT_SC_PERMUTATIONS", "EatInput", "EatResult", "EatSettings",
    "Interval", "PermutationResult", "ScWeat", "association", "check_set", "effect_size", "effect_size_interval",
    "permutation_test", "permutation_tests", "run_eats", "sc_weat",
]
