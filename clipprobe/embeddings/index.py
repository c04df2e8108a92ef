"""FAISS inner-product search over L2-normalised embeddings (inner product = cosine).

``kind="flat"`` (the default) is exact: ``IndexFlatIP`` compares the query with
every image. For very large image sets two approximate kinds trade a little
recall for speed: ``"hnsw"`` (a graph index, no training) and ``"ivf"``
(inverted lists over k-means cells; ``nprobe`` cells are visited per query).

GPU FAISS is used when the installed FAISS build has GPU support and a GPU is
present (``gpu="auto"``); ``gpu="never"`` forces the CPU and ``gpu="always"``
fails when no GPU can be used. The CPU and GPU FAISS packages install the same
module and conflict, so the choice is an explicit extra: ``pip install
'clipprobe[cpu]'`` or ``pip install 'clipprobe[gpu]'``.

Index ids are positions in the vector array that was indexed (for an
:class:`~clipprobe.embeddings.cache.ImageEmbeddings` that is ``emb.rows[id]`` in dataset
rows).
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean

log = logging.getLogger(__name__)

KINDS = ("flat", "hnsw", "ivf")
GPU_CHOICES = ("auto", "always", "never")
GPU_MAX_K = 2048  # FAISS GPU search supports k <= 2048

MSG_NO_FAISS = (
    "FAISS is not installed; install it with pip install 'clipprobe[cpu]' (faiss-cpu) "
    "or pip install 'clipprobe[gpu]' (faiss-gpu-cu12), not both"
)
MSG_NO_GPU = "gpu='always' but {why}; use gpu='auto' or install clipprobe[gpu] on a machine with a CUDA GPU"
MSG_NOT_NORMALISED = "vectors must be L2-normalised for inner-product search; row {row} has norm {norm:.4f}"
MSG_BAD_K = "k={k} is out of range: the index holds {n} vector(s); choose 1 <= k <= {n}"


def import_faiss():
    """Import faiss or raise an error that names the extra to install."""
    try:
        import faiss
    except ImportError:
        raise ClipprobeError(MSG_NO_FAISS) from None
    return faiss


def gpu_available() -> bool:
    """Whether the installed FAISS can use a GPU here."""
    faiss = import_faiss()
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _as_matrix(vectors, what: str):
    import numpy as np

    arr = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
    if arr.ndim != 2 or arr.shape[1] == 0:
        raise DataError(f"{what} must be a 2-D array (n, dim), got shape {arr.shape}")
    return arr


def _check_normalised(arr, tol: float = 1e-3) -> None:
    import numpy as np

    if len(arr) == 0:
        return
    norms = np.linalg.norm(arr, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > tol)
    if bad.size:
        raise DataError(MSG_NOT_NORMALISED.format(row=int(bad[0]), norm=float(norms[bad[0]])))


def build_index(
    vectors,
    *,
    kind: str = "flat",
    gpu: str = "auto",
    hnsw_m: int = 32,
    ef_search: int = 128,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
):
    """Build a FAISS inner-product index over L2-normalised ``vectors`` (n, dim).

    ``hnsw_m`` / ``ef_search`` tune ``kind="hnsw"``; ``nlist`` (default about
    ``4 * sqrt(n)``) and ``nprobe`` (default ``max(1, nlist // 8)``) tune
    ``kind="ivf"``. Returns the index (a GPU index when one is used).
    """
    if kind not in KINDS:
        raise UsageError(f"unknown index kind {kind!r}{did_you_mean(kind, KINDS)}; valid: {', '.join(KINDS)}")
    if gpu not in GPU_CHOICES:
        raise UsageError(f"unknown gpu choice {gpu!r}; valid: {', '.join(GPU_CHOICES)}")
    faiss = import_faiss()
    arr = _as_matrix(vectors, "vectors")
    if len(arr) == 0:
        raise DataError("cannot build an index over zero vectors")
    _check_normalised(arr)
    n, dim = arr.shape
    metric = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, metric)
        index.hnsw.efSearch = ef_search
    else:
        nlist = nlist or max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, metric)
        index.cp.seed = seed
        index.train(arr)
        index.nprobe = nprobe or max(1, nlist // 8)
    index.add(arr)
    use_gpu = _want_gpu(gpu, kind)
    if use_gpu:
        index = _to_gpu(faiss, index)
    log.info("built %s index over %d vectors of dim %d%s", kind, n, dim, " on GPU" if use_gpu else "")
    return index


def _want_gpu(gpu: str, kind: str) -> bool:
    if gpu == "never":
        return False
    faiss = import_faiss()
    has_gpu_build = hasattr(faiss, "StandardGpuResources")
    n_gpus = faiss.get_num_gpus() if has_gpu_build else 0
    if gpu == "always":
        if not has_gpu_build:
            raise ClipprobeError(MSG_NO_GPU.format(why="the installed FAISS has no GPU support (faiss-cpu)"))
        if n_gpus == 0:
            raise ClipprobeError(MSG_NO_GPU.format(why="FAISS sees no GPU"))
        if kind == "hnsw":
            raise ClipprobeError(MSG_NO_GPU.format(why="FAISS has no GPU HNSW index"))
    if kind == "hnsw":
        return False
    return n_gpus > 0


def _to_gpu(faiss, index):
    res = faiss.StandardGpuResources()
    gpu_index = faiss.index_cpu_to_gpu(res, 0, index)
    # Keep the resources alive as long as the index (faiss allows this one attribute).
    gpu_index.referenced_objects = [res]
    return gpu_index


def is_gpu_index(index) -> bool:
    faiss = import_faiss()
    return hasattr(faiss, "GpuIndex") and isinstance(index, faiss.GpuIndex)


def search(index, queries, k: int):
    """Top-``k`` inner-product search; returns ``(scores, ids)`` of shape (n_queries, k).

    Scores are float32 cosine similarities in decreasing order; ids are int64
    positions in the indexed vectors. A single query may be passed as a 1-D array.
    """
    import numpy as np

    q = np.asarray(queries, dtype=np.float32)
    if q.ndim == 1:
        q = q[None, :]
    q = _as_matrix(q, "queries")
    if q.shape[1] != index.d:
        raise DataError(f"queries have dimension {q.shape[1]} but the index has dimension {index.d}")
    n = int(index.ntotal)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1 or k > n:
        raise UsageError(MSG_BAD_K.format(k=k, n=n))
    if k > GPU_MAX_K and is_gpu_index(index):
        faiss = import_faiss()
        log.info("k=%d is above the GPU limit %d; searching a CPU copy", k, GPU_MAX_K)
        index = faiss.index_gpu_to_cpu(index)
    scores, ids = index.search(q, k)
    return scores.astype(np.float32, copy=False), ids.astype(np.int64, copy=False)


def save_index(index, path: str | Path) -> Path:
    """Write ``index`` to ``path`` atomically (GPU indexes are copied to the CPU first)."""
    from clipprobe._io import atomic_path

    faiss = import_faiss()
    if is_gpu_index(index):
        index = faiss.index_gpu_to_cpu(index)
    path = Path(path)
    with atomic_path(path, suffix=".faiss") as tmp:
        try:
            faiss.write_index(index, str(tmp))
        except RuntimeError as err:
            # FAISS reports a failed write (disk full, file too large) as a RuntimeError whose message ends
            # with the system's reason in parentheses; make it the OSError that atomic_path reports.
            found = re.search(r"write error in .*\(([^()]*)\)\s*$", str(err).strip())
            if found is None:
                raise
            raise OSError(found.group(1)) from None
    return path


def load_index(path: str | Path, *, gpu: str = "auto", kind: str = "flat"):
    """Read an index written by :func:`save_index`, moving it to the GPU when wanted."""
    faiss = import_faiss()
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise DataError(f"cannot read FAISS index {path}: {str(err).splitlines()[0]}") from None
    if _want_gpu(gpu, kind):
        index = _to_gpu(faiss, index)
    return index


def _file_sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def index_for(embeddings: Any, *, kind: str = "flat", gpu: str = "auto", persist: bool = True, **options):
    """The index for an :class:`~clipprobe.embeddings.cache.ImageEmbeddings`, built once and cached.

    With ``persist`` the CPU form is stored next to the embeddings (``<cache>/index/<kind>.faiss``
    plus a small JSON manifest that ties it to the number and checksum of the vectors and holds the
    checksum of the index file itself) and reused on the next call; an index file whose checksum does
    not match (corrupted, or written by something else) is rebuilt, with a warning.
    """
    import hashlib
    import json

    from clipprobe._io import write_json

    vectors = embeddings.vectors
    manifest = {
        "kind": kind,
        "options": {k: options[k] for k in sorted(options)},
        "n": int(len(vectors)),
        "dim": int(vectors.shape[1]) if vectors.ndim == 2 else 0,
        "sha256": hashlib.sha256(memoryview(vectors.astype("float32", copy=False)).cast("B")).hexdigest(),
    }
    cache_dir = getattr(embeddings, "cache_dir", None)
    path = Path(cache_dir) / "index" / f"{kind}.faiss" if (persist and cache_dir) else None
    if path is not None and path.is_file():
        meta_path = path.with_suffix(".json")
        try:
            stored = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            stored = None
        if isinstance(stored, dict) and {k: v for k, v in stored.items() if k != "file_sha256"} == manifest:
            if stored.get("file_sha256") == _file_sha256(path):
                log.info("reusing %s index from %s", kind, path)
                return load_index(path, gpu=gpu, kind=kind)
            log.warning("index file %s does not match its checksum; rebuilding it", path)
    index = build_index(vectors, kind=kind, gpu=gpu, **options)
    if path is not None:
        save_index(index, path)
        write_json(path.with_suffix(".json"), {**manifest, "file_sha256": _file_sha256(path)})
    return index
