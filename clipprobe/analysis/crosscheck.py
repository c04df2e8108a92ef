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
