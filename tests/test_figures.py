"""Report loading, paper figures, contact sheets and `clipprobe figures`."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from matplotlib.colors import to_rgb
from PIL import Image

from clipprobe.report import figures
from clipprobe.cli import cli
from clipprobe.report.contact import contact_sheet, save_contact_sheet, word_sheet
from clipprobe.errors import ClipprobeError, DataError
from clipprobe.report.store import FORMAT_VERSION, load_report
from reportgen import make_report


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    return make_report(tmp_path_factory.mktemp("figs") / "report")


@pytest.fixture(scope="module")
def report(report_dir):
    return load_report(report_dir)


# --------------------------------------------------------------------------- reportio


def test_load_report_reads_tables_and_splits_categories(report):
    assert set(report.attributes) == {"race", "gender", "age", "race_gender"}
    assert report.attributes[0] == "race"
    # "ceo" is in two categories, joined by "; ": both must be listed, and no joined string.
    assert report.categories == ["occupation", "status", "traits"]
    assert report.words.loc[report.words["word"] == "ceo", "category"].iloc[0] == ["occupation", "status"]
    assert report.model_spec == "TinyCLIP-test:random"
    assert report.groups["flagged"].dtype == bool


def test_load_report_missing_folder(tmp_path):
    with pytest.raises(DataError, match="report folder .*nowhere does not exist"):
        load_report(tmp_path / "nowhere")


@pytest.mark.parametrize("name", ["groups.parquet", "words.parquet", "summary.csv", "run.json"])
def test_load_report_missing_file(tmp_path, name):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5)
    (d / name).unlink()
    with pytest.raises(DataError) as err:
        load_report(d)
    assert str(d) in str(err.value) and name in str(err.value)


def test_load_report_incompatible_version_names_both_versions(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5, format_version=99)
    with pytest.raises(DataError) as err:
        load_report(d)
    msg = str(err.value)
    assert str(d) in msg and "99" in msg and f"format_version {FORMAT_VERSION}" in msg


def test_load_report_missing_columns_are_named(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5)
    words = pd.read_parquet(d / "words.parquet").drop(columns=["stability", "ndkl_full"])
    words.to_parquet(d / "words.parquet", index=False)
    with pytest.raises(DataError, match=r"words.parquet .* lacks columns: ndkl_full, stability"):
        load_report(d)


def test_load_report_bad_json(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5)
    (d / "run.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(DataError, match="run.json .* not valid JSON"):
        load_report(d)


# --------------------------------------------------------------------------- plots


def _oracle_mean_skew(groups, attribute):
    """Mean skew per (category, group), counting a two-category word in both, by plain loops."""
    sums, counts = defaultdict(float), defaultdict(int)
    for row in groups.itertuples(index=False):
        if row.attribute != attribute:
            continue
        for cat in row.category:
            sums[cat, row.group] += row.skew
            counts[cat, row.group] += 1
    return {key: sums[key] / counts[key] for key in sums}


@pytest.mark.parametrize("attribute", ["race", "gender", "race_gender"])
def test_skew_heatmap_shows_mean_skew_per_category_and_group(report, attribute):
    ax = figures.skew_heatmap(report.groups, attribute)
    data = np.ma.getdata(ax.images[0].get_array())
    rows = [t.get_text() for t in ax.get_yticklabels()]
    cols = [t.get_text() for t in ax.get_xticklabels()]
    assert rows == report.categories
    assert cols == report.groups_of(attribute)
    oracle = _oracle_mean_skew(report.groups, attribute)
    assert len(oracle) == len(rows) * len(cols)
    for i, cat in enumerate(rows):
        for j, group in enumerate(cols):
            assert data[i, j] == pytest.approx(oracle[cat, group], abs=1e-12)
    norm = ax.images[0].norm
    assert norm.vmin == pytest.approx(-norm.vmax)  # centred at 0
    assert norm.vmax == pytest.approx(max(abs(v) for v in oracle.values()))
    assert ax.images[0].get_cmap().name.startswith("RdBu_r")


def test_skew_heatmap_draws_on_given_axes(report):
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    assert figures.skew_heatmap(report.groups, "gender", ax=ax) is ax


def test_unknown_attribute_lists_valid_ones(report):
    with pytest.raises(ClipprobeError, match=r"unknown attribute 'rase' \(did you mean 'race'.*valid:"):
        figures.skew_heatmap(report.groups, "rase")


def test_entropy_by_category_plots_summary(report):
    ax = figures.entropy_by_category(report.summary, attributes=["race", "gender"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    s = report.summary
    means = s[s["attribute"].isin(["race", "gender"])].groupby("category")["mean_norm_entropy"].mean()
    assert labels == list(means.sort_values().index)
    assert ax.get_xlim() == pytest.approx((0, 1.02))
    series = [line for line in ax.get_lines() if line.get_label() in ("race", "gender")]
    assert [line.get_label() for line in series] == ["race", "gender"]
    for line, attr in zip(series, ["race", "gender"]):
        want = s[s["attribute"] == attr].set_index("category").loc[labels]
        np.testing.assert_allclose(line.get_xdata(), want["mean_norm_entropy"].to_numpy())
    assert not ax.containers  # no interval is drawn: none was measured to cover


def _zero_marks(ax):
    return [line for line in ax.get_lines() if line.get_label() == "_zero_faces"]


def test_word_skew_dots_rows_points_and_flags(report):
    g = report.groups
    ax = figures.word_skew_dots(g, "status", "race")
    rows = g[(g["attribute"] == "race") & g["category"].map(lambda c: "status" in c)]
    order = rows.groupby("word")["skew"].max().sort_values(ascending=False).index.tolist()
    assert [t.get_text() for t in ax.get_yticklabels()] == order
    measured, zero = rows[rows["count"] > 0], rows[rows["count"] == 0]
    assert len(zero) > 0                       # the fixture has groups with no face in a top-k
    points = np.concatenate([c.get_offsets() for c in ax.collections if type(c).__name__ == "PathCollection"
                             and len(c.get_offsets())])
    assert len(points) == len(measured)        # a point per group with faces ...
    assert sorted(points[:, 0]) == pytest.approx(sorted(measured["skew"]))
    segments = sum(len(c.get_segments()) for c in ax.collections if type(c).__name__ == "LineCollection")
    assert segments == len(measured)           # ... and an interval for each of them only
    marks = _zero_marks(ax)                    # no face: an x in the strip, at the word's row, no skew
    assert sum(len(m.get_ydata()) for m in marks) == len(zero)
    assert all(m.get_marker() == "x" and set(m.get_xdata()) == {figures.ZERO_STRIP / 2} for m in marks)
    ypos = {w: i for i, w in enumerate(order)}
    ys = np.concatenate([m.get_ydata() for m in marks])
    assert sorted(np.round(ys).astype(int)) == sorted(ypos[w] for w in zero["word"])
    assert ax.get_xlim()[0] < min(measured["skew_ci_low"]) and "0 faces" in " ".join(
        t.get_text() for t in ax.figure.legends[0].get_texts())
    filled = sum(len(c.get_offsets()) for c in ax.collections if type(c).__name__ == "PathCollection"
                 and len(c.get_offsets()) and tuple(c.get_facecolor()[0][:3]) != (1.0, 1.0, 1.0))
    assert filled == int(measured["flagged_vs_controls"].sum())     # the headline flag: against the controls
    assert "status" in ax.get_title() and "race" in ax.get_title()


def test_word_skew_panels_small_multiples_of_race_and_gender(report):
    """race_gender: one panel per word, a row per race, the genders as two series in the gender plots'
    colours; the points are the skews of the groups with faces, the rest are "0 faces" marks."""
    g = report.groups
    fig = figures.word_skew_panels(g, None, "race_gender", max_words=5)
    panels = [ax for ax in fig.axes if ax.get_title(loc="left")]
    order = _most_skewed(g, "race_gender")[:5]
    assert [ax.get_title(loc="left") for ax in panels] == order
    races = list(dict.fromkeys(r.rsplit("_", 1)[0] for r in report.groups_of("race_gender")))
    assert [t.get_text() for t in panels[0].get_yticklabels()] == races
    gender_colors = [figures.series_style(i)[0] for i in range(2)]       # Male, Female as in the gender plots
    for ax, word in zip(panels, order):
        rows = g[(g["attribute"] == "race_gender") & (g["word"] == word)]
        measured = rows[rows["count"] > 0]
        pts = [c for c in ax.collections if type(c).__name__ == "PathCollection" and len(c.get_offsets())]
        xy = np.concatenate([c.get_offsets() for c in pts])
        assert sorted(xy[:, 0]) == pytest.approx(sorted(measured["skew"]))
        for c in pts:
            edge = c.get_edgecolor()[0][:3] if tuple(c.get_facecolor()[0][:3]) == (1.0, 1.0, 1.0) else \
                c.get_facecolor()[0][:3]
            assert any(np.allclose(edge, to_rgb(col)) for col in gender_colors)
        for row in measured.itertuples():
            race, gender = row.group.rsplit("_", 1)
            y = races.index(race) + (-0.2 if gender == "Male" else 0.2)
            assert any(np.allclose(p, (row.skew, y)) for p in xy), row.group
        assert sum(len(m.get_ydata()) for m in _zero_marks(ax)) == int((rows["count"] == 0).sum())
    assert panels[0].get_shared_x_axes().joined(panels[0], panels[-1])    # one skew scale for every panel
    assert "race_gender" in fig._suptitle.get_text() and fig.get_figwidth() == pytest.approx(figures.PAGE_WIDTH)


def test_word_skew_dots_unknown_category(report):
    with pytest.raises(ClipprobeError, match=r"unknown category 'statos'.*valid: 'occupation', 'status', 'traits'"):
        figures.word_skew_dots(report.groups, "statos", "race")


def test_stability_dots_one_point_per_word_and_attribute(report):
    ax = figures.stability_dots(report.words, category="occupation", attributes=["race", "gender"])
    w = report.words
    rows = w[w["category"].map(lambda c: "occupation" in c) & w["attribute"].isin(["race", "gender"])]
    offsets = [c.get_offsets() for c in ax.collections]
    assert [len(o) for o in offsets] == [rows["word"].nunique()] * 2
    for o, attr in zip(offsets, ["race", "gender"]):
        assert sorted(o[:, 0]) == pytest.approx(sorted(rows.loc[rows["attribute"] == attr, "stability"]))
    assert ax.get_xlim() == pytest.approx((-0.02, 1.02))


def test_palette_is_okabe_ito():
    assert set(figures.OKABE_ITO) == {"#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00",
                                      "#CC79A7", "#000000"}
    # colours cycle before markers change, and 14 series stay distinct
    styles = {figures.series_style(i) for i in range(14)}
    assert len(styles) == 14


def _flagged_attributes(report):
    """Attributes with at least one flagged pair, in the report's order (plain loop)."""
    seen = set()
    for row in report.groups.itertuples(index=False):
        if row.flagged_vs_controls:          # the headline flag: against the control queries
            seen.add(row.attribute)
    return [a for a in report.attributes if a in seen]


