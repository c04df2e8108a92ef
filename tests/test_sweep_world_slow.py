"""Validation against planted truth: a zoo of tiny world models whose training-data mix (the planted rate of the
biased captions) is the planted factor, crossed with their width (parameters). The sweep and its analysis must
attribute the bias to the data mix: significant, the right sign, ordered as the planted rates, for both the
association tests and the retrieval report.

Width is not a null factor in this world, and the test does not pretend it is: in 8 epochs the wider model
reaches a much lower contrastive loss than the narrower one trained on the same captions (final losses about
1.3 vs 2.3 in every mix) and learns more of every association, planted or not. What the analysis must do with
it is keep it apart from the data: the coefficient of ``log_params`` must have the sign the training losses
give (lower loss, stronger associations), and the data-mix coefficients must be the same whether or not size
is in the model (the two factors are crossed, so a correct fit separates them).

The zoo: three mixes (``WorldSpec(rate_scale=...)``: every planted rate scaled by 0.2, 0.6 and 1.2) crossed
with two widths, trained from the same seed on the same images and captions (only the planted words'
captions differ), a few epochs each (:data:`EPOCHS` over :data:`N_CAPTIONS` captions, batches of
:data:`BATCH` with :data:`WARMUP` warm-up steps). Their model table names each mix a dataset family
(``mix0-low`` is the reference) with one dataset size (so that term is dropped); parameters are counted from
the loaded models. The association tests pair each planted word's group with each other group of its
attribute (X: the planted group's faces, Y: another group's, A: the word's prompts, B: control words'
prompts), 53 tests per model.

Also: a sweep killed with SIGKILL at random points and rerun gives the uninterrupted sweep's table, and
Ctrl-C stops it promptly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_captions_interrupt import DEFAULT_SIGINT

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MIXES = {"mix0-low": 0.2, "mix1-mid": 0.6, "mix2-high": 1.2}
WIDTHS = (0.75, 1.0)
EPOCHS = 8
N_CAPTIONS = 3000
BATCH = 128           # 23 steps an epoch: the demo's 40 warm-up steps of 256 would take half of such a short run
WARMUP = 10
N_IMAGES = 1200

NOUN = ("a photo of {a} {word}", "{a} {word}", "portrait of {a} {word}", "the {word}")
ADJ = ("a photo of {a} {word} person", "{a} {word} person", "{word} face", "looking {word}")


def pairwise_suite(truth: dict, dataset: str, path: Path) -> Path:
    """Each planted word: its group against each other group of the attribute (targets), the word's prompts
    against four control words' prompts (attributes)."""
    from clipprobe.resources.prompts import fill

    def prompts(word, pos):
        return [fill(t, word) for t in (NOUN if pos == "noun" else ADJ)]

    tests = []
    for p in truth["planted"]:
        controls = [c["word"] for c in truth["control_details"] if c["pos"] == p["pos"]][:4]
        for other in truth["attributes"][p["attribute"]]:
            if other == p["group"]:
                continue
            tests.append({"name": f"{p['word']}: {p['group']} vs {other}", "family": p["attribute"],
                          "X": {"faces": dataset, "where": {p["attribute"]: p["group"]}},
                          "Y": {"faces": dataset, "where": {p["attribute"]: other}},
                          "A": {"texts": prompts(p["word"], p["pos"])},
                          "B": {"texts": [t for c in controls for t in prompts(c, p["pos"])]}})
    path.write_text(yaml.safe_dump({"tests": tests}), encoding="utf-8")
    return path


def train_zoo(folder: Path, *, epochs: int = EPOCHS, n_captions: int = N_CAPTIONS) -> tuple[Path, dict, dict]:
    """Train the 6 models; write the model table; return (its path, seconds per model, final loss per model)."""
    from clipprobe.world.generate import WorldSpec
    from clipprobe.world.train import TrainConfig, arch_name, model_spec, train_world_model

    rows = ["spec,model_config,arch_family,dataset_family,dataset_size,planted_rate_scale"]
    seconds, losses = {}, {}
    for family, scale in MIXES.items():
        for width in WIDTHS:
            out = folder / f"{family}-w{width}"
            start = time.perf_counter()
            meta = train_world_model(out, TrainConfig(epochs=epochs, n_captions=n_captions, width=width, batch_size=BATCH,
                                               warmup_steps=WARMUP, spec=WorldSpec(rate_scale=scale)),
                              evaluate=False)
            seconds[out.name] = round(time.perf_counter() - start, 1)
            losses[(family, width)] = meta["loss_curve"][-1]
            spec, config = model_spec(out, arch_name(width))
            rows.append(f"{spec},{config},world-ViT,{family},{n_captions},{scale}")
    table = folder / "zoo.csv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return table, seconds, losses


