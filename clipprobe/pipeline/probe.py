"""The retrieval probe: a word's prompts -> query vector -> top-k faces -> group skew.

:func:`open_probe` loads the model, the face dataset, its (cached) image
embeddings and a FAISS index once; :func:`retrieve` then answers one word and
:meth:`Probe.topk` many words at once (the report uses that). Base shares are
shares of the images that could be embedded (an image that failed to decode can
never be retrieved, so it is not part of the population either).
"""

from __future__ import annotations

import logging
from pathlib import Path
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from clipprobe.errors import ClipprobeError, did_you_mean, one_of
from clipprobe.runinfo import StageTimer

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32:openai"
DEFAULT_K = 100
DEFAULT_ATTRIBUTES = ("race", "gender", "race_gender")
ALL_ATTRIBUTES = ("race", "gender", "age", "race_gender")
INDEX_KINDS = ("flat", "hnsw", "ivf")

# Canonical group orders of FairFace (other values follow, sorted).
GROUP_ORDER = {
    "race": ["White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern"],
    "gender": ["Male", "Female"],
    "age": ["0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70"],
}

ERR_K_TOO_LARGE = "k={k} is larger than the dataset {dataset} ({n} images could be embedded)"
ERR_K_POSITIVE = "k must be a positive number of images, got {k}"


@dataclass(frozen=True)
class ProbeConfig:
    """Everything that picks the model, the face dataset and the index."""

    model: str = DEFAULT_MODEL
    model_config: str | None = None
    preprocess: str | None = None
    dataset: str | None = None
    split: str = "validation"
    image_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None
    offline: bool = False
    index: str = "flat"


@dataclass(frozen=True)
class Query:
    """A word and the exact prompt strings whose embeddings form its query."""

    word: str
    prompts: tuple[str, ...]
    pos: str
    categories: tuple[str, ...] = ()
    in_taxonomy: bool = True


def make_query(word: str, *, taxonomy=None, templates=None) -> Query:
    """The prompts for ``word``: its part of speech from the taxonomy picks the templates.

    A word that is not in the taxonomy is allowed; its part of speech is guessed
    (and logged).
    """
    from clipprobe.resources.prompts import get_template_set
    from clipprobe.resources.taxonomy import get_taxonomy, guess_pos

    word = " ".join(str(word).split())
    if not word:
        raise ClipprobeError("--word is empty")
    tax = taxonomy if taxonomy is not None and not isinstance(taxonomy, str) else get_taxonomy(taxonomy)
    tmpl = templates if templates is not None and not isinstance(templates, str) else get_template_set(templates)
    entry = tax.word(word)
    if entry is None:
        lowered = {w.lower(): w for w in tax.words()}
        if word.lower() in lowered:
            entry = tax.word(lowered[word.lower()])
    if entry is None:
        pos = guess_pos(word)
        log.info("%r is not in taxonomy %r; using it as %s %s", word, tax.name,
                 "an" if pos == "adjective" else "a", pos)
        return Query(word, tuple(tmpl.prompts(word, pos)), pos, (), False)
    return Query(word, tuple(tmpl.prompts(word, entry.pos)), entry.pos, entry.categories, True)


@dataclass
class Probe:
    """A loaded model + face dataset + embeddings + index, ready to answer queries."""

    config: ProbeConfig
    encoder: Any
    dataset: Any
    embeddings: Any
    index: Any
    timer: StageTimer = field(default_factory=StageTimer)
    _labels: dict = field(default_factory=dict)

    @property
    def n_images(self) -> int:
        return int(len(self.embeddings.rows))

    def attributes(self) -> list[str]:
        return list(self.dataset.attributes())

    def check_attributes(self, attributes: Sequence[str]) -> tuple[str, ...]:
        valid = self.attributes()
        for a in attributes:
            if a not in valid:
                raise ClipprobeError(f"unknown attribute {a!r}{did_you_mean(a, valid)} for dataset "
                                     f"{self.dataset.spec!r}; valid: {', '.join(repr(v) for v in valid)}")
        return tuple(attributes)

    def check_k(self, k: int) -> int:
        if k < 1:
            raise ClipprobeError(ERR_K_POSITIVE.format(k=k))
        if k > self.n_images:
            raise ClipprobeError(ERR_K_TOO_LARGE.format(k=k, dataset=self.dataset.spec, n=self.n_images))
        return k

    def labels(self, attribute: str) -> tuple["np.ndarray", list[str]]:
        """Group codes (one per embedded image) and group names of ``attribute``."""
        if attribute not in self._labels:
            self._labels[attribute] = group_codes(self.dataset.table[attribute].iloc[self.embeddings.rows], attribute)
        return self._labels[attribute]

    def files(self, ids) -> list[str]:
        table = self.dataset.table
        return [str(f) for f in table["file"].iloc[self.embeddings.rows[ids]]]

    def query_vectors(self, queries: Sequence[Query]) -> "np.ndarray":
        """One L2-normalised query vector per :class:`Query` (prompt ensembling when several)."""
        import numpy as np

        from clipprobe.embeddings.cache import embed_texts
        from clipprobe.resources.prompts import ensemble

        texts = sorted({p for q in queries for p in q.prompts})
        with self.timer("encode_text"):
            vectors = embed_texts(self.encoder, texts, cache_dir=self.config.cache_dir)
        row = {t: i for i, t in enumerate(texts)}
        return np.stack([ensemble(vectors[[row[p] for p in q.prompts]]) for q in queries])

    def topk(self, vectors: "np.ndarray", k: int) -> tuple["np.ndarray", "np.ndarray"]:
        """Scores and embedded-row positions of the top-k images per query vector (rank order)."""
        from clipprobe.embeddings.index import search

        self.check_k(k)
        with self.timer("search"):
            return search(self.index, vectors, k)


