"""Data RB/AB, pattern tables, M4 balancing, keep flags and model RB/AB (clipprobe.analysis: balance,
patterns, keepflags, association, intervals).

Oracles: per-example numpy written from the definitions, statsmodels' Wilson and Newcombe intervals,
scipy's SLSQP on the per-example primal problem and HiGHS on a per-example LP. Coverage of the
intervals is measured by simulation against known populations (more settings in test_balance_slow).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import sparse
from scipy.optimize import linprog, minimize
from scipy.stats import binom
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from clipprobe.analysis import association as A
from clipprobe.analysis import balance as B
from clipprobe.analysis import intervals as IV
from clipprobe.analysis import keepflags as K
from clipprobe.analysis import patterns as P
from clipprobe.errors import ClipprobeError, DataError, UsageError

Z95 = 1.959963984540054


# ----------------------------------------------------------------------------------------------
# helpers: random data, definitions written per example


def random_data(rng, n, k, r, p_none=0.4, p_multi=0.1, label_rate=0.3):
    s = np.zeros((n, k), np.int8)
    kind = rng.random(n)
    one = (kind >= p_none) & (kind < 1 - p_multi)
    s[np.flatnonzero(one), rng.integers(0, k, one.sum())] = 1
    multi = np.flatnonzero(kind >= 1 - p_multi)
    for i in multi:
        s[i, rng.choice(k, size=rng.integers(2, k + 1), replace=False)] = 1
    # labels skewed by the first group
    prob = label_rate * (1 + 0.8 * (s[:, [0]] - 0.5) * rng.uniform(-1, 1, r))
    y = (rng.random((n, r)) < prob).astype(np.int8)
    return s, y


def membership(s):
    s = np.asarray(s, float)
    j = s.sum(1)
    m = (j > 0).astype(float)
    return s / np.maximum(j, 1)[:, None], m


def constraint_rows(s, y, pi, eps_r, eps_a, scale):
    """Per-example constraints ``a @ q <= b`` written from the definitions."""
    w, m = membership(s)
    n = len(m)
    rows, rhs = [], []
    for k in range(s.shape[1]):
        ck = w[:, k] - pi[k] * m
        for sign in (1, -1):
            if scale == "conditional":
                rows.append(sign * ck - eps_r * m)
                rhs.append(0.0)
            else:
                rows.append(sign * ck / n)
                rhs.append(eps_r)
        for r in range(y.shape[1]):
            for sign in (1, -1):
                if scale == "conditional":
                    rows.append((sign * ck - eps_a * m) * y[:, r])
                    rhs.append(0.0)
                else:
                    rows.append(sign * ck * y[:, r] / n)
                    rhs.append(eps_a)
    return np.array(rows), np.array(rhs)


def dual_certificate(s, y, pi, eta, eps_r, eps_a, scale, u, sol):
    """The Lagrange dual function at the reported duals, computed per example from the definitions.

    Weak duality makes it a lower bound of the optimum, so equality with the primal objective proves
    optimality. Reported duals belong to the constraints divided by their subpopulation's share
    (examples that mention a group, and carry label r), in the mean-over-examples form.
    """
    a, b = constraint_rows(s, y, pi, eps_r, eps_a, scale)
    n = len(s)
    if scale == "conditional":
        a = a / n                         # the same constraints as means
    _w, m = membership(s)
    lam, mass = [], []
    for k in range(s.shape[1]):
        for side in (0, 1):
            lam.append(sol.duals_r[k, side])
            mass.append(m.mean())
        for r in range(y.shape[1]):
            for side in (0, 1):
                lam.append(sol.duals_a[k, r, side])
                mass.append((m * y[:, r]).mean())
    lam, mass = np.array(lam), np.array(mass)
    ok = mass > 0
    lam, mass, a, b = lam[ok], mass[ok], a[ok], b[ok]
    t = (lam / mass) @ a
    q = np.clip(eta - n * t / (2 * u), 0, 1)
    return (u * (q - eta) ** 2).mean() + (lam / mass) @ (a @ q - b)


def brute_max_keep(s, y, pi, eps_r, eps_a, scale):
    a, b = constraint_rows(s, y, pi, eps_r, eps_a, scale)
    n = len(s)
    res = linprog(-np.ones(n) / n, A_ub=a, b_ub=b, bounds=[(0, 1)] * n, method="highs")
    assert res.status == 0
    return -res.fun


def brute_m4(s, y, pi, eta, eps_r, eps_a, scale, u):
    """The primal problem per example with SLSQP (scipy's generic constrained solver)."""
    a, b = constraint_rows(s, y, pi, eps_r, eps_a, scale)
    n = len(s)
    scale_rows = np.maximum(np.abs(a).max(1), 1e-12)
    a, b = a / scale_rows[:, None], b / scale_rows
    keep = np.abs(a).sum(1) > 0
    a, b = a[keep], b[keep]
    res = minimize(lambda q: (u * (q - eta) ** 2).sum() / n, np.full(n, min(eta, 0.5)),
                   jac=lambda q: 2 * u * (q - eta) / n, method="SLSQP", bounds=[(0, 1)] * n,
                   constraints=[{"type": "ineq", "fun": lambda q: b - a @ q, "jac": lambda q: -a}],
                   options={"ftol": 1e-15, "maxiter": 2000})
    assert res.success, res.message
    return res.x, res.fun


def brute_residuals(s, y, q, pi, scale):
    w, m = membership(s)
    n = len(m)
    k, r = s.shape[1], y.shape[1]
    res_r, res_a = np.zeros(k), np.full((k, r), np.nan)
    for kk in range(k):
        ck = w[:, kk] - pi[kk] * m
        res_r[kk] = (q * ck).sum() / (q * m).sum() if scale == "conditional" else (q * ck).sum() / n
        for rr in range(r):
            den = (q * m * y[:, rr]).sum()
            if scale == "conditional":
                res_a[kk, rr] = (q * ck * y[:, rr]).sum() / den if den > 0 else np.nan
            elif (m * y[:, rr]).sum() > 0:
                res_a[kk, rr] = (q * ck * y[:, rr]).sum() / n
    return res_r, res_a


def wilson_eff(a, v):
    """Share sum(a v) / sum(a) and its Wilson interval with n_eff from the linearisation variance."""
    tot = a.sum()
    p = (a * v).sum() / tot
    var = ((a * (v - p)) ** 2).sum() / tot ** 2
    n_eff = p * (1 - p) / var if var > 1e-300 and 0 < p < 1 else tot ** 2 / (a * a).sum()
    lo, hi = proportion_confint(p * n_eff, n_eff, alpha=0.05, method="wilson")
    return p, lo, hi, n_eff, var


def brute_bias(s, y, pi, q=None, min_events=B.MIN_EVENTS):
    w, m = membership(s)
    q = np.ones(len(m)) if q is None else q
    k, r = s.shape[1], y.shape[1]
    out = {key: np.full((k,), np.nan) for key in ("share", "share_low", "share_high")}
    for key in ("p_in", "p_out", "ab", "ab_low", "ab_high"):
        out[key] = np.full((k, r), np.nan)
    for kk in range(k):
        sel = m > 0
        p, lo, hi, _, _ = wilson_eff(q[sel], w[sel, kk])
        out["share"][kk], out["share_low"][kk], out["share_high"][kk] = p, lo, hi
        a1, a0 = q * w[:, kk], q * (m - w[:, kk])
        for rr in range(r):
            yy = y[:, rr].astype(float)
            p1, l1, h1, n1, v1 = wilson_eff(a1, yy)
            p0, l0, h0, n0, v0 = wilson_eff(a0, yy)
            cov = (a1 * a0 * (yy - p1) * (yy - p0)).sum() / (a1.sum() * a0.sum())
            rho = cov / np.sqrt(v1 * v0) if v1 > 0 and v0 > 0 else 0.0
            d = p1 - p0
            lo = d - np.sqrt((p1 - l1) ** 2 + (h0 - p0) ** 2 - 2 * rho * (p1 - l1) * (h0 - p0))
            hi = d + np.sqrt((h1 - p1) ** 2 + (p0 - l0) ** 2 - 2 * rho * (h1 - p1) * (p0 - l0))
            few = min(p1 * n1, (1 - p1) * n1, p0 * n0, (1 - p0) * n0) < min_events
            out["p_in"][kk, rr], out["p_out"][kk, rr], out["ab"][kk, rr] = p1, p0, d
            out["ab_low"][kk, rr] = np.nan if few else lo
            out["ab_high"][kk, rr] = np.nan if few else hi
    return out


# ----------------------------------------------------------------------------------------------
# pattern tables


def test_encode_dense_and_sparse_agree_and_ids_round_trip():
    rng = np.random.default_rng(0)
    s, y = random_data(rng, 500, 3, 70)           # 73 columns: two 64-bit words
    table, ids = P.encode_patterns(s, y)
    t2, ids2 = P.encode_patterns(sparse.csr_array(s), sparse.coo_array(y))
    assert np.array_equal(table.keys, t2.keys) and np.array_equal(ids, ids2)
    assert table.keys.shape[1] == 2
    assert np.array_equal(table.s[ids], s.astype(bool)) and np.array_equal(table.y[ids], y.astype(bool))
    assert table.n_examples == 500 and np.array_equal(table.count, np.bincount(ids))
    # distinct rows: as many as numpy finds
    assert table.n_rows == np.unique(np.hstack([s, y]), axis=0).shape[0]


def test_tables_merge_across_chunks_and_round_trip_as_arrays():
    rng = np.random.default_rng(1)
    s, y = random_data(rng, 900, 2, 5)
    u = rng.uniform(0.1, 3.0, 900)
    full, ids = P.encode_patterns(s, y, utility=u)
    parts = [P.encode_patterns(s[a:b], y[a:b], utility=u[a:b])[0] for a, b in ((0, 100), (100, 555), (555, 900))]
    merged = P.merge_tables(parts[::-1])
    for name in ("keys", "ubin", "count"):
        assert np.array_equal(getattr(merged, name), getattr(full, name))
    assert np.allclose(merged.u_sum, full.u_sum)
    back = P.PatternTable.from_arrays(full.to_arrays())
    assert np.array_equal(back.keys, full.keys) and np.array_equal(back.count, full.count)
    # utility bins: 32 per octave, the mean utility of a row within 2.2% of each of its examples
    assert np.all(np.abs(full.u_mean[ids] / u - 1) < 2 ** (1 / 32) - 1)
    assert np.array_equal(full.ubin[ids], np.floor(np.log2(u) * 32).astype(int))


def test_table_lookup_and_merge_refuse_other_layouts():
    rng = np.random.default_rng(2)
    s, y = random_data(rng, 50, 2, 3)
    a, _ = P.encode_patterns(s, y, labels=["x", "y", "z"])
    b, _ = P.encode_patterns(s, y, labels=["x", "y", "w"])
    with pytest.raises(DataError, match="cannot merge pattern tables with different labels"):
        P.merge_tables([a, b])
    sub, _ = P.encode_patterns(s[:10], y[:10], labels=["x", "y", "z"])
    where = P.table_lookup(sub, a)
    assert np.array_equal(a.keys[where], sub.keys)


# ----------------------------------------------------------------------------------------------
# data RB and AB


@pytest.mark.parametrize("weighted", [False, True])
def test_data_bias_matches_per_example_definitions(weighted):
    rng = np.random.default_rng(3)
    s, y = random_data(rng, 3000, 3, 4)
    q = rng.uniform(0.2, 1.0, 3000) if weighted else None
    pi = np.array([0.5, 0.3, 0.2])
    got = B.data_bias_arrays(s, y, pi, weights=q)
    want = brute_bias(s, y, pi, q)
    for key, value in want.items():
        assert np.allclose(getattr(got, key), value, equal_nan=True, rtol=1e-9, atol=1e-12), key
    assert np.allclose(got.rb, want["share"] - pi)
    assert got.rb_max == pytest.approx(np.abs(want["share"] - pi).max())
    i = np.unravel_index(np.nanargmax(np.abs(want["ab"])), want["ab"].shape)
    assert got.ab_argmax == (got.groups[i[0]], got.labels[i[1]])
    _w, m = membership(s)
    qq = np.ones(3000) if q is None else q
    assert got.n_mention == pytest.approx((qq * m).sum())
    assert got.n_multi == pytest.approx((qq * (s.sum(1) > 1)).sum())


def test_pattern_table_with_row_weights_equals_per_example_weights():
    rng = np.random.default_rng(4)
    s, y = random_data(rng, 2000, 2, 3)
    table, ids = P.encode_patterns(s, y)
    q_rows = rng.uniform(0.3, 1.0, table.n_rows)
    a = B.data_bias(table, q=q_rows)
    b = B.data_bias_arrays(s, y, weights=q_rows[ids])
    for key in ("share", "share_low", "share_high", "ab", "ab_low", "ab_high"):
        assert np.allclose(getattr(a, key), getattr(b, key), equal_nan=True), key


def test_one_hot_unweighted_intervals_are_statsmodels_wilson_and_newcombe():
    rng = np.random.default_rng(5)
    n = 4000
    g = rng.integers(0, 2, n)
    s = np.eye(2, dtype=int)[g]
    y = (rng.random((n, 2)) < np.where(g[:, None] == 0, [0.1, 0.3], [0.2, 0.25])).astype(int)
    got = B.data_bias_arrays(s, y, "uniform", min_events=0)
    lo, hi = proportion_confint(int((g == 0).sum()), n, alpha=0.05, method="wilson")
    assert got.share_low[0] == pytest.approx(lo, rel=1e-10) and got.share_high[0] == pytest.approx(hi, rel=1e-10)
    for r in range(2):
        x1, n1 = int(y[g == 0, r].sum()), int((g == 0).sum())
        x0, n0 = int(y[g == 1, r].sum()), int((g == 1).sum())
        lo, hi = confint_proportions_2indep(x1, n1, x0, n0, method="newcomb", compare="diff")
        assert got.ab_low[0, r] == pytest.approx(lo, rel=1e-9) and got.ab_high[0, r] == pytest.approx(hi, rel=1e-9)


def test_no_mention_captions_do_not_change_the_statistics_and_multi_counts_half():
    s = np.array([[1, 0], [0, 1], [1, 0], [1, 1], [0, 0], [0, 0]])
    y = np.array([[1], [0], [0], [1], [1], [1]])
    got = B.data_bias_arrays(s, y, "uniform", min_events=0)
    # mentions: rows 0-3; Male share (1 + 0 + 1 + 0.5) / 4
    assert got.share[0] == pytest.approx(2.5 / 4) and got.rb[0] == pytest.approx(0.125)
    # P(y | Male) = (1 + 0 + 0.5) / 2.5 ; P(y | not Male) = (0 + 0.5) / 1.5
    assert got.p_in[0, 0] == pytest.approx(1.5 / 2.5) and got.p_out[0, 0] == pytest.approx(0.5 / 1.5)
    more = B.data_bias_arrays(np.vstack([s, np.zeros((50, 2), int)]), np.vstack([y, np.ones((50, 1), int)]),
                              "uniform", min_events=0)
    assert np.allclose(more.share, got.share) and np.allclose(more.ab, got.ab)


# coverage: a population of patterns (s in {none, M, F, both} x y in {0,1}^R), datasets drawn as
# multinomial counts over the patterns (the same distribution as drawing captions one by one)


def population(p_none=0.5, p_m=0.3, p_f=0.15, p_both=0.05, label_p=((0.1, 0.2), (0.3, 0.15))):
    s_of = {"none": (0, 0), "M": (1, 0), "F": (0, 1), "both": (1, 1)}
    p_of = {"none": p_none, "M": p_m, "F": p_f, "both": p_both}
    ss, yy, pp = [], [], []
    for name, sv in s_of.items():
        for ys in itertools.product((0, 1), repeat=len(label_p)):
            pr = p_of[name]
            for (pm, pf), yv in zip(label_p, ys):
                pl = {"none": 0.05, "M": pm, "F": pf, "both": (pm + pf) / 2}[name]
                pr *= pl if yv else 1 - pl
            ss.append(sv)
            yy.append(ys)
            pp.append(pr)
    return np.array(ss, float), np.array(yy, float), np.array(pp)


def population_truth(s, y, p, q):
    w, m = membership(s)
    a = p * q
    share = (a @ w) / (a @ m)
    p_in = ((a[:, None] * w).T @ y) / (a @ w)[:, None]
    w_out = m[:, None] - w
    p_out = ((a[:, None] * w_out).T @ y) / (a @ w_out)[:, None]
    return share, p_in - p_out


def coverage(n, reps, q=None, seed=0, **kw):
    s, y, p = population(**kw)
    q = np.ones(len(p)) if q is None else q
    counts = np.random.default_rng(seed).multinomial(n, p, size=reps).astype(float)
    w, m = membership(s)
    st = B.bias_from_sums(w, m, y, counts * q, counts * q * q, np.array([0.5, 0.5]), Z95)
    share, ab = population_truth(s, y, p, q)
    cov_share = ((st["share_low"] <= share) & (share <= st["share_high"])).mean(0)
    hit = ((st["ab_low"] <= ab) & (ab <= st["ab_high"])).astype(float)
    published = ~np.isnan(st["ab_low"])
    hit[~published] = np.nan
    return cov_share, np.nanmean(hit, axis=0), published.mean(0)


@pytest.mark.parametrize("kw", [{}, {"p_none": 0.2, "p_m": 0.3, "p_f": 0.2, "p_both": 0.3}])
@pytest.mark.parametrize("weights", ["none", "random"])
def test_data_interval_coverage(kw, weights):
    q = None if weights == "none" else np.random.default_rng(7).uniform(0.3, 1.0, 16)
    cov_share, cov_ab, published = coverage(1500, 3000, q=q, **kw)
    assert published.min() > 0.99
    assert np.all((cov_share >= 0.93) & (cov_share <= 0.97)), cov_share
    assert np.all((cov_ab >= 0.93) & (cov_ab <= 0.97)), cov_ab


# ----------------------------------------------------------------------------------------------
# M4


def solve_case(seed, k, r, scale, utility):
    rng = np.random.default_rng(seed)
    n = 36
    s, y = random_data(rng, n, k, r, p_none=0.25, p_multi=0.15, label_rate=0.4)
    pi = rng.dirichlet(np.ones(k) * 3)
    u = rng.uniform(0.3, 3.0, n) if utility else None
    eps_r, eps_a = (0.03, 0.05) if scale == "conditional" else (0.01, 0.004)
    table, ids = P.encode_patterns(s, y, utility=u)
    return s, y, pi, table, ids, eps_r, eps_a


CASES = [(seed, k, r, scale, utility) for seed, (k, r), scale, utility in zip(
    range(8), [(2, 1), (2, 2), (3, 2), (3, 3), (2, 3), (4, 1), (2, 2), (3, 1)],
    ["conditional", "all"] * 4, [False, True, True, False, False, True, True, False])]


@pytest.mark.parametrize("seed,k,r,scale,utility", CASES)
def test_m4_matches_a_generic_solver(seed, k, r, scale, utility):
    s, y, pi, table, ids, eps_r, eps_a = solve_case(seed, k, r, scale, utility)
    max_keep = brute_max_keep(s, y, pi, eps_r, eps_a, scale)
    assert B.max_keep_rate(table, pi, eps_r=eps_r, eps_a=eps_a, scale=scale) == pytest.approx(max_keep, abs=1e-7)
    eta = min(0.9, max_keep - 0.02)
    sol = B.m4_solve(table, pi, keep=eta, eps_r=eps_r, eps_a=eps_a, scale=scale)
    assert sol.converged, sol.message
    q = sol.q[ids]
    u = table.u_mean[ids]              # the solve is exact for the binned utilities
    q_ref, f_ref = brute_m4(s, y, pi, eta, eps_r, eps_a, scale, u)
    assert sol.objective == pytest.approx(f_ref, rel=1e-6, abs=1e-12)
    assert sol.objective == pytest.approx((u * (q - eta) ** 2).mean(), rel=1e-12)
    assert np.abs(q - q_ref).max() < 1e-4
    assert sol.objective - sol.dual_objective < 1e-12            # duality gap
    assert dual_certificate(s, y, pi, eta, eps_r, eps_a, scale, u, sol) == pytest.approx(sol.objective, rel=1e-9,
                                                                                         abs=1e-14)
    assert np.all(sol.duals_r >= 0) and np.all(sol.duals_a >= 0)
    a, b = constraint_rows(s, y, pi, eps_r, eps_a, scale)
    assert (a @ q - b).max() <= 1e-9
    res_r, res_a = brute_residuals(s, y, q, pi, scale)
    assert np.allclose(sol.residual_r, res_r) and np.allclose(sol.residual_a, res_a, equal_nan=True)
    assert sol.keep_rate == pytest.approx(q.mean())
    assert sol.max_keep == pytest.approx(max_keep, abs=1e-7)


def test_m4_raises_with_the_largest_feasible_keep_rate():
    s, y, pi, table, _ids, eps_r, eps_a = solve_case(3, 3, 3, "conditional", False)
    max_keep = brute_max_keep(s, y, pi, eps_r, eps_a, "conditional")
    assert max_keep < 0.98
    with pytest.raises(B.BalanceInfeasible) as err:
        B.m4_solve(table, pi, keep=max_keep + 0.02, eps_r=eps_r, eps_a=eps_a)
    assert err.value.max_keep == pytest.approx(max_keep, abs=1e-7)
    assert str(err.value) == B.MSG_INFEASIBLE.format(eps_r=eps_r, eps_a=eps_a, keep=max_keep + 0.02,
                                                     max_keep=err.value.max_keep)
    assert f"{max_keep:.4f}" in str(err.value)
    assert isinstance(err.value, ClipprobeError)
    sol = B.m4_solve(table, pi, keep=max_keep - 1e-4, eps_r=eps_r, eps_a=eps_a)
    assert sol.converged


def test_m4_on_realistic_captions_meets_eps_and_leaves_unmentioned_captions_at_keep():
    rng = np.random.default_rng(11)
    n = 200_000
    u = rng.random(n)
    s = np.zeros((n, 2), np.int8)
    s[u < 0.08, 0] = 1
    s[(u >= 0.08) & (u < 0.12), 1] = 1
    s[(u >= 0.12) & (u < 0.125)] = 1
    rate = np.where(s[:, [0]] == 1, [0.05, 0.01, 0.02], [0.01, 0.04, 0.02])
    y = (rng.random((n, 3)) < np.where(s.sum(1, keepdims=True) > 0, rate, 0.01)).astype(np.int8)
    table, ids = P.encode_patterns(s, y)
    sol = B.m4_solve(table, "uniform", keep=0.9, eps_r=0.01, eps_a=0.01)
    assert sol.converged and sol.max_violation <= 1e-9
    after = B.data_bias(table, q=sol.q)
    before = B.data_bias(table)
    assert before.rb_max > 0.1 and after.rb_max <= 0.01 + 1e-9
    assert np.nanmax(np.abs(sol.residual_a)) <= 0.01 + 1e-9
    assert after.ab_max < before.ab_max / 3
    q = sol.q[ids]
    assert np.allclose(q[s.sum(1) == 0], 0.9)             # no group: kept at the requested rate
    # balanced on its own (uniform target): never cut; kept more where it dilutes the imbalance
    assert q[s.sum(1) == 2].min() >= 0.9 - 1e-12
    assert len(sol.log.dual) == sol.n_evaluations and sol.log.frame().shape[0] == sol.n_evaluations
    assert sol.log.primal[-1] == sol.objective and sol.log.max_violation[-1] == sol.max_violation
    assert sol.log.max_violation[0] > 0.05                 # q = keep everywhere violates the constraints
    # a warm start from the optimum needs few evaluations and gives the same q
    again = B.m4_solve(table, "uniform", keep=0.9, eps_r=0.01, eps_a=0.01, start=sol)
    assert again.n_evaluations < sol.n_evaluations / 3 and np.allclose(again.q, sol.q, atol=1e-9)


def test_grouped_and_per_example_dual_solves_agree():
    """The benchmark's baseline: the same dual iterations with every example its own pattern."""
    _s, _y, pi, table, ids, eps_r, eps_a = solve_case(1, 2, 2, "conditional", True)
    eta = 0.5
    grouped, pat, _n_pat = B._build_system(table.keys, table.count, 2, 2, pi, eps_r, eps_a, "conditional")
    flat, none, cnt = B._build_system(table.keys[ids], np.ones(len(ids)), 2, 2, pi, eps_r, eps_a, "conditional",
                                      group=False)
    assert none is None
    a = B._dual_solve(grouped, pat, table.count.astype(float), table.u_mean, eta, tol=1e-9, max_iter=500,
                      lam0=np.zeros(grouped.n_duals))
    b = B._dual_solve(flat, None, cnt, table.u_mean[ids], eta, tol=1e-9, max_iter=500, lam0=np.zeros(flat.n_duals))
    assert np.allclose(a.q[ids], b.q, atol=1e-7) and a.primal == pytest.approx(b.primal, rel=1e-9)


# ----------------------------------------------------------------------------------------------
# weights and keep flags per example: round(q x count) per pattern, by rank of a content hash

M64 = (1 << 64) - 1


def py_mix(x: int) -> int:
    """splitmix64's finaliser in plain Python integers (the published algorithm)."""
    z = (x + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def py_hash(value) -> int:
    """The documented string hash, one string at a time in plain Python (the oracle of hash_strings)."""
    if value is None:
        return py_mix(K._NULL_TAG)
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    padded = raw + b"\0" * (-len(raw) % 8)
    acc = 0
    for j in range(len(padded) // 8):
        acc = (acc + py_mix(int.from_bytes(padded[8 * j:8 * j + 8], "little") ^ py_mix(j))) & M64
    return py_mix(acc ^ py_mix(len(raw) ^ K._LEN_TAG))


def py_row_hash(*values) -> int:
    r = K._ROW_TAG
    for v in values:
        r = py_mix(r ^ py_hash(v))
    return r


def py_counts(q, count, blocks=None):
    """Systematic rounding from its definition, block by block and pattern by pattern (in index order):
    each keeps floor(C_p + 1/2) - floor(C_{p-1} + 1/2) with C the running sum of q n within its block,
    in integer millionths of an example."""
    blocks = list(range(len(count))) if blocks is None else [int(b) for b in blocks]
    out = [0] * len(count)
    for block in sorted(set(blocks)):
        running, before = 0, 0
        for p in (p for p in range(len(count)) if blocks[p] == block):
            running += int(round(float(q[p]) * int(count[p]) * 1e6))
            edge = (running + 500_000) // 1_000_000
            out[p] = edge - before
            before = edge
    return np.array(out)


def py_signature(table):
    """Each pattern's groups as one number, sum_k s_k 2^k (its order is the combinations' canonical order)."""
    return [sum(1 << k for k in np.flatnonzero(row)) for row in table.s]


def py_keep(pattern, hashes, position, q, count, seed, blocks=None):
    """Keep flags from the definition: per pattern, sort by (seeded key, position), keep its count."""
    key = [py_mix(int(h) ^ py_mix(seed)) for h in hashes]
    keep = np.zeros(len(pattern), bool)
    by_pattern: dict[int, list[int]] = {}
    for i, p in enumerate(pattern):
        by_pattern.setdefault(int(p), []).append(i)
    kept = py_counts(q, count, blocks)
    for p, members in by_pattern.items():
        assert len(members) == count[p]
        for i in sorted(members, key=lambda i: (key[i], int(position[i])))[:kept[p]]:
            keep[i] = True
    return keep


def test_splitmix64_matches_its_published_sequence():
    # splitmix64's first output from state 0 (its published reference sequence starts 0xE220A8397B1DCDAF)
    assert int(K._mix64(np.array([0], np.uint64))[0]) == 0xE220A8397B1DCDAF == py_mix(0)


@pytest.mark.parametrize("compiled", [True, False])
def test_hash_strings_matches_a_plain_python_implementation(monkeypatch, compiled):
    if compiled:
        pytest.importorskip("numba")
        assert K._hash_kernel() is not None
    else:
        from clipprobe import _jitcache

        monkeypatch.setitem(_jitcache._KERNELS, "clipprobe.analysis._hashkernel", None)
    rng = np.random.default_rng(20)
    values = [None, "", "a", "ab" * 4, "ab" * 4 + "c", "élève 👩‍⚕️", b"\xff\xfe", "x" * 63, "x" * 64, "x" * 65]
    values += [bytes(rng.integers(0, 256, int(rng.integers(0, 40)), dtype=np.uint8)) for _ in range(300)]
    want = np.array([py_hash(v) for v in values], np.uint64)
    np.testing.assert_array_equal(K.content_hashes(values), np.array([py_row_hash(v) for v in values], np.uint64))
    encoded = [b"" if v is None else (v.encode() if isinstance(v, str) else v) for v in values]
    data = np.frombuffer(b"pre" + b"".join(encoded), np.uint8)      # offsets that do not start at 0
    offsets = 3 + np.concatenate([[0], np.cumsum([len(b) for b in encoded])])
    valid = np.array([v is not None for v in values])
    np.testing.assert_array_equal(K.hash_strings(offsets, data, valid), want)
    monkeypatch.setattr(K, "_HASH_BLOCK_BYTES", 7)                 # many blocks, some of one long string
    np.testing.assert_array_equal(K.hash_strings(offsets, data, valid), want)
    # the same text in another column order or with the columns joined gives another hash
    assert K.content_hashes(["a"], ["b"])[0] != K.content_hashes(["b"], ["a"])[0]
    assert K.content_hashes(["ab"], [""])[0] != K.content_hashes(["a"], ["b"])[0]
    assert len(set(want.tolist())) == len(set(encoded) | {None})


def test_keep_counts_round_systematically_within_blocks():
    # one pattern per block: round half up, whatever the last bits of q
    q = np.array([0.5, 0.5, 0.25, 0.0, 1.0, 0.7, 0.45 - 1e-16, 0.45 + 1e-16, 0.3])
    count = np.array([3, 5, 2, 7, 9, 10, 10, 10, 0])
    np.testing.assert_array_equal(K.keep_counts(q, count), [2, 3, 1, 0, 9, 7, 5, 5, 0])
    # five single examples at q = 0.6 in one block keep three, not five (rounding each alone keeps them all)
    np.testing.assert_array_equal(K.keep_counts(np.full(5, 0.6), np.ones(5, int), np.zeros(5)), [1, 0, 1, 0, 1])
    np.testing.assert_array_equal(K.keep_counts(np.full(5, 0.6), np.ones(5, int)), [1, 1, 1, 1, 1])
    rng = np.random.default_rng(21)
    q, count = rng.random(400), rng.integers(0, 6, 400)
    blocks = rng.integers(0, 4, 400)
    got = K.keep_counts(q, count, blocks)
    np.testing.assert_array_equal(got, py_counts(q, count, blocks))
    assert (np.abs(got - q * count) < 1).all()
    for b in range(4):                                   # each block within one example of its q mass
        assert abs(got[blocks == b].sum() - (q * count)[blocks == b].sum()) <= 0.5 + 1e-9


def _keep_case(seed=12, n=6000):
    rng = np.random.default_rng(seed)
    s, y = random_data(rng, n, 2, 2, p_none=0.6)
    table, ids = P.encode_patterns(s, y)
    sol = B.m4_solve(table, "uniform", keep=0.8, eps_r=0.02, eps_a=0.02)
    texts = [f"caption {int(i)}" for i in rng.integers(0, n // 2, n)]     # many repeated captions
    urls = [f"https://x/{i % 997}.jpg" for i in range(n)]
    return s, y, table, ids, sol, texts, urls


def test_keep_flags_keep_round_q_count_of_each_pattern_by_content_rank():
    s, y, table, ids, sol, texts, urls = _keep_case()
    hashes = K.content_hashes(texts, urls)
    q, keep = K.assign_keep(sol, table, ids, hashes, seed=7)
    np.testing.assert_array_equal(q, sol.q[ids])
    want = py_keep(ids, [py_row_hash(t, u) for t, u in zip(texts, urls)], np.arange(len(ids)), sol.q,
                   table.count, 7, py_signature(table))
    np.testing.assert_array_equal(keep, want)
    kept = np.bincount(ids, weights=keep, minlength=table.n_rows)
    np.testing.assert_array_equal(kept, K.flag_counts(sol))
    assert np.abs(kept - sol.q * table.count).max() < 1
    for sig in set(py_signature(table)):                 # each combination of groups: within one caption
        sel = np.array(py_signature(table)) == sig
        assert abs(kept[sel].sum() - (sol.q * table.count)[sel].sum()) <= 0.5 + 1e-9
    # another seed: another set, the same counts; the same content ranks alike wherever it sits
    _, other = K.assign_keep(sol, table, ids, hashes, seed=8)
    assert (other != keep).any()
    np.testing.assert_array_equal(np.bincount(ids, weights=other, minlength=table.n_rows), kept)
    perm = np.random.default_rng(0).permutation(len(ids))
    _, moved = K.assign_keep(sol, table, ids[perm], hashes[perm], seed=7, position=perm)
    np.testing.assert_array_equal(moved, keep[perm])


def test_chunked_rank_passes_equal_the_in_memory_flags():
    """The histogram and boundary passes over chunks (any split, any order) give assign_keep's flags."""
    s, y, table, ids, sol, texts, urls = _keep_case(seed=13, n=9000)
    hashes = K.content_hashes(texts)                                # text only: repeats tie, position decides
    _, want = K.assign_keep(sol, table, ids, hashes, seed=3)
    bounds = [(0, 1234), (1234, 1235), (1235, 7000), (7000, 9000)]
    chunks = []
    for ordinal, (a, b) in enumerate(bounds):                     # each chunk its own file: positions differ
        t, i = P.encode_patterns(s[a:b], y[a:b])
        rows = K.fitted_rows(sol.table, t, i)
        chunks.append((rows, K.rank_keys(hashes[a:b], 3), K.positions(ordinal, np.arange(b - a))))
    ranks = K.rank_plan(K.flag_counts(sol), sol.table.count)
    hist = [K.rank_histogram(ranks, p, k) for p, k, _ in reversed(chunks)]
    ranks = K.rank_boundaries(ranks, np.concatenate([c for c, _ in hist]), np.concatenate([n for _, n in hist]))
    cand = [K.rank_candidates(ranks, *c) for c in chunks[::-1]]
    ranks = K.rank_thresholds(ranks, *(np.concatenate(parts) for parts in zip(*cand)))
    got = np.concatenate([K.rank_keep(ranks, *c) for c in chunks])
    pos = np.concatenate([c[2] for c in chunks])
    want_here = py_keep(ids, [py_row_hash(t) for t in texts], pos, sol.q, table.count, 3, py_signature(table))
    np.testing.assert_array_equal(got, want_here)
    assert ranks.split.any() and sum(len(c[0]) for c in cand) < len(ids) / 4   # few boundary captions
    np.testing.assert_array_equal(np.bincount(ids, weights=got, minlength=table.n_rows), K.flag_counts(sol))
    assert (got != want).sum() < 0.05 * len(ids)       # other positions only reorder repeated captions
    # a chunk missing from the histogram: its patterns do not add up, which is an error
    with pytest.raises(DataError, match="the data changed"):
        K.rank_boundaries(K.rank_plan(K.flag_counts(sol), sol.table.count), *hist[0])


def test_flags_residuals_are_the_constraints_on_the_kept_set():
    s, y, table, ids, sol, texts, urls = _keep_case(seed=14)
    _, keep = K.assign_keep(sol, table, ids, K.content_hashes(texts, urls))
    kept = np.bincount(ids, weights=keep, minlength=table.n_rows)
    res_r, res_a = sol.kept_residuals(kept)
    w, m = membership(s)
    c = w - 0.5 * m[:, None]
    kq = keep.astype(float)
    np.testing.assert_allclose(res_r, kq @ c / (kq @ m))
    for r in range(y.shape[1]):
        np.testing.assert_allclose(res_a[:, r], (kq * y[:, r]) @ c / (kq @ (m * y[:, r])))
    # each combination of groups keeps within half a caption of its q mass: the bound of the representation
    # constraint (two groups: combinations none, Male, Female, both; c = 0 for none and both)
    wp, mp = membership(table.s)
    cp = wp - 0.5 * mp[:, None]
    dq = (sol.q * table.count) @ mp
    n_sig = len(set(py_signature(table)))
    bound = (0.02 * dq + 0.5 * np.abs(cp).max(0) * n_sig) / (dq - 0.5 * n_sig)
    assert (np.abs(res_r) <= bound).all()
    frame = sol.residual_frame(kept=kept)
    np.testing.assert_allclose(frame["residual_kept"].to_numpy()[:2], res_r)
    np.testing.assert_allclose(sol.residual_frame()["residual"], frame["residual"])
    with pytest.raises(DataError):
        sol.kept_residuals(table.count + 1)


def test_assign_keep_needs_all_the_fitted_examples():
    s, y, table, ids, sol, texts, urls = _keep_case(seed=15, n=2000)
    part, part_ids = P.encode_patterns(s[:1000], y[:1000])
    with pytest.raises(DataError) as err:
        K.assign_keep(sol, part, part_ids, K.content_hashes(texts[:1000]))
    assert str(err.value) == K.MSG_ASSIGN_ALL.format(n=1000, fitted=2000)
    with pytest.raises(DataError, match="keys"):
        K.positions(0, np.array([-1]))


def test_unknown_patterns_are_refused():
    s = np.array([[1, 0], [0, 1], [0, 0]])
    y = np.array([[1], [0], [0]])
    table, _ = P.encode_patterns(s, y)
    sol = B.m4_solve(table, "uniform", keep=0.3, eps_r=0.2, eps_a=0.2)
    other, ids = P.encode_patterns(np.array([[0, 0], [1, 1]]), np.array([[0], [1]]))
    with pytest.raises(DataError) as err:
        K.keep_probabilities(sol, other, ids)
    assert str(err.value) == K.MSG_UNKNOWN_PATTERN.format(n=1, row=1)


# ----------------------------------------------------------------------------------------------
# model RB and AB


def test_model_rb_matches_a_direct_count_and_wilson():
    rng = np.random.default_rng(13)
    male, female = rng.normal(size=500), rng.normal(size=500) - 0.2
    female[:3] = male[:3]                              # three ties count half
    got = A.model_rb(male, female)
    wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(male, female))
    assert got.share_male == pytest.approx(wins / 500) and got.rb == pytest.approx(wins / 500 - 0.5)
    lo, hi = proportion_confint(wins, 500, method="wilson")
    assert got.rb_low == pytest.approx(lo - 0.5) and got.rb_high == pytest.approx(hi - 0.5)
    assert got.n_ties == 3


def test_model_ab_matches_a_direct_count_and_newcombe():
    rng = np.random.default_rng(14)
    n = 800
    groups = rng.choice(["Female", "Male", "unknown"], n, p=[0.45, 0.45, 0.1])
    first, second = rng.normal(size=(n, 5)), rng.normal(size=(n, 5))
    first[groups == "Female"] += 0.3
    got = A.model_ab(first, second, groups)
    assert got.pairs == A.DEFAULT_OCCUPATION_PAIRS and got.group_names == ("Female", "Male")
    for j in range(5):
        counts = []
        for g in ("Female", "Male"):
            sel = groups == g
            counts.append((int((first[sel, j] > second[sel, j]).sum()), int(sel.sum())))
        (x1, n1), (x0, n0) = counts
        assert got.share[j, 0] == pytest.approx(x1 / n1) and got.share[j, 1] == pytest.approx(x0 / n0)
        lo, hi = confint_proportions_2indep(x1, n1, x0, n0, method="newcomb", compare="diff")
        assert got.diff_low[j] == pytest.approx(lo) and got.diff_high[j] == pytest.approx(hi)
    assert got.diff.mean() > 0.05
    frame = got.frame()
    assert list(frame["first"]) == [p[0] for p in A.DEFAULT_OCCUPATION_PAIRS] and "diff_low" in frame


def wilson_exact_coverage(n, p):
    x = np.arange(n + 1)
    lo, hi = IV.wilson_interval(x / n, n, Z95)
    return float(binom.pmf(x, n, p)[(lo <= p) & (p <= hi)].sum())


def test_model_interval_coverage():
    # Wilson (model RB and the per-group shares of model AB): exact binomial coverage
    for n in (200, 1000):
        for p in (0.3, 0.4, 0.5, 0.6, 0.7):
            assert 0.93 <= wilson_exact_coverage(n, p) <= 0.97, (n, p)
    # Newcombe (model AB difference): simulation
    rng = np.random.default_rng(15)
    reps = 4000
    for n1, n0, p1, p0 in ((300, 300, 0.6, 0.4), (1000, 800, 0.3, 0.3), (250, 400, 0.7, 0.55)):
        x1, x0 = rng.binomial(n1, p1, reps), rng.binomial(n0, p0, reps)
        l1, h1 = IV.wilson_interval(x1 / n1, n1, Z95)
        l0, h0 = IV.wilson_interval(x0 / n0, n0, Z95)
        lo, hi = IV.newcombe_interval(x1 / n1, l1, h1, x0 / n0, l0, h0)
        cov = ((lo <= p1 - p0) & (p1 - p0 <= hi)).mean()
        assert 0.93 <= cov <= 0.97, (n1, n0, p1, p0, cov)


# ----------------------------------------------------------------------------------------------
# bad input: one-line errors naming the input


def test_bad_indicators_and_utility():
    s = np.array([[1, 0], [0, 2]])
    with pytest.raises(DataError) as err:
        P.encode_patterns(s, np.zeros((2, 1)))
    assert str(err.value) == P.MSG_BINARY.format(name="s", value=2)
    with pytest.raises(DataError) as err:
        P.encode_patterns(np.eye(2), np.zeros((3, 1)))
    assert str(err.value) == P.MSG_ROWS.format(name="y", got=3, other="s", n=2)
    with pytest.raises(DataError) as err:
        P.encode_patterns(np.eye(2), np.zeros((2, 1)), utility=[1.0, -0.5])
    assert str(err.value) == P.MSG_UTILITY.format(row=1, value=-0.5)
    with pytest.raises(DataError, match="row 0 has nan"):
        P.encode_patterns(np.eye(2), np.zeros((2, 1)), utility=[np.nan, 1.0])
    with pytest.raises(DataError) as err:
        P.encode_patterns(np.ones(3), np.zeros((3, 1)))
    assert str(err.value) == P.MSG_NDIM.format(name="s", what="groups", shape=(3,))


def test_bad_targets_and_parameters():
    table, _ = P.encode_patterns(np.eye(2), np.eye(2), groups=["Male", "Female"])
    with pytest.raises(UsageError) as err:
        B.m4_solve(table, {"Male": 0.6, "Female": 0.6})
    assert str(err.value) == B.MSG_TARGET_SUM.format(total=1.2)
    with pytest.raises(UsageError) as err:
        B.m4_solve(table, {"Male": 0.5, "Femal": 0.5})
    assert "unknown group 'Femal' (did you mean 'Female'?)" in str(err.value)
    with pytest.raises(UsageError, match="no share for group"):
        B.m4_solve(table, {"Male": 1.0})
    with pytest.raises(UsageError) as err:
        B.m4_solve(table, [0.5, 0.3, 0.2])
    assert str(err.value) == B.MSG_TARGET_LEN.format(got=3, n=2, groups="'Male', 'Female'")
    with pytest.raises(UsageError, match="not a known target"):
        B.data_bias(table, "equal")
    for name, kwargs in (("keep", {"keep": 0}), ("eps_r", {"eps_r": 1.5}), ("eps_a", {"eps_a": -0.1})):
        with pytest.raises(UsageError) as err:
            B.m4_solve(table, **kwargs)
        assert str(err.value) == B.MSG_UNIT.format(name=name, value=next(iter(kwargs.values())))
    with pytest.raises(UsageError) as err:
        B.m4_solve(table, scale="mean")
    assert str(err.value) == B.MSG_SCALE.format(value="mean", choices="'conditional', 'all'")
    with pytest.raises(DataError, match="one per table row"):
        B.data_bias(table, q=[0.5, 1.2, 0.1][: table.n_rows] + [2.0])
    with pytest.raises(UsageError, match="level=1.5"):
        B.data_bias(table, level=1.5)


def test_bad_model_scores():
    with pytest.raises(DataError, match="female_scores"):
        A.model_rb(np.zeros(4), np.zeros(5))
    with pytest.raises(DataError, match="NaN or infinite"):
        A.model_rb(np.array([0.1, np.nan]), np.zeros(2))
    with pytest.raises(UsageError) as err:
        A.model_ab(np.zeros((4, 2)), np.zeros((4, 2)), ["Female", "Male"] * 2)
    assert str(err.value) == A.MSG_PAIRS.format(got=5, n=2)
    with pytest.raises(DataError) as err:
        A.model_ab(np.zeros((4, 1)), np.zeros((4, 1)), ["Female"] * 4, pairs=[("nurse", "doctor")])
    assert str(err.value) == A.MSG_GROUP_EMPTY.format(group="Male", found="'Female'")


def test_frames_and_degenerate_data():
    rng = np.random.default_rng(16)
    s, y = random_data(rng, 400, 3, 2)
    table, _ = P.encode_patterns(s, y, groups=["a", "b", "c"], labels=["x", "z"])
    bias = B.data_bias(table)
    groups, cells = bias.group_frame(), bias.cell_frame()
    assert list(groups["group"]) == ["a", "b", "c"] and np.allclose(groups["rb"], bias.rb)
    assert cells.shape[0] == 6 and list(cells["label"][:2]) == ["x", "z"]
    assert np.allclose(cells["ab"], bias.ab.ravel())
    sol = B.m4_solve(table, keep=0.5, eps_r=0.05, eps_a=0.1)
    frame = sol.residual_frame()
    assert frame.shape[0] == 3 + 6 and np.allclose(frame["residual"][:3], sol.residual_r)
    assert (np.abs(frame["residual"]) <= frame["bound"] + 1e-9).all()
    # nobody mentions a group: statistics are NaN, nothing can bind, q = keep
    none, _ids = P.encode_patterns(np.zeros((20, 2)), rng.integers(0, 2, (20, 2)))
    empty = B.data_bias(none)
    assert np.isnan(empty.rb).all() and empty.rb_argmax is None and empty.n_mention == 0
    sol = B.m4_solve(none, keep=0.7)
    assert sol.converged and np.allclose(sol.q, 0.7) and sol.max_keep == 1.0 and sol.keep_rate == pytest.approx(0.7)
