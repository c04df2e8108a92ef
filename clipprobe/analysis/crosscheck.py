"""Is it in the data too? Join the model's retrieval skew with caption co-occurrence.

:func:`crosscheck` puts, for every (word, attribute, group), the model's skew and
flags from a report next to the caption lift, log-odds and q-value of a
``captions count`` folder, and gives the Spearman rank correlation between skew
and caption log-odds across words, per attribute (and per group). The So-B-IT
paper asks this for a few words; this answers it for the whole taxonomy.
A high correlation says the model's associations follow the captions'; it says
nothing about cause, and it is only as good as the caption lexicon.
"""

from __future__ import annotations

import logging
from typing import Any

from clipprobe.errors import DataError

log = logging.getLogger(__name__)

ERR_MISSING_COLUMNS = "{what} lacks columns {missing}; has: {has}"
KEYS = ("word", "attribute", "group")
CAPTION_COLUMNS = {"n_captions": "caption_n_captions", "n_word": "caption_n_word", "n_group": "caption_n_group",
                   "n_both": "caption_n_both", "lift": "caption_lift", "log_odds": "caption_log_odds",
                   "log_odds_ci_low": "caption_log_odds_ci_low", "log_odds_ci_high": "caption_log_odds_ci_high",
                   "p_value": "caption_p_value", "q_value": "caption_q_value"}


def _require(df, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(ERR_MISSING_COLUMNS.format(what=what, missing=missing, has=list(df.columns)[:20]))


def crosscheck(report_groups, cooccurrence, *, alpha: float = 0.05) -> tuple[Any, dict[str, dict[str, Any]]]:
    """(joined table, rank correlations).

    ``report_groups``: one row per (word, attribute, group) with at least ``skew``
    (other columns such as ``flagged`` and ``q_over`` are carried along).
    ``cooccurrence``: the ``cooccurrence.parquet`` table. The join is inner on
    word (case-insensitive), attribute and group; ``caption_flagged`` is
    ``caption_q_value < alpha`` and a positive log-odds.

    Correlations: ``{attribute: {"rho", "p_value", "n", "by_group": {group: {...}}}}``,
    Spearman's rho between ``skew`` and ``caption_log_odds`` over the joined rows
    with finite skew (``n`` rows); rho and p are NaN where n < 3.
    """
    import numpy as np
    from scipy.stats import spearmanr

    _require(report_groups, (*KEYS, "skew"), "report groups table")
    _require(cooccurrence, (*KEYS, *CAPTION_COLUMNS), "co-occurrence table")
    left = report_groups.copy()
    right = cooccurrence[[*KEYS, *CAPTION_COLUMNS]].rename(columns=CAPTION_COLUMNS)
    left["_key"] = left["word"].astype(str).str.lower()
    right = right.assign(_key=right["word"].astype(str).str.lower()).drop(columns="word")
    joined = left.merge(right, on=["_key", "attribute", "group"], how="inner").drop(columns="_key")
    joined["caption_flagged"] = (joined["caption_q_value"] < alpha) & (joined["caption_log_odds"] > 0)
    if len(joined) == 0:
        log.warning("no (word, attribute, group) in common between the report and the caption counts")

    def corr(rows) -> dict[str, Any]:
        ok = rows[np.isfinite(rows["skew"].astype(float)) & np.isfinite(rows["caption_log_odds"].astype(float))]
        n = int(len(ok))
        if n < 3 or ok["skew"].nunique() < 2 or ok["caption_log_odds"].nunique() < 2:
            return {"rho": float("nan"), "p_value": float("nan"), "n": n}
        res = spearmanr(ok["skew"].astype(float), ok["caption_log_odds"].astype(float))
        return {"rho": float(res.statistic), "p_value": float(res.pvalue), "n": n}

    correlations: dict[str, dict[str, Any]] = {}
    for attribute, rows in joined.groupby("attribute", sort=False):
        entry = corr(rows)
        entry["by_group"] = {g: corr(r) for g, r in rows.groupby("group", sort=False)}
        correlations[str(attribute)] = entry
    return joined, correlations


def crosscheck_scatter(joined, *, attribute: str | None = None, correlations=None, ax=None):
    """Skew (x) against caption log-odds (y), one colour per group; returns the Axes."""
    import numpy as np

    rows = joined if attribute is None else joined[joined["attribute"] == attribute]
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(4.5, 3.5), layout="constrained").add_subplot()
    from clipprobe.report.figures import OKABE_ITO

    for i, (group, g) in enumerate(rows.groupby("group", sort=False)):
        ax.scatter(g["skew"].astype(float), g["caption_log_odds"].astype(float), s=10, alpha=0.7,
                   color=OKABE_ITO[i % len(OKABE_ITO)], label=str(group))
    ax.axhline(0, color="0.6", lw=0.6)
    ax.axvline(0, color="0.6", lw=0.6)
    ax.set_xlabel("retrieval skew (model)")
    ax.set_ylabel("caption log-odds (data)")
    title = "model vs captions" + (f": {attribute}" if attribute else "")
    if correlations and attribute in correlations and np.isfinite(correlations[attribute]["rho"]):
        c = correlations[attribute]
        title += f"  (Spearman rho={c['rho']:.2f}, n={c['n']})"
    ax.set_title(title, fontsize=9)
    if len(rows):
        ax.legend(fontsize=6, markerscale=1.5, frameon=False, loc="best")
    return ax


ERR_NO_COUNTS = "caption counts folder {path} has no cooccurrence.parquet (write it with `clipprobe captions count`)"


def read_counts(counts_dir) -> Any:
    """The ``cooccurrence.parquet`` table of a ``captions count`` folder."""
    from pathlib import Path

    import pandas as pd

    path = Path(counts_dir) / "cooccurrence.parquet"
    if not path.is_file():
        raise DataError(ERR_NO_COUNTS.format(path=counts_dir))
    return pd.read_parquet(path)


def write_crosscheck(report_groups, counts_dir, out_dir, *, alpha: float = 0.05) -> list:
    """Join a report's groups with caption counts and write the table, correlations and figures.

    Writes ``OUT/crosscheck.parquet`` (joined rows), ``OUT/crosscheck.json`` (Spearman
    correlations per attribute and group) and ``OUT/figures/crosscheck_<attribute>.png/.pdf``.
    Returns the paths written.
    """
    import math
    from pathlib import Path

    from matplotlib.figure import Figure

    from clipprobe._io import atomic_path, write_json, write_parquet

    out = Path(out_dir)
    joined, correlations = crosscheck(report_groups, read_counts(counts_dir), alpha=alpha)

    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, float) and math.isnan(value):
            return None
        return value

    written = [out / "crosscheck.parquet", out / "crosscheck.json"]
    write_parquet(written[0], joined)
    write_json(written[1], {"counts": str(counts_dir), "alpha": alpha, "n_rows": int(len(joined)),
                            "spearman_skew_vs_caption_log_odds": clean(correlations)})
    for attribute in sorted(set(joined["attribute"])):
        fig = Figure(figsize=(3.3, 3.0), layout="constrained")
        crosscheck_scatter(joined, attribute=attribute, correlations=correlations, ax=fig.add_subplot())
        for fmt in ("png", "pdf"):
            path = out / "figures" / f"crosscheck_{attribute}.{fmt}"
            with atomic_path(path, suffix="." + fmt) as tmp:
                fig.savefig(tmp, format=fmt, dpi=200)
            written.append(path)
    return written
