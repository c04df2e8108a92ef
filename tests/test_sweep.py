"""`clipprobe sweep`: tiny models over a small generated face dataset, through the command line and the
library: per-model folders, resume, failures recorded, unknown models listed, shards, merge, settings refused."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from clipprobe.cli import _Group, cli
from clipprobe.cli import sweep as CLI
from clipprobe.cli.sweep import sweep as sweep_group
from clipprobe.pipeline import sweep as S
from clipprobe.report.sweep import MODELS_DIR, REPORT_MEASURES, SETTINGS_FILE
from tests import facegen

N_IMAGES = 28


def command_line():
    """The `clipprobe` group, with `sweep` added where the package does not register it (yet)."""
    if "sweep" in cli.commands:
        return cli
    import click

    @click.group(cls=_Group)
    def app() -> None:
        """clipprobe (test copy)"""

    app.add_command(sweep_group)
    return app


def invoke(args, **kwargs):
    return CliRunner().invoke(command_line(), args, **kwargs)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A dataset, a taxonomy, a test file and a model CSV with two tiny models, one missing weights file and one
    unknown pair."""
    from tinyclip import write_tiny_config, write_tiny_weights

    d = tmp_path_factory.mktemp("sweep")
    root = facegen.write_fairface(d / "ff", n=N_IMAGES, size=36)
    cfg = write_tiny_config(d / "m", "TinySweep")
    lines = ["spec,model_config,arch_family,dataset_family,dataset_size,my_score"]
    for seed, family, size in ((1, "small", 1e6), (2, "big", 1e9)):
        weights = write_tiny_weights(d / "m", cfg, seed=seed)
        lines.append(f"TinySweep:{weights},m/{cfg.name},ViT,{family},{size},{seed / 10}")
    lines.append(f"TinySweep:{d / 'm' / 'missing.safetensors'},m/{cfg.name},ViT,big,1e9,")
    lines.append("ViT-B-32:laion2b_s34b_b79kk,,,,,")
    (d / "zoo.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (d / "tax.yaml").write_text(yaml.safe_dump({"name": "mini", "categories": {
        "occupation": ["doctor", "nurse", "chef"], "behavioral": ["lazy", "brave"]}}), encoding="utf-8")
    spec = f"fairface:{root}"
    tests = {"tests": [
        {"name": "race-words", "X": {"faces": spec, "where": {"race": "White"}},
         "Y": {"faces": spec, "where": {"race": "Black"}},
         "A": {"texts": ["a photo of a doctor", "a doctor"]}, "B": {"texts": ["a photo of a chef", "a chef"]}},
        {"name": "words", "X": {"texts": ["flower", "rose"]}, "Y": {"texts": ["insect", "ant"]},
         "A": {"texts": ["love", "joy"]}, "B": {"texts": ["hate", "pain"]}},
    ]}
    (d / "tests.yaml").write_text(yaml.safe_dump(tests), encoding="utf-8")
    return d


def sweep_args(d: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--models", str(d / "zoo.csv"), "--dataset", f"fairface:{d / 'ff'}", "--out", str(out),
            "--taxonomy", str(d / "tax.yaml"), "--tests", str(d / "tests.yaml"), "--k", "8", "--report-bootstrap", "0",
            "--report-permutations", "20", "--controls", "none", "--eat-permutations", "200", "--sc-permutations", "20",
            "--cache-dir", str(d / "cache"), "--device", "cpu", "--workers", "0", "--batch-size", "8", *extra]


@pytest.fixture(scope="module")
def swept(setup):
    out = setup / "out"
    result = invoke(sweep_args(setup, out), catch_exceptions=False)
    assert result.exit_code == 1, result.output          # one model failed, one is unknown (see test_exit_codes)
    return out, result.output


def records(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / MODELS_DIR).glob("*/run.json")}


