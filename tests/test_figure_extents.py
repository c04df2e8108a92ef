"""Nothing is drawn outside the canvas, for every figure function of the package.

The package's figure functions are found by reading its source (a top-level function that takes
``ax=None``, or one that builds a figure and returns it); each is drawn here on small generated data,
including long words, categories, groups, test and model names, laid out and written the way
``save_figure`` writes it, and then every text, legend, axes decoration and unclipped artist is checked
against the figure's box. A figure function without a case here fails :func:`test_every_figure_function_has_a_case`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipprobe import figstyle
from reportgen import make_report

ROOT = Path(__file__).resolve().parents[1] / "clipprobe"
# Helpers of figstyle that build or mark a figure for others; they are not figures of their own.
INFRASTRUCTURE = {"clipprobe.figstyle." + n for n in ("new_figure", "new_axes")}
TOLERANCE = 1.0  # pixels at the figure's dpi

LONG_CATEGORY = "a category whose descriptive name is far longer than any tick label should be"
LONG_WORD = "an-extraordinarily-long-compound-word-from-a-taxonomy"


# --------------------------------------------------------------------------- the figure functions


def _builds_figure(node: ast.FunctionDef) -> bool:
    calls = {c.func.attr if isinstance(c.func, ast.Attribute) else getattr(c.func, "id", None)
             for c in ast.walk(node) if isinstance(c, ast.Call)}
    return bool(calls & {"new_figure", "Figure", "subplots"})


def _takes_ax_none(node: ast.FunctionDef) -> bool:
    args = node.args
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if arg.arg == "ax" and isinstance(default, ast.Constant) and default.value is None:
            return True
    positional = args.posonlyargs + args.args
    for arg, default in zip(positional[len(positional) - len(args.defaults):], args.defaults):
        if arg.arg == "ax" and isinstance(default, ast.Constant) and default.value is None:
            return True
    return False


def figure_functions() -> set[str]:
    """``module.function`` of every top-level public function of the package that draws a figure."""
    found = set()
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                if _takes_ax_none(node) or _builds_figure(node):
                    found.add(f"{module}.{node.name}")
    return found - INFRASTRUCTURE


# --------------------------------------------------------------------------- the check


def drawn_outside(fig) -> list[str]:
    """Every visible text, legend, axes (with its ticks, labels and clipped contents) and unclipped artist of
    ``fig`` whose window extent is not inside the figure's box."""
    from matplotlib.artist import Artist
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not hasattr(fig.canvas, "get_renderer"):
        FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox

    def outside(box) -> bool:
        return (box is not None and np.all(np.isfinite(box.get_points())) and box.width >= 0 and box.height >= 0
                and (box.x0 < frame.x0 - TOLERANCE or box.y0 < frame.y0 - TOLERANCE
                     or box.x1 > frame.x1 + TOLERANCE or box.y1 > frame.y1 + TOLERANCE))

    tick_labels = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            tick_labels.update(id(t) for t in axis.get_ticklabels(which="both"))
    bad = []
    for text in fig.findobj(Text):
        if id(text) in tick_labels or not text.get_visible() or not text.get_text():
            continue
        box = text.get_window_extent(renderer)
        if text.get_clip_on() and text.get_clip_box() is not None:
            box = Bbox.intersection(box, text.get_clip_box())
        if outside(box):
            bad.append(f"text {text.get_text()!r} at {np.round(box.bounds, 1).tolist()}")
    for ax in fig.axes:
        if outside(ax.get_tightbbox(renderer)):
            bad.append(f"axes {ax.get_title()!r}: {np.round(ax.get_tightbbox(renderer).bounds, 1).tolist()}")
        legend = ax.get_legend()
        if legend is not None and outside(legend.get_window_extent(renderer)):
            bad.append("axes legend")
    for legend in fig.legends:
        if outside(legend.get_window_extent(renderer)):
            bad.append(f"figure legend {[t.get_text() for t in legend.get_texts()]}")
    for artist in fig.findobj(lambda a: isinstance(a, Artist) and not isinstance(a, Text)):
        if artist is fig or not artist.get_visible() or artist.get_clip_on():
            continue
        try:
            box = artist.get_window_extent(renderer)
        except (TypeError, NotImplementedError, AttributeError):
            continue
        if outside(box):
            bad.append(f"{type(artist).__name__} {artist.get_label()!r}")
    tight = fig.get_tightbbox(renderer)
    w, h = fig.get_size_inches()
    slack = TOLERANCE / fig.dpi
    if tight.x0 < -slack or tight.y0 < -slack or tight.x1 > w + slack or tight.y1 > h + slack:
        bad.append(f"the drawing {np.round(tight.bounds, 2).tolist()} in on a {w:.2f} x {h:.2f} in canvas")
    return bad


