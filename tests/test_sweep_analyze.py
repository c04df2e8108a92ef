"""`clipprobe sweep analyze` on generated sweep tables: the paper's coefficients planted over today's zoo are
recovered with the paper's specification (checked against a statsmodels formula refit built as the paper's
notebook builds it), the paper's sign convention by default, one row per checkpoint; a planted data-factor
effect is attributed to the data, not to size; outputs (analysis.parquet, the paper's table, figures, HTML with
every string escaped); one-line errors; a rerun replaces the folder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from clipprobe.pipeline.sweep import PAPER_SIGNS_FORM, analyze_sweep
from clipprobe.report.sweep import (ANALYSIS_COLUMNS, META_COLUMNS, MODEL_COLUMNS, SWEEP_COLUMNS, finish_sweep_table)
from tests.test_sweep import invoke

MIX_EFFECT = {"mix0-low": 0.0, "mix1-mid": 0.4, "mix2-high": 0.9}


def write_sweep(folder, *, n_models: int = 12, seed: int = 0, odd_name: bool = True, report: bool = True):
    """A merged sweep folder whose effect sizes depend on the training-data mix only (planted), with two widths
    (parameters) crossed with the mixes, as the validation zoo of world models."""
    rng = np.random.default_rng(seed)
    models = []
    for i in range(n_models):
        mix = list(MIX_EFFECT)[i % 3]
        width = (0.5, 1.0)[(i // 3) % 2]
        name = f"<script>alert({i})</script>:w{width}" if (odd_name and i == 0) else f"world-{mix}-w{width}-{i}:x.pt"
        models.append({"model": name, "model_key": f"k{i:02d}", "dataset_family": mix, "dataset_size": 8000.0,
                       "arch_family": "ViT", "params_total_m": 1.0 + 0.8 * width + rng.normal(0, 0.01),
                       "vtab_plus": 0.3 + 0.2 * MIX_EFFECT[mix] + rng.normal(0, 0.02),
                       "user_columns": "arch_family;dataset_family;dataset_size;params_total_m;vtab_plus"})
    rows = []
    for t in range(6):
        for order in ("image-text", "text-image"):
            b0 = rng.normal(0.3, 0.3)
            for m in models:
                value = b0 + MIX_EFFECT[m["dataset_family"]] + rng.normal(0, 0.15)
                rows.append({**m, "probe": "eat", "measure": "effect_size", "test": f"word-{t}", "order": order,
                             "category": "", "value": value, "n": 100})
            if report:
                for m in models:
                    rows.append({**m, "probe": "report", "measure": "max_skew_excess", "test": f"cat-{t}",
                                 "order": order, "category": f"cat-{t}",
                                 "value": 0.1 + 0.3 * MIX_EFFECT[m["dataset_family"]] + rng.normal(0, 0.05), "n": 5})
    table = finish_sweep_table([pd.DataFrame(rows)])
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "sweep.parquet")
    model_rows = [{"model": m["model"], "model_key": m["model_key"], "status": "ok", "reason": None, "shard": "1/1",
                   "seconds": 1.0, "arch_family": "ViT", "dataset_family": m["dataset_family"],
                   "params_total_m": m["params_total_m"], "dataset_size": 8000.0, "performance_note": "given"}
                  for m in models]
    model_rows.append({"model": "bad<b>model</b>:x", "model_key": "kbad", "status": "failed",
                       "reason": "ModelError: <no weights> & more", "shard": "1/1", "seconds": 0.0,
                       "arch_family": None, "dataset_family": None, "params_total_m": None, "dataset_size": None,
                       "performance_note": None})
    pd.DataFrame(model_rows, columns=list(MODEL_COLUMNS)).to_parquet(folder / "models.parquet")
    return table


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("analyze") / "zoo"
    table = write_sweep(folder)
    result = analyze_sweep(folder, performance="vtab+", max_scatter=3)
    return folder, table, result


def test_the_planted_data_factor_is_attributed_to_the_data_not_to_size(analysed):
    _, _, result = analysed
    for key in ("eat:effect_size", "report:max_skew_excess"):
        fit = result.fits[key]
        coef = fit.coefficients.set_index("term")
        assert fit.references["dataset_family"] == "mix0-low"    # the first by name
        high, mid = coef.loc["dataset_family[T.mix2-high]"], coef.loc["dataset_family[T.mix1-mid]"]
        assert high["estimate"] > mid["estimate"] > 0
        assert high["p_value"] < 1e-3 and mid["p_value"] < 0.01
        assert coef.loc["log_params", "p_value"] > 0.05
        assert "log_dataset_size" not in coef.index and "architecture_family" not in " ".join(coef.index)
        assert any("log_dataset_size dropped: it does not vary" in n for n in fit.notes)


def test_outputs_are_written(analysed):
    folder, _, result = analysed
    out = folder / "analysis"
    table = pd.read_parquet(out / "analysis.parquet")
    assert list(table.columns) == list(ANALYSIS_COLUMNS)
    assert set(table["section"]) == {"coefficients", "random", "correlations", "notes"}
    corr = table[table["section"] == "correlations"]
    assert len(corr) == 24 and set(corr["performance"]) == {"vtab+"} and set(corr["n_models"]) == {12}
    assert (out / "figures" / "coefficients-eat-effect_size.png").is_file()
    assert (out / "figures" / "coefficients-report-max_skew_excess.pdf").is_file()
    assert len(list((out / "figures").glob("scatter-*.png"))) == 3
    paper = pd.read_csv(out / "mixedlm-eat-effect_size.csv", index_col="term")
    assert list(paper.columns) == ["Coef.", "Std.Err.", "z", "P>|z|", "[0.025", "0.975]"]
    fit = result.fits["eat:effect_size"]
    assert list(paper.index) == list(fit.terms) + ["Group Var", "Group x log_params Cov", "log_params Var"]
    assert result.record["command"] == "sweep analyze" and (out / "run.json").is_file()
    assert {p.name for p in result.files} >= {"analysis.parquet", "analysis.html", "run.json",
                                             "mixedlm-eat-effect_size.csv"}
    assert all(p.is_file() for p in result.files)


def test_every_string_in_the_page_is_escaped(analysed):
    folder, _, _ = analysed
    page = (folder / "analysis" / "analysis.html").read_text(encoding="utf-8")
    assert "<script>" not in page and "<b>model" not in page
    assert "&lt;b&gt;model&lt;/b&gt;" in page and "&lt;no weights&gt; &amp; more" in page


def test_correlations_follow_the_planted_performance(analysed):
    _, _, result = analysed
    c = result.correlations
    eat = c[c["measure"] == "effect_size"]
    assert (eat["pearson_r"] > 0.5).all() and (eat["pearson_q"] < 0.05).all()


def test_too_few_models_is_one_line_saying_how_many(tmp_path):
    folder = tmp_path / "few"
    write_sweep(folder, n_models=4, odd_name=False)
    result = invoke(["sweep", "analyze", str(folder), "--performance", "none", "--min-family-models", "1",
                     "--min-family-rows", "1"])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == ("Error: the mixed model needs at least 5 models with known metadata for its 4 model-level "
                        "terms (Intercept, dataset_family[T.mix1-mid], dataset_family[T.mix2-high], log_params); "
                        "there are 4")


def test_cli_prints_the_coefficients_notes_and_n_per_correlation(tmp_path):
    folder = tmp_path / "cli"
    write_sweep(folder, odd_name=False, report=False)
    result = invoke(["sweep", "analyze", str(folder), "--no-figures", "--performance", "vtab+"])
    assert result.exit_code == 0, result.output
    assert "eat:effect_size: 12 models, 144 rows, 12 groups (sizes per SD of the log)" in result.output
    assert "dataset_family[T.mix2-high]" in result.output
    assert "note: report:max_skew_excess" not in result.output
    assert "eat:effect_size word-0 (image-text): n = 12, r = +" in result.output
    assert result.output.count(": n = 12, r = ") == 12
    result = invoke(["sweep", "analyze", str(folder), "--no-figures", "--performance", "none", "--spec", "per-test"])
    assert result.exit_code == 0 and "(sizes per tenfold)" in result.output
    record = json.loads((folder / "analysis" / "run.json").read_text())
    assert record["config"]["spec"] == "per-test" and record["config"]["settings"]["groups"] == "test"


def test_bad_performance_and_measure_names(tmp_path):
    folder = tmp_path / "names"
    write_sweep(folder, odd_name=False, report=False)
    result = invoke(["sweep", "analyze", str(folder), "--performance", "vtab++"])
    assert result.exit_code == 2 and "unknown performance measure 'vtab++' (did you mean 'vtab+'" in result.output
    result = invoke(["sweep", "analyze", str(folder), "--measure", "report:max_skewness"])
    assert result.exit_code == 2 and "unknown measure 'report:max_skewness'" in result.output


def test_a_user_performance_table_is_joined(tmp_path):
    folder = tmp_path / "perf"
    table = write_sweep(folder, odd_name=False, report=False)
    models = table.drop_duplicates("model")
    perf = tmp_path / "perf.csv"
    pd.DataFrame({"model": models["model"], "my_bench": np.arange(len(models), dtype=float)}).to_csv(perf, index=False)
    result = analyze_sweep(folder, performance="my_bench", performance_csv=str(perf), figures=False,
                           measures=("eat:effect_size",))
    assert set(result.correlations["n_models"]) == {12}


def test_the_merged_table_has_a_fixed_schema(tmp_path):
    table = write_sweep(tmp_path / "s", odd_name=False)
    assert list(table.columns) == list(SWEEP_COLUMNS) + list(META_COLUMNS)


def test_plots_show_the_fitted_numbers(analysed):
    from clipprobe.report.sweep import coefficient_plot, scatter_plot

    _, table, result = analysed
    coefs = result.fits["eat:effect_size"].coefficients
    ax = coefficient_plot(coefs)
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert shown == [t for t in coefs["term"] if t != "Intercept"]
    first = coefs[coefs["term"] == shown[0]].iloc[0]
    assert list(ax.lines[0].get_xdata()) == [first["ci_low"], first["ci_high"]]
    rows = table[(table["probe"] == "eat") & (table["test"] == "word-0") & (table["order"] == "image-text")]
    ax = scatter_plot(rows, "vtab_plus", ylabel="effect size")
    points = np.concatenate([c.get_offsets() for c in ax.collections])
    assert len(points) == 12 and ax.get_ylabel() == "effect size"
    assert sorted(points[:, 1]) == sorted(rows["value"])


# --------------------------------------------------------------------------- the paper's model over today's zoo

# Ghate et al. (NAACL 2025), the fixed effects of their mixed model (PROVENANCE of the EAT reference): dataset
# families against cc12m, architecture families against CoCa (their notebook's table), per SD of the log sizes.
PAPER_DATASET = {"cc12m": 0.0, "commonpool": 0.399, "datacomp": 0.360, "dfn": 0.608, "laion": 0.333,
                 "merged2b": 0.396, "metaclip": 0.314, "openai_wit": 0.351, "webli": 0.387, "yfcc15m": 0.233}
PAPER_ARCH = {"CoCa": 0.0, "ConvNeXt": 0.072, "EVA": 0.077, "Hybrid": 0.093, "NLLB-CLIP": 0.158, "ResNet": 0.072,
              "Specialized ViT": 0.136, "ViT": 0.062, "Other": 0.1}      # Other (MobileCLIP): not in the paper
PAPER_SIZE = {"log_params": 0.010, "log_dataset_size": 0.062}
PAPER_INTERCEPT = 0.262
# Random intercept and slopes per group (the paper's variances; intercept x dataset-size covariance 0.069).
PAPER_RANDOM = np.array([[0.463, 0.003, 0.069], [0.003, 0.004, 0.0], [0.069, 0.0, 0.015]])
NOISE = 0.15     # smaller than the paper's residual SD (0.44) so that one seed resolves every planted term


def paper_arch_family(arch: str) -> str:
    """The paper's notebook's rules, written out here independently of clipprobe's table."""
    if arch.startswith("coca"):
        return "CoCa"
    if arch.startswith("EVA"):
        return "EVA"
    if arch.startswith("nllb"):
        return "NLLB-CLIP"
    if "roberta" in arch:
        return "Hybrid"
    if "convnext" in arch:
        return "ConvNeXt"
    if arch.startswith("RN"):
        return "ResNet"
    if "SO400M" in arch or "SigLIP" in arch or "plus" in arch:
        return "Specialized ViT"
    if arch.startswith("ViT"):
        return "ViT"
    return "Other"


