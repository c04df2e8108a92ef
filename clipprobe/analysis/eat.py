"""Embedding Association Tests (WEAT, SEAT, iEAT and their cross-modal mixes) on arrays.

A test has target sets ``X``, ``Y`` and attribute sets ``A``, ``B`` of embeddings (rows; any modality, any
norm: rows are L2-normalised here). With ``cos`` the cosine similarity:

* association of a row: ``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)`` (:func:`association`);
* effect size: ``d = (mean_x s(x) - mean_y s(y)) / std_{w in X u Y} s(w)`` over the rows, with ``ddof=1``
  (Caliskan et al. 2017, sent-bias, Ghate et al. 2025); ``ddof=0`` gives WEFE's value, ``d * sqrt(N / (N -
  1))`` with ``N = |X| + |Y|`` (:func:`effect_size`);
* stimuli and rows. What was sampled is a *stimulus*: a word (with its templated sentences), a name, an
  image. A set given as words x templates has several rows (sentences) per stimulus; ``EatInput.units``
  says which stimulus each row belongs to (rows without it are a stimulus each). ``d`` stays the
  statistic over rows (comparable with the published values); the inference is over stimuli;
* p-value (:func:`permutation_tests`): the test statistic ``sum_x v(x)`` over re-partitions of ``X u Y``
  into sets of sizes ``|X|`` and ``|Y|`` (unequal sizes are fine), where the values ``v`` are the mean
  association of each *stimulus* (its rows' mean ``s``): every partition moves all sentences of a word
  together (``p_value``). With one row per stimulus this is the seed's test over rows, which stays
  available for any test as ``p_value_sentences`` (rows permuted as if independent: under word-level
  variation it rejects a true null far too often, see docs/association-tests.md). When the number of partitions
  ``C(|X| + |Y|, |X|)`` is at most the budget ``n`` they are all enumerated (``exact``); otherwise ``n - 1``
  random partitions plus the observed one are used, so ``p >= 1 / n``. Ties count as exceedances: a
  partition counts when its statistic is at least the observed one minus ``1e-11 * sum |v|`` (sums of the
  same numbers in another order differ by rounding). ``alternative``: ``"greater"`` (X more associated with
  A than Y is; the published convention, one-sided), ``"less"``, or ``"two-sided"`` (``|S - E S| >= |S_obs -
  E S|``, ``E S = |X| * mean(v)``, the permutation mean);
* SC-WEAT (single-category, Caliskan et al.): for one row ``w`` and two sets ``A``, ``B``, the same
  statistics with ``X u Y`` replaced by the cosines of ``w`` to ``A u B``, the p-value permuting the
  stimuli of ``A u B`` (:func:`sc_weat`);
* an interval of ``d`` (:func:`effect_size_interval`): a bootstrap that resamples the stimuli of all four
  sets independently (``resample="all"``; ``"targets"`` keeps ``A`` and ``B`` as given), through
  scipy.stats.bootstrap, a normal interval on the Fisher-z scale of the point-biserial correlation. It estimates ``d`` of the populations the stimuli were drawn
  from; its coverage was measured by simulation (``benchmarks/bench_eat_null.py --coverage``) and it is
  published only where every resampled set has at least :data:`MIN_INTERVAL_STIMULI` stimuli (below
  that, coverage fell short of 0.93: the bounds are NaN and ``Interval.note`` says why);
* BH over the tests of a run (:func:`run_eats`, with :func:`clipprobe.analysis.significance.bh_adjust`), and
  over the SC-WEAT rows of each test (``ScWeat.q_value``: the family is one test's targets and attributes,
  so selecting other tests or orders does not change it).

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
from typing import TYPE_CHECKING, Mapping, Sequence

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

ALTERNATIVES = ("greater", "less", "two-sided")
SET_NAMES = ("X", "Y", "A", "B")
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
INTERVAL_METHODS = ("fisher-z", "BCa", "percentile")
PUBLISHED_INTERVALS = ("fisher-z",)  # the methods whose coverage was measured within 0.93-0.97 (docs/association-tests.md)
DEFAULT_INTERVAL = "fisher-z"
RESAMPLE_SETS = ("all", "targets")  # which sets the interval's bootstrap resamples: X, Y, A, B or X, Y
DEFAULT_RESAMPLE = "all"
MIN_INTERVAL_STIMULI = 25  # fewest stimuli in a resampled set for a published interval (measured coverage)
MSG_CI_METHOD = "interval method {value!r} is not one of " + ", ".join(repr(m) for m in INTERVAL_METHODS)
MSG_CI_UNPUBLISHED = ("interval method {value!r} is not one a run publishes (its measured coverage is outside "
                      "0.93-0.97); use " + ", ".join(repr(m) for m in PUBLISHED_INTERVALS) + " or none")
MSG_RESAMPLE = "resample {value!r} is not one of " + ", ".join(repr(m) for m in RESAMPLE_SETS)
MSG_UNITS_LENGTH = "test {test!r}: units of set {name} has {got} labels for {n} rows (one per row)"
MSG_UNITS_SET = "test {test!r}: units given for unknown set(s) {names}; the sets are X, Y, A, B"
MSG_TOO_FEW_UNITS = ("set {name} of test {test!r} has {n} stimulus/stimuli (its {rows} rows belong to {n}); "
                     "an association test needs at least {min} per set")
MSG_CI_WITHHELD = ("not published: set(s) {sets} have fewer than {min} stimuli, where the coverage of this "
                   "interval was measured below 0.93")


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
# stimuli: which rows were sampled together


def stimulus_codes(labels, n_rows: int, name: str = "", test: str = "") -> "np.ndarray":
    """The stimulus of each row as codes ``0 .. k - 1`` (in order of first appearance).

    ``labels``: one hashable label per row, rows with the same label being one sampled stimulus (a word's
    templated sentences); None: every row is a stimulus of its own.
    """
    import numpy as np

    if labels is None:
        return np.arange(n_rows, dtype=np.int64)
    labels = list(labels)
    if len(labels) != n_rows:
        raise DataError(MSG_UNITS_LENGTH.format(test=test, name=name, got=len(labels), n=n_rows))
    index: dict = {}
    return np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64, count=n_rows)


def unit_means(values, codes) -> "np.ndarray":
    """Mean of ``values`` over the rows of each stimulus (``codes`` from :func:`stimulus_codes`)."""
    import numpy as np

    codes = np.asarray(codes, dtype=np.int64)
    n = int(codes.max()) + 1 if codes.size else 0
    return np.bincount(codes, weights=np.asarray(values, dtype=np.float64), minlength=n) / np.bincount(codes, minlength=n)


def _averaging(codes) -> "np.ndarray":
    """The (rows, stimuli) matrix whose product with row values gives each stimulus's mean."""
    import numpy as np

    n = int(codes.max()) + 1
    M = np.zeros((codes.size, n))
    M[np.arange(codes.size), codes] = 1.0
    return M / M.sum(axis=0)


