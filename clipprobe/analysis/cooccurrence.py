"""Co-occurrence statistics of a word and a group over captions.

For each (word, attribute, group) the 2x2 table over the ``n_captions``
non-null captions is::

                    group present   group absent
    word present    a = n_both      b = n_word - n_both
    word absent     c = n_group - n_both
                                    d = n_captions - n_word - n_group + n_both

**Defined and undefined rows.** An association needs both rows and both columns
of the table: where the word or the group never occurs (``n_word = 0`` or
``n_group = 0``), or occurs in every caption, the odds ratio, the lift and the
test have nothing to compare, so ``lift``, ``log_odds``, its interval,
``p_value`` and ``q_value`` are null and ``status`` says why
(:func:`association_status`: ``"word absent"``, ``"group absent"``, ``"word in
every caption"``, ``"group in every caption"``, ``"no captions"``, joined by
``"; "``); a defined row has ``status = "ok"`` (:data:`STATUS_OK`). These are
structural zeros: no correction turns them into a finite estimate.

On the defined rows:

* ``expected`` = n_word * n_group / n_captions (on every row), ``lift`` =
  n_both / expected;
* ``log_odds`` = ln((a+0.5)(d+0.5) / ((b+0.5)(c+0.5))), the Haldane-Anscombe
  estimate (0.5 added to every cell), with the 95% interval log_odds +/- 1.96 *
  sqrt(1/(a+0.5) + 1/(b+0.5) + 1/(c+0.5) + 1/(d+0.5)) (Gart's adjusted Woolf
  interval). The interval is published only where every cell of the table
  expects at least :data:`CI_MIN_EXPECTED` (10) captions under independence,
  given the margins (min over cells of row total * column total / n_captions);
  elsewhere its ends are null and the estimate stays. Measured by simulation
  (multinomial tables, n_captions 10^4 and 10^6, word shares 10^-4 to 0.1,
  group shares 0.02 to 0.5, odds ratios 1 to 10;
  ``tests/test_captions_stats.py::test_log_odds_interval_coverage*``): published
  intervals cover 0.941-0.958; without the rule, tables with about three or fewer
  expected co-occurrences cover 0.84 to 1.00. The 0.5 is there for sampling zeros: a table with a zero cell but
  both margins positive (a word seen, never with the group: a = 0) keeps a finite
  estimate, e.g. a = 0, b = 10, c = 10, d = 80 gives ln(0.5 * 80.5 / 10.5^2) =
  -1.01 (its interval, [-3.92, 1.90], is withheld: that table expects one
  co-occurrence);
* ``p_value`` = P(X >= a) for X hypergeometric (population n_captions, n_group
  successes, n_word draws): Fisher's exact test, one-sided ("greater");
* ``q_value`` = Benjamini-Hochberg over the defined rows of the table.
"""

from __future__ import annotations

from typing import Sequence

COLUMNS = ("word", "attribute", "group", "n_captions", "n_word", "n_group", "n_both", "expected", "lift",
           "log_odds", "log_odds_ci_low", "log_odds_ci_high", "p_value", "q_value", "status")
Z95 = 1.96  # as specified (issue #4); not the exact normal quantile
CI_MIN_EXPECTED = 10.0  # the interval is withheld below this smallest expected cell count (module docstring)
STATUS_OK = "ok"
REASONS = (  # why a row's association is undefined, in the order they are listed in ``status``
    "no captions", "word absent", "group absent", "word in every caption", "group in every caption")
STATUS_SEP = "; "


def association_status(n_captions, n_word, n_group):
    """``status`` of each row (arrays broadcast): :data:`STATUS_OK` where the 2x2 table has both rows and
    both columns, else the reasons it has not (:data:`REASONS`, joined by ``"; "``). An object array."""
    import numpy as np

    n = np.asarray(n_captions, dtype=np.int64)
    nw = np.asarray(n_word, dtype=np.int64)
    ng = np.asarray(n_group, dtype=np.int64)
    n, nw, ng = np.broadcast_arrays(n, nw, ng)
    empty = n <= 0
    conditions = (empty, ~empty & (nw <= 0), ~empty & (ng <= 0), ~empty & (nw > 0) & (nw >= n),
                  ~empty & (ng > 0) & (ng >= n))
    out = np.full(n.shape, STATUS_OK, dtype=object)
    undefined = np.zeros(n.shape, dtype=bool)
    for condition in conditions:
        undefined |= condition
    for index in zip(*np.nonzero(undefined)):
        out[index] = STATUS_SEP.join(r for r, c in zip(REASONS, conditions) if c[index])
    return out


def is_defined(status) -> "object":
    """Boolean array: the rows whose ``status`` is :data:`STATUS_OK`."""
    import numpy as np

    return np.asarray(status, dtype=object) == STATUS_OK