# --------------------------------------------------------------------------- small data


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    from clipprobe.report.store import load_report

    root = tmp_path_factory.mktemp("extents")
    words = {"nurse": "occupation", "engineer": "occupation", "ceo": ("occupation", LONG_CATEGORY),
             LONG_WORD: LONG_CATEGORY, "rich": LONG_CATEGORY, "kind": "traits", "lazy": "traits"}
    a = make_report(root / "a", words=words, images=False, n_boot=5, n_images=160, k=12,
                    model="ViT-B-32:/home/someone/checkpoints/a-rather-long-run-name/epoch_32.pt")
    b = make_report(root / "b", words=words, images=False, n_boot=5, n_images=160, k=12, seed=4,
                    model="ViT-B-32:/home/someone/checkpoints/another-long-run-name/epoch_32.pt")
    return load_report(a), load_report(b)


def _cooccurrence(words, groups, seed=0):
    from clipprobe.analysis.cooccurrence import cooccurrence_table

    rng = np.random.default_rng(seed)
    n_word = rng.integers(20, 200, size=len(words))
    n_group = rng.integers(100, 900, size=len(groups))
    n_both = np.minimum(rng.integers(0, 40, size=(len(words), len(groups))), n_word[:, None])
    return cooccurrence_table(list(words), list(groups), 5000, n_word, n_group, np.minimum(n_both, n_group[None, :]))


def _eat_table():
    from clipprobe.report.eat import EAT_COLUMNS

    rows = []
    for i, (name, order) in enumerate([("weat-flowers-insects-pleasant-unpleasant", "text"),
                                       ("ieat-race-european-american-african-american", "image-text"),
                                       ("gender-career", "text-image"), ("age-valence", "image")]):
        rows.append({c: None for c in EAT_COLUMNS} | {
            "test": name, "order": order, "available": i != 3, "status": "unavailable" if i == 3 else "computed",
            "effect_size": [1.2, -0.4, 0.3, np.nan][i],
            "effect_ci_low": [0.8, -0.9, -0.2, np.nan][i], "effect_ci_high": [1.6, 0.1, 0.8, np.nan][i]})
    return pd.DataFrame(rows)


def _ab_table():
    rows = []
    for first, second in [("software engineer", "nurse"), ("chief executive officer", "receptionist")]:
        row = {"first": first, "second": second}
        for g, v in (("Male", 0.7), ("Female", 0.4)):
            row |= {f"share_{g}": v, f"share_{g}_low": v - 0.08, f"share_{g}_high": v + 0.08}
        rows.append(row | {"diff": 0.3, "diff_low": 0.1, "diff_high": 0.5})
    return pd.DataFrame(rows)


