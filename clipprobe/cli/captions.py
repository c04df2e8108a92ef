"""`clipprobe captions` (alias `laion`): caption co-occurrence in LAION-schema parquet."""

from __future__ import annotations

import json
import signal

import click

from clipprobe.cli._options import ENGINE_HELP, FORMAT_HELP, TAXONOMY_HELP

from clipprobe.errors import printable

_LEXICON_HELP = ("Lexicon of group terms: a name (see `clipprobe captions lexicons`) or a path to a YAML/JSON "
                 "file. Default: fairface. The lexicon drives the result; ours is a starting point.")

MSG_HASH_OPTION = "--hash-column is for --for-balance (the columns hashed beside each recorded caption)"


def _count(captions, out, text_column, taxonomy, lexicon, engine, workers, spark_master, samples, strict, fmt,
           matcher="auto", spark_conf=(), for_balance=False, hash_columns=("URL",)):
    from clipprobe.pipeline.captions import CountConfig, count_captions

    config = CountConfig(captions=tuple(captions), out=out, taxonomy=taxonomy, lexicon=lexicon,
                         text_column=text_column, engine=engine, workers=workers, spark_master=spark_master,
                         spark_conf=tuple(spark_conf),
                         samples=samples, strict=strict, matcher=matcher, for_balance=for_balance,
                         hash_columns=tuple(hash_columns))
    try:
        result = count_captions(config)
    except KeyboardInterrupt:
        # Ctrl-C stopped the scan (finished files are kept); another one now ends the process at once
        # (the shell sees status 130), never with a traceback from the interpreter's shutdown
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        raise
    run = result.run
    if fmt == "json":
        click.echo(json.dumps({k: v for k, v in run.items() if k != "versions"}, indent=2, default=str))
        return
    click.echo(f"{run['captions']:,} captions ({run['nulls']:,} null) in {run['n_files']} files, "
               f"{run['row_groups']} row groups; {len(run['skipped'])} files skipped")
    for item in run["skipped"]:
        click.echo(f"  skipped: {printable(item['why'])}")
    click.echo(defined_line(result.table))
    strongest = strongest_rows(result.table)
    click.echo("strongest word-group associations (log-odds):" if len(strongest) else
               "no word-group association is defined")
    for r in strongest.itertuples():
        click.echo(f"  {printable(r.word):<24} {printable(r.attribute):>6}:{printable(r.group):<16} "
                   f"n_both={r.n_both:<8} lift={r.lift:7.2f} "
                   f"q={r.q_value:.2g}")
    click.echo(f"wrote {result.out}/cooccurrence.parquet, samples.parquet, run.json, lift_heatmap.png")


def strongest_rows(table, n: int = 10):
    """The ``n`` rows with the largest log-odds among those whose association is defined (a word or group
    that occurs in no caption has none)."""
    from clipprobe.analysis.cooccurrence import defined_rows

    return defined_rows(table).sort_values("log_odds", ascending=False, kind="stable").head(n)


def defined_line(table) -> str:
    """How many rows have a defined association, and how many words and groups occur in no caption."""
    from clipprobe.analysis.cooccurrence import defined_rows

    words = table.groupby("word", sort=False)["n_word"].max()
    groups = table.groupby(["attribute", "group"], sort=False)["n_group"].max()
    return (f"{len(defined_rows(table)):,} of {len(table):,} word-group rows have a defined association; "
            f"{int((words == 0).sum()):,} of {len(words):,} words and {int((groups == 0).sum())} of {len(groups)} "
            "groups occur in no caption (their rows are undefined: status column)")


def _show(directory, word, attribute, n_samples, fmt):
    from clipprobe.captions.counts import word_counts

    from clipprobe.analysis.cooccurrence import with_status

    found = word_counts(directory, word, attribute=attribute)
    match, rows, samples = [found.word], with_status(found.cells, adjust=False), found.samples
    if fmt == "json":
        records = [{k: (None if isinstance(v, float) and v != v else v) for k, v in r.items()}   # NaN: null
                   for r in rows.to_dict(orient="records")]
        out = {"word": match[0], "groups": records}
        if samples is not None:
            out["samples"] = samples.groupby(["attribute", "group"]).head(n_samples).to_dict(orient="records")
        click.echo(json.dumps(out, indent=2, default=float))
        return
    first = rows.iloc[0]
    click.echo(f"{printable(match[0])}: in {first.n_word:,} of {first.n_captions:,} captions")
    from clipprobe.analysis.cooccurrence import STATUS_OK

    for r, why in zip(rows.itertuples(), rows["status"]):
        head = (f"  {printable(r.attribute):>6}:{printable(r.group):<16} n_group={r.n_group:<9} "
                f"n_both={r.n_both:<7} expected={r.expected:9.1f} ")
        if why != STATUS_OK:
            click.echo(head + f"undefined ({why})")
        else:
            interval = ("[interval withheld: a cell expects < 10]" if r.log_odds_ci_low != r.log_odds_ci_low
                        else f"[{r.log_odds_ci_low:.2f}, {r.log_odds_ci_high:.2f}]")
            click.echo(head + f"lift={r.lift:6.2f} log-odds={r.log_odds:6.2f} {interval} q={r.q_value:.2g}")
        if samples is not None and n_samples > 0:
            cell = samples[(samples["attribute"] == r.attribute) & (samples["group"] == r.group)].head(n_samples)
            for s in cell.itertuples():
                click.echo(f"      - {printable(s.caption)}")