def test_each_model_gets_its_folder_and_failures_are_recorded(setup, swept):
    out, output = swept
    recs = records(out)
    ok = {k: r for k, r in recs.items() if r["status"] == "ok"}
    failed = {r["spec"]: r["reason"] for r in recs.values() if r["status"] == "failed"}
    assert len(ok) == 2 and len(failed) == 2
    for key, r in ok.items():
        assert (out / MODELS_DIR / key / "report" / "words.parquet").is_file()
        assert (out / MODELS_DIR / key / "eat" / "eat.parquet").is_file()
        assert r["command"] == "sweep model" and r["record_version"] == 1 and r["settings_hash"]
        assert r["metadata"]["dataset_family"] in ("small", "big") and r["metadata"]["params_total_m"] > 0
        assert set(r["timings_s"]) >= {"load_model", "embed_shared", "report", "eat", "total"}
    missing = [s for s in failed if s.endswith("missing.safetensors")][0]
    assert "missing.safetensors" in failed[missing] and "\n" not in failed[missing]
    assert failed["ViT-B-32:laion2b_s34b_b79kk"].startswith(
        "unknown model 'ViT-B-32:laion2b_s34b_b79kk' (did you mean 'ViT-B-32:laion2b_s34b_b79k'")
    assert "sweep 1/1: 2 model(s) finished, 0 finished before, 1 failed, 1 unknown" in output
    shard = json.loads((out / "shards" / "1-of-1" / "run.json").read_text())
    assert shard["command"] == "sweep" and len(shard["done"]) == 2


