"""Figures of caption co-occurrence: the word x group lift heatmap.

Plot functions take the ``cooccurrence.parquet`` table and ``ax=None`` and
return the Axes (a new Agg figure in the active style of :mod:`clipprobe.figstyle` when ``ax`` is None).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

LIFT_CLIP = 3.0   # colour range of log2(lift): +/- 3 = 8x over / under the independence expectation


def strongest_words(table, top: int = 30, *, min_both: int = 5) -> list[str]:
    """Words with the largest log-odds for any group (cells with >= min_both captions first), among the
    rows whose association is defined (a word or group that occurs in no caption has no log-odds)."""
    from clipprobe.analysis.cooccurrence import defined_rows

    table = defined_rows(table)
    rows = table[table["n_both"] >= min_both]
    if rows.empty:
        rows = table
    best = rows.groupby("word", sort=False)["log_odds"].max().sort_values(ascending=False, kind="stable")
    return list(best.index[:top])


def lift_heatmap(table, *, top: int = 30, words=None, ax=None):
    """log2(lift) of each (word, group) cell for the ``top`` strongest words; returns the Axes. Cells whose
    association is undefined (word or group in no caption) are grey, whatever the table holds there.
    One column wide up to 8 groups, both columns beyond (:mod:`clipprobe.figstyle`)."""
    import numpy as np

    from clipprobe import figstyle as F
    from clipprobe.analysis.cooccurrence import defined_rows

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
    attributes = list(dict.fromkeys(a for a, _ in groups))
    with F.style():
        if ax is None:
            width = F.COLUMN_WIDTH if len(groups) <= 8 else F.PAGE_WIDTH
            ax = F.new_axes(width, 1.6 + 0.14 * max(len(words), 2))
        image = ax.imshow(data, cmap=F.cmap(F.DIVERGING_CMAP), vmin=-LIFT_CLIP, vmax=LIFT_CLIP, aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(len(groups)), [F.short(g, 20) for _, g in groups], rotation=45, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(range(len(words)), [F.short(w) for w in words])
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        for i in range(1, len(attributes)):          # a thin line between the attributes' groups
            edge = sum(1 for a, _ in groups if a in attributes[:i]) - 0.5
            ax.axvline(edge, color="white", lw=F.scaled(1.2))
        if not words:
            ax.text(0.5, 0.5, "no defined word-group association", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("group (" + ", then ".join(F.literal(a) for a in attributes) + ")")
        ax.set_title("Caption lift, log2(captions with both / expected)", **F.TITLE_AT_TOP)
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
        bar.set_label(F.LABELS["lift"])
        bar.outline.set_linewidth(F.scaled(0.4))
    return ax


def save_lift_heatmap(table, path: str | Path, *, top: int = 30) -> Path:
    """Draw :func:`lift_heatmap` and write it atomically to ``path`` (PNG), with a vector PDF and SVG of the
    same name beside it; returns ``path``."""
    from clipprobe.figstyle import FIGURE_FORMATS, save_figure

    ax = lift_heatmap(table, top=top)
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    formats = (fmt,) + tuple(f for f in FIGURE_FORMATS if f != fmt)
    save_figure(ax.figure, path.with_suffix("") if path.suffix else path, formats=formats)
    return path
