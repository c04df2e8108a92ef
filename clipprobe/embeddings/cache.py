"""Resumable, batched image and text embedding with an on-disk cache.

Layout (shards of vectors with their metadata, in folders named as clip-retrieval names them, but
not clip-retrieval's format: its tools cannot read these folders, nor can these read theirs)::

    CACHE/<model key>/<images key>-f<format>/
        cache.json                       what this folder holds (model with its weights and config
                                         digests, dataset, rows, shard size, batch size)
        img_emb/img_emb_00000.npy        float32 (n_ok, dim), L2-normalised, rows in dataset order
        metadata/metadata_00000.parquet  one row per dataset row of the shard, failed images included:
                                         row, file, status ("ok" | "error"), reason, norm (of the raw
                                         embedding, for dot-product scoring), sha256 (of the image's
                                         bytes when it was embedded; "" for a missing file)
        done.json                        written once every shard exists
    CACHE/<model key>/text/text_<hash>.npy + text_<hash>.parquet   prompt embeddings

What a folder stands for (nothing is reused on a name, a size or a date alone):

* the model key (:func:`model_cache_key`): the spec's key, the precision, the preprocessing, and the
  model as loaded: a SHA-256 of every tensor of its state dict (the weights in memory, whatever file
  or Hub snapshot they came from), of its configuration (an edited ``--model-config``, QuickGELU) and
  of its module structure (:meth:`~clipprobe.models.encoder.Encoder.fingerprint`);
* the images key (:attr:`~clipprobe.faces.FaceDataset.images_key`): the dataset kind, split, the
  image folder (resolved) and the image list; two folders whose files have the same names and sizes
  are two keys;
* each image's content: the SHA-256 of its bytes is recorded per row, and before a shard is reused
  every one of its images is hashed again and compared. A shard with a changed image is embedded
  again (a log line says how many images changed and which shards are redone); the other shards are
  reused. Hashing reads each image once (measured in ``benchmarks/bench_embed.py``: a few percent of
  embedding with the tiny test model, well under 1% with ViT-B-32 on the CPU).

Shard ``s`` covers the fixed dataset rows ``[s * shard_size, (s + 1) * shard_size)``.
The rows of a shard's ``.npy`` are its metadata rows whose status is ``ok``, in
order. Every file is written atomically and a shard counts as finished when its
metadata file exists (written after its vectors), so a run stopped at any point
(Ctrl-C, a killed process) resumes from the finished shards. Batches never cross
a shard boundary and are cut the same way on every run, so a resumed run ends
with exactly the arrays of an uninterrupted one.

The batch size belongs to the folder, like the shard size: a model's output for an image can
differ in the last bits with the size of the batch it was computed in (the matrix kernels block
differently), so a folder keeps the batch size it was started with (recorded in ``cache.json``),
and a rerun or resume that asks for another one uses the recorded size and says so. Delete the
folder to embed with another batch size.

Decoding and preprocessing run in DataLoader worker processes; an image that
fails to decode becomes a marker, is counted and listed, and the run goes on.

Threads: the number of torch's CPU threads changes the last bits of some embeddings (measured with the
tiny test model: 3 of the 7 images of a batch of 7 differ between 1 and 2 threads; batches of 1-4, 8,
16 and 64 did not), and near-ties with them. So it belongs to the folder, like the batch size: a folder
records the number it was started with (``threads`` in ``cache.json``: torch's own setting in that
process, which is the cores it may use or ``OMP_NUM_THREADS``, never something that follows the
machine's load), every shard is computed with it, and a rerun or resume whose torch has another
setting uses the recorded one and says so. The text cache of a model keeps its number the same way
(``text/cache.json``). Under load a forward pass with more threads than free cores is slow (measured on
a 2-core machine with a load of 8: ViT-B-32 on a batch of 8 took 5.8 s with 2 threads, 1.9 s with 1):
set ``OMP_NUM_THREADS`` before a new folder is started rather than letting the load decide.

New prompt embeddings are added to the text cache; where it cannot be written (a read-only
shared cache) they are used without being stored, with a warning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from clipprobe._io import ENV_CACHE, default_cache_dir  # noqa: F401 (re-exported: the cache folder of every kind)
from clipprobe.errors import DataError

log = logging.getLogger(__name__)

CACHE_FORMAT = 3   # 3: metadata holds each image's SHA-256; folders of another format are left alone
MANIFEST = "cache.json"
DONE = "done.json"

MSG_BAD_BATCH = "batch size must be a positive integer, not {value!r}"
MSG_BAD_SHARD = "shard size must be a positive integer, not {value!r}"
MSG_BAD_WORKERS = "number of workers must be 0 or more, not {value!r}"
MSG_ALL_FAILED = "no image of dataset {spec!r} could be read ({n} failed, e.g. {file}: {reason})"
META_COLUMNS = ("row", "file", "status", "reason", "norm", "sha256")
HASH_THREADS = 8   # images hashed at once when shards are checked (reading files waits on the disk)



def model_settings(encoder) -> dict:
    """What the model key stands for: precision, preprocessing, QuickGELU where forced on a file or folder,
    and the model as loaded (digests of its weights, configuration and structure, where it has them)."""
    info = encoder.info() if hasattr(encoder, "info") else {}
    precision = str(info.get("precision", "fp32"))
    settings = {"precision": precision, "preprocess": info.get("preprocess")}
    if info.get("quick_gelu_forced") and info.get("kind") in ("file", "local-dir", "hf-hub"):
        settings["quick_gelu"] = True
    fingerprint = getattr(encoder, "fingerprint", None)
    if callable(fingerprint):
        settings["model"] = fingerprint()
    return settings


def model_cache_key(encoder) -> str:
    """Folder name for an encoder: its spec key, precision and a hash of :func:`model_settings` (the
    preprocessing, and the weights, configuration and structure of the model as loaded)."""
    settings = model_settings(encoder)
    text = json.dumps(settings, sort_keys=True, default=str)
    return f"{encoder.spec.key}__{settings['precision']}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def embeddings_dir(encoder, dataset, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of ``dataset`` embedded by ``encoder``."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = getattr(dataset, "images_key", None) or dataset.fingerprint
    return base / model_cache_key(encoder) / f"{key}-f{CACHE_FORMAT}"


@dataclass
class ImageEmbeddings:
    """The embeddings of every image of a dataset that decoded.

    ``vectors[i]`` is the embedding of dataset row ``rows[i]``; rows are
    increasing. ``skipped`` lists ``{"row", "file", "reason"}`` for the images
    that could not be read. ``timings`` holds this run's per-stage seconds (an
    all-cached run has ``n_embedded == 0``). ``labels`` (the dataset's attribute
    columns) and ``files`` are those of the embedded images, row for row with
    ``vectors``; ``norms`` are the norms of the raw embeddings before normalisation.
    """

    vectors: Any  # np.ndarray (n_ok, dim) float32
    rows: Any  # np.ndarray (n_ok,) int64
    skipped: list[dict]
    cache_dir: Path
    timings: dict = field(default_factory=dict)
    labels: Any = None  # pandas.DataFrame (n_ok, attributes)
    files: tuple[str, ...] = ()
    norms: Any = None  # np.ndarray (n_ok,) float32: norms of the raw (unnormalised) embeddings
    digest: str = ""   # SHA-256 of rows, vectors and norms: a key for what is computed from them

    def __len__(self) -> int:
        return int(len(self.rows))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# --------------------------------------------------------------------------- worker side


class _RowImages:
    """Map-style dataset: row -> (row, tensor | None, error | None, seconds, sha256). Runs in workers.

    The image's bytes are hashed just before it is decoded (the second read comes from the page cache)."""

    def __init__(self, dataset, preprocess) -> None:
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        start = time.perf_counter()
        digest = self.dataset.content_digest(row)
        try:
            tensor = self.preprocess(self.dataset.load_image(row))
        except Exception as err:  # noqa: BLE001 - one bad image is counted and listed, not fatal
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
            return row, None, reason[:500], time.perf_counter() - start, digest
        return row, tensor, None, time.perf_counter() - start, digest