def test_exit_codes(setup, swept):
    """Any failed or unknown model: the summary, then a one-line error and exit 1; --allow-failures: exit 0."""
    out, output = swept
    lines = output.strip().splitlines()
    assert lines[-1] == "Error: " + CLI.MSG_FAILURES.format(n=2, total=4, shard="1/1")
    assert any(line.startswith("  ViT-B-32:laion2b_s34b_b79kk: unknown model") for line in lines)
    assert any("missing.safetensors" in line for line in lines[:-1])
    result = invoke(sweep_args(setup, out, "--allow-failures", "--no-retry-failed"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 model(s) finished, 3 finished before, 1 failed, 1 unknown" in result.output
    result = invoke(sweep_args(setup, out, "--no-retry-failed"), catch_exceptions=False)
    assert result.exit_code == 1 and result.output.strip().splitlines()[-1] == lines[-1]


def test_a_rerun_skips_finished_models_and_retries_failed_ones(setup, swept):
    out, _ = swept
    before = {k: (out / MODELS_DIR / k / "run.json").read_bytes() for k in records(out)}
    result = invoke(sweep_args(setup, out, "--allow-failures"), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "0 model(s) finished, 2 finished before, 1 failed, 1 unknown" in result.output
    after = records(out)
    for key, r in after.items():
        if r["status"] == "ok":
            assert (out / MODELS_DIR / key / "run.json").read_bytes() == before[key]   # not touched


def test_other_settings_are_refused_in_the_same_folder(setup, swept):
    out, _ = swept
    result = invoke(sweep_args(setup, out, "--seed", "3"))
    assert result.exit_code == 1
    assert f"sweep folder {out} was written with other settings (differs in: eat.seed, report.seed)" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["0/4", "5/4", "3", "a/b", "2/0"])
def test_bad_shard_specs_are_one_line_usage_errors(setup, value, tmp_path):
    result = invoke(sweep_args(setup, tmp_path / "x", "--shard", value))
    assert result.exit_code == 2
    assert f"shard must be I/N with 1 <= I <= N (e.g. 3/16), not {value!r}" in result.output


def test_shards_split_the_zoo_deterministically():
    entries = [S.ModelEntry(spec=f"A:t{i}", key=f"k{i:02d}") for i in range(11)]
    shards = [S.shard_models(entries, (i, 4)) for i in range(1, 5)]
    keys = [e.key for s in shards for e in s]
    assert sorted(keys) == sorted(e.key for e in entries) and len(set(keys)) == 11     # disjoint, complete
    assert [len(s) for s in shards] == [3, 3, 3, 2]
    assert S.shard_models(list(reversed(entries)), (2, 4)) == shards[1]                # order of the list does not matter


def test_shards_run_separately_equal_one_run(setup, swept, tmp_path):
    out, _ = swept
    split = tmp_path / "split"
    for i in (1, 2):
        result = invoke(sweep_args(setup, split, "--shard", f"{i}/2", "--allow-failures"), catch_exceptions=False)
        assert result.exit_code == 0, result.output
    one = S.merge_sweep([out], out=tmp_path / "m1").table
    two = S.merge_sweep([split], out=tmp_path / "m2").table
    pd.testing.assert_frame_equal(one, two)


def test_merge_builds_one_row_per_model_and_test_or_metric(setup, swept):
    out, _ = swept
    result = invoke(["sweep", "merge", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "merged 4 model(s): 2 finished, 2 failed" in result.output
    table = pd.read_parquet(out / "sweep.parquet")
    models = pd.read_parquet(out / "models.parquet")
    assert set(models["status"]) == {"ok", "failed"} and len(models) == 4
    merge_record = json.loads((out / "run.json").read_text())
    assert merge_record["command"] == "sweep merge" and {"read", "write"} <= set(merge_record["timings_s"])
    eat = table[table["probe"] == "eat"]
    assert len(eat) == 2 * 2 and set(eat["test"]) == {"race-words", "words"}
    per_model = table.groupby("model").size()
    assert per_model.nunique() == 1
    report = table[table["probe"] == "report"]
    assert set(report["measure"]) == set(REPORT_MEASURES)
    assert set(report["test"]) == {"occupation", "behavioral", "all"}
    assert set(report["order"]) == {"race", "gender", "age", "race_gender"}
    # values equal the model folders' own tables
    key = sorted(k for k, r in records(out).items() if r["status"] == "ok")[0]
    words = pd.read_parquet(out / MODELS_DIR / key / "report" / "words.parquet")
    row = report[(report["model_key"] == key) & (report["measure"] == "max_skew") & (report["test"] == "all")
                 & (report["order"] == "race")]
    assert row["value"].item() == pytest.approx(words.loc[words["attribute"] == "race", "max_skew"].mean())
    eat_table = pd.read_parquet(out / MODELS_DIR / key / "eat" / "eat.parquet").set_index("test")
    mine = eat[eat["model_key"] == key].set_index("test")
    assert mine.loc["words", "value"] == eat_table.loc["words", "effect_size"]
    assert set(table["dataset_family"]) == {"small", "big"} and "my_score" in table.columns


def test_merge_refuses_folders_of_other_settings(swept, tmp_path):
    out, _ = swept
    other = tmp_path / "other"
    shutil.copytree(out, other)
    stored = json.loads((other / SETTINGS_FILE).read_text())
    stored["settings"]["report"]["k"] = 50
    stored["settings"]["dataset"]["fingerprint"] = "0" * 24
    stored["settings_hash"] = S.settings_hash(stored["settings"])
    (other / SETTINGS_FILE).write_text(json.dumps(stored))
    result = invoke(["sweep", "merge", str(out), str(other)])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: cannot merge {out} and {other}: they were written with other settings "
                                     "(differs in: dataset.fingerprint, report.k)")


def test_merge_of_a_folder_that_is_no_sweep(tmp_path):
    result = invoke(["sweep", "merge", str(tmp_path)])
    assert result.exit_code == 1 and "is not a sweep folder (no sweep.json)" in result.output


def test_the_sweep_and_its_merge_are_listed_in_help():
    result = invoke(["sweep", "--help"])
    assert result.exit_code == 0 and "merge" in result.output and "analyze" in result.output


# --------------------------------------------------------------------------- inputs keyed by their content (issue 24)

TEXT_TESTS = {"tests": [
    {"name": "words", "X": {"texts": ["flower", "rose", "tulip"]}, "Y": {"texts": ["insect", "ant", "wasp"]},
     "A": {"texts": ["love", "joy"]}, "B": {"texts": ["hate", "pain"]}},
    {"name": "jobs", "X": {"texts": ["doctor", "nurse"]}, "Y": {"texts": ["chef", "farmer"]},
     "A": {"texts": ["good", "kind"]}, "B": {"texts": ["bad", "cruel"]}},
]}


@pytest.fixture()
def own(setup, tmp_path):
    """The two working models, and a test file and taxonomy of this test's own, to be edited (text tests only:
    the face images are embedded once, in the shared cache)."""
    rows = (setup / "zoo.csv").read_text().splitlines()
    (tmp_path / "zoo.csv").write_text("\n".join([rows[0]] + [r.replace(",m/", f",{setup / 'm'}/") for r in rows[1:3]])
                                      + "\n")
    shutil.copy(setup / "tax.yaml", tmp_path / "tax.yaml")
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(TEXT_TESTS), encoding="utf-8")
    return tmp_path


def own_args(setup, d, out, *extra):
    args = sweep_args(setup, out, *extra)
    for name in ("zoo.csv", "tax.yaml", "tests.yaml"):
        args[args.index(str(setup / name))] = str(d / name)
    return args


def run_ok(args):
    result = invoke(args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def swap_words_targets(path):
    tests = yaml.safe_load(path.read_text())
    t = tests["tests"][0]
    t["X"], t["Y"] = t["Y"], t["X"]
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")


def stamps(out, name):
    return {k: (out / MODELS_DIR / k / name).stat().st_mtime_ns for k in records(out)}


def test_an_edited_test_file_reruns_the_association_tests_and_keeps_the_reports(setup, own, caplog):
    """The test file edited in place (targets swapped: every d of that test changes sign): the rerun runs the
    association tests again, keeps the reports, and gives the table of a fresh run; a folder run before the
    edit is not merged with one run after it."""
    out = own / "out"
    run_ok(own_args(setup, own, out))
    before = S.merge_sweep([out], out=own / "m0").table
    old_hash = hashlib.sha256((own / "tests.yaml").read_bytes()).hexdigest()
    shutil.copytree(out, own / "old")
    reports, eats = stamps(out, "report/words.parquet"), stamps(out, "eat/eat.parquet")
    swap_words_targets(own / "tests.yaml")
    with caplog.at_level("INFO", logger="clipprobe"):
        result = run_ok(own_args(setup, own, out))
    after = S.merge_sweep([out], out=own / "m1").table

    def d(table, test):
        rows = table[(table["probe"] == "eat") & (table["test"] == test)]
        return rows.set_index("model_key")["value"].sort_index()

    assert d(after, "words").to_numpy() == pytest.approx(-d(before, "words").to_numpy(), rel=1e-6)
    assert (d(after, "words").abs() > 0.01).all()
    pd.testing.assert_series_equal(d(after, "jobs"), d(before, "jobs"))
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"the test file {own / 'tests.yaml'} changed since sweep folder {out} was written")
               and m.endswith("the association tests of every model run again, as they finish") for m in said), said
    assert ("2 model(s) finished before with other inputs: the association tests run again, the reports kept"
            in said), said
    assert "2 model(s) finished, 0 finished before" in result.output
    assert stamps(out, "report/words.parquet") == reports                       # not run again
    assert all(stamps(out, "eat/eat.parquet")[k] != eats[k] for k in eats)
    fresh = own / "fresh"
    run_ok(own_args(setup, own, fresh))
    pd.testing.assert_frame_equal(after, S.merge_sweep([fresh], out=own / "m2").table)
    # a folder of the old content and one of the new, at the same path: refused, naming the file
    new_hash = hashlib.sha256((own / "tests.yaml").read_bytes()).hexdigest()
    result = invoke(["sweep", "merge", str(own / "old"), str(fresh)])
    assert result.exit_code == 1
    assert result.output.strip() == "Error: " + S.MSG_MERGE_INPUT.format(
        a=own / "old", b=fresh, what="test file", path=own / "tests.yaml", x=old_hash[:12], y=new_hash[:12])
    # and a rerun without a change runs nothing
    assert "0 model(s) finished, 2 finished before" in run_ok(own_args(setup, own, out)).output


def test_an_edited_taxonomy_reruns_the_reports_and_keeps_the_tests(setup, own, caplog):
    out = own / "out"
    run_ok(own_args(setup, own, out))
    before = S.merge_sweep([out], out=own / "m0").table
    assert "behavioral" in set(before["test"])
    eats = stamps(out, "eat/eat.parquet")
    (own / "tax.yaml").write_text(yaml.safe_dump({"name": "mini", "categories": {
        "occupation": ["doctor", "nurse", "chef"]}}), encoding="utf-8")          # a category deleted
    with caplog.at_level("INFO", logger="clipprobe"):
        run_ok(own_args(setup, own, out))
    after = S.merge_sweep([out], out=own / "m1").table
    assert "behavioral" not in set(after["test"]) and "occupation" in set(after["test"])
    said = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"the taxonomy file {own / 'tax.yaml'} changed") and "the reports of every model" in m
               for m in said), said
    assert stamps(out, "eat/eat.parquet") == eats
    fresh = own / "fresh"
    run_ok(own_args(setup, own, fresh))
    pd.testing.assert_frame_equal(after, S.merge_sweep([fresh], out=own / "m2").table)


