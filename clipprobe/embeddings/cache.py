"""Resumable, batched image and text embedding with an on-disk cache.

Layout (shards of vectors with their metadata, in folders named as clip-retrieval names them, but
not clip-retrieval's format: its tools cannot read these folders, nor can these read theirs)::

    CACHE/<model key>/<dataset fingerprint>-f<format>/
        cache.json                       what this folder holds (model, dataset, rows, shard size,
                                         batch size)
        img_emb/img_emb_00000.npy        float32 (n_ok, dim), L2-normalised, rows in dataset order
        metadata/metadata_00000.parquet  one row per dataset row of the shard, failed images included:
                                         row, file, status ("ok" | "error"), reason, norm (of the raw
                                         embedding, for dot-product scoring)
        done.json                        written once every shard exists
    CACHE/<model key>/text/text_<hash>.npy + text_<hash>.parquet   prompt embeddings

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

The model key is the model spec's key plus the precision and a hash of the
preprocessing settings, since both change the vectors.

Threads: on the CPU, torch runs as many threads as the machine has cores, and when other processes
keep cores busy its threads wait on each other: measured on a 2-core machine with a load of 8, a
ViT-B-32 forward pass on a batch of 8 took 5.8 s with torch's 2 threads and 1.9 s with 1 (at a
batch of 64 both took 19 s). The embedding runs therefore use the cores that are free: those this
process may run on, less the 1-minute load average, at least 1 and at most torch's own number
(:func:`cpu_threads`), unless ``OMP_NUM_THREADS`` is set, which is then left to decide.

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

CACHE_FORMAT = 2   # 2: metadata holds each raw embedding's norm; folders of another format are left alone
MANIFEST = "cache.json"
DONE = "done.json"

MSG_BAD_BATCH = "batch size must be a positive integer, not {value!r}"
MSG_BAD_SHARD = "shard size must be a positive integer, not {value!r}"
MSG_BAD_WORKERS = "number of workers must be 0 or more, not {value!r}"
MSG_ALL_FAILED = "no image of dataset {spec!r} could be read ({n} failed, e.g. {file}: {reason})"



def model_cache_key(encoder) -> str:
    """Folder name for an encoder: its spec key, precision and a hash of its preprocessing (and of
    QuickGELU where it was asked for a weights file or folder: it changes the vectors, not the weights)."""
    info = encoder.info() if hasattr(encoder, "info") else {}
    precision = str(info.get("precision", "fp32"))
    settings = {"precision": precision, "preprocess": info.get("preprocess")}
    if info.get("quick_gelu_forced") and info.get("kind") in ("file", "local-dir", "hf-hub"):
        settings["quick_gelu"] = True
    settings = json.dumps(settings, sort_keys=True, default=str)
    return f"{encoder.spec.key}__{precision}-{hashlib.sha256(settings.encode()).hexdigest()[:8]}"


def embeddings_dir(encoder, dataset, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of ``dataset`` embedded by ``encoder``."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / model_cache_key(encoder) / f"{dataset.fingerprint}-f{CACHE_FORMAT}"


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

    def __len__(self) -> int:
        return int(len(self.rows))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


# --------------------------------------------------------------------------- worker side


class _RowImages:
    """Map-style dataset: row -> (row, tensor | None, error | None, seconds). Runs in workers."""

    def __init__(self, dataset, preprocess) -> None:
        self.dataset = dataset
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, row: int):
        start = time.perf_counter()
        try:
            tensor = self.preprocess(self.dataset.load_image(row))
        except Exception as err:  # noqa: BLE001 - one bad image is counted and listed, not fatal
            reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".strip()
            return row, None, reason[:500], time.perf_counter() - start
        return row, tensor, None, time.perf_counter() - start


def _collate(items):
    """Stack the decoded images of a batch; keep failures aside."""
    import torch

    ok_rows = [row for row, tensor, _, _ in items if tensor is not None]
    tensors = [tensor for _, tensor, _, _ in items if tensor is not None]
    failed = [(row, reason) for row, tensor, reason, _ in items if tensor is None]
    batch = torch.stack(tensors) if tensors else None
    return {
        "rows": [row for row, *_ in items],
        "ok_rows": ok_rows,
        "images": batch,
        "failed": failed,
        "load_s": sum(t for *_, t in items),
    }


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
        "norm" not in meta
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
    meta = pd.DataFrame.from_records(meta_records, columns=["row", "file", "status", "reason", "norm"])
    meta["row"] = meta["row"].astype("int64")
    meta["norm"] = meta["norm"].astype("float32")
    # The metadata file is written last: its presence marks the shard finished.
    write_parquet(meta_path, meta)


def _prepare_root(root: Path, encoder, dataset, shard_size: int, batch_size: int) -> tuple[int, int]:
    """Create or check the manifest; return the shard size and batch size in force for this folder."""
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
        return stored_size, stored_batch
    info = encoder.info() if hasattr(encoder, "info") else {"spec": encoder.spec.raw}
    write_json(manifest_path, {
        "format": CACHE_FORMAT,
        "n_rows": len(dataset),
        "shard_size": shard_size,
        "batch_size": batch_size,
        "embed_dim": int(getattr(encoder, "embed_dim", 0) or 0),
        "model": {k: info.get(k) for k in ("spec", "canonical", "key", "precision", "preprocess", "preprocess_source")},
        "model_key": model_cache_key(encoder),
        "dataset": dataset.summary() if hasattr(dataset, "summary") else {"spec": dataset.spec},
    })
    return shard_size, batch_size


# --------------------------------------------------------------------------- main entry


def _check_positive(value, message: str) -> int:
    from clipprobe.errors import UsageError

    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(message.format(value=value))
    return value


def free_cores() -> int:
    """Cores this process may run on (CPU affinity) less the system's 1-minute load average, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return max(1, cores - int(round(load)))


