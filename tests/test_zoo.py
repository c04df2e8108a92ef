"""The model zoo's metadata: every open_clip pair has a row, values come from the shipped tables with their
sources, a user CSV fills and overrides, and nothing is dropped."""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pandas as pd
import pytest

from clipprobe.errors import DataError, UsageError
from clipprobe.models import zoo

DATA = Path(zoo.__file__).resolve().parent / "zoo_data"
REFERENCE = Path("/work/shared/reference/model-zoo")


@pytest.fixture(scope="module")
def table():
    return zoo.zoo_table()


def test_every_pretrained_pair_has_one_row(table):
    pairs = [f"{a}:{t}" for a, t in open_clip.list_pretrained()]
    assert list(table["spec"]) == pairs
    assert table["model_key"].is_unique
    assert list(table.columns) == list(zoo.ZOO_COLUMNS)


@pytest.mark.parametrize("tag, seen, batch, epochs", [
    ("laion2b_s34b_b79k", 34e9, 79e3, None),
    ("commonpool_s_clip_s13m_b4k", 13e6, 4e3, None),
    ("laion400m_e32", None, None, 32.0),
    ("laion2b_s13b_b82k_augreg", 13e9, 82e3, None),
    ("openai", None, None, None),
])
def test_tags_are_parsed(tag, seen, batch, epochs):
    assert zoo.parse_tag(tag) == {"samples_seen": seen, "batch_size": batch, "epochs": epochs}


def test_values_come_from_the_shipped_tables(table):
    results = pd.read_csv(DATA / "openclip_results.csv")
    t = table.set_index("spec")
    # every pair of open_clip's results table carries its ImageNet and 38-dataset average, with the source
    for r in results.itertuples(index=False):
        row = t.loc[f"{r.name}:{r.pretrained}"]
        assert row["imagenet1k"] == pytest.approx(r._5)    # "ImageNet 1k"
        assert row["avg38"] == pytest.approx(r._4)         # "Average perf. on 38 datasets"
        assert row["openclip_results_source"] == zoo.OPENCLIP_RESULTS_SOURCE
    assert t["imagenet1k"].notna().sum() == len(results) == 121
    row = t.loc["ViT-B-32:laion2b_s34b_b79k"]
    assert row["dataset_family"] == "laion" and row["dataset_size"] == 2e9 and row["samples_seen"] == 34e9
    assert row["vtab_plus"] == pytest.approx(0.507907, abs=1e-6) and "CLIP_benchmark" in row["vtab_source"]
    profile = pd.read_csv(DATA / "model_profile.csv").set_index("model")
    assert row["params_total_m"] == profile.loc["ViT-B-32", "mparams"]
    assert t.loc["ViT-B-32:openai", "samples_seen"] == 12.8e9
    # CLIP_benchmark's exact count where it lists the model, else epochs x dataset size
    assert t.loc["ViT-L-14:laion400m_e32", "samples_seen"] == 13034626690.0
    assert t.loc["ViT-B-32:laion400m_e31", "samples_seen"] == pytest.approx(31 * 4e8)
    assert t.loc["ViT-B-32:laion400m_e31", "samples_seen_source"] == "pretrained tag: epochs x dataset size"
    assert t.loc["ViT-B-16-SigLIP:webli", "dataset_family"] == "webli"
    assert t.loc["EVA02-B-16:merged2b_s8b_b131k", "arch_family"] == "EVA"


def test_models_without_published_performance_say_so(table):
    none = table[table["performance_note"] == zoo.NO_PERFORMANCE]
    have = table[table[["imagenet1k", "avg38", "vtab", "vtab_plus"]].notna().any(axis=1)]
    assert len(none) + len(have) == len(table)
    assert len(none) >= 60        # SigLIP 2, MobileCLIP 2, PE-Core, ... are newer than the results table
    assert "ViT-B-16-SigLIP2:webli" in set(none["spec"])
    assert all(n.startswith("published: ") and "given" not in n for n in have["performance_note"])


def test_unknown_training_data_is_unknown_not_guessed(table):
    t = table.set_index("spec")
    for spec in ("PE-Core-B-16:meta", "nllb-clip-base-siglip:mrl"):
        assert t.loc[spec, "dataset_family"] == "unknown" and math.isnan(t.loc[spec, "dataset_size"])
    # NLLB-CLIP (kept by Ghate et al.): LAION-COCO-NLLB as its paper describes it, the source saying so
    for spec in ("nllb-clip-base:v1", "nllb-clip-large-siglip:v1"):
        row = t.loc[spec]
        assert row["dataset_family"] == "laion" and row["dataset_size"] == 106_246 * 201
        assert "Visheratin 2023" in row["dataset_size_source"] and "not published" in row["dataset_size_source"]
    known = table[table["dataset_family"] != "unknown"]
    assert known["dataset_size"].notna().mean() > 0.95
    assert (known["dataset_size_source"] != "unknown").sum() == known["dataset_size"].notna().sum()


