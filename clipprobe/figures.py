"""Paper figures of a bias report, drawn from the report's tables alone.

Every plot function takes DataFrames (the tables of a report folder, see
:mod:`clipprobe.reportio`) and ``ax=None``; it draws on ``ax`` or on a new
figure sized for one journal column (3.3 in wide, two columns for wide
heatmaps) and returns the Axes, so callers can restyle it and tests can read
the data and labels back. Figures are built with the object-oriented API on the
Agg canvas (no pyplot state, no display needed).

Colours: categorical series use the Okabe-Ito palette (safe for the common
colour-vision deficiencies); skew uses a diverging map centred at 0 (blue:
under-represented, red: over-represented).
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from clipprobe._io import atomic_path
from clipprobe.errors import one_of
from clipprobe.reportio import ATTRIBUTES, explode_categories

log = logging.getLogger(__name__)

# Okabe & Ito (2008), reordered so the low-contrast yellow comes last.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P")
DIVERGING_CMAP = "RdBu_r"
COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper
PAGE_WIDTH = 6.9  # inches, both columns

STYLE = {
    "font.size": 7,
    "axes.titlesize": 7.5,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "lines.linewidth": 0.9,
    "pdf.fonttype": 42,  # embed TrueType so text stays text in the PDF
    "svg.fonttype": "none",
}

SKEW_LABEL = "skew = ln(share / base share)"


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings of the paper figures, for the duration of the block."""
    import matplotlib

    with matplotlib.rc_context(STYLE):
        yield


