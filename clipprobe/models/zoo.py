"""The model zoo: what is known about each model before it is run (architecture, size, training data,
published downstream performance), for a sweep over many models and its upstream-factor analysis.

One row per model (:data:`ZOO_COLUMNS`), every value with its source, from data tables shipped in
``zoo_data/`` (``zoo_data/PROVENANCE.md``):

* **architecture family** (:data:`ARCH_FAMILIES`: the rules of Ghate et al. 2025, first match of the
  architecture name; an architecture no rule names is ``Other``) and
  **parameters** (image tower, text tower, total, in millions): open_clip's ``model_profile.csv``;
  for the architectures it lacks, ``counted_params.csv``, counted from open_clip's architecture
  configs on PyTorch's meta device (no weights; :func:`count_params` recounts one, and ``python -m
  clipprobe.models.zoo --count-params OUT.csv`` rebuilds the table); a custom architecture (a registered
  JSON config) is counted on first use.
* **pretraining dataset**, its **family** (the families of Ghate et al. 2025: ``openai_wit``, ``laion``,
  ``datacomp``, ``commonpool``, ``dfn``, ``metaclip``, ``webli``, ``merged2b``, ``yfcc15m``,
  ``cc12m``) and **size** (image-text pairs): ``datasets.csv``, one pattern per pretrained tag, each
  size with its source. Tags whose data is not documented there (``meta``, ``v1``, ``mrl``, ...) say
  ``unknown``.
* **samples seen**: parsed from the tag (``laion2b_s34b_b79k``: 34e9; ``laion400m_e32``: 32 epochs x
  the dataset size), or CLIP_benchmark's exact count where it lists the model, or the CLIP paper's
  12.8e9 for OpenAI's models.
* **downstream performance**: ImageNet-1k and the 38-dataset average from open_clip's results table
  (121 pairs); VTAB and VTAB+ from CLIP_benchmark's table (open_clip pairs) and the scaling-laws table
  of Cherti et al. (CVPR 2023) for their 29 checkpoints (recognised by file name in ``ARCH:PATH``
  specs). A model with none of these has ``performance_note = "no published performance"``;
  :func:`zoo_table` never drops a model.
* **one checkpoint, two names**: pairs that load the same weights with the same activation (``RN50:openai``
  and ``RN50-quickgelu:openai``: clipprobe builds both with QuickGELU, as their tag was trained) name one
  of the pair in ``duplicate_of`` (``same_checkpoint.csv``, built from open_clip's registry by ``python -m
  clipprobe.models.zoo --same-checkpoints OUT.csv``); an analysis counts such a pair once.

A user CSV (``spec`` or ``model`` column, any of :data:`USER_COLUMNS`, and any further numeric
columns as performance measures) fills or overrides values for its models; its values are marked
``user``. The CSV that ``clipprobe models --format csv`` writes is such a file.

Only the standard library is imported at module level.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from clipprobe.errors import DataError, ModelError, did_you_mean
from clipprobe.models.spec import ModelSpec, _clean_tag, _safe, parse_model_spec

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "zoo_data"

ZOO_COLUMNS = (
    "spec", "arch", "tag", "kind", "model_key", "arch_family",
    "params_image_m", "params_text_m", "params_total_m", "params_source",
    "dataset", "dataset_family", "dataset_size", "dataset_size_source",
    "samples_seen", "samples_seen_source",
    "imagenet1k", "avg38", "openclip_results_source",
    "vtab", "vtab_plus", "vtab_source",
    "performance_note", "model_config", "preprocess", "quick_gelu", "duplicate_of", "user_columns",
)
# Columns a user CSV may give (in addition to performance columns of its own).
USER_COLUMNS = ("spec", "model", "model_config", "preprocess", "quick_gelu", "arch_family", "dataset",
                "dataset_family", "dataset_size", "samples_seen", "params_image_m", "params_text_m", "params_total_m",
                "duplicate_of")
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
# Named performance measures: column of the zoo table -> what it is.
PERFORMANCE = {
    "vtab+": "vtab_plus", "vtab": "vtab", "imagenet1k": "imagenet1k", "avg38": "avg38",
}
PERFORMANCE_LABELS = {
    "vtab_plus": "VTAB+ (CLIP_benchmark; Cherti et al. 2023)", "vtab": "VTAB (CLIP_benchmark; Cherti et al. 2023)",
    "imagenet1k": "ImageNet-1k zero-shot top-1 (open_clip results table)",
    "avg38": "average over 38 datasets (open_clip results table)",
}
NO_PERFORMANCE = "no published performance"
UNKNOWN = "unknown"
OPENCLIP_RESULTS_SOURCE = "open_clip docs/openclip_results.csv @ 89fb801"
CLIP_BENCHMARK_SOURCE = "CLIP_benchmark probe_benchmark/probe_openclip_results.csv @ 48de38c"
SCALING_LAWS_SOURCE = "LAION-AI/scaling-laws-openclip zeroshot_results.csv @ 652b1e7"
PROFILE_SOURCE = "open_clip docs/model_profile.csv @ 89fb801"
COUNTED_SOURCE = "counted from the open_clip architecture config (meta device, no weights)"
OPENAI_SAMPLES = 12.8e9   # Radford et al. 2021: 32 epochs over 400M pairs; as in scaling-laws-openclip's table

# Architecture families of Ghate et al. 2025 (their analysis notebook's rules, in its order; the first match
# of the architecture name wins; an architecture no rule names is Other). Newer architectures follow the same
# rules: ViTamin-* starts with ViT, SigLIP 2 is a specialised ViT, MobileCLIP and PE-Core are Other.
ARCH_FAMILIES: tuple[tuple[str, str], ...] = (
    (r"^coca", "CoCa"),
    (r"^EVA", "EVA"),
    (r"^nllb", "NLLB-CLIP"),
    (r"roberta", "Hybrid"),                       # a RoBERTa / XLM-RoBERTa text tower with a ViT
    (r"convnext", "ConvNeXt"),
    (r"^RN", "ResNet"),
    (r"SO400M|SigLIP|plus", "Specialized ViT"),
    (r"^ViT", "ViT"),
)
OTHER_FAMILY = "Other"

MSG_USER_CSV = "model table {path}: {problem}"
MSG_USER_VALUE = "model table {path}, row {row} ({spec}): column {column!r} must be a number, not {value!r}"
MSG_UNKNOWN_PAIR = "unknown model {spec!r}{hint}"
MSG_NO_SPEC_COLUMN = "has no 'spec' or 'model' column (columns: {columns})"
MSG_DUPLICATE = "model {spec!r} appears twice (rows {first} and {second})"


# --------------------------------------------------------------------------- shipped tables


def _read_csv(name: str) -> list[dict[str, str]]:
    with open(DATA_DIR / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _num(value: Any) -> float | None:
    """A finite float, or None for empty / unparseable / non-finite values."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        text = str(value).strip()
        if not text:
            return None
        try:
            out = float(text)
        except ValueError:
            return None
    return out if math.isfinite(out) else None


