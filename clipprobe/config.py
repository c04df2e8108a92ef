"""Stage configs (frozen dataclasses) as JSON-friendly dicts for the run record."""

from __future__ import annotations

import dataclasses
from typing import Any


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a config dataclass (paths as strings)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, tuple):
            value = list(value)
        elif value is not None and not isinstance(value, (str, int, float, bool, list, dict)):
            value = str(value)
        out[key] = value
    return out
