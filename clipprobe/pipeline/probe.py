"""Open a probe (model + face dataset + cached image embeddings) and retrieve words with it.

:func:`open_probe` loads the model, the face dataset and its (cached) image embeddings once;
:func:`retrieve` answers one word. Base shares are shares of the images that could be embedded (an
image that failed to decode can never be retrieved, so it is not part of the population either).

One score and one ranking rule everywhere: every command scores with :func:`similarities` (the exact dot
product of the float32 embeddings rounded once to float32:
:func:`clipprobe.analysis.metrics.similarity_scores`, the same bits for a word alone or among many, on
any CPU), and with the exact (``flat``) index a word's top-k is its ``k`` highest scores, ties broken by
the lower image index (:func:`clipprobe.analysis.metrics.rank_topk`), in ``retrieve``, ``report``,
``subsets`` and the bootstrap alike. The approximate FAISS indexes (``hnsw``, ``ivf``) are for very
large image sets; they may miss a true neighbour (the report says which was used), and the candidates
they return are ordered by the same scores and rule.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean, one_of
from clipprobe.faces import ATTRIBUTES, RETRIEVE_ATTRIBUTES
from clipprobe.models.spec import DEFAULT_MODEL

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from clipprobe.report.retrieval import Retrieval
    from clipprobe.resources.prompts import Query

log = logging.getLogger(__name__)

DEFAULT_K = 100
INDEX_KINDS = ("flat", "hnsw", "ivf")
SCORES = ("cosine", "dot")

ERR_K_TOO_LARGE = "k={k} is larger than the dataset {dataset} ({n} images could be embedded)"
ERR_K_POSITIVE = "k must be a positive number of images, got {k}"
ERR_UNKNOWN_ATTRIBUTE = "unknown attribute {attribute!r}{hint} for dataset {dataset!r}; valid: {valid}"
ERR_DEGENERATE = ("model {model} gave NaN, infinite or zero embeddings to {n} of {total} images of dataset {dataset} "
                  "(first: {file}); nothing can be ranked by them (with precision fp16 or bf16, try fp32)")
ERR_ALL_EQUAL = ("model {model} gave the same embedding to all {n} images of dataset {dataset}: every score would "
                 "tie; check the model and its weights")
ERR_KEY_WITHOUT_FOLDER = "embeddings_key={key!r} is given without an embeddings folder"
WARN_DUPLICATES = ("%d of %d image embeddings are exact copies of another image's (%d distinct; duplicate images?): "
                   "they get equal scores, and ties are broken by the lower image index")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Everything that picks the model, the face dataset and the index."""

    model: str = DEFAULT_MODEL
    model_config: str | None = None
    quick_gelu: bool = False         # build a weights file or folder with QuickGELU
    preprocess: str | None = None
    dataset: str | None = None
    split: str = "validation"
    hf_config: str | None = None     # configuration of an hf: dataset (FairFace: 0.25 or 1.25)
    image_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    precision: str | None = None     # fp32, fp16 or bf16; None: fp16 on CUDA, fp32 on the CPU
    batch_size: int = 64
    num_workers: int | None = None
    offline: bool = False
    index: str = "flat"
    embeddings: str | None = None        # a folder of the dataset's image embeddings made elsewhere (LAION layout)
    embeddings_key: str | None = None    # its metadata column naming each row's image (None: the first known)

    def check(self) -> "ProbeConfig":
        if self.index not in INDEX_KINDS:
            raise one_of(self.index, INDEX_KINDS, "index kind")
        if self.embeddings_key is not None and self.embeddings is None:
            raise UsageError(ERR_KEY_WITHOUT_FOLDER.format(key=self.embeddings_key))
        from clipprobe.models.catalog import check_model_name

        check_model_name(self.model, model_config=self.model_config)   # before seconds of torch imports
        return self