@click.group("captions")
def captions() -> None:
    """Caption co-occurrence of taxonomy words with demographic terms in LAION-scale parquet."""


@captions.command("count")
@click.option("--captions", "captions_", multiple=True, required=True,
              help="Parquet files: a path, a glob or an fsspec URL (repeatable).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder (resumable).")
@click.option("--text-column", default=None, help="Caption column (default TEXT, else caption or text).")
@click.option("--taxonomy", default=None, help=TAXONOMY_HELP)
@click.option("--lexicon", default=None, help=_LEXICON_HELP)
@click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
              help=ENGINE_HELP)
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Processes (local) or local[N] threads (spark). Default: all cores.")
@click.option("--spark-master", default=None, help="Spark master URL (default local[--workers]).")
@click.option("--spark-conf", multiple=True, metavar="KEY=VALUE",
              help="A setting of the Spark session (repeatable), e.g. spark.archives=clipprobe-env.tar.gz#environment "
                   "to ship a packed environment to the executors.")
@click.option("--samples", type=click.IntRange(min=0), default=5, show_default=True,
              help="Example captions kept per (word, group) cell.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable file instead of skipping it.")
@click.option("--matcher", type=click.Choice(["auto", "hyperscan", "tokens"]), default="auto", show_default=True,
              help="auto: the compiled token pass (numba), else hyperscan where numba cannot be imported. "
                   "Both give identical counts.")
@click.option("--for-balance", is_flag=True,
              help="Also store each caption's matches and content hashes (OUT/parts/matches/, about ten bytes per "
                   "caption), so that `balance fit --from-scan OUT` reads no caption again.")
@click.option("--hash-column", "hash_columns", multiple=True, metavar="COLUMN",
              help="With --for-balance: a column hashed beside each caption's text, as balance fit's --key or "
                   "--id-column (repeatable; default URL; 'none': the caption text alone).")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
def count_cmd(captions_, out, text_column, taxonomy, lexicon, engine, workers, spark_master, spark_conf, samples,
              strict, matcher, for_balance, hash_columns, fmt):
    """Count captions that contain each word, each group, and both; write OUT/cooccurrence.parquet."""
    from clipprobe.errors import UsageError

    if hash_columns and not for_balance:
        raise UsageError(MSG_HASH_OPTION)
    columns = tuple(c for c in hash_columns if c.lower() != "none") if hash_columns else ("URL",)
    _count(captions_, out, text_column, taxonomy, lexicon, engine, workers, spark_master, samples, strict, fmt,
           matcher, spark_conf, for_balance, columns)


@captions.command("show")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--word", required=True, help="A taxonomy word (case-insensitive).")
@click.option("--attribute", default=None, help="Only this attribute (race, gender, age).")
@click.option("--samples", "n_samples", type=click.IntRange(min=0), default=3, show_default=True,
              help="Example captions shown per (word, group) cell.")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
def show_cmd(directory, word, attribute, n_samples, fmt):
    """A word's row per group in a counts DIRECTORY, with sample captions."""
    _show(directory, word, attribute, n_samples, fmt)


@captions.command("lexicons")
@click.option("--lexicon", default=None, help=_LEXICON_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
def lexicons_cmd(lexicon, fmt):
    """Shipped lexicons, and the groups and term counts of one."""
    from clipprobe.resources.lexicon import get_lexicon, list_lexicons

    lex = get_lexicon(lexicon)
    summary = lex.summary()
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"lexicon: {lex.name}  ({lex.source})")
    for attribute, groups in summary["attributes"].items():
        click.echo(f"  {attribute}: " + ", ".join(f"{g} ({n})" for g, n in groups.items()))
    click.echo(f"shipped lexicons: {', '.join(list_lexicons())}")


laion = click.Group("laion", commands=dict(captions.commands), help="Alias of `clipprobe captions`.",
                    hidden=True)
