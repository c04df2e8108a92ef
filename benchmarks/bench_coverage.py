"""Coverage of every interval the report publishes, against a population whose top-k composition is known.

The population: images with three independent attributes at FairFace's validation shares (gender
2 groups, race 7, age 9) and, for each word, a score ``s = mu[group] + e`` with ``e ~ N(0, 1)``:
``mu`` is 0 except on the word's planted group of one attribute (``moderate``: 0.5, ``strong``: 1.0;
``none``: no planted group). The estimand of the report's statistics is the population's
composition among its top ``f = k/N`` fraction by score: for the planted attribute the share of group
``h`` is ``pi_h * S(t - mu_h) / f`` with ``S`` the normal survival function and ``t`` the solution
of ``sum_h pi_h S(t - mu_h) = f`` (exact, by root finding); for an attribute the word is not planted
on it is ``pi_h``. Skew is ``ln(share / pi)``, MaxSkew its maximum, the normalised entropy that of the
shares. A dataset is ``N`` images drawn from the population; the report's statistics are computed by
``clipprobe.probe_scores`` (the public array API) exactly as ``clipprobe report`` computes them.

For each cell of the grid (N, k, attribute, planting), ``--datasets`` datasets are drawn and each
interval's coverage of the true value is counted; p-values published under "no association"
(``p_max_skew``, ``p_min_skew``) are checked for uniformity (Kolmogorov-Smirnov) on the ``none`` words.

    python benchmarks/bench_coverage.py                       # the full grid, 500 datasets per cell, 500 resamples
    python benchmarks/bench_coverage.py --datasets 100 --quick
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipprobe.faces import FAIRFACE_VALIDATION_COUNTS

ATTRIBUTES = ("gender", "race", "age")
TARGET = {"gender": "Female", "race": "Middle Eastern", "age": "more than 70"}   # the planted group
PLANTINGS = {"none": 0.0, "moderate": 0.5, "strong": 1.0}
GRID_N = (2000, 10954)
GRID_K = (100, 1000)
LEVEL = 0.95
# Interval columns of the groups table (per group) and of the words table (per word), with the estimand.
GROUP_INTERVALS = {"share": ("share_ci_low", "share_ci_high"), "skew": ("skew_ci_low", "skew_ci_high")}
WORD_INTERVALS: dict[str, tuple[str, str]] = {}   # none published: see the README for what was measured
NULL_PVALUES = ("p_max_skew", "p_min_skew")
# Point estimates whose error against the truth is reported (column -> estimand).
ESTIMATES = {"norm_entropy": "norm_entropy", "norm_entropy_mm": "norm_entropy", "max_skew": "max_skew",
             "max_skew_excess": "excess", "min_skew": "min_skew"}


def shares(attribute: str) -> tuple[list[str], np.ndarray]:
    counts = FAIRFACE_VALIDATION_COUNTS[attribute]
    names = list(counts)
    pi = np.array([counts[g] for g in names], dtype=np.float64)
    return names, pi / pi.sum()


def top_fraction_shares(pi: np.ndarray, mu: np.ndarray, fraction: float) -> np.ndarray:
    """Each group's share among the top ``fraction`` of the population by score ``mu[group] + N(0, 1)``."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    if not np.any(mu):
        return pi.copy()
    t = brentq(lambda x: float(np.sum(pi * norm.sf(x - mu))) - fraction, -20.0, 20.0, xtol=1e-13)
    return pi * norm.sf(t - mu) / fraction


@dataclass(frozen=True)
class Truth:
    share: np.ndarray
    skew: np.ndarray
    max_skew: float
    min_skew: float
    norm_entropy: float


def truth(attribute: str, planted_on: str | None, shift: float, fraction: float) -> Truth:
    names, pi = shares(attribute)
    mu = np.zeros(len(names))
    if planted_on == attribute and shift:
        mu[names.index(TARGET[attribute])] = shift
    share = top_fraction_shares(pi, mu, fraction)
    skew = np.log(share / pi)
    entropy = float(-np.sum(share * np.log(share)) / math.log(len(names)))
    return Truth(share=share, skew=skew, max_skew=float(skew.max()), min_skew=float(skew.min()), norm_entropy=entropy)


def words_of_a_dataset() -> list[tuple[str, str | None, float]]:
    """(word, planted attribute, shift): one unplanted word and one per attribute and planting."""
    out = [("none", None, 0.0)]
    for attribute in ATTRIBUTES:
        for level in ("moderate", "strong"):
            out.append((f"{level}-{attribute}", attribute, PLANTINGS[level]))
    return out


