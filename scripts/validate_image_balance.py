"""Balancing what the model sees, validated on the planted world: caption-derived M4, image-derived M4 and a
random subset, on the same number of training pairs, over several world seeds.

For each seed ``s`` (the world of seed ``s``: its 8,000 captions and their images, its 3,600 labelled probe
images):

1. the world's training images are embedded with the shipped tiny world CLIP (trained on world 0) and
   written in clip-retrieval's layout (``img_emb/img_emb_0.npy`` float16, ``metadata/metadata_0.parquet``
   with ``caption`` and ``url``);
2. the attribute pass (:func:`clipprobe.pipeline.attributes.run_attributes`) classifies each image's
   gender ("a photo of a kind x person" / "... kind y person") with the same model's text tower, after
   measuring the classifier on the world's labelled probe split;
3. M4 (``balance fit``, labels = every planted and control word, eps 0.01, target keep ``--keep``) on
   the groups the captions name (lexicon), on the image-derived column (``image_gender``) and, with
   ``--both``, on ``both_gender``; with ``--soft``, on the images' soft probabilities (``soft_gender``,
   E[s_k] in steps of 1/16: balance's soft mode; with ``--fit-scale`` at a softmax scale fitted on the probe
   images);
4. every condition is cut to the same number of pairs ``n`` = the smallest number kept by an M4 run: an M4
   run that kept more is thinned uniformly at random to ``n`` (which leaves its expected balance as it
   is), and a random subset of ``n`` of all 8,000 pairs is drawn (seeded);
5. the planted association in each training set, on the images' *true* gender: P(rural | kind-X image)
   and P(rural | kind-Y image) (rural is planted with kind X), P(architect | kind Y / kind X);
6. the tiny CLIP is retrained (seed ``s``, ``--steps`` optimizer steps: as many as the shipped model's
   28 epochs of 8,000 pairs, so that a small set is not also an undertrained model) on each set (the
   ``both`` set only with ``--train-both``) and measured as in ``tests/test_balance_world.py``:
   the probe's skew of the planted words (k = 100), model RB on person-free images, model AB for rural vs
   architect on the probe faces.

Run: ``python scripts/validate_image_balance.py --out DIR --seeds 0 1 2`` (prints and writes
``DIR/summary.json``; resumable per seed: a finished seed's ``result.json`` is read back). With
``--no-train`` a few minutes per seed; with the three retrainings of 870 steps about an hour per seed on a
loaded 2-core machine (seeds can run as separate processes on the same ``--out``, one seed each; then run
once more with all the seeds to write the summary). ``--captions N`` draws worlds of N captions instead of the
demo's 8,000 (the same planted rates and probe images): the kept sets grow with N, and since every training
takes the same number of steps, a larger set is seen for fewer epochs. The summary gives, per condition and measure, the
mean and the range (min-max) over the seeds: not a confidence interval.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipprobe.world.generate import DEFAULT_N_CAPTIONS     # the demo world's captions (training pairs)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))      # the model measurements of the caption-balancing validation

log = logging.getLogger("validate_image_balance")

EPS = 0.01
PROMPTS = ("# the world's gender, as its captions write it\nattribute: gender\ngroups:\n"
           "  kind X: [a photo of a kind x person]\n  kind Y: [a photo of a kind y person]\n")
PAIRS = (("rural", "kind X"), ("architect", "kind Y"))
SOFT_BINS = 16     # balance's default steps of E[s_k]
CONDITIONS = ("caption", "image", "both", "soft", "random")     # the kept sets compared


def _word(texts, word: str) -> np.ndarray:
    pattern = re.compile(rf"(?<![A-Za-z0-9]){word}(?![A-Za-z0-9])", re.IGNORECASE)
    return np.array([bool(pattern.search(t)) for t in texts])


def data_association(texts, gender, kept) -> dict:
    """The planted words' rates by the images' true gender among the kept pairs, and how many name a gender."""
    out = {"n": int(kept.sum())}
    names = _word(texts, "kind x") | _word(texts, "kind y")
    out["share_naming_gender"] = float(names[kept].mean()) if kept.any() else float("nan")
    out["share_kind_X"] = float((gender[kept] == "kind X").mean()) if kept.any() else float("nan")
    for word, _ in PAIRS:
        has = _word(texts, word)
        for g in ("kind X", "kind Y"):
            sel = kept & (gender == g)
            out[f"P({word}|{g})"] = float(has[sel].mean()) if sel.any() else float("nan")
    out["rural_gap"] = out["P(rural|kind X)"] - out["P(rural|kind Y)"]
    out["architect_gap"] = out["P(architect|kind Y)"] - out["P(architect|kind X)"]
    return out


def _embed_train_images(seed: int, paths, folder: Path):
    import pandas as pd
    import torch

    from clipprobe.embeddings.external import write_embedding_folder
    from clipprobe.world import generate as gen
    from clipprobe.world.train import _normalise, load_world_model

    if (folder / "img_emb").is_dir():
        return
    model, _, _ = load_world_model()
    cap = pd.read_parquet(paths.captions)
    people = gen.sample_people(seed, "train", len(cap))
    out = []
    with torch.no_grad():
        for i in range(0, len(people), 500):
            x = _normalise(gen.render_array(people[i:i + 500]))
            out.append(model.encode_image(x, normalize=True).numpy().astype(np.float16))
    meta = pd.DataFrame({"image_path": [f"train/{i + 1}.png" for i in range(len(cap))],
                         "caption": cap["TEXT"].astype(str), "url": cap["URL"].astype(str)})
    write_embedding_folder(folder, [(np.concatenate(out), meta)])


def _fit(config, max_tries: int = 3):
    """fit_balance, lowering the keep target below the largest feasible keep rate when it is too high."""
    import dataclasses

    from clipprobe.analysis.balance import BalanceInfeasible
    from clipprobe.pipeline.balance import fit_balance

    for _ in range(max_tries):
        try:
            return fit_balance(config)
        except BalanceInfeasible as err:
            log.info("keep %.3f infeasible (largest %.4f): retrying at 0.95 of it", config.keep, err.max_keep)
            config = dataclasses.replace(config, keep=round(0.95 * err.max_keep, 4))
    return fit_balance(config)


def _flags(weights: Path, n_rows: int) -> np.ndarray:
    from clipprobe.world.train import kept_rows

    kept = np.zeros(n_rows, bool)
    kept[kept_rows(weights, n_rows)] = True
    return kept


def _write_flags(template: Path, kept: np.ndarray, dest: Path) -> Path:
    """A weights table like ``template`` (same files, rows, keys) whose keep flags are ``kept``."""
    import pandas as pd

    table = pd.read_parquet(template).sort_values("row").reset_index(drop=True)
    table = table.assign(keep=kept[table["row"].to_numpy()])
    dest.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(dest)
    return dest


def run_seed(seed: int, work: Path, *, keep: float, both: bool, threads: int, train_threads: int,
             steps: int, train_both: bool, train: bool = True, soft: bool = False, fit_scale: bool = False,
             n_captions: int = DEFAULT_N_CAPTIONS, retrain: Sequence[str] | None = None) -> dict:
    """One world: its attribute pass, the M4 fits, their data associations and (``train``) the tiny CLIP
    retrained on each kept set and probed. ``retrain``: the conditions retrained (default: caption, image
    and random, and both and soft with ``train_both``)."""
    import pandas as pd

    from clipprobe.pipeline.attributes import AttributeConfig, run_attributes
    from clipprobe.pipeline.balance import BalanceConfig
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.world import generate as gen
    from clipprobe.world.generate import generate_world
    from clipprobe.world.train import TrainConfig, model_spec, train_world_model
    from test_balance_world import _images, probe_model

    done = work / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if ((not soft or "soft" in result["data"]) and bool(result.get("scale_fit")) == fit_scale
                and result.get("n_captions", DEFAULT_N_CAPTIONS) == n_captions
                and (not train_both or not train or {"both", "soft"} & set(result["models"]))
                and (retrain is None or not train or set(retrain) <= set(result["models"]))):
            return result
        log.info("seed %d: %s has other conditions or scale; running the seed again", seed, done)
    t0 = time.perf_counter()
    paths = generate_world(work / "world", seed=seed, n_captions=n_captions)
    truth = json.loads(paths.truth.read_text())
    _embed_train_images(seed, paths, work / "emb")
    (work / "world-gender.yaml").write_text(PROMPTS)
    spec, cfg = model_spec()
    attr = run_attributes(AttributeConfig(
        embeddings=str(work / "emb"), out=str(work / "attributes"), prompts=str(work / "world-gender.yaml"),
        lexicon=str(paths.lexicon), workers=threads, soft_bins=SOFT_BINS if soft else None, fit_scale=fit_scale,
        probe=ProbeConfig(model=spec, model_config=cfg, dataset=paths.dataset_spec, device="cpu",
                          cache_dir=str(work / "cache"), num_workers=0)))
    texts = pd.read_parquet(paths.captions)["TEXT"].astype(str).tolist()
    n_rows = len(texts)
    people = gen.sample_people(seed, "train", n_rows)
    gender = np.array([gen.ATTRIBUTES["gender"][p.gender] for p in people], dtype=object)
    image_labels = pd.read_parquet(attr.shards[0])
    common = dict(attribute="gender", labels="all", taxonomy=str(paths.taxonomy), keep=keep, eps_r=EPS, eps_a=EPS,
                  seed=seed, figure=False)
    fits = {"caption": BalanceConfig(captions=(str(paths.captions),), out=str(work / "fit-caption"),
                                     lexicon=str(paths.lexicon), **common),
            "image": BalanceConfig(captions=(str(attr.shards[0]),), out=str(work / "fit-image"),
                                   attribute_column="image_gender", groups=attr.groups, text_column="caption",
                                   key="url", **common)}
    if both:
        fits["both"] = BalanceConfig(captions=(str(attr.shards[0]),), out=str(work / "fit-both"),
                                     attribute_column="both_gender", groups=attr.groups, text_column="caption",
                                     key="url", **common)
    if soft:
        fits["soft"] = BalanceConfig(captions=(str(attr.shards[0]),), out=str(work / "fit-soft"),
                                     attribute_column=attr.soft_column, soft_bins=SOFT_BINS, groups=attr.groups,
                                     text_column="caption", key="url", **common)
    fitted, kept = {}, {}
    for name, config in fits.items():
        res = _fit(config)
        weights = Path(config.out) / "weights.parquet"
        kept[name] = _flags(weights, n_rows)
        fitted[name] = {"keep_target": res.run["fit"]["keep_target"], "keep_rate": res.run["fit"]["keep_rate"],
                        "max_keep": res.run["fit"]["max_keep"], "kept_by_flags": res.run["fit"]["kept_by_flags"],
                        "data_before": res.run["before"], "data_kept": res.run["kept"], "weights": str(weights)}
    n = min(int(k.sum()) for k in kept.values())
    rng = np.random.default_rng([seed, 0x1A6E])
    for name in list(kept):
        rows = np.flatnonzero(kept[name])
        if len(rows) > n:                       # thinned to the common size, uniformly
            chosen = np.zeros(n_rows, bool)
            chosen[rng.choice(rows, size=n, replace=False)] = True
            kept[name] = chosen
    chosen = np.zeros(n_rows, bool)
    chosen[rng.choice(n_rows, size=n, replace=False)] = True
    kept["random"] = chosen
    if retrain is not None and set(retrain) - set(kept):
        raise ValueError(f"retrain: no kept set {sorted(set(retrain) - set(kept))} in this run (both and soft need "
                         "--both and --soft)")
    template = Path(fits["caption"].out) / "weights.parquet"
    images = _images(seed)
    result = {"seed": seed, "n_captions": n_rows, "n_pairs": n, "keep": keep, "eps": EPS, "classifier": attr.run["calibration"],
              "scale": attr.run["scale"], "scale_fit": attr.run.get("scale_fit"),
              "image_labels_accuracy_on_training_images": float((image_labels["image_gender"].astype(object)
                                                                 .to_numpy() == gender).mean()),
              "attribute_pass": attr.run["summary"], "fits": fitted,
              # what soft mode sees where the association is: the mean probability of the planted group
              # among the training images of each planted word's captions (all of that group, truly)
              "soft_p_of_planted_group": {
                  word: {"true_share": float((gender[_word(texts, word)] == group).mean()),
                         "mean_p": float(image_labels[f"p_{group}"].to_numpy(np.float64)[_word(texts, word)].mean())}
                  for word, group in PAIRS},
              "data": {"all": data_association(texts, gender, np.ones(n_rows, bool))}, "models": {}}
    batches = max(1, n // TrainConfig.batch_size)
    epochs = max(TrainConfig.epochs, -(-steps // batches))      # the same number of steps as the shipped model
    result["training"] = {"epochs": epochs, "steps": epochs * batches, "batch_size": TrainConfig.batch_size}
    for name, flags in kept.items():
        result["data"][name] = data_association(texts, gender, flags)
        if not train or (name not in retrain if retrain is not None else name in ("both", "soft") and not train_both):
            continue
        weights = _write_flags(template, flags, work / "train" / name / "weights.parquet")
        cfg = TrainConfig(seed=seed, keep=str(weights), threads=train_threads, epochs=epochs, n_captions=n_rows)
        meta = train_world_model(work / "model" / name, cfg, evaluate=False)
        probe = probe_model(work / "model" / name, truth, images)
        probe["n_trained"] = meta["world"]["n_trained"]
        probe["train_s"] = meta["timings_s"]["train"]
        result["models"][name] = probe
        log.info("seed %d %s: n=%d, model AB %.3f, RB %.3f", seed, name, n,
                 probe["model_ab_rural_vs_architect"]["diff"], probe["model_rb_objects"]["rb"])
    result["seconds"] = round(time.perf_counter() - t0, 1)
    done.write_text(json.dumps(result, indent=1, default=float))
    return result


MEASURES = {
    "data P(rural|kind X)": lambda r, c: r["data"][c]["P(rural|kind X)"],
    "data P(rural|kind Y)": lambda r, c: r["data"][c]["P(rural|kind Y)"],
    "data P(architect|kind Y)": lambda r, c: r["data"][c]["P(architect|kind Y)"],
    "data P(architect|kind X)": lambda r, c: r["data"][c]["P(architect|kind X)"],
    "data share naming a gender": lambda r, c: r["data"][c]["share_naming_gender"],
    "model AB rural vs architect": lambda r, c: r["models"][c]["model_ab_rural_vs_architect"]["diff"],
    "model RB objects": lambda r, c: r["models"][c]["model_rb_objects"]["rb"],
    "skew rural/kind X": lambda r, c: r["models"][c]["planted"]["rural/kind X"]["skew"],
    "skew architect/kind Y": lambda r, c: r["models"][c]["planted"]["architect/kind Y"]["skew"],
    "planted triples flagged": lambda r, c: r["models"][c]["planted_flagged"],
    "control rows flagged": lambda r, c: r["models"][c]["control_rows_flagged"],
}


def _over_groups(result: dict, column: str, pick):
    values = [row[column] for row in result["classifier"].get("by_group", []) if row.get(column) is not None]
    return pick(values) if values else None


def summarise(results: list[dict]) -> dict:
    conditions = [c for c in results[0]["models"] if all(c in r["models"] for r in results)]
    data_only = [c for c in results[0]["data"] if c not in conditions and c != "all"]
    out = {"seeds": [r["seed"] for r in results], "n_pairs": [r["n_pairs"] for r in results],
           "classifier_accuracy": [r["classifier"]["accuracy"] for r in results],
           "classifier_accuracy_gap": [r["classifier"]["accuracy_gap"] for r in results],
           # the soft probabilities p_k on the probe images (absent from results of earlier versions)
           "classifier_soft_share_error_max": [r["classifier"].get("soft", {}).get("soft_share_error_max")
                                               for r in results],
           "classifier_calibration_error_max": [r["classifier"].get("soft", {}).get("calibration_error_max")
                                                for r in results],
           # the calibration test of each group's p_k (absent from results of earlier versions): the error
           # reached by chance (largest over the groups) and the p-value (smallest over the groups)
           "classifier_calibration_by_chance_max": [_over_groups(r, "calibration_error_by_chance", max)
                                                    for r in results],
           "classifier_calibration_p_min": [_over_groups(r, "calibration_p", min) for r in results],
           "soft_p_of_planted_group": {w: [r.get("soft_p_of_planted_group", {}).get(w, {}).get("mean_p")
                                           for r in results] for w, _ in PAIRS},
           "measures": {}}
    for name, fn in MEASURES.items():
        if not name.startswith("data") and not conditions:
            continue
        out["measures"][name] = {}
        for c in conditions + (data_only + ["all"] if name.startswith("data") else []):
            values = [float(fn(r, c)) for r in results]
            out["measures"][name][c] = {"mean": float(np.mean(values)), "min": float(np.min(values)),
                                        "max": float(np.max(values)), "values": values}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--keep", type=float, default=0.25, help="target keep rate of both M4 runs")
    ap.add_argument("--captions", type=int, default=DEFAULT_N_CAPTIONS,
                    help=f"captions (training pairs) of each world ({DEFAULT_N_CAPTIONS:,}: the demo world's); more "
                         "give larger kept sets, trained for fewer epochs at the same number of steps")
    ap.add_argument("--both", action="store_true", help="also M4 on both_gender (caption's group, else image's)")
    ap.add_argument("--threads", type=int, default=2, help="threads of the attribute pass")
    ap.add_argument("--steps", type=int, default=868,
                    help="optimizer steps of each training (868: the shipped model's 28 epochs of 8,000 pairs); "
                         "the epochs are raised to reach them, at least 28")
    ap.add_argument("--soft", action="store_true",
                    help="also M4 on the images' soft probabilities (soft_gender, 1/16 steps)")
    ap.add_argument("--fit-scale", action="store_true",
                    help="the attribute pass fits its softmax scale on the probe images (balance attributes "
                         "--fit-scale); the soft condition uses it")
    ap.add_argument("--train-both", action="store_true", help="also retrain on the both_gender (and soft) M4 sets")
    ap.add_argument("--retrain", nargs="+", default=None, choices=CONDITIONS, metavar="CONDITION",
                    help=f"retrain on these kept sets only ({', '.join(CONDITIONS)}; default: caption, image, "
                         "random, and both and soft with --train-both)")
    ap.add_argument("--no-train", dest="train", action="store_false",
                    help="the data side only: no retraining (minutes instead of an hour per seed)")
    ap.add_argument("--train-threads", type=int, default=1,
                    help="torch threads of each training (1: a loaded machine; the shipped model used 2)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("clipprobe", "validate_image_balance"):
        logging.getLogger(name).setLevel(logging.INFO)
    out = Path(args.out)
    results = [run_seed(s, out / f"seed{s}", keep=args.keep, both=args.both, threads=args.threads,
                        train_threads=args.train_threads, steps=args.steps, train_both=args.train_both,
                        train=args.train, soft=args.soft, fit_scale=args.fit_scale, n_captions=args.captions,
                        retrain=args.retrain)
               for s in args.seeds]
    summary = summarise(results)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
