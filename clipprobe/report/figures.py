"""Paper figures of a bias report, drawn from the report's tables alone.

Every plot function takes DataFrames (the tables of a report folder, see
:mod:`clipprobe.report.store`) and ``ax=None``; it draws on ``ax`` or on a new
figure sized for one journal column (3.3 in wide, two columns for wide
heatmaps) and returns the Axes, so callers can restyle it and tests can read
the data and labels back. Figures are built with the object-oriented API on the
Agg canvas (no pyplot state, no display needed).

Colours: categorical series use the Okabe-Ito palette (safe for the common
colour-vision deficiencies); skew uses a diverging map centred at 0 (blue:
under-represented, red: over-represented).

Two sets of figures are written from a report (:func:`report_figures`):

- ``"core"`` (what ``clipprobe report`` writes): a skew heatmap per attribute,
  the entropy-by-category plot, and for each attribute with a flagged pair (the
  first attribute when none has one) a dot plot of the most skewed words over
  all categories (flagged, and filled markers: by the test against the control
  queries where it ran, else the hypergeometric test);
- ``"all"`` (what ``clipprobe figures`` writes): the core set plus, per
  category, a word skew dot plot per attribute and a stability plot.

Tall plots keep the most skewed (or least stable) words that fit
:data:`MAX_HEIGHT` and say so in their title ("12 most skewed of 167 words");
``max_words`` overrides that, 0 keeps every word.

Speed: a figure is laid out once (constrained layout), then frozen and written
as PNG (:data:`PNG_DPI`) and vector PDF without laying it out again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import re
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from clipprobe._io import atomic_path, ensure_dir
from clipprobe.errors import UsageError, one_of
from clipprobe.faces import ATTRIBUTES
from clipprobe.report.store import CATEGORY_SEP, explode_categories

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
MSG_MAX_WORDS = "max_words must be 0 (every word) or a positive number, got {value}"

FIGURE_SETS = ("core", "all")
PNG_DPI = 200  # 660 px for one column: sharp on screen and in print at column width
PNG_COMPRESS_LEVEL = 4  # zlib level: files within ~5% of level 6, written faster
# A fixed title position: nothing is drawn above the axes, and matplotlib's automatic
# placement (which measures every tick label at each draw) is a tenth of the drawing time.
TITLE_AT_TOP = {"y": 1.0, "pad": 6.0}
HEATMAP_COLUMN_GROUPS = 7  # a heatmap with more groups is page-wide: its annotated cells stay legible
MAX_HEIGHT = 8.5  # inches: tall plots keep the words that fit one page
TOP_WORDS_MAX = 30  # at most this many words in a core "most skewed words" plot


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


def literal(text) -> str:
    """``text`` as matplotlib should show it, character for character: ``$`` escaped, so that a word
    such as ``$5 a day`` or ``$x$`` is not read as math text (which draws it otherwise or fails)."""
    return str(text).replace("$", r"\$")


def short(label, limit: int = 28) -> str:
    """A tick label no longer than ``limit`` characters (long ones end with an ellipsis), shown literally."""
    text = str(label)
    return literal(text if len(text) <= limit else text[: limit - 1] + "…")


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
    160 cells). More than :data:`HEATMAP_COLUMN_GROUPS` groups make it page-wide,
    so the values stay legible. Returns the Axes; its image holds
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
        ax.set_title(f"Mean skew by category and group ({literal(attribute)})", **TITLE_AT_TOP)
        if annotate is None:
            annotate = n_rows * n_cols <= 160
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


def heatmap_is_wide(n_groups: int) -> bool:
    """Whether a heatmap of ``n_groups`` columns takes the page width (else one column)."""
    return n_groups > HEATMAP_COLUMN_GROUPS


def _cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#dddddd")


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
            ax = _new_axes(COLUMN_WIDTH, 0.9 + 0.25 * max(n, 2))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr].set_index("category").reindex(order)
            y = np.arange(n) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.plot(part["mean_norm_entropy"].to_numpy(dtype=float), y, marker, color=color, ms=3.2, label=attr)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(0, 1.02)
        ax.axvline(1.0, color="0.6", lw=0.6, ls="--", zorder=0)
        ax.set_xlabel("mean normalized entropy (1 = balanced)")
        ax.set_title("Diversity of the top-k by category", **TITLE_AT_TOP)
        ax.grid(axis="x", color="0.9", lw=0.5)
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


def word_skew_dots(groups, category: str | None, attribute: str, *, words: Sequence[str] | None = None,
                   max_words: int | None = None, ax=None):
    """Per-word dot plot of each group's skew with its interval, for one category.

    One row per word (largest max skew first), one colour per group; filled
    markers are flagged pairs by the headline flag (``flagged_vs_controls``, the
    test against control queries, where it ran; else ``flagged``, the
    hypergeometric test: :func:`clipprobe.analysis.probe.headline_flag`), hollow
    ones are not; the legend says which flag. ``category=None`` takes the words of every category. ``max_words``
    keeps the most skewed words: by default as many as fit :data:`MAX_HEIGHT`,
    0 keeps them all; the title says when words were left out.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    from clipprobe.analysis.probe import flag_mask, headline_flag

    _check_attribute(groups, attribute)
    flag = headline_flag(groups)
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
    total = len(order)
    group_order = [g for g in _group_order(groups, attribute) if g in set(rows["group"])]
    m = len(group_order)
    legend_h = 0.12 * math.ceil((m + 1) / 4)
    order = _keep_words(order, max_words, fit_words(0.045 * max(m, 1), 1.0 + legend_h))
    rows = rows[rows["word"].isin(order)]
    n = len(order)
    offsets = np.linspace(-0.3, 0.3, m) if m > 1 else np.zeros(1)
    ypos = {w: i for i, w in enumerate(order)}
    with style():
        if ax is None:
            ax = _new_axes(COLUMN_WIDTH, 1.0 + 0.045 * m * max(n, 2) + legend_h + 0.1 * (n < total))
        handles = []
        for j, group in enumerate(group_order):
            part = rows[rows["group"] == group]
            y = np.array([ypos[w] for w in part["word"]], dtype=float) + offsets[j]
            color, marker = series_style(j)
            skew = part["skew"].to_numpy(dtype=float)
            ax.errorbar(skew, y, xerr=_errors(skew, part["skew_ci_low"], part["skew_ci_high"]),
                        fmt="none", ecolor=color, elinewidth=0.7, alpha=0.8)
            flagged = flag_mask(part, flag)
            ax.scatter(skew[flagged], y[flagged], s=12, marker=marker, color=color, lw=0.7, zorder=3)
            ax.scatter(skew[~flagged], y[~flagged], s=12, marker=marker, facecolors="white",
                       edgecolors=color, lw=0.7, zorder=3)
            handles.append(Line2D([], [], ls="none", marker=marker, color=color, ms=3.5, label=short(group)))
        ax.axvline(0, color="0.4", lw=0.6, zorder=0)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlabel(SKEW_LABEL)
        head = f"{short(category, 40)}: skew by group" if category is not None else "Most skewed words"
        ax.set_title(f"{head} ({literal(attribute)})" + _shown_note(n, total, "most skewed"), **TITLE_AT_TOP)
        ax.grid(axis="x", color="0.92", lw=0.5)
        ax.set_axisbelow(True)
        unflagged = "not flagged vs controls" if flag == "flagged_vs_controls" else "not flagged (hypergeom.)"
        handles.append(Line2D([], [], ls="none", marker="o", mfc="white", mec="0.3", ms=3.5, label=unflagged))
        ax.figure.legend(handles=handles, loc="outside lower center",
                         ncol=_legend_columns(ax.figure, [h.get_label() for h in handles]),
                         handletextpad=0.1, columnspacing=0.8)
    return ax


