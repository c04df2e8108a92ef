"""``balance measure`` and ``balance fit`` as functions: representation and association bias of caption data,
and M4 keep probabilities that balance it (Alabdulmohsin et al., ICLR 2024).

:func:`measure_bias`: one scan of the captions counts the distinct (groups, labels) patterns per file
(:mod:`clipprobe.captions.patterns`), and data RB/AB with intervals are computed on the pattern table
(:func:`clipprobe.analysis.balance.data_bias`). :func:`fit_balance`: the same scan (which also hashes
each caption's content), the M4 solve on the pattern table (its cost grows with the number of distinct
patterns, not with the captions), the keep ranks (each pattern keeps ``q x count`` captions rounded down
or up, the first by a hash of their content), then a pass that writes each caption's keep probability and keep
flag; the statistics and the constraints are recomputed on the kept data (weighted by q, and as the
flags keep it). With ``from_scan`` (a ``captions count --for-balance`` folder of the same files), the
scan's pass reads each caption's recorded matches and content hashes instead of the captions
(:func:`clipprobe.captions.patterns.open_scan` refuses a scan that does not fit). Every setting is checked, the lexicon, taxonomy, target and
every file's columns are read before the first caption is: bad input fails before anything is written.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

from clipprobe.captions.patterns import EngineSettings
from clipprobe.errors import DataError, UsageError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MSG_GROUPS_WITHOUT_COLUMN = "groups are read from the lexicon; give groups only with attribute_column"
MSG_NO_GROUPS = "attribute_column {column!r}: give its groups (at least two)"
MSG_SEED = "seed must be 0 or more, got {value}"
MSG_LEVEL = "level={value!r} must be strictly between 0 and 1"
MSG_NO_CAPTIONS = "no captions to {what}: the caption file(s) ({files}) have no rows"
MSG_PROXY_LABEL = "proxy {proxy!r} is already one of the labels: a word is a label or a proxy, not both"
MSG_PROXY_DUPLICATE = "proxy {proxy!r} is given twice"
MSG_PROXY_EMPTY = "proxies: {value!r} is not a word"
MSG_SOFT_NEEDS_COLUMN = "soft group memberships (soft_bins) are read from an attribute column: give attribute_column"
MSG_CHANGED = ("the second pass found other patterns than the first ({problem}): the captions changed during "
               "the run; delete {parts} and rerun")


@dataclasses.dataclass(frozen=True)
class BalanceConfig:
    """Settings of ``balance measure`` / ``balance fit``.

    ``attribute``: an attribute of the lexicon (its groups are found by their terms), or, with
    ``attribute_column``, the name of the attribute whose per-example group names (``groups``) that
    column holds. ``labels``: a category of ``taxonomy``, ``'all'`` or a word-list file. ``target``:
    ``'uniform'`` or (group, share) pairs. Fit only: ``keep`` (the target keep rate), ``eps_r``,
    ``eps_a``, ``scale``, ``utility`` (a column of positive utilities), ``key`` (a column copied into
    the weights, None for none), ``id_column`` (a stable id column: the keep flags hash it alone; None:
    they hash the caption text and the ``key`` column), ``seed`` (of the keep flags' rank order).
    ``figure``: draw ``balance.png``/``.pdf``. ``proxies``: words that stand for a group (e.g. "beard"),
    matched like labels and given the association constraints, but left out of the reported labels.
    ``label_column``: a column holding each example's labels (a list of label names among ``labels``, or
    one name; null or empty: none), e.g. a multi-label image classifier's output; ``label_source``:
    ``'captions'`` (the label words matched in the caption; the default without ``label_column``),
    ``'column'`` (that column instead; the default with it) or ``'both'`` (either). Proxies always come
    from the caption words.
    ``soft_bins`` (> 0): the attribute column holds each example's quantised membership ``E[s_k]`` as a
    name of :func:`~clipprobe.analysis.patterns.soft_group_name` over ``groups`` (the attribute pass's
    ``soft_<attribute>`` column); M4 and the statistics use the memberships instead of one group.
    """

    captions: tuple[str, ...]
    out: str
    attribute: str = "gender"
    labels: str = "occupation"
    taxonomy: str | None = None
    lexicon: str | None = None
    attribute_column: str | None = None
    groups: tuple[str, ...] | None = None
    label_column: str | None = None
    label_source: str | None = None     # None: 'column' with label_column, else 'captions'
    text_column: str | None = None
    target: Any = "uniform"
    level: float = 0.95
    keep: float = 0.9
    eps_r: float = 0.01
    eps_a: float = 0.01
    scale: str = "conditional"
    utility: str | None = None
    key: str | None = "URL"
    id_column: str | None = None
    seed: int = 0
    figure: bool = True
    engine: EngineSettings = dataclasses.field(default_factory=EngineSettings)
    attribute_source: Any = None    # groups from the images (clipprobe.pipeline.attributes.AttributeSource)
    from_scan: str | None = None    # a `captions count --for-balance` folder of these files: its matches, no rescan
    proxies: tuple[str, ...] = ()
    soft_bins: int = 0

    def check(self) -> "BalanceConfig":
        from clipprobe.analysis.balance import MSG_SCALE, MSG_UNIT, SCALES

        for name in ("keep", "eps_r", "eps_a"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 < value <= 1:
                raise UsageError(MSG_UNIT.format(name=name, value=value))
        if not isinstance(self.level, (int, float)) or not 0 < self.level < 1:
            raise UsageError(MSG_LEVEL.format(value=self.level))
        if self.scale not in SCALES:
            raise UsageError(MSG_SCALE.format(value=self.scale, choices=", ".join(map(repr, SCALES))))
        if self.seed < 0:
            raise UsageError(MSG_SEED.format(value=self.seed))
        if self.attribute_column is None and self.groups is not None:
            raise UsageError(MSG_GROUPS_WITHOUT_COLUMN)
        if self.attribute_column is not None and (not self.groups or len(self.groups) < 2):
            raise UsageError(MSG_NO_GROUPS.format(column=self.attribute_column))
        from clipprobe.captions.indicators import (LABEL_SOURCES, MSG_LABEL_COLUMN_SOURCE, MSG_LABEL_SOURCE,
                                                   MSG_LABEL_SOURCE_COLUMN)

        if self.label_source is not None and self.label_source not in LABEL_SOURCES:
            raise UsageError(MSG_LABEL_SOURCE.format(value=self.label_source,
                                                     choices=", ".join(map(repr, LABEL_SOURCES))))
        if self.label_column is None and self.label_source not in (None, "captions"):
            raise UsageError(MSG_LABEL_SOURCE_COLUMN.format(value=self.label_source))
        if self.label_column is not None and self.label_source == "captions":
            raise UsageError(MSG_LABEL_COLUMN_SOURCE.format(column=self.label_column))
        if self.soft_bins:
            from clipprobe.analysis.patterns import check_soft_bins

            check_soft_bins(self.soft_bins)
            if self.attribute_column is None:
                raise UsageError(MSG_SOFT_NEEDS_COLUMN)
        for i, proxy in enumerate(self.proxies):
            if not isinstance(proxy, str) or not proxy.strip():
                raise UsageError(MSG_PROXY_EMPTY.format(value=proxy))
            if proxy in self.proxies[:i]:
                raise UsageError(MSG_PROXY_DUPLICATE.format(proxy=proxy))
        if self.from_scan is not None:
            from clipprobe.captions.patterns import MSG_SCAN_COLUMN

            for what, column in (("the attribute column", self.attribute_column),
                                 ("the label column", self.label_column), ("the utility column", self.utility)):
                if column is not None:
                    raise UsageError(MSG_SCAN_COLUMN.format(what=f"{what} {column!r}"))
        self.engine.check()
        return self

    def labels_from(self) -> str:
        """Where the labels come from: ``'captions'``, ``'column'`` or ``'both'``."""
        if self.label_source is not None:
            return self.label_source
        return "captions" if self.label_column is None else "column"

    def target_value(self):
        return self.target if isinstance(self.target, str) else dict(self.target)

    def hashed(self) -> tuple[bool, tuple[str, ...]]:
        """What each caption's content hash covers: (the caption text?, these columns)."""
        if self.id_column is not None:
            return False, (self.id_column,)
        return True, (() if self.key is None else (self.key,))

    def hash_description(self) -> str:
        text, columns = self.hashed()
        return " + ".join((["caption text"] if text else []) + [f"column {c!r}" for c in columns])