@dataclasses.dataclass(frozen=True)
class Probe:
    """A loaded model, face dataset and image embeddings, ready to answer queries.

    ``labels`` holds the attribute columns of the embedded images (row ``i`` is the image of
    ``embeddings.vectors[i]``) and ``files`` their file names; ``timings`` the seconds each stage of
    :func:`open_probe` took. ``index`` is the FAISS index of an approximate kind (None for ``flat``).
    ``source``: where the image embeddings came from when they were read from a folder
    (``config.embeddings``: the folder, its content fingerprint, the key column, the counts of rows
    that did not match); None when the model embedded the images.
    """

    config: ProbeConfig
    encoder: Any
    dataset: Any
    embeddings: Any
    labels: "pd.DataFrame"
    files: tuple[str, ...]
    timings: dict[str, float]
    index: Any = None
    source: dict | None = None

    @property
    def n_images(self) -> int:
        return len(self.files)

    def attributes(self) -> list[str]:
        return list(self.labels.columns)

    def check_attributes(self, attributes: Sequence[str]) -> tuple[str, ...]:
        valid = self.attributes()
        for a in attributes:
            if a not in valid:
                raise ClipprobeError(ERR_UNKNOWN_ATTRIBUTE.format(
                    attribute=a, hint=did_you_mean(a, valid), dataset=self.dataset.spec,
                    valid=", ".join(repr(v) for v in valid)))
        return tuple(attributes)

    def check_k(self, k: int) -> int:
        if k < 1:
            raise ClipprobeError(ERR_K_POSITIVE.format(k=k))
        if k > self.n_images:
            raise ClipprobeError(ERR_K_TOO_LARGE.format(k=k, dataset=self.dataset.spec, n=self.n_images))
        return k

    def default_attributes(self) -> tuple[str, ...]:
        """The standard attributes this dataset has (race, gender, age, race_gender)."""
        return tuple(a for a in ATTRIBUTES if a in self.attributes())

    def load_image(self, file: str):
        """The PIL image of one of the probe's files."""
        return self.dataset.load_image(self._row_of[str(file)])

    @functools.cached_property
    def _row_of(self) -> dict[str, int]:
        """The dataset row of each file name (built once: contact sheets load hundreds of images)."""
        return {str(f): i for i, f in enumerate(self.dataset.table["file"])}

    def with_labels(self, labels: "pd.DataFrame") -> "Probe":
        """The same probe with other labels for its images (e.g. shuffled: the null world)."""
        if len(labels) != self.n_images:
            raise ClipprobeError(f"labels: {len(labels)} row(s) for {self.n_images} embedded image(s)")
        return dataclasses.replace(self, labels=labels.reset_index(drop=True))

    def shuffled(self, seed: int) -> "Probe":
        """The probe with its label rows permuted against the images (seeded): no association is left."""
        import numpy as np

        order = np.random.default_rng(seed).permutation(self.n_images)
        return self.with_labels(self.labels.iloc[order].reset_index(drop=True))

    def info(self) -> dict:
        """What a run records about the dataset side of the probe."""
        ds = self.dataset
        info = {"spec": ds.spec, "kind": ds.kind, "split": ds.split, "root": str(ds.root) if ds.root else None,
                "fingerprint": ds.fingerprint, "n_images": self.n_images, "n_rows": len(ds)}
        if self.source is not None:
            info["embeddings"] = self.source
        return info


def open_probe(config: ProbeConfig, *, progress: bool | None = None) -> Probe:
    """Load the model, the dataset, the image embeddings (cached) and, for an approximate kind, the index.

    With ``config.embeddings`` the image embeddings are read from that folder (clip-retrieval's layout,
    :func:`clipprobe.embeddings.external.dataset_embeddings`: matched to the dataset's images by the
    metadata column ``config.embeddings_key``) and only the model's text tower is used; the folder's
    structure is checked before the model loads, its dimension against the model's right after."""
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.faces import load_dataset
    from clipprobe.models import load_model

    config = config.check()
    timings: dict[str, float] = {}
    folder = None
    if config.embeddings is not None:
        from clipprobe.embeddings.external import open_embedding_folder

        start = time.perf_counter()
        folder = open_embedding_folder(config.embeddings)    # a bad folder fails before anything loads
        timings["check_embeddings"] = time.perf_counter() - start
    start = time.perf_counter()
    dataset = load_dataset(config.dataset, split=config.split, image_root=config.image_root,
                           offline=config.offline or None, hf_config=config.hf_config)
    timings["load_dataset"] = time.perf_counter() - start
    if folder is not None:
        from clipprobe.embeddings.external import KEY_COLUMNS

        folder.find_column(KEY_COLUMNS, "the images' paths", given=config.embeddings_key)
    start = time.perf_counter()
    encoder = load_model(config.model, device=config.device, model_config=config.model_config,
                         offline=config.offline or None, preprocess=config.preprocess, precision=config.precision,
                         quick_gelu=config.quick_gelu)
    timings["load_model"] = time.perf_counter() - start
    start = time.perf_counter()
    source = None
    if folder is None:
        embeddings = embed_dataset(encoder, dataset, cache_dir=config.cache_dir, batch_size=config.batch_size,
                                   num_workers=config.num_workers, progress=progress)
        timings["embed_images"] = time.perf_counter() - start
    else:
        from clipprobe.embeddings.external import MSG_DIM_MODEL, dataset_embeddings

        if encoder.embed_dim != folder.dim:
            raise DataError(MSG_DIM_MODEL.format(root=folder.root, path=folder.shards[0].name, dim=folder.dim,
                                                      want=encoder.embed_dim))
        match = dataset_embeddings(folder, dataset, key=config.embeddings_key, cache_dir=config.cache_dir)
        embeddings, source = match.embeddings, match.record
        timings["read_embeddings"] = time.perf_counter() - start
    check_embeddings(embeddings, model=encoder.spec.canonical if folder is None else f"embeddings {folder.root}",
                     dataset=dataset.spec)
    if embeddings.skipped and folder is None:     # (the folder's unmatched rows: counted where they are read)
        log.warning("%d image(s) could not be read and are left out (first: %s: %s)", len(embeddings.skipped),
                    embeddings.skipped[0].get("file"), embeddings.skipped[0].get("reason"))
    index = None
    if config.index != "flat":
        from clipprobe.embeddings.index import index_for

        start = time.perf_counter()
        index = index_for(embeddings, kind=config.index)  # reuses an index saved by `clipprobe index build`
        timings["build_index"] = time.perf_counter() - start
    return Probe(config=config, encoder=encoder, dataset=dataset, embeddings=embeddings, labels=embeddings.labels,
                 files=embeddings.files, timings={k: round(v, 4) for k, v in timings.items()}, index=index,
                 source=source)