def _subsets_tables():
    rng = np.random.default_rng(2)
    subsets = ["all", "cluster 0: young faces indoors", "cluster 1", "cluster 2", "cluster 3"]
    groups, words = [], []
    for word in ("nurse", LONG_WORD):
        for s in subsets:
            scope = "global" if s == "all" else "local"
            for g in ("Male", "Female"):
                count = 0 if (s == "cluster 2" and g == "Male") else int(rng.integers(1, 10))
                skew = float(rng.normal(0, 0.8))
                groups.append({"word": word, "attribute": "gender", "group": g, "scope": scope, "subset": s,
                               "count": count, "skew": skew, "skew_ci_low": skew - 0.5, "skew_ci_high": skew + 0.4,
                               "flagged": bool(rng.random() < 0.3)})
            words.append({"word": word, "attribute": "gender", "subset": s, "scope": scope,
                          "kl_recall": float(rng.random()), "max_skew_excess": float(rng.normal())})
    transfer = pd.DataFrame({"attribute": "gender", "statistic": "max_skew_excess", "subset": subsets[1:],
                             "n_models": 12, "rho": [0.8, 0.5, -0.1, 0.3], "ci_low": [0.5, 0.1, -0.6, -0.2],
                             "ci_high": [0.95, 0.8, 0.4, 0.7]})
    return pd.DataFrame(groups), pd.DataFrame(words), transfer


def _balance_tables():
    groups, cells = [], []
    for j, data in enumerate(("before", "after", "kept")):
        for g, share in (("man", 0.62), ("woman", 0.38)):
            s = share - 0.1 * j * (share - 0.5)
            groups.append({"data": data, "group": g, "share": s, "share_low": s - 0.02, "share_high": s + 0.02,
                           "target": 0.5, "rb": s - 0.5})
            for label, ab in (("a label with a long name", 0.1), ("doctor", -0.05), ("kitchen", 0.2)):
                v = ab * (1 - 0.45 * j)
                cells.append({"data": data, "group": g, "label": label, "ab": v, "ab_low": v - 0.03,
                              "ab_high": v + 0.03})
    return pd.DataFrame(groups), pd.DataFrame(cells)


def _sweep_tables():
    coefs = pd.DataFrame({"term": ["Intercept", "log10(samples seen)", "arch_family[T.ViT with a long name]"],
                          "estimate": [0.1, 0.3, -0.2], "ci_low": [0.0, 0.1, -0.5], "ci_high": [0.2, 0.5, 0.1],
                          "p_value": [0.5, 0.01, 0.2]})
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"imagenet1k": rng.random(12), "value": rng.normal(size=12),
                       "dataset_family": ["laion", "openai", "datacomp with a long family name"] * 4})
    return coefs, df