@lru_cache(maxsize=1)
def _profile() -> dict[str, tuple[float | None, float | None, float | None, str]]:
    out: dict[str, tuple[float | None, float | None, float | None, str]] = {}
    for r in _read_csv("model_profile.csv"):
        out[r["model"]] = (_num(r["image_mparams"]), _num(r["text_mparams"]), _num(r["mparams"]), PROFILE_SOURCE)
    for r in _read_csv("counted_params.csv"):
        out.setdefault(r["arch"], (_num(r["image_mparams"]), _num(r["text_mparams"]), _num(r["mparams"]),
                                   f"{COUNTED_SOURCE}, open_clip {r['open_clip_version']}"))
    return out


@lru_cache(maxsize=1)
def _datasets() -> list[dict[str, Any]]:
    rows = []
    for r in _read_csv("datasets.csv"):
        rows.append({"pattern": re.compile(r["tag_pattern"]), "dataset": r["dataset"], "family": r["family"],
                     "size": _num(r["size"]), "size_source": r["size_source"]})
    return rows


@lru_cache(maxsize=1)
def _openclip_results() -> dict[tuple[str, str], dict[str, float | None]]:
    out = {}
    for r in _read_csv("openclip_results.csv"):
        out[(r["name"], _clean_tag(r["pretrained"]))] = {
            "imagenet1k": _num(r["ImageNet 1k"]), "avg38": _num(r["Average perf. on 38 datasets"]),
            "params_total_m": _num(r["params (M)"])}
    return out


@lru_cache(maxsize=1)
def _vtab() -> dict[str, dict[str, Any]]:
    """VTAB / VTAB+ by key: ``ARCH TAG`` for open_clip pairs, the checkpoint file name for Cherti et al.'s."""
    out: dict[str, dict[str, Any]] = {}
    for r in _read_csv("clip_benchmark_vtab.csv"):
        name = r["model_fullname"]
        arch, _, rest = name.partition(" ")
        key = rest if rest.startswith("Model-") else f"{arch} {_clean_tag(rest)}"
        entry = out.setdefault(key, {"source": CLIP_BENCHMARK_SOURCE, "samples_seen": _num(r["samples_seen"])})
        entry["vtab_plus" if r["downstream_dataset"] == "vtab+" else "vtab"] = _num(r["acc1"])
    for r in _read_csv("scaling_laws_vtab.csv"):
        key = r["name"] if r["name"].startswith("Model-") else f"{r['arch']} {_clean_tag(r['name'])}"
        if key in out and out[key]["source"] == CLIP_BENCHMARK_SOURCE:
            continue   # the same numbers (CLIP_benchmark ran the scaling-laws evaluation); keep one source
        entry = out.setdefault(key, {"source": SCALING_LAWS_SOURCE, "samples_seen": _num(r["samples_seen"])})
        entry["vtab_plus" if r["downstream_dataset"] == "vtab+" else "vtab"] = _num(r["acc1"])
    return out


