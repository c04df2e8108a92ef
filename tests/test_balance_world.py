"""Balancing validated against planted truth, end to end, on the demo world (issue 15, item 5).

The world's 8,000 captions are balanced for gender (the lexicon's "kind x" / "kind y" mentions, labels
= every planted and control word) with `balance fit`; the tiny CLIP is retrained, seeded, on the kept
captions, and on a uniformly random subset of the same size (a control for having less data); the
shipped model (all captions, same seed and settings) is the unbalanced one. Measured for each: the
probe's skew of the 12 planted words towards their planted group (probe_scores, k = 100), model RB on
person-free images ("a photo of a kind x person" vs "... kind y person"), and model AB on faces for
the pair of planted gender words (rural, planted with kind X; architect, with kind Y).

Run ``python tests/test_balance_world.py [WORKDIR [lexicon|column]]`` to print the whole comparison as
JSON (about 5 minutes on 2 idle cores, 30 on a loaded shared one; ``column``: balance on each image's
true gender, given as a column, instead of the captions' mentions); the slow test runs the lexicon
variant without the control model and asserts the data-side guarantees.

One training per condition is not evidence of a difference between them: the model's RB and AB move
more between draws of the kept set (keep flags) and of the training seed than between M4 and a random
subset. ``python tests/test_balance_world.py WORKDIR draws [N [EPOCHS]]`` trains N >= 5 draws per
condition (M4 with keep-flag seed d, a uniform random subset of the same size with seed d, each trained
with training seed d) and reports, per measure, each condition's mean, standard deviation and range,
and a direction only where the two conditions' ranges do not overlap (:func:`compare_draws`). At the
shipped 28 epochs that is 2N trainings of several CPU-minutes each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ATTRIBUTE = "gender"
KEEP = 0.6          # the largest feasible keep rate here is 0.63 (the words planted with one group must go)
KEEP_COLUMN = 0.25  # with each image's true gender: 0.27
EPS = 0.01
N_OBJECTS = 600
SEED = 0


def _images(seed: int = SEED):
    from clipprobe.world import generate as gen
    from clipprobe.world.train import _normalise

    people = gen.sample_people(seed, "val", gen.DEFAULT_N_IMAGES)
    faces = _normalise(gen.render_array(people))
    labels = {a: np.array([gen.ATTRIBUTES[a][getattr(p, a)] for p in people], dtype=object)
              for a in ("race", "gender", "age")}
    rng = np.random.default_rng([seed, 0x0B1EC7])
    objects = []
    for _ in range(N_OBJECTS):
        acc, bg = int(rng.integers(len(gen.ACCESSORIES))), int(rng.integers(len(gen.BACKGROUNDS)))
        objects.append(np.asarray(gen.render_object(acc, bg, rng.random(12))))
    return faces, labels, _normalise(np.stack(objects))


def probe_model(weights_dir, truth, images) -> dict:
    """Planted-word skews, model RB on objects and model AB (rural / architect) of one world model."""
    import pandas as pd
    import torch

    from clipprobe.analysis.association import model_ab, model_rb
    from clipprobe.analysis.probe import probe_scores
    from clipprobe.world.evaluate import word_embeddings
    from clipprobe.world.train import load_world_model

    faces, labels, objects = images
    model, _, tokenizer = load_world_model(weights_dir)
    with torch.no_grad():
        img = torch.cat([model.encode_image(faces[i:i + 512], normalize=True) for i in range(0, len(faces), 512)])
        obj = model.encode_image(objects, normalize=True)
        person = model.encode_text(tokenizer(["a photo of a kind x person", "a photo of a kind y person"]),
                                   normalize=True)
    img, obj, person = img.float().numpy(), obj.float().numpy(), person.float().numpy()
    words = word_embeddings(model, tokenizer, truth)
    names = list(words)
    scores = np.stack([words[w] for w in names]) @ img.T
    tables = probe_scores(scores, pd.DataFrame(labels), words=names, k=100, permutations=200)
    g = tables.groups
    planted = {}
    for p in truth["planted"]:
        row = g[(g["word"] == p["word"]) & (g["attribute"] == p["attribute"]) & (g["group"] == p["group"])].iloc[0]
        planted[f"{p['word']}/{p['group']}"] = {k: float(row[k]) for k in ("skew", "skew_ci_low", "skew_ci_high")}
        planted[f"{p['word']}/{p['group']}"]["flagged"] = bool(row["flagged"])
    controls = g[g["word"].isin(truth["controls"])]
    s_obj = obj @ person.T
    rb = model_rb(s_obj[:, 0], s_obj[:, 1])
    w = {n: i for i, n in enumerate(names)}
    ab = model_ab(scores[w["rural"]], scores[w["architect"]], labels["gender"], pairs=[("rural", "architect")],
                  group_names=("kind X", "kind Y"))
    return {
        "planted": planted,
        "mean_planted_skew": float(np.mean([v["skew"] for v in planted.values()])),
        "planted_flagged": int(sum(v["flagged"] for v in planted.values())),
        "control_rows_flagged": int(controls["flagged"].sum()), "control_rows": int(len(controls)),
        "model_rb_objects": {"rb": rb.rb, "low": rb.rb_low, "high": rb.rb_high, "n": rb.n},
        "model_ab_rural_vs_architect": {"share_kind_X": float(ab.share[0, 0]), "share_kind_Y": float(ab.share[0, 1]),
                                        "diff": float(ab.diff[0]), "low": float(ab.diff_low[0]),
                                        "high": float(ab.diff_high[0])},
    }


def random_subset(weights: Path, n_keep: int, out: Path, seed: int = SEED) -> Path:
    """A weights table that keeps ``n_keep`` captions drawn uniformly (the same rows, files and keys)."""
    import pandas as pd

    table = pd.read_parquet(weights)
    rng = np.random.default_rng([seed, 0x5EB5E7])
    keep = np.zeros(len(table), bool)
    keep[rng.choice(len(table), size=n_keep, replace=False)] = True
    table = table.assign(q=n_keep / len(table), keep=keep)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out)
    return out


def labelled_captions(paths, out: Path) -> Path:
    """The world's caption file with a column ``gender`` holding each image's true group (what a perfect
    image classifier would give)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe.world import generate as gen

    table = pq.read_table(paths.captions)
    people = gen.sample_people(SEED, "train", table.num_rows)
    table = table.append_column(ATTRIBUTE, pa.array([gen.ATTRIBUTES[ATTRIBUTE][p.gender] for p in people]))
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out / "world-00000.parquet")
    return out / "world-00000.parquet"


