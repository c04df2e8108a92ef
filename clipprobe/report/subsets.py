"""Outputs of ``clipprobe subsets``: tables, figures, contact sheets of each subset, an HTML page.

A subsets folder holds::

    DIR/assignment.parquet     image, subset: each image's subset (empty: in none), reusable as file:DIR/assignment.parquet
    DIR/clusters.parquet       one row per subset: size, k, probed or skipped (why), its most typical images
    DIR/composition.parquet    each subset's groups: count, share, the dataset's share, ln of their ratio
    DIR/subsets.parquet        the report's group rows per subset (scope "local") and for the whole dataset
                               (scope "global", subset "all"), with the skew against the global base shares
    DIR/subset_words.parquet   the report's word rows per subset and globally, with the KL of recall@k
    DIR/dispersion.parquet     per word, attribute and measure: the global value and the spread over subsets,
                               and whether its top group changes more often than the control queries' do
    DIR/control_changes.parquet  each control query's top-group change rate (the null of that comparison)
    DIR/figures/               heatmaps word x subset, per-word spreads (PNG)
    DIR/sheets/<subset>.jpg    the subset's most typical faces (closest to its centroid)
    DIR/subsets.html           one self-contained page
    DIR/run.json               the shared run record (command "subsets"), written last

``clipprobe subsets compare`` writes ``model_measures.parquet`` (per model, subset, attribute and
statistic: the mean over words), ``transfer.parquet`` (Spearman's rho, across models, between the
global value and each subset's), ``correlations.parquet`` (between user-supplied measures and
clipprobe's), ``assignment.parquet``, ``figures/``, ``compare.html`` and ``run.json``.

Plot functions take ``ax=None`` and return the Axes. Every string from the data (words, groups,
subset names, file names, model specs) is HTML-escaped where it is written into the page.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from clipprobe.errors import ClipprobeError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
COMMAND = "subsets"
COMPARE_COMMAND = "subsets compare"
FILES = {
    "assignment": "assignment.parquet", "clusters": "clusters.parquet", "composition": "composition.parquet",
    "groups": "subsets.parquet", "words": "subset_words.parquet", "dispersion": "dispersion.parquet",
    "controls": "control_changes.parquet", "html": "subsets.html", "run": "run.json",
}
COMPARE_FILES = {
    "assignment": "assignment.parquet", "measures": "model_measures.parquet", "transfer": "transfer.parquet",
    "correlations": "correlations.parquet", "html": "compare.html", "run": "run.json",
}
FIGURE_WORDS = 8           # per-word spread figures: the words whose local values spread the most
FIGURE_FORMATS = ("png", "pdf", "svg")  # a PNG for the page, vector PDF and SVG for papers
HEATMAP_WORDS = 40         # rows of a heatmap word x subset
SHEET_THUMB = 64
SHEET_COLUMNS = 10
SHEET_QUALITY = 72
HTML_ROWS = 60             # rows of each table shown on the page (the files hold every row)

MSG_OUT_NOT_FOLDER = "output folder {path} exists and is not a folder"
MSG_OUT_OTHER = ("output folder {path} holds the output of {found!r} (format {version!r}); use a new folder for "
                 "{command!r}")
MSG_NOT_SUBSETS = "{path} is not a `clipprobe subsets` folder (no {file})"
MSG_BAD_FORMAT = "{path} was written by another version of `clipprobe subsets` (format {found!r}, this one reads {want})"


def check_out_folder(out, command: str = COMMAND) -> None:
    """Refuse a path that is a file, or a folder written by another command or format."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClipprobeError(MSG_OUT_NOT_FOLDER.format(path=out))
    run = out / "run.json"
    if run.is_file():
        try:
            record = json.loads(run.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = {}
        found = record.get("command") if isinstance(record, dict) else None
        version = record.get("format_version") if isinstance(record, dict) else None
        if found != command or version != FORMAT_VERSION:
            raise ClipprobeError(MSG_OUT_OTHER.format(path=out, found=found, version=version, command=command))


# ----------------------------------------------------------------------------------------------
# tables


def clusters_table(info: "pd.DataFrame", typical: Mapping[str, Sequence[str]]) -> "pd.DataFrame":
    """The subsets' info rows with ``typical_files``: each subset's most typical images, most typical first."""
    out = info.copy()
    out["typical_files"] = [list(map(str, typical.get(s, []))) for s in out["subset"]]
    return out


@dataclasses.dataclass(frozen=True)
class SubsetsFolder:
    """The tables and run record of a subsets folder."""

    path: Path
    assignment: Any
    clusters: Any
    composition: Any
    groups: Any
    words: Any
    dispersion: Any
    run: dict
    controls: Any = None       # control_changes.parquet (absent when the run had no control queries)


def load_subsets(path) -> SubsetsFolder:
    """Read a ``clipprobe subsets`` folder back (its format version checked)."""
    import pandas as pd

    path = Path(path)
    run_path = path / FILES["run"]
    if not run_path.is_file():
        raise DataError(MSG_NOT_SUBSETS.format(path=path, file=FILES["run"]))
    run = json.loads(run_path.read_text(encoding="utf-8"))
    if run.get("command") != COMMAND or run.get("format_version") != FORMAT_VERSION:
        raise DataError(MSG_BAD_FORMAT.format(path=path, found=run.get("format_version"), want=FORMAT_VERSION))
    tables = {}
    for key in ("assignment", "clusters", "composition", "groups", "words", "dispersion"):
        file = path / FILES[key]
        if not file.is_file():
            raise DataError(MSG_NOT_SUBSETS.format(path=path, file=FILES[key]))
        tables[key] = pd.read_parquet(file)
    controls = path / FILES["controls"]
    return SubsetsFolder(path=path, run=run, **tables,
                         controls=pd.read_parquet(controls) if controls.is_file() else None)


# ----------------------------------------------------------------------------------------------
# the headline and what was skipped, as text (the command prints them, the page shows them)


def _pct(value) -> str:
    import math

    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{float(value):.0%}"


def headline(summary_row: Mapping[str, Any], *, alpha: float) -> str:
    """One attribute's line: words whose top group changes more often than the control queries' first,
    the raw share second (a word with no association changes top group too)."""
    r = summary_row
    raw = (f"raw: top group changes in at least one subset for {_pct(r['share_top_group_changes'])} of words, "
           f"in a median {_pct(r['median_top_group_change_rate'])} of subsets")
    flagged = f"{_pct(r['share_flagged_top_group_changes'])} between flagged top groups"
    n_controls = int(r.get("n_controls") or 0)
    if not n_controls:
        return (f"{r['attribute']}: no control queries to compare with, so no word is shown to change top group "
                f"more than chance; {raw}; {flagged}")
    n_more = int(round(float(r["share_top_group_changes_vs_controls"]) * int(r["n_words"])))
    return (f"{r['attribute']}: top group changes across subsets more often than for the {n_controls} control "
            f"queries for {n_more} of {int(r['n_words'])} words (q < {alpha}); {raw}, against "
            f"{_pct(r['control_change_rate_min'])}-{_pct(r['control_change_rate_max'])} (median "
            f"{_pct(r['control_change_rate_median'])}) for the control queries; {flagged}")


def skipped_text(skipped: Mapping[str, Any] | None) -> str:
    """What the analysis left out, in one line (from run.json's ``skipped``)."""
    if not skipped:
        return ""
    parts = []
    dropped, not_probed = skipped.get("dropped") or {}, skipped.get("not_probed") or {}
    if not_probed.get("n_subsets"):
        why = "; ".join(f"{s['subset']} ({s['n_images']} images): {s['why']}" for s in not_probed["subsets"][:5])
        more = f"; {not_probed['n_subsets'] - 5} more" if not_probed["n_subsets"] > 5 else ""
        parts.append(f"{not_probed['n_subsets']} subset(s) with {not_probed['n_images']} image(s) not probed "
                     f"({why}{more})")
    if dropped.get("n_subsets"):
        parts.append(f"{dropped['n_subsets']} subset(s) with {dropped['n_images']} image(s) dropped below "
                     f"min_size={skipped.get('min_size')}")
    if (skipped.get("no_value") or {}).get("n_images"):
        parts.append(f"{skipped['no_value']['n_images']} image(s) with no subset value")
    probed = f"{skipped.get('n_images_probed')} of {skipped.get('n_images')} images probed"
    return f"{probed}; skipped: " + ("; ".join(parts) if parts else "nothing")


# ----------------------------------------------------------------------------------------------
# figures


def interesting_words(dispersion: "pd.DataFrame", n: int = FIGURE_WORDS, measure: str = "top_group_skew"
                      ) -> list[tuple[str, str]]:
    """The (word, attribute) pairs whose ``measure`` spreads the most over the subsets."""
    rows = dispersion[(dispersion["measure"] == measure) & dispersion["range"].notna()]
    rows = rows.sort_values(["range", "word", "attribute"], ascending=[False, True, True], kind="stable")
    return list(zip(rows["word"].head(n), rows["attribute"].head(n)))


def word_spread(groups: "pd.DataFrame", word: str, attribute: str, group: str | None = None, *, ax=None):
    """The skew of one group for ``word`` globally and in each subset, with the published intervals.

    ``group`` defaults to the word's top group in the global rows. The global value is the black
    diamond (its interval a grey band); each subset a dot with its interval; subsets where the row is
    flagged (BH over every local row) are filled, the others hollow; a subset whose top-k holds no face
    of the group has no skew: an ``x`` in the shaded strip at the left. Returns the Axes.
    """
    import numpy as np
    from matplotlib.lines import Line2D

    from clipprobe.report import figures as F

    rows = groups[(groups["word"] == word) & (groups["attribute"] == attribute)]
    if rows.empty:
        from clipprobe.errors import one_of

        raise one_of(f"{word}/{attribute}", sorted({f"{w}/{a}" for w, a in zip(groups["word"], groups["attribute"])}),
                     "word/attribute")
    glob = rows[rows["scope"] == "global"]
    if group is None:
        pick = glob if not glob.empty else rows
        group = str(pick.sort_values("skew", ascending=False, kind="stable")["group"].iloc[0])
    rows = rows[rows["group"] == group]
    local = rows[rows["scope"] == "local"]
    g = glob[glob["group"] == group] if not glob.empty else glob
    color = F.OKABE_ITO[0]
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, max(1.8, 1.2 + 0.16 * len(local)))
        y = np.arange(len(local))[::-1].astype(float)
        zero = F.zero_faces(local)
        measured = ~zero
        skew = local["skew"].to_numpy(dtype=float)
        err = F._errors(skew, local["skew_ci_low"], local["skew_ci_high"])
        flagged = local["flagged"].to_numpy(dtype=bool) & measured
        hollow = ~flagged & measured
        if measured.any():
            ax.errorbar(skew[measured], y[measured], xerr=err[:, measured], fmt="none", ecolor=color,
                        elinewidth=F.scaled(0.8), capsize=0)
        ax.scatter(skew[flagged], y[flagged], color=color, s=F.scaled(14), zorder=3)
        ax.scatter(skew[hollow], y[hollow], facecolor="white", edgecolor=color, s=F.scaled(14), zorder=3)
        values = [skew[measured], local["skew_ci_low"].to_numpy(float)[measured],
                  local["skew_ci_high"].to_numpy(float)[measured]]
        if not g.empty:
            values += [g["skew"].to_numpy(float), g["skew_ci_low"].to_numpy(float), g["skew_ci_high"].to_numpy(float)]
        F.set_skew_axis(ax, F.skew_limits(np.concatenate(values)))
        F.draw_zero_faces(ax, y[zero])
        handles = [Line2D([], [], ls="none", marker="o", color=color, ms=F.scaled(3.5), label="flagged"),
                   Line2D([], [], ls="none", marker="o", mfc="white", mec=color, ms=F.scaled(3.5),
                          label="not flagged")]
        if not g.empty:
            lo, hi = float(g["skew_ci_low"].iloc[0]), float(g["skew_ci_high"].iloc[0])
            if np.isfinite(lo) and np.isfinite(hi):
                ax.axvspan(lo, hi, color="0.88", zorder=0, lw=0)
            ax.axvline(float(g["skew"].iloc[0]), color="black", lw=F.scaled(0.8), zorder=1)
            ax.plot([float(g["skew"].iloc[0])], [len(local) - 0.4 if len(local) else 0], marker="D",
                    color="black", ms=F.scaled(4), zorder=4)
            handles.append(Line2D([], [], ls="none", marker="D", color="black", ms=F.scaled(3.5),
                                  label="all images"))
        if zero.any():
            handles.append(F.zero_legend_handle())
        ax.axvline(0.0, color="0.6", lw=F.scaled(0.5), ls=":")
        ax.set_yticks(y, [F.short(s, 24) for s in local["subset"]])
        ax.set_ylim(-0.6, len(local) - 0.2)
        ax.set_xlabel(f"skew of {F.short(group, 24)} (subset's own base shares)")
        ax.set_title(F.literal(f"{word} ({attribute}): all images and each subset"), loc="left", y=1.0, pad=6.0)
        ax.figure.legend(handles=handles, loc="outside lower center",
                         ncol=F._legend_columns(ax.figure, [h.get_label() for h in handles]),
                         handletextpad=0.1, columnspacing=0.8)
    return ax


