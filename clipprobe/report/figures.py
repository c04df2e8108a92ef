"""Paper figures of a bias report, drawn from the report's tables alone.

Every plot function takes DataFrames (the tables of a report folder, see
:mod:`clipprobe.report.store`) and ``ax=None``; it draws on ``ax`` or on a new
figure sized for one journal column (3.3 in wide; 6.9 in, both columns, for
wide heatmaps) and returns the Axes, so callers can restyle it and tests can
read the data and labels back. :func:`word_skew_panels` draws small multiples
(one panel per word) and returns its Figure. Sizes, fonts, colours, labels and
the writing of figures (fitted to their canvas, PNG at 300 dpi beside vector PDF
and SVG) are :mod:`clipprobe.figstyle`'s, re-exported here.

Two sets of figures are written from a report (:func:`report_figures`):

- ``"core"`` (what ``clipprobe report`` writes): a skew heatmap per attribute,
  the entropy-by-category plot, and for each attribute with a flagged pair (the
  first attribute when none has one) the most skewed words over all categories
  (flagged, and filled markers: by the test against the control queries where
  it ran, else the hypergeometric test): a dot plot for an attribute of at most
  :data:`DOT_PLOT_GROUPS` groups, small multiples for more (``race_gender``:
  one row per race, the genders as two series);
- ``"all"`` (what ``clipprobe figures`` writes): the core set plus, per
  category, a word skew plot per attribute and a stability plot.

A group with no face in a word's top-k has no skew: it is drawn as an ``x`` in
the shaded strip at the left of the skew axis, without an interval
(:func:`clipprobe.figstyle.draw_zero_faces`).

Tall plots keep the most skewed (or least stable) words that fit
:data:`MAX_HEIGHT` and say so in their title ("12 most skewed of 167 words");
``max_words`` overrides that, 0 keeps every word.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from clipprobe._io import ensure_dir
from clipprobe.errors import UsageError, one_of
from clipprobe.faces import ATTRIBUTES, RACE_GENDER_SEP
from clipprobe.figstyle import (  # noqa: F401  (re-exported: the report modules draw with them)
    ANNOTATION_SIZE, COLUMN_WIDTH, DEFAULT_STYLE, DIVERGING_CMAP, FIGURE_FORMATS, FIGURE_STYLES, LABELS, MARKERS,
    OKABE_ITO, PAGE_WIDTH, PNG_COMPRESS_LEVEL, PNG_DPI, STYLE, TITLE_AT_TOP, ZERO_COLOR, ZERO_STRIP, FigureStyle, cmap,
    draw_zero_faces, errors, fit_to_canvas, freeze_layout, get_style, group_styles, legend_columns, legend_right, literal,
    new_axes, new_figure, outside_canvas, png_bytes, save_figure, save_figure_file, scaled, series_style, set_skew_axis,
    short, skew_limits, slug, style, ticks, use_style, zero_faces, zero_legend_handle)
from clipprobe.report.store import categories_of, explode_categories

log = logging.getLogger(__name__)

HEATMAP_COLUMN_GROUPS = 7  # a heatmap with more groups is page-wide: its annotated cells stay legible
DOT_PLOT_GROUPS = 3  # an attribute with more groups gets small multiples (one panel per word), not one crowded axes
PANEL_COLUMNS = 4  # panels per row of small multiples (page width)
PANEL_WORDS_MAX = 16  # at most this many panels in a core "most skewed words" figure
MAX_HEIGHT = 8.5  # inches: tall plots keep the words that fit one page
TOP_WORDS_MAX = 30  # at most this many words in a core "most skewed words" plot
FIGURE_SETS = ("core", "all")
MSG_MAX_WORDS = "max_words must be 0 (every word) or a positive number, got {value}"
SKEW_LABEL = LABELS["skew"]

# the names the other report modules use
_new_axes, _errors, _legend_columns, _cmap, _ticks = new_axes, errors, legend_columns, cmap, ticks


def _group_order(groups, attribute: str) -> list[str]:
    rows = groups[groups["attribute"] == attribute]
    return list(dict.fromkeys(rows["group"].astype(str)))


def _check_attribute(df, attribute: str) -> None:
    present = list(dict.fromkeys(df["attribute"].astype(str)))
    if attribute not in present:
        raise one_of(attribute, present, "attribute")


# --------------------------------------------------------------------------- data views


def category_group_skew(groups, attribute: str, *, categories: Sequence[str] | None = None):
    """Mean skew of each category (rows) and group (columns) for one attribute.

    A word in two categories counts in both. Groups keep the report's order;
    categories are sorted (or as given).
    """
    _check_attribute(groups, attribute)
    rows = explode_categories(groups[groups["attribute"] == attribute])
    table = rows.pivot_table(index="category", columns="group", values="skew", aggfunc="mean")
    order = _group_order(groups, attribute)
    table = table.reindex(columns=[g for g in order if g in table.columns])
    if categories is not None:
        missing = [c for c in categories if c not in table.index]
        if missing:
            raise one_of(missing[0], list(table.index), "category")
        table = table.reindex(index=list(categories))
    return table.sort_index() if categories is None else table


def compound_groups(attribute: str, groups: Sequence[str]) -> dict[str, tuple[str, str]] | None:
    """``race_gender`` groups split into (race, gender) at the last :data:`~clipprobe.faces.RACE_GENDER_SEP`
    (``"Latino_Hispanic_Male"`` -> ``("Latino_Hispanic", "Male")``); None for another attribute or for
    groups that do not split into a grid of at most four second parts."""
    if attribute != "race_gender" or not groups:
        return None
    parts = {}
    for g in groups:
        if RACE_GENDER_SEP not in str(g):
            return None
        first, second = str(g).rsplit(RACE_GENDER_SEP, 1)
        if not first or not second:
            return None
        parts[str(g)] = (first, second)
    if len(set(parts.values())) != len(parts) or len({b for _, b in parts.values()}) > 4:
        return None
    return parts


# --------------------------------------------------------------------------- plots


def skew_heatmap(groups, attribute: str, *, categories: Sequence[str] | None = None,
                 annotate: bool | None = None, ax=None):
    """Heatmap of category x group mean skew for one attribute, centred at 0.

    ``annotate`` writes the value in each cell (default: when there are at most
    160 cells and a value fits its cell; two decimals, one in narrow cells). More
    than :data:`HEATMAP_COLUMN_GROUPS` groups make it page-wide. Returns the Axes; its image holds
    :func:`category_group_skew`.
    """
    import numpy as np
    from matplotlib.colors import Normalize

    table = category_group_skew(groups, attribute, categories=categories)
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    with style():
        if ax is None:
            width = PAGE_WIDTH if heatmap_is_wide(n_cols) else COLUMN_WIDTH
            ax = new_axes(width, 1.3 + 0.22 * max(n_rows, 2))
        finite = values[np.isfinite(values)]
        vmax = float(np.abs(finite).max()) if finite.size else 1.0
        vmax = max(vmax, 0.1)
        cmap = _cmap(DIVERGING_CMAP)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=Normalize(-vmax, vmax), aspect="auto",
                          interpolation="nearest")
        ax.set_xticks(range(n_cols), _ticks(table.columns), rotation=45, ha="right",
                      rotation_mode="anchor")
        ax.set_yticks(range(n_rows), _ticks(table.index))
        ax.tick_params(length=0)
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_title(f"Mean skew by category and group ({literal(attribute)})", **TITLE_AT_TOP)
        digits = _cell_digits(ax.figure.get_figwidth() / get_style().size_scale, n_cols,
                              max((len(str(c)) for c in table.index), default=1))
        if annotate is None:
            annotate = n_rows * n_cols <= 160 and digits > 0
        if annotate:
            for i in range(n_rows):
                for j in range(n_cols):
                    v = values[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.{max(digits, 1)}f}", ha="center", va="center",
                                fontsize=scaled(ANNOTATION_SIZE), color="white" if abs(v) > 0.6 * vmax else "black")
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        bar.set_label(LABELS["mean_skew"])
        bar.outline.set_linewidth(scaled(0.4))
    return ax


def _cell_digits(width: float, n_cols: int, label_chars: int) -> int:
    """Decimals that fit a heatmap cell (2, 1, or 0: none) of a figure ``width`` paper-style inches wide
    with ``n_cols`` columns, row labels of ``label_chars`` characters and a colour bar."""
    cell = (width - 0.95 - 0.045 * min(label_chars, 28)) / max(n_cols, 1)
    scale = get_style().font_scale / get_style().size_scale
    return 2 if cell >= 0.34 * scale else 1 if cell >= 0.2 * scale else 0


def heatmap_is_wide(n_groups: int) -> bool:
    """Whether a heatmap of ``n_groups`` columns takes the page width (else one column)."""
    return n_groups > HEATMAP_COLUMN_GROUPS


def entropy_by_category(summary, *, attributes: Sequence[str] | None = None, ax=None):
    """Mean normalized entropy per category, one series per attribute (no interval: none measured to cover).

    1 means the top-k matches a uniform spread over the attribute's groups, 0 that
    it holds a single group. Categories are ordered from least to most balanced.
    """
    import numpy as np

    present = list(dict.fromkeys(summary["attribute"].astype(str)))
    if attributes is None:
        attributes = [a for a in ATTRIBUTES if a in present] + [a for a in present if a not in ATTRIBUTES]
    for a in attributes:
        if a not in present:
            raise one_of(a, present, "attribute")
    rows = summary[summary["attribute"].isin(attributes)]
    order = rows.groupby("category")["mean_norm_entropy"].mean().sort_values().index.tolist()
    n = len(order)
    offsets = np.linspace(-0.25, 0.25, len(attributes)) if len(attributes) > 1 else [0.0]
    with style():
        if ax is None:
            ax = new_axes(COLUMN_WIDTH, 0.9 + 0.25 * max(n, 2))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr].set_index("category").reindex(order)
            y = np.arange(n) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.plot(part["mean_norm_entropy"].to_numpy(dtype=float), y, marker, color=color, ms=scaled(3.2),
                    label=attr)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1.02)
        ax.axvline(1.0, color="0.6", lw=scaled(0.6), ls="--", zorder=0)
        ax.set_xlabel(LABELS["norm_entropy"])
        ax.set_title("Diversity of the top-k by category", **TITLE_AT_TOP)
        ax.grid(axis="x", color="0.9", lw=scaled(0.5))
        ax.set_axisbelow(True)
        if len(attributes) > 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                             ncol=min(len(attributes), 4), handletextpad=0.2, columnspacing=0.8)
    return ax


def fit_words(per_word: float, fixed: float, *, limit: int | None = None) -> int:
    """How many rows of ``per_word`` inches fit :data:`MAX_HEIGHT` after ``fixed`` inches (at least 5)."""
    n = max(5, int((MAX_HEIGHT - fixed) // per_word))
    return min(n, limit) if limit else n


def _keep_words(order: list[str], max_words: int | None, auto: int) -> list[str]:
    """``order`` cut to ``max_words`` (None: ``auto``; 0: keep all)."""
    if max_words is None:
        max_words = auto
    if max_words < 0:
        raise UsageError(MSG_MAX_WORDS.format(value=max_words))
    return order if max_words == 0 else order[:max_words]


def _shown_note(n: int, total: int, what: str) -> str:
    return "" if n >= total else f"\n{n} {what} of {total} words"


def _word_rows(groups, category: str | None, attribute: str, words: Sequence[str] | None):
    """The group rows of ``attribute`` (of ``category``, of ``words``) and their words, most skewed first."""
    _check_attribute(groups, attribute)
    rows = groups[groups["attribute"] == attribute]
    if category is not None:
        rows = explode_categories(rows)
        cats = sorted(set(rows["category"]))
        if category not in cats:
            raise one_of(category, cats, "category")
        rows = rows[rows["category"] == category]
    if words is not None:
        missing = [w for w in words if w not in set(rows["word"])]
        if missing:
            raise one_of(missing[0], sorted(set(rows["word"])), "word")
        rows = rows[rows["word"].isin(words)]
    order = rows.groupby("word")["skew"].max().sort_values(ascending=False, kind="stable").index.tolist()
    return rows, order


def _unflagged_label(flag: str) -> str:
    return "not flagged vs controls" if flag == "flagged_vs_controls" else "not flagged (hypergeom.)"


def _draw_skews(ax, part, y, color, marker, flag: str, *, size: float = 12):
    """One series of a skew plot: intervals and markers (filled: flagged) of the rows with faces in the top-k;
    returns the heights of the rows without (to draw with :func:`draw_zero_faces`)."""
    import numpy as np

    from clipprobe.analysis.probe import flag_mask

    zero = zero_faces(part)
    measured = ~zero
    skew = part["skew"].to_numpy(dtype=float)
    err = _errors(skew, part["skew_ci_low"], part["skew_ci_high"])
    if measured.any():
        ax.errorbar(skew[measured], y[measured], xerr=err[:, measured], fmt="none", ecolor=color,
                    elinewidth=scaled(0.7), alpha=0.8)
    flagged = np.asarray(flag_mask(part, flag), dtype=bool) & measured
    hollow = ~flagged & measured
    ax.scatter(skew[flagged], y[flagged], s=scaled(size), marker=marker, color=color, lw=scaled(0.7), zorder=3)
    ax.scatter(skew[hollow], y[hollow], s=scaled(size), marker=marker, facecolors="white", edgecolors=color,
               lw=scaled(0.7), zorder=3)
    return y[zero]


def _measured_limits(rows):
    zero = zero_faces(rows)
    part = rows[~zero]
    return skew_limits(part["skew"], part["skew_ci_low"], part["skew_ci_high"])


def word_skew_dots(groups, category: str | None, attribute: str, *, words: Sequence[str] | None = None,
                   max_words: int | None = None, ax=None):
    """Per-word dot plot of each group's skew with its interval, for one category.

    One row per word (largest max skew first), one colour per group; filled
    markers are flagged pairs by the headline flag (``flagged_vs_controls``, the
    test against control queries, where it ran; else ``flagged``, the
    hypergeometric test: :func:`clipprobe.analysis.probe.headline_flag`), hollow
    ones are not; the legend says which flag. A group with no face in the top-k
    has no skew: it is an ``x`` in its colour in the shaded strip at the left
    (:func:`draw_zero_faces`), without an interval. ``category=None`` takes the
    words of every category. ``max_words`` keeps the most skewed words: by default
    as many as fit :data:`MAX_HEIGHT`, 0 keeps them all; the title says when words
    were left out. For attributes with many groups, :func:`word_skew_panels` is
    the readable form.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    from clipprobe.analysis.probe import headline_flag

    flag = headline_flag(groups)
    rows, order = _word_rows(groups, category, attribute, words)
    total = len(order)
    styles = group_styles(_group_order(groups, attribute))
    group_order = [g for g in styles if g in set(rows["group"].astype(str))]
    m = len(group_order)
    legend_h = 0.12 * math.ceil((m + 2) / 4)
    order = _keep_words(order, max_words, fit_words(0.045 * max(m, 1), 1.0 + legend_h))
    rows = rows[rows["word"].isin(order)]
    n = len(order)
    offsets = np.linspace(-0.3, 0.3, m) if m > 1 else np.zeros(1)
    ypos = {w: i for i, w in enumerate(order)}
    with style():
        if ax is None:
            ax = new_axes(COLUMN_WIDTH, 1.0 + 0.045 * m * max(n, 2) + legend_h + 0.1 * (n < total))
        handles = []
        zero_y, zero_colors = [], []
        for j, group in enumerate(group_order):
            part = rows[rows["group"].astype(str) == group]
            y = np.array([ypos[w] for w in part["word"]], dtype=float) + offsets[j]
            color, marker = styles[group]
            zy = _draw_skews(ax, part, y, color, marker, flag)
            zero_y += list(zy)
            zero_colors += [color] * len(zy)
            handles.append(Line2D([], [], ls="none", marker=marker, color=color, ms=scaled(3.5), label=short(group)))
        set_skew_axis(ax, _measured_limits(rows))
        draw_zero_faces(ax, zero_y, colors=zero_colors)
        ax.axvline(0, color="0.4", lw=scaled(0.6), zorder=0)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel(SKEW_LABEL)
        head = f"{short(category, 40)}: skew by group" if category is not None else "Most skewed words"
        ax.set_title(f"{head} ({literal(attribute)})" + _shown_note(n, total, "most skewed"), **TITLE_AT_TOP)
        ax.grid(axis="x", color="0.92", lw=scaled(0.5))
        ax.set_axisbelow(True)
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=scaled(3.5),
                              label=_unflagged_label(flag)))
        if zero_y:
            handles.append(zero_legend_handle())
        ax.figure.legend(handles=handles, loc="outside lower center",
                         ncol=_legend_columns(ax.figure, [h.get_label() for h in handles]),
                         handletextpad=0.1, columnspacing=0.8)
    return ax