def stability_dots(words, *, category: str | None = None, attributes: Sequence[str] | None = None,
                   max_words: int | None = None, ax=None):
    """How often the most over-represented group survives a bootstrap resample, per word.

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
            ax = _new_axes(COLUMN_WIDTH, 1.0 + 0.22 * max(n, 2) + 0.1 * (n < total))
        for idx, attr in enumerate(attributes):
            part = rows[rows["attribute"] == attr]
            y = np.array([ypos[w] for w in part["word"]], dtype=float) + offsets[idx]
            color, marker = series_style(ATTRIBUTES.index(attr) if attr in ATTRIBUTES else idx)
            ax.scatter(part["stability"], y, s=10, marker=marker, color=color, label=attr, zorder=3)
        ax.set_yticks(range(n), _ticks(order))
        ax.set_ylim(n - 0.5, -0.5)
        ax.set_xlim(-0.02, 1.02)
        ax.set_xlabel("stability of the top group (share of resamples)")
        ax.set_title("Bootstrap stability" + (f": {short(category, 40)}" if category else "")
                     + _shown_note(n, total, "least stable"), **TITLE_AT_TOP)
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


def freeze_layout(fig) -> None:
    """Run the figure's layout engine once and keep the result, so each save skips it."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = fig.get_layout_engine()
    if engine is None or isinstance(engine, PlaceHolderLayoutEngine):
        return
    fig.draw_without_rendering()
    fig.set_layout_engine("none")


