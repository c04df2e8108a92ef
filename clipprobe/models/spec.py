"""Model specs: the one parser of ``--model`` values (syntax only; nothing is loaded or imported).

A spec names where the weights come from:

``ARCH:TAG``
    an (architecture, pretrained tag) pair of ``open_clip.list_pretrained()``,
    e.g. ``ViT-B-32:openai`` (the default).
``hf-hub:ORG/NAME``
    an open_clip model repository on the Hugging Face Hub (config + weights).
``local-dir:PATH``
    a folder holding ``open_clip_config.json`` and a weights file, the layout
    open_clip's ``local-dir:`` schema reads.
``demo``
    a model shipped inside the package (:data:`SHIPPED_MODELS`): ``demo`` is the tiny CLIP trained on
    the offline demo world (``clipprobe demo``); its architecture config is registered with open_clip
    when it loads, so no ``--model-config`` is needed. It knows only the demo world's synthetic faces.
``ARCH:PATH``
    a local weights file (``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt``
    holding a plain state dict) for a known architecture. A fine-tuned checkpoint of
    a model trained with QuickGELU (OpenAI's, LAION-400M ViT-B-32, MetaCLIP, DFN, ...)
    must be built with it: name the ``-quickgelu`` architecture
    (``ViT-B-32-quickgelu:/models/finetune.safetensors``) or load with
    ``quick_gelu=True``; the activation has no weights, so nothing else would notice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from clipprobe.errors import ModelError

DEFAULT_MODEL = "ViT-B-32:openai"

KINDS = ("pretrained", "hf-hub", "local-dir", "file")
BUILT = "built"   # the kind of an encoder made from a model built elsewhere (Encoder.from_open_clip); never parsed
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
HF_CONFIG_NAME = "open_clip_config.json"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")

# Message templates (tests check them word for word).
MSG_SHIPPED_MISSING = "shipped model {name!r}: {path} is missing from this installation of clipprobe (reinstall it)"
MSG_EMPTY_PART = "model spec {raw!r} has an empty {part}; use ARCH:TAG, hf-hub:ORG/NAME, local-dir:PATH or ARCH:PATH"
MSG_BAD_HUB_ID = "model spec {raw!r}: {hub_id!r} is not a Hugging Face Hub id of the form ORG/NAME"


# ---------------------------------------------------------------------------
# Models shipped inside the package


@dataclass(frozen=True)
class ShippedModel:
    """A model whose weights and architecture config ship with clipprobe, named by one word.

    The files are package data of ``package`` (in ``folder``), found without importing that package
    (models/ sits below it in the layers): ``<arch>.safetensors`` and ``<arch>.json``.
    """

    name: str
    arch: str
    package: str
    folder: str
    description: str
    training_data: str

    @property
    def directory(self) -> Path:
        found = importlib.util.find_spec(self.package)
        locations = list(found.submodule_search_locations or []) if found is not None else []
        if not locations:
            raise ModelError(MSG_SHIPPED_MISSING.format(name=self.name, path=self.package))
        return Path(locations[0]) / self.folder

    @property
    def weights_path(self) -> Path:
        return self.directory / f"{self.arch}.safetensors"

    @property
    def config_path(self) -> Path:
        return self.directory / f"{self.arch}.json"

    def check(self) -> None:
        """Raise ModelError when a file of the model is missing (a broken installation)."""
        for path in (self.weights_path, self.config_path):
            if not path.is_file():
                raise ModelError(MSG_SHIPPED_MISSING.format(name=self.name, path=path))


# name -> model; each name is a complete --model value (no ':', so it never shadows another form)
SHIPPED_MODELS: dict[str, ShippedModel] = {
    "demo": ShippedModel(
        name="demo", arch="clipprobe-world-tiny", package="clipprobe.world", folder="weights",
        description="tiny CLIP trained on the offline demo world (clipprobe demo); knows only its synthetic faces",
        training_data="clipprobe demo world (synthetic)"),
}


# Message templates (tests check them word for word); they name the shipped models.
MSG_EMPTY_SPEC = ("empty model spec; use ARCH:TAG (e.g. {default}), hf-hub:ORG/NAME, local-dir:PATH, ARCH:PATH or "
                  "a shipped model (" + ", ".join(SHIPPED_MODELS) + ")")
MSG_NO_COLON = (
    "model spec {raw!r} has no ':' and is not a shipped model (" + ", ".join(SHIPPED_MODELS) + "); use ARCH:TAG "
    "(e.g. {default}), hf-hub:ORG/NAME, local-dir:PATH or ARCH:/path/to/weights.safetensors"
)


def shipped_model(name: str) -> ShippedModel | None:
    """The shipped model called ``name`` (case-insensitive, surrounding spaces ignored), or None."""
    return SHIPPED_MODELS.get(str(name).strip().lower())


def shipped_arch(arch: str | None) -> ShippedModel | None:
    """The shipped model whose architecture is ``arch`` (its config is registered without a model config
    file, so ``clipprobe-world-tiny:PATH`` loads a retrained copy), or None."""
    return next((m for m in SHIPPED_MODELS.values() if m.arch == arch), None)


# ---------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value.

    ``kind`` is one of :data:`KINDS`. ``arch`` is set for ``pretrained`` and
    ``file``; ``tag`` for ``pretrained``; ``path`` holds the weights file
    (``file``), the folder (``local-dir``) or the Hub repository id ``ORG/NAME``
    (``hf-hub``). ``shipped`` names a model of :data:`SHIPPED_MODELS` (a ``file``
    spec whose weights and config ship with clipprobe). The kind :data:`BUILT` describes a
    model built by the caller (:meth:`clipprobe.models.Encoder.from_open_clip`): ``raw`` is the
    name it was given; it has no spec to parse back, and its cache key is the name (the embedding
    cache adds a digest of its weights).
    """

    raw: str
    kind: str
    arch: str | None = None
    tag: str | None = None
    path: str | None = None
    shipped: str | None = None

    @property
    def canonical(self) -> str:
        """The spec written back in its standard form (``parse_model_spec`` reads it)."""
        if self.shipped:
            return self.shipped
        if self.kind == BUILT:
            return self.raw
        if self.kind == "pretrained":
            return f"{self.arch}:{self.tag}"
        if self.kind == "hf-hub":
            return f"{HF_HUB_PREFIX}{self.path}"
        if self.kind == "local-dir":
            return f"{LOCAL_DIR_PREFIX}{self.path}"
        return f"{self.arch}:{self.path}"

    @property
    def key(self) -> str:
        """A filesystem-safe cache key that changes when the weights change.

        Pretrained and Hub models are named by their id; a weights file or a
        local folder by its name plus a short hash of the size and modification
        time of its weights (so an edited file gets a new key, a moved one keeps it).
        """
        if self.kind == "pretrained":
            return _safe(f"{self.arch}__{_clean_tag(self.tag or '')}")
        if self.kind == BUILT:
            return _safe(f"built__{self.raw}")
        if self.kind == "hf-hub":
            return _safe("hf-hub__" + (self.path or "").replace("/", "__"))
        if self.kind == "local-dir":
            folder = Path(self.path or "").expanduser()
            files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
            files += [folder / HF_CONFIG_NAME]
            name = folder.resolve().name or "root"
            return _safe(f"local-dir__{name}__{_stat_hash(files, fallback=str(folder.resolve()))}")
        weights = Path(self.path or "").expanduser()
        return _safe(f"{self.arch}__{weights.stem}__{_stat_hash([weights], fallback=str(weights))}")

    def __str__(self) -> str:
        return self.canonical


