"""The offline demo: the whole pipeline on a synthetic world with planted associations.

:func:`run_demo` generates the world (:mod:`clipprobe.world.generate`), loads
the tiny CLIP trained on it (shipped weights, or retrained with
``retrain=True``), and runs what a user runs on real data, through the same
functions the CLI calls:

    DIR/world/                 the world: FairFace-layout faces, LAION-schema captions, truth
    DIR/retrieve-<word>.txt    `clipprobe retrieve` for a planted word (+ .json, + contact sheet .png)
    DIR/captions/              `clipprobe captions count` on the world's captions
    DIR/report/                `clipprobe report` (+ cross-check with the caption counts, figures, HTML)
    DIR/null-report/           the same report with the labels shuffled against the images
    DIR/truth.json             what was planted
    DIR/validation.json        how much of it the probe found, and what it flagged that was not planted
    DIR/index.html             links every page and result above (`clipprobe index DIR` rewrites it)

Validation (:func:`validate`): recall is the share of planted (word, attribute,
group) triples the report flags; the false-positive rate is the share of the
control words' rows that it flags; caption counts are compared with the
counts the generator recorded; the null report's flagged share is compared
with alpha.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEMO_K = 100
DEMO_BOOTSTRAP = 1000
DEMO_WORD = "terrorist"
DEMO_MODEL = "demo"          # the shipped world model's name (clipprobe.models.spec.SHIPPED_MODELS)
TARGETS = {"recall": 0.9, "false_positive_rate": 0.05}


@dataclass
class DemoResult:
    out: Path
    validation: dict
    paths: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def validate(groups, truth: dict, *, counts=None, null_groups=None, null_words=None,
             alpha: float = 0.05) -> dict[str, Any]:
    """Compare a report (and caption counts, and a label-shuffled report) with the planted truth."""
    flagged = {(r.word, r.attribute, r.group) for r in groups[groups["flagged"]].itertuples()}
    planted = [(p["word"], p["attribute"], p["group"]) for p in truth["planted"]]
    found = [t for t in planted if t in flagged]
    controls = set(truth["controls"])
    control_rows = groups[groups["word"].isin(controls)]
    planted_words = {p[0] for p in planted}
    off_target = groups[groups["flagged"] & groups["word"].isin(planted_words)]
    off_target = [(r.word, r.attribute, r.group) for r in off_target.itertuples()
                  if (r.word, r.attribute, r.group) not in set(planted)]
    out: dict[str, Any] = {
        "alpha": alpha,
        "n_planted": len(planted),
        "recall": len(found) / len(planted) if planted else float("nan"),
        "missed": [dict(zip(("word", "attribute", "group"), t)) for t in planted if t not in flagged],
        "n_control_rows": int(len(control_rows)),
        "false_positive_rate": float(control_rows["flagged"].mean()) if len(control_rows) else float("nan"),
        "false_positives": [dict(word=r.word, attribute=r.attribute, group=r.group, q_over=float(r.q_over))
                            for r in control_rows[control_rows["flagged"]].itertuples()],
        "planted_words_other_flags": [dict(zip(("word", "attribute", "group"), t)) for t in off_target],
        "targets": TARGETS,
    }
    if "flagged_vs_controls" in groups:
        vs = {(r.word, r.attribute, r.group) for r in groups[groups["flagged_vs_controls"]].itertuples()}
        out["vs_controls"] = {
            "recall": sum(t in vs for t in planted) / len(planted) if planted else float("nan"),
            "missed": [dict(zip(("word", "attribute", "group"), t)) for t in planted if t not in vs],
            "false_positive_rate": (float(control_rows["flagged_vs_controls"].mean()) if len(control_rows)
                                    else float("nan")),
            "unadjusted_p_below_alpha_on_control_words": (float((control_rows["p_vs_controls"] <= alpha).mean())
                                                          if len(control_rows) else float("nan")),
        }
    if counts is not None:
        out["captions"] = compare_caption_counts(counts, truth)
    if null_groups is not None:
        share = float(null_groups["flagged"].mean())
        out["null"] = {"n_rows": int(len(null_groups)), "flagged": int(null_groups["flagged"].sum()),
                       "flagged_share": share, "at_most_alpha": share <= alpha}
        if null_words is not None and "p_max_skew" in null_words:
            out["null"]["p_max_skew_below_alpha"] = float((null_words["p_max_skew"] <= alpha).mean())
    out["passed"] = bool(out["recall"] >= TARGETS["recall"]
                         and out["false_positive_rate"] <= TARGETS["false_positive_rate"]
                         and out.get("captions", {}).get("exact", True)
                         and out.get("null", {}).get("at_most_alpha", True))
    return out


def compare_caption_counts(counts, truth: dict) -> dict[str, Any]:
    """Caption counts of the scanner against the counts the generator recorded (must be equal)."""
    expected = truth["caption_counts"]
    mismatches = []
    n_checked = 0
    by_key = {(r.word, r.attribute, r.group): r for r in counts.itertuples()}
    if by_key:
        n_captions = int(next(iter(by_key.values())).n_captions)
        if n_captions != expected["n_captions"]:
            mismatches.append({"what": "n_captions", "expected": expected["n_captions"], "got": n_captions})
    for word, info in expected["words"].items():
        for attribute, groups in info["n_both"].items():
            for group, n_both in groups.items():
                row = by_key.get((word, attribute, group))
                n_checked += 1
                want = {"n_word": info["n_word"], "n_group": expected["n_group"][attribute][group], "n_both": n_both}
                got = None if row is None else {"n_word": int(row.n_word), "n_group": int(row.n_group),
                                                "n_both": int(row.n_both)}
                if got != want:
                    mismatches.append({"word": word, "attribute": attribute, "group": group,
                                       "expected": want, "got": got})
    return {"cells_checked": n_checked, "mismatches": mismatches[:20], "n_mismatches": len(mismatches),
            "exact": not mismatches}


def run_demo(out: str | Path, *, retrain: bool = False, seed: int = 0, k: int = DEMO_K,
             bootstrap: int = DEMO_BOOTSTRAP, progress: bool | None = None) -> DemoResult:
    """Run the whole pipeline offline on the planted world (see the module docstring)."""
    from clipprobe import _io
    from clipprobe.pipeline.captions import CountConfig, count_captions
    from clipprobe.pipeline.probe import ProbeConfig, open_probe, retrieve
    from clipprobe.pipeline.report import ReportConfig, run_report
    from clipprobe.report.retrieval import format_table, save_grid
    from clipprobe.resources.prompts import make_query
    from clipprobe.world.generate import generate_world
    from clipprobe.world.train import WORLD_ARCH, config_path, weights_path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    paths: dict[str, Path] = {}

    def stage(name: str):
        timings[name] = time.perf_counter()
        log.info("demo: %s", name.replace("_", " "))

    def done(name: str):
        timings[name] = round(time.perf_counter() - timings[name], 3)

    stage("generate_world")
    world = generate_world(out / "world", seed=seed)
    done("generate_world")

    weights_dir = None
    if retrain:
        from clipprobe.world.train import TrainConfig, train_world_model

        stage("train_model")
        weights_dir = out / "model"
        train_world_model(weights_dir, TrainConfig(seed=seed))
        done("train_model")
    if retrain:
        model_spec, model_config = f"{WORLD_ARCH}:{weights_path(weights_dir)}", str(config_path(weights_dir))
    else:
        model_spec, model_config = DEMO_MODEL, None     # the shipped weights, by name (`--model demo`)
    probe_config = ProbeConfig(model=model_spec, model_config=model_config,
                               dataset=world.dataset_spec, cache_dir=str(out / "cache"), device="cpu",
                               offline=True, num_workers=0, batch_size=256)

    stage("embed_images")
    probe = open_probe(probe_config, progress=progress)
    done("embed_images")

    stage("retrieve")
    query = make_query(DEMO_WORD, taxonomy=str(world.taxonomy))
    r = retrieve(probe, query, k=k, attributes=("race", "gender", "age"))
    paths["retrieve"] = out / f"retrieve-{DEMO_WORD}.txt"
    _io.write_text(paths["retrieve"], format_table(r) + "\n")
    _io.write_json(out / f"retrieve-{DEMO_WORD}.json", r.to_dict())
    paths["grid"] = out / f"retrieve-{DEMO_WORD}.png"
    save_grid(r, paths["grid"], probe.load_image)
    done("retrieve")

    stage("captions")
    counts = count_captions(CountConfig(captions=(str(world.captions),), out=str(out / "captions"),
                                        taxonomy=str(world.taxonomy), lexicon=str(world.lexicon), workers=1))
    paths["captions"] = out / "captions"
    done("captions")

    stage("report")
    report = run_report(ReportConfig(probe=probe_config, out=str(out / "report"), taxonomy=str(world.taxonomy),
                                     k=k, bootstrap=bootstrap, seed=seed, captions_counts=str(out / "captions")),
                        probe=probe, progress=progress)
    paths["report"] = out / "report"
    paths["html"] = out / "report" / "report.html"
    done("report")

    stage("null_report")
    null = run_report(ReportConfig(probe=probe_config, out=str(out / "null-report"), taxonomy=str(world.taxonomy),
                                   k=k, bootstrap=0, seed=seed, figures=False, html=False),
                      probe=probe.shuffled(seed + 1), progress=progress)
    done("null_report")

    truth = json.loads(Path(world.truth).read_text())
    paths["truth"] = out / "truth.json"
    _io.write_json(paths["truth"], truth)
    validation = validate(report.groups, truth, counts=counts.table, null_groups=null.groups, null_words=null.words)
    validation["model"] = model_spec
    validation["retrained"] = retrain
    validation["timings"] = timings
    paths["validation"] = out / "validation.json"
    _io.write_json(paths["validation"], validation)
    from clipprobe.report.pages import write_index

    paths["index"] = write_index(out)     # one page linking every page and result the demo wrote
    return DemoResult(out=out, validation=validation, paths=paths, timings=timings)
