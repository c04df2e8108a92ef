"""Write a report folder from tables: the tables, the figures, the HTML page, and last ``run.json``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clipprobe.report.store import (FILES, FORMAT_VERSION, Report, check_out_folder, summary_csv_frame,
                                    table_checksums)

if TYPE_CHECKING:  # pragma: no cover
    from clipprobe.analysis.probe import ReportTables

log = logging.getLogger(__name__)


def flag_counts(groups) -> dict:
    """What run.json records of the flags: ``n_rows``; ``controls_ran``; ``headline_flag`` (the flag the
    summary line, the HTML page and the figures lead with: ``flagged_vs_controls`` where the control test
    ran, else ``flagged``); ``n_flagged_vs_controls`` (None where no control test ran) and ``n_flagged``
    (the hypergeometric test: the word's top-k is not a random sample of faces)."""
    from clipprobe.analysis.probe import controls_ran, flag_mask, headline_flag

    ran = controls_ran(groups)
    return {"n_rows": int(len(groups)), "controls_ran": ran, "headline_flag": headline_flag(groups),
            "n_flagged_vs_controls": int(flag_mask(groups, "flagged_vs_controls").sum()) if ran else None,
            "n_flagged": int(flag_mask(groups, "flagged").sum())}


def write_report(tables: "ReportTables", out, *, run: dict | None = None, figures: bool = True, html: bool = True,
                 image_loader: Callable | None = None, label_for: Callable[[str], str] | None = None,
                 timer=None, started: float | None = None) -> list[Path]:
    """Write a report folder from :class:`~clipprobe.analysis.probe.ReportTables`; returns the paths written.

    ``run`` is the run record (see :func:`clipprobe.runinfo.run_record`; a minimal one is made when
    None, as for tables computed from arrays). Figures and the HTML page are drawn from the tables in
    memory; ``image_loader``/``label_for`` supply faces for the HTML contact sheets. ``run.json`` is
    written last, with the tables' checksums. ``started`` (a ``time.time()``; default: now) is when the
    run began: figure temporaries older than it, left by a killed run, are removed.
    """
    from clipprobe import _io
    from clipprobe.runinfo import StageTimer, run_record

    out = Path(out)
    check_out_folder(out)
    timer = timer or StageTimer()
    if run is None:
        run = run_record("report", format_version=FORMAT_VERSION,
                         config={"k": tables.k, "alpha": tables.alpha, "attributes": list(tables.attributes)},
                         k=tables.k, alpha=tables.alpha, attributes=list(tables.attributes))
    run = {**run, "format_version": FORMAT_VERSION, **flag_counts(tables.groups)}
    written = [out / FILES["groups"], out / FILES["words"], out / FILES["summary"], out / FILES["summary_table"]]
    with timer("write_tables"):
        _io.write_parquet(written[0], tables.groups)
        _io.write_parquet(written[1], tables.words)
        _io.write_text(written[2], _io.csv_text(summary_csv_frame(tables.summary)))
        _io.write_parquet(written[3], tables.summary)
    report = Report(path=out, groups=tables.groups, words=tables.words, summary=tables.summary, run=run)
    if figures:
        from clipprobe.report.figures import write_report_figures

        with timer("figures"):
            written += write_report_figures(report, out / "figures", started=started)
    if html:
        from clipprobe.report.html import write_html_report

        with timer("html"):
            written.append(write_html_report(report, out / "report.html", image_loader=image_loader,
                                             label_for=label_for, figures_dir=out / "figures"))
    run["timings_s"] = {**run.get("timings_s", {}), **timer.as_dict()}
    run["files"] = table_checksums(out)
    _io.write_json(out / FILES["run"], run)
    written.append(out / FILES["run"])
    return written
