"""Bias on subsets of the data, and whether rankings of models survive it (``clipprobe subsets``).

:func:`run_subsets` opens the probe once, puts each image in a subset (k-means of the image
embeddings, an attribute, a label-file column, or a user's assignment file), scores every word
against every image once and probes each subset on its own columns of that score matrix
(:func:`clipprobe.analysis.subsets.subset_scores`), then writes the folder
(:func:`clipprobe.report.subsets.write_subsets`).

:func:`run_compare` takes several models' report folders (a sweep folder's ``models/*/report`` or a
list of folders), reopens each model's probe with the settings its report recorded, probes the same
subsets for every model (k-means runs once, on one model's embeddings, so "subset c03" is the same
images for every model), and correlates the models' global bias with their bias on each subset
(:func:`clipprobe.analysis.subsets.ranking_transfer`) and with any per-model measures a user supplies
(:func:`clipprobe.analysis.subsets.correlate_measures`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from clipprobe.errors import DataError, UsageError, did_you_mean
from clipprobe.pipeline.probe import DEFAULT_K, ProbeConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clipprobe.analysis.subsets import Assignment, SubsetTables
    from clipprobe.pipeline.probe import Probe

log = logging.getLogger(__name__)

DEFAULT_BY = "kmeans:20"
MIN_SIZE_PER_K = 2                       # default min_size: 2 k, so every subset is probed with its share intervals
DEFAULT_TYPICAL = 20
MSG_K = "k must be a positive number of images, got {k}"
MSG_TYPICAL = "typical must be 0 or a positive number of images, got {value!r}"
MSG_COLUMN = "column {name!r} is not a column of the label file of {dataset}{hint}; columns: {columns}"
MSG_ASSIGNMENT_FILE = "assignment file {path} does not exist"
MSG_ASSIGNMENT_READ = "assignment file {path} cannot be read: {error}"
MSG_FEW_SOURCES = "compare needs at least two models' report folders, got {n}"
MSG_NO_REPORT = "{path} is neither a report folder (no run.json) nor a sweep folder (no models/*/report)"
MSG_NO_PROBE_CONFIG = "report folder {path}: run.json records no probe settings (config.probe); rerun its report"
MSG_IMAGES_DIFFER = ("model {model}: its dataset has {n_missing} image(s) that the assignment lacks (first: "
                     "{first!r}); every model must be probed on the same images")
MSG_CLUSTER_MODEL = "cluster_model {value!r} is not one of the models{hint}; models: {models}"
MSG_MEASURES_FILE = "measures file {path} cannot be read: {error}"
MSG_MEASURES_NO_MATCH = "measures file {path}: no model name matches one of the compared models ({models})"


# ----------------------------------------------------------------------------------------------
# one model


@dataclass(frozen=True)
class SubsetsConfig:
    """Settings of ``clipprobe subsets`` (the model and dataset are in ``probe``)."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    out: str = "subsets"
    by: str = DEFAULT_BY
    min_size: int | None = None          # None: default_min_size(k), every subset then probed (see there)
    small: str = "merge"                 # k-means clusters below min_size: merge into the nearest, or drop
    taxonomy: str | None = None
    templates: str = "default"
    k: int = DEFAULT_K
    k_mode: str = "fixed"                # or "fraction": the global top fraction k/N in every subset
    attributes: tuple[str, ...] | None = None
    bootstrap: int = 0                   # resamples for `stability` only (the intervals need none)
    seed: int = 0
    alpha: float = 0.05
    reference: str = "base"
    level: float = 0.95
    permutations: int = 1000
    ties: str = "index"
    score: str = "cosine"
    controls: str | None = "controls"
    typical: int = DEFAULT_TYPICAL       # faces per subset in its contact sheet
    figures: bool = True
    html: bool = True

    def check(self) -> "SubsetsConfig":
        """Every setting in range, checked before anything is loaded."""
        from clipprobe.analysis.probe import check_settings
        from clipprobe.analysis.subsets import K_MODES, MSG_K_MODE, MSG_SMALL, SMALL_RULES, check_min_size, parse_by
        from clipprobe.errors import one_of
        from clipprobe.pipeline.probe import SCORES

        check_settings(alpha=self.alpha, bootstrap=self.bootstrap, seed=self.seed, reference=self.reference,
                       permutations=self.permutations, ties=self.ties)
        kind, value = parse_by(self.by)
        if self.min_size is not None:
            check_min_size(self.min_size)
        if kind == "file" and not Path(str(value)).expanduser().is_file():
            raise DataError(MSG_ASSIGNMENT_FILE.format(path=value))
        if self.small not in SMALL_RULES:
            raise UsageError(MSG_SMALL.format(value=self.small))
        if self.k_mode not in K_MODES:
            raise UsageError(MSG_K_MODE.format(value=self.k_mode))
        if self.score not in SCORES:
            raise one_of(self.score, SCORES, "score")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise UsageError(MSG_K.format(k=self.k))
        if isinstance(self.typical, bool) or not isinstance(self.typical, int) or self.typical < 0:
            raise UsageError(MSG_TYPICAL.format(value=self.typical))
        if not 0 < self.level < 1:
            raise UsageError(f"level must be between 0 and 1, got {self.level}")
        self.probe.check()
        return self


