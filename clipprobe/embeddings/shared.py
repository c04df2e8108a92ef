"""Embed one dataset with several models, decoding and preprocessing each image once per distinct
preprocessing.

A sweep over many models embeds the same face dataset again and again; decoding and resizing the images
is the same work for every model whose preprocessing is the same (most open_clip models share
OpenAI's 224-pixel bicubic resize, crop and normalisation). :func:`embed_shared` groups the encoders by
their preprocessing (:func:`preprocess_key`), decodes each image of the dataset once per group in
DataLoader workers, feeds each batch to every encoder of the group whose cache lacks it, and writes each
encoder's shards into its own folder of the embedding cache (:mod:`clipprobe.embeddings.cache`), exactly
as :func:`~clipprobe.embeddings.cache.embed_dataset` would: the same shards, the same batches (cut the
same way inside each shard, with the batch size the folder was started with), the same files. So an
encoder's cache is the same byte for byte whichever way it was filled, a run stopped at any point resumes
from the finished shards of every encoder, and the final :func:`embed_dataset` calls only read.

One encoder failing (out of memory, say) is recorded in :attr:`SharedEmbedding.failed` and left out of
the rest of the pass; the others go on.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

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
    from clipprobe.embeddings.cache import MSG_BAD_BATCH, MSG_BAD_SHARD, _check_positive, embed_dataset

    _check_positive(batch_size, MSG_BAD_BATCH)
    _check_positive(shard_size, MSG_BAD_SHARD)
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
    """One preprocessing group; returns the number of images decoded."""
    from clipprobe.embeddings.cache import _prepare_root, embeddings_dir, plan_shards

    n = len(dataset)
    # A folder keeps the shard and batch size it was started with: encoders whose folders agree share a pass.
    passes: dict[tuple[int, int, int | None], list[tuple[int, Any, Path, set[int]]]] = {}
    for index, enc in zip(indices, encoders):
        root = embeddings_dir(enc, dataset, cache_dir)
        size, batch, threads = _prepare_root(root, enc, dataset, shard_size, batch_size)
        n_shards = math.ceil(n / size)
        bounds = [(s, s * size, min(n, (s + 1) * size)) for s in range(n_shards)]
        todo = {s for s, _, _ in plan_shards(root, dataset, bounds, digests)[1]}
        if todo:
            passes.setdefault((size, batch, threads), []).append((index, enc, root, todo))
    decoded = 0
    for (size, batch, threads), members in passes.items():
        decoded += _run_pass(members, dataset, size, batch, threads, num_workers, progress, result)
    return decoded


def _run_pass(members, dataset, shard_size: int, batch_size: int, threads: int | None, num_workers, progress,
              result: SharedEmbedding) -> int:
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from clipprobe.embeddings.cache import _collate, _RowImages, cpu_threads, default_num_workers

    n = len(dataset)
    shards = sorted(set().union(*(todo for *_, todo in members)))
    batches, shard_of_batch = [], []
    for s in shards:
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        for start in range(lo, hi, batch_size):
            batches.append(list(range(start, min(hi, start + batch_size))))
            shard_of_batch.append(s)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    workers = workers if len(batches) > 1 else 0
    loader_kwargs: dict[str, Any] = {}
    if workers:
        loader_kwargs.update(prefetch_factor=4, persistent_workers=False)
        if "fork" in torch.multiprocessing.get_all_start_methods():
            loader_kwargs["multiprocessing_context"] = "fork"
    first = members[0][1]
    loader = DataLoader(_RowImages(dataset, first.preprocess), batch_sampler=batches, num_workers=workers,
                        collate_fn=_collate, pin_memory=str(getattr(first, "device", "cpu")).startswith("cuda"),
                        **loader_kwargs)
    files = dataset.table["file"]
    log.info("embedding %d images once for %d model(s) with the same preprocessing", sum(map(len, batches)),
             len(members))
    bar = tqdm(total=sum(map(len, batches)), unit="img", desc=f"embedding x{len(members)}",
               disable=(None if progress is None else not progress))
    try:
        with cpu_threads(threads):    # the folders' number of torch threads, as embed_dataset does
            n_decoded = _feed(loader, members, shard_of_batch, shard_size, n, files, result, bar)
    finally:
        bar.close()
    return n_decoded


def _feed(loader, members, shard_of_batch, shard_size: int, n: int, files, result: SharedEmbedding, bar) -> int:
    """Feed each decoded batch to every member that needs its shard; write each member's finished shards."""
    import numpy as np

    from clipprobe.embeddings.cache import _meta_records, _write_shard

    pending: dict[int, tuple[list, list]] = {}
    current = None
    n_decoded = 0
    for b, item in enumerate(loader):
        s = shard_of_batch[b]
        if s != current:
            pending = {}
            current = s
        n_decoded += len(item["rows"])
        for index, enc, root, todo in members:
            if s not in todo or index in result.failed:
                continue
            vecs, meta = pending.setdefault(index, ([], []))
            t0 = time.perf_counter()
            try:
                out, norms = (enc.encode_images(item["images"], return_norms=True) if item["images"] is not None
                              else (None, None))
            except (RuntimeError, MemoryError) as err:   # out of memory, a broken model: this one stops
                result.failed[index] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                log.warning("model %s failed while embedding: %s", enc.spec.canonical, result.failed[index])
                continue
            result.forward_s[index] += time.perf_counter() - t0
            meta.extend(_meta_records(item, norms, files))
            if out is not None:
                vecs.append(np.asarray(out, dtype=np.float32))
            if item["rows"][-1] == min(n, (s + 1) * shard_size) - 1:
                dim = int(getattr(enc, "embed_dim", 0) or (vecs[0].shape[1] if vecs else 0))
                arr = np.concatenate(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)
                _write_shard(root, s, np.ascontiguousarray(arr, dtype=np.float32), meta)
        bar.update(len(item["rows"]))
    return n_decoded


__all__ = ["SharedEmbedding", "embed_shared", "group_by_preprocess", "preprocess_key"]