def _collate(items):
    """Stack the decoded images of a batch; keep failures aside."""
    import torch

    ok_rows = [row for row, tensor, *_ in items if tensor is not None]
    tensors = [tensor for _, tensor, *_ in items if tensor is not None]
    failed = [(row, reason) for row, tensor, reason, *_ in items if tensor is None]
    batch = torch.stack(tensors) if tensors else None
    return {
        "rows": [row for row, *_ in items],
        "ok_rows": ok_rows,
        "images": batch,
        "failed": failed,
        "load_s": sum(item[3] for item in items),
        "sha256": {row: digest for row, *_, digest in items},
    }


def _meta_records(batch: dict, norms, files) -> list[dict]:
    """One metadata record per row of a decoded batch (``norms``: those of its decoded images, in order)."""
    failed = dict(batch["failed"])
    records, k = [], 0
    for row in batch["rows"]:
        record = {"row": row, "file": str(files.iat[row]), "sha256": batch["sha256"][row]}
        if row in failed:
            record.update(status="error", reason=failed[row], norm=float("nan"))
        else:
            record.update(status="ok", reason=None, norm=float(norms[k]))
            k += 1
        records.append(record)
    return records


def content_digests(dataset, rows) -> dict[int, str]:
    """``{row: SHA-256 of its image}`` for ``rows``, hashed on a few threads (reading waits on the disk)."""
    from concurrent.futures import ThreadPoolExecutor

    rows = list(rows)
    if len(rows) < 64:
        return {r: dataset.content_digest(r) for r in rows}
    with ThreadPoolExecutor(max_workers=HASH_THREADS) as pool:
        return dict(zip(rows, pool.map(dataset.content_digest, rows, chunksize=32)))