def default_min_size(k: int) -> int:
    """The default smallest subset for top-k probes: ``2 k`` images. A subset of ``k`` images or fewer has no
    top-k that is not the whole subset (it would be skipped), and below ``2 k`` the share interval is withheld
    (:data:`clipprobe.analysis.intervals.SHARE_INTERVAL_MAX_FRACTION`); from ``2 k`` on neither happens."""
    return MIN_SIZE_PER_K * int(k)


@dataclass
class SubsetsResult:
    out: Path
    tables: "SubsetTables"
    assignment: "Assignment"
    run: dict
    files: list[Path] = field(default_factory=list)


def read_assignment_file(path) -> "pd.DataFrame":
    """An assignment table from a CSV or parquet file (``image`` or ``file``, and ``subset``)."""
    import pandas as pd

    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(MSG_ASSIGNMENT_FILE.format(path=path))
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except Exception as err:  # pandas and pyarrow raise many types for a malformed file
        raise DataError(MSG_ASSIGNMENT_READ.format(path=path, error=str(err).splitlines()[0] if str(err) else
                                                   type(err).__name__)) from None


def make_assignment(probe: "Probe", by: str, *, min_size: int, small: str = "merge", seed: int = 0) -> "Assignment":
    """Each of the probe's images in a subset, by ``by`` (see :func:`clipprobe.analysis.subsets.parse_by`)."""
    from clipprobe.analysis import subsets as sub
    from clipprobe.faces import group_order

    kind, value = sub.parse_by(by)
    if kind == "kmeans":
        from clipprobe.embeddings.cluster import kmeans

        sub.check_kmeans(int(value), probe.n_images, min_size)
        result = kmeans(probe.embeddings.vectors, int(value), seed=seed)
        return sub.from_clusters(result.labels, result.centroids, min_size=min_size, small=small)
    if kind == "attribute":
        (name,) = probe.check_attributes([str(value)])
        values = probe.labels[name].astype(str)
        return sub.from_values(values, min_size=min_size, kind="attribute", order=group_order(name, values.unique()))
    if kind == "column":
        table = probe.dataset.table
        columns = [str(c) for c in table.columns if c != "file"]
        if value not in columns:
            raise DataError(MSG_COLUMN.format(name=value, dataset=probe.dataset.spec, hint=did_you_mean(value, columns),
                                              columns=", ".join(columns)))
        values = table[value].iloc[probe.embeddings.rows].reset_index(drop=True)
        return sub.from_values(values, min_size=min_size, kind="column")
    table = read_assignment_file(value)
    return sub.from_table(table, probe.files, min_size=min_size, source=f"assignment file {value}")


