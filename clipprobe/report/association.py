"""The files of ``clipprobe association``: ``rb.parquet``, ``ab.parquet``, ``objects_filter.parquet`` (each
object image's zero-shot P(person) and whether the person filter removed it), a figure, ``run.json``, and an
HTML section (the report page shows it when the folder is the report's ``association/``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from clipprobe.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FILES = {"rb": "rb.parquet", "ab": "ab.parquet", "objects_filter": "objects_filter.parquet", "run": "run.json"}
MSG_NOT_A_RUN = "{path} is not a folder written by `clipprobe association` (no run.json)"


def association_plot(ab: "pd.DataFrame", *, ax=None):
    """For each occupation pair: how often the first occupation is preferred, per group (colours and markers
    in the group order of the table), with intervals; returns the Axes."""
    import numpy as np

    from clipprobe.report import figures as F

    share_cols = [c for c in ab.columns if c.startswith("share_") and not c.endswith(("_low", "_high"))]
    m = max(len(share_cols), 1)
    offsets = np.linspace(-0.3, 0.3, m) * (m > 1)
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 1.2 + (0.18 + 0.07 * m) * max(len(ab), 1))
        y = np.arange(len(ab))
        for j, col in enumerate(share_cols):
            group = col[len("share_"):]
            color, marker = F.series_style(j)
            x = ab[col].to_numpy(float)
            ax.errorbar(x, y + offsets[j], xerr=F._errors(x, ab[f"{col}_low"], ab[f"{col}_high"]), fmt=marker,
                        ms=F.scaled(3.5), capsize=0, lw=F.scaled(0.9), color=color, label=F.short(group, 24))
        ax.axvline(0.5, color="0.6", lw=F.scaled(0.6), ls="--")
        ax.set_yticks(y, [f"{F.short(a, 18)} / {F.short(b, 18)}" for a, b in zip(ab["first"], ab["second"])])
        ax.set_ylim(len(ab) - 0.5, -0.5)
        ax.set_xlim(0, 1)
        ax.set_xlabel("share preferring the first occupation")
        ax.set_title("Association bias (AB) by group", **F.TITLE_AT_TOP)
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.figure.legend(handles, labels, loc="outside lower center", ncol=F._legend_columns(ax.figure, labels),
                             handletextpad=0.2, columnspacing=0.8)
    return ax


def write_association(out, rb: "pd.DataFrame | None", ab: "pd.DataFrame | None", record: dict, *,
                      objects_filter: "pd.DataFrame | None" = None) -> list[Path]:
    """Write the tables, the figure (with AB) and, last, run.json."""
    from clipprobe import _io

    out = Path(out)
    written = []
    if rb is not None:
        _io.write_parquet(out / FILES["rb"], rb)
        written.append(out / FILES["rb"])
    if objects_filter is not None:
        _io.write_parquet(out / FILES["objects_filter"], objects_filter)
        written.append(out / FILES["objects_filter"])
    if ab is not None:
        from clipprobe.report.figures import save_figure

        _io.write_parquet(out / FILES["ab"], ab)
        written.append(out / FILES["ab"])
        written += save_figure(association_plot(ab).figure, out / "association")
    _io.write_json(out / FILES["run"], record)
    written.append(out / FILES["run"])
    return written


def load_association(path) -> tuple["pd.DataFrame | None", "pd.DataFrame | None", dict]:
    import pandas as pd

    path = Path(path)
    if not (path / FILES["run"]).is_file():
        raise DataError(MSG_NOT_A_RUN.format(path=path))
    record = json.loads((path / FILES["run"]).read_text(encoding="utf-8"))
    rb = pd.read_parquet(path / FILES["rb"]) if (path / FILES["rb"]).is_file() else None
    ab = pd.read_parquet(path / FILES["ab"]) if (path / FILES["ab"]).is_file() else None
    return rb, ab, record


def person_filter_text(record: dict | None) -> str:
    """One sentence on the person filter of the object images (from run.json's ``objects.person_filter``)."""
    if not record or not record.get("on"):
        return ("No person filter: the object images were taken to be free of people as given (the run does not "
                "check it).")
    prompts = record.get("prompts") or ["", ""]
    return (f"Person filter: {record.get('n_removed')} of {record.get('n_before')} image(s) removed, those the "
            f"model itself scores P(\"{prompts[0]}\" rather than \"{prompts[1]}\") > {record.get('threshold')} "
            f"(zero-shot, logit scale {float(record.get('logit_scale', 0)):.1f}); a model's own judgement, not a "
            "person detector.")


def html_section(rb, ab, record: dict) -> str:
    """An HTML ``<section>`` with the model's RB and AB tables (every string escaped)."""
    from clipprobe.report.formatting import e, num

    parts = ['<section id="association"><h2>Model representation and association bias</h2>']
    if rb is not None and len(rb):
        r = rb.iloc[0]
        parts.append(f"<p>On {int(r['n'])} images without people ({e(str(r['objects']))}), the model prefers "
                     f"&ldquo;{e(str(r['first_label']))}&rdquo; over &ldquo;{e(str(r['second_label']))}&rdquo; "
                     f"for {float(r['share_first']):.1%} of them: RB = {num(r['rb'], 3)} "
                     f"[{num(r['rb_ci_low'], 3)}, {num(r['rb_ci_high'], 3)}] (0 = no preference). "
                     f"{e(person_filter_text((record.get('objects') or {}).get('person_filter')))}</p>")
    if ab is not None and len(ab):
        shares = [c for c in ab.columns if c.startswith("share_") and not c.endswith(("_low", "_high"))]
        head = "".join(f"<th>{e(c[len('share_'):])}</th>" for c in shares)
        rows = []
        for _, r in ab.iterrows():
            cells = "".join(f"<td class=\"num\">{num(r[c], 2)} [{num(r[c + '_low'], 2)}, {num(r[c + '_high'], 2)}]</td>"
                            for c in shares)
            rows.append(f"<tr><td>{e(str(r['first']))} / {e(str(r['second']))}</td>{cells}"
                        f"<td class=\"num\">{num(r['diff'], 2)} [{num(r['diff_low'], 2)}, {num(r['diff_high'], 2)}]"
                        "</td></tr>")
        parts.append("<p>How often the model prefers the first occupation of each pair, per group of faces "
                     "(95% intervals), and the difference:</p>"
                     f"<table class=\"plain\"><thead><tr><th>Pair</th>{head}<th>Difference</th></tr></thead>"
                     f"<tbody>{''.join(rows)}</tbody></table>")
    prompts = record.get("prompts") or {}
    if prompts:
        parts.append("<details><summary>Prompts</summary><pre>"
                     + e(json.dumps(prompts, indent=1, ensure_ascii=False)) + "</pre></details>")
    parts.append("</section>")
    return "".join(parts)
