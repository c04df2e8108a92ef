"""Regenerate the figure gallery (docs/gallery/) from the offline demo, in one command:

    python scripts/make_gallery.py                  # runs `clipprobe demo` in a temporary folder (minutes on CPU)
    python scripts/make_gallery.py --demo DIR       # draws from the folder a `clipprobe demo --out DIR` wrote

It draws the figures of the demo's planted-bias world with the paper style (the figures `clipprobe report`,
`clipprobe figures --style paper`, `clipprobe compare`, `captions count`, `subsets`, `balance fit` and `power`
write), as PNGs at --dpi (150 by default: the files stay small; the commands write 300 dpi with vector PDF and
SVG beside them) and writes docs/gallery/README.md with every image, its caption and the function that drew it.
The gallery's PNGs and README.md are replaced; nothing else in the folder is touched.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GALLERY_DPI = 150
SUBSETS_BY = "kmeans:4"


def _draw(entries: list, out: Path, stem: str, drawn, caption: str, source: str, dpi: int) -> None:
    from clipprobe.figstyle import save_figure

    fig = drawn.figure
    save_figure(fig, out / stem, formats=("png",), dpi=dpi)
    entries.append((f"{stem}.png", caption, source))


def _probe_config(demo: Path):
    from clipprobe.pipeline.probe import ProbeConfig
    from clipprobe.world.train import WORLD_ARCH, config_path, weights_path

    return ProbeConfig(model=f"{WORLD_ARCH}:{weights_path(None)}", model_config=str(config_path(None)),
                       dataset=f"fairface:{demo / 'world' / 'fairface'}", cache_dir=str(demo / "cache"), device="cpu",
                       offline=True, num_workers=0, batch_size=256)


def draw_gallery(demo: Path, out: Path, work: Path, *, dpi: int = GALLERY_DPI) -> list[tuple[str, str, str]]:
    """Draw the gallery's figures from a demo folder into ``out``; return (file, caption, source) per image."""

    from clipprobe.analysis.crosscheck import crosscheck
    from clipprobe.analysis.power import power_curve, power_plot
    from clipprobe.captions.counts import read_counts
    from clipprobe.captions.figures import lift_heatmap
    from clipprobe.figstyle import use_style
    from clipprobe.pipeline.balance import BalanceConfig, fit_balance
    from clipprobe.pipeline.subsets import SubsetsConfig, run_subsets
    from clipprobe.report import compare, figures
    from clipprobe.report.balance import balance_figure
    from clipprobe.report.crosscheck import crosscheck_scatter
    from clipprobe.report.store import load_report
    from clipprobe.report.subsets import interesting_words, subset_heatmap, word_spread

    report = load_report(demo / "report")
    null = load_report(demo / "null-report")
    g = report.groups
    entries: list[tuple[str, str, str]] = []
    first_cat = report.categories[0]

    def add(stem, drawn, caption, source):
        _draw(entries, out, stem, drawn, caption, source, dpi)

    add("heatmap_skew_race", figures.skew_heatmap(g, "race"),
        "Mean skew of each group per So-B-IT category (one column).", "report.figures.skew_heatmap")
    add("heatmap_skew_race_gender", figures.skew_heatmap(g, "race_gender"),
        "The same for the 14 race x gender groups (both columns).", "report.figures.skew_heatmap")
    add("entropy_by_category", figures.entropy_by_category(report.summary),
        "How diverse each category's top-k is, per attribute (1 = as diverse as a uniform spread).",
        "report.figures.entropy_by_category")
    add("top_words_skew_gender", figures.word_skew_dots(g, None, "gender", max_words=16),
        "The most skewed words for an attribute of two groups: a dot plot; filled = flagged against the control "
        "queries; an x in the shaded strip = no face of that group in the top-k.", "report.figures.word_skew_dots")
    add("top_words_skew_race_gender", figures.word_skew_panels(g, None, "race_gender", max_words=12),
        "The most skewed words for race x gender: small multiples, one panel per word, a row per race, the two "
        "genders as two series.", "report.figures.word_skew_panels")
    add("word_skew_category_race", figures.word_skew_panels(g, first_cat, "race"),
        f"Every word of one category ({first_cat}) for race, as written by `clipprobe figures --set all`.",
        "report.figures.word_skew_panels")
    add("stability", figures.stability_dots(report.words, category=first_cat),
        "How often the top group survives a bootstrap resample.", "report.figures.stability_dots")

    counts = read_counts(demo / "captions")
    joined, corr = crosscheck(g, counts)
    add("crosscheck_race", crosscheck_scatter(joined, attribute="race", correlations=corr),
        "The model's skew against the captions' log-odds for the same word and group (`report "
        "--captions-counts`).", "report.crosscheck.crosscheck_scatter")
    add("caption_lift", lift_heatmap(counts, top=20),
        "Caption co-occurrence: log2 lift of the strongest words (`captions count`).",
        "captions.figures.lift_heatmap")

    result = compare.compare_reports([report, null], names=["demo model", "labels shuffled"])
    add("compare_entropy_race", compare.compare_entropy_plot(result, "race"),
        "Two reports side by side (`clipprobe compare`): the demo model and the same model with the face labels "
        "shuffled.", "report.compare.compare_entropy_plot")
    add("compare_skew_race", compare.compare_skew_scatter(result, "race", *result.names),
        "Word-level max skew of one report against the other.", "report.compare.compare_skew_scatter")

    subsets = run_subsets(SubsetsConfig(probe=_probe_config(demo), out=str(work / "subsets"), by=SUBSETS_BY,
                                        taxonomy=str(demo / "world" / "taxonomy.yaml"), figures=False, html=False))
    tables = subsets.tables
    word, attribute = interesting_words(tables.dispersion, 1)[0]
    add("subsets_word_spread", word_spread(tables.groups, word, attribute),
        f"One word's skew over all images and in each of {SUBSETS_BY.split(':')[1]} k-means subsets "
        "(`clipprobe subsets`).", "report.subsets.word_spread")
    add("subsets_heatmap", subset_heatmap(tables.words, "race", "max_skew_excess", max_words=15),
        "MaxSkew excess per word and subset.", "report.subsets.subset_heatmap")

    captions = sorted(str(p) for p in (demo / "world" / "captions").glob("*.parquet"))
    balance = fit_balance(BalanceConfig(captions=tuple(captions), out=str(work / "balance"), attribute="gender",
                                        labels="occupation", taxonomy=str(demo / "world" / "taxonomy.yaml"),
                                        lexicon=str(demo / "world" / "lexicon.yaml"), key=None, keep=0.6, figure=False))
    add("balance", balance_figure(balance.groups, balance.cells),
        "Data balancing (`balance fit`): representation and the largest associations before and after M4.",
        "report.balance.balance_figure")

    race = g[(g["attribute"] == "race")].drop_duplicates("group")
    n_images = int(report.run.get("dataset", {}).get("n_images") or 0)
    sizes = {r.group: max(1, round(r.base_share * n_images)) for r in race.itertuples()}
    curve = power_curve(group_sizes=sizes, k=(int(report.run.get("k") or 100),), ratios=(1.0, 1.25, 1.5, 2.0, 3.0),
                        n_sim=200, n_words=36)
    add("power", power_plot(curve), "Power to flag a planted over-representation (`clipprobe power`).",
        "analysis.power.power_plot")

    with use_style("slides"):
        add("slides_top_words_skew_gender", figures.word_skew_dots(g, None, "gender", max_words=10),
            "The gender dot plot with `--style slides`.", "report.figures.word_skew_dots")
    return entries