# --------------------------------------------------------------------------- shard files


def _shard_paths(root: Path, s: int) -> tuple[Path, Path]:
    return root / "img_emb" / f"img_emb_{s:05d}.npy", root / "metadata" / f"metadata_{s:05d}.parquet"


def _read_shard(root: Path, s: int, lo: int, hi: int):
    """Return (vectors, metadata DataFrame) of a finished shard, or None if missing or inconsistent."""
    import numpy as np
    import pandas as pd

    from clipprobe._io import read_npy

    emb_path, meta_path = _shard_paths(root, s)
    if not (emb_path.is_file() and meta_path.is_file()):
        return None
    try:
        meta = pd.read_parquet(meta_path)
        vectors = read_npy(emb_path)
    except (OSError, ValueError) as err:
        log.warning("shard %d in %s is unreadable (%s); embedding it again", s, root, err)
        return None
    n_ok = int((meta["status"] == "ok").sum()) if "status" in meta else -1
    if (
        any(c not in meta for c in META_COLUMNS)
        or list(meta.get("row", [])) != list(range(lo, hi))
        or vectors.ndim != 2
        or len(vectors) != n_ok
        or vectors.dtype != np.float32
    ):
        log.warning("shard %d in %s does not match rows %d-%d; embedding it again", s, root, lo, hi - 1)
        return None
    return vectors, meta


def _write_shard(root: Path, s: int, vectors, meta_records: list[dict]) -> None:
    import pandas as pd

    from clipprobe._io import write_npy, write_parquet

    emb_path, meta_path = _shard_paths(root, s)
    write_npy(emb_path, vectors)
    meta = pd.DataFrame.from_records(meta_records, columns=list(META_COLUMNS))
    meta["row"] = meta["row"].astype("int64")
    meta["norm"] = meta["norm"].astype("float32")
    # The metadata file is written last: its presence marks the shard finished.
    write_parquet(meta_path, meta)


def plan_shards(root: Path, dataset, bounds, digests: dict[int, str] | None = None) -> tuple[dict, list]:
    """``(loaded, todo)``: the finished shards of ``root`` whose every image still has the recorded
    SHA-256 (``{shard: (vectors, metadata)}``), and the ``(shard, lo, hi)`` to embed. ``digests`` holds the
    images' hashes already computed (updated in place). Says in a log line which images changed."""
    loaded: dict[int, tuple] = {}
    todo = []
    found = {}
    for s, lo, hi in bounds:
        shard = _read_shard(root, s, lo, hi)
        if shard is None:
            todo.append((s, lo, hi))
        else:
            found[(s, lo, hi)] = shard
    digests = {} if digests is None else digests
    wanted = [r for (_, lo, hi) in found for r in range(lo, hi) if r not in digests]
    digests.update(content_digests(dataset, wanted))
    changed = []
    for (s, lo, hi), (vectors, meta) in found.items():
        stored = meta["sha256"].tolist()
        moved = [lo + i for i, d in enumerate(stored) if d != digests[lo + i]]
        if moved:
            changed.append((s, moved))
            todo.append((s, lo, hi))
        else:
            loaded[s] = (vectors, meta)
    if changed:
        rows = [r for _, moved in changed for r in moved]
        log.info("%d image(s) of %s changed since they were embedded (e.g. %s): embedding shard(s) %s again "
                 "(%d images); %d shard(s) reused", len(rows), getattr(dataset, "spec", "the dataset"),
                 dataset.table["file"].iat[rows[0]], ", ".join(str(s) for s, _ in changed),
                 sum(hi - lo for s, lo, hi in todo if s in {c for c, _ in changed}), len(loaded))
    todo.sort()
    return loaded, todo


