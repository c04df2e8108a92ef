"""The full-taxonomy bias report: every word, every attribute, every group, written to a folder.

:func:`run_report` checks its settings, opens the probe, embeds each unique word's prompts once,
scores the words in chunks (:func:`clipprobe.analysis.probe.score_words`), joins them
(:func:`~clipprobe.analysis.probe.finish_tables`: BH over all rows, summary) and writes the folder
(:func:`clipprobe.report.store.write_report`): ``groups.parquet``, ``words.parquet``,
``summary.csv``, ``figures/``, ``report.html`` and, last, ``run.json``. The report ranks every word
exactly (it computes every similarity for the bootstrap and C-ASC anyway): ``--index`` applies to
``retrieve`` only.

Chunks are stored under ``DIR/parts/<settings hash>/``; a rerun with the same settings reuses every
finished chunk, so an interrupted report resumes where it stopped. The settings hash includes the
embedding cache's model key (model, precision, preprocessing), so an fp16 (GPU) run and an fp32
(CPU) run into the same folder never reuse each other's chunks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from clipprobe.errors import UsageError
from clipprobe.pipeline.probe import DEFAULT_K, ProbeConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clipprobe.pipeline.probe import Probe

log = logging.getLogger(__name__)

CHUNK_WORDS = 64
MSG_K = "k must be a positive number of images, got {k}"
MSG_LEVEL = "level must be between 0 and 1, got {level}"


@dataclass(frozen=True)
class ReportConfig:
    """Settings of one report (the probe's model/dataset settings are in ``probe``)."""

    probe: ProbeConfig = field(default_factory=ProbeConfig)
    out: str = "report"
    taxonomy: str | None = None
    templates: str = "default"
    k: int = DEFAULT_K
    attributes: tuple[str, ...] | None = None   # None: every one of race, gender, age, race_gender present
    bootstrap: int = 1000
    seed: int = 0
    alpha: float = 0.05
    reference: str = "base"
    level: float = 0.95
    permutations: int = 1000            # label shuffles for the MaxSkew / MinSkew null
    ties: str = "index"                 # or "keep-all"
    score: str = "cosine"               # or "dot"
    controls: str | None = "controls"   # control word set (taxonomy name or file); None: no control test
    eat: str | None = None              # an association-test suite name or YAML file, run into out/eat/
    stimuli_root: str | None = None     # iEAT images (for eat)
    oasis_root: str | None = None       # OASIS images (for eat)
    captions_counts: str | None = None
    figures: bool = True
    html: bool = True

    def check(self) -> "ReportConfig":
        """Every setting in range, checked before anything is loaded."""
        from clipprobe.analysis.probe import check_settings

        from clipprobe.errors import one_of
        from clipprobe.pipeline.probe import SCORES

        check_settings(alpha=self.alpha, bootstrap=self.bootstrap, seed=self.seed, reference=self.reference,
                       permutations=self.permutations, ties=self.ties)
        if self.score not in SCORES:
            raise one_of(self.score, SCORES, "score")
        if self.k < 1:
            raise UsageError(MSG_K.format(k=self.k))
        if not 0 < self.level < 1:
            raise UsageError(MSG_LEVEL.format(level=self.level))
        self.probe.check()
        return self


@dataclass
class ReportResult:
    out: Path
    groups: "pd.DataFrame"
    words: "pd.DataFrame"
    summary: "pd.DataFrame"
    run: dict
    reused_chunks: int = 0
    computed_chunks: int = 0
    files: list[Path] = field(default_factory=list)


def _settings_hash(probe: "Probe", config: ReportConfig, queries, neutral, controls,
                   attributes: tuple[str, ...]) -> str:
    from clipprobe.analysis.probe import TOP_FILES_KEPT
    from clipprobe.embeddings.cache import model_cache_key
    from clipprobe.report.store import FORMAT_VERSION

    payload = {
        "format_version": FORMAT_VERSION,
        "model": model_cache_key(probe.encoder),          # spec, precision and preprocessing
        "dataset": probe.dataset.fingerprint,
        "embeddings": getattr(probe.embeddings, "digest", ""),   # the vectors themselves (images by content)
        "labels": hashlib.sha256(probe.labels.to_csv(index=False).encode("utf-8")).hexdigest()[:16],
        "n_images": probe.n_images,
        "queries": [[q.word, list(q.prompts)] for q in queries],
        "neutral": list(neutral.prompts),
        "controls": [list(q.prompts) for q in controls],
        "k": config.k,
        "attributes": list(attributes),
        "bootstrap": config.bootstrap,
        "seed": config.seed,
        "reference": config.reference,
        "level": config.level,
        "permutations": config.permutations,
        "ties": config.ties,
        "score": config.score,
        "top_files": TOP_FILES_KEPT,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _run_eat(config: ReportConfig, probe: "Probe", out: Path):
    """The association tests of ``config.eat`` with the report's model, into ``out`` (the HTML page
    includes them)."""
    from clipprobe.pipeline.eat import EatConfig, run_eat

    is_file = config.eat.endswith((".yaml", ".yml", ".json")) or Path(config.eat).expanduser().is_file()
    pc = probe.config
    eat_config = EatConfig(out=str(out), model=pc.model, model_config=pc.model_config, quick_gelu=pc.quick_gelu,
                           preprocess=pc.preprocess,
                           suite=None if is_file else config.eat, tests_file=config.eat if is_file else None,
                           seed=config.seed, stimuli_root=config.stimuli_root, oasis_root=config.oasis_root,
                           cache_dir=pc.cache_dir, device=pc.device, precision=pc.precision,
                           batch_size=pc.batch_size, num_workers=pc.num_workers, offline=pc.offline)
    return run_eat(eat_config, encoder=probe.encoder)


def _chunk_paths(parts: Path, i: int) -> dict[str, Path]:
    stem = f"chunk-{i:04d}"
    return {"groups": parts / f"{stem}-groups.parquet", "words": parts / f"{stem}-words.parquet"}


def _read_chunk(paths: dict[str, Path], words: list[str]):
    import pandas as pd

    from clipprobe.analysis.probe import WordScores

    if not all(p.exists() for p in paths.values()):
        return None
    part = WordScores(groups=pd.read_parquet(paths["groups"]), words=pd.read_parquet(paths["words"]))
    return part if list(part.words["word"].drop_duplicates()) == words else None


def summary_line(run: dict) -> str:
    """The report's one-line summary from its run record: the pairs flagged against the control queries
    first, then, labelled as what it is, the hypergeometric count (a word's top-k that is not a random
    sample of faces, which any query's neighbourhood tends to be); where no control test ran, it says so."""
    head = (f"report: {run['taxonomy']['n_words']} words x {len(run['attributes'])} attributes, "
            f"{run['n_rows']} rows")
    hyper = (f"{run['n_flagged']} with a top-k that is not a random sample of faces (hypergeometric test, "
             f"FDR {run['alpha']})")
    if run.get("controls_ran"):
        return (f"{head}: {run['n_flagged_vs_controls']} flagged against the control queries at FDR "
                f"{run['alpha']}; {hyper}")
    return f"{head}: no control test was run (no control queries), so none is flagged against them; {hyper}"


def run_report(config: ReportConfig, *, probe: "Probe | None" = None, progress: bool | None = None) -> ReportResult:
    """Compute and write a full report (see the module docstring)."""
    from tqdm.auto import tqdm

    from clipprobe import _io
    from clipprobe.analysis.probe import finish_tables, score_words
    from clipprobe.config import to_dict
    from clipprobe.pipeline.probe import open_probe, query_vectors, similarities
    from clipprobe.report.store import FORMAT_VERSION, check_out_folder
    from clipprobe.report.writer import write_report
    from clipprobe.resources.prompts import get_template_set, make_queries, neutral_query
    from clipprobe.resources.taxonomy import get_taxonomy
    from clipprobe.runinfo import StageTimer, run_record

    started = time.time()
    config = config.check()
    out = Path(config.out)
    check_out_folder(out)
    taxonomy = get_taxonomy(config.taxonomy)
    templates = get_template_set(config.templates)
    queries = make_queries(taxonomy, templates=templates)
    if config.captions_counts:
        from clipprobe.report.crosscheck import check_counts

        # fail before the long part when the folder is wrong or has too few defined associations
        check_counts(config.captions_counts, [q.word for q in queries], config.attributes)
    neutral = neutral_query(templates)
    controls = make_queries(config.controls, templates=templates) if config.controls else []
    timer = StageTimer()
    if probe is None:
        if config.probe.index != "flat":
            log.info("the report ranks every word exactly (it computes all similarities anyway); "
                     "index %r applies to retrieve only", config.probe.index)
        probe = open_probe(replace(config.probe, index="flat"), progress=progress)
        timer.seconds.update(probe.timings)
    attributes = probe.check_attributes(config.attributes or probe.default_attributes())
    probe.check_k(config.k)
    if config.captions_counts:
        from clipprobe.report.crosscheck import check_counts

        # the lexicon must name the dataset's groups (checked before the long part, like the rows above)
        check_counts(config.captions_counts, [q.word for q in queries], attributes,
                     groups={a: list(dict.fromkeys(probe.labels[a].astype(str))) for a in attributes})
    if config.eat:
        # Before the long part: stimuli that cannot be resolved fail now, not after the report.
        with timer("eat"):
            _run_eat(config, probe, out / "eat")

    settings = _settings_hash(probe, config, queries, neutral, controls, attributes)
    parts_dir = out / "parts" / settings
    with timer("encode_text"):
        vectors = query_vectors(probe, queries + [neutral] + controls)
    with timer("scores"):
        scores = similarities(probe, vectors, config.score)   # (W + 1 + M, N)
    n_words = len(queries)
    neutral_scores = scores[n_words]
    control_scores = scores[n_words + 1:] if controls else None

    chunks = [list(range(i, min(i + CHUNK_WORDS, len(queries)))) for i in range(0, len(queries), CHUNK_WORDS)]
    parts, reused, computed = [], 0, 0
    show = None if progress is None else progress
    for i, chunk in enumerate(tqdm(chunks, desc="report", unit="chunk", disable=None if show is None else not show)):
        paths = _chunk_paths(parts_dir, i)
        words = [queries[j].word for j in chunk]
        part = _read_chunk(paths, words)
        if part is not None:
            parts.append(part)
            reused += 1
            continue
        with timer("score_words"):
            part = score_words(scores[chunk], probe.labels, words=words, k=config.k, attributes=attributes,
                               reference=config.reference, bootstrap=config.bootstrap, seed=config.seed,
                               level=config.level, permutations=config.permutations, ties=config.ties,
                               neutral=neutral_scores, controls=control_scores,
                               prompts=[queries[j].prompts for j in chunk], files=probe.files)
        _io.write_parquet(paths["groups"], part.groups)
        _io.write_parquet(paths["words"], part.words)
        parts.append(part)
        computed += 1
    if reused:
        log.info("reused %d finished chunk(s) of words from %s", reused, parts_dir)
    with timer("assemble"):
        tables = finish_tables(parts, k=config.k, alpha=config.alpha,
                               categories={q.word: q.categories for q in queries})

    config_record = to_dict(replace(config, probe=ProbeConfig()))
    config_record["probe"] = to_dict(config.probe)
    config_record["attributes"] = list(attributes)
    run = run_record(
        "report", format_version=FORMAT_VERSION, config=config_record, model=probe.encoder.info(),
        dataset=probe.info(), timings=timer.seconds,
        taxonomy={"name": taxonomy.name, "source": taxonomy.source, "n_words": len(queries),
                  "categories": list(taxonomy.categories)},
        templates={"name": templates.name, "source": templates.source},
        neutral_prompts=list(neutral.prompts),
        controls={"name": config.controls, "n_queries": len(controls)} if controls else None,
        k=config.k, alpha=config.alpha, reference=config.reference, bootstrap=config.bootstrap,
        seed=config.seed, level=config.level, permutations=config.permutations, ties=config.ties,
        score=config.score, attributes=list(attributes), settings_hash=settings,
        skipped_images=probe.embeddings.skipped, chunks={"reused": reused, "computed": computed},
    )
    files: list[Path] = []
    if config.captions_counts:
        from clipprobe.report.crosscheck import write_crosscheck

        with timer("crosscheck"):
            files += write_crosscheck(tables.groups, config.captions_counts, out, alpha=config.alpha)
    shown = [a for a in ("race", "gender", "age") if a in probe.attributes()]
    label_of = (dict(zip(probe.files, probe.labels[shown].astype(str).agg(" ".join, axis=1)))
                if config.html and shown else {})
    files = write_report(tables, out, run=run, figures=config.figures, html=config.html,
                         image_loader=probe.load_image, label_for=label_of.get, timer=timer,
                         started=started) + files
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    log.info("%s", summary_line(run))
    return ReportResult(out=out, groups=tables.groups, words=tables.words, summary=tables.summary, run=run,
                        reused_chunks=reused, computed_chunks=computed, files=files)
