"""`clipprobe subsets compare`: the same subsets for several models, and whether their ranking survives."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from scipy import stats

from facegen import write_fairface
from test_subsets_cli import WORDS, _root_group

N_MODELS = 4


def _sweep(tmp, n_models):
    """A sweep-like folder of tiny random models' reports (and one failed model), on one dataset."""
    from tinyclip import write_tiny_model

    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.pipeline.report import ReportConfig, run_report

    root = write_fairface(tmp / "fairface", n=150)
    tax = tmp / "small.yaml"
    tax.write_text(WORDS)
    folder = tmp / "zoo"
    specs = {}
    for i in range(n_models):
        config, weights, arch = write_tiny_model(tmp / f"model{i}", seed=i)
        key = f"tiny-{i}"
        probe = ProbeConfig(model=f"{arch}:{weights}", model_config=str(config), dataset=f"fairface:{root}",
                            cache_dir=str(tmp / "cache"), device="cpu", num_workers=0)
        run_report(ReportConfig(probe=probe, out=str(folder / "models" / key / "report"), taxonomy=str(tax), k=12,
                                attributes=("race", "gender"), bootstrap=0, permutations=50, controls=None,
                                figures=False, html=False))
        (folder / "models" / key / "run.json").write_text(json.dumps({"status": "ok"}))
        specs[key] = f"{arch}:{weights}"
    failed = folder / "models" / "broken"
    shutil.copytree(folder / "models" / "tiny-0" / "report", failed / "report")
    (failed / "run.json").write_text(json.dumps({"status": "failed", "reason": "out of memory"}))
    return {"tmp": tmp, "folder": folder, "specs": specs, "group": _root_group()}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("compare"), N_MODELS)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    return _sweep(tmp_path_factory.mktemp("compare2"), 2)


@pytest.mark.slow
def test_compare_a_sweep(sweep):
    tmp, folder = sweep["tmp"], sweep["folder"]
    rng = np.random.default_rng(0)
    keys = sorted(sweep["specs"])
    downstream = pd.DataFrame({"model": [sweep["specs"][keys[0]], *keys[1:], "not-compared"],
                               "vqa_bias": rng.standard_normal(N_MODELS + 1)})
    measures = tmp / "downstream.csv"
    downstream.to_csv(measures, index=False)
    r = CliRunner().invoke(sweep["group"], ["subsets", "compare", str(folder), "--by", "kmeans:3", "--min-size", "30",
                                            "--measures", str(measures), "--permutations", "999", "--no-figures"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    out = folder / "subsets-compare"
    run = json.loads((out / "run.json").read_text())
    assert [m["name"] for m in run["models"]] == keys                  # the failed model is left out
    assert run["command"] == "subsets compare" and run["cluster_model"] == keys[0]
    per_model = pd.read_parquet(out / "model_measures.parquet")
    transfer = pd.read_parquet(out / "transfer.parquet")
    assert set(per_model["model"]) == set(keys)
    assert len(transfer) == 2 * 3 * len(run["subsets"]) and (transfer["n_models"] == N_MODELS).all()
    # each model's global values are its own report's numbers
    for key in keys:
        words = pd.read_parquet(folder / "models" / key / "report" / "words.parquet")
        for attribute in ("race", "gender"):
            mine = per_model[(per_model["model"] == key) & (per_model["subset"] == "all")
                             & (per_model["attribute"] == attribute)].set_index("statistic")["value"]
            part = words[words["attribute"] == attribute]
            assert mine["max_skew_excess"] == pytest.approx(part["max_skew_excess"].mean())
            assert mine["share_flagged"] == pytest.approx((part["n_flagged"] > 0).mean())
    # rho of each row against scipy
    for row in transfer.itertuples():
        wide = per_model[(per_model["attribute"] == row.attribute) & (per_model["statistic"] == row.statistic)]
        wide = wide.pivot(index="model", columns="subset", values="value")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            expected = stats.spearmanr(wide["all"], wide[row.subset]).statistic
        assert row.rho == pytest.approx(expected, nan_ok=True)
    # the user's measure against clipprobe's global measures (a spec in the CSV matches its model)
    corr = pd.read_parquet(out / "correlations.parquet")
    row = corr[(corr["measure_a"] == "vqa_bias") & (corr["measure_b"] == "clipprobe:kl_recall:race")].iloc[0]
    glob = per_model[(per_model["subset"] == "all") & (per_model["attribute"] == "race")
                     & (per_model["statistic"] == "kl_recall")].set_index("model")["value"]
    user = downstream.assign(model=[keys[0], *keys[1:], "not-compared"]).set_index("model")["vqa_bias"]
    assert row["n_models"] == N_MODELS
    assert row["rho"] == pytest.approx(stats.spearmanr(glob[keys], user[keys]).statistic)
    assert any("not-compared" in n for n in run["notes"])
    assert (out / "compare.html").is_file() and (out / "assignment.parquet").is_file()


def test_compare_report_folders_and_errors(two):
    folder, group = two["folder"], two["group"]
    reports = [str(folder / "models" / k / "report") for k in sorted(two["specs"])]
    out = two["tmp"] / "two"
    r = CliRunner().invoke(group, ["subsets", "compare", *reports, "--by", "attribute:gender", "--min-size", "20",
                                   "--out", str(out), "--no-figures", "--no-html", "--statistics", "kl_recall"])
    assert r.exit_code == 0, r.output
    transfer = pd.read_parquet(out / "transfer.parquet")
    assert (transfer["n_models"] == 2).all() and transfer["rho"].isna().all()   # too few models for a rho
    default = two["tmp"] / "two-default"         # no --min-size: twice the largest k the reports recorded
    r = CliRunner().invoke(group, ["subsets", "compare", *reports, "--by", "attribute:gender", "--out", str(default),
                                   "--no-figures", "--no-html", "--statistics", "kl_recall"])
    assert r.exit_code == 0, r.output
    k = max(json.loads((Path(p) / "run.json").read_text())["k"] for p in reports)
    assert json.loads((default / "run.json").read_text())["config"]["min_size"] == 2 * k
    r = CliRunner().invoke(group, ["subsets", "compare", reports[0], "--out", str(out)])
    assert r.exit_code == 2 and "compare needs at least two models' report folders, got 1" in r.output
    r = CliRunner().invoke(group, ["subsets", "compare", *reports])
    assert r.exit_code == 2 and "--out is required unless the one source is a sweep folder" in r.output
    r = CliRunner().invoke(group, ["subsets", "compare", *reports, str(two["tmp"]), "--out", str(out)])
    assert r.exit_code == 1 and "is neither a report folder" in r.output
    r = CliRunner().invoke(group, ["subsets", "compare", *reports, "--out", str(out), "--cluster-model", "tiny-9"])
    assert r.exit_code == 2 and "cluster_model 'tiny-9' is not one of the models" in r.output
    r = CliRunner().invoke(group, ["subsets", "compare", *reports, "--out", str(out), "--statistics", "max_skw"])
    assert r.exit_code == 1 and "unknown statistic 'max_skw'" in r.output