def _clean_tag(tag: str) -> str:
    # open_clip normalises tags the same way (pretrained._clean_tag).
    return tag.lower().replace("-", "_")


def _safe(text: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")
    return cleaned[:150] or "model"


def _stat_hash(paths: list[Path], *, fallback: str) -> str:
    h = hashlib.sha256()
    seen = False
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            continue
        seen = True
        h.update(f"{p.name}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    if not seen:
        h.update(fallback.encode())
    return h.hexdigest()[:12]


def _looks_like_path(text: str) -> bool:
    return (
        os.path.isfile(os.path.expanduser(text))
        or "/" in text
        or os.sep in text
        or (os.altsep is not None and os.altsep in text)
        or text.startswith(("~", "."))
        or text.lower().endswith(WEIGHT_SUFFIXES)
    )


def parse_model_spec(spec: str) -> ModelSpec:
    """Parse a ``--model`` value without importing open_clip (syntax only).

    The part after the first ``:`` is a path when it names an existing file,
    contains a path separator, starts with ``~`` or ``.``, or ends in a weights
    extension; otherwise it is a pretrained tag. Whether the architecture and tag
    exist is checked by :func:`load_model` / :func:`check_pretrained`.
    """
    if not isinstance(spec, str):
        raise ModelError(f"model spec must be a string, not {type(spec).__name__}")
    raw = spec
    text = spec.strip()
    if not text:
        raise ModelError(MSG_EMPTY_SPEC.format(default=DEFAULT_MODEL))
    shipped = shipped_model(text)
    if shipped is not None:
        return ModelSpec(raw=raw, kind="file", arch=shipped.arch, path=str(shipped.weights_path), shipped=shipped.name)
    if text.startswith(HF_HUB_PREFIX):
        hub_id = text[len(HF_HUB_PREFIX):].strip()
        if not hub_id:
            raise ModelError(MSG_EMPTY_PART.format(raw=raw, part="Hub id after 'hf-hub:'"))
        if not _HUB_ID_RE.match(hub_id):
            raise ModelError(MSG_BAD_HUB_ID.format(raw=raw, hub_id=hub_id))
        return ModelSpec(raw=raw, kind="hf-hub", path=hub_id)
    if text.startswith(LOCAL_DIR_PREFIX):
        folder = text[len(LOCAL_DIR_PREFIX):].strip()
        if not folder:
            raise ModelError(MSG_EMPTY_PART.format(raw=raw, part="folder after 'local-dir:'"))
        return ModelSpec(raw=raw, kind="local-dir", path=folder)
    if ":" not in text:
        raise ModelError(MSG_NO_COLON.format(raw=raw, default=DEFAULT_MODEL))
    arch, rest = text.split(":", 1)
    arch, rest = arch.strip(), rest.strip()
    if not arch:
        raise ModelError(MSG_EMPTY_PART.format(raw=raw, part="architecture before ':'"))
    if not rest:
        raise ModelError(MSG_EMPTY_PART.format(raw=raw, part="tag or path after ':'"))
    if _looks_like_path(rest):
        return ModelSpec(raw=raw, kind="file", arch=arch, path=rest)
    return ModelSpec(raw=raw, kind="pretrained", arch=arch, tag=rest)


def _as_spec(spec: str | ModelSpec) -> ModelSpec:
    return spec if isinstance(spec, ModelSpec) else parse_model_spec(spec)