def test_write_report_figures_png_beside_vector_pdf_and_svg(report, tmp_path):
    paths = figures.write_report_figures(report, tmp_path / "f", attributes=["gender"], categories=["traits"],
                                         figure_set="all")
    names = sorted(p.name for p in paths)
    # gender has no flagged pair here, but it is the only attribute asked for, so it gets the top-words plot
    assert "gender" not in _flagged_attributes(report)
    assert names == sorted(f"{s}.{ext}" for s in ("heatmap_skew_gender", "entropy_by_category",
                                                   "top_words_skew_gender_traits",
                                                   "word_skew_traits_gender", "stability_traits")
                           for ext in ("png", "pdf", "svg"))
    for p in paths:
        assert p.stat().st_size > 1000
    pdf = (tmp_path / "f" / "word_skew_traits_gender.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Subtype /Image" not in pdf  # vector, no raster inside
    svg = (tmp_path / "f" / "word_skew_traits_gender.svg").read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml") and "<image" not in svg   # vector, no raster inside
    assert "Male" in svg and "traits: skew by group" in svg           # text stays text (svg.fonttype none)
    with Image.open(tmp_path / "f" / "word_skew_traits_gender.png") as img:
        assert img.size[0] == round(figures.COLUMN_WIDTH * 300)  # a journal column at 300 dpi: 990 px
        assert img.info["dpi"] == pytest.approx((300, 300), abs=0.01)
    assert figures.PNG_DPI == 300
    assert not list((tmp_path / "f").glob(".*tmp*"))  # atomic writes left nothing behind
    again = tmp_path / "again"
    figures.write_report_figures(report, again, attributes=["gender"], categories=["traits"], figure_set="all",
                                 formats=("svg", "pdf"))
    for p in again.iterdir():                        # the same figure gives the same vector files
        assert p.read_bytes() == (tmp_path / "f" / p.name).read_bytes(), p.name


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_core_set_is_heatmaps_entropy_and_top_words_of_flagged_attributes(report, tmp_path):
    flagged = _flagged_attributes(report)
    assert flagged and len(flagged) < len(report.attributes)  # the choice is visible in this report
    paths = figures.write_report_figures(report, tmp_path / "core")
    stems = sorted({p.stem for p in paths})
    want = ([f"heatmap_skew_{a}" for a in report.attributes] + ["entropy_by_category"]
            + [f"top_words_skew_{a}" for a in flagged])
    assert stems == sorted(want)
    assert sorted(p.suffix for p in paths) == sorted([".pdf", ".png", ".svg"] * len(want))
    # the default of `clipprobe report` stays within ~30 files for any report
    assert len(paths) <= 3 * (2 * len(report.attributes) + 1)


def test_core_set_without_flagged_pairs_keeps_first_attribute(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c", "d": "e"}, images=False, n_boot=5, alpha=1e-12)
    rep = load_report(d)
    assert not rep.groups["flagged"].any() and not rep.groups["flagged_vs_controls"].any()
    stems = [s.stem for s in figures.figure_specs(rep)]
    assert [s for s in stems if s.startswith("top_words")] == ["top_words_skew_race"]


def test_all_set_adds_every_category_and_attribute(report):
    core = [s.stem for s in figures.figure_specs(report, figure_set="core")]
    every = figures.figure_specs(report, figure_set="all")
    assert [s.stem for s in every][:len(core)] == core
    extra = every[len(core):]
    want = []
    for cat in report.categories:
        want += [f"word_skew_{cat}_{a}" for a in report.attributes] + [f"stability_{cat}"]
    assert [s.stem for s in extra] == want
    assert all(s.category in report.categories for s in extra)
    assert all(s.category is None for s in every[:len(core)])


def test_unknown_figure_set_lists_valid_ones(report, tmp_path):
    with pytest.raises(ClipprobeError, match=r"unknown figure set 'full'.*valid: 'core', 'all'"):
        figures.write_report_figures(report, tmp_path / "x", figure_set="full")
    assert not (tmp_path / "x").exists()


def test_save_figure_lays_out_once_for_png_and_pdf(report, tmp_path, monkeypatch):
    from matplotlib.layout_engine import ConstrainedLayoutEngine

    calls = []
    original = ConstrainedLayoutEngine.execute

    def counting(self, fig):
        calls.append(fig)
        return original(self, fig)

    monkeypatch.setattr(ConstrainedLayoutEngine, "execute", counting)
    ax = figures.word_skew_dots(report.groups, "status", "race")
    figures.freeze_layout(ax.figure)
    frozen = ax.get_position().bounds
    assert len(calls) == 1
    paths = figures.save_figure(ax.figure, tmp_path / "w")
    assert len(calls) == 1  # neither the PNG nor the PDF nor the SVG laid the figure out again
    assert ax.get_position().bounds == pytest.approx(frozen)
    assert [p.suffix for p in paths] == [".png", ".pdf", ".svg"]
    # the frozen layout is the constrained one: the axes moved in from the figure's default margins
    assert frozen != pytest.approx((0.125, 0.11, 0.775, 0.77))


def _most_skewed(groups, attribute, category=None):
    """Words by their largest skew over the groups, largest first (plain loops)."""
    best = {}
    for row in groups.itertuples(index=False):
        if row.attribute != attribute or (category and category not in row.category):
            continue
        best[row.word] = max(best.get(row.word, -np.inf), row.skew)
    return sorted(best, key=lambda w: (-best[w], w))   # ties: alphabetical


def test_word_skew_dots_max_words_keeps_most_skewed_and_says_so(report):
    g = report.groups
    order = _most_skewed(g, "race")
    ax = figures.word_skew_dots(g, None, "race", max_words=4)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == order[:4]
    assert f"4 most skewed of {len(order)} words" in ax.get_title()
    points = sum(len(c.get_offsets()) for c in ax.collections if type(c).__name__ == "PathCollection")
    shown = g[(g["attribute"] == "race") & g["word"].isin(order[:4])]
    assert points == int((shown["count"] > 0).sum())            # the groups with faces; the rest are marks
    assert sum(len(m.get_ydata()) for m in _zero_marks(ax)) == int((shown["count"] == 0).sum())
    every = figures.word_skew_dots(g, None, "race", max_words=0)
    assert [t.get_text() for t in every.get_yticklabels()] == order
    assert "most skewed of" not in every.get_title()
    with pytest.raises(ClipprobeError, match="max_words must be 0 .* got -1"):
        figures.word_skew_dots(g, None, "race", max_words=-1)


def test_tall_plots_fit_one_page_by_default(tmp_path):
    words = {f"w{i:02d}": "big" for i in range(60)}
    d = make_report(tmp_path / "r", words=words, plants={}, images=False, n_boot=5, n_images=200)
    rep = load_report(d)
    for attr in ("race_gender", "gender"):
        ax = figures.word_skew_dots(rep.groups, "big", attr)
        n = len(ax.get_yticklabels())
        m = len(rep.groups_of(attr))
        assert ax.figure.get_figheight() <= figures.MAX_HEIGHT + 0.2
        assert n == min(60, figures.fit_words(0.045 * m, 1.0 + 0.12 * np.ceil((m + 1) / 4)))
        assert [t.get_text() for t in ax.get_yticklabels()] == _most_skewed(rep.groups, attr, "big")[:n]
        if n < 60:
            assert f"{n} most skewed of 60 words" in ax.get_title()
    ax = figures.stability_dots(rep.words, category="big")
    n = len(ax.get_yticklabels())
    assert n < 60 and ax.figure.get_figheight() <= figures.MAX_HEIGHT + 0.2
    assert f"{n} least stable of 60 words" in ax.get_title()
    mean_stab = rep.words.groupby("word")["stability"].mean()
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert max(mean_stab[shown]) <= min(mean_stab.drop(shown))  # the least stable words were kept


def test_figure_file_names_are_safe_and_distinct(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "x/y", "b": "x y", "c": "../up"}, images=False, n_boot=5)
    rep = load_report(d)
    stems = [stem for stem, _, _ in figures.report_figures(rep, attributes=["gender"], figure_set="all")]
    assert len(stems) == len(set(stems))
    assert all(figures.slug(s) == s for s in stems)
    assert "word_skew_x-y_gender" in stems and "word_skew_x-y_gender-2" in stems


# --------------------------------------------------------------------------- contact sheets


def test_contact_sheet_layout_pixels_and_placeholder():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    imgs = [Image.new("RGB", (50, 80), c) for c in colours] + [None]
    sheet = contact_sheet(imgs, ["#1\nWhite", "#2\nBlack", "#3\nIndian", "#4"], columns=3, thumb=40)
    pad, line_h = 4, max(8, min(13, 40 // 8)) + 3
    cell_w, cell_h = 40 + pad, 40 + pad + 2 * line_h + pad
    assert sheet.size == (3 * cell_w + pad, 2 * cell_h + pad)
    for i, c in enumerate(colours):
        x, y = pad + i * cell_w + 20, pad + 20
        assert sheet.getpixel((x, y)) == c
    # the fourth face (None) is a grey placeholder on the second row
    assert sheet.getpixel((pad + 2, pad + cell_h + 2)) == (215, 215, 215)
    # labels are drawn: the strip under the first face is not blank
    strip = np.asarray(sheet.crop((pad, pad + 40, pad + 40, pad + 40 + 2 * line_h)))
    assert (strip < 128).any()


def test_contact_sheet_title_and_errors(tmp_path):
    with pytest.raises(ClipprobeError, match="one label per image: got 2 images and 1 labels"):
        contact_sheet([None, None], ["a"])
    with pytest.raises(ClipprobeError, match="columns must be a positive integer"):
        contact_sheet([None], ["a"], columns=0)
    with_title = contact_sheet([None], ["a"], title="nurse")
    without = contact_sheet([None], ["a"])
    assert with_title.size[1] > without.size[1]
    path = save_contact_sheet(tmp_path / "s.jpg", [Image.new("RGB", (10, 10))], ["x"])
    with Image.open(path) as img:
        assert img.format == "JPEG"
    with pytest.raises(ClipprobeError, match="unknown image suffix '.gif'"):
        save_contact_sheet(tmp_path / "s.gif", [None], ["x"])


def test_word_sheet_loads_top_faces_in_rank_order(report):
    seen = []

    def loader(name):
        seen.append(name)
        return Image.new("RGB", (8, 8))

    sheet = word_sheet(report, "nurse", image_loader=loader, n=5, columns=5, thumb=32)
    top = list(report.words.loc[report.words["word"] == "nurse", "top_files"].iloc[0])
    assert seen == top[:5]
    assert sheet.size[0] == 5 * 36 + 4
    # the default loader reads the dataset root recorded in run.json; a failing file is a placeholder
    assert word_sheet(report, "nurse", n=3).size[1] > 0
    with pytest.raises(ClipprobeError, match="unknown word 'nurses'"):
        word_sheet(report, "nurses", image_loader=loader)


# --------------------------------------------------------------------------- CLI


def test_cli_figures_writes_files_and_contact_sheet(report_dir, tmp_path):
    out = tmp_path / "out"
    res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(out), "--attribute", "gender",
                                   "--category", "status", "--word", "ceo"])
    assert res.exit_code == 0, res.output
    assert (out / "heatmap_skew_gender.pdf").is_file() and (out / "word_skew_status_gender.png").is_file()
    assert not (out / "heatmap_skew_race.png").exists()
    with Image.open(out / "contact_ceo.png") as img:
        assert img.size[0] > 500
    n_figures = len(figures.figure_specs(load_report(report_dir), attributes=["gender"], categories=["status"],
                                         figure_set="all"))
    assert n_figures == 5  # heatmap, entropy, top words (the only attribute asked for), dot plot, stability
    assert f"wrote {3 * n_figures + 1} files" in res.output     # png, pdf and svg each, and the sheet


@pytest.mark.slow        # over the default suite's 10 s per test on 2 shared cores
def test_cli_figures_core_set_max_words_and_html_reuse(report_dir, report, tmp_path, monkeypatch):
    import clipprobe.report.html as htmlreport

    drawn = []
    original = htmlreport._figure_png
    monkeypatch.setattr(htmlreport, "_figure_png", lambda fig, **kw: drawn.append(fig) or original(fig, **kw))
    out = tmp_path / "core"
    res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(out), "--set", "core", "--html"])
    assert res.exit_code == 0, res.output
    specs = figures.figure_specs(report)
    assert sorted(p.name for p in out.iterdir() if p.suffix in (".png", ".pdf", ".svg")) == sorted(
        f"{s.stem}.{x}" for s in specs for x in ("png", "pdf", "svg"))
    assert drawn == []  # the page took every figure from the PNGs just written
    assert f"wrote {3 * len(specs) + 1} files" in res.output
    res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(tmp_path / "mw"), "--set", "core",
                                   "--attribute", "race", "--max-words", "3", "--format", "png"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(tmp_path / "x"), "--max-words", "-2"])
    assert res.exit_code == 2 and "--max-words" in res.output


