"""Escaping and number formatting shared by the report's HTML (the page and the sections of other commands)."""

from __future__ import annotations

import html
import math


def e(value) -> str:
    """HTML-escape any value (quotes included)."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value, digits: int = 2) -> str:
    """A finite number with ``digits`` decimals, else an em dash."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    return f"{v:.{digits}f}"
