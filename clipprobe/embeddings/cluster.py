"""Seeded k-means of image embeddings with FAISS (``faiss.Kmeans``), for probing bias on subsets.

The vectors are L2-normalised first and clustered with spherical k-means (centroids renormalised
after each step), so an image belongs to the centroid with the highest cosine similarity, the
similarity the probe ranks by. Every image takes part in training (FAISS would otherwise subsample
to 256 images per centroid). The same vectors, number of clusters, seed and FAISS build give the same
clusters.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_NITER = 25
MSG_N_CLUSTERS = "n_clusters must be a whole number of at least 1, got {value!r}"
MSG_TOO_MANY = "n_clusters={k} is more than the {n} image(s) to cluster"
MSG_VECTORS = "vectors must be a 2-D array (images, dimensions) with at least one image, got shape {shape}"
MSG_NOT_FINITE = "vectors: row {row} is not finite or has length 0"
MSG_NITER = "niter must be a whole number of at least 1, got {value!r}"


@dataclasses.dataclass(frozen=True)
class KMeansResult:
    """``labels`` (``(N,)`` int64 cluster of each image), ``centroids`` (``(K, d)`` float32, unit length),
    ``similarity`` (``(N,)`` cosine of each image to its centroid) and the final ``objective`` (the sum
    of those similarities, which spherical k-means maximises)."""

    labels: "np.ndarray"
    centroids: "np.ndarray"
    similarity: "np.ndarray"
    objective: float
    seed: int
    niter: int


def _check_count(value, message: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(message.format(value=value))
    return int(value)


def normalise(vectors) -> "np.ndarray":
    """Float32 copy of ``vectors`` with unit rows; a row of length 0 or not finite is a DataError."""
    import numpy as np

    arr = np.asarray(vectors, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(MSG_VECTORS.format(shape=arr.shape))
    norms = np.linalg.norm(arr, axis=1)
    bad = np.flatnonzero(~np.isfinite(norms) | (norms == 0))
    if bad.size:
        raise DataError(MSG_NOT_FINITE.format(row=int(bad[0])))
    return np.ascontiguousarray(arr / norms[:, None])


def kmeans(vectors, n_clusters: int, *, seed: int = 0, niter: int = DEFAULT_NITER, nredo: int = 1) -> KMeansResult:
    """Spherical k-means of the L2-normalised ``vectors`` into ``n_clusters`` clusters (FAISS, seeded).

    ``nredo`` runs from as many seeds and keeps the best objective.
    """
    import numpy as np

    from clipprobe.embeddings.index import import_faiss

    n_clusters = _check_count(n_clusters, MSG_N_CLUSTERS)
    niter = _check_count(niter, MSG_NITER)
    x = normalise(vectors)
    n, dim = x.shape
    if n_clusters > n:
        raise UsageError(MSG_TOO_MANY.format(k=n_clusters, n=n))
    faiss = import_faiss()
    km = faiss.Kmeans(dim, n_clusters, niter=niter, nredo=int(nredo), seed=int(seed), spherical=True,
                      max_points_per_centroid=max(256, n), min_points_per_centroid=1, verbose=False)
    km.train(x)
    centroids = np.asarray(km.centroids, dtype=np.float32).reshape(n_clusters, dim)
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sims = x @ centroids.T
    labels = np.argmax(sims, axis=1).astype(np.int64)      # ties: the lower cluster number
    similarity = sims[np.arange(n), labels]
    log.debug("k-means: %d images into %d clusters, objective %.4f", n, n_clusters, float(similarity.sum()))
    return KMeansResult(labels=labels, centroids=centroids, similarity=similarity.astype(np.float32),
                        objective=float(similarity.sum()), seed=int(seed), niter=niter)


__all__ = ["KMeansResult", "kmeans", "normalise"]