def _cases(reports) -> dict:
    """``module.function`` -> a callable drawing it on small data and returning its Axes or Figure."""
    from clipprobe.analysis.crosscheck import crosscheck
    from clipprobe.analysis.power import power_plot
    from clipprobe.captions.figures import lift_heatmap
    from clipprobe.report import association, balance, compare, crosscheck as cc, eat, figures, subsets, sweep

    a, b = reports
    g = a.groups
    cooc = _cooccurrence(sorted(set(g["word"])), list(dict.fromkeys(zip(g["attribute"], g["group"]))))
    joined, corr = crosscheck(g, cooc, min_rows=5)
    result = compare.compare_reports([a, b])
    sub_groups, sub_words, transfer = _subsets_tables()
    bal_groups, bal_cells = _balance_tables()
    coefs, perf = _sweep_tables()
    curve = pd.DataFrame({"k": 40, "group": ["Group A"] * 3 + ["a group with a long name"] * 3,
                          "base_share": [0.6] * 3 + [0.4] * 3, "ratio": [1.0, 1.5, 2.0] * 2,
                          "power": [0.05, 0.4, 0.9, 0.04, 0.3, 0.8]})     # power_curve's columns
    return {
        "clipprobe.report.figures.skew_heatmap": lambda: figures.skew_heatmap(g, "race_gender"),
        "clipprobe.report.figures.entropy_by_category": lambda: figures.entropy_by_category(a.summary),
        "clipprobe.report.figures.word_skew_dots": lambda: figures.word_skew_dots(g, LONG_CATEGORY, "gender"),
        "clipprobe.report.figures.word_skew_panels": lambda: figures.word_skew_panels(g, None, "race_gender",
                                                                                     max_words=6),
        "clipprobe.report.figures.stability_dots": lambda: figures.stability_dots(a.words, category=LONG_CATEGORY),
        "clipprobe.captions.figures.lift_heatmap": lambda: lift_heatmap(cooc, top=8),
        "clipprobe.report.compare.compare_entropy_plot": lambda: compare.compare_entropy_plot(result, "race"),
        "clipprobe.report.compare.compare_skew_scatter": lambda: compare.compare_skew_scatter(result, "gender",
                                                                                             *result.names),
        "clipprobe.report.crosscheck.crosscheck_scatter": lambda: cc.crosscheck_scatter(
            joined, attribute="race", correlations=corr),
        "clipprobe.report.eat.forest_plot": lambda: eat.forest_plot(_eat_table(), title="Association tests of a "
                                                                    "suite with a long name, image-text order"),
        "clipprobe.report.association.association_plot": lambda: association.association_plot(_ab_table()),
        "clipprobe.report.subsets.word_spread": lambda: subsets.word_spread(sub_groups, LONG_WORD, "gender"),
        "clipprobe.report.subsets.subset_heatmap": lambda: subsets.subset_heatmap(sub_words, "gender",
                                                                                 "max_skew_excess"),
        "clipprobe.report.subsets.transfer_plot": lambda: subsets.transfer_plot(transfer, "gender",
                                                                               "max_skew_excess"),
        "clipprobe.report.sweep.coefficient_plot": lambda: sweep.coefficient_plot(
            coefs, title="eat: effect size of every association test in the sweep"),
        "clipprobe.report.sweep.scatter_plot": lambda: sweep.scatter_plot(perf, "imagenet1k",
                                                                         title="weat-flowers-insects (text)"),
        "clipprobe.report.balance.rb_plot": lambda: balance.rb_plot(bal_groups),
        "clipprobe.report.balance.ab_plot": lambda: balance.ab_plot(bal_cells),
        "clipprobe.report.balance.balance_figure": lambda: balance.balance_figure(bal_groups, bal_cells),
        "clipprobe.analysis.power.power_plot": lambda: power_plot(curve),
    }


NAMES = sorted([
    "clipprobe.analysis.power.power_plot", "clipprobe.captions.figures.lift_heatmap",
    "clipprobe.report.association.association_plot", "clipprobe.report.balance.ab_plot",
    "clipprobe.report.balance.balance_figure", "clipprobe.report.balance.rb_plot",
    "clipprobe.report.compare.compare_entropy_plot", "clipprobe.report.compare.compare_skew_scatter",
    "clipprobe.report.crosscheck.crosscheck_scatter", "clipprobe.report.eat.forest_plot",
    "clipprobe.report.figures.entropy_by_category", "clipprobe.report.figures.skew_heatmap",
    "clipprobe.report.figures.stability_dots", "clipprobe.report.figures.word_skew_dots",
    "clipprobe.report.figures.word_skew_panels", "clipprobe.report.subsets.subset_heatmap",
    "clipprobe.report.subsets.transfer_plot", "clipprobe.report.subsets.word_spread",
    "clipprobe.report.sweep.coefficient_plot", "clipprobe.report.sweep.scatter_plot",
])


@pytest.fixture(scope="module")
def cases(reports):
    return _cases(reports)


# --------------------------------------------------------------------------- tests


def test_every_figure_function_has_a_case(cases):
    found = figure_functions()
    assert "clipprobe.report.figures.word_skew_panels" in found and "clipprobe.report.eat.forest_plot" in found
    assert found == set(cases), f"without a case: {sorted(found - set(cases))}; gone: {sorted(set(cases) - found)}"
    assert set(NAMES) == set(cases)


@pytest.mark.parametrize("name", NAMES)
def test_nothing_is_drawn_outside_the_canvas(cases, name, tmp_path):
    fig = cases[name]().figure
    # the layout save_figure computes (fitted, then frozen) is the one every format is written with
    figstyle.save_figure(fig, tmp_path / name.rsplit(".", 1)[1], formats=("png",), dpi=40)
    assert drawn_outside(fig) == []


