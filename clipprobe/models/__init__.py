"""Model specs and open_clip loading: one place that turns ``--model`` into an Encoder.

A model spec names where the weights come from:

``ARCH:TAG``
    an (architecture, pretrained tag) pair of ``open_clip.list_pretrained()``,
    e.g. ``ViT-B-32:openai`` (the default).
``hf-hub:ORG/NAME``
    an open_clip model repository on the Hugging Face Hub (config + weights).
``local-dir:PATH``
    a folder holding ``open_clip_config.json`` and a weights file, the layout
    open_clip's ``local-dir:`` schema reads.
``ARCH:PATH``
    a local weights file (``.safetensors``, or ``.pt``/``.pth``/``.bin``/``.ckpt``
    holding a plain state dict) for a known architecture. ``model_config=`` adds a
    custom architecture from a JSON file whose stem is its name, as
    ``open_clip.add_model_config`` does.

Weights are never read with unrestricted pickle: safetensors files are read by
safetensors, everything else by ``torch.load(weights_only=True)`` (open_clip 3.3
passes ``weights_only`` through ``create_model`` -> ``load_checkpoint`` ->
``load_state_dict``; pretrained tags are fetched from the Hub, where open_clip
prefers the ``.safetensors`` file). The original OpenAI release files are
TorchScript archives; ``torch.load(weights_only=True)`` refuses them and so do
we, before loading, with advice to use ``ARCH:openai`` (Hub safetensors).

Offline use: with ``offline=True`` or ``HF_HUB_OFFLINE=1`` a pretrained model
whose weights are not in the local cache fails at once with a message that says
how to provide them; nothing waits on the network.

Only the standard library is imported at module level; torch, numpy and
open_clip are imported inside the functions that need them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from clipprobe.errors import ModelError, did_you_mean

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32:openai"

KINDS = ("pretrained", "hf-hub", "local-dir", "file")
HF_HUB_PREFIX = "hf-hub:"
LOCAL_DIR_PREFIX = "local-dir:"
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
PRECISIONS = ("fp32", "fp16", "bf16")
_DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip.constants.HF_WEIGHTS_NAME
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
_HF_CONFIG_NAME = "open_clip_config.json"
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")
# Seconds to wait for a TCP connection to the Hub before calling it unreachable.
_REACH_TIMEOUT = 3.0
# Seconds huggingface_hub waits for a metadata answer before giving up (its default is 10).
_QUICK_ETAG_TIMEOUT = "5"

# Message templates (tests check them word for word).
MSG_EMPTY_SPEC = "empty model spec; use ARCH:TAG (e.g. {default}), hf-hub:ORG/NAME, local-dir:PATH or ARCH:PATH"
MSG_NO_COLON = (
    "model spec {raw!r} has no ':'; use ARCH:TAG (e.g. {default}), hf-hub:ORG/NAME, local-dir:PATH "
    "or ARCH:/path/to/weights.safetensors"
)
MSG_EMPTY_PART = "model spec {raw!r} has an empty {part}; use ARCH:TAG, hf-hub:ORG/NAME, local-dir:PATH or ARCH:PATH"
MSG_BAD_HUB_ID = "model spec {raw!r}: {hub_id!r} is not a Hugging Face Hub id of the form ORG/NAME"
MSG_UNKNOWN_ARCH = "unknown model architecture {arch!r}{hint}; `clipprobe models` lists the pretrained ones"
MSG_UNKNOWN_TAG = "unknown pretrained tag {tag!r} for {arch}{hint}; tags for {arch}: {tags}"
MSG_NO_TAGS = "architecture {arch} has no pretrained tags in open_clip; give weights as {arch}:/path/to/weights.safetensors"
MSG_WEIGHTS_MISSING = "weights file not found: {path} (from model spec {raw!r})"
MSG_WEIGHTS_NOT_FILE = "weights path is not a file: {path} (from model spec {raw!r})"
MSG_WEIGHTS_SUFFIX = "weights file {path} has an unsupported extension {suffix!r}; supported: {supported}"
MSG_TORCHSCRIPT = (
    "{path} is a TorchScript archive (the original OpenAI release format), which clipprobe does not load "
    "because it would run pickled code; use the pretrained tag instead (e.g. {arch}:openai, safetensors "
    "from the Hugging Face Hub) or a plain state dict saved as .safetensors"
)
MSG_LOCAL_DIR_MISSING = "local-dir folder not found: {path}"
MSG_LOCAL_DIR_NO_CONFIG = "local-dir folder {path} has no open_clip_config.json"
MSG_LOCAL_DIR_BAD_CONFIG = "local-dir config {path} is not an open_clip config with a 'model_cfg' object: {problem}"
MSG_LOCAL_DIR_NO_WEIGHTS = "local-dir folder {path} has no weights file (*.safetensors, *.bin, *.pth)"
MSG_CONFIG_MISSING = "model config file not found: {path}"
MSG_CONFIG_BAD = "model config {path} is not an open_clip architecture JSON ({problem})"
MSG_ADVICE = (
    "download the weights on a machine with internet into the Hugging Face cache "
    "(e.g. run `clipprobe models --download {spec}` there and copy ~/.cache/huggingface), or pass a local file as ARCH:/path/to/weights.safetensors, "
    "or an open_clip folder as local-dir:PATH"
)
MSG_NOT_CACHED = "model {spec} is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1); " + MSG_ADVICE
MSG_UNREACHABLE = "model {spec} is not in the local cache and {endpoint} cannot be reached ({problem}); " + MSG_ADVICE
MSG_DOWNLOAD_FAILED = "could not download model {spec}: {problem}; " + MSG_ADVICE
MSG_LOAD_FAILED = "could not load model {spec}: {problem}"
MSG_BAD_DEVICE = "unknown device {device!r}; use auto, cpu, cuda or cuda:N"
MSG_NO_CUDA = "device {device!r} requested but CUDA is not available on this machine; use --device cpu"
MSG_BAD_PRECISION = "unknown precision {precision!r}{hint}; valid: fp32, fp16, bf16"
MSG_BAD_PREPROCESS = "unknown preprocess {name!r}{hint}; use 'model', 'default', a pretrained tag such as 'openai', or ARCH:TAG"
MSG_AMBIGUOUS_PREPROCESS = (
    "preprocess tag {name!r} means different settings for different architectures ({archs}); name one as ARCH:TAG"
)


# ---------------------------------------------------------------------------
# Specs


@dataclass(frozen=True)
class ModelSpec:
    """A parsed ``--model`` value.

    ``kind`` is one of :data:`KINDS`. ``arch`` is set for ``pretrained`` and
    ``file``; ``tag`` for ``pretrained``; ``path`` holds the weights file
    (``file``), the folder (``local-dir``) or the Hub repository id ``ORG/NAME``
    (``hf-hub``).
    """

    raw: str
    kind: str
    arch: str | None = None
    tag: str | None = None
    path: str | None = None

    @property
    def canonical(self) -> str:
        """The spec written back in its standard form (``parse_model_spec`` reads it)."""
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
        if self.kind == "hf-hub":
            return _safe("hf-hub__" + (self.path or "").replace("/", "__"))
        if self.kind == "local-dir":
            folder = Path(self.path or "").expanduser()
            files = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")) + sorted(folder.glob("*.pth"))
            files += [folder / _HF_CONFIG_NAME]
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


# ---------------------------------------------------------------------------
# Hugging Face Hub settings (must happen before huggingface_hub is imported)


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def configure_hub(offline: bool | None = None) -> bool:
    """Apply offline mode and quick timeouts to huggingface_hub; return whether offline.

    ``offline=True`` sets ``HF_HUB_OFFLINE=1``; ``None`` or ``False`` keep what the
    environment says (an ``HF_HUB_OFFLINE=1`` already set stays in force).
    huggingface_hub reads these variables once, at import, so they are set in
    ``os.environ`` first; if it was imported already its constants are updated too.
    """
    is_offline = bool(offline) or _env_true("HF_HUB_OFFLINE")
    if is_offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", _QUICK_ETAG_TIMEOUT)
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        if is_offline:
            constants.HF_HUB_OFFLINE = True
        if hasattr(constants, "HF_HUB_ETAG_TIMEOUT"):
            try:
                constants.HF_HUB_ETAG_TIMEOUT = int(os.environ["HF_HUB_ETAG_TIMEOUT"])
            except ValueError:
                log.debug("HF_HUB_ETAG_TIMEOUT=%r is not an integer; left as is", os.environ["HF_HUB_ETAG_TIMEOUT"])
    return is_offline


def _import_open_clip(offline: bool | None):
    is_offline = configure_hub(offline)
    import open_clip  # noqa: PLC0415 (heavy; imported on use)

    return open_clip, is_offline


# ---------------------------------------------------------------------------
# Architecture / tag checks and the local cache


def register_model_config(path: str | os.PathLike) -> str:
    """Register a custom architecture JSON with open_clip; return its name (the file stem)."""
    import open_clip

    cfg_path = Path(path).expanduser()
    if not cfg_path.is_file():
        raise ModelError(MSG_CONFIG_MISSING.format(path=cfg_path))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(MSG_CONFIG_BAD.format(path=cfg_path, problem=str(err).splitlines()[0])) from None
    if cfg_path.suffix != ".json":
        raise ModelError(MSG_CONFIG_BAD.format(path=cfg_path, problem="file name must end in .json"))
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if not isinstance(cfg, dict) or k not in cfg]
    if missing:
        raise ModelError(MSG_CONFIG_BAD.format(path=cfg_path, problem="missing " + ", ".join(missing)))
    open_clip.add_model_config(cfg_path)
    log.info("registered architecture %s from %s", cfg_path.stem, cfg_path)
    return cfg_path.stem


def _check_arch(open_clip, arch: str) -> None:
    names = open_clip.list_models()
    if arch not in names:
        raise ModelError(MSG_UNKNOWN_ARCH.format(arch=arch, hint=did_you_mean(arch, names)))


def check_pretrained(spec: str | ModelSpec) -> dict:
    """Check that an ``ARCH:TAG`` spec names a known pair; return its open_clip pretrained cfg."""
    spec = _as_spec(spec)
    if spec.kind != "pretrained":
        raise ModelError(f"model spec {spec.raw!r} is not an ARCH:TAG pair (it is a {spec.kind} spec)")
    open_clip, _ = _import_open_clip(None)
    _check_arch(open_clip, spec.arch)
    tags = open_clip.list_pretrained_tags_by_model(spec.arch)
    if not tags:
        raise ModelError(MSG_NO_TAGS.format(arch=spec.arch))
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag)
    if not cfg:
        raise ModelError(
            MSG_UNKNOWN_TAG.format(tag=spec.tag, arch=spec.arch, hint=did_you_mean(spec.tag, tags), tags=", ".join(tags))
        )
    return dict(cfg)


def _hub_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, weight file names in the order open_clip tries them) for a pretrained cfg."""
    repo_id, filename = os.path.split(hf_hub)
    filename = filename or _HF_WEIGHTS_NAME
    names = []
    if filename == _HF_WEIGHTS_NAME:
        names.append(_HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.append(filename[:-4] + ".safetensors")
    names.append(filename)
    return repo_id, names


def _cached_hub_file(repo_id: str, filenames: list[str], cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(found, str) and os.path.isfile(found):
            return found
    return None


def cached_pretrained_file(pretrained_cfg: dict, cache_dir: str | None = None) -> str | None:
    """The local file holding a pretrained tag's weights, or None when not cached."""
    hf_hub = pretrained_cfg.get("hf_hub") or ""
    if hf_hub:
        repo_id, names = _hub_candidates(hf_hub)
        found = _cached_hub_file(repo_id, names, cache_dir)
        if found:
            return found
    url = pretrained_cfg.get("url") or ""
    if url and not hf_hub:
        target = os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))
        if os.path.isfile(target):
            return target
    if pretrained_cfg.get("file") and os.path.isfile(pretrained_cfg["file"]):
        return pretrained_cfg["file"]
    return None


