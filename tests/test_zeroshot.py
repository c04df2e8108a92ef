"""Zero-shot attribute classification on arrays: scores against a float64 oracle, probabilities against
scipy, labels by their rules, accuracy and confusion against pandas and statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipprobe.analysis import zeroshot as zs
from clipprobe.errors import DataError, UsageError


def _unit(rng, c, d):
    t = rng.standard_normal((c, d))
    return (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_scores_match_a_float64_oracle(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((701, 37)) * 3).astype(dtype)
    t = _unit(rng, 3, 37)
    got = zs.class_scores(x, t)
    xf = x.astype(np.float64)
    want = xf @ t.astype(np.float64).T / np.linalg.norm(xf, axis=1, keepdims=True)
    assert got.valid.all()
    np.testing.assert_allclose(got.cos, want, atol=2e-6)


def test_scores_identical_for_any_block_size_and_thread_count():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 64)).astype(np.float16)
    t = _unit(rng, 4, 64)
    a = zs.class_scores(x, t, threads=1, block_rows=65_536)
    b = zs.class_scores(x, t, threads=2, block_rows=129)
    c = zs.class_scores(x[::-1].copy(), t, threads=2, block_rows=77)
    assert np.array_equal(a.cos, b.cos) and np.array_equal(a.cos, c.cos[::-1])
    # each row summed in index order, in float32: the same as a sequential float32 loop
    xs = x[:50].astype(np.float32)
    seq = np.zeros((50, 4), np.float32)
    nrm = np.zeros(50, np.float32)
    for j in range(64):
        seq += xs[:, j:j + 1] * t[:, j][None, :]
        nrm += xs[:, j] * xs[:, j]
    assert np.array_equal(a.cos[:50], seq / np.sqrt(nrm)[:, None])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("shape, c", [((203, 37), 3), ((64, 16), 2), ((7, 8), 3), ((130, 520), 7), ((45, 24), 9)])
def test_kernels_sum_like_a_sequential_loop(dtype, shape, c):
    """The register kernel (runs of eight rows, 2..7 classes), the 8 x 8 register transposition of the
    tiles (the other rows, other class counts), with rows and dimensions not multiples of 8, only
    reorder the work: the dot products and norms are a sequential float32 loop's, bit for bit."""
    from clipprobe.analysis import _zskernel

    rng = np.random.default_rng(shape[0])
    n, d = shape
    x = (rng.standard_normal((n, d)) * 2).astype(dtype)
    t = _unit(rng, c, d)
    dots, norms = np.empty((n, c), np.float32), np.empty(n, np.float32)
    _zskernel.scores(x, t, dots, norms, threads=2)
    xs = x.astype(np.float32)
    seq, nrm = np.zeros((n, c), np.float32), np.zeros(n, np.float32)
    for j in range(d):
        seq += xs[:, j:j + 1] * t[:, j][None, :]
        nrm += xs[:, j] * xs[:, j]
    assert dots.tobytes() == seq.tobytes() and norms.tobytes() == nrm.tobytes()


@pytest.mark.parametrize("c", [2, 3, 5, 7, 9])
def test_fused_classify_is_the_three_functions_bit_for_bit(c):
    """classify's fused blocks give the bits of class_scores, probabilities and hard_labels run apart:
    invalid rows, tied classes, a probability exactly at the threshold (compared in float32, as numpy does)."""
    rng = np.random.default_rng(c)
    x = rng.standard_normal((3001, 24)).astype(np.float16)
    x[3] = 0
    x[8, 2] = np.nan
    x[11, 0] = np.inf
    x[::53] *= 0.001
    t = _unit(rng, c, 24)
    t[-1] = t[0]                # a "no group" class tied with the first group
    scores = zs.class_scores(x, t)
    for scale, threshold in ((100.0, 0.0), (3.7, 0.7), (1.0, float(np.sort(zs.probabilities(scores.cos, 1.0).max(axis=1))[1500]))):
        probs = zs.probabilities(scores.cos, scale)
        codes = zs.hard_labels(scores.cos, probs, n_groups=c - 1, threshold=threshold)
        got = zs.classify(x, t, n_groups=c - 1, scale=scale, threshold=threshold, threads=2)
        assert got.cos.tobytes() == scores.cos.tobytes()
        assert got.probs.tobytes() == probs.tobytes()
        assert got.codes.tobytes() == codes.tobytes()
        assert (codes == zs.INVALID).sum() == 3 and (threshold > 0 or not (codes == zs.UNSURE).any())


