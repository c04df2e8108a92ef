"""The upstream-factor mixed model and the performance correlations, against simulated truth, a statsmodels
formula refit of the paper's specification (its summary table as the layout), scipy and statsmodels'
multipletests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from clipprobe.analysis.factors import (
    SPECS,
    FactorSettings,
    fit_factors,
    models_needed,
    paper_table,
    performance_correlations,
    pool_families,
)
from clipprobe.errors import DataError, UsageError

FAMILY_EFFECT = {"cc": 0.0, "lai": 0.6, "dfn": 1.0}       # planted dataset-family effects (reference cc)
FAMILY_SIZE = {"cc": 1.2e7, "lai": 4e8, "dfn": 2e9}
CATEGORY = {"t0": "A", "t1": "A", "t2": "B", "t3": "C"}   # two tests of one family share a group, as in the paper


def simulate(seed: int = 0, n_models: int = 24, tests: int = 4, orders=("text", "image"), slope_size: float = 0.0,
             slope_params: float = 0.0, noise: float = 0.15, random_slopes: float = 0.0):
    """A zoo whose bias depends on the dataset family only, plus per-test random intercepts (and, with
    ``random_slopes``, per-group random slopes on the z-scored log sizes)."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(n_models):
        family = list(FAMILY_EFFECT)[i % 3]
        models.append({"model": f"m{i:02d}", "dataset_family": family,
                       "dataset_size": FAMILY_SIZE[family] * 10 ** rng.uniform(-0.5, 0.5),
                       "arch_family": ("ViT", "ResNet")[(i // 3) % 2], "params_total_m": 10 ** rng.uniform(1.5, 3.0),
                       "vtab_plus": rng.uniform(0.3, 0.6)})
    z = {c: np.log([m[c] for m in models]) for c in ("params_total_m", "dataset_size")}
    z = {c: (v - v.mean()) / v.std() for c, v in z.items()}
    rows = []
    for t in range(tests):
        for order in orders:
            b0 = rng.normal(0, 0.4)
            bp, bs = rng.normal(0, random_slopes, 2) if random_slopes else (0.0, 0.0)
            for i, m in enumerate(models):
                value = (b0 + FAMILY_EFFECT[m["dataset_family"]] + slope_size * np.log10(m["dataset_size"])
                         + slope_params * np.log10(m["params_total_m"] * 1e6) + rng.normal(0, noise)
                         + bp * z["params_total_m"][i] + bs * z["dataset_size"][i])
                rows.append({**m, "test": f"t{t}", "category": CATEGORY.get(f"t{t}", f"t{t}"), "order": order,
                             "value": value})
    return pd.DataFrame(rows)


def paper_frame(d: pd.DataFrame) -> pd.DataFrame:
    """The paper's modelling frame, built as its notebook does: natural logs, z-scored over the rows with the
    population SD (StandardScaler), groups = test family x order."""
    out = d.rename(columns={"arch_family": "architecture_family"}).copy()
    for name, column, scale in (("log_params", "params_total_m", 1e6), ("log_dataset_size", "dataset_size", 1.0)):
        logs = np.log(out[column] * scale)
        out[name] = (logs - logs.mean()) / logs.std(ddof=0)
    out["group"] = out["order"].astype(str) + "_" + out["category"].astype(str)
    return out


def paper_refit(d: pd.DataFrame):
    import statsmodels.formula.api as smf

    frame = paper_frame(d)
    model = smf.mixedlm("value ~ log_params + architecture_family + dataset_family + log_dataset_size", frame,
                        groups=frame["group"], re_formula="~ log_params + log_dataset_size")
    return model.fit(reml=True, method="lbfgs", maxiter=1000)


@pytest.fixture(scope="module")
def sim():
    return simulate()


@pytest.fixture(scope="module")
def fit(sim):
    return fit_factors(sim, settings=FactorSettings(min_family_rows=10))


def test_planted_family_effects_are_recovered(fit):
    coef = fit.coefficients.set_index("term")
    # first levels by name, as statsmodels' default (the paper's cc12m and CoCa)
    assert fit.references == {"arch_family": "ResNet", "dataset_family": "cc"}
    for family, truth in FAMILY_EFFECT.items():
        if family == "cc":
            continue
        row = coef.loc[f"dataset_family[T.{family}]"]
        assert row["ci_low"] <= truth <= row["ci_high"]
        assert row["p_value"] < 1e-3
    for term in ("log_params", "architecture_family[T.ViT]"):
        assert coef.loc[term, "ci_low"] <= 0 <= coef.loc[term, "ci_high"]
    assert fit.n_models == 24 and fit.n_groups == 6 and fit.n_rows == 192      # 3 test families x 2 orders
    assert list(fit.random["component"]) == ["Group Var", "Group x log_params Cov", "log_params Var",
                                             "Group x log_dataset_size Cov", "log_params x log_dataset_size Cov",
                                             "log_dataset_size Var", "Scale"]


@pytest.fixture(scope="module")
def interior():
    """Random slopes planted over 12 groups: the optimum is interior, so every estimate and SE is defined."""
    sim = simulate(seed=11, n_models=30, tests=6, random_slopes=0.2)
    sim["category"] = sim["test"]
    return sim, fit_factors(sim, settings=FactorSettings(min_family_rows=10))


def test_the_paper_specification_equals_a_statsmodels_formula_refit(interior):
    sim, fit = interior
    ref = paper_refit(sim)
    assert ref.converged and fit.converged
    ours = fit.coefficients.set_index("term")
    assert list(ours.index) == list(ref.fe_params.index)                  # the formula's names and order
    np.testing.assert_allclose(ours["estimate"], ref.fe_params, atol=2e-4)
    np.testing.assert_allclose(ours["std_error"], ref.bse_fe, rtol=2e-3)
    np.testing.assert_allclose(ours["p_value"], ref.pvalues[:len(ours)], atol=2e-4)
    # the paper's table is statsmodels' summary table: same rows, same numbers (printed to 3 decimals)
    theirs = ref.summary().tables[1]
    table = paper_table(fit)
    assert list(table.index) == list(theirs.index) and list(table.columns) == list(theirs.columns)
    for column in table.columns:
        printed = pd.to_numeric(theirs[column].replace("", np.nan))
        np.testing.assert_allclose(table[column].astype(float), printed, atol=1.5e-3)
    assert float(fit.random.set_index("component").loc["Scale", "estimate"]) == pytest.approx(ref.scale, rel=1e-3)


def test_the_log10_form_is_the_same_model_per_tenfold(interior):
    sim, fit = interior
    per_tenfold = fit_factors(sim, settings=FactorSettings(min_family_rows=10, size_units="log10"))
    sd = fit.coefficients.set_index("term")["estimate"]
    ten = per_tenfold.coefficients.set_index("term")["estimate"]
    for term, column, scale in (("log_params", "params_total_m", 1e6), ("log_dataset_size", "dataset_size", 1.0)):
        sd_log10 = np.log10(sim[column] * scale).std(ddof=0)
        assert ten[term] == pytest.approx(sd[term] / sd_log10, rel=5e-3, abs=1e-4)
        assert fit.sizes[term]["sd"] == pytest.approx(sd_log10 * np.log(10))
    # the families do not depend on the units of the sizes
    assert ten["dataset_family[T.dfn]"] == pytest.approx(sd["dataset_family[T.dfn]"], abs=1e-3)


def test_per_test_groups_give_each_test_its_own_group(sim):
    fit = fit_factors(sim, settings=SPECS["per-test"])
    assert fit.n_groups == 8 and fit.settings.size_units == "log10"


def test_a_planted_size_slope_is_found_and_params_are_not():
    d = simulate(seed=3, slope_size=0.3, random_slopes=0.1)
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=10, size_units="log10"))
    coef = fit.coefficients.set_index("term")
    assert coef.loc["log_dataset_size", "ci_low"] <= 0.3 <= coef.loc["log_dataset_size", "ci_high"]
    assert coef.loc["log_dataset_size", "p_value"] < 0.05
    assert coef.loc["log_params", "p_value"] > 0.01


