"""The sweep folder's tables, figures and HTML page.

A sweep folder (written by :func:`clipprobe.pipeline.sweep.run_sweep`, one shard or many)::

    DIR/sweep.json                      the settings every shard ran with (shards refuse other settings)
    DIR/models/<model key>/run.json     one model: status ("ok" or "failed" with its reason), metadata, timings
    DIR/models/<model key>/report/      the So-B-IT report of that model (``clipprobe report``'s folder)
    DIR/models/<model key>/eat/         its association tests (``clipprobe eat``'s folder)
    DIR/shards/<i>-of-<n>/run.json      what each shard did (models done, skipped, failed; timings)
    DIR/sweep.parquet, DIR/models.parquet, DIR/run.json      written by ``sweep merge``
    DIR/analysis/                       written by ``sweep analyze``: analysis.parquet, figures/, analysis.html,
                                        run.json

``sweep.parquet`` (:data:`SWEEP_COLUMNS` plus the metadata columns :data:`META_COLUMNS` and any performance
columns of a user model table): one row per model and association test (``probe = "eat"``, ``measure =
"effect_size"``, ``test`` and ``order`` the test's), and per model, report measure, category and attribute
(``probe = "report"``, ``measure`` one of :data:`REPORT_MEASURES`, ``test`` the So-B-IT category or
``all``, ``order`` the attribute; ``value`` the mean over the category's words). Both models of a pair that
loads one checkpoint keep their rows; ``duplicate_of`` marks the one an analysis leaves out. ``user_columns``
names the metadata a model table gave. ``models.parquet``: one row per model with its status, reason and
timings; failed and unknown models are listed there, never dropped.

``DIR/analysis/`` (replaced whole by each ``sweep analyze``): ``analysis.parquet`` (:data:`ANALYSIS_COLUMNS`),
``mixedlm-<probe>-<measure>.csv`` (each fit in the layout of the paper's table), ``figures/``,
``analysis.html``, ``run.json`` (with the sign convention, the pairs counted once and the metadata refreshed).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from clipprobe.errors import ClipprobeError, DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SETTINGS_FILE = "sweep.json"
SWEEP_FILE = "sweep.parquet"
MODELS_FILE = "models.parquet"
MODELS_DIR = "models"
SHARDS_DIR = "shards"
ANALYSIS_DIR = "analysis"
ANALYSIS_FILE = "analysis.parquet"
HTML_FILE = "analysis.html"
RUN_FILE = "run.json"

REPORT_MEASURES = ("max_skew", "max_skew_excess", "min_skew", "min_skew_excess", "norm_entropy_mm", "ndkl_at_k",
                   "share_flagged", "share_flagged_vs_controls")
ALL_CATEGORIES = "all"
SWEEP_COLUMNS = ("model", "model_key", "probe", "measure", "test", "order", "category", "value", "ci_low", "ci_high",
                 "p_value", "q_value", "n")
META_COLUMNS = ("arch", "tag", "kind", "arch_family", "params_image_m", "params_text_m", "params_total_m",
                "params_source", "dataset", "dataset_family", "dataset_size", "samples_seen", "imagenet1k", "avg38",
                "vtab", "vtab_plus", "precision", "duplicate_of", "user_columns")
MODEL_COLUMNS = ("model", "model_key", "status", "reason", "shard", "seconds", "arch_family", "dataset_family",
                 "params_total_m", "dataset_size", "performance_note", "duplicate_of")
# coefficients: term ... kind; random: component, estimate, std_error; correlations: test ... spearman_q; notes: note
ANALYSIS_COLUMNS = ("section", "probe", "measure", "term", "estimate", "std_error", "z", "p_value", "ci_low",
                    "ci_high", "kind", "test", "order", "performance", "n_models", "pearson_r", "pearson_p",
                    "pearson_q", "spearman_rho", "spearman_p", "spearman_q", "component", "note")

MSG_NOT_A_SWEEP = "{path} is not a sweep folder (no {file}); run `clipprobe sweep ... --out {path}` first"
MSG_NOT_MERGED = "{path} has no {file}; run `clipprobe sweep merge {path}` first"
MSG_BAD_FILE = "{path} cannot be read: {error}"
MSG_NOT_ANALYSIS = ("{path} exists and is not a `sweep analyze` folder (no run.json of that command); give another "
                    "out folder")


# --------------------------------------------------------------------------- tables


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(MSG_BAD_FILE.format(path=path, error=f"{what}: {err}")) from None


def report_rows(words: "pd.DataFrame") -> "pd.DataFrame":
    """Per (measure, category, attribute) the mean over the category's words (and over all words, category
    ``all``), from a report's ``words.parquet``."""
    import pandas as pd

    from clipprobe.report.store import explode_categories

    w = words.copy()
    w["share_flagged"] = (w["n_flagged"] > 0).astype(float)
    w["share_flagged_vs_controls"] = (w["n_flagged_vs_controls"] > 0).astype(float)
    measures = [m for m in REPORT_MEASURES if m in w.columns]
    exploded = explode_categories(w)
    frames = []
    for part in (exploded, w.assign(category=ALL_CATEGORIES)):
        g = part.groupby(["category", "attribute"], sort=True)
        means = g[measures].mean()
        counts = g.size()
        long = means.stack(future_stack=True).rename("value").reset_index()
        long = long.rename(columns={long.columns[2]: "measure"})
        long["n"] = [int(counts[(c, a)]) for c, a in zip(long["category"], long["attribute"])]
        frames.append(long)
    out = pd.concat(frames, ignore_index=True)
    return pd.DataFrame({"probe": "report", "measure": out["measure"], "test": out["category"],
                         "order": out["attribute"], "category": out["category"], "value": out["value"].astype(float),
                         "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "q_value": math.nan,
                         "n": out["n"].astype("int64")})