@lru_cache(maxsize=1)
def _scaling_laws_models() -> dict[str, dict[str, str]]:
    return {r["name"]: r for r in _read_csv("scaling_laws_models.csv")}


# --------------------------------------------------------------------------- facts of one model


def arch_family(arch: str | None) -> str:
    """The family of an architecture name (:data:`ARCH_FAMILIES`; ``Other`` when no rule names it), or
    ``"unknown"`` without a name."""
    if not arch:
        return UNKNOWN
    for pattern, family in ARCH_FAMILIES:
        if re.search(pattern, arch):
            return family
    return OTHER_FAMILY


@lru_cache(maxsize=1)
def same_checkpoints() -> dict[str, str]:
    """spec -> the spec of the same checkpoint an analysis keeps (``same_checkpoint.csv``)."""
    return {r["spec"]: r["duplicate_of"] for r in _read_csv("same_checkpoint.csv")}


_SAMPLES_RE = re.compile(r"(?:^|_)s(\d+(?:\.\d+)?)([kmb])(?:_|$)")
_BATCH_RE = re.compile(r"(?:^|_)b(\d+)k(?:_|$)")
_EPOCHS_RE = re.compile(r"(?:^|_)e(\d+)(?:_|$)")
_SCALE = {"k": 1e3, "m": 1e6, "b": 1e9}
_CHERTI_RE = re.compile(r"^Model-[^_]+_Data-(\d+[MB])_Samples-(\d+[MB])_")


def parse_tag(tag: str) -> dict[str, float | None]:
    """Samples seen, batch size and epochs written in a pretrained tag (None where absent).

    ``laion2b_s34b_b79k`` -> samples_seen 34e9, batch_size 79e3; ``laion400m_e32`` -> epochs 32.
    """
    tag = _clean_tag(tag)
    m = _SAMPLES_RE.search(tag)
    b = _BATCH_RE.search(tag)
    e = _EPOCHS_RE.search(tag)
    return {"samples_seen": float(m.group(1)) * _SCALE[m.group(2)] if m else None,
            "batch_size": float(b.group(1)) * 1e3 if b else None,
            "epochs": float(e.group(1)) if e else None}


def dataset_of(tag: str) -> dict[str, Any]:
    """Dataset name, family, size (image-text pairs) and the size's source for a pretrained tag."""
    tag = _clean_tag(tag)
    for row in _datasets():
        if row["pattern"].search(tag):
            return {"dataset": row["dataset"], "dataset_family": row["family"], "dataset_size": row["size"],
                    "dataset_size_source": row["size_source"] if row["size"] is not None else UNKNOWN}
    return {"dataset": UNKNOWN, "dataset_family": UNKNOWN, "dataset_size": None, "dataset_size_source": UNKNOWN}


def _cherti_dataset(name: str) -> dict[str, Any] | None:
    m = _CHERTI_RE.match(name)
    if not m:
        return None
    data = m.group(1)
    tag = {"80M": "laion80m", "400M": "laion400m", "2B": "laion2b"}.get(data)
    return dataset_of(tag) if tag else None


def count_params(arch: str) -> tuple[float, float, float]:
    """(image, text, total) parameters in millions of a registered open_clip architecture, counted on the
    meta device (no memory, no weights). A text tower built by transformers needs its config from the
    Hub and may fail offline (ModelError)."""
    import open_clip
    import torch
    from open_clip.model import CLIP, CustomTextCLIP

    cfg = open_clip.get_model_config(arch)
    if not cfg:
        names = open_clip.list_models()
        raise ModelError(f"unknown model architecture {arch!r}{did_you_mean(arch, names)}")
    cfg = dict(cfg)
    custom = bool(cfg.pop("custom_text", False)) or "hf_model_name" in (cfg.get("text_cfg") or {})
    cfg.pop("quick_gelu", None)
    try:
        with torch.device("meta"):
            model = (CustomTextCLIP if custom else CLIP)(**cfg)
    except Exception as err:  # noqa: BLE001 - any failure is one line naming the architecture
        raise ModelError(f"could not count the parameters of {arch}: {type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}") from None
    image = sum(p.numel() for p in model.visual.parameters())
    total = sum(p.numel() for p in model.parameters())
    return round(image / 1e6, 2), round((total - image) / 1e6, 2), round(total / 1e6, 2)


