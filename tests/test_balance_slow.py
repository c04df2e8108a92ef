"""Coverage of the balance intervals over a grid of known populations (slow).

    .venv/bin/python -m pytest -q -m slow tests/test_balance_slow.py
    PYTHONPATH=. .venv/bin/python tests/test_balance_slow.py        # prints the tables

Data RB/AB: datasets drawn as multinomial counts over the (s, y) patterns of a population (the same
distribution as drawing captions one at a time), unweighted, weighted by random keep probabilities
and weighted by M4's own keep probabilities (solved on the population). Model RB/AB: exact binomial
coverage of Wilson's interval; Newcombe's by simulation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from clipprobe.analysis import balance as B
from clipprobe.analysis import intervals as IV
from clipprobe.analysis import patterns as P

try:
    from test_balance import Z95, membership, population, population_truth
except ImportError:  # run as a script from the repository root
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from test_balance import Z95, membership, population, population_truth

SCENARIOS = {
    "base": {},
    "rare labels": {"label_p": ((0.02, 0.01), (0.05, 0.01))},
    "few mentions": {"p_none": 0.9, "p_m": 0.06, "p_f": 0.035, "p_both": 0.005},
    "skewed groups": {"p_none": 0.5, "p_m": 0.45, "p_f": 0.04, "p_both": 0.01, "label_p": ((0.1, 0.3), (0.02, 0.05))},
    "many multi-group": {"p_none": 0.2, "p_m": 0.3, "p_f": 0.2, "p_both": 0.3},
    "no association": {"label_p": ((0.2, 0.2), (0.05, 0.05))},
}
SIZES = (300, 1000, 3000, 10000, 100000)
REPS = 10000


def m4_weights(s, y, p):
    """M4's keep probabilities for the population itself (1e6 examples in its proportions)."""
    table, ids = P.encode_patterns(s.astype(int), y.astype(int))
    counts = np.round(p * 1e6).astype(np.int64)
    pop = P.merge_tables([P.PatternTable(table.groups, table.labels, table.keys[ids], table.ubin[ids], counts,
                                         counts.astype(float), False)])
    keep = min(0.9, B.max_keep_rate(pop, eps_r=0.02, eps_a=0.02) - 0.01)
    sol = B.m4_solve(pop, keep=keep, eps_r=0.02, eps_a=0.02)
    return sol.q[P.table_lookup(pop, sol.table)]


def data_coverage_grid(reps: int = REPS):
    rows = []
    rng = np.random.default_rng(20)
    for name, kw in SCENARIOS.items():
        s, y, p = population(**kw)
        w, m = membership(s)
        weightings = {"none": np.ones(len(p)), "random": rng.uniform(0.2, 1.0, len(p)), "m4": m4_weights(s, y, p)}
        for wname, q in weightings.items():
            share, ab = population_truth(s, y, p, q)
            # expected label events and non-events per arm (unweighted counts per example drawn)
            w_out = m[:, None] - w
            ev = np.minimum.reduce([(p[:, None] * w).T @ y, (p[:, None] * w).T @ (1 - y),
                                    (p[:, None] * w_out).T @ y, (p[:, None] * w_out).T @ (1 - y)])
            for n in SIZES:
                counts = rng.multinomial(n, p, size=reps).astype(float)
                st = B.bias_from_sums(w, m, y, counts * q, counts * q * q, np.array([0.5, 0.5]), Z95)
                ok = ~np.isnan(st["share_low"][:, 0])
                cov_share = ((st["share_low"][:, 0] <= share[0]) & (share[0] <= st["share_high"][:, 0]))[ok].mean()
                for r in range(y.shape[1]):
                    lo, hi = st["ab_low"][:, 0, r], st["ab_high"][:, 0, r]
                    pub = ~np.isnan(lo)
                    cov = ((lo <= ab[0, r]) & (ab[0, r] <= hi))[pub].mean() if pub.any() else np.nan
                    rows.append({"scenario": name, "weights": wname, "n": n, "label": r,
                                 "expected_events": n * ev[0, r], "published": pub.mean(),
                                 "coverage_ab": cov, "coverage_share": cov_share})
    return rows


