"""The files of ``clipprobe captions count``: the co-occurrence table, sample captions, the lift heatmap, ``run.json``.

``cooccurrence.parquet``: one row per (word, attribute, group) with its counts and statistics
(:mod:`clipprobe.analysis.cooccurrence`); ``samples.parquet``: a few captions per cell (word, attribute, group,
file, row, caption); ``lift_heatmap.png``: :func:`clipprobe.captions.figures.save_lift_heatmap`;
``run.json``: the run record. :mod:`clipprobe.captions.counts` reads the folder back.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

FILES = {"table": "cooccurrence.parquet", "samples": "samples.parquet", "figure": "lift_heatmap.png",
         "run": "run.json"}


def write_tables(out, table, samples) -> list[Path]:
    """Write the co-occurrence table and the samples table into ``out``."""
    from clipprobe._io import write_parquet

    out = Path(out)
    write_parquet(out / FILES["table"], table)
    write_parquet(out / FILES["samples"], samples)
    return [out / FILES["table"], out / FILES["samples"]]


def write_heatmap(out, table, *, top: int) -> Path | None:
    """Draw the lift heatmap of the ``top`` strongest words into ``out``; None (with a warning) where the
    plotting library is missing."""
    try:
        from clipprobe.captions.figures import save_lift_heatmap

        return save_lift_heatmap(table, Path(out) / FILES["figure"], top=top)
    except ImportError as err:
        log.warning("no heatmap: %s", err)
        return None


def write_record(out, record: dict) -> Path:
    """Write the run record ``run.json`` into ``out``."""
    from clipprobe._io import write_json

    path = Path(out) / FILES["run"]
    write_json(path, record)
    return path