def group_codes(values: "pd.Series", attribute: str) -> tuple["np.ndarray", list[str]]:
    """Integer codes and the ordered group names of a label column.

    FairFace's groups come in their canonical order; other values follow,
    sorted. A missing label becomes the group "(missing)" and is logged.
    """
    import numpy as np

    values = values.astype("object")
    missing = values.isna()
    if missing.any():
        log.warning("%d image(s) have no %s label; they form the group '(missing)'", int(missing.sum()), attribute)
        values = values.where(~missing, "(missing)")
    values = values.astype(str)
    present = set(values.unique())
    order = [g for g in GROUP_ORDER.get(attribute, []) if g in present]
    if attribute == "race_gender":
        order = [f"{r}_{g}" for r in GROUP_ORDER["race"] for g in GROUP_ORDER["gender"] if f"{r}_{g}" in present]
    order += sorted(present - set(order))
    lookup = {g: i for i, g in enumerate(order)}
    codes = np.fromiter((lookup[v] for v in values), dtype=np.int64, count=len(values))
    return codes, order


def open_probe(config: ProbeConfig, *, progress: bool | None = None) -> Probe:
    """Load the model, the dataset, the image embeddings (cached) and the index."""
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.faces import load_dataset
    from clipprobe.embeddings.index import index_for
    from clipprobe.models import load_model

    if config.index not in INDEX_KINDS:
        raise one_of(config.index, INDEX_KINDS, "index kind")
    timer = StageTimer()
    with timer("load_dataset"):
        dataset = load_dataset(config.dataset, split=config.split, image_root=config.image_root,
                               offline=config.offline or None)
    with timer("load_model"):
        encoder = load_model(config.model, device=config.device, model_config=config.model_config,
                             offline=config.offline or None, preprocess=config.preprocess)
    with timer("embed_images"):
        embeddings = embed_dataset(encoder, dataset, cache_dir=config.cache_dir, batch_size=config.batch_size,
                                   num_workers=config.num_workers, progress=progress)
    if embeddings.skipped:
        log.warning("%d image(s) could not be read and are left out (first: %s: %s)", len(embeddings.skipped),
                    embeddings.skipped[0].get("file"), embeddings.skipped[0].get("reason"))
    with timer("build_index"):
        index = index_for(embeddings, kind=config.index)  # reuses an index saved by `clipprobe index build`
    return Probe(config=config, encoder=encoder, dataset=dataset, embeddings=embeddings, index=index, timer=timer)


@dataclass
class Retrieval:
    """One word's top-k and its group composition per attribute."""

    query: Query
    k: int
    results: "pd.DataFrame"          # rank, file, score, <attribute values>
    groups: dict[str, "pd.DataFrame"]  # attribute -> group, count, share, base_share, skew
    model: dict
    dataset: dict
    skipped: list[dict]

    def top_group(self, attribute: str) -> str:
        g = self.groups[attribute]
        return str(g.loc[g["skew"].idxmax(), "group"])

    def to_dict(self) -> dict:
        results = []
        for row in self.results.to_dict(orient="records"):
            row["rank"] = int(row["rank"])
            row["score"] = float(row["score"])
            results.append(row)
        return {
            "word": self.query.word,
            "in_taxonomy": self.query.in_taxonomy,
            "categories": list(self.query.categories),
            "pos": self.query.pos,
            "prompts": list(self.query.prompts),
            "model": self.model,
            "dataset": self.dataset,
            "k": self.k,
            "results": results,
            "groups": {a: [{"group": str(r["group"]), "count": int(r["count"]), "share": float(r["share"]),
                            "base_share": float(r["base_share"]), "skew": float(r["skew"])}
                           for r in g.to_dict(orient="records")]
                       for a, g in self.groups.items()},
            "skipped": self.skipped,
        }


