"""Outputs of ``clipprobe eat``: tables, run record, forest plot, and an HTML section.

A run folder holds::

    DIR/eat.parquet       one row per test (EAT_COLUMNS); tests not computed are rows with available=False
                          and status "unavailable" (stimuli never published) or "skipped" (not given)
    DIR/stimuli.parquet   one row per text or image of every computed test (STIMULI_COLUMNS); ``unit`` is the
                          sampled stimulus (word, image) it belongs to
    DIR/run.json          the shared run record (clipprobe.runinfo), command "eat"
    DIR/forest.png, .pdf, .svg   effect sizes with their intervals (with figures on)

:func:`write_eat_outputs` renders everything into a staging folder inside ``DIR`` and moves the files
into place only when all of them exist, so an error leaves ``DIR`` as it was. :func:`html_section`
returns the section the HTML report includes; every string from a test file is escaped there.
"""

from __future__ import annotations

import base64
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

FORMAT_VERSION = 2  # 2: n_x.. count stimuli (words, images), p_value permutes them; sidedness columns
TABLE_FILE = "eat.parquet"
STIMULI_FILE = "stimuli.parquet"
RUN_FILE = "run.json"
FOREST_STEM = "forest"
EAT_COLUMNS = (
    "test", "order", "order_label", "family", "status", "available", "unavailable_reason", "n_x", "n_y", "n_a",
    "n_b", "n_x_texts", "n_y_texts", "n_a_texts", "n_b_texts", "effect_size", "effect_ci_low", "effect_ci_high",
    "ci_method", "ci_level", "ci_sides", "ci_resample", "ci_note", "p_value", "p_sides", "p_value_sentences",
    "q_value", "n_permutations", "exact", "alternative", "ddof", "statistic", "x_label", "y_label", "a_label",
    "b_label", "n_skipped_images", "note",
)
STIMULI_COLUMNS = (
    "test", "order", "order_label", "set", "set_label", "stimulus", "unit", "modality", "reference", "association",
    "sc_effect_size", "sc_p_value", "sc_p_value_sentences", "sc_q_value", "sc_n_permutations",
)
STATUS = ("computed", "unavailable", "skipped")
# What each p-value, q-value and interval is over (recorded in run.json; the README says the same).
FAMILIES = {
    "p_value": "permutation test over the stimuli (words, images) of X u Y: all texts of a word move together",
    "p_value_sentences": "the same test over texts, as if each were an independent draw (the seed's test)",
    "q_value": "Benjamini-Hochberg over the computed tests of this run (changes with --test/--order)",
    "effect_ci": "two-sided bootstrap interval of d resampling the stimuli of X, Y, A and B (or of X and Y with "
                 "fixed attributes); empty where a resampled set has too few stimuli (ci_note)",
    "sc_p_value": "per text or image: permutation test over the stimuli of the reference sets",
    "sc_q_value": "Benjamini-Hochberg over the SC-WEAT rows of one test (its targets and attributes), so "
                  "selecting tests or orders does not change it",
}
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

    from clipprobe.resources.eat import ORDER_LABELS

    skipped = skipped or {}
    counts = ("n_x", "n_y", "n_a", "n_b", "n_x_texts", "n_y_texts", "n_a_texts", "n_b_texts")
    floats = ("effect_size", "effect_ci_low", "effect_ci_high", "ci_level", "p_value", "p_value_sentences",
              "q_value", "statistic")
    rows = []
    for t in tests:
        spec = t.spec
        r = results.get((spec.name, spec.order))
        labels = {k: s.label for k, s in spec.sets.items()}
        status = "computed" if r is not None else ("skipped" if getattr(t, "skipped", None) else "unavailable")
        row = {
            "test": spec.name, "order": spec.order, "order_label": ORDER_LABELS.get(spec.order, spec.order),
            "family": spec.family, "status": status, "available": r is not None,
            "unavailable_reason": t.unavailable or getattr(t, "skipped", None) or "", "x_label": labels["X"],
            "y_label": labels["Y"], "a_label": labels["A"], "b_label": labels["B"], "note": spec.note,
            "n_skipped_images": int(skipped.get((spec.name, spec.order), 0)),
        }
        if r is None:
            row.update({k: None for k in counts + ("n_permutations", "exact", "ddof")})
            row.update({k: np.nan for k in floats})
        else:
            row.update({k: getattr(r, k) for k in counts})
            row.update({
                "effect_size": r.effect_size, "effect_ci_low": r.ci_low, "effect_ci_high": r.ci_high,
                "ci_method": r.ci_method or "", "ci_level": r.ci_confidence if r.ci_method else np.nan,
                "ci_sides": "two-sided" if r.ci_method else "", "ci_resample": r.ci_resample or "",
                "ci_note": r.ci_note, "p_value": r.p_value, "p_sides": p_sides(r.alternative),
                "p_value_sentences": r.p_value_sentences, "q_value": r.q_value, "n_permutations": r.n_permutations,
                "exact": r.exact, "alternative": r.alternative, "ddof": r.ddof, "statistic": r.statistic,
            })
        rows.append(row)
    df = pd.DataFrame.from_records(rows, columns=list(EAT_COLUMNS))
    for col in counts + ("n_permutations", "ddof", "n_skipped_images"):
        df[col] = df[col].astype("Int64")
    df["exact"] = df["exact"].astype("boolean")
    df["available"] = df["available"].astype(bool)
    for col in floats:
        df[col] = df[col].astype("float64")
    for col in ("test", "order", "order_label", "family", "status", "unavailable_reason", "ci_method", "ci_sides",
                "ci_resample", "ci_note", "p_sides", "alternative", "x_label", "y_label", "a_label", "b_label",
                "note"):
        df[col] = df[col].fillna("").astype(str)
    return df


