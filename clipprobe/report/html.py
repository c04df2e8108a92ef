"""The report as one self-contained HTML file.

The page opens from disk with no server and no network: CSS and JavaScript (the files in
``templates/``) are inline, figures are embedded as base64 PNG and contact sheets as base64 JPEG.

Every string that comes from the user or the data (words, categories, groups,
file names, model and dataset specs) is HTML-escaped where it is written into
markup; the word table's data travels as JSON inside
``<script type="application/json">`` with ``<``, ``>`` and ``&`` written as
``\\u003c``, ``\\u003e`` and ``\\u0026``, and the script builds the table with
``textContent`` only (never ``innerHTML``), so no data value can become markup
or code.

Flags: every count, filter and filled marker uses the flag against the control
queries (``flagged_vs_controls``) where that test ran; the hypergeometric flag
(``flagged``: the top-k is not a random sample of faces) is shown second and
labelled so. Without control queries the page says that no control test was
run and uses the hypergeometric flag (:func:`clipprobe.analysis.probe.headline_flag`).

Size and speed: the figures are the "core" set of :mod:`clipprobe.report.figures`
(per-category plots only with ``category_figures=True``), taken from the PNG
files already in the report's ``figures/`` folder when they are at least as new
as the report's tables, and drawn only when missing. Contact sheets are shown
for the flagged words with the lowest q-value (then the highest skew), at most
``max_sheets`` of them and at most ``sheets_max_bytes`` of JPEG; the page says
how many were left out and how to draw the others.
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
import dataclasses
import io
import json
import logging
import math
from pathlib import Path
from typing import Callable

from clipprobe._io import write_text
from clipprobe.errors import UsageError
from clipprobe.report.formatting import e
from clipprobe.report.formatting import num as _num
from clipprobe.report.store import categories_of, category_text, top_groups_of

log = logging.getLogger(__name__)

NO_IMAGES_NOTE = "Contact sheets omitted: the dataset images are not available on this machine."
MSG_SHEETS_LEFT_OUT = (
    "Faces are shown for {shown} of {total} flagged words (lowest q first, then highest skew); {left} were left "
    "out to keep this page small. Draw any word's faces with: clipprobe figures REPORT_DIR --out DIR --word WORD"
)

MSG_BAD_LIMIT = "{name} must be 0 or a positive integer, got {value!r}"

HTML_DPI = 150  # for a figure drawn here because figures/ has no PNG of it
MAX_SHEETS = 60
SHEET_FACES = 20
SHEETS_MAX_BYTES = 2_500_000  # JPEG bytes of all contact sheets (base64 adds a third)
SHEET_THUMB = 72  # px per face
SHEET_COLUMNS = 10
SHEET_QUALITY = 72  # JPEG quality: faces stay recognisable, a sheet of 20 is ~20-60 kB
PAYLOAD_DIGITS = 4  # decimals of the numbers in the word table's JSON


@functools.lru_cache(maxsize=None)
def _template(name: str) -> str:
    """A file of ``clipprobe/report/templates/`` (the page's CSS and JavaScript)."""
    return (importlib.resources.files("clipprobe.report") / "templates" / name).read_text(encoding="utf-8")




def _ci(low, high, digits: int = 2) -> str:
    """``[lo, hi]``; an infinite end is written as the sign and ∞ (a skew interval of a count of 0)."""
    def end(value) -> str:
        try:
            v = float(value)
        except (TypeError, ValueError):
            return "—"
        if math.isinf(v):
            return "−∞" if v < 0 else "∞"
        return _num(v, digits)

    lo, hi = end(low), end(high)
    return "" if lo == "—" or hi == "—" else f"[{lo}, {hi}]"


def _clean(value):
    """A JSON-safe copy: NaN/inf become null, numpy scalars and arrays become Python values."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str):
        return _clean(value.tolist())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def json_for_script(obj) -> str:
    """JSON text that is safe inside a ``<script type="application/json">`` element."""
    text = json.dumps(_clean(obj), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, code in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"),
                       ("\u2029", "\\u2029")):
        text = text.replace(char, code)
    return text


def _skew_style(value) -> str:
    """Inline background tint for a skew value (numbers only, never data strings)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(v) or v == 0:
        return ""
    alpha = min(abs(v) / 1.5, 1.0) * 0.45
    rgb = "202,0,32" if v > 0 else "5,113,176"
    return f' style="background:rgba({rgb},{alpha:.3f})"'


def _figure_png(fig, dpi: int = HTML_DPI) -> bytes:
    from clipprobe.report.figures import png_bytes

    return png_bytes(fig, dpi=dpi)


def _image_jpeg(img, quality: int = SHEET_QUALITY) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _figure_block(caption: str, png: bytes, wide: bool = False) -> str:
    cls = "fig wide" if wide else "fig"
    return (f'<figure class="{cls}"><img alt="{e(caption)}" src="data:image/png;base64,{_b64(png)}">'
            f"<figcaption>{e(caption)}</figcaption></figure>")


def _tables_mtime(report) -> float:
    """When the report's tables were last written (infinity when one cannot be read: reuse nothing)."""
    from clipprobe.report.store import FILES

    try:
        return max((Path(report.path) / FILES[key]).stat().st_mtime for key in ("groups", "words", "summary"))
    except OSError:
        return math.inf


class _FigureSource:
    """PNG bytes of a figure: the file in ``figures_dir`` when it is current, else drawn now."""

    def __init__(self, figures_dir: Path | None, newer_than: float) -> None:
        self.figures_dir = figures_dir
        self.newer_than = newer_than
        self.reused = 0
        self.drawn = 0

    def png(self, spec) -> bytes:
        if self.figures_dir is not None:
            path = self.figures_dir / f"{spec.stem}.png"
            try:
                if path.stat().st_mtime >= self.newer_than:
                    data = path.read_bytes()
                    self.reused += 1
                    return data
            except OSError:
                pass  # no usable file: draw it below
        ax = spec.draw()
        self.drawn += 1
        return _figure_png(ax.figure)


def _table(headers: list[tuple[str, str]], rows: list[list[str]], *, cls: str = "sortable", tid: str = "") -> str:
    """A table; ``headers`` are (label, kind) with kind "num" or "text"; cells are ready-made HTML."""
    head = "".join(f'<th data-kind="{kind}" tabindex="0">{e(label)}</th>' for label, kind in headers)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    id_attr = f' id="{tid}"' if tid else ""
    return f'<div class="tablewrap"><table class="{cls}"{id_attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _td(text: str, *, num=None, extra: str = "") -> str:
    """A cell with escaped ``text``; ``num`` becomes the sort key (7 significant digits)."""
    sort = f' data-v="{float(num):.7g}"' if num is not None and _num(num) != "—" else ""
    cls = ' class="num"' if num is not None else ""
    title = f' title="{e(text)}"' if len(str(text)) > 40 else ""
    return f"<td{cls}{sort}{title}{extra}>{e(text)}</td>"


def _summary_section(report) -> str:
    rows = []
    s = report.summary.sort_values(["category", "attribute"])
    for r in s.itertuples(index=False):
        over = [t for t in top_groups_of(r.top_groups) if t["mean_skew"] is not None and t["mean_skew"] > 0]
        top = "; ".join(f"{t['group']} ({t['mean_skew']:+.2f})" for t in over) or "none"
        rows.append([
            _td(r.category), _td(r.attribute), _td(str(r.n_words), num=r.n_words),
            _td(_num(r.mean_norm_entropy), num=r.mean_norm_entropy),
            _td(_num(r.mean_max_skew_excess), num=r.mean_max_skew_excess),
            _td(_percent(r.share_flagged_vs_controls), num=r.share_flagged_vs_controls),
            _td(_percent(r.share_flagged), num=r.share_flagged),
            _td(top),
        ])
    headers = [("Category", "text"), ("Attribute", "text"), ("Words", "num"), ("Mean norm. entropy", "num"),
               ("Mean MaxSkew excess", "num"), ("Words flagged vs controls", "num"),
               ("Not a random sample (hypergeometric)", "num"), ("Most over-represented groups (mean skew > 0)", "text")]
    from clipprobe.analysis.probe import controls_ran

    shares = ("the share of words with at least one group flagged against the control queries, and, second, with "
              "a top-k that is not a random sample of faces (hypergeometric test)"
              if controls_ran(report.groups) else
              "the share of words with a top-k that is not a random sample of faces (hypergeometric test); no "
              "control test was run, so the column against the control queries is empty")
    return ('<section id="summary"><h2>Category summary</h2>'
            '<p class="lead">Mean normalized entropy of the top-k over each attribute\'s groups '
            "(1 = as diverse as a uniform spread, 0 = a single group), mean MaxSkew above what shuffled labels "
            f"give, and {shares}.</p>"
            + _table(headers, rows, tid="summary-table") + "</section>")


def _percent(value) -> str:
    return f"{float(value):.0%}" if _num(value) != "—" else "—"


def _figures_section(report, category_figures: bool, source: _FigureSource) -> str:
    from clipprobe.report.figures import figure_specs

    specs = figure_specs(report, figure_set="all" if category_figures else "core")
    blocks = [_figure_block(s.caption, source.png(s), wide=s.wide) for s in specs if s.category is None]
    out = ['<section id="figures"><h2>Figures</h2><div class="figgrid">', *blocks, "</div>"]
    if category_figures:
        from clipprobe.analysis.probe import controls_ran

        which = ("flagged against the control queries" if controls_ran(report.groups)
                 else "flagged by the hypergeometric test (no control test was run)")
        out.append('<h3>By category</h3><p class="lead">Skew of every group for the words of each category, with '
                   f"95% intervals (Wilson, measured to cover); filled markers are pairs {which}.</p>")
        by_category: dict[str, list[str]] = {}
        for spec in specs:
            if spec.category is not None:
                by_category.setdefault(spec.category, []).append(_figure_block(spec.caption, source.png(spec)))
        for cat, inner in by_category.items():
            out.append(f'<details class="catfig"><summary>{e(cat)}</summary><div class="figgrid">'
                       + "".join(inner) + "</div></details>")
    out.append("</section>")
    return "".join(out)


def _flagged_section(report, sheets: dict[str, str], note: str | None) -> str:
    from clipprobe.analysis.probe import controls_ran, flag_mask

    g = report.groups
    ran = controls_ran(g)
    vs = flag_mask(g, "flagged_vs_controls")
    hyper = flag_mask(g, "flagged")
    shown = g.assign(by_controls=vs)[vs | hyper].sort_values(["by_controls", "skew", "word"], ascending=[False, False, True],
                                                     kind="stable")
    alpha = report.run.get("alpha", "alpha")
    rows = []
    for r in shown.itertuples(index=False):
        word_cell = _td(r.word)
        if r.word in sheets:
            word_cell = f'<td title="{e(r.word)}"><a href="#{sheets[r.word]}">{e(r.word)}</a></td>'
        count = f"{int(r.count)}/{int(r.k)}" + (" (low count)" if bool(r.low_count) else "")
        rows.append([
            word_cell, _td(category_text(r.category)), _td(r.attribute), _td(r.group),
            _td(count, num=r.count), _td(_num(r.share), num=r.share),
            _td(_ci(r.share_ci_low, r.share_ci_high)),
            _td(_num(r.base_share), num=r.base_share),
            _td(_num(r.skew), num=r.skew, extra=_skew_style(r.skew)),
            _td(_ci(r.skew_ci_low, r.skew_ci_high)),
            _td(_num(r.skew_vs_neutral), num=r.skew_vs_neutral),
            _td(f"{float(r.q_vs_controls):.2g}" if _num(r.q_vs_controls) != "—" else "—", num=r.q_vs_controls,
                extra=' style="font-weight:600"' if r.by_controls else ""),
            _td(f"{float(r.q_over):.2g}" if _num(r.q_over) != "—" else "—", num=r.q_over),
        ])
    headers = [("Word", "text"), ("Category", "text"), ("Attribute", "text"), ("Group", "text"),
               ("Count", "num"), ("Share", "num"), ("95% interval", "text"), ("Base share", "num"),
               ("Skew", "num"), ("95% interval", "text"), ("Skew vs neutral", "num"), ("q vs controls", "num"),
               ("q hypergeometric", "num")]
    n_vs, n_hyper, n_only = int(vs.sum()), int(hyper.sum()), int((hyper & ~vs).sum())
    if ran:
        intro = (f'<p class="lead"><b>{n_vs} word-group pairs flagged</b>: the group is over-represented in the '
                 "word's top-k beyond what control queries (nonsense and neutral words) retrieve (q vs controls "
                 f"&lt; {e(alpha)}, Benjamini-Hochberg; bold, listed first). Second, {n_hyper} pairs whose top-k is "
                 "not a random sample of faces (hypergeometric test, q &lt; "
                 f"{e(alpha)}), {n_only} of them only by that test: any query's neighbourhood clusters by "
                 "appearance, so this alone is not evidence of a stereotype. A count below 5 is marked: its skew "
                 "moves a lot with one face.</p>")
    else:
        intro = ('<p class="lead">No control test was run (no control queries), so no pair is flagged against '
                 f"them. {n_hyper} word-group pairs have a top-k that is not a random sample of faces "
                 f"(hypergeometric test, Benjamini-Hochberg q &lt; {e(alpha)}): any query's neighbourhood clusters "
                 "by appearance, so this alone is not evidence of a stereotype. A count below 5 is marked: its "
                 "skew moves a lot with one face.</p>")
    parts = ['<section id="flagged"><h2>Flagged word-group pairs</h2>', intro]
    parts.append(_table(headers, rows, tid="flagged-table") if rows else '<p class="empty">No flagged pairs.</p>')
    if note:
        parts.append(f'<p class="note">{e(note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def _sheets_section(blocks: list[str], left_out: str | None, controls: bool = True) -> str:
    if not blocks:
        return ""
    more = f'<p class="note">{e(left_out)}</p>' if left_out else ""
    which = ("flagged against the control queries" if controls
             else "flagged by the hypergeometric test (no control test was run)")
    return ('<section id="faces"><h2>Top faces of flagged words</h2>'
            f'<p class="lead">The top-ranked faces retrieved for each word with a group {which}, in rank order; '
            "words with the lowest q-value first.</p>" + more + "".join(blocks) + "</section>")


def sheet_order(report) -> list[str]:
    """Flagged words (by the headline flag: against the control queries where that test ran, else the
    hypergeometric test) in the order their contact sheets are shown: lowest q of that test, then highest
    skew, then word."""
    from clipprobe.analysis.probe import flag_mask, headline_flag

    g = report.groups
    flagged = g[flag_mask(g)]
    if flagged.empty:
        return []
    q = "q_vs_controls" if headline_flag(g) == "flagged_vs_controls" else "q_over"
    per_word = flagged.groupby("word").agg(q=(q, "min"), skew=("skew", "max")).reset_index()
    per_word = per_word.sort_values(["q", "skew", "word"], ascending=[True, False, True], kind="stable")
    return per_word["word"].tolist()


@dataclasses.dataclass
class _Sheets:
    blocks: list[str]
    anchors: dict[str, str]  # word -> id of its sheet
    note: str | None = None  # failed images or no images at all
    left_out: str | None = None  # how many flagged words have no sheet, and why
    n_bytes: int = 0


def _contact_sheets(report, image_loader, label_for, max_sheets: int, faces: int, max_bytes: int) -> _Sheets:
    """Contact sheet blocks for flagged words, in :func:`sheet_order`, within ``max_sheets`` and ``max_bytes``."""
    from clipprobe.report.contact import contact_sheet, dataset_loader, load_images

    order = sheet_order(report)
    if not order:
        return _Sheets([], {})
    loader = image_loader or dataset_loader(report.run)
    if loader is None:
        return _Sheets([], {}, note=NO_IMAGES_NOTE)
    from clipprobe.analysis.probe import flag_mask

    flagged = report.groups[flag_mask(report.groups)]
    first_row = report.words.drop_duplicates("word").set_index("word")
    out = _Sheets([], {})
    failed = 0
    for word in order:
        if len(out.blocks) >= max_sheets:
            break
        row = first_row.loc[word]
        files = [str(f) for f in row["top_files"]][:faces]
        images, n_failed = load_images(loader, files)
        labels = [f"#{j + 1}" + (f"\n{label_for(f)}" if label_for else "") for j, f in enumerate(files)]
        jpeg = _image_jpeg(contact_sheet(images, labels, columns=SHEET_COLUMNS, thumb=SHEET_THUMB))
        if out.blocks and out.n_bytes + len(jpeg) > max_bytes:
            break
        failed += n_failed
        out.n_bytes += len(jpeg)
        pairs = flagged[flagged["word"] == word].sort_values("skew", ascending=False)
        tags = "".join(f'<span class="tag">{e(p.attribute)}: {e(p.group)} '
                       f"<b>{_num(p.skew)}</b></span>" for p in pairs.itertuples(index=False))
        anchor = f"faces-{len(out.blocks)}"
        out.anchors[word] = anchor
        out.blocks.append(f'<div class="sheet" id="{anchor}"><h3>{e(word)} <small>{e(category_text(row["category"]))}</small></h3>'
                          f'<div class="tags">{tags}</div>'
                          f'<img alt="top faces for {e(word)}" src="data:image/jpeg;base64,{_b64(jpeg)}"></div>')
    left = len(order) - len(out.blocks)
    if left:
        out.left_out = MSG_SHEETS_LEFT_OUT.format(shown=len(out.blocks), total=len(order), left=left)
    if failed:
        out.note = f"{failed} images could not be read and are shown as grey placeholders."
        log.warning("%d images of the contact sheets could not be read", failed)
    return out


def _round(value, digits: int = PAYLOAD_DIGITS):
    """A number rounded for the page's word table (None stays None; NaN/inf are cleaned later)."""
    if value is None:
        return None
    v = float(value)
    return round(v, digits) if math.isfinite(v) else v


def _count(value):
    """An int, or None for a null count (pandas NA, NaN, None)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return int(v) if math.isfinite(v) else None


def _words_payload(report) -> dict:
    """The word table's data. Numbers are rounded to :data:`PAYLOAD_DIGITS` decimals (the table shows
    2-3; the exact values are in words.parquet); a word's prompts, the same for every attribute, are
    stored once per word."""
    w = report.words
    rows, prompts = [], {}
    for r in w.to_dict("records"):
        if r["word"] not in prompts:
            prompts[r["word"]] = list(r["prompts"]) if r["prompts"] is not None else []
        rows.append({
            "word": r["word"], "category": category_text(r["category"]), "categories": categories_of(r["category"]),
            "attribute": r["attribute"], "top_group": r["top_group"], "max_skew": _round(r["max_skew"]),
            "max_skew_excess": _round(r["max_skew_excess"]), "p_max_skew": _round(r["p_max_skew"]),
            "min_skew": _round(r["min_skew"]), "norm_entropy": _round(r["norm_entropy"]),
            "norm_entropy_mm": _round(r["norm_entropy_mm"]),
            "kl_to_base": _round(r["kl_to_base"]), "ndkl_at_k": _round(r["ndkl_at_k"]),
            "ndkl_full": _round(r["ndkl_full"]), "stability": _round(r["stability"]),
            "n_flagged": _count(r["n_flagged"]), "n_flagged_vs_controls": _count(r["n_flagged_vs_controls"]),
        })
    from clipprobe.analysis.probe import controls_ran

    # the "flagged only" filter uses the headline flag: against the control queries where that test ran
    flag = "n_flagged_vs_controls" if controls_ran(report.groups) else "n_flagged"
    return {"words": rows, "prompts": prompts, "attributes": report.attributes, "categories": report.categories,
            "flag": flag}


def _words_section(controls: bool = True) -> str:
    label = "flagged vs controls only" if controls else "flagged only (hypergeometric: no control test)"
    return """<section id="words"><h2>All words</h2>
<p class="lead">One row per word and attribute. Click a column header to sort; hover a word for its prompts.</p>
<div class="controls">
 <input id="words-search" type="search" placeholder="Filter words, categories, groups" aria-label="Filter">
 <select id="words-attribute" aria-label="Attribute"><option value="">All attributes</option></select>
 <select id="words-category" aria-label="Category"><option value="">All categories</option></select>
 <label><input id="words-flagged" type="checkbox"> """ + label + """</label>
 <span id="words-count" class="count"></span>
</div>
<noscript><p class="note">The word table needs JavaScript.</p></noscript>
<div class="tablewrap"><table id="words-table"><thead><tr>
 <th data-key="word" tabindex="0">Word</th><th data-key="category" tabindex="0">Category</th>
 <th data-key="attribute" tabindex="0">Attribute</th><th data-key="top_group" tabindex="0">Top group</th>
 <th data-key="max_skew" tabindex="0">Max skew</th><th data-key="max_skew_excess" tabindex="0">Excess over null</th>
 <th data-key="p_max_skew" tabindex="0">p (perm.)</th><th data-key="min_skew" tabindex="0">Min skew</th>
 <th data-key="norm_entropy" tabindex="0">Norm. entropy</th><th data-key="norm_entropy_mm" tabindex="0">Corrected</th>
 <th data-key="kl_to_base" tabindex="0">KL</th><th data-key="ndkl_at_k" tabindex="0">NDKL@k</th>
 <th data-key="ndkl_full" tabindex="0">NDKL (all)</th><th data-key="stability" tabindex="0">Stability</th>
 <th data-key="n_flagged_vs_controls" tabindex="0">Flagged vs controls</th>
 <th data-key="n_flagged" tabindex="0">Not random (hypergeom.)</th>
</tr></thead><tbody id="words-body"></tbody></table></div>
</section>"""


def _eat_section(report) -> str:
    """The association tests run with ``clipprobe report --eat`` (the folder's ``eat/``), or nothing."""
    folder = Path(report.path) / "eat"
    if not (folder / "eat.parquet").is_file():
        return ""
    from clipprobe.report.eat import html_section, load_eat

    table, _stimuli, record = load_eat(folder)
    return html_section(table, record, alpha=report.run.get("alpha", 0.05))


def _association_section(report) -> str:
    """Model RB/AB written by ``clipprobe association --out REPORT/association``, or nothing."""
    folder = Path(report.path) / "association"
    if not (folder / "run.json").is_file():
        return ""
    from clipprobe.report.association import html_section, load_association

    return html_section(*load_association(folder))


def _p(value) -> str:
    """A p- or q-value in two significant digits (``< 1e-300`` for an underflow to 0)."""
    if _num(value) == "—":
        return "—"
    v = float(value)
    return "< 1e-300" if v == 0 else f"{v:.2g}"


CROSSCHECK_TOP = 15   # rows of the table of the strongest caption associations


def crosscheck_data(report):
    """``(crosscheck.json, crosscheck.parquet table)`` of a report folder when they were made from this very
    report (their recorded fingerprint of its groups matches), else None."""
    folder = Path(report.path)
    if not (folder / "crosscheck.json").is_file() or not (folder / "crosscheck.parquet").is_file():
        return None
    try:
        data = json.loads((folder / "crosscheck.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        log.warning("%s is unreadable; the page has no cross-check section", folder / "crosscheck.json")
        return None
    from clipprobe.report.crosscheck import groups_fingerprint

    recorded = data.get("report_groups") if isinstance(data, dict) else None
    if recorded is not None and recorded != groups_fingerprint(report.groups):
        log.info("%s was made from another report than this folder's; the page leaves it out (rerun `clipprobe "
                 "crosscheck`)", folder / "crosscheck.json")
        return None
    import pandas as pd

    return data, pd.read_parquet(folder / "crosscheck.parquet")


def _crosscheck_section(report) -> str:
    """The caption cross-check (``report --captions-counts`` or ``clipprobe crosscheck``), or nothing."""
    found = crosscheck_data(report)
    if found is None:
        return ""
    data, joined = found
    from clipprobe.analysis.probe import controls_ran

    corr = data.get("spearman_skew_vs_caption_log_odds") or {}
    rows = []
    for attribute, c in corr.items():
        c = c or {}
        groups = c.get("by_group") or {}
        detail = "; ".join(f"{g}: {_num(v.get('rho'))} (n = {v.get('n')})" for g, v in groups.items()
                           if isinstance(v, dict))
        rows.append([_td(attribute), _td(_num(c.get("rho"), 3), num=c.get("rho")), _td(_p(c.get("p_value")),
                     num=c.get("p_value")), _td(str(c.get("n", "—")), num=c.get("n")), _td(detail)])
    corr_table = _table([("Attribute", "text"), ("Spearman rho", "num"), ("p", "num"), ("Rows", "num"),
                         ("By group: rho (rows)", "text")], rows, tid="crosscheck-table")
    absent_words, absent_groups = data.get("words_absent") or [], data.get("groups_absent") or []

    def listed(items, limit=12):
        return ", ".join(e(x) for x in items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")

    coverage = (f"{int(data.get('n_defined', 0)):,} of {int(data.get('n_rows', 0)):,} word-group rows have a caption "
                f"association; {int(data.get('n_words_absent', 0))} of {int(data.get('n_words', 0))} words"
                + (f" ({listed(absent_words)})" if absent_words else "")
                + f" and {int(data.get('n_groups_absent', 0))} of {int(data.get('n_groups', 0))} groups"
                + (f" ({listed(absent_groups)})" if absent_groups else "")
                + " never occur in the captions and are left out of the correlations and figures.")
    flag = "flagged_vs_controls" if controls_ran(report.groups) and "flagged_vs_controls" in joined else "flagged"
    ok = joined[joined["caption_status"] == "ok"] if "caption_status" in joined else joined
    top = ok.sort_values(["caption_log_odds", "word"], ascending=[False, True], kind="stable").head(CROSSCHECK_TOP)
    top_rows = []
    for r in top.to_dict("records"):
        model_flag = r.get(flag)
        top_rows.append([
            _td(r["word"]), _td(r["attribute"]), _td(r["group"]),
            _td(_num(r["skew"]), num=r["skew"], extra=_skew_style(r["skew"])),
            _td("yes" if model_flag is True else ("no" if model_flag is False else "—")),
            _td(f"{int(r['caption_n_both']):,}", num=r["caption_n_both"]),
            _td(_num(r["caption_lift"]), num=r["caption_lift"]),
            _td(_num(r["caption_log_odds"]), num=r["caption_log_odds"]),
            _td(_ci(r.get("caption_log_odds_ci_low"), r.get("caption_log_odds_ci_high")) or "not published"),
            _td(_p(r["caption_q_value"]), num=r["caption_q_value"]),
        ])
    flag_label = "Model flag vs controls" if flag == "flagged_vs_controls" else "Model flag (hypergeometric)"
    top_table = _table([("Word", "text"), ("Attribute", "text"), ("Group", "text"), ("Skew", "num"),
                        (flag_label, "text"), ("Captions with both", "num"), ("Lift", "num"),
                        ("Log-odds", "num"), ("95% interval", "text"), ("q", "num")], top_rows,
                       tid="crosscheck-top")
    figures = []
    for attribute in corr:
        path = Path(report.path) / "figures" / f"crosscheck_{attribute}.png"
        if path.is_file():
            figures.append(_figure_block(f"Retrieval skew (model) against caption log-odds (data): {attribute}",
                                         path.read_bytes()))
    return ('<section id="captions"><h2>Is it in the captions too?</h2>'
            '<p class="lead">The caption cross-check joins each word-group row of this report with its co-occurrence '
            f"in the caption counts of <code>{e(data.get('counts', '—'))}</code>. Spearman's rho ranks retrieval skew "
            "(the model) against caption log-odds (the data) over the rows where both are defined: a positive rho says "
            "the model's associations follow the captions'. It says nothing about cause, and it is only as good as the "
            f"caption lexicon. {coverage}</p>"
            + corr_table
            + (f'<div class="figgrid">{"".join(figures)}</div>' if figures else "")
            + f"<h3>Strongest caption associations ({len(top_rows)} of {len(ok):,} rows, by log-odds)</h3>"
            + '<p class="lead">Captions with both: how many captions name the word and the group; lift: their share '
            "over what independence gives; the log-odds interval is published only where every cell of the 2x2 "
            f"table expects at least 10 captions; q: Benjamini-Hochberg over every row (alpha {e(data.get('alpha', '—'))}).</p>"
            + (top_table if top_rows else '<p class="empty">No row has a caption association.</p>')
            + "</section>")


def _run_section(report) -> str:
    run = report.run
    timings = run.get("timings_s") or {}
    timing_rows = "".join(f"<tr><td>{e(k)}</td><td class=\"num\">{_num(v, 2)} s</td></tr>"
                          for k, v in timings.items()) if isinstance(timings, dict) else ""
    versions = run.get("versions") or {}
    version_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in versions.items()) \
        if isinstance(versions, dict) else ""
    return ('<section id="run"><h2>Run details</h2><div class="runcols">'
            f'<div><h3>Timings</h3><table class="plain">{timing_rows}</table></div>'
            f'<div><h3>Versions</h3><table class="plain">{version_rows}</table></div></div>'
            "<details><summary>run.json</summary><pre>"
            + e(json.dumps(_clean(run), indent=2, ensure_ascii=False)) + "</pre></details></section>")


HOWTO_CONTROLS = (
    "A pair is <i>flagged</i> when the group is over-represented in the word's top-k beyond what control "
    "queries (nonsense and neutral words, prompted the same way) retrieve: a beta-binomial fitted to the "
    "controls' counts, Benjamini-Hochberg adjusted over the whole report. Every count, filter and filled marker "
    "on this page uses that flag. The hypergeometric test, shown second, asks less: is the top-k a random "
    "sample of faces? Any query's neighbourhood clusters by appearance, so it flags even nonsense words (on the "
    "demo world, 20% of their rows).")
HOWTO_NO_CONTROLS = (
    "No control test was run (the report was made without control queries), so nothing here is flagged "
    "against them. The counts, filters and filled markers use the hypergeometric test alone: a pair is flagged "
    "when the word's top-k is not a random sample of faces for that group (Benjamini-Hochberg adjusted over the "
    "whole report). Any query's neighbourhood clusters by appearance, so this flags even nonsense words (on the "
    "demo world, 20% of their rows): it is not evidence of a stereotype by itself.")


def _header(report) -> str:
    from clipprobe.analysis.probe import controls_ran, flag_mask

    run = report.run
    ds = run.get("dataset") if isinstance(run.get("dataset"), dict) else {}
    g = report.groups
    hyper = flag_mask(g, "flagged")
    facts = [
        ("Model", report.model_spec), ("Dataset", ds.get("spec", "—")),
        ("Images", ds.get("n_images", "—")), ("k", run.get("k", "—")),
        ("Reference", run.get("reference", "—")), ("alpha", run.get("alpha", "—")),
        ("Bootstrap", run.get("bootstrap", "—")), ("Seed", run.get("seed", "—")),
        ("Fingerprint", ds.get("fingerprint", "—")),
        ("clipprobe", run.get("clipprobe_version", "—")),
    ]
    dl = "".join(f"<div><dt>{e(k)}</dt><dd>{e(v)}</dd></div>" for k, v in facts)
    cards = [(report.words["word"].nunique(), "words"), (len(report.categories), "categories"),
             (len(report.attributes), "attributes")]
    if controls_ran(g):
        vs = flag_mask(g, "flagged_vs_controls")
        cards += [(int(vs.sum()), "pairs flagged vs controls"), (g.loc[vs, "word"].nunique(), "words flagged vs controls"),
                  (int(hyper.sum()), "pairs not a random sample (hypergeometric)")]
        howto = HOWTO_CONTROLS
    else:
        cards += [("none", "control test (not run)"), (int(hyper.sum()), "pairs flagged, hypergeometric only"),
                  (g.loc[hyper, "word"].nunique(), "words flagged, hypergeometric only")]
        howto = HOWTO_NO_CONTROLS
    card_html = "".join(f'<div class="card"><span class="big">{e(v)}</span><span>{e(label)}</span></div>'
                        for v, label in cards)
    return (f'<header><div class="wrap"><p class="kicker">clipprobe bias report</p>'
            f"<h1>{e(report.model_label)}</h1><dl class=\"facts\">{dl}</dl></div></header>"
            f'<div class="wrap"><div class="cards">{card_html}</div>'
            '<div class="howto"><b>How to read this report.</b> ' + howto + " For each word, the top-k faces "
            "retrieved by the model are compared with the dataset. <i>Skew</i> = ln(share in the top-k / share in "
            "the dataset): 0 means proportional, +0.69 means twice as frequent, a group absent from the top-k uses "
            "share 1/k. A 95% interval is a range that holds the population value (the group's share among "
            "the model's top k/N of all faces like these) in 95% of datasets; its coverage was measured by "
            "simulation. MaxSkew is positive even with no bias at all, so it is shown with its <i>excess</i> over "
            "shuffled labels and a permutation p-value. Counts below 5 are marked low.</div>")


def write_html_report(report, out_path, *, image_loader: Callable | None = None,
                      label_for: Callable[[str], str] | None = None, category_figures: bool = False,
                      figures_dir=None, reuse_figures: bool = True, max_sheets: int = MAX_SHEETS,
                      sheet_faces: int = SHEET_FACES, sheets_max_bytes: int = SHEETS_MAX_BYTES) -> Path:
    """Write the report as one self-contained HTML file and return its path.

    Figures: the "core" set of :func:`clipprobe.report.figures.figure_specs` (plus the
    per-category plots with ``category_figures``). Each is read from
    ``figures_dir/<stem>.png`` (default: the report's ``figures/`` folder) when
    that file is at least as new as the report's tables, and drawn otherwise
    (always with ``reuse_figures=False``).

    ``image_loader(relative_file) -> PIL.Image | None`` supplies faces for the
    contact sheets of flagged words (default: the dataset root recorded in
    run.json, when it exists on this machine; otherwise the sheets are omitted
    with a note). ``label_for(relative_file) -> str`` adds a label line under
    each face (e.g. its group labels). At most ``max_sheets`` sheets of
    ``sheet_faces`` faces and ``sheets_max_bytes`` of JPEG are embedded (the
    first sheet always is); the page says how many flagged words were left out.
    """
    for name, value in (("max_sheets", max_sheets), ("sheet_faces", sheet_faces),
                        ("sheets_max_bytes", sheets_max_bytes)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise UsageError(MSG_BAD_LIMIT.format(name=name, value=value))
    from clipprobe.analysis.probe import controls_ran

    out_path = Path(out_path)
    folder = None
    if reuse_figures:
        folder = Path(figures_dir) if figures_dir is not None else Path(report.path) / "figures"
    source = _FigureSource(folder, _tables_mtime(report))
    sheets = _contact_sheets(report, image_loader, label_for, max_sheets, sheet_faces, sheets_max_bytes)
    blocks = sheets.blocks
    eat = _eat_section(report) + _association_section(report)
    captions = _crosscheck_section(report)
    sections = [
        _summary_section(report),
        _figures_section(report, category_figures, source),
        _flagged_section(report, sheets.anchors, sheets.note),
        _sheets_section(blocks, sheets.left_out, controls_ran(report.groups)),
        _words_section(controls_ran(report.groups)),
        captions,
        eat,
        _run_section(report),
    ]
    nav = "".join(f'<a href="#{sid}">{label}</a>' for sid, label in (
        ("summary", "Summary"), ("figures", "Figures"), ("flagged", "Flagged pairs"),
        *((("faces", "Faces"),) if blocks else ()), ("words", "All words"),
        *((("captions", "Captions"),) if captions else ()),
        *((("eat", "Association tests"),) if 'id="eat"' in eat else ()),
        *((("association", "Model RB/AB"),) if 'id="association"' in eat else ()), ("run", "Run")))
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">"
        f"<title>clipprobe report: {e(report.model_label)}</title><style>{_template('report.css')}</style></head><body>"
        + _header(report) + f'<nav class="toc">{nav}</nav>' + "".join(sections)
        + '<footer>Generated by clipprobe from the files of this report folder.</footer></div>'
        + f'<script type="application/json" id="clipprobe-data">{json_for_script(_words_payload(report))}</script>'
        + f"<script>{_template('report.js')}</script></body></html>\n"
    )
    write_text(out_path, page)
    log.info("wrote %s (%.1f MB; figures: %d reused from %s, %d drawn; %d contact sheets, %.1f MB of JPEG)",
             out_path, len(page) / 1e6, source.reused, folder, source.drawn, len(blocks), sheets.n_bytes / 1e6)
    return out_path