def _grouped(codes) -> bool:
    """Whether some stimulus has several rows."""
    return bool(codes.size) and int(codes.max()) + 1 < codes.size


# ----------------------------------------------------------------------------------------------
# SC-WEAT


@dataclasses.dataclass(frozen=True)
class ScWeat:
    """Single-category association of each row ``w`` with ``A`` vs ``B``.

    ``association[i] = s(w_i, A, B)``; ``effect_size[i]`` = that difference of means over the standard
    deviation of ``cos(w_i, A u B)`` over the rows (with the run's ddof); ``p_value[i]`` from a permutation
    test over the partitions of the *stimuli* of ``A u B`` (each stimulus's mean cosine; one-sided as the
    run's alternative), ``p_value_sentences[i]`` over the partitions of its rows (the seed's test; the same
    as ``p_value`` when every stimulus is one row). ``q_value``: BH over the rows of one call (in
    :func:`run_eats`: over all SC-WEAT rows of one test, its targets and its attributes).
    """

    association: "np.ndarray"
    effect_size: "np.ndarray"
    p_value: "np.ndarray"
    n_permutations: int
    exact: bool
    p_value_sentences: "np.ndarray | None" = None
    q_value: "np.ndarray | None" = None
    n_stimuli: int = 0  # stimuli of the reference sets (A u B), the units permuted


