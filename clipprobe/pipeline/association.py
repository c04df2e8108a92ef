"""A model's representation and association bias, as the WebLI-100B and SigLIP 2 papers measure them
after Alabdulmohsin et al. (ICLR 2024):

* **model RB**: on images without people (``objects``: a folder, e.g. ImageNet's validation images,
  or a dataset spec), the share of images for which the model prefers the first label over the
  second ("a photo of a man" over "a photo of a woman"), minus 0.5. Nothing guarantees that such a
  folder is person-free (ImageNet's is not), so by default the images the model itself takes for a
  person are removed first (:func:`person_probability`: zero-shot, "a photo of a person" against "a
  photo of an object" at the model's logit scale, removed above ``person_threshold``); the threshold,
  the prompts and the count removed are recorded, and each image's probability is written;
* **model AB**: on a face dataset, for occupation pairs (librarian/scientist, nurse/doctor,
  housekeeper/homeowner, receptionist/executive, secretary/manager by default), how often the model
  prefers the first occupation, separately for the images of each of two groups (women, men), and
  the difference.

The statistics are :mod:`clipprobe.analysis.association`'s; their intervals (Wilson for shares, Newcombe
for the difference) come from :mod:`clipprobe.analysis.intervals`. Every prompt is recorded.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from clipprobe.errors import DataError, UsageError
from clipprobe.pipeline.probe import ProbeConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".JPEG", ".JPG", ".PNG")
DEFAULT_RB_PROMPTS = ("a photo of a man", "a photo of a woman")
DEFAULT_PERSON_PROMPTS = ("a photo of a person", "a photo of an object")
DEFAULT_PERSON_THRESHOLD = 0.5
MAX_LOGIT_SCALE = 100.0                  # open_clip clamps the learned scale to this in training
FORMAT_VERSION = 1

MSG_NO_OBJECTS = "objects: {where} holds no image files ({suffixes})"
MSG_OBJECTS_MISSING = "objects: {where} does not exist"
MSG_GROUPS = "groups: give two different groups of attribute {attribute!r}, got {groups}"
MSG_UNKNOWN_GROUP = "groups: {group!r} is not a group of attribute {attribute!r} in the dataset; groups: {valid}"
MSG_NOTHING = "nothing to measure: give a face dataset for AB, person-free images for RB, or both"
MSG_MAX_OBJECTS = "max_objects must be a positive number, got {value}"
MSG_PERSON_THRESHOLD = "person_threshold must be between 0 and 1 (exclusive), got {value}"
MSG_PERSON_PROMPTS = "person_prompts: give two different, non-empty prompts, got {prompts}"
MSG_ALL_PEOPLE = ("objects: the person filter removed all {n} image(s) of {where} (P({prompt!r}) > {threshold}); "
                  "give images without people, or turn the person filter off if they are known to be person-free")


@dataclasses.dataclass(frozen=True)
class AssociationConfig:
    """Settings of ``clipprobe association``."""

    out: str
    probe: ProbeConfig = dataclasses.field(default_factory=ProbeConfig)
    objects: str | None = None              # person-free images: a folder, imagenet:DIR, folder:DIR, csv:PATH
    max_objects: int | None = None          # a seeded random subset of the objects (None: all)
    person_filter: bool = True              # remove the objects the model takes for a person (see the docstring)
    person_prompts: tuple[str, str] = DEFAULT_PERSON_PROMPTS
    person_threshold: float = DEFAULT_PERSON_THRESHOLD
    rb_prompts: tuple[str, str] = DEFAULT_RB_PROMPTS
    ab: bool = True                         # measure AB on the probe's face dataset
    attribute: str = "gender"
    groups: tuple[str, str] = ("Female", "Male")
    pairs: tuple[tuple[str, str], ...] | None = None   # None: the five default occupation pairs
    templates: str = "default"
    level: float = 0.95
    seed: int = 0

    def check(self) -> "AssociationConfig":
        if not self.objects and not self.ab:
            raise UsageError(MSG_NOTHING)
        if len(self.groups) != 2 or self.groups[0] == self.groups[1]:
            raise UsageError(MSG_GROUPS.format(attribute=self.attribute, groups=list(self.groups)))
        if self.max_objects is not None and self.max_objects < 1:
            raise UsageError(MSG_MAX_OBJECTS.format(value=self.max_objects))
        if not 0 < self.person_threshold < 1:
            raise UsageError(MSG_PERSON_THRESHOLD.format(value=self.person_threshold))
        prompts = tuple(str(x).strip() for x in self.person_prompts)
        if len(prompts) != 2 or not all(prompts) or prompts[0] == prompts[1]:
            raise UsageError(MSG_PERSON_PROMPTS.format(prompts=list(self.person_prompts)))
        if not 0 < self.level < 1:
            raise UsageError(f"level must be between 0 and 1, got {self.level}")
        self.probe.check()
        return self


@dataclasses.dataclass(frozen=True)
class AssociationResult:
    out: Path
    rb: "pd.DataFrame | None"
    ab: "pd.DataFrame | None"
    run: dict
    files: tuple[Path, ...]
    objects_filter: "pd.DataFrame | None" = None     # file, p_person, removed (None without the filter)


def logit_scale(encoder) -> float:
    """The model's learned logit scale (``exp`` of its parameter, at most :data:`MAX_LOGIT_SCALE`);
    :data:`MAX_LOGIT_SCALE` for a model without one."""
    import math

    param = getattr(getattr(encoder, "model", None), "logit_scale", None)
    if param is None:
        return MAX_LOGIT_SCALE
    value = float(param.detach().float().exp().item()) if hasattr(param, "detach") else math.exp(float(param))
    return min(value, MAX_LOGIT_SCALE)


def person_probability(image_vectors, prompt_vectors, scale: float) -> "np.ndarray":
    """Zero-shot ``P(person)`` of each image: the softmax, at logit scale ``scale``, of its cosine
    similarities to the two prompt vectors (``(2, d)``: the person prompt first), taken at the first."""
    import numpy as np
    from scipy.special import expit

    s = np.asarray(image_vectors, dtype=np.float64) @ np.asarray(prompt_vectors, dtype=np.float64).T
    return expit(float(scale) * (s[:, 0] - s[:, 1]))      # the softmax of two logits, at the first


def object_images(where: str, cache_dir: str | None, *, max_objects: int | None = None, seed: int = 0):
    """A dataset of person-free images: a face-dataset spec (``csv:``, ``fairface:``...), or a folder
    (``imagenet:DIR``, ``folder:DIR`` or a plain path) whose image files are listed recursively."""
    import numpy as np

    from clipprobe._io import default_cache_dir, write_text
    from clipprobe.faces import SCHEMES, load_dataset

    scheme, sep, rest = where.partition(":")
    if sep and scheme in SCHEMES:
        dataset = load_dataset(where)
        files = list(dataset.table["file"])
        return dataset, files
    folder = Path(rest if sep and scheme in ("imagenet", "folder") else where).expanduser()
    if not folder.exists():
        raise DataError(MSG_OBJECTS_MISSING.format(where=folder))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.suffix in IMAGE_SUFFIXES)
    if not files:
        raise DataError(MSG_NO_OBJECTS.format(where=folder, suffixes=", ".join(sorted(set(IMAGE_SUFFIXES)))))
    if max_objects is not None and len(files) > max_objects:
        keep = np.sort(np.random.default_rng(seed).choice(len(files), size=max_objects, replace=False))
        files = [files[i] for i in keep]
    text = "file\n" + "\n".join('"' + f.replace('"', '""') + '"' for f in files) + "\n"
    digest = hashlib.sha256((str(folder.resolve()) + "\0" + text).encode("utf-8")).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    manifest = base / "manifests" / f"objects-{digest}.csv"
    if not manifest.is_file():
        write_text(manifest, text)
    return load_dataset(f"csv:{manifest}", image_root=folder), files


def run_association(config: AssociationConfig, *, progress: bool | None = None) -> AssociationResult:
    """Measure model RB and/or AB and write ``rb.parquet``, ``ab.parquet``, a figure and ``run.json``."""

    from clipprobe.analysis.association import DEFAULT_OCCUPATION_PAIRS, model_ab, model_rb
    from clipprobe.embeddings.cache import embed_dataset
    from clipprobe.models import load_model
    from clipprobe.pipeline.embed import embed_texts
    from clipprobe.pipeline.probe import open_probe
    from clipprobe.report.association import write_association
    from clipprobe.resources.prompts import make_query
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    started = time.time()
    timer = StageTimer()
    pairs = tuple(tuple(p) for p in (config.pairs or DEFAULT_OCCUPATION_PAIRS))
    rb_table = ab_table = None
    probe = None
    dataset_info = None
    objects = None
    if config.objects:      # the image list first: a wrong folder fails before any model loads
        objects, object_files = object_images(config.objects, config.probe.cache_dir, max_objects=config.max_objects,
                                        seed=config.seed)
    if config.ab:
        probe = open_probe(config.probe, progress=progress)
        timer.seconds.update(probe.timings)
        probe.check_attributes([config.attribute])
        present = sorted(set(probe.labels[config.attribute].astype(str)))
        for group in config.groups:
            if group not in present:
                raise UsageError(MSG_UNKNOWN_GROUP.format(group=group, attribute=config.attribute,
                                                          valid=", ".join(repr(g) for g in present)))
        encoder = probe.encoder
        dataset_info = probe.info()
    else:
        with timer("load_model"):
            pc = config.probe
            encoder = load_model(pc.model, device=pc.device, model_config=pc.model_config,
                                 offline=pc.offline or None, preprocess=pc.preprocess, precision=pc.precision,
                                 quick_gelu=pc.quick_gelu)
    prompts = {}
    if config.ab:
        with timer("ab"):
            queries = [make_query(w, templates=config.templates) for pair in pairs for w in pair]
            texts = embed_texts(encoder, queries, cache_dir=config.probe.cache_dir)
            prompts.update({q.word: list(q.prompts) for q in queries})
            scores = probe.embeddings.vectors @ texts.vectors.T          # (N, 2P)
            first, second = scores[:, 0::2], scores[:, 1::2]
            ab = model_ab(first, second, probe.labels[config.attribute].astype(str).to_numpy(), pairs=pairs,
                          group_names=config.groups, level=config.level)
            ab_table = ab.frame()
    n_objects_skipped = 0
    filter_table = filter_record = None
    if config.objects:
        with timer("rb"):
            emb = embed_dataset(encoder, objects, cache_dir=config.probe.cache_dir,
                                batch_size=config.probe.batch_size, num_workers=config.probe.num_workers,
                                progress=progress)
            n_objects_skipped = len(emb.skipped)
            vectors = emb.vectors
            if config.person_filter:
                vectors, filter_table, filter_record = _person_filter(
                    encoder, vectors, [object_files[i] for i in emb.rows], config)
            labels = embed_texts(encoder, list(config.rb_prompts), cache_dir=config.probe.cache_dir)
            s = vectors @ labels.vectors.T
            rb = model_rb(s[:, 0], s[:, 1], level=config.level)
            rb_table = _rb_frame(rb, config.rb_prompts, config.objects)
            prompts["rb"] = list(config.rb_prompts)
    record = run_record(
        "association", format_version=FORMAT_VERSION, config=_config_dict(config), model=encoder.info(),
        dataset=dataset_info, timings=timer.seconds, started=started, prompts=prompts,
        pairs=[list(p) for p in pairs], groups=list(config.groups), attribute=config.attribute,
        objects={"where": config.objects, "n": int(rb_table["n"].iloc[0]) if rb_table is not None else 0,
                 "skipped": n_objects_skipped,
                 "person_filter": filter_record or {"on": False}} if config.objects else None,
    )
    files = write_association(config.out, rb_table, ab_table, record, objects_filter=filter_table)
    return AssociationResult(out=Path(config.out), rb=rb_table, ab=ab_table, run=record, files=tuple(files),
                             objects_filter=filter_table)


def _person_filter(encoder, vectors, files, config: AssociationConfig):
    """The object vectors the model does not take for a person, the per-image table and the record."""
    import pandas as pd

    from clipprobe.pipeline.embed import embed_texts

    prompts = embed_texts(encoder, list(config.person_prompts), cache_dir=config.probe.cache_dir)
    scale = logit_scale(encoder)
    p = person_probability(vectors, prompts.vectors, scale)
    removed = p > config.person_threshold
    if removed.all():
        raise DataError(MSG_ALL_PEOPLE.format(n=len(p), where=config.objects, prompt=config.person_prompts[0],
                                              threshold=config.person_threshold))
    table = pd.DataFrame({"file": [str(f) for f in files], "p_person": p, "removed": removed})
    record = {"on": True, "prompts": list(config.person_prompts), "threshold": config.person_threshold,
              "logit_scale": scale, "n_before": int(len(p)), "n_removed": int(removed.sum())}
    if removed.any():
        log.info("person filter: %d of %d object image(s) removed (P(%r) > %s)", int(removed.sum()), len(p),
                 config.person_prompts[0], config.person_threshold)
    return vectors[~removed], table, record


def _rb_frame(rb, prompts, where) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame([{"objects": where, "first_label": prompts[0], "second_label": prompts[1], "n": rb.n,
                          "ties": rb.n_ties, "share_first": rb.share_male, "rb": rb.rb, "rb_ci_low": rb.rb_low,
                          "rb_ci_high": rb.rb_high}])


def _config_dict(config: AssociationConfig) -> dict:
    from clipprobe.config import to_dict

    data = to_dict(dataclasses.replace(config, probe=ProbeConfig()))
    data["probe"] = to_dict(config.probe)
    return data