def eat_rows(table: "pd.DataFrame") -> "pd.DataFrame":
    """One row per computed association test, from an ``eat.parquet``."""
    import pandas as pd

    t = table[table["available"]]
    return pd.DataFrame({"probe": "eat", "measure": "effect_size", "test": t["test"].astype(str),
                         "order": t["order"].astype(str), "category": t["family"].fillna("").astype(str),
                         "value": t["effect_size"].astype(float), "ci_low": t["effect_ci_low"].astype(float),
                         "ci_high": t["effect_ci_high"].astype(float), "p_value": t["p_value"].astype(float),
                         "q_value": t["q_value"].astype(float),
                         "n": (t["n_x"] + t["n_y"]).astype("int64")}).reset_index(drop=True)


def model_table(model_dir: Path, record: Mapping[str, Any], extra_columns: Sequence[str] = ()) -> "pd.DataFrame":
    """The long rows of one finished model folder, with its metadata columns."""
    import pandas as pd

    frames = []
    if (model_dir / "report" / "words.parquet").is_file():
        from clipprobe.report.store import load_report

        frames.append(report_rows(load_report(model_dir / "report").words))
    if (model_dir / "eat" / "eat.parquet").is_file():
        from clipprobe.report.eat import load_eat

        frames.append(eat_rows(load_eat(model_dir / "eat")[0]))
    if not frames:
        return pd.DataFrame(columns=list(SWEEP_COLUMNS))
    rows = pd.concat(frames, ignore_index=True)
    meta = record.get("metadata") or {}
    rows.insert(0, "model_key", record.get("model_key"))
    rows.insert(0, "model", record.get("spec"))
    for c in list(META_COLUMNS) + [c for c in extra_columns if c not in META_COLUMNS]:
        rows[c] = meta.get(c)
    return rows


def finish_sweep_table(frames: list["pd.DataFrame"], extra_columns: Sequence[str] = ()) -> "pd.DataFrame":
    """Join the models' rows into one table with a fixed column order and a deterministic row order."""
    import pandas as pd

    columns = list(SWEEP_COLUMNS) + list(META_COLUMNS) + [c for c in extra_columns if c not in META_COLUMNS]
    frames = [f for f in frames if len(f)]
    # no rows (every model failed): the same column types as a table with rows
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame({c: pd.Series(dtype=object) for c in columns})
    for c in columns:
        if c not in df.columns:
            df[c] = None
    numeric = ("value", "ci_low", "ci_high", "p_value", "q_value", "params_image_m", "params_text_m",
               "params_total_m", "dataset_size", "samples_seen", "imagenet1k", "avg38", "vtab", "vtab_plus",
               *extra_columns)
    for c in numeric:
        df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64")
    df["n"] = pd.to_numeric(df["n"], errors="coerce").fillna(0).astype("int64")
    for c in columns:
        if c not in numeric and c != "n":
            df[c] = df[c].astype(object).where(df[c].notna(), None)
    df = df[columns].sort_values(["probe", "measure", "test", "order", "model_key"], kind="stable")
    return df.reset_index(drop=True)