def test_nan_inf_and_zero_rows_are_invalid():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 8)).astype(np.float16)
    x[1, 3] = np.nan
    x[2] = 0
    x[4, 0] = np.inf
    s = zs.class_scores(x, _unit(rng, 2, 8))
    assert s.valid.tolist() == [True, False, False, True, False, True]
    assert np.isnan(s.cos[~s.valid]).all() and np.isfinite(s.cos[s.valid]).all()
    p = zs.probabilities(s.cos, 100.0)
    codes = zs.hard_labels(s.cos, p, n_groups=2)
    assert (codes[~s.valid] == zs.INVALID).all() and (codes[s.valid] >= 0).all()


def test_probabilities_are_scipy_softmax():
    from scipy.special import softmax

    rng = np.random.default_rng(3)
    cos = rng.uniform(-0.3, 0.4, size=(200, 5))
    p = zs.probabilities(cos, 57.3)
    assert p.dtype == np.float32
    np.testing.assert_allclose(p, softmax(57.3 * cos, axis=1), rtol=1e-6, atol=1e-7)
    for bad in (0, -1, float("nan"), "x"):
        with pytest.raises(UsageError):
            zs.probabilities(cos, bad)


def test_hard_labels_rules():
    cos = np.array([[0.30, 0.20, 0.10],     # group 0
                    [0.20, 0.30, 0.10],     # group 1
                    [0.20, 0.10, 0.30],     # the "no group" class wins
                    [0.25, 0.25, 0.10],     # tie: the lower index
                    [0.201, 0.200, 0.10]])  # group 0 by a hair: unsure at a threshold
    p = zs.probabilities(cos, 100.0)
    assert zs.hard_labels(cos, p, n_groups=2).tolist() == [0, 1, zs.NONE, 0, 0]
    assert zs.hard_labels(cos, p, n_groups=2, threshold=0.6).tolist() == [0, 1, zs.NONE, zs.UNSURE, zs.UNSURE]
    assert zs.hard_labels(cos, p, n_groups=3).tolist() == [0, 1, 2, 0, 0]
    for bad in (1.0, -0.1):
        with pytest.raises(UsageError):
            zs.hard_labels(cos, p, n_groups=2, threshold=bad)
    with pytest.raises(UsageError):
        zs.hard_labels(cos, p, n_groups=4)


def test_classify_and_counts():
    rng = np.random.default_rng(4)
    t = _unit(rng, 3, 16)
    x = (t[rng.integers(0, 3, 300)] + 0.3 * rng.standard_normal((300, 16))).astype(np.float16)
    res = zs.classify(x, t, n_groups=2, scale=100.0, threshold=0.9)
    counts = res.counts(["a", "b"])
    assert sum(counts.values()) == 300
    assert counts["a"] == int((res.codes == 0).sum()) and counts["none"] == int((res.codes == zs.NONE).sum())
    shares = res.soft_shares(2)
    want = res.probs[:, :2].astype(np.float64).sum(axis=0)
    np.testing.assert_allclose(shares, want / want.sum())


def test_class_vectors_ensemble():
    rng = np.random.default_rng(5)
    a = rng.standard_normal((3, 10)) * np.array([[1.0], [5.0], [0.2]])
    b = rng.standard_normal((1, 10))
    got = zs.class_vectors([a, b])
    unit = a / np.linalg.norm(a, axis=1, keepdims=True)
    want = unit.mean(axis=0) / np.linalg.norm(unit.mean(axis=0))
    np.testing.assert_allclose(got[0], want, rtol=1e-6)
    np.testing.assert_allclose(got[1], b[0] / np.linalg.norm(b[0]), rtol=1e-6)
    with pytest.raises(DataError):
        zs.class_vectors([a, np.zeros((0, 10))], ["a", "b"])


