"""Train the world's tiny open_clip model contrastively on its (image, caption) pairs.

Run ``python -m clipprobe.world.train --out DIR`` (defaults reproduce the shipped
weights in ``clipprobe/world/weights/``). The architecture is an ordinary open_clip
JSON config registered with ``open_clip.add_model_config``; the loss is open_clip's
own ``ClipLoss`` and the text goes through open_clip's tokenizer. Training is
seeded and uses deterministic algorithms on the CPU, so the same seed, settings
and library versions give the same weights.

Weights are saved as float16 safetensors (the text tower keeps open_clip's full
49,408-token vocabulary, which dominates the file), beside a copy of the config
and ``<arch>.meta.json``: seed, hyper-parameters, a hash of the training data,
the loss curve, timings, versions and the check against the world's truth.

Trained models can be kept in a folder named by ``CLIPPROBE_WORLD_CACHE``: a training whose
configuration, keep flags (by content), world generator, training code and library versions are all
the same as a finished one copies that one's files instead of training again (the test suite and CI
set it, so that one CI run trains each world once).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from clipprobe.world import WORLD_ARCH

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CACHE_ENV = "CLIPPROBE_WORLD_CACHE"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; the defaults reproduce the shipped model. ``width`` scales the model's widths
    (embedding, vision and text transformers; another architecture, named ``clipprobe-world-tiny-w<%>``);
    ``spec`` the world it is trained on (:class:`clipprobe.world.generate.WorldSpec`); ``keep`` a
    ``weights.parquet`` written by ``clipprobe balance fit`` on the world's caption file, whose keep
    flags select the (image, caption) pairs trained on (:func:`kept_rows`)."""

    seed: int = 0
    epochs: int = 28
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_steps: int = 40
    threads: int = 2
    n_captions: int = 8000
    n_images: int = 3600
    k: int = 100
    width: float = 1.0
    spec: Any = None                    # a WorldSpec; None: the demo world
    keep: str | None = None             # weights.parquet of `clipprobe balance fit` on the world's captions:
                                        # train on the captions its keep flags keep (None: on all of them)
    train_seed: int | None = None       # seed of the initialisation and batch order (None: seed); the world's
                                        # images and captions are drawn with seed either way


def arch_name(width: float = 1.0) -> str:
    """The architecture of a world model of a given width (the shipped one at 1.0)."""
    return WORLD_ARCH if width == 1.0 else f"{WORLD_ARCH}-w{int(round(width * 100))}"


def arch_config(width: float = 1.0) -> dict[str, Any]:
    """The shipped architecture with its widths scaled (heads keep their width: 16 for the image, 2 heads
    for the text tower)."""
    cfg = json.loads(config_path().read_text(encoding="utf-8"))
    if width == 1.0:
        return cfg

    def scaled(value: int, multiple: int) -> int:
        return max(multiple, int(round(value * width / multiple)) * multiple)

    cfg["embed_dim"] = scaled(cfg["embed_dim"], 8)
    cfg["vision_cfg"]["width"] = scaled(cfg["vision_cfg"]["width"], cfg["vision_cfg"]["head_width"])
    cfg["text_cfg"]["width"] = scaled(cfg["text_cfg"]["width"], 2 * cfg["text_cfg"]["heads"])
    return cfg