def sc_weat(W, A, B, *, units_a=None, units_b=None, ddof: int = 1, n_permutations: int = DEFAULT_SC_PERMUTATIONS,
            alternative: str = "greater", seed: int = 0, n_jobs: int | None = None) -> ScWeat:
    """SC-WEAT of every row of ``W`` against ``A`` vs ``B`` (see :class:`ScWeat`); ``units_a``/``units_b``:
    the stimulus of each row of ``A``/``B`` (see :func:`stimulus_codes`)."""
    from clipprobe.analysis.significance import bh_adjust

    ddof = check_ddof(ddof)
    W, A, B = (_unit(v) for v in (W, A, B))
    ca = stimulus_codes(units_a, len(A), "A", "sc_weat")
    cb = stimulus_codes(units_b, len(B), "B", "sc_weat")
    job = _ScJob.build(W, A, B, ca, cb)
    unit_p, row_p = _sc_pvalues([job], n_permutations=n_permutations, alternative=alternative, seed=seed,
                                n_jobs=n_jobs)
    sc = job.result(unit_p[0], row_p[0], ddof)
    return dataclasses.replace(sc, q_value=bh_adjust(sc.p_value) if len(sc.p_value) else sc.p_value)


@dataclasses.dataclass
class _ScJob:
    """The SC-WEAT rows of one stimulus set against two reference sets: cosines per row and per stimulus."""

    pooled: "np.ndarray"  # (n, |A| + |B| rows)
    n_first_rows: int
    pooled_units: "np.ndarray"  # (n, stimuli of A + stimuli of B)
    n_first_units: int
    grouped: bool

    @classmethod
    def build(cls, W, A, B, ca, cb) -> "_ScJob":
        import numpy as np

        pooled = W @ np.vstack([A, B]).T
        grouped = _grouped(ca) or _grouped(cb)
        if grouped:
            units = np.hstack([pooled[:, :len(A)] @ _averaging(ca), pooled[:, len(A):] @ _averaging(cb)])
        else:
            units = pooled
        return cls(pooled, len(A), units, int(ca.max()) + 1, grouped)

    def result(self, unit_p, row_p, ddof: int) -> ScWeat:
        k = self.n_first_rows
        first = unit_p[0] if unit_p else None
        return ScWeat(
            association=self.pooled[:, :k].mean(axis=1) - self.pooled[:, k:].mean(axis=1),
            effect_size=_effect_sizes_rows(self.pooled, k, ddof),
            p_value=_p_array(unit_p),
            n_permutations=first.n_permutations if first else 0,
            exact=bool(first.exact) if first else False,
            p_value_sentences=_p_array(row_p),
            n_stimuli=int(self.pooled_units.shape[1]),
        )


def _p_array(perms) -> "np.ndarray":
    import numpy as np

    return np.array([p.p_value for p in perms], dtype=np.float64)


def _sc_pvalues(jobs: Sequence[_ScJob], *, n_permutations: int, alternative: str, seed: int, n_jobs: int | None):
    """Per job, the permutation results over stimuli and over rows (the same objects when not grouped), all in
    one pass."""
    values, firsts, spans = [], [], []
    for job in jobs:
        lo = len(values)
        values.extend(job.pooled_units)
        firsts.extend([job.n_first_units] * len(job.pooled_units))
        mid = len(values)
        if job.grouped:
            values.extend(job.pooled)
            firsts.extend([job.n_first_rows] * len(job.pooled))
        spans.append((lo, mid, len(values)))
    perms = permutation_tests(values, firsts, n_permutations=n_permutations, alternative=alternative, seed=seed,
                              n_jobs=n_jobs) if values else ()
    unit_p = [perms[lo:mid] for lo, mid, _ in spans]
    row_p = [perms[mid:hi] if hi > mid else perms[lo:mid] for lo, mid, hi in spans]
    return unit_p, row_p


