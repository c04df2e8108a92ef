"""Is it in the data too? Join the model's retrieval skew with caption co-occurrence.

:func:`crosscheck` puts, for every (word, attribute, group), the model's skew and
flags from a report next to the caption lift, log-odds and q-value of a
``captions count`` folder, and gives the Spearman rank correlation between skew
and caption log-odds across words, per attribute (and per group). The So-B-IT
paper asks this for a few words; this answers it for the whole taxonomy.
A high correlation says the model's associations follow the captions'; it says
nothing about cause, and it is only as good as the caption lexicon.

Only rows whose caption association is defined enter the correlations and the
figures: a word or group that never occurs in the captions (or occurs in every
caption) has no odds ratio (:mod:`clipprobe.analysis.cooccurrence`); such rows stay in
the joined table with ``caption_status`` saying why and null caption statistics.
:func:`coverage` counts them; with fewer than :data:`MIN_ROWS` defined rows the
cross-check refuses (:data:`ERR_TOO_FEW_ROWS`).
"""

from __future__ import annotations

import logging
from typing import Any

from clipprobe.errors import DataError

log = logging.getLogger(__name__)

ERR_MISSING_COLUMNS = "{what} lacks columns {missing}; has: {has}"
ERR_TOO_FEW_ROWS = ("{source}: {n} (word, attribute, group) row(s) in common with the report have a defined caption "
                    "association, fewer than the {min_rows} the cross-check needs ({words_absent} of {n_words} words "
                    "and {groups_absent} of {n_groups} groups never occur in the captions)")
MIN_ROWS = 10   # defined (word, attribute, group) rows, over all attributes, below which the cross-check refuses
KEYS = ("word", "attribute", "group")
CAPTION_COLUMNS = {"n_captions": "caption_n_captions", "n_word": "caption_n_word", "n_group": "caption_n_group",
                   "n_both": "caption_n_both", "lift": "caption_lift", "log_odds": "caption_log_odds",
                   "log_odds_ci_low": "caption_log_odds_ci_low", "log_odds_ci_high": "caption_log_odds_ci_high",
                   "p_value": "caption_p_value", "q_value": "caption_q_value", "status": "caption_status"}


def _require(df, columns, what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(ERR_MISSING_COLUMNS.format(what=what, missing=missing, has=list(df.columns)[:20]))


def crosscheck(report_groups, cooccurrence, *, alpha: float = 0.05, min_rows: int = MIN_ROWS,
               source: str = "caption counts") -> tuple[Any, dict[str, dict[str, Any]]]:
    """(joined table, rank correlations).

    ``report_groups``: one row per (word, attribute, group) with at least ``skew``
    (other columns such as ``flagged`` and ``q_over`` are carried along).
    ``cooccurrence``: the ``cooccurrence.parquet`` table (its ``status`` is recomputed from the
    counts, so a table written before that column existed is read the same way:
    :func:`clipprobe.analysis.cooccurrence.with_status`). The join is inner on word
    (case-insensitive), attribute and group; ``caption_status`` is ``"ok"`` where the caption
    association is defined, and ``caption_flagged`` (null where it is not) is
    ``caption_q_value < alpha`` and a positive log-odds.

    Correlations: ``{attribute: {"rho", "p_value", "n", "by_group": {group: {...}}}}``,
    Spearman's rho between ``skew`` and ``caption_log_odds`` over the joined rows with a defined
    caption association and finite skew (``n`` rows); rho and p are NaN where n < 3.

    Raises :class:`~clipprobe.errors.DataError` (naming ``source``) when fewer than ``min_rows``
    joined rows have a defined caption association.
    """
    import numpy as np
    from scipy.stats import spearmanr

    from clipprobe.analysis.cooccurrence import STATUS_OK, with_status

    _require(report_groups, (*KEYS, "skew"), "report groups table")
    _require(cooccurrence, (*KEYS, *(c for c in CAPTION_COLUMNS if c != "status")), "co-occurrence table")
    left = report_groups.copy()
    right = with_status(cooccurrence)[[*KEYS, *CAPTION_COLUMNS]].rename(columns=CAPTION_COLUMNS)
    left["_key"] = left["word"].astype(str).str.lower()
    right = right.assign(_key=right["word"].astype(str).str.lower()).drop(columns="word")
    joined = left.merge(right, on=["_key", "attribute", "group"], how="inner").drop(columns="_key")
    defined = (joined["caption_status"] == STATUS_OK).to_numpy(dtype=bool)
    flagged = (joined["caption_q_value"] < alpha) & (joined["caption_log_odds"] > 0)
    joined["caption_flagged"] = flagged.astype("boolean").mask(~defined)     # null where undefined
    _check_rows(joined, min_rows, source)

    def corr(rows) -> dict[str, Any]:
        rows = rows[rows["caption_status"] == STATUS_OK]
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


def _check_rows(joined, min_rows: int, source: str) -> None:
    cover = coverage(joined)
    if cover["n_defined"] < min_rows:
        raise DataError(ERR_TOO_FEW_ROWS.format(source=source, n=cover["n_defined"], min_rows=min_rows,
                                                words_absent=cover["n_words_absent"], n_words=cover["n_words"],
                                                groups_absent=cover["n_groups_absent"], n_groups=cover["n_groups"]))


def check_rows(cooccurrence, words, attributes=None, *, min_rows: int = MIN_ROWS,
               source: str = "caption counts") -> None:
    """Refuse, before a report is computed, caption counts that cannot give a cross-check of ``words``
    (and ``attributes``; None: all): the same rule as :func:`crosscheck`, on the counts' rows of those
    words (case-insensitive) instead of the join, which can only have fewer."""
    from clipprobe.analysis.cooccurrence import with_status

    _require(cooccurrence, (*KEYS, *(c for c in CAPTION_COLUMNS if c != "status")), "co-occurrence table")
    rows = with_status(cooccurrence).rename(columns={k: v for k, v in CAPTION_COLUMNS.items()})
    keep = rows["word"].astype(str).str.lower().isin({str(w).lower() for w in words})
    if attributes is not None:
        keep &= rows["attribute"].isin(list(attributes))
    _check_rows(rows[keep], min_rows, source)


def coverage(joined) -> dict[str, Any]:
    """How much of a joined cross-check table has a defined caption association: ``n_rows``,
    ``n_defined``; the joined words (``n_words``) and those that occur in no caption
    (``n_words_absent``, ``words_absent``); the joined (attribute, group) pairs (``n_groups``) and
    those that occur in no caption (``n_groups_absent``, ``groups_absent`` as ``"attribute:group"``)."""
    from clipprobe.analysis.cooccurrence import STATUS_OK

    words = joined.groupby(joined["word"].astype(str), sort=True)["caption_n_word"].max()
    groups = joined.groupby(["attribute", "group"], sort=True)["caption_n_group"].max()
    words_absent = [str(w) for w, n in words.items() if n == 0]
    groups_absent = [f"{a}:{g}" for (a, g), n in groups.items() if n == 0]
    return {"n_rows": int(len(joined)), "n_defined": int((joined["caption_status"] == STATUS_OK).sum()),
            "n_words": int(len(words)), "n_words_absent": len(words_absent), "words_absent": words_absent,
            "n_groups": int(len(groups)), "n_groups_absent": len(groups_absent), "groups_absent": groups_absent}