def params_of(arch: str | None, *, count: bool = True) -> dict[str, Any]:
    """Parameters (millions) of an architecture and their source; counted when not in the tables."""
    none = {"params_image_m": None, "params_text_m": None, "params_total_m": None}
    if not arch:
        return {**none, "params_source": UNKNOWN}
    found = _profile().get(arch)
    if found is not None:
        return {"params_image_m": found[0], "params_text_m": found[1], "params_total_m": found[2],
                "params_source": found[3]}
    if not count:
        return {**none, "params_source": "not counted"}
    try:
        image, text, total = _counted(arch)
    except ModelError as err:
        return {**none, "params_source": f"{UNKNOWN}: {err}"}
    return {"params_image_m": image, "params_text_m": text, "params_total_m": total, "params_source": COUNTED_SOURCE}


@lru_cache(maxsize=256)
def _counted(arch: str) -> tuple[float, float, float]:
    return count_params(arch)


def model_key(spec: str | ModelSpec) -> str:
    """A folder name for a model spec, the same on every machine that reads the same model list.

    Pretrained and Hub models: their spec key (``ViT-B-32__laion2b_s34b_b79k``). Weights files and
    folders: architecture (or folder) and file name plus a hash of the spec as written (unlike the
    embedding cache's key, not of the file's modification time: shards on several machines must agree).
    """
    spec = spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)
    if spec.kind in ("pretrained", "hf-hub"):
        return spec.key
    digest = hashlib.sha256(spec.canonical.encode("utf-8")).hexdigest()[:8]
    stem = Path(spec.path or "").expanduser().name or "model"
    stem = stem.rsplit(".", 1)[0] if spec.kind == "file" else stem
    prefix = spec.arch if spec.kind == "file" else "local-dir"
    return _safe(f"{prefix}__{stem}__{digest}")


def describe_model(spec: str, *, count: bool = True) -> dict[str, Any]:
    """The zoo row of one spec (shipped facts only; see :func:`zoo_table` for user values)."""
    parsed = parse_model_spec(spec)
    arch = parsed.arch
    tag = _clean_tag(parsed.tag) if parsed.tag else None
    row: dict[str, Any] = {c: None for c in ZOO_COLUMNS}
    row.update(spec=parsed.canonical, arch=arch, tag=tag, kind=parsed.kind, model_key=model_key(parsed),
               arch_family=arch_family(arch))
    if parsed.shipped:
        return _describe_shipped(row, parsed.shipped)
    row.update(params_of(arch, count=count))
    file_name = Path(parsed.path).name if parsed.kind == "file" and parsed.path else None
    if tag is not None:
        row.update(dataset_of(tag))
    elif file_name and _cherti_dataset(file_name):
        row.update(_cherti_dataset(file_name))
        row["dataset_size_source"] = row["dataset_size_source"] + " (dataset from the checkpoint's file name)"
    else:
        row.update(dataset=UNKNOWN, dataset_family=UNKNOWN, dataset_size=None, dataset_size_source=UNKNOWN)
    _fill_samples(row, tag, file_name)
    _fill_performance(row, arch, tag, file_name)
    row["duplicate_of"] = same_checkpoints().get(row["spec"])
    return row


def _describe_shipped(row: dict, name: str) -> dict:
    """A shipped model's row (``demo``): parameters counted from its safetensors header, its training data
    and samples seen from the ``.meta.json`` written beside the weights when it was trained."""
    from clipprobe.models.catalog import safetensors_params
    from clipprobe.models.spec import shipped_model

    model = shipped_model(name)
    counts = safetensors_params(model.weights_path)
    image, total = counts.get("visual", 0), sum(counts.values())
    source = f"counted from the safetensors header of {model.weights_path.name}"
    row.update(arch_family="ViT", params_image_m=round(image / 1e6, 2), params_text_m=round((total - image) / 1e6, 2),
               params_total_m=round(total / 1e6, 2), params_source=source, dataset=model.training_data,
               dataset_family="synthetic", dataset_size=None, dataset_size_source=UNKNOWN, samples_seen=None,
               samples_seen_source=UNKNOWN)
    meta_path = model.directory / f"{model.arch}.meta.json"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))["config"]
        row.update(dataset_size=float(meta["n_captions"]), dataset_size_source=meta_path.name,
                   samples_seen=float(meta["n_captions"] * meta["epochs"]),
                   samples_seen_source=f"{meta_path.name}: epochs x captions")
    except (OSError, ValueError, KeyError, TypeError):
        pass    # a retrained model without its record: sizes stay unknown
    _performance_note(row)
    return row


