"""A sweep of M tiny models over one dataset against M independent runs of `report` + `eat`, in one run.

The dataset is the demo world's probe split (N faces with planted associations) re-encoded as FairFace-size
JPEGs (448x448, FairFace's "padding 1.25" release; ``--size``), so that decoding and resizing cost what they
cost on real data. The M models are the world's tiny architecture (48-pixel images: the shipped weights and
M - 1 seeded random initialisations; weights do not change speed), all with the same preprocessing.
Per model: the report on the world's 36 words (k = 100, ``--bootstrap`` resamples, 1000 label shuffles) and
the association tests of the 12 planted words (X: the planted group's faces, Y: the other faces, A: the
word's prompts, B: control words' prompts; ``--eat-permutations``), figures and HTML off in both (``--figures``
turns them on in both).

* ``independent``: for each model ``run_report`` then ``run_eat``, each into its own folder, with its own
  embedding cache (what M separate `clipprobe report --eat` runs would do, minus the start-up of M processes);
* ``sweep``: ``run_sweep`` over the M models (``models_per_pass`` = M: one shared decode pass).

Both run in this process after a warm-up (imports and first-call costs paid before timing), with fresh
caches, in the order given by ``--order``; the script prints both times, their ratio (target: sweep /
independent <= 0.6 at M = 4 on 2 cores) and images per second across the zoo in the sweep's shared pass.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_sweep.py --models 4 --n 3600
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_dataset(folder: Path, n: int, size: int, seed: int = 0) -> tuple[str, dict]:
    """The world's probe split as ``size`` x ``size`` JPEGs in the FairFace layout; (dataset spec, truth)."""
    import pandas as pd
    from PIL import Image

    from clipprobe.world.generate import generate_world

    world = generate_world(folder / "world", seed=seed, n_images=n, n_captions=500)
    labels = pd.read_csv(world.labels_val)
    root = folder / "fairface"
    (root / "val").mkdir(parents=True, exist_ok=True)
    files = []
    for rel in labels["file"]:
        img = Image.open(world.fairface / rel).convert("RGB").resize((size, size), Image.BICUBIC)
        new = rel.rsplit(".", 1)[0] + ".jpg"
        img.save(root / new, format="JPEG", quality=90)
        files.append(new)
    labels["file"] = files
    labels.to_csv(root / "fairface_label_val.csv", index=False)
    return f"fairface:{root}", json.loads(Path(world.truth).read_text()), world


