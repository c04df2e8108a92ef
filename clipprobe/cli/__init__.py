"""The ``clipprobe`` command line.

Every command module here imports only click and the standard library at module
level, so ``clipprobe --help`` stays fast and never imports torch, faiss,
open_clip or matplotlib (tests/test_cli_imports.py checks this). Each command
builds a config from its flags and calls a plain library function.
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from clipprobe import __version__
from clipprobe.errors import ClipprobeError, printable
from clipprobe.hub import set_process_offline

# (module, attribute) of each top-level command, in the order of `clipprobe --help`.
_COMMANDS = [
    ("clipprobe.cli.demo", "demo"),
    ("clipprobe.cli.taxonomy", "taxonomy"),
    ("clipprobe.cli.retrieve", "retrieve"),
    ("clipprobe.cli.report", "report"),
    ("clipprobe.cli.report", "crosscheck"),
    ("clipprobe.cli.eat", "eat"),
    ("clipprobe.cli.association", "association"),
    ("clipprobe.cli.sweep", "sweep"),
    ("clipprobe.cli.subsets", "subsets"),
    ("clipprobe.cli.models", "models"),
    ("clipprobe.cli.doctor", "doctor"),
    ("clipprobe.cli.figures", "figures"),
    ("clipprobe.cli.figures", "compare"),
    ("clipprobe.cli.power", "power"),
    ("clipprobe.cli.index", "index"),
    ("clipprobe.cli.captions", "captions"),
    ("clipprobe.cli.captions", "laion"),
    ("clipprobe.cli.balance", "balance"),
]


class _Group(click.Group):
    """A group that turns library errors into one-line messages with exit codes."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ClipprobeError as err:
            exc = click.ClickException(printable(err))
            exc.exit_code = err.exit_code
            raise exc from None
        except KeyboardInterrupt:
            click.echo("Interrupted; finished work is kept and a rerun resumes from it.", err=True)
            ctx.exit(130)


class _PrintableFormatter(logging.Formatter):
    """Log lines with the names and paths in them escaped for the terminal (:func:`printable`); a
    traceback below a line stays as it is."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return printable(super().formatMessage(record))


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="clipprobe")
@click.option("-v", "--verbose", count=True, help="More log output (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.option("--offline", is_flag=True, help="Never touch the network (same as HF_HUB_OFFLINE=1).")
def cli(verbose: int, quiet: bool, offline: bool) -> None:
    """Measure social stereotypes in CLIP-style vision-language models."""
    # clipprobe's own messages at INFO by default; other libraries' (open_clip, faiss) only with -v.
    own = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    others = logging.WARNING if verbose == 0 else own
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_PrintableFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=others, handlers=[handler])
    logging.getLogger("clipprobe").setLevel(own)
    set_process_offline(offline)


for _module, _attr in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _attr))


def main() -> None:
    cli(prog_name="clipprobe")
