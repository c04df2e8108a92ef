"""The full-taxonomy bias report: every word, every attribute, every group.

:func:`run_report` retrieves each unique word of a taxonomy once, computes the
point estimates (:mod:`clipprobe.analysis.metrics`), the hypergeometric tests and the
Benjamini-Hochberg adjustment over all rows, and bootstrap intervals
(:mod:`clipprobe.analysis.bootstrap`), and writes the report folder::

    DIR/groups.parquet   one row per (word, attribute, group)
    DIR/words.parquet    one row per (word, attribute)
    DIR/summary.csv      per (category, attribute)
    DIR/run.json         config, versions, model, dataset fingerprint, timings
    DIR/figures/         PNG + PDF
    DIR/report.html      one self-contained page

Words are processed in chunks whose results are stored under
``DIR/parts/<settings hash>/``; a rerun with the same settings reuses every
finished chunk, so an interrupted report resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipprobe import __version__
from clipprobe.errors import ClipprobeError, UsageError, one_of
from clipprobe.pipeline.probe import ALL_ATTRIBUTES, DEFAULT_K, ProbeConfig, Query

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pandas as pd

    from clipprobe.pipeline.probe import Probe

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
REPORT_REFERENCES = ("base", "uniform")
CHUNK_WORDS = 64
TOP_FILES_KEPT = 25

GROUP_COLUMNS = ["word", "category", "attribute", "group", "k", "count", "share", "base_share", "skew",
                 "p_over", "p_under", "q_over", "flagged", "share_ci_low", "share_ci_high", "skew_ci_low",
                 "skew_ci_high", "c_asc", "skew_vs_neutral"]
WORD_COLUMNS = ["word", "category", "attribute", "prompts", "max_skew", "min_skew", "norm_entropy", "kl_to_base",
                "ndkl", "top_group", "max_skew_ci_low", "max_skew_ci_high", "norm_entropy_ci_low",
                "norm_entropy_ci_high", "stability", "top_files", "n_flagged"]


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
    captions_counts: str | None = None
    figures: bool = True
    html: bool = True

    def check(self) -> "ReportConfig":
        if self.reference not in REPORT_REFERENCES:
            raise one_of(self.reference, REPORT_REFERENCES, "reference")
        if not 0 < self.alpha < 1:
            raise UsageError(f"--alpha must be between 0 and 1, got {self.alpha}")
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap must be 0 (no intervals) or a positive number, got {self.bootstrap}")
        if self.k < 1:
            raise UsageError(f"--k must be positive, got {self.k}")
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


def report_queries(taxonomy, templates) -> tuple[list[Query], dict[str, str]]:
    """One query per unique word; ``category`` joins a word's categories with "; "."""
    from clipprobe.pipeline.probe import make_query

    queries = [make_query(w, taxonomy=taxonomy, templates=templates) for w in taxonomy.words()]
    categories = {q.word: "; ".join(q.categories) for q in queries}
    return queries, categories