def write_paper_sweep(folder, *, seed: int = 0, stored: str = "raw", form: str | None = None):
    """A merged sweep of every open_clip pair with known metadata, the 26 tests of ghate2025, effect sizes from
    the paper's mixed model (in the paper's sign), stored with the Gender tests' raw sign (``stored="raw"``, a
    default sweep) or the paper's; a pair that loads one checkpoint gets the same effect sizes. A column
    ``planted_perf`` rises with the planted dataset effect."""
    from clipprobe.models.zoo import zoo_table
    from clipprobe.resources.eat import get_suite

    rng = np.random.default_rng(seed)
    zoo = zoo_table(count=False)
    zoo = zoo[zoo["params_total_m"].notna() & zoo["dataset_size"].notna()
              & (zoo["dataset_family"] != "unknown")].reset_index(drop=True)
    keep = zoo[zoo["duplicate_of"].isna() | ~zoo["duplicate_of"].isin(set(zoo["spec"]))]
    z = {}
    for term, column, scale in (("log_params", "params_total_m", 1e6), ("log_dataset_size", "dataset_size", 1.0)):
        logs = np.log(keep[column].to_numpy() * scale)
        z[term] = dict(zip(keep["spec"], (logs - logs.mean()) / logs.std()))
    tests = get_suite("ghate2025").tests
    groups = sorted({(t.family, t.order) for t in tests})
    effects = dict(zip(groups, rng.multivariate_normal(np.zeros(3), PAPER_RANDOM, len(groups))))
    fixed = (PAPER_INTERCEPT + keep["arch"].map(paper_arch_family).map(PAPER_ARCH).to_numpy()
             + keep["dataset_family"].map(PAPER_DATASET).to_numpy())
    zp, zs = (keep["spec"].map(z[t]).to_numpy() for t in ("log_params", "log_dataset_size"))
    perf = 0.3 + 0.4 * keep["dataset_family"].map(PAPER_DATASET).to_numpy() + rng.normal(0, 0.03, len(keep))
    # every name of the zoo reads the values of the checkpoint it loads
    where = {spec: i for i, spec in enumerate(keep["spec"])}
    index = np.array([where[m] if m in where else where[d] for m, d in zip(zoo["spec"], zoo["duplicate_of"])])
    meta = zoo[[c for c in META_COLUMNS if c != "precision"]].reset_index(drop=True)
    frames = []
    for t in tests:
        u0, up, us = effects[(t.family, t.order)]
        values = (fixed + u0 + (PAPER_SIZE["log_params"] + up) * zp + (PAPER_SIZE["log_dataset_size"] + us) * zs
                  + rng.normal(0, NOISE, len(keep)))
        sign = -1.0 if (t.paper_sign == -1 and stored == "raw") else 1.0
        frames.append(meta.assign(model=zoo["spec"].to_numpy(), model_key=zoo["model_key"].to_numpy(), probe="eat",
                                  measure="effect_size", test=t.name, order=t.order, category=t.family,
                                  value=sign * values[index], ci_low=np.nan, ci_high=np.nan, p_value=0.5,
                                  q_value=0.5, n=20, planted_perf=perf[index]))
    table = finish_sweep_table([pd.concat(frames, ignore_index=True)], ["planted_perf"])
    folder.mkdir(parents=True, exist_ok=True)
    table.to_parquet(folder / "sweep.parquet")
    pd.DataFrame({"model": zoo["spec"], "model_key": zoo["model_key"], "status": "ok"}).to_parquet(
        folder / "models.parquet")
    eat = {"suite": None, "tests_file": None, "paper_signs": stored == "paper"}
    if stored == "paper" and form is not None:
        eat["paper_signs_form"] = form
    (folder / "sweep.json").write_text(json.dumps({"settings": {"eat": eat}}))
    return table, keep