@pytest.mark.skipif(not REFERENCE.is_dir(), reason="reference tables not available")
def test_shipped_copies_equal_the_reference_tables():
    for name in ("openclip_results.csv", "model_profile.csv"):
        assert (DATA / name).read_bytes() == (REFERENCE / "open_clip" / name).read_bytes()
    vt = pd.read_csv(REFERENCE / "scaling-laws-openclip" / "zeroshot_results.csv")
    ours = pd.read_csv(DATA / "scaling_laws_vtab.csv")
    merged = ours.merge(vt, on=["name", "arch", "upstream_dataset", "downstream_dataset"], suffixes=("", "_ref"))
    assert len(merged) == len(ours) and (merged["acc1"] - merged["acc1_ref"]).abs().max() < 1e-9


def test_cherti_checkpoints_are_recognised_by_file_name(tmp_path):
    row = zoo.describe_model(f"ViT-B-32:{tmp_path}/Model-B-32_Data-80M_Samples-34B_lr-1e-3_bs-88k.pt")
    assert row["kind"] == "file" and row["dataset"] == "LAION-80M" and row["dataset_size"] == 8e7
    assert row["vtab_plus"] == pytest.approx(0.4209687649695788)
    assert row["samples_seen"] == pytest.approx(34240177620.0)
    other = zoo.describe_model(f"ViT-B-32:{tmp_path}/finetune.safetensors")
    assert other["performance_note"] == zoo.NO_PERFORMANCE and other["dataset_family"] == "unknown"


def test_counted_parameters_match_open_clips_profile():
    """The meta-device count against open_clip's published profile (an independent measurement)."""
    profile = pd.read_csv(DATA / "model_profile.csv").set_index("model")
    for arch in ("ViT-B-32", "RN50"):
        image, _text, total = zoo.count_params(arch)
        assert image == pytest.approx(profile.loc[arch, "image_mparams"], abs=0.02)
        assert total == pytest.approx(profile.loc[arch, "mparams"], abs=0.02)


def test_user_csv_fills_and_overrides_and_round_trips(tmp_path, table):
    path = tmp_path / "zoo.csv"
    path.write_text("spec,dataset_family,dataset_size,my_score,note\n"
                    "ViT-B-32:openai,wit,4.1e8,0.5,first\n"
                    "RN50:/w/rn50-finetune.pt,laion,2e9,0.25,second\n", encoding="utf-8")
    user = zoo.read_user_table(path)
    assert user.performance_columns == ("my_score",)       # 'note' is text, not a measure
    df = zoo.zoo_table(["ViT-B-32:openai", "RN50:/w/rn50-finetune.pt", "RN50:openai"], user=user)
    t = df.set_index("spec")
    assert t.loc["ViT-B-32:openai", "dataset_family"] == "wit" and t.loc["ViT-B-32:openai", "dataset_size"] == 4.1e8
    assert t.loc["ViT-B-32:openai", "dataset_size_source"] == "user (zoo.csv)"
    assert t.loc["RN50:/w/rn50-finetune.pt", "my_score"] == 0.25
    assert t.loc["RN50:/w/rn50-finetune.pt", "performance_note"] == "given: my_score"
    assert t.loc["ViT-B-32:openai", "performance_note"] == "published: vtab+, vtab, imagenet1k, avg38; given: my_score"
    assert math.isnan(t.loc["RN50:openai", "my_score"])
    # the CSV format reads back as a model table with the same values
    out = tmp_path / "back.csv"
    out.write_text(zoo.format_zoo(df, "csv"), encoding="utf-8")
    back = zoo.zoo_table(list(df["spec"]), user=zoo.read_user_table(out))
    pd.testing.assert_frame_equal(back[["spec", "dataset_size", "my_score", "params_total_m"]],
                                  df[["spec", "dataset_size", "my_score", "params_total_m"]])
    records = json.loads(zoo.format_zoo(df, "json"))
    assert [r["spec"] for r in records] == list(df["spec"]) and records[2]["my_score"] is None
    text = zoo.format_zoo(df, "table")
    assert text.splitlines()[-1] == "3 models; 3 with downstream performance (published or given), 0 without"


