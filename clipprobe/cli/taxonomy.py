"""`clipprobe taxonomy`: list, show and validate stereotype taxonomies."""

from __future__ import annotations

import json

import click

from clipprobe.cli._options import FORMAT_HELP, TAXONOMY_HELP

from clipprobe.errors import printable as _p

_TAXONOMY_HELP = TAXONOMY_HELP


@click.group("taxonomy")
def taxonomy() -> None:
    """Stereotype taxonomies (So-B-IT by default, or your own YAML/JSON file)."""


@taxonomy.command("list")
@click.option("--taxonomy", "name", default=None, help=_TAXONOMY_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
def list_cmd(name: str | None, fmt: str) -> None:
    """Categories of a taxonomy with their word counts."""
    from clipprobe.resources.taxonomy import get_taxonomy, list_taxonomies

    tax = get_taxonomy(name)
    summary = tax.summary()
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2))
        return
    width = max(len(_p(c)) for c in summary["categories"])
    click.echo(f"taxonomy: {_p(tax.name)}  ({_p(tax.source)})")
    for category, n in summary["categories"].items():
        click.echo(f"  {_p(category):<{width}}  {n:>4}")
    click.echo(f"  {'unique words':<{width}}  {summary['unique_words']:>4}")
    if tax.note:
        click.echo(f"note: {_p(tax.note)}")
    click.echo(f"shipped taxonomies: {', '.join(list_taxonomies())}")


@taxonomy.command("show")
@click.argument("category")
@click.option("--taxonomy", "name", default=None, help=_TAXONOMY_HELP)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
def show_cmd(category: str, name: str | None, fmt: str) -> None:
    """The words of one CATEGORY, with part of speech and source lists."""
    from clipprobe.resources.taxonomy import get_taxonomy

    tax = get_taxonomy(name)
    resolved = tax.resolve_category(category)
    rows = [tax.word(w) for w in tax.categories[resolved]]
    if fmt == "json":
        click.echo(json.dumps({"taxonomy": tax.name, "category": resolved, "words": [
            {"word": r.text, "pos": r.pos, "categories": list(r.categories), "lists": list(r.lists)}
            for r in rows]}, indent=2))
        return
    click.echo(f"{_p(resolved)} ({len(rows)} words, taxonomy {_p(tax.name)})")
    width = max(len(_p(r.text)) for r in rows)
    for r in rows:
        extra = f"  lists: {', '.join(map(_p, r.lists))}" if r.lists else ""
        also = [_p(c) for c in r.categories if c != resolved]
        also_text = f"  also in: {', '.join(also)}" if also else ""
        click.echo(f"  {_p(r.text):<{width}}  {r.pos:<9}{extra}{also_text}")


@taxonomy.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
def validate_cmd(path: str) -> None:
    """Check a taxonomy file; exit 1 with the problem if it is invalid."""
    from clipprobe.resources.taxonomy import load_taxonomy

    tax = load_taxonomy(path)
    summary = tax.summary()
    guessed = [w for w, src in tax.pos_source.items() if src == "guessed"]
    click.echo(f"{_p(path)}: valid taxonomy {_p(repr(tax.name))}: {len(summary['categories'])} categories, "
               f"{summary['unique_words']} unique words")
    if guessed:
        click.echo(f"part of speech guessed for: {', '.join(map(_p, guessed))} (add a 'pos' mapping to set it)")