@dataclasses.dataclass
class Prepared:
    spec: Any
    files: list
    target: Any
    lexicon: str | None
    taxonomy: str
    timer: Any
    started: float
    source: Any = None          # the recorded scan read instead of the captions (from_scan)
    groups: tuple[str, ...] = ()        # the attribute's groups (the engine's are quantised memberships when soft)
    labels: tuple[str, ...] = ()        # the reported labels (the engine's are these, then the proxies)

    def table(self, patterns, config: "BalanceConfig"):
        """The pattern table to balance: the engine's, or its soft form (same rows, same order)."""
        if not config.soft_bins:
            return patterns.table
        from clipprobe.analysis.patterns import soften_table

        return soften_table(patterns.table, self.groups, config.soft_bins)


def _prepare(config: BalanceConfig, *, fit: bool) -> Prepared:
    """Everything checked and read before the first caption: lexicon, labels, target, files' columns."""
    from clipprobe.analysis.balance import resolve_target
    from clipprobe.captions.indicators import attribute_groups, build_spec, resolve_labels
    from clipprobe.captions.patterns import plan_files
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.resources.taxonomy import get_taxonomy
    from clipprobe.runinfo import StageTimer

    config = config.check()
    started = time.time()
    timer = StageTimer()
    with timer("plan"):
        taxonomy = get_taxonomy(config.taxonomy)
        labels = resolve_labels(config.labels, taxonomy)
        lexicon_name = None
        if config.attribute_column is None:
            lexicon = get_lexicon(config.lexicon)
            group_terms = attribute_groups(lexicon, config.attribute)
            groups = tuple(group_terms)
            lexicon_name = lexicon.name
        else:
            group_terms, groups = None, tuple(config.groups)
        real_groups = groups
        if config.soft_bins:
            from clipprobe.analysis.patterns import soft_group_names

            groups = soft_group_names(real_groups, config.soft_bins)[0]
        for proxy in config.proxies:
            if proxy in labels:
                raise UsageError(MSG_PROXY_LABEL.format(proxy=proxy))
        pi = resolve_target(config.target_value(), real_groups)
        method = config.engine.method()
    hash_text, hash_columns = config.hashed() if fit else (False, ())
    with timer("compile"):
        spec = build_spec(attribute=config.attribute, group_terms=group_terms, groups=groups,
                          labels=tuple(labels) + tuple(config.proxies),
                          method=method, group_column=config.attribute_column,
                          label_column=config.label_column, label_source=config.labels_from(),
                          column_labels=tuple(labels),
                          utility_column=config.utility if fit else None, key_column=config.key if fit else None,
                          hash_text=hash_text, hash_columns=hash_columns)
    source = None
    with timer("plan"):
        files = plan_files(config.captions, config.text_column, spec)
        if config.from_scan is not None:
            from clipprobe.captions.patterns import open_scan

            source = open_scan(config.from_scan, spec, files, config.engine.chunk_rows)
    log.info("%d files, attribute %r (%d groups), %d labels, %d proxies", len(files), config.attribute,
             len(real_groups), len(labels), len(config.proxies))
    return Prepared(spec, files, pi, lexicon_name, taxonomy.name, timer, started, source, tuple(real_groups),
                    tuple(labels))


