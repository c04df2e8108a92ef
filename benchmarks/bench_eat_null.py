"""Benchmark: calibration of the association tests when what was sampled is words, not sentences.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_eat_null.py [--reps 1000]          # null rejection rates
    PYTHONPATH=. .venv/bin/python benchmarks/bench_eat_null.py --coverage [--reps 1000] [--sizes 8,12,25]

Simulated from a known population (:mod:`clipprobe.world.eatsim`): every word of a set has its own offset
in the embedding space, every sentence is a word in one of the templates plus noise; nothing else.

(1) Default: null rejection rates. X and Y words come from one population (no effect), a word's sentences
    share its offset; the variance ratio is the variance of the word offsets over the variance of the
    sentence noise. For each setting ``--reps`` tests go through ``run_eats``; the rate at which
    ``p_value`` (words permuted) and ``p_value_sentences`` (sentences permuted, the seed's test) fall at or
    below 0.05 and 0.01 is printed beside the binomial 95% band of a calibrated test. A few minutes on one core.
(2) ``--coverage``: coverage of the two-sided 95% bootstrap interval of d (``--method``, default fisher-z)
    over a grid: word-level variation
    off/on (word offsets' sd 0 or 1, 4 templates), attributes sampled (A and B drawn in every replicate;
    the interval resamples all four sets) or fixed (one A and B kept; the interval resamples X and Y, and the
    all-sets interval is shown beside it), equal or unequal sizes and spreads (Y 1.6x the words of X; X's
    spread 1.5x, Y's 0.7x), effect 0 / moderate / large, ``--sizes`` words per set. The truth is the
    population's d (:func:`clipprobe.world.eatsim.population_d`). Long: about a minute per setting and
    1,000 replicates on one core.
"""

from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import time


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=1000, help="replicates per setting")
    ap.add_argument("--permutations", type=int, default=2000, help="permutation budget per null test")
    ap.add_argument("--coverage", action="store_true", help="run the interval coverage grid (2) instead")
    ap.add_argument("--sizes", default="8,12,25", help="words per set in the coverage grid")
    ap.add_argument("--method", default="fisher-z", choices=["fisher-z", "BCa", "percentile"],
                    help="interval method (fisher-z is the one a run publishes; the others for comparison)")
    ap.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples in the coverage runs")
    ap.add_argument("--attributes", default="sampled,fixed", help="which attribute settings of the grid to run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads")
    return ap.parse_args()


ARGS = _parse()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(ARGS.threads)

from clipprobe.world import eatsim  # noqa: E402

NULL_GRID = [  # (words per set, templates (lo, hi) or a number, variance ratio)
    (5, 1, 1.0), (5, 8, 0.0), (5, 8, 0.25), (5, 8, 1.0), (5, 8, 4.0), (5, 14, 1.0),
    (10, 1, 1.0), (10, 8, 0.0), (10, 8, 0.25), (10, 8, 1.0), (10, 8, 4.0), (10, 14, 1.0), (10, (3, 14), 1.0),
    (25, 1, 1.0), (25, 8, 0.0), (25, 8, 0.25), (25, 8, 1.0), (25, 8, 4.0), (25, 14, 1.0), (25, (3, 14), 1.0),
]


def band(level: float, reps: int) -> tuple[float, float]:
    """The central 95% range of the observed rate of a test calibrated at ``level`` (binomial)."""
    from scipy.stats import binom

    return binom.ppf(0.025, reps, level) / reps, binom.ppf(0.975, reps, level) / reps