def _fill_samples(row: dict, tag: str | None, file_name: str | None) -> None:
    vt = _vtab().get(file_name) if file_name else (_vtab().get(f"{row['arch']} {tag}") if tag else None)
    parsed = parse_tag(tag) if tag else {"samples_seen": None, "epochs": None}
    if parsed["samples_seen"] is not None:
        row["samples_seen"], row["samples_seen_source"] = parsed["samples_seen"], "pretrained tag"
    elif vt is not None and vt.get("samples_seen") is not None:
        row["samples_seen"], row["samples_seen_source"] = vt["samples_seen"], vt["source"]
    elif tag == "openai":
        row["samples_seen"], row["samples_seen_source"] = OPENAI_SAMPLES, "Radford et al. 2021 (32 epochs x 400M)"
    elif parsed["epochs"] is not None and row.get("dataset_size"):
        row["samples_seen"] = parsed["epochs"] * row["dataset_size"]
        row["samples_seen_source"] = "pretrained tag: epochs x dataset size"
    elif file_name and file_name in _scaling_laws_models():
        m = re.match(r"^(\d+)([MB])$", _scaling_laws_models()[file_name]["samples_seen_pretty"])
        if m:
            row["samples_seen"] = float(m.group(1)) * (1e9 if m.group(2) == "B" else 1e6)
            row["samples_seen_source"] = "scaling-laws-openclip trained_models_info.csv (rounded)"
    if row.get("samples_seen") is None:
        row["samples_seen_source"] = UNKNOWN


def _fill_performance(row: dict, arch: str | None, tag: str | None, file_name: str | None) -> None:
    res = _openclip_results().get((arch, tag)) if tag else None
    if res is not None:
        row["imagenet1k"], row["avg38"] = res["imagenet1k"], res["avg38"]
        row["openclip_results_source"] = OPENCLIP_RESULTS_SOURCE
    vt = _vtab().get(file_name) if file_name else (_vtab().get(f"{arch} {tag}") if tag else None)
    if vt is not None:
        row["vtab"], row["vtab_plus"], row["vtab_source"] = vt.get("vtab"), vt.get("vtab_plus"), vt["source"]
    _performance_note(row)


def _performance_note(row: dict, given: Sequence[str] = ()) -> None:
    """``published: vtab+, imagenet1k`` (shipped tables), ``given: COLUMN`` (a user's table), or
    :data:`NO_PERFORMANCE`."""
    sources = {c: row.get(f"{'vtab' if c.startswith('vtab') else 'openclip_results'}_source") or ""
               for c in PERFORMANCE.values()}
    published = [name for name, col in PERFORMANCE.items()
                 if row.get(col) is not None and not str(sources[col]).startswith("user")]
    user = [name for name, col in PERFORMANCE.items()
            if row.get(col) is not None and str(sources[col]).startswith("user")] + list(given)
    parts = ([f"published: {', '.join(published)}"] if published else []) + (
        [f"given: {', '.join(user)}"] if user else [])
    row["performance_note"] = "; ".join(parts) if parts else NO_PERFORMANCE


# --------------------------------------------------------------------------- the table


def known_specs() -> list[str]:
    """Every ``ARCH:TAG`` pair of ``open_clip.list_pretrained()`` (from the shipped catalog where it matches
    the installed open_clip: nothing heavy is imported)."""
    from clipprobe.models.catalog import known_lists

    return [f"{arch}:{tag}" for arch, tag in known_lists(import_open_clip=True).pairs]


@dataclass(frozen=True)
class UserTable:
    """A user's model CSV: its specs in order, and per spec the values it gives (numbers parsed)."""

    path: str
    specs: tuple[str, ...]
    values: Mapping[str, Mapping[str, Any]]
    performance_columns: tuple[str, ...]


