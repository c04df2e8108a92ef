"""Report loading, paper figures, contact sheets and `clipprobe figures`."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from clipprobe import figures
from clipprobe.cli import cli
from clipprobe.contact import contact_sheet, save_contact_sheet, word_sheet
from clipprobe.errors import ClipprobeError, DataError
from clipprobe.reportio import FORMAT_VERSION, load_report
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
    assert report.words.loc[report.words["word"] == "ceo", "category"].iloc[0] == "occupation; status"
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
    words = pd.read_parquet(d / "words.parquet").drop(columns=["stability", "ndkl"])
    words.to_parquet(d / "words.parquet", index=False)
    with pytest.raises(DataError, match=r"words.parquet .* lacks columns: ndkl, stability"):
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
        for cat in row.category.split("; "):
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


def test_entropy_by_category_plots_summary_with_intervals(report):
    ax = figures.entropy_by_category(report.summary, attributes=["race", "gender"])
    labels = [t.get_text() for t in ax.get_yticklabels()]
    s = report.summary
    means = s[s["attribute"].isin(["race", "gender"])].groupby("category")["mean_norm_entropy"].mean()
    assert labels == list(means.sort_values().index)
    assert ax.get_xlim() == pytest.approx((0, 1.02))
    lines = [c for c in ax.containers]
    assert len(lines) == 2
    for container, attr in zip(lines, ["race", "gender"]):
        x = container.lines[0].get_xdata()
        want = s[s["attribute"] == attr].set_index("category").loc[labels]
        np.testing.assert_allclose(x, want["mean_norm_entropy"].to_numpy())
        # the error bar ends are the interval bounds
        seg = container.lines[2][0].get_segments()
        np.testing.assert_allclose([p[0][0] for p in seg], want["mean_norm_entropy_ci_low"].to_numpy())
        np.testing.assert_allclose([p[1][0] for p in seg], want["mean_norm_entropy_ci_high"].to_numpy())


def test_word_skew_dots_rows_points_and_flags(report):
    g = report.groups
    ax = figures.word_skew_dots(g, "status", "race")
    rows = g[(g["attribute"] == "race") & g["category"].str.contains("status")]
    order = rows.groupby("word")["skew"].max().sort_values(ascending=False).index.tolist()
    assert [t.get_text() for t in ax.get_yticklabels()] == order
    points = np.concatenate([c.get_offsets() for c in ax.collections if hasattr(c, "get_offsets")
                             and len(c.get_offsets()) and c.get_offsets().shape[1] == 2
                             and type(c).__name__ == "PathCollection"])
    assert len(points) == len(rows)
    assert sorted(points[:, 0]) == pytest.approx(sorted(rows["skew"]))
    filled = sum(len(c.get_offsets()) for c in ax.collections if type(c).__name__ == "PathCollection"
                 and len(c.get_offsets()) and tuple(c.get_facecolor()[0][:3]) != (1.0, 1.0, 1.0))
    assert filled == int(rows["flagged"].sum())
    assert "status" in ax.get_title() and "race" in ax.get_title()


def test_word_skew_dots_unknown_category(report):
    with pytest.raises(ClipprobeError, match=r"unknown category 'statos'.*valid: 'occupation', 'status', 'traits'"):
        figures.word_skew_dots(report.groups, "statos", "race")


def test_stability_dots_one_point_per_word_and_attribute(report):
    ax = figures.stability_dots(report.words, category="occupation", attributes=["race", "gender"])
    w = report.words
    rows = w[w["category"].str.contains("occupation") & w["attribute"].isin(["race", "gender"])]
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


def test_write_report_figures_png_and_vector_pdf(report, tmp_path):
    paths = figures.write_report_figures(report, tmp_path / "f", attributes=["gender"], categories=["traits"])
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{s}.{ext}" for s in ("heatmap_skew_gender", "entropy_by_category",
                                                   "word_skew_traits_gender", "stability_traits")
                           for ext in ("png", "pdf"))
    for p in paths:
        assert p.stat().st_size > 1000
    pdf = (tmp_path / "f" / "word_skew_traits_gender.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and b"/Subtype /Image" not in pdf  # vector, no raster inside
    with Image.open(tmp_path / "f" / "word_skew_traits_gender.png") as img:
        assert img.size[0] == round(figures.COLUMN_WIDTH * 300)  # column width at 300 dpi
    assert not list((tmp_path / "f").glob(".*tmp*"))  # atomic writes left nothing behind


def test_figure_file_names_are_safe_and_distinct(tmp_path):
    d = make_report(tmp_path / "r", words={"a": "x/y", "b": "x y", "c": "../up"}, images=False, n_boot=5)
    rep = load_report(d)
    stems = [stem for stem, _, _ in figures.report_figures(rep, attributes=["gender"])]
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
    assert "wrote 9 files" in res.output


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
    assert len(list((tmp_path / "o").glob("*.pdf"))) == 4