def load_sweep_table(folder: str | Path) -> "pd.DataFrame":
    import pandas as pd

    path = Path(folder) / SWEEP_FILE
    if not path.is_file():
        raise DataError(MSG_NOT_MERGED.format(path=folder, file=SWEEP_FILE))
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as err:
        raise DataError(MSG_BAD_FILE.format(path=path, error=err)) from None


def analysis_table(sections: Mapping[str, "pd.DataFrame"]) -> "pd.DataFrame":
    """One long table of every section (coefficients, random effects, correlations, notes)."""
    import pandas as pd

    frames = []
    for name, df in sections.items():
        if df is None or not len(df):
            continue
        part = df.copy()
        part.insert(0, "section", name)
        frames.append(part)
    out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(ANALYSIS_COLUMNS))
    for c in ANALYSIS_COLUMNS:
        if c not in out.columns:
            out[c] = None
    out = out[list(ANALYSIS_COLUMNS)]
    for c in ("estimate", "std_error", "z", "p_value", "ci_low", "ci_high", "pearson_r", "pearson_p", "pearson_q",
              "spearman_rho", "spearman_p", "spearman_q"):
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64")
    out["n_models"] = pd.to_numeric(out["n_models"], errors="coerce").astype("Int64")
    for c in ("section", "probe", "measure", "term", "kind", "test", "order", "performance", "component", "note"):
        out[c] = out[c].astype(object).where(out[c].notna(), None)
    return out


# --------------------------------------------------------------------------- figures


def coefficient_plot(coefficients: "pd.DataFrame", *, ax=None, title: str | None = None):
    """Fixed effects (not the intercept) with their intervals, one row per term; returns the Axes."""
    from matplotlib.lines import Line2D

    from clipprobe.report import figures as F

    coefs = coefficients[coefficients["term"] != "Intercept"].reset_index(drop=True)
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, 1.2 + 0.22 * max(1, len(coefs)))
        y = list(range(len(coefs)))[::-1]
        significant = coefs["p_value"] <= 0.05
        for yi, (_, r), sig in zip(y, coefs.iterrows(), significant):
            colour = F.OKABE_ITO[1] if sig else F.OKABE_ITO[0]
            ax.plot([r["ci_low"], r["ci_high"]], [yi, yi], color=colour, linewidth=F.scaled(1.2))
            ax.plot([r["estimate"]], [yi], "o", color=colour, markersize=F.scaled(3.5))
        ax.axvline(0, color="0.5", linewidth=F.scaled(0.6), linestyle="--")
        ax.set_yticks(y)
        ax.set_yticklabels([F.short(t, 36) for t in coefs["term"]])
        ax.set_xlabel("coefficient, 95% interval")
        handles = [Line2D([], [], marker="o", color=F.OKABE_ITO[1], ms=F.scaled(3.5), label="p <= 0.05"),
                   Line2D([], [], marker="o", color=F.OKABE_ITO[0], ms=F.scaled(3.5), label="p > 0.05")]
        ax.figure.legend(handles=handles, loc="outside lower center", ncol=2, handletextpad=0.3)
        if title:
            ax.set_title(F.literal(title), loc="left", y=1.0, pad=6.0)
    return ax


def scatter_plot(df: "pd.DataFrame", performance: str, *, ax=None, title: str | None = None,
                 label: str | None = None, ylabel: str = "value"):
    """Bias (``value``) against a performance column, one point per model, coloured by dataset family;
    returns the Axes."""
    from clipprobe.report import figures as F

    data = df[[performance, "value", "dataset_family"]].dropna(subset=[performance, "value"])
    with F.style():
        if ax is None:
            ax = F.new_axes(F.COLUMN_WIDTH, F.COLUMN_WIDTH * 0.9)
        for i, (family, part) in enumerate(sorted(data.groupby(data["dataset_family"].fillna("unknown")),
                                                  key=lambda kv: str(kv[0]))):
            colour, marker = F.series_style(i)
            ax.scatter(part[performance], part["value"], s=F.scaled(10), color=colour, marker=marker,
                       label=F.short(family, 24))
        ax.set_xlabel(F.literal(label or performance))
        ax.set_ylabel(F.literal(ylabel))
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.figure.legend(handles, labels, loc="outside lower center", ncol=F._legend_columns(ax.figure, labels),
                             handletextpad=0.1, columnspacing=0.8)
        if title:
            ax.set_title(F.literal(title), loc="left", y=1.0, pad=6.0)
    return ax


# --------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    if not math.isfinite(v):
        return "—"
    return f"{v:.2g}" if v != 0 and abs(v) < 10 ** -digits else f"{v:.{digits}f}"