def config_path(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"{arch}.json"


def weights_path(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"{arch}.safetensors"


def meta_path(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH) -> Path:
    return Path(weights_dir or WEIGHTS_DIR) / f"{arch}.meta.json"


def model_spec(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH) -> tuple[str, str]:
    """``(--model, --model-config)`` of a world model: the shipped one, or one in ``weights_dir``."""
    return f"{arch}:{weights_path(weights_dir, arch)}", str(config_path(weights_dir, arch))


def register_arch(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH) -> str:
    """Register the world's architecture with open_clip; return its name."""
    import open_clip

    open_clip.add_model_config(config_path(weights_dir, arch))
    return arch


def load_world_model(weights_dir: str | Path | None = None, arch: str = WORLD_ARCH):
    """The shipped (or a retrained) world model: ``(model, preprocess, tokenizer)``, in eval mode."""
    import open_clip

    arch = register_arch(weights_dir, arch)
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(weights_path(weights_dir,
                                                                                                   arch)))
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(arch)


def _normalise(images):
    """uint8 (n, H, W, 3) -> float tensor (n, 3, H, W) with open_clip's OpenAI mean/std."""
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


MSG_KEEP_ROWS = ("keep: {path} holds weights for {got} captions (rows {rows}); the world of this training has "
                 "{n} captions (rows 0..{last}), written to one caption file")


def kept_rows(path: str | Path, n: int):
    """Sorted rows (caption indices) whose keep flag is set in a ``weights.parquet`` (a file or a folder)
    of ``clipprobe balance fit`` on the world's one caption file of ``n`` rows."""
    import numpy as np
    import pandas as pd

    from clipprobe.errors import DataError, UsageError

    try:
        table = pd.read_parquet(path, columns=["file", "row", "keep"])
    except (OSError, ValueError, KeyError) as err:
        raise DataError(f"keep: {path} is not a weights table of `clipprobe balance fit` ({err})") from None
    rows = table["row"].to_numpy(np.int64)
    files = table["file"].astype(str).nunique()
    if files != 1 or len(rows) != n or not np.array_equal(np.sort(rows), np.arange(n)):
        shown = f"{rows.min()}..{rows.max()}" if len(rows) else "none"
        raise UsageError(MSG_KEEP_ROWS.format(path=path, got=len(rows), rows=shown, n=n, last=n - 1))
    return np.sort(rows[table["keep"].to_numpy(bool)])


def _lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    import math

    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * progress))


def evaluate_in_memory(model, tokenizer, cfg: TrainConfig):
    """Check the model on the probe split drawn in memory (the same pixels as the PNG files)."""
    import numpy as np
    import torch

    from clipprobe.faces import race_gender
    from clipprobe.world import generate as gen
    from clipprobe.world.evaluate import check_world, word_embeddings

    spec = cfg.spec or gen.DEFAULT_SPEC
    people = gen.sample_people(cfg.seed, "val", cfg.n_images)
    x = _normalise(gen.render_array(people))
    with torch.no_grad():
        img = torch.cat([model.encode_image(x[i:i + 512], normalize=True) for i in range(0, len(x), 512)]).numpy()
    race = np.array([gen.ATTRIBUTES["race"][p.race] for p in people], dtype=object)
    gender = np.array([gen.ATTRIBUTES["gender"][p.gender] for p in people], dtype=object)
    age = np.array([gen.ATTRIBUTES["age"][p.age] for p in people], dtype=object)
    labels = {"race": race, "gender": gender, "age": age,
              "race_gender": np.array([race_gender(r, g) for r, g in zip(race, gender)], dtype=object)}
    truth = gen.truth_dict(cfg.seed, cfg.n_images, cfg.n_captions, {"words": _zero_counts(spec)}, spec)
    return check_world(img, word_embeddings(model, tokenizer, truth), labels, truth, k=cfg.k)


def _zero_counts(spec=None):
    from clipprobe.world import generate as gen

    spec = spec or gen.DEFAULT_SPEC
    words = [w for w, *_ in gen.PLANTED] + [w for w, *_ in gen.CONTROLS] + [lp.word for lp in spec.local]
    return {w: {"n_word": 0, "n_both": {a: {g: 0 for g in gs} for a, gs in gen.ATTRIBUTES.items()}} for w in words}


def training_key(cfg: TrainConfig, *, evaluate: bool = True) -> str:
    """A hash of everything that decides a training's output: the settings (the world spec included),
    the content of the keep flags' file, the architecture, the generator and training code, and the
    versions of the libraries that compute it."""
    from clipprobe.runinfo import package_versions
    from clipprobe.world import generate as gen

    h = hashlib.sha256()
    settings = asdict(cfg)
    settings["spec"] = asdict(cfg.spec) if cfg.spec is not None else None
    settings["keep"] = _content_sha256(Path(cfg.keep)) if cfg.keep else None
    versions = package_versions()
    h.update(json.dumps({"settings": settings, "arch": arch_config(cfg.width), "evaluate": evaluate,
                         "generator": gen.GENERATOR_VERSION,
                         "versions": {k: versions.get(k) for k in ("torch", "open_clip_torch", "numpy")}},
                        sort_keys=True, default=str).encode())
    for module in (gen.__file__, __file__):
        h.update(Path(module).read_bytes())
    return h.hexdigest()[:20]


