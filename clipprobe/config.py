"""Build frozen stage configs from plain mappings, rejecting unknown keys."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, TypeVar

from clipprobe.errors import UsageError, did_you_mean

T = TypeVar("T")


def from_mapping(cls: type[T], mapping: Mapping[str, Any], *, what: str | None = None) -> T:
    """Instantiate dataclass ``cls`` from ``mapping``; an unknown key is an error with suggestions."""
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in mapping:
        if key not in names:
            raise UsageError(f"unknown {what or cls.__name__} setting {key!r}{did_you_mean(key, names)}")
    return cls(**mapping)  # type: ignore[call-arg]


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
