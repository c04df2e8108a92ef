"""A tiny, real open_clip model for tests.

The architecture is an ordinary open_clip JSON config (a ViT image tower and a
text transformer, both a few dozen units wide) and the weights are a random
initialisation saved as safetensors, so a test loads them through exactly the
path real weights take: ``load_model("ARCH:/path/to/weights.safetensors",
model_config="/path/to/ARCH.json")``. The text tower keeps the standard
vocabulary (49408) and context length (77) so open_clip's own tokenizer works.

Helpers: ``write_tiny_model(dir)`` -> (config_path, weights_path, arch);
``write_tiny_config(dir, arch, **overrides)``; ``write_tiny_weights(dir, config_path,
seed=, fmt="safetensors"|"pt")``; ``write_tiny_local_dir(dir)`` for ``local-dir:``.
The same seed gives the same weights, whatever the file format.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_ARCH = "TinyCLIP-test"

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {
        "image_size": 32,
        "layers": 1,
        "width": 32,
        "head_width": 16,
        "patch_size": 8,
    },
    "text_cfg": {
        "context_length": 77,
        "vocab_size": 49408,
        "width": 32,
        "heads": 2,
        "layers": 1,
    },
}


def write_tiny_config(directory: str | Path, arch: str = TINY_ARCH, **overrides) -> Path:
    """Write ``<arch>.json`` into ``directory`` and return its path.

    ``overrides`` replace top-level keys of the config (for example
    ``embed_dim=16``); nested ``vision_cfg`` / ``text_cfg`` dicts are merged.
    """
    cfg = json.loads(json.dumps(TINY_CONFIG))
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{arch}.json"
    path.write_text(json.dumps(cfg, indent=2), encoding="utf-8")
    return path


def _random_state_dict(config: dict, seed: int) -> dict:
    """Build the tiny CLIP from ``config`` with a fixed seed and return its weights."""
    import torch
    from open_clip.model import CLIP

    torch.manual_seed(seed)
    model = CLIP(**json.loads(json.dumps(config)))
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def write_tiny_weights(
    directory: str | Path,
    config_path: str | Path,
    *,
    seed: int = 0,
    fmt: str = "safetensors",
    name: str | None = None,
) -> Path:
    """Save random weights for the config at ``config_path``; return the file path.

    ``fmt`` is ``"safetensors"`` or ``"pt"`` (a plain tensor state dict saved with
    ``torch.save``, loadable with ``weights_only=True``).
    """
    import torch

    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    state = _random_state_dict(config, seed)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stem = name or f"{Path(config_path).stem}-seed{seed}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        path = directory / f"{stem}.safetensors"
        save_file(state, str(path))
    elif fmt == "pt":
        path = directory / f"{stem}.pt"
        torch.save(state, path)
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pt', not {fmt!r}")
    return path


def write_tiny_model(directory: str | Path, arch: str = TINY_ARCH, *, seed: int = 0) -> tuple[Path, Path, str]:
    """Write config and safetensors weights; return ``(config_path, weights_path, arch)``."""
    config_path = write_tiny_config(directory, arch)
    weights_path = write_tiny_weights(directory, config_path, seed=seed)
    return config_path, weights_path, arch


def write_tiny_local_dir(directory: str | Path, *, seed: int = 0, preprocess_cfg: dict | None = None) -> Path:
    """Write an open_clip ``local-dir:`` folder (open_clip_config.json + weights)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"model_cfg": json.loads(json.dumps(TINY_CONFIG))}
    if preprocess_cfg is not None:
        payload["preprocess_cfg"] = preprocess_cfg
    (directory / "open_clip_config.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    save_file(_random_state_dict(TINY_CONFIG, seed), str(directory / "open_clip_model.safetensors"))
    return directory