def subset_heatmap(words: "pd.DataFrame", attribute: str, measure: str = "kl_recall", *,
                   rows: Sequence[str] | None = None, max_words: int = HEATMAP_WORDS, ax=None):
    """A heatmap word x subset of a word measure (``kl_recall``, ``max_skew_excess``, ...), the global
    value in the first column; rows are ``rows`` or the words with the largest spread over subsets.
    Returns the Axes."""
    import numpy as np

    from clipprobe.report import figures as F

    part = words[words["attribute"] == attribute]
    table = part.pivot_table(index="word", columns="subset", values=measure, aggfunc="first", sort=False)
    subsets = [s for s in dict.fromkeys(part["subset"]) if s != "all"]
    columns = (["all"] if "all" in table.columns else []) + [s for s in subsets if s in table.columns]
    table = table.reindex(columns=columns)
    if rows is None:
        spread = table[[c for c in columns if c != "all"]].agg(lambda r: np.nanmax(r) - np.nanmin(r)
                                                              if np.isfinite(r).any() else np.nan, axis=1)
        rows = list(spread.sort_values(ascending=False, kind="stable").index[:max_words])
    table = table.reindex(list(rows))
    values = table.to_numpy(dtype=np.float64)
    with F.style():
        if ax is None:
            width = F.COLUMN_WIDTH if len(columns) <= 8 else F.PAGE_WIDTH
            ax = F.new_axes(width, max(1.8, 1.3 + 0.14 * len(rows)))
        finite = values[np.isfinite(values)]
        if measure.endswith("excess") or measure.startswith("skew") or measure.endswith("_skew"):
            bound = float(np.max(np.abs(finite))) if finite.size else 1.0
            image = ax.imshow(values, aspect="auto", cmap=F._cmap(F.DIVERGING_CMAP), vmin=-bound, vmax=bound,
                              interpolation="nearest")
        else:
            image = ax.imshow(values, aspect="auto", cmap=F._cmap("viridis"), interpolation="nearest",
                              vmin=0.0 if finite.size else None)
        ax.set_xticks(range(len(columns)), [F.short(c, 12) for c in columns], rotation=90)
        ax.set_yticks(range(len(rows)), [F.short(r) for r in rows])
        if "all" in columns:
            ax.axvline(0.5, color="white", lw=F.scaled(1.2))
        ax.figure.colorbar(image, ax=ax, shrink=0.8).set_label(F.literal(measure))
        ax.set_title(F.literal(f"{measure} ({attribute}): all images, then each subset"), loc="left", y=1.0,
                     pad=6.0)
        ax.spines[:].set_visible(False)
    return ax