def _queries(config):
    from clipprobe.resources.prompts import get_template_set, make_queries, neutral_query
    from clipprobe.resources.taxonomy import get_taxonomy

    taxonomy = get_taxonomy(config.taxonomy)
    templates = get_template_set(config.templates)
    queries = make_queries(taxonomy, templates=templates)
    neutral = neutral_query(templates)
    controls = make_queries(config.controls, templates=templates) if config.controls else []
    return taxonomy, templates, queries, neutral, controls


def probe_subsets(probe: "Probe", config: SubsetsConfig, assignment: "Assignment", *, timer=None,
                  progress: bool | None = None, queries=None) -> "SubsetTables":
    """Score every word against every image once and probe each subset (no I/O)."""
    from clipprobe.analysis.subsets import subset_scores
    from clipprobe.pipeline.probe import query_vectors, similarities
    from clipprobe.runinfo import StageTimer

    timer = timer or StageTimer()
    _tax, _tmpl, words, neutral, controls = queries or _queries(config)
    attributes = probe.check_attributes(config.attributes or probe.default_attributes())
    probe.check_k(config.k)
    with timer("encode_text"):
        vectors = query_vectors(probe, words + [neutral] + controls)
    with timer("scores"):
        scores = similarities(probe, vectors, config.score)
    n = len(words)
    with timer("subset_scores"):
        return subset_scores(
            scores[:n], probe.labels, assignment, words=[q.word for q in words], k=config.k, k_mode=config.k_mode,
            attributes=attributes, reference=config.reference, bootstrap=config.bootstrap, seed=config.seed,
            alpha=config.alpha, level=config.level, permutations=config.permutations, ties=config.ties,
            neutral=scores[n], controls=scores[n + 1:] if controls else None,
            categories={q.word: q.categories for q in words}, prompts=[q.prompts for q in words], files=probe.files,
            progress=progress, control_words=[q.word for q in controls] if controls else None)


def run_subsets(config: SubsetsConfig, *, probe: "Probe | None" = None, progress: bool | None = None
                ) -> SubsetsResult:
    """Compute and write a subsets folder (see the module docstring)."""
    from clipprobe.analysis.subsets import skipped_summary, typical_members
    from clipprobe.config import to_dict
    from clipprobe.pipeline.probe import open_probe
    from clipprobe.report.subsets import COMMAND, FORMAT_VERSION, check_out_folder, write_subsets
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    if config.min_size is None:
        config = replace(config, min_size=default_min_size(config.k))
    out = Path(config.out)
    check_out_folder(out, COMMAND)
    queries = _queries(config)
    timer = StageTimer()
    if probe is None:
        probe = open_probe(replace(config.probe, index="flat"), progress=progress)
        timer.seconds.update(probe.timings)
    probe.check_k(config.k)
    probe.check_attributes(config.attributes or probe.default_attributes())
    with timer("assign"):
        assignment = make_assignment(probe, config.by, min_size=config.min_size, small=config.small,
                                     seed=config.seed)
    tables = probe_subsets(probe, config, assignment, timer=timer, progress=progress, queries=queries)
    typical = {}
    if config.typical:
        idx = typical_members(probe.embeddings.vectors, assignment, n=config.typical)
        typical = {name: [probe.files[i] for i in rows] for name, rows in idx.items()}
    taxonomy, templates, words, _neutral, controls = queries
    config_record = to_dict(replace(config, probe=ProbeConfig()))
    config_record["probe"] = to_dict(config.probe)
    run = run_record(
        COMMAND, format_version=FORMAT_VERSION, config=config_record, model=probe.encoder.info(),
        dataset=probe.info(), timings=timer.seconds,
        taxonomy={"name": taxonomy.name, "source": taxonomy.source, "n_words": len(words)},
        templates={"name": templates.name, "source": templates.source},
        controls={"name": config.controls, "n_queries": len(controls)} if controls else None,
        assignment={"kind": assignment.kind, "subsets": list(assignment.names),
                    "sizes": [int(s) for s in assignment.sizes], "in_no_subset": int((assignment.codes < 0).sum())},
        k=config.k, k_mode=config.k_mode, alpha=config.alpha, seed=config.seed,
        skipped={**skipped_summary(assignment, tables.info), "min_size": config.min_size},
    )
    shown = [a for a in ("race", "gender", "age") if a in probe.attributes()]
    label_of = dict(zip(probe.files, probe.labels[shown].astype(str).agg(" ".join, axis=1))) if shown else {}
    files = write_subsets(out, tables, assignment.table(probe.files), run=run, typical=typical,
                          image_loader=probe.load_image if config.typical else None, label_for=label_of.get,
                          figures=config.figures, html=config.html, timer=timer)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return SubsetsResult(out=out, tables=tables, assignment=assignment, run=run, files=files)