def _prepare_root(root: Path, encoder, dataset, shard_size: int, batch_size: int) -> tuple[int, int, int | None]:
    """Create or check the manifest; return the shard size, batch size and torch threads (None for a model
    that does not run on the CPU) in force for this folder."""
    from clipprobe._io import write_json

    manifest_path = root / MANIFEST
    if manifest_path.is_file():
        try:
            stored = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(f"embedding cache manifest {manifest_path} is unreadable ({err}); delete {root}") from None
        if stored.get("format") != CACHE_FORMAT or stored.get("n_rows") != len(dataset):
            raise DataError(
                f"embedding cache {root} was written for another layout or dataset size "
                f"({stored.get('n_rows')} rows, format {stored.get('format')}); delete it to start over"
            )
        stored_size = int(stored["shard_size"])
        if stored_size != shard_size:
            log.info("cache %s uses shard size %d; keeping it", root, stored_size)
        stored_batch = stored.get("batch_size")
        if not isinstance(stored_batch, int) or isinstance(stored_batch, bool) or stored_batch < 1:
            # Written before folders recorded it: from now on, the size of this run.
            write_json(manifest_path, {**stored, "batch_size": batch_size})
            stored_batch = batch_size
        elif stored_batch != batch_size:
            log.info("cache %s was started with batch size %d; keeping it so that every shard is computed alike "
                     "(delete the folder to use %d)", root, stored_batch, batch_size)
        threads = process_threads(encoder)
        stored_threads = stored.get("threads")
        if threads is not None and (not isinstance(stored_threads, int) or stored_threads < 1):
            # Started by a model on a GPU: the CPU's number from now on.
            write_json(manifest_path, {**json.loads(manifest_path.read_text(encoding="utf-8")), "threads": threads})
            stored_threads = threads
        elif threads is not None and stored_threads != threads:
            log.info("cache %s was started with %d torch thread(s); using %d, not %d, so that every shard is "
                     "computed alike", root, stored_threads, stored_threads, threads)
        return stored_size, stored_batch, (stored_threads if threads is not None else None)
    info = encoder.info() if hasattr(encoder, "info") else {"spec": encoder.spec.raw}
    settings = model_settings(encoder)
    _say_why_new(root, info.get("spec"), settings, dataset)
    write_json(manifest_path, {
        "format": CACHE_FORMAT,
        "n_rows": len(dataset),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "threads": process_threads(encoder),
        "embed_dim": int(getattr(encoder, "embed_dim", 0) or 0),
        "model": {k: info.get(k) for k in ("spec", "canonical", "key", "precision", "preprocess", "preprocess_source")},
        "model_key": model_cache_key(encoder),
        "model_settings": settings,
        "dataset": dataset.summary() if hasattr(dataset, "summary") else {"spec": dataset.spec},
    })
    return shard_size, batch_size, process_threads(encoder)


