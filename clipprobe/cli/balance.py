"""`clipprobe balance`: representation and association bias of caption data, and M4 data balancing
(Alabdulmohsin et al., ICLR 2024)."""

from __future__ import annotations

import dataclasses
import json
import signal

import click

from clipprobe.cli._imageattr import attributes_cmd, image_source_options
from clipprobe.cli._options import ENGINE_HELP, FORMAT_HELP, TAXONOMY_HELP

MSG_UNIT_OPTION = "{option} must be in (0, 1], got {value}"
MSG_TARGET_FORM = "--target must be 'uniform' or GROUP=SHARE,GROUP=SHARE,... got {value!r}"
MSG_TARGET_SHARE = "--target: the share of {group!r} must be between 0 and 1, got {value!r}"
MSG_TARGET_SUM = "--target: the shares must sum to 1, they sum to {total:.6g}"
MSG_GROUPS_OPTION = "--groups is for --attribute-column (the lexicon gives the groups otherwise)"
MSG_COLUMN_GROUPS = "--attribute-column needs --groups G1,G2,... (the group names its values take)"
MSG_INFEASIBLE = ("the balance constraints (--eps-r {eps_r:g}, --eps-a {eps_a:g}) cannot be met at --keep {keep:g}: "
                  "the largest feasible keep rate is {max_keep:.4f}; lower --keep or loosen --eps-r/--eps-a "
                  "(the pattern counts are kept: a rerun does not rescan)")

_LEXICON_HELP = ("Lexicon of group terms: a name (see `clipprobe captions lexicons`) or a YAML/JSON file. "
                 "Default: fairface. The lexicon decides which captions mention a group.")


def parse_target(text: str):
    """'uniform' or a tuple of (group, share) pairs from GROUP=SHARE,... (shares in [0, 1] summing to 1)."""
    from clipprobe.errors import UsageError

    text = text.strip()
    if text == "uniform":
        return text
    pairs = []
    for item in text.split(","):
        group, eq, value = item.partition("=")
        if not eq or not group.strip():
            raise UsageError(MSG_TARGET_FORM.format(value=text))
        try:
            share = float(value)
        except ValueError:
            raise UsageError(MSG_TARGET_SHARE.format(group=group.strip(), value=value.strip())) from None
        if not 0 <= share <= 1:
            raise UsageError(MSG_TARGET_SHARE.format(group=group.strip(), value=value.strip()))
        pairs.append((group.strip(), share))
    total = sum(s for _, s in pairs)
    if abs(total - 1.0) > 1e-6:
        raise UsageError(MSG_TARGET_SUM.format(total=total))
    return tuple(pairs)


def _unit(option: str, value: float) -> float:
    from clipprobe.errors import UsageError

    if not 0 < value <= 1:
        raise UsageError(MSG_UNIT_OPTION.format(option=option, value=value))
    return value