# ----------------------------------------------------------------------------------------------
# across models


@dataclass(frozen=True)
class CompareConfig:
    """Settings of ``clipprobe subsets compare``: the models' report folders (or one sweep folder)."""

    sources: tuple[str, ...] = ()
    out: str = "subsets-compare"
    by: str = DEFAULT_BY
    min_size: int | None = None          # None: default_min_size of the largest k the reports recorded
    small: str = "merge"
    cluster_model: str | None = None     # whose embeddings k-means clusters (default: the first model)
    k_mode: str = "fixed"
    statistics: tuple[str, ...] = ("kl_recall", "max_skew_excess", "share_flagged")
    measures: str | None = None          # a CSV: model, then one column per measure (e.g. downstream bias)
    interval: str = "bca"
    level: float = 0.95
    n_boot: int = 2000
    permutations: int = 9999
    seed: int = 0
    cache_dir: str | None = None         # overrides the embedding cache each report recorded
    device: str | None = None            # overrides the device each report recorded
    figures: bool = True
    html: bool = True

    def check(self) -> "CompareConfig":
        from clipprobe.analysis.subsets import (
            K_MODES, MODEL_STATISTICS, MSG_K_MODE, MSG_SMALL, SMALL_RULES, check_interval_settings, check_min_size,
            parse_by,
        )
        from clipprobe.errors import one_of

        parse_by(self.by)
        if self.min_size is not None:
            check_min_size(self.min_size)
        if self.small not in SMALL_RULES:
            raise UsageError(MSG_SMALL.format(value=self.small))
        if self.k_mode not in K_MODES:
            raise UsageError(MSG_K_MODE.format(value=self.k_mode))
        check_interval_settings(self.interval, self.level, self.n_boot)
        for stat in self.statistics:
            if stat not in (*MODEL_STATISTICS, "kl_recall_excess", "max_skew", "norm_entropy_mm"):
                raise one_of(stat, (*MODEL_STATISTICS, "kl_recall_excess", "max_skew", "norm_entropy_mm"),
                             "statistic")
        if self.measures and not Path(self.measures).expanduser().is_file():
            raise DataError(MSG_MEASURES_FILE.format(path=self.measures, error="no such file"))
        return self


@dataclass
class CompareResult:
    out: Path
    per_model: "pd.DataFrame"
    transfer: "pd.DataFrame"
    correlations: "pd.DataFrame | None"
    run: dict
    files: list[Path] = field(default_factory=list)


def find_reports(sources: Sequence[str]) -> list[tuple[str, Path]]:
    """``(name, report folder)`` of each model: a sweep folder's ``models/<key>/report`` (name: the key;
    models whose run.json says they failed are left out) or report folders (name: the folder's name)."""
    out: list[tuple[str, Path]] = []
    for source in sources:
        path = Path(source)
        if (path / "run.json").is_file() and (path / "groups.parquet").exists():
            out.append((path.name, path))
            continue
        models = path / "models"
        found = sorted(p for p in models.glob("*/report") if (p / "run.json").is_file()) if models.is_dir() else []
        if not found:
            raise DataError(MSG_NO_REPORT.format(path=path))
        for report in found:
            status = report.parent / "run.json"
            if status.is_file():
                try:
                    record = json.loads(status.read_text(encoding="utf-8"))
                except ValueError:
                    record = {}
                if isinstance(record, dict) and record.get("status") not in (None, "ok"):
                    log.warning("model %s of the sweep failed (%s): left out", report.parent.name,
                                record.get("reason"))
                    continue
            out.append((report.parent.name, report))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):        # the same folder name twice: name by the full path
        out = [(str(p), p) for _n, p in out]
    return out


