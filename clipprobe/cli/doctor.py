"""`clipprobe doctor`: what this installation can do, and what to install for what it cannot."""

from __future__ import annotations

import json

import click

from clipprobe.cli._options import FORMAT_HELP


@click.command("doctor")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True,
              help=FORMAT_HELP)
@click.option("--deep", is_flag=True,
              help="Also import every package and ask torch and FAISS for their devices (finds a broken "
                   "installation; takes seconds). Without it, packages are found, not imported.")
def doctor(fmt: str, deep: bool) -> None:
    """Check torch and CUDA, FAISS (CPU/GPU), datasets, transformers, hyperscan, numba, Java and PySpark,
    the fsspec backends and a browser; say what to install for what is missing.

    Exit status 1 when something the core commands need (torch, open_clip, FAISS) does not work.
    """
    from clipprobe.doctor import fixes, run_checks, to_dict

    checks = run_checks(deep=deep)
    if fmt == "json":
        click.echo(json.dumps(to_dict(checks), indent=2))
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            click.echo(f"{c.status:<8} {c.name:<{width}}  {c.detail}")
        todo = fixes(checks)
        if todo:
            click.echo("\nto enable what is missing:")
            for fix, enables in todo:
                click.echo(f"  {fix}\n      for {enables}")
        else:
            click.echo("\neverything clipprobe can use is here")
        if not deep:
            click.echo("(packages found, not imported; `clipprobe doctor --deep` imports them to find a broken one)")
    if any(c.required and not c.ok for c in checks):
        click.get_current_context().exit(1)
