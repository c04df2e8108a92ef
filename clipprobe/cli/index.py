"""`clipprobe index build`: embed a face dataset and build its FAISS index ahead of time."""

from __future__ import annotations

import click

from clipprobe.cli._options import pop_probe_config, probe_options


@click.group("index")
def index() -> None:
    """Image embeddings and FAISS indexes, built ahead of time (retrieve reuses them)."""


@index.command("build")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
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