def test_a_shared_folder_half_rerun_after_an_edit_is_not_merged(setup, own):
    """Shard 1/2 reran after the edit, shard 2/2 not yet: merging would mix two versions of the test file."""
    out = own / "out"
    run_ok(own_args(setup, own, out))
    old = hashlib.sha256((own / "tests.yaml").read_bytes()).hexdigest()
    swap_words_targets(own / "tests.yaml")
    new = hashlib.sha256((own / "tests.yaml").read_bytes()).hexdigest()
    run_ok(own_args(setup, own, out, "--shard", "1/2"))
    result = invoke(["sweep", "merge", str(out)])
    assert result.exit_code == 1
    stale = [k for k, r in records(out).items() if r["inputs"]["eat"]["tests"]["sha256"] == old]
    assert len(stale) == 1
    assert result.output.strip() == "Error: " + S.MSG_MERGE_STALE.format(
        folder=out, n=1, key=stale[0], what="test file", path=own / "tests.yaml", x=old[:12], y=new[:12])
    run_ok(own_args(setup, own, out, "--shard", "2/2"))
    assert {r["inputs"]["eat"]["tests"]["sha256"] for r in records(out).values()} == {new}
    assert len(S.merge_sweep([out], out=own / "m1").table) > 0


def test_a_folder_without_input_hashes_runs_every_model_again(setup, own, caplog):
    """A folder of an older clipprobe records paths, not content: nothing in it can be trusted to be current."""
    out = own / "out"
    run_ok(own_args(setup, own, out))
    stored = json.loads((out / SETTINGS_FILE).read_text())
    stored["settings"].pop("inputs", None)
    stored["settings_hash"] = S.settings_hash(stored["settings"])
    (out / SETTINGS_FILE).write_text(json.dumps(stored))
    for key, record in records(out).items():
        for k in ("inputs", "probe_hashes", "kept"):
            record.pop(k, None)
        record["settings_hash"] = stored["settings_hash"]
        (out / MODELS_DIR / key / "run.json").write_text(json.dumps(record))
    with caplog.at_level("INFO", logger="clipprobe"):
        result = run_ok(own_args(setup, own, out))
    assert "2 model(s) finished, 0 finished before" in result.output
    assert S.MSG_INPUTS_UNKNOWN % out in [r.getMessage() for r in caplog.records]


def test_strict_stops_before_any_model_when_a_tests_stimuli_are_missing(setup, tmp_path):
    """`sweep --strict`, as `eat --strict`: a test whose OASIS images were not given stops the sweep with one
    line before any model is loaded; without it that test is skipped (as `eat` skips it)."""
    tests = {"tests": [{"name": "oasis-words", "order": "text-image", "X": {"texts": ["flower", "rose"]},
                        "Y": {"texts": ["insect", "ant"]}, "A": {"oasis": "pleasant"}, "B": {"oasis": "unpleasant"}}]}
    path = tmp_path / "oasis.yaml"
    path.write_text(yaml.safe_dump(tests), encoding="utf-8")
    args = [a if a != str(setup / "tests.yaml") else str(path) for a in sweep_args(setup, tmp_path / "out")]
    result = invoke([*args, "--probes", "eat", "--strict"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    message = result.output.strip().splitlines()[-1]
    assert "oasis-root" in message.lower(), result.output
    # no model ran: the only record is the unknown model's, written when the model list is read
    assert all(r["reason"].startswith("unknown model") for r in records(tmp_path / "out").values())
    assert not list((tmp_path / "out").rglob("eat.parquet"))