# ----------------------------------------------------------------------------------------------
# interval of the effect size: a bootstrap of the stimuli of all four sets


@dataclasses.dataclass(frozen=True)
class Interval:
    """A two-sided interval of d; NaN bounds with ``note`` saying why when it is not published."""

    low: float
    high: float
    method: str
    confidence: float
    n_resamples: int
    resample: str = DEFAULT_RESAMPLE
    note: str = ""


def _multiplicity(idx, n: int) -> "np.ndarray":
    """How often each of ``n`` stimuli occurs in each row of ``idx`` (R, m) of drawn indices: (R, n)."""
    import numpy as np

    R = idx.shape[0]
    flat = idx + n * np.arange(R, dtype=np.int64)[:, None]
    return np.bincount(flat.ravel(), minlength=R * n).reshape(R, n)


class _StimulusStatistic:
    """The effect size over rows after resampling stimuli, vectorised: called with arrays of stimulus indices
    (one per resampled set, X, Y then A, B; leading axes are resamples), each resampled stimulus bringing all
    its rows.

    With ``S_A`` the sums of the unit rows of each A stimulus, the association of every target row under
    stimulus weights ``w_A``, ``w_B`` is ``G_A w_A / (k_A . w_A) - G_B w_B / (k_B . w_B)`` with ``G_A = T S_A'``
    (``T`` the target rows, ``k_A`` the rows per stimulus): one matrix product per batch of resamples. The
    effect size then weighs each target row by how often its stimulus was drawn.
    """

    def __init__(self, X, Y, A, B, codes: Mapping[str, "np.ndarray"], ddof: int, resample: str) -> None:
        import numpy as np

        self.ddof = ddof
        self.cx, self.cy = codes["X"], codes["Y"]
        self.nx_units, self.ny_units = int(self.cx.max()) + 1, int(self.cy.max()) + 1
        self.nx_rows = len(X)
        T = np.vstack([X, Y])
        self.G, self.k = {}, {}
        for name, M in (("A", A), ("B", B)):
            c = codes[name]
            n = int(c.max()) + 1
            sums = np.zeros((n, M.shape[1]))
            np.add.at(sums, c, M)
            self.G[name] = T @ sums.T
            self.k[name] = np.bincount(c, minlength=n).astype(np.float64)
        self.resample_attributes = resample == "all"
        fixed = self.G["A"].sum(axis=1) / self.k["A"].sum() - self.G["B"].sum(axis=1) / self.k["B"].sum()
        self.center = float(fixed.mean())  # a constant shift of s changes neither d nor its variance
        self.fixed = fixed - self.center

    def __call__(self, *samples, axis: int = -1):
        import numpy as np

        arrays = [np.asarray(x) for x in samples]
        shape = np.broadcast_shapes(*(x.shape[:-1] for x in arrays))
        flat = [np.broadcast_to(x, shape + x.shape[-1:]).reshape(-1, x.shape[-1]).astype(np.int64) for x in arrays]
        wx = _multiplicity(flat[0], self.nx_units)
        wy = _multiplicity(flat[1], self.ny_units)
        if self.resample_attributes:
            s = np.zeros((wx.shape[0], self.G["A"].shape[0]))
            for name, idx, sign in (("A", flat[2], 1.0), ("B", flat[3], -1.0)):
                w = _multiplicity(idx, self.k[name].size).astype(np.float64)
                s += sign * ((w / (w @ self.k[name])[:, None]) @ self.G[name].T)
            s -= self.center
        else:
            s = self.fixed[None, :]
        weights = np.concatenate([wx[:, self.cx], wy[:, self.cy]], axis=1).astype(np.float64)
        ws = weights * s
        k = self.nx_rows
        n_x, n_y = weights[:, :k].sum(axis=1), weights[:, k:].sum(axis=1)
        sum_x, sum_y = ws[:, :k].sum(axis=1), ws[:, k:].sum(axis=1)
        total = n_x + n_y
        var = ((ws * s).sum(axis=1) - (sum_x + sum_y) ** 2 / total) / (total - self.ddof)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.where(var > 0, (sum_x / n_x - sum_y / n_y) / np.sqrt(np.where(var > 0, var, 1.0)), np.nan)
        return d.reshape(shape)


