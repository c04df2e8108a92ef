"""The files of ``clipprobe balance measure`` and ``balance fit``: tables, a figure, ``run.json``.

``bias_groups.parquet``: data RB per group (share of the group among the captions that mention one,
its interval, the target share, ``rb = share - target`` with its interval), one block of rows per
``data``: ``before`` (the captions as they are), ``after`` (weighted by the keep probabilities q) and
``kept`` (the captions the keep flags keep: ``q x count`` of each pattern, rounded).
``bias_cells.parquet``: data AB per group x label (the label's rate among the group's captions and
among the other groups', the difference ``ab`` with its interval), the same blocks.
``patterns.parquet``: the distinct (groups, labels) patterns with their captions (and q, kept captions
after a fit). After a fit also ``residuals.parquet`` (each constraint's value on the data weighted by
q and on the captions the flags keep, its bound and duals) and ``convergence.parquet`` (one row per
dual evaluation). ``balance.png``/``.pdf``: RB per group and the largest AB cells, before and after.
``run.json`` is written last: a folder with it is complete.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FILES = {"groups": "bias_groups.parquet", "cells": "bias_cells.parquet", "patterns": "patterns.parquet",
         "residuals": "residuals.parquet", "convergence": "convergence.parquet", "weights": "weights.parquet",
         "figure": "balance", "run": "run.json"}
DATA_ORDER = ("before", "after", "kept")
TOP_CELLS = 12

# How captions that mention no group or several groups enter the statistics and the constraints
# (the definitions are those of clipprobe.analysis.balance; this text goes into run.json).
MENTION_NOTE = (
    "A caption that mentions no group of the attribute is outside the attribute's population: it enters "
    "none of the statistics and none of the constraints, and M4 keeps it at the requested keep rate. A "
    "caption that mentions j groups counts 1/j in each of them (so the group shares of the mentioning "
    "captions sum to 1); 'a man and a woman' is balanced on its own. With one group per example (an "
    "attribute column) the definitions are the paper's.")


def bias_frames(biases: dict[str, object]) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(groups, cells) tables of several :class:`~clipprobe.analysis.balance.DataBias`, keyed by ``data``."""
    import pandas as pd

    groups, cells = [], []
    for name in DATA_ORDER:
        bias = biases.get(name)
        if bias is None:
            continue
        g = bias.group_frame()
        g.insert(0, "data", name)
        c = bias.cell_frame()
        c.insert(0, "data", name)
        groups.append(g)
        cells.append(c)
    return pd.concat(groups, ignore_index=True), pd.concat(cells, ignore_index=True)


def patterns_frame(table, q=None, kept=None) -> "pd.DataFrame":
    """One row per distinct pattern: its groups and labels (lists), utility bin, captions, mean utility,
    for a soft table each group's membership (``membership_<group>``), and, after a fit, its keep
    probability and the captions the flags keep."""
    import numpy as np
    import pandas as pd

    s, y = table.s, table.y
    groups = np.asarray(table.groups, dtype=object)
    labels = np.asarray(table.labels, dtype=object)
    out = pd.DataFrame({
        "groups": [list(groups[row]) for row in s],
        "labels": [list(labels[row]) for row in y],
        "utility_bin": table.ubin.astype(np.int32),
        "count": table.count.astype(np.int64),
        "utility_mean": table.u_mean,
    })
    if getattr(table, "soft", False):          # soft memberships E[s_k] (the groups above are those above 0)
        for k, g in enumerate(table.groups):
            out[f"membership_{g}"] = table.membership[:, k]
    if q is not None:
        out["q"] = np.asarray(q, np.float64)
    if kept is not None:
        out["kept"] = np.asarray(kept, np.int64)
    return out


def rb_plot(groups: "pd.DataFrame", *, ax=None):
    """Each group's share of the mentioning captions (with its interval) per ``data`` block, and the target;
    returns the Axes (its legend, right of the plot, names the blocks)."""
    import numpy as np

    from clipprobe.report import figures as F

    with F.style():
        names = list(dict.fromkeys(groups["group"]))
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 1.0 + 0.3 * len(names))
        y = np.arange(len(names))
        blocks = [d for d in DATA_ORDER if d in set(groups["data"])]
        for j, name in enumerate(blocks):
            part = groups[groups["data"] == name].set_index("group").loc[names]
            x = part["share"].to_numpy(float)
            color, marker = F.series_style(j)
            ax.errorbar(x, y + (j - (len(blocks) - 1) / 2) * 0.22, xerr=F._errors(x, part["share_low"],
                                                                                   part["share_high"]),
                        fmt=marker, ms=F.scaled(3.5), capsize=0, lw=F.scaled(0.9), color=color, label=name)
        target = groups[groups["data"] == blocks[0]].set_index("group").loc[names, "target"].to_numpy(float)
        ax.scatter(target, y, marker="|", s=F.scaled(120), color="0.3", label="target", zorder=0)
        ax.set_yticks(y, [F.short(n, 20) for n in names])
        ax.set_ylim(len(names) - 0.5, -0.5)
        ax.set_xlabel("share of the captions that mention a group")
        ax.set_title("Representation (RB)", **F.TITLE_AT_TOP)
        F.legend_right(ax)
    return ax