@pytest.fixture(scope="module")
def paper_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper") / "zoo"
    table, keep = write_paper_sweep(folder)
    result = analyze_sweep(folder, measures=("eat:effect_size",), figures=False, performance="planted_perf")
    return folder, table, keep, result


def paper_frame(table: pd.DataFrame) -> pd.DataFrame:
    """The paper's modelling frame, built as its notebook builds it: flip the Gender effect sizes, drop rows that
    repeat another model's results, the paper's architecture families (under 30 rows: Other), natural logs
    z-scored with StandardScaler's population SD, groups = order x test family."""
    df = table[table["probe"] == "eat"].copy()
    df.loc[df["category"] == "Gender", "value"] *= -1
    df = df.drop_duplicates(subset=["test", "order", "value"])
    df["architecture_family"] = df["arch"].map(paper_arch_family)
    counts = df["architecture_family"].value_counts()
    df["architecture_family"] = df["architecture_family"].replace(list(counts[counts < 30].index), "Other")
    for name, column in (("log_params", "params_total_m"), ("log_dataset_size", "dataset_size")):
        logs = np.log(df[column].astype(float))
        df[name] = (logs - logs.mean()) / logs.std(ddof=0)
    df["group"] = df["order"] + "_" + df["category"]
    return df.reset_index(drop=True)


