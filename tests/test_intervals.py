"""The statistics of issue 10, each against an independent implementation: Wilson and skew intervals,
the Miller-Madow estimate, the MaxSkew/MinSkew permutation null, ties kept, NDKL over the full
ranking, dot-product scoring and the control-query test."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from benchmodule import bench
from scipy import stats

from clipprobe.analysis.extremes import extreme_skew_null
from clipprobe.analysis.intervals import level_z, miller_madow, share_interval, skew_interval, wilson_interval
from clipprobe.analysis.probe import control_null, p_vs_controls, probe_scores
from clipprobe.errors import UsageError


def _wilson(x, n, z=stats.norm.ppf(0.975)):
    p = x / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def test_wilson_matches_the_formula():
    counts = np.array([0, 1, 3, 17, 50, 99, 100])
    lo, hi = share_interval(counts, 100)
    for c, a, b in zip(counts, lo, hi):
        want = _wilson(int(c), 100)
        assert (a, b) == pytest.approx(want, abs=1e-12)


def test_the_two_wilson_intervals_agree_on_integer_counts():
    """wilson_interval (the formula, for effective non-integer n) and share_interval (statsmodels) are one
    interval: the same ends on integer counts, at several levels and sizes."""
    for k, level in ((7, 0.9), (100, 0.95), (1000, 0.99)):
        counts = np.unique(np.linspace(0, k, 25).round())
        lo, hi = wilson_interval(counts / k, k, level_z(level))
        want_lo, want_hi = share_interval(counts, k, level=level)
        np.testing.assert_allclose(lo, want_lo, rtol=0, atol=1e-12)
        np.testing.assert_allclose(hi, want_hi, rtol=0, atol=1e-12)
    assert level_z(0.95) == pytest.approx(1.959963984540054, abs=1e-12)
    lo, hi = wilson_interval(np.array([0.5, np.nan]), np.array([0.0, 10.0]), 1.96)
    assert np.isnan(lo).all() and np.isnan(hi).all()       # no examples, or no share: no interval
    with pytest.raises(UsageError, match="strictly between 0 and 1"):
        level_z(1.0)


def test_jeffreys_matches_beta_quantiles_with_end_rule():
    counts = np.array([0, 2, 40, 100])
    lo, hi = share_interval(counts, 100, method="jeffreys")
    want_lo = stats.beta.ppf(0.025, counts + 0.5, 100 - counts + 0.5)
    want_hi = stats.beta.ppf(0.975, counts + 0.5, 100 - counts + 0.5)
    want_lo[0], want_hi[-1] = 0.0, 1.0
    np.testing.assert_allclose(lo, want_lo, atol=1e-12)
    np.testing.assert_allclose(hi, want_hi, atol=1e-12)
    with pytest.raises(UsageError, match="unknown share interval 'agresti'"):
        share_interval(counts, 100, method="agresti")
    with pytest.raises(UsageError, match="level must be between 0 and 1"):
        share_interval(counts, 100, level=1.0)


def test_wilson_exact_binomial_coverage_at_fairface_shares():
    """The reason Wilson is the default: exact coverage >= 0.93 at every FairFace group share."""
    from clipprobe.faces import FAIRFACE_VALIDATION_COUNTS

    for counts in FAIRFACE_VALIDATION_COUNTS.values():
        total = sum(counts.values())
        for size in counts.values():
            p = size / total
            for n in (100, 1000):
                x = np.arange(n + 1)
                lo, hi = share_interval(x, n)
                coverage = stats.binom.pmf(x, n, p)[(lo <= p) & (p <= hi)].sum()
                assert 0.93 <= coverage <= 0.98, (p, n, coverage)


def test_skew_interval_is_the_logged_share_interval():
    lo, hi = skew_interval(np.array([0.0, 0.1]), np.array([0.05, 0.3]), np.array([0.1, 0.2]))
    assert lo[0] == -np.inf and hi[0] == pytest.approx(math.log(0.5))
    assert (lo[1], hi[1]) == pytest.approx((math.log(0.5), math.log(1.5)))
    lo, hi = skew_interval(np.array([0.1]), np.array([0.2]), np.array([0.0]))
    assert np.isnan(lo[0]) and np.isnan(hi[0])


def test_miller_madow_adds_m_minus_one_over_2k():
    counts = np.array([[50, 30, 20, 0], [100, 0, 0, 0]])
    present = np.array([True, True, True, True])
    p = counts / 100
    h = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=1)
    plug = h / math.log(4)
    got = miller_madow(plug, counts, present, 100)
    assert got[0] == pytest.approx((h[0] + 2 / 200) / math.log(4))
    assert got[1] == pytest.approx(0.0)


# --------------------------------------------------------------------------------------------- null


def _exact_max_skew_tail(sizes, k, observed):
    """P(MaxSkew >= observed) for k labels drawn without replacement: every composition enumerated."""
    n = sum(sizes)
    base = np.array(sizes) / n
    total = 0.0
    for counts in itertools.product(*(range(min(s, k) + 1) for s in sizes)):
        if sum(counts) != k:
            continue
        prob = stats.multivariate_hypergeom.pmf(x=counts, m=sizes, n=k)
        skew = np.log(np.maximum(counts, 1) / k / base)
        if skew.max() >= observed - 1e-12:
            total += prob
    return total


def test_permutation_null_matches_exact_enumeration():
    sizes, k = [30, 12, 8], 10
    base = np.array(sizes) / sum(sizes)
    null = extreme_skew_null(sizes, k, base, n_perm=20000, seed=1)
    for observed in (np.log(0.3 / base[0]), np.log(0.4 / base[1]), np.log(0.3 / base[2])):
        exact = _exact_max_skew_tail(sizes, k, observed)
        got = float(null.p_max(np.array([observed]))[0])
        assert got == pytest.approx(exact, abs=4 * math.sqrt(max(exact * (1 - exact), 0.0) / 20000) + 1e-4)


def test_null_equals_shuffling_labels_of_a_fixed_top_k():
    """The shortcut (a multivariate hypergeometric draw) against literally shuffling labels."""
    rng = np.random.default_rng(3)
    labels = rng.choice(3, size=400, p=[0.6, 0.3, 0.1])
    sizes = np.bincount(labels, minlength=3)
    base = sizes / sizes.sum()
    top = np.arange(40)       # any fixed top-k: a shuffle puts random labels there
    shuffled = [np.log(np.maximum(np.bincount(rng.permutation(labels)[top], minlength=3), 1) / 40 / base).max()
                for _ in range(4000)]
    null = extreme_skew_null(sizes, 40, base, n_perm=4000, seed=2)
    assert stats.ks_2samp(shuffled, null.max_skew).pvalue > 0.01
    assert np.mean(null.max_skew) == pytest.approx(np.mean(shuffled), abs=0.02)


def test_p_max_skew_is_valid_under_shuffled_labels():
    """Scores unrelated to the labels: P(p <= a) stays at or below a (up to Monte Carlo error)."""
    rng = np.random.default_rng(5)
    n, words = 1500, 300
    labels = pd.DataFrame({"race": rng.choice(["White", "Black", "Indian", "East Asian"], size=n,
                                              p=[0.4, 0.3, 0.2, 0.1])})
    tables = probe_scores(rng.normal(size=(words, n)), labels, words=[f"w{i}" for i in range(words)], k=50,
                          permutations=500, seed=1)
    p = tables.words["p_max_skew"].to_numpy()
    for a in (0.05, 0.1, 0.25):
        assert np.mean(p <= a) <= a + 3 * math.sqrt(a * (1 - a) / words)
    assert np.mean(p <= 0.5) > 0.35     # not trivially conservative
    assert tables.words["max_skew_excess"].mean() == pytest.approx(0.0, abs=0.03)


def test_planted_word_has_small_p_max_skew():
    rng = np.random.default_rng(6)
    n = 2000
    race = rng.choice(["White", "Black", "Indian"], size=n)
    scores = rng.normal(size=(2, n))
    scores[1] += 2.0 * (race == "Indian")
    tables = probe_scores(scores, pd.DataFrame({"race": race}), words=["none", "planted"], k=100, permutations=999)
    w = tables.words.set_index("word")
    assert w.loc["planted", "p_max_skew"] == pytest.approx(1 / 1000)
    assert w.loc["planted", "max_skew_excess"] > 0.5 and w.loc["planted", "top_group"] == "Indian"


# ----------------------------------------------------------------------------------- conventions


def test_keep_all_ties_equal_pandas_nlargest_keep_all():
    """oxai/debias-vision-lang counts every image tied at the cutoff (pandas nlargest keep="all")."""
    rng = np.random.default_rng(7)
    n, k = 300, 20
    scores = np.round(rng.normal(size=(5, n)), 1)        # rounding makes many ties
    race = rng.choice(["White", "Black", "Indian"], size=n)
    tables = probe_scores(scores, pd.DataFrame({"race": race}), words=[f"w{i}" for i in range(5)], k=k,
                          ties="keep-all", permutations=10)
    for w in range(5):
        df = pd.DataFrame({"score": scores[w], "label": race})
        kept = df.nlargest(k, columns="score", keep="all")
        rows = tables.groups[tables.groups["word"] == f"w{w}"].set_index("group")
        for group in ("White", "Black", "Indian"):
            count = int((kept["label"] == group).sum())
            assert rows.loc[group, "count"] == count
            assert rows.loc[group, "share"] == pytest.approx(count / k)
        assert tables.words.loc[tables.words["word"] == f"w{w}", "n_retrieved"].iloc[0] == len(kept)
    with pytest.raises(UsageError, match="unknown tie rule 'random'"):
        probe_scores(scores, pd.DataFrame({"race": race}), words=[f"w{i}" for i in range(5)], k=k, ties="random")


def _ndkl_loop(ranked_labels, base):
    """Geyik et al.'s NDKL over a whole ranked list, a plain loop (KL in nats)."""
    z = sum(1 / math.log2(i + 1) for i in range(1, len(ranked_labels) + 1))
    total = 0.0
    for i in range(1, len(ranked_labels) + 1):
        prefix = ranked_labels[:i]
        kl = sum((prefix.count(g) / i) * math.log((prefix.count(g) / i) / b) for g, b in base.items()
                 if prefix.count(g))
        total += kl / math.log2(i + 1)
    return total / z