@pytest.mark.slow
def test_data_interval_coverage_grid():
    rows = data_coverage_grid()
    share = np.array([r["coverage_share"] for r in rows])
    assert np.all((share >= 0.93) & (share <= 0.97)), share.min()
    enough = [r for r in rows if r["expected_events"] >= 10]
    cov = np.array([r["coverage_ab"] for r in enough])
    assert len(enough) > 100
    assert np.all((cov >= 0.93) & (cov <= 0.97)), [r for r in enough if not 0.93 <= r["coverage_ab"] <= 0.97]
    assert min(r["published"] for r in enough) > 0.85


def wilson_exact_coverage(n, p):
    x = np.arange(n + 1)
    lo, hi = IV.wilson_interval(x / n, n, Z95)
    return float(binom.pmf(x, n, p)[(lo <= p) & (p <= hi)].sum())


def model_coverage_grid(reps: int = 20000):
    wilson = {(n, p): wilson_exact_coverage(n, p) for n in (100, 200, 500, 1000, 5000)
              for p in np.round(np.arange(0.2, 0.81, 0.05), 2)}
    rng = np.random.default_rng(21)
    newcombe = {}
    for n1, n0 in ((100, 100), (300, 250), (1000, 1000), (2500, 2500)):
        for p1, p0 in ((0.5, 0.5), (0.6, 0.4), (0.3, 0.2), (0.8, 0.6), (0.25, 0.25)):
            x1, x0 = rng.binomial(n1, p1, reps), rng.binomial(n0, p0, reps)
            l1, h1 = IV.wilson_interval(x1 / n1, n1, Z95)
            l0, h0 = IV.wilson_interval(x0 / n0, n0, Z95)
            lo, hi = IV.newcombe_interval(x1 / n1, l1, h1, x0 / n0, l0, h0)
            newcombe[(n1, n0, p1, p0)] = float(((lo <= p1 - p0) & (p1 - p0 <= hi)).mean())
    return wilson, newcombe


@pytest.mark.slow
def test_model_interval_coverage_grid():
    wilson, newcombe = model_coverage_grid()
    assert all(0.93 <= c <= 0.97 for c in wilson.values()), min(wilson.items(), key=lambda kv: kv[1])
    assert all(0.93 <= c <= 0.97 for c in newcombe.values()), newcombe


if __name__ == "__main__":
    import pandas as pd

    pd.set_option("display.width", 200)
    pd.set_option("display.max_rows", 500)
    frame = pd.DataFrame(data_coverage_grid())
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    enough = frame[frame.expected_events >= 10]
    print(f"\nshare intervals: coverage {frame.coverage_share.min():.3f}-{frame.coverage_share.max():.3f} "
          f"over all {len(frame)} settings")
    print(f"AB intervals, >= 10 expected events per arm: coverage {enough.coverage_ab.min():.3f}-"
          f"{enough.coverage_ab.max():.3f} over {len(enough)} settings, published >= {enough.published.min():.3f}")
    for lo, hi in ((0, 5), (5, 10)):
        part = frame[(frame.expected_events >= lo) & (frame.expected_events < hi)]
        if len(part):
            print(f"AB intervals, {lo}-{hi} expected events: coverage {part.coverage_ab.min():.3f}-"
                  f"{part.coverage_ab.max():.3f} ({len(part)} settings, published {part.published.min():.2f}-"
                  f"{part.published.max():.2f})")
    wilson, newcombe = model_coverage_grid()
    print(f"\nmodel RB / AB shares (Wilson, exact): {min(wilson.values()):.4f}-{max(wilson.values()):.4f} over "
          f"n in 100..5000, p in 0.2..0.8")
    print(f"model AB difference (Newcombe, simulated): {min(newcombe.values()):.4f}-{max(newcombe.values()):.4f}")
