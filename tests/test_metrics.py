"""Metrics against published values, scipy, a hand-written pandas groupby and property tests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from clipprobe.analysis import metrics as M
from clipprobe.errors import ClipprobeError, DataError, UsageError

# Published test vector (MaxSkew / NDKL of a ranked list of two groups).
VEC_SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
VEC_LABELS = np.array([0, 0, 0, 1, 0, 1, 1, 1, 0, 1])


def test_published_vector_maxskew_at_4():
    ids = M.rank_topk(VEC_SCORES[None, :], 4)
    est = M.point_estimates(ids, VEC_LABELS, 2)
    assert est["max_skew"][0] == pytest.approx(0.405465, abs=1e-6)
    assert est["top_group"][0] == 0


def test_published_vector_ndkl_full_list_uses_natural_log():
    ids = M.rank_topk(VEC_SCORES[None, :], 10)
    est = M.point_estimates(ids, VEC_LABELS, 2)
    assert est["ndkl"][0] == pytest.approx(0.359497, abs=1e-6)
    # The same formula with KL in bits does not reproduce the published value.
    base = np.array([0.5, 0.5])
    disc = 1 / np.log2(np.arange(2, 12))
    kl_bits = [scipy.stats.entropy(np.bincount(VEC_LABELS[:i], minlength=2) / i, base, base=2) for i in range(1, 11)]
    assert (np.array(kl_bits) * disc).sum() / disc.sum() == pytest.approx(0.518645, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# hand-written oracle: one word at a time, pandas groupby, python loops


def _oracle(scores_row, labels, n_groups, k):
    order = sorted(range(len(scores_row)), key=lambda i: (-scores_row[i], i))[:k]
    df = pd.DataFrame({"image": order, "group": [int(labels[i]) for i in order]})
    counts = df.groupby("group").size().reindex(range(n_groups), fill_value=0).to_numpy()
    base = pd.Series(labels).value_counts(normalize=True).reindex(range(n_groups), fill_value=0.0).to_numpy()
    present = base > 0
    share = counts / k
    skew = np.array([math.log(max(c, 1) / k / b) if b > 0 else np.nan for c, b in zip(counts, base)])
    ent = scipy.stats.entropy(share[present]) / math.log(present.sum())
    kl = scipy.stats.entropy(share[present], base[present])
    z = sum(1 / math.log2(i + 1) for i in range(1, k + 1))
    nd = 0.0
    for i in range(1, k + 1):
        prefix = np.bincount(df["group"].to_numpy()[:i], minlength=n_groups) / i
        nd += scipy.stats.entropy(prefix[present], base[present]) / math.log2(i + 1)
    return dict(order=order, count=counts, share=share, skew=skew, norm_entropy=ent, kl_to_base=kl, ndkl=nd / z)


def test_point_estimates_match_groupby_oracle_with_absent_group():
    rng = np.random.default_rng(0)
    n, w, g, k = 120, 9, 5, 17
    labels = rng.choice([0, 1, 2, 4], size=n, p=[0.4, 0.3, 0.2, 0.1])  # group 3 absent
    scores = rng.normal(size=(w, n)).round(1)  # many ties
    ids = M.rank_topk(scores, k)
    with np.errstate(all="raise"):
        est = M.point_estimates(ids, labels, g)
    for word in range(w):
        ref = _oracle(scores[word], labels, g, k)
        assert ids[word].tolist() == ref["order"]
        np.testing.assert_array_equal(est["count"][word], ref["count"])
        np.testing.assert_allclose(est["share"][word], ref["share"])
        np.testing.assert_allclose(est["skew"][word], ref["skew"], equal_nan=True)
        assert np.isnan(est["skew"][word, 3])
        assert est["max_skew"][word] == pytest.approx(np.nanmax(ref["skew"]))
        assert est["min_skew"][word] == pytest.approx(np.nanmin(ref["skew"]))
        assert est["top_group"][word] == int(np.nanargmax(ref["skew"]))
        assert est["norm_entropy"][word] == pytest.approx(ref["norm_entropy"])
        assert est["kl_to_base"][word] == pytest.approx(ref["kl_to_base"])
        assert est["ndkl"][word] == pytest.approx(ref["ndkl"])


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 6).flatmap(
        lambda w: st.tuples(
            st.just(w),
            st.integers(5, 40),
            st.integers(0, 2**31 - 1),
        )
    ),
    st.integers(1, 5),
)
def test_rank_topk_equals_stable_argsort(shape, k):
    w, n, seed = shape
    scores = np.random.default_rng(seed).integers(0, 4, size=(w, n)).astype(float)  # heavy ties
    k = min(k, n)
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(M.rank_topk(scores, k), expected)


# ---------------------------------------------------------------------------------------------
# property tests


counts_strategy = st.integers(2, 7).flatmap(
    lambda g: st.lists(st.lists(st.integers(0, 20), min_size=g, max_size=g), min_size=1, max_size=5)
)


def _normalise_rows(counts):
    counts = np.array(counts)
    counts[:, 0] += counts.sum(axis=1) == 0  # keep k >= 1 per row
    return counts


@settings(max_examples=80, deadline=None)
@given(counts_strategy, st.integers(0, 2**31 - 1))
def test_shares_sum_to_one_and_permutation_invariance(raw_counts, seed):
    counts = _normalise_rows(raw_counts)
    k_per_row = counts.sum(axis=1)
    rng = np.random.default_rng(seed)
    g = counts.shape[1]
    base = rng.dirichlet(np.ones(g))
    for row, k in zip(counts, k_per_row):
        gs = M.group_stats(row[None, :], base, int(k))
        assert gs["share"].sum() == pytest.approx(1.0)
        ws = M.word_stats(row[None, :], base, int(k))
        perm = rng.permutation(g)
        gp = M.group_stats(row[None, perm], base[perm], int(k))
        wp = M.word_stats(row[None, perm], base[perm], int(k))
        np.testing.assert_allclose(gp["skew"], gs["skew"][:, perm])
        for key in ("max_skew", "min_skew", "norm_entropy", "kl_to_base"):
            assert wp[key][0] == pytest.approx(ws[key][0])
        # Ties may pick a different group, but it must be a group with the largest skew.
        assert gs["skew"][0, perm[wp["top_group"][0]]] == pytest.approx(ws["max_skew"][0])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=2, max_size=8))
def test_skew_of_the_base_distribution_is_zero(group_counts):
    counts = np.array(group_counts)[None, :]
    k = int(counts.sum())
    base = counts[0] / k
    gs = M.group_stats(counts, base, k)
    np.testing.assert_allclose(gs["skew"], 0.0, atol=1e-12)
    ws = M.word_stats(counts, base, k)
    assert ws["kl_to_base"][0] == pytest.approx(0.0, abs=1e-12)
    assert ws["max_skew"][0] == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 6))
def test_permuting_label_codes_permutes_point_estimates(seed, g):
    rng = np.random.default_rng(seed)
    n, w, k = 60, 4, 11
    labels = rng.integers(0, g, size=n)
    scores = rng.normal(size=(w, n))
    perm = rng.permutation(g)  # new code of old group j is perm[j]
    ids = M.rank_topk(scores, k)
    a = M.point_estimates(ids, labels, g)
    b = M.point_estimates(ids, perm[labels], g)
    np.testing.assert_array_equal(b["count"][:, perm], a["count"])
    np.testing.assert_allclose(b["skew"][:, perm], a["skew"], equal_nan=True)
    for key in ("max_skew", "min_skew", "norm_entropy", "kl_to_base", "ndkl"):
        np.testing.assert_allclose(b[key], a[key], equal_nan=True)


# ---------------------------------------------------------------------------------------------
# references


def test_uniform_reference_and_count_zero_convention():
    counts = np.array([[6, 4, 0]])
    ref = M.reference_shares("uniform", base_share=np.array([0.5, 0.3, 0.2]))
    np.testing.assert_allclose(ref, [1 / 3, 1 / 3, 1 / 3])
    gs = M.group_stats(counts, ref, 10)
    np.testing.assert_allclose(gs["skew"][0], np.log([0.6 * 3, 0.4 * 3, 0.1 * 3]))
    assert gs["share"][0, 2] == 0.0
    # An absent group gets reference 0 and is excluded.
    ref2 = M.reference_shares("uniform", base_share=np.array([0.6, 0.4, 0.0]))
    np.testing.assert_allclose(ref2, [0.5, 0.5, 0.0])


def test_neutral_reference_is_smoothed_and_sums_to_one():
    base = np.array([0.4, 0.3, 0.2, 0.1, 0.0])
    neutral = np.array([7, 3, 0, 0, 0])
    ref = M.reference_shares("neutral", base_share=base, neutral_counts=neutral, k=10)
    assert ref.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(ref[:4], (neutral[:4] + 0.5) / (10 + 0.5 * 4))
    assert ref[4] == 0
    gs = M.group_stats(np.array([[2, 2, 6, 0, 0]]), ref, 10)
    assert np.all(np.isfinite(gs["skew"][0, :4])) and np.isnan(gs["skew"][0, 4])


def test_point_estimates_neutral_reference_of_the_neutral_prompt_itself_is_small():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 3, size=500)
    scores = rng.normal(size=(2, 500))
    ids = M.rank_topk(scores, 50)
    est = M.point_estimates(ids, labels, 3, reference="neutral", neutral_ids=ids[0])
    # Against its own smoothed shares the neutral prompt's skews are only the smoothing.
    own = est["count"][0]
    np.testing.assert_allclose(est["skew"][0], np.log(np.maximum(own, 1) / 50 / ((own + 0.5) / 51.5)))
    assert np.abs(est["skew"][0]).max() < 0.1
    with pytest.raises(UsageError, match="neutral"):
        M.point_estimates(ids, labels, 3, reference="neutral")


def test_unknown_reference_lists_valid_ones():
    with pytest.raises(ClipprobeError, match=r"unknown reference 'uniformm' \(did you mean 'uniform'\?\)"):
        M.reference_shares("uniformm", base_share=np.array([0.5, 0.5]))


# ---------------------------------------------------------------------------------------------
# C-ASC


def test_c_asc_matches_loop_oracle_and_absent_group_is_nan():
    rng = np.random.default_rng(5)
    n, w, g = 200, 6, 4
    labels = rng.choice([0, 1, 3], size=n)
    sims = rng.normal(size=(w, n))
    got = M.c_asc(sims, labels, g)
    for word in range(w):
        for group in range(g):
            inside = labels == group
            if not inside.any():
                assert np.isnan(got[word, group])
                continue
            expect = (sims[word, inside].mean() - sims[word, ~inside].mean()) / np.std(sims[word])
            assert got[word, group] == pytest.approx(expect)


def test_c_asc_detects_a_planted_group():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, size=3000)
    sims = rng.normal(size=(1, 3000)) + 0.5 * (labels == 2)
    got = M.c_asc(sims, labels, 3)[0]
    assert got[2] > 0.4 and got[0] < 0 and got[1] < 0


# ---------------------------------------------------------------------------------------------
# bad input


def test_bad_labels_and_k_raise_one_line_errors():
    with pytest.raises(DataError, match=r"labels: group codes must be integers in 0..2, found 3"):
        M.topk_counts(np.array([[0, 1]]), np.array([0, 1, 3]), 3)
    with pytest.raises(DataError, match=r"labels: group codes must be integers in 0..2, found -1"):
        M.base_shares(np.array([0, -1]), 3)
    with pytest.raises(UsageError, match=r"k=11 must be between 1 and the number of images \(10\)"):
        M.rank_topk(VEC_SCORES, 11)
    with pytest.raises(DataError, match="similarities"):
        M.c_asc(np.zeros((2, 5)), VEC_LABELS, 2)


def test_norm_entropy_single_present_group_is_nan_not_error():
    with np.errstate(all="raise"):
        out = M.word_stats(np.array([[5, 0]]), np.array([1.0, 0.0]), 5)
    assert np.isnan(out["norm_entropy"][0])
    assert out["max_skew"][0] == pytest.approx(0.0)
    assert np.isnan(out["ndkl"][0])  # no ranked labels given


def test_ndkl_of_ranked_items_equals_ndkl_of_their_group_codes():
    """NDKL from a ranking of items and the items' group codes (what subsets pass: a block's rows of one
    ranking, a strided view) is bit for bit the NDKL of the ranked group codes; bad item indices are refused."""
    from clipprobe.analysis.metrics import ndkl

    rng = np.random.default_rng(4)
    codes = rng.integers(0, 5, size=300)
    order = np.argsort(rng.random((7, 300)), axis=1)
    block = order[:, 40:190]                              # not contiguous
    ref = rng.dirichlet(np.ones(5), size=7)
    np.testing.assert_array_equal(ndkl(block, ref, 5, codes=codes), ndkl(codes[block], ref, 5))
    np.testing.assert_array_equal(ndkl(order.astype(np.int32), ref[0], 5, codes=codes), ndkl(codes[order], ref[0], 5))
    with pytest.raises(DataError, match="ranked items"):
        ndkl(np.array([[0, 300]]), ref[0], 5, codes=codes)
    with pytest.raises(DataError, match="ranked items"):
        ndkl(np.array([[0.0, 1.0]]), ref[0], 5, codes=codes)