PANEL_ROW = 0.1  # inches per group row of a panel
PANEL_HEAD = 0.32  # inches per panel for its title and gaps
PANEL_FIXED = 0.9  # inches of a panel figure for its title, x label and legend


def _panel_geometry(n_rows: int) -> float:
    return PANEL_HEAD + PANEL_ROW * max(n_rows, 2)


def panel_words(attribute_groups: Sequence[str], attribute: str, *, limit: int | None = None) -> int:
    """How many panels of an attribute with these groups fit :data:`MAX_HEIGHT` (at most ``limit``)."""
    split = compound_groups(attribute, list(attribute_groups))
    n_rows = len({a for a, _ in split.values()}) if split else len(attribute_groups)
    rows_fit = max(1, int((MAX_HEIGHT - PANEL_FIXED) // _panel_geometry(n_rows)))
    n = rows_fit * PANEL_COLUMNS
    return min(n, limit) if limit else n


def word_skew_panels(groups, category: str | None, attribute: str, *, words: Sequence[str] | None = None,
                     max_words: int | None = None, columns: int = PANEL_COLUMNS):
    """Small multiples of the skew of every group, one panel per word (most skewed first), on one shared
    skew axis; returns the Figure (page-wide; its axes in reading order, titled by word).

    In each panel the groups are rows with their skew and interval; filled markers are flagged pairs by
    the headline flag, hollow ones are not, and a group with no face in the top-k is an ``x`` in the
    shaded strip at the left (no skew, no interval). ``race_gender`` groups are split: rows are races,
    the two genders are two series in the colours and markers of the ``gender`` plots.
    ``category=None`` takes the words of every category; ``max_words`` keeps the most skewed words: by
    default the panels that fit :data:`MAX_HEIGHT`, 0 keeps them all; the title says when words were left
    out.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    from clipprobe.analysis.probe import headline_flag

    flag = headline_flag(groups)
    rows, order = _word_rows(groups, category, attribute, words)
    total = len(order)
    present = set(rows["group"].astype(str))
    group_order = [g for g in _group_order(groups, attribute) if g in present]
    split = compound_groups(attribute, group_order)
    if split:
        row_labels = list(dict.fromkeys(a for a, _ in split.values()))
        series = list(dict.fromkeys(b for _, b in split.values()))
        where = {g: (row_labels.index(a), series.index(b)) for g, (a, b) in split.items()}
    else:
        row_labels, series = group_order, [None]
        where = {g: (i, 0) for i, g in enumerate(group_order)}
    order = _keep_words(order, max_words, panel_words(group_order, attribute))
    rows = rows[rows["word"].isin(order)]
    n = len(order)
    ncols = max(1, min(columns, n))
    nrows = max(1, math.ceil(n / ncols))
    s = len(series)
    offsets = np.linspace(-0.2, 0.2, s) if s > 1 else np.zeros(1)
    with style():
        panel_h = _panel_geometry(len(row_labels))
        fig = new_figure(PAGE_WIDTH, PANEL_FIXED + 0.1 * (n < total) + nrows * panel_h)
        # the legend gets a row of its own above the panels: a figure legend would collide with the
        # title or the shared x label
        grid = fig.add_gridspec(nrows + 1, ncols, height_ratios=[0.2] + [panel_h] * nrows)
        legend_ax = fig.add_subplot(grid[0, :])
        legend_ax.axis("off")
        axes = []
        for i in range(n):
            r, c = divmod(i, ncols)
            ax = fig.add_subplot(grid[r + 1, c], sharex=axes[0] if axes else None, sharey=axes[0] if axes else None)
            ax.tick_params(labelleft=c == 0, labelbottom=i + ncols >= n)
            axes.append(ax)
        styles = [series_style(i) if s > 1 else (OKABE_ITO[0], "o") for i in range(s)]
        for ax, word in zip(axes, order):
            part = rows[rows["word"] == word]
            zero_y, zero_colors = [], []
            for k_series in range(s):
                keep = np.array([where[str(g)][1] == k_series for g in part["group"]], dtype=bool)
                sub = part[keep]
                y = np.array([where[str(g)][0] for g in sub["group"]], dtype=float) + offsets[k_series]
                color, marker = styles[k_series]
                zy = _draw_skews(ax, sub, y, color, marker, flag, size=10)
                zero_y += list(zy)
                zero_colors += [color if s > 1 else ZERO_COLOR] * len(zy)
            draw_zero_faces(ax, zero_y, colors=zero_colors)
            ax.axvline(0, color="0.4", lw=scaled(0.5), zorder=0)
            ax.grid(axis="x", color="0.92", lw=scaled(0.5))
            ax.set_axisbelow(True)
            ax.set_title(short(word, 26), fontsize=scaled(7), loc="left", pad=2)
        first = axes[0]
        limits = _measured_limits(rows)
        for ax in axes:
            set_skew_axis(ax, limits)
        first.set_yticks(range(len(row_labels)), [short(r, 20) for r in row_labels])
        first.set_ylim(len(row_labels) - 0.5, -0.5)
        head = f"{short(category, 40)}: skew by group" if category is not None else "Most skewed words"
        fig.suptitle(f"{head} ({literal(attribute)})" + _shown_note(n, total, "most skewed").replace("\n", ", "))
        fig.supxlabel(SKEW_LABEL)
        if s > 1:
            handles = [Line2D([], [], ls="none", marker=styles[i][1], color=styles[i][0], ms=scaled(3.5),
                              label=short(series[i])) for i in range(s)]
        else:
            handles = [Line2D([], [], ls="none", marker="o", color=OKABE_ITO[0], ms=scaled(3.5),
                              label="flagged" if flag == "flagged" else "flagged vs controls")]
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=scaled(3.5),
                              label=_unflagged_label(flag)))
        if zero_faces(rows).any():
            handles.append(zero_legend_handle())
        legend_ax.legend(handles=handles, loc="center", ncol=_legend_columns(fig, [h.get_label() for h in handles]),
                         handletextpad=0.1, columnspacing=0.8, borderaxespad=0)
    return fig


def stability_dots(words, *, category: str | None = None, attributes: Sequence[str] | None = None,
                   max_words: int | None = None, ax=None):
    """How often the top group (the most over-represented one) survives a bootstrap resample, per word.

    One row per word (of ``category`` when given), least stable first, one
    colour per attribute; 1 means every resample agreed with the reported top
    group. ``max_words`` keeps the least stable words: by default as many as fit
    :data:`MAX_HEIGHT`, 0 keeps them all; the title says when words were left out.
    """
    import numpy as np

    rows = explode_categories(words) if category is not None else words
    if category is not None:
        cats = sorted(set(rows["category"]))
        if category not in cats:
            raise one_of(category, cats, "category")
        rows = rows[rows["category"] == category]
    present = list(dict.fromkeys(rows["attribute"].astype(str)))
    if attributes is None:
        attributes = [a for a in ATTRIBUTES if a in present] + [a for a in present if a not in ATTRIBUTES]
    for a in attributes:
        if a not in present:
            raise one_of(a, present, "attribute")
    rows = rows[rows["attribute"].isin(attributes)].drop_duplicates(["word", "attribute"])
    order = rows.groupby("word")["stability"].mean().sort_values(kind="stable").index.tolist()
    total = len(order)
    order = _keep_words(order, max_words, fit_words(0.22, 1.1))
    rows = rows[rows["word"].isin(order)]
    n = len(order)
    offsets = np.linspace(-0.22, 0.22, len(attributes)) if len(attributes) > 1 else [0.0]
    ypos = {w: i for i, w in enumerate(order)}
    with style():
        if ax is None:
            ax = new_axes(COLUMN_WIDTH, 1.0 + 0.22 * max(n, 2) + 0.1 * (n < total))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr]
            y = np.array([ypos[w] for w in part["word"]], dtype=float) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.scatter(part["stability"], y, s=scaled(10), marker=marker, color=color, label=attr, zorder=3)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel(LABELS["stability"])
        ax.set_title("Bootstrap stability" + (f": {short(category, 40)}" if category else "")
                     + _shown_note(n, total, "least stable"), **TITLE_AT_TOP)
        ax.grid(axis="x", color="0.9", lw=scaled(0.5))
        ax.set_axisbelow(True)
        if len(attributes) > 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                             ncol=_legend_columns(ax.figure, attributes),
                             handletextpad=0.1, columnspacing=0.8)
    return ax


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure of a report, not drawn yet: ``draw()`` builds it and returns its Axes (or its Figure,
    for small multiples); either way ``draw().figure`` is the Figure."""

    stem: str
    caption: str
    draw: Callable[[], Any]
    kind: str  # "heatmap", "entropy", "top_words", "word_skew" or "stability"
    wide: bool = False  # wider than one column
    category: str | None = None  # the category of a per-category figure


def _check_figure_set(figure_set: str) -> None:
    if figure_set not in FIGURE_SETS:
        raise one_of(figure_set, FIGURE_SETS, "figure set")


def core_attributes(report, attributes: Sequence[str] | None = None) -> list[str]:
    """Attributes that get a "most skewed words" plot: those with a flagged pair (by the headline flag:
    :func:`clipprobe.analysis.probe.headline_flag`), else the first."""
    from clipprobe.analysis.probe import flag_mask

    attributes = list(attributes) if attributes else report.attributes
    g = report.groups
    flagged = set(g.loc[flag_mask(g), "attribute"].astype(str))
    chosen = [a for a in attributes if a in flagged]
    return chosen or attributes[:1]


def _in_categories(df, categories: Sequence[str]):
    wanted = set(categories)
    keep = [bool(wanted.intersection(categories_of(v))) for v in df["category"]]
    return df[keep]


def uses_panels(n_groups: int) -> bool:
    """Whether the word skew plots of an attribute with ``n_groups`` groups are small multiples."""
    return n_groups > DOT_PLOT_GROUPS


def figure_specs(report, *, attributes: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                 figure_set: str = "core", max_words: int | None = None) -> list[FigureSpec]:
    """The figures of one set for a report, in order, each with a unique file stem.

    ``"core"``: one skew heatmap per attribute, the entropy-by-category plot and a
    "most skewed words" plot per attribute of :func:`core_attributes`; ``"all"``
    adds, per category, a word skew plot per attribute and a stability plot.
    Word skew plots of an attribute with more than :data:`DOT_PLOT_GROUPS` groups are small
    multiples (:func:`word_skew_panels`), else dot plots (:func:`word_skew_dots`).
    ``attributes`` / ``categories`` restrict them (unknown names are errors
    listing the valid ones); ``max_words`` is passed to the word plots.
    """
    _check_figure_set(figure_set)
    if max_words is not None and max_words < 0:
        raise UsageError(MSG_MAX_WORDS.format(value=max_words))
    valid_attrs, valid_cats = report.attributes, report.categories
    attributes = list(attributes) if attributes else valid_attrs
    for a in attributes:
        if a not in valid_attrs:
            raise one_of(a, valid_attrs, "attribute")
    for c in categories or ():
        if c not in valid_cats:
            raise one_of(c, valid_cats, "category")
    stems: set[str] = set()
    specs: list[FigureSpec] = []

    def add(stem: str, caption: str, draw: Callable[[], Any], kind: str, wide: bool = False,
            category: str | None = None) -> None:
        base, i = stem, 2
        while stem in stems:
            stem, i = f"{base}-{i}", i + 1
        stems.add(stem)
        specs.append(FigureSpec(stem, caption, draw, kind, wide, category))

    groups, words = report.groups, report.words
    for attr in attributes:
        add(f"heatmap_skew_{slug(attr)}", f"Mean skew by category and group ({attr})",
            functools.partial(skew_heatmap, groups, attr), "heatmap",
            wide=heatmap_is_wide(len(report.groups_of(attr))))
    summary = report.summary[report.summary["attribute"].isin(attributes)]
    add("entropy_by_category", "Mean normalized entropy by category",
        functools.partial(entropy_by_category, summary,
                          attributes=[a for a in attributes if a in set(summary["attribute"])]), "entropy")
    top_rows = _in_categories(groups, categories) if categories else groups
    # Restricted to some categories, the plot is another figure: its file name says which.
    within = f"_{slug('-'.join(categories))}" if categories else ""
    from clipprobe.analysis.probe import headline_flag

    filled = ("flagged against the control queries" if headline_flag(groups) == "flagged_vs_controls"
              else "flagged by the hypergeometric test (no control test was run)")
    zero = "; an x in the shaded strip at the left: a group with no face in the top-k (no skew)"
    for attr in core_attributes(report, attributes):
        limit = TOP_WORDS_MAX if max_words is None else max_words
        panels = uses_panels(len(report.groups_of(attr)))
        add(f"top_words_skew_{slug(attr)}{within}", f"Most skewed words: skew by group ({attr}); filled markers "
            f"are pairs {filled}{zero}", _top_words_drawer(top_rows, attr, limit, panels), "top_words",
            wide=panels)
    if figure_set == "all":
        for cat in categories or valid_cats:
            for attr in attributes:
                panels = uses_panels(len(report.groups_of(attr)))
                plot = word_skew_panels if panels else word_skew_dots
                add(f"word_skew_{slug(cat)}_{slug(attr)}", f"{cat}: skew by group ({attr}){zero}",
                    functools.partial(plot, groups, cat, attr, max_words=max_words), "word_skew", wide=panels,
                    category=cat)
            add(f"stability_{slug(cat)}", f"{cat}: bootstrap stability of the top group",
                functools.partial(stability_dots, words, category=cat, attributes=attributes,
                                  max_words=max_words), "stability", category=cat)
    return specs


def _top_words_drawer(groups, attribute: str, limit: int, panels: bool = False) -> Callable[[], Any]:
    def draw():
        order = _group_order(groups, attribute)
        if panels:
            auto = panel_words(order, attribute, limit=min(limit, PANEL_WORDS_MAX) if limit else None)
            return word_skew_panels(groups, None, attribute, max_words=auto if limit else 0)
        m = len(order)
        auto = fit_words(0.045 * max(m, 1), 1.0 + 0.12 * math.ceil((m + 2) / 4), limit=limit or None)
        return word_skew_dots(groups, None, attribute, max_words=auto if limit else 0)

    return draw


def report_figures(report, *, attributes: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                   figure_set: str = "core", max_words: int | None = None) -> Iterator[tuple[str, str, object]]:
    """Yield ``(file stem, caption, Figure)`` for each figure of :func:`figure_specs`, drawn one at a time
    (in the active figure style: :func:`use_style`)."""
    for spec in figure_specs(report, attributes=attributes, categories=categories, figure_set=figure_set,
                             max_words=max_words):
        yield spec.stem, spec.caption, spec.draw().figure


def write_report_figures(report, out_dir, *, attributes: Sequence[str] | None = None,
                         categories: Sequence[str] | None = None, figure_set: str = "core",
                         max_words: int | None = None, formats: Iterable[str] = FIGURE_FORMATS,
                         dpi: int = PNG_DPI, style_name: str = DEFAULT_STYLE,
                         started: float | None = None) -> list[Path]:
    """Write the figures of one set (``"core"`` or ``"all"``) in figure style ``style_name``
    (:data:`FIGURE_STYLES`) as PNG and vector PDF and SVG; return the paths.

    Temporary files that a killed run left in ``out_dir`` (``.NAME.XXXXXXXX.tmp``) and that are
    older than ``started`` (the ``time.time()`` at which the current run began; default: now) are
    removed first.
    """
    import time

    from clipprobe._io import clean_stale_temporaries

    started = time.time() if started is None else started
    _check_figure_set(figure_set)
    get_style(style_name)
    out_dir = ensure_dir(out_dir)
    removed = clean_stale_temporaries(out_dir, before=started)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", len(removed), out_dir)
    formats = tuple(formats)
    paths: list[Path] = []
    with use_style(style_name):
        for stem, _caption, fig in report_figures(report, attributes=attributes, categories=categories,
                                                  figure_set=figure_set, max_words=max_words):
            paths.extend(save_figure(fig, out_dir / stem, formats=formats, dpi=dpi))
    log.info("wrote %d figure files (%s set, %s style) to %s", len(paths), figure_set, style_name, out_dir)
    return paths