def transfer_plot(transfer: "pd.DataFrame", attribute: str, statistic: str, *, ax=None):
    """Spearman's rho (across models) between the global value and each subset's, with its interval;
    returns the Axes."""
    import numpy as np

    from clipprobe.report import figures as F

    part = transfer[(transfer["attribute"] == attribute) & (transfer["statistic"] == statistic)]
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, max(1.8, 1.1 + 0.16 * len(part)))
        y = np.arange(len(part))[::-1]
        ax.errorbar(part["rho"], y, xerr=F._errors(part["rho"], part["ci_low"], part["ci_high"]), fmt="o",
                    ms=F.scaled(3), color=F.OKABE_ITO[0], elinewidth=F.scaled(0.8))
        ax.axvline(0.0, color="0.6", lw=F.scaled(0.5), ls=":")
        ax.set_xlim(-1.05, 1.05)
        ax.set_yticks(y, [F.short(s, 24) for s in part["subset"]])
        n = int(part["n_models"].max()) if len(part) else 0
        ax.set_xlabel(f"Spearman rho, all images vs subset ({n} models)")
        ax.set_title(F.literal(f"{statistic} ({attribute}): does the ranking survive?"), loc="left", y=1.0,
                     pad=6.0)
    return ax


def write_subset_figures(groups, words, dispersion, out_dir, *, n_words: int = FIGURE_WORDS) -> dict[str, Path]:
    """Heatmaps (``kl_recall`` and ``max_skew_excess`` per attribute) and per-word spreads; returns
    caption -> PNG path."""
    from clipprobe.report.figures import save_figure, slug

    out_dir = Path(out_dir)
    written: dict[str, Path] = {}
    attributes = list(dict.fromkeys(words.loc[words["scope"] == "local", "attribute"]))
    for attribute in attributes:
        for measure in ("kl_recall", "max_skew_excess"):
            ax = subset_heatmap(words, attribute, measure)
            paths = save_figure(ax.figure, out_dir / f"heatmap_{slug(attribute)}_{measure}", formats=FIGURE_FORMATS)
            written[f"{measure} per word and subset ({attribute})"] = paths[0]
    for word, attribute in interesting_words(dispersion, n_words):
        ax = word_spread(groups, word, attribute)
        paths = save_figure(ax.figure, out_dir / f"word_{slug(attribute)}_{slug(word)}", formats=FIGURE_FORMATS)
        written[f"{word} ({attribute}): skew of its global top group per subset"] = paths[0]
    return written