def dataset_info(probe: Probe) -> dict:
    ds = probe.dataset
    return {"spec": ds.spec, "kind": ds.kind, "split": ds.split, "root": str(ds.root) if ds.root else None,
            "fingerprint": ds.fingerprint, "n_images": probe.n_images, "n_rows": len(ds)}


def retrieve(probe: Probe, word: "str | Query", *, k: int = DEFAULT_K, templates=None, taxonomy=None,
             attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> Retrieval:
    """Retrieve the top-k faces for ``word`` (or a prepared :class:`Query`) and measure each
    attribute's group skew."""
    import pandas as pd

    from clipprobe.analysis.metrics import point_estimates

    attributes = probe.check_attributes(attributes)
    probe.check_k(k)
    query = word if isinstance(word, Query) else make_query(word, taxonomy=taxonomy, templates=templates)
    vector = probe.query_vectors([query])
    scores, ids = probe.topk(vector, k)
    scores, ids = scores[0], ids[0]
    table = probe.dataset.table
    rows = probe.embeddings.rows[ids]
    results = pd.DataFrame({"rank": range(1, k + 1), "file": probe.files(ids), "score": scores.astype(float)})
    groups = {}
    for attribute in attributes:
        results[attribute] = table[attribute].iloc[rows].astype(str).to_numpy()
        codes, names = probe.labels(attribute)
        est = point_estimates(ids[None, :], codes, len(names))
        groups[attribute] = pd.DataFrame({
            "group": names,
            "count": est["count"][0],
            "share": est["share"][0],
            "base_share": est["base_share"][0],
            "skew": est["skew"][0],
        })
    return Retrieval(query=query, k=k, results=results, groups=groups, model=probe.encoder.info(),
                     dataset=dataset_info(probe), skipped=list(probe.embeddings.skipped))


def format_table(r: Retrieval) -> str:
    """The terminal table of a retrieval: per attribute, each group's count, share, base share, skew."""
    lines = [f"word: {r.query.word!r}" + ("" if r.query.in_taxonomy else "  (not in the taxonomy)"),
             "prompts: " + "; ".join(repr(p) for p in r.query.prompts),
             f"model: {r.model.get('spec')}   dataset: {r.dataset['spec']} "
             f"({r.dataset['n_images']} images)   k = {r.k}"]
    for attribute, g in r.groups.items():
        top = r.top_group(attribute)
        width = max(12, max(len(str(x)) for x in g["group"]))
        lines.append("")
        lines.append(f"{attribute:<{width}}  {'count':>5}  {'share':>6}  {'base':>6}  {'skew':>7}")
        for row in g.itertuples(index=False):
            mark = "  <- most over-represented" if row.group == top else ""
            lines.append(f"{row.group:<{width}}  {row.count:>5d}  {row.share:>6.3f}  {row.base_share:>6.3f}  "
                         f"{row.skew:>+7.3f}{mark}")
    if r.skipped:
        lines.append("")
        lines.append(f"{len(r.skipped)} image(s) could not be read and were left out (see --format json)")
    return "\n".join(lines)


def save_grid(probe: Probe, r: Retrieval, path, *, columns: int = 10, thumb: int = 96) -> int:
    """Write a contact sheet of the retrieved faces with rank and labels; returns images drawn.

    An image that cannot be read is drawn as a blank tile labelled "unreadable".
    """
    from PIL import Image

    from clipprobe import _io
    from clipprobe.report.contact import contact_sheet

    table = probe.dataset.table
    file_to_row = {str(f): i for i, f in enumerate(table["file"])}
    images, labels = [], []
    for row in r.results.itertuples(index=False):
        try:
            img = probe.dataset.load_image(file_to_row[row.file])
        except Exception as err:  # noqa: BLE001 - one unreadable face must not stop the sheet
            log.warning("grid: could not read %s (%s)", row.file, err)
            img = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        images.append(img)
        parts = [str(getattr(row, a)) for a in r.groups if a != "race_gender"]
        labels.append(f"#{row.rank} " + "\n".join(parts))
    model = str(r.model.get("spec", ""))
    if r.model.get("kind") == "file":  # a local weights file: its name, not its whole path
        model = f"{r.model.get('arch')}:{Path(str(r.model.get('path'))).name}"
    title = f"{r.query.word!r}: top {r.k} ({model}, {r.dataset['spec']})"
    sheet = contact_sheet(images, labels, columns=columns, thumb=thumb, title=title)
    with _io.atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG")
    return len(images)