def series_style(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th categorical series (colour cycles first)."""
    return OKABE_ITO[index % len(OKABE_ITO)], MARKERS[(index // len(OKABE_ITO)) % len(MARKERS)]


def _new_axes(width: float, height: float):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    return fig.add_subplot()


def _group_order(groups, attribute: str) -> list[str]:
    rows = groups[groups["attribute"] == attribute]
    return list(dict.fromkeys(rows["group"].astype(str)))


def _check_attribute(df, attribute: str) -> None:
    present = list(dict.fromkeys(df["attribute"].astype(str)))
    if attribute not in present:
        raise one_of(attribute, present, "attribute")


def short(label, limit: int = 28) -> str:
    """A tick label no longer than ``limit`` characters (long ones end with an ellipsis)."""
    text = str(label)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _ticks(labels) -> list[str]:
    return [short(label) for label in labels]


def _legend_columns(fig, labels: Sequence[str]) -> int:
    """As many legend columns as fit the figure's width at the legend font size."""
    longest = max((len(str(label)) for label in labels), default=1)
    per_column = 0.048 * longest + 0.3  # inches at 6 pt, with the marker and spacing
    return max(1, min(len(labels), int((fig.get_figwidth() - 0.1) // per_column), 4))


def _errors(center, low, high):
    """Asymmetric error lengths for errorbar; missing or inverted intervals give 0."""
    import numpy as np

    center, low, high = (np.asarray(v, dtype=float) for v in (center, low, high))
    lo = np.where(np.isfinite(low), np.clip(center - low, 0, None), 0.0)
    hi = np.where(np.isfinite(high), np.clip(high - center, 0, None), 0.0)
    return np.vstack([lo, hi])


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


# --------------------------------------------------------------------------- plots


def skew_heatmap(groups, attribute: str, *, categories: Sequence[str] | None = None,
                 annotate: bool | None = None, ax=None):
    """Heatmap of category x group mean skew for one attribute, centred at 0.

    ``annotate`` writes the value in each cell (default: when there are at most
    120 cells). Returns the Axes; its image holds :func:`category_group_skew`.
    """
    import numpy as np
    from matplotlib.colors import Normalize

    table = category_group_skew(groups, attribute, categories=categories)
    values = table.to_numpy(dtype=float)
    n_rows, n_cols = values.shape
    with style():
        if ax is None:
            width = COLUMN_WIDTH if n_cols <= 9 else PAGE_WIDTH
            ax = _new_axes(width, 1.3 + 0.22 * max(n_rows, 2))
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
        ax.set_title(f"Mean skew by category and group ({attribute})")
        if annotate is None:
            annotate = n_rows * n_cols <= 120
        if annotate:
            for i in range(n_rows):
                for j in range(n_cols):
                    v = values[i, j]
                    if np.isfinite(v):
                        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=5,
                                color="white" if abs(v) > 0.6 * vmax else "black")
        bar = ax.figure.colorbar(image, ax=ax, shrink=0.9, pad=0.02)
        bar.set_label("mean skew")
        bar.outline.set_linewidth(0.4)
    return ax


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#dddddd")


def entropy_by_category(summary, *, attributes: Sequence[str] | None = None, ax=None):
    """Mean normalized entropy per category with its interval, one series per attribute.

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
            ax = _new_axes(COLUMN_WIDTH, 0.9 + 0.25 * max(n, 2))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr].set_index("category").reindex(order)
            y = np.arange(n) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.errorbar(part["mean_norm_entropy"].to_numpy(dtype=float), y,
                        xerr=_errors(part["mean_norm_entropy"], part["mean_norm_entropy_ci_low"],
                                     part["mean_norm_entropy_ci_high"]),
                        fmt=marker, color=color, ms=3.2, elinewidth=0.8, capsize=0, label=attr)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1.02)
        ax.axvline(1.0, color="0.6", lw=0.6, ls="--", zorder=0)
        ax.set_xlabel("mean normalized entropy (1 = balanced)")
        ax.set_title("Diversity of the top-k by category")
        ax.grid(axis="x", color="0.9", lw=0.5)
        ax.set_axisbelow(True)
        if len(attributes) > 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                             ncol=min(len(attributes), 4), handletextpad=0.2, columnspacing=0.8)
    return ax


def word_skew_dots(groups, category: str, attribute: str, *, words: Sequence[str] | None = None,
                   max_words: int | None = None, ax=None):
    """Per-word dot plot of each group's skew with its interval, for one category.

    One row per word (largest max skew first), one colour per group; filled
    markers are flagged pairs (BH-adjusted ``q_over`` below alpha), hollow ones
    are not. ``max_words`` keeps the most skewed words.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    _check_attribute(groups, attribute)
    rows = explode_categories(groups[groups["attribute"] == attribute])
    cats = sorted(set(rows["category"]))
    if category not in cats:
        raise one_of(category, cats, "category")
    rows = rows[rows["category"] == category]
    if words is not None:
        missing = [w for w in words if w not in set(rows["word"])]
        if missing:
            raise one_of(missing[0], sorted(set(rows["word"])), "word")
        rows = rows[rows["word"].isin(words)]
    order = rows.groupby("word")["skew"].max().sort_values(ascending=False).index.tolist()
    if max_words is not None:
        order = order[:max_words]
        rows = rows[rows["word"].isin(order)]
    group_order = [g for g in _group_order(groups, attribute) if g in set(rows["group"])]
    n, m = len(order), len(group_order)
    offsets = np.linspace(-0.3, 0.3, m) if m > 1 else np.zeros(1)
    ypos = {w: i for i, w in enumerate(order)}
    with style():
        if ax is None:
            ax = _new_axes(COLUMN_WIDTH, 1.0 + 0.045 * m * max(n, 2) + 0.12 * math.ceil((m + 1) / 4))
        handles = []
        for j, group in enumerate(group_order):
            part = rows[rows["group"] == group]
            y = np.array([ypos[w] for w in part["word"]]) + offsets[j]
            color, marker = series_style(j)
            ax.errorbar(part["skew"], y, xerr=_errors(part["skew"], part["skew_ci_low"], part["skew_ci_high"]),
                        fmt="none", ecolor=color, elinewidth=0.7, alpha=0.8)
            flagged = part["flagged"].to_numpy(dtype=bool)
            ax.scatter(part["skew"][flagged], y[flagged], s=12, marker=marker, color=color, lw=0.7, zorder=3)
            ax.scatter(part["skew"][~flagged], y[~flagged], s=12, marker=marker, facecolors="white",
                       edgecolors=color, lw=0.7, zorder=3)
            handles.append(Line2D([], [], ls="none", marker=marker, color=color, ms=3.5, label=short(group)))
        ax.axvline(0, color="0.4", lw=0.6, zorder=0)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel(SKEW_LABEL)
        ax.set_title(f"{short(category, 40)}: skew by group ({attribute})")
        ax.grid(axis="x", color="0.92", lw=0.5)
        ax.set_axisbelow(True)
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=3.5, label="not flagged"))
        ax.figure.legend(handles=handles, loc="outside lower center",
                         ncol=_legend_columns(ax.figure, [h.get_label() for h in handles]),
                         handletextpad=0.1, columnspacing=0.8)
    return ax


def stability_dots(words, *, category: str | None = None, attributes: Sequence[str] | None = None, ax=None):
    """How often the most over-represented group survives a bootstrap resample, per word.

    One row per word (of ``category`` when given), one colour per attribute;
    1 means every resample agreed with the reported top group.
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
    order = rows.groupby("word")["stability"].mean().sort_values().index.tolist()
    n = len(order)
    offsets = np.linspace(-0.22, 0.22, len(attributes)) if len(attributes) > 1 else [0.0]
    ypos = {w: i for i, w in enumerate(order)}
    with style():
        if ax is None:
            ax = _new_axes(COLUMN_WIDTH, 1.0 + 0.22 * max(n, 2))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr]
            y = np.array([ypos[w] for w in part["word"]]) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.scatter(part["stability"], y, s=10, marker=marker, color=color, label=attr, zorder=3)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("stability of the top group (share of resamples)")
        ax.set_title("Bootstrap stability" + (f": {short(category, 40)}" if category else ""))
        ax.grid(axis="x", color="0.9", lw=0.5)
        ax.set_axisbelow(True)
        if len(attributes) > 1:
            ax.figure.legend(*ax.get_legend_handles_labels(), loc="outside lower center",
                             ncol=_legend_columns(ax.figure, attributes),
                             handletextpad=0.1, columnspacing=0.8)
    return ax


# --------------------------------------------------------------------------- writing


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return out[:60] or "x"


def save_figure(fig, stem, *, formats: Iterable[str] = ("png", "pdf"), dpi: int = 300) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format, atomically; return the paths."""
    stem = Path(stem)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata)
        paths.append(path)
    return paths


