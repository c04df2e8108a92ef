"""The cross-check's files: read a ``captions count`` folder, write the joined table, correlations and figures."""

from __future__ import annotations

import logging

from clipprobe.analysis.crosscheck import crosscheck
from clipprobe.captions.counts import read_counts

log = logging.getLogger(__name__)


def crosscheck_scatter(joined, *, attribute: str | None = None, correlations=None, ax=None):
    """Skew (x) against caption log-odds (y), one colour per group; returns the Axes."""
    import numpy as np

    rows = joined if attribute is None else joined[joined["attribute"] == attribute]
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(4.5, 3.5), layout="constrained").add_subplot()
    from clipprobe.report.figures import OKABE_ITO

    for i, (group, g) in enumerate(rows.groupby("group", sort=False)):
        ax.scatter(g["skew"].astype(float), g["caption_log_odds"].astype(float), s=10, alpha=0.7,
                   color=OKABE_ITO[i % len(OKABE_ITO)], label=str(group))
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    ax.set_xlabel("retrieval skew (model)")
    ax.set_ylabel("caption log-odds (data)")
    title = "model vs captions" + (f": {attribute}" if attribute else "")
    if correlations and attribute in correlations and np.isfinite(correlations[attribute]["rho"]):
        c = correlations[attribute]
        title += f"  (Spearman rho={c['rho']:.2f}, n={c['n']})"
    ax.set_title(title, fontsize=9)
    if len(rows):
        ax.legend(fontsize=6, markerscale=1.5, frameon=False, loc="best")
    return ax


def write_crosscheck(report_groups, counts_dir, out_dir, *, alpha: float = 0.05) -> list:
    """Join a report's groups with caption counts and write the table, correlations and figures.

    Writes ``OUT/crosscheck.parquet`` (joined rows), ``OUT/crosscheck.json`` (Spearman
    correlations per attribute and group) and ``OUT/figures/crosscheck_<attribute>.png/.pdf``.
    Returns the paths written.
    """
    import math
    from pathlib import Path

    from matplotlib.figure import Figure

    from clipprobe._io import atomic_path, write_json, write_parquet

    out = Path(out_dir)
    joined, correlations = crosscheck(report_groups, read_counts(counts_dir), alpha=alpha)

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    written = [out / "crosscheck.parquet", out / "crosscheck.json"]
    write_parquet(written[0], joined)
    write_json(written[1], {"counts": str(counts_dir), "alpha": alpha, "n_rows": int(len(joined)),
                            "spearman_skew_vs_caption_log_odds": clean(correlations)})
    for attribute in sorted(set(joined["attribute"])):
        fig = Figure(figsize=(3.3, 3.0), layout="constrained")
        crosscheck_scatter(joined, attribute=attribute, correlations=correlations, ax=fig.add_subplot())
        for fmt in ("png", "pdf"):
            path = out / "figures" / f"crosscheck_{attribute}.{fmt}"
            with atomic_path(path, suffix="." + fmt) as tmp:
                fig.savefig(tmp, format=fmt, dpi=200)
            written.append(path)
    return written
