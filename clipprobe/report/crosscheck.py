"""The cross-check's files: read a ``captions count`` folder, write the joined table, correlations and figures."""

from __future__ import annotations

import logging

from clipprobe.analysis.crosscheck import MIN_ROWS, check_rows, coverage, crosscheck
from clipprobe.captions.counts import read_counts

log = logging.getLogger(__name__)


def crosscheck_scatter(joined, *, attribute: str | None = None, correlations=None, ax=None):
    """Skew (x) against caption log-odds (y), one colour per group, for the rows whose caption association
    is defined (``caption_status == "ok"``: a word or group absent from the captions has no log-odds);
    returns the Axes."""
    import numpy as np

    from clipprobe.captions.stats import STATUS_OK

    rows = joined if attribute is None else joined[joined["attribute"] == attribute]
    if "caption_status" in rows.columns:
        rows = rows[rows["caption_status"] == STATUS_OK]
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


def check_counts(counts_dir, words, attributes=None, *, min_rows: int = MIN_ROWS) -> None:
    """Refuse a ``captions count`` folder that cannot be cross-checked with a report of ``words``
    (:func:`~clipprobe.analysis.crosscheck.check_rows`), before the report is computed."""
    check_rows(read_counts(counts_dir), words, attributes, min_rows=min_rows,
               source=f"caption counts folder {counts_dir}")


def write_crosscheck(report_groups, counts_dir, out_dir, *, alpha: float = 0.05, min_rows: int = MIN_ROWS) -> list:
    """Join a report's groups with caption counts and write the table, correlations and figures.

    Writes ``OUT/crosscheck.parquet`` (joined rows, with ``caption_status``), ``OUT/crosscheck.json``
    (Spearman correlations per attribute and group over the rows with a defined caption association,
    and :func:`~clipprobe.analysis.crosscheck.coverage`: how many rows are defined, which words and
    groups never occur in the captions) and ``OUT/figures/crosscheck_<attribute>.png/.pdf``. Refuses
    (:class:`~clipprobe.errors.DataError`, nothing written) with fewer than ``min_rows`` defined rows.
    Returns the paths written.
    """
    import math
    from pathlib import Path

    from matplotlib.figure import Figure

    from clipprobe._io import atomic_path, write_json, write_parquet

    out = Path(out_dir)
    joined, correlations = crosscheck(report_groups, read_counts(counts_dir), alpha=alpha, min_rows=min_rows,
                                      source=f"caption counts folder {counts_dir}")
    cover = coverage(joined)
    log.info("cross-check: %d of %d rows with a defined caption association; %d of %d words and %d of %d groups "
             "never occur in the captions", cover["n_defined"], cover["n_rows"], cover["n_words_absent"],
             cover["n_words"], cover["n_groups_absent"], cover["n_groups"])

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    written = [out / "crosscheck.parquet", out / "crosscheck.json"]
    write_parquet(written[0], joined)
    write_json(written[1], {"counts": str(counts_dir), "alpha": alpha, **cover, "min_rows": min_rows,
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