def draw_dataset(rng, n: int) -> tuple[np.ndarray, pd.DataFrame]:
    """Labels of ``n`` images and the scores of every word of :func:`words_of_a_dataset`."""
    labels, codes = {}, {}
    for attribute in ATTRIBUTES:
        names, pi = shares(attribute)
        codes[attribute] = rng.choice(len(names), size=n, p=pi)
        labels[attribute] = np.asarray(names, dtype=object)[codes[attribute]]
    words = words_of_a_dataset()
    scores = rng.standard_normal((len(words), n))
    for w, (_, attribute, shift) in enumerate(words):
        if attribute is not None:
            names, _ = shares(attribute)
            scores[w] += shift * (codes[attribute] == names.index(TARGET[attribute]))
    return scores.astype(np.float32), pd.DataFrame(labels)


def cell_of(word: str, attribute: str) -> str | None:
    """The planting a (word, attribute) row measures, or None when it is not a designated cell."""
    if word == "none":
        return "none"
    level, planted = word.split("-", 1)
    return level if planted == attribute else None


def evaluate_dataset(tables, n: int, k: int) -> list[dict]:
    """One row per (attribute, planting, statistic, group) with covered (bool) and the interval's presence."""
    rows = []
    fraction = k / n
    words = {w: (a, s) for w, a, s in words_of_a_dataset()}
    groups = tables.groups
    for (word, attribute), part in groups.groupby(["word", "attribute"], sort=False):
        planting = cell_of(word, attribute)
        if planting is None:
            continue
        planted_on, shift = words[word]
        t = truth(attribute, planted_on, shift, fraction)
        names, _ = shares(attribute)
        part = part.set_index("group").reindex(names)
        for stat, (lo_col, hi_col) in GROUP_INTERVALS.items():
            if lo_col not in part:
                continue
            target = t.share if stat == "share" else t.skew
            lo, hi = part[lo_col].to_numpy(float), part[hi_col].to_numpy(float)
            expected = k * t.share
            for g, name in enumerate(names):
                rows.append({"attribute": attribute, "planting": planting, "statistic": stat, "group": name,
                             "expected_count": expected[g], "published": bool(np.isfinite(lo[g]) or np.isfinite(hi[g])
                                                                              or lo[g] == -np.inf),
                             "covered": bool(lo[g] <= target[g] <= hi[g])})
        wrow = tables.words[(tables.words["word"] == word) & (tables.words["attribute"] == attribute)].iloc[0]
        for stat, (lo_col, hi_col) in WORD_INTERVALS.items():
            if lo_col not in wrow:
                continue
            target = getattr(t, stat)
            lo, hi = float(wrow[lo_col]), float(wrow[hi_col])
            rows.append({"attribute": attribute, "planting": planting, "statistic": stat, "group": "",
                         "expected_count": np.nan, "published": bool(np.isfinite(lo) and np.isfinite(hi)),
                         "covered": bool(lo <= target <= hi)})
        for column, estimand in ESTIMATES.items():
            if column in wrow:
                target = 0.0 if estimand == "excess" else getattr(t, estimand)
                if estimand == "excess" and planting != "none":
                    continue
                rows.append({"attribute": attribute, "planting": planting, "statistic": "error:" + column,
                             "group": "", "expected_count": np.nan, "published": True, "covered": np.nan,
                             "error": float(wrow[column]) - target})
        if planting == "none":
            for column in NULL_PVALUES:
                if column in wrow:
                    rows.append({"attribute": attribute, "planting": planting, "statistic": column, "group": "",
                                 "expected_count": np.nan, "published": True, "covered": np.nan,
                                 "p_value": float(wrow[column])})
    return rows