def _common(func):
    options = [
        click.option("--captions", "captions_", multiple=True,
                     help="Parquet files: a path, a glob, a folder or an fsspec URL (repeatable). Required unless "
                          "--attribute-source images|both (then: the metadata of --embeddings)."),
        click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable)."),
        click.option("--attribute", default="gender", show_default=True,
                     help="Attribute of the lexicon whose groups are balanced (or the name of --attribute-column's)."),
        click.option("--labels", default="occupation", show_default=True,
                     help="Labels: a category of --taxonomy, 'all' (every word) or a word-list file (one per line)."),
        click.option("--proxy", "proxies", multiple=True, metavar="WORD",
                     help="A proxy of the attribute (a word that stands for a group, e.g. beard; repeatable): matched "
                          "like a label and given the association constraints (the paper's de-correlation of "
                          "proxies), but not reported among the labels. Its constraints are in residuals.parquet "
                          "(constraint 'proxy')."),
        click.option("--taxonomy", default=None, help=TAXONOMY_HELP),
        click.option("--lexicon", default=None, help=_LEXICON_HELP),
        click.option("--attribute-column", default=None, metavar="COLUMN",
                     help="A column holding each example's group (e.g. from an image classifier; null: none), "
                          "used instead of the lexicon."),
        click.option("--groups", default=None, metavar="G1,G2,...", help="The groups of --attribute-column."),
        click.option("--label-column", default=None, metavar="COLUMN",
                     help="A column holding each example's labels (a list of strings, or one string; null: none), "
                          "e.g. from a multi-label image classifier; its values must be among --labels' words."),
        click.option("--label-source", type=click.Choice(["captions", "column", "both"]), default=None,
                     help="Where the labels come from: the --labels words in the caption, --label-column, or both "
                          "(either marks a label). Default: column with --label-column, else captions. "
                          "--proxy words always come from the caption."),
        click.option("--text-column", default=None, help="Caption column (default TEXT, else caption or text)."),
        click.option("--target", default="uniform", show_default=True,
                     help="Target group distribution: uniform, or GROUP=SHARE,GROUP=SHARE,..."),
        click.option("--level", type=float, default=0.95, show_default=True, help="Level of the intervals."),
        click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
                     help=ENGINE_HELP),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Threads or processes (local) or local[N] (spark). Default: all cores."),
        click.option("--spark-master", default=None, help="Spark master URL (default local[--workers])."),
        click.option("--spark-conf", multiple=True, metavar="KEY=VALUE",
                     help="A setting of the Spark session (repeatable), e.g. spark.archives=env.tar.gz#environment."),
        click.option("--matcher", type=click.Choice(["auto", "hyperscan", "tokens"]), default="auto",
                     show_default=True, help="Caption matcher (identical results)."),
        click.option("--from-scan", default=None, metavar="DIR", type=click.Path(file_okay=False),
                     help="A `captions count --for-balance` folder of the same files: read each caption's recorded "
                          "matches and content hashes instead of reading and matching the captions (same results; "
                          "refused if DIR was counted from other files, content, caption column or without these "
                          "labels' and groups' terms)."),
        click.option("--figure/--no-figure", default=True, show_default=True,
                     help="Draw OUT/balance.png and .pdf (RB per group, the largest AB cells)."),
        click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
                     help=FORMAT_HELP),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _config(kwargs, **fit):
    from clipprobe.captions.patterns import EngineSettings
    from clipprobe.cli._options import check_fraction
    from clipprobe.errors import UsageError
    from clipprobe.pipeline.balance import BalanceConfig

    groups = kwargs.pop("groups")
    column = kwargs.pop("attribute_column")
    if groups is not None and column is None:
        raise UsageError(MSG_GROUPS_OPTION)
    group_tuple = None
    if column is not None:
        group_tuple = tuple(g.strip() for g in (groups or "").split(",") if g.strip())
        if not group_tuple:
            raise UsageError(MSG_COLUMN_GROUPS)
    check_fraction("--level", kwargs["level"])
    engine = EngineSettings(engine=kwargs.pop("engine"), workers=kwargs.pop("workers"),
                            spark_master=kwargs.pop("spark_master"), spark_conf=tuple(kwargs.pop("spark_conf")),
                            matcher=kwargs.pop("matcher"))
    return BalanceConfig(captions=tuple(kwargs.pop("captions_")), out=kwargs.pop("out"),
                         attribute=kwargs.pop("attribute"), labels=kwargs.pop("labels"),
                         taxonomy=kwargs.pop("taxonomy"), lexicon=kwargs.pop("lexicon"), attribute_column=column,
                         groups=group_tuple, label_column=kwargs.pop("label_column"),
                         label_source=kwargs.pop("label_source"), text_column=kwargs.pop("text_column"),
                         target=parse_target(kwargs.pop("target")), level=kwargs.pop("level"),
                         figure=kwargs.pop("figure"), engine=engine, from_scan=kwargs.pop("from_scan"),
                         proxies=tuple(p.strip() for p in kwargs.pop("proxies")), **fit)


_SMALL_BLAS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _one_blas_thread() -> None:
    """One BLAS thread unless the user chose otherwise: the solve's vectors are small (a few hundred
    duals), and on a shared machine a multi-threaded BLAS makes each L-BFGS-B step wait for its threads
    (measured: 10-20x slower solves under load). Set before numpy loads (the CLI imports it only here)."""
    import os
    import sys

    if "numpy" not in sys.modules:
        for name in _SMALL_BLAS:
            os.environ.setdefault(name, "1")


def _run(fn, config):
    from clipprobe.analysis.balance import BalanceInfeasible
    from clipprobe.errors import ClipprobeError

    try:
        return fn(config)
    except BalanceInfeasible as err:
        raise ClipprobeError(MSG_INFEASIBLE.format(eps_r=config.eps_r, eps_a=config.eps_a, keep=config.keep,
                                                   max_keep=err.max_keep)) from None
    except KeyboardInterrupt:
        # Ctrl-C stopped the scan (finished files are kept); another one now ends the process at once
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise


