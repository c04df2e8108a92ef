"""Image-embedding throughput: the cached pipeline against two baselines, in one run.

For each model, on a generated FairFace-layout dataset of JPEGs (448x448 by
default, FairFace's size), this measures images per second of

* ``pipeline``: ``clipprobe.embeddings.cache.embed_dataset`` into an empty cache folder
  (decode + preprocess in DataLoader workers, batched forward, shard writes);
* ``forward``: the model's forward pass alone (``Encoder.encode_images``) over
  the same batches, preprocessed beforehand and held in memory;
* ``one-by-one``: the loop public re-implementations of the probe use: for each
  image, PIL open -> preprocess -> forward of a batch of one under
  ``torch.no_grad`` -> normalise.

and prints ``pipeline / forward`` (the pipeline must not starve the model;
target >= 0.85) and ``pipeline / one-by-one`` (target >= 1.5 on 2 CPU cores).

The cost of keying the cache by content, in the same rounds: ``hash``, SHA-256 of every image's bytes
(what a rerun does before it reuses a shard, and what the pipeline's workers do before decoding), as a
share of the pipeline's time (target < 5%); ``rerun``, a second ``embed_dataset`` on the full cache
(hashes every image, embeds nothing); and the model's ``fingerprint`` (SHA-256 of its weights in
memory, its config and structure: part of the cache key) against the time to load the model.
The three ways run round by round on separate generated datasets, in rotating
order, so a change in machine load hits all of them alike. It also prints the
model's busy share inside the pipeline (forward seconds / pipeline seconds),
which says how much the pipeline starves the model without comparing two runs.

Models: ``tiny`` (tests/tinyclip.py; its forward pass is so cheap that JPEG
decoding dominates, so its ratios show the decode cost, not a realistic run) and
``vit-b-32``: open_clip's standard ViT-B-32 with random weights (weights do not
change speed), saved as safetensors and loaded through ``load_model`` like a
real weights file.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_embed.py --n 256 --rounds 4 --models vit-b-32,tiny
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def make_dataset(folder: Path, n: int, size: int, seed: int = 0):
    from clipprobe.faces import load_dataset
    from tests import facegen

    root = facegen.write_fairface(folder / "fairface", n=n, size=size, seed=seed)
    return load_dataset(f"fairface:{root}")


def load_encoder(name: str, folder: Path, device: str):
    from clipprobe.models import load_model

    if name == "tiny":
        from tinyclip import write_tiny_model

        config, weights, arch = write_tiny_model(folder / "tiny")
        return load_model(f"{arch}:{weights}", model_config=str(config), device=device)
    if name == "vit-b-32":
        import open_clip
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        path = folder / "vit-b-32-random.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        del model
        return load_model(f"ViT-B-32:{path}", device=device)
    raise SystemExit(f"unknown model {name!r}; use tiny or vit-b-32")


def _sync(encoder) -> None:
    import torch

    if str(encoder.device).startswith("cuda"):
        torch.cuda.synchronize()


def time_pipeline(encoder, dataset, cache: Path, batch_size: int, workers: int | None) -> tuple[float, dict]:
    from clipprobe.embeddings.cache import embed_dataset

    start = time.perf_counter()
    emb = embed_dataset(encoder, dataset, cache_dir=cache, batch_size=batch_size, num_workers=workers, progress=False)
    _sync(encoder)
    seconds = time.perf_counter() - start
    assert emb.timings["n_embedded"] == len(dataset), emb.timings
    return seconds, emb.timings


def preprocessed_batches(encoder, dataset, batch_size: int) -> list:
    import torch

    tensors = [encoder.preprocess(dataset.load_image(i)) for i in range(len(dataset))]
    return [torch.stack(tensors[i:i + batch_size]) for i in range(0, len(tensors), batch_size)]


def time_forward(encoder, batches) -> float:
    start = time.perf_counter()
    for batch in batches:
        encoder.encode_images(batch)
    _sync(encoder)
    return time.perf_counter() - start


def time_one_by_one(encoder, dataset) -> float:
    import torch
    from PIL import Image

    model, preprocess, device = encoder.model, encoder.preprocess, encoder.device
    dtype = next(model.parameters()).dtype
    start = time.perf_counter()
    out = []
    with torch.no_grad():
        for i in range(len(dataset)):
            image = Image.open(dataset.image_path(i))
            x = preprocess(image).unsqueeze(0).to(device, dtype=dtype)
            feats = model.encode_image(x).float()
            feats = feats / feats.norm(dim=-1, keepdim=True)
            out.append(feats.cpu().numpy())
    _sync(encoder)
    return time.perf_counter() - start


def bench_model(name: str, datasets: list, work: Path, args) -> dict:
    """Time the three ways over every round's dataset, interleaved, and sum per way.

    On a shared machine the load changes over minutes; running the three ways
    round by round, in a rotating order, exposes each to the same conditions.
    """
    t0 = time.perf_counter()
    encoder = load_encoder(name, work, args.device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    encoder.fingerprint()
    fingerprint_s = time.perf_counter() - t0
    n = sum(len(d) for d in datasets)
    batches = [preprocessed_batches(encoder, d, args.batch_size) for d in datasets]
    encoder.encode_images(batches[0][0])  # warm-up (allocators, kernels)
    _sync(encoder)
    ways = ["pipeline", "forward"] + ([] if args.skip_one_by_one else ["one_by_one"])
    seconds = {w: 0.0 for w in ways}
    stage = {"load_preprocess_s": 0.0, "wait_s": 0.0, "forward_s": 0.0, "write_s": 0.0}
    workers = None
    hash_s = rerun_s = 0.0
    for r, dataset in enumerate(datasets):
        order = ways[r % len(ways):] + ways[:r % len(ways)]
        for way in order:
            if way == "pipeline":
                t, timings = time_pipeline(encoder, dataset, work / f"cache-{name}-{r}", args.batch_size, args.workers)
                for k in stage:
                    stage[k] += timings[k]
                workers = timings["num_workers"]
                hash_s += time_hash(dataset)
                rerun_s += time_rerun(encoder, dataset, work / f"cache-{name}-{r}", args.batch_size)
            elif way == "forward":
                t = time_forward(encoder, batches[r])
            else:
                t = time_one_by_one(encoder, dataset)
            seconds[way] += t
    rate = {k: n / v for k, v in seconds.items()}
    result = {
        "model": name, "device": encoder.device, "precision": encoder.precision, "images": n,
        "rounds": len(datasets), "batch_size": args.batch_size, "workers": workers,
        "images_per_s": {k: round(v, 2) for k, v in rate.items()},
        "pipeline_over_forward": round(rate["pipeline"] / rate["forward"], 3),
        "pipeline_stage_seconds": {k: round(v, 3) for k, v in stage.items()},
        # Share of the pipeline's wall time the model spent in its forward pass: a
        # starvation measure that does not depend on the load changing between ways.
        "model_busy_share": round(stage["forward_s"] / seconds["pipeline"], 3),
    }
    if "one_by_one" in rate:
        result["pipeline_over_one_by_one"] = round(rate["pipeline"] / rate["one_by_one"], 3)
    result.update({
        "hash_s": round(hash_s, 4), "hash_over_pipeline": round(hash_s / seconds["pipeline"], 4),
        "rerun_s": round(rerun_s, 4), "rerun_over_pipeline": round(rerun_s / seconds["pipeline"], 4),
        "load_model_s": round(load_s, 3), "fingerprint_s": round(fingerprint_s, 3),
    })
    return result


def time_hash(dataset) -> float:
    """Seconds to hash every image of ``dataset`` (as a rerun does before it reuses shards)."""
    from clipprobe.embeddings.cache import content_digests

    start = time.perf_counter()
    content_digests(dataset, range(len(dataset)))
    return time.perf_counter() - start


def time_rerun(encoder, dataset, cache: Path, batch_size: int) -> float:
    from clipprobe.embeddings.cache import embed_dataset

    start = time.perf_counter()
    emb = embed_dataset(encoder, dataset, cache_dir=cache, batch_size=batch_size, num_workers=0, progress=False)
    assert emb.timings["n_embedded"] == 0, emb.timings
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=256, help="number of generated images")
    parser.add_argument("--size", type=int, default=448, help="image side in pixels (FairFace: 448)")
    parser.add_argument("--models", default="vit-b-32,tiny", help="comma-separated: vit-b-32, tiny")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: clipprobe's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=4,
                        help="split the images into this many datasets, timed round by round")
    parser.add_argument("--skip-one-by-one", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    import torch

    print(f"cpu cores: {os.cpu_count()}, torch threads: {torch.get_num_threads()}, "
          f"cuda: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        work = Path(tmp)
        t0 = time.perf_counter()
        per_round = max(1, args.n // args.rounds)
        datasets = [make_dataset(work / f"round{r}", per_round, args.size, seed=r) for r in range(args.rounds)]
        print(f"datasets: {args.rounds} x {per_round} JPEGs of {args.size}x{args.size} "
              f"generated in {time.perf_counter() - t0:.1f}s")
        for name in [m.strip() for m in args.models.split(",") if m.strip()]:
            r = bench_model(name, datasets, work, args)
            results.append(r)
            ips = r["images_per_s"]
            print(f"\n{name} on {r['device']} ({r['precision']}), {r['images']} images in {r['rounds']} rounds, "
                  f"batch {r['batch_size']}, workers {r['workers']}")
            for key in ("pipeline", "forward", "one_by_one"):
                if key in ips:
                    print(f"  {key:<11} {ips[key]:9.2f} images/s")
            print(f"  pipeline / forward    = {r['pipeline_over_forward']:.3f}   (target >= 0.85)")
            if "pipeline_over_one_by_one" in r:
                print(f"  pipeline / one-by-one = {r['pipeline_over_one_by_one']:.3f}   (target >= 1.5)")
            print(f"  model busy share in the pipeline = {r['model_busy_share']:.3f}")
            print(f"  hashing every image: {r['hash_s']:.3f} s = {100 * r['hash_over_pipeline']:.2f}% of the "
                  f"pipeline's time (target < 5%)")
            print(f"  rerun on the full cache (hashes, embeds nothing): {r['rerun_s']:.3f} s = "
                  f"{100 * r['rerun_over_pipeline']:.2f}% of the pipeline's time")
            print(f"  model fingerprint (weights, config, structure): {r['fingerprint_s']:.3f} s; "
                  f"loading the model: {r['load_model_s']:.3f} s")
            print(f"  pipeline stages (s): {r['pipeline_stage_seconds']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