def _png(ax) -> str:
    from clipprobe.report.figures import png_bytes

    return base64.b64encode(png_bytes(ax.figure)).decode("ascii")


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


CSS = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}"
       "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border-bottom:1px solid #ddd;padding:2px 8px;"
       "text-align:left;font-size:0.9em}th{background:#f4f4f4}.note{color:#555}img{max-width:100%}")


def model_description(fits: Sequence[Mapping[str, Any]], record: Mapping[str, Any] | None = None) -> str:
    """One sentence on the model fitted (from the first fit's settings) and the sign convention."""
    settings = next((item["fit"].settings for item in fits if item.get("fit") is not None), None)
    text = ("Mixed model (statsmodels MixedLM, REML): value ~ log_params + architecture_family + dataset_family + "
            "log_dataset_size")
    if settings is not None:
        units = ("log sizes z-scored (a coefficient per standard deviation)" if settings.size_units == "sd" else
                 "log10 sizes, centred (a coefficient per tenfold)")
        groups = "test family x order" if settings.groups == "family" else "test x order"
        pooled = " and ".join(f.replace("_", " ").replace("arch", "architecture") for f in settings.pool) or "none"
        text += (f"; {units}; groups = {groups}; random intercept and slopes on the size terms; families pooled as "
                 f"Other below {settings.min_family_rows} rows or {settings.min_family_models} checkpoints: "
                 f"{pooled}")
    text += " (Ghate et al., NAACL 2025)."
    signs = (record or {}).get("signs") or {}
    if signs.get("flipped"):
        text += (f" Effect sizes in the {'paper' if signs.get('convention') == 'paper' else 'raw'} sign: "
                 f"{len(signs['flipped'])} test(s) multiplied by -1 ({', '.join(signs['flipped'])}).")
    elif signs.get("convention") == "paper" and signs.get("stored") == "paper":
        text += " Effect sizes in the paper's sign, as the sweep stored them (targets swapped when it ran)."
    same = (record or {}).get("same_checkpoint") or {}
    if same:
        text += f" {len(same)} model(s) load the same checkpoint as another and count once."
    return text