def check_embeddings(embeddings, *, model: str, dataset: str) -> None:
    """Refuse image embeddings that cannot be ranked (NaN, infinite or zero rows; one embedding for every
    image) with a one-line error; warn with the count of rows that are exact copies of another."""
    import numpy as np

    vectors = np.asarray(embeddings.vectors)
    n = len(vectors)
    if n == 0:
        return
    bad = ~np.isfinite(vectors).all(axis=1) | ~(vectors != 0).any(axis=1)
    if bad.any():
        first = embeddings.files[int(np.flatnonzero(bad)[0])] if len(embeddings.files) == n else "?"
        raise ClipprobeError(ERR_DEGENERATE.format(model=model, n=int(bad.sum()), total=n, dataset=dataset,
                                                   file=first))
    rows = np.ascontiguousarray(vectors).view(np.dtype((np.void, vectors.dtype.itemsize * vectors.shape[1])))
    distinct = len(np.unique(rows.ravel()))
    if n > 1 and distinct == 1:
        raise ClipprobeError(ERR_ALL_EQUAL.format(model=model, n=n, dataset=dataset))
    if distinct < n:
        log.warning(WARN_DUPLICATES, n - distinct, n, distinct)


def query_vectors(probe: Probe, queries: Sequence["Query"]) -> "np.ndarray":
    """One L2-normalised query vector per :class:`~clipprobe.resources.prompts.Query` (prompts ensembled)."""
    from clipprobe.pipeline.embed import embed_texts

    return embed_texts(probe.encoder, queries, cache_dir=probe.config.cache_dir).vectors


def similarities(probe: Probe, vectors: "np.ndarray", score: str = "cosine") -> "np.ndarray":
    """``(W, N)`` float32 scores of query vectors (unit length) against every embedded image.

    ``score="cosine"`` (default): cosine similarity of the L2-normalised embeddings. ``"dot"``: the
    dot product with the raw image embedding (the text still normalised), as oxai/debias-vision-lang
    ranks: cosine times the image embedding's norm, so images with larger embeddings rank higher.

    Every command scores through this function and :func:`~clipprobe.analysis.metrics.similarity_scores`
    (the exact dot product rounded once to float32), so a score is the same number whether its word is
    scored alone (``retrieve``) or among hundreds (``report``, ``subsets``), on any CPU and thread count;
    ``dot`` multiplies by the norm in float32, element by element (also exact rounding).
    """
    import numpy as np

    from clipprobe.analysis.metrics import similarity_scores

    if score not in SCORES:
        raise one_of(score, SCORES, "score")
    scores = similarity_scores(vectors, probe.embeddings.vectors)
    if score == "dot":
        scores *= np.asarray(probe.embeddings.norms, dtype=np.float32)[None, :]
    return scores


