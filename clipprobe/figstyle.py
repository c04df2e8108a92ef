"""The figure style of every clipprobe figure: sizes, fonts, palette, labels, and writing figures that fit
their canvas.

One owner for what every figure shares, below the layers that draw (``captions``, ``report``):

- styles (:data:`FIGURE_STYLES`, :func:`use_style`, :func:`style`): ``"paper"`` (the default) is sized for
  a two-column paper: 3.3 in one column, 6.9 in both, text 6.5-8 pt, so a figure placed at its own width
  keeps those sizes; ``"slides"`` makes the figures 1.4 times wider and their text and marks 1.6 times
  larger (4.6 in / 9.7 in, text 10-13 pt);
- one vocabulary: :data:`LABELS` (the same axis label for the same quantity everywhere), the Okabe-Ito
  palette (safe for the common colour-vision deficiencies) with a colour and marker per series
  (:func:`series_style`) and per group, by its place in the attribute's order (:func:`group_styles`);
  filled markers are flagged pairs, hollow ones are not;
- zero counts drawn as what they are: a group with no face in the top-k has no skew (the tables carry the
  ``ln(1/k / base share)`` convention, which a plot would show as a made-up value): it is an ``x`` in a
  shaded strip at the left edge of the skew axis (:func:`draw_zero_faces`, :func:`skew_limits`,
  :func:`set_skew_axis`), without an interval, labelled "0 faces" in the legend;
- nothing drawn outside the canvas: before a figure is written its layout is computed (constrained
  layout) and a title, label or legend that still runs past an edge is wrapped (legends get fewer
  columns) and laid out again (:func:`fit_to_canvas`); the layout is then frozen and the figure written
  as a PNG (:data:`PNG_DPI`) and vector PDF and SVG (:data:`FIGURE_FORMATS`) without laying it out again
  (:func:`save_figure`).

Figures are built with the object-oriented API on the Agg canvas (no pyplot state, no display needed);
matplotlib is imported inside the functions.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import re
import textwrap
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from clipprobe._io import atomic_path
from clipprobe.errors import UsageError, one_of

log = logging.getLogger(__name__)

# Okabe & Ito (2008), reordered so the low-contrast yellow comes last.
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P")
DIVERGING_CMAP = "RdBu_r"
ZERO_COLOR = "0.45"  # the "0 faces" marks
ZERO_MARKER = "x"
COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper (paper style)
PAGE_WIDTH = 6.9  # inches, both columns (paper style)

STYLE = {
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 6.5,
    "ytick.labelsize": 6.5,
    "legend.fontsize": 6.5,
    "figure.titlesize": 8,
    "figure.labelsize": 7,
    "legend.frameon": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.linewidth": 0.6,
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "lines.linewidth": 0.9,
    "lines.markersize": 3.5,
    "pdf.fonttype": 42,  # embed TrueType so text stays text in the PDF
    "svg.fonttype": "none",  # text stays text in the SVG
    "svg.hashsalt": "clipprobe",  # the same SVG from the same figure
}
ANNOTATION_SIZE = 6  # pt, values written in heatmap cells (paper style)
# rc keys scaled with a style's ``scale`` (sizes in points)
_SCALED = ("font.size", "axes.titlesize", "axes.labelsize", "xtick.labelsize", "ytick.labelsize", "legend.fontsize",
           "figure.titlesize", "figure.labelsize", "axes.linewidth", "xtick.major.width", "ytick.major.width",
           "xtick.major.size", "ytick.major.size", "lines.linewidth", "lines.markersize")


@dataclasses.dataclass(frozen=True)
class FigureStyle:
    """A figure style: figure widths (inches) are the paper style's times ``size_scale``; text, marks and
    lines (points), and figure heights (mostly rows of text), times ``font_scale``."""

    name: str
    size_scale: float
    font_scale: float
    description: str

    @property
    def column_width(self) -> float:
        return COLUMN_WIDTH * self.size_scale

    @property
    def page_width(self) -> float:
        return PAGE_WIDTH * self.size_scale

    def rc(self) -> dict:
        rc = dict(STYLE)
        for key in _SCALED:
            rc[key] = STYLE[key] * self.font_scale
        return rc


FIGURE_STYLES = {
    "paper": FigureStyle("paper", 1.0, 1.0, "a two-column paper, 3.3 in (one column) or 6.9 in (both) wide, "
                         "text 6.5-8 pt"),
    "slides": FigureStyle("slides", 1.4, 1.6, "slides, 4.6 in or 9.7 in wide, text 10-13 pt"),
}
DEFAULT_STYLE = "paper"
_ACTIVE_STYLE: contextvars.ContextVar[str] = contextvars.ContextVar("clipprobe_figure_style", default=DEFAULT_STYLE)

# One label per quantity, in every figure.
LABELS = {
    "skew": "skew = ln(share / base share)",
    "mean_skew": "mean skew",
    "max_skew": "max skew",
    "norm_entropy": "mean normalized entropy (1 = balanced)",
    "stability": "stability of the top group (share of resamples)",
    "caption_log_odds": "caption log-odds (data)",
    "lift": "log2 lift (grey: undefined)",
    "zero": "0 faces (no skew)",
}
SKEW_LABEL = LABELS["skew"]

FIGURE_FORMATS = ("png", "pdf", "svg")  # a raster for screens and documents, two vector formats for papers
PNG_DPI = 300  # 990 px for one column: print resolution at the column's width
PNG_COMPRESS_LEVEL = 4  # zlib level: files within ~5% of level 6, written faster
# A fixed title position: nothing is drawn above the axes, and matplotlib's automatic
# placement (which measures every tick label at each draw) is a tenth of the drawing time.
TITLE_AT_TOP = {"y": 1.0, "pad": 6.0}


def get_style(name: str | None = None) -> FigureStyle:
    """The named figure style (default: the active one, see :func:`use_style`)."""
    name = _ACTIVE_STYLE.get() if name is None else name
    if name not in FIGURE_STYLES:
        raise one_of(name, list(FIGURE_STYLES), "figure style")
    return FIGURE_STYLES[name]


@contextlib.contextmanager
def use_style(name: str) -> Iterator[FigureStyle]:
    """Draw the figures made inside the block in style ``name`` (see :data:`FIGURE_STYLES`)."""
    chosen = get_style(name)
    token = _ACTIVE_STYLE.set(name)
    try:
        yield chosen
    finally:
        _ACTIVE_STYLE.reset(token)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """Matplotlib settings of the active figure style, for the duration of the block."""
    import matplotlib

    with matplotlib.rc_context(get_style().rc()):
        yield


def scaled(points: float) -> float:
    """A size in points (font, marker, line) of the paper style, in the active style."""
    return points * get_style().font_scale


def series_style(index: int) -> tuple[str, str]:
    """Colour and marker of the ``index``-th categorical series (colour cycles first)."""
    return OKABE_ITO[index % len(OKABE_ITO)], MARKERS[(index // len(OKABE_ITO)) % len(MARKERS)]


def group_styles(groups: Sequence[str]) -> dict[str, tuple[str, str]]:
    """Colour and marker of each group, by its place in ``groups`` (the attribute's order in the report):
    the same group looks the same in every figure of its attribute."""
    return {str(g): series_style(i) for i, g in enumerate(dict.fromkeys(map(str, groups)))}


def new_figure(width: float, height: float):
    """A new Agg figure of ``width`` x ``height`` inches of the paper style, laid out by the constrained
    layout engine; in another style the width is scaled by its ``size_scale``, the height (mostly rows of
    text) by its ``font_scale``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    chosen = get_style()
    # heights are mostly rows of text: they grow with the text, widths with the style's size
    fig = Figure(figsize=(width * chosen.size_scale, height * chosen.font_scale), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def new_axes(width: float, height: float):
    """One Axes on :func:`new_figure`."""
    return new_figure(width, height).add_subplot()


def literal(text) -> str:
    """``text`` as matplotlib should show it, character for character: ``$`` escaped, so that a word
    such as ``$5 a day`` or ``$x$`` is not read as math text (which draws it otherwise or fails)."""
    return str(text).replace("$", r"\$")


def short(label, limit: int = 28) -> str:
    """A tick label no longer than ``limit`` characters (long ones end with an ellipsis), shown literally."""
    text = str(label)
    return literal(text if len(text) <= limit else text[: limit - 1] + "…")


def ticks(labels) -> list[str]:
    return [short(label) for label in labels]


def legend_columns(fig, labels: Sequence[str]) -> int:
    """As many legend columns (at most 4) as fit the figure's width at the legend font size, each column as wide
    as its longest label (matplotlib fills the columns in turn), then as few as keep that number of rows: four
    labels in two rows of two, not three and one."""
    import math

    widths = [(0.052 * len(str(label)) + 0.3) * get_style().font_scale for label in labels]  # inches at 6.5 pt
    if not widths:
        return 1
    room = fig.get_figwidth() - 0.1

    def width(ncol: int) -> float:
        rows = math.ceil(len(widths) / ncol)
        return sum(max(widths[i:i + rows]) for i in range(0, len(widths), rows))

    ncol = next((c for c in range(min(len(widths), 4), 0, -1) if width(c) <= room), 1)
    rows = math.ceil(len(widths) / ncol)
    return math.ceil(len(widths) / rows)


LEGEND_MARGIN = 9.0  # points (paper style; scaled with the text) between a right-hand legend and the canvas edge


def legend_right(ax, *, margin: float | None = None, **kwargs):
    """A legend right of ``ax``, its top level with the axes' top, whose entries keep ``margin`` points
    (default :data:`LEGEND_MARGIN`, scaled with the style's text) from the canvas's right edge once the
    constrained layout has run; returns the Legend.

    The layout puts a legend's box, not its entries, its own pad from the edge. The (frameless) box is
    padded on every side by what the margin needs beyond that pad and moved up and left by as much, so the
    entries sit where an unpadded legend would put them and only the layout sees the room."""
    import matplotlib
    from matplotlib.font_manager import FontProperties

    margin = scaled(LEGEND_MARGIN) if margin is None else float(margin)
    engine = ax.figure.get_layout_engine()
    layout_pad = 72.0 * float(engine.get().get("w_pad", 0.0)) if engine is not None else 0.0
    size = FontProperties(size=kwargs.pop("fontsize", matplotlib.rcParams["legend.fontsize"])).get_size_in_points()
    default = float(matplotlib.rcParams["legend.borderpad"])
    pad = max(default, (margin - layout_pad) / size)
    kwargs.setdefault("handletextpad", 0.2)
    return ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderpad=pad, borderaxespad=default - pad,
                     fontsize=size, **kwargs)


def errors(center, low, high):
    """Asymmetric error lengths for errorbar; missing or inverted intervals give 0."""
    import numpy as np

    center, low, high = (np.asarray(v, dtype=float) for v in (center, low, high))
    lo = np.where(np.isfinite(low), np.clip(center - low, 0, None), 0.0)
    hi = np.where(np.isfinite(high), np.clip(high - center, 0, None), 0.0)
    return np.vstack([lo, hi])


def zero_faces(rows):
    """Boolean array: the rows whose group has no face in the top-k (``count == 0``; none without a count
    column). Their skew is a convention, not a measurement: plots draw them with :func:`draw_zero_faces`."""
    import numpy as np

    if "count" not in rows.columns:
        return np.zeros(len(rows), dtype=bool)
    count = rows["count"].to_numpy(dtype=float)
    return np.isfinite(count) & (count == 0)


ZERO_STRIP = 0.06  # share of the x axis, at its left edge, where "0 faces" marks are drawn


def skew_limits(values, lows=None, highs=None, *, include_zero: bool = True) -> tuple[float, float]:
    """x limits that hold the finite ``values`` and interval ends (and 0), with the "0 faces" strip at the left."""
    import numpy as np

    parts = [np.asarray(values, dtype=float)]
    for extra in (lows, highs):
        if extra is not None:
            parts.append(np.asarray(extra, dtype=float))
    data = np.concatenate([p.ravel() for p in parts] + ([np.zeros(1)] if include_zero else []))
    data = data[np.isfinite(data)]
    lo, hi = (float(data.min()), float(data.max())) if data.size else (-1.0, 1.0)
    span = hi - lo or 1.0
    lo, hi = lo - 0.04 * span, hi + 0.04 * span
    # the strip: ZERO_STRIP of the final axis lies left of every data point
    return lo - (hi - lo) * ZERO_STRIP / (1 - ZERO_STRIP), hi


def set_skew_axis(ax, limits: tuple[float, float], *, axis: str = "x") -> None:
    """Give ``ax`` the skew limits of :func:`skew_limits` with ticks and spine only right of the "0 faces"
    strip (the strip is not on the skew scale)."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    lo, hi = limits
    data_lo = lo + ZERO_STRIP * (hi - lo)
    ticks = [t for t in MaxNLocator(nbins=5, steps=[1, 2, 2.5, 5, 10]).tick_values(data_lo, hi)
             if data_lo - 1e-9 <= t <= hi + 1e-9]
    target = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xlim if axis == "x" else ax.set_ylim)(lo, hi)
    target.set_major_locator(FixedLocator(ticks))
    ax.spines["bottom" if axis == "x" else "left"].set_bounds(data_lo, hi)


def draw_zero_faces(ax, y, *, colors=None):
    """Mark rows with no face in the top-k at heights ``y`` (data units) in the shaded strip at the left edge
    of ``ax`` (:data:`ZERO_STRIP`; give the axis :func:`skew_limits`): a grey ``x``, or one in each row's
    colour; no skew, no interval. Returns the marks' Line2D artists (labelled ``_zero_faces``)."""
    import numpy as np
    from matplotlib.patches import Rectangle
    from matplotlib.transforms import blended_transform_factory

    y = np.asarray(y, dtype=float)
    if not y.size:
        return []
    trans = blended_transform_factory(ax.transAxes, ax.transData)
    colors = [ZERO_COLOR] * len(y) if colors is None else list(colors)
    artists = []
    for color in dict.fromkeys(colors):
        sel = np.array([c == color for c in colors])
        (line,) = ax.plot(np.full(int(sel.sum()), ZERO_STRIP / 2), y[sel], ls="none", marker=ZERO_MARKER,
                          ms=scaled(3.2), mew=scaled(0.8), color=color, transform=trans, zorder=3, clip_on=False,
                          label="_zero_faces")
        artists.append(line)
    ax.add_patch(Rectangle((0, 0), ZERO_STRIP, 1, transform=ax.transAxes, facecolor="0.94", lw=0, zorder=0))
    return artists


def zero_legend_handle():
    """The legend entry of the "0 faces" marks."""
    from matplotlib.lines import Line2D

    return Line2D([], [], ls="none", marker=ZERO_MARKER, color=ZERO_COLOR, ms=scaled(3.2), mew=scaled(0.8),
                  label=LABELS["zero"])


def cmap(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad="#dddddd")


def slug(text: str) -> str:
    """A file-name-safe form of ``text`` (letters, digits, ``-``, ``_``, ``.``)."""
    out = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.")
    return out[:60] or "x"


FIT_PASSES = 4  # layouts tried by fit_to_canvas before it gives up
_FIT_TOLERANCE = 0.5  # pixels


def _renderer(fig):
    canvas = fig.canvas
    if not hasattr(canvas, "get_renderer"):
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = FigureCanvasAgg(fig)
    return canvas.get_renderer()


def _decoration_texts(fig) -> tuple[list, set]:
    """(texts to fit: titles, labels, notes; the legends' own texts, which legends fit)."""
    from matplotlib.text import Text

    skip: set[int] = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            skip.update(id(t) for t in axis.get_ticklabels(which="both"))
            skip.add(id(axis.get_offset_text()))
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    for legend in legends:
        skip.update(id(t) for t in legend.get_texts())
        skip.add(id(legend.get_title()))
    texts = [t for t in fig.findobj(Text) if id(t) not in skip and t.get_visible() and t.get_text()]
    return texts, legends


def _outside(bbox, frame) -> bool:
    return (bbox.x0 < frame.x0 - _FIT_TOLERANCE or bbox.x1 > frame.x1 + _FIT_TOLERANCE
            or bbox.y0 < frame.y0 - _FIT_TOLERANCE or bbox.y1 > frame.y1 + _FIT_TOLERANCE)


def _room(text, bbox, frame) -> float | None:
    """Display units available along ``text``'s direction from its anchor to the canvas edges (None: the
    text is neither horizontal nor vertical, or its anchor is off the canvas)."""
    rotation = text.get_rotation() % 180
    if rotation not in (0, 90):
        return None
    horizontal = rotation == 0
    lo, hi = (frame.x0, frame.x1) if horizontal else (frame.y0, frame.y1)
    pos = (bbox.x0 + bbox.x1) / 2 if horizontal else (bbox.y0 + bbox.y1) / 2
    start, end = (bbox.x0, bbox.x1) if horizontal else (bbox.y0, bbox.y1)
    align = text.get_horizontalalignment() if horizontal else text.get_verticalalignment()
    if align in ("left", "bottom", "baseline"):
        room = hi - start
    elif align in ("right", "top"):
        room = end - lo
    else:
        room = 2 * min(pos - lo, hi - pos)
    return room - 2 if room > 4 else None


def _wrap(text, bbox, room: float) -> bool:
    """Wrap ``text`` to ``room`` display units along its direction; False when it cannot be made shorter."""
    horizontal = text.get_rotation() % 180 == 0
    length = bbox.width if horizontal else bbox.height
    lines = text.get_text().split("\n")
    longest = max(len(line) for line in lines)
    width = max(6, int(longest * room / length * 0.95))
    if width >= longest:
        width = longest - 1
    wrapped = "\n".join(textwrap.fill(line, width, break_long_words=True, break_on_hyphens=True) if line else line
                        for line in lines)
    if wrapped == text.get_text() or width < 6:
        return False
    text.set_text(wrapped)
    return True


def outside_canvas(fig) -> list[str]:
    """What the last draw of ``fig`` put outside its canvas: each visible text and legend whose extent runs
    past an edge, and the figure's tight box when it does (empty when everything is on the canvas)."""
    renderer = _renderer(fig)
    frame = fig.bbox
    texts, legends = _decoration_texts(fig)
    out = []
    for text in texts:
        box = text.get_window_extent(renderer)
        if _outside(box, frame):
            out.append(f"text {text.get_text()!r}")
    for legend in legends:
        if legend.get_visible() and _outside(legend.get_window_extent(renderer), frame):
            out.append("legend " + ", ".join(repr(t.get_text()) for t in legend.get_texts()[:3]))
    tight = fig.get_tightbbox(renderer)
    if tight is not None:
        w, h = fig.get_size_inches()
        px = _FIT_TOLERANCE / fig.dpi
        if tight.x0 < -px or tight.y0 < -px or tight.x1 > w + px or tight.y1 > h + px:
            out.append(f"drawing {tight.bounds} inches on a {w:.2f} x {h:.2f} in canvas")
    return out


def fit_to_canvas(fig, *, passes: int = FIT_PASSES) -> list[str]:
    """Lay ``fig`` out and make what runs past the canvas fit: a title, label or note is wrapped at word
    boundaries to the room it has, a legend wider than the figure gets fewer columns, and the layout is run
    again (at most ``passes`` layouts). Returns what still does not fit (:func:`outside_canvas`; logged)."""
    for _ in range(passes):
        fig.draw_without_rendering()
        renderer = _renderer(fig)
        frame = fig.bbox
        changed = False
        texts, legends = _decoration_texts(fig)
        for text in texts:
            box = text.get_window_extent(renderer)
            if _outside(box, frame):
                room = _room(text, box, frame)
                if room is not None and _wrap(text, box, room):
                    changed = True
        for legend in legends:
            box = legend.get_window_extent(renderer)
            if box.width > frame.width - 2 * _FIT_TOLERANCE and legend._ncols > 1:
                legend.set_ncols(legend._ncols - 1)
                changed = True
        if not changed:
            break
    else:
        fig.draw_without_rendering()
    left = outside_canvas(fig)
    if left:
        log.warning("figure %s: drawn outside its canvas: %s", fig.get_label() or "", "; ".join(left))
    return left


def freeze_layout(fig) -> None:
    """Run the figure's layout engine, fit it to its canvas (:func:`fit_to_canvas`) and keep the result,
    so each save skips the layout."""
    from matplotlib.layout_engine import PlaceHolderLayoutEngine

    engine = fig.get_layout_engine()
    if engine is None or isinstance(engine, PlaceHolderLayoutEngine):
        return
    fit_to_canvas(fig)
    fig.set_layout_engine("none")


SAVE_RC = ("pdf.fonttype", "svg.fonttype", "svg.hashsalt")  # the style's settings that apply when a file is written


def _save_rc():
    import matplotlib

    return matplotlib.rc_context({key: STYLE[key] for key in SAVE_RC})


_SAVE_OPTIONS = {
    "pdf": {"metadata": {"CreationDate": None}},
    "svg": {"metadata": {"Date": None}},
    "png": {"pil_kwargs": {"compress_level": PNG_COMPRESS_LEVEL}},
}


_SVG_HASH_ID = rb'id="([a-z])([0-9a-f]{10})"'


def _number_svg_ids(text: bytes) -> bytes:
    """``text`` (an SVG matplotlib wrote) with its hashed ids (clip paths ``p...``, markers ``m...``, hatches
    ``h...``: the hash of each thing's full-precision coordinates) renumbered in order of definition. The
    file shows coordinates to 6 decimals, so a layout that differs only in the last bits of a float (the
    same figure drawn after other figures in another process) otherwise gave the same drawing under other
    ids, and not the same bytes."""
    import re

    ids = {}
    for m in re.finditer(_SVG_HASH_ID, text):
        ids.setdefault(m.group(1) + m.group(2), m.group(1) + b"%010d" % len(ids))
    if not ids:
        return text
    return re.sub(b"|".join(re.escape(k) for k in ids), lambda m: ids[m.group(0)], text)


def save_figure(fig, stem, *, formats: Iterable[str] = FIGURE_FORMATS, dpi: int = PNG_DPI) -> list[Path]:
    """Write ``fig`` as ``stem.<format>`` for each format (PNG at ``dpi``, vector PDF and SVG), atomically;
    return the paths.

    The layout is computed and fitted to the canvas once (:func:`freeze_layout`) and shared by every format.
    """
    stem = Path(stem)
    freeze_layout(fig)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        with atomic_path(path) as tmp, _save_rc():
            fig.savefig(tmp, format=fmt, dpi=dpi, **_SAVE_OPTIONS.get(fmt, {}))
            if fmt == "svg":
                Path(tmp).write_bytes(_number_svg_ids(Path(tmp).read_bytes()))
        paths.append(path)
    return paths


def png_bytes(fig, *, dpi: int = PNG_DPI) -> bytes:
    """``fig`` as PNG bytes (for a page that embeds it), laid out and fitted like :func:`save_figure`."""
    import io

    freeze_layout(fig)
    buf = io.BytesIO()
    with _save_rc():
        fig.savefig(buf, format="png", dpi=dpi, **_SAVE_OPTIONS["png"])
    return buf.getvalue()


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