# ----------------------------------------------------------------------------------------------
# contact sheets


def write_sheets(typical: Mapping[str, Sequence[str]], out_dir, *, image_loader: Callable | None,
                 label_for: Callable[[str], str] | None = None) -> dict[str, Path]:
    """One JPEG contact sheet per subset of its most typical faces; none without an image loader."""
    from clipprobe.report.contact import load_images, save_contact_sheet
    from clipprobe.report.figures import slug

    if image_loader is None:
        return {}
    out_dir = Path(out_dir)
    written = {}
    for i, (subset, files) in enumerate(typical.items()):
        files = [str(f) for f in files]
        images, failed = load_images(image_loader, files)
        if failed:
            log.warning("%d of %d faces of subset %r could not be read", failed, len(files), subset)
        labels = [f"#{j + 1}" + (f"\n{label_for(f)}" if label_for and label_for(f) else "") for j, f in
                  enumerate(files)]
        path = out_dir / f"{i:03d}-{slug(subset)}.jpg"
        written[subset] = save_contact_sheet(path, images, labels, columns=SHEET_COLUMNS, thumb=SHEET_THUMB,
                                             title=f"subset {subset}: {len(files)} most typical faces",
                                             quality=SHEET_QUALITY)
    return written


# ----------------------------------------------------------------------------------------------
# HTML