def _say_why_new(root: Path, spec, settings: dict, dataset) -> None:
    """Log why a new folder is started when the same model spec has a folder for these images already
    (its weights, configuration, structure, precision or preprocessing differ: named in the line)."""
    base = root.parent.parent
    now = json.loads(json.dumps(settings, default=str))
    for other in sorted(base.glob(f"*/{root.name}/{MANIFEST}")):
        if other.parent == root:
            continue
        try:
            stored = json.loads(other.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(stored, dict) or (stored.get("model") or {}).get("spec") != spec:
            continue
        before = stored.get("model_settings") or {}
        what = [k for k in ("precision", "preprocess", "quick_gelu") if before.get(k) != now.get(k)]
        what += [k.replace("_sha256", "") for k in ("weights_sha256", "config_sha256", "structure_sha256")
                 if (before.get("model") or {}).get(k) != (now.get("model") or {}).get(k)]
        log.info("model %s: its %s differ from those of the embeddings cached in %s; embedding %s again",
                 spec, ", ".join(what) or "settings", other.parent, getattr(dataset, "spec", "the images"))
        return


# --------------------------------------------------------------------------- main entry


def _check_positive(value, message: str) -> int:
    from clipprobe.errors import UsageError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(message.format(value=value))
    return value


def check_sizes(batch_size, shard_size) -> None:
    """Raise :class:`~clipprobe.errors.UsageError` unless both sizes are positive integers."""
    _check_positive(batch_size, MSG_BAD_BATCH)
    _check_positive(shard_size, MSG_BAD_SHARD)


def process_threads(encoder) -> int | None:
    """torch's CPU threads in this process (its own setting: the cores it may use, or ``OMP_NUM_THREADS``),
    for a model on the CPU; None for a model elsewhere."""
    import torch

    if not str(getattr(encoder, "device", "cpu")).startswith("cpu"):
        return None
    return int(torch.get_num_threads())


@contextlib.contextmanager
def cpu_threads(threads: int | None):
    """Run a block with torch's CPU threads set to ``threads`` (a cache folder's number; None: as they are);
    yields the number in force; restores torch's setting after."""
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield before
        return
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)


def default_num_workers() -> int:
    """One worker per core but one (the main process runs the model), at most 8."""
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def embed_dataset(
    encoder,
    dataset,
    *,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    shard_size: int = 1024,
    progress: bool | None = None,
    on_batch: Callable[[dict], None] | None = None,
    digests: dict[int, str] | None = None,
) -> ImageEmbeddings:
    """Embed every image of ``dataset`` with ``encoder``, reusing finished cache shards.

    ``batch_size`` applies to a new cache folder; a folder keeps the batch size it was started
    with (see the module docstring). ``progress``: None shows a bar only on a terminal, True/False
    force it.
    ``on_batch`` is called after each batch with that batch's timings (after the
    shard it completes, if any, is on disk); raising in it stops the run like Ctrl-C.
    ``digests``: ``{row: SHA-256}`` of images hashed earlier in this process (a shared pass over several
    models hashes each image once); filled with those hashed here.
    """
    from clipprobe._io import write_json

    check_sizes(batch_size, shard_size)
    if num_workers is None:
        num_workers = default_num_workers()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        from clipprobe.errors import UsageError

        raise UsageError(MSG_BAD_WORKERS.format(value=num_workers))

    t_start = time.perf_counter()
    plan = plan_folder(encoder, dataset, cache_dir, shard_size, batch_size, digests)
    root, bounds, todo, loaded = plan.root, plan.bounds, plan.todo, plan.loaded
    n, n_shards = len(dataset), len(plan.bounds)

    timings: dict[str, Any] = {
        "n_rows": n, "n_shards": n_shards, "shard_size": plan.shard_size, "shards_reused": n_shards - len(todo),
        "shards_written": 0, "n_embedded": 0, "n_failed_now": 0, "batches": 0, "batch_size": plan.batch_size,
        "num_workers": 0, "load_preprocess_s": 0.0, "wait_s": 0.0, "forward_s": 0.0, "write_s": 0.0,
        "check_s": plan.check_s, "per_batch": [],
    }
    if todo:
        log.info("embedding %d of %d images (%d of %d shards cached) into %s",
                 sum(hi - lo for _, lo, hi in todo), n, n_shards - len(todo), n_shards, root)
        embed_pass([PassTarget(encoder, root, {s for s, _, _ in todo})], dataset, shard_size=plan.shard_size,
                   batch_size=plan.batch_size, threads=plan.threads, num_workers=num_workers, progress=progress,
                   timings=timings, on_batch=on_batch)
    elif n_shards:
        log.info("all %d images of %s are cached in %s", n, dataset.spec, root)

    result = _load_all(root, bounds, loaded)
    if not (root / DONE).is_file() or todo:
        write_json(root / DONE, {
            "n_rows": n, "n_ok": len(result.rows), "n_failed": len(result.skipped), "n_shards": n_shards,
            "shard_size": plan.shard_size, "dataset": getattr(dataset, "spec", None),
            "fingerprint": getattr(dataset, "fingerprint", None), "model_key": model_cache_key(encoder),
        })
    timings["total_s"] = time.perf_counter() - t_start
    if timings["n_embedded"]:
        busy = timings["total_s"]
        timings["images_per_s"] = timings["n_embedded"] / busy if busy > 0 else float("inf")
    for key in ("load_preprocess_s", "wait_s", "forward_s", "write_s", "check_s", "total_s"):
        timings[key] = round(timings[key], 4)
    result.timings = timings
    table = dataset.table.iloc[result.rows]
    attributes = list(dataset.attributes()) if hasattr(dataset, "attributes") else []
    result.labels = table[attributes].reset_index(drop=True)
    result.files = tuple(str(f) for f in table["file"])
    if n and not len(result.rows):
        first = result.skipped[0]
        raise DataError(MSG_ALL_FAILED.format(spec=dataset.spec, n=len(result.skipped), file=first["file"],
                                              reason=first["reason"]))
    if result.skipped:
        log.warning("%d of %d images could not be read (e.g. %s: %s)", len(result.skipped), n,
                    result.skipped[0]["file"], result.skipped[0]["reason"])
    return result