def test_only_architectures_are_pooled_as_the_paper_does():
    d = simulate(seed=1)
    one = d["model"] == "m00"
    d.loc[one, ["dataset_family", "dataset_size"]] = ["rare", 3e6]
    d.loc[d["model"] == "m01", "arch_family"] = "Odd"
    series, small = pool_families(d, "dataset_family", min_rows=30, min_models=2)
    assert small == ["rare"] and set(series[one]) == {"Other"}
    fit = fit_factors(d)                          # the paper: 30 rows, architectures only
    assert fit.pooled == {"arch_family": ("Odd",)}
    assert any("architecture family pooled as 'Other'" in n and "Odd" in n for n in fit.notes)
    assert "dataset_family[T.rare]" in set(fit.coefficients["term"])
    both = fit_factors(d, settings=FactorSettings(pool=("arch_family", "dataset_family")))
    assert both.pooled == {"arch_family": ("Odd",), "dataset_family": ("rare",)}
    assert "dataset_family[T.Other]" in set(both.coefficients["term"]) and both.references["dataset_family"] == "cc"


def test_the_two_model_rule_counts_checkpoints():
    d = simulate(seed=7)
    copy = d[d["model"] == "m00"].assign(model="m00-again")      # one checkpoint under two names
    d = pd.concat([d, copy], ignore_index=True)
    d.loc[d["model"].isin(["m00", "m00-again"]), "arch_family"] = "Pair"
    assert "Pair" not in pool_families(d, "arch_family", min_rows=10, min_models=2)[1]
    d["checkpoint"] = d["model"].replace({"m00-again": "m00"})
    assert pool_families(d, "arch_family", min_rows=10, min_models=2)[1] == ["Pair"]
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=10))
    assert fit.pooled == {"arch_family": ("Pair",)} and fit.n_models == 24


