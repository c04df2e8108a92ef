"""The upstream-factor mixed model and the performance correlations, against simulated truth, statsmodels'
formula interface, scipy and statsmodels' multipletests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clipprobe.analysis.factors import (
    FactorSettings,
    fit_factors,
    models_needed,
    performance_correlations,
    pool_families,
)
from clipprobe.errors import DataError, UsageError

FAMILY_EFFECT = {"cc": 0.0, "lai": 0.6, "dfn": 1.0}       # planted dataset-family effects (reference cc)
FAMILY_SIZE = {"cc": 1.2e7, "lai": 4e8, "dfn": 2e9}


def simulate(seed: int = 0, n_models: int = 24, tests: int = 4, orders=("text", "image"), slope_size: float = 0.0,
             slope_params: float = 0.0, noise: float = 0.15):
    """A zoo whose bias depends on the dataset family only (plus per-test random intercepts)."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(n_models):
        family = list(FAMILY_EFFECT)[i % 3]
        models.append({"model": f"m{i:02d}", "dataset_family": family,
                       "dataset_size": FAMILY_SIZE[family] * 10 ** rng.uniform(-0.5, 0.5),
                       "arch_family": ("ViT", "ResNet")[(i // 3) % 2], "params_total_m": 10 ** rng.uniform(1.5, 3.0),
                       "vtab_plus": rng.uniform(0.3, 0.6)})
    rows = []
    for t in range(tests):
        for order in orders:
            b0 = rng.normal(0, 0.4)
            for m in models:
                value = (b0 + FAMILY_EFFECT[m["dataset_family"]] + slope_size * np.log10(m["dataset_size"])
                         + slope_params * np.log10(m["params_total_m"] * 1e6) + rng.normal(0, noise))
                rows.append({**m, "test": f"t{t}", "order": order, "value": value})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def sim():
    return simulate()


@pytest.fixture(scope="module")
def fit(sim):
    return fit_factors(sim, settings=FactorSettings(min_family_rows=10))


def test_planted_family_effects_are_recovered(fit):
    coef = fit.coefficients.set_index("term")
    # cc: the smallest datasets; ResNet: as many rows as ViT, first by name
    assert fit.references == {"arch_family": "ResNet", "dataset_family": "cc"}
    for family, truth in FAMILY_EFFECT.items():
        if family == "cc":
            continue
        row = coef.loc[f"dataset_family[{family}]"]
        assert row["ci_low"] <= truth <= row["ci_high"]
        assert row["p_value"] < 1e-3
    for term in ("log_params", "arch_family[ViT]"):
        assert coef.loc[term, "ci_low"] <= 0 <= coef.loc[term, "ci_high"]
    assert fit.n_models == 24 and fit.n_groups == 8 and fit.n_rows == 192
    assert list(fit.random["component"]) == ["Intercept", "z(log_params)", "z(log_dataset_size)", "residual"]


def test_wiring_equals_statsmodels_formula_interface(sim, fit):
    import statsmodels.formula.api as smf

    d = sim.copy()
    d["log_params"] = np.log10(d["params_total_m"] * 1e6)
    d["log_dataset_size"] = np.log10(d["dataset_size"])
    d["z_p"] = (d["log_params"] - d["log_params"].mean()) / d["log_params"].std()
    d["z_s"] = (d["log_dataset_size"] - d["log_dataset_size"].mean()) / d["log_dataset_size"].std()
    d["g"] = d["test"] + " | " + d["order"]
    model = smf.mixedlm("value ~ log_params + C(arch_family, Treatment('ResNet')) + C(dataset_family, Treatment('cc'))"
                        " + log_dataset_size", d, groups=d["g"], re_formula="~ z_p + z_s")
    ref = model.fit(reml=True, method=["lbfgs", "powell", "cg"])
    ours = fit.coefficients.set_index("term")["estimate"]
    theirs = ref.fe_params
    assert ours["log_params"] == pytest.approx(theirs["log_params"], abs=2e-3)
    assert ours["log_dataset_size"] == pytest.approx(theirs["log_dataset_size"], abs=2e-3)
    assert ours["dataset_family[dfn]"] == pytest.approx(theirs["C(dataset_family, Treatment('cc'))[T.dfn]"], abs=2e-3)
    assert ours["arch_family[ViT]"] == pytest.approx(theirs["C(arch_family, Treatment('ResNet'))[T.ViT]"], abs=2e-3)
    assert fit.converged and fit.coefficients["std_error"].notna().all()


def test_a_planted_size_slope_is_found_and_params_are_not():
    d = simulate(seed=3, slope_size=0.3)
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=10))
    coef = fit.coefficients.set_index("term")
    assert coef.loc["log_dataset_size", "ci_low"] <= 0.3 <= coef.loc["log_dataset_size", "ci_high"]
    assert coef.loc["log_dataset_size", "p_value"] < 0.05
    assert coef.loc["log_params", "p_value"] > 0.01


