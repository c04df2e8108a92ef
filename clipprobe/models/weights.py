"""Where a model's weights are: the Hugging Face cache, a local file or folder; checks before loading.

Weights are never read with unrestricted pickle: safetensors files are read by safetensors,
everything else by ``torch.load(weights_only=True)``. The original OpenAI release files are
TorchScript archives; they are refused before loading, with advice to use ``ARCH:openai`` (Hub
safetensors) instead.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from clipprobe.errors import ModelError
from clipprobe.models.spec import HF_CONFIG_NAME, WEIGHT_SUFFIXES, ModelSpec

_HF_WEIGHTS_NAME = "open_clip_pytorch_model.bin"  # open_clip.constants.HF_WEIGHTS_NAME
_HF_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"  # open_clip.constants.HF_SAFE_WEIGHTS_NAME
# Seconds to wait for a TCP connection to the Hub before calling it unreachable.
_REACH_TIMEOUT = 3.0

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
MSG_ADVICE = (
    "download the weights on a machine with internet into the Hugging Face cache "
    "(e.g. run `clipprobe models --download {spec}` there and copy ~/.cache/huggingface), or pass a local file as ARCH:/path/to/weights.safetensors, "
    "or an open_clip folder as local-dir:PATH"
)
MSG_NOT_CACHED = "model {spec} is not in the local cache and offline mode is on (HF_HUB_OFFLINE=1); " + MSG_ADVICE
MSG_UNREACHABLE = "model {spec} is not in the local cache and {endpoint} cannot be reached ({problem}); " + MSG_ADVICE
MSG_DOWNLOAD_FAILED = "could not download model {spec}: {problem}; " + MSG_ADVICE


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
        _cached_hub_file(repo_id, [HF_CONFIG_NAME], cache_dir) is not None
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
    cfg_path = folder / HF_CONFIG_NAME
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