def _report_settings(report, config: CompareConfig) -> tuple[ProbeConfig, SubsetsConfig]:
    """The probe and subset settings that reproduce a report's own numbers."""
    rc = report.run.get("config") or {}
    pc = rc.get("probe")
    if not isinstance(pc, dict):
        raise DataError(MSG_NO_PROBE_CONFIG.format(path=report.path))
    known = {f.name for f in dataclasses.fields(ProbeConfig)}
    probe = ProbeConfig(**{k: v for k, v in pc.items() if k in known})
    probe = replace(probe, index="flat", cache_dir=config.cache_dir or probe.cache_dir,
                    device=config.device or probe.device)
    attributes = rc.get("attributes")
    sc = SubsetsConfig(
        probe=probe, out="", by=config.by, min_size=config.min_size, small=config.small,
        taxonomy=rc.get("taxonomy"), templates=rc.get("templates", "default"), k=int(report.run.get("k", DEFAULT_K)),
        k_mode=config.k_mode, attributes=tuple(attributes) if attributes else None, bootstrap=0,
        seed=int(rc.get("seed", 0)), alpha=float(rc.get("alpha", 0.05)), reference=rc.get("reference", "base"),
        level=float(rc.get("level", 0.95)), permutations=int(rc.get("permutations", 1000)),
        ties=rc.get("ties", "index"), score=rc.get("score", "cosine"), controls=rc.get("controls", "controls"),
        typical=0, figures=False, html=False)
    return probe, sc


def _aligned(assignment: "Assignment", from_files: Sequence[str], to_files: Sequence[str], model: str) -> "Assignment":
    """The assignment made on one model's images, in the order of another model's images."""
    import numpy as np

    position = {str(f): i for i, f in enumerate(from_files)}
    missing = [str(f) for f in to_files if str(f) not in position]
    if missing:
        raise DataError(MSG_IMAGES_DIFFER.format(model=model, n_missing=len(missing), first=missing[0]))
    order = np.asarray([position[str(f)] for f in to_files], dtype=np.int64)
    return dataclasses.replace(assignment, codes=assignment.codes[order])


def read_measures(path) -> "pd.DataFrame":
    import pandas as pd

    from clipprobe.analysis.subsets import check_measures

    try:
        table = pd.read_csv(Path(path).expanduser())
    except Exception as err:  # pandas raises many types for a malformed file
        raise DataError(MSG_MEASURES_FILE.format(path=path, error=str(err).splitlines()[0] if str(err) else
                                                 type(err).__name__)) from None
    return check_measures(table)