def ab_plot(cells: "pd.DataFrame", *, top: int = TOP_CELLS, ax=None):
    """The ``top`` group x label cells of largest |AB| before balancing, with their AB per ``data`` block;
    returns the Axes (its legend, right of the plot, names the blocks)."""
    import numpy as np

    from clipprobe.report import figures as F

    with F.style():
        blocks = [d for d in DATA_ORDER if d in set(cells["data"])]
        first = cells[cells["data"] == blocks[0]].copy()
        first["size"] = first["ab"].abs()
        chosen = first.dropna(subset=["ab"]).sort_values("size", ascending=False).head(top)
        keys = list(zip(chosen["group"], chosen["label"]))
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 1.0 + 0.28 * max(len(keys), 1))
        y = np.arange(len(keys))
        for j, name in enumerate(blocks):
            part = cells[cells["data"] == name].set_index(["group", "label"])
            if not keys:
                break
            sel = part.loc[keys]
            x = sel["ab"].to_numpy(float)
            color, marker = F.series_style(j)
            ax.errorbar(x, y + (j - (len(blocks) - 1) / 2) * 0.22, xerr=F._errors(x, sel["ab_low"], sel["ab_high"]),
                        fmt=marker, ms=F.scaled(3.5), capsize=0, lw=F.scaled(0.9), color=color, label=name)
        ax.axvline(0.0, color="0.6", lw=F.scaled(0.6), ls="--")
        ax.set_yticks(y, [f"{F.short(g, 14)} / {F.short(lab, 16)}" for g, lab in keys])
        ax.set_ylim(len(keys) - 0.5, -0.5)
        ax.set_xlabel("P(label | group) - P(label | others)")
        ax.set_title("Association (AB), largest cells", **F.TITLE_AT_TOP)
        if keys:
            F.legend_right(ax)
    return ax


def balance_figure(groups: "pd.DataFrame", cells: "pd.DataFrame", *, top: int = TOP_CELLS):
    """RB (left) and the largest AB cells (right) in one page-wide figure; returns the Figure."""
    from clipprobe.report import figures as F

    n = max(groups["group"].nunique(), min(top, len(cells)))
    with F.style():
        fig = F.new_figure(F.PAGE_WIDTH, 1.1 + 0.3 * n)
        left, right = fig.subplots(1, 2, width_ratios=[1, 1.25])
    rb_plot(groups, ax=left)
    ab_plot(cells, top=top, ax=right)
    return fig


def write_balance(out, tables: dict[str, "pd.DataFrame"], record: dict, *, figure: bool = True) -> list[Path]:
    """Write the tables present in ``tables`` (keys of :data:`FILES`), the figure (from ``groups`` and
    ``cells``; unless ``figure`` is false) and, last, ``run.json``. A ``run.json`` left from an earlier
    run is removed first, and so are the tables and the figure of an earlier run that this one does not
    write: the folder holds one run's files."""
    from clipprobe import _io

    out = _io.ensure_dir(out)
    (out / FILES["run"]).unlink(missing_ok=True)
    written = []
    for name in ("groups", "cells", "patterns", "residuals", "convergence"):
        if name in tables:
            _io.write_parquet(out / FILES[name], tables[name])
            written.append(out / FILES[name])
        else:                       # a table of an earlier run of another command (a fit's, after a measure)
            (out / FILES[name]).unlink(missing_ok=True)
    if not figure:
        for suffix in (".png", ".pdf", ".svg"):
            (out / (FILES["figure"] + suffix)).unlink(missing_ok=True)
    else:
        try:
            from clipprobe.report.figures import save_figure

            written += save_figure(balance_figure(tables["groups"], tables["cells"]), out / FILES["figure"])
        except ImportError as err:   # matplotlib missing: the tables are the result
            log.warning("no figure: %s", err)
    _io.write_json(out / FILES["run"], record)
    written.append(out / FILES["run"])
    return written


def summary_lines(groups: "pd.DataFrame", cells: "pd.DataFrame", blocks: Sequence[str] = DATA_ORDER) -> list[str]:
    """One line per data block: data RB and AB (max |.|) with where they are."""
    lines = []
    for name in blocks:
        g = groups[groups["data"] == name]
        c = cells[cells["data"] == name]
        if g.empty:
            continue
        gi = g["rb"].abs().idxmax() if g["rb"].notna().any() else None
        ci = c["ab"].abs().idxmax() if c["ab"].notna().any() else None
        rb = f"{abs(g.loc[gi, 'rb']):.4f} ({g.loc[gi, 'group']})" if gi is not None else "n/a"
        ab = f"{abs(c.loc[ci, 'ab']):.4f} ({c.loc[ci, 'group']} / {c.loc[ci, 'label']})" if ci is not None else "n/a"
        lines.append(f"{name:>6}: data RB {rb}, data AB {ab}")
    return lines
