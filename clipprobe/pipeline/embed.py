"""Embed a face dataset's images and a list of queries: the two inputs of :func:`clipprobe.probe_scores`."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from clipprobe.embeddings.cache import ImageEmbeddings
    from clipprobe.resources.prompts import Query


@dataclasses.dataclass(frozen=True)
class TextEmbeddings:
    """One L2-normalised vector per word: ``vectors[i]`` is the query vector of ``words[i]``, made from
    the embeddings of ``prompts[i]`` (averaged and normalised again when there are several)."""

    words: tuple[str, ...]
    vectors: "np.ndarray"
    prompts: tuple[tuple[str, ...], ...]


def _encoder(model):
    """A spec or an open_clip ``(model, preprocess, tokenizer)`` tuple as an Encoder; anything else as given."""
    from clipprobe.models.spec import ModelSpec

    if isinstance(model, (str, tuple, ModelSpec)):
        from clipprobe.models import as_encoder

        return as_encoder(model)
    return model


def embed_images(encoder, faces, *, cache_dir: str | os.PathLike | None = None, batch_size: int = 64,
                 num_workers: int | None = None, progress: bool | None = None) -> "ImageEmbeddings":
    """Embed every image of a face dataset (cached and resumable; a second call embeds nothing).

    The result's ``vectors``, ``labels`` and ``files`` are row for row the images that decoded.
    ``encoder``: a loaded model, a model spec, or an open_clip ``(model, preprocess, tokenizer)`` tuple
    (:func:`clipprobe.models.as_encoder`).
    """
    from clipprobe.embeddings.cache import embed_dataset

    return embed_dataset(_encoder(encoder), faces, cache_dir=cache_dir, batch_size=batch_size, num_workers=num_workers,
                         progress=progress)


def embed_texts(encoder, queries: Sequence["Query | str"], *,
                cache_dir: str | os.PathLike | None = None) -> TextEmbeddings:
    """Query vectors of :class:`~clipprobe.resources.prompts.Query` objects (or of plain strings, each
    its own prompt), through the per-model text cache. ``encoder``: as for :func:`embed_images`."""
    import numpy as np

    from clipprobe.embeddings.cache import embed_texts as cached_text_vectors
    from clipprobe.resources.prompts import Query, ensemble

    if isinstance(queries, str):
        raise TypeError("embed_texts takes a list of queries or strings, not one string")
    encoder = _encoder(encoder)
    items = [q if isinstance(q, Query) else Query(str(q), (str(q),), "noun", (), False) for q in queries]
    texts = sorted({p for q in items for p in q.prompts})
    vectors = cached_text_vectors(encoder, texts, cache_dir=cache_dir)
    row = {t: i for i, t in enumerate(texts)}
    dim = int(vectors.shape[1]) if vectors.ndim == 2 else int(getattr(encoder, "embed_dim", 0))
    stacked = (np.stack([ensemble(vectors[[row[p] for p in q.prompts]]) for q in items]) if items
               else np.zeros((0, dim), np.float32))
    return TextEmbeddings(words=tuple(q.word for q in items), vectors=stacked,
                          prompts=tuple(tuple(q.prompts) for q in items))