def test_cli_figures_bad_input(report_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["figures", str(report_dir), "--out", str(tmp_path), "--category", "jobs"])
    assert res.exit_code == 1
    assert "unknown category 'jobs'" in res.output and "'occupation', 'status', 'traits'" in res.output
    res = runner.invoke(cli, ["figures", str(report_dir), "--out", str(tmp_path), "--attribute", "sex"])
    assert res.exit_code == 1 and "valid: 'race', 'gender', 'age', 'race_gender'" in res.output
    res = runner.invoke(cli, ["figures", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output


def test_cli_figures_word_without_images_is_skipped_with_note(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5)
    run = json.loads((d / "run.json").read_text())
    assert run["dataset"]["root"] is None
    res = CliRunner().invoke(cli, ["figures", str(d), "--out", str(tmp_path / "o"), "--attribute", "gender",
                                   "--word", "a"])
    assert res.exit_code == 0, res.output
    assert "contact sheets skipped" in res.output
    assert not list((tmp_path / "o").glob("contact_*"))
    want = figures.figure_specs(load_report(d), attributes=["gender"], figure_set="all")
    assert sorted(p.stem for p in (tmp_path / "o").glob("*.pdf")) == sorted(s.stem for s in want)


def test_top_words_restricted_to_categories(report):
    specs = figures.figure_specs(report, categories=["traits"])
    top = [s for s in specs if s.kind == "top_words"]
    assert top and all(s.stem.endswith("_traits") for s in top)
    traits = {w for w, c in zip(report.words["word"], report.words["category"]) if "traits" in c}
    for spec in top:
        drawn = spec.draw()
        if spec.wide:      # small multiples: a panel per word
            shown = {ax.get_title(loc="left") for ax in drawn.axes if ax.get_title(loc="left")}
        else:
            shown = {t.get_text() for t in drawn.get_yticklabels()}
        assert shown == traits  # few words: all of them, and only them
    with pytest.raises(ClipprobeError, match="max_words must be 0 .* got -3"):
        figures.figure_specs(report, max_words=-3)


def test_load_report_refuses_a_mixed_folder(tmp_path):
    """A run killed after replacing one table of an older report leaves a mix: refused, not drawn."""
    d = make_report(tmp_path / "r", words={"a": "c", "b": "c"}, images=False, n_boot=5, seed=1)
    other = make_report(tmp_path / "o", words={"a": "c", "b": "c"}, images=False, n_boot=5, seed=2, k=7)
    (d / "groups.parquet").write_bytes((other / "groups.parquet").read_bytes())
    with pytest.raises(DataError, match=r"incomplete or mixed: groups.parquet does not match run.json"):
        load_report(d)
    r = CliRunner().invoke(cli, ["figures", str(d), "--out", str(tmp_path / "figs")])
    assert r.exit_code == 1 and "incomplete or mixed" in r.output and "Traceback" not in r.output


# --------------------------------------------------------------------------- issue 12.7 / 12.10


def test_dollar_signs_in_words_and_categories_are_drawn_literally(tmp_path):
    """A word with $...$ is not math text: every figure is written and its labels read as in the taxonomy."""
    words = {r"$\bogus{$ man": r"money $$", "$5 a day": r"money $$", "thief": "crime"}
    d = make_report(tmp_path / "r", words=words, images=False, n_boot=5)
    report = load_report(d)
    paths = figures.write_report_figures(report, tmp_path / "figs", figure_set="all", formats=("png",))
    assert len(paths) >= 4 and all(p.stat().st_size > 0 for p in paths)
    ax = figures.word_skew_dots(report.groups, "money $$", "race", max_words=0)
    labels = {t.get_text() for t in ax.get_yticklabels()}
    assert labels == {r"\$\bogus{\$ man", r"\$5 a day"}
    assert ax.get_title().startswith(r"money \$\$: skew by group")
    ax.figure.canvas.draw()   # math text would fail here on the first word
    assert figures.short("$5 a day") == r"\$5 a day" and figures.literal("a $b$") == r"a \$b\$"


def test_stale_temporaries_in_the_figures_folder_are_removed(report, tmp_path):
    import os
    import time

    out = tmp_path / "figs"
    out.mkdir()
    stale = out / ".heatmap_skew_race.png.k3j9x0ab.tmp"
    stale.write_bytes(b"half a png")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    fresh = out / ".other.png.a1b2c3d4.tmp"   # a concurrent run's, written after this run began
    started = time.time() - 60
    fresh.write_bytes(b"being written")
    figures.write_report_figures(report, out, figure_set="core", formats=("png",), started=started)
    assert not stale.exists() and fresh.exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p != fresh]


@pytest.mark.parametrize("command", ["figures", "compare"])
def test_cli_out_naming_an_existing_file_is_a_one_line_error(report_dir, tmp_path, command):
    taken = tmp_path / "figures.png"
    taken.write_bytes(b"an image")
    args = [command, str(report_dir)] + ([str(report_dir)] if command == "compare" else [])
    res = CliRunner().invoke(cli, args + ["--out", str(taken)])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"Error: --out {taken} is an existing file; give a folder (it is created if needed)"
    assert taken.read_bytes() == b"an image"
    res = CliRunner().invoke(cli, args + ["--out", str(taken / "sub")])
    assert res.exit_code == 2
    assert res.output.strip() == f"Error: --out {taken / 'sub'}: {taken} is an existing file, not a folder"


def _filled_and_hollow(ax):
    filled = hollow = 0
    for c in ax.collections:
        if type(c).__name__ == "PathCollection" and len(c.get_offsets()):
            if tuple(c.get_facecolor()[0][:3]) == (1.0, 1.0, 1.0):
                hollow += len(c.get_offsets())
            else:
                filled += len(c.get_offsets())
    return filled, hollow


@pytest.mark.parametrize("controls", [True, False])
def test_filled_markers_and_core_attributes_follow_the_headline_flag(tmp_path, controls):
    """Every query over-retrieves one group (faces cluster by appearance): the hypergeometric test flags it
    for every word; filled markers are the pairs flagged against the controls wherever that test ran."""
    from test_htmlreport import appearance_tables

    from clipprobe.report.writer import write_report

    write_report(appearance_tables(controls), tmp_path / "r", figures=False, html=False)
    rep = load_report(tmp_path / "r")
    g = rep.groups
    race = g[(g["attribute"] == "race") & (g["count"] > 0)]      # a group without faces has no marker
    ax = figures.word_skew_dots(g, None, "race", max_words=0)
    filled, hollow = _filled_and_hollow(ax)
    labels = [t.get_text() for t in ax.figure.legends[0].get_texts()]
    specs = figures.figure_specs(rep)
    top = [s for s in specs if s.kind == "top_words"]
    if controls:
        assert (filled, hollow) == (int(race["flagged_vs_controls"].sum()), len(race) - filled)
        assert int(race["flagged"].sum()) > filled
        assert "not flagged vs controls" in labels
        # gender has hypergeometric flags but none against the controls: no top-words plot of its own
        assert g.loc[g["attribute"] == "gender", "flagged"].any()
        assert [s.stem for s in top] == ["top_words_skew_race"]
        assert "filled markers are pairs flagged against the control queries;" in top[0].caption
    else:
        assert (filled, hollow) == (int(race["flagged"].sum()), len(race) - filled)
        assert "not flagged (hypergeom.)" in labels
        assert "no control test was run" in top[0].caption


def test_most_over_represented_groups_have_a_positive_mean_skew(report):
    """The summary's "most over-represented groups": up to three groups of positive mean skew, largest first;
    a group under-represented on average is never listed (by plain loops)."""
    from clipprobe.analysis.probe import summarise

    summary = summarise(report.groups, report.words)
    sums, counts = defaultdict(float), defaultdict(int)
    for row in report.groups.itertuples(index=False):
        for cat in (row.category.split("; ") if isinstance(row.category, str) else row.category):
            sums[cat, row.attribute, row.group] += row.skew
            counts[cat, row.attribute, row.group] += 1
    shortened = 0
    for row in summary.itertuples(index=False):
        means = {g: sums[key] / counts[key] for key in sums if key[:2] == (row.category, row.attribute)
                 for g in [key[2]]}
        over = sorted((g for g in means if means[g] > 0), key=lambda g: -means[g])[:3]
        assert [r["group"] for r in row.top_groups] == over
        assert [r["mean_skew"] for r in row.top_groups] == pytest.approx([means[g] for g in over])
        assert all(r["mean_skew"] > 0 for r in row.top_groups)
        shortened += len(over) < min(3, len(means))
    assert shortened > 0       # the fixture has categories where fewer than three groups are over-represented


def test_subset_composition_lists_over_represented_groups_only():
    from clipprobe.report.subsets import _composition_text

    comp = pd.DataFrame({"subset": "s", "attribute": "gender", "group": ["Male", "Female", "Other"],
                         "share": [0.7, 0.2, 0.1], "log_ratio": [0.34, -0.9, np.nan]})
    assert _composition_text(comp, "s", "gender") == "Male 70% (+0.34)"
    assert _composition_text(comp.assign(log_ratio=[-0.1, -0.2, -0.3]), "s", "gender") == ""


def test_cli_figures_style_paper_and_slides(report_dir, tmp_path):
    """--style paper: a journal column (3.3 in) at 300 dpi, text 6.5-8 pt; --style slides: wider, larger text."""
    widths = {}
    for name in ("paper", "slides"):
        out = tmp_path / name
        res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(out), "--set", "core", "--attribute",
                                       "gender", "--format", "png", "--style", name])
        assert res.exit_code == 0, res.output
        with Image.open(out / "entropy_by_category.png") as img:
            widths[name] = img.size[0]
        assert sorted(p.suffix for p in out.iterdir()) == [".png"] * 3
    assert widths == {"paper": 990, "slides": round(figures.COLUMN_WIDTH * 1.4 * 300)}
    res = CliRunner().invoke(cli, ["figures", str(report_dir), "--out", str(tmp_path / "x"), "--style", "poster"])
    assert res.exit_code == 2 and "'poster' is not one of 'paper', 'slides'" in res.output
    summary = load_report(report_dir).summary
    for name, scale in (("paper", 1.0), ("slides", 1.6)):
        with figures.use_style(name):
            ax = figures.entropy_by_category(summary)
        sizes = [ax.title.get_fontsize(), ax.xaxis.label.get_fontsize()] + [
            t.get_fontsize() for t in ax.get_yticklabels()]
        assert min(sizes) == pytest.approx(6.5 * scale) and max(sizes) == pytest.approx(8 * scale)
    with pytest.raises(ClipprobeError, match="unknown figure style 'poster'"):
        figures.write_report_figures(load_report(report_dir), tmp_path / "y", style_name="poster")