def test_input_checks():
    t = np.eye(2, 4, dtype=np.float32)
    with pytest.raises(DataError, match="dimension 3"):
        zs.class_scores(np.zeros((2, 3), np.float32), t)
    with pytest.raises(DataError, match="float16 or float32"):
        zs.class_scores(np.zeros((2, 4), np.float64), t)
    with pytest.raises(DataError, match="2-d"):
        zs.class_scores(np.zeros(4, np.float32), t)
    with pytest.raises(UsageError):
        zs.class_scores(np.zeros((2, 4), np.float32), t[:1])


def test_accuracy_and_confusion_against_pandas_and_statsmodels():
    from statsmodels.stats.proportion import proportion_confint

    rng = np.random.default_rng(6)
    n = 997
    truth = rng.choice(["F", "M", "other"], size=n, p=[0.45, 0.45, 0.10])
    codes = rng.choice([0, 1, zs.NONE, zs.UNSURE, zs.INVALID], size=n, p=[0.4, 0.4, 0.1, 0.07, 0.03])
    # a biased classifier: right more often for F than for M
    codes = np.where((truth == "F") & (rng.random(n) < 0.6), 0, codes)
    codes = np.where((truth == "M") & (rng.random(n) < 0.3), 1, codes)
    acc = zs.classifier_accuracy(truth, codes, groups=["F", "M"], level=0.9)
    pred = pd.Series(codes).map({0: "F", 1: "M", zs.NONE: "none", zs.UNSURE: "unsure", zs.INVALID: "invalid"})
    inside = truth != "other"
    ct = pd.crosstab(pd.Series(truth[inside], name="true"), pd.Series(pred[inside].to_numpy(), name="pred"))
    ct = ct.reindex(index=["F", "M"], columns=["F", "M", "none", "unsure", "invalid"], fill_value=0)
    assert np.array_equal(acc.confusion.to_numpy(), ct.to_numpy())
    assert acc.other_labels == int((~inside).sum()) and acc.n == int(inside.sum())
    g = acc.by_group.set_index("group")
    for k, name in enumerate(["F", "M"]):
        rows = truth == name
        correct = int((codes[rows] == k).sum())
        assert g.loc[name, "correct"] == correct and g.loc[name, "n"] == rows.sum()
        lo, hi = proportion_confint(correct, rows.sum(), alpha=0.1, method="wilson")
        assert g.loc[name, "accuracy_ci_low"] == pytest.approx(lo, abs=1e-12)
        assert g.loc[name, "accuracy_ci_high"] == pytest.approx(hi, abs=1e-12)
        labelled = codes == k
        assert g.loc[name, "precision"] == pytest.approx(((truth == name) & labelled).sum() / labelled[inside].sum())
        assert g.loc[name, "none_rate"] == pytest.approx((codes[rows] == zs.NONE).mean())
        assert g.loc[name, "true_share"] == pytest.approx(rows.sum() / inside.sum())
    assert acc.accuracy == pytest.approx(sum(int((codes[truth == nm] == k).sum()) for k, nm in enumerate("FM"))
                                         / inside.sum())
    assert acc.accuracy_gap == pytest.approx(g["accuracy"].max() - g["accuracy"].min())
    assert acc.accuracy_gap > 0.1                    # the planted bias shows
    summary = acc.summary()
    assert summary["confusion"]["F"]["none"] == int(ct.loc["F", "none"])


