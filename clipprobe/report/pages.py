"""One index page for a folder of runs: ``index.html`` links every page and result folder found under it.

:func:`find_runs` walks a folder for the ``run.json`` that every command writes (reports, association
tests, subsets, balancing, sweeps, caption counts, ...; :mod:`clipprobe.runinfo`), and lists for each its
command, model, dataset, start time, HTML pages (``report.html``, ``subsets.html``, ``compare.html``,
``analysis.html``, ...) and figures. :func:`write_index` writes them as ``index.html`` in the folder
(``clipprobe demo`` does so in its output folder; ``clipprobe index DIR`` for any folder).

The page is one self-contained file (no script, no network); every folder name, command, model and
dataset is HTML-escaped and every link is a relative, percent-encoded path inside the folder.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from clipprobe._io import write_text
from clipprobe.errors import DataError
from clipprobe.report.formatting import e

log = logging.getLogger(__name__)

INDEX_FILE = "index.html"
RUN_FILE = "run.json"
MAX_DEPTH = 6                 # folders below DIR that are searched
MAX_RUNS = 2000               # runs listed (a sweep over a model zoo has a few per model)
MAX_RUN_JSON_BYTES = 20_000_000
# folders that hold caches, partial results or inputs, never a run's pages
SKIP_DIRS = {"cache", "parts", "shards", "__pycache__", "node_modules"}
FIGURE_SUFFIXES = (".png", ".svg", ".pdf")
PAGE_ORDER = ("report.html", "subsets.html", "compare.html", "analysis.html")

MSG_NO_FOLDER = "index: folder {path} does not exist"
MSG_NOT_FOLDER = "index: {path} is not a folder"
MSG_NOTHING = "index: no run folder (a folder with run.json written by clipprobe) under {path}"

_CSS = """
body{margin:0;font:14px/1.5 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Arial,sans-serif;color:#1d2330;
background:#f6f7f9}
.wrap{max-width:1400px;margin:0 auto;padding:0 24px 30px}
header{background:#1d2330;color:#fff;padding:22px 0 16px}header h1{margin:0;font-size:22px;font-weight:600;
overflow-wrap:anywhere}
.kicker{margin:0;text-transform:uppercase;letter-spacing:.08em;font-size:12px;color:#9fb3c8}
section{background:#fff;border:1px solid #e3e6ec;border-radius:8px;padding:16px 20px;margin:18px 0;overflow-x:auto}
h2{margin:0 0 8px;font-size:18px}
table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:5px 8px;border-bottom:1px solid #e3e6ec;text-align:left;vertical-align:top;overflow-wrap:break-word}
th{background:#eef0f4}
a{color:#0072B2}
.muted{color:#5b6475}
.pages a{font-weight:600;margin-right:10px}
"""


def _read_run(path: Path) -> dict | None:
    try:
        if path.stat().st_size > MAX_RUN_JSON_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _model(run: dict) -> str:
    model = run.get("model")
    if isinstance(model, dict):
        return str(model.get("canonical") or model.get("spec") or "")
    if isinstance(model, str):
        return model
    config = run.get("config") if isinstance(run.get("config"), dict) else {}
    probe = config.get("probe") if isinstance(config.get("probe"), dict) else {}
    return str(config.get("model") or probe.get("model") or "")


def _dataset(run: dict) -> str:
    ds = run.get("dataset")
    if isinstance(ds, dict):
        return str(ds.get("spec") or "")
    return str(ds) if isinstance(ds, str) else ""


def _headline(run: dict) -> str:
    """A few words on what the run found, where its record says it plainly."""
    if run.get("command") == "report" and isinstance(run.get("n_rows"), int):
        if run.get("controls_ran") and run.get("n_flagged_vs_controls") is not None:
            return (f"{run['n_flagged_vs_controls']:,} of {run['n_rows']:,} word-group pairs flagged vs controls; "
                    f"{run.get('n_flagged', 0):,} not a random sample (hypergeometric)")
        return f"{run.get('n_flagged', 0):,} of {run['n_rows']:,} pairs not a random sample (hypergeometric only)"
    return ""


def find_runs(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """Every run folder under ``folder`` (itself included, at most :data:`MAX_DEPTH` levels down; caches
    and partial results skipped), in path order: ``path`` (relative, POSIX), ``command``, ``model``,
    ``dataset``, ``started``, ``headline``, ``pages`` (HTML files of the folder, relative to ``folder``),
    ``figures`` (figure files in the folder and its ``figures/``) and ``files`` (its other files)."""
    root = Path(folder)
    runs: list[dict[str, Any]] = []
    for current, dirs, files in os.walk(root):
        here = Path(current)
        depth = len(here.relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")) and d not in SKIP_DIRS
                         and depth < MAX_DEPTH)
        if RUN_FILE not in files:
            continue
        run = _read_run(here / RUN_FILE)
        if run is None:
            continue
        if not run.get("command"):   # a record older than the shared schema: a report folder has its tables
            run["command"] = "report" if "groups.parquet" in files else "run"
        rel = here.relative_to(root)
        html = sorted((f for f in files if f.endswith(".html") and not (depth == 0 and f == INDEX_FILE)),
                      key=lambda f: (PAGE_ORDER.index(f) if f in PAGE_ORDER else len(PAGE_ORDER), f))
        figures = sorted(f for f in files if f.endswith(FIGURE_SUFFIXES))
        fig_dir = here / "figures"
        if fig_dir.is_dir():
            figures += sorted(f"figures/{p.name}" for p in fig_dir.iterdir() if p.name.endswith(FIGURE_SUFFIXES))
        others = sorted(f for f in files if not f.endswith((".html", *FIGURE_SUFFIXES)) and not f.startswith("."))
        runs.append({
            "path": rel.as_posix() if rel.parts else ".",
            "command": str(run.get("command")), "model": _model(run), "dataset": _dataset(run),
            "started": str(run.get("started") or "").replace("T", " ")[:16], "headline": _headline(run),
            "pages": [(rel / f).as_posix() for f in html],
            "figures": [(rel / f).as_posix() for f in figures],
            "files": [(rel / f).as_posix() for f in others],
        })
        if len(runs) >= MAX_RUNS:
            log.warning("index: listing the first %d run folders under %s", MAX_RUNS, root)
            break
    return runs


def _href(rel: str) -> str:
    return e(quote(rel, safe="/"))


def _link(rel: str, text: str | None = None) -> str:
    return f'<a href="{_href(rel)}">{e(text if text is not None else rel)}</a>'


def _figure_links(figures: list[str], limit: int = 40) -> str:
    # one link per figure, its PNG when there is one (PDF/SVG named beside it)
    by_stem: dict[str, list[str]] = {}
    for f in figures:
        stem, _, suffix = f.rpartition(".")
        by_stem.setdefault(stem, []).append(suffix)
    parts = []
    for stem, suffixes in list(by_stem.items())[:limit]:
        name = stem.rsplit("/", 1)[-1]
        first = "png" if "png" in suffixes else suffixes[0]
        extra = " ".join(_link(f"{stem}.{s}", s.upper()) for s in suffixes if s != first)
        parts.append(_link(f"{stem}.{first}", name) + (f" <span class=\"muted\">({extra})</span>" if extra else ""))
    more = f" and {len(by_stem) - limit} more" if len(by_stem) > limit else ""
    return ", ".join(parts) + more


def index_html(folder: str | os.PathLike, runs: list[dict[str, Any]], extra_files: list[str] = ()) -> str:
    """The index page of ``runs`` (from :func:`find_runs`) under ``folder``, with ``extra_files`` (paths
    relative to the folder) listed as other results."""
    root = Path(folder)
    rows = []
    for r in runs:
        pages = " ".join(_link(p, p.rsplit("/", 1)[-1]) for p in r["pages"]) or '<span class="muted">—</span>'
        folder_link = _link(r["path"] + "/" if r["path"] != "." else "./", r["path"])
        details = []
        if r["headline"]:
            details.append(e(r["headline"]))
        if r["figures"]:
            details.append("figures: " + _figure_links(r["figures"]))
        if r["files"]:
            details.append("files: " + ", ".join(_link(f, f.rsplit("/", 1)[-1]) for f in r["files"][:20])
                           + (f" and {len(r['files']) - 20} more" if len(r["files"]) > 20 else ""))
        rows.append(f"<tr><td>{folder_link}</td><td>{e(r['command'])}</td><td class=\"pages\">{pages}</td>"
                    f"<td>{e(r['model']) or '—'}</td><td>{e(r['dataset']) or '—'}</td><td>{e(r['started'])}</td>"
                    f"<td>{'<br>'.join(details)}</td></tr>")
    pages = [p for r in runs for p in r["pages"]]
    top = "".join(f"<li>{_link(p)}</li>" for p in pages)
    other = "".join(f"<li>{_link(f)}</li>" for f in extra_files)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
        f"<title>clipprobe: {e(root.resolve().name)}</title><style>{_CSS}</style></head><body>"
        f'<header><div class="wrap"><p class="kicker">clipprobe results</p><h1>{e(root.resolve().name)}</h1></div>'
        '</header><div class="wrap">'
        + (f'<section><h2>Pages</h2><ul>{top}</ul></section>' if top else "")
        + '<section><h2>Runs</h2><p class="muted">Every folder with a run record (run.json) under this one: '
          "the command that wrote it, its pages, model and dataset, and its figures and files.</p>"
        + "<table><thead><tr><th>Folder</th><th>Command</th><th>Pages</th><th>Model</th><th>Dataset</th>"
          "<th>Started</th><th>Results</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table></section>"
        + (f"<section><h2>Other results</h2><ul>{other}</ul></section>" if other else "")
        + '<p class="muted">Written by <code>clipprobe index</code>; rerun it after adding runs.</p></div>'
          "</body></html>\n"
    )


def write_index(folder: str | os.PathLike, *, extra_files: list[str] | None = None) -> Path:
    """Write ``folder/index.html`` linking every run folder, page and figure found under ``folder``.

    ``extra_files``: paths relative to ``folder`` listed as other results (default: the PNG, TXT and JSON
    files directly in ``folder``). Raises :class:`~clipprobe.errors.DataError` when ``folder`` is not a
    folder or holds no run."""
    root = Path(folder)
    if not root.exists():
        raise DataError(MSG_NO_FOLDER.format(path=root))
    if not root.is_dir():
        raise DataError(MSG_NOT_FOLDER.format(path=root))
    runs = find_runs(root)
    if not runs:
        raise DataError(MSG_NOTHING.format(path=root))
    if extra_files is None:
        extra_files = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix in (".png", ".txt", ".json")
                             and p.name != RUN_FILE)
    path = root / INDEX_FILE
    write_text(path, index_html(root, runs, list(extra_files)))
    log.info("wrote %s: %d run folders, %d pages", path, len(runs), sum(len(r["pages"]) for r in runs))
    return path