def effect_size_interval(X, Y, A, B, *, units: Mapping[str, Sequence] | None = None, ddof: int = 1,
                         n_resamples: int = DEFAULT_BOOTSTRAP, confidence: float = DEFAULT_CONFIDENCE,
                         method: str = DEFAULT_INTERVAL, resample: str = DEFAULT_RESAMPLE, seed: int = 0,
                         min_stimuli: int = MIN_INTERVAL_STIMULI) -> Interval:
    """A two-sided interval of the effect size from a bootstrap of the stimuli.

    The quantity estimated: d (over rows, as :func:`effect_size`) of the populations the stimuli were drawn
    from, X and Y mixed in the proportions |X| : |Y|. ``resample="all"``: the stimuli of X, Y, A and B are
    each resampled with replacement within their set (a word brings all its sentences; ``units`` says which
    rows belong together, see :class:`EatInput`), so the interval covers what varies when other words or
    images are drawn for any of the four sets; ``"targets"``: A and B are the population of interest and stay
    as given. The ``n_resamples`` resamples come from scipy.stats.bootstrap with a generator seeded by
    ``seed``. ``method``:

    * ``"fisher-z"`` (default): a normal interval on the scale ``z = atanh(c d)``, ``c = sqrt(p (1 - p) N /
      (N - ddof))`` (``p``: X's share of the ``N`` target rows), which makes ``c d`` the point-biserial
      correlation of set membership with ``s`` and ``z`` its Fisher transform: ``z +- q sd(z*)``, ``sd(z*)``
      the standard deviation of the resampled ``z``, mapped back to d. The resamples are drawn as
      scipy.stats.bootstrap draws them (``n`` of ``n`` stimuli per set), but with ``resample="targets"``
      ``n - 1`` of the ``n`` stimuli of X and of Y (the bootstrap variance of a mean is then unbiased);
    * ``"BCa"`` (bias-corrected and accelerated; the jackknife leaves out one stimulus of one set at a time)
      and ``"percentile"``: scipy's. Kept for comparison: their measured coverage with words varying fell
      outside 0.93-0.97 (BCa about 0.92, percentile up to 0.99), so a run does not publish them.

    Coverage of nominal 95% intervals was measured by simulation from known populations of words with
    word-level offsets and templated sentences (benchmarks/bench_eat_null.py --coverage; numbers in the
    README). Where a resampled set has fewer than ``min_stimuli`` stimuli the bounds are NaN and ``note``
    says so (0: always compute, for such measurements).
    """
    import warnings

    import numpy as np
    from scipy.stats import bootstrap

    ddof = check_ddof(ddof)
    if method not in INTERVAL_METHODS:
        raise UsageError(MSG_CI_METHOD.format(value=method))
    if resample not in RESAMPLE_SETS:
        raise UsageError(MSG_RESAMPLE.format(value=resample))
    if not 0 < confidence < 1:
        raise UsageError(MSG_CONFIDENCE.format(value=confidence))
    n_resamples = _check_int(n_resamples, 100, MSG_BOOTSTRAP)
    sets = {"X": _unit(X), "Y": _unit(Y), "A": _unit(A), "B": _unit(B)}
    codes = _codes_of(sets, units, "interval")
    names = ("X", "Y", "A", "B") if resample == "all" else ("X", "Y")
    n_units = {k: int(codes[k].max()) + 1 for k in names}
    short = [k for k in names if n_units[k] < min_stimuli]
    if short:
        note = MSG_CI_WITHHELD.format(sets=", ".join(f"{k} ({n_units[k]})" for k in short), min=min_stimuli)
        return Interval(float("nan"), float("nan"), method, float(confidence), n_resamples, resample, note)
    statistic = _StimulusStatistic(sets["X"], sets["Y"], sets["A"], sets["B"], codes, ddof, resample)
    data = tuple(np.arange(n_units[k]) for k in names)
    rows = len(sets["X"]) + len(sets["Y"])
    batch = max(1, min(n_resamples, 4_000_000 // max(rows, 1)))
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xB007,)))
    if method == "fisher-z":
        # with A and B fixed, n - 1 of the n stimuli of X and of Y are drawn: the bootstrap variance of a mean
        # is then unbiased (drawing n gives (n - 1) / n of it); drawing all four sets, the attributes' share
        # already overstates the variance, and n are drawn (as scipy does: same generator, same order)
        shrink = 1 if resample == "targets" else 0
        replicates = []
        for lo in range(0, n_resamples, batch):
            size = min(batch, n_resamples - lo)
            replicates.append(statistic(*(rng.integers(0, len(u), (size, len(u) - shrink)) for u in data)))
        low, high = _fisher_z_interval(float(statistic(*data)), np.concatenate(replicates), len(sets["X"]) / rows,
                                       rows, ddof, confidence)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a degenerate distribution gives NaN bounds, reported as such
            res = bootstrap(data, statistic, n_resamples=n_resamples, confidence_level=confidence, method=method,
                            vectorized=True, rng=rng, batch=batch)
        low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    note = "" if math.isfinite(low) and math.isfinite(high) else "degenerate: the associations do not vary"
    return Interval(low, high, method, float(confidence), n_resamples, resample, note)


