"""Embed one dataset with several models, decoding and preprocessing each image once per distinct
preprocessing.

A sweep over many models embeds the same face dataset again and again; decoding and resizing the images
is the same work for every model whose preprocessing is the same (most open_clip models share
OpenAI's 224-pixel bicubic resize, crop and normalisation). :func:`embed_shared` groups the encoders by
their preprocessing (:func:`preprocess_key`), decodes each image of the dataset once per group in
DataLoader workers, feeds each batch to every encoder of the group whose cache lacks it, and writes each
encoder's shards into its own folder of the embedding cache (:mod:`clipprobe.embeddings.cache`). The loop
is the one :func:`~clipprobe.embeddings.cache.embed_dataset` runs for one model
(:func:`~clipprobe.embeddings.cache.embed_pass`): the same shards, the same batches (cut the same way
inside each shard, with the batch size the folder was started with), the same files. So an
encoder's cache is the same byte for byte whichever way it was filled, a run stopped at any point resumes
from the finished shards of every encoder, and the final :func:`embed_dataset` calls only read.

One encoder failing (out of memory, say) is recorded in :attr:`SharedEmbedding.failed` and left out of
the rest of the pass; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Sequence

log = logging.getLogger(__name__)


@dataclass
class SharedEmbedding:
    """What :func:`embed_shared` did.

    ``embeddings``: per encoder (in the order given) its :class:`~clipprobe.embeddings.cache.ImageEmbeddings`,
    or None when it failed (``failed`` maps its index to the reason). ``decoded``: images decoded per
    preprocessing group; ``forward_s``: seconds of model forward per encoder; ``timings``: per stage.
    """

    embeddings: list
    failed: dict[int, str] = field(default_factory=dict)
    groups: list[list[int]] = field(default_factory=list)
    decoded: list[int] = field(default_factory=list)
    forward_s: list[float] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def preprocess_key(encoder) -> str:
    """A key equal for encoders that turn an image into the same tensor: the transform as torchvision
    writes it (every resize, crop and normalisation setting) and the image size."""
    size = getattr(encoder, "image_size", None)
    text = json.dumps({"transform": repr(encoder.preprocess), "image_size": list(size) if size else None},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def group_by_preprocess(encoders: Sequence) -> list[list[int]]:
    """Indices of ``encoders`` grouped by :func:`preprocess_key`, groups in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, enc in enumerate(encoders):
        groups.setdefault(preprocess_key(enc), []).append(i)
    return list(groups.values())


def embed_shared(encoders: Sequence, dataset, *, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                 num_workers: int | None = None, shard_size: int = 1024,
                 progress: bool | None = None) -> SharedEmbedding:
    """Embed ``dataset`` with every encoder, decoding each image once per preprocessing group (see the
    module docstring). Returns each encoder's embeddings, read back through the cache."""
    from clipprobe.embeddings.cache import check_sizes, embed_dataset

    check_sizes(batch_size, shard_size)
    started = time.perf_counter()
    result = SharedEmbedding(embeddings=[None] * len(encoders), forward_s=[0.0] * len(encoders))
    result.groups = group_by_preprocess(encoders)
    digests: dict[int, str] = {}     # each image hashed once for every encoder (shards are checked by content)
    for group in result.groups:
        decoded = _embed_group([encoders[i] for i in group], group, dataset, cache_dir=cache_dir,
                               batch_size=batch_size, num_workers=num_workers, shard_size=shard_size,
                               progress=progress, result=result, digests=digests)
        result.decoded.append(decoded)
    result.timings["shared_pass_s"] = round(time.perf_counter() - started, 4)
    t0 = time.perf_counter()
    for i, enc in enumerate(encoders):
        if i in result.failed:
            continue
        # Every shard is cached now: this reads (and checks) them, and writes done.json.
        result.embeddings[i] = embed_dataset(enc, dataset, cache_dir=cache_dir, batch_size=batch_size,
                                             num_workers=0, shard_size=shard_size, progress=False,
                                             digests=digests)
    result.timings["read_back_s"] = round(time.perf_counter() - t0, 4)
    return result


def _embed_group(encoders: list, indices: list[int], dataset, *, cache_dir, batch_size: int, num_workers,
                 shard_size: int, progress, result: SharedEmbedding, digests: dict[int, str]) -> int:
    """One preprocessing group: one :func:`~clipprobe.embeddings.cache.embed_pass` per folder setting;
    returns the number of images decoded."""
    from clipprobe.embeddings.cache import PassTarget, embed_pass, plan_folder

    # A folder keeps the shard and batch size it was started with: encoders whose folders agree share a pass.
    passes: dict[tuple[int, int, int | None], list[tuple[int, PassTarget]]] = {}
    for index, enc in zip(indices, encoders):
        plan = plan_folder(enc, dataset, cache_dir, shard_size, batch_size, digests)
        if plan.todo:
            target = PassTarget(enc, plan.root, {s for s, _, _ in plan.todo})
            passes.setdefault((plan.shard_size, plan.batch_size, plan.threads), []).append((index, target))
    decoded = 0
    for (size, batch, threads), members in passes.items():
        targets = [target for _, target in members]
        shards = set().union(*(t.todo for t in targets))
        log.info("embedding %d images once for %d model(s) with the same preprocessing",
                 sum(min(len(dataset), (s + 1) * size) - s * size for s in shards), len(targets))
        decoded += embed_pass(targets, dataset, shard_size=size, batch_size=batch, threads=threads,
                              num_workers=num_workers, progress=progress, desc=f"embedding x{len(targets)}",
                              isolate_failures=True)
        for index, target in members:
            result.forward_s[index] += target.forward_s
            if target.failed is not None:
                result.failed[index] = target.failed
    return decoded


__all__ = ["SharedEmbedding", "embed_shared", "group_by_preprocess", "preprocess_key"]
