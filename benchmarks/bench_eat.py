"""Benchmark: Embedding Association Tests, clipprobe against a per-permutation Python loop.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_eat.py [--permutations 1000000] [--threads 2]

(Calibration of the p-values and coverage of the interval: benchmarks/bench_eat_null.py.)

Inputs are generated (no model): L2-normalised 512-d embeddings with the set sizes of the shipped
``ghate2025`` suite (the SEAT-NRC sentence sets, the iEAT image categories from ieat-manifest.csv, 25 + 25
OASIS images; the two Instrument-Weapon image tests are unavailable there too), the sentence sets grouped
into their words as the suite groups them, so "cached embeddings" here means arrays in memory.

(1) The permutation p-value of each of the 24 computable tests, both ways, same inputs, same run:
    clipprobe (:func:`clipprobe.analysis.eat.permutation_tests`, all tests in one call; its compiled kernels
    loaded or compiled in a warm-up call before the clock starts) and the baseline
    the way public code does it (sent-bias, CLIP_bias): for each permutation, shuffle the pooled
    associations, sum the first |X|, compare (``itertools.combinations`` when exact). Where both are
    exact the p-values must be identical (asserted). The baseline runs ``--baseline-permutations`` per
    random test and its time is scaled to the full budget (its cost per permutation is constant).
(2) The whole suite with ``--permutations`` per test through :func:`clipprobe.analysis.eat.run_eats`:
    effect sizes, p-values over words and over sentences, BCa intervals resampling the stimuli of all four
    sets (2,000 resamples), SC-WEAT of every text and image (10,000 permutations), BH. Target: under 60 s
    on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--permutations", type=int, default=1_000_000)
    ap.add_argument("--baseline-permutations", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2, help="BLAS threads and clipprobe's n_jobs")
    ap.add_argument("--target", type=float, default=60.0, help="seconds allowed for the whole suite")
    ap.add_argument("--skip-suite", action="store_true", help="only the p-value comparison (1)")
    return ap.parse_args()


ARGS = _parse()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

import itertools  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402,F401  (imported up front: its import is not test time)

from clipprobe.analysis import eat  # noqa: E402


# ----------------------------------------------------------------------------------------------
# inputs


def suite_sizes() -> list[tuple]:
    """(name, X, Y, A, B) of the computable tests of ghate2025, from the shipped data: each set its number of
    rows, or the word of each row for sentence sets."""
    from clipprobe.resources.eat import Resolver, get_suite

    suite = get_suite("ghate2025")
    resolver = Resolver(offline=True)
    manifest = resolver._ieat_files()
    sizes = []
    for t in suite.tests:
        if t.unavailable:
            continue
        n = []
        for spec in (t.X, t.Y, t.A, t.B):
            if spec.kind == "ieat":
                n.append(len(manifest[spec.value]))
            elif spec.kind == "oasis":
                n.append(int(spec.options.get("n", 25)))
            else:
                stim = resolver.resolve_set(spec)
                n.append(stim.units if stim.units is not None else len(stim))
        sizes.append((f"{t.name} ({t.order})", *n))
    return sizes


def generate(sizes, dim: int, seed: int) -> list[eat.EatInput]:
    """Embeddings per test: targets and attributes around a shared centre, targets nudged apart; the
    sentences of a word share the word's offset."""
    rng = np.random.default_rng(seed)
    tests = []
    for name, *spec in sizes:
        centre = rng.standard_normal(dim)
        shift = rng.standard_normal(dim) * 0.05
        sets, units = [], {}
        for key, n, offset in zip("XYAB", spec, (shift, -shift, 0.0, 0.0)):
            if isinstance(n, int):
                v = centre + offset + 0.8 * rng.standard_normal((n, dim))
            else:
                codes = eat.stimulus_codes(n, len(n))
                words = 0.5 * rng.standard_normal((int(codes.max()) + 1, dim))
                v = centre + offset + words[codes] + 0.6 * rng.standard_normal((len(n), dim))
                units[key] = n
            sets.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        tests.append(eat.EatInput(name, *sets, units=units or None))
    return tests


# ----------------------------------------------------------------------------------------------
# the baseline: one permutation at a time


def loop_pvalue(values: np.ndarray, n_x: int, n_permutations: int, seed: int) -> tuple[float, bool]:
    """sent-bias / CLIP_bias style: exact over combinations, else shuffle-and-sum in a Python loop."""
    N = len(values)
    observed = values[:n_x].sum()
    tol = eat.TIE_RTOL * np.abs(values).sum()
    total = math.comb(N, n_x)
    if total <= n_permutations:
        count = 0
        for combo in itertools.combinations(range(N), n_x):
            if values[list(combo)].sum() >= observed - tol:
                count += 1
        return count / total, True
    rng = np.random.default_rng(seed)
    pooled = np.arange(N)
    count = 1  # the observed partition
    for _ in range(n_permutations - 1):
        rng.shuffle(pooled)
        if values[pooled[:n_x]].sum() >= observed - tol:
            count += 1
    return count / n_permutations, False