def test_compare_names_models_by_short_names_never_paths(report):
    import dataclasses

    from clipprobe.report.compare import model_names, short_model_name

    def with_model(model, folder="r"):
        return dataclasses.replace(report, run={**report.run, "model": model}, path=report.path.parent / folder)

    weights = {"spec": "ViT-B-32:/data/runs/long-run/epoch_32.pt", "kind": "file", "arch": "ViT-B-32",
               "path": "/data/runs/long-run/epoch_32.pt"}
    named = {"spec": "clipprobe-world-tiny:/x/y/clipprobe-world-tiny.safetensors", "kind": "file",
             "arch": "clipprobe-world-tiny", "path": "/x/y/clipprobe-world-tiny.safetensors"}
    folder = {"spec": "local-dir:/models/my-finetuned-clip", "kind": "local-dir", "path": "/models/my-finetuned-clip"}
    assert short_model_name(with_model(weights)) == "ViT-B-32:epoch_32"
    assert short_model_name(with_model(named)) == "clipprobe-world-tiny"
    assert short_model_name(with_model(folder)) == "my-finetuned-clip"
    assert short_model_name(with_model({"spec": "ViT-B-32:openai"})) == "ViT-B-32:openai"
    assert short_model_name(with_model({"spec": "hf-hub:timm/ViT-B-16-SigLIP"})) == "hf-hub:timm/ViT-B-16-SigLIP"
    assert short_model_name(with_model("RN50:/abs/path/rn50.pt")) == "RN50:rn50"
    names = model_names([with_model(weights, "a"), with_model(weights, "b"), with_model(folder)])
    assert names == ["ViT-B-32:epoch_32 (a)", "ViT-B-32:epoch_32 (b)", "my-finetuned-clip"]
    assert not any("/" in n for n in names)