def run_null(reps: int, n_permutations: int, seed: int) -> None:
    print(f"(1) null rejection rates: X and Y words from one population, {reps} tests per row, "
          f"{n_permutations:,} permutations (exact when fewer partitions); 10 words in A and B")
    lo5, hi5 = band(0.05, reps)
    lo1, hi1 = band(0.01, reps)
    print(f"    a calibrated test's rate falls in [{lo5:.3f}, {hi5:.3f}] at 0.05 and [{lo1:.3f}, {hi1:.3f}] at 0.01 "
          "(95% binomial)")
    print(f"    {'words':>5}{'templates':>10}{'ratio':>7} | {'words permuted':>15}{'':>8} | "
          f"{'sentences permuted':>19}{'':>6} | in band")
    print(f"    {'':>22} | {'0.05':>11}{'0.01':>10}  | {'0.05':>11}{'0.01':>10}    |")
    outside = 0
    for i, (n, templates, ratio) in enumerate(NULL_GRID):
        t0 = time.perf_counter()
        span = templates if isinstance(templates, tuple) else None
        T = templates[1] if span else templates
        r = eatsim.null_rejection(n_words=n, n_templates=T, templates=span, variance_ratio=ratio, reps=reps,
                                  n_permutations=n_permutations, seed=seed + i)
        s, w = r["sentences"], r["stimuli"]
        ok = lo5 <= w[0.05] <= hi5 and lo1 <= w[0.01] <= hi1
        outside += not ok
        label = f"{span[0]}-{span[1]}" if span else str(T)
        print(f"    {n:>5}{label:>10}{ratio:>7.2f} | {w[0.05]:>11.3f}{w[0.01]:>10.3f}  | {s[0.05]:>11.3f}"
              f"{s[0.01]:>10.3f}    | {'yes' if ok else 'NO'}   ({time.perf_counter() - t0:.1f} s)", flush=True)
    print(f"    words permuted: {len(NULL_GRID) - outside} of {len(NULL_GRID)} rows inside the band "
          f"(about 1 in 10 rows may fall outside by chance with two levels)")


def run_coverage(reps: int, sizes: list[int], method: str, resamples: int, seed: int, attribute_kinds) -> None:
    half = 1.96 * math.sqrt(0.95 * 0.05 / reps)
    print(f"(2) coverage of two-sided 95% {method} intervals of d (stimuli resampled), {reps} replicates per row, "
          f"{resamples} bootstrap resamples; target 0.93-0.97 (a true 0.95 is observed within +-{half:.3f})")
    print(f"    {'words':>5}{'word sd':>8}{'attributes':>11}{'sizes':>9}{'effect':>7}{'true d':>8} | "
          f"{'resample all':>13}{'resample X, Y':>15} | width (all)")
    effects = (0.0, 0.8, 1.6)
    for i, (n, word_sd, attributes, unequal, effect) in enumerate(itertools.product(
            sizes, (0.0, 1.0), ("sampled", "fixed"), (False, True), effects)):
        if attributes not in attribute_kinds:
            continue
        t0 = time.perf_counter()
        resample = ("all",) if attributes == "sampled" else ("targets", "all")
        c = eatsim.interval_coverage(n_words=n, word_sd=word_sd, attributes=attributes, unequal=unequal,
                                     effect=effect, reps=reps, resample=resample, method=method,
                                     n_resamples=resamples, seed=seed + i)
        cover_all = f"{c['coverage_all']:.3f}" + ("*" if attributes == "fixed" else " ")
        cover_t = f"{c['coverage_targets']:.3f}" if "coverage_targets" in c else "-"
        print(f"    {n:>5}{word_sd:>8.1f}{attributes:>11}{'unequal' if unequal else 'equal':>9}{effect:>7.1f}"
              f"{c['truth']:>8.2f} | {cover_all:>13}{cover_t:>15} | {c['width_all']:.2f}"
              f"   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("    * attributes fixed: the all-sets interval also counts attribute sampling that did not happen "
          "(conservative); with fixed attributes the interval to read is 'resample X, Y' (--fixed-attributes)")


def main() -> int:
    t0 = time.perf_counter()
    if ARGS.coverage:
        run_coverage(ARGS.reps, [int(s) for s in ARGS.sizes.split(",")], ARGS.method, ARGS.resamples, ARGS.seed,
                     ARGS.attributes.split(","))
    else:
        run_null(ARGS.reps, ARGS.permutations, ARGS.seed)
    try:
        load = f"{os.getloadavg()[0]:.1f}"
    except OSError:  # pragma: no cover
        load = "unknown"
    print(f"    total {time.perf_counter() - t0:.0f} s; machine load (1-minute average) at the end: {load}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
