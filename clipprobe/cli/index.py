"""`clipprobe index DIR`: one index.html linking every page of the runs in a folder; `clipprobe index build`:
embed a face dataset and build its FAISS index ahead of time."""

from __future__ import annotations

import click

from clipprobe.cli._options import FORMAT_HELP, pop_probe_config, probe_options


class _IndexGroup(click.Group):
    """``clipprobe index DIR`` is ``clipprobe index page DIR`` (any first argument that is not a command)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["page", *args]
        return super().parse_args(ctx, args)


@click.group("index", cls=_IndexGroup, subcommand_metavar="DIR | COMMAND [ARGS]...")
def index() -> None:
    """DIR: write DIR/index.html linking every page of the runs under DIR (reports, association tests,
    subsets, balancing, sweeps, caption counts); build: image embeddings and FAISS indexes, built ahead of
    time (retrieve reuses them)."""


@index.command("page")
@click.argument("folder", type=click.Path(file_okay=False))
def page_cmd(folder: str) -> None:
    """(Re)write FOLDER/index.html linking every run folder, HTML page and figure found under FOLDER
    (`clipprobe index FOLDER` does the same)."""
    from clipprobe.report.pages import find_runs, write_index

    path = write_index(folder)
    runs = find_runs(folder)
    click.echo(f"{path}: {len(runs)} run folder(s), {sum(len(r['pages']) for r in runs)} page(s)")
    for r in runs:
        click.echo(f"  {r['path']:<40} {r['command']:<16} " + (", ".join(p.rsplit('/', 1)[-1] for p in r["pages"])
                                                                or "-"))


@index.command("build")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
@probe_options
def build_cmd(fmt: str, **kwargs) -> None:
    """Embed every image of the dataset (resuming a stopped run) and store its index."""
    import json

    from clipprobe.pipeline.probe import build_index

    config = pop_probe_config(kwargs)
    summary = build_index(config)
    if fmt == "json":
        click.echo(json.dumps(summary, indent=2, default=str))
        return
    ds, model, idx = summary["dataset"], summary["model"], summary["index"]
    click.echo(f"model:    {model['canonical']} ({model['device']}, {model['precision']})")
    click.echo(f"dataset:  {ds['spec']} split {ds['split']}, fingerprint {ds['fingerprint']}")
    click.echo(f"images:   {summary['n_images']} embedded ({summary['n_embedded_now']} in this run), "
               f"{len(summary['skipped'])} unreadable")
    for item in summary["skipped"][:10]:
        click.echo(f"  skipped {item['file']}: {item['reason']}")
    if len(summary["skipped"]) > 10:
        click.echo(f"  ... and {len(summary['skipped']) - 10} more (see --format json)")
    click.echo(f"cache:    {summary['cache_dir']}")
    click.echo(f"index:    {idx['kind']} over {idx['ntotal']} vectors{' (GPU)' if idx['gpu'] else ''} -> {idx['path']}")
    t = summary["timings_s"]
    click.echo("timings:  " + ", ".join(f"{k} {v:.2f}s" for k, v in t.items() if isinstance(v, float)))
