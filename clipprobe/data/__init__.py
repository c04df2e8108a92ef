"""Data files shipped with clipprobe: taxonomies, prompt templates, lexicons, association-test stimuli.

In an installed package they live in ``clipprobe.data.taxonomy``,
``clipprobe.data.prompts`` and ``clipprobe.data.stimuli`` (mapped from the
top-level ``taxonomy/``, ``prompts/`` and ``stimuli/`` folders by setup.cfg). Running from a source checkout without
installing, the top-level folders are used directly.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

_KINDS = ("taxonomy", "prompts", "stimuli")


def data_dir(kind: str) -> Path:
    """Folder of the shipped data files of ``kind`` ("taxonomy", "prompts" or "stimuli")."""
    if kind not in _KINDS:
        raise ValueError(f"unknown data kind {kind!r}; valid: {_KINDS}")
    try:
        path = Path(str(importlib.resources.files(f"clipprobe.data.{kind}")))
        if path.is_dir():
            return path
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / kind
