"""`clipprobe subsets`: bias measured on subsets of the data; `clipprobe subsets compare`: across models."""

from __future__ import annotations

import click

from clipprobe.cli._options import (
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

BY_HELP = ("How to cut the dataset: kmeans:N (k-means of the image embeddings), attribute:NAME (its groups), "
           "column:NAME (a column of the label file) or file:PATH (a CSV/parquet with image and subset columns, "
           "e.g. another run's assignment.parquet).")
MSG_OUT_REQUIRED = "--out is required (the folder to write the subsets into)"
MSG_OUT_COMPARE = "--out is required unless the one source is a sweep folder (then SWEEP/subsets-compare)"


def _check_by(by: str) -> str:
    from clipprobe.analysis.subsets import parse_by

    parse_by(by, name="--by")
    return by


@click.group("subsets", invoke_without_command=True, subcommand_metavar="[compare ...]")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (assignment, tables, figures, contact sheets, HTML).")
@click.option("--by", default="kmeans:20", show_default=True, help=BY_HELP)
@click.option("--min-size", type=int, default=None,
              help="Smallest subset, in images (default: 2 x --k, so that no subset is skipped for having k images "
                   "or fewer); smaller k-means clusters are merged (see --small), other subsets dropped. What was "
                   "skipped is printed and recorded in run.json.")
@click.option("--small", type=click.Choice(["merge", "drop"]), default="merge", show_default=True,
              help="k-means clusters below --min-size: merge into the nearest cluster, or drop their images.")
@click.option("--taxonomy", default=None, help=TAXONOMY_HELP)
@click.option("--templates", default="default", show_default=True, help="default, ensemble, or your own file.")
@click.option("--k", type=int, default=100, show_default=True, help="Images retrieved per word in each subset.")
@click.option("--k-mode", type=click.Choice(["fixed", "fraction"]), default="fixed", show_default=True,
              help="fixed: the same k in every subset (subsets of k images or fewer are skipped); fraction: "
                   "k * subset size / dataset size, the global top fraction.")
@click.option("--attributes", default=None,
              help="Comma-separated attributes (default: each of race, gender, age, race_gender in the dataset).")
@bootstrap_option(0, unit="each subset's images", behind="the top group's stability only",
                  more=" (the published intervals need none; 0: none)")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of k-means and of every random draw.")
@click.option("--alpha", type=float, default=0.05, show_default=True,
              help="False discovery rate, over every (subset, word, attribute, group) row together.")
@click.option("--reference", default="base", show_default=True,
              help="Skew against each subset's own group shares (base) or equal representation (uniform).")
@permutations_option(1000, test="MaxSkew, MinSkew and the KL of recall@k in each subset",
                     more=": shuffles of the group labels over the subset's images")
@click.option("--ties", default="index", show_default=True, help="'index' or 'keep-all' (as in `clipprobe report`).")
@click.option("--score", default="cosine", show_default=True, help="'cosine' or 'dot' (as in `clipprobe report`).")
@click.option("--controls", default="controls", show_default=True,
              help="Control words (a taxonomy name or file) for flagged_vs_controls; 'none' to skip.")
@click.option("--typical", type=int, default=20, show_default=True,
              help="Faces per subset in its contact sheet (0: none).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Write the figures.")
@click.option("--html/--no-html", default=True, show_default=True, help="Write the self-contained HTML page.")
@probe_options
@embeddings_options
@click.pass_context
def subsets(ctx, out, by, min_size, small, taxonomy, templates, k, k_mode, attributes, bootstrap, seed, alpha,
            reference, permutations, ties, score, controls, typical, figures, html, **kwargs) -> None:
    """Probe every word within subsets of the dataset (k-means clusters, groups, your own): is the bias
    global, or does it live in one corner of the data?

    \b
    clipprobe subsets --model ViT-B-32:openai --dataset fairface:/data/fairface --by kmeans:20 --out subsets/vitb32
    clipprobe subsets compare sweeps/zoo --by kmeans:20        # does the ranking of models survive?
    """
    if ctx.invoked_subcommand is not None:
        return
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.subsets import SubsetsConfig, run_subsets

    if out is None:
        raise UsageError(MSG_OUT_REQUIRED)
    _check_by(by)
    if min_size is not None:
        check_count("--min-size", min_size, 1)
    check_count("--k", k, 1)
    check_count("--seed", seed)
    check_count("--typical", typical)
    check_fraction("--alpha", alpha)
    check_choice("--reference", reference, ("base", "uniform"))
    check_choice("--ties", ties, ("index", "keep-all"))
    check_choice("--score", score, ("cosine", "dot"))
    config = SubsetsConfig(
        probe=pop_probe_config(kwargs), out=out, by=by, min_size=min_size, small=small, taxonomy=taxonomy,
        templates=templates, k=k, k_mode=k_mode, attributes=split_attributes(attributes) if attributes else None,
        bootstrap=bootstrap, seed=seed, alpha=alpha, reference=reference, permutations=permutations, ties=ties,
        score=score, controls=None if controls.strip().lower() == "none" else controls, typical=typical,
        figures=figures, html=html)
    from clipprobe.report.subsets import headline, skipped_text

    result = run_subsets(config)
    run = result.run
    click.echo(f"subsets: {run['n_probed']} of {run['n_subsets']} probed ({result.assignment.kind}); "
               f"{run['n_local_flagged']} of {run['n_local_rows']} local rows flagged at FDR {alpha}")
    click.echo(f"  {skipped_text(run.get('skipped'))}")
    for row in run.get("dispersion", []):
        click.echo(f"  {headline(row, alpha=alpha)}")
    for note in run.get("notes", [])[:10]:
        click.echo(f"  note: {note}")
    for path in result.files:
        if path.suffix in (".parquet", ".html", ".json"):
            click.echo(f"  {path}")


@subsets.command("compare")
@click.argument("sources", nargs=-1, required=True, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output folder (default for one sweep folder: SWEEP/subsets-compare).")
@click.option("--by", default="kmeans:20", show_default=True, help=BY_HELP)
@click.option("--min-size", type=int, default=None,
              help="Smallest subset, in images (default: 2 x the largest k the reports recorded).")
@click.option("--small", type=click.Choice(["merge", "drop"]), default="merge", show_default=True,
              help="k-means clusters below --min-size: merge into the nearest cluster, or drop their images.")
@click.option("--cluster-model", default=None,
              help="The model whose image embeddings k-means clusters (a model key or spec; default: the first). "
                   "Every model is then probed on the same subsets.")
@click.option("--k-mode", type=click.Choice(["fixed", "fraction"]), default="fixed", show_default=True,
              help="fixed: each report's k in every subset; fraction: k * subset size / dataset size.")
@click.option("--statistics", default="kl_recall,max_skew_excess,share_flagged", show_default=True,
              help="Per-model statistics (means over words) whose ranking is compared.")
@click.option("--measures", type=click.Path(dir_okay=False), default=None,
              help="CSV of your own per-model measures (a 'model' column, then one column per measure, e.g. a "
                   "downstream bias): correlated with clipprobe's global measures and with each other.")
@click.option("--interval", type=click.Choice(["bca", "fisher", "percentile"]), default="bca", show_default=True,
              help="Interval of Spearman's rho over models, given from 8 models on (bca: the bootstrap whose "
                   "coverage was measured 0.93-0.99; see docs/subsets.md).")
@click.option("--level", type=float, default=0.95, show_default=True, help="Level of the interval of rho.")
@bootstrap_option(2000, name="--n-boot", unit="the models", what="Spearman's rho (--interval bca, percentile)",
                  minimum=100)
@permutations_option(9999, test="Spearman's rho over models (its p-value)",
                     more="; up to 8 models every permutation is used, an exact p-value")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of k-means, the bootstrap and the sampled permutations.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Embedding cache (default: the one each report recorded).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: what each report recorded).")
@click.option("--figures/--no-figures", default=True, show_default=True, help="Write the figures.")
@click.option("--html/--no-html", default=True, show_default=True, help="Write the self-contained HTML page.")
def compare(sources, out, by, min_size, small, cluster_model, k_mode, statistics, measures, interval, level, n_boot,
            permutations, seed, cache_dir, device, figures, html) -> None:
    """Across models (a sweep folder or report folders): does the ranking by global bias hold on each subset?"""
    from pathlib import Path

    from clipprobe.errors import UsageError
    from clipprobe.pipeline.subsets import CompareConfig, run_compare

    _check_by(by)
    if min_size is not None:
        check_count("--min-size", min_size, 1)
    check_count("--seed", seed)
    check_fraction("--level", level)
    stats = tuple(s.strip() for s in statistics.split(",") if s.strip())
    if not stats:
        raise UsageError("--statistics: give at least one statistic")
    if out is None:
        if len(sources) == 1 and (Path(sources[0]) / "models").is_dir():
            out = str(Path(sources[0]) / "subsets-compare")
        else:
            raise UsageError(MSG_OUT_COMPARE)
    config = CompareConfig(sources=tuple(sources), out=out, by=by, min_size=min_size, small=small,
                           cluster_model=cluster_model, k_mode=k_mode, statistics=stats, measures=measures,
                           interval=interval, level=level, n_boot=n_boot, permutations=permutations, seed=seed,
                           cache_dir=cache_dir, device=device, figures=figures, html=html)
    result = run_compare(config)
    t = result.transfer
    click.echo(f"subsets compare: {len(result.run['models'])} models x {len(result.run['subsets'])} subsets")
    for (attribute, statistic), part in t.groupby(["attribute", "statistic"], sort=False):
        rho = part["rho"].dropna()
        if len(rho):
            click.echo(f"  {statistic} ({attribute}): rho global vs subset {rho.min():+.2f} .. {rho.max():+.2f} "
                       f"(median {rho.median():+.2f}; {int((part['q_value'] < 0.05).sum())} of {len(part)} "
                       f"subsets with q < 0.05)")
    for path in result.files:
        if path.suffix in (".parquet", ".html", ".json"):
            click.echo(f"  {path}")