def test_small_families_are_pooled_with_a_note():
    d = simulate(seed=1)
    d.loc[d["model"] == "m00", "dataset_family"] = "rare"
    d.loc[d["model"] == "m00", "dataset_size"] = 3e6
    series, small = pool_families(d, "dataset_family", min_rows=30, min_models=2)
    assert small == ["rare"] and set(series[d["model"] == "m00"]) == {"other"}
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=30))
    assert fit.pooled == {"dataset_family": ("rare",)}
    assert any("pooled as 'other'" in n and "rare" in n for n in fit.notes)
    assert "dataset_family[other]" in set(fit.coefficients["term"]) or fit.references["dataset_family"] == "other"


def test_terms_that_do_not_vary_are_dropped_with_a_note():
    d = simulate(seed=2, n_models=9)
    d["dataset_size"] = 1e9                   # one size for every model
    d["arch_family"] = "ViT"
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=5))
    assert "log_dataset_size" not in fit.terms and "z(log_dataset_size)" not in set(fit.random["component"])
    assert any(n == "term log_dataset_size dropped: it does not vary across the models fitted" for n in fit.notes)
    assert fit.terms == ("Intercept", "log_params", "dataset_family[dfn]", "dataset_family[lai]")


def test_too_few_models_says_how_many_are_needed():
    d = simulate(seed=4, n_models=5)
    with pytest.raises(DataError) as err:
        fit_factors(d, settings=FactorSettings(min_family_rows=1, min_family_models=1))
    message = str(err.value)
    assert message.startswith("the mixed model needs at least 7 models with known metadata for its 6 model-level "
                              "terms (Intercept, log_params, arch_family[ResNet], dataset_family[dfn], "
                              "dataset_family[lai], log_dataset_size); there are 5")
    assert models_needed(d, settings=FactorSettings(min_family_rows=1, min_family_models=1)) == 7


def test_models_without_metadata_are_left_out_and_named():
    d = simulate(seed=5)
    d.loc[d["model"] == "m03", "dataset_size"] = np.nan
    d.loc[d["model"] == "m04", "dataset_family"] = "unknown"
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=10))
    assert fit.n_models == 22
    assert "2 model(s) left out for unknown parameters, dataset size or family: m03, m04" in fit.notes


def test_bad_settings_are_usage_errors(sim):
    with pytest.raises(UsageError, match="min_family_rows must be a whole number of at least 1, got 0"):
        fit_factors(sim, settings=FactorSettings(min_family_rows=0))
    with pytest.raises(UsageError, match="reference dataset family 'nope' is not among the families fitted"):
        fit_factors(sim, settings=FactorSettings(min_family_rows=10, reference_dataset_family="nope"))
    with pytest.raises(DataError, match="factor table lacks column"):
        fit_factors(sim.drop(columns=["dataset_size"]))


def test_correlations_equal_scipy_and_q_values_equal_multipletests(sim):
    from statsmodels.stats.multitest import multipletests

    d = sim.copy()
    # a planted correlation in one test, ties in another
    d.loc[d["test"] == "t0", "value"] = d.loc[d["test"] == "t0", "vtab_plus"] * 3 + np.random.default_rng(0).normal(
        0, 0.05, (d["test"] == "t0").sum())
    d.loc[d["test"] == "t1", "value"] = np.round(d.loc[d["test"] == "t1", "value"], 0)
    corr = performance_correlations(d, "vtab_plus")
    assert len(corr) == 8
    for r in corr.itertuples(index=False):
        part = d[(d["test"] == r.test) & (d["order"] == r.order)].sort_values("model")
        pr = stats.pearsonr(part["vtab_plus"], part["value"])
        sr = stats.spearmanr(part["vtab_plus"], part["value"])
        assert r.pearson_r == pytest.approx(pr.statistic, abs=1e-12)
        assert r.pearson_p == pytest.approx(pr.pvalue, rel=1e-9)
        assert r.spearman_rho == pytest.approx(sr.statistic, abs=1e-12)
        assert r.spearman_p == pytest.approx(sr.pvalue, rel=1e-9)
        assert r.n_models == 24
    np.testing.assert_allclose(corr["pearson_q"], multipletests(corr["pearson_p"], method="fdr_bh")[1], rtol=1e-12)
    np.testing.assert_allclose(corr["spearman_q"], multipletests(corr["spearman_p"], method="fdr_bh")[1], rtol=1e-12)
    top = corr[corr["test"] == "t0"]
    assert (top["pearson_r"] > 0.9).all() and (top["pearson_q"] < 1e-6).all()


def test_correlations_need_three_models():
    d = simulate(seed=6, n_models=2, tests=1, orders=("text",))
    corr = performance_correlations(d, "vtab_plus")
    assert corr["n_models"].tolist() == [2] and corr["pearson_r"].isna().all() and corr["pearson_q"].isna().all()