def test_ndkl_full_and_at_k_against_a_loop():
    rng = np.random.default_rng(8)
    n, k = 60, 10
    race = rng.choice(["White", "Black", "Indian"], size=n)
    scores = rng.normal(size=(3, n))
    tables = probe_scores(scores, pd.DataFrame({"race": race}), words=["a", "b", "c"], k=k, permutations=10)
    base = {g: float(np.mean(race == g)) for g in ("White", "Black", "Indian")}
    for w, word in enumerate("abc"):
        ranked = [race[i] for i in np.argsort(-scores[w], kind="stable")]
        row = tables.words[tables.words["word"] == word].iloc[0]
        assert row["ndkl_full"] == pytest.approx(_ndkl_loop(ranked, base), rel=1e-10)
        assert row["ndkl_at_k"] == pytest.approx(_ndkl_loop(ranked[:k], base), rel=1e-10)


def test_published_vector_maxskew_and_ndkl_full():
    """Geyik et al.'s example as a 10-image dataset ranked 1..10: MaxSkew@4 = 0.405465 and NDKL over
    the whole ranking = 0.359497 (the values the common implementations reproduce)."""
    labels = np.array(["a", "a", "a", "b", "a", "b", "b", "b", "a", "b"])
    scores = -np.arange(10, dtype=float)
    at4 = probe_scores(scores[None, :], pd.DataFrame({"gender": labels}), words=["x"], k=4, permutations=10)
    assert at4.words["max_skew"].iloc[0] == pytest.approx(0.405465, abs=1e-6)
    full = probe_scores(scores[None, :], pd.DataFrame({"gender": labels}), words=["x"], k=10, permutations=10)
    assert full.words["ndkl_full"].iloc[0] == pytest.approx(0.359497, abs=1e-6)
    assert at4.words["ndkl_full"].iloc[0] == pytest.approx(0.359497, abs=1e-6)