def read_user_table(path: str | Path) -> UserTable:
    """Read a model CSV (a ``spec`` or ``model`` column; see the module docstring)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DataError(MSG_USER_CSV.format(path=p, problem="does not exist"))
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(MSG_USER_CSV.format(path=p, problem=f"cannot be read ({err})")) from None
    reader = csv.DictReader(io.StringIO(text))
    columns = [c.strip() for c in (reader.fieldnames or [])]
    spec_col = "spec" if "spec" in columns else ("model" if "model" in columns else None)
    if spec_col is None:
        raise DataError(MSG_USER_CSV.format(path=p, problem=MSG_NO_SPEC_COLUMN.format(columns=", ".join(columns))))
    zoo_own = set(ZOO_COLUMNS) - set(USER_COLUMNS)
    numeric = {"dataset_size", "samples_seen", "params_image_m", "params_text_m", "params_total_m"}
    perf_cols: list[str] = []
    for c in columns:
        if c in USER_COLUMNS or c == spec_col:
            continue
        if c in PERFORMANCE.values() or (c not in zoo_own and not c.endswith("_source")):
            perf_cols.append(c)
    specs: list[str] = []
    values: dict[str, dict[str, Any]] = {}
    first_row: dict[str, int] = {}
    for i, raw in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in raw.items()}
        spec = row.get(spec_col, "")
        if not spec or spec.startswith("#"):
            continue
        parsed = parse_model_spec(spec)
        key = parsed.canonical
        if key in first_row:
            raise DataError(MSG_USER_CSV.format(path=p, problem=MSG_DUPLICATE.format(spec=spec, first=first_row[key],
                                                                                    second=i)))
        first_row[key] = i
        given: dict[str, Any] = {}
        for c in columns:
            if c == spec_col or c not in row or row[c] == "":
                continue
            if c in numeric or c in perf_cols:
                number = _num(row[c])
                if number is None:
                    if c in perf_cols and c not in PERFORMANCE.values():
                        continue     # a non-numeric extra column is not a performance measure
                    raise DataError(MSG_USER_VALUE.format(path=p, row=i, spec=spec, column=c, value=row[c]))
                given[c] = number
            elif c == "quick_gelu":
                if row[c].lower() not in _TRUE + _FALSE:
                    raise DataError(MSG_USER_CSV.format(path=p, problem=f"row {i} ({spec}): quick_gelu must be true "
                                                                        f"or false, not {row[c]!r}"))
                given[c] = row[c].lower() in _TRUE
            elif c in USER_COLUMNS:
                given[c] = row[c]
        specs.append(spec)
        values[key] = given
    perf_cols = [c for c in perf_cols if any(c in v for v in values.values())]
    return UserTable(path=str(p), specs=tuple(specs), values=values, performance_columns=tuple(perf_cols))


NUMERIC_COLUMNS = ("params_image_m", "params_text_m", "params_total_m", "dataset_size", "samples_seen",
                   "imagenet1k", "avg38", "vtab", "vtab_plus")


def _float_or_none(value: Any) -> float | None:
    """A number as a float; None for a missing or unparseable value (as ``pd.to_numeric(errors="coerce")``)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(out) else out


def zoo_records(specs: Iterable[str] | None = None, *, user: UserTable | str | Path | None = None,
                count: bool = True) -> tuple[list[str], list[dict[str, Any]]]:
    """The rows of :func:`zoo_table` as plain dicts, without pandas: ``(columns, rows)``; each row has every
    column, numbers as floats or None."""
    table = user if isinstance(user, UserTable) or user is None else read_user_table(user)
    if specs is None:
        specs = known_specs() + [s for s in (table.specs if table else ()) if s not in set(known_specs())]
    extra = list(table.performance_columns) if table else []
    columns = list(ZOO_COLUMNS) + [c for c in extra if c not in ZOO_COLUMNS]
    numeric = set(NUMERIC_COLUMNS) | {c for c in extra if c not in ZOO_COLUMNS}
    rows = []
    seen: set[str] = set()
    for spec in specs:
        row = describe_model(spec, count=count)
        if row["spec"] in seen:
            continue
        seen.add(row["spec"])
        if table is not None and row["spec"] in table.values:
            apply_user_values(row, table.values[row["spec"]], source=f"user ({Path(table.path).name})",
                              performance_columns=table.performance_columns)
        rows.append({c: (_float_or_none(row.get(c)) if c in numeric else row.get(c)) for c in columns})
    return columns, rows


def zoo_table(specs: Iterable[str] | None = None, *, user: UserTable | str | Path | None = None,
              count: bool = True) -> "pd.DataFrame":
    """One row per model (:data:`ZOO_COLUMNS`, plus any performance columns of the user table).

    ``specs``: the models (default: every ``open_clip.list_pretrained()`` pair, then the user table's
    other specs); ``user``: a model CSV whose values fill or override the shipped ones for its models
    (marked ``user``). ``count``: count the parameters of architectures not in the shipped tables
    (False leaves them empty, ``params_source = "not counted"``).
    """
    import pandas as pd

    columns, rows = zoo_records(specs, user=user, count=count)
    df = pd.DataFrame.from_records(rows, columns=columns)
    extra = [c for c in columns if c not in ZOO_COLUMNS]
    for c in (*NUMERIC_COLUMNS, *extra):
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    return df