def _hub_model_cached(repo_id: str, cache_dir: str | None) -> bool:
    return (
        _cached_hub_file(repo_id, [_HF_CONFIG_NAME], cache_dir) is not None
        and _cached_hub_file(repo_id, [_HF_SAFE_WEIGHTS_NAME, _HF_WEIGHTS_NAME], cache_dir) is not None
    )


def _hub_endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def check_hub_reachable(spec: ModelSpec, timeout: float = _REACH_TIMEOUT) -> None:
    """Raise ModelError at once when the Hub (or the proxy in use) refuses a TCP connection.

    huggingface_hub retries a failed request five times with back-off (about
    25 s per file, and open_clip asks for two files), so without this check a
    machine with no network would wait about a minute before failing.
    """
    import socket
    from urllib.parse import urlsplit

    endpoint = _hub_endpoint()
    target = endpoint
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        if os.environ.get(var):
            target = os.environ[var] if "://" in os.environ[var] else "http://" + os.environ[var]
            break
    parts = urlsplit(target)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as err:
        problem = f"{host}:{port}: {err.strerror or err}"
        raise ModelError(MSG_UNREACHABLE.format(
            spec=spec.canonical, endpoint=endpoint, problem=problem, arch=spec.arch or spec.canonical)) from None


# ---------------------------------------------------------------------------
# Training data of the pretrained tags (a registry of data, first match wins)

