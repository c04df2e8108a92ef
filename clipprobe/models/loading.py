"""Load a model spec into an :class:`~clipprobe.models.encoder.Encoder` through open_clip.

Offline use: with ``offline=True`` or ``HF_HUB_OFFLINE=1`` a pretrained model whose weights are
not in the local cache fails at once with a message that says how to provide them; nothing waits
on the network. Offline mode applies to the call only (:func:`clipprobe.hub.hub_session`).
``weights_only=True`` is passed through open_clip 3.3's ``create_model`` -> ``load_checkpoint`` ->
``load_state_dict``; pretrained tags are fetched from the Hub, where open_clip prefers the
``.safetensors`` file.

The tokenizer is created before the weights are loaded or downloaded: a model whose text tower
names a Hugging Face tokenizer (SigLIP, the multilingual and CLIPA models: see
:func:`~clipprobe.models.catalog.text_packages`) needs ``transformers`` (``pip install
'clipprobe[hf-text]'``), and without it the load fails at once, before gigabytes are downloaded.

QuickGELU: the activation has no weights, so weights trained with QuickGELU load into a GELU model
without complaint and give wrong embeddings. Pretrained tags get it from their configuration. A
fine-tuned weights file (``ARCH:PATH``) of a QuickGELU model (OpenAI, LAION-400M ViT-B-32, MetaCLIP,
DFN, ...) needs ``quick_gelu=True``, or the ``-quickgelu`` architecture where open_clip has one
(``ViT-B-32-quickgelu:/path/to/finetune.safetensors``); a preprocessing tag that belongs to QuickGELU
weights (``preprocess="openai"``) without it logs a warning.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

from clipprobe.errors import ModelError, did_you_mean
from clipprobe.hub import hub_session
from clipprobe.models.catalog import (
    MSG_CONFIG_MISSING,
    MSG_NEEDS_TEXT_PACKAGE,
    MSG_NO_TAGS,
    MSG_UNKNOWN_ARCH,
    MSG_UNKNOWN_TAG,
    check_model_name,
    missing_text_packages,
    text_packages,
)
from clipprobe.models.encoder import Encoder
from clipprobe.models.spec import (DEFAULT_MODEL, LOCAL_DIR_PREFIX, ModelSpec, _as_spec, _clean_tag, shipped_arch,
                                    shipped_model)
from clipprobe.models.weights import (
    MSG_NOT_CACHED,
    MSG_TORCHSCRIPT,
    MSG_DOWNLOAD_FAILED,
    _HF_SAFE_WEIGHTS_NAME,
    _HF_WEIGHTS_NAME,
    _cached_hub_file,
    _check_local_dir,
    _check_weights_file,
    _hub_model_cached,
    _is_torchscript,
    cached_pretrained_file,
    check_hub_reachable,
)

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "bf16")
_PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode", "fill_color")

MSG_CONFIG_BAD = "model config {path} is not an open_clip architecture JSON ({problem})"
MSG_LOAD_FAILED = "could not load model {spec}: {problem}"
MSG_BAD_DEVICE = "unknown device {device!r}; use auto, cpu, cuda or cuda:N"
MSG_NO_CUDA = "device {device!r} requested but CUDA is not available on this machine; use device 'cpu'"
MSG_BAD_PRECISION = "unknown precision {precision!r}{hint}; valid: fp32, fp16, bf16"
MSG_BAD_PREPROCESS = "unknown preprocess {name!r}{hint}; use 'model', 'default', a pretrained tag such as 'openai', or ARCH:TAG"
MSG_QUICK_GELU_PRETRAINED = (
    "quick_gelu=True is for weights files and folders; model {spec} is built with the activation its tag was "
    "trained with"
)
MSG_QUICK_GELU_HINT = (
    "preprocess {preprocess!r} is that of weights trained with QuickGELU ({example}); if {spec} was fine-tuned "
    "from them, load it with quick_gelu=True (or as {arch}-quickgelu:PATH where open_clip has that architecture), "
    "or its embeddings will be wrong"
)
MSG_AMBIGUOUS_PREPROCESS = (
    "preprocess tag {name!r} means different settings for different architectures ({archs}); name one as ARCH:TAG"
)




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


def _register_shipped(open_clip, spec: ModelSpec) -> None:
    """Register the architecture config of a shipped model (``demo``, or a retrained copy's weights file
    ``clipprobe-world-tiny:PATH``) with open_clip."""
    shipped = shipped_model(spec.shipped) if spec.shipped else shipped_arch(spec.arch)
    shipped.check()
    if spec.arch not in open_clip.list_models():
        open_clip.add_model_config(shipped.config_path)
        log.debug("registered architecture %s of shipped model %s", spec.arch, shipped.name)


def _check_arch(open_clip, arch: str) -> None:
    names = open_clip.list_models()
    if arch not in names:
        raise ModelError(MSG_UNKNOWN_ARCH.format(arch=arch, hint=did_you_mean(arch, names)))


def check_pretrained(spec: str | ModelSpec) -> dict:
    """Check that an ``ARCH:TAG`` spec names a known pair; return its open_clip pretrained cfg."""
    spec = _as_spec(spec)
    if spec.kind != "pretrained":
        raise ModelError(f"model spec {spec.raw!r} is not an ARCH:TAG pair (it is a {spec.kind} spec)")
    import open_clip  # noqa: PLC0415

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
    import open_clip  # noqa: PLC0415

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
    quick_gelu: bool = False,
) -> Encoder:
    """Load a model spec into an :class:`Encoder`.

    ``device``: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N``.
    ``precision``: ``fp32``/``fp16``/``bf16``; default fp16 on CUDA, fp32 on CPU.
    ``model_config``: an architecture JSON registered under its file stem first.
    ``offline``: True loads offline (for this call only); None/False follow the environment.
    ``preprocess``: see :func:`resolve_preprocess`; a bare weights file otherwise
    gets open_clip's default preprocessing.
    ``cache_dir``: Hugging Face / open_clip download cache (default: theirs).
    ``quick_gelu``: build the architecture with QuickGELU, for a weights file or folder trained
    with it (pretrained tags set it themselves); recorded, and part of the embedding cache key.
    """
    spec = _as_spec(spec)
    if not isinstance(quick_gelu, bool):
        raise ModelError(f"quick_gelu must be True or False, not {quick_gelu!r}")
    check_model_name(spec, model_config=model_config)    # before torch and open_clip are imported (seconds)
    with hub_session(offline) as is_offline:
        return _load(spec, device=device, model_config=model_config, is_offline=is_offline, precision=precision,
                     preprocess=preprocess, cache_dir=cache_dir, quick_gelu=quick_gelu)


def _check_text_packages(spec: ModelSpec, model_cfg: dict | None) -> None:
    """Fail before anything is loaded when the model's tokenizer needs a package that is missing."""
    missing = missing_text_packages(text_packages(model_cfg, spec.arch if spec.kind != "local-dir" else None))
    if missing:
        raise ModelError(MSG_NEEDS_TEXT_PACKAGE.format(spec=spec.canonical, package=missing[0],
                                                       why="not installed"))


