"""`clipprobe --help` must not import the heavy libraries (it would take seconds)."""

import subprocess
import sys

HEAVY = ("torch", "faiss", "open_clip", "matplotlib", "pyarrow", "pandas", "scipy", "datasets", "pyspark")


def test_help_imports_nothing_heavy():
    code = (
        "import sys\n"
        "from click.testing import CliRunner\n"
        "from clipprobe.cli import cli\n"
        "r = CliRunner().invoke(cli, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for name in cli.commands:\n"
        "    r = CliRunner().invoke(cli, [name, '--help'])\n"
        "    assert r.exit_code == 0, (name, r.output)\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"--help imported: {out.stdout.strip()}"


def _imports_after(args_list, heavy=("torch", "open_clip", "faiss", "matplotlib", "datasets", "numba")):
    """Run commands through CliRunner in a fresh interpreter; return (outputs, heavy modules imported)."""
    code = (
        "import sys, json\n"
        "from click.testing import CliRunner\n"
        "from clipprobe.cli import cli\n"
        "outs = []\n"
        f"for args in {args_list!r}:\n"
        "    r = CliRunner().invoke(cli, args)\n"
        "    outs.append([r.exit_code, r.output])\n"
        f"heavy = [m for m in {tuple(heavy)!r} if m in sys.modules]\n"
        "print(json.dumps([outs, heavy]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    import json

    return json.loads(out.stdout.strip().splitlines()[-1])


def test_doctor_and_models_answer_without_importing_torch_or_open_clip():
    """`clipprobe doctor` finds packages without importing them and `clipprobe models` reads the shipped
    catalog: both answer in well under 2 s where torch and open_clip alone take 10-16 s to import."""
    outs, heavy = _imports_after([["doctor"], ["models"], ["models", "--format", "json", "--filter", "demo"]])
    assert heavy == [], f"imported: {heavy}"
    (doctor_rc, doctor_out), (models_rc, models_out), (_, demo_json) = outs
    assert doctor_rc in (0, 1) and "torch" in doctor_out and "`clipprobe doctor --deep`" in doctor_out
    assert models_rc == 0 and models_out.splitlines()[1].split()[0] == "demo"
    assert "ViT-B-32:openai" in models_out and " models; " in models_out
    import json

    assert [r["spec"] for r in json.loads(demo_json)] == ["demo"]


def test_a_bad_model_is_refused_before_torch_is_imported(tmp_path):
    """retrieve, report and eat refuse an unknown pair, architecture or malformed spec from the shipped catalog,
    before the dataset is read and before torch or open_clip is imported."""
    missing = str(tmp_path / "no-such-dataset")
    outs, heavy = _imports_after([
        ["retrieve", "--word", "doctor", "--model", "ViT-B-32:openaii", "--dataset", f"fairface:{missing}"],
        ["report", "--model", "ViT-B-3:openai", "--dataset", f"fairface:{missing}", "--out", str(tmp_path / "r")],
        ["eat", "--model", "ViT-B-32", "--out", str(tmp_path / "e")],
        ["retrieve", "--word", "doctor", "--model", "ViT-B-32:/no/such/weights.safetensors"],
    ], heavy=("torch", "open_clip"))
    assert heavy == [], f"imported: {heavy}"
    messages = [out.strip().splitlines()[-1] for _, out in outs]
    assert [rc for rc, _ in outs] == [1, 1, 1, 1], messages
    assert messages[0].startswith("Error: unknown pretrained tag 'openaii' for ViT-B-32 (did you mean 'openai'")
    assert messages[1].startswith("Error: unknown model architecture 'ViT-B-3' (did you mean 'ViT-B-32'")
    assert messages[2].startswith("Error: model spec 'ViT-B-32' has no ':' and is not a shipped model (demo)")
    assert messages[3].startswith("Error: weights file not found: /no/such/weights.safetensors")
    assert not (tmp_path / "r").exists() and not (tmp_path / "e").exists()


def test_models_and_doctor_import_no_table_library(tmp_path):
    """`clipprobe models` (every format, with a user table and a filter) and `clipprobe doctor` answer from
    plain rows: pandas alone costs them seconds on a cold start, so neither it nor numpy or pyarrow is imported.
    The output is the zoo table's (the same rows `zoo_table` gives as a DataFrame)."""
    user = tmp_path / "user.csv"
    user.write_text("spec,imagenet1k,my_score\nViT-B-32:openai,0.7,0.5\n", encoding="utf-8")
    args = [["models"], ["models", "--format", "json", "--table", str(user), "--filter", "vit-b-32:openai"],
            ["models", "--format", "csv", "--filter", "demo"], ["models", "--filter", "no-such-model"],
            ["doctor"], ["doctor", "--format", "json"]]
    table_libraries = ("pandas", "numpy", "pyarrow", "scipy", "torch", "open_clip", "numba")
    outs, heavy = _imports_after(args, heavy=table_libraries)
    assert heavy == [], f"imported: {heavy}"
    assert [rc for rc, _ in outs[:4]] == [0, 0, 0, 0], outs
    import json

    from clipprobe.models.zoo import zoo_table

    records = json.loads(outs[1][1])
    assert [r["spec"] for r in records] == ["ViT-B-32:openai"]
    assert records[0]["imagenet1k"] == 0.7 and records[0]["my_score"] == 0.5
    assert records[0]["openclip_results_source"] == "user (user.csv)"
    assert outs[2][1].splitlines()[1].startswith("demo,clipprobe-world-tiny,,file,")
    assert outs[3][1].strip() == "no models match"
    df = zoo_table(["demo"])      # the DataFrame the csv's row comes from: same values
    first = dict(zip(outs[2][1].splitlines()[0].split(","), outs[2][1].splitlines()[1].split(",")))
    assert float(first["params_total_m"]) == df.loc[0, "params_total_m"]
    assert float(first["samples_seen"]) == df.loc[0, "samples_seen"] and first["cached"] == "True"