def test_svg_ids_do_not_depend_on_the_last_bits_of_the_layout(tmp_path):
    """Two drawings whose axes differ only in the last bits of a float (as the same figure laid out after
    other figures in another process can) are the same SVG bytes: matplotlib names clip paths by a hash of
    the full-precision rectangle, the file shows 6 decimals; the ids are renumbered in order."""
    import re

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from clipprobe.figstyle import save_figure

    texts = []
    for i, nudge in enumerate((0.0, 1e-13)):
        fig = plt.figure(figsize=(3, 2))
        ax = fig.add_axes((0.15 + nudge, 0.2, 0.7, 0.6))
        ax.plot([0, 1, 2], [1, 3, 2], marker="o")
        ax.set_title("same drawing")
        path = save_figure(fig, tmp_path / f"f{i}", formats=("svg",))[0]
        plt.close(fig)
        texts.append(path.read_text(encoding="utf-8"))
    assert texts[0] == texts[1]
    defined = re.findall(r'<clipPath id="([^"]+)"', texts[0])
    assert defined and all(f"url(#{d})" in texts[0] for d in defined)       # references follow the new ids
    markers = re.findall(r'<path id="(m\d{10})"', texts[0])
    assert markers and all(f'xlink:href="#{m}"' in texts[0] for m in markers)