def test_the_check_sees_a_title_cut_off():
    """The oracle can fail: a title far wider than its figure, laid out without fitting, is reported."""
    fig = figstyle.new_figure(figstyle.COLUMN_WIDTH, 2.0)
    ax = fig.add_subplot()
    ax.set_title("a title that is very much longer than one journal column can hold, " * 2)
    fig.draw_without_rendering()
    assert any("a title" in b for b in drawn_outside(fig))
    assert figstyle.outside_canvas(fig)
    assert figstyle.fit_to_canvas(fig) == [] and drawn_outside(fig) == []
    assert "\n" in ax.get_title()                    # wrapped, not cut


def test_slides_style_fits_too(cases, tmp_path):
    with figstyle.use_style("slides"):
        for name in ("clipprobe.report.figures.word_skew_panels", "clipprobe.report.crosscheck.crosscheck_scatter",
                     "clipprobe.report.eat.forest_plot"):
            fig = cases[name]().figure
            assert fig.get_figwidth() in (pytest.approx(figstyle.COLUMN_WIDTH * 1.4),
                                          pytest.approx(figstyle.PAGE_WIDTH * 1.4))
            figstyle.save_figure(fig, tmp_path / "s", formats=("png",), dpi=40)
            assert drawn_outside(fig) == [], name


def test_legend_columns_fit_the_width_and_balance_the_rows():
    """Columns as wide as their own longest label: the four attribute names fit one row of a one-column figure
    (the longest label alone used to set every column's width, giving three and one); four labels that fit
    only three to a row are laid out two and two; drawn, the legend stays inside the figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with figstyle.use_style("paper"), figstyle.style():
        fig = Figure(figsize=(figstyle.COLUMN_WIDTH, 3.0))
        FigureCanvasAgg(fig)
        assert figstyle.legend_columns(fig, ["race", "gender", "age", "race_gender"]) == 4
        wide = ["a label of thirteen"[:13] + str(i) for i in range(4)]
        assert figstyle.legend_columns(fig, wide) == 2
        assert figstyle.legend_columns(fig, ["x" * 80] * 3) == 1
        assert figstyle.legend_columns(fig, list("abcdefg")) == 4
        assert figstyle.legend_columns(fig, []) == 1
        ax = fig.add_subplot()
        for label in ["race", "gender", "age", "race_gender"]:
            ax.plot([0, 1], [0, 1], "o", label=label)
        legend = fig.legend(loc="lower center", ncol=figstyle.legend_columns(fig, ["race", "gender", "age",
                                                                                    "race_gender"]))
        renderer = fig.canvas.get_renderer()
        box = legend.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width


@pytest.mark.parametrize("style_name", ["paper", "slides"])
def test_right_hand_legend_keeps_its_margin_from_the_edge(cases, style_name, tmp_path):
    """The balance figure's legend (right of the AB panel) keeps LEGEND_MARGIN points, scaled with the text,
    between its entries and the canvas's right edge (before: the layout's 3 pt plus the box's own 2.6 pt)."""
    with figstyle.use_style(style_name):
        fig = cases["clipprobe.report.balance.balance_figure"]().figure
        want = figstyle.scaled(figstyle.LEGEND_MARGIN)
    figstyle.save_figure(fig, tmp_path / "balance", formats=("png",), dpi=40)
    fig.draw_without_rendering()  # the frozen layout, drawn again at the figure's own dpi to measure it
    renderer = figstyle._renderer(fig)
    texts = [t for ax in fig.axes if ax.get_legend() is not None for t in ax.get_legend().get_texts()]
    right = max(t.get_window_extent(renderer).x1 for t in texts)
    assert (fig.bbox.x1 - right) * 72 / fig.dpi == pytest.approx(want, abs=0.5)
    assert drawn_outside(fig) == []