def sweep_zoo(table: Path, folder: Path, *, n_images: int = N_IMAGES):
    """Sweep the zoo over the world's probe images (association tests and the report), merge, analyse."""
    from clipprobe.pipeline.eat import EatConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.pipeline.report import ReportConfig
    from clipprobe.pipeline.sweep import SweepConfig, analyze_sweep, merge_sweep, run_sweep
    from clipprobe.world.generate import generate_world

    world = generate_world(folder / "world", seed=0, n_images=n_images, n_captions=500)
    truth = json.loads(Path(world.truth).read_text())
    suite = pairwise_suite(truth, world.dataset_spec, folder / "tests.yaml")
    probe = ProbeConfig(dataset=world.dataset_spec, cache_dir=str(folder / "cache"), device="cpu", offline=True,
                        batch_size=256)
    config = SweepConfig(out=str(folder / "sweep"), models=(str(table),),
                         report=ReportConfig(probe=probe, taxonomy=str(world.taxonomy), k=50, bootstrap=0,
                                             permutations=200, figures=False, html=False),
                         eat=EatConfig(out="", tests_file=str(suite), permutations=2000, sc_permutations=100,
                                       figures=False), models_per_pass=6)
    result = run_sweep(config, progress=False)
    merge_sweep([folder / "sweep"])
    analysis = analyze_sweep(folder / "sweep", performance="planted_rate_scale",
                             measures=("eat:effect_size", "report:max_skew_excess"))
    return result, analysis


def check_attribution(analysis, losses: dict, sweep: Path) -> dict:
    """The data mix is found (both measures), ordered as planted; size gets the sign the losses give; the mix
    coefficients do not move when size leaves the model."""
    from clipprobe.analysis.factors import fit_factors
    from clipprobe.report.sweep import load_sweep_table

    table = load_sweep_table(sweep)
    summary = {}
    for measure in ("eat:effect_size", "report:max_skew_excess"):
        fit = analysis.fits[measure]
        coef = fit.coefficients.set_index("term")
        summary[measure] = {t: {k: float(coef.loc[t, k]) for k in ("estimate", "p_value", "ci_low", "ci_high")}
                            for t in coef.index}
        assert fit.references["dataset_family"] == "mix0-low"
        high, mid = coef.loc["dataset_family[T.mix2-high]"], coef.loc["dataset_family[T.mix1-mid]"]
        assert high["p_value"] < 0.01 and mid["p_value"] < 0.05, summary[measure]
        assert high["estimate"] > mid["estimate"] > 0, summary[measure]
        wider_learns_more = all(losses[(f, max(WIDTHS))] < losses[(f, min(WIDTHS))] for f in MIXES)
        assert wider_learns_more, losses
        assert coef.loc["log_params", "estimate"] > 0, summary[measure]
        probe, name = measure.split(":")
        rows = table[(table["probe"] == probe) & (table["measure"] == name)].assign(params_total_m=100.0)
        without = fit_factors(rows)                  # one size for every model: the size term is dropped
        assert "log_params" not in set(without.coefficients["term"])
        alone = without.coefficients.set_index("term")
        for term in ("dataset_family[T.mix2-high]", "dataset_family[T.mix1-mid]"):
            assert abs(alone.loc[term, "estimate"] - coef.loc[term, "estimate"]) < coef.loc[term, "std_error"], \
                (term, alone.loc[term].to_dict(), coef.loc[term].to_dict())
    return summary