_TRAINING_DATA: tuple[tuple[str, str], ...] = (
    (r"^openai$", "OpenAI WIT (400M, private)"),
    (r"^mscoco_finetuned_laion2b", "LAION-2B-en, fine-tuned on MS-COCO"),
    (r"^laion400m", "LAION-400M"),
    (r"^laion2b", "LAION-2B-en"),
    (r"^(?:frozen_)?laion5b", "LAION-5B (multilingual)"),
    (r"^laion_aesthetic", "LAION-Aesthetics (subset of LAION-5B)"),
    (r"^datacompdr", "DataCompDR (DataComp-1B, reinforced)"),
    (r"^(?:datacomp_xl|datacomp_s34b|datacomp1b)", "DataComp-1B"),
    (r"^datacomp_l_", "DataComp-L (filtered CommonPool-L)"),
    (r"^datacomp_m_", "DataComp-M (filtered CommonPool-M)"),
    (r"^datacomp_s_", "DataComp-S (filtered CommonPool-S)"),
    (r"^commonpool_(s|m|l|xl)_(basic|clip|image|laion|text)_", "CommonPool-{0} ({1} filter)"),
    (r"^commonpool_(s|m|l|xl)_s\d", "CommonPool-{0} (unfiltered)"),
    (r"^metaclip2_worldwide", "MetaCLIP 2 worldwide (multilingual)"),
    (r"^metaclip_400m", "MetaCLIP 400M"),
    (r"^metaclip_fullcc", "MetaCLIP 2.5B"),
    (r"^metaclip_altogether", "MetaCLIP Altogether (re-captioned)"),
    (r"^dfndr2b", "DFNDR-2B (DFN-2B, reinforced)"),
    (r"^dfn2b", "DFN-2B"),
    (r"^dfn5b", "DFN-5B"),
    (r"^webli$", "WebLI"),
    (r"^merged2b", "Merged-2B (LAION-2B + COYO-700M)"),
    (r"^yfcc15m$", "YFCC-15M"),
    (r"^cc12m$", "CC12M"),
)


