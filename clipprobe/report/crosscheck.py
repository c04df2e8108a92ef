"""The cross-check's files: read a ``captions count`` folder, write the joined table, correlations and figures."""

from __future__ import annotations

import logging

from clipprobe.analysis.crosscheck import MIN_ROWS, check_rows, coverage, crosscheck
from clipprobe.captions.counts import read_counts
from clipprobe.errors import DataError

log = logging.getLogger(__name__)

MSG_GROUPS_MISMATCH = (
    "{source}: the caption lexicon does not match the report: attribute {attribute!r} has groups {missing} in the "
    "report but not in the caption counts (the counts have: {counts}); count the captions with a lexicon that names "
    "the report's groups"
)
MSG_NO_SHARED_ATTRIBUTE = (
    "{source}: the caption lexicon does not match the report: no attribute in common (report: {report}; caption "
    "counts: {counts})"
)


def check_groups(report_groups, cooccurrence, *, source: str = "caption counts", quiet: bool = False) -> None:
    """Refuse caption counts whose lexicon does not name the report's groups: every attribute the two share
    must have each of the report's groups in the counts (an attribute the lexicon lacks, such as the derived
    ``race_gender``, is left out of the cross-check), and they must share one attribute.

    ``report_groups``: a table with ``attribute`` and ``group`` columns (the report's groups.parquet) or a
    mapping attribute -> groups."""
    if hasattr(report_groups, "columns"):
        wanted: dict[str, list[str]] = {}
        for a, g in zip(report_groups["attribute"].astype(str), report_groups["group"].astype(str)):
            wanted.setdefault(a, [])
            if g not in wanted[a]:
                wanted[a].append(g)
    else:
        wanted = {str(a): [str(g) for g in groups] for a, groups in report_groups.items()}
    have: dict[str, set[str]] = {}
    for a, g in zip(cooccurrence["attribute"].astype(str), cooccurrence["group"].astype(str)):
        have.setdefault(a, set()).add(g)
    shared = [a for a in wanted if a in have]
    if not shared:
        raise DataError(MSG_NO_SHARED_ATTRIBUTE.format(source=source, report=", ".join(wanted) or "none",
                                                       counts=", ".join(sorted(have)) or "none"))
    for attribute in shared:
        missing = [g for g in wanted[attribute] if g not in have[attribute]]
        if missing:
            raise DataError(MSG_GROUPS_MISMATCH.format(
                source=source, attribute=attribute, missing=", ".join(repr(g) for g in missing),
                counts=", ".join(repr(g) for g in sorted(have[attribute]))))
    left = [a for a in wanted if a not in have]
    if left and not quiet:
        log.info("cross-check: the caption counts have no attribute %s; its rows are left out", ", ".join(left))


def crosscheck_scatter(joined, *, attribute: str | None = None, correlations=None, ax=None):
    """Skew (x) against caption log-odds (y), one colour per group (the report's group order), for the rows
    whose caption association is defined (``caption_status == "ok"``: a word or group absent from the
    captions has no log-odds); a group with no face in the top-k has no skew: an ``x`` in the shaded strip
    at the left. Returns the Axes."""
    import numpy as np

    from clipprobe.analysis.cooccurrence import STATUS_OK
    from clipprobe.report import figures as F

    rows = joined if attribute is None else joined[joined["attribute"] == attribute]
    if "caption_status" in rows.columns:
        rows = rows[rows["caption_status"] == STATUS_OK]
    styles = F.group_styles(rows["group"].astype(str))
    zero = F.zero_faces(rows)
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 3.2)
        zero_y, zero_colors = [], []
        for group, (color, marker) in styles.items():
            sel = (rows["group"].astype(str) == group).to_numpy()
            g = rows[sel & ~zero]
            ax.scatter(g["skew"].astype(float), g["caption_log_odds"].astype(float), s=F.scaled(9), alpha=0.75,
                       color=color, marker=marker, lw=0, label=F.short(group, 20))
            z = rows[sel & zero]
            zero_y += list(z["caption_log_odds"].astype(float))
            zero_colors += [color] * len(z)
        measured = rows[~zero]
        F.set_skew_axis(ax, F.skew_limits(measured["skew"].astype(float)))
        F.draw_zero_faces(ax, zero_y, colors=zero_colors)
        ax.axhline(0, color="0.6", lw=F.scaled(0.6), zorder=0)
        ax.axvline(0, color="0.6", lw=F.scaled(0.6), zorder=0)
        ax.set_xlabel(F.LABELS["skew"])
        ax.set_ylabel(F.LABELS["caption_log_odds"])
        title = "Model vs captions" + (f" ({F.literal(attribute)})" if attribute else "")
        if correlations and attribute in correlations and np.isfinite(correlations[attribute]["rho"]):
            c = correlations[attribute]
            title += f"\nSpearman rho={c['rho']:.2f}, n={c['n']}"
        ax.set_title(title, **F.TITLE_AT_TOP)
        handles, labels = ax.get_legend_handles_labels()
        if zero_y:
            handles.append(F.zero_legend_handle())
            labels.append(handles[-1].get_label())
        if handles:
            ax.figure.legend(handles, labels, loc="outside lower center", ncol=F._legend_columns(ax.figure, labels),
                             handletextpad=0.1, columnspacing=0.8, markerscale=1.3)
    return ax