def run_compare(config: CompareConfig, *, progress: bool | None = None) -> CompareResult:
    """Probe the same subsets with every model and correlate the models' bias across subsets."""
    import pandas as pd

    from clipprobe.analysis.subsets import GLOBAL, correlate_measures, model_measures, ranking_transfer
    from clipprobe.config import to_dict
    from clipprobe.pipeline.probe import open_probe
    from clipprobe.report.store import load_report
    from clipprobe.report.subsets import COMPARE_COMMAND, FORMAT_VERSION, check_out_folder, write_compare
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    out = Path(config.out)
    check_out_folder(out, COMPARE_COMMAND)
    found = find_reports(config.sources)
    if len(found) < 2:
        raise UsageError(MSG_FEW_SOURCES.format(n=len(found)))
    reports = [(name, load_report(path)) for name, path in found]
    if config.min_size is None:
        config = replace(config, min_size=default_min_size(max(int(r.run.get("k", DEFAULT_K)) for _n, r in reports)))
    names = [n for n, _ in reports]
    user = read_measures(config.measures) if config.measures else None
    first = 0
    if config.cluster_model is not None:
        specs = [r.model_spec for _n, r in reports]
        if config.cluster_model in names:
            first = names.index(config.cluster_model)
        elif config.cluster_model in specs:
            first = specs.index(config.cluster_model)
        else:
            raise UsageError(MSG_CLUSTER_MODEL.format(value=config.cluster_model,
                                                      hint=did_you_mean(config.cluster_model, names),
                                                      models=", ".join(names)))
    timer = StageTimer()
    order = [first] + [i for i in range(len(reports)) if i != first]
    assignment, base_files, frames, models, notes = None, None, [], [], []
    for i in order:
        name, report = reports[i]
        probe_config, sub_config = _report_settings(report, config)
        with timer("open_probe"):
            probe = open_probe(probe_config, progress=progress)
        if assignment is None:
            with timer("assign"):
                assignment = make_assignment(probe, config.by, min_size=config.min_size, small=config.small,
                                             seed=config.seed)
            base_files = list(probe.files)
            notes += [f"subsets made with model {name}: {n}" for n in assignment.notes]
            model_assignment = assignment
        else:
            model_assignment = _aligned(assignment, base_files, probe.files, name)
        tables = probe_subsets(probe, sub_config, model_assignment, timer=timer, progress=progress)
        notes += [f"{name}: {n}" for n in tables.notes if not n.startswith("subset ") or "skipped" in n]
        frame = model_measures(tables.words, statistics=config.statistics)
        frame.insert(0, "model", name)
        frames.append(frame)
        models.append({"name": name, "spec": report.model_spec, "report": str(report.path),
                       "k": sub_config.k, "n_images": probe.n_images})
        del probe
    per_model = pd.concat(frames, ignore_index=True)
    with timer("transfer"):
        transfer = ranking_transfer(per_model, interval=config.interval, level=config.level, n_boot=config.n_boot,
                                    seed=config.seed, permutations=config.permutations)
    correlations = None
    if user is not None:
        glob = per_model[per_model["subset"] == GLOBAL]
        ours = glob.assign(measure="clipprobe:" + glob["statistic"] + ":" + glob["attribute"]).pivot_table(
            index="model", columns="measure", values="value", aggfunc="first").reset_index()
        specs = {r.model_spec: n for n, r in reports}
        user = user.assign(model=[specs.get(m, m) for m in user["model"]])
        matched = set(user["model"]) & set(names)
        if not matched:
            raise DataError(MSG_MEASURES_NO_MATCH.format(path=config.measures, models=", ".join(names)))
        unknown = sorted(set(user["model"]) - set(names))
        if unknown:
            notes.append(f"measures file: {len(unknown)} model(s) not compared here were left out "
                         f"(first: {unknown[0]})")
        wide = ours.merge(user, on="model", how="left")
        user_cols = [c for c in user.columns if c != "model"]
        our_cols = [c for c in ours.columns if c != "model"]
        pairs = [(u, o) for u in user_cols for o in our_cols]
        pairs += [(a, b) for j, a in enumerate(user_cols) for b in user_cols[j + 1:]]
        with timer("correlations"):
            correlations = correlate_measures(wide, pairs=pairs, interval=config.interval, level=config.level,
                                              n_boot=config.n_boot, seed=config.seed,
                                              permutations=config.permutations)
    run = run_record(COMPARE_COMMAND, format_version=FORMAT_VERSION, config=to_dict(config), timings=timer.seconds,
                     models=models, subsets=list(assignment.names), cluster_model=names[first])
    files = write_compare(out, per_model=per_model, transfer=transfer, correlations=correlations,
                          assignment_table=assignment.table(base_files), run=run, notes=notes,
                          figures=config.figures, html=config.html, timer=timer)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    return CompareResult(out=out, per_model=per_model, transfer=transfer, correlations=correlations, run=run,
                         files=files)


__all__ = ["CompareConfig", "CompareResult", "SubsetsConfig", "SubsetsResult", "default_min_size", "find_reports",
           "make_assignment", "probe_subsets", "read_assignment_file", "run_compare", "run_subsets"]