def training_data(tag: str) -> str:
    """The training data a pretrained tag names, or ``"unknown"``."""
    tag = _clean_tag(tag)
    for pattern, label in _TRAINING_DATA:
        m = re.match(pattern, tag)
        if m:
            return label.format(*(g.upper() if i == 0 else g for i, g in enumerate(m.groups())))
    return "unknown"


def list_known_models(cache_dir: str | None = None) -> list[dict]:
    """Every (arch, tag) pair open_clip knows, with training data and local cache state.

    Each row: ``spec`` (``ARCH:TAG``), ``arch``, ``tag``, ``training_data``,
    ``hf_hub`` (repo id or ""), ``cached`` (bool), ``cached_path`` (str or None).
    """
    open_clip, _ = _import_open_clip(None)
    rows = []
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        found = cached_pretrained_file(cfg, cache_dir)
        rows.append({
            "spec": f"{arch}:{tag}",
            "arch": arch,
            "tag": tag,
            "training_data": training_data(tag),
            "hf_hub": os.path.split(cfg.get("hf_hub") or "")[0],
            "cached": found is not None,
            "cached_path": found,
        })
    return rows


# ---------------------------------------------------------------------------
# Device, precision, preprocessing


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when available else ``cpu``; check an explicit choice."""
    import torch

    text = (device or "auto").strip().lower()
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ModelError(MSG_BAD_DEVICE.format(device=device)) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(MSG_NO_CUDA.format(device=device))
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ModelError(MSG_BAD_DEVICE.format(device=device))
    return str(dev)


def resolve_precision(precision: str | None, device: str) -> str:
    """fp16 on CUDA, fp32 elsewhere, unless ``precision`` says otherwise."""
    if precision is None:
        return "fp16" if device.startswith("cuda") else "fp32"
    p = precision.strip().lower()
    if p not in PRECISIONS:
        raise ModelError(MSG_BAD_PRECISION.format(precision=precision, hint=did_you_mean(p, PRECISIONS)))
    if p != "fp32" and device == "cpu":
        log.warning("precision %s on CPU is slow and less exact; fp32 is the CPU default", p)
    return p


def _default_preprocess() -> dict:
    from open_clip.transform import PreprocessCfg

    cfg = dataclasses.asdict(PreprocessCfg())
    return {k: cfg[k] for k in _PREPROCESS_KEYS}


def resolve_preprocess(name: str | None, arch: str | None = None) -> tuple[dict | None, str]:
    """Preprocess settings to force, and a label recording where they came from.

    ``None`` or ``"model"``: keep the model's own (None is returned);
    ``"default"``: open_clip's defaults; ``"TAG"``: that pretrained tag's settings
    (for ``arch`` when it has the tag, else the one setting all architectures with
    that tag share); ``"ARCH:TAG"``: that pair's settings.
    """
    open_clip, _ = _import_open_clip(None)
    if name is None or name.strip().lower() == "model":
        return None, "model"
    text = name.strip()
    if text.lower() == "default":
        return _default_preprocess(), "default"
    if ":" in text:
        p_arch, p_tag = (s.strip() for s in text.split(":", 1))
        cfg = open_clip.get_pretrained_cfg(p_arch, p_tag)
        if not cfg:
            pairs = open_clip.list_pretrained(as_str=True)
            raise ModelError(MSG_BAD_PREPROCESS.format(name=name, hint=did_you_mean(text, pairs)))
        return _pick_preprocess(cfg), f"{p_arch}:{_clean_tag(p_tag)}"
    tag = _clean_tag(text)
    if arch and open_clip.get_pretrained_cfg(arch, tag):
        return _pick_preprocess(open_clip.get_pretrained_cfg(arch, tag)), f"{arch}:{tag}"
    archs = open_clip.list_pretrained_models_by_tag(tag)
    if not archs:
        tags = sorted({t for _, t in open_clip.list_pretrained()} | {"model", "default"})
        raise ModelError(MSG_BAD_PREPROCESS.format(name=name, hint=did_you_mean(text, tags)))
    variants: dict[str, list[str]] = {}
    for a in archs:
        cfg = _pick_preprocess(open_clip.get_pretrained_cfg(a, tag))
        variants.setdefault(json.dumps(cfg, sort_keys=True), []).append(a)
    if len(variants) > 1:
        shown = "; ".join(f"{v[0]}: {json.loads(k)}" for k, v in list(variants.items())[:3])
        raise ModelError(MSG_AMBIGUOUS_PREPROCESS.format(name=name, archs=shown))
    return json.loads(next(iter(variants))), tag


def _pick_preprocess(cfg: dict) -> dict:
    base = _default_preprocess()
    for k in _PREPROCESS_KEYS:
        if k in cfg:
            base[k] = list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]
    base["mean"], base["std"] = list(base["mean"]), list(base["std"])
    return base


# ---------------------------------------------------------------------------
# The encoder


class Encoder:
    """An open_clip model in eval mode with its tokenizer and image transform.

    ``preprocess`` maps a PIL image to a float tensor (C, H, W); it is a
    torchvision ``Compose`` of picklable parts, so DataLoader workers can use it.
    ``encode_images`` / ``encode_text`` return float32 numpy arrays with
    L2-normalised rows (normalised in float32 even when the model runs in fp16).
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Callable,
        preprocess: Callable,
        preprocess_cfg: dict,
        preprocess_source: str,
        spec: ModelSpec,
        device: str,
        precision: str,
        weights_source: str,
        quick_gelu_forced: bool = False,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.preprocess_cfg = preprocess_cfg
        self.preprocess_source = preprocess_source
        self.spec = spec
        self.device = device
        self.precision = precision
        self.dtype = _DTYPE_NAMES[precision]
        self.weights_source = weights_source
        self.quick_gelu_forced = quick_gelu_forced
        self.embed_dim = self._find_embed_dim()
        size = preprocess_cfg.get("size")
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def _find_embed_dim(self) -> int:
        visual = getattr(self.model, "visual", None)
        dim = getattr(visual, "output_dim", None)
        if isinstance(dim, int) and dim > 0:
            return dim
        return int(self.encode_text(["a"]).shape[1])

    @property
    def _torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def _to_batch(self, batch):
        import numpy as np
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        return batch.to(self.device, dtype=self._torch_dtype, non_blocking=True)

    def forward_images_only(self, batch):
        """Image features on the device, unnormalised and unsynchronised (for timing)."""
        import torch

        with torch.inference_mode():
            return self.model.encode_image(self._to_batch(batch))

    def encode_images(self, batch) -> np.ndarray:
        """(N, C, H, W) preprocessed images -> (N, embed_dim) float32, unit rows."""
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(self._to_batch(batch)).float()
            feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            return feats.cpu().numpy()

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (len(texts), embed_dim) float32, unit rows."""
        import numpy as np
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        texts = list(texts)
        if not texts:
            dim = getattr(self, "embed_dim", 0)
            return np.zeros((0, dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), max(1, int(batch_size))):
                tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
                feats = self.model.encode_text(tokens).float()
                feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                out.append(feats.cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def info(self) -> dict:
        """What a run records about the model (JSON-serialisable)."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()}
        return {
            "spec": self.spec.raw,
            "canonical": self.spec.canonical,
            "kind": self.spec.kind,
            "key": self.spec.key,
            "arch": self.spec.arch,
            "tag": self.spec.tag,
            "path": self.spec.path,
            "device": self.device,
            "precision": self.precision,
            "dtype": self.dtype,
            "embed_dim": self.embed_dim,
            "image_size": list(self.image_size),
            "preprocess": cfg,
            "preprocess_source": self.preprocess_source,
            "weights_source": self.weights_source,
            "quick_gelu_forced": self.quick_gelu_forced,
        }

    def __repr__(self) -> str:
        return f"Encoder({self.spec.canonical!r}, device={self.device!r}, dtype={self.dtype!r}, embed_dim={self.embed_dim})"