@dataclass
class FolderPlan:
    """What a cache folder holds and lacks for one encoder and dataset (:func:`plan_folder`).

    ``shard_size``, ``batch_size`` and ``threads`` are the folder's own (see the module docstring);
    ``bounds`` lists every ``(shard, lo, hi)``; ``loaded`` the finished shards still valid
    (``{shard: (vectors, metadata)}``); ``todo`` the ``(shard, lo, hi)`` to embed; ``check_s`` the seconds
    spent checking the finished shards' images."""

    root: Path
    shard_size: int
    batch_size: int
    threads: int | None
    bounds: list
    loaded: dict
    todo: list
    check_s: float = 0.0


def plan_folder(encoder, dataset, cache_dir, shard_size: int, batch_size: int,
                digests: dict[int, str] | None = None) -> FolderPlan:
    """Create or check the cache folder of ``dataset`` embedded by ``encoder`` and find the shards it lacks
    (``digests``: the images' hashes already computed, updated in place; see :func:`plan_shards`)."""
    root = embeddings_dir(encoder, dataset, cache_dir)
    n = len(dataset)
    shard_size, batch_size, threads = _prepare_root(root, encoder, dataset, shard_size, batch_size)
    bounds = [(s, s * shard_size, min(n, (s + 1) * shard_size)) for s in range(math.ceil(n / shard_size))]
    t_hash = time.perf_counter()
    loaded, todo = plan_shards(root, dataset, bounds, digests)
    return FolderPlan(root, shard_size, batch_size, threads, bounds, loaded, todo, time.perf_counter() - t_hash)


@dataclass
class PassTarget:
    """One encoder fed by :func:`embed_pass`: its cache folder, the shards it lacks, its seconds of forward
    passes, and why it stopped (None while it runs)."""

    encoder: Any
    root: Path
    todo: set[int]
    forward_s: float = 0.0
    failed: str | None = None