def validate(work: Path, *, control: bool = True, groups_from: str = "lexicon") -> dict:
    """The whole comparison (see the module docstring) as a JSON-friendly dict. ``groups_from``:
    ``"lexicon"`` (the captions' gender mentions) or ``"column"`` (each image's true gender, as a column:
    the largest feasible keep rate is then 0.27, every caption of a planted gender word must go)."""
    import time

    from clipprobe.pipeline.balance import BalanceConfig, fit_balance
    from clipprobe.world import generate as gen
    from clipprobe.world.generate import generate_world
    from clipprobe.world.train import TrainConfig, train_world_model

    t0 = time.perf_counter()
    paths = generate_world(work / "world", seed=SEED)
    truth = json.loads(paths.truth.read_text())
    settings = dict(attribute=ATTRIBUTE, labels="all", taxonomy=str(paths.taxonomy), lexicon=str(paths.lexicon),
                    keep=KEEP, eps_r=EPS, eps_a=EPS, seed=SEED)
    captions = paths.captions
    if groups_from == "column":
        captions = labelled_captions(paths, work / "labelled")
        settings.update(attribute_column=ATTRIBUTE, groups=gen.ATTRIBUTES[ATTRIBUTE], keep=KEEP_COLUMN)
    fit = fit_balance(BalanceConfig(captions=(str(captions),), out=str(work / "balance"), **settings))
    weights = work / "balance" / "weights.parquet"
    t_fit = time.perf_counter() - t0
    models = {"unbalanced (shipped, all captions)": None}
    train = {}
    meta = train_world_model(work / "balanced", TrainConfig(seed=SEED, keep=str(weights)), evaluate=False)
    models["balanced (M4 keep flags)"] = work / "balanced"
    train["balanced"] = {"n_trained": meta["world"]["n_trained"], "train_s": meta["timings_s"]["train"],
                         "data_sha256": meta["training_data_sha256"]}
    if control:
        subset = random_subset(weights, meta["world"]["n_trained"], work / "random" / "weights.parquet")
        meta_r = train_world_model(work / "random", TrainConfig(seed=SEED, keep=str(subset)), evaluate=False)
        models["random subset of the same size"] = work / "random"
        train["random"] = {"n_trained": meta_r["world"]["n_trained"], "train_s": meta_r["timings_s"]["train"]}
    images = _images()
    probes = {name: probe_model(d, truth, images) for name, d in models.items()}
    run = fit.run
    return {
        "attribute": ATTRIBUTE, "groups_from": groups_from, "labels": "all world words", "keep": settings["keep"],
        "eps_r": EPS, "eps_a": EPS,
        "data": {"before": run["before"], "after_q": run["after"], "kept_flags": run["kept"], "fit": run["fit"]},
        "training": train, "models": probes, "seconds": {"fit": round(t_fit, 1),
                                                         "total": round(time.perf_counter() - t0, 1)},
        "_fit": fit,
    }