# ---------------------------------------------------------------------------
# Loading


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _check_weights_file(spec: ModelSpec) -> Path:
    path = Path(spec.path).expanduser()
    if not path.exists():
        raise ModelError(MSG_WEIGHTS_MISSING.format(path=path, raw=spec.raw))
    if not path.is_file():
        raise ModelError(MSG_WEIGHTS_NOT_FILE.format(path=path, raw=spec.raw))
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ModelError(MSG_WEIGHTS_SUFFIX.format(path=path, suffix=suffix, supported=", ".join(WEIGHT_SUFFIXES)))
    if suffix != ".safetensors" and _is_torchscript(path):
        raise ModelError(MSG_TORCHSCRIPT.format(path=path, arch=spec.arch))
    return path


def _check_local_dir(spec: ModelSpec) -> Path:
    folder = Path(spec.path).expanduser()
    if not folder.is_dir():
        raise ModelError(MSG_LOCAL_DIR_MISSING.format(path=folder))
    cfg_path = folder / _HF_CONFIG_NAME
    if not cfg_path.is_file():
        raise ModelError(MSG_LOCAL_DIR_NO_CONFIG.format(path=folder))
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(MSG_LOCAL_DIR_BAD_CONFIG.format(path=cfg_path, problem=str(err).splitlines()[0])) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_cfg"), dict):
        raise ModelError(MSG_LOCAL_DIR_BAD_CONFIG.format(path=cfg_path, problem="no 'model_cfg'"))
    weights = [p for ext in ("*.safetensors", "*.bin", "*.pth") for p in folder.glob(ext)]
    if not weights:
        raise ModelError(MSG_LOCAL_DIR_NO_WEIGHTS.format(path=folder))
    for p in weights:
        if p.suffix != ".safetensors" and _is_torchscript(p):
            raise ModelError(MSG_TORCHSCRIPT.format(path=p, arch="ARCH"))
    return folder


