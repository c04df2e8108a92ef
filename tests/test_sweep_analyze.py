"""`clipprobe sweep analyze` on generated sweep tables: a planted data-factor effect is attributed to the data,
not to size; outputs (analysis.parquet, figures, HTML with every string escaped); one-line errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipprobe.pipeline.sweep import analyze_sweep
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
                       "vtab_plus": 0.3 + 0.2 * MIX_EFFECT[mix] + rng.normal(0, 0.02)})
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
        assert fit.references["dataset_family"] == "mix0-low"    # equal sizes: the first by name
        high, mid = coef.loc["dataset_family[mix2-high]"], coef.loc["dataset_family[mix1-mid]"]
        assert high["estimate"] > mid["estimate"] > 0
        assert high["p_value"] < 1e-3 and mid["p_value"] < 0.01
        assert coef.loc["log_params", "p_value"] > 0.05
        assert "log_dataset_size" not in coef.index and "arch_family" not in " ".join(coef.index)
        assert any("log_dataset_size dropped: it does not vary" in n for n in fit.notes)


def test_outputs_are_written(analysed):
    folder, _, result = analysed
    out = folder / "analysis"
    table = pd.read_parquet(out / "analysis.parquet")
    assert list(table.columns) == list(ANALYSIS_COLUMNS)
    assert set(table["section"]) == {"coefficients", "random", "correlations", "notes"}
    corr = table[table["section"] == "correlations"]
    assert len(corr) == 24 and set(corr["performance"]) == {"vtab+"}
    assert (out / "figures" / "coefficients-eat-effect_size.png").is_file()
    assert (out / "figures" / "coefficients-report-max_skew_excess.pdf").is_file()
    assert len(list((out / "figures").glob("scatter-*.png"))) == 3
    assert result.record["command"] == "sweep analyze" and (out / "run.json").is_file()


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
                        "terms (Intercept, log_params, dataset_family[mix1-mid], dataset_family[mix2-high]); "
                        "there are 4")


def test_cli_prints_the_coefficients_and_notes(tmp_path):
    folder = tmp_path / "cli"
    write_sweep(folder, odd_name=False, report=False)
    result = invoke(["sweep", "analyze", str(folder), "--no-figures"])
    assert result.exit_code == 0, result.output
    assert "eat:effect_size: 12 models, 144 rows, 12 groups" in result.output
    assert "dataset_family[mix2-high]" in result.output
    assert "note: report:max_skew_excess" not in result.output


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