def analysis_html(*, title: str, fits: Sequence[Mapping[str, Any]], correlations: "pd.DataFrame | None",
                  performance: str | None, models: "pd.DataFrame", scatter: Sequence[tuple[str, str]] = (),
                  record: Mapping[str, Any] | None = None) -> str:
    """The analysis page: every string from the sweep (model names, tests, notes) escaped.

    ``fits``: dicts with ``probe``, ``measure``, ``fit`` (a FactorFit or None), ``error`` (why not),
    ``plot`` (base64 PNG or None); ``scatter``: (caption, base64 PNG) pairs.
    """
    parts = [(f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title>"
              f"<style>{CSS}</style></head><body>"), f"<h1>{_e(title)}</h1>"]
    ok = models[models["status"] == "ok"] if len(models) else models
    parts.append(f"<p>{len(ok)} of {len(models)} models finished. {_e(model_description(fits, record))}</p>")
    for item in fits:
        parts.append(f"<h2>{_e(item['probe'])}: {_e(item['measure'])}</h2>")
        fit = item.get("fit")
        if fit is None:
            parts.append(f"<p class='note'>Not fitted: {_e(item.get('error'))}</p>")
            continue
        parts.append(f"<p>{fit.n_rows} rows, {fit.n_models} models, {fit.n_groups} groups; references: "
                     + ", ".join(f"{_e(k.replace('_', ' '))} = {_e(v)}" for k, v in fit.references.items())
                     + ("" if fit.converged else "; <strong>did not converge</strong>") + ".</p>")
        if fit.notes:
            parts.append("<ul class='note'>" + "".join(f"<li>{_e(n)}</li>" for n in fit.notes) + "</ul>")
        if item.get("plot"):
            parts.append(f"<figure><img alt='coefficients of {_e(item['measure'])}' "
                         f"src='data:image/png;base64,{item['plot']}'></figure>")
        rows = [[_e(r.term), _num(r.estimate), _num(r.std_error), _num(r.z, 2), _num(r.p_value),
                 f"[{_num(r.ci_low)}, {_num(r.ci_high)}]"] for r in fit.coefficients.itertuples(index=False)]
        parts.append(_table(["term", "estimate", "SE", "z", "p", "95% interval"], rows))
        rows = [[_e(r.component), _num(r.estimate, 4), _num(r.std_error, 4)] for r in fit.random.itertuples(index=False)]
        parts.append(_table(["random effect (co)variance", "estimate", "SE"], rows))
    if correlations is not None and len(correlations):
        parts.append(f"<h2>Correlation with {_e(performance)}</h2><p>Pearson and Spearman across models (one point "
                     "per checkpoint; n: the models with both values); two-sided p; q: Benjamini-Hochberg over the "
                     "table.</p>")
        rows = [[_e(r.probe), _e(r.measure), _e(r.test), _e(r.order), str(r.n_models), _num(r.pearson_r),
                 _num(r.pearson_p), _num(r.pearson_q), _num(r.spearman_rho), _num(r.spearman_p), _num(r.spearman_q)]
                for r in correlations.itertuples(index=False)]
        parts.append(_table(["probe", "measure", "test", "order", "models", "r", "p", "q", "rho", "p", "q"], rows))
    for caption, png in scatter:
        parts.append(f"<figure><img alt='{_e(caption)}' src='data:image/png;base64,{png}'>"
                     f"<figcaption>{_e(caption)}</figcaption></figure>")
    failed = models[models["status"] != "ok"] if len(models) else models
    if len(failed):
        parts.append("<h2>Models that did not finish</h2>")
        parts.append(_table(["model", "status", "reason"],
                            [[_e(r.model), _e(r.status), _e(r.reason)] for r in failed.itertuples(index=False)]))
    if record:
        parts.append(f"<p class='note'>clipprobe {_e(record.get('clipprobe_version'))}, "
                     f"{_e(record.get('started'))}.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- writing the folder


def slug(text: str) -> str:
    """A file-name part from any text (tests, measures, orders): safe characters only, at most 60."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-")[:60] or "x"


def create_settings_file(out: Path, payload: Mapping[str, Any]) -> Path:
    """Create ``out/sweep.json`` with ``payload`` unless it exists: two shards starting together agree on one
    file (it is made by a hard link, which fails when the file is there). Returns its path."""
    from clipprobe import _io

    path = Path(out) / SETTINGS_FILE
    if path.exists():
        return path
    _io.check_writable(out)
    tmp = out / f".{SETTINGS_FILE}.{os.getpid()}.tmp"
    _io.write_json(tmp, payload)
    try:
        os.link(tmp, path)          # create only if absent
    except FileExistsError:
        pass
    except OSError:                 # a file system without hard links
        if not path.exists():
            _io.write_json(path, payload)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_settings_file(out: Path, payload: Mapping[str, Any]) -> Path:
    """Replace ``out/sweep.json`` with ``payload`` (new content of the input files recorded)."""
    from clipprobe import _io

    path = Path(out) / SETTINGS_FILE
    _io.write_json(path, payload)
    return path


def model_dir(out: Path, key: str) -> Path:
    """The folder of one model of a sweep."""
    return Path(out) / MODELS_DIR / key


def write_model_record(out: Path, key: str, record: Mapping[str, Any]) -> Path:
    """``out/models/<key>/run.json``: one model's status, metadata and timings."""
    from clipprobe import _io

    path = model_dir(out, key) / RUN_FILE
    _io.write_json(path, record)
    return path


def write_shard_record(out: Path, shard: tuple[int, int], record: Mapping[str, Any]) -> Path:
    """``out/shards/<i>-of-<n>/run.json``: what one shard did."""
    from clipprobe import _io

    path = Path(out) / SHARDS_DIR / f"{shard[0]}-of-{shard[1]}" / RUN_FILE
    _io.write_json(path, record)
    return path


def write_merged(target: Path, table: "pd.DataFrame", models: "pd.DataFrame", record: dict) -> list[Path]:
    """``sweep.parquet``, ``models.parquet`` and the merge's ``run.json`` (its ``timings_s`` gain ``write``)."""
    from clipprobe import _io
    from clipprobe.runinfo import StageTimer

    target = Path(target)
    timer = StageTimer()
    with timer("write"):
        _io.write_parquet(target / SWEEP_FILE, table)
        _io.write_parquet(target / MODELS_FILE, models)
    record["timings_s"] = {**record.get("timings_s", {}), **timer.as_dict()}
    _io.write_json(target / RUN_FILE, record)
    return [target / SWEEP_FILE, target / MODELS_FILE, target / RUN_FILE]


def _replace_folder(tmp: Path, target: Path) -> None:
    """Put the folder ``tmp`` where ``target`` is (an earlier analysis is replaced whole)."""
    if target.exists():
        record = read_json(target / RUN_FILE, "analysis record") if (target / RUN_FILE).is_file() else {}
        if any(target.iterdir()) and record.get("command") != "sweep analyze":
            shutil.rmtree(tmp, ignore_errors=True)
            raise ClipprobeError(MSG_NOT_ANALYSIS.format(path=target))
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)