def topk(probe: Probe, scores: "np.ndarray", vectors: "np.ndarray", k: int) -> "np.ndarray":
    """``(W, k)`` ids of each query's top-k images, best first (the module's ranking rule)."""
    import numpy as np

    from clipprobe.analysis.metrics import rank_topk
    from clipprobe.embeddings.index import search

    probe.check_k(k)
    if probe.index is None:
        return rank_topk(scores, k)
    # An approximate index picks the candidates; they are ordered by the same scores and rule as above.
    ids = search(probe.index, vectors, k)[1]
    picked = np.take_along_axis(scores, ids, axis=1)
    order = np.lexsort((ids, -picked), axis=1)
    return np.take_along_axis(ids, order, axis=1)


def retrieve(probe: Probe, word: "str | Query", *, k: int = DEFAULT_K, templates=None, taxonomy=None,
             attributes: Sequence[str] = RETRIEVE_ATTRIBUTES, score: str = "cosine") -> "Retrieval":
    """Retrieve the top-k faces for ``word`` (or a prepared query) and measure each attribute's group skew."""
    import pandas as pd

    from clipprobe.analysis.metrics import point_estimates, rank_topk
    from clipprobe.faces import group_codes
    from clipprobe.report.retrieval import Retrieval
    from clipprobe.resources.prompts import Query, make_query

    attributes = probe.check_attributes(attributes)
    probe.check_k(k)
    query = word if isinstance(word, Query) else make_query(word, taxonomy=taxonomy, templates=templates)
    vectors = query_vectors(probe, [query])
    scores = similarities(probe, vectors, score)
    ids = topk(probe, scores, vectors, k)[0] if score == "cosine" else rank_topk(scores, k)[0]
    results = pd.DataFrame({"rank": range(1, k + 1), "file": [probe.files[i] for i in ids],
                            "score": scores[0, ids].astype(float)})
    groups = {}
    for attribute in attributes:
        results[attribute] = probe.labels[attribute].iloc[ids].astype(str).to_numpy()
        codes, names = group_codes(probe.labels[attribute], attribute)
        est = point_estimates(ids[None, :], codes, len(names))
        groups[attribute] = pd.DataFrame({
            "group": names, "count": est["count"][0], "share": est["share"][0],
            "base_share": est["base_share"][0], "skew": est["skew"][0],
        })
    return Retrieval(query=query, k=k, results=results, groups=groups, model=probe.encoder.info(),
                     dataset=probe.info(), skipped=list(probe.embeddings.skipped))


def build_index(config: ProbeConfig, *, progress: bool | None = None) -> dict:
    """Embed a dataset (cached) and build and persist its FAISS index ahead of time (``index build``).

    Returns a JSON-friendly summary of what was done and where it is stored.
    """
    from clipprobe.embeddings.index import index_for, is_gpu_index

    started = time.perf_counter()
    probe = open_probe(dataclasses.replace(config, index="flat"), progress=progress)
    start = time.perf_counter()
    index = index_for(probe.embeddings, kind=config.index)
    build_s = time.perf_counter() - start
    emb = probe.embeddings
    path = Path(emb.cache_dir) / "index" / f"{config.index}.faiss"
    t = emb.timings
    return {
        "model": probe.encoder.info(),
        "dataset": probe.dataset.summary(),
        "n_embedded_now": t.get("n_embedded", 0),
        "n_images": len(emb.rows),
        "skipped": emb.skipped,
        "cache_dir": str(emb.cache_dir),
        "index": {"kind": config.index, "path": str(path), "ntotal": int(index.ntotal), "gpu": is_gpu_index(index)},
        "timings_s": {**probe.timings, "build_index": round(build_s, 4),
                      "total": round(time.perf_counter() - started, 4),
                      "embedding": {k: v for k, v in t.items() if k != "per_batch"}},
    }


def dataset_group_sizes(spec: str, attribute: str, *, split: str = "validation", image_root: str | None = None,
                        offline: bool | None = None, hf_config: str | None = None) -> dict[str, int]:
    """Group sizes of ``attribute`` in a face dataset's label file (images are not read)."""
    import numpy as np

    from clipprobe.faces import group_codes, load_dataset

    dataset = load_dataset(spec, split=split, image_root=image_root, offline=offline, hf_config=hf_config)
    if attribute not in dataset.attributes():
        raise one_of(attribute, dataset.attributes(), f"attribute of dataset {spec!r}")
    codes, names = group_codes(dataset.table[attribute], attribute)
    counts = np.bincount(codes, minlength=len(names))
    return {name: int(c) for name, c in zip(names, counts)}
