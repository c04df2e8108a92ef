"""Co-occurrence statistics of a word and a group over captions.

For each (word, attribute, group) the 2x2 table over the ``n_captions``
non-null captions is::

                    group present   group absent
    word present    a = n_both      b = n_word - n_both
    word absent     c = n_group - n_both
                                    d = n_captions - n_word - n_group + n_both

* ``expected`` = n_word * n_group / n_captions, ``lift`` = n_both / expected
  (NaN where expected is 0);
* ``log_odds`` = ln((a+0.5)(d+0.5) / ((b+0.5)(c+0.5))) (Haldane-Anscombe 0.5
  added to every cell), with the 95% interval log_odds +/- 1.96 *
  sqrt(1/(a+0.5) + 1/(b+0.5) + 1/(c+0.5) + 1/(d+0.5));
* ``p_value`` = P(X >= a) for X hypergeometric (population n_captions, n_group
  successes, n_word draws): Fisher's exact test, one-sided ("greater");
* ``q_value`` = Benjamini-Hochberg over all rows of the table.
"""

from __future__ import annotations

from typing import Sequence

COLUMNS = ("word", "attribute", "group", "n_captions", "n_word", "n_group", "n_both", "expected", "lift",
           "log_odds", "log_odds_ci_low", "log_odds_ci_high", "p_value", "q_value")
Z95 = 1.96  # as specified (issue #4); not the exact normal quantile


def cooccurrence_table(words: Sequence[str], groups: Sequence[tuple[str, str]], n_captions: int, n_word,
                       n_group, n_both):
    """One row per (word, attribute, group), columns :data:`COLUMNS` (a pandas DataFrame)."""
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
    b = nw - a
    c = ng - a
    d = n_captions - nw - ng + a
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = nw * ng / n_captions if n_captions > 0 else np.full(a.shape, np.nan)
        lift = np.where(expected > 0, a / np.where(expected > 0, expected, 1.0), np.nan)
    log_odds = np.log((a + 0.5) * (d + 0.5) / ((b + 0.5) * (c + 0.5)))
    se = np.sqrt(1 / (a + 0.5) + 1 / (b + 0.5) + 1 / (c + 0.5) + 1 / (d + 0.5))
    p = hypergeom.sf(a - 1, n_captions, ng, nw) if n_captions > 0 else np.full(a.shape, np.nan)
    p = np.clip(p, 0.0, 1.0)
    return pd.DataFrame({
        "word": np.repeat(np.asarray(words, dtype=object), len(n_group)),
        "attribute": np.tile(np.asarray([g[0] for g in groups], dtype=object), len(n_word)),
        "group": np.tile(np.asarray([g[1] for g in groups], dtype=object), len(n_word)),
        "n_captions": np.full(a.shape, n_captions, np.int64),
        "n_word": nw, "n_group": ng, "n_both": a.astype(np.int64),
        "expected": expected, "lift": lift, "log_odds": log_odds,
        "log_odds_ci_low": log_odds - Z95 * se, "log_odds_ci_high": log_odds + Z95 * se,
        "p_value": p, "q_value": bh_adjust(p),
    }, columns=list(COLUMNS))