def compare(tests: list[eat.EatInput], n_permutations: int, n_baseline: int, threads: int) -> None:
    pooled, n_x = [], []
    for t in tests:
        pooled.append(np.concatenate([eat.association(t.X, t.A, t.B), eat.association(t.Y, t.A, t.B)]))
        n_x.append(len(t.X))
    # warm-up: the compiled kernels (random and exact partitions) are loaded from the cache or compiled
    eat.permutation_tests(pooled[:2], n_x[:2], n_permutations=1000, n_jobs=threads)
    load_before = _load()
    t0 = time.perf_counter()
    ours = eat.permutation_tests(pooled, n_x, n_permutations=n_permutations, seed=ARGS.seed, n_jobs=threads)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours_1 = eat.permutation_tests(pooled, n_x, n_permutations=n_permutations, seed=ARGS.seed, n_jobs=1)
    t_ours_1 = time.perf_counter() - t0
    assert [r.p_value for r in ours] == [r.p_value for r in ours_1], "threads changed a p-value"

    print(f"(1) permutation p-values of {len(tests)} tests, {n_permutations:,} permutations each")
    print(f"    machine load (1-minute average) before: {load_before}, {_cores()} cores available")
    print(f"    {'test':<40}{'N':>5}{'baseline us/perm':>18}{'p (clipprobe)':>15}{'p (baseline)':>14}")
    t_base_total = 0.0
    identical = 0
    for t, v, k, r in zip(tests, pooled, n_x, ours):
        exact = math.comb(len(v), k) <= n_permutations
        n_run = n_permutations if exact else n_baseline
        t0 = time.perf_counter()
        p_base, base_exact = loop_pvalue(v, k, n_run, ARGS.seed)
        dt = time.perf_counter() - t0
        per_perm = dt / (math.comb(len(v), k) if exact else n_run)
        t_base_total += per_perm * (r.n_permutations if exact else n_permutations)
        if exact:
            assert base_exact and r.exact and p_base == r.p_value, (t.name, p_base, r.p_value)
            identical += 1
        print(f"    {t.name:<40}{len(v):>5}{per_perm * 1e6:>18.2f}{r.p_value:>15.6f}"
              f"{p_base:>14.6f}{'  exact, identical' if exact else ''}")
    print(f"    clipprobe, all tests in one call: {t_ours:.2f} s ({threads} threads), {t_ours_1:.2f} s (1 thread)")
    print(f"    baseline (per-permutation loop, scaled to the same budget): {t_base_total:.1f} s")
    ratio = t_base_total / t_ours
    print(f"    ratio: {ratio:.0f}x ({threads} threads), {t_base_total / t_ours_1:.0f}x (1 thread); "
          f"{identical} exact tests with identical p-values; target >= 50x: {'met' if ratio >= 50 else 'NOT met'}")
    print(f"    machine load (1-minute average) after: {_load()}")


def _load() -> str:
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:  # pragma: no cover - not available
        return "unknown"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


def suite(tests: list[eat.EatInput], n_permutations: int, threads: int, target: float) -> None:
    settings = eat.EatSettings(n_permutations=n_permutations, seed=ARGS.seed, n_jobs=threads)
    t0 = time.perf_counter()
    results = eat.run_eats(tests, settings)
    total = time.perf_counter() - t0
    t0 = time.perf_counter()
    eat.run_eats(tests, eat.EatSettings(n_permutations=n_permutations, seed=ARGS.seed, n_jobs=threads,
                                        ci_method=None, sc_weat=False))
    perms_only = time.perf_counter() - t0
    print(f"(2) whole suite: {len(results)} tests (+2 unavailable), {n_permutations:,} permutations each, "
          f"{settings.ci_method} intervals, SC-WEAT of every stimulus "
          f"({settings.sc_permutations:,} permutations), BH")
    print(f"    {total:.1f} s in all ({perms_only:.1f} s for effect sizes and p-values alone); target < {target:.0f} s: "
          f"{'met' if total < target else 'NOT met'}; machine load after: {_load()}")


def main() -> int:
    sizes = suite_sizes()
    tests = generate(sizes, ARGS.dim, ARGS.seed)
    compare(tests, ARGS.permutations, ARGS.baseline_permutations, ARGS.threads)
    if not ARGS.skip_suite:
        suite(tests, ARGS.permutations, ARGS.threads, ARGS.target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