def test_min_skew_is_not_clipped():
    labels = np.array(["a"] * 50 + ["b"] * 50)
    scores = np.r_[np.ones(50), np.zeros(50)][None, :]   # the top 10 are all "a"
    t = probe_scores(scores, pd.DataFrame({"gender": labels}), words=["x"], k=10, permutations=10)
    assert t.words["min_skew"].iloc[0] == pytest.approx(math.log(0.1 / 0.5))   # 1/k rule, below 0


# ------------------------------------------------------------------------------------- controls


def test_control_null_moments_and_tail_against_scipy():
    rng = np.random.default_rng(9)
    k = 100
    counts = rng.binomial(k, rng.beta(4, 16, size=(400, 1)), size=(400, 1))
    counts = np.hstack([counts, k - counts])
    mean, a, b = control_null(counts, k)
    assert mean[0] == pytest.approx(counts[:, 0].mean() / k)
    # the fitted beta-binomial has the controls' mean and variance
    fitted = stats.betabinom(k, a[0], b[0])
    assert fitted.mean() == pytest.approx(counts[:, 0].mean(), rel=1e-9)
    assert fitted.var() == pytest.approx(counts[:, 0].var(ddof=1), rel=1e-9)
    p = p_vs_controls(np.array([[40, 60]]), k, mean[None, :], a[None, :], b[None, :])
    assert p[0, 0] == pytest.approx(stats.betabinom.sf(39, k, a[0], b[0]))