def write_analysis(target: str | os.PathLike, *, long: "pd.DataFrame", fits: Mapping[str, Any],
                   table: "pd.DataFrame", correlations: "pd.DataFrame | None", performance: str | None,
                   performance_column: str | None, models: "pd.DataFrame", record: Mapping[str, Any], title: str,
                   figures: bool = True, max_scatter: int = 12) -> list[Path]:
    """The ``sweep analyze`` folder ``target``, replaced whole (a folder that is not an earlier analysis is
    refused): ``analysis.parquet`` (``long``), ``mixedlm-<probe>-<measure>.csv`` per fit, with ``figures`` the
    coefficient plots and the ``max_scatter`` strongest correlations (by Pearson p) against
    ``performance_column`` of ``table``, ``analysis.html`` and ``run.json`` (``record``).

    ``fits``: ``probe:measure`` -> FactorFit. Returns the files written."""
    from clipprobe import _io
    from clipprobe.analysis.factors import paper_table
    from clipprobe.models.zoo import PERFORMANCE_LABELS

    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    written: list[str] = []
    try:
        _io.write_parquet(tmp / ANALYSIS_FILE, long)
        written.append(ANALYSIS_FILE)
        for key, fit in fits.items():
            name = f"mixedlm-{slug(key.replace(':', '-'))}.csv"
            _io.write_text(tmp / name, paper_table(fit).to_csv(float_format="%.6g", lineterminator="\n"))
            written.append(name)
        scatter_png: list[tuple[str, str]] = []
        html_fits = []
        if figures:
            from clipprobe.report.figures import save_figure
        for key, fit in fits.items():
            probe, _, measure = key.partition(":")
            png = None
            if figures:
                ax = coefficient_plot(fit.coefficients, title=f"{probe}: {measure}")
                paths = save_figure(ax.figure, tmp / "figures" / f"coefficients-{probe}-{slug(measure)}")
                written += [str(p.relative_to(tmp)) for p in paths]
                png = _png(ax)
            html_fits.append({"probe": probe, "measure": measure, "fit": fit, "plot": png})
        if figures and correlations is not None:
            ranked = correlations.dropna(subset=["pearson_r"]).sort_values("pearson_p", kind="stable")
            for r in ranked.head(max_scatter).itertuples(index=False):
                rows = table[(table["probe"] == r.probe) & (table["measure"] == r.measure)
                             & (table["test"] == r.test) & (table["order"] == r.order)]
                caption = (f"{r.probe} {r.measure}: {r.test} ({r.order}) against {performance}: n = {r.n_models}, "
                           f"r = {r.pearson_r:.2f}, q = {r.pearson_q:.2g}")
                ax = scatter_plot(rows, performance_column, title=f"{r.test} ({r.order})",
                                  label=PERFORMANCE_LABELS.get(performance_column, performance),
                                  ylabel=f"{r.measure.replace('_', ' ')} ({r.probe})")
                paths = save_figure(ax.figure, tmp / "figures" / f"scatter-{slug(r.probe)}-{slug(r.measure)}-"
                                    f"{slug(r.test)}-{slug(r.order)}", formats=("png",))
                written += [str(p.relative_to(tmp)) for p in paths]
                scatter_png.append((caption, _png(ax)))
        page = analysis_html(title=title, fits=html_fits, correlations=correlations, performance=performance,
                             models=models, scatter=scatter_png, record=record)
        _io.write_text(tmp / HTML_FILE, page)
        written.append(HTML_FILE)
        _io.write_json(tmp / RUN_FILE, dict(record))
        written.append(RUN_FILE)
        _replace_folder(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [target / w for w in written]


__all__ = ["ANALYSIS_COLUMNS", "META_COLUMNS", "MODEL_COLUMNS", "REPORT_MEASURES", "SWEEP_COLUMNS", "analysis_html",
           "analysis_table", "coefficient_plot", "create_settings_file", "eat_rows", "finish_sweep_table",
           "load_sweep_table", "model_dir", "model_description", "model_table", "report_rows", "scatter_plot", "slug",
           "write_analysis", "write_merged", "write_model_record", "write_settings_file", "write_shard_record"]