def _echo_result(result, fmt: str, blocks) -> None:
    from clipprobe.report.balance import summary_lines

    if fmt == "json":
        click.echo(json.dumps({k: v for k, v in result.run.items() if k not in ("versions", "files")}, indent=2,
                              default=str))
        return
    run = result.run
    click.echo(f"{run['rows']:,} captions in {run['n_files']} files, {run['patterns']:,} distinct patterns; "
               f"attribute {run['attribute']!r} ({len(run['groups'])} groups), {len(run['labels'])} labels")
    for line in summary_lines(result.groups, result.cells, blocks):
        click.echo("  " + line)
    fit = run.get("fit")
    if fit:
        click.echo(f"keep rate {fit['keep_rate']:.4f} (target {fit['keep_target']:g}, largest feasible "
                   f"{fit['max_keep']:.4f}); q meets the constraints within {fit['max_violation']:.1e} "
                   f"(largest |residual| representation {fit['max_residual_r']:.4f}, association "
                   f"{fit['max_residual_a']:.4f}"
                   + (f", proxies {fit['max_residual_p']:.4f}" if "max_residual_p" in fit else "")
                   + f"; eps {fit['eps_r']:g} / {fit['eps_a']:g})")
        click.echo(f"kept by the flags: {fit['kept_by_flags']:,} ({fit['kept_share_by_flags']:.4f}), q x count per "
                   f"pattern rounded: largest |residual| representation {fit['max_residual_r_kept']:.4f}, association "
                   f"{fit['max_residual_a_kept']:.4f}; over their bound: {fit['violated_r_kept']} of "
                   f"{fit['constraints_r']} and {fit['violated_a_kept']} of {fit['constraints_a']} "
                   f"(rounding: up to one caption per pattern)")
    click.echo(f"wrote {result.out}/: " + ", ".join(p.name for p in result.files))


@click.group("balance")
def balance() -> None:
    """Representation and association bias of caption data, and M4 balancing weights (Alabdulmohsin et al. 2024)."""


@balance.command("measure")
@_common
@image_source_options
def measure_cmd(fmt, **kwargs):
    """Data RB (per group) and AB (per group x label) with intervals; OUT/bias_groups.parquet, bias_cells.parquet."""
    _one_blas_thread()
    from clipprobe.cli._imageattr import echo_source, pop_image_source
    from clipprobe.pipeline.balance import measure_bias

    source = pop_image_source(kwargs)
    config = dataclasses.replace(_config(kwargs), attribute_source=source)
    result = _run(measure_bias, config)
    _echo_result(result, fmt, ("before",))
    echo_source(result.run, fmt)


@balance.command("fit")
@_common
@click.option("--keep", type=float, default=0.9, show_default=True, help="Target keep rate, in (0, 1].")
@click.option("--eps-r", type=float, default=0.01, show_default=True,
              help="Bound of the representation constraints (group shares within eps of the target), in (0, 1].")
@click.option("--eps-a", type=float, default=0.01, show_default=True,
              help="Bound of the association constraints (per label), in (0, 1].")
@click.option("--scale", type=click.Choice(["conditional", "all"]), default="conditional", show_default=True,
              help="conditional: shares among the captions that mention a group; all: the paper's raw means.")
@click.option("--utility", default=None, metavar="COLUMN",
              help="A column of positive utilities (e.g. a quality score): M4 keeps high-utility captions closer "
                   "to the keep rate.")
@click.option("--key", default="URL", show_default=True, metavar="COLUMN",
              help="Column copied into weights.parquet to join the weights to the data ('none': no column).")
@click.option("--id-column", default=None, metavar="COLUMN",
              help="A stable id column: the keep flags rank each pattern's captions by a hash of it alone "
                   "(default: a hash of the caption text and the --key column; never the file's path).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the keep flags' rank order (another seed keeps another set of captions with the same "
                   "counts per pattern).")
@image_source_options
def fit_cmd(fmt, keep, eps_r, eps_a, scale, utility, key, id_column, seed, **kwargs):
    """M4 keep probabilities and keep flags (q x count per pattern, rounded); OUT/weights.parquet, before/after
    RB/AB, residuals."""
    _one_blas_thread()
    from clipprobe.cli._imageattr import echo_source, pop_image_source
    from clipprobe.pipeline.balance import fit_balance

    source = pop_image_source(kwargs)
    _unit("--keep", keep)
    _unit("--eps-r", eps_r)
    _unit("--eps-a", eps_a)
    config = _config(kwargs, keep=keep, eps_r=eps_r, eps_a=eps_a, scale=scale, utility=utility,
                     key=None if key.lower() == "none" else key, id_column=id_column, seed=seed)
    result = _run(fit_balance, dataclasses.replace(config, attribute_source=source))
    _echo_result(result, fmt, ("before", "after", "kept"))
    echo_source(result.run, fmt)


balance.add_command(attributes_cmd)