def report_figures(report, *, attributes: Sequence[str] | None = None,
                   categories: Sequence[str] | None = None) -> Iterator[tuple[str, str, object]]:
    """Yield ``(file stem, caption, Figure)`` for every paper figure of a report.

    The figures: one skew heatmap per attribute, the entropy-by-category plot,
    and per category a word skew dot plot per attribute and a stability plot.
    ``attributes`` / ``categories`` restrict them (unknown names are errors
    listing the valid ones).
    """
    valid_attrs, valid_cats = report.attributes, report.categories
    attributes = list(attributes) if attributes else valid_attrs
    categories = list(categories) if categories else valid_cats
    for a in attributes:
        if a not in valid_attrs:
            raise one_of(a, valid_attrs, "attribute")
    for c in categories:
        if c not in valid_cats:
            raise one_of(c, valid_cats, "category")
    stems: set[str] = set()

    def unique(stem: str) -> str:
        base, i = stem, 2
        while stem in stems:
            stem, i = f"{base}-{i}", i + 1
        stems.add(stem)
        return stem

    for attr in attributes:
        ax = skew_heatmap(report.groups, attr)
        yield unique(f"heatmap_skew_{slug(attr)}"), f"Mean skew by category and group ({attr})", ax.figure
    summary = report.summary[report.summary["attribute"].isin(attributes)]
    ax = entropy_by_category(summary, attributes=[a for a in attributes if a in set(summary["attribute"])])
    yield unique("entropy_by_category"), "Mean normalized entropy by category", ax.figure
    for cat in categories:
        for attr in attributes:
            ax = word_skew_dots(report.groups, cat, attr)
            yield unique(f"word_skew_{slug(cat)}_{slug(attr)}"), f"{cat}: skew by group ({attr})", ax.figure
        ax = stability_dots(report.words, category=cat, attributes=attributes)
        yield unique(f"stability_{slug(cat)}"), f"{cat}: bootstrap stability of the top group", ax.figure


def write_report_figures(report, out_dir, *, attributes: Sequence[str] | None = None,
                         categories: Sequence[str] | None = None, formats: Iterable[str] = ("png", "pdf"),
                         dpi: int = 300) -> list[Path]:
    """Write every figure of :func:`report_figures` as PNG and vector PDF; return the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    formats = tuple(formats)
    paths: list[Path] = []
    for stem, _caption, fig in report_figures(report, attributes=attributes, categories=categories):
        paths.extend(save_figure(fig, out_dir / stem, formats=formats, dpi=dpi))
    log.info("wrote %d figure files to %s", len(paths), out_dir)
    return paths