def _fisher_z_interval(d: float, replicates, p: float, n_rows: int, ddof: int, confidence: float):
    """The normal interval of ``atanh(c d)`` with the bootstrap's standard deviation, mapped back to d (see
    :func:`effect_size_interval`); NaN when d or the replicates are not finite."""
    import numpy as np
    from scipy.stats import norm

    c = math.sqrt(p * (1.0 - p) * n_rows / (n_rows - ddof))
    replicates = np.asarray(replicates, dtype=np.float64)
    if not math.isfinite(d) or not np.all(np.isfinite(replicates)):
        return float("nan"), float("nan")
    edge = 1.0 - 1e-12  # |c d| < 1 always; the clip only guards rounding
    z = math.atanh(min(max(c * d, -edge), edge))
    se = float(np.arctanh(np.clip(c * replicates, -edge, edge)).std(ddof=1))
    q = float(norm.ppf(0.5 + confidence / 2.0))
    return math.tanh(z - q * se) / c, math.tanh(z + q * se) / c


def _codes_of(sets: Mapping[str, "np.ndarray"], units: Mapping[str, Sequence] | None, test: str):
    """Stimulus codes of the four sets (see :func:`stimulus_codes`)."""
    units = dict(units or {})
    unknown = [k for k in units if k not in SET_NAMES]
    if unknown:
        raise DataError(MSG_UNITS_SET.format(test=test, names=", ".join(map(str, unknown))))
    return {k: stimulus_codes(units.get(k), len(v), k, test) for k, v in sets.items()}


# ----------------------------------------------------------------------------------------------
# whole tests



@dataclasses.dataclass(frozen=True)
class EatInput:
    """One test's embeddings: rows of X, Y (targets) and A, B (attributes).

    ``units``: for any of the sets, the stimulus each row belongs to (a label per row; rows sharing a label
    are one sampled stimulus, such as a word's templated sentences). A set not named: every row is a
    stimulus of its own (images, single sentences).
    """

    name: str
    X: "np.ndarray"
    Y: "np.ndarray"
    A: "np.ndarray"
    B: "np.ndarray"
    units: Mapping[str, Sequence] | None = None