def apply_user_values(row: dict, given: Mapping[str, Any], *, source: str = "user",
                      performance_columns: Sequence[str] = ()) -> None:
    """Fill or override a zoo row with a user's values, marking their sources ``source`` (and naming the columns
    given in ``user_columns``, so that a later analysis keeps them)."""
    named = [c for c in str(row.get("user_columns") or "").split(";") if c]
    for key, value in given.items():
        if key in ("spec", "model"):
            continue
        row[key] = value
        if key not in named:
            named.append(key)
        if key == "dataset_size":
            row["dataset_size_source"] = source
        elif key == "samples_seen":
            row["samples_seen_source"] = source
        elif key.startswith("params_"):
            row["params_source"] = source
        elif key in ("vtab", "vtab_plus"):
            row["vtab_source"] = source
        elif key in ("imagenet1k", "avg38"):
            row["openclip_results_source"] = source
    row["user_columns"] = ";".join(named) or None
    extra = [c for c in performance_columns if c in given and c not in PERFORMANCE.values()]
    _performance_note(row, extra)


def performance_column(name: str, columns: Sequence[str]) -> str:
    """The zoo-table column of a performance measure: ``vtab+``, ``vtab``, ``imagenet1k``, ``avg38`` or a
    user column name."""
    from clipprobe.errors import UsageError

    column = PERFORMANCE.get(name, name)
    if column not in columns or column in set(ZOO_COLUMNS) - set(PERFORMANCE.values()):
        valid = list(PERFORMANCE) + [c for c in columns if c not in ZOO_COLUMNS]
        raise UsageError(f"unknown performance measure {name!r}{did_you_mean(name, valid)}; valid: "
                         + ", ".join(valid))
    return column