def groups_fingerprint(report_groups) -> str:
    """A hash of a report's (word, attribute, group, skew) rows: ``crosscheck.json`` records the one it joined,
    so the HTML page shows a cross-check only beside the report it was made from."""
    import hashlib

    h = hashlib.sha256()
    for w, a, g, s in zip(report_groups["word"], report_groups["attribute"], report_groups["group"],
                          report_groups["skew"]):
        h.update(f"{w}\t{a}\t{g}\t{float(s)!r}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def check_counts(counts_dir, words, attributes=None, *, groups=None, min_rows: int = MIN_ROWS) -> None:
    """Refuse a ``captions count`` folder that cannot be cross-checked with a report of ``words``
    (:func:`~clipprobe.analysis.crosscheck.check_rows`) or whose lexicon does not name the report's
    ``groups`` (attribute -> groups; :func:`check_groups`), before the report is computed."""
    counts = read_counts(counts_dir)
    source = f"caption counts folder {counts_dir}"
    if groups is not None:
        check_groups(groups, counts, source=source, quiet=True)   # write_crosscheck says what is left out
    check_rows(counts, words, attributes, min_rows=min_rows, source=source)


def write_crosscheck(report_groups, counts_dir, out_dir, *, alpha: float = 0.05, min_rows: int = MIN_ROWS) -> list:
    """Join a report's groups with caption counts and write the table, correlations and figures.

    Writes ``OUT/crosscheck.parquet`` (joined rows, with ``caption_status``), ``OUT/crosscheck.json``
    (Spearman correlations per attribute and group over the rows with a defined caption association,
    and :func:`~clipprobe.analysis.crosscheck.coverage`: how many rows are defined, which words and
    groups never occur in the captions) and ``OUT/figures/crosscheck_<attribute>.png/.pdf/.svg``. Refuses
    (:class:`~clipprobe.errors.DataError`, nothing written) with fewer than ``min_rows`` defined rows or a
    lexicon that does not name the report's groups (:func:`check_groups`).
    Returns the paths written.
    """
    import math
    from pathlib import Path

    from clipprobe._io import write_json, write_parquet
    from clipprobe.report.figures import FIGURE_FORMATS, save_figure

    out = Path(out_dir)
    counts = read_counts(counts_dir)
    check_groups(report_groups, counts, source=f"caption counts folder {counts_dir}")
    joined, correlations = crosscheck(report_groups, counts, alpha=alpha, min_rows=min_rows,
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
                            "spearman_skew_vs_caption_log_odds": clean(correlations),
                            "report_groups": groups_fingerprint(report_groups)})
    for attribute in sorted(set(joined["attribute"])):
        ax = crosscheck_scatter(joined, attribute=attribute, correlations=correlations)
        written += save_figure(ax.figure, out / "figures" / f"crosscheck_{attribute}", formats=FIGURE_FORMATS)
    return written