@contextlib.contextmanager
def cpu_threads(encoder):
    """Run a block with torch's CPU threads sized to :func:`free_cores` (for a model on the CPU, when
    ``OMP_NUM_THREADS`` is not set); yields the number in force; restores torch's setting after."""
    import torch

    before = torch.get_num_threads()
    on_cpu = str(getattr(encoder, "device", "cpu")).startswith("cpu")
    if not on_cpu or os.environ.get("OMP_NUM_THREADS"):
        yield before
        return
    threads = min(before, free_cores())
    if threads != before:
        log.info("torch runs %d CPU thread(s) instead of %d: the other cores are busy (load average)", threads,
                 before)
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
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
) -> ImageEmbeddings:
    """Embed every image of ``dataset`` with ``encoder``, reusing finished cache shards.

    ``batch_size`` applies to a new cache folder; a folder keeps the batch size it was started
    with (see the module docstring). ``progress``: None shows a bar only on a terminal, True/False
    force it.
    ``on_batch`` is called after each batch with that batch's timings (after the
    shard it completes, if any, is on disk); raising in it stops the run like Ctrl-C.
    """
    from clipprobe._io import write_json

    _check_positive(batch_size, MSG_BAD_BATCH)
    _check_positive(shard_size, MSG_BAD_SHARD)
    if num_workers is None:
        num_workers = default_num_workers()
    elif isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        from clipprobe.errors import UsageError

        raise UsageError(MSG_BAD_WORKERS.format(value=num_workers))

    t_start = time.perf_counter()
    root = embeddings_dir(encoder, dataset, cache_dir)
    n = len(dataset)
    shard_size, batch_size = _prepare_root(root, encoder, dataset, shard_size, batch_size)
    n_shards = math.ceil(n / shard_size)
    bounds = [(s, s * shard_size, min(n, (s + 1) * shard_size)) for s in range(n_shards)]
    loaded: dict[int, tuple] = {}
    todo = []
    for s, lo, hi in bounds:
        shard = _read_shard(root, s, lo, hi)
        if shard is None:
            todo.append((s, lo, hi))
        else:
            loaded[s] = shard

    timings: dict[str, Any] = {
        "n_rows": n, "n_shards": n_shards, "shard_size": shard_size, "shards_reused": n_shards - len(todo),
        "shards_written": 0, "n_embedded": 0, "n_failed_now": 0, "batches": 0, "batch_size": batch_size,
        "num_workers": 0, "load_preprocess_s": 0.0, "wait_s": 0.0, "forward_s": 0.0, "write_s": 0.0,
        "per_batch": [],
    }
    if todo:
        log.info("embedding %d of %d images (%d of %d shards cached) into %s",
                 sum(hi - lo for _, lo, hi in todo), n, n_shards - len(todo), n_shards, root)
        with cpu_threads(encoder) as threads:
            timings["torch_threads"] = threads
            _run(encoder, dataset, root, todo, batch_size, num_workers, progress, on_batch, timings)
    elif n_shards:
        log.info("all %d images of %s are cached in %s", n, dataset.spec, root)

    result = _load_all(root, bounds, loaded)
    if not (root / DONE).is_file() or todo:
        write_json(root / DONE, {
            "n_rows": n, "n_ok": len(result.rows), "n_failed": len(result.skipped), "n_shards": n_shards,
            "shard_size": shard_size, "dataset": getattr(dataset, "spec", None),
            "fingerprint": getattr(dataset, "fingerprint", None), "model_key": model_cache_key(encoder),
        })
    timings["total_s"] = time.perf_counter() - t_start
    if timings["n_embedded"]:
        busy = timings["total_s"]
        timings["images_per_s"] = timings["n_embedded"] / busy if busy > 0 else float("inf")
    for key in ("load_preprocess_s", "wait_s", "forward_s", "write_s", "total_s"):
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


