"""Read and check a report folder written by ``clipprobe report``.

A report folder holds ``groups.parquet`` (one row per word, attribute and
group), ``words.parquet`` (one row per word and attribute), ``summary.csv``
(per category and attribute) and ``run.json`` (how it was made). Figures, the
HTML page and model comparisons are computed from these files alone, so they
can be regenerated without the model or the embeddings.

A word listed in two categories keeps both in its ``category`` field, joined by
``"; "``; :func:`explode_categories` gives one row per category for per-category
aggregates.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from clipprobe.errors import DataError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CATEGORY_SEP = "; "
ATTRIBUTES = ("race", "gender", "age", "race_gender")

GROUP_COLUMNS = (
    "word", "category", "attribute", "group", "k", "count", "share", "base_share", "skew",
    "p_over", "p_under", "q_over", "flagged", "share_ci_low", "share_ci_high",
    "skew_ci_low", "skew_ci_high", "c_asc", "skew_vs_neutral",
)
WORD_COLUMNS = (
    "word", "category", "attribute", "prompts", "max_skew", "min_skew", "norm_entropy",
    "kl_to_base", "ndkl", "top_group", "max_skew_ci_low", "max_skew_ci_high",
    "norm_entropy_ci_low", "norm_entropy_ci_high", "stability", "top_files", "n_flagged",
)
SUMMARY_COLUMNS = (
    "category", "attribute", "n_words", "mean_norm_entropy", "mean_norm_entropy_ci_low",
    "mean_norm_entropy_ci_high", "share_flagged", "top_groups",
)
RUN_KEYS = ("format_version", "model", "dataset", "k")

FILES = {"groups": "groups.parquet", "words": "words.parquet", "summary": "summary.csv", "run": "run.json"}

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
        model = self.run.get("model")
        if isinstance(model, dict) and model.get("kind") == "file" and model.get("arch") and model.get("path"):
            return f"{model['arch']}:{Path(str(model['path'])).name}"
        return self.model_spec

    @property
    def attributes(self) -> list[str]:
        """Attributes present in the report, in the canonical order first."""
        present = set(self.words["attribute"].astype(str))
        return [a for a in ATTRIBUTES if a in present] + sorted(present - set(ATTRIBUTES))

    @property
    def categories(self) -> list[str]:
        """Every category of the report (a word's joined categories split apart), sorted."""
        return split_categories(self.words["category"])

    def groups_of(self, attribute: str) -> list[str]:
        """The groups of one attribute in the order they appear in groups.parquet."""
        rows = self.groups[self.groups["attribute"] == attribute]
        return list(dict.fromkeys(rows["group"].astype(str)))


def split_categories(values) -> list[str]:
    """Sorted distinct categories in a column of ``"; "``-joined category strings."""
    out: set[str] = set()
    for value in values:
        out.update(part.strip() for part in str(value).split(CATEGORY_SEP.strip()) if part.strip())
    return sorted(out)


def explode_categories(df):
    """One row per category: a row whose category is ``"a; b"`` becomes two rows."""
    out = df.copy()
    out["category"] = [
        [p.strip() for p in str(v).split(CATEGORY_SEP.strip()) if p.strip()] for v in out["category"]
    ]
    return out.explode("category", ignore_index=True)


def load_report(path) -> Report:
    """Read a report folder, checking its files, format version and columns.

    Raises :class:`~clipprobe.errors.DataError` naming the folder and the problem
    for a missing folder or file, an unreadable table, a ``format_version`` other
    than :data:`FORMAT_VERSION` or missing columns.
    """
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise DataError(MSG_NO_FOLDER.format(path=path))
    if not path.is_dir():
        raise DataError(MSG_NOT_FOLDER.format(path=path))
    for name in FILES.values():
        if not (path / name).is_file():
            raise DataError(MSG_NO_FILE.format(path=path, name=name))

    try:
        run = json.loads((path / FILES["run"]).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(MSG_BAD_JSON.format(path=path, error=err)) from None
    if not isinstance(run, dict):
        raise DataError(MSG_BAD_JSON.format(path=path, error="not a JSON object"))
    found = run.get("format_version")
    if found != FORMAT_VERSION:
        raise DataError(MSG_BAD_VERSION.format(path=path, found=found, expected=FORMAT_VERSION))
    missing_keys = [k for k in RUN_KEYS if k not in run]
    if missing_keys:
        raise DataError(MSG_MISSING_KEYS.format(path=path, keys=", ".join(missing_keys)))

    tables = {}
    for key, columns in (("groups", GROUP_COLUMNS), ("words", WORD_COLUMNS), ("summary", SUMMARY_COLUMNS)):
        name = FILES[key]
        try:
            if name.endswith(".csv"):
                df = pd.read_csv(path / name, keep_default_na=True)
            else:
                df = pd.read_parquet(path / name)
        except Exception as err:  # pyarrow and pandas raise many types for a corrupt file
            raise DataError(MSG_BAD_TABLE.format(name=name, path=path, error=err)) from None
        missing = [c for c in columns if c not in df.columns]
        if missing:
            raise DataError(MSG_MISSING_COLUMNS.format(name=name, path=path, columns=", ".join(missing)))
        tables[key] = df

    for key in ("groups", "words"):
        for col in ("word", "category", "attribute"):
            tables[key][col] = tables[key][col].astype(str)
    tables["groups"]["group"] = tables["groups"]["group"].astype(str)
    tables["groups"]["flagged"] = tables["groups"]["flagged"].astype(bool)
    tables["summary"]["category"] = tables["summary"]["category"].astype(str)
    tables["summary"]["attribute"] = tables["summary"]["attribute"].astype(str)
    log.debug("loaded report %s: %d words, %d group rows", path, len(tables["words"]), len(tables["groups"]))
    return Report(path=path, groups=tables["groups"], words=tables["words"], summary=tables["summary"], run=run)
