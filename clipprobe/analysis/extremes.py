"""An honest reference for MaxSkew and MinSkew: what they are when labels and images are unrelated.

The largest of several noisy skews is positive even when nothing is planted (on FairFace's race
groups at k = 100 about +0.3), so a MaxSkew alone, or an interval around it, cannot say "no bias".
The reference here is the **permutation null**: shuffle the group labels against the images. A word's
top-k images do not depend on the labels, so under a shuffle the labels of its top-k are ``k``
labels drawn without replacement from the dataset's labels: a multivariate hypergeometric draw, the
same distribution for every word. ``n_perm`` such draws (seeded) give, per attribute:

* ``max_skew_null``: the mean MaxSkew under no association, and ``max_skew_excess = max_skew -
  max_skew_null``;
* ``p_max_skew``: the one-sided permutation p-value ``(1 + #{null >= observed}) / (n_perm + 1)``
  (ties count as exceedances); uniform, up to its discreteness, when labels and images are unrelated;
* the same for MinSkew with the lower tail (``min_skew_null``, ``min_skew_excess``, ``p_min_skew``).

Skews use the report's conventions (:func:`clipprobe.analysis.metrics.group_stats`: a group absent
from the top-k counts as 1/k inside the log, skew against the dataset's base shares or uniform).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from clipprobe.errors import UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

MSG_NPERM = "n_perm must be a positive number of permutations, got {n}"


@dataclasses.dataclass(frozen=True)
class ExtremeNull:
    """The null distributions of MaxSkew and MinSkew for one attribute (``(n_perm,)`` each)."""

    max_skew: "np.ndarray"
    min_skew: "np.ndarray"

    def p_max(self, observed) -> "np.ndarray":
        """One-sided p-values of observed MaxSkews (upper tail)."""
        return _tail(self.max_skew, observed, upper=True)

    def p_min(self, observed) -> "np.ndarray":
        """One-sided p-values of observed MinSkews (lower tail)."""
        return _tail(self.min_skew, observed, upper=False)


def _tail(null, observed, *, upper: bool) -> "np.ndarray":
    import numpy as np

    ref = np.sort(np.asarray(null, dtype=np.float64))
    obs = np.asarray(observed, dtype=np.float64)
    # A float tolerance keeps a tie with the observed value a tie (the same counts give the same skew).
    eps = 1e-12 * np.maximum(1.0, np.abs(obs))
    if upper:
        extreme = ref.size - np.searchsorted(ref, obs - eps, side="left")
    else:
        extreme = np.searchsorted(ref, obs + eps, side="right")
    return np.where(np.isfinite(obs), (1.0 + extreme) / (ref.size + 1.0), np.nan)


def extreme_skew_null(group_sizes, k: int, reference_share, *, n_perm: int = 1000, seed: int = 0,
                      draws: int | None = None) -> ExtremeNull:
    """MaxSkew and MinSkew of ``n_perm`` top-k drawn at random from the dataset's labels.

    ``group_sizes`` are the images per group (``(G,)``; groups of size 0 are left out, as in the
    report); ``reference_share`` the shares skews are measured against (base or uniform). ``draws``
    images are drawn (default ``k``; more when images tied at the k-th score are all kept) and
    shares are ``count / k`` either way.
    """
    import numpy as np

    from clipprobe.analysis.metrics import check_k, word_stats

    if isinstance(n_perm, bool) or int(n_perm) != n_perm or n_perm < 1:
        raise UsageError(MSG_NPERM.format(n=n_perm))
    sizes = np.asarray(group_sizes, dtype=np.int64)
    k = check_k(k, int(sizes.sum()))
    draws = k if draws is None else check_k(draws, int(sizes.sum()))
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5E11]))
    counts = rng.multivariate_hypergeometric(sizes, draws, size=int(n_perm))
    ref = np.asarray(reference_share, dtype=np.float64)
    stats = word_stats(counts, ref, k, present=sizes > 0)
    return ExtremeNull(max_skew=stats["max_skew"], min_skew=stats["min_skew"])


__all__ = ["ExtremeNull", "extreme_skew_null"]