def _calibration_by_loops(p, truth, groups, n_bins=10):
    """Mean probability, expected calibration error and Brier score per group, image by image."""
    out = {}
    for k, g in enumerate(groups):
        bins = {}
        total, sq = 0.0, 0.0
        for i in range(len(truth)):
            pk = float(p[i, k])
            hit = 1.0 if truth[i] == g else 0.0
            total += pk
            sq += (pk - hit) ** 2
            j = min(int(pk * n_bins), n_bins - 1)
            bins.setdefault(j, []).append((pk, hit))
        ece = sum(len(v) * abs(sum(h for _, h in v) / len(v) - sum(q for q, _ in v) / len(v))
                  for v in bins.values()) / len(truth)
        out[g] = (total / len(truth), ece, sq / len(truth), {j: len(v) for j, v in bins.items()})
    return out


def test_soft_probabilities_measured_against_a_loop():
    rng = np.random.default_rng(9)
    n = 1500
    truth = rng.choice(["F", "M", "other"], size=n, p=[0.5, 0.4, 0.1])
    logits = rng.normal(size=(n, 3)) + 2.0 * np.stack([truth == "F", truth == "M", np.zeros(n, bool)], axis=1)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)        # F, M, "no person"
    probs[0, :] = 1.0 / 3.0                                                   # exactly on a bin edge
    codes = np.argmax(probs, axis=1)
    codes = np.where(codes == 2, zs.NONE, codes)
    acc = zs.classifier_accuracy(truth, codes, groups=["F", "M"], probs=probs)
    inside = truth != "other"
    want = _calibration_by_loops(probs[inside], truth[inside], ["F", "M"])
    g = acc.by_group.set_index("group")
    for name in ("F", "M"):
        share, ece, brier, sizes = want[name]
        assert g.loc[name, "soft_share"] == pytest.approx(share, rel=1e-12)
        assert g.loc[name, "soft_share_error"] == pytest.approx(share - g.loc[name, "true_share"], rel=1e-12)
        assert g.loc[name, "calibration_error"] == pytest.approx(ece, rel=1e-12)
        assert g.loc[name, "brier"] == pytest.approx(brier, rel=1e-12)
        rel = acc.reliability[acc.reliability["group"] == name]
        assert dict(zip(rel["bin"], rel["n"])) == sizes
    assert acc.calibration_error_max == pytest.approx(max(want[k][1] for k in "FM"))
    summary = acc.summary()
    assert summary["soft"]["calibration_error_max"] == acc.calibration_error_max
    assert len(summary["soft"]["reliability"]) == len(acc.reliability)
    # without probabilities: no soft columns, no soft summary
    plain = zs.classifier_accuracy(truth, codes, groups=["F", "M"])
    assert "soft_share" not in plain.by_group and "soft" not in plain.summary()


def test_calibration_error_tells_calibrated_from_overconfident_probabilities():
    """Truth drawn with the stated probabilities: calibration error near 0 and mean probability near the
    true share; the same truth with overconfident probabilities (p ** 0.3 for one group): large errors."""
    rng = np.random.default_rng(10)
    n = 20_000
    u = rng.beta(0.7, 0.7, size=n)
    truth = np.where(rng.random(n) < u, "F", "M")
    calibrated = np.stack([u, 1 - u], axis=1)
    codes = (u < 0.5).astype(np.int64)
    good = zs.classifier_accuracy(truth, codes, groups=["F", "M"], probs=calibrated)
    assert good.calibration_error_max < 0.03 and good.soft_share_error_max < 0.02
    over = np.stack([u ** 0.3, 1 - u ** 0.3], axis=1)
    bad = zs.classifier_accuracy(truth, codes, groups=["F", "M"], probs=over)
    assert bad.calibration_error_max > 0.1 and bad.soft_share_error_max > 0.1


def _planted_cosines(rng, n, scale, n_classes=3):
    """Cosines of n images with n_classes classes and true classes drawn from softmax(scale * cos)."""
    cos = rng.uniform(-0.05, 0.35, size=(n, n_classes))
    z = scale * cos
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    true = (rng.random(n)[:, None] > np.cumsum(p, axis=1)).sum(axis=1)
    return cos, np.minimum(true, n_classes - 1)


