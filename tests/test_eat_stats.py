"""Statistics of the association tests against published vectors, WEFE's formula, scipy and brute force."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from clipprobe.analysis import eat
from clipprobe.analysis.significance import bh_adjust
from clipprobe.errors import DataError, UsageError


def _vector_inputs():
    """The test vector of PROVENANCE.md: default_rng(0), d = 8, X, Y, A, B drawn in that order."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 8))
    Y = rng.standard_normal((4, 8)) + 0.3
    A = rng.standard_normal((5, 8)) + 0.3
    B = rng.standard_normal((6, 8))
    return X, Y, A, B


def _pooled(X, Y, A, B):
    return np.concatenate([eat.association(X, A, B), eat.association(Y, A, B)])


# ------------------------------------------------------------------ published test vector


def test_published_test_vector():
    X, Y, A, B = _vector_inputs()
    sx, sy = eat.association(X, A, B), eat.association(Y, A, B)
    assert eat.effect_size(sx, sy, ddof=1) == pytest.approx(-1.068033, abs=5e-7)
    assert eat.effect_size(sx, sy, ddof=0) == pytest.approx(-1.141776, abs=5e-7)
    r = eat.permutation_test(_pooled(X, Y, A, B), 4)
    assert r.exact and r.n_permutations == 70
    assert r.p_value == pytest.approx(66 / 70, abs=1e-15)
    res = eat.run_eats([eat.EatInput("vector", X, Y, A, B)], eat.EatSettings(ci_method=None))[0]
    assert res.effect_size == pytest.approx(-1.068033, abs=5e-7)
    assert res.p_value == pytest.approx(66 / 70) and res.exact and res.n_permutations == 70


# ------------------------------------------------------------------ effect size: WEFE


def _wefe_formula(X, Y, A, B):
    """WEFE's WEAT effect size as its metric computes it: per-word mean cosines, np.std (ddof 0)."""
    def cos(u, v):
        return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

    def s(w):
        return np.mean([cos(w, a) for a in A]) - np.mean([cos(w, b) for b in B])

    first = np.mean([s(x) for x in X])
    second = np.mean([s(y) for y in Y])
    return (first - second) / np.std([s(w) for w in np.concatenate([X, Y])])


@pytest.mark.parametrize("sizes", [(4, 4, 5, 6), (7, 3, 2, 9), (10, 12, 4, 4)])
def test_effect_size_ddof0_is_wefes_formula(sizes):
    rng = np.random.default_rng(sum(sizes))
    X, Y, A, B = (rng.standard_normal((n, 6)) + 0.2 * i for i, n in enumerate(sizes))
    sx, sy = eat.association(X, A, B), eat.association(Y, A, B)
    d0 = eat.effect_size(sx, sy, ddof=0)
    assert d0 == pytest.approx(_wefe_formula(X, Y, A, B), rel=1e-12)
    N = len(X) + len(Y)
    assert d0 == pytest.approx(eat.effect_size(sx, sy, ddof=1) * math.sqrt(N / (N - 1)), rel=1e-12)


_WEFE_SCRIPT = r"""
import json, sys
import numpy as np
from wefe.metrics import WEAT
from wefe.query import Query
from wefe.word_embedding_model import WordEmbeddingModel
from gensim.models import KeyedVectors
data = json.loads(sys.stdin.read())
out = []
for case in data:
    kv = KeyedVectors(vector_size=len(case["X"][0]))
    words, vecs = [], []
    sets = {}
    for name in "XYAB":
        sets[name] = [f"{name.lower()}{i}" for i in range(len(case[name]))]
        words += sets[name]
        vecs += case[name]
    kv.add_vectors(words, np.array(vecs))
    model = WordEmbeddingModel(kv, "cases")
    q = Query([sets["X"], sets["Y"]], [sets["A"], sets["B"]], ["X", "Y"], ["A", "B"])
    out.append(WEAT().run_query(q, model, return_effect_size=True, calculate_p_value=False)["effect_size"])
print(json.dumps(out))
"""


def _wefe_cases():
    rng = np.random.default_rng(7)
    cases = [_vector_inputs()]
    for sizes in [(5, 5, 6, 4), (8, 6, 3, 3)]:
        cases.append(tuple(rng.standard_normal((n, 10)) + 0.25 * i for i, n in enumerate(sizes)))
    return cases