def format_zoo(table: "pd.DataFrame | Sequence[Mapping[str, Any]]", fmt: str = "table",
               columns: Sequence[str] | None = None) -> str:
    """The zoo table as text: ``table`` (aligned columns, the main facts), ``json`` (records, NaN as
    null) or ``csv`` (every column; readable back as a model CSV).

    ``table``: a DataFrame of :func:`zoo_table`, or the rows of :func:`zoo_records` (dicts; ``columns``
    their order, default the first row's keys): nothing here needs pandas."""
    if fmt not in ("table", "json", "csv"):
        from clipprobe.errors import one_of

        raise one_of(fmt, ("table", "json", "csv"), "format")
    if hasattr(table, "to_dict"):      # a DataFrame
        columns = [str(c) for c in table.columns]
        rows = [{c: _plain(v) for c, v in zip(columns, r)} for r in table.itertuples(index=False, name=None)]
    else:
        rows = [dict(r) for r in table]
        columns = list(columns) if columns is not None else (list(rows[0]) if rows else list(ZOO_COLUMNS))
    if fmt == "csv":
        from clipprobe._io import csv_records_text

        return csv_records_text(columns, rows)
    if fmt == "json":
        records = [{c: _json_value(r.get(c)) for c in columns} for r in rows]
        return json.dumps(records, indent=2)
    shown = ["spec", "arch_family", "params_total_m", "dataset", "dataset_size", "samples_seen", "imagenet1k",
             "vtab_plus"]

    def cell(col: str, value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if col in ("dataset_size", "samples_seen"):
            return _human(float(value))
        if col == "params_total_m":
            return f"{float(value):.1f}M"
        if col in ("imagenet1k", "vtab_plus"):
            return f"{float(value):.3f}"
        if col == "cached":
            return "yes" if value else "no"
        return str(value)

    header = ["model", "family", "params", "dataset", "size", "seen", "ImageNet", "VTAB+"]
    for col, title in (("cached", "cached"), ("needs", "needs")):     # columns `clipprobe models` adds
        if col in columns:
            shown.append(col)
            header.append(title)
    body = [[cell(c, r.get(c)) for c in shown] for r in rows]
    widths = [max([len(header[i])] + [len(b[i]) for b in body]) for i in range(len(header))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(b, widths)).rstrip() for b in body]
    n_perf = sum(r.get("performance_note") != NO_PERFORMANCE for r in rows)
    lines.append(f"{len(rows)} models; {n_perf} with downstream performance (published or given), "
                 f"{len(rows) - n_perf} without")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """A DataFrame cell as a plain Python value (NaN as None; numpy scalars as Python numbers)."""
    if hasattr(value, "item") and not isinstance(value, (list, tuple, dict, str)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _json_value(value: Any) -> Any:
    """A cell for the JSON records: NaN and infinities as null, floats to 10 decimals (as pandas'
    ``to_json(double_precision=10)``)."""
    if isinstance(value, float):
        return round(value, 10) if math.isfinite(value) else None
    return value


def _human(n: float) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def check_known(specs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split specs into those that name a model (a known ``ARCH:TAG`` pair or another spec form) and
    messages for unknown pairs, each with close matches (nothing is loaded)."""
    from clipprobe.models.catalog import known_lists

    lists = known_lists(import_open_clip=True)
    pairs = {f"{a}:{t}" for a, t in lists.pairs}
    archs = lists.archs
    ok, problems = [], []
    for spec in specs:
        try:
            parsed = parse_model_spec(spec)
        except ModelError as err:
            problems.append(str(err))
            continue
        if parsed.kind == "pretrained" and f"{parsed.arch}:{parsed.tag}" not in pairs and \
                f"{parsed.arch}:{_clean_tag(parsed.tag or '')}" not in pairs:
            choices = sorted(pairs) if parsed.arch not in archs else [
                f"{parsed.arch}:{t}" for t in lists.tags(parsed.arch)]
            problems.append(MSG_UNKNOWN_PAIR.format(spec=spec, hint=did_you_mean(spec, choices)))
            continue
        ok.append(spec)
    return ok, problems


def write_counted_params(out: str | Path) -> int:
    """Count the parameters of every pretrained architecture missing from model_profile.csv into a CSV
    (the shipped ``counted_params.csv``); return the number of rows."""
    import open_clip

    from clipprobe._io import write_text

    profile = {r["model"] for r in _read_csv("model_profile.csv")}
    archs = sorted({a for a, _ in open_clip.list_pretrained()} - profile)
    lines = ["arch,image_mparams,text_mparams,mparams,open_clip_version"]
    for arch in archs:
        try:
            image, text, total = count_params(arch)
        except ModelError as err:
            log.warning("%s", err)
            continue
        lines.append(f"{arch},{image},{text},{total},{open_clip.__version__}")
    write_text(out, "\n".join(lines) + "\n")
    return len(lines) - 1


SAME_CHECKPOINT_COLUMNS = ("spec", "duplicate_of", "weights", "activation", "note")


def find_same_checkpoints() -> list[dict[str, str]]:
    """Pairs of open_clip's registry that load the same weights with the same activation (the rows of
    ``same_checkpoint.csv``): one row per spec that an analysis counts as its ``duplicate_of``.

    The activation is the one clipprobe builds: QuickGELU where the architecture's config or the tag says
    so (a tag trained with QuickGELU is loaded with it whatever the architecture's name). Of each group the
    kept spec is the one with published performance, then the one whose architecture config names the
    tag's activation, then the first by name.
    """
    import open_clip

    results = _openclip_results()
    groups: dict[tuple, list[tuple]] = {}
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        weights = tuple((k, str(cfg[k])) for k in sorted(cfg) if cfg.get(k) and (k in ("url", "hf_hub")
                                                                                   or "file" in k))
        if not weights:
            continue
        model_cfg = open_clip.get_model_config(arch) or {}
        arch_quick, tag_quick = bool(model_cfg.get("quick_gelu")), bool(cfg.get("quick_gelu"))
        quick = arch_quick or tag_quick
        size = (model_cfg.get("vision_cfg") or {}).get("image_size")
        rank = ((arch, _clean_tag(tag)) not in results, arch_quick != tag_quick, f"{arch}:{tag}")
        groups.setdefault((weights, quick), []).append((rank, f"{arch}:{tag}", size))
    rows = []
    for (weights, quick), members in sorted(groups.items(), key=lambda kv: min(m[1] for m in kv[1])):
        if len(members) < 2:
            continue
        members.sort()
        keep = members[0]
        for _, spec, size in members[1:]:
            note = f"image size {size} vs {keep[2]}" if size != keep[2] else ""
            rows.append({"spec": spec, "duplicate_of": keep[1], "weights": dict(weights).get("hf_hub")
                         or dict(weights).get("url") or weights[0][1],
                         "activation": "QuickGELU" if quick else "GELU", "note": note})
    return sorted(rows, key=lambda r: r["spec"])


def write_same_checkpoints(out: str | Path) -> int:
    """Write :func:`find_same_checkpoints` as a CSV (the shipped ``same_checkpoint.csv``); the number of rows."""
    from clipprobe._io import write_text

    rows = find_same_checkpoints()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(SAME_CHECKPOINT_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, buf.getvalue())
    return len(rows)


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m clipprobe.models.zoo")
    ap.add_argument("--count-params", metavar="OUT.csv",
                    help="write the parameter counts of the architectures model_profile.csv lacks")
    ap.add_argument("--same-checkpoints", metavar="OUT.csv",
                    help="write the pairs that load the same weights with the same activation")
    args = ap.parse_args(argv)
    if not args.count_params and not args.same_checkpoints:
        ap.error("give --count-params OUT.csv and/or --same-checkpoints OUT.csv")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.count_params:
        n = write_counted_params(args.count_params)
        log.info("wrote %d architectures to %s", n, args.count_params)
    if args.same_checkpoints:
        n = write_same_checkpoints(args.same_checkpoints)
        log.info("wrote %d specs to %s", n, args.same_checkpoints)
    return 0


if __name__ == "__main__":  # pragma: no cover
    from clipprobe.models import zoo as _module

    raise SystemExit(_module._main())