def embed_pass(targets: list[PassTarget], dataset, *, shard_size: int, batch_size: int, threads: int | None,
               num_workers: int | None = None, progress: bool | None = None, desc: str = "embedding",
               timings: dict | None = None, on_batch: Callable[[dict], None] | None = None,
               isolate_failures: bool = False) -> int:
    """The embedding loop, for one encoder or several with the same preprocessing and the same folder
    settings (shard size, batch size, torch threads): decode every image of the shards some target lacks
    once, in DataLoader workers, in batches that never cross a shard; feed each batch to every target that
    lacks its shard; write each target's shards as they finish. Returns the number of images decoded.

    ``timings`` (updated in place): batches, images, workers, seconds per stage (forward and write summed
    over the targets) and one record per batch, which ``on_batch`` is given after the batch's shards are
    on disk (raising in it stops the run like Ctrl-C). ``isolate_failures``: an encoder that raises
    RuntimeError or MemoryError (out of memory, a broken model) is marked failed and left out of the rest
    of the pass; otherwise the error ends the pass."""
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    timings = {} if timings is None else timings
    n = len(dataset)
    batches, shard_of_batch = [], []
    for s in sorted(set().union(*(t.todo for t in targets))):
        lo, hi = s * shard_size, min(n, (s + 1) * shard_size)
        for start in range(lo, hi, batch_size):
            batches.append(list(range(start, min(hi, start + batch_size))))
            shard_of_batch.append(s)
    workers = default_num_workers() if num_workers is None else int(num_workers)
    workers = workers if len(batches) > 1 else 0
    timings["num_workers"] = workers
    loader_kwargs: dict[str, Any] = {}
    if workers:
        loader_kwargs.update(prefetch_factor=4, persistent_workers=False)
        if "fork" in torch.multiprocessing.get_all_start_methods():
            loader_kwargs["multiprocessing_context"] = "fork"
    first = targets[0].encoder
    loader = DataLoader(
        _RowImages(dataset, first.preprocess),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=str(getattr(first, "device", "cpu")).startswith("cuda"),
        **loader_kwargs,
    )
    table_files = dataset.table["file"]
    pending: dict[int, tuple[list, list]] = {}     # target -> (vectors, metadata records) of the current shard
    current = None
    n_decoded = 0
    bar = tqdm(total=sum(map(len, batches)), unit="img", desc=desc,
               disable=(None if progress is None else not progress))
    try:
        with cpu_threads(threads) as in_force:     # the folders' number of torch threads
            timings["torch_threads"] = in_force
            wait_start = time.perf_counter()
            for b, batch in enumerate(loader):
                wait = time.perf_counter() - wait_start
                s = shard_of_batch[b]
                if s != current:
                    pending, current = {}, s
                n_decoded += len(batch["rows"])
                last = batch["rows"][-1] == min(n, (s + 1) * shard_size) - 1
                forward = write = 0.0
                for i, target in enumerate(targets):
                    if s not in target.todo or target.failed is not None:
                        continue
                    vecs, meta = pending.setdefault(i, ([], []))
                    enc = target.encoder
                    t0 = time.perf_counter()
                    try:
                        out, norms = (enc.encode_images(batch["images"], return_norms=True)
                                      if batch["images"] is not None else (None, None))
                    except (RuntimeError, MemoryError) as err:   # out of memory, a broken model
                        if not isolate_failures:
                            raise
                        target.failed = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                        log.warning("model %s failed while embedding: %s", enc.spec.canonical, target.failed)
                        continue
                    seconds = time.perf_counter() - t0
                    target.forward_s += seconds
                    forward += seconds
                    meta.extend(_meta_records(batch, norms, table_files))
                    if out is not None:
                        vecs.append(np.asarray(out, dtype=np.float32))
                    if last:
                        t1 = time.perf_counter()
                        dim = int(getattr(enc, "embed_dim", 0) or (vecs[0].shape[1] if vecs else 0))
                        arr = np.concatenate(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)
                        _write_shard(target.root, s, np.ascontiguousarray(arr, dtype=np.float32), meta)
                        write += time.perf_counter() - t1
                        timings["shards_written"] = timings.get("shards_written", 0) + 1
                n_failed = len(batch["failed"])
                for key, value in (("batches", 1), ("n_embedded", len(batch["rows"]) - n_failed),
                                   ("n_failed_now", n_failed), ("load_preprocess_s", batch["load_s"]),
                                   ("wait_s", wait), ("forward_s", forward), ("write_s", write)):
                    timings[key] = timings.get(key, 0) + value
                record = {"batch": b, "shard": s, "images": len(batch["rows"]), "failed": n_failed,
                          "load_preprocess_s": round(batch["load_s"], 5), "wait_s": round(wait, 5),
                          "forward_s": round(forward, 5), "write_s": round(write, 5)}
                timings.setdefault("per_batch", []).append(record)
                log.debug("batch %d: %s", b, record)
                bar.update(len(batch["rows"]))
                if on_batch is not None:
                    on_batch(record)
                wait_start = time.perf_counter()
    finally:
        bar.close()
    return n_decoded


