"""`clipprobe retrieve`: one word's top-k faces and their demographic skew."""

from __future__ import annotations

import click

from clipprobe.cli._options import (
    FORMAT_CSV_HELP,
    attributes_option,
    check_choice,
    embeddings_options,
    pop_probe_config,
    probe_options,
    split_attributes,
)


@click.command("retrieve")
@click.option("--word", required=True, help="The word to probe (taxonomy word or any other; multi-word is fine).")
@click.option("--k", type=int, default=100, show_default=True, help="Number of faces to retrieve.")
@click.option("--templates", default="default", show_default=True,
              help="Prompt templates: default, ensemble, or a path to your own YAML/text file.")
@click.option("--taxonomy", default=None, help="Taxonomy name or file (for the word's part of speech).")
@attributes_option("race,gender,race_gender")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "csv"]), default="table", show_default=True,
              help=FORMAT_CSV_HELP)
@click.option("--out", type=click.Path(dir_okay=False), default=None, help="Write the output here instead of stdout.")
@click.option("--grid", type=click.Path(dir_okay=False), default=None, help="Write a contact sheet of the top-k faces (PNG).")
@click.option("--score", default="cosine", show_default=True,
              help="'cosine' of normalised embeddings, or 'dot' with the raw image embedding (as oxai ranks).")
@probe_options
@embeddings_options
def retrieve(word, k, templates, taxonomy, attributes, fmt, out, grid, score, **kwargs) -> None:
    """Retrieve the top-k faces for a word and show each group's share and skew."""
    import json

    from clipprobe import _io
    from clipprobe.pipeline.probe import open_probe
    from clipprobe.pipeline.probe import retrieve as run_retrieve
    from clipprobe.report.retrieval import format_table
    from clipprobe.resources.prompts import make_query

    config = pop_probe_config(kwargs)
    attrs = split_attributes(attributes)
    if k < 1:
        raise click.BadParameter(f"k must be a positive number of images, got {k}", param_hint="--k")
    if not word.strip():
        raise click.BadParameter("the word is empty", param_hint="--word")
    check_choice("--score", score, ("cosine", "dot"))
    query = make_query(word, taxonomy=taxonomy, templates=templates)  # cheap checks before loading anything
    probe = open_probe(config)
    result = run_retrieve(probe, query, k=k, attributes=attrs, score=score)
    if fmt == "json":
        text = json.dumps(result.to_dict(), indent=2) + "\n"
    elif fmt == "csv":
        text = _io.csv_text(result.groups_table())
    else:
        text = format_table(result) + "\n"
    if out:
        _io.write_text(out, text)
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)
    if grid:
        from clipprobe.report.retrieval import save_grid

        save_grid(result, grid, probe.load_image)
        click.echo(f"wrote {grid}", err=True)