def test_the_paper_coefficients_are_recovered_one_checkpoint_each(paper_zoo):
    folder, table, keep, result = paper_zoo
    fit = result.fits["eat:effect_size"]
    assert fit.n_models == len(keep) and fit.n_rows == 26 * len(keep) and fit.n_groups == 20
    assert fit.references == {"arch_family": "CoCa", "dataset_family": "cc12m"}
    coef = fit.coefficients.set_index("term")
    planted = {f"dataset_family[T.{k}]": v for k, v in PAPER_DATASET.items() if k != "cc12m"}
    planted |= {f"architecture_family[T.{k}]": v for k, v in PAPER_ARCH.items() if k != "CoCa"}
    planted |= PAPER_SIZE
    assert set(coef.index) == set(planted) | {"Intercept"}
    for term, truth in planted.items():
        assert abs(coef.loc[term, "estimate"] - truth) < 3.5 * coef.loc[term, "std_error"], (term, coef.loc[term])
    assert coef.loc["dataset_family[T.dfn]", "p_value"] < 1e-3
    # both names of a checkpoint stay in the sweep, marked; the analysis counts the pair once
    same = result.record["same_checkpoint"]
    assert len(same) == len(table["model"].unique()) - len(keep) == 27
    assert same["RN50:openai"] == "RN50-quickgelu:openai"
    assert table.loc[table["model"] == "RN50:openai", "duplicate_of"].eq("RN50-quickgelu:openai").all()
    assert result.record["signs"]["flipped"] == sorted(
        f"{t} ({o})" for t, o in table.loc[table["category"] == "Gender", ["test", "order"]].drop_duplicates()
        .itertuples(index=False))
    assert len(result.record["signs"]["flipped"]) == 6