def test_fit_scale_recovers_a_planted_scale_and_minimises_the_likelihood_it_defines():
    rng = np.random.default_rng(11)
    cos, true = _planted_cosines(rng, 20_000, scale=37.0)
    true[:50] = -1                                          # images of no class: left out
    cos[50:60] = np.nan                                     # invalid rows: left out
    fitted = zs.fit_scale(cos, true)
    assert 33.0 < fitted < 41.0
    ok = (true >= 0) & np.isfinite(cos).all(axis=1)

    def nll(s):                                             # row by row, with scipy's log-sum-exp
        from scipy.special import logsumexp

        return np.mean([logsumexp(s * cos[i]) - s * cos[i, true[i]] for i in np.flatnonzero(ok)[::4]])

    # the fitted scale minimises the likelihood of the rows it was fitted on (checked on a quarter of them,
    # refitted on that quarter alone)
    quarter = np.zeros(len(true), bool)
    quarter[np.flatnonzero(ok)[::4]] = True
    on_quarter = zs.fit_scale(cos[quarter], true[quarter])
    at = nll(on_quarter)
    assert at <= nll(on_quarter * 1.01) and at <= nll(on_quarter / 1.01)
    assert zs.fit_scale(cos, true) == fitted                # a pure function of its inputs
    with pytest.raises(DataError, match="fit_scale"):
        zs.fit_scale(cos[:40], -np.ones(40, np.int64))


def test_cross_fitted_probabilities_use_a_scale_fitted_without_their_part():
    rng = np.random.default_rng(12)
    cos, true = _planted_cosines(rng, 3000, scale=20.0, n_classes=2)
    probs, scales = zs.cross_fit_probabilities(cos, true, folds=2, seed=4)
    assert len(scales) == 2 and scales[0] != scales[1]
    part = np.random.default_rng([4, 0x5CA1E]).permutation(len(true)) % 2
    for f in range(2):
        assert scales[f] == zs.fit_scale(cos[part != f], true[part != f])
        np.testing.assert_array_equal(probs[part == f], zs.probabilities(cos[part == f], scales[f]))


def test_a_fitted_scale_repairs_an_overconfident_classifier_held_out():
    """Probabilities at 10x the scale the truth was drawn with are overconfident; a scale fitted on one half
    and measured on the other brings the calibration error down to sampling noise."""
    rng = np.random.default_rng(13)
    cos, true = _planted_cosines(rng, 20_000, scale=10.0, n_classes=2)
    names = np.array(["F", "M"])[true]
    codes = np.argmax(cos, axis=1)
    over = zs.classifier_accuracy(names, codes, groups=["F", "M"], probs=zs.probabilities(cos, 100.0))
    held, _ = zs.cross_fit_probabilities(cos, true)
    fitted = zs.classifier_accuracy(names, codes, groups=["F", "M"], probs=held)
    assert over.calibration_error_max > 0.1
    assert fitted.calibration_error_max < 0.03


def test_soft_probabilities_of_the_wrong_shape_are_refused():
    with pytest.raises(DataError, match="probs"):
        zs.classifier_accuracy(["F", "M"], [0, 1], groups=["F", "M"], probs=np.ones((3, 2)))


def test_accuracy_errors():
    with pytest.raises(DataError) as err:
        zs.classifier_accuracy(["x", "y"], [0, 1], groups=["F", "M"])
    assert str(err.value) == zs.MSG_NO_GROUP_IMAGES.format(groups="'F', 'M'", found="'x', 'y'")
    with pytest.raises(DataError):
        zs.classifier_accuracy(["F"], [0, 1], groups=["F", "M"])
    with pytest.raises(UsageError):
        zs.classifier_accuracy(["F"], [0], groups=["F", "M"], level=1.0)