@dataclasses.dataclass(frozen=True)
class EatResult:
    """One test's statistics (see the module docstring).

    ``n_x`` ... ``n_b``: stimuli (words, images) per set; ``n_x_texts`` ... ``n_b_texts``: rows (sentences; for
    an image set its images, as ``n_x``). ``effect_size``: over rows. ``p_value``: permutation test over the stimuli of X u Y
    (``statistic``: the sum of X's stimulus means), ``p_value_sentences``: over its rows (the seed's test).
    ``s_x``/``s_y``: ``s(w, A, B)`` of each X/Y row. ``sc_targets``: SC-WEAT of the X then Y rows against A
    vs B; ``sc_attributes``: of the A then B rows against X vs Y (None when not computed). ``q_value``: BH
    over the tests of the run. ``ci_low``/``ci_high``: the two-sided interval (NaN without one, or where
    ``ci_note`` says it is not published).
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
    n_x_texts: int = 0
    n_y_texts: int = 0
    n_a_texts: int = 0
    n_b_texts: int = 0
    p_value_sentences: float = float("nan")
    n_permutations_sentences: int = 0
    exact_sentences: bool = False
    ci_resample: str | None = None
    ci_confidence: float = float("nan")
    ci_note: str = ""


@dataclasses.dataclass(frozen=True)
class EatSettings:
    """How :func:`run_eats` computes (defaults: the published conventions, with stimuli as the unit)."""

    ddof: int = 1
    n_permutations: int = DEFAULT_PERMUTATIONS
    alternative: str = "greater"
    seed: int = 0
    n_bootstrap: int = DEFAULT_BOOTSTRAP
    confidence: float = DEFAULT_CONFIDENCE
    ci_method: str | None = DEFAULT_INTERVAL  # None: no interval
    ci_resample: str = DEFAULT_RESAMPLE
    sc_weat: bool = True
    sc_permutations: int = DEFAULT_SC_PERMUTATIONS
    n_jobs: int | None = None


@dataclasses.dataclass(frozen=True)
class _Prepared:
    """One test's unit rows and the stimulus codes of its sets."""

    sets: Mapping[str, "np.ndarray"]
    codes: Mapping[str, "np.ndarray"]

    def n_units(self, name: str) -> int:
        return int(self.codes[name].max()) + 1


def _prepare(t: EatInput) -> _Prepared:
    X = check_set(t.X, "X", t.name)
    dim = X.shape[1]
    sets = {"X": X, "Y": check_set(t.Y, "Y", t.name, dim), "A": check_set(t.A, "A", t.name, dim),
            "B": check_set(t.B, "B", t.name, dim)}
    codes = _codes_of(sets, t.units, t.name)
    for name, c in codes.items():
        n = int(c.max()) + 1
        if n < MIN_SET_SIZE:
            raise DataError(MSG_TOO_FEW_UNITS.format(name=name, test=t.name, n=n, rows=c.size, min=MIN_SET_SIZE))
    return _Prepared(sets, codes)


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
    if settings.ci_method is not None and settings.ci_method not in PUBLISHED_INTERVALS:
        raise UsageError(MSG_CI_UNPUBLISHED.format(value=settings.ci_method))
    if settings.ci_resample not in RESAMPLE_SETS:
        raise UsageError(MSG_RESAMPLE.format(value=settings.ci_resample))
    if settings.ci_method is not None:
        _check_int(settings.n_bootstrap, 100, MSG_BOOTSTRAP)
    prepared = [_prepare(t) for t in tests]
    s_pairs = [(association(p.sets["X"], p.sets["A"], p.sets["B"]), association(p.sets["Y"], p.sets["A"], p.sets["B"]))
               for p in prepared]
    # one pass: the tests over stimuli, then (where some stimulus has several rows) the same tests over rows
    values, n_first, names, grouped = [], [], [], []
    for t, p, (sx, sy) in zip(tests, prepared, s_pairs):
        values.append(np.concatenate([unit_means(sx, p.codes["X"]), unit_means(sy, p.codes["Y"])]))
        n_first.append(p.n_units("X"))
        names.append(t.name)
        grouped.append(_grouped(p.codes["X"]) or _grouped(p.codes["Y"]))
    row_index = {}
    for i, (t, (sx, sy)) in enumerate(zip(tests, s_pairs)):
        if grouped[i]:
            row_index[i] = len(values)
            values.append(np.concatenate([sx, sy]))
            n_first.append(len(sx))
            names.append(f"{t.name} (rows)")
    perms = permutation_tests(values, n_first, n_permutations=settings.n_permutations,
                              alternative=settings.alternative, seed=settings.seed, n_jobs=settings.n_jobs,
                              names=names) if values else ()
    q = bh_adjust(np.array([perms[i].p_value for i in range(len(tests))])) if tests else np.zeros(0)
    sc = _all_sc_weat(prepared, settings) if settings.sc_weat else [(None, None)] * len(tests)
    out = []
    for i, (t, p, (sx, sy)) in enumerate(zip(tests, prepared, s_pairs)):
        perm = perms[i]
        rows = perms[row_index[i]] if i in row_index else perm
        if settings.ci_method is not None:
            S = p.sets
            ci = effect_size_interval(S["X"], S["Y"], S["A"], S["B"], units=t.units, ddof=ddof,
                                      n_resamples=settings.n_bootstrap, confidence=settings.confidence,
                                      method=settings.ci_method, resample=settings.ci_resample, seed=settings.seed)
            low, high, method, note, resample = ci.low, ci.high, ci.method, ci.note, ci.resample
        else:
            low, high, method, note, resample = float("nan"), float("nan"), None, "", None
        out.append(EatResult(
            name=t.name, n_x=p.n_units("X"), n_y=p.n_units("Y"), n_a=p.n_units("A"), n_b=p.n_units("B"),
            n_x_texts=len(sx), n_y_texts=len(sy), n_a_texts=len(p.sets["A"]), n_b_texts=len(p.sets["B"]),
            effect_size=effect_size(sx, sy, ddof), ci_low=low, ci_high=high, ci_method=method,
            ci_resample=resample, ci_confidence=float(settings.confidence) if method else float("nan"), ci_note=note,
            p_value=perm.p_value, q_value=float(q[i]), n_permutations=perm.n_permutations, exact=perm.exact,
            p_value_sentences=rows.p_value, n_permutations_sentences=rows.n_permutations, exact_sentences=rows.exact,
            alternative=settings.alternative, ddof=ddof, statistic=perm.statistic, s_x=sx, s_y=sy,
            sc_targets=sc[i][0], sc_attributes=sc[i][1],
        ))
    return tuple(out)