CSS = ("body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;"
       "background:#f6f7f9}main{max-width:1180px;margin:0 auto;padding:12px 24px}header{background:#1d2330;"
       "color:#fff;padding:18px 24px}header h1{margin:0 0 6px;font-size:22px;word-break:break-all}"
       "header p{margin:2px 0;color:#c9d3df;font-size:13px}h2{margin-top:28px;font-size:18px}"
       "table{border-collapse:collapse;font-size:12.5px;background:#fff;margin:8px 0}th,td{border:1px solid #e3e6ec;"
       "padding:3px 7px;text-align:left;vertical-align:top}td.n{text-align:right;font-variant-numeric:tabular-nums}"
       "th{background:#eef1f5}.note{color:#5b6475;font-size:13px}.howto{background:#eef4fa;border-left:3px solid "
       "#0072B2;padding:8px 12px;font-size:13px}figure{display:inline-block;margin:8px 12px 8px 0;"
       "vertical-align:top;background:#fff;border:1px solid #e3e6ec;padding:6px}figure img{max-width:100%}"
       "figcaption{font-size:12px;color:#5b6475}details{margin:6px 0}")


def _e(value) -> str:
    from clipprobe.report.formatting import e

    return e(value)


def _n(value, digits: int = 3) -> str:
    from clipprobe.report.formatting import num

    return num(value, digits)


def _ci(low, high, digits: int = 2) -> str:
    import math

    def end(v) -> str:
        try:
            v = float(v)
        except (TypeError, ValueError):
            return "—"
        if math.isinf(v):
            return "−∞" if v < 0 else "∞"
        return _n(v, digits)

    lo, hi = end(low), end(high)
    return "" if "—" in (lo, hi) else f"[{lo}, {hi}]"


def _cell(value) -> str:
    """A table cell's text: strings escaped, whole numbers and flags as they are, other numbers rounded."""
    import numbers

    if isinstance(value, str):
        return _e(value)
    if isinstance(value, (bool, numbers.Integral)) or value is None:
        return _e(value)
    return _n(value)


def _numeric(df, column) -> bool:
    import pandas as pd

    return bool(len(df)) and pd.api.types.is_numeric_dtype(df[column]) and not pd.api.types.is_bool_dtype(df[column])


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(headers)
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td class=\"n\">{c}</td>" if numeric[i] else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _img(data: bytes, mime: str, alt: str) -> str:
    return f'<img alt="{_e(alt)}" src="data:{mime};base64,{base64.b64encode(data).decode("ascii")}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_img(Path(path).read_bytes(), 'image/png', caption)}<figcaption>{_e(caption)}</figcaption></figure>"


def _composition_text(comp: "pd.DataFrame", subset: str, attribute: str, n: int = 3) -> str:
    part = comp[(comp["subset"] == subset) & (comp["attribute"] == attribute) & (comp["log_ratio"] > 0)]
    part = part.sort_values("log_ratio", ascending=False, kind="stable").head(n)
    return "; ".join(f"{g} {s:.0%} ({r:+.2f})" for g, s, r in zip(part["group"], part["share"], part["log_ratio"]))