def _check_captions(patterns, what: str) -> None:
    """Refuse an input without any caption (0-row files): there is nothing to measure or balance."""
    if patterns.rows == 0 or patterns.table.n_rows == 0:
        files = ", ".join(str(f["path"]) for f in patterns.files[:3]) + (", ..." if len(patterns.files) > 3 else "")
        raise DataError(MSG_NO_CAPTIONS.format(what=what, files=files))


@dataclasses.dataclass(frozen=True)
class BalanceResult:
    """What a run wrote: the output folder, the bias tables (``data`` blocks), the run record, the files."""

    out: Path
    groups: Any
    cells: Any
    run: dict
    files: tuple[Path, ...]
    solution: Any = None


def _record(command: str, config: BalanceConfig, prep: Prepared, patterns, **results) -> dict:
    from clipprobe.config import to_dict
    from clipprobe.report.balance import MENTION_NOTE
    from clipprobe.runinfo import run_record

    spec = prep.spec
    return run_record(
        command, format_version=FORMAT_VERSION, config=to_dict(config), timings=prep.timer.seconds,
        started=prep.started, engine=config.engine.engine, matcher=spec.method,
        workers=config.engine.n_workers, attribute=config.attribute,
        groups_from=("column " + repr(config.attribute_column)) if config.attribute_column else "lexicon",
        labels_from=_labels_from(config),
        lexicon=prep.lexicon, taxonomy=prep.taxonomy, groups=list(prep.groups), labels=list(prep.labels),
        proxies=list(config.proxies),
        attribute_mode=(f"soft (E[s_k] in steps of 1/{config.soft_bins})" if config.soft_bins else "hard"),
        target=[float(x) for x in prep.target], mentions=MENTION_NOTE,
        files=patterns.files, n_files=len(patterns.files), rows=patterns.rows, nulls=patterns.nulls,
        from_scan=None if prep.source is None else str(Path(config.from_scan).expanduser().resolve()),
        patterns=patterns.table.n_rows, rows_scanned_this_run={"patterns": patterns.rows_scanned},
        worker_seconds={"patterns": patterns.worker_seconds}, **results)


