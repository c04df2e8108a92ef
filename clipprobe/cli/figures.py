"""``clipprobe figures`` and ``clipprobe compare``: figures and comparisons from report folders."""

from __future__ import annotations

from pathlib import Path

import click

from clipprobe.cli._options import figure_output_options
from clipprobe.figstyle import DEFAULT_STYLE, FIGURE_FORMATS
MSG_OUT_IS_FILE = "--out {path} is an existing file; give a folder (it is created if needed)"
MSG_OUT_BELOW_FILE = "--out {out}: {path} is an existing file, not a folder"


def _check_out(out: Path) -> None:
    """--out must name a folder: refuse an existing file before anything is read or drawn."""
    from clipprobe.errors import UsageError

    if out.exists() and not out.is_dir():
        raise UsageError(MSG_OUT_IS_FILE.format(path=out))
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(MSG_OUT_BELOW_FILE.format(out=out, path=parent))
            break


@click.command("figures")
@click.argument("report_dir", type=click.Path(path_type=Path))
@figure_output_options("Folder for the figures.")
@click.option("--category", "categories", multiple=True, help="Only this category (repeatable).")
@click.option("--attribute", "attributes", multiple=True, help="Only this attribute (repeatable).")
@click.option("--word", "words", multiple=True,
              help="Also draw a contact sheet of this word's top faces (needs the dataset images; repeatable).")
@click.option("--set", "figure_set", type=click.Choice(["all", "core"]), default="all", show_default=True,
              help="all: every category x attribute; core: what `clipprobe report` writes (heatmaps, entropy, "
                   "most skewed words).")
@click.option("--max-words", "max_words", type=click.IntRange(min=0), default=None,
              help="Words per dot plot (default: as many as fit one page; 0: every word).")
@click.option("--html", "html", is_flag=True,
              help="Also write the self-contained report.html into --out (using the PNGs just written).")
def figures(report_dir: Path, out: Path, categories, attributes, words, formats, style_name: str, figure_set: str,
            max_words, html: bool) -> None:
    """Regenerate the paper figures of REPORT_DIR from its files alone.

    Each figure is written as a PNG (300 dpi) beside a vector PDF and SVG, sized for a two-column paper
    (--style paper: 3.3 in for one column, 6.9 in across both, text 6.5-8 pt) or for slides."""
    from clipprobe.report.contact import dataset_loader, save_image, word_sheet
    from clipprobe.errors import one_of
    from clipprobe.report.figures import slug, write_report_figures
    from clipprobe.report.store import load_report

    _check_out(out)
    report = load_report(report_dir)
    valid_words = sorted(set(report.words["word"]))
    for word in words:
        if word not in valid_words:
            raise one_of(word, valid_words, "word")
    paths = write_report_figures(report, out, attributes=attributes or None, categories=categories or None,
                                 figure_set=figure_set, max_words=max_words, formats=formats or FIGURE_FORMATS,
                                 style_name=style_name)
    if words:
        loader = dataset_loader(report.run)
        if loader is None:
            root = (report.run.get("dataset") or {}).get("root")
            click.echo(f"note: contact sheets skipped: dataset root {root!r} is not available here", err=True)
        else:
            for word in words:
                paths.append(save_image(word_sheet(report, word, image_loader=loader),
                                        out / f"contact_{slug(word)}.png"))
            if loader.failed:
                click.echo(f"note: {loader.failed} images could not be read (grey placeholders)", err=True)
    if html:
        from clipprobe.report.html import write_html_report

        # Restricted figures are other figures: let the page draw its own then.
        restricted = bool(categories or attributes or max_words is not None or style_name != DEFAULT_STYLE)
        paths.append(write_html_report(report, out / "report.html", figures_dir=out,
                                       reuse_figures="png" in (formats or ("png",)) and not restricted))
    click.echo(f"wrote {len(paths)} files to {out}")


@click.command("compare")
@click.argument("report_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@figure_output_options("Folder for tables and figures.")
@click.option("--name", "names", multiple=True,
              help="Display name per report, in order (default: a short model name, never a path).")
def compare(report_dirs, out: Path, names, formats, style_name: str) -> None:
    """Compare the reports of several models (on the words they share)."""
    from clipprobe.errors import UsageError
    from clipprobe.figstyle import use_style
    from clipprobe.report.compare import compare_reports, write_comparison
    from clipprobe.report.store import load_report

    if names and len(names) != len(report_dirs):
        raise UsageError(f"--name given {len(names)} times for {len(report_dirs)} reports; give one per report")
    _check_out(out)
    reports = [load_report(d) for d in report_dirs]
    result = compare_reports(reports, names=list(names) if names else None)
    with use_style(style_name):
        paths = write_comparison(result, out, formats=formats or FIGURE_FORMATS)
    for note in result.notes:
        click.echo(f"note: {note}", err=True)
    corr = result.correlations
    for row in corr.itertuples(index=False):
        click.echo(f"{row.attribute}: spearman rho({row.model_a}, {row.model_b}) = {row.spearman_rho:.3f} "
                   f"over {row.n_words} words")
    click.echo(f"{len(result.disagreements)} (word, attribute) pairs differ in top or flagged group")
    click.echo(f"wrote {len(paths)} files to {out}")
