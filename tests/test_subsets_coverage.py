"""Coverage of the intervals that `clipprobe subsets` publishes, measured by simulation
(benchmarks/bench_subsets.py --coverage): Spearman's rho across models, and the report's intervals at
subset sizes. The full grids are slow tests; small versions run in the default suite."""

from __future__ import annotations

import pytest
from benchmodule import bench


def _bench():
    return bench("bench_subsets")


def test_true_spearman_of_the_normal_copula():
    from scipy import stats

    b = _bench()
    import numpy as np

    x, y = b.draw_pairs(np.random.default_rng(0), 40_000, 0.6, "normal")
    assert stats.spearmanr(x, y).statistic == pytest.approx(b.true_spearman(0.6, "normal"), abs=0.01)


def test_bca_interval_covers_in_a_small_grid():
    """120 samples per cell (binomial SE about 0.02): a quick check that the published interval is not off."""
    b = _bench()
    for n, rho, copula in ((10, 0.0, "normal"), (15, 0.6, "t3")):
        cov = b.rho_coverage(n, rho, copula, 120, seed=1, methods=("bca",), n_boot=500)["bca"]
        assert 0.88 <= cov <= 1.0, (n, rho, copula, cov)


@pytest.mark.slow
def test_bca_interval_covers_across_the_grid():
    """The published interval (BCa over models), normal and t(3) copulas, 8 to 29 models, population rho
    0 to 0.9, 600 samples per cell (SE about 0.009): no cell below 0.925, and above 0.97 only at rho = 0.9
    (conservative). The README's numbers are the 1000-sample run of benchmarks/bench_subsets.py."""
    b = _bench()
    grid = b.rho_coverage_grid(600, seed=0, methods=("bca",), grid_n=(8, 10, 15, 20, 29))
    assert (grid["coverage"] >= 0.925).all(), grid.to_string()
    high = grid[grid["coverage"] > 0.975]
    assert (high["rho"] == 0.9).all(), grid.to_string()
    assert 0.94 <= grid["coverage"].mean() <= 0.97


def test_local_intervals_cover_at_subset_sizes_quick():
    b = _bench()
    table = b.local_coverage(2000, 4, 3, k=100, seed=3)
    assert set(table["statistic"]) == {"share", "skew", "skew_vs_global"}
    assert set(table["N"]) == {500} and set(table["k"]) == {100}
    assert (table["published"] == 1.0).all()
    assert table["coverage"].mean() > 0.85, table.to_string()


@pytest.mark.slow
def test_local_intervals_cover_at_subset_sizes():
    """Subsets of about 500 and 150 images, k fixed at 100 or the global fraction: the report's share and
    skew intervals and the skew against the global base shares, 300 datasets per cell."""
    b = _bench()
    import pandas as pd

    frames = [b.local_coverage(n_total, n_subsets, 300, k=100, k_mode=mode, seed=0)
              for n_total, n_subsets in b.LOCAL_GRID for mode in ("fixed", "fraction")]
    table = pd.concat(frames, ignore_index=True)
    published = table[table["published"] > 0]
    bad = published[(published["coverage"] < 0.93) | (published["coverage"] > 0.975)]
    assert bad.empty, bad.to_string()
    # share intervals (and the skew against global shares made from them) are withheld where k > N/2 (150
    # images, k = 100), and only there
    withheld = table[table["published"] == 0]
    assert set(zip(withheld["N"], withheld["k"], withheld["statistic"])) == {(150, 100, "share"),
                                                                            (150, 100, "skew_vs_global")}
    # elsewhere published for (nearly) every group: a rare age group absent from a subset has no skew interval
    assert (table.loc[table["published"] > 0, "published"] > 0.95).all(), table.to_string()