def _load_all(root: Path, bounds, loaded: dict) -> ImageEmbeddings:
    """Assemble all shards (those in ``loaded`` were read before this run)."""
    import numpy as np

    vectors, rows, norms, skipped = [], [], [], []
    for s, lo, hi in bounds:
        shard = loaded[s] if s in loaded else _read_shard(root, s, lo, hi)
        if shard is None:
            raise DataError(f"embedding cache {root} lost shard {s} while reading it; run again")
        vec, meta = shard
        ok = meta["status"].to_numpy() == "ok"
        vectors.append(vec)
        rows.append(meta["row"].to_numpy(dtype=np.int64)[ok])
        norms.append(meta["norm"].to_numpy(dtype=np.float32)[ok])
        for rec in meta.loc[~ok, ["row", "file", "reason"]].itertuples(index=False):
            skipped.append({"row": int(rec.row), "file": rec.file, "reason": rec.reason})
    dim = vectors[0].shape[1] if vectors else 0
    result = ImageEmbeddings(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
        rows=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        norms=np.concatenate(norms) if norms else np.zeros(0, dtype=np.float32),
        skipped=skipped,
        cache_dir=root,
    )
    h = hashlib.sha256()
    for arr in (result.rows, result.vectors, result.norms):
        h.update(np.ascontiguousarray(arr).tobytes())
    result.digest = h.hexdigest()
    return result


# --------------------------------------------------------------------------- text


def _text_dir(encoder, cache_dir) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / model_cache_key(encoder) / "text"


def _text_threads(folder: Path, encoder) -> int | None:
    """The torch threads the text cache of ``folder`` computes with: those recorded in its ``cache.json``,
    else this process's (recorded now, where the folder can be written)."""
    from clipprobe._io import WriteError, write_json

    threads = process_threads(encoder)
    if threads is None:
        return None
    manifest = folder / MANIFEST
    try:
        stored = json.loads(manifest.read_text(encoding="utf-8")).get("threads")
    except (OSError, ValueError, AttributeError):
        stored = None
    if isinstance(stored, int) and not isinstance(stored, bool) and stored >= 1:
        if stored != threads:
            log.info("text cache %s was started with %d torch thread(s); using %d, not %d", folder, stored, stored,
                     threads)
        return stored
    try:
        write_json(manifest, {"threads": threads})
    except WriteError:
        pass            # a read-only cache: the new vectors are not stored either (said below)
    return threads


def _read_text_cache(folder: Path) -> dict:
    import pandas as pd

    from clipprobe._io import read_npy

    known: dict[str, Any] = {}
    if not folder.is_dir():
        return known
    for meta_path in sorted(folder.glob("text_*.parquet")):
        emb_path = meta_path.with_suffix(".npy")
        try:
            texts = pd.read_parquet(meta_path)["text"].tolist()
            vectors = read_npy(emb_path)
        except (OSError, ValueError, KeyError) as err:
            log.warning("ignoring unreadable text-embedding chunk %s (%s)", meta_path, err)
            continue
        if vectors.ndim != 2 or len(vectors) != len(texts):
            log.warning("ignoring text-embedding chunk %s: %d texts but %s vectors", meta_path, len(texts), vectors.shape)
            continue
        for text, vec in zip(texts, vectors):
            known.setdefault(text, vec)
    return known


def embed_texts(encoder, texts: list[str], *, cache_dir: str | os.PathLike | None = None):
    """Embeddings (len(texts), dim) of ``texts``, from the per-model text cache when possible.

    New texts are encoded once and appended as a new chunk named by the hash of
    its texts, so concurrent runs never overwrite each other's chunks.
    """
    import numpy as np
    import pandas as pd

    from clipprobe._io import write_npy, write_parquet

    if isinstance(texts, str):
        raise TypeError("embed_texts takes a list of strings, not one string")
    texts = [str(t) for t in texts]
    folder = _text_dir(encoder, cache_dir)
    known = _read_text_cache(folder)
    missing = list(dict.fromkeys(t for t in texts if t not in known))
    if missing:
        from clipprobe._io import WriteError

        with cpu_threads(_text_threads(folder, encoder)):
            vectors = np.ascontiguousarray(encoder.encode_text(missing), dtype=np.float32)
        digest = hashlib.sha256("\0".join(missing).encode("utf-8")).hexdigest()[:16]
        try:
            write_npy(folder / f"text_{digest}.npy", vectors)
            write_parquet(folder / f"text_{digest}.parquet", pd.DataFrame({"text": missing}))
        except WriteError as err:
            log.warning("%d new prompt embedding(s) are used but not cached: %s", len(missing), err)
        known.update(zip(missing, vectors))
        log.info("embedded %d new prompt(s); %d from the cache", len(missing), len(set(texts)) - len(missing))
    dim = int(getattr(encoder, "embed_dim", 0) or 0)
    if not texts:
        return np.zeros((0, dim), dtype=np.float32)
    return np.stack([known[t] for t in texts]).astype(np.float32, copy=False)