def run_cell_batch(n: int, k: int, n_datasets: int, n_boot: int, seed: int, **options) -> pd.DataFrame:
    """Draw ``n_datasets`` datasets of size ``n`` and evaluate every designated cell at this (N, k)."""
    from clipprobe.analysis.probe import probe_scores

    rng = np.random.default_rng(np.random.SeedSequence([seed, n, k]))
    words = [w for w, _, _ in words_of_a_dataset()]
    rows = []
    for d in range(n_datasets):
        scores, labels = draw_dataset(rng, n)
        tables = probe_scores(scores, labels, words=words, k=k, bootstrap=n_boot, seed=int(rng.integers(2**31)),
                              level=LEVEL, **options)
        for row in evaluate_dataset(tables, n, k):
            row.update({"N": n, "k": k, "dataset": d})
            rows.append(row)
    return pd.DataFrame(rows)


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Coverage per cell and statistic: over every group (``coverage``), the worst group, and the
    coverage among groups whose expected count in the top-k is below 2."""
    intervals = results[results["statistic"].isin([*GROUP_INTERVALS, *WORD_INTERVALS])]
    out = []
    for key, part in intervals.groupby(["N", "k", "attribute", "planting", "statistic"], sort=False):
        published = part[part["published"]]
        by_group = published.groupby("group")["covered"].mean() if len(published) else pd.Series(dtype=float)
        rare = published[published["expected_count"] < 2]
        out.append(dict(zip(["N", "k", "attribute", "planting", "statistic"], key),
                        published=float(part["published"].mean()),
                        coverage=float(published["covered"].mean()) if len(published) else np.nan,
                        worst_group=float(by_group.min()) if len(by_group) else np.nan,
                        rare_coverage=float(rare["covered"].mean()) if len(rare) else np.nan,
                        n=int(len(published))))
    return pd.DataFrame(out)


def errors(results: pd.DataFrame) -> pd.DataFrame:
    """Mean error (bias) and its standard deviation of the point estimates, per cell."""
    part = results[results["statistic"].str.startswith("error:")]
    out = part.groupby(["N", "k", "attribute", "planting", "statistic"], sort=False)["error"].agg(["mean", "std"])
    return out.reset_index()


def null_uniformity(results: pd.DataFrame) -> pd.DataFrame:
    """Per (N, k, attribute) and null p-value column: the share of p-values at or below 0.01, 0.05 and
    0.1 (a valid p-value keeps each at or below its level, up to Monte Carlo error), the largest
    excess over a level in standard errors (``max_z``), and a Kolmogorov-Smirnov p-value against the
    uniform (low for a discrete p-value even when it is valid)."""
    from scipy.stats import kstest

    rows = []
    nulls = results[results["statistic"].isin(NULL_PVALUES)]
    for key, part in nulls.groupby(["N", "k", "attribute", "statistic"], sort=False):
        p = part["p_value"].to_numpy(float)
        levels = np.array([0.01, 0.05, 0.1])
        below = np.array([np.mean(p <= a) for a in levels])
        z = (below - levels) / np.sqrt(levels * (1 - levels) / len(p))
        rows.append(dict(zip(["N", "k", "attribute", "statistic"], key), n=len(p), below_001=below[0],
                         below_005=below[1], below_010=below[2], max_z=float(z.max()),
                         ks_p=float(kstest(p, "uniform").pvalue)))
    return pd.DataFrame(rows)


def run_grid(n_datasets: int, n_boot: int, seed: int = 0, grid_n=GRID_N, grid_k=GRID_K, **options) -> pd.DataFrame:
    frames = [run_cell_batch(n, k, n_datasets, n_boot, seed, **options) for n, k in itertools.product(grid_n, grid_k)]
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", type=int, default=500, help="datasets per cell")
    parser.add_argument("--bootstrap", type=int, default=500, help="resamples per dataset")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="only N = 10954, k = 100")
    parser.add_argument("--out", default=None, help="also write the per-row results as parquet")
    args = parser.parse_args(argv)
    grid_n, grid_k = ((10954,), (100,)) if args.quick else (GRID_N, GRID_K)
    start = time.perf_counter()
    results = run_grid(args.datasets, args.bootstrap, args.seed, grid_n, grid_k)
    elapsed = time.perf_counter() - start
    if args.out:
        results.to_parquet(args.out, index=False)
    table = summarise(results)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    print(f"coverage of the published {LEVEL:.0%} intervals: {args.datasets} datasets per cell, "
          f"{args.bootstrap} resamples, {elapsed:.0f} s")
    wide = table.pivot_table(index=["N", "k", "attribute", "planting"], columns="statistic",
                             values="coverage", sort=False)
    print(wide.round(3).to_string())
    print("\nworst group per cell (coverage of the worst-covered group):")
    print(table.pivot_table(index=["N", "k", "attribute", "planting"], columns="statistic", values="worst_group",
                            sort=False).round(3).to_string())
    err = errors(results)
    if len(err):
        print("\npoint estimates: mean error against the truth (bias), in units of the estimate's SD:")
        err["bias_in_sd"] = err["mean"] / err["std"]
        print(err.pivot_table(index=["N", "k", "attribute", "planting"], columns="statistic", values="bias_in_sd",
                              sort=False).round(2).to_string())
    nulls = null_uniformity(results)
    if len(nulls):
        print("\nnull p-values on the unplanted word (uniform under no association):")
        print(nulls.round(3).to_string(index=False))
    bad = table[(table["coverage"] < 0.93) | (table["coverage"] > 0.97)]
    print(f"\ncells outside 0.93-0.97: {len(bad)} of {len(table)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