def _labels_from(config: BalanceConfig) -> str:
    column = repr(config.label_column)
    return {"captions": "caption words", "column": f"column {column}",
            "both": f"caption words or column {column}"}[config.labels_from()]


def _bias_summary(bias) -> dict:
    return {"rb_max": bias.rb_max, "rb_argmax": bias.rb_argmax, "ab_max": bias.ab_max,
            "ab_argmax": list(bias.ab_argmax) if bias.ab_argmax else None, "n_examples": bias.n_examples,
            "n_mention": bias.n_mention, "n_multi": bias.n_multi}


def _flag_summary(residuals) -> dict:
    """The constraints on the captions the flags keep: largest |residual| per kind, and how many exceed
    their bound (the flags keep q x count of each pattern rounded down or up: up to one caption per pattern off q)."""
    import numpy as np

    out = {}
    kinds = [("representation", "r"), ("association", "a")]
    if (residuals["constraint"] == "proxy").any():
        kinds.append(("proxy", "p"))
    for kind, short in kinds:
        part = residuals[residuals["constraint"] == kind]
        values = np.abs(part["residual_kept"].to_numpy(float))
        finite = np.isfinite(values)
        out[f"max_residual_{short}_kept"] = float(values[finite].max()) if finite.any() else 0.0
        out[f"violated_{short}_kept"] = int((values[finite] > part["bound"].to_numpy(float)[finite] + 1e-12).sum())
        out[f"constraints_{short}"] = int(finite.sum())
    return out


def _association_maxima(solution) -> dict:
    """Largest |residual| of the association constraints of the labels, and of the proxies (if any)."""
    import numpy as np

    is_proxy = np.asarray([name in solution.proxies for name in solution.table.labels], bool)
    out = {}
    for short, cols in (("a", ~is_proxy), ("p", is_proxy)):
        if short == "p" and not is_proxy.any():
            continue
        part = np.abs(solution.residual_a[:, cols])
        out[f"max_residual_{short}"] = float(np.nanmax(part)) if np.isfinite(part).any() else 0.0
    return out


def measure_bias(config: BalanceConfig) -> BalanceResult:
    """Data RB and AB of the captions: ``bias_groups.parquet``, ``bias_cells.parquet``,
    ``patterns.parquet``, a figure and ``run.json`` in ``config.out``."""
    from clipprobe.analysis.balance import data_bias
    from clipprobe.captions.patterns import count_patterns
    from clipprobe.report.balance import bias_frames, patterns_frame, write_balance

    from clipprobe._io import check_writable
    from clipprobe.pipeline.attributes import resolve_attribute_source

    config, source = resolve_attribute_source(config)
    prep = _prepare(config, fit=False)
    out = check_writable(config.out)
    with prep.timer("patterns"):
        patterns = count_patterns(prep.spec, prep.files, out / "parts", config.engine, prep.source)
    _check_captions(patterns, "measure")
    table = prep.table(patterns, config)
    with prep.timer("stats"):
        before = data_bias(table, prep.target, level=config.level, proxies=config.proxies)
        groups, cells = bias_frames({"before": before})
    record = _record("balance measure", config, prep, patterns, before=_bias_summary(before),
                     attribute_source=source)
    with prep.timer("write"):
        import shutil

        from clipprobe.report.balance import FILES

        (out / FILES["run"]).unlink(missing_ok=True)
        shutil.rmtree(out / FILES["weights"], ignore_errors=True)      # an earlier fit's, in the same folder
        files = write_balance(out, {"groups": groups, "cells": cells, "patterns": patterns_frame(table)},
                              record, figure=config.figure)
    return BalanceResult(out, groups, cells, record, tuple(files))