def _local_model_cfg(spec: ModelSpec, open_clip, cache_dir) -> dict | None:
    """The architecture config of a spec where it can be read without a download (None otherwise)."""
    if spec.kind in ("pretrained", "file"):
        return open_clip.get_model_config(spec.arch)
    if spec.kind == "local-dir":
        path = Path(spec.path).expanduser() / "open_clip_config.json"
    else:
        found = _cached_hub_file(spec.path, ["open_clip_config.json"], cache_dir)
        if found is None:
            return None
        path = Path(found)
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model_cfg")
    except (OSError, ValueError, AttributeError):
        return None


def _make_tokenizer(open_clip, spec: ModelSpec, name: str, cache_dir):
    try:
        return open_clip.get_tokenizer(name, cache_dir=cache_dir)
    except ImportError as err:
        raise ModelError(MSG_NEEDS_TEXT_PACKAGE.format(spec=spec.canonical, package=_missing_package(err),
                                                       why=_first_line(err))) from None
    except Exception as err:  # noqa: BLE001 (any failure becomes an actionable message)
        raise ModelError(MSG_LOAD_FAILED.format(spec=spec.canonical, problem="tokenizer: " + _first_line(err))) from err


_PACKAGE_WORDS = (("sentencepiece", "sentencepiece"), ("protobuf", "protobuf"), ("tiktoken", "tiktoken"),
                  ("tokenizers", "tokenizers"), ("transformers", "transformers"))


def _missing_package(err: ImportError) -> str:
    """The package an ImportError of a tokenizer is about (transformers unless it names another)."""
    name = (getattr(err, "name", None) or "").split(".")[0]
    if name:
        return name
    text = str(err).lower()
    return next((package for word, package in _PACKAGE_WORDS if word in text), "transformers")


def _quick_gelu_tag(open_clip, preprocess_source: str) -> str | None:
    """An example ARCH:TAG trained with QuickGELU whose preprocessing ``preprocess_source`` names, or None."""
    if preprocess_source in ("model", "default"):
        return None
    if ":" in preprocess_source:
        arch, tag = preprocess_source.split(":", 1)
        return preprocess_source if (open_clip.get_pretrained_cfg(arch, tag) or {}).get("quick_gelu") else None
    for arch in open_clip.list_pretrained_models_by_tag(preprocess_source):
        if (open_clip.get_pretrained_cfg(arch, preprocess_source) or {}).get("quick_gelu"):
            return f"{arch}:{preprocess_source}"
    return None