def log_odds_interval(n_both, n_word, n_group, n_captions):
    """``(log_odds, low, high)`` of 2x2 tables given by their counts (arrays broadcast; every table defined):
    the Haldane-Anscombe estimate and the 95% interval, whose ends are NaN where the smallest expected cell
    count under independence is below :data:`CI_MIN_EXPECTED` (see the module docstring)."""
    import numpy as np

    a, nw, ng, n = (np.asarray(x, dtype=np.float64) for x in (n_both, n_word, n_group, n_captions))
    b, c = nw - a, ng - a
    d = n - nw - ng + a
    log_odds = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    se = np.sqrt(1 / (a + 0.5) + 1 / (b + 0.5) + 1 / (c + 0.5) + 1 / (d + 0.5))
    with np.errstate(invalid="ignore", divide="ignore"):
        smallest = np.minimum.reduce([nw * ng, nw * (n - ng), (n - nw) * ng, (n - nw) * (n - ng)]) / n
    shown = smallest >= CI_MIN_EXPECTED
    return log_odds, np.where(shown, log_odds - Z95 * se, np.nan), np.where(shown, log_odds + Z95 * se, np.nan)


def cooccurrence_table(words: Sequence[str], groups: Sequence[tuple[str, str]], n_captions: int, n_word,
                       n_group, n_both):
    """One row per (word, attribute, group), columns :data:`COLUMNS` (a pandas DataFrame; see the module
    docstring for what is null where)."""
    import numpy as np
    import pandas as pd
    from scipy.stats import hypergeom

    from clipprobe.analysis.significance import bh_adjust

    n_word = np.asarray(n_word, np.int64)
    n_group = np.asarray(n_group, np.int64)
    n_both = np.asarray(n_both, np.int64).reshape(len(n_word), len(n_group))
    nw = np.repeat(n_word, len(n_group))
    ng = np.tile(n_group, len(n_word))
    a = n_both.ravel().astype(np.float64)
    status = association_status(n_captions, nw, ng)
    ok = is_defined(status)
    # Structural zeros (an empty row or column of the table) are never given a number: the cells are
    # computed on the defined rows only and stay NaN (null in parquet) elsewhere.
    af, nwf, ngf = a[ok], nw[ok].astype(np.float64), ng[ok].astype(np.float64)
    expected = nw * ng / n_captions if n_captions > 0 else np.zeros(a.shape)
    lift, log_odds, low, high, p = (np.full(a.shape, np.nan) for _ in range(5))
    lift[ok] = af / expected[ok]
    log_odds[ok], low[ok], high[ok] = log_odds_interval(af, nwf, ngf, n_captions)
    p[ok] = np.clip(hypergeom.sf(af - 1, n_captions, ngf, nwf), 0.0, 1.0)
    return pd.DataFrame({
        "word": np.repeat(np.asarray(words, dtype=object), len(n_group)),
        "attribute": np.tile(np.asarray([g[0] for g in groups], dtype=object), len(n_word)),
        "group": np.tile(np.asarray([g[1] for g in groups], dtype=object), len(n_word)),
        "n_captions": np.full(a.shape, n_captions, np.int64),
        "n_word": nw, "n_group": ng, "n_both": a.astype(np.int64),
        "expected": expected, "lift": lift, "log_odds": log_odds,
        "log_odds_ci_low": low, "log_odds_ci_high": high,
        "p_value": p, "q_value": bh_adjust(p), "status": status,
    }, columns=list(COLUMNS))


def with_status(table, *, adjust: bool = True):
    """A copy of a co-occurrence table with ``status`` recomputed from its counts, the statistics of the
    undefined rows null and (``adjust``) ``q_value`` adjusted over the defined rows of ``table``.

    For a whole table written by :func:`cooccurrence_table` this changes nothing; a table written before
    the ``status`` column existed (whose absent words and groups carry numbers, and whose q-values were
    adjusted over every row) is read as today's. For a part of a table (one word's rows) pass
    ``adjust=False``: its q-values belong to the whole table's family.
    """
    import numpy as np

    from clipprobe.analysis.significance import bh_adjust

    out = table.copy()
    out["status"] = association_status(out["n_captions"].to_numpy(), out["n_word"].to_numpy(),
                                       out["n_group"].to_numpy())
    ok = is_defined(out["status"])
    for column in ("lift", "log_odds", "log_odds_ci_low", "log_odds_ci_high", "p_value"):
        out[column] = np.where(ok, out[column].to_numpy(dtype=np.float64), np.nan)
    q = out["q_value"].to_numpy(dtype=np.float64)
    out["q_value"] = bh_adjust(out["p_value"].to_numpy(dtype=np.float64)) if adjust else np.where(ok, q, np.nan)
    return out


def defined_rows(table):
    """The rows of a co-occurrence table whose association is defined (recomputed from the counts, so a
    table written before the ``status`` column existed is read the same way)."""
    status = association_status(table["n_captions"].to_numpy(), table["n_word"].to_numpy(),
                                table["n_group"].to_numpy())
    return table[is_defined(status)]