def test_the_paper_specification_equals_a_statsmodels_refit(paper_zoo):
    import statsmodels.formula.api as smf

    folder, table, _, result = paper_zoo
    frame = paper_frame(table)
    model = smf.mixedlm("value ~ log_params + architecture_family + dataset_family + log_dataset_size", frame,
                        groups=frame["group"], re_formula="~ log_params + log_dataset_size")
    ref = model.fit(reml=True, method="lbfgs", maxiter=1000)
    ours = result.fits["eat:effect_size"].coefficients.set_index("term")
    assert list(ours.index) == list(ref.fe_params.index)
    np.testing.assert_allclose(ours["estimate"], ref.fe_params, atol=1e-3)
    np.testing.assert_allclose(ours["std_error"], ref.bse_fe, rtol=2e-2)
    # --spec paper: the analysis table has the paper's layout, statsmodels' summary table
    paper = pd.read_csv(folder / "analysis" / "mixedlm-eat-effect_size.csv", index_col="term")
    summary = ref.summary().tables[1]
    assert list(paper.index) == list(summary.index) and list(paper.columns) == list(summary.columns)
    np.testing.assert_allclose(paper["Coef."], pd.to_numeric(summary["Coef."]), atol=2e-3)
    # the OLS of the paper's frame without random effects orders the dataset families as the mixed model does
    ols = smf.ols("value ~ log_params + architecture_family + dataset_family + log_dataset_size + group",
                  frame).fit()
    families = [t for t in ours.index if t.startswith("dataset_family")]
    assert np.corrcoef(ols.params[families], ours.loc[families, "estimate"])[0, 1] > 0.95


