"""Time a full So-B-IT report on FairFace-sized cached embeddings (issue #3, item 8).

Inputs are generated: 10,954 L2-normalised 512-d image "embeddings" with FairFace-like label
shares, and one generated query vector per word of the shipped So-B-IT taxonomy (text encoding is
excluded, as in the issue). Two things are timed in the same process:

1. the point estimates of every word and attribute, clipprobe's vectorised path against a
   straightforward per-word loop (argsort per word, per-image label lookups, dict counting, as
   public re-implementations do), on the same scores; the two must agree;
2. the whole report through the array API: `probe_scores` (point estimates, hypergeometric tests,
   intervals, the MaxSkew/MinSkew permutation null, the control-query test against 220 generated
   control queries, BH, 1000 bootstrap resamples for stability, summary) and `write_report`
   (parquet/CSV/JSON, core figures, HTML) into a temporary folder.

    python benchmarks/bench_report_full.py [--bootstrap 1000] [--dim 512] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from clipprobe.analysis.metrics import point_estimates, rank_topk
from clipprobe.analysis.probe import encode_labels, probe_scores
from clipprobe.faces import GROUP_ORDER, race_gender
from clipprobe.report.writer import write_report
from clipprobe.resources.taxonomy import get_taxonomy
from clipprobe.runinfo import StageTimer

RACE_SHARES = [0.19, 0.14, 0.15, 0.14, 0.13, 0.14, 0.11]
AGE_SHARES = [0.018, 0.125, 0.11, 0.30, 0.22, 0.12, 0.07, 0.028, 0.009]


def make_inputs(n: int, dim: int, n_words: int, seed: int):
    """Generated image vectors with FairFace-like labels and some group structure, and query vectors
    (the first ``n_words`` rows; the rest are the control queries)."""
    rng = np.random.default_rng(seed)
    race = rng.choice(GROUP_ORDER["race"], size=n, p=np.array(RACE_SHARES) / sum(RACE_SHARES))
    gender = rng.choice(GROUP_ORDER["gender"], size=n, p=[0.53, 0.47])
    age = rng.choice(GROUP_ORDER["age"], size=n, p=np.array(AGE_SHARES) / sum(AGE_SHARES))
    labels = pd.DataFrame({"race": race, "gender": gender, "age": age,
                           "race_gender": [race_gender(r, g) for r, g in zip(race, gender)]})
    # Vectors with some group structure, as real face embeddings have.
    centres = rng.standard_normal((len(GROUP_ORDER["race"]), dim)).astype(np.float32)
    codes = encode_labels(labels, ["race"]).codes["race"]
    vectors = 0.3 * centres[codes] + rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = rng.standard_normal((n_words, dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return queries @ vectors.T, labels


def loop_point_estimates(scores: np.ndarray, labels: list, k: int, base: dict) -> list[dict]:
    """The per-word loop of public re-implementations: argsort, label lookups, Counter."""
    out = []
    for w in range(scores.shape[0]):
        order = np.argsort(-scores[w], kind="stable")[:k]
        counts = Counter(labels[i] for i in order)
        shares = {g: counts.get(g, 0) / k for g in base}
        skews = {g: math.log(max(counts.get(g, 0), 1) / k / base[g]) for g in base}
        entropy = -sum(p * math.log(p) for p in shares.values() if p > 0) / math.log(len(base))
        out.append({"max_skew": max(skews.values()), "min_skew": min(skews.values()), "norm_entropy": entropy})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10954)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--permutations", type=int, default=1000)
    args = parser.parse_args()

    words = get_taxonomy().words()
    n_controls = len(get_taxonomy("controls").words())
    all_scores, table = make_inputs(args.n, args.dim, len(words) + n_controls, args.seed)
    scores, controls = all_scores[:len(words)], all_scores[len(words):]
    encoded = encode_labels(table)

    rows = []
    for attribute in ("race", "gender", "age", "race_gender"):
        codes, names = encoded.codes[attribute], encoded.names[attribute]
        labels = [names[c] for c in codes]
        base = {g: c / len(codes) for g, c in Counter(labels).items()}
        t0 = time.perf_counter()
        loop = loop_point_estimates(scores, labels, args.k, base)
        t_loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        est = point_estimates(rank_topk(scores, args.k), codes, len(names))
        t_vec = time.perf_counter() - t0
        for key in ("max_skew", "min_skew", "norm_entropy"):
            np.testing.assert_allclose(est[key], [r[key] for r in loop], rtol=1e-9, atol=1e-12)
        rows.append((attribute, t_loop, t_vec))
    print(f"{len(words)} words x {args.n} images, k = {args.k}: point estimates (agree with the loop)")
    print(f"{'attribute':<12} {'loop s':>8} {'clipprobe s':>12} {'ratio':>7}")
    for attribute, t_loop, t_vec in rows:
        print(f"{attribute:<12} {t_loop:>8.3f} {t_vec:>12.3f} {t_loop / t_vec:>6.1f}x")
    total_loop, total_vec = sum(r[1] for r in rows), sum(r[2] for r in rows)
    print(f"{'all':<12} {total_loop:>8.3f} {total_vec:>12.3f} {total_loop / total_vec:>6.1f}x")

    timer = StageTimer()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        with timer("probe_scores"):
            tables = probe_scores(scores, table, words=words, k=args.k, bootstrap=args.bootstrap, seed=args.seed,
                                  permutations=args.permutations, controls=controls)
        write_report(tables, Path(tmp) / "report", timer=timer)
        total = time.perf_counter() - t0
    print(f"\nfull report, {args.bootstrap} bootstrap resamples, {args.permutations} label permutations, "
          f"{n_controls} control queries, 4 attributes, {len(tables.groups)} rows: "
          f"{total:.1f} s (target < 60 s)")
    print("  " + ", ".join(f"{k} {v:.1f} s" for k, v in timer.as_dict().items() if v >= 0.05))


if __name__ == "__main__":
    main()