def _content_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes, or of a folder's files (a parquet dataset): their relative paths and bytes."""
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        h.update(str(f.relative_to(path)).encode() + b"\0" if f != path else b"")
        h.update(f.read_bytes())
    return h.hexdigest()


def _model_files(folder: Path, arch: str) -> list[Path]:
    return [p for p in (config_path(folder, arch), weights_path(folder, arch), meta_path(folder, arch)) if p.is_file()]


TRAINING_TURN = "one-training-at-a-time"    # lock name (``.NAME.lock`` in the cache) shared by every training


def train_world_model(out_dir: str | Path | None = None, cfg: TrainConfig = TrainConfig(), *,
                      evaluate: bool = True) -> dict[str, Any]:
    """Train from scratch and write weights, config and meta into ``out_dir``; return the meta.

    With ``CLIPPROBE_WORLD_CACHE`` set, a finished training with the same :func:`training_key` is
    copied from that folder instead, and a new one is stored there; and the processes that share the
    folder train one at a time (:data:`TRAINING_TURN`): each training sets its own number of torch threads
    (``cfg.threads``), so two at once on the same cores oversubscribe them (two trainings side by side on
    CI's 2 cores took about 20 minutes each). Waiting does not change what is trained.
    """
    cache = os.environ.get(CACHE_ENV)
    if not cache:
        return _train(out_dir, cfg, evaluate=evaluate)
    arch = arch_name(cfg.width)
    out = Path(out_dir or WEIGHTS_DIR)
    entry = Path(cache) / training_key(cfg, evaluate=evaluate)
    # one training at a time in this cache: a second process with the same key waits, then copies
    with _training_lock(Path(cache) / TRAINING_TURN):
        return _train_or_copy(entry, out, arch, cfg, evaluate=evaluate)