def subsets_html(*, run: Mapping[str, Any], clusters: "pd.DataFrame", composition: "pd.DataFrame",
                 groups: "pd.DataFrame", words: "pd.DataFrame", dispersion: "pd.DataFrame",
                 summary: "pd.DataFrame", figures: Mapping[str, Path], sheets: Mapping[str, Path],
                 notes: Sequence[str]) -> str:
    """The page (a string); every data string escaped."""
    config = run.get("config", {}) if isinstance(run.get("config"), dict) else {}
    model = run.get("model") or {}
    dataset = run.get("dataset") or {}
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>clipprobe subsets: "
             f"{_e(model.get('spec', ''))}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<header><h1>Bias on subsets: {_e(model.get('spec', ''))}</h1>"
                 f"<p>dataset {_e(dataset.get('spec', ''))}; subsets by {_e(config.get('by', ''))}, "
                 f"min_size {_e(config.get('min_size', ''))}; k = {_e(config.get('k', ''))} "
                 f"({_e(config.get('k_mode', ''))}); FDR {_e(config.get('alpha', ''))} over every local row</p>"
                 f"<p>{_e(skipped_text(run.get('skipped')))}</p></header><main>")
    parts.append("<p class=\"howto\">Each subset is probed on its own images: a word's top-k within the subset, "
                 "skews against the subset's own group shares, the report's intervals and tests, Benjamini-Hochberg "
                 "over every local row. kl_recall is KL(p || uniform) of the groups' normalised recall@k "
                 "(0: every group recalled alike); its excess is over the label-shuffle null. It is this "
                 "project's reading of Ramos et al.'s R@k measure: every image of a group counts as relevant to a "
                 "word, so r_a is the share of group a's images in the word's top-k. Read as retrieval recall "
                 "(a caption is a hit when its own paired image is in the top-k, per group of the pictured "
                 "person), the measure would be a gap in retrieval accuracy, would need image-caption pairs, "
                 "and would give other values.</p>")
    if notes:
        parts.append("<details><summary>Notes (" + str(len(notes)) + ")</summary><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></details>")
    # subsets
    attrs = [a for a in dict.fromkeys(composition["attribute"])]
    rows = []
    for r in clusters.itertuples(index=False):
        cells = [_e(r.subset), _e(r.n_images), _e(r.k), "yes" if r.probed else "no: " + _e(r.note)]
        cells += [_e(_composition_text(composition, r.subset, a)) for a in attrs]
        sheet = sheets.get(r.subset)
        cells.append(_img(Path(sheet).read_bytes(), "image/jpeg", f"subset {r.subset}") if sheet else "")
        rows.append(cells)
    parts.append("<h2>Subsets</h2><p class=\"note\">Composition: the groups most over-represented in the subset "
                 "relative to the dataset (share, ln of the ratio). Faces: the subset's most typical images.</p>")
    parts.append(_table(["subset", "images", "k", "probed"] + [f"most over-represented ({a})" for a in attrs]
                        + ["typical faces"], rows, [False, True, True, False] + [False] * len(attrs) + [False]))
    # dispersion summary
    if len(summary):
        cols = list(summary.columns)
        alpha = config.get("alpha", 0.05)
        parts.append("<h2>Does the bias move between subsets?</h2><p class=\"note\">A word with no association "
                     "changes top group between subsets too, so each word's share of subsets where its top group "
                     "is not the global one is compared with the control queries' shares (p-value with ties split "
                     "at random, BH over words); the raw share comes second.</p><ul>"
                     + "".join(f"<li>{_e(headline(r, alpha=alpha))}</li>" for r in summary.to_dict(orient="records"))
                     + "</ul>")
        parts.append(_table(cols, [[_cell(v) for v in row] for row in summary.itertuples(index=False)],
                            [_numeric(summary, c) for c in cols]))
    # words with the widest spread
    top = dispersion[dispersion["measure"] == "top_group_skew"].sort_values("range", ascending=False,
                                                                            kind="stable").head(HTML_ROWS)
    top = top.rename(columns={"global": "global_value"})
    parts.append("<h2>Words whose bias differs most between subsets</h2><p class=\"note\">Skew of the word's "
                 "global top group: globally, and its range over the subsets; the flagged top groups per subset "
                 "(BH over every local row).</p>")
    parts.append(_table(
        ["word", "attribute", "global top group", "global skew", "min (subset)", "max (subset)", "range",
         "flagged top groups", "subsets flagged"],
        [[_e(r.word), _e(r.attribute), _e(r.top_group_global), _n(r.global_value),
          f"{_n(r.min)} ({_e(r.subset_min)})", f"{_n(r.max)} ({_e(r.subset_max)})", _n(r.range),
          _e(r.flagged_top_groups), _e(r.n_subsets_flagged)] for r in top.itertuples(index=False)],
        [False, False, False, True, True, True, True, False, True]))
    # flagged local rows
    flagged = groups[(groups["scope"] == "local") & groups["flagged"]].sort_values(
        ["q_over", "skew"], ascending=[True, False], kind="stable").head(HTML_ROWS)
    n_flagged = int(((groups["scope"] == "local") & groups["flagged"]).sum())
    parts.append(f"<h2>Flagged within subsets</h2><p class=\"note\">{n_flagged} local row(s) flagged; the "
                 f"{len(flagged)} with the lowest q are shown (all are in subsets.parquet).</p>")
    parts.append(_table(
        ["subset", "word", "attribute", "group", "count / k", "share", "skew [95% CI]", "skew vs global base", "q"],
        [[_e(r.subset), _e(r.word), _e(r.attribute), _e(r.group), f"{_e(r.count)} / {_e(r.k)}", _n(r.share),
          f"{_n(r.skew, 2)} {_ci(r.skew_ci_low, r.skew_ci_high)}", _n(r.skew_vs_global, 2), _n(r.q_over, 4)]
         for r in flagged.itertuples(index=False)],
        [False, False, False, False, True, True, True, True, True]))
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(_figure(p, c) for c, p in figures.items()))
    parts.append("<h2>Run</h2><pre>" + _e(json.dumps({k: run.get(k) for k in ("command", "clipprobe_version",
                                                                             "started", "config", "timings_s")},
                                                     indent=1, default=str)) + "</pre>")
    parts.append("</main></body></html>")
    return "".join(parts)