def test_raw_signs_lose_the_planted_effects_and_flip_the_gender_correlations(paper_zoo):
    folder, _, _, result = paper_zoo
    raw = analyze_sweep(folder, measures=("eat:effect_size",), figures=False, performance="planted_perf",
                        signs="raw", out=folder / "raw")
    assert raw.record["signs"]["flipped"] == [] and raw.record["signs"]["convention"] == "raw"
    paper, wrong = (r.fits["eat:effect_size"].coefficients.set_index("term") for r in (result, raw))
    term = "dataset_family[T.dfn]"
    assert abs(wrong.loc[term, "estimate"] - PAPER_DATASET["dfn"]) > 4 * wrong.loc[term, "std_error"]
    for r, sign in ((result, 1), (raw, -1)):
        c = r.correlations
        gender = c[c["test"].str.startswith("gender")]
        assert len(gender) == 6 and (np.sign(gender["pearson_r"]) == sign).all()
        assert (c.loc[~c["test"].str.startswith("gender"), "pearson_r"] > 0).all()
    assert paper.loc[term, "estimate"] > wrong.loc[term, "estimate"]


def test_a_sweep_stored_with_paper_signs_is_not_flipped_twice(tmp_path, paper_zoo):
    _, _, _, result = paper_zoo
    for i, (form, direction) in enumerate(((PAPER_SIGNS_FORM, "as the tests are defined"), (None, "other direction"))):
        folder = tmp_path / f"paper-signs-{i}"
        # a sweep of this version (d x -1, p as defined) and one of the version that swapped the targets
        write_paper_sweep(folder, stored="paper", form=form)
        again = analyze_sweep(folder, measures=("eat:effect_size",), figures=False, performance=None)
        assert again.record["signs"]["stored"] == "paper" and again.record["signs"]["flipped"] == []
        assert direction in again.record["signs"]["p_values"]
        pd.testing.assert_frame_equal(again.fits["eat:effect_size"].coefficients,
                                      result.fits["eat:effect_size"].coefficients)