def _load(spec: ModelSpec, *, device, model_config, is_offline: bool, precision, preprocess, cache_dir,
          quick_gelu: bool = False) -> Encoder:
    import open_clip  # noqa: PLC0415 (heavy; imported on use, inside the hub session)

    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    if model_config is not None:
        register_model_config(model_config)
    if spec.shipped or (model_config is None and spec.kind == "file" and shipped_arch(spec.arch) is not None):
        _register_shipped(open_clip, spec)

    create_kwargs: dict[str, Any] = {}
    quick_gelu_forced = False
    if quick_gelu:
        if spec.kind == "pretrained":
            raise ModelError(MSG_QUICK_GELU_PRETRAINED.format(spec=spec.canonical))
        quick_gelu_forced = True
        create_kwargs["force_quick_gelu"] = True
    if spec.kind == "file":
        _check_arch(open_clip, spec.arch)
    pcfg: dict = check_pretrained(spec) if spec.kind == "pretrained" else {}
    _check_text_packages(spec, _local_model_cfg(spec, open_clip, cache_dir))
    if spec.kind == "pretrained":
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
    if spec.kind != "pretrained" and not quick_gelu and not (open_clip.get_model_config(spec.arch or "") or {}).get(
            "quick_gelu"):
        example = _quick_gelu_tag(open_clip, preprocess_source)
        if example is not None:
            log.warning(MSG_QUICK_GELU_HINT.format(preprocess=preprocess, example=example, spec=spec.canonical,
                                                   arch=spec.arch or "ARCH"))

    # The tokenizer first: a missing package (transformers for Hugging Face tokenizers) fails the load
    # before any weights are read or downloaded.
    tokenizer = _make_tokenizer(open_clip, spec, name, cache_dir)
    model = _create(open_clip, spec, name, pretrained, dev, prec, cache_dir, create_kwargs)
    model.eval()
    if weights_source.startswith("download:"):
        weights_source = cached_pretrained_file(pcfg, cache_dir) or weights_source
    elif spec.kind == "hf-hub":
        weights_source = _cached_hub_file(spec.path, [_HF_SAFE_WEIGHTS_NAME, _HF_WEIGHTS_NAME], cache_dir) \
            or weights_source
    from open_clip.model import get_model_preprocess_cfg
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pp_cfg = dict(get_model_preprocess_cfg(model))
    model_cfg = _built_config(open_clip, spec, cache_dir, create_kwargs)
    known = {f.name for f in dataclasses.fields(PreprocessCfg)}
    transform = image_transform_v2(PreprocessCfg(**{k: v for k, v in pp_cfg.items() if k in known}), is_train=False)
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
        model_cfg=model_cfg,
    )
    log.info("loaded %r", encoder)
    return encoder


def _built_config(open_clip, spec: ModelSpec, cache_dir, create_kwargs: dict) -> dict:
    """The architecture configuration the model was built from, as open_clip read it (after a
    ``model_config`` file was registered, so an edit to that file shows here), with the settings forced
    on top (QuickGELU, preprocessing): part of the embedding cache's model key."""
    cfg = _local_model_cfg(spec, open_clip, cache_dir) or {}
    return {"model_cfg": json.loads(json.dumps(cfg, default=str)),
            "forced": {k: create_kwargs[k] for k in sorted(create_kwargs)}}


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


MSG_MODEL_FORM = ("model: expected a model spec (such as {default} or demo), an Encoder, or an open_clip "
                  "(model, preprocess, tokenizer) tuple; got {got}")


def as_encoder(model: Any = DEFAULT_MODEL, **load_options: Any) -> Encoder:
    """An :class:`Encoder` from any of the forms the Python API takes for a model.

    ``model``: a model spec string or :class:`ModelSpec` (loaded with :func:`load_model` and
    ``load_options``: ``device``, ``offline``, ``precision``, ...), an :class:`Encoder` (returned as it
    is), or an already-built open_clip ``(model, preprocess, tokenizer)`` tuple
    (:meth:`Encoder.from_open_clip`; ``load_options`` do not apply to it).
    """
    if isinstance(model, Encoder):
        return model
    if isinstance(model, (str, ModelSpec)):
        return load_model(model, **load_options)
    if isinstance(model, tuple) and len(model) == 3:
        return Encoder.from_open_clip(*model)
    got = f"a tuple of {len(model)}" if isinstance(model, tuple) else type(model).__name__
    raise ModelError(MSG_MODEL_FORM.format(default=DEFAULT_MODEL, got=got))