def write_subsets(out, tables, assignment_table: "pd.DataFrame", *, run: dict, typical: Mapping[str, Sequence[str]],
                  image_loader: Callable | None = None, label_for: Callable[[str], str] | None = None,
                  figures: bool = True, html: bool = True, timer=None) -> list[Path]:
    """Write a subsets folder from :class:`clipprobe.analysis.subsets.SubsetTables`; ``run.json`` last."""
    from clipprobe import _io
    from clipprobe.analysis.subsets import dispersion_summary
    from clipprobe.runinfo import StageTimer

    out = Path(out)
    check_out_folder(out, COMMAND)
    timer = timer or StageTimer()
    clusters = clusters_table(tables.info, typical)
    written = []
    with timer("write_tables"):
        for key, df in (("assignment", assignment_table), ("clusters", clusters), ("composition", tables.composition),
                        ("groups", tables.groups), ("words", tables.words), ("dispersion", tables.dispersion),
                        ("controls", tables.controls)):
            if df is None:
                continue
            _io.write_parquet(out / FILES[key], df)
            written.append(out / FILES[key])
    summary = dispersion_summary(tables.dispersion, tables.controls)
    figure_paths: dict[str, Path] = {}
    if figures:
        with timer("figures"):
            figure_paths = write_subset_figures(tables.groups, tables.words, tables.dispersion, out / "figures")
        written += list(figure_paths.values())
    with timer("sheets"):
        sheets = write_sheets(typical, out / "sheets", image_loader=image_loader, label_for=label_for)
    written += list(sheets.values())
    run = {**run, "format_version": FORMAT_VERSION, "notes": list(tables.notes),
           "n_subsets": int(len(clusters)), "n_probed": int(clusters["probed"].sum()),
           "n_local_rows": int((tables.groups["scope"] == "local").sum()),
           "n_local_flagged": int(((tables.groups["scope"] == "local") & tables.groups["flagged"]).sum()),
           "dispersion": summary.to_dict(orient="records")}
    if html:
        with timer("html"):
            page = subsets_html(run=run, clusters=clusters, composition=tables.composition, groups=tables.groups,
                                words=tables.words, dispersion=tables.dispersion, summary=summary,
                                figures=figure_paths, sheets=sheets, notes=tables.notes)
            _io.write_text(out / FILES["html"], page)
        written.append(out / FILES["html"])
    run["timings_s"] = {**run.get("timings_s", {}), **timer.as_dict()}
    _io.write_json(out / FILES["run"], run)
    written.append(out / FILES["run"])
    return written


# ----------------------------------------------------------------------------------------------
# across models