def test_effect_size_matches_wefe_itself():
    """WEFE (wefe 1.0.1) as the oracle: in this process when installed, else the Python in CLIPPROBE_WEFE_PYTHON.

    wefe pins gensim, which needs numpy < 2 and scipy < 1.14, so it cannot share clipprobe's environment;
    run it from its own: CLIPPROBE_WEFE_PYTHON=/path/to/venv-with-wefe/bin/python pytest ...
    """
    cases = _wefe_cases()
    payload = json.dumps([{k: np.asarray(v).tolist() for k, v in zip("XYAB", c)} for c in cases])
    python = os.environ.get("CLIPPROBE_WEFE_PYTHON")
    try:
        import wefe  # noqa: F401
        python = sys.executable
    except ImportError:
        if not python:
            pytest.skip("wefe is not installed here and CLIPPROBE_WEFE_PYTHON is not set")
    r = subprocess.run([python, "-c", _WEFE_SCRIPT], input=payload, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    wefe_values = json.loads(r.stdout.strip().splitlines()[-1])
    for case, expected in zip(cases, wefe_values):
        # gensim keeps vectors in float32 and WEFE's cosines stay float32: compare on the same rounded inputs
        X, Y, A, B = (np.asarray(v, dtype=np.float32) for v in case)
        got = eat.effect_size(eat.association(X, A, B), eat.association(Y, A, B), ddof=0)
        assert got == pytest.approx(expected, rel=2e-6)
    assert wefe_values[0] == pytest.approx(-1.141776, abs=5e-7)


# ------------------------------------------------------------------ p-values: scipy and brute force


def _brute_force_p(values, n_x, alternative="greater"):
    values = np.asarray(values, dtype=float)
    N = len(values)
    obs = values[:n_x].sum()
    center = n_x * values.mean()
    tol = eat.TIE_RTOL * np.abs(values).sum()
    hits = 0
    for combo in itertools.combinations(range(N), n_x):
        stat = values[list(combo)].sum()
        if alternative == "greater":
            hits += stat >= obs - tol
        elif alternative == "less":
            hits += stat <= obs + tol
        else:
            hits += abs(stat - center) >= abs(obs - center) - tol
    return hits / math.comb(N, n_x)


@pytest.mark.parametrize("n_x,n_y", [(4, 4), (3, 7), (6, 2), (5, 6)])
@pytest.mark.parametrize("alternative", ["greater", "less"])
def test_exact_p_equals_scipy_permutation_test(n_x, n_y, alternative):
    from scipy.stats import permutation_test

    rng = np.random.default_rng(n_x * 10 + n_y)
    x, y = rng.standard_normal(n_x) + 0.3, rng.standard_normal(n_y)
    ours = eat.permutation_test(np.concatenate([x, y]), n_x, alternative=alternative)
    ref = permutation_test((x, y), lambda a, b, axis: a.sum(axis=axis), permutation_type="independent",
                           alternative=alternative, n_resamples=10**6)
    assert ours.exact and ours.n_permutations == math.comb(n_x + n_y, n_x)
    assert ours.p_value == pytest.approx(ref.pvalue, abs=1e-12)


@pytest.mark.parametrize("n_x,n_y", [(4, 4), (3, 7), (7, 2)])
def test_exact_two_sided_equals_brute_force(n_x, n_y):
    rng = np.random.default_rng(n_x + 3 * n_y)
    v = rng.standard_normal(n_x + n_y)
    v[:n_x] += 0.8
    ours = eat.permutation_test(v, n_x, alternative="two-sided")
    assert ours.p_value == pytest.approx(_brute_force_p(v, n_x, "two-sided"), abs=1e-15)


def test_ties_count_as_exceedances():
    # integer values: many partitions tie with the observed sum, and sums in other orders must still tie
    v = np.array([0.1, 0.3, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1, 0.2])
    for n_x in (3, 4):
        p = eat.permutation_test(v, n_x).p_value
        obs = v[:n_x].sum()
        exact_count = sum(1 for c in itertools.combinations(range(len(v)), n_x)
                          if round(v[list(c)].sum(), 9) >= round(obs, 9))
        assert p == pytest.approx(exact_count / math.comb(len(v), n_x), abs=1e-15)
    # every value equal: every partition ties, p = 1
    assert eat.permutation_test(np.full(8, 0.37), 4).p_value == 1.0


def test_random_partitions_p_value_properties():
    rng = np.random.default_rng(5)
    v = rng.standard_normal(30)
    v[:15] += 0.4
    exact_p = _exact_p_by_sums(v, 15)
    r1 = eat.permutation_test(v, 15, n_permutations=40_000, seed=3)
    r2 = eat.permutation_test(v, 15, n_permutations=40_000, seed=3, n_jobs=1)
    r3 = eat.permutation_test(v, 15, n_permutations=40_000, seed=4)
    assert not r1.exact and r1.n_permutations == 40_000
    assert r1.p_value == r2.p_value  # identical on rerun, whatever the threads
    assert r1.p_value != r3.p_value  # the seed matters
    se = math.sqrt(exact_p * (1 - exact_p) / 40_000)
    assert abs(r1.p_value - exact_p) < 5 * se + 1 / 40_000
    # p >= 1/n even far in the tail
    far = np.concatenate([np.full(12, 5.0), np.zeros(12)]) + rng.standard_normal(24) * 1e-3
    r = eat.permutation_test(far, 12, n_permutations=1000)
    assert r.p_value == pytest.approx(1 / 1000)


def _exact_p_by_sums(v, n_x):
    """Exact one-sided p over all partitions, by meet-in-the-middle-free brute force in numpy chunks."""
    N = len(v)
    obs = v[:n_x].sum()
    tol = eat.TIE_RTOL * np.abs(v).sum()
    # split into two halves and convolve subset sums by size
    half = N // 2
    left, right = v[:half], v[half:]

    def sums_by_size(part):
        out = {0: np.zeros(1)}
        for x in part:
            new = {k: s.copy() for k, s in out.items()}
            for k, s in out.items():
                new[k + 1] = np.concatenate([new.get(k + 1, np.zeros(0)), s + x])
            out = new
        return out

    L, R = sums_by_size(left), sums_by_size(right)
    hits = 0
    for k, ls in L.items():
        rs = R.get(n_x - k)
        if rs is None:
            continue
        rs = np.sort(rs)
        hits += int(np.sum(len(rs) - np.searchsorted(rs, obs - tol - ls, side="left")))
    return hits / math.comb(N, n_x)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
@pytest.mark.parametrize("N,k", [(16, 8), (22, 4), (18, 13)])
def test_random_mode_matches_exact_for_every_alternative(N, k, alternative):
    """A budget below C(N, k) forces random partitions: the p-value is within Monte Carlo error of the exact
    one (brute force), for every alternative and sampling way."""
    rng = np.random.default_rng(N * k)
    v = rng.standard_normal(N)
    v[:k] += 0.5
    exact = _brute_force_p(v, k, alternative)
    n = 4_000
    assert n < math.comb(N, k)
    r = eat.permutation_test(v, k, n_permutations=n, alternative=alternative, seed=2)
    assert not r.exact and r.n_permutations == n
    se = math.sqrt(exact * (1 - exact) / n)
    assert abs(r.p_value - exact) < 5 * se + 1 / n
    assert {eat._plan(N, k).method for N, k in ((16, 8), (22, 4), (18, 13))} == {0, 1}


def test_unequal_sizes_random_mode_matches_exact():
    rng = np.random.default_rng(11)
    v = rng.standard_normal(26)
    v[:6] += 0.7
    exact = _exact_p_by_sums(v, 6)
    r = eat.permutation_test(v, 6, n_permutations=50_000, seed=1)
    assert not r.exact
    se = math.sqrt(exact * (1 - exact) / 50_000)
    assert abs(r.p_value - exact) < 5 * se + 1 / 50_000


def _kernel_counts(N, k, plan, tests, n, seed=0, tiled=None):
    """Counts of ``n`` kernel partitions of (N, k) with ``plan`` = (method, depth, numer), for tests whose
    values are 0/1 indicators: test ``t`` counts the partitions holding every stimulus of ``tests[t]``."""
    method, depth, numer = plan
    kernel = eat._kernel()
    indicators = np.zeros((len(tests), N))
    for t, members in enumerate(tests):
        indicators[t, list(members)] = 1.0
    values, tiled = eat._layout(indicators, False, tiled)
    size = indicators.sum(axis=1)
    threshold = size - 0.5  # the partition's X side holds all of the test's stimuli
    state = eat.block_state(seed, N, k, 0)
    return kernel.random_counts(state, n, N, k, method, depth, numer, values, tiled, size, np.zeros(len(tests)),
                                threshold, 0, np.uint64((1 << 32) % N))


PLANS = {"bits 1/2": (0, 1, 1), "bits 1/4": (0, 2, 1), "bits 5/8": (0, 3, 5), "draw": (1, 0, 0)}


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize("N,k", [(6, 3), (7, 2), (8, 5)])
def test_kernel_partitions_are_uniform_over_subsets(N, k, plan):
    """Chi-square over all C(N, k) subsets: each subset's count, by a test whose values indicate it."""
    from scipy.stats import chisquare

    subsets = list(itertools.combinations(range(N), k))
    n = 2_000 * len(subsets)
    counts = _kernel_counts(N, k, plan, subsets, n)
    assert counts.sum() == n  # every partition is exactly one k-subset
    assert chisquare(counts).pvalue > 1e-3
    # the same partitions whichever way the values are laid out
    assert np.array_equal(_kernel_counts(N, k, plan, subsets, n, tiled=not len(subsets) >= eat._TILED_TESTS), counts)


@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
@pytest.mark.parametrize("N,k", [(70, 35), (130, 40), (200, 150)])
def test_kernel_partitions_include_stimuli_and_pairs_evenly(N, k, plan):
    """Several 64-bit words: each stimulus (word edges included) in X with probability k / N, pairs with
    k (k - 1) / (N (N - 1)), also pairs across words."""
    from scipy.stats import chisquare

    singles = [(i,) for i in range(N)]
    pairs = [(0, 1), (63, 64), (0, N - 1), (62, 127 % N), (N // 2, N - 2)]
    n = 60_000
    counts = _kernel_counts(N, k, plan, singles + pairs, n, seed=N)
    assert np.array_equal(_kernel_counts(N, k, plan, singles + pairs, n, seed=N, tiled=False), counts)
    single, pair = counts[:N], counts[N:]
    assert single.sum() == n * k
    assert chisquare(single).pvalue > 1e-3
    q = k * (k - 1) / (N * (N - 1))
    assert np.all(np.abs(pair - n * q) < 5 * math.sqrt(n * q * (1 - q)))


def test_kernel_generator_is_xoshiro256plusplus():
    """The raw outputs against a plain Python xoshiro256++ (Blackman and Vigna's reference algorithm)."""
    mask = (1 << 64) - 1

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & mask

    state = eat.block_state(7, 30, 12, 3)
    s = [int(x) for x in state]
    expected = []
    for _ in range(1000):
        expected.append((rotl((s[0] + s[3]) & mask, 23) + s[0]) & mask)
        t = (s[1] << 17) & mask
        s[2] ^= s[0]
        s[3] ^= s[1]
        s[1] ^= s[2]
        s[0] ^= s[3]
        s[2] ^= t
        s[3] = rotl(s[3], 45)
    assert eat._kernel().xoshiro_raw(state, 1000).tolist() == expected
    assert eat._kernel().xoshiro_raw(np.array([1, 2, 3, 4], dtype=np.uint64), 1)[0] == 41943041


def test_plan_depends_on_sizes_only_and_prefers_bits_when_balanced():
    assert eat._plan(700, 350).method == 0 and eat._plan(700, 350).depth == 1
    assert eat._plan(700, 5).method == 1  # a few stimuli: drawn one by one
    assert eat._plan(700, 695) == eat._plan(700, 5)
    assert eat._plan(12, 6).thresh32 == (1 << 32) % 12


def test_results_do_not_depend_on_threads_or_on_other_tests():
    """Several blocks of partitions and a group of more tests than one job counts: the same p-values with
    1, 2 or 3 threads, and each test's p-value is the one it gets alone."""
    rng = np.random.default_rng(21)
    values = [rng.standard_normal(30) + np.r_[np.full(15, 0.02 * i), np.zeros(15)] for i in range(eat._TEST_SLICE + 9)]
    values += [rng.standard_normal(90) for _ in range(3)]
    n_x = [15] * (eat._TEST_SLICE + 9) + [30] * 3
    n = 2 * eat.PERMUTATION_BLOCK + 1001
    runs = [eat.permutation_tests(values, n_x, n_permutations=n, seed=4, n_jobs=j) for j in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
    assert not runs[0][0].exact and runs[0][0].n_permutations == n
    for i in (0, eat._TEST_SLICE + 3, len(values) - 1):
        alone = eat.permutation_test(values[i], n_x[i], n_permutations=n, seed=4, n_jobs=2)
        assert alone == runs[0][i]


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_exact_enumeration_over_several_blocks(alternative):
    """C(18, 9) = 48620 and C(20, 8) = 125970 partitions: the second spans two blocks, each started from
    its first subset by unranking; counts equal brute force."""
    rng = np.random.default_rng(8)
    for N, k in ((18, 9), (20, 8), (20, 12)):
        v = rng.standard_normal(N)
        v[:k] += 0.3
        r1 = eat.permutation_test(v, k, alternative=alternative, n_jobs=1)
        r2 = eat.permutation_test(v, k, alternative=alternative, n_jobs=2)
        assert r1 == r2 and r1.exact and r1.n_permutations == math.comb(N, k)
        assert r1.p_value == pytest.approx(_brute_force_p(v, k, alternative), abs=1e-15)


def test_unrank_combination_is_lexicographic():
    for N, s in ((7, 3), (9, 1), (6, 6), (10, 4)):
        combos = list(itertools.combinations(range(N), s))
        assert [tuple(eat._unrank_combination(r, N, s)) for r in range(len(combos))] == combos


_NO_PACKAGE_FILES = r"""
import os, sys
from pathlib import Path
import numpy as np
import clipprobe
from clipprobe.analysis import eat
pkg = Path(clipprobe.__file__).parent
before = sorted(str(p) for p in pkg.rglob("*"))
k = eat._kernel()
eat.permutation_test(np.arange(8.0), 4)                         # exact kernel
eat.permutation_test(np.arange(40.0), 20, n_permutations=1000)  # random kernel
after = sorted(str(p) for p in pkg.rglob("*"))
print(len(before), len(after), sorted(set(after) - set(before)))
print(k.random_counts.stats.cache_path)
print(sum(k.random_counts.stats.cache_misses.values()), sum(k.random_counts.stats.cache_hits.values()))
"""


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_compiled_kernels_cached_outside_the_package(tmp_path):
    """numba's files go to CLIPPROBE_CACHE/numba/..., none next to the package's modules (two processes: the
    first compiles and writes the cache, the second loads it)."""
    env = dict(os.environ, CLIPPROBE_CACHE=str(tmp_path / "cache"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("NUMBA_CACHE_DIR", None)
    env.pop("NUMBA_CACHE_LOCATOR_CLASSES", None)
    outputs = []
    for _ in range(2):
        r = subprocess.run([sys.executable, "-c", _NO_PACKAGE_FILES], capture_output=True, text=True, env=env,
                           timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        outputs.append(r.stdout.strip().splitlines())
    for lines in outputs:
        n_before, n_after, new = lines[0].split(" ", 2)
        assert n_before == n_after and new == "[]"
        assert lines[1].startswith(str(tmp_path / "cache" / "numba"))
    assert outputs[0][2] == "1 0" and outputs[1][2] == "0 1"  # compiled, then loaded
    cached = {p.suffix for p in (tmp_path / "cache").rglob("*") if p.is_file()}
    assert cached == {".nbi", ".nbc"}


def test_many_tests_share_partitions_and_match_single_runs():
    """Tests of the same sizes are summed by one matrix product (more than four) or look-up tables;
    either way each test gets the p-value it gets alone."""
    rng = np.random.default_rng(9)
    values = [rng.standard_normal(40) + np.r_[np.full(20, 0.1 * i), np.zeros(20)] for i in range(7)]
    together = eat.permutation_tests(values, 20, n_permutations=20_000, seed=5)
    alone = [eat.permutation_test(v, 20, n_permutations=20_000, seed=5) for v in values]
    assert [r.p_value for r in together] == pytest.approx([r.p_value for r in alone], abs=0)
    # Fisher-Yates path (unbalanced sizes), many tests vs one
    values = [rng.standard_normal(60) for _ in range(6)]
    together = eat.permutation_tests(values, 5, n_permutations=5_000, seed=1)
    alone = [eat.permutation_test(v, 5, n_permutations=5_000, seed=1) for v in values]
    assert [r.p_value for r in together] == [r.p_value for r in alone]


# ------------------------------------------------------------------ SC-WEAT, interval, whole runs


def test_sc_weat_against_brute_force():
    from scipy.stats import permutation_test

    rng = np.random.default_rng(3)
    W, A, B = rng.standard_normal((3, 6)), rng.standard_normal((5, 6)) + 0.3, rng.standard_normal((4, 6))
    sc = eat.sc_weat(W, A, B, n_permutations=10_000)
    for i, w in enumerate(W):
        ca = A @ w / (np.linalg.norm(A, axis=1) * np.linalg.norm(w))
        cb = B @ w / (np.linalg.norm(B, axis=1) * np.linalg.norm(w))
        assert sc.association[i] == pytest.approx(ca.mean() - cb.mean(), rel=1e-12)
        assert sc.effect_size[i] == pytest.approx((ca.mean() - cb.mean()) / np.concatenate([ca, cb]).std(ddof=1),
                                                  rel=1e-12)
        ref = permutation_test((ca, cb), lambda a, b, axis: a.sum(axis=axis), permutation_type="independent",
                               alternative="greater", n_resamples=10**6)
        assert sc.p_value[i] == pytest.approx(ref.pvalue, abs=1e-12)
    assert sc.exact and sc.n_permutations == math.comb(9, 5)


def _grouped_sets(seed, sizes=((5, 3), (4, 3), (6, 2), (5, 2)), dim=6, word_sd=1.0):
    """X, Y, A, B as words x templates: (rows, word labels) per set; a word's rows share its offset."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (n_words, n_templates) in enumerate(sizes):
        centre = rng.standard_normal(dim) + 0.3 * i
        offsets = word_sd * rng.standard_normal((n_words, dim))
        rows = centre + offsets[:, None, :] + 0.5 * rng.standard_normal((n_words, n_templates, dim))
        labels = [f"w{i}-{j}" for j in range(n_words) for _ in range(n_templates)]
        out.append((rows.reshape(-1, dim), labels))
    return out


def _resampled_d(sets, draws):
    """d of explicitly rebuilt sets: every drawn word brings all its rows (the oracle of the bootstrap)."""
    rebuilt = []
    for (rows, labels), draw in zip(sets, draws):
        words = list(dict.fromkeys(labels))
        rebuilt.append(np.concatenate([rows[[i for i, w in enumerate(labels) if w == words[j]]] for j in draw]))
    X, Y, A, B = rebuilt
    return eat.effect_size(eat.association(X, A, B), eat.association(Y, A, B))


@pytest.mark.parametrize("resample", ["all", "targets"])
def test_stimulus_bootstrap_statistic_against_rebuilt_sets(resample):
    sets = _grouped_sets(5)
    units = dict(zip("XYAB", (labels for _, labels in sets)))
    unit_rows = {k: rows / np.linalg.norm(rows, axis=1, keepdims=True) for k, (rows, _) in zip("XYAB", sets)}
    codes = {k: eat.stimulus_codes(units[k], len(unit_rows[k])) for k in "XYAB"}
    stat = eat._StimulusStatistic(unit_rows["X"], unit_rows["Y"], unit_rows["A"], unit_rows["B"], codes, 1, resample)
    n_words = [len(set(labels)) for _, labels in sets]
    identity = [np.arange(n) for n in n_words]
    X, Y, A, B = (rows for rows, _ in sets)
    d = eat.effect_size(eat.association(X, A, B), eat.association(Y, A, B))
    k = 4 if resample == "all" else 2
    assert stat(*identity[:k]) == pytest.approx(d, rel=1e-12)
    rng = np.random.default_rng(0)
    draws = [rng.integers(0, n, (7, n)) for n in n_words]
    batch = stat(*draws[:k])  # seven resamples at once
    for r in range(7):
        full = [draws[j][r] if j < k else identity[j] for j in range(4)]
        assert batch[r] == pytest.approx(_resampled_d(sets, full), rel=1e-10)
    # a jackknife sample (one word left out of X) and broadcasting over leading axes
    left_out = [np.delete(identity[0], 2)[None, :]] + [i[None, :] for i in identity[1:k]]
    assert stat(*left_out)[0] == pytest.approx(_resampled_d(sets, [np.delete(identity[0], 2)] + identity[1:]),
                                               rel=1e-10)


@pytest.mark.parametrize("method", ["BCa", "percentile"])
def test_interval_is_scipys_bootstrap_of_rebuilt_sets(method):
    """Our interval = scipy.stats.bootstrap over word indices with the plain statistic (rebuilt sets), same rng."""
    from scipy.stats import bootstrap

    sets = _grouped_sets(6, sizes=((8, 3), (9, 2), (8, 2), (10, 1)))
    units = dict(zip("XYAB", (labels for _, labels in sets)))
    X, Y, A, B = (rows for rows, _ in sets)
    ci = eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=300, min_stimuli=0, seed=3, method=method)
    again = eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=300, min_stimuli=0, seed=3, method=method)
    assert (ci.low, ci.high) == (again.low, again.high) and ci.low < ci.high and ci.note == ""

    def plain(ix, iy, ia, ib, axis=-1):
        shape = np.broadcast_shapes(ix.shape[:-1], iy.shape[:-1], ia.shape[:-1], ib.shape[:-1])
        arrays = [np.broadcast_to(v, shape + v.shape[-1:]).reshape(-1, v.shape[-1]) for v in (ix, iy, ia, ib)]
        return np.array([_resampled_d(sets, [a[r] for a in arrays]) for r in range(arrays[0].shape[0])]).reshape(shape)

    rng = np.random.default_rng(np.random.SeedSequence(3, spawn_key=(0xB007,)))
    data = tuple(np.arange(len(set(labels))) for _, labels in sets)
    ref = bootstrap(data, plain, n_resamples=300, method=method, vectorized=True, rng=rng, batch=300)
    assert (ci.low, ci.high) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high), rel=1e-9)


def test_fisher_z_interval_from_scipys_bootstrap_distribution():
    """The default interval by hand: scipy's bootstrap distribution of d (rebuilt sets, same rng), the point-
    biserial correlation's Fisher z, a normal interval with the replicates' standard deviation, mapped back."""
    from scipy.stats import bootstrap, norm

    sets = _grouped_sets(13, sizes=((9, 3), (8, 2), (8, 2), (10, 1)))
    units = dict(zip("XYAB", (labels for _, labels in sets)))
    X, Y, A, B = (rows for rows, _ in sets)
    ci = eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=300, min_stimuli=0, seed=4, ddof=1)
    assert ci.method == "fisher-z" and ci.low < ci.high and ci.note == ""

    def plain(ix, iy, ia, ib, axis=-1):
        shape = np.broadcast_shapes(ix.shape[:-1], iy.shape[:-1], ia.shape[:-1], ib.shape[:-1])
        arrays = [np.broadcast_to(v, shape + v.shape[-1:]).reshape(-1, v.shape[-1]) for v in (ix, iy, ia, ib)]
        return np.array([_resampled_d(sets, [a[r] for a in arrays]) for r in range(arrays[0].shape[0])]).reshape(shape)

    rng = np.random.default_rng(np.random.SeedSequence(4, spawn_key=(0xB007,)))
    data = tuple(np.arange(len(set(labels))) for _, labels in sets)
    reps = bootstrap(data, plain, n_resamples=300, method="percentile", vectorized=True, rng=rng,
                     batch=300).bootstrap_distribution
    d = eat.effect_size(eat.association(X, A, B), eat.association(Y, A, B))
    N, p = len(X) + len(Y), len(X) / (len(X) + len(Y))
    c = math.sqrt(p * (1 - p) * N / (N - 1))
    # c d is the point-biserial correlation of membership in X with s (ddof 1 both)
    s = np.concatenate([eat.association(X, A, B), eat.association(Y, A, B)])
    member = np.r_[np.ones(len(X)), np.zeros(len(Y))]
    assert c * d == pytest.approx(np.corrcoef(member, s)[0, 1], rel=1e-10)
    se = np.arctanh(c * reps).std(ddof=1)
    z = np.arctanh(c * d)
    q = norm.ppf(0.975)
    assert (ci.low, ci.high) == pytest.approx((np.tanh(z - q * se) / c, np.tanh(z + q * se) / c), rel=1e-9)
    with pytest.raises(UsageError) as err:
        eat.run_eats([eat.EatInput("t", X, Y, A, B, units=units)], eat.EatSettings(ci_method="BCa"))
    assert str(err.value) == eat.MSG_CI_UNPUBLISHED.format(value="BCa")


def test_interval_withheld_below_the_measured_size_and_fixed_attributes():
    n = eat.MIN_INTERVAL_STIMULI
    assert n == 25  # the smallest set size at which the coverage grid measured 0.93-0.97 (README)
    sets = _grouped_sets(7, sizes=((n, 2), (n + 1, 2), (n - 13, 2), (n, 2)))
    units = dict(zip("XYAB", (labels for _, labels in sets)))
    X, Y, A, B = (rows for rows, _ in sets)
    ci = eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=200)
    assert math.isnan(ci.low) and math.isnan(ci.high)
    assert ci.note == eat.MSG_CI_WITHHELD.format(sets=f"A ({n - 13})", min=n)
    # the rule counts words, not sentences: A has 24 sentences but 12 stimuli
    assert len(A) == 2 * (n - 13)
    # A is not resampled with fixed attributes: then its size does not matter
    fixed = eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=200, resample="targets")
    assert fixed.low < fixed.high and fixed.resample == "targets" and fixed.note == ""
    d = eat.effect_size(eat.association(X, A, B), eat.association(Y, A, B))
    assert fixed.low < d < fixed.high
    # fixed attributes: n - 1 of the n words of X and of Y are drawn (unbiased bootstrap variance of a mean)
    from clipprobe.analysis.eat import _StimulusStatistic

    calls = []
    original = _StimulusStatistic.__call__

    def spy(self, *samples, axis=-1):
        calls.append(tuple(np.shape(x)[-1] for x in samples))
        return original(self, *samples, axis=axis)

    _StimulusStatistic.__call__ = spy
    try:
        eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=200, resample="targets")
        eat.effect_size_interval(X, Y, A, B, units=units, n_resamples=200, resample="all", min_stimuli=0)
    finally:
        _StimulusStatistic.__call__ = original
    assert (n - 1, n) in calls and (n, n + 1, n - 13, n) in calls
    with pytest.raises(UsageError) as err:
        eat.effect_size_interval(X, Y, A, B, resample="some")
    assert str(err.value) == eat.MSG_RESAMPLE.format(value="some")


# ------------------------------------------------------------------ stimuli as the unit of the permutation


def _word_level_brute_force(sx, sy, ux, uy, alternative="greater"):
    """Enumerate every partition of the words of X u Y into |X| and |Y| words; each word's sentences move
    together; the statistic is the sum over X's words of each word's mean association."""
    words = [(u, s) for labels, values in ((ux, sx), (uy, sy)) for u in dict.fromkeys(labels)
             for s in [np.asarray(values)[[i for i, v in enumerate(labels) if v == u]]]]
    means = np.array([s.mean() for _, s in words])
    n_x = len(dict.fromkeys(ux))
    observed = means[:n_x].sum()
    centre = n_x * means.mean()
    stats = np.array([means[list(c)].sum() for c in itertools.combinations(range(len(words)), n_x)])
    tol = eat.TIE_RTOL * np.abs(means).sum()
    if alternative == "greater":
        hits = stats >= observed - tol
    elif alternative == "less":
        hits = stats <= observed + tol
    else:
        hits = np.abs(stats - centre) >= abs(observed - centre) - tol
    return hits.mean(), len(stats)


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_p_value_permutes_words_against_brute_force(alternative):
    sets = _grouped_sets(8, sizes=((5, 4), (6, 4), (4, 3), (5, 3)))
    (X, ux), (Y, uy), (A, ua), (B, ub) = sets
    t = eat.EatInput("words", X, Y, A, B, units={"X": ux, "Y": uy, "A": ua, "B": ub})
    r = eat.run_eats([t], eat.EatSettings(ci_method=None, sc_weat=False, alternative=alternative))[0]
    sx, sy = eat.association(X, A, B), eat.association(Y, A, B)
    p, n = _word_level_brute_force(sx, sy, ux, uy, alternative)
    assert r.exact and r.n_permutations == n == math.comb(11, 5)
    assert r.p_value == pytest.approx(p, abs=1e-15)
    # with the same number of sentences per word, the seed's statistic (sum over X's sentences) orders the
    # word partitions the same way: the brute force over sentences moved together agrees
    words = list(dict.fromkeys(ux)) + list(dict.fromkeys(uy))
    s_all, labels = np.concatenate([sx, sy]), list(ux) + list(uy)
    by_word = [s_all[[i for i, v in enumerate(labels) if v == w]] for w in words]
    sums = np.array([sum(by_word[j].sum() for j in c) for c in itertools.combinations(range(len(words)), 5)])
    if alternative == "greater":
        assert r.p_value == pytest.approx((sums >= sx.sum() - 1e-11 * np.abs(s_all).sum()).mean(), abs=1e-15)
    # the seed's sentence-level test is still there, over the 44 sentences as if independent
    rows = eat.permutation_test(s_all, len(sx), alternative=alternative)
    assert r.p_value_sentences == rows.p_value and r.n_permutations_sentences == rows.n_permutations
    assert (r.n_x, r.n_y, r.n_a, r.n_b) == (5, 6, 4, 5)
    assert (r.n_x_texts, r.n_y_texts, r.n_a_texts, r.n_b_texts) == (20, 24, 12, 15)
    assert r.effect_size == pytest.approx(eat.effect_size(sx, sy), rel=1e-12)  # d over sentences, as the seed


def test_p_value_with_unequal_sentences_per_word_against_brute_force():
    rng = np.random.default_rng(9)
    X, Y, A, B = rng.standard_normal((11, 5)), rng.standard_normal((9, 5)) + 0.2, rng.standard_normal((6, 5)), \
        rng.standard_normal((6, 5)) + 0.4
    ux = ["a", "a", "a", "b", "c", "c", "d", "d", "d", "d", "e"]
    uy = ["f", "g", "g", "h", "h", "h", "i", "j", "j"]
    r = eat.run_eats([eat.EatInput("t", X, Y, A, B, units={"X": ux, "Y": uy})],
                     eat.EatSettings(ci_method=None, sc_weat=False))[0]
    p, n = _word_level_brute_force(eat.association(X, A, B), eat.association(Y, A, B), ux, uy)
    assert r.exact and r.n_permutations == n == math.comb(10, 5) and r.p_value == pytest.approx(p, abs=1e-15)
    assert (r.n_x, r.n_y, r.n_x_texts, r.n_y_texts, r.n_a, r.n_a_texts) == (5, 5, 11, 9, 6, 6)


def test_random_word_partitions_match_exact_enumeration():
    sets = _grouped_sets(10, sizes=((7, 3), (8, 3), (4, 2), (4, 2)))
    (X, ux), (Y, uy), (A, ua), (B, ub) = sets
    t = eat.EatInput("t", X, Y, A, B, units={"X": ux, "Y": uy, "A": ua, "B": ub})
    exact = eat.run_eats([t], eat.EatSettings(ci_method=None, sc_weat=False))[0]
    sampled = eat.run_eats([t], eat.EatSettings(ci_method=None, sc_weat=False, n_permutations=6000))[0]
    assert exact.exact and not sampled.exact and sampled.n_permutations == 6000
    assert abs(sampled.p_value - exact.p_value) < 4 * math.sqrt(exact.p_value * (1 - exact.p_value) / 6000) + 1e-3


def test_sc_weat_permutes_attribute_words_against_brute_force():
    sets = _grouped_sets(11, sizes=((3, 2), (3, 2), (4, 3), (3, 3)))
    (W, _), _, (A, ua), (B, ub) = sets
    sc = eat.sc_weat(W, A, B, units_a=ua, units_b=ub, n_permutations=10_000)
    An, Bn = (M / np.linalg.norm(M, axis=1, keepdims=True) for M in (A, B))
    for i, w in enumerate(W / np.linalg.norm(W, axis=1, keepdims=True)):
        ca, cb = An @ w, Bn @ w
        p, n = _word_level_brute_force(ca, cb, ua, ub)
        assert sc.p_value[i] == pytest.approx(p, abs=1e-15)
        rows = eat.permutation_test(np.concatenate([ca, cb]), len(ca), n_permutations=10_000)
        assert sc.p_value_sentences[i] == rows.p_value
        assert sc.effect_size[i] == pytest.approx((ca.mean() - cb.mean()) / np.concatenate([ca, cb]).std(ddof=1))
    assert sc.exact and sc.n_permutations == math.comb(7, 4) and sc.n_stimuli == 7
    assert sc.q_value == pytest.approx(bh_adjust(sc.p_value))


def test_units_checks():
    sets = _grouped_sets(12)
    (X, ux), (Y, uy), (A, ua), (B, ub) = sets
    with pytest.raises(DataError) as err:
        eat.run_eats([eat.EatInput("t", X, Y, A, B, units={"X": ux[:-1]})])
    assert str(err.value) == eat.MSG_UNITS_LENGTH.format(test="t", name="X", got=len(ux) - 1, n=len(ux))
    with pytest.raises(DataError) as err:
        eat.run_eats([eat.EatInput("t", X, Y, A, B, units={"Z": ux})])
    assert str(err.value) == eat.MSG_UNITS_SET.format(test="t", names="Z")
    with pytest.raises(DataError) as err:  # 15 sentences of one word: one stimulus, nothing to permute
        eat.run_eats([eat.EatInput("t", X, Y, A, B, units={"X": ["same"] * len(X)})])
    assert str(err.value) == eat.MSG_TOO_FEW_UNITS.format(name="X", test="t", n=1, rows=len(X), min=2)


def test_run_eats_bh_and_fields():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(4)
    tests = []
    for i in range(5):
        X, Y = rng.standard_normal((8, 6)) + 0.3 * i, rng.standard_normal((9, 6))
        A, B = rng.standard_normal((6, 6)) + 0.3 * i, rng.standard_normal((7, 6))
        tests.append(eat.EatInput(f"t{i}", X, Y, A, B))
    res = eat.run_eats(tests, eat.EatSettings(n_permutations=5_000, n_bootstrap=200, sc_permutations=500))
    p = np.array([r.p_value for r in res])
    q = np.array([r.q_value for r in res])
    assert q == pytest.approx(multipletests(p, method="fdr_bh")[1])
    assert q == pytest.approx(bh_adjust(p))
    for r, t in zip(res, tests):
        assert (r.n_x, r.n_y, r.n_a, r.n_b) == (8, 9, 6, 7)
        assert r.effect_size == pytest.approx(eat.effect_size(eat.association(t.X, t.A, t.B),
                                                              eat.association(t.Y, t.A, t.B)))
        assert r.sc_targets.association == pytest.approx(np.concatenate([r.s_x, r.s_y]))
        assert len(r.sc_attributes.p_value) == 13 and r.sc_attributes.n_permutations == 500
        # one row per stimulus here: the stimulus-level and sentence-level tests are the same test
        assert r.p_value_sentences == r.p_value and (r.n_x_texts, r.n_b_texts) == (8, 7)
        family = np.concatenate([r.sc_targets.p_value, r.sc_attributes.p_value])
        assert np.concatenate([r.sc_targets.q_value, r.sc_attributes.q_value]) == pytest.approx(bh_adjust(family))
        # 6 to 9 stimuli per set, fewer than the interval needs: withheld, with the reason
        assert not np.isfinite(r.ci_low) and "A (6)" in r.ci_note and r.ci_method == "fisher-z"
    # the SC-WEAT q-values of a test do not depend on which other tests ran
    alone = eat.run_eats(tests[2:3], eat.EatSettings(n_permutations=5_000, n_bootstrap=200, sc_permutations=500))[0]
    assert alone.sc_targets.q_value == pytest.approx(res[2].sc_targets.q_value)


# ------------------------------------------------------------------ bad input


def test_bad_inputs_are_one_line_errors():
    X, Y, A, B = _vector_inputs()
    with pytest.raises(DataError) as err:
        eat.run_eats([eat.EatInput("t", X[:1], Y, A, B)])
    assert str(err.value) == eat.MSG_TOO_FEW.format(name="X", test="t", n=1, min=2)
    with pytest.raises(DataError) as err:
        eat.run_eats([eat.EatInput("t", X, Y, A[:1], B)])
    assert str(err.value) == eat.MSG_TOO_FEW.format(name="A", test="t", n=1, min=2)
    with pytest.raises(DataError, match="dimension 7 but set X has 8"):
        eat.run_eats([eat.EatInput("t", X, Y[:, :7], A, B)])
    bad = B.copy()
    bad[1, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        eat.run_eats([eat.EatInput("t", X, Y, A, bad)])
    zero = A.copy()
    zero[2] = 0
    with pytest.raises(DataError) as err:
        eat.run_eats([eat.EatInput("t", X, Y, zero, B)])
    assert str(err.value) == eat.MSG_ZERO_NORM.format(name="A", test="t", row=2)
    with pytest.raises(UsageError) as err:
        eat.permutation_test(np.arange(6.0), 3, n_permutations=1)
    assert str(err.value) == eat.MSG_PERMUTATIONS.format(value=1)
    with pytest.raises(UsageError) as err:
        eat.permutation_test(np.arange(6.0), 3, alternative="bigger")
    assert str(err.value) == eat.MSG_ALTERNATIVE.format(value="bigger")
    with pytest.raises(UsageError) as err:
        eat.effect_size([1, 2], [3, 4], ddof=2)
    assert str(err.value) == eat.MSG_DDOF.format(value=2)
    with pytest.raises(UsageError) as err:
        eat.effect_size_interval(X, Y, A, B, n_resamples=10, method="BCa")
    assert str(err.value) == eat.MSG_BOOTSTRAP.format(value=10)
    with pytest.raises(UsageError) as err:
        eat.effect_size_interval(X, Y, A, B, method="wald")
    assert str(err.value) == eat.MSG_CI_METHOD.format(value="wald")
    with pytest.raises(DataError):
        eat.permutation_test(np.arange(6.0), 6)


# ------------------------------------------------------------------ null calibration


def _null_pvalues(n_tests, n_permutations, seed):
    rng = np.random.default_rng(seed)
    values, n_x = [], []
    for i in range(n_tests):
        nx, ny = (12, 12) if i % 2 else (9, 15)
        X, Y = rng.standard_normal((nx, 16)), rng.standard_normal((ny, 16))
        A, B = rng.standard_normal((8, 16)) + 0.2, rng.standard_normal((8, 16))
        values.append(np.concatenate([eat.association(X, A, B), eat.association(Y, A, B)]))
        n_x.append(nx)
    return np.array([r.p_value for r in eat.permutation_tests(values, n_x, n_permutations=n_permutations,
                                                              seed=seed)])


def test_null_pvalues_quick_check():
    p = _null_pvalues(120, 2_000, seed=1)
    assert 0.01 <= (p < 0.05).mean() <= 0.12
    assert 0.4 < p.mean() < 0.6


@pytest.mark.slow
def test_null_pvalues_are_uniform():
    """Random embeddings, no planted effect: 400 tests, KS against uniform, share below 0.05 near 0.05."""
    from scipy.stats import binomtest, kstest

    p = _null_pvalues(400, 20_000, seed=2)
    assert kstest(p, "uniform").pvalue > 0.01
    assert binomtest(int((p < 0.05).sum()), len(p), 0.05).pvalue > 0.01