DRAWS = 5
MEASURES = ("model_rb", "model_ab", "mean_planted_skew")


def compare_draws(a, b, names=("M4", "random")) -> dict:
    """Per measure: each condition's draws with mean, sample standard deviation and range, the difference
    of the means, and a direction only where the two ranges do not overlap (else None: the spread between
    draws covers the difference)."""
    out = {}
    for measure in MEASURES:
        va = np.array([d[measure] for d in a], float)
        vb = np.array([d[measure] for d in b], float)
        apart = va.min() > vb.max() or vb.min() > va.max()
        direction = None
        if apart:
            direction = f"{names[0]} above {names[1]}" if va.mean() > vb.mean() else f"{names[0]} below {names[1]}"
        out[measure] = {
            **{name: {"draws": v.tolist(), "mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else
                      float("nan"), "min": float(v.min()), "max": float(v.max())} for name, v in zip(names, (va, vb))},
            "difference_of_means": float(va.mean() - vb.mean()), "ranges_overlap": not apart, "direction": direction}
    return out


def draws(work: Path, *, n_draws: int = DRAWS, epochs: int | None = None) -> dict:
    """Model RB, AB (rural vs architect) and the mean planted skew over ``n_draws`` draws of each condition:
    the M4 kept set with keep-flag seed d and a uniform random subset of the same size drawn with seed d,
    each trained with training seed d (the world itself is the same: seed 0). ``epochs``: None for the
    shipped 28."""
    import shutil
    import time

    from clipprobe.pipeline.balance import BalanceConfig, fit_balance
    from clipprobe.world.generate import generate_world
    from clipprobe.world.train import TrainConfig, train_world_model

    if n_draws < 2:
        raise ValueError("draws needs at least two draws per condition")
    t0 = time.perf_counter()
    paths = generate_world(work / "world", seed=SEED)
    truth = json.loads(paths.truth.read_text())
    images = _images()
    runs: dict[str, list] = {"M4": [], "random": []}
    fits = []
    for d in range(n_draws):
        fit = fit_balance(BalanceConfig(captions=(str(paths.captions),), out=str(work / "balance"), attribute=ATTRIBUTE,
                                        labels="all", taxonomy=str(paths.taxonomy), lexicon=str(paths.lexicon),
                                        keep=KEEP, eps_r=EPS, eps_a=EPS, seed=d, figure=False))
        fits.append({"seed": d, "kept_by_flags": fit.run["fit"]["kept_by_flags"], "kept": fit.run["kept"]})
        m4 = work / f"m4-{d}" / "weights.parquet"
        shutil.rmtree(m4, ignore_errors=True)
        shutil.copytree(work / "balance" / "weights.parquet", m4)
        subset = random_subset(m4, fit.run["fit"]["kept_by_flags"], work / f"random-{d}" / "weights.parquet", seed=d)
        for name, weights in (("M4", m4), ("random", subset)):
            cfg = TrainConfig(seed=SEED, train_seed=d, keep=str(weights), **({} if epochs is None else
                                                                               {"epochs": epochs}))
            meta = train_world_model(weights.parent / "model", cfg, evaluate=False)
            probe = probe_model(weights.parent / "model", truth, images)
            runs[name].append({"draw": d, "n_trained": meta["world"]["n_trained"],
                               "data_sha256": meta["training_data_sha256"],
                               "model_rb": probe["model_rb_objects"]["rb"],
                               "model_ab": probe["model_ab_rural_vs_architect"]["diff"],
                               "mean_planted_skew": probe["mean_planted_skew"]})
    return {"draws": n_draws, "epochs": epochs or TrainConfig().epochs, "keep": KEEP, "eps": EPS, "fits": fits,
            "runs": runs, "compare": compare_draws(runs["M4"], runs["random"]),
            "seconds": round(time.perf_counter() - t0, 1)}


