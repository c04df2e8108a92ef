"""Benchmark: the figures and the HTML page of a full-taxonomy report.

    PYTHONPATH=.:tests .venv/bin/python benchmarks/bench_report_outputs.py [--skip-baseline]

Input: a generated report folder (tests/reportgen.py) with every word of the shipped So-B-IT
taxonomy (about 430 words in 10 categories), four attributes (race 7 groups, gender 2, age 9,
race_gender 14), k=20 over 200 images, planted preferences that flag many pairs, and 224 px
photo-like face images (noisy gradients, so the JPEG sizes of the contact sheets are realistic
rather than those of flat colours).

Timed, in this order, each in the same run:
  figures  baseline  every figure the report used to write: per category x attribute, every word,
                     300 dpi (``figure_set="all", max_words=0, dpi=300``)
           all       what ``clipprobe figures`` writes (per-category plots capped to one page)
           core      what ``clipprobe report`` writes
  html     baseline  every figure drawn again (``reuse_figures=False, category_figures=True``) and a
                     sheet for every flagged word (no byte cap)
           default   what ``clipprobe report`` writes: core figures reused from figures/, at most
                     60 sheets and 2.5 MB of JPEG
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def _parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--n-images", type=int, default=200)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--skip-baseline", action="store_true", help="time only the new defaults")
    return ap.parse_args()


def make_full_report(out: Path, n_images: int, k: int) -> Path:
    """A report of the whole shipped taxonomy with a third of the words leaning on race, a third on gender."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reportgen import GENDERS, RACES, make_report

    from clipprobe.resources.taxonomy import get_taxonomy

    tax = get_taxonomy()
    words = {}
    for w in tax.words():
        cats = tax.categories_of(w)
        words[w] = cats[0] if len(cats) == 1 else cats
    plants = {}
    for i, w in enumerate(words):
        if i % 3 == 0:
            plants[w] = ("race", RACES[i % len(RACES)], 5.0)
        elif i % 3 == 1:
            plants[w] = ("gender", GENDERS[i % len(GENDERS)], 4.0)
    report = make_report(out, words=words, plants=plants, k=k, n_images=n_images, n_boot=20)
    _photo_like_images(report / "dataset")
    return report


def _photo_like_images(root: Path) -> None:
    """Replace the generated flat faces by 224 px images with gradients and grain, like photographs."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    for path in sorted(root.rglob("*.jpg")):
        with Image.open(path) as small:
            base = np.asarray(small.convert("RGB").resize((224, 224), Image.Resampling.BICUBIC), dtype=float)
        light = 0.75 + 0.5 * (rng.random() * xx + rng.random() * yy) / 2
        img = base * light[..., None] + rng.normal(0, 18, size=base.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)


def _timed(fn):
    """(wall seconds, CPU seconds of this process, result): on a loaded machine the CPU time is the
    better estimate of the wall time on an idle one (the work is single-threaded)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def main() -> None:
    args = _parse()
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_report_outputs_"))
    work.mkdir(parents=True, exist_ok=True)
    import os

    print(f"cpus: {os.cpu_count()}, load average: {os.getloadavg()[0]:.2f}")
    gen_s, _, report_dir = _timed(lambda: make_full_report(work / "report", args.n_images, args.k))

    import matplotlib.figure  # noqa: F401  (import time is not figure time)

    from clipprobe.report import figures
    from clipprobe.report.html import write_html_report
    from clipprobe.report.store import load_report

    report = load_report(report_dir)
    n_flagged_words = report.groups.loc[report.groups["flagged"], "word"].nunique()
    print(f"report: {report.words['word'].nunique()} words, {len(report.categories)} categories, "
          f"attributes {', '.join(report.attributes)}, {int(report.groups['flagged'].sum())} flagged pairs "
          f"in {n_flagged_words} words (generated in {gen_s:.1f} s)")

    def size(paths) -> float:
        return sum(Path(p).stat().st_size for p in paths) / 1e6

    rows = []
    if not args.skip_baseline:
        s, cpu, paths = _timed(lambda: figures.write_report_figures(report, work / "fig_baseline", figure_set="all",
                                                                    max_words=0, dpi=300))
        rows.append(("figures baseline (all, every word, 300 dpi)", s, cpu, len(paths), size(paths)))
    s, cpu, paths = _timed(lambda: figures.write_report_figures(report, work / "fig_all", figure_set="all"))
    rows.append(("figures all (clipprobe figures)", s, cpu, len(paths), size(paths)))
    core_s, cpu, paths = _timed(lambda: figures.write_report_figures(report, report_dir / "figures"))
    rows.append(("figures core (clipprobe report)", core_s, cpu, len(paths), size(paths)))

    if not args.skip_baseline:
        s, cpu, path = _timed(lambda: write_html_report(report, work / "baseline.html", reuse_figures=False,
                                                       category_figures=True, sheets_max_bytes=10**9,
                                                       max_sheets=10**6))
        rows.append(("html baseline (draw all, every sheet)", s, cpu, 1, size([path])))
    html_s, cpu, path = _timed(lambda: write_html_report(report, report_dir / "report.html"))
    rows.append(("html default (reuse core PNGs, capped sheets)", html_s, cpu, 1, size([path])))

    print(f"{'step':48s} {'wall s':>8s} {'cpu s':>8s} {'files':>6s} {'MB':>7s}")
    for label, seconds, cpu, n, mb in rows:
        print(f"{label:48s} {seconds:8.2f} {cpu:8.2f} {n:6d} {mb:7.2f}")
    if not args.skip_baseline:
        print(f"figures: core is {rows[0][1] / core_s:.1f}x faster than the baseline; "
              f"html: default is {rows[3][1] / html_s:.1f}x faster and {rows[3][4] / rows[4][4]:.1f}x smaller")
    print(f"load average after: {os.getloadavg()[0]:.2f}; work folder: {work}")


if __name__ == "__main__":
    main()
