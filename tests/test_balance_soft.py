"""M4 and data RB/AB on soft group memberships E[s_k] (quantised), and the paper's proxy constraints.

Oracles: the paper's moments computed per example with numpy (shares, association, constraint values)."""

from __future__ import annotations

import numpy as np
import pytest

from clipprobe.analysis.balance import data_bias, data_bias_arrays, m4_solve
from clipprobe.analysis.keepflags import flag_counts, group_signature
from clipprobe.analysis.patterns import (
    encode_patterns,
    merge_tables,
    quantise_probabilities,
    soft_group_name,
    soft_group_names,
    soften_table,
    table_lookup,
)
from clipprobe.errors import DataError, UsageError

BINS = 16
GROUPS = ("Female", "Male")


def _soft_data(n=3000, seed=0):
    """Probabilities on the 1/16 grid (some rows with a 'no person' rest, some all-none), labels tied to them."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, BINS + 1, n)
    b = np.minimum(rng.integers(0, BINS + 1, n), BINS - a)
    p = np.stack([a, b], 1) / BINS
    male = p[:, 1]
    y = np.stack([rng.random(n) < 0.1 + 0.5 * male, rng.random(n) < 0.3, rng.random(n) < 0.05 + 0.3 * p[:, 0]],
                 1).astype(np.int8)
    return p, y


def _brute_bias(p, y, q, pi):
    """The paper's moments with E[s_k] = p_k over the population mass m = sum_k p_k, weighted by q."""
    m = p.sum(1)
    share = (q[:, None] * p).sum(0) / (q * m).sum()
    p_in = (q[:, None, None] * p[:, :, None] * y[:, None, :]).sum(0) / (q[:, None] * p).sum(0)[:, None]
    out = m[:, None] - p
    p_out = (q[:, None, None] * out[:, :, None] * y[:, None, :]).sum(0) / (q[:, None] * out).sum(0)[:, None]
    return share - pi, p_in, p_out, p_in - p_out


def _brute_constraints(p, y, q, pi):
    """Conditional-scale constraint values: group shares among the kept mass, overall and per label, minus pi."""
    m = p.sum(1)
    c = p - pi[None, :] * m[:, None]
    res_r = (q[:, None] * c).sum(0) / (q * m).sum()
    res_a = np.einsum("i,ik,ir->kr", q, c, y) / np.einsum("i,i,ir->r", q, m, y)[None, :]
    return res_r, res_a


def test_quantise_rounds_to_the_grid_exactly_and_bounds_the_error():
    rng = np.random.default_rng(3)
    x = rng.dirichlet(np.ones(3), 500)[:, :2]          # two groups and a "no person" rest
    lev = quantise_probabilities(x, BINS)
    assert lev.dtype == np.int32 and (lev >= 0).all() and (lev.sum(1) <= BINS).all()
    assert np.abs(lev / BINS - x).max() <= 1 / BINS + 1e-12
    grid = rng.integers(0, 9, (200, 2)) / BINS
    np.testing.assert_array_equal(quantise_probabilities(grid, BINS), np.rint(grid * BINS).astype(np.int32))
    onehot = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    np.testing.assert_array_equal(quantise_probabilities(onehot, BINS), onehot.astype(np.int32) * BINS)
    with pytest.raises(DataError, match=r"sum to at most 1 per row; row 1"):
        quantise_probabilities(np.array([[0.2, 0.3], [0.7, 0.7]]), BINS)
    with pytest.raises(UsageError, match="soft_bins=0 must be an integer"):
        quantise_probabilities(onehot, 0)