def test_label_probabilities_are_a_yes_no_softmax_per_concept():
    """Each concept against its own negation, checked by a float64 brute force; NaN rows stay NaN."""
    rng = np.random.default_rng(4)
    dim, r = 16, 5
    concepts = zs.class_vectors([rng.normal(size=(3, dim)) for _ in range(r)])
    negations = zs.class_vectors([rng.normal(size=(2, dim)) for _ in range(r)])
    x = rng.normal(size=(40, dim)).astype(np.float32)
    x[7] = np.nan
    x[9] = 0
    got = zs.label_probabilities(x, concepts, negations, 100.0, block_rows=16)
    with np.errstate(invalid="ignore"):
        xs = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    yes, no = 100.0 * xs @ concepts.T.astype(np.float64), 100.0 * xs @ negations.T.astype(np.float64)
    want = np.exp(yes) / (np.exp(yes) + np.exp(no))
    assert got.shape == (40, r) and got.dtype == np.float32
    ok = np.ones(40, bool)
    ok[[7, 9]] = False
    np.testing.assert_allclose(got[ok], want[ok], atol=2e-5)
    assert np.isnan(got[~ok]).all()
    # multi-label: the rows need not sum to 1; a concept's probability depends on its own pair only
    assert np.abs(got[ok].sum(1) - 1).max() > 0.1
    swapped = zs.label_probabilities(x, concepts[::-1], negations[::-1], 100.0)
    np.testing.assert_array_equal(swapped, got[:, ::-1])
    np.testing.assert_allclose(zs.label_probabilities(x, negations, concepts, 100.0)[ok], 1 - got[ok], atol=1e-6)
    with pytest.raises(UsageError, match=r"negation_vectors: expected one \(dim,\) vector per concept"):
        zs.label_probabilities(x, concepts, negations[:3], 100.0)


@pytest.mark.parametrize("scale", [100.0, 1.0, 4600.0])
def test_pair_probabilities_are_the_softmax_of_each_pair_bit_for_bit(scale):
    """One exp per pair, the same float32 bits as probabilities() over the stacked pairs: ties, near-ties
    one float32 step apart, NaN on either side or both, cosines of +-1 and a scale that underflows exp."""
    rng = np.random.default_rng(11)
    yes = rng.uniform(-1, 1, (3000, 6)).astype(np.float32)
    no = rng.uniform(-1, 1, (3000, 6)).astype(np.float32)
    no[:, 0] = yes[:, 0]
    no[:500, 1] = np.nextafter(yes[:500, 1], np.float32(2))
    no[500:1000, 1] = np.nextafter(yes[500:1000, 1], np.float32(-2))
    yes[:, 2], no[:, 2] = 1.0, -1.0
    yes[3, 3] = np.nan
    no[4, 4] = np.nan
    yes[5, 5] = no[5, 5] = np.nan
    want = zs.probabilities(np.stack([yes, no], axis=2).reshape(-1, 2), scale)[:, 0].reshape(yes.shape)
    got = zs.pair_probabilities(yes, no, scale)
    assert got.dtype == np.float32 and got.shape == yes.shape
    np.testing.assert_array_equal(got, want)            # NaN where NaN, every other value the same bits
    assert np.isnan(got[[3, 4, 5], [3, 4, 5]]).all() and (got[:, 0] == 0.5).all()
    with pytest.raises(UsageError, match="scale"):
        zs.pair_probabilities(yes, no, 0.0)


def _binned_error_by_loop(p, hit, n_bins=10):
    """The calibration error of outcomes ``hit`` under probabilities ``p``, image by image."""
    truth = np.where(np.asarray(hit) > 0, "G", "other")
    return _calibration_by_loops(np.asarray(p, float).reshape(-1, 1), truth, ["G"], n_bins)["G"][1]