def _all_sc_weat(prepared: Sequence[_Prepared], settings: EatSettings) -> list[tuple[ScWeat, ScWeat]]:
    """SC-WEAT of every target row (vs the stimuli of A, B) and attribute row (vs those of X, Y) of every
    test, in one permutation pass; BH over the rows of each test."""
    import numpy as np

    from clipprobe.analysis.significance import bh_adjust

    jobs = []
    for p in prepared:
        S, c = p.sets, p.codes
        targets, attributes = np.vstack([S["X"], S["Y"]]), np.vstack([S["A"], S["B"]])
        jobs.append(_ScJob.build(targets, S["A"], S["B"], c["A"], c["B"]))
        jobs.append(_ScJob.build(attributes, S["X"], S["Y"], c["X"], c["Y"]))
    unit_p, row_p = _sc_pvalues(jobs, n_permutations=settings.sc_permutations, alternative=settings.alternative,
                                seed=settings.seed, n_jobs=settings.n_jobs)
    out = []
    for i in range(len(prepared)):
        parts = [jobs[j].result(unit_p[j], row_p[j], settings.ddof) for j in (2 * i, 2 * i + 1)]
        q = bh_adjust(np.concatenate([parts[0].p_value, parts[1].p_value]))
        n_t = len(parts[0].p_value)
        out.append((dataclasses.replace(parts[0], q_value=q[:n_t]), dataclasses.replace(parts[1], q_value=q[n_t:])))
    return out


__all__ = [
    "ALTERNATIVES", "DEFAULT_INTERVAL", "DEFAULT_PERMUTATIONS", "DEFAULT_RESAMPLE", "DEFAULT_SC_PERMUTATIONS",
    "EatInput", "EatResult", "EatSettings", "INTERVAL_METHODS", "Interval", "MIN_INTERVAL_STIMULI", "PUBLISHED_INTERVALS",
    "PermutationResult", "RESAMPLE_SETS", "ScWeat", "association", "check_set", "effect_size", "effect_size_interval",
    "permutation_test", "permutation_tests", "run_eats", "sc_weat", "stimulus_codes", "unit_means",
]