def _first_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(err).__name__
    if msg.startswith("Error(s) in loading state_dict") and len(lines) > 1:
        # torch lists every mismatched key on its own line; show the first and count the rest.
        details = [d for ln in lines[1:] for d in ln.split("\t") if d.strip()]
        more = f" (and {len(details) - 1} more)" if len(details) > 1 else ""
        msg = f"the weights do not fit the architecture: {details[0].strip()}{more}"
    return msg if len(msg) <= 300 else msg[:297] + "..."


def load_model(
    spec: str | ModelSpec = DEFAULT_MODEL,
    *,
    device: str = "auto",
    model_config: str | os.PathLike | None = None,
    offline: bool | None = None,
    precision: str | None = None,
    preprocess: str | None = None,
    cache_dir: str | None = None,
) -> Encoder:
    """Load a model spec into an :class:`Encoder`.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
    ``precision``: ``fp32``/``fp16``/``bf16``; default fp16 on CUDA, fp32 on CPU.
    ``model_config``: an architecture JSON registered under its file stem first.
    ``offline``: True forces HF_HUB_OFFLINE=1; None/False follow the environment.
    ``preprocess``: see :func:`resolve_preprocess`; a bare weights file otherwise
    gets open_clip's default preprocessing.
    ``cache_dir``: Hugging Face / open_clip download cache (default: theirs).
    """
    spec = _as_spec(spec)
    open_clip, is_offline = _import_open_clip(offline)
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if model_config is not None:
        register_model_config(model_config)

    create_kwargs: dict[str, Any] = {}
    quick_gelu_forced = False
    if spec.kind == "pretrained":
        pcfg = check_pretrained(spec)
        model_cfg = open_clip.get_model_config(spec.arch) or {}
        if pcfg.get("quick_gelu") and not model_cfg.get("quick_gelu"):
            # open_clip 3.3 only warns here; the weights were trained with QuickGELU.
            quick_gelu_forced = True
            create_kwargs["force_quick_gelu"] = True
            log.info("%s was trained with QuickGELU; building %s with QuickGELU", spec.canonical, spec.arch)
        cached = cached_pretrained_file(pcfg, cache_dir)
        if cached is None and is_offline:
            raise ModelError(MSG_NOT_CACHED.format(spec=spec.canonical, arch=spec.arch))
        if cached is None:
            check_hub_reachable(spec)
        if cached is not None and cached.endswith(".pt") and _is_torchscript(Path(cached)):
            raise ModelError(MSG_TORCHSCRIPT.format(path=cached, arch=spec.arch))
        name, pretrained = spec.arch, spec.tag
        weights_source = cached or f"download:{pcfg.get('hf_hub') or pcfg.get('url')}"
    elif spec.kind == "hf-hub":
        if not _hub_model_cached(spec.path, cache_dir):
            if is_offline:
                raise ModelError(MSG_NOT_CACHED.format(spec=spec.canonical, arch=spec.canonical))
            check_hub_reachable(spec)
        name, pretrained = spec.canonical, None
        weights_source = f"hf-hub:{spec.path}"
    elif spec.kind == "local-dir":
        folder = _check_local_dir(spec)
        name, pretrained = f"{LOCAL_DIR_PREFIX}{folder}", None
        weights_source = str(folder.resolve())
    else:
        _check_arch(open_clip, spec.arch)
        weights = _check_weights_file(spec)
        name, pretrained = spec.arch, str(weights)
        weights_source = str(weights.resolve())

    forced, preprocess_source = resolve_preprocess(preprocess, spec.arch)
    if forced is None and spec.kind == "file":
        preprocess_source = "default"  # open_clip's defaults: a bare file carries none of its own
    if forced is not None:
        create_kwargs["force_preprocess_cfg"] = forced

    model = _create(open_clip, spec, name, pretrained, dev, prec, cache_dir, create_kwargs)
    model.eval()
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp_cfg = dict(get_model_preprocess_cfg(model))
    known = {f.name for f in dataclasses.fields(PreprocessCfg)}
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in pp_cfg.items() if k in known}), is_train=False)
    try:
        tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 (any failure becomes an actionable message)
        raise ModelError(MSG_LOAD_FAILED.format(spec=spec.canonical, problem="tokenizer: " + _first_line(err))) from err
    encoder = Encoder(
        model=model,
        tokenizer=tokenizer,
        preprocess=transform,
        preprocess_cfg=pp_cfg,
        preprocess_source=preprocess_source,
        spec=spec,
        device=dev,
        precision=prec,
        weights_source=weights_source,
        quick_gelu_forced=quick_gelu_forced,
    )
    log.info("loaded %r", encoder)
    return encoder


def _create(open_clip, spec, name, pretrained, device, precision, cache_dir, kwargs):
    try:
        return open_clip.create_model(
            name,
            pretrained=pretrained,
            precision=precision,
            device=device,
            cache_dir=cache_dir,
            weights_only=True,
            require_pretrained=True,
            **kwargs,
        )
    except Exception as err:  # noqa: BLE001 (every failure becomes one actionable ModelError)
        problem = _first_line(err)
        if type(err).__name__ == "UnpicklingError":
            # torch.load(weights_only=True) met something other than tensors and plain containers.
            problem = "the weights file holds pickled objects other than tensors, refused: " + problem
        elif spec.kind in ("pretrained", "hf-hub") and _NETWORK_WORDS.search(str(err)):
            arch = spec.arch or spec.canonical
            raise ModelError(MSG_DOWNLOAD_FAILED.format(spec=spec.canonical, problem=problem, arch=arch)) from err
        raise ModelError(MSG_LOAD_FAILED.format(spec=spec.canonical, problem=problem)) from err


_NETWORK_WORDS = re.compile(r"download|Failed initial config|connect|offline|resolve|HTTP|timed? ?out", re.IGNORECASE)