def save_figure(fig, stem, *, formats: Iterable[str] = ("png", "pdf"), dpi: int = PNG_DPI) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format, atomically; return the paths.

    The layout is computed once (:func:`freeze_layout`) and shared by every format.
    """
    stem = Path(stem)
    freeze_layout(fig)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        extra = {}
        if fmt == "pdf":
            extra["metadata"] = {"CreationDate": None}
        elif fmt == "png":
            extra["pil_kwargs"] = {"compress_level": PNG_COMPRESS_LEVEL}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi, **extra)
        paths.append(path)
    return paths


def save_figure_file(fig, path, *, dpi: int = PNG_DPI) -> Path:
    """Write ``fig`` to ``path``, the format from its suffix (``.png``, ``.pdf``, ``.svg``; none: PNG)."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in ("png", "pdf", "svg"):
        raise UsageError(f"figure {path}: unknown suffix {path.suffix!r}; use .png, .pdf or .svg")
    stem = path.with_suffix("") if path.suffix else path
    written = save_figure(fig, stem, formats=(fmt,), dpi=dpi)[0]
    if written != path:
        written.replace(path)
    return path


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """One figure of a report, not drawn yet: ``draw()`` builds it and returns its Axes."""

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
    keep = [bool(wanted.intersection(p.strip() for p in str(v).split(CATEGORY_SEP.strip()))) for v in df["category"]]
    return df[keep]


def figure_specs(report, *, attributes: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                 figure_set: str = "core", max_words: int | None = None) -> list[FigureSpec]:
    """The figures of one set for a report, in order, each with a unique file stem.

    ``"core"``: one skew heatmap per attribute, the entropy-by-category plot and a
    "most skewed words" plot per attribute of :func:`core_attributes`; ``"all"``
    adds, per category, a word skew dot plot per attribute and a stability plot.
    ``attributes`` / ``categories`` restrict them (unknown names are errors
    listing the valid ones); ``max_words`` is passed to the dot plots.
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
    for attr in core_attributes(report, attributes):
        limit = TOP_WORDS_MAX if max_words is None else max_words
        add(f"top_words_skew_{slug(attr)}{within}", f"Most skewed words: skew by group ({attr}); filled markers "
            f"are pairs {filled}", _top_words_drawer(top_rows, attr, limit), "top_words")
    if figure_set == "all":
        for cat in categories or valid_cats:
            for attr in attributes:
                add(f"word_skew_{slug(cat)}_{slug(attr)}", f"{cat}: skew by group ({attr})",
                    functools.partial(word_skew_dots, groups, cat, attr, max_words=max_words), "word_skew",
                    category=cat)
            add(f"stability_{slug(cat)}", f"{cat}: bootstrap stability of the top group",
                functools.partial(stability_dots, words, category=cat, attributes=attributes,
                                  max_words=max_words), "stability", category=cat)
    return specs


def _top_words_drawer(groups, attribute: str, limit: int) -> Callable[[], Any]:
    def draw():
        m = len(_group_order(groups, attribute))
        auto = fit_words(0.045 * max(m, 1), 1.0 + 0.12 * math.ceil((m + 1) / 4), limit=limit or None)
        return word_skew_dots(groups, None, attribute, max_words=auto if limit else 0)

    return draw


def report_figures(report, *, attributes: Sequence[str] | None = None, categories: Sequence[str] | None = None,
                   figure_set: str = "core", max_words: int | None = None) -> Iterator[tuple[str, str, object]]:
    """Yield ``(file stem, caption, Figure)`` for each figure of :func:`figure_specs`, drawn one at a time."""
    for spec in figure_specs(report, attributes=attributes, categories=categories, figure_set=figure_set,
                             max_words=max_words):
        yield spec.stem, spec.caption, spec.draw().figure


def write_report_figures(report, out_dir, *, attributes: Sequence[str] | None = None,
                         categories: Sequence[str] | None = None, figure_set: str = "core",
                         max_words: int | None = None, formats: Iterable[str] = ("png", "pdf"),
                         dpi: int = PNG_DPI, started: float | None = None) -> list[Path]:
    """Write the figures of one set (``"core"`` or ``"all"``) as PNG and vector PDF; return the paths.

    Temporary files that a killed run left in ``out_dir`` (``.NAME.XXXXXXXX.tmp``) and that are
    older than ``started`` (the ``time.time()`` at which the current run began; default: now) are
    removed first.
    """
    import time

    from clipprobe._io import clean_stale_temporaries

    started = time.time() if started is None else started
    _check_figure_set(figure_set)
    out_dir = ensure_dir(out_dir)
    removed = clean_stale_temporaries(out_dir, before=started)
    if removed:
        log.info("removed %d temporary file(s) left in %s by an interrupted run", len(removed), out_dir)
    formats = tuple(formats)
    paths: list[Path] = []
    for stem, _caption, fig in report_figures(report, attributes=attributes, categories=categories,
                                              figure_set=figure_set, max_words=max_words):
        paths.extend(save_figure(fig, out_dir / stem, formats=formats, dpi=dpi))
    log.info("wrote %d figure files (%s set) to %s", len(paths), figure_set, out_dir)
    return paths