def p_sides(alternative: str) -> str:
    """How many sides a p-value of this alternative has: ``one-sided`` (greater, less) or ``two-sided``."""
    return "two-sided" if alternative == "two-sided" else "one-sided"


def stimuli_table(tests: Sequence[Any], results: Mapping[tuple[str, str], Any],
                  kept: Mapping[tuple[str, str], Mapping[str, Sequence[str]]],
                  units: Mapping[tuple[str, str], Mapping[str, Sequence[str]]] | None = None) -> "pd.DataFrame":
    """One row per text or image of every computed test: its set, its stimulus and its association.

    For X and Y rows ``association`` is ``s(w, A, B)`` and the SC-WEAT columns compare ``w`` with A
    vs B (``reference`` "A vs B", the p-value permuting the stimuli of A u B); for A and B rows they compare
    the attribute with X vs Y ("X vs Y"). ``sc_q_value``: BH over the rows of one test (see FAMILIES).
    ``kept``: (name, order) -> set -> the display labels of the rows that were embedded, in order;
    ``units``: the same shape, the stimulus (word, image) of each row (default: the row itself).
    """
    import numpy as np
    import pandas as pd

    from clipprobe.resources.eat import ORDER_LABELS

    units = units or {}
    frames = []
    for t in tests:
        spec = t.spec
        r = results.get((spec.name, spec.order))
        if r is None:
            continue
        shown = kept[(spec.name, spec.order)]
        unit_labels = units.get((spec.name, spec.order), shown)
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
                pv_rows = sc.p_value_sentences[offset:offset + n]
                qv = sc.q_value[offset:offset + n]
                nperm = sc.n_permutations
            else:
                association = assoc if assoc is not None else np.full(n, np.nan)
                es = pv = pv_rows = qv = np.full(n, np.nan)
                nperm = 0
            frames.append(pd.DataFrame({
                "test": spec.name, "order": spec.order, "order_label": ORDER_LABELS.get(spec.order, spec.order),
                "set": name, "set_label": sets[name].label, "stimulus": labels,
                "unit": [str(u) for u in unit_labels[name]], "modality": t.sets[name].modality, "reference": ref,
                "association": np.asarray(association, dtype=np.float64), "sc_effect_size": np.asarray(es, dtype=float),
                "sc_p_value": np.asarray(pv, dtype=float), "sc_p_value_sentences": np.asarray(pv_rows, dtype=float),
                "sc_q_value": np.asarray(qv, dtype=float), "sc_n_permutations": nperm,
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


def order_label(order: str) -> str:
    """The one way an order is shown to a reader: its label and its code, "image as target (image-text)"."""
    from clipprobe.resources.eat import ORDER_LABELS

    label = ORDER_LABELS.get(order, order)
    return label if label == order else f"{label} ({order})"


def _row_labels(table) -> list[str]:
    from clipprobe.resources.eat import ORDER_LABELS

    return [f"{t} ({ORDER_LABELS.get(o, o)})" for t, o in zip(table["test"], table["order"])]


WITHHELD_LABEL = "interval not published (ci_note)"


def forest_plot(table: "pd.DataFrame", *, ax=None, title: str | None = None):
    """Effect size of each test (dot) with its interval (line); unavailable tests are named, not drawn.

    Rows top to bottom in table order, one colour per modality order (also named in each row's label and
    in the legend); one column wide, both columns when a row's label is long. Returns the Axes (its y tick
    labels are the tests).
    """
    import numpy as np

    from clipprobe.report import figures as F
    from clipprobe.report.figures import OKABE_ITO, _errors, _new_axes, style

    n = len(table)
    labels = [F.short(label, 48) for label in _row_labels(table)]
    with style():
        if ax is None:
            wide = max((len(label) for label in labels), default=0) > 30
            ax = _new_axes(F.PAGE_WIDTH if wide else F.COLUMN_WIDTH, max(1.8, 0.16 * n + 1.1))
        y = np.arange(n)[::-1]
        d = table["effect_size"].to_numpy(dtype=float)
        lo = table["effect_ci_low"].to_numpy(dtype=float)
        hi = table["effect_ci_high"].to_numpy(dtype=float)
        avail = table["available"].to_numpy(dtype=bool) & np.isfinite(d)
        has_ci = avail & np.isfinite(lo) & np.isfinite(hi)
        notes = table["ci_note"].fillna("").astype(str).to_numpy() if "ci_note" in table else np.full(n, "")
        withheld = avail & ~has_ci & (notes != "")      # an interval computed but not published: open dot
        orders = list(dict.fromkeys(table["order"]))
        for i, order in enumerate(orders):
            sel = avail & (table["order"].to_numpy() == order)
            if not sel.any():
                continue
            color = OKABE_ITO[i % len(OKABE_ITO)]
            err = np.where(has_ci[sel], _errors(d[sel], lo[sel], hi[sel]), 0.0)
            ax.errorbar(d[sel], y[sel], xerr=err, fmt="o", color=color, ms=3, lw=0.9, capsize=1.5,
                        label=order_label(order))
            open_dots = sel & withheld
            if open_dots.any():
                ax.plot(d[open_dots], y[open_dots], "o", ms=3, mfc="white", mec=color, mew=0.9, zorder=3)
        if withheld.any():
            ax.plot([], [], "o", ms=3, mfc="white", mec="0.3", mew=0.9, label=WITHHELD_LABEL)
        status = table["status"].to_numpy() if "status" in table else np.where(avail, "computed", "unavailable")
        for yi, st in zip(y[~avail], status[~avail]):
            ax.text(0.0, yi, st, ha="center", va="center", fontsize=6, color="0.45", style="italic")
        ax.axvline(0.0, color="0.5", lw=0.6, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels(labels)
        ax.set_ylim(-0.8, n - 0.2)
        ax.set_xlabel("effect size d" + (f" ({_ci_words(table)})" if has_ci.any() else ""))
        if title:
            ax.set_title(F.literal(title), loc="left", y=1.0, pad=6.0)
        handles, names = ax.get_legend_handles_labels()
        last = [i for i, name in enumerate(names) if name == WITHHELD_LABEL]     # the orders first
        order = [i for i in range(len(names)) if i not in last] + last
        handles, names = [handles[i] for i in order], [names[i] for i in order]
        if len(handles) > 1 or withheld.any():
            ax.figure.legend(handles, names, loc="outside lower center", ncol=F._legend_columns(ax.figure, names),
                             handletextpad=0.2, columnspacing=0.8)
    return ax


def _ci_words(table) -> str:
    """How the table's intervals are described: "two-sided 95% interval"."""
    import numpy as np

    levels = table["ci_level"].dropna().unique() if "ci_level" in table else np.array([0.95])
    level = f"{100 * float(levels[0]):g}% " if len(levels) == 1 else ""
    return f"two-sided {level}interval"


def p_words(table) -> str:
    """How the table's p-values are described: "one-sided p (X more associated with A than Y)"."""
    sides = sorted(set(table.loc[table["available"], "p_sides"])) if "p_sides" in table else []
    alts = sorted(set(table.loc[table["available"], "alternative"])) if len(table) else []
    if sides == ["one-sided"] and alts == ["greater"]:
        return "one-sided p (X more associated with A than Y is)"
    if sides == ["one-sided"] and alts == ["less"]:
        return "one-sided p (X less associated with A than Y is)"
    if sides == ["two-sided"]:
        return "two-sided p"
    return "p"


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
            for p in save_figure(ax.figure, staging / FOREST_STEM):
                names.append(p.name)
        write_json(staging / RUN_FILE, dict(record))
        names.append(RUN_FILE)  # last: its presence marks a finished folder
        written = []
        for name in names:
            os.replace(staging / name, out / name)
            written.append(out / name)
        if not figures:
            for suffix in (".png", ".pdf", ".svg"):
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
    n_skipped = int((table["status"] == "skipped").sum()) if "status" in table and len(table) else 0
    sides = p_words(table)
    intro = (f"{n_avail} of {len(table)} tests computed"
             + (f", {n_skipped} skipped (stimuli not given)" if n_skipped else "")
             + (f" (suite {_e(suite.get('name'))})" if suite.get("name") else "")
             + f"; effect size d over the texts/images with ddof {_e(config.get('ddof', 1))}; {_e(sides)} from "
             "permutations of the stimuli (words, images: a word's sentences move together); "
             f"{_e(_ci_words(table))} of d from a bootstrap of the stimuli; q: Benjamini-Hochberg over the "
             "tests. n: stimuli in X/Y/A/B.")
    parts.append(f"<p>{intro}</p>")
    if figure and len(table):
        from clipprobe.report.figures import png_bytes

        ax = forest_plot(table)
        data = base64.b64encode(png_bytes(ax.figure)).decode("ascii")
        parts.append(f'<figure><img alt="forest plot of effect sizes" src="data:image/png;base64,{data}">'
                     f"<figcaption>Effect sizes with their {_e(_ci_words(table))}s.</figcaption></figure>")
    p_head = {"one-sided": "p (one-sided)", "two-sided": "p (two-sided)"}
    p_kinds = sorted(set(table.loc[table["available"], "p_sides"])) if "p_sides" in table and len(table) else []
    head = ("test", "order", "X", "Y", "A", "B", "n", "d", "interval (two-sided)",
            p_head.get(p_kinds[0], "p") if len(p_kinds) == 1 else "p", "q")
    parts.append('<table class="eat"><thead><tr>' + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead><tbody>")
    for r in table.itertuples(index=False):
        if not r.available:
            status = getattr(r, "status", "unavailable") or "unavailable"
            cells = [_e(r.test), _e(ORDER_LABELS.get(r.order, r.order)), _e(r.x_label), _e(r.y_label), _e(r.a_label),
                     _e(r.b_label), f'<td colspan="5"><em>{_e(status)}: {_e(r.unavailable_reason)}</em></td>']
            parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells[:6]) + cells[6] + "</tr>")
            continue
        flagged = isinstance(r.q_value, float) and math.isfinite(r.q_value) and r.q_value <= alpha
        note = getattr(r, "ci_note", "") or ""
        ci = (f"[{_num(r.effect_ci_low)}, {_num(r.effect_ci_high)}]" if math.isfinite(r.effect_ci_low)
              else f'<span title="{_e(note)}">—</span>' if note else "—")
        p_text = _p(r.p_value) + ("" if not r.exact else " (exact)")
        if len(p_kinds) > 1:
            p_text += f" ({_e(getattr(r, 'p_sides', ''))})"
        cells = [_e(r.test), _e(ORDER_LABELS.get(r.order, r.order)), _e(r.x_label), _e(r.y_label), _e(r.a_label),
                 _e(r.b_label), f"{r.n_x}/{r.n_y}/{r.n_a}/{r.n_b}", _num(r.effect_size), ci,
                 p_text, _p(r.q_value) + (" *" if flagged else "")]
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table>")
    parts.append(f"<p>* q &le; {_num(alpha)}. n: stimuli (words, images) in X/Y/A/B. An interval shown as — was "
                 "not published (too few stimuli for measured coverage; hover for the reason).</p></section>")
    return "\n".join(parts)


__all__ = ["EAT_COLUMNS", "FAMILIES", "FORMAT_VERSION", "STATUS", "STIMULI_COLUMNS", "forest_plot", "html_section",
           "load_eat", "order_label", "p_sides", "p_words", "results_table", "stimuli_table", "write_eat_outputs"]