def test_controls_without_overdispersion_fall_back_to_binomial():
    counts = np.array([[10, 90]] * 5)        # no variance at all
    mean, a, b = control_null(counts, 100)
    assert np.all(np.isinf(a))
    p = p_vs_controls(np.array([[15, 85]]), 100, mean[None, :], a[None, :], b[None, :])
    assert p[0, 0] == pytest.approx(stats.binom.sf(14, 100, 0.1))


def test_control_queries_flag_at_about_the_nominal_rate():
    """Queries and controls drawn from one distribution of neighbourhoods (each query prefers a random
    direction of the image space): p_vs_controls is calibrated, the hypergeometric test is not."""
    rng = np.random.default_rng(10)
    n, dim = 3000, 16
    emb = rng.normal(size=(n, dim))
    race = np.where(emb[:, 0] + 0.5 * rng.normal(size=n) > 0, "White", "Black")   # appearance carries race
    def queries(m):
        q = rng.normal(size=(m, dim))
        return q @ emb.T
    words, controls = queries(400), queries(300)
    t = probe_scores(words, pd.DataFrame({"race": race}), words=[f"w{i}" for i in range(400)], k=60,
                     controls=controls, permutations=10)
    g = t.groups
    assert g["p_over"].le(0.05).mean() > 0.3                    # neighbourhoods are not random samples
    assert g["p_vs_controls"].le(0.05).mean() == pytest.approx(0.05, abs=0.03)
    assert g["flagged_vs_controls"].mean() < 0.02


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_coverage_harness_small(tmp_path):
    """A small run of benchmarks/bench_coverage.py: the published intervals cover their population value."""
    harness = bench("bench_coverage")
    results = harness.run_grid(n_datasets=50, n_boot=0, seed=0, grid_n=(2000,), grid_k=(100,), permutations=200)
    table = harness.summarise(results)
    assert set(table["statistic"]) == {"share", "skew"}
    assert (table["published"] == 1.0).all()
    # 50 datasets per cell (Monte Carlo SE ~0.03): a regression to the percentile bootstrap (0.6-0.7 for
    # rare groups) or to no base-share correction would fall far below this; the full grid is a slow test.
    assert table["coverage"].between(0.88, 1.0).all(), table.to_string()
    nulls = harness.null_uniformity(results)
    assert (nulls["below_005"] <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 50)).all()


def test_ratio_score_interval_equals_statsmodels_and_survives_its_boundary():
    import warnings

    from statsmodels.stats.proportion import confint_proportions_2indep

    from clipprobe.analysis.intervals import ratio_score_interval

    rng = np.random.default_rng(12)
    n2 = rng.choice([12, 60, 100, 1000], size=300)
    n1 = rng.integers(50, 11000, size=300)
    x2 = rng.integers(1, n2)
    x1 = rng.integers(1, n1)
    lo, hi = ratio_score_interval(x1, n1, x2, n2)
    for i in range(300):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = confint_proportions_2indep(int(x1[i]), int(n1[i]), int(x2[i]), int(n2[i]), method="score",
                                              compare="ratio")
        assert (lo[i], hi[i]) == pytest.approx(tuple(float(v) for v in want), rel=1e-6)
    # statsmodels' cubic has complex roots when x2 == n2 (it returns a zero-width interval); ours does not
    lo, hi = ratio_score_interval(100, 1900, 100, 100)
    assert lo < 100 / 1900 < hi and hi / lo > 1.3
    lo, hi = ratio_score_interval(np.array([0, 5]), 1900, np.array([100, 0]), 100)
    assert lo[0] == 0.0 and np.isinf(hi[1]) and hi[0] > 0 and lo[1] > 0