def _settings_hash(probe: "Probe", config: ReportConfig, queries: list[Query], neutral: Query,
                   attributes: tuple[str, ...]) -> str:
    payload = {
        "format_version": FORMAT_VERSION,
        "model": probe.encoder.spec.key,
        "preprocess": probe.config.preprocess,
        "dataset": probe.dataset.fingerprint,
        "n_images": probe.n_images,
        "queries": [[q.word, list(q.prompts)] for q in queries],
        "neutral": list(neutral.prompts),
        "k": config.k,
        "attributes": list(attributes),
        "bootstrap": config.bootstrap,
        "seed": config.seed,
        "reference": config.reference,
        "level": config.level,
        "index": probe.config.index,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _chunk_paths(parts: Path, i: int) -> dict[str, Path]:
    stem = f"chunk-{i:04d}"
    return {"groups": parts / f"{stem}-groups.parquet", "words": parts / f"{stem}-words.parquet",
            "entropy": parts / f"{stem}-entropy.npy"}


def _compute_chunk(probe: "Probe", config: ReportConfig, queries: list[Query], vectors: "np.ndarray",
                   neutral_vector: "np.ndarray", attributes: tuple[str, ...]):
    """Point estimates, tests and bootstrap of one chunk of words (categories filled in later)."""
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.metrics import c_asc, point_estimates, rank_topk
    from clipprobe.analysis.bootstrap import bootstrap_counts, bootstrap_intervals, bootstrap_metrics
    from clipprobe.analysis.significance import hypergeom_p

    k = config.k
    n_words = len(queries)
    allq = np.vstack([vectors, neutral_vector[None, :]]).astype(np.float32)
    with probe.timer("scores"):
        scores = allq @ probe.embeddings.vectors.T          # (W+1, N) cosine similarities
    with probe.timer("search"):
        if probe.config.index == "flat":
            # Exact search over the scores already at hand, ranked exactly as the bootstrap ranks
            # (ties broken by image index), so point estimates and resamples agree.
            ids = rank_topk(scores, k)
        else:
            _, ids = probe.topk(allq, k)
    labels, names = {}, {}
    for a in attributes:
        labels[a], names[a] = probe.labels(a)
    boot = None
    if config.bootstrap > 0:
        with probe.timer("bootstrap"):
            boot = bootstrap_counts(scores[:n_words], labels, {a: len(names[a]) for a in attributes}, k,
                                    n_boot=config.bootstrap, seed=config.seed)
    group_frames, word_frames, entropy = [], [], {}
    files = [probe.files(ids[w, :TOP_FILES_KEPT]) for w in range(n_words)]
    with probe.timer("metrics"):
        for a in attributes:
            lab, groups = labels[a], names[a]
            g_n = len(groups)
            est = point_estimates(ids[:n_words], lab, g_n, reference=config.reference)
            vs_neutral = point_estimates(ids[:n_words], lab, g_n, reference="neutral", neutral_ids=ids[n_words])
            sizes = np.bincount(lab, minlength=g_n)
            p_over, p_under = hypergeom_p(est["count"], sizes[None, :], probe.n_images, k)
            casc = c_asc(scores[:n_words], lab, g_n)
            if boot is not None:
                samples = bootstrap_metrics(boot[a], reference=config.reference)
                ci = bootstrap_intervals(boot[a], top_group=est["top_group"], reference=config.reference,
                                         level=config.level, samples=samples)
                entropy[a] = samples["norm_entropy"].astype(np.float32)   # (B, W), for category means
            else:
                nan_wg = np.full((n_words, g_n), np.nan)
                nan_w = np.full(n_words, np.nan)
                ci = {"share_ci_low": nan_wg, "share_ci_high": nan_wg, "skew_ci_low": nan_wg,
                      "skew_ci_high": nan_wg, "max_skew_ci_low": nan_w, "max_skew_ci_high": nan_w,
                      "norm_entropy_ci_low": nan_w, "norm_entropy_ci_high": nan_w, "stability": nan_w}
            present = sizes > 0
            for w, q in enumerate(queries):
                group_frames.append(pd.DataFrame({
                    "word": q.word, "attribute": a, "group": [groups[i] for i in np.flatnonzero(present)],
                    "k": k,
                    "count": est["count"][w][present].astype(np.int64),
                    "share": est["share"][w][present],
                    "base_share": est["base_share"][w][present],
                    "skew": est["skew"][w][present],
                    "p_over": p_over[w][present], "p_under": p_under[w][present],
                    "share_ci_low": ci["share_ci_low"][w][present], "share_ci_high": ci["share_ci_high"][w][present],
                    "skew_ci_low": ci["skew_ci_low"][w][present], "skew_ci_high": ci["skew_ci_high"][w][present],
                    "c_asc": casc[w][present], "skew_vs_neutral": vs_neutral["skew"][w][present],
                }))
                word_frames.append({
                    "word": q.word, "attribute": a, "prompts": list(q.prompts),
                    "max_skew": float(est["max_skew"][w]), "min_skew": float(est["min_skew"][w]),
                    "norm_entropy": float(est["norm_entropy"][w]), "kl_to_base": float(est["kl_to_base"][w]),
                    "ndkl": float(est["ndkl"][w]), "top_group": groups[int(est["top_group"][w])],
                    "max_skew_ci_low": float(ci["max_skew_ci_low"][w]), "max_skew_ci_high": float(ci["max_skew_ci_high"][w]),
                    "norm_entropy_ci_low": float(ci["norm_entropy_ci_low"][w]),
                    "norm_entropy_ci_high": float(ci["norm_entropy_ci_high"][w]),
                    "stability": float(ci["stability"][w]), "top_files": files[w],
                })
    groups_df = pd.concat(group_frames, ignore_index=True)
    words_df = pd.DataFrame(word_frames)
    ent = np.stack([entropy[a] for a in attributes]) if entropy else np.zeros((0, 0, n_words), np.float32)
    return groups_df, words_df, ent


def _summary(groups: "pd.DataFrame", words: "pd.DataFrame", entropy: "np.ndarray", attributes: tuple[str, ...],
             word_order: list[str], level: float) -> "pd.DataFrame":
    """Per category and attribute: mean normalised entropy with its bootstrap interval, share of
    flagged words, and the groups with the highest mean skew among the category's words."""
    import numpy as np
    import pandas as pd

    from clipprobe.analysis.bootstrap import percentile_interval

    position = {w: i for i, w in enumerate(word_order)}
    rows = []
    exploded = words.assign(category=words["category"].str.split("; ")).explode("category")
    g_exploded = groups.assign(category=groups["category"].str.split("; ")).explode("category")
    for (category, attribute), part in exploded.groupby(["category", "attribute"], sort=False):
        a = attributes.index(attribute)
        idx = [position[w] for w in part["word"]]
        lo = hi = float("nan")
        if entropy.size:
            samples = np.nanmean(entropy[a][:, idx], axis=1)
            low, high = percentile_interval(samples[:, None], level)
            lo, hi = float(low[0]), float(high[0])
        gpart = g_exploded[(g_exploded["category"] == category) & (g_exploded["attribute"] == attribute)]
        mean_skew = gpart.groupby("group", sort=False)["skew"].mean().sort_values(ascending=False)
        top = "; ".join(f"{g} ({s:+.2f})" for g, s in mean_skew.head(3).items())
        rows.append({"category": category, "attribute": attribute, "n_words": len(part),
                     "mean_norm_entropy": float(part["norm_entropy"].mean()),
                     "mean_norm_entropy_ci_low": lo, "mean_norm_entropy_ci_high": hi,
                     "share_flagged": float((part["n_flagged"] > 0).mean()), "top_groups": top})
    return pd.DataFrame(rows)


def run_report(config: ReportConfig, *, probe: "Probe | None" = None, progress: bool | None = None) -> ReportResult:
    """Compute and write a full report (see the module docstring)."""
    import numpy as np
    import pandas as pd

    from clipprobe import _io
    from clipprobe.resources.prompts import get_template_set, neutral_set_for
    from clipprobe.pipeline.probe import dataset_info, open_probe
    from clipprobe.runinfo import package_versions
    from clipprobe.analysis.significance import bh_adjust
    from clipprobe.resources.taxonomy import get_taxonomy

    config = config.check()
    out = Path(config.out)
    _check_out_folder(out)
    if config.captions_counts:
        from clipprobe.analysis.crosscheck import read_counts

        read_counts(config.captions_counts)  # fail before the long part when the folder is wrong
    taxonomy = get_taxonomy(config.taxonomy)
    templates = get_template_set(config.templates)
    if probe is None:
        probe = open_probe(config.probe, progress=progress)
    timer = probe.timer
    attributes = config.attributes or tuple(a for a in ALL_ATTRIBUTES if a in probe.attributes())
    attributes = probe.check_attributes(attributes)
    probe.check_k(config.k)

    queries, categories = report_queries(taxonomy, templates)
    neutral_set = neutral_set_for(templates)
    neutral = Query("(neutral)", neutral_set.baseline, "noun", (), False)
    settings = _settings_hash(probe, config, queries, neutral, attributes)
    parts = out / "parts" / settings
    vectors = probe.query_vectors(queries + [neutral])
    neutral_vector = vectors[-1]

    chunks = [list(range(i, min(i + CHUNK_WORDS, len(queries)))) for i in range(0, len(queries), CHUNK_WORDS)]
    group_parts, word_parts, entropy_parts = [], [], []
    reused = computed = 0
    from tqdm.auto import tqdm

    for i, chunk in enumerate(tqdm(chunks, desc="report", unit="chunk", disable=None if progress is None else not progress)):
        paths = _chunk_paths(parts, i)
        if all(p.exists() for p in paths.values()):
            g, w = pd.read_parquet(paths["groups"]), pd.read_parquet(paths["words"])
            ent = _io.read_npy(paths["entropy"])
            if list(w["word"].drop_duplicates()) == [queries[j].word for j in chunk]:
                group_parts.append(g), word_parts.append(w), entropy_parts.append(ent)
                reused += 1
                continue
        g, w, ent = _compute_chunk(probe, config, [queries[j] for j in chunk], vectors[chunk], neutral_vector,
                                   attributes)
        _io.write_parquet(paths["groups"], g)
        _io.write_parquet(paths["words"], w)
        _io.write_npy(paths["entropy"], ent)
        group_parts.append(g), word_parts.append(w), entropy_parts.append(ent)
        computed += 1
    if reused:
        log.info("reused %d finished chunk(s) of words from %s", reused, parts)

    with timer("assemble"):
        groups = pd.concat(group_parts, ignore_index=True)
        words = pd.concat(word_parts, ignore_index=True)
        entropy = np.concatenate(entropy_parts, axis=2) if entropy_parts and entropy_parts[0].size else np.zeros((0, 0, 0))
        groups["category"] = groups["word"].map(categories)
        words["category"] = words["word"].map(categories)
        groups["q_over"] = bh_adjust(groups["p_over"].to_numpy())
        groups["flagged"] = groups["q_over"] < config.alpha
        n_flagged = groups.groupby(["word", "attribute"], sort=False)["flagged"].sum()
        words["n_flagged"] = [int(n_flagged.get((w, a), 0)) for w, a in zip(words["word"], words["attribute"])]
        groups = groups[GROUP_COLUMNS]
        words = words[WORD_COLUMNS]
        summary = _summary(groups, words, entropy, attributes, [q.word for q in queries], config.level)

    run = {
        "format_version": FORMAT_VERSION,
        "clipprobe_version": __version__,
        "config": _config_dict(config, attributes),
        "versions": package_versions(),
        "model": probe.encoder.info(),
        "dataset": dataset_info(probe),
        "taxonomy": {"name": taxonomy.name, "source": taxonomy.source, "n_words": len(queries),
                     "categories": list(taxonomy.categories)},
        "templates": {"name": templates.name, "source": templates.source},
        "neutral_prompts": list(neutral.prompts),
        "k": config.k, "alpha": config.alpha, "reference": config.reference, "bootstrap": config.bootstrap,
        "seed": config.seed, "level": config.level, "attributes": list(attributes),
        "settings_hash": settings,
        "n_rows": int(len(groups)), "n_flagged": int(groups["flagged"].sum()),
        "skipped_images": probe.embeddings.skipped,
        "chunks": {"reused": reused, "computed": computed},
    }
    written = [out / "groups.parquet", out / "words.parquet", out / "summary.csv", out / "run.json"]
    _io.write_parquet(written[0], groups)
    _io.write_parquet(written[1], words)
    _io.write_text(written[2], summary.to_csv(index=False))
    run["timings"] = dict(probe.timer.as_dict())
    _io.write_json(written[3], run)  # figures and HTML read the folder back through load_report
    result = ReportResult(out=out, groups=groups, words=words, summary=summary, run=run, reused_chunks=reused,
                          computed_chunks=computed, files=written)
    if config.captions_counts:
        with timer("crosscheck"):
            result.files += write_crosscheck(out, groups, config.captions_counts, config.alpha)
    if config.figures or config.html:
        from clipprobe.report.store import load_report

        written_report = load_report(out)  # read back once: figures and HTML work from the files
    if config.figures:
        with timer("figures"):
            result.files += _write_figures(written_report)
    run["timings"] = dict(probe.timer.as_dict())
    _io.write_json(out / "run.json", run)
    if config.html:
        with timer("html"):
            result.files.append(_write_html(replace(written_report, run=run), probe))
        run["timings"] = dict(probe.timer.as_dict())
        _io.write_json(out / "run.json", run)
    return result


def _config_dict(config: ReportConfig, attributes: tuple[str, ...]) -> dict[str, Any]:
    from clipprobe.config import to_dict

    data = to_dict(replace(config, probe=ProbeConfig()))
    data["probe"] = to_dict(config.probe)
    data["attributes"] = list(attributes)
    return data


def _check_out_folder(out: Path) -> None:
    """Refuse to mix a new report into a folder written by an incompatible version."""
    run = out / "run.json"
    if out.exists() and not out.is_dir():
        raise ClipprobeError(f"--out {out} exists and is not a folder")
    if run.exists():
        try:
            version = json.loads(run.read_text()).get("format_version")
        except (OSError, ValueError) as err:
            raise ClipprobeError(f"report folder {out}: run.json is unreadable ({err})") from None
        if version != FORMAT_VERSION:
            raise ClipprobeError(f"report folder {out} was written with report format {version!r}; this clipprobe "
                                 f"writes format {FORMAT_VERSION}: use a new --out folder")


def _write_figures(report) -> list[Path]:
    from clipprobe.report.figures import write_report_figures

    return list(write_report_figures(report, Path(report.path) / "figures"))


def _write_html(report, probe: "Probe") -> Path:
    from clipprobe.report.html import write_html_report

    out = Path(report.path)
    table = probe.dataset.table
    row_of = {str(f): i for i, f in enumerate(table["file"])}
    shown = [a for a in ("race", "gender", "age") if a in probe.attributes()]

    def loader(file: str):
        return probe.dataset.load_image(row_of[file])

    def label_for(file: str) -> str:
        row = table.iloc[row_of[file]]
        return " ".join(str(row[a]) for a in shown)

    return write_html_report(report, out / "report.html", image_loader=loader, label_for=label_for,
                             figures_dir=out / "figures")


def write_crosscheck(out: Path, groups: "pd.DataFrame", counts_dir: str, alpha: float = 0.05) -> list[Path]:
    """Join retrieval skew with caption lift (see :mod:`clipprobe.analysis.crosscheck`)."""
    from clipprobe.analysis.crosscheck import write_crosscheck as _write

    return list(_write(groups, counts_dir, out, alpha=alpha))