@pytest.mark.parametrize("content, message", [
    ("name,x\nViT-B-32:openai,1\n", "has no 'spec' or 'model' column (columns: name, x)"),
    ("spec,dataset_size\nViT-B-32:openai,lots\n", "column 'dataset_size' must be a number, not 'lots'"),
    ("model\nViT-B-32:openai\nViT-B-32:openai\n", "model 'ViT-B-32:openai' appears twice (rows 2 and 3)"),
])
def test_bad_user_csv_is_one_line(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as err:
        zoo.read_user_table(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_unknown_pairs_get_close_matches():
    ok, problems = zoo.check_known(["ViT-B-32:openai", "ViT-B-32:laion2b_s34b_b79kk", "ViT-Q-99:openai",
                                    "RN50:/x/w.pt"])
    assert ok == ["ViT-B-32:openai", "RN50:/x/w.pt"]
    assert problems[0].startswith("unknown model 'ViT-B-32:laion2b_s34b_b79kk' (did you mean "
                                  "'ViT-B-32:laion2b_s34b_b79k'")
    assert problems[1].startswith("unknown model 'ViT-Q-99:openai'")


def test_performance_names():
    columns = list(zoo.ZOO_COLUMNS) + ["my_score"]
    assert zoo.performance_column("vtab+", columns) == "vtab_plus"
    assert zoo.performance_column("my_score", columns) == "my_score"
    with pytest.raises(UsageError, match=r"unknown performance measure .vtab\+\+. \(did you mean .vtab\+., .vtab.\?\)"):
        zoo.performance_column("vtab++", columns)


def test_model_keys_do_not_depend_on_the_files_time(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    key = zoo.model_key(f"RN50:{weights}")
    weights.write_bytes(b"xy")
    assert zoo.model_key(f"RN50:{weights}") == key
    assert zoo.model_key("ViT-B-32:openai") == "ViT-B-32__openai"


def test_architecture_families_are_the_papers():
    from tests.test_sweep_analyze import paper_arch_family     # the notebook's rules, written out independently

    for arch in {a for a, _ in open_clip.list_pretrained()}:
        assert zoo.arch_family(arch) == paper_arch_family(arch), arch
    assert zoo.arch_family(None) == "unknown"
    examples = {"ViT-B-16-plus-240": "Specialized ViT", "EVA01-g-14-plus": "EVA", "nllb-clip-large-siglip": "NLLB-CLIP",
                "xlm-roberta-large-ViT-H-14": "Hybrid", "convnext_base_w": "ConvNeXt", "RN50x64": "ResNet",
                "ViT-SO400M-14-SigLIP-384": "Specialized ViT", "ViT-L-14-CLIPA": "ViT", "coca_ViT-L-14": "CoCa",
                "MobileCLIP-S1": "Other", "my-own-arch": "Other"}
    assert {a: zoo.arch_family(a) for a in examples} == examples


def test_same_checkpoint_pairs_are_what_open_clip_loads():
    """The shipped table against a brute-force grouping of open_clip's registry by weights and activation."""
    shipped = pd.read_csv(DATA / "same_checkpoint.csv", keep_default_na=False)
    assert shipped.to_dict("records") == [{k: (v if v is not None else "") for k, v in r.items()}
                                          for r in zoo.find_same_checkpoints()]
    groups: dict = {}
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        quick = bool(cfg.get("quick_gelu")) or bool((open_clip.get_model_config(arch) or {}).get("quick_gelu"))
        groups.setdefault((cfg.get("hf_hub"), cfg.get("url"), quick), []).append(f"{arch}:{tag}")
    pairs = [g for g in groups.values() if len(g) > 1]
    assert len(pairs) == len(shipped) == 28 and all(len(g) == 2 for g in pairs)
    named = {frozenset((r.spec, r.duplicate_of)) for r in shipped.itertuples(index=False)}
    assert named == {frozenset(g) for g in pairs}
    t = zoo.zoo_table(["RN50:openai", "RN50-quickgelu:openai", "ViT-B-32:laion2b_s34b_b79k"], count=False)
    assert [None if pd.isna(v) else v for v in t["duplicate_of"]] == ["RN50-quickgelu:openai", None, None]


def test_user_values_are_named_in_user_columns(tmp_path):
    path = tmp_path / "zoo.csv"
    path.write_text("spec,arch_family,dataset_size\nRN50:/w/rn50.pt,MyFamily,2e9\n", encoding="utf-8")
    t = zoo.zoo_table(["RN50:/w/rn50.pt", "RN50:openai"], user=path, count=False)
    assert [None if pd.isna(v) else v for v in t["user_columns"]] == ["arch_family;dataset_size", None]
    assert t.loc[0, "arch_family"] == "MyFamily" and t.loc[1, "arch_family"] == "ResNet"