def _ratio_interval_by_200_halvings(x1, n1, x2, n2, level=0.95):
    """The score interval for p1 / p2 by 200 plain halvings of [-60, 60] around the estimate (no early exit)."""
    from scipy.stats import norm

    x1, n1, x2, n2 = (np.asarray(v, dtype=np.float64) for v in np.broadcast_arrays(x1, n1, x2, n2))
    n = n1 + n2
    crit = norm.isf((1.0 - level) / 2.0) ** 2 * n / (n - 1.0)
    p1, p2 = x1 / n1, x2 / n2

    def excess(log_theta):
        theta = np.exp(log_theta)
        a, b, c = theta * n, -(theta * (n1 + x2) + x1 + n2), x1 + x2
        q2 = (-b - np.sqrt(np.maximum(b * b - 4.0 * a * c, 0.0))) / (2.0 * a)
        q1 = theta * q2
        var = q1 * (1.0 - q1) / n1 + theta * theta * q2 * (1.0 - q2) / n2
        with np.errstate(divide="ignore", invalid="ignore"):
            stat = (p1 - theta * p2) ** 2 / var
        return np.where(var > 0, stat, np.where((p1 - theta * p2) == 0, 0.0, np.inf)) - crit

    with np.errstate(divide="ignore", invalid="ignore"):
        centre = np.log(np.where((x1 > 0) & (x2 > 0), p1 / p2, 1.0))
    ends = []
    for lo, hi, upper in ((np.full_like(centre, -60.0), np.where(x2 == 0, 60.0, centre), False),
                          (np.where(x1 == 0, -60.0, centre), np.full_like(centre, 60.0), True)):
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            inside = excess(mid) <= 0
            lo, hi = (np.where(inside, mid, lo), np.where(inside, hi, mid)) if upper else \
                (np.where(inside, lo, mid), np.where(inside, mid, hi))
        ends.append(np.exp(0.5 * (lo + hi)))
    return np.where(x1 == 0, 0.0, ends[0]), np.where(x2 == 0, np.inf, ends[1])


def test_ratio_score_interval_stops_early_with_the_bits_of_200_halvings():
    """The bisection drops an element once a halving leaves it where it was: the same bits as running all
    200 halvings, for every shape of input (the report's cells, a 2-d table, one number)."""
    from clipprobe.analysis.intervals import ratio_score_interval

    rng = np.random.default_rng(5)
    n2 = rng.choice([1, 12, 100, 1000], size=(40, 7))
    n1 = rng.integers(2, 11000, size=(40, 7))
    x2 = rng.integers(0, n2 + 1)
    x1 = rng.integers(0, n1 + 1)
    x1[0, :3], x2[0, :3] = 0, 0               # both zero, and the ends of the support
    x1[1, 0], x2[1, 0] = n1[1, 0], n2[1, 0]
    got = ratio_score_interval(x1, n1, x2, n2)
    want = _ratio_interval_by_200_halvings(x1, n1, x2, n2)
    for g, w in zip(got, want):
        assert g.shape == w.shape == (40, 7)
        np.testing.assert_array_equal(g, w)
    one = ratio_score_interval(7, 900, 30, 100, level=0.9)
    assert [np.shape(v) for v in one] == [(), ()]
    np.testing.assert_array_equal(one, _ratio_interval_by_200_halvings(7, 900, 30, 100, level=0.9))


def test_share_interval_withheld_where_the_top_k_is_most_of_the_images():
    """Wilson's interval was measured to cover up to k = N/2; beyond that the columns are empty (NaN) and the
    skew interval against the base shares is still published."""
    import numpy as np
    import pandas as pd

    from clipprobe import probe_scores

    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"gender": rng.choice(["Male", "Female"], size=150)})
    scores = rng.standard_normal((3, 150))
    half = probe_scores(scores, labels, words=["a", "b", "c"], k=75, bootstrap=0, permutations=50).groups
    most = probe_scores(scores, labels, words=["a", "b", "c"], k=100, bootstrap=0, permutations=50).groups
    assert half["share_ci_low"].notna().all() and half["share_ci_high"].notna().all()
    assert most["share_ci_low"].isna().all() and most["share_ci_high"].isna().all()
    assert np.isfinite(most["skew_ci_high"]).all()