def fit_balance(config: BalanceConfig) -> BalanceResult:
    """M4 keep probabilities (see the module docstring); raises
    :class:`~clipprobe.analysis.balance.BalanceInfeasible` (with the largest feasible keep rate) when
    the constraints cannot be met at ``config.keep``."""
    import numpy as np

    from clipprobe.analysis.balance import data_bias, m4_solve
    from clipprobe.analysis.keepflags import flag_counts
    from clipprobe.captions.patterns import count_patterns, keep_ranks, publish_weights, solution_key, write_weights
    from clipprobe.report.balance import FILES, bias_frames, patterns_frame, write_balance

    from clipprobe._io import check_writable
    from clipprobe.pipeline.attributes import resolve_attribute_source

    config, source = resolve_attribute_source(config)
    prep = _prepare(config, fit=True)
    out = check_writable(config.out)
    with prep.timer("patterns"):
        patterns = count_patterns(prep.spec, prep.files, out / "parts", config.engine, prep.source)
    _check_captions(patterns, "balance")
    table = prep.table(patterns, config)       # row for row the engine's table (its soft form, if soft)
    with prep.timer("solve"):
        solution = m4_solve(table, prep.target, keep=config.keep, eps_r=config.eps_r, eps_a=config.eps_a,
                            scale=config.scale, proxies=config.proxies)
    want = flag_counts(solution)
    spec = dataclasses.replace(prep.spec, fitted=patterns.table, fitted_q=solution.q, keep_counts=want,
                               seed=config.seed)
    hash_text, hash_columns = config.hashed()
    key = solution_key(patterns.table, solution.q, [config.seed, config.key, hash_text, list(hash_columns),
                                           [f.key for f in prep.files]])
    with prep.timer("ranks"):
        ranked = keep_ranks(spec, prep.files, out / "parts", config.engine, key)
    spec = dataclasses.replace(spec, ranks=ranked.ranks)
    with prep.timer("weights"):
        weights = write_weights(spec, prep.files, out / "parts", config.engine, key)
    for what, got, expected in (("captions", weights.count, table.count), ("kept captions", weights.kept, want)):
        if not np.array_equal(got, expected):
            bad = int(np.flatnonzero(got != expected)[0])
            raise DataError(MSG_CHANGED.format(problem=f"pattern {bad}: {int(expected[bad])} {what}, then "
                                                       f"{int(got[bad])}", parts=out / "parts"))
    with prep.timer("stats"):
        px = config.proxies
        before = data_bias(table, prep.target, level=config.level, proxies=px)
        after = data_bias(table, prep.target, q=solution.q, level=config.level, proxies=px)
        kept = data_bias(table, prep.target, q=weights.kept / np.maximum(table.count, 1), level=config.level,
                         proxies=px)
        groups, cells = bias_frames({"before": before, "after": after, "kept": kept})
        residuals = solution.residual_frame(kept=weights.kept)
    fit = {
        "keep_target": config.keep, "keep_rate": solution.keep_rate, "max_keep": solution.max_keep,
        "kept_by_flags": weights.n_kept, "kept_share_by_flags": weights.n_kept / max(weights.rows, 1),
        "objective": solution.objective, "dual_objective": solution.dual_objective,
        "max_violation": solution.max_violation, "converged": solution.converged,
        "n_evaluations": solution.n_evaluations, "solver": solution.message,
        "max_residual_r": float(np.nanmax(np.abs(solution.residual_r))) if solution.residual_r.size else 0.0,
        **_association_maxima(solution),
        **_flag_summary(residuals), "flags": {
            "rule": ("each pattern keeps q x count captions rounded down or up (systematic rounding in blocks of "
                     "the same groups), the first by a seeded hash of their content"),
            "hash_of": config.hash_description(), "seed": config.seed,
            "patterns_split": int(ranked.ranks.split.sum()), "boundary_captions": ranked.boundary_captions},
        "eps_r": config.eps_r, "eps_a": config.eps_a, "scale": config.scale, "seed": config.seed,
        "weights": FILES["weights"], "weights_parts": len(weights.chunk_files), "solution_key": key,
    }
    record = _record("balance fit", config, prep, patterns, fit=fit, before=_bias_summary(before),
                     after=_bias_summary(after), kept=_bias_summary(kept), attribute_source=source)
    record["rows_scanned_this_run"]["ranks"] = ranked.rows_read
    record["rows_scanned_this_run"]["weights"] = weights.rows_scanned
    record["worker_seconds"]["weights"] = weights.worker_seconds
    with prep.timer("write"):
        (out / FILES["run"]).unlink(missing_ok=True)
        publish_weights(weights.chunk_files, out / FILES["weights"])
        tables = {"groups": groups, "cells": cells, "patterns": patterns_frame(table, solution.q, weights.kept),
                  "residuals": residuals, "convergence": solution.log.frame()}
        files = write_balance(out, tables, record, figure=config.figure)
    record["timings_s"] = prep.timer.as_dict()
    return BalanceResult(out, groups, cells, record, (out / FILES["weights"], *files), solution)