def test_compare_draws_states_a_direction_only_where_the_ranges_are_apart():
    def runs(values):
        return [{"model_rb": v, "model_ab": -v, "mean_planted_skew": 0.0} for v in values]

    out = compare_draws(runs([0.13, 0.33, 0.32, 0.2, 0.25]), runs([0.10, 0.16, 0.19, 0.12, 0.3]))
    ab = out["model_rb"]
    assert ab["ranges_overlap"] and ab["direction"] is None
    assert ab["M4"]["sd"] == pytest.approx(np.std([0.13, 0.33, 0.32, 0.2, 0.25], ddof=1))
    assert ab["difference_of_means"] == pytest.approx(np.mean([0.13, 0.33, 0.32, 0.2, 0.25]) - 0.174)
    apart = compare_draws(runs([0.4, 0.5, 0.45]), runs([0.1, 0.2, 0.39]))
    assert apart["model_rb"]["direction"] == "M4 above random" and apart["model_ab"]["direction"] == "M4 below random"
    assert apart["mean_planted_skew"]["direction"] is None       # equal values: ranges overlap


@pytest.mark.study  # ten short trainings (2 epochs: the harness, not a result): 26 min on a loaded 2-core machine,
                    # over CI's budget: run by hand with `pytest -m study tests/test_balance_world.py`
def test_draws_report_the_spread_over_five_draws_per_condition(tmp_path):
    out = draws(tmp_path, n_draws=DRAWS, epochs=2)
    print(json.dumps(out, indent=1, default=float))
    m4, rnd = out["runs"]["M4"], out["runs"]["random"]
    assert len(m4) == len(rnd) == DRAWS
    # every draw keeps as many captions (the flags' counts do not depend on the seed), other captions
    sizes = {f["kept_by_flags"] for f in out["fits"]} | {r["n_trained"] for r in m4 + rnd}
    assert len(sizes) == 1
    assert len({r["data_sha256"] for r in m4}) == DRAWS and len({r["data_sha256"] for r in rnd}) == DRAWS
    for measure, c in out["compare"].items():
        va = np.array([r[measure] for r in m4])
        assert c["M4"]["draws"] == va.tolist() and c["M4"]["sd"] == pytest.approx(va.std(ddof=1))
        assert (c["direction"] is None) == c["ranges_overlap"]
    assert np.ptp([r["model_ab"] for r in m4]) > 0          # the training seed and the kept set move the model


@pytest.mark.slow   # one retraining of the tiny CLIP on 3,071 captions: about 3 minutes on 2 idle cores
def test_balancing_the_world_meets_eps_and_retrains_on_the_kept_captions(tmp_path):
    import pandas as pd

    from clipprobe.world.train import kept_rows

    out = validate(tmp_path, control=False)      # the random-subset control: run the script
    fit = out.pop("_fit")
    print(json.dumps(out, indent=1, default=float))
    data = out["data"]
    assert data["before"]["rb_max"] > 0.03 and data["before"]["ab_max"] > 0.5   # the world's planted bias
    assert data["after_q"]["rb_max"] <= EPS + 1e-9
    res = fit.solution.residual_frame()
    assert np.nanmax(np.abs(res["residual"])) <= EPS + 1e-9
    # AB after is bounded through the constraints: AB_kr = P(r) [s_kr / s_k - (1 - s_kr) / (1 - s_k)]
    cells = fit.cells[fit.cells["data"] == "after"]
    pi = 0.5
    bound = (pi + EPS) / (pi - EPS) - (1 - pi - EPS) / (1 - pi + EPS)
    rate = (cells["p_in"] * cells["n_in"] + cells["p_out"] * cells["n_out"]) / (cells["n_in"] + cells["n_out"])
    assert (cells["ab"].abs() <= rate * bound + 1e-9).all()
    # the balanced model was trained on exactly the captions the keep flags keep
    weights = pd.read_parquet(tmp_path / "balance" / "weights.parquet")
    kept = kept_rows(tmp_path / "balance" / "weights.parquet", 8000)
    assert out["training"]["balanced"]["n_trained"] == len(kept) == int(weights["keep"].sum())
    assert abs(len(kept) / 8000 - data["fit"]["keep_rate"]) < 0.02
    for probe in out["models"].values():
        assert len(probe["planted"]) == 12 and np.isfinite(probe["mean_planted_skew"])


if __name__ == "__main__":
    import logging
    import tempfile

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("clipprobe").setLevel(logging.INFO)
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="balance-world-"))
    if len(sys.argv) > 2 and sys.argv[2] == "draws":
        n = int(sys.argv[3]) if len(sys.argv) > 3 else DRAWS
        if n < DRAWS:
            raise SystemExit(f"draws: at least {DRAWS} draws per condition (got {n})")
        result = draws(folder, n_draws=n, epochs=int(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        result = validate(folder, groups_from=sys.argv[2] if len(sys.argv) > 2 else "lexicon")
        result.pop("_fit")
    print(json.dumps(result, indent=1, default=float))
