"""Statistics against scipy, statsmodels, exact arithmetic and a brute-force bootstrap."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests

from clipprobe.analysis import metrics as M
from clipprobe.analysis import bootstrap as S
from clipprobe.analysis import significance as sig
from clipprobe.errors import DataError, UsageError

# ---------------------------------------------------------------------------------------------
# hypergeometric p-values


def test_hypergeom_p_equals_scipy_on_a_grid():
    n_total, k = 10954, 100
    sizes = np.array([2085, 1556, 1623, 1550, 1415, 1516, 1209])
    counts = np.arange(0, k + 1)[:, None]
    p_over, p_under = sig.hypergeom_p(counts, sizes[None, :], n_total, k)
    assert p_over.shape == (k + 1, 7)
    np.testing.assert_allclose(p_over, scipy.stats.hypergeom.sf(counts - 1, n_total, sizes, k), rtol=1e-12, atol=0)
    np.testing.assert_allclose(p_under, scipy.stats.hypergeom.cdf(counts, n_total, sizes, k), rtol=1e-12, atol=0)


def test_hypergeom_p_equals_exact_rational_arithmetic():
    n_total, k = 30, 7
    for size in (0, 1, 5, 12, 30):
        for count in range(0, min(k, size) + 1):
            total = math.comb(n_total, k)
            pmf = [Fraction(math.comb(size, x) * math.comb(n_total - size, k - x), total) for x in range(k + 1)]
            over, under = sig.hypergeom_p(count, size, n_total, k)
            if size == 0:
                assert np.isnan(over) and np.isnan(under)  # absent group: excluded
                continue
            assert float(over) == pytest.approx(float(sum(pmf[count:])), rel=1e-12)
            assert float(under) == pytest.approx(float(sum(pmf[: count + 1])), rel=1e-12)


def test_hypergeom_p_rejects_impossible_counts():
    with pytest.raises(DataError, match="counts must lie between 0 and k=5"):
        sig.hypergeom_p(6, 10, 100, 5)
    with pytest.raises(DataError, match="group_sizes must lie between 0 and n_total=100"):
        sig.hypergeom_p(1, 101, 100, 5)


# ---------------------------------------------------------------------------------------------
# Benjamini-Hochberg


@settings(max_examples=80, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 0.01, 0.05, 1.0, float("nan")])),
                min_size=1, max_size=60))
def test_bh_adjust_equals_statsmodels(values):
    p = np.array(values)
    q = sig.bh_adjust(p)
    valid = ~np.isnan(p)
    assert np.array_equal(np.isnan(q), ~valid)
    if valid.any():
        expected = multipletests(p[valid], method="fdr_bh")[1]
        np.testing.assert_allclose(q[valid], expected, rtol=1e-12, atol=1e-15)


def test_bh_adjust_keeps_shape():
    rng = np.random.default_rng(0)
    p = rng.random((20, 7))
    p[3, 2] = np.nan
    q = sig.bh_adjust(p)
    assert q.shape == p.shape
    flat = p.ravel()
    expected = multipletests(flat[~np.isnan(flat)], method="fdr_bh")[1]
    np.testing.assert_allclose(q.ravel()[~np.isnan(flat)], expected)


# ---------------------------------------------------------------------------------------------
# bootstrap against brute force


def _brute_force(scores, labels, n_groups, k, mult):
    """Materialise each resampled dataset, argsort it, count groups (ties by image index)."""
    out_counts, out_base = [], []
    for m in mult:
        images = np.repeat(np.arange(scores.shape[1]), m)  # ascending image index, copies adjacent
        order = np.argsort(-scores[:, images], axis=1, kind="stable")[:, :k]
        out_counts.append(M.topk_counts(images[order], labels, n_groups))
        out_base.append(np.bincount(labels[images], minlength=n_groups) / scores.shape[1])
    return np.array(out_counts), np.array(out_base)


@pytest.mark.parametrize("depth", [None, 9, 30])
def test_bootstrap_counts_equal_brute_force_with_ties_and_fallback(depth):
    rng = np.random.default_rng(11)
    n, w, k = 150, 12, 8
    scores = rng.normal(size=(w, n)).round(1)  # ties between distinct images
    race = rng.integers(0, 4, size=n)
    gender = rng.integers(0, 2, size=n)
    boot = S.bootstrap_counts(scores, {"race": race, "gender": gender}, {"race": 4, "gender": 2}, k,
                              n_boot=40, seed=5, depth=depth)
    mult = S.resample_multiplicities(n, 40, seed=5)
    assert np.all(mult.sum(axis=1) == n)
    for name, lab, g in (("race", race, 4), ("gender", gender, 2)):
        counts, base = _brute_force(scores, lab, g, k, mult)
        np.testing.assert_array_equal(boot[name].counts, counts)
        np.testing.assert_allclose(boot[name].base_share, base)
        assert boot[name].counts.shape == (40, w, g)
        assert np.all(boot[name].counts.sum(axis=2) == k)
    if depth == 9:
        assert boot["race"].n_fallback > 0  # the fallback path was exercised and stayed exact


def test_bootstrap_is_deterministic_and_independent_of_chunking():
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(5, 80))
    lab = rng.integers(0, 3, size=80)
    a = S.bootstrap_counts(scores, {"a": lab}, {"a": 3}, 6, n_boot=25, seed=9, chunk_size=4)["a"]
    b = S.bootstrap_counts(scores, {"a": lab}, {"a": 3}, 6, n_boot=25, seed=9, chunk_size=25)["a"]
    c = S.bootstrap_counts(scores, {"a": lab}, {"a": 3}, 6, n_boot=25, seed=10)["a"]
    np.testing.assert_array_equal(a.counts, b.counts)
    assert not np.array_equal(a.counts, c.counts)


def test_bootstrap_intervals_equal_per_resample_oracle():
    rng = np.random.default_rng(4)
    n, w, k, g = 200, 6, 15, 3
    scores = rng.normal(size=(w, n))
    lab = rng.choice(3, size=n, p=[0.6, 0.35, 0.05])
    boot = S.bootstrap_counts(scores, {"a": lab}, {"a": g}, k, n_boot=60, seed=1)["a"]
    point = M.point_estimates(M.rank_topk(scores, k), lab, g)
    ci = S.bootstrap_intervals(boot, top_group=point["top_group"], level=0.9)
    mult = S.resample_multiplicities(n, 60, seed=1)
    counts, base = _brute_force(scores, lab, g, k, mult)
    skews, max_skews, ents, tops = [], [], [], []
    for b in range(60):
        with np.errstate(divide="ignore"):
            skew = np.where(base[b] > 0, np.log(np.maximum(counts[b], 1) / k / base[b]), np.nan)
        skews.append(skew)
        max_skews.append(np.nanmax(skew, axis=1))
        tops.append(np.nanargmax(skew, axis=1))
        share = counts[b] / k
        ents.append([scipy.stats.entropy(row) / np.log(3) for row in share])
    np.testing.assert_allclose(ci["share_ci_low"], np.percentile(counts / k, 5, axis=0))
    np.testing.assert_allclose(ci["share_ci_high"], np.percentile(counts / k, 95, axis=0))
    np.testing.assert_allclose(ci["skew_ci_low"], np.nanpercentile(np.array(skews), 5, axis=0))
    np.testing.assert_allclose(ci["skew_ci_high"], np.nanpercentile(np.array(skews), 95, axis=0))
    np.testing.assert_allclose(ci["max_skew_ci_low"], np.percentile(max_skews, 5, axis=0))
    np.testing.assert_allclose(ci["norm_entropy_ci_high"], np.percentile(ents, 95, axis=0))
    np.testing.assert_allclose(ci["stability"], (np.array(tops) == point["top_group"]).mean(axis=0))
    assert np.all(ci["share_ci_low"] <= point["share"] + 0.2)


def test_bootstrap_interval_covers_planted_share():
    rng = np.random.default_rng(8)
    n, k = 3000, 100
    lab = rng.integers(0, 2, size=n)
    scores = rng.normal(size=(1, n)) + 1.0 * (lab == 1)
    boot = S.bootstrap_counts(scores, {"g": lab}, {"g": 2}, k, n_boot=200, seed=0)["g"]
    point = M.point_estimates(M.rank_topk(scores, k), lab, 2)
    ci = S.bootstrap_intervals(boot, top_group=point["top_group"])
    assert point["top_group"][0] == 1
    assert ci["share_ci_low"][0, 1] > 0.6  # clearly above the base share of about 0.5
    assert ci["stability"][0] == 1.0


def test_bootstrap_neutral_and_uniform_references():
    rng = np.random.default_rng(12)
    n, k = 400, 20
    lab = rng.integers(0, 3, size=n)
    scores = rng.normal(size=(4, n))
    boot = S.bootstrap_counts(scores, {"a": lab}, {"a": 3}, k, n_boot=30, seed=3)["a"]
    top = np.zeros(4, dtype=int)
    neutral = S.bootstrap_intervals(boot, top_group=top, reference="neutral", neutral_row=0)
    # Relative to itself, the neutral row's skew is only the Jeffreys smoothing, so small.
    assert np.nanmax(np.abs(neutral["skew_ci_high"][0])) < 0.2
    uniform = S.bootstrap_intervals(boot, top_group=top, reference="uniform")
    expect = np.percentile(np.log(np.maximum(boot.counts, 1) / k * 3), 97.5, axis=0)
    np.testing.assert_allclose(uniform["skew_ci_high"], expect)
    with pytest.raises(UsageError, match="neutral_row"):
        S.bootstrap_intervals(boot, top_group=top, reference="neutral")


def test_percentile_interval_equals_nanpercentile():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4, 3))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 0, 0] = np.nan
    lo, hi = S.percentile_interval(x, 0.8)
    with pytest.warns(RuntimeWarning):
        expect_lo = np.nanpercentile(x, 10, axis=0)
    np.testing.assert_allclose(lo, expect_lo, equal_nan=True)
    with pytest.warns(RuntimeWarning):
        np.testing.assert_allclose(hi, np.nanpercentile(x, 90, axis=0), equal_nan=True)
    with pytest.raises(UsageError, match="level=1.5"):
        S.percentile_interval(x, 1.5)


# ---------------------------------------------------------------------------------------------
# calibration


def _flagged_fraction(scores, labels, n_groups, k, alpha):
    ids = M.rank_topk(scores, k)
    counts = M.topk_counts(ids, labels, n_groups)
    sizes = np.bincount(labels, minlength=n_groups)
    p_over, _ = sig.hypergeom_p(counts, sizes[None, :], labels.size, k)
    q = sig.bh_adjust(p_over)
    return (q < alpha), p_over


def test_calibration_shuffled_labels_flag_at_most_alpha():
    rng = np.random.default_rng(21)
    n, w, k, alpha = 2000, 400, 50, 0.05
    emb = rng.normal(size=(n, 16))
    words = rng.normal(size=(w, 16))
    scores = words @ emb.T
    labels = rng.permutation(rng.choice(5, size=n, p=[0.35, 0.25, 0.2, 0.15, 0.05]))
    flagged, p_over = _flagged_fraction(scores, labels, 5, k, alpha)
    assert flagged.mean() <= alpha
    # Unadjusted, the exact test is valid too: rejections at level alpha stay near or below alpha.
    se = math.sqrt(alpha * (1 - alpha) / p_over.size)
    assert (p_over < alpha).mean() <= alpha + 3 * se


def test_calibration_planted_over_representation_is_detected():
    rng = np.random.default_rng(22)
    n, w, k, alpha = 2000, 200, 50, 0.05
    labels = rng.choice(4, size=n, p=[0.4, 0.3, 0.2, 0.1])
    scores = rng.normal(size=(w, n))
    planted = np.arange(20)  # the first 20 words favour group 3 (10% of the data)
    scores[planted] += 1.5 * (labels == 3)
    flagged, _ = _flagged_fraction(scores, labels, 4, k, alpha)
    assert flagged[planted, 3].all()
    null_rows = np.ones_like(flagged)
    null_rows[planted, 3] = False
    null_rows[planted] = False  # planted words under-represent the others; leave them out
    assert flagged[null_rows].mean() <= alpha


def test_bootstrap_metrics_entropy_equals_word_stats_per_resample():
    rng = np.random.default_rng(13)
    n, k = 300, 25
    lab = rng.choice(4, size=n, p=[0.5, 0.3, 0.2, 0.0])  # group 3 absent: L = 3
    scores = rng.normal(size=(5, n))
    boot = S.bootstrap_counts(scores, {"a": lab}, {"a": 4}, k, n_boot=20, seed=2)["a"]
    got = S.bootstrap_metrics(boot)
    assert got["norm_entropy"].shape == (20, 5) and got["top_group"].dtype == np.int64
    for b in range(20):
        ref = M.word_stats(boot.counts[b], boot.base_share[b], k, present=boot.present)
        np.testing.assert_allclose(got["norm_entropy"][b], ref["norm_entropy"], rtol=1e-12)
        np.testing.assert_allclose(got["max_skew"][b], ref["max_skew"], rtol=1e-12)
        np.testing.assert_array_equal(got["top_group"][b], ref["top_group"])
    assert np.isnan(got["skew"][:, :, 3]).all()


def test_bootstrap_intervals_reuse_given_samples():
    rng = np.random.default_rng(5)
    scores = rng.random((6, 80))
    lab = rng.integers(0, 3, 80)
    boot = S.bootstrap_counts(scores, {"a": lab}, {"a": 3}, 10, n_boot=30, seed=2)["a"]
    top = rng.integers(0, 3, 6)
    plain = S.bootstrap_intervals(boot, top_group=top)
    given = S.bootstrap_intervals(boot, top_group=top, samples=S.bootstrap_metrics(boot))
    for key in plain:
        np.testing.assert_array_equal(plain[key], given[key])


def test_betabinom_sf_equals_scipy_bit_for_bit():
    from clipprobe.analysis.significance import betabinom_sf

    rng = np.random.default_rng(3)
    n = rng.integers(0, 60, size=400)
    x = rng.integers(-2, 64, size=400)                    # below, inside and above the support
    a = rng.uniform(0.05, 30, size=400)
    b = rng.uniform(0.05, 30, size=400)
    a[:5] = [0.0, -1.0, np.inf, np.nan, 1.0]              # invalid parameters go to scipy's own handling
    x[::7] = n[::7]                                       # the top of the support
    n[::11], a[::11], b[::11] = 20, 2.5, 4.0              # one distribution shared by many points
    want = scipy.stats.betabinom.sf(x, n, a, b)
    got = betabinom_sf(x, n, a, b)
    np.testing.assert_array_equal(got, want)              # exact, NaN where scipy gives NaN
    assert got.shape == want.shape
    grid = betabinom_sf(x.reshape(20, 20), n.reshape(20, 20), a.reshape(20, 20), b.reshape(20, 20))
    np.testing.assert_array_equal(grid, want.reshape(20, 20))
