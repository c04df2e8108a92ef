"""Outputs of ``clipprobe eat``: tables, run record, forest plot, and an HTML section.

A run folder holds::

    DIR/eat.parquet       one row per test (EAT_COLUMNS); unavailable tests are rows with available=False
    DIR/stimuli.parquet   one row per stimulus of every computed test (STIMULI_COLUMNS)
    DIR/run.json          the shared run record (clipprobe.runinfo), command "eat"
    DIR/forest.png, DIR/forest.pdf   effect sizes with their intervals (with figures on)

:func:`write_eat_outputs` renders everything into a staging folder inside ``DIR`` and moves the files
into place only when all of them exist, so an error leaves ``DIR`` as it was. :func:`html_section`
returns the section the HTML report includes; every string from a test file is escaped there.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from clipprobe.errors import DataError
from clipprobe.report.formatting import e as _e
from clipprobe.report.formatting import num as _num

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
TABLE_FILE = "eat.parquet"
STIMULI_FILE = "stimuli.parquet"
RUN_FILE = "run.json"
FOREST_STEM = "forest"
EAT_COLUMNS = (
    "test", "order", "family", "available", "unavailable_reason", "n_x", "n_y", "n_a", "n_b", "effect_size",
    "effect_ci_low", "effect_ci_high", "ci_method", "p_value", "q_value", "n_permutations", "exact",
    "alternative", "ddof", "statistic", "x_label", "y_label", "a_label", "b_label", "n_skipped_images", "note",
)
STIMULI_COLUMNS = (
    "test", "order", "set", "set_label", "stimulus", "modality", "reference", "association", "sc_effect_size",
    "sc_p_value", "sc_n_permutations",
)
MSG_NOT_A_RUN = "{path} is not a `clipprobe eat` folder (no {file})"
MSG_FORMAT = "{path} was written by another version of `clipprobe eat` (format {found}, this one reads {want})"


# ----------------------------------------------------------------------------------------------
# tables


def results_table(tests: Sequence[Any], results: Mapping[tuple[str, str], Any],
                  skipped: Mapping[tuple[str, str], int] | None = None) -> "pd.DataFrame":
    """One row per test, in the order given.

    ``tests``: :class:`clipprobe.resources.eat.ResolvedTest` (or anything with ``spec``, ``sets`` and
    ``unavailable``); ``results``: (name, order) -> :class:`clipprobe.analysis.eat.EatResult` of the
    computed ones. ``skipped``: unreadable images per test.
    """
    import numpy as np
    import pandas as pd

    skipped = skipped or {}
    rows = []
    for t in tests:
        spec = t.spec
        r = results.get((spec.name, spec.order))
        labels = {k: s.label for k, s in spec.sets.items()}
        row = {
            "test": spec.name, "order": spec.order, "family": spec.family, "available": r is not None,
            "unavailable_reason": t.unavailable or "", "x_label": labels["X"], "y_label": labels["Y"],
            "a_label": labels["A"], "b_label": labels["B"], "note": spec.note,
            "n_skipped_images": int(skipped.get((spec.name, spec.order), 0)),
        }
        if r is None:
            row.update({k: None for k in ("n_x", "n_y", "n_a", "n_b", "n_permutations", "exact", "ci_method",
                                          "alternative", "ddof")})
            row.update({k: np.nan for k in ("effect_size", "effect_ci_low", "effect_ci_high", "p_value", "q_value",
                                            "statistic")})
        else:
            row.update({
                "n_x": r.n_x, "n_y": r.n_y, "n_a": r.n_a, "n_b": r.n_b, "effect_size": r.effect_size,
                "effect_ci_low": r.ci_low, "effect_ci_high": r.ci_high, "ci_method": r.ci_method or "",
                "p_value": r.p_value, "q_value": r.q_value, "n_permutations": r.n_permutations, "exact": r.exact,
                "alternative": r.alternative, "ddof": r.ddof, "statistic": r.statistic,
            })
        rows.append(row)
    df = pd.DataFrame.from_records(rows, columns=list(EAT_COLUMNS))
    for col in ("n_x", "n_y", "n_a", "n_b", "n_permutations", "ddof", "n_skipped_images"):
        df[col] = df[col].astype("Int64")
    df["exact"] = df["exact"].astype("boolean")
    df["available"] = df["available"].astype(bool)
    for col in ("effect_size", "effect_ci_low", "effect_ci_high", "p_value", "q_value", "statistic"):
        df[col] = df[col].astype("float64")
    for col in ("test", "order", "family", "unavailable_reason", "ci_method", "alternative", "x_label", "y_label",
                "a_label", "b_label", "note"):
        df[col] = df[col].fillna("").astype(str)
    return df


def stimuli_table(tests: Sequence[Any], results: Mapping[tuple[str, str], Any],
                  kept: Mapping[tuple[str, str], Mapping[str, Sequence[str]]]) -> "pd.DataFrame":
    """One row per stimulus of every computed test: its set and its association.

    For X and Y stimuli ``association`` is ``s(w, A, B)`` and the SC-WEAT columns compare ``w`` with A
    vs B (``reference`` "A vs B"); for A and B stimuli they compare the attribute with X vs Y ("X vs Y").
    ``kept``: (name, order) -> set -> the display labels of the stimuli that were embedded, in order.
    """
    import numpy as np
    import pandas as pd

    frames = []
    for t in tests:
        spec = t.spec
        r = results.get((spec.name, spec.order))
        if r is None:
            continue
        shown = kept[(spec.name, spec.order)]
        sets = spec.sets
        parts = [("X", "A vs B", r.sc_targets, 0, r.s_x), ("Y", "A vs B", r.sc_targets, r.n_x, r.s_y),
                 ("A", "X vs Y", r.sc_attributes, 0, None), ("B", "X vs Y", r.sc_attributes, r.n_a, None)]
        for name, ref, sc, offset, assoc in parts:
            labels = list(shown[name])
            n = len(labels)
            if sc is not None:
                association = sc.association[offset:offset + n]
                es = sc.effect_size[offset:offset + n]
                pv = sc.p_value[offset:offset + n]
                nperm = sc.n_permutations
            else:
                association = assoc if assoc is not None else np.full(n, np.nan)
                es = pv = np.full(n, np.nan)
                nperm = 0
            frames.append(pd.DataFrame({
                "test": spec.name, "order": spec.order, "set": name, "set_label": sets[name].label,
                "stimulus": labels, "modality": t.sets[name].modality, "reference": ref,
                "association": np.asarray(association, dtype=np.float64), "sc_effect_size": np.asarray(es, dtype=float),
                "sc_p_value": np.asarray(pv, dtype=float), "sc_n_permutations": nperm,
            }))
    if not frames:   # the column types of a table with rows
        numbers = {"association": "float64", "sc_effect_size": "float64", "sc_p_value": "float64",
                   "sc_n_permutations": "int64"}
        return pd.DataFrame({c: pd.Series(dtype=numbers.get(c, str)) for c in STIMULI_COLUMNS})
    df = pd.concat(frames, ignore_index=True)[list(STIMULI_COLUMNS)]
    df["sc_n_permutations"] = df["sc_n_permutations"].astype("int64")
    return df


# ----------------------------------------------------------------------------------------------
# figure


def _row_labels(table) -> list[str]:
    from clipprobe.resources.eat import ORDER_LABELS

    return [f"{t} ({ORDER_LABELS.get(o, o)})" for t, o in zip(table["test"], table["order"])]


def forest_plot(table: "pd.DataFrame", *, ax=None, title: str | None = None):
    """Effect size of each test (dot) with its interval (line); unavailable tests are named, not drawn.

    Rows top to bottom in table order, one colour per modality order (also named in each row's label);
    returns the Axes (its y tick labels are the tests).
    """
    import numpy as np

    from clipprobe.report.figures import OKABE_ITO, _errors, _new_axes, style

    n = len(table)
    with style():
        if ax is None:
            ax = _new_axes(4.6, max(1.6, 0.16 * n + 0.9))
        y = np.arange(n)[::-1]
        d = table["effect_size"].to_numpy(dtype=float)
        lo = table["effect_ci_low"].to_numpy(dtype=float)
        hi = table["effect_ci_high"].to_numpy(dtype=float)
        avail = table["available"].to_numpy(dtype=bool) & np.isfinite(d)
        has_ci = avail & np.isfinite(lo) & np.isfinite(hi)
        orders = list(dict.fromkeys(table["order"]))
        for i, order in enumerate(orders):
            sel = avail & (table["order"].to_numpy() == order)
            if not sel.any():
                continue
            color = OKABE_ITO[i % len(OKABE_ITO)]
            err = np.where(has_ci[sel], _errors(d[sel], lo[sel], hi[sel]), 0.0)
            ax.errorbar(d[sel], y[sel], xerr=err, fmt="o", color=color, ms=3, lw=0.9, capsize=1.5, label=order)
        for yi in y[~avail]:
            ax.text(0.0, yi, "unavailable", ha="center", va="center", fontsize=6, color="0.45", style="italic")
        ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels(_row_labels(table))
        ax.set_ylim(-0.8, n - 0.2)
        ax.set_xlabel("effect size d" + (" (95% interval)" if has_ci.any() else ""))
        if title:
            ax.set_title(title, loc="left", y=1.0, pad=6.0)
    return ax


# ----------------------------------------------------------------------------------------------
# writing and reading


def write_eat_outputs(out: str | os.PathLike, table: "pd.DataFrame", stimuli: "pd.DataFrame", record: Mapping,
                      *, figures: bool = True, title: str | None = None) -> list[Path]:
    """Write the run folder (see the module docstring); all files appear together or none does."""
    from clipprobe._io import ensure_dir, write_json, write_parquet
    from clipprobe.report.figures import save_figure

    out = ensure_dir(out)
    staging = Path(tempfile.mkdtemp(prefix=".eat-staging-", dir=out))
    try:
        names = [TABLE_FILE, STIMULI_FILE]
        write_parquet(staging / TABLE_FILE, table)
        write_parquet(staging / STIMULI_FILE, stimuli)
        if figures and len(table):
            ax = forest_plot(table, title=title)
            for p in save_figure(ax.figure, staging / FOREST_STEM, formats=("png", "pdf")):
                names.append(p.name)
        write_json(staging / RUN_FILE, dict(record))
        names.append(RUN_FILE)  # last: its presence marks a finished folder
        written = []
        for name in names:
            os.replace(staging / name, out / name)
            written.append(out / name)
        if not figures:
            for suffix in (".png", ".pdf"):
                stale = out / f"{FOREST_STEM}{suffix}"
                if stale.exists():
                    stale.unlink()
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_eat(path: str | os.PathLike) -> tuple["pd.DataFrame", "pd.DataFrame", dict]:
    """(eat table, stimuli table, run record) of a finished run folder."""
    import json

    import pandas as pd

    path = Path(path)
    if not (path / RUN_FILE).is_file() or not (path / TABLE_FILE).is_file():
        raise DataError(MSG_NOT_A_RUN.format(path=path, file=RUN_FILE))
    record = json.loads((path / RUN_FILE).read_text(encoding="utf-8"))
    if record.get("command") != "eat":
        raise DataError(MSG_NOT_A_RUN.format(path=path, file=f"{RUN_FILE} of command 'eat'"))
    if record.get("format_version") != FORMAT_VERSION:
        raise DataError(MSG_FORMAT.format(path=path, found=record.get("format_version"), want=FORMAT_VERSION))
    return pd.read_parquet(path / TABLE_FILE), pd.read_parquet(path / STIMULI_FILE), record


# ----------------------------------------------------------------------------------------------
# HTML


def _p(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def html_section(table: "pd.DataFrame", record: Mapping | None = None, *, figure: bool = True,
                 alpha: float = 0.05) -> str:
    """An HTML ``<section>`` with the tests' table (and the forest plot as an inline PNG)."""
    from clipprobe.resources.eat import ORDER_LABELS

    record = record or {}
    config = record.get("config") or {}
    suite = record.get("suite") or {}
    parts = ['<section id="eat">', "<h2>Association tests</h2>"]
    n_avail = int(table["available"].sum()) if len(table) else 0
    intro = (f"{n_avail} of {len(table)} tests computed"
             + (f" (suite {_e(suite.get('name'))})" if suite.get("name") else "")
             + f"; effect size d with ddof {_e(config.get('ddof', 1))}, permutation p-values "
             f"({_e(config.get('alternative', 'greater'))}), q: Benjamini-Hochberg over the tests.")
    parts.append(f"<p>{intro}</p>")
    if figure and len(table):
        from clipprobe.report.figures import PNG_DPI

        ax = forest_plot(table)
        buf = io.BytesIO()
        ax.figure.savefig(buf, format="png", dpi=PNG_DPI)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        parts.append(f'<figure><img alt="forest plot of effect sizes" src="data:image/png;base64,{data}">'
                     "<figcaption>Effect sizes with their 95% intervals.</figcaption></figure>")
    head = ("test", "order", "X", "Y", "A", "B", "n", "d", "interval", "p", "q")
    parts.append('<table class="eat"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    for r in table.itertuples(index=False):
        if not r.available:
            cells = [_e(r.test), _e(ORDER_LABELS.get(r.order, r.order)), _e(r.x_label), _e(r.y_label), _e(r.a_label),
                     _e(r.b_label), f'<td colspan="5"><em>unavailable: {_e(r.unavailable_reason)}</em></td>']
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells[:6]) + cells[6] + "</tr>")
            continue
        flagged = isinstance(r.q_value, float) and math.isfinite(r.q_value) and r.q_value <= alpha
        ci = f"[{_num(r.effect_ci_low)}, {_num(r.effect_ci_high)}]" if math.isfinite(r.effect_ci_low) else "—"
        cells = [_e(r.test), _e(ORDER_LABELS.get(r.order, r.order)), _e(r.x_label), _e(r.y_label), _e(r.a_label),
                 _e(r.b_label), f"{r.n_x}/{r.n_y}/{r.n_a}/{r.n_b}", _num(r.effect_size), ci,
                 _p(r.p_value) + ("" if not r.exact else " (exact)"), _p(r.q_value) + (" *" if flagged else "")]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append(f"<p>* q &le; {_num(alpha)}. n: |X|/|Y|/|A|/|B|.</p></section>")
    return "\n".join(parts)


__all__ = ["EAT_COLUMNS", "FORMAT_VERSION", "STIMULI_COLUMNS", "forest_plot", "html_section", "load_eat",
           "results_table", "stimuli_table", "write_eat_outputs"]