def test_soft_mode_on_0_1_probabilities_is_hard_mode():
    rng = np.random.default_rng(5)
    n = 2000
    g = rng.integers(-1, 2, n)                            # -1: no group
    s = np.zeros((n, 2))
    s[g >= 0, g[g >= 0]] = 1.0
    y = np.stack([rng.random(n) < np.where(g == 1, 0.6, 0.2), rng.random(n) < 0.3], 1).astype(np.int8)
    hard, hard_ids = encode_patterns(s.astype(np.int8), y, groups=GROUPS)
    soft, soft_ids = encode_patterns(s, y, groups=GROUPS, soft_bins=BINS)
    assert soft.soft and not hard.soft
    np.testing.assert_array_equal(hard.keys, soft.keys)
    np.testing.assert_array_equal(hard_ids, soft_ids)
    for q in (None, rng.random(hard.n_rows)):
        a, b = data_bias(hard, q=q), data_bias(soft, q=q)
        for name in ("share", "share_low", "share_high", "rb", "n_eff", "p_in", "p_out", "ab", "ab_low", "ab_high"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert (a.rb_max, a.ab_max, a.n_mention, a.n_multi) == (b.rb_max, b.ab_max, b.n_mention, b.n_multi)
    for scale in ("conditional", "all"):
        sa = m4_solve(hard, keep=0.5, eps_r=0.02, eps_a=0.02, scale=scale)
        sb = m4_solve(soft, keep=0.5, eps_r=0.02, eps_a=0.02, scale=scale)
        np.testing.assert_array_equal(sa.q, sb.q)
        np.testing.assert_array_equal(sa.residual_a, sb.residual_a)
        assert sa.max_keep == sb.max_keep and sa.objective == sb.objective
        np.testing.assert_array_equal(flag_counts(sa), flag_counts(sb))


def test_soft_data_bias_is_the_papers_moments_with_expected_memberships():
    p, y = _soft_data()
    rng = np.random.default_rng(1)
    pi = np.array([0.5, 0.5])
    for q in (np.ones(len(p)), rng.random(len(p))):
        bias = data_bias_arrays(p, y, weights=q, soft_bins=BINS, groups=GROUPS)
        rb, p_in, p_out, ab = _brute_bias(p, y, q, pi)
        np.testing.assert_allclose(bias.rb, rb, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bias.p_in, p_in, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bias.p_out, p_out, rtol=0, atol=1e-12)
        np.testing.assert_allclose(bias.ab, ab, rtol=0, atol=1e-12)
        assert bias.rb_max == pytest.approx(np.abs(rb).max(), abs=1e-12)
        assert bias.ab_max == pytest.approx(np.abs(ab).max(), abs=1e-12)
        assert bias.n_mention == pytest.approx((q * p.sum(1)).sum(), rel=1e-12)
        assert np.all((bias.share_low <= bias.share) & (bias.share <= bias.share_high))


@pytest.mark.parametrize("scale", ["conditional", "all"])
def test_soft_m4_meets_its_constraints_at_the_reported_residuals(scale):
    p, y = _soft_data(seed=2)
    table, ids = encode_patterns(p, y, groups=GROUPS, soft_bins=BINS)
    pi = np.array([0.5, 0.5])
    eps = 0.01
    sol = m4_solve(table, keep=0.6, eps_r=eps, eps_a=eps, scale=scale)
    assert sol.converged and sol.max_violation <= 1e-9
    q = sol.q[ids]                                           # each example's keep probability
    if scale == "conditional":
        res_r, res_a = _brute_constraints(p, y, q, pi)
    else:
        c = p - pi[None, :] * p.sum(1)[:, None]
        res_r = (q[:, None] * c).sum(0) / len(q)
        res_a = np.einsum("i,ik,ir->kr", q, c, y) / len(q)
    np.testing.assert_allclose(sol.residual_r, res_r, atol=1e-12)
    np.testing.assert_allclose(sol.residual_a, res_a, atol=1e-12)
    assert np.abs(res_r).max() <= eps + 1e-9 and np.abs(res_a).max() <= eps + 1e-9
    assert sol.keep_rate == pytest.approx(q.mean(), abs=1e-12)
    before = data_bias(table)
    assert before.rb_max > eps or before.ab_max > 0.1        # there was something to balance
    # the data after balancing, weighted by q: the data RB is within eps_r (conditional scale)
    if scale == "conditional":
        assert data_bias(table, q=sol.q).rb_max <= eps + 1e-9
    # the keep flags: each membership combination keeps its q mass to within half an example
    kept = flag_counts(sol)
    block = group_signature(table)
    assert np.unique(block).size == np.unique(table.levels, axis=0).shape[0]
    gap = np.bincount(block, weights=kept - sol.q * table.count)
    assert np.abs(gap).max() <= 0.5 + 1e-6


def test_soft_table_from_group_names_equals_direct_encoding():
    p, y = _soft_data(n=1500, seed=4)
    names, levels = soft_group_names(GROUPS, BINS)
    assert len(names) == (BINS + 1) * (BINS + 2) // 2 - 1
    lev = quantise_probabilities(p, BINS)
    index = {tuple(row): j for j, row in enumerate(levels.tolist())}
    virtual = np.zeros((len(p), len(names)), np.int8)
    has = lev.sum(1) > 0
    virtual[np.flatnonzero(has), [index[tuple(r)] for r in lev[has].tolist()]] = 1
    assert soft_group_name(lev[np.flatnonzero(has)[0]], GROUPS, BINS) == names[index[tuple(lev[has][0].tolist())]]
    vt, vids = encode_patterns(virtual, y, groups=names)
    soft = soften_table(vt, GROUPS, BINS)
    direct, _ = encode_patterns(p, y, groups=GROUPS, soft_bins=BINS)
    # same rows (in the virtual table's order), same statistics and the same optimum
    where = table_lookup(soft, direct)
    assert (where >= 0).all() and np.array_equal(direct.count[where], soft.count)
    canon = merge_tables([soft])
    np.testing.assert_array_equal(canon.group_keys, direct.group_keys)
    a, b = data_bias(soft), data_bias(direct)
    np.testing.assert_allclose(a.ab, b.ab, atol=1e-12)
    np.testing.assert_allclose(a.rb, b.rb, atol=1e-12)
    sa = m4_solve(soft, keep=0.5, eps_r=0.02, eps_a=0.02)
    sb = m4_solve(direct, keep=0.5, eps_r=0.02, eps_a=0.02)
    np.testing.assert_allclose(sa.q, sb.q[where], atol=1e-7)
    # round trip of the stored form
    back = type(soft).from_arrays(soft.to_arrays())
    np.testing.assert_array_equal(back.group_keys, canon.group_keys)
    with pytest.raises(DataError, match="is not a quantised membership"):
        soften_table(encode_patterns(virtual[:, :3], y, groups=("a", "b", "c"))[0], GROUPS, BINS)


def _proxy_data(n=4000, seed=7):
    """One group per example; 'beard' is a planted proxy of Male (90% of its captions are Male's)."""
    rng = np.random.default_rng(seed)
    g = rng.integers(0, 2, n)
    s = np.eye(2, dtype=np.int8)[g]
    beard = np.where(g == 1, rng.random(n) < 0.3, rng.random(n) < 0.033)
    nurse = rng.random(n) < np.where(g == 0, 0.2, 0.1)
    return s, np.stack([nurse, beard], 1).astype(np.int8), g


def _proxy_constraint(g, proxy, q):
    """The share of Male among the kept examples that carry the proxy, minus its target 0.5 (brute force)."""
    w = q * proxy
    return abs((w * (g == 1)).sum() / w.sum() - 0.5)


def test_a_planted_proxy_is_decorrelated_only_when_named():
    s, y, g = _proxy_data()
    eps = 0.02
    before = _proxy_constraint(g, y[:, 1], np.ones(len(g)))
    assert before > 0.35
    # with the proxy: the table carries it as a label, M4 constrains it, the outputs do not report it
    table, ids = encode_patterns(s, y, groups=GROUPS, labels=("nurse", "beard"))
    sol = m4_solve(table, keep=0.6, eps_r=eps, eps_a=eps, proxies=("beard",))
    assert sol.converged
    assert _proxy_constraint(g, y[:, 1], sol.q[ids]) <= eps + 1e-9
    frame = sol.residual_frame()
    assert set(frame.loc[frame["label"] == "beard", "constraint"]) == {"proxy"}
    assert set(frame.loc[frame["label"] == "nurse", "constraint"]) == {"association"}
    bias = data_bias(table, q=sol.q, proxies=("beard",))
    assert bias.labels == ("nurse",) and bias.ab.shape == (2, 1)
    np.testing.assert_allclose(bias.ab, data_bias(table, q=sol.q).ab[:, :1], atol=0)
    # without it: only nurse is a label; the kept weights leave the proxy's association in place
    table2, ids2 = encode_patterns(s, y[:, :1], groups=GROUPS, labels=("nurse",))
    sol2 = m4_solve(table2, keep=0.6, eps_r=eps, eps_a=eps)
    assert _proxy_constraint(g, y[:, 1], sol2.q[ids2]) > 0.3
    with pytest.raises(UsageError, match="'bread' is not one of the table's labels"):
        m4_solve(table, keep=0.6, proxies=("bread",))
