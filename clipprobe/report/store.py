"""The report folder: its one schema, writing it from tables, and reading it back.

A report folder holds ``groups.parquet`` (one row per word, attribute and group), ``words.parquet``
(one row per word and attribute), ``summary.csv`` (per category and attribute), ``figures/``,
``report.html`` and ``run.json`` (the shared run record of :mod:`clipprobe.runinfo`). The columns
are those of :class:`clipprobe.analysis.probe.ReportTables` (their producer defines them; this module
writes and checks them). Figures, the HTML page and model comparisons are computed from these files
alone, so they can be regenerated without the model or the embeddings.

:func:`clipprobe.report.writer.write_report` writes a folder; ``run.json`` is written last and
records the SHA-256 of each table; :func:`load_report` refuses a
folder whose tables do not match it (a run killed while replacing an older report's files leaves
such a mixed folder), so a half-replaced report is never drawn or compared.

A word's ``category`` is a list of strings (a word listed in two categories has both), stored as a
parquet list column; :func:`explode_categories` gives one row per category for per-category
aggregates. The summary's ``top_groups`` is a list of ``{"group", "mean_skew"}`` records, stored in
``summary.parquet``; ``summary.csv`` (for spreadsheets) writes both as text (``"a; b"``,
``"group (+0.42); ..."``). Folders written before (categories joined by ``"; "``, no
``summary.parquet``) are read into the same types.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from clipprobe.analysis.probe import CATEGORY_SEP, GROUP_COLUMNS, SUMMARY_COLUMNS, WORD_COLUMNS
from clipprobe.errors import ClipprobeError, DataError
from clipprobe.faces import ordered_attributes

log = logging.getLogger(__name__)

FORMAT_VERSION = 2   # 2: run.json is the shared run record, with table checksums
RUN_KEYS = ("format_version", "k")
FILES = {"groups": "groups.parquet", "words": "words.parquet", "summary": "summary.csv", "run": "run.json",
         "summary_table": "summary.parquet"}
TABLE_FILES = ("groups", "words", "summary", "summary_table")
REQUIRED_FILES = ("groups", "words", "summary", "run")     # summary.parquet: in folders written since it exists

MSG_NO_FOLDER = "report folder {path} does not exist"
MSG_NOT_FOLDER = "report folder {path} is not a folder"
MSG_NO_FILE = "report folder {path} has no {name} (is it the output of `clipprobe report`?)"
MSG_BAD_JSON = "run.json in report folder {path} is not valid JSON: {error}"
MSG_BAD_VERSION = (
    "report folder {path} has format_version {found!r}; this clipprobe reads format_version {expected}"
)
MSG_MISSING_COLUMNS = "{name} in report folder {path} lacks columns: {columns}"
MSG_MISSING_KEYS = "run.json in report folder {path} lacks keys: {keys}"
MSG_BAD_TABLE = "{name} in report folder {path} cannot be read: {error}"
MSG_MIXED = ("report folder {path} is incomplete or mixed: {name} does not match run.json (a run was interrupted "
             "while writing it?); rerun the report into this folder or a new one")
MSG_OUT_NOT_FOLDER = "report folder {path} exists and is not a folder"
MSG_OUT_UNDER_FILE = "report folder {path} cannot be made: {parent} is a file, not a folder"
MSG_OUT_UNREADABLE = "report folder {path}: run.json is unreadable ({error})"
MSG_OUT_OTHER_VERSION = ("report folder {path} was written with report format {found!r}; this clipprobe writes "
                         "format {expected}: use a new output folder")


@dataclasses.dataclass(frozen=True)
class Report:
    """The tables and run record of one report folder."""

    path: Path
    groups: Any  # pandas.DataFrame
    words: Any  # pandas.DataFrame
    summary: Any  # pandas.DataFrame
    run: dict

    @property
    def model_spec(self) -> str:
        """The model spec recorded in run.json (the folder name when there is none)."""
        model = self.run.get("model")
        if isinstance(model, dict) and model.get("spec"):
            return str(model["spec"])
        if isinstance(model, str) and model:
            return model
        return self.path.name

    @property
    def model_label(self) -> str:
        """A short name of the model for titles: ``ARCH:file name`` for a local weights file, else the spec."""
        from clipprobe.report.retrieval import model_label

        model = self.run.get("model")
        if isinstance(model, dict) and model.get("kind") == "file":
            return model_label(model)
        return self.model_spec

    @property
    def attributes(self) -> list[str]:
        """Attributes present in the report, in the canonical order first."""
        return ordered_attributes(self.words["attribute"].astype(str))

    @property
    def categories(self) -> list[str]:
        """Every category of the report (a word's joined categories split apart), sorted."""
        return split_categories(self.words["category"])

    def groups_of(self, attribute: str) -> list[str]:
        """The groups of one attribute in the order they appear in groups.parquet."""
        rows = self.groups[self.groups["attribute"] == attribute]
        return list(dict.fromkeys(rows["group"].astype(str)))


def categories_of(value) -> list[str]:
    """One row's categories as a list: a list or array as it is, a ``"; "``-joined string (a report folder
    written before categories were lists) split."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(CATEGORY_SEP.strip()) if p.strip()]
    if value is None or (isinstance(value, float) and value != value):
        return []
    return [str(v) for v in value]


def category_text(value) -> str:
    """One row's categories as text: ``"a; b"``."""
    return CATEGORY_SEP.join(categories_of(value))


def split_categories(values) -> list[str]:
    """Sorted distinct categories in a ``category`` column (lists, or ``"; "``-joined strings)."""
    out: set[str] = set()
    for value in values:
        out.update(categories_of(value))
    return sorted(out)


def explode_categories(df):
    """One row per category: a row whose categories are ``["a", "b"]`` becomes two rows."""
    out = df.copy()
    out["category"] = [categories_of(v) for v in out["category"]]
    return out.explode("category", ignore_index=True)


def top_groups_of(value) -> list[dict]:
    """One summary row's ``top_groups`` as ``[{"group", "mean_skew"}]``: records as they are (from parquet or
    memory), or parsed from the text of summary.csv (``"g (+0.42); h (-0.10)"``; a name without a value,
    as very old folders wrote, gets ``mean_skew`` None)."""
    import re

    if isinstance(value, str):
        out = []
        for part in value.split(CATEGORY_SEP.strip()):
            part = part.strip()
            if not part:
                continue
            m = re.match(r"^(.*) \(([+-]?(?:\d+(?:\.\d*)?|inf|nan))\)$", part)
            out.append({"group": m.group(1), "mean_skew": float(m.group(2))} if m else
                       {"group": part, "mean_skew": None})
        return out
    if value is None or (isinstance(value, float) and value != value):
        return []
    return [{"group": str(r["group"]), "mean_skew": None if r.get("mean_skew") is None else float(r["mean_skew"])}
            for r in value]


def top_groups_text(value) -> str:
    """``top_groups`` as text: ``"g (+0.42); h (-0.10)"``."""
    return CATEGORY_SEP.join(f"{r['group']} ({r['mean_skew']:+.2f})" if r["mean_skew"] is not None else r["group"]
                             for r in top_groups_of(value))


def summary_csv_frame(summary):
    """The summary as summary.csv writes it: ``top_groups`` as text."""
    return summary.assign(top_groups=[top_groups_text(v) for v in summary["top_groups"]])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def table_checksums(folder) -> dict[str, str]:
    """SHA-256 of each table file of a report folder (what run.json records under ``files``)."""
    folder = Path(folder)
    return {FILES[key]: _sha256(folder / FILES[key]) for key in TABLE_FILES if (folder / FILES[key]).is_file()}


def check_out_folder(out) -> None:
    """Refuse to write a report into a path that is a file or into a folder of another report format."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ClipprobeError(MSG_OUT_NOT_FOLDER.format(path=out))
    for parent in out.parents:  # a file in the way is found now, not after the long part
        if parent.exists():
            if not parent.is_dir():
                raise ClipprobeError(MSG_OUT_UNDER_FILE.format(path=out, parent=parent))
            break
    run = out / FILES["run"]
    if run.exists():
        try:
            found = json.loads(run.read_text(encoding="utf-8")).get("format_version")
        except (OSError, ValueError, AttributeError) as err:
            raise ClipprobeError(MSG_OUT_UNREADABLE.format(path=out, error=err)) from None
        if found != FORMAT_VERSION:
            raise ClipprobeError(MSG_OUT_OTHER_VERSION.format(path=out, found=found, expected=FORMAT_VERSION))


def load_report(path) -> Report:
    """Read a report folder, checking its files, format version, columns and checksums.

    Raises :class:`~clipprobe.errors.DataError` naming the folder and the problem for a missing
    folder or file, an unreadable table, a ``format_version`` other than :data:`FORMAT_VERSION`,
    missing columns, or tables that do not match run.json (a mixed or half-written folder).
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(MSG_NO_FOLDER.format(path=path))
    if not path.is_dir():
        raise DataError(MSG_NOT_FOLDER.format(path=path))
    for key in REQUIRED_FILES:
        if not (path / FILES[key]).is_file():
            raise DataError(MSG_NO_FILE.format(path=path, name=FILES[key]))

    try:
        run = json.loads((path / FILES["run"]).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(MSG_BAD_JSON.format(path=path, error=err)) from None
    if not isinstance(run, dict):
        raise DataError(MSG_BAD_JSON.format(path=path, error="not a JSON object"))
    found = run.get("format_version")
    if found != FORMAT_VERSION:
        raise DataError(MSG_BAD_VERSION.format(path=path, found=found, expected=FORMAT_VERSION))
    missing_keys = [k for k in (*RUN_KEYS, "files") if k not in run]
    if missing_keys:
        raise DataError(MSG_MISSING_KEYS.format(path=path, keys=", ".join(missing_keys)))

    recorded = run.get("files") if isinstance(run.get("files"), dict) else {}
    structured = FILES["summary_table"] in recorded    # summary.parquet, with top_groups as records
    tables = {}
    for key, columns in (("groups", GROUP_COLUMNS), ("words", WORD_COLUMNS),
                         ("summary_table" if structured else "summary", SUMMARY_COLUMNS)):
        name = FILES[key]
        if not (path / name).is_file():
            raise DataError(MSG_NO_FILE.format(path=path, name=name))
        try:
            if name.endswith(".csv"):
                from clipprobe._io import csv_unprotected

                df = csv_unprotected(pd.read_csv(path / name, keep_default_na=True))
            else:
                df = pd.read_parquet(path / name)
        except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
            raise DataError(MSG_BAD_TABLE.format(name=name, path=path, error=err)) from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(MSG_MISSING_COLUMNS.format(name=name, path=path, columns=", ".join(missing)))
        tables["summary" if key == "summary_table" else key] = df
    for key in TABLE_FILES:
        name = FILES[key]
        if key == "summary_table" and not structured:
            continue
        if recorded.get(name) != _sha256(path / name):
            raise DataError(MSG_MIXED.format(path=path, name=name))

    for key in ("groups", "words"):
        for col in ("word", "attribute"):
            tables[key][col] = tables[key][col].astype(str)
        tables[key]["category"] = [categories_of(v) for v in tables[key]["category"]]
    tables["summary"]["top_groups"] = [top_groups_of(v) for v in tables["summary"]["top_groups"]]
    tables["groups"]["group"] = tables["groups"]["group"].astype(str)
    tables["groups"]["flagged"] = tables["groups"]["flagged"].astype(bool)
    tables["summary"]["category"] = tables["summary"]["category"].astype(str)
    tables["summary"]["attribute"] = tables["summary"]["attribute"].astype(str)
    log.debug("loaded report %s: %d words, %d group rows", path, len(tables["words"]), len(tables["groups"]))
    return Report(path=path, groups=tables["groups"], words=tables["words"], summary=tables["summary"], run=run)
