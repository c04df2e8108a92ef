"""`balance attributes` and `balance measure|fit --attribute-source images|both` through the CLI, with the
tiny CLIP: the image route equals the composable one (the pass's shard files with --attribute-column), the
classifier's accuracy is stored with the run, and bad option combinations fail in one line."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe.cli import cli

N = 240
CAPTIONS = ("a woman reading a book", "a man and a woman at work", "a photo of a dog", "the man at work",
            "ladies reading", "a doctor at work")


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_files):
    from facegen import write_fairface

    from clipprobe.embeddings.external import write_embedding_folder

    root = tmp_path_factory.mktemp("balimg")
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((N, 32)).astype(np.float16)
    meta = pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(N)],
                         "caption": [CAPTIONS[i % len(CAPTIONS)] for i in range(N)],
                         "url": [f"https://x.invalid/{i}.jpg" for i in range(N)]})
    write_embedding_folder(root / "emb", [(emb[:120], meta[:120]), (emb[120:], meta[120:].reset_index(drop=True))])
    write_fairface(root / "ff", n=28)
    (root / "labels.txt").write_text("reading\nwork\ndoctor\ndog\n")
    config, weights, arch = tiny_model_files
    model = ["--model", f"{arch}:{weights}", "--model-config", str(config), "--device", "cpu",
             "--cache-dir", str(root / "cache")]
    return {"root": root, "model": model}


def _run(args):
    result = CliRunner().invoke(cli, args, catch_exceptions=False)
    return result


def _weights(folder):
    table = pd.read_parquet(folder / "weights.parquet")
    return table.sort_values(["file", "row"]).reset_index(drop=True)


def test_fit_from_images_equals_the_attribute_column_route(setup, tmp_path):
    root = setup["root"]
    common = ["--labels", str(root / "labels.txt"), "--keep", "0.4", "--eps-r", "0.05", "--eps-a", "0.05",
              "--no-figure"]
    r = _run(["balance", "fit", "--attribute-source", "images", "--embeddings", str(root / "emb"),
              "--dataset", f"fairface:{root / 'ff'}", "--out", str(tmp_path / "img"), *setup["model"], *common])
    assert r.exit_code == 0, r.output
    assert "groups from the images (column image_gender" in r.output and "image classifier accuracy" in r.output
    run = json.loads((tmp_path / "img" / "run.json").read_text())
    src = run["attribute_source"]
    assert src["source"] == "images" and src["column"] == "image_gender"
    assert src["calibration"]["n"] == 28 and set(src["calibration"]["confusion"]) == {"Female", "Male"}
    assert run["groups"] == ["Female", "Male"] and run["groups_from"] == "column 'image_gender'"
    shards = sorted((tmp_path / "img" / "attributes" / "shards").glob("attributes_*.parquet"))
    assert len(shards) == 2
    # the composable route: the pass's shard files as captions, their image_gender column as the groups
    r2 = _run(["balance", "fit", *[a for s in shards for a in ("--captions", str(s))], "--attribute-column",
               "image_gender", "--groups", "Female,Male", "--text-column", "caption", "--key", "url",
               "--out", str(tmp_path / "col"), *common])
    assert r2.exit_code == 0, r2.output
    a, b = _weights(tmp_path / "img"), _weights(tmp_path / "col")
    assert a["row"].tolist() == b["row"].tolist() and a["url"].tolist() == b["url"].tolist()
    np.testing.assert_array_equal(a["q"].to_numpy(), b["q"].to_numpy())
    assert json.loads((tmp_path / "col" / "run.json").read_text())["before"] == run["before"]
    # the groups M4 balanced are the image classifier's: count them independently
    labels = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    counts = labels["image_gender"].value_counts()
    assert run["before"]["n_mention"] == int(counts.sum())


def test_measure_with_both_uses_the_captions_group_first(setup, tmp_path):
    root = setup["root"]
    r = _run(["balance", "measure", "--attribute-source", "both", "--embeddings", str(root / "emb"),
              "--out", str(tmp_path / "both"), "--labels", str(root / "labels.txt"), "--no-figure",
              *setup["model"]])
    assert r.exit_code == 0, r.output
    assert "not measured (give --dataset)" in r.output
    run = json.loads((tmp_path / "both" / "run.json").read_text())
    assert run["attribute_source"]["source"] == "both" and run["attribute_source"]["column"] == "both_gender"
    assert run["attribute_source"]["calibration"] is None
    shards = sorted((tmp_path / "both" / "attributes" / "shards").glob("*.parquet"))
    got = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    female = got["caption"].str.contains(r"\b(?:woman|ladies)\b")
    male = got["caption"].str.contains(r"\bman\b")
    named = np.where(female & ~male, "Female", np.where(male & ~female, "Male", None))
    want = [n if n is not None else (None if pd.isna(g) else g) for n, g in zip(named, got["image_gender"])]
    assert [None if pd.isna(v) else v for v in got["both_gender"]] == want
    assert run["before"]["n_mention"] == sum(w is not None for w in want)


@pytest.mark.parametrize("extra, message", [
    (["--attribute-source", "images", "--model", "x"], "--attribute-source images needs --embeddings"),
    (["--attribute-source", "images", "--embeddings", "E"], "--attribute-source images needs --model"),
    (["--attribute-source", "both", "--embeddings", "E", "--model", "x", "--captions", "c.parquet"],
     "--captions: with --attribute-source both the captions are the metadata of --embeddings"),
    (["--captions", "c.parquet", "--embeddings", "E"], "--embeddings is for --attribute-source images or both"),
    (["--captions", "c.parquet", "--threshold", "0.5"], "--threshold is for --attribute-source images or both"),
    ([], "--captions is required (or --attribute-source images|both with --embeddings)"),
    (["--attribute-source", "images", "--embeddings", "E", "--model", "x", "--threshold", "1.5"],
     "--threshold must be in [0, 1), got 1.5"),
])
def test_option_combinations(tmp_path, extra, message):
    r = CliRunner().invoke(cli, ["balance", "fit", "--out", str(tmp_path / "o"), *extra])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert not (tmp_path / "o").exists()


def test_attributes_command(setup, tmp_path):
    root = setup["root"]
    r = _run(["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "a"),
              "--dataset", f"fairface:{root / 'ff'}", "--threshold", "0.2", *setup["model"]])
    assert r.exit_code == 0, r.output
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    counts = run["summary"]["counts"]
    assert f"{N:,} images in 2 shard(s)" in r.output
    assert f"Female {counts['Female']:,}, Male {counts['Male']:,}" in r.output
    assert "classifier accuracy on fairface:" in r.output and run["threshold"] == 0.2
    # the soft probabilities are measured on the same labelled images: every image in one bin per group
    assert "mean probability" in r.output and "calibration error" in r.output
    reliability = pd.read_parquet(tmp_path / "a" / "calibration_reliability.parquet")
    n_labelled = run["calibration"]["n"]
    assert reliability.groupby("group")["n"].sum().to_dict() == {"Female": n_labelled, "Male": n_labelled}
    assert run["calibration"]["soft"]["calibration_error_max"] >= 0
    # with the calibration test of each group's probabilities, stored and printed
    groups = pd.read_parquet(tmp_path / "a" / "calibration_groups.parquet").set_index("group")
    for row in run["calibration"]["by_group"]:
        assert 0 < row["calibration_p"] <= 1 and row["calibration_error_by_chance"] > 0
        assert groups.loc[row["group"], "calibration_p"] == row["calibration_p"]
        assert (f"calibration error {row['calibration_error']:.3f} (by chance up to "
                f"{row['calibration_error_by_chance']:.3f}; calibrated: p {row['calibration_p']:.3g})") in r.output
    bad = CliRunner().invoke(cli, ["balance", "attributes", "--embeddings", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "b"), *setup["model"]])
    assert bad.exit_code == 1 and f"embeddings {tmp_path / 'none'}: no such folder" in bad.output
    assert "Traceback" not in bad.output


def test_fit_on_soft_image_probabilities_meets_the_papers_moments(setup, tmp_path):
    """--attribute-mode soft: M4 on each image's E[s_k] (quantised to 1/16). The data RB/AB before and the
    constraints on the written q, recomputed per example with numpy from the pass's p_<group> columns."""
    from clipprobe.analysis.patterns import quantise_probabilities

    root = setup["root"]
    eps = 0.05
    r = _run(["balance", "fit", "--attribute-source", "images", "--attribute-mode", "soft", "--embeddings",
              str(root / "emb"), "--out", str(tmp_path / "soft"), *setup["model"], "--labels",
              str(root / "labels.txt"), "--keep", "0.4", "--eps-r", str(eps), "--eps-a", str(eps), "--no-figure"])
    assert r.exit_code == 0, r.output
    assert "soft: E[s_k] in steps of 1/16" in r.output
    run = json.loads((tmp_path / "soft" / "run.json").read_text())
    assert run["attribute_source"]["mode"] == "soft" and run["attribute_source"]["column"] == "soft_gender"
    assert run["groups"] == ["Female", "Male"] and run["attribute_mode"].startswith("soft")
    shards = sorted((tmp_path / "soft" / "attributes" / "shards").glob("attributes_*.parquet"))
    table = pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)
    p = quantise_probabilities(table[["p_Female", "p_Male"]].to_numpy(np.float64)
                               / np.maximum(table[["p_Female", "p_Male"]].to_numpy(np.float64).sum(1), 1)[:, None],
                               16) / 16
    assert 0 < ((p > 0) & (p < 1)).mean()                    # really fractional
    words = ["reading", "work", "doctor", "dog"]
    y = np.array([[w in c.split() for w in words] for c in table["caption"]], np.float64)
    m = p.sum(1)
    share = p.sum(0) / m.sum()
    assert run["before"]["rb_max"] == pytest.approx(np.abs(share - 0.5).max(), abs=1e-12)
    p_in = (p.T @ y) / p.sum(0)[:, None]
    p_out = ((m[:, None] - p).T @ y) / (m[:, None] - p).sum(0)[:, None]
    assert run["before"]["ab_max"] == pytest.approx(np.nanmax(np.abs(p_in - p_out)), abs=1e-12)
    # the written q meets the constraints (conditional scale) up to the solver's tolerance
    w = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "soft" / "weights.parquet").glob("*.parquet"))])
    order = {s.name: i for i, s in enumerate(shards)}
    w = w.assign(_f=w["file"].map(lambda f: order[f.rsplit("/", 1)[-1]])).sort_values(["_f", "row"])
    q = w["q"].to_numpy()
    c = p - 0.5 * m[:, None]
    assert np.abs((q[:, None] * c).sum(0) / (q * m).sum()).max() <= eps + 1e-8
    seen = (y * m[:, None]).sum(0) > 0
    res_a = np.einsum("i,ik,ir->kr", q, c, y)[:, seen] / np.einsum("i,i,ir->r", q, m, y)[seen]
    assert np.abs(res_a).max() <= eps + 1e-8
    assert run["fit"]["max_residual_a"] == pytest.approx(np.abs(res_a).max(), abs=1e-9)


