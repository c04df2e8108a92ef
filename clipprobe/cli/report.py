"""`clipprobe report`: the full-taxonomy bias report."""

from __future__ import annotations

import click

from clipprobe.cli._options import (
    OASIS_ROOT_HELP,
    STIMULI_ROOT_HELP,
    TAXONOMY_HELP,
    bootstrap_option,
    check_choice,
    check_count,
    check_fraction,
    embeddings_options,
    permutations_option,
    pop_probe_config,
    probe_options,
    split_attributes,
)


@click.command("report")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Report folder (created; a rerun resumes).")
@click.option("--taxonomy", default=None, help=TAXONOMY_HELP)
@click.option("--templates", default="default", show_default=True, help="default, ensemble, or your own file.")
@click.option("--k", type=int, default=100, show_default=True, help="Faces retrieved per word.")
@click.option("--attributes", default=None,
              help="Comma-separated attributes (default: each of race, gender, age, race_gender in the dataset).")
@bootstrap_option(1000, unit="the face dataset", what="each group's share and skew",
                  more=", and the top group's stability (0: none)")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap and of the permutation nulls (reruns are identical).")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="False discovery rate for flagging.")
@click.option("--reference", default="base", show_default=True,
              help="Skew against the dataset's group shares (base) or against equal representation (uniform).")
@permutations_option(1000, test="MaxSkew and MinSkew",
                     more=": shuffles of the group labels over the images (p_max_skew, max_skew_excess)")
@click.option("--ties", default="index", show_default=True,
              help="Images tied with the k-th score: 'index' keeps exactly k (lower image index first), "
                   "'keep-all' keeps every tied image (shares still count / k).")
@click.option("--score", default="cosine", show_default=True,
              help="'cosine' of normalised embeddings, or 'dot' with the raw image embedding (as oxai ranks).")
@click.option("--controls", default="controls", show_default=True,
              help="Control words (a taxonomy name or file) for flagged_vs_controls; 'none' to skip.")
@click.option("--eat", "eat", default=None, metavar="SUITE|FILE",
              help="Also run association tests (a suite of `clipprobe eat list`, or your YAML file) with the same "
                   "model into OUT/eat/; the HTML report shows them.")
@click.option("--stimuli-root", type=click.Path(file_okay=False), default=None,
              help=STIMULI_ROOT_HELP)
@click.option("--oasis-root", type=click.Path(file_okay=False), default=None,
              help=OASIS_ROOT_HELP)
@click.option("--captions-counts", type=click.Path(file_okay=False), default=None,
              help="Folder written by `clipprobe captions count`: join caption lift with retrieval skew.")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Write the figures into OUT/figures.")
@click.option("--html/--no-html", default=True, show_default=True, help="Write the self-contained OUT/report.html.")
@probe_options
@embeddings_options
def report(out, taxonomy, templates, k, attributes, bootstrap, seed, alpha, reference, permutations, ties, score,
           controls, eat, stimuli_root, oasis_root, captions_counts, figures, html, **kwargs) -> None:
    """Probe every word of a taxonomy: skew, tests, intervals, figures, HTML."""
    from clipprobe.pipeline.report import ReportConfig, run_report, summary_line

    check_fraction("--alpha", alpha)
    check_count("--seed", seed)
    check_count("--k", k, 1)
    check_choice("--reference", reference, ("base", "uniform"))
    check_choice("--ties", ties, ("index", "keep-all"))
    check_choice("--score", score, ("cosine", "dot"))
    config = ReportConfig(
        probe=pop_probe_config(kwargs), out=out, taxonomy=taxonomy, templates=templates, k=k,
        attributes=split_attributes(attributes) if attributes else None, bootstrap=bootstrap, seed=seed,
        alpha=alpha, reference=reference, permutations=permutations, ties=ties, score=score,
        controls=None if controls.strip().lower() == "none" else controls, eat=eat, stimuli_root=stimuli_root,
        oasis_root=oasis_root, captions_counts=captions_counts,
        figures=figures, html=html,
    )
    result = run_report(config)
    run = result.run
    click.echo(summary_line(run))
    if result.reused_chunks:
        click.echo(f"reused {result.reused_chunks} finished chunk(s), computed {result.computed_chunks}")
    crosscheck_json = result.out / "crosscheck.json"
    if captions_counts and crosscheck_json.is_file():
        import json

        click.echo(crosscheck_coverage_line(json.loads(crosscheck_json.read_text(encoding="utf-8"))))
    for path in result.files:
        click.echo(f"  {path}")


@click.command("crosscheck")
@click.argument("report_dir", type=click.Path(file_okay=False))
@click.argument("counts_dir", type=click.Path(file_okay=False))
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="False discovery rate for flagging a caption association (caption_flagged).")
def crosscheck(report_dir, counts_dir, alpha) -> None:
    """Join a report's retrieval skew with caption co-occurrence (is it in the data too?).

    Only rows whose word and group both occur in the captions have a caption association; the others
    are counted, kept in crosscheck.parquet with their caption_status, and left out of the correlations
    and figures. Fewer than 10 such rows: an error.
    """
    import json
    from pathlib import Path

    from clipprobe.report.crosscheck import write_crosscheck
    from clipprobe.report.store import load_report

    check_fraction("--alpha", alpha)
    report = load_report(report_dir)
    written = write_crosscheck(report.groups, counts_dir, report_dir, alpha=alpha)
    html = Path(report_dir) / "report.html"
    if html.is_file():    # the page gets its caption section (figures reused from the folder)
        from clipprobe.report.html import write_html_report

        written.append(write_html_report(report, html))
    data = json.loads(open(written[1], encoding="utf-8").read())
    click.echo(crosscheck_coverage_line(data))
    for attribute, stats in (data["spearman_skew_vs_caption_log_odds"] or {}).items():
        click.echo(f"{attribute}: Spearman rho(skew, caption log-odds) = {_fmt(stats.get('rho'), '.3f')} "
                   f"(p = {_fmt(stats.get('p_value'), '.2g')}, n = {stats.get('n')})")
    for path in written:
        click.echo(f"  {path}")


def _fmt(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def crosscheck_coverage_line(data: dict) -> str:
    """One line: how many joined rows have a defined caption association, and what is absent."""
    absent = data.get("groups_absent") or []
    groups = ""
    if absent:
        groups = " (groups: " + ", ".join(absent[:8]) + (f" and {len(absent) - 8} more" if len(absent) > 8 else "") + ")"
    return (f"caption association defined for {data['n_defined']:,} of {data['n_rows']:,} rows; "
            f"{data['n_words_absent']:,} of {data['n_words']:,} words and {data['n_groups_absent']} of "
            f"{data['n_groups']} groups never occur in the captions{groups}; the other rows are left out of the "
            "correlations and figures")