def make_models(folder: Path, m: int) -> list[tuple[str, str]]:
    """(spec, model_config) of the shipped world model and m - 1 random initialisations of its architecture."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    from clipprobe.world.train import WORLD_ARCH, config_path, model_spec, register_arch

    out = [model_spec()]
    register_arch()
    for seed in range(1, m):
        torch.manual_seed(seed)
        model = open_clip.create_model(WORLD_ARCH)
        path = folder / f"{WORLD_ARCH}-seed{seed}.safetensors"
        save_file({k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}, str(path))
        out.append((f"{WORLD_ARCH}:{path}", str(config_path())))
    return out


def world_tests(truth: dict, dataset: str, path: Path) -> Path:
    import yaml

    from clipprobe.resources.prompts import fill

    noun = ("a photo of {a} {word}", "{a} {word}", "portrait of {a} {word}", "the {word}")
    adj = ("a photo of {a} {word} person", "{a} {word} person", "{word} face", "looking {word}")

    def prompts(word, pos):
        return [fill(t, word) for t in (noun if pos == "noun" else adj)]

    tests = []
    for p in truth["planted"]:
        others = [g for g in truth["attributes"][p["attribute"]] if g != p["group"]]
        controls = [c["word"] for c in truth["control_details"] if c["pos"] == p["pos"]][:4]
        tests.append({"name": f"{p['word']}-{p['group']}",
                      "X": {"faces": dataset, "where": {p["attribute"]: p["group"]}},
                      "Y": {"faces": dataset, "where": {p["attribute"]: others}},
                      "A": {"texts": prompts(p["word"], p["pos"])},
                      "B": {"texts": [t for c in controls for t in prompts(c, p["pos"])]}})
    path.write_text(yaml.safe_dump({"tests": tests}), encoding="utf-8")
    return path


def configs(dataset: str, taxonomy: str, tests: Path, cache: Path, args):
    from clipprobe.pipeline.eat import EatConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.pipeline.report import ReportConfig

    probe = ProbeConfig(dataset=dataset, cache_dir=str(cache), device="cpu", offline=True,
                        num_workers=args.workers, batch_size=args.batch_size)
    report = ReportConfig(probe=probe, taxonomy=taxonomy, k=100, bootstrap=args.bootstrap, seed=0,
                          figures=args.figures, html=args.figures)
    eat = EatConfig(out="", tests_file=str(tests), permutations=args.eat_permutations, sc_permutations=1000,
                    figures=args.figures, batch_size=args.batch_size)
    return probe, report, eat


def run_independent(models, dataset, taxonomy, tests, folder: Path, args) -> float:
    import dataclasses

    from clipprobe.pipeline.eat import run_eat
    from clipprobe.pipeline.report import run_report

    start = time.perf_counter()
    for i, (spec, config) in enumerate(models):
        probe, report, eat = configs(dataset, taxonomy, tests, folder / f"cache-{i}", args)
        probe = dataclasses.replace(probe, model=spec, model_config=config)
        run_report(dataclasses.replace(report, probe=probe, out=str(folder / f"report-{i}")), progress=False)
        run_eat(dataclasses.replace(eat, out=str(folder / f"eat-{i}"), model=spec, model_config=config,
                                    cache_dir=probe.cache_dir, device="cpu", num_workers=args.workers,
                                    batch_size=args.batch_size, offline=True), progress=False)
    return time.perf_counter() - start


def run_sweep_once(models, dataset, taxonomy, tests, folder: Path, args) -> tuple[float, dict]:
    from clipprobe.pipeline.sweep import SweepConfig, run_sweep

    folder.mkdir(parents=True, exist_ok=True)
    table = folder / "zoo.csv"
    table.write_text("spec,model_config\n" + "".join(f"{s},{c}\n" for s, c in models), encoding="utf-8")
    probe, report, eat = configs(dataset, taxonomy, tests, folder / "cache", args)
    start = time.perf_counter()
    result = run_sweep(SweepConfig(out=str(folder / "sweep"), models=(str(table),), report=report, eat=eat,
                                   models_per_pass=len(models)), progress=False)
    seconds = time.perf_counter() - start
    assert len(result.done) == len(models), result.failed
    return seconds, result.timings


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=4, help="M, the number of models")
    ap.add_argument("--n", type=int, default=3600, help="images in the dataset")
    ap.add_argument("--size", type=int, default=448, help="JPEG side in pixels (FairFace 1.25: 448)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--eat-permutations", type=int, default=10_000)
    ap.add_argument("--workers", type=int, default=None, help="decoding workers (default: cores - 1)")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--figures", action="store_true", help="figures and HTML on, in both")
    ap.add_argument("--order", default="independent,sweep", help="which runs first")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import torch

    from clipprobe.world.generate import world_taxonomy

    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        dataset, truth, world = make_dataset(tmp / "data", args.n, args.size)
        models = make_models(tmp, args.models)
        tests = world_tests(truth, dataset, tmp / "tests.yaml")
        taxonomy = str(world.taxonomy)
        print(f"setup: {args.n} images of {args.size}x{args.size} px, {args.models} models, "
              f"{len(world_taxonomy()['pos'])} words, {len(truth['planted'])} association tests "
              f"({time.perf_counter() - t0:.0f} s); torch threads {torch.get_num_threads()}", flush=True)
        # warm-up: imports and first calls, on a 2-model sweep of 200 images
        w_dataset, w_truth, w_world = make_dataset(tmp / "warm", 500, 64, seed=1)
        w_tests = world_tests(w_truth, w_dataset, tmp / "warm-tests.yaml")
        run_sweep_once(models[:2], w_dataset, str(w_world.taxonomy), w_tests, tmp / "warm-run", args)
        run_independent(models[:1], w_dataset, str(w_world.taxonomy), w_tests, tmp / "warm-ind", args)
        times = {}
        for name in args.order.split(","):
            if name == "independent":
                times[name] = run_independent(models, dataset, taxonomy, tests, tmp / "independent", args)
            else:
                times[name], per_model = run_sweep_once(models, dataset, taxonomy, tests, tmp / "sweep", args)
            print(f"{name}: {times[name]:.1f} s", flush=True)
        shared = sum(v.get("embed_shared", 0.0) for v in per_model.values())
        print("sweep per model (s): " + "; ".join(
            f"{k.split(':', 1)[0]}{i}: " + ", ".join(f"{s} {v:.1f}" for s, v in t.items())
            for i, (k, t) in enumerate(per_model.items())))
        print(f"images per second across the zoo (shared pass, {args.models} models x {args.n} images): "
              f"{args.models * args.n / shared:.0f}" if shared else "")
        ratio = times["sweep"] / times["independent"]
        print(json.dumps({"models": args.models, "n": args.n, "size": args.size, "independent_s": round(
            times["independent"], 1), "sweep_s": round(times["sweep"], 1), "sweep_over_independent": round(ratio, 3),
            "target": 0.6, "met": ratio <= 0.6, "device": "cpu"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