def test_soft_mode_options_are_checked(setup, tmp_path):
    root = setup["root"]
    r = _run(["balance", "measure", "--captions", str(root / "labels.txt"), "--attribute-mode", "soft",
              "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "--attribute-mode is for --attribute-source images or both" in r.output
    r = _run(["balance", "measure", "--attribute-source", "images", "--attribute-mode", "soft", "--threshold",
              "0.6", "--embeddings", str(root / "emb"), *setup["model"], "--out", str(tmp_path / "y")])
    assert r.exit_code != 0 and "--threshold makes the hard labels" in r.output


def test_attributes_engine_options_checked_before_any_work(setup, tmp_path):
    from clipprobe.captions.run import ERR_SPARK_CONF

    root = setup["root"]
    r = CliRunner().invoke(cli, ["balance", "attributes", "--embeddings", str(root / "emb"), "--out",
                                 str(tmp_path / "a"), "--engine", "spark", "--spark-conf", "spark.archives",
                                 *setup["model"]])
    assert r.exit_code == 2 and ERR_SPARK_CONF.format(item="spark.archives") in r.output, r.output
    assert not (tmp_path / "a").exists()
    # the local engine with --threads 1 (one shard at a time) writes what the default run writes
    one = _run(["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "one"),
                "--threads", "1", *setup["model"]])
    two = _run(["balance", "attributes", "--embeddings", str(root / "emb"), "--out", str(tmp_path / "two"),
                "--threads", "2", *setup["model"]])
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    for name in ("attributes_0.parquet", "attributes_1.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "shards" / name),
                                      pd.read_parquet(tmp_path / "two" / "shards" / name))
    assert json.loads((tmp_path / "one" / "run.json").read_text())["config"]["engine"] == "local"


def test_fit_scale_rescales_the_soft_probabilities_and_measures_them_held_out(setup, tmp_path):
    """--fit-scale: the pass's soft probabilities are softmax(fitted scale x cos), so each image's log-odds
    of two classes are the model-scale run's times fitted / model scale; hard labels do not change; the
    run records both scales and the calibration at the model's scale beside the held-out one."""
    root = setup["root"]
    args = ["balance", "attributes", "--embeddings", str(root / "emb"), "--dataset", f"fairface:{root / 'ff'}",
            *setup["model"]]
    r = _run([*args, "--out", str(tmp_path / "model")])
    assert r.exit_code == 0, r.output
    r = _run([*args, "--out", str(tmp_path / "fit"), "--fit-scale"])
    assert r.exit_code == 0, r.output
    assert "softmax scale fitted on it" in r.output
    run = json.loads((tmp_path / "fit" / "run.json").read_text())
    base = json.loads((tmp_path / "model" / "run.json").read_text())
    fit = run["scale_fit"]
    assert base["scale_fit"] is None and fit["scale_before"] == base["scale"] and run["scale"] == fit["scale"]
    assert fit["scale"] != base["scale"] and len(fit["fold_scales"]) == fit["folds"] == 2
    assert fit["before"]["calibration_error_max"] == base["calibration"]["soft"]["calibration_error_max"]

    def shards(folder):
        files = sorted((folder / "shards").glob("attributes_*.parquet"))
        return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)

    a, b = shards(tmp_path / "model"), shards(tmp_path / "fit")
    assert a["image_gender"].tolist() == b["image_gender"].tolist()
    lo_a = np.log(a["p_Female"].to_numpy(np.float64) / a["p_Male"].to_numpy(np.float64))
    lo_b = np.log(b["p_Female"].to_numpy(np.float64) / b["p_Male"].to_numpy(np.float64))
    moderate = (np.abs(lo_a) > 0.05) & (np.abs(lo_a) < 8) & (np.abs(lo_b) < 8)
    assert moderate.sum() > 20
    np.testing.assert_allclose(lo_b[moderate] / lo_a[moderate], fit["scale"] / base["scale"], rtol=1e-3)


def test_fit_scale_needs_a_dataset_and_no_scale(setup, tmp_path):
    root = setup["root"]
    r = CliRunner().invoke(cli, ["balance", "attributes", "--embeddings", str(root / "emb"), "--out",
                                 str(tmp_path / "a"), "--fit-scale", *setup["model"]])
    assert r.exit_code == 2 and "fit_scale needs a labelled dataset" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(cli, ["balance", "attributes", "--embeddings", str(root / "emb"), "--out",
                                 str(tmp_path / "b"), "--fit-scale", "--scale", "50", "--dataset",
                                 f"fairface:{root / 'ff'}", *setup["model"]])
    assert r.exit_code == 2 and "give one" in r.output and not (tmp_path / "b").exists()
    r = CliRunner().invoke(cli, ["balance", "measure", "--captions", str(root / "labels.txt"), "--fit-scale",
                                 "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "--fit-scale" in r.output and not (tmp_path / "c").exists(), r.output