@contextlib.contextmanager
def _training_lock(entry: Path):
    """An exclusive lock named after ``entry`` (POSIX ``flock``; elsewhere none: both may train, one stores)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.parent / f".{entry.name}.lock", "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _train_or_copy(entry: Path, out: Path, arch: str, cfg: TrainConfig, *, evaluate: bool) -> dict[str, Any]:
    if not meta_path(entry, arch).is_file():
        meta = _train(out, cfg, evaluate=evaluate)
        tmp = entry.parent / f".{entry.name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for f in _model_files(out, arch):
            shutil.copy2(f, tmp / f.name)
        try:
            os.replace(tmp, entry)
        except OSError:              # another process stored the same training first
            shutil.rmtree(tmp, ignore_errors=True)
        return meta
    log.info("world model %s: reusing the identical training in %s", arch, entry)
    out.mkdir(parents=True, exist_ok=True)
    for f in _model_files(entry, arch):
        shutil.copy2(f, out / f.name)
    register_arch(out, arch)
    return json.loads(meta_path(out, arch).read_text(encoding="utf-8"))


def _train(out_dir: str | Path | None, cfg: TrainConfig, *, evaluate: bool) -> dict[str, Any]:
    import numpy as np
    import open_clip
    import torch
    from open_clip.loss import ClipLoss
    from safetensors.torch import save_file

    from clipprobe._io import atomic_path, write_json, write_text
    from clipprobe.runinfo import package_versions
    from clipprobe.world import generate as gen

    out = Path(out_dir or WEIGHTS_DIR)
    out.mkdir(parents=True, exist_ok=True)
    arch = arch_name(cfg.width)
    spec = cfg.spec or gen.DEFAULT_SPEC
    arch_cfg = arch_config(cfg.width)
    if out.resolve() != WEIGHTS_DIR.resolve() or arch != WORLD_ARCH:
        write_text(config_path(out, arch), json.dumps(arch_cfg, indent=2) + "\n")
    register_arch(out, arch)

    torch.set_num_threads(cfg.threads)
    torch.use_deterministic_algorithms(True)
    train_seed = cfg.seed if cfg.train_seed is None else cfg.train_seed
    torch.manual_seed(train_seed)
    t0 = time.perf_counter()
    people = gen.sample_people(cfg.seed, "train", cfg.n_captions)
    images = gen.render_array(people)
    texts, _ = gen.make_captions(cfg.seed, people, spec)
    if cfg.keep is not None:             # the pairs whose caption the balancing keeps
        rows = kept_rows(cfg.keep, len(texts))
        images = images[rows]
        texts = [texts[i] for i in rows]
        log.info("training on %d of %d captions (keep flags of %s)", len(texts), cfg.n_captions, cfg.keep)
    data_hash = hashlib.sha256()
    data_hash.update(images.tobytes())
    data_hash.update("\n".join(texts).encode("utf-8"))
    tokenizer = open_clip.get_tokenizer(arch)
    x = _normalise(images)
    tokens = tokenizer(texts)
    t_data = time.perf_counter() - t0

    model = open_clip.create_model(arch)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    loss_fn = ClipLoss()
    gen_order = torch.Generator().manual_seed(train_seed)
    n = len(texts)
    steps_per_epoch = n // cfg.batch_size
    total = steps_per_epoch * cfg.epochs
    curve = []
    step = 0
    t1 = time.perf_counter()
    for epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=gen_order)
        losses = []
        for b in range(steps_per_epoch):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, total, cfg)
            image_features, text_features, logit_scale = model(x[idx], tokens[idx])[:3]
            loss = loss_fn(image_features, text_features, logit_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, 4.6052)
            losses.append(float(loss.detach()))
            step += 1
        curve.append(round(float(np.mean(losses)), 5))
        log.info("epoch %d/%d loss %.4f (%.0f s)", epoch + 1, cfg.epochs, curve[-1], time.perf_counter() - t1)
    t_train = time.perf_counter() - t1

    model.eval()
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(weights_path(out, arch), suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"arch": arch, "seed": str(cfg.seed)})
    meta: dict[str, Any] = {
        "arch": arch,
        "weights": weights_path(out, arch).name,
        "weights_dtype": "float16",
        "config": asdict(cfg),
        "world": {"generator_version": gen.GENERATOR_VERSION, "seed": cfg.seed, "n_captions": cfg.n_captions,
                  "rate_scale": spec.rate_scale, "local": [asdict(lp) for lp in spec.local]},
        "training_data_sha256": data_hash.hexdigest(),
        "loss_curve": curve,
        "timings_s": {"data": round(t_data, 2), "train": round(t_train, 2)},
        "versions": package_versions(),
    }
    if cfg.keep is not None:
        meta["world"]["n_trained"] = len(texts)
    if evaluate:
        # Check the weights as saved (float16), as a user will load them.
        reloaded, _, tok = load_world_model(out, arch)
        check = evaluate_in_memory(reloaded, tok, cfg)
        meta["check"] = check.summary()
        log.info("check: recall %.3f, false-positive rate %.3f, null %.4f", check.recall,
                 check.false_positive_rate, check.null_flagged_rate)
    write_json(meta_path(out, arch), meta)
    return meta


def main(argv: Sequence[str] | None = None) -> int:
    defaults = TrainConfig()
    ap = argparse.ArgumentParser(prog="python -m clipprobe.world.train", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(WEIGHTS_DIR), help="folder for weights, config and meta")
    for name, value in asdict(defaults).items():
        kind = str if name == "keep" else int if name == "train_seed" else type(value)
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    ap.add_argument("--no-check", action="store_true", help="skip the check against the world's truth")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger().setLevel(logging.WARNING)  # open_clip logs through the root logger
    logging.getLogger("clipprobe").setLevel(logging.INFO)
    cfg = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    meta = train_world_model(args.out, cfg, evaluate=not args.no_check)
    summary = {"weights": str(weights_path(args.out)), "train_s": meta["timings_s"]["train"],
               **({"check": meta["check"]} if "check" in meta else {})}
    print(json.dumps(summary, indent=2))  # the script's result, on stdout
    return 0


if __name__ == "__main__":
    # Run the module under its own name, so its logger is "clipprobe.world.train", not "__main__".
    from clipprobe.world import train as _module

    raise SystemExit(_module.main())