def _run(encoder, dataset, root, todo, batch_size, num_workers, progress, on_batch, timings) -> None:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    batches, shard_of_batch = [], []
    for s, lo, hi in todo:
        for start in range(lo, hi, batch_size):
            batches.append(list(range(start, min(hi, start + batch_size))))
            shard_of_batch.append(s)
    n_todo = sum(hi - lo for _, lo, hi in todo)
    workers = num_workers if len(batches) > 1 else 0
    timings["num_workers"] = workers
    loader_kwargs: dict[str, Any] = {}
    if workers:
        loader_kwargs.update(prefetch_factor=4, persistent_workers=False)
        if "fork" in torch.multiprocessing.get_all_start_methods():
            loader_kwargs["multiprocessing_context"] = "fork"
    loader = DataLoader(
        _RowImages(dataset, encoder.preprocess),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=str(getattr(encoder, "device", "cpu")).startswith("cuda"),
        **loader_kwargs,
    )
    bounds = {s: (lo, hi) for s, lo, hi in todo}
    table_files = dataset.table["file"]
    vecs: list = []
    meta: list[dict] = []
    current = None
    bar = tqdm(total=n_todo, unit="img", desc="embedding", disable=(None if progress is None else not progress))
    try:
        wait_start = time.perf_counter()
        for b, batch in enumerate(loader):
            wait = time.perf_counter() - wait_start
            s = shard_of_batch[b]
            if s != current:
                vecs, meta, current = [], [], s
            t0 = time.perf_counter()
            out, norms = (encoder.encode_images(batch["images"], return_norms=True) if batch["images"] is not None
                          else (None, None))
            forward = time.perf_counter() - t0
            failed = dict(batch["failed"])
            k = 0
            for row in batch["rows"]:
                if row in failed:
                    meta.append({"row": row, "file": str(table_files.iat[row]), "status": "error",
                                 "reason": failed[row], "norm": float("nan")})
                else:
                    meta.append({"row": row, "file": str(table_files.iat[row]), "status": "ok", "reason": None,
                                 "norm": float(norms[k])})
                    k += 1
            if out is not None:
                vecs.append(np.asarray(out, dtype=np.float32))
            write = 0.0
            lo, hi = bounds[s]
            if batch["rows"][-1] == hi - 1:
                t1 = time.perf_counter()
                dim = int(getattr(encoder, "embed_dim", 0) or (vecs[0].shape[1] if vecs else 0))
                arr = np.concatenate(vecs) if vecs else np.zeros((0, dim), dtype=np.float32)
                _write_shard(root, s, np.ascontiguousarray(arr, dtype=np.float32), meta)
                write = time.perf_counter() - t1
                timings["shards_written"] += 1
            timings["batches"] += 1
            timings["n_embedded"] += k
            timings["n_failed_now"] += len(failed)
            timings["load_preprocess_s"] += batch["load_s"]
            timings["wait_s"] += wait
            timings["forward_s"] += forward
            timings["write_s"] += write
            record = {"batch": b, "shard": s, "images": len(batch["rows"]), "failed": len(failed),
                      "load_preprocess_s": round(batch["load_s"], 5), "wait_s": round(wait, 5),
                      "forward_s": round(forward, 5), "write_s": round(write, 5)}
            timings["per_batch"].append(record)
            log.debug("batch %d: %s", b, record)
            bar.update(len(batch["rows"]))
            if on_batch is not None:
                on_batch(record)
            wait_start = time.perf_counter()
    finally:
        bar.close()


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
    return ImageEmbeddings(
        vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
        rows=np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64),
        norms=np.concatenate(norms) if norms else np.zeros(0, dtype=np.float32),
        skipped=skipped,
        cache_dir=root,
    )


# --------------------------------------------------------------------------- text


def _text_dir(encoder, cache_dir) -> Path:
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return base / model_cache_key(encoder) / "text"


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

        with cpu_threads(encoder):
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
