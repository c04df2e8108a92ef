"""One function per method, in one vocabulary: arrays (or a model) in, typed tables out.

=====================================  ==============================================================
function                               method, and what it returns
=====================================  ==============================================================
:func:`probe`                          So-B-IT retrieval probe -> :class:`~clipprobe.analysis.probe.ReportTables`
:func:`association_tests`              WEAT/SEAT/iEAT-style tests -> :class:`AssociationTables`
:func:`data_bias`                      data RB and AB of captions -> :class:`DataBiasTables`
:func:`balance`                        M4 balancing of captions -> :class:`BalanceTables`
:func:`subsets`                        the probe on subsets of the images -> :class:`~clipprobe.analysis.subsets.SubsetTables`
=====================================  ==============================================================

Every function takes its data positionally and everything else by keyword. The shared keywords mean
the same thing everywhere: ``seed`` seeds every random draw of the call; ``alpha`` is the
false-discovery rate of the Benjamini-Hochberg adjusted flags (``flagged = q < alpha``); ``level`` the
level of two-sided intervals; ``bootstrap`` the number of bootstrap resamples (0: none);
``permutations`` the number of permutation draws behind a p-value (or the budget for an exact
enumeration). Every result is a frozen dataclass whose tables are pandas DataFrames with the
columns named in its docstring (and in the ``*_COLUMNS`` constants), plus the settings that shaped it.

These functions are thin: each calls the analysis (or, for a model, pipeline) function named in its
docstring and reshapes nothing that function computes, so their numbers are the commands' numbers.
Where a method takes a model (``association_tests`` with a suite), ``model`` is a spec string as on the
command line (``"ViT-B-32:openai"``, ``"demo"``), an :class:`~clipprobe.models.Encoder`, or an
already-built open_clip ``(model, preprocess, tokenizer)``
(:meth:`clipprobe.models.Encoder.from_open_clip`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clipprobe.analysis.probe import ReportTables
    from clipprobe.analysis.subsets import SubsetTables

DEFAULT_EAT_PERMUTATIONS = 1_000_000    # clipprobe.analysis.eat.DEFAULT_PERMUTATIONS (kept here: no import)
DEFAULT_EAT_BOOTSTRAP = 2_000           # clipprobe.analysis.eat.DEFAULT_BOOTSTRAP
DEFAULT_SC_PERMUTATIONS = 10_000        # clipprobe.analysis.eat.DEFAULT_SC_PERMUTATIONS

TEST_COLUMNS = (
    "test", "n_x", "n_y", "n_a", "n_b", "n_x_rows", "n_y_rows", "n_a_rows", "n_b_rows",
    "effect_size", "ci_low", "ci_high", "ci_method", "ci_level", "ci_resample", "ci_note",
    "statistic", "p_value", "q_value", "flagged", "n_permutations", "exact",
    "p_value_rows", "n_permutations_rows", "exact_rows", "alternative", "ddof",
)
SKIPPED_COLUMNS = ("test", "status", "reason")
SC_WEAT_COLUMNS = (
    "test", "side", "set", "row", "association", "effect_size", "p_value", "p_value_rows", "q_value", "flagged",
    "n_permutations", "exact",
)
BIAS_SUMMARY_COLUMNS = (
    "data", "n_examples", "n_mention", "n_multi", "rb_max", "rb_argmax", "ab_max", "ab_argmax_group",
    "ab_argmax_label", "level",
)
EXAMPLE_COLUMNS = ("example", "pattern", "q", "keep")
SET_NAMES = ("X", "Y", "A", "B")

MSG_ALPHA = "alpha must be between 0 and 1, got {alpha}"
MSG_BOOTSTRAP = "bootstrap must be 0 (no intervals) or a number of resamples, got {n}"
MSG_TESTS_FORM = ("tests: expected a suite name or test file (with model=), a mapping of test name -> "
                  "{{'X', 'Y', 'A', 'B'}} arrays, or a sequence of EatInput; got {got}")
MSG_TEST_SETS = "tests: test {name!r} needs the sets X, Y, A and B; missing: {missing}"
MSG_TEST_KEYS = "tests: test {name!r} has unknown key(s) {keys}; a test holds X, Y, A, B and optionally units"
MSG_SUITE_NEEDS_MODEL = "tests: {tests!r} names test files whose stimuli must be embedded; give model= as well"
MSG_SUITE_ALTERNATIVE = "alternative {value!r}: the tests of a suite or test file run 'greater' or 'two-sided'"
MSG_MODEL_UNUSED = ("model: the tests were given as embeddings, so there is nothing to embed; leave model out "
                    "or give a suite name or test file")
MSG_ROOTS_UNUSED = ("stimuli_root, oasis_root: the tests were given as embeddings, so there are no images to find; "
                    "leave them out or give a suite name or test file")
MSG_BY_FORM = ("by: expected 'kmeans:N', 'attribute:NAME', 'column:NAME', 'file:PATH', an Assignment, or one "
               "subset name per image; got {got}")
MSG_BY_NEEDS = "by: {by!r} needs {what}= ({why})"
MSG_CONTENT = "content: {n} value(s) for {n_examples} example(s) (one per row of s and y)"
MSG_BY_LENGTH = "by: {n} subset name(s) for {n_images} image(s) (columns of scores)"


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < float(alpha) < 1:
        raise UsageError(MSG_ALPHA.format(alpha=alpha))
    return float(alpha)


def _check_bootstrap(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise UsageError(MSG_BOOTSTRAP.format(n=n))
    return int(n)


# ----------------------------------------------------------------------------------------------
# the retrieval probe


def probe(
    scores,
    labels,
    *,
    words: Sequence[str],
    k: int,
    attributes: Sequence[str] | None = None,
    reference: str = "base",
    bootstrap: int = 0,
    permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    level: float = 0.95,
    ties: str = "index",
    neutral=None,
    controls=None,
    categories=None,
    prompts=None,
    files: Sequence[str] | None = None,
) -> "ReportTables":
    """The So-B-IT probe's tables (``groups``, ``words``, ``summary``) of a ``(words x images)`` score array.

    :func:`clipprobe.analysis.probe.probe_scores` (every parameter is documented there): ``bootstrap``
    resamples the images for ``stability``; ``permutations`` label shuffles make the null of MaxSkew and
    MinSkew; ``alpha`` is the FDR of ``flagged`` and ``flagged_vs_controls``. The tables are exactly those
    ``clipprobe report`` writes (``GROUP_COLUMNS``, ``WORD_COLUMNS``, ``SUMMARY_COLUMNS`` of that module).
    """
    from clipprobe.analysis.probe import probe_scores

    return probe_scores(scores, labels, words=words, k=k, attributes=attributes, reference=reference,
                        bootstrap=bootstrap, seed=seed, alpha=alpha, level=level, permutations=permutations,
                        ties=ties, neutral=neutral, controls=controls, categories=categories, prompts=prompts,
                        files=files)


# ----------------------------------------------------------------------------------------------
# association tests


@dataclasses.dataclass(frozen=True)
class AssociationTables:
    """The association tests of one call.

    ``tests``: one row per test (:data:`TEST_COLUMNS`): ``n_x`` .. ``n_b`` stimuli per set and
    ``n_x_rows`` .. ``n_b_rows`` its rows (sentences; an image set's images); ``effect_size`` (over the
    rows, the published convention) with its bootstrap interval ``ci_low``/``ci_high`` (NaN without
    ``bootstrap``, or withheld where ``ci_note`` says why); ``statistic`` and ``p_value`` of the
    permutation test over the stimuli, ``q_value`` BH over the tests, ``flagged = q_value < alpha``;
    ``p_value_rows`` the same test over rows (as if independent). ``sc_weat``: one row per stimulus row
    (:data:`SC_WEAT_COLUMNS`): the single-category test of each target row (``side="targets"``, sets X
    and Y) against A vs B, and of each attribute row (``side="attributes"``, sets A and B) against X vs
    Y; ``row`` counts within its set; ``q_value`` BH over the rows of one test. No rows with
    ``sc_weat=False``. Definitions: :mod:`clipprobe.analysis.eat` and docs/association-tests.md.
    ``skipped``: one row per test of a suite or test file that was not computed (:data:`SKIPPED_COLUMNS`):
    ``status`` ``"unavailable"`` (its stimuli were never published) or ``"skipped"`` (its stimuli were not
    given here, e.g. OASIS images), and the ``reason``; no rows for arrays given directly.
    """

    tests: "pd.DataFrame"
    sc_weat: "pd.DataFrame"
    alpha: float
    seed: int
    skipped: "pd.DataFrame | None" = None

    def __post_init__(self) -> None:
        if self.skipped is None:
            object.__setattr__(self, "skipped", _skipped_table(()))


def _eat_inputs(tests) -> list:
    """EatInput objects from a mapping name -> sets or a sequence of EatInput."""
    from clipprobe.analysis.eat import EatInput

    if isinstance(tests, Mapping):
        out = []
        for name, sets in tests.items():
            if isinstance(sets, EatInput):
                out.append(dataclasses.replace(sets, name=str(name)))
                continue
            if not isinstance(sets, Mapping):
                raise UsageError(MSG_TESTS_FORM.format(got=f"test {name!r} as {type(sets).__name__}"))
            missing = [s for s in SET_NAMES if s not in sets]
            if missing:
                raise UsageError(MSG_TEST_SETS.format(name=str(name), missing=", ".join(missing)))
            unknown = sorted(str(k) for k in sets if k not in SET_NAMES and k != "units")
            if unknown:
                raise UsageError(MSG_TEST_KEYS.format(name=str(name), keys=", ".join(unknown)))
            out.append(EatInput(name=str(name), X=sets["X"], Y=sets["Y"], A=sets["A"], B=sets["B"],
                                units=sets.get("units")))
        return out
    if isinstance(tests, Sequence) and all(isinstance(t, EatInput) for t in tests):
        return list(tests)
    raise UsageError(MSG_TESTS_FORM.format(got=type(tests).__name__))


def _skipped_table(resolved) -> "pd.DataFrame":
    """The tests of a suite that were not computed, named as in the ``tests`` table (``NAME (ORDER)``)."""
    import pandas as pd

    rows = [{"test": f"{t.name} ({t.order})", "status": "unavailable" if t.unavailable else "skipped",
             "reason": t.unavailable or t.skipped}
            for t in resolved if t.unavailable is not None or t.skipped is not None]
    return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in SKIPPED_COLUMNS})


def _association_tables(results, alpha: float, seed: int, resolved=()) -> AssociationTables:
    import numpy as np
    import pandas as pd

    rows = [{
        "test": r.name, "n_x": r.n_x, "n_y": r.n_y, "n_a": r.n_a, "n_b": r.n_b,
        "n_x_rows": r.n_x_texts, "n_y_rows": r.n_y_texts, "n_a_rows": r.n_a_texts, "n_b_rows": r.n_b_texts,
        "effect_size": r.effect_size, "ci_low": r.ci_low, "ci_high": r.ci_high, "ci_method": r.ci_method,
        "ci_level": r.ci_confidence, "ci_resample": r.ci_resample, "ci_note": r.ci_note, "statistic": r.statistic,
        "p_value": r.p_value, "q_value": r.q_value, "flagged": bool(r.q_value < alpha),
        "n_permutations": r.n_permutations, "exact": r.exact, "p_value_rows": r.p_value_sentences,
        "n_permutations_rows": r.n_permutations_sentences, "exact_rows": r.exact_sentences,
        "alternative": r.alternative, "ddof": r.ddof,
    } for r in results]
    tests = pd.DataFrame(rows, columns=list(TEST_COLUMNS))
    frames = []
    for r in results:
        for side, sc, first, second, n_first in (("targets", r.sc_targets, "X", "Y", r.n_x_texts),
                                                 ("attributes", r.sc_attributes, "A", "B", r.n_a_texts)):
            if sc is None:
                continue
            n = len(sc.p_value)
            index = np.arange(n)
            frames.append(pd.DataFrame({
                "test": r.name, "side": side, "set": np.where(index < n_first, first, second),
                "row": np.where(index < n_first, index, index - n_first), "association": sc.association,
                "effect_size": sc.effect_size, "p_value": sc.p_value,
                "p_value_rows": sc.p_value if sc.p_value_sentences is None else sc.p_value_sentences,
                "q_value": sc.q_value, "flagged": np.asarray(sc.q_value) < alpha,
                "n_permutations": sc.n_permutations, "exact": sc.exact,
            }))
    sc_weat = (pd.concat(frames, ignore_index=True) if frames
               else pd.DataFrame({c: pd.Series(dtype=object) for c in SC_WEAT_COLUMNS}))
    return AssociationTables(tests=tests, sc_weat=sc_weat[list(SC_WEAT_COLUMNS)], alpha=alpha, seed=int(seed),
                             skipped=_skipped_table(resolved))


def association_tests(
    tests,
    *,
    model: Any = None,
    seed: int = 0,
    alpha: float = 0.05,
    bootstrap: int = DEFAULT_EAT_BOOTSTRAP,
    permutations: int = DEFAULT_EAT_PERMUTATIONS,
    level: float = 0.95,
    alternative: str = "greater",
    ddof: int = 1,
    resample: str = "all",
    sc_weat: bool = True,
    sc_permutations: int = DEFAULT_SC_PERMUTATIONS,
    select: Sequence[str] = (),
    paper_signs: bool = False,
    cache_dir: str | os.PathLike | None = None,
    device: str = "auto",
    offline: bool = False,
    n_jobs: int | None = None,
    stimuli_root: str | os.PathLike | None = None,
    oasis_root: str | os.PathLike | None = None,
) -> AssociationTables:
    """Embedding association tests (effect size, permutation p-value, interval, SC-WEAT), in one pass.

    ``tests``: either embeddings, a mapping ``name -> {"X": ..., "Y": ..., "A": ..., "B": ...}`` of
    ``(rows, dim)`` arrays (optionally ``"units"``: a mapping set -> one stimulus label per row, for
    templated sentences) or a sequence of :class:`~clipprobe.analysis.eat.EatInput`, computed by
    :func:`clipprobe.analysis.eat.run_eats`; or a shipped suite name (``"weat"``, ``"ghate2025"``, ...) or
    a test file, whose stimuli ``model`` embeds (through the embedding cache in ``cache_dir``), computed
    by :func:`clipprobe.pipeline.eat.run_eat` without writing a folder. ``select`` keeps only the named
    tests of a suite; ``paper_signs`` applies Ghate et al.'s sign convention; ``stimuli_root``: a local
    copy of the iEAT images, ``oasis_root``: the OASIS folder (without it the tests that need OASIS are
    returned in ``skipped``, as are the tests whose stimuli were never published).

    ``permutations``: the budget of the permutation test over the stimuli of X u Y (exact enumeration
    when the partitions are fewer); ``sc_permutations`` the same for SC-WEAT; ``bootstrap``: resamples
    of the stimuli for the Fisher-z interval of the effect size at ``level`` (0: no interval; otherwise
    at least 100); ``resample``: ``"all"`` four sets or ``"targets"`` (A and B fixed); ``alternative``:
    ``"greater"`` (published), ``"less"`` or ``"two-sided"``; ``ddof``: 1 (published) or 0 (WEFE).
    """
    from clipprobe.analysis.eat import EatSettings, run_eats

    alpha = _check_alpha(alpha)
    bootstrap = _check_bootstrap(bootstrap)
    if isinstance(tests, (str, os.PathLike)):
        if model is None:
            raise UsageError(MSG_SUITE_NEEDS_MODEL.format(tests=str(tests)))
        from clipprobe.models import as_encoder
        from clipprobe.pipeline.eat import EatConfig, run_eat
        from clipprobe.resources.eat import list_suites

        if alternative not in ("greater", "two-sided"):
            from clipprobe.analysis.eat import check_alternative

            check_alternative(alternative)
            raise UsageError(MSG_SUITE_ALTERNATIVE.format(value=alternative))
        if resample not in ("all", "targets"):
            from clipprobe.analysis.eat import MSG_RESAMPLE

            raise UsageError(MSG_RESAMPLE.format(value=resample))
        is_name = str(tests) in list_suites()
        config = EatConfig(
            out="", model="", suite=str(tests) if is_name else None, tests_file=None if is_name else str(tests),
            tests=tuple(select), permutations=permutations, sc_permutations=sc_permutations, seed=seed, ddof=ddof,
            two_sided=alternative == "two-sided", interval="fisher-z" if bootstrap else None,
            bootstrap=bootstrap if bootstrap else DEFAULT_EAT_BOOTSTRAP, fixed_attributes=resample == "targets",
            confidence=level, sc_weat=sc_weat, paper_signs=paper_signs,
            cache_dir=None if cache_dir is None else str(cache_dir), device=device, offline=offline, figures=False,
            n_jobs=n_jobs, stimuli_root=None if stimuli_root is None else str(stimuli_root),
            oasis_root=None if oasis_root is None else str(oasis_root))
        encoder = as_encoder(model, device=device, offline=offline or None)
        run = run_eat(config, encoder=encoder, write=False, progress=False)
        return _association_tables(run.results, alpha, seed, run.tests)
    if model is not None:
        raise UsageError(MSG_MODEL_UNUSED)
    if stimuli_root is not None or oasis_root is not None:
        raise UsageError(MSG_ROOTS_UNUSED)
    inputs = _eat_inputs(tests)
    settings = EatSettings(ddof=ddof, n_permutations=permutations, alternative=alternative, seed=seed,
                           n_bootstrap=bootstrap if bootstrap else DEFAULT_EAT_BOOTSTRAP, confidence=level,
                           ci_method="fisher-z" if bootstrap else None, ci_resample=resample, sc_weat=sc_weat,
                           sc_permutations=sc_permutations, n_jobs=n_jobs)
    return _association_tables(run_eats(inputs, settings), alpha, seed)


# ----------------------------------------------------------------------------------------------
# data bias and balancing


@dataclasses.dataclass(frozen=True)
class DataBiasTables:
    """Representation and association bias of data (definitions: :mod:`clipprobe.analysis.balance`).

    ``groups``: one row per ``data`` and group: ``target``, ``share`` (of the captions that mention a
    group) with ``share_low/high``, ``rb = share - target`` with ``rb_low/high``, ``n_eff``,
    ``weighted``. ``cells``: one row per ``data``, group and label: ``n_in``/``n_out``, ``p_in``/``p_out``
    (the label's rate in and outside the group), ``ab = p_in - p_out`` with ``ab_low/high`` (NaN below 5
    effective events), ``events_in/out``, ``weighted``. ``summary``: one row per ``data``
    (:data:`BIAS_SUMMARY_COLUMNS`): counts and the maxima ``rb_max``/``ab_max`` (point estimates) with
    where they are. ``data`` is ``"all"``, or ``"weighted"`` when per-example weights were given.
    """

    groups: "pd.DataFrame"
    cells: "pd.DataFrame"
    summary: "pd.DataFrame"
    level: float


def _bias_summary(biases: Mapping[str, Any]) -> "pd.DataFrame":
    import pandas as pd

    rows = [{"data": name, "n_examples": b.n_examples, "n_mention": b.n_mention, "n_multi": b.n_multi,
             "rb_max": b.rb_max, "rb_argmax": b.rb_argmax, "ab_max": b.ab_max,
             "ab_argmax_group": b.ab_argmax[0] if b.ab_argmax else None,
             "ab_argmax_label": b.ab_argmax[1] if b.ab_argmax else None, "level": b.level}
            for name, b in biases.items()]
    return pd.DataFrame(rows, columns=list(BIAS_SUMMARY_COLUMNS))


def _bias_frames(biases: Mapping[str, Any]) -> tuple["pd.DataFrame", "pd.DataFrame"]:
    import pandas as pd

    groups, cells = [], []
    for name, bias in biases.items():
        groups.append(bias.group_frame().assign(data=name))
        cells.append(bias.cell_frame().assign(data=name))
    g, c = pd.concat(groups, ignore_index=True), pd.concat(cells, ignore_index=True)
    return g[["data", *g.columns[:-1]]], c[["data", *c.columns[:-1]]]


def data_bias(
    s,
    y,
    *,
    target="uniform",
    weights=None,
    groups: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    level: float = 0.95,
    min_events: float = 5.0,
) -> DataBiasTables:
    """Data RB and AB of ``n`` examples: ``s`` ``(n, K)`` 0/1 group indicators and ``y`` ``(n, R)`` 0/1
    labels (numpy or scipy.sparse), against ``target`` (``"uniform"``, a mapping group -> share or a
    list of shares); ``weights``: optional ``(n,)`` per-example weights in [0, 1] (keep probabilities:
    the statistics of the kept data); ``groups``/``labels`` name the columns. Intervals at ``level``.

    :func:`clipprobe.analysis.balance.data_bias_arrays` (the statistics of ``clipprobe association --captions``).
    """
    from clipprobe.analysis.balance import data_bias_arrays

    bias = data_bias_arrays(s, y, target, weights=weights, groups=groups, labels=labels, level=level,
                            min_events=min_events)
    biases = {"weighted" if weights is not None else "all": bias}
    g, c = _bias_frames(biases)
    return DataBiasTables(groups=g, cells=c, summary=_bias_summary(biases), level=float(level))


@dataclasses.dataclass(frozen=True)
class BalanceTables:
    """An M4 balancing of examples held in memory (definitions: :mod:`clipprobe.analysis.balance`).

    ``examples``: one row per example (:data:`EXAMPLE_COLUMNS`): its ``pattern`` (row of the pattern
    table), keep probability ``q`` and keep flag ``keep`` (each pattern keeps ``q x count`` of its
    examples, rounded, the first by a seeded hash of ``content``). ``groups``/``cells``/``summary``: as
    :class:`DataBiasTables`, for ``data`` ``"before"`` (all examples), ``"after"`` (weighted by ``q``)
    and ``"kept"`` (the flagged examples). ``constraints``: one row per constraint (``constraint``,
    ``group``, ``label``, ``residual`` on the q-weighted data, ``residual_kept`` on the kept examples,
    ``bound``, ``dual_upper``, ``dual_lower``). ``convergence``: one row per dual evaluation.
    ``keep_rate``: the mean of ``q``; ``max_keep``: the largest feasible one.
    """

    examples: "pd.DataFrame"
    groups: "pd.DataFrame"
    cells: "pd.DataFrame"
    summary: "pd.DataFrame"
    constraints: "pd.DataFrame"
    convergence: "pd.DataFrame"
    keep_rate: float
    max_keep: float
    converged: bool
    seed: int
    level: float


def balance(
    s,
    y,
    *,
    keep: float = 0.9,
    target="uniform",
    eps_r: float = 0.01,
    eps_a: float = 0.01,
    scale: str = "conditional",
    utility=None,
    content: Sequence | None = None,
    groups: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    seed: int = 0,
    level: float = 0.95,
) -> BalanceTables:
    """M4 keep probabilities and keep flags for ``n`` examples (``s``, ``y``, ``target``, ``groups``,
    ``labels`` as :func:`data_bias`), so that the kept data's group shares are within ``eps_r`` of the
    target and within ``eps_a`` among the examples of each label, keeping ``keep`` of the data on average.

    ``utility``: optional ``(n,)`` positive utilities (a costlier example is kept nearer ``keep``);
    ``content``: optional ``(n,)`` texts (or bytes) that identify each example, hashed with ``seed`` to
    pick which examples of a pattern the flags keep (default: the example's index), as ``clipprobe
    balance fit`` hashes captions. Raises :class:`~clipprobe.analysis.balance.BalanceInfeasible` when
    no weights meet the constraints at ``keep``.

    :func:`clipprobe.analysis.patterns.encode_patterns`, :func:`~clipprobe.analysis.balance.m4_solve`,
    :func:`~clipprobe.analysis.keepflags.assign_keep` and :func:`~clipprobe.analysis.balance.data_bias`.
    """
    import numpy as np
    import pandas as pd

    from clipprobe.analysis import balance as bal
    from clipprobe.analysis.eat import check_seed
    from clipprobe.analysis.keepflags import assign_keep, content_hashes
    from clipprobe.analysis.patterns import encode_patterns

    check_seed(seed)
    table, ids = encode_patterns(s, y, utility=utility, groups=groups, labels=labels)
    solution = bal.m4_solve(table, target, keep=keep, eps_r=eps_r, eps_a=eps_a, scale=scale)
    if content is None:
        content = [str(i) for i in range(ids.size)]
    elif len(content) != ids.size:
        raise DataError(MSG_CONTENT.format(n=len(content), n_examples=ids.size))
    q, kept = assign_keep(solution, table, ids, content_hashes(content), seed=seed)
    kept_per_row = np.bincount(ids, weights=kept.astype(np.float64), minlength=table.n_rows)
    biases = {
        "before": bal.data_bias(table, target, level=level),
        "after": bal.data_bias(table, target, q=solution.q, level=level),
        "kept": bal.data_bias(table, target, q=kept_per_row / np.maximum(table.count, 1), level=level),
    }
    g, c = _bias_frames(biases)
    examples = pd.DataFrame({"example": np.arange(ids.size, dtype=np.int64), "pattern": ids.astype(np.int64),
                             "q": q, "keep": kept.astype(bool)})
    return BalanceTables(examples=examples, groups=g, cells=c, summary=_bias_summary(biases),
                         constraints=solution.residual_frame(kept=kept_per_row), convergence=solution.log.frame(),
                         keep_rate=float(solution.keep_rate), max_keep=float(solution.max_keep),
                         converged=bool(solution.converged), seed=int(seed), level=float(level))


# ----------------------------------------------------------------------------------------------
# subsets


def _assignment(by, labels, *, n_images: int, k: int, min_size, small: str, seed: int, vectors, files):
    """An :class:`~clipprobe.analysis.subsets.Assignment` from the forms ``by`` takes."""
    import pandas as pd

    from clipprobe.analysis import subsets as sub

    if isinstance(by, sub.Assignment):
        return by
    if min_size is None:
        from clipprobe.pipeline.subsets import default_min_size

        min_size = default_min_size(k)
    if isinstance(by, str):
        kind, value = sub.parse_by(by)
        if kind == "kmeans":
            if vectors is None:
                raise UsageError(MSG_BY_NEEDS.format(by=by, what="vectors", why="the images' embeddings to cluster"))
            from clipprobe.embeddings.cluster import kmeans

            sub.check_kmeans(int(value), n_images, min_size)
            result = kmeans(vectors, int(value), seed=seed)
            return sub.from_clusters(result.labels, result.centroids, min_size=min_size, small=small)
        if kind == "file":
            if files is None:
                raise UsageError(MSG_BY_NEEDS.format(by=by, what="files", why="each image's name, as the file lists it"))
            from clipprobe.pipeline.subsets import read_assignment_file

            return sub.from_table(read_assignment_file(value), files, min_size=min_size,
                                  source=f"assignment file {value}")
        frame = labels if isinstance(labels, pd.DataFrame) else pd.DataFrame(labels)
        columns = [str(c) for c in frame.columns]
        if value not in columns:
            from clipprobe.errors import did_you_mean

            raise DataError(sub.MSG_COLUMN.format(what=kind, name=value, hint=did_you_mean(value, columns),
                                                  columns=", ".join(columns)))
        values = frame[value].reset_index(drop=True)
        if kind == "attribute":
            from clipprobe.faces import group_order

            text = values.astype(str)
            return sub.from_values(text, min_size=min_size, kind="attribute", order=group_order(value, text.unique()))
        return sub.from_values(values, min_size=min_size, kind="column")
    if isinstance(by, Sequence) or hasattr(by, "__array__"):
        if len(by) != n_images:
            raise DataError(MSG_BY_LENGTH.format(n=len(by), n_images=n_images))
        return sub.from_values(by, min_size=min_size, kind="column")
    raise UsageError(MSG_BY_FORM.format(got=type(by).__name__))


def subsets(
    scores,
    labels,
    *,
    by,
    words: Sequence[str],
    k: int,
    vectors=None,
    min_size: int | None = None,
    small: str = "merge",
    k_mode: str = "fixed",
    attributes: Sequence[str] | None = None,
    reference: str = "base",
    bootstrap: int = 0,
    permutations: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    level: float = 0.95,
    ties: str = "index",
    neutral=None,
    controls=None,
    control_words: Sequence[str] | None = None,
    categories=None,
    prompts=None,
    files: Sequence[str] | None = None,
    include_global: bool = True,
) -> "SubsetTables":
    """The probe within each subset of the images, the KL of recall@k, and their dispersion.

    ``scores``, ``labels``, ``words``, ``k`` and the settings are those of :func:`probe`. ``by`` puts each
    image in a subset: ``"kmeans:N"`` (spherical k-means of ``vectors``, the ``(N, dim)`` image
    embeddings, seeded by ``seed``; clusters below ``min_size`` merged into the nearest, or dropped with
    ``small="drop"``), ``"attribute:NAME"`` or ``"column:NAME"`` (a column of ``labels``), ``"file:PATH"``
    (a CSV/parquet of ``image, subset`` naming ``files``), one subset name per image (None: in no
    subset), or an :class:`~clipprobe.analysis.subsets.Assignment`. ``min_size`` (default ``2 k``):
    smaller subsets are dropped. ``k_mode``: ``"fixed"`` (every subset probed with ``k``) or
    ``"fraction"``.

    :func:`clipprobe.analysis.subsets.subset_scores` (what ``clipprobe subsets`` writes).
    """
    from clipprobe.analysis.probe import _as_scores
    from clipprobe.analysis.subsets import subset_scores

    n_images = _as_scores(scores).shape[1]
    assignment = _assignment(by, labels, n_images=n_images, k=k, min_size=min_size, small=small, seed=seed,
                             vectors=vectors, files=files)
    return subset_scores(scores, labels, assignment, words=words, k=k, k_mode=k_mode, attributes=attributes,
                         reference=reference, bootstrap=bootstrap, seed=seed, alpha=alpha, level=level,
                         permutations=permutations, ties=ties, neutral=neutral, controls=controls,
                         categories=categories, prompts=prompts, files=files, include_global=include_global,
                         progress=False, control_words=control_words)


__all__ = [
    "AssociationTables", "BIAS_SUMMARY_COLUMNS", "BalanceTables", "DataBiasTables", "EXAMPLE_COLUMNS",
    "SC_WEAT_COLUMNS", "SKIPPED_COLUMNS", "TEST_COLUMNS", "association_tests", "balance", "data_bias", "probe", "subsets",
]
