"""Figures of caption co-occurrence: the word x group lift heatmap.

Plot functions take the ``cooccurrence.parquet`` table and ``ax=None`` and
return the Axes (a new Agg figure when ``ax`` is None).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

LIFT_CLIP = 3.0   # colour range of log2(lift): +/- 3 = 8x over / under the independence expectation


def strongest_words(table, top: int = 30, *, min_both: int = 5) -> list[str]:
    """Words with the largest log-odds for any group (cells with >= min_both captions first), among the
    rows whose association is defined (a word or group that occurs in no caption has no log-odds)."""
    from clipprobe.captions.stats import defined_rows

    table = defined_rows(table)
    rows = table[table["n_both"] >= min_both]
    if rows.empty:
        rows = table
    best = rows.groupby("word", sort=False)["log_odds"].max().sort_values(ascending=False, kind="stable")
    return list(best.index[:top])


def lift_heatmap(table, *, top: int = 30, words=None, ax=None):
    """log2(lift) of each (word, group) cell for the ``top`` strongest words; returns the Axes. Cells whose
    association is undefined (word or group in no caption) are grey, whatever the table holds there."""
    import numpy as np

    from clipprobe.captions.stats import defined_rows

    words = list(words) if words is not None else strongest_words(table, top)
    groups = list(dict.fromkeys(zip(table["attribute"], table["group"])))
    ok = defined_rows(table)
    index = {(w, a, g): v for w, a, g, v in zip(ok["word"], ok["attribute"], ok["group"], ok["lift"])}
    with np.errstate(divide="ignore", invalid="ignore"):
        data = np.array([[np.log2(index.get((w, a, g), np.nan)) for a, g in groups] for w in words],
                        dtype=float).reshape(len(words), len(groups))
    data = np.ma.masked_invalid(np.clip(data, -LIFT_CLIP, LIFT_CLIP))
    if not words:       # no defined association: an empty (grey) row, and a note
        data = np.ma.masked_all((1, len(groups)))
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(max(4.0, 0.35 * len(groups) + 2.5), max(2.5, 0.22 * len(words) + 1.5)),
                     layout="constrained")
        ax = fig.add_subplot()
    import matplotlib

    cmap = matplotlib.colormaps["RdBu_r"].with_extremes(bad="0.85")
    image = ax.imshow(data, cmap=cmap, vmin=-LIFT_CLIP, vmax=LIFT_CLIP, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(groups)), [f"{g}" for _, g in groups], rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(words)), words, fontsize=7)
    if not words:
        ax.text(0.5, 0.5, "no defined word-group association", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("group (attribute order: " + ", ".join(dict.fromkeys(a for a, _ in groups)) + ")")
    ax.set_title("caption lift, log2(n_both / expected)", fontsize=9)
    ax.figure.colorbar(image, ax=ax, shrink=0.8, label="log2 lift (grey: undefined)")
    return ax


def save_lift_heatmap(table, path: str | Path, *, top: int = 30) -> Path:
    """Draw :func:`lift_heatmap` and write it atomically to ``path`` (PNG)."""
    from clipprobe._io import atomic_path

    ax = lift_heatmap(table, top=top)
    path = Path(path)
    with atomic_path(path, suffix=path.suffix) as tmp:
        ax.figure.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=150)
    return path
