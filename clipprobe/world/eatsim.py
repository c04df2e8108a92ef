"""A known population of association-test stimuli: words with their own offsets, each in templated sentences.

What the association tests sample is words (names, images), not sentences: a word's sentences share that
word's place in the embedding space. This module draws test sets from a population whose parameters are
known, so that what the tests' p-values and intervals do can be measured by simulation
(benchmarks/bench_eat_null.py and the tests):

* a set ``S`` (X, Y, A, B) has a centre ``mu_S``; a word ``j`` of it an offset ``o_j ~ N(0, word_sd_S^2 I)``;
  a template ``t`` (shared by every set, fixed in the world) an offset ``tau_t ~ N(0, template_sd^2 I)``;
* the sentence of word ``j`` in template ``t`` is ``mu_S + o_j + tau_t + e``, ``e ~ N(0, row_sd_S^2 I)``,
  L2-normalised (``word_sd_S``, ``row_sd_S``: the world's ``word_sd`` and ``row_sd`` times the set's spread). ``word_sd = 0``: no word-level variation (sentences of a word vary only by template and
  noise); one template: every stimulus is one row;
* ``effect``: X and A are moved along a random axis by ``+effect``, Y and B by ``-effect``; with
  ``effect = 0`` X and Y have the same centre (the null of the permutation test);
* :func:`population_d` is the effect size of the populations (infinitely many words in every set, X and Y
  mixed in a given proportion), computed on large samples: the quantity an interval of d should cover.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from clipprobe.analysis.eat import EatInput

SETS = ("X", "Y", "A", "B")


@dataclasses.dataclass(frozen=True)
class StimulusWorld:
    """The population parameters (see the module docstring)."""

    centres: Mapping[str, "np.ndarray"]
    templates: "np.ndarray"  # (n_templates, dim)
    word_sd: Mapping[str, float]
    row_sd: Mapping[str, float]

    @property
    def dim(self) -> int:
        return int(self.templates.shape[1])

    @property
    def n_templates(self) -> int:
        return int(self.templates.shape[0])


def make_world(*, dim: int = 32, n_templates: int = 8, effect: float = 0.0, word_sd: float = 1.0,
               row_sd: float = 1.0, template_sd: float = 0.5, shift: float = 0.35,
               spreads: Mapping[str, float] | None = None, seed: int = 0) -> StimulusWorld:
    """A world from a seed. ``spreads``: a factor on ``word_sd`` and ``row_sd`` per set (default 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.standard_normal(dim)
    centres = {k: base + shift * rng.standard_normal(dim) for k in SETS}
    centres["Y"] = centres["X"].copy()  # X and Y differ only by the planted effect
    axis = rng.standard_normal(dim)
    axis /= np.linalg.norm(axis)
    for k, sign in (("X", 1.0), ("A", 1.0), ("Y", -1.0), ("B", -1.0)):
        centres[k] = centres[k] + sign * effect * axis
    templates = template_sd * rng.standard_normal((n_templates, dim))
    spreads = dict(spreads or {})
    return StimulusWorld(centres=centres, templates=templates,
                         word_sd={k: word_sd * float(spreads.get(k, 1.0)) for k in SETS},
                         row_sd={k: row_sd * float(spreads.get(k, 1.0)) for k in SETS})


def draw_set(world: StimulusWorld, name: str, n_words: int, rng, *,
             templates: tuple[int, int] | None = None) -> tuple["np.ndarray", "np.ndarray"]:
    """``n_words`` words of set ``name`` in the world's templates: (rows, the word of each row).

    ``templates``: ``(lo, hi)`` to give each word a random number of the templates (``lo`` to ``hi``, drawn
    uniformly, the first ones), as in SEAT where some words lack some sentence forms.
    """
    import numpy as np

    T, dim = world.n_templates, world.dim
    offsets = world.word_sd[name] * rng.standard_normal((n_words, dim))
    rows = world.centres[name] + offsets[:, None, :] + world.templates[None] + world.row_sd[name] * rng.standard_normal(
        (n_words, T, dim))
    if templates is None:
        keep = np.ones((n_words, T), dtype=bool)
    else:
        lo, hi = templates
        counts = rng.integers(lo, hi + 1, n_words)
        keep = np.arange(T)[None, :] < counts[:, None]
    words = np.broadcast_to(np.arange(n_words)[:, None], (n_words, T))
    rows = rows[keep]
    return rows / np.linalg.norm(rows, axis=1, keepdims=True), words[keep].copy()


def draw_test(world: StimulusWorld, sizes: Mapping[str, int], rng, *, name: str = "sim",
              fixed: Mapping[str, tuple["np.ndarray", "np.ndarray"]] | None = None,
              templates: tuple[int, int] | None = None) -> "EatInput":
    """One test: ``sizes[k]`` words of each set (``fixed``: sets given as (rows, words) instead of drawn)."""
    from clipprobe.analysis.eat import EatInput

    fixed = dict(fixed or {})
    sets, units = {}, {}
    for k in SETS:
        rows, words = fixed[k] if k in fixed else draw_set(world, k, int(sizes[k]), rng, templates=templates)
        sets[k], units[k] = rows, words
    return EatInput(name, sets["X"], sets["Y"], sets["A"], sets["B"], units=units)


def population_d(world: StimulusWorld, proportion_x: float, *, attributes: Mapping[str, "np.ndarray"] | None = None,
                 n_words: int = 40_000, seed: int = 12345) -> float:
    """Effect size of the population: ``(E_X s - E_Y s) / sd of s over the X:Y mixture`` over rows.

    ``s(w) = w . (m_A - m_B)`` with ``m_A`` the mean unit row of A's population (or of the rows given in
    ``attributes``: fixed sets); ``proportion_x``: X's share of the mixture (the design's ``n_x / (n_x +
    n_y)`` in rows). Computed on ``n_words`` words per set (a large sample; its own error is about
    ``2 / sqrt(n_words)`` in d).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    means = {}
    for k in ("A", "B"):
        if attributes is not None and k in attributes:
            means[k] = np.asarray(attributes[k]).mean(axis=0)
        else:
            means[k] = _mean_row(world, k, n_words, rng)
    direction = means["A"] - means["B"]
    moments = {}
    for k in ("X", "Y"):
        total, total2, count = 0.0, 0.0, 0
        for lo in range(0, n_words, 4000):
            rows, _ = draw_set(world, k, min(4000, n_words - lo), rng)
            s = rows @ direction
            total, total2, count = total + s.sum(), total2 + (s * s).sum(), count + s.size
        moments[k] = (total / count, total2 / count - (total / count) ** 2)
    (mx, vx), (my, vy) = moments["X"], moments["Y"]
    p = float(proportion_x)
    var = p * vx + (1 - p) * vy + p * (1 - p) * (mx - my) ** 2
    return float((mx - my) / np.sqrt(var))


# ----------------------------------------------------------------------------------------------
# what the tests do in such worlds


def null_rejection(*, n_words: int, n_templates: int, variance_ratio: float, reps: int, n_attribute_words: int = 10,
                   templates: tuple[int, int] | None = None, n_permutations: int = 2000, levels=(0.05, 0.01),
                   dim: int = 32, seed: int = 0) -> dict:
    """Share of ``reps`` null tests (X and Y words from one population) rejected at each level.

    Each replicate draws ``n_words`` words for X and for Y and ``n_attribute_words`` for A and B, each in the
    world's ``n_templates`` templates (``templates``: a random number of them per word), with word offsets of
    variance ``variance_ratio`` times the sentence-level noise variance. Every test goes through
    :func:`clipprobe.analysis.eat.run_eats` (one call, the p-values in one pass): ``"stimuli"`` is its
    ``p_value`` (words permuted), ``"sentences"`` its ``p_value_sentences`` (sentences permuted).
    """
    import numpy as np

    from clipprobe.analysis.eat import EatSettings, run_eats

    world = make_world(dim=dim, n_templates=n_templates, effect=0.0, word_sd=float(np.sqrt(variance_ratio)),
                       row_sd=1.0, seed=seed)
    rng = np.random.default_rng([seed, 1])
    sizes = {"X": n_words, "Y": n_words, "A": n_attribute_words, "B": n_attribute_words}
    tests = [draw_test(world, sizes, rng, name=f"null{r}", templates=templates) for r in range(reps)]
    results = run_eats(tests, EatSettings(n_permutations=n_permutations, seed=seed, ci_method=None, sc_weat=False))
    p_units = np.array([r.p_value for r in results])
    p_rows = np.array([r.p_value_sentences for r in results])
    return {"reps": reps, "stimuli": {a: float((p_units <= a).mean()) for a in levels},
            "sentences": {a: float((p_rows <= a).mean()) for a in levels},
            "sentences_per_word": float(np.mean([r.n_x_texts / r.n_x for r in results]))}


def interval_coverage(*, n_words: int, word_sd: float, attributes: str, unequal: bool, effect: float, reps: int,
                      resample: Sequence[str] = ("all",), method: str = "fisher-z", n_templates: int = 4,
                      n_resamples: int = 1000, dim: int = 32, seed: int = 0, truth_words: int = 40_000) -> dict:
    """Share of ``reps`` intervals that hold the population's d, for each ``resample`` of the interval.

    ``attributes``: ``"sampled"`` (A and B words drawn anew in every replicate; the truth is d of the four
    populations) or ``"fixed"`` (one A and B drawn once and kept; the truth is d of the target populations with
    those attribute sets). ``unequal``: Y has 1.6 times as many words as X, X's words and sentences spread 1.5
    times as far, Y's 0.7 times. Intervals from :func:`clipprobe.analysis.eat.effect_size_interval` with every
    set size allowed (``min_stimuli=0``).
    """
    import numpy as np

    from clipprobe.analysis.eat import effect_size_interval

    spreads = {"X": 1.5, "Y": 0.7} if unequal else None
    world = make_world(dim=dim, n_templates=n_templates, word_sd=word_sd, effect=effect, spreads=spreads, seed=seed)
    sizes = {"X": n_words, "Y": (n_words * 8 + 4) // 5 if unequal else n_words, "A": n_words, "B": n_words}
    rng = np.random.default_rng([seed, 2])
    fixed = {k: draw_set(world, k, sizes[k], rng) for k in ("A", "B")} if attributes == "fixed" else None
    rows_x, rows_y = sizes["X"] * n_templates, sizes["Y"] * n_templates
    truth = population_d(world, rows_x / (rows_x + rows_y), n_words=truth_words, seed=seed + 7,
                         attributes={k: v[0] for k, v in fixed.items()} if fixed else None)
    hits = {r: 0 for r in resample}
    finite = dict.fromkeys(resample, 0)
    width = dict.fromkeys(resample, 0.0)
    for i in range(reps):
        t = draw_test(world, sizes, rng, fixed=fixed)
        for r in resample:
            ci = effect_size_interval(t.X, t.Y, t.A, t.B, units=t.units, method=method, resample=r, seed=i,
                                      n_resamples=n_resamples, min_stimuli=0)
            if np.isfinite(ci.low) and np.isfinite(ci.high):
                finite[r] += 1
                hits[r] += ci.low <= truth <= ci.high
                width[r] += ci.high - ci.low
    return {"truth": truth, "sizes": sizes, **{f"coverage_{r}": hits[r] / max(finite[r], 1) for r in resample},
            **{f"finite_{r}": finite[r] for r in resample},
            **{f"width_{r}": width[r] / max(finite[r], 1) for r in resample}}


def _mean_row(world: StimulusWorld, name: str, n_words: int, rng) -> "np.ndarray":
    import numpy as np

    total = np.zeros(world.dim)
    count = 0
    for lo in range(0, n_words, 4000):
        rows, _ = draw_set(world, name, min(4000, n_words - lo), rng)
        total += rows.sum(axis=0)
        count += rows.shape[0]
    return total / count


__all__ = ["SETS", "StimulusWorld", "draw_set", "draw_test", "interval_coverage", "make_world", "null_rejection",
           "population_d"]