def test_calibration_test_against_exact_enumeration():
    """Ten images: every one of the 2^10 outcome vectors weighted by its probability under calibration gives
    the exact null distribution of the calibration error; the resampled p-value and chance quantile match
    it within Monte Carlo error."""
    import itertools

    p = np.array([0.03, 0.12, 0.18, 0.35, 0.41, 0.47, 0.66, 0.74, 0.88, 0.97])
    hit = np.array([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], float)
    observed = _binned_error_by_loop(p, hit)
    errors, weights = [], []
    for outcome in itertools.product([0, 1], repeat=len(p)):
        o = np.array(outcome, float)
        errors.append(_binned_error_by_loop(p, o))
        weights.append(float(np.prod(np.where(o > 0, p, 1 - p))))
    errors, weights = np.array(errors), np.array(weights)
    assert weights.sum() == pytest.approx(1.0)
    exact_p = weights[errors >= observed - 1e-12].sum()
    resamples = 20_000
    chance, p_value = zs.calibration_test(p, hit, resamples=resamples)
    se = np.sqrt(exact_p * (1 - exact_p) / resamples)
    assert 0.05 < exact_p < 0.95                                   # a p-value in the middle, not at an end
    assert abs(p_value - exact_p) < 5 * se + 1 / resamples
    order = np.argsort(errors)
    cdf = np.cumsum(weights[order])
    low = errors[order][np.searchsorted(cdf, 0.94)]
    high = errors[order][np.searchsorted(cdf, 0.96)]
    assert low - 1e-12 <= chance <= high + 1e-12
    # the same inputs, the same numbers
    assert zs.calibration_test(p, hit, resamples=resamples) == (chance, p_value)


def test_calibration_p_value_is_uniform_when_calibrated():
    """Each simulated dataset draws its own images (their probabilities) and each image's group from its
    probability: the image is the sampled unit. Under that null the p-value rejects at its level."""
    from scipy import stats

    rng = np.random.default_rng(2026)
    datasets, n = 400, 300
    pvalues = []
    for _ in range(datasets):
        p = rng.beta(0.3, 0.3, size=n)
        hit = (rng.random(n) < p).astype(float)
        pvalues.append(zs.calibration_test(p, hit, resamples=199)[1])
    pvalues = np.array(pvalues)
    for alpha in (0.05, 0.10, 0.25):
        rate = np.mean(pvalues <= alpha)
        se = np.sqrt(alpha * (1 - alpha) / datasets)
        assert alpha - 4 * se < rate < alpha + 4 * se, (alpha, rate)
    assert stats.kstest(pvalues, "uniform").pvalue > 0.001


def test_calibration_test_finds_overconfidence_and_chance_shrinks_with_n():
    """Overconfident probabilities (log-odds doubled) of the same images: p-value at its floor. The
    calibration error reached by chance shrinks about as 1/sqrt(n)."""
    rng = np.random.default_rng(3)
    chances = {}
    for n in (900, 3600):
        p = rng.beta(0.3, 0.3, size=n)
        hit = (rng.random(n) < p).astype(float)
        over = 1 / (1 + np.exp(-2 * np.log(p / (1 - p))))
        chances[n], _ = zs.calibration_test(p, hit)
        assert zs.calibration_test(over, hit)[1] == pytest.approx(1 / 1000)
    assert 1.6 < chances[900] / chances[3600] < 2.5


def test_classifier_accuracy_reports_the_calibration_test():
    rng = np.random.default_rng(4)
    n = 2000
    u = rng.beta(0.5, 0.5, size=n)
    truth = np.where(rng.random(n) < u, "F", "M")
    probs = np.stack([u, 1 - u], axis=1)
    acc = zs.classifier_accuracy(truth, (u < 0.5).astype(np.int64), groups=["F", "M"], probs=probs)
    g = acc.by_group.set_index("group")
    hit = (truth == "F").astype(float)
    assert (g.loc["F", "calibration_error_by_chance"], g.loc["F", "calibration_p"]) == zs.calibration_test(u, hit, seed=0)
    assert (g.loc["M", "calibration_error_by_chance"], g.loc["M", "calibration_p"]) == zs.calibration_test(
        1 - u, 1 - hit, seed=1)
    assert 0 < g.loc["F", "calibration_error"] < 2 * g.loc["F", "calibration_error_by_chance"]