def compare_html(*, run: Mapping[str, Any], transfer: "pd.DataFrame", correlations: "pd.DataFrame | None",
                 measures: "pd.DataFrame", figures: Mapping[str, Path], notes: Sequence[str]) -> str:
    """The comparison page (a string); every data string escaped."""
    config = run.get("config", {}) if isinstance(run.get("config"), dict) else {}
    models = run.get("models") or []
    parts = [f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>clipprobe subsets compare"
             f"</title><style>{CSS}</style></head><body><header><h1>Does the ranking of models survive on subsets?"
             f"</h1><p>{len(models)} models; subsets by {_e(config.get('by', ''))}; interval "
             f"{_e(config.get('interval', ''))} at level {_e(config.get('level', ''))}</p></header><main>"]
    parts.append("<p class=\"howto\">For each attribute and statistic (the mean over words), Spearman's rho across "
                 "models between the global value and each subset's: near 1, the subset ranks the models as the "
                 "whole dataset does.</p>")
    if notes:
        parts.append("<details><summary>Notes (" + str(len(notes)) + ")</summary><ul>"
                     + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul></details>")
    glob = measures[measures["subset"] == "all"]
    wide = glob.assign(column=glob["statistic"] + " (" + glob["attribute"] + ")").pivot_table(
        index="model", columns="column", values="value", aggfunc="first", sort=False)
    columns = list(wide.columns)
    parts.append("<h2>Models (global values, means over words)</h2>" + _table(
        ["model", "spec", *columns],
        [[_e(m.get("name")), _e(m.get("spec"))] + [_n(wide.loc[m.get("name"), c]) if m.get("name") in wide.index
                                                   else "—" for c in columns] for m in models],
        [False, False] + [True] * len(columns)))
    parts.append("<h2>Global vs subset</h2>" + _table(
        list(transfer.columns), [[_cell(v) for v in row] for row in transfer.itertuples(index=False)],
        [_numeric(transfer, c) for c in transfer.columns]))
    if correlations is not None and len(correlations):
        parts.append("<h2>Between measures</h2>" + _table(
            list(correlations.columns), [[_cell(v) for v in row] for row in correlations.itertuples(index=False)],
            [_numeric(correlations, c) for c in correlations.columns]))
    if figures:
        parts.append("<h2>Figures</h2>" + "".join(_figure(p, c) for c, p in figures.items()))
    parts.append("</main></body></html>")
    return "".join(parts)


def write_compare(out, *, per_model: "pd.DataFrame", transfer: "pd.DataFrame",
                  correlations: "pd.DataFrame | None", assignment_table: "pd.DataFrame", run: dict,
                  notes: Sequence[str] = (), figures: bool = True, html: bool = True, timer=None) -> list[Path]:
    """Write the comparison folder; ``run.json`` last."""
    from clipprobe import _io
    from clipprobe.report.figures import save_figure, slug
    from clipprobe.runinfo import StageTimer

    out = Path(out)
    check_out_folder(out, COMPARE_COMMAND)
    timer = timer or StageTimer()
    written = []
    with timer("write_tables"):
        for key, df in (("assignment", assignment_table), ("measures", per_model), ("transfer", transfer),
                        ("correlations", correlations)):
            if df is None:
                continue
            _io.write_parquet(out / COMPARE_FILES[key], df)
            written.append(out / COMPARE_FILES[key])
    figure_paths: dict[str, Path] = {}
    if figures and len(transfer):
        with timer("figures"):
            for (attribute, statistic), _part in transfer.groupby(["attribute", "statistic"], sort=False):
                ax = transfer_plot(transfer, attribute, statistic)
                paths = save_figure(ax.figure, out / "figures" / f"transfer_{slug(attribute)}_{slug(statistic)}",
                                    formats=FIGURE_FORMATS)
                figure_paths[f"{statistic} ({attribute}): global vs each subset"] = paths[0]
        written += list(figure_paths.values())
    run = {**run, "format_version": FORMAT_VERSION, "notes": list(notes)}
    if html:
        with timer("html"):
            _io.write_text(out / COMPARE_FILES["html"], compare_html(run=run, transfer=transfer,
                                                                     correlations=correlations, measures=per_model,
                                                                     figures=figure_paths, notes=notes))
        written.append(out / COMPARE_FILES["html"])
    run["timings_s"] = {**run.get("timings_s", {}), **timer.as_dict()}
    _io.write_json(out / COMPARE_FILES["run"], run)
    written.append(out / COMPARE_FILES["run"])
    return written


__all__ = [
    "COMPARE_FILES", "FILES", "FORMAT_VERSION", "SubsetsFolder", "check_out_folder", "clusters_table", "compare_html",
    "headline", "interesting_words", "load_subsets", "skipped_text", "subset_heatmap", "subsets_html", "transfer_plot",
    "word_spread", "write_compare", "write_sheets", "write_subset_figures", "write_subsets",
]