def test_terms_that_do_not_vary_are_dropped_with_a_note():
    d = simulate(seed=2, n_models=9)
    d["dataset_size"] = 1e9                   # one size for every model
    d["arch_family"] = "ViT"
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=5))
    assert "log_dataset_size" not in fit.terms and "log_dataset_size Var" not in set(fit.random["component"])
    assert any(n == "term log_dataset_size dropped: it does not vary across the models fitted" for n in fit.notes)
    assert fit.terms == ("Intercept", "dataset_family[T.dfn]", "dataset_family[T.lai]", "log_params")


def test_too_few_models_says_how_many_are_needed():
    d = simulate(seed=4, n_models=5)
    settings = FactorSettings(min_family_rows=1, min_family_models=1)
    with pytest.raises(DataError) as err:
        fit_factors(d, settings=settings)
    message = str(err.value)
    assert message.startswith("the mixed model needs at least 7 models with known metadata for its 6 model-level "
                              "terms (Intercept, architecture_family[T.ViT], dataset_family[T.dfn], "
                              "dataset_family[T.lai], log_params, log_dataset_size); there are 5")
    assert models_needed(d, settings=settings) == 7


def test_models_without_metadata_are_left_out_and_named():
    d = simulate(seed=5)
    d.loc[d["model"] == "m03", "dataset_size"] = np.nan
    d.loc[d["model"] == "m04", "dataset_family"] = "unknown"
    fit = fit_factors(d, settings=FactorSettings(min_family_rows=10))
    assert fit.n_models == 22
    assert ("2 model(s) left out for unknown metadata (dataset_size for 1; dataset_family for 1): m03, m04"
            in fit.notes)


def test_no_model_with_metadata_names_the_missing_columns():
    d = simulate(seed=5, n_models=6)
    d["dataset_size"] = np.nan
    d.loc[d["model"] == "m01", "params_total_m"] = None
    with pytest.raises(DataError) as err:
        fit_factors(d)
    assert str(err.value) == (
        "the mixed model needs params_total_m, dataset_size, arch_family, dataset_family of every model it fits, "
        "and none of the 6 model(s) has all of them: unknown params_total_m for 1; dataset_size for 6; give them "
        "in a model table (columns params_total_m, dataset_size, arch_family, dataset_family)")


def test_bad_settings_are_usage_errors(sim):
    with pytest.raises(UsageError, match="min_family_rows must be a whole number of at least 1, got 0"):
        fit_factors(sim, settings=FactorSettings(min_family_rows=0))
    with pytest.raises(UsageError, match="reference dataset family 'nope' is not among the families fitted"):
        fit_factors(sim, settings=FactorSettings(min_family_rows=10, reference_dataset_family="nope"))
    with pytest.raises(UsageError, match="size_units must be one of sd, log10, not 'log2'"):
        fit_factors(sim, settings=FactorSettings(size_units="log2"))
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