README_HEAD = """# Figure gallery

Every figure below was drawn from the offline demo (`clipprobe demo`: a synthetic world with planted
associations and a tiny CLIP trained on it) by one command:

    python scripts/make_gallery.py

(it runs the demo in a temporary folder, a few minutes on a CPU; `--demo DIR` reuses a folder that
`clipprobe demo --out DIR` wrote). The images here are PNGs at {dpi} dpi so the folder stays small; the
commands write each figure as a 300-dpi PNG beside a vector PDF and SVG, in the paper style by default
(`clipprobe figures REPORT --out DIR --style paper`: 3.3 in for one column, 6.9 in across both, text 6.5-8
pt). One vocabulary throughout: skew is `ln(share / base share)`; filled markers are flagged pairs, hollow
ones are not; an x in the shaded strip at the left of a skew axis is a group with no face in the top-k,
whose skew is not defined (no made-up value, no interval); a group has the same colour in every figure of
its attribute.

Not shown: the association-test forest plot (`clipprobe eat`), the occupation-pair plot (`clipprobe
association`) and the sweep's coefficient and scatter plots (`clipprobe sweep analyze`): the demo does not
run them. They use the same style.

"""


def write_readme(out: Path, entries, dpi: int) -> Path:
    lines = [README_HEAD.format(dpi=dpi)]
    for file, caption, source in entries:
        title = file.rsplit(".", 1)[0].replace("_", " ")
        lines.append(f"## {title}\n\n{caption} Drawn by `clipprobe.{source}`.\n\n![{title}]({file})\n\n")
    path = out / "README.md"
    path.write_text("".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "gallery")
    parser.add_argument("--demo", type=Path, default=None, help="a folder written by `clipprobe demo --out DIR`")
    parser.add_argument("--dpi", type=int, default=GALLERY_DPI)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clipprobe-gallery-") as tmp:
        work = Path(tmp)
        demo = args.demo
        if demo is None:
            from clipprobe.world.demo import run_demo

            demo = run_demo(work / "demo", progress=False).out
        if not (demo / "report").is_dir() or not (demo / "null-report").is_dir():
            print(f"{demo} is not a folder written by `clipprobe demo`", file=sys.stderr)
            return 1
        for old in list(out.glob("*.png")) + [out / "README.md"]:
            old.unlink(missing_ok=True)
        entries = draw_gallery(Path(demo), out, work, dpi=args.dpi)
    write_readme(out, entries, args.dpi)
    total = sum((out / f).stat().st_size for f, _, _ in entries)
    print(f"wrote {len(entries)} figures ({total / 1e6:.1f} MB) and README.md to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