def test_correlations_default_to_a_measure_most_models_have(paper_zoo):
    folder, table, keep, _ = paper_zoo
    result = analyze_sweep(folder, measures=("eat:effect_size",), figures=False, out=folder / "avg38")
    c = result.correlations
    assert set(c["performance"]) == {"avg38"}
    # n: the checkpoints with the 38-dataset average (a left-out name lends its published value to the kept one)
    have = set(keep.loc[keep["avg38"].notna(), "spec"])
    lent = {kept for dup, kept in result.record["same_checkpoint"].items()
            if kept not in have and table.loc[table["model"] == dup, "avg38"].notna().any()}
    assert set(c["n_models"]) == {len(have | lent)} and len(have | lent) > 100
    assert result.record["performance_known"] == len(have | lent)
    stored = pd.read_parquet(folder / "avg38" / "analysis.parquet")
    assert set(stored.loc[stored["section"] == "correlations", "n_models"]) == {len(have | lent)}


def test_missing_metadata_names_the_column_and_a_fixed_model_table_updates_the_folder(tmp_path):
    folder = tmp_path / "custom"
    table = write_sweep(folder, odd_name=False, report=False)
    table = table.assign(dataset_size=np.nan, dataset_family=None, user_columns="arch_family;params_total_m")
    table.to_parquet(folder / "sweep.parquet")
    (folder / "analysis").mkdir()
    (folder / "analysis" / "run.json").write_text(json.dumps({"command": "sweep analyze"}))
    (folder / "analysis" / "stale.png").write_bytes(b"old")
    result = invoke(["sweep", "analyze", str(folder), "--performance", "none"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: the mixed model needs params_total_m, dataset_size, arch_family, dataset_family of every model it "
        "fits, and none of the 12 model(s) has all of them: unknown dataset_size for 12; dataset_family for 12; "
        "give them in a model table (columns params_total_m, dataset_size, arch_family, dataset_family)")
    assert (folder / "analysis" / "stale.png").is_file()            # a failed run leaves the last analysis alone
    fixed = tmp_path / "zoo.csv"
    models = table.drop_duplicates("model")
    pd.DataFrame({"spec": models["model"], "dataset_size": 8000.0,
                  "dataset_family": [m.split("-w")[0].removeprefix("world-") for m in models["model"]]}
                 ).to_csv(fixed, index=False)
    result = invoke(["sweep", "analyze", str(folder), "--performance", "none", "--model-table", str(fixed)])
    assert result.exit_code == 0, result.output
    assert "dataset_family[T.mix2-high]" in result.output
    assert not (folder / "analysis" / "stale.png").exists() and (folder / "analysis" / "analysis.html").is_file()
    record = json.loads((folder / "analysis" / "run.json").read_text())
    assert record["config"]["model_tables"] == [str(fixed)] and record["metadata_changed"]["dataset_size"] == 12


def test_an_out_folder_that_is_not_an_analysis_is_refused(tmp_path):
    folder = tmp_path / "s"
    write_sweep(folder, odd_name=False, report=False)
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("keep me")
    result = invoke(["sweep", "analyze", str(folder), "--no-figures", "--out", str(other)])
    assert result.exit_code == 1 and "is not a `sweep analyze` folder" in result.output
    assert (other / "thesis.tex").read_text() == "keep me" and len(list(tmp_path.glob(".mine*"))) == 0


def test_one_per_checkpoint_keeps_one_of_a_pair_and_lends_its_performance():
    from clipprobe.pipeline.sweep import one_per_checkpoint

    t = pd.DataFrame({"model": ["A", "B", "C", "D", "D"], "duplicate_of": ["B", "A", None, "E", "E"],
                      "avg38": [0.5, np.nan, 0.2, 0.1, 0.1], "value": [1.0, 1.0, 2.0, 3.0, 4.0]})
    kept, pairs = one_per_checkpoint(t)
    assert pairs == {"A": "B"}                       # a table naming each for the other keeps one of them
    assert list(kept["model"]) == ["B", "C", "D", "D"] and kept.loc[0, "avg38"] == 0.5   # B had none: A's