def test_the_analysis_attributes_the_bias_to_the_training_data(tmp_path):
    start = time.perf_counter()
    table, seconds, losses = train_zoo(tmp_path / "zoo")
    trained = time.perf_counter() - start
    result, analysis = sweep_zoo(table, tmp_path)
    assert len(result.done) == 6, result.failed
    summary = check_attribution(analysis, losses, tmp_path / "sweep")
    print(json.dumps({"train_s": seconds, "train_total_s": round(trained, 1),
                      "final_loss": {f"{f}-w{w}": v for (f, w), v in losses.items()},
                      "sweep_and_analysis_s": round(time.perf_counter() - start - trained, 1),
                      "coefficients": summary}, indent=1))


# --------------------------------------------------------------------------- kill and Ctrl-C


def _cli(args: list[str]) -> list[str]:
    code = (DEFAULT_SIGINT + "import sys\nfrom clipprobe.cli import cli\nif 'sweep' not in cli.commands:\n"
            "    from clipprobe.cli.sweep import sweep\n    cli.add_command(sweep)\n"
            "cli(prog_name='clipprobe')\n")
    return [sys.executable, "-c", code, *args]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from tinyclip import write_tiny_config, write_tiny_weights
    from tests import facegen

    d = tmp_path_factory.mktemp("kill")
    root = facegen.write_fairface(d / "ff", n=60, size=64)
    cfg = write_tiny_config(d / "m", "TinyKill")
    lines = ["spec,model_config,dataset_family,dataset_size"]
    for seed in range(1, 5):
        lines.append(f"TinyKill:{write_tiny_weights(d / 'm', cfg, seed=seed)},{cfg},f{seed % 2},1e9")
    (d / "zoo.csv").write_text("\n".join(lines) + "\n")
    (d / "tax.yaml").write_text(yaml.safe_dump({"name": "mini", "categories": {
        "occupation": ["doctor", "nurse", "chef", "farmer"], "behavioral": ["lazy", "brave", "kind"]}}))
    spec = f"fairface:{root}"
    (d / "tests.yaml").write_text(yaml.safe_dump({"tests": [
        {"name": "race", "X": {"faces": spec, "where": {"race": "White"}}, "Y": {"faces": spec, "where": {"race": "Black"}},
         "A": {"texts": ["a doctor", "a nurse"]}, "B": {"texts": ["a chef", "a farmer"]}}]}))
    return d


def _args(d: Path, out: Path) -> list[str]:
    return ["sweep", "--models", str(d / "zoo.csv"), "--dataset", f"fairface:{d / 'ff'}", "--out", str(out),
            "--taxonomy", str(d / "tax.yaml"), "--tests", str(d / "tests.yaml"), "--k", "10", "--report-bootstrap", "200",
            "--report-permutations", "200", "--controls", "none", "--eat-permutations", "5000", "--sc-permutations", "200",
            "--cache-dir", str(out) + "-cache", "--device", "cpu", "--batch-size", "8", "--models-per-pass", "2"]


def _merged(out: Path) -> pd.DataFrame:
    from clipprobe.pipeline.sweep import merge_sweep

    return merge_sweep([out]).table


def test_killed_at_random_points_and_rerun_gives_the_uninterrupted_result(small, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    ref = tmp_path / "ref"
    start = time.perf_counter()
    subprocess.run(_cli(_args(small, ref)), env=env, check=True, capture_output=True, timeout=900)
    duration = time.perf_counter() - start          # kill points are fractions of it (machines differ in speed)
    expected = _merged(ref)
    out = tmp_path / "killed"
    rng = np.random.default_rng(0)
    kills = 0
    for _ in range(8):
        proc = subprocess.Popen(_cli(_args(small, out)), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            proc.wait(timeout=float(rng.uniform(0.15, 0.6)) * duration)
            break                                    # finished before the kill
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
    subprocess.run(_cli(_args(small, out)), env=env, check=True, capture_output=True, timeout=900)
    assert kills >= 1
    pd.testing.assert_frame_equal(_merged(out), expected)


def test_ctrl_c_stops_promptly_and_keeps_finished_work(small, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "int"
    proc = subprocess.Popen(_cli(_args(small, out)), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not list((out / "models").glob("*/run.json")):
        time.sleep(0.2)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped = time.perf_counter() - sent
    assert proc.returncode == 130, err
    assert "Interrupted; finished work is kept and a rerun resumes from it." in err
    assert stopped < 15
    done = [json.loads(p.read_text()) for p in (out / "models").glob("*/run.json")]
    assert done and all(r["status"] == "ok" for r in done)
