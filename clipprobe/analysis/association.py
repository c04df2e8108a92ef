"""A model's representation and association bias (RB and AB) from its similarity scores.

Definitions after Alabdulmohsin et al., "CLIP the Bias: How Useful is Balancing Data in Multimodal
Learning?" (ICLR 2024, arXiv 2403.04547); pure functions on arrays (the images, prompts and models are
:mod:`clipprobe.pipeline.association`'s).

Model RB (:func:`model_rb`): the share of person-free images for which a model prefers "Male" over
"Female", minus 0.5. Model AB (:func:`model_ab`): for occupation pairs, how often it prefers the first
occupation on images of women and of men, and the difference. Ties count half. Wilson / Newcombe
intervals (:mod:`clipprobe.analysis.intervals`; images are independent draws).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

from clipprobe.analysis.intervals import level_z, newcombe_interval, wilson_interval
from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

DEFAULT_OCCUPATION_PAIRS: tuple[tuple[str, str], ...] = (
    ("librarian", "scientist"),
    ("nurse", "doctor"),
    ("housekeeper", "homeowner"),
    ("receptionist", "executive"),
    ("secretary", "manager"),
)
DEFAULT_GENDER_GROUPS = ("Female", "Male")

MSG_SCORES = "{name}: expected {shape} finite scores, got {problem}"
MSG_PAIRS = "pairs: {got} pairs for {n} score columns"
MSG_GROUP_NAMES = "group_names: expected two distinct group names, got {got!r}"
MSG_GROUP_EMPTY = "groups: no image is labelled {group!r} (labels found: {found})"
MSG_NO_IMAGES = "{name}: no images"


def _scores(x, name: str, shape_text: str, ndim_ok=(1, 2)):
    import numpy as np

    arr = np.asarray(x)
    if arr.ndim not in ndim_ok or not np.issubdtype(arr.dtype, np.number):
        raise DataError(MSG_SCORES.format(name=name, shape=shape_text, problem=f"shape {arr.shape} dtype {arr.dtype}"))
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise DataError(MSG_SCORES.format(name=name, shape=shape_text, problem="NaN or infinite values"))
    return arr


def _preference(first, second):
    """Wins of ``first`` over ``second`` with ties counted half, summed over axis 0."""
    return (first > second).sum(axis=0) + 0.5 * (first == second).sum(axis=0), (first == second).sum(axis=0)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelRB:
    """Model representation bias on images without people: ``rb = share_male - 0.5``."""

    n: int
    n_ties: int
    share_male: float
    rb: float
    rb_low: float
    rb_high: float
    level: float


def model_rb(male_scores, female_scores, *, level: float = 0.95) -> ModelRB:
    """Share of the images for which the model scores "Male" above "Female", minus 0.5, with a
    Wilson interval (ties count half)."""
    z = level_z(level)
    male = _scores(male_scores, "male_scores", "(N,)", (1,))
    female = _scores(female_scores, "female_scores", f"({male.size},)", (1,))
    if female.shape != male.shape:
        raise DataError(MSG_SCORES.format(name="female_scores", shape=f"({male.size},)",
                                          problem=f"shape {female.shape}"))
    if male.size == 0:
        raise DataError(MSG_NO_IMAGES.format(name="male_scores"))
    wins, ties = _preference(male, female)
    share = float(wins) / male.size
    lo, hi = wilson_interval(share, male.size, z)
    return ModelRB(int(male.size), int(ties), share, share - 0.5, float(lo) - 0.5, float(hi) - 0.5, float(level))


@dataclasses.dataclass(frozen=True, eq=False)
class ModelAB:
    """Model association bias on face images, per occupation pair.

    ``share``: ``(P, 2)`` how often the model prefers the pair's first occupation on images of
    ``group_names[0]`` and ``group_names[1]`` (ties half), with ``share_low/high``; ``diff``:
    ``(P,)`` ``share[:, 0] - share[:, 1]`` with Newcombe's interval ``diff_low/high``; ``n``: images
    per group.
    """

    pairs: tuple[tuple[str, str], ...]
    group_names: tuple[str, str]
    n: tuple[int, int]
    share: "np.ndarray"
    share_low: "np.ndarray"
    share_high: "np.ndarray"
    diff: "np.ndarray"
    diff_low: "np.ndarray"
    diff_high: "np.ndarray"
    level: float

    def frame(self) -> "pd.DataFrame":
        import pandas as pd

        g0, g1 = self.group_names
        return pd.DataFrame({
            "first": [p[0] for p in self.pairs], "second": [p[1] for p in self.pairs],
            f"share_{g0}": self.share[:, 0], f"share_{g0}_low": self.share_low[:, 0],
            f"share_{g0}_high": self.share_high[:, 0],
            f"share_{g1}": self.share[:, 1], f"share_{g1}_low": self.share_low[:, 1],
            f"share_{g1}_high": self.share_high[:, 1],
            "diff": self.diff, "diff_low": self.diff_low, "diff_high": self.diff_high,
            f"n_{g0}": self.n[0], f"n_{g1}": self.n[1],
        })


def model_ab(first_scores, second_scores, groups, *, pairs: Sequence[Sequence[str]] = DEFAULT_OCCUPATION_PAIRS,
             group_names: Sequence[str] = DEFAULT_GENDER_GROUPS, level: float = 0.95) -> ModelAB:
    """How often the model prefers each pair's first occupation, per group of face images.

    ``first_scores`` / ``second_scores``: ``(N, P)`` (or ``(N,)`` for one pair) similarities of each
    image to the prompts of the first and second occupation of each pair; ``groups``: ``(N,)``
    labels of the images; images labelled with neither of ``group_names`` are left out.
    """
    import numpy as np

    z = level_z(level)
    first = _scores(first_scores, "first_scores", "(N, P)")
    if first.ndim == 1:
        first = first[:, None]
    second = _scores(second_scores, "second_scores", f"{first.shape}")
    if second.ndim == 1:
        second = second[:, None]
    if second.shape != first.shape:
        raise DataError(MSG_SCORES.format(name="second_scores", shape=f"{first.shape}",
                                          problem=f"shape {second.shape}"))
    pair_t = tuple((str(a), str(b)) for a, b in pairs)
    if len(pair_t) != first.shape[1]:
        raise UsageError(MSG_PAIRS.format(got=len(pair_t), n=first.shape[1]))
    names = tuple(str(g) for g in group_names)
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(MSG_GROUP_NAMES.format(got=tuple(group_names)))
    lab = np.asarray(groups).astype(str)
    if lab.shape != (first.shape[0],):
        raise DataError(MSG_SCORES.format(name="groups", shape=f"({first.shape[0]},)", problem=f"shape {lab.shape}"))
    shares, los, his, ns = [], [], [], []
    for g in names:
        sel = lab == g
        if not sel.any():
            found = ", ".join(repr(v) for v in sorted(set(lab.tolist()))[:10])
            raise DataError(MSG_GROUP_EMPTY.format(group=g, found=found))
        wins, _ = _preference(first[sel], second[sel])
        sh = wins / sel.sum()
        lo, hi = wilson_interval(sh, float(sel.sum()), z)
        shares.append(sh)
        los.append(lo)
        his.append(hi)
        ns.append(int(sel.sum()))
    share, lo, hi = np.stack(shares, 1), np.stack(los, 1), np.stack(his, 1)
    dlo, dhi = newcombe_interval(share[:, 0], lo[:, 0], hi[:, 0], share[:, 1], lo[:, 1], hi[:, 1])
    return ModelAB(pair_t, (names[0], names[1]), (ns[0], ns[1]), share, lo, hi, share[:, 0] - share[:, 1],
                   dlo, dhi, float(level))


__all__ = ["DEFAULT_GENDER_GROUPS", "DEFAULT_OCCUPATION_PAIRS", "ModelAB", "ModelRB", "model_ab", "model_rb"]
