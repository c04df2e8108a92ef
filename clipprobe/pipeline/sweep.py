"""A sweep: the report and the association tests of many models over one face dataset, resumable and
shardable; the merge of its folders; the upstream-factor analysis.

:func:`run_sweep`
    resolves the model list (``all``: every ``open_clip.list_pretrained()`` pair; a model CSV; specs),
    lists unknown models with close matches and goes on with the rest, keeps this shard's models
    (:func:`shard_models`: the models sorted by folder key, every N-th from the I-th, so N machines or GPUs
    split the zoo with nothing shared but the folder), and runs each model's probes into
    ``DIR/models/<model key>/`` (layout in :mod:`clipprobe.report.sweep`). Models are loaded
    ``models_per_pass`` at a time; their images go through :func:`clipprobe.embeddings.shared.embed_shared`,
    which decodes and preprocesses each image once per distinct preprocessing and feeds every model of the
    pass; then each model's report (:func:`clipprobe.pipeline.report.run_report`) and association tests
    (:func:`clipprobe.pipeline.eat.run_eat`) run from the embedding cache.

    Resumable at two levels: a model whose ``run.json`` says ``ok`` (with this sweep's settings) is
    skipped; an interrupted model resumes from its embedding-cache shards and report chunks. A model that
    fails (no weights, out of memory, an unreadable file) gets a ``run.json`` with status ``failed`` and its
    reason, and the sweep goes on; a rerun tries it again (``retry_failed``). Ctrl-C stops at once: what is
    finished is on disk, and a rerun continues from it. The first shard writes ``DIR/sweep.json`` (the
    settings, with the dataset's fingerprint); a shard with other settings is refused.

    The settings hold the SHA-256 of every file the probes read by name or path (:func:`input_files`: the
    taxonomy, template and control-word files of the report; the test file or suite of the association tests
    and the stimulus files, image manifests and iEAT manifest it names), and each model's ``run.json`` the
    hash of each probe's settings and inputs (:func:`probe_hashes`). A rerun after such a file was edited is
    not refused: it logs the file, records the new content in ``sweep.json``, and runs again the probe
    that reads it, for every model (an edited test file: the association tests; an edited taxonomy: the
    reports), keeping the other.

:func:`merge_sweep`
    reads one or more sweep folders (a shared one, or one per machine) into ``sweep.parquet`` and
    ``models.parquet``, refusing folders written with other settings, folders whose input files differ in
    content (naming the file), and a folder holding finished models run with another content of an input
    file than its ``sweep.json`` records (a rerun of that folder recomputes them).

:func:`analyze_sweep`
    fits the mixed model of :mod:`clipprobe.analysis.factors` (the specification of Ghate et al. by default)
    to the association tests' effect sizes (in the paper's sign convention by default) and to report measures,
    one row per checkpoint, correlates them with a performance measure, and replaces ``DIR/analysis/``.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean
from clipprobe.pipeline.eat import EatConfig
from clipprobe.pipeline.report import ReportConfig

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

PROBES = ("report", "eat")
ALL = "all"
STATUS_OK = "ok"
STATUS_FAILED = "failed"
DEFAULT_MEASURES = ("eat:effect_size", "report:max_skew_excess")

MSG_SHARD = "shard must be I/N with 1 <= I <= N (e.g. 3/16), not {value!r}"
MSG_PROBES = "probes must be a non-empty selection of {valid}, not {value!r}"
MSG_NO_MODELS = "no models to run: {why}"
MSG_OTHER_SETTINGS = ("sweep folder {path} was written with other settings (differs in: {keys}); use another "
                      "folder or the same settings")
MSG_MERGE_SETTINGS = ("cannot merge {a} and {b}: they were written with other settings (differs in: {keys})")
MSG_MERGE_NOTHING = "no finished model in {paths}"
MSG_MERGE_INPUT = ("cannot merge {a} and {b}: the {what} {path} differs in content between them (sha256 {x}... "
                   "and {y}...); run every shard with the same file")
MSG_MERGE_STALE = ("cannot merge {folder}: {n} finished model(s) (e.g. {key}) were run with another content of the "
                   "{what} {path} (sha256 {x}...) than its sweep.json records ({y}...); rerun `clipprobe sweep` "
                   "with the same settings on {folder} to recompute them")
MSG_INPUT_CHANGED = ("the %s %s changed since sweep folder %s was written (sha256 %s... then, %s... now): %s of "
                     "every model run again, as they finish")
MSG_INPUTS_UNKNOWN = ("sweep folder %s has no record of its input files' content (written by an older clipprobe): "
                      "every model runs again")
INPUT_WHAT = {"taxonomy": "taxonomy file", "templates": "template file", "controls": "control-word file",
              "tests": "test file"}
PROBE_LABELS = {"report": "the reports", "eat": "the association tests"}
MSG_PER_PASS = "models_per_pass must be a positive whole number, not {value!r}"
MSG_MEASURE = "unknown measure {value!r}{hint}; measures of this sweep: {valid}"
MSG_PERFORMANCE_CSV = "performance table {path}: {problem}"


# --------------------------------------------------------------------------- settings


def parse_shard(value: "str | tuple[int, int] | None") -> tuple[int, int]:
    """``"3/16"`` -> (3, 16); None -> (1, 1). One-based: the first of N shards is 1/N."""
    if value is None:
        return 1, 1
    if isinstance(value, tuple):
        i, n = value
    else:
        text = str(value).strip()
        parts = text.split("/")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise UsageError(MSG_SHARD.format(value=value))
        i, n = int(parts[0]), int(parts[1])
    if isinstance(i, bool) or isinstance(n, bool) or not (1 <= i <= n):
        raise UsageError(MSG_SHARD.format(value=value if isinstance(value, str) else f"{i}/{n}"))
    return int(i), int(n)


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """Settings of one sweep (or one shard of it).

    ``models``: specs (``ARCH:TAG``, ``ARCH:PATH``, ...), ``"all"``, or paths of model CSVs (a ``spec`` or
    ``model`` column; optional ``model_config``, ``preprocess`` and metadata columns:
    :func:`clipprobe.models.zoo.read_user_table`). ``report``: the report settings every model runs with
    (its ``probe`` names the dataset, cache, device and precision; its model is replaced per model);
    ``eat``: the association-test settings (suite or test file; model and ``out`` replaced per model).
    ``shard``: ``"I/N"``. ``models_per_pass``: models loaded together, whose images are decoded once.
    """

    out: str
    models: tuple[str, ...] = ()
    probes: tuple[str, ...] = PROBES
    report: ReportConfig = dataclasses.field(default_factory=lambda: ReportConfig(figures=False, html=False))
    eat: EatConfig = dataclasses.field(default_factory=lambda: EatConfig(out="", figures=False))
    shard: str | None = None
    models_per_pass: int = 4
    retry_failed: bool = True

    def check(self) -> "SweepConfig":
        if not self.probes or any(p not in PROBES for p in self.probes) or len(set(self.probes)) != len(self.probes):
            raise UsageError(MSG_PROBES.format(valid=", ".join(PROBES), value=",".join(self.probes)))
        parse_shard(self.shard)
        if isinstance(self.models_per_pass, bool) or not isinstance(self.models_per_pass, int) or \
                self.models_per_pass < 1:
            raise UsageError(MSG_PER_PASS.format(value=self.models_per_pass))
        if "report" in self.probes:
            self.report.check()
        else:
            self.report.probe.check()
        if "eat" in self.probes:
            self.eat.check()
        return self


def settings_record(config: SweepConfig, dataset: Any) -> dict:
    """What must be equal for two shards' results to be merged: the probes, their settings (model, output
    folder, devices and workers left out) and the dataset (spec, split, fingerprint)."""
    from clipprobe.config import to_dict
    from clipprobe.pipeline.probe import ProbeConfig

    probe = config.report.probe
    report = to_dict(dataclasses.replace(config.report, probe=ProbeConfig(), out=""))
    for key in ("probe", "figures", "html"):      # outputs that do not change a number
        report.pop(key, None)
    eat = to_dict(dataclasses.replace(config.eat, out="", model="", model_config=None, preprocess=None,
                                      quick_gelu=False))
    for key in ("cache_dir", "device", "batch_size", "num_workers", "offline", "n_jobs", "figures"):
        eat.pop(key, None)
    if eat.get("paper_signs"):
        eat["paper_signs_form"] = PAPER_SIGNS_FORM     # d x -1, p-values as defined (earlier: targets swapped)
    return {
        "format_version": _sweep_format(),
        "probes": sorted(config.probes),
        "dataset": {"spec": probe.dataset, "split": probe.split, "hf_config": probe.hf_config,
                    "fingerprint": getattr(dataset, "fingerprint", None)},
        "precision": probe.precision,
        "report": report if "report" in config.probes else None,
        "eat": eat if "eat" in config.probes else None,
        "inputs": input_files(config),
    }


def _file_record(path: Path) -> dict:
    from clipprobe._io import sha256_file

    try:
        return {"path": str(path), "sha256": sha256_file(path)}
    except OSError as err:
        raise DataError(f"{path} cannot be read: {err.strerror or err}") from None


def _registry_file(registry, value: str | None) -> Path | None:
    """The file behind a resource name or path, after loading it once (a bad file fails here, before any
    model is loaded, with the registry's own message)."""
    registry.get(value)
    return registry.file(value)


def input_files(config: SweepConfig) -> dict[str, dict[str, dict]]:
    """Per probe, the files its settings name, each as ``{"path", "sha256"}`` (SHA-256 of the bytes).

    ``report``: its taxonomy, template set and control words (shipped ones too: a new clipprobe may change
    them). ``eat``: the test file or suite, and the files its sets read: ``file:`` lists, ``images:`` CSV
    manifests, the iEAT manifest, ``OASIS.csv`` under ``oasis_root``. Image files are not hashed here: the
    embedding cache keys them.
    """
    out: dict[str, dict[str, dict]] = {}
    if "report" in config.probes:
        from clipprobe.resources.prompts import TEMPLATE_SETS
        from clipprobe.resources.taxonomy import TAXONOMIES

        r = config.report
        files = {"taxonomy": _file_record(_registry_file(TAXONOMIES, r.taxonomy)),
                 "templates": _file_record(_registry_file(TEMPLATE_SETS, r.templates))}
        if r.controls:
            files["controls"] = _file_record(_registry_file(TAXONOMIES, r.controls))
        out["report"] = files
    if "eat" in config.probes:
        from clipprobe.pipeline.eat import load_suite
        from clipprobe.resources.eat import IEAT_MANIFEST, OASIS_CSV, SUITES, _resolve_path, _stimuli_dir

        e = config.eat
        suite = load_suite(e)
        tests = Path(e.tests_file).expanduser() if e.tests_file is not None else _registry_file(SUITES, e.suite)
        files = {"tests": _file_record(tests)}
        for test in suite.tests:
            for spec in test.sets.values():
                path = None
                if spec.kind == "file":
                    path = _resolve_path(str(spec.value), spec.base)
                elif spec.kind == "images" and isinstance(spec.value, str) and spec.value.lower().endswith(".csv"):
                    path = _resolve_path(spec.value, spec.base)
                elif spec.kind == "ieat":
                    path = _stimuli_dir() / IEAT_MANIFEST
                elif spec.kind == "oasis" and e.oasis_root is not None:
                    path = Path(e.oasis_root).expanduser() / OASIS_CSV
                if path is not None and str(path) not in files and path.is_file():
                    files[str(path)] = _file_record(path)
        out["eat"] = files
    return out


def probe_hashes(settings: dict) -> dict[str, str]:
    """Per probe, the hash of what its results depend on: the format, precision, its own settings and input
    files, and (the report) the dataset. A probe whose hash is unchanged is not run again for a model."""
    out = {}
    for probe in settings.get("probes") or ():
        part = {"format_version": settings.get("format_version"), "precision": settings.get("precision"),
                probe: settings.get(probe), "inputs": (settings.get("inputs") or {}).get(probe)}
        if probe == "report":
            part["dataset"] = settings.get("dataset")
        out[probe] = settings_hash(part)
    return out


def _input_changes(old: dict | None, new: dict | None) -> list[tuple[str, str, str, str, str | None, str | None]]:
    """(probe, role, what, path, old sha256, new sha256) of every input file whose content or presence
    differs between two ``inputs`` records (same paths; another path is another setting)."""
    out = []
    old, new = old or {}, new or {}
    for probe in sorted(set(old) | set(new)):
        a, b = old.get(probe) or {}, new.get(probe) or {}
        for role in sorted(set(a) | set(b)):
            x, y = a.get(role) or {}, b.get(role) or {}
            if x.get("sha256") != y.get("sha256"):
                out.append((probe, role, INPUT_WHAT.get(role, "stimulus file"), y.get("path") or x.get("path"),
                            x.get("sha256"), y.get("sha256")))
    return out


def _short(digest: str | None) -> str:
    return (digest or "none")[:12]


def _sweep_format() -> int:
    from clipprobe.report.sweep import FORMAT_VERSION

    return FORMAT_VERSION


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:16]


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".") or "settings"]


def _shown_keys(keys: list[str]) -> str:
    return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")


def check_settings_file(out: Path, settings: dict) -> None:
    """Create ``out/sweep.json`` with ``settings``, or check that the one there is the same. Where only the
    content of input files differs, the new content is recorded (and logged, naming each file): the models
    then run again what reads them (:func:`probe_hashes`)."""
    from clipprobe.report.sweep import create_settings_file, read_json, write_settings_file

    payload = {"settings": settings, "settings_hash": settings_hash(settings)}
    path = create_settings_file(out, payload)
    stored = read_json(path, "sweep settings")
    if stored.get("settings_hash") == payload["settings_hash"]:
        return
    before = stored.get("settings") or {}
    keys = _differences(before, settings)
    if not keys or not all(k == "inputs" or k.startswith("inputs.") for k in keys):
        raise ClipprobeError(MSG_OTHER_SETTINGS.format(path=out, keys=_shown_keys(keys)))
    # only the content of input files changed: record it; each model runs again the probes that read them
    if "inputs" not in before:
        log.info(MSG_INPUTS_UNKNOWN, out)
    else:
        for probe, role, what, file, x, y in _input_changes(before.get("inputs"), settings.get("inputs")):
            log.info(MSG_INPUT_CHANGED, what, file, out, _short(x), _short(y), PROBE_LABELS.get(probe, probe))
    write_settings_file(out, payload)


# --------------------------------------------------------------------------- the model list


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the sweep: its spec, its folder key, and what a model CSV said about it."""

    spec: str
    key: str
    model_config: str | None = None
    preprocess: str | None = None
    quick_gelu: bool = False
    user: dict = dataclasses.field(default_factory=dict)
    problem: str | None = None          # why the model cannot be run (an unknown ARCH:TAG pair, a bad spec)


@dataclasses.dataclass(frozen=True)
class ModelList:
    entries: tuple[ModelEntry, ...]     # every model, those with a problem included
    user_tables: tuple = ()

    @property
    def unknown(self) -> tuple[ModelEntry, ...]:
        return tuple(e for e in self.entries if e.problem is not None)

    @property
    def performance_columns(self) -> tuple[str, ...]:
        cols: list[str] = []
        for t in self.user_tables:
            cols += [c for c in t.performance_columns if c not in cols]
        return tuple(cols)


def _is_table(item: str) -> bool:
    return item.lower().endswith((".csv", ".tsv")) or (Path(item).expanduser().is_file()
                                                      and not item.lower().endswith((".safetensors", ".pt", ".pth",
                                                                                     ".bin", ".ckpt")))


def resolve_models(items: Sequence[str]) -> ModelList:
    """The sweep's models in the order given, each once (see :class:`SweepConfig`); unknown ``ARCH:TAG``
    pairs and malformed specs are listed, with close matches, instead of stopping the sweep."""
    from clipprobe.errors import ModelError
    from clipprobe.models.spec import _safe, parse_model_spec
    from clipprobe.models.zoo import check_known, known_specs, model_key, read_user_table

    entries: dict[str, ModelEntry] = {}
    tables = []
    for item in items:
        item = str(item).strip()
        if not item:
            continue
        if item == ALL:
            specs = [(s, {}) for s in known_specs()]
        elif _is_table(item):
            table = read_user_table(item)
            tables.append(table)
            base = Path(table.path).parent
            specs = []
            for s in table.specs:
                given = dict(table.values[parse_model_spec(s).canonical])
                for col in ("model_config",):
                    if given.get(col) and not Path(given[col]).expanduser().is_absolute():
                        given[col] = str((base / given[col]).resolve())
                specs.append((s, given))
        else:
            specs = [(item, {})]
        ok, problems = check_known([s for s, _ in specs])
        ok_set = set(ok)
        bad_iter = iter(problems)
        for spec, given in specs:
            if spec not in ok_set:
                message = next(bad_iter)
                try:
                    key = model_key(spec)
                except ModelError:
                    key = _safe(spec)
                entries.setdefault(spec, ModelEntry(spec=spec, key=key, problem=message))
                continue
            parsed = parse_model_spec(spec)
            spec_c = parsed.canonical
            if spec_c in entries:
                continue
            entries[spec_c] = ModelEntry(spec=spec_c, key=model_key(parsed), model_config=given.get("model_config"),
                                         preprocess=given.get("preprocess"), quick_gelu=bool(given.get("quick_gelu")),
                                         user=given)
    keys: dict[str, str] = {}
    for e in entries.values():
        if e.key in keys:
            raise UsageError(f"models {keys[e.key]!r} and {e.spec!r} would share the folder {e.key!r}")
        keys[e.key] = e.spec
    return ModelList(entries=tuple(entries.values()), user_tables=tuple(tables))


def preprocess_hint(entry: ModelEntry) -> str:
    """What decides a pretrained pair's image tensors (image size, resize, crop, normalisation), read from
    open_clip's tables without loading the model; other models (and forced preprocessing) sort after them.
    Used only to put models that can share a decode pass next to each other."""
    import open_clip

    from clipprobe.models.spec import parse_model_spec

    spec = parse_model_spec(entry.spec)
    if spec.kind != "pretrained" or entry.preprocess:
        return f"~{entry.preprocess or ''}|{entry.model_config or spec.arch or ''}"
    cfg = open_clip.get_pretrained_cfg(spec.arch, spec.tag) or {}
    size = ((open_clip.get_model_config(spec.arch) or {}).get("vision_cfg") or {}).get("image_size")
    keys = ("mean", "std", "interpolation", "resize_mode")
    return json.dumps({"size": size, **{k: cfg.get(k) for k in keys}}, sort_keys=True, default=str)


def shard_models(entries: Sequence[ModelEntry], shard: tuple[int, int]) -> list[ModelEntry]:
    """This shard's models: sorted by folder key, every N-th starting with the I-th (one-based)."""
    i, n = shard
    ordered = sorted(entries, key=lambda e: e.key)
    return ordered[i - 1::n]


# --------------------------------------------------------------------------- one sweep run


@dataclasses.dataclass
class SweepResult:
    """What one :func:`run_sweep` call did (one shard)."""

    out: Path
    shard: tuple[int, int]
    done: list[str]
    skipped: list[str]
    failed: dict[str, str]
    unknown: dict[str, str]
    timings: dict[str, dict]
    record: dict


def _model_dir(out: Path, key: str) -> Path:
    from clipprobe.report.sweep import model_dir

    return model_dir(out, key)


def _finished(out: Path, entry: ModelEntry, digest: str, retry_failed: bool,
              hashes: dict[str, str] | None = None) -> tuple[str | None, tuple[str, ...]]:
    """(status, probes kept) of a model already in the folder. The status is "ok" / "failed" where the model
    ran with these settings (nothing to do), else None (run it). ``hashes`` (:func:`probe_hashes`): a model
    that finished with other settings keeps the probes whose hash is unchanged (their folders are current)
    and runs only the others."""
    from clipprobe.report.sweep import RUN_FILE

    path = _model_dir(out, entry.key) / RUN_FILE
    if not path.is_file():
        return None, ()
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, ()
    status = record.get("status")
    if record.get("settings_hash") != digest:
        before = record.get("probe_hashes") if status == STATUS_OK else None
        if not isinstance(before, dict) or not hashes:
            return None, ()
        kept = tuple(p for p, h in hashes.items() if before.get(p) == h)
        return None, (kept if len(kept) < len(hashes) else ())
    if status == STATUS_FAILED and retry_failed:
        return None, ()
    return status, ()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else ""
    return f"{line}" if isinstance(err, ClipprobeError) else f"{type(err).__name__}: {line}".rstrip(": ")


def _metadata(entry: ModelEntry, encoder=None) -> dict:
    """The zoo row of a model, with the values of its model CSV and, where the tables have none, its
    parameters counted from the loaded model."""
    from clipprobe.models.zoo import apply_user_values, describe_model

    row = describe_model(entry.spec, count=False)
    if entry.user:
        apply_user_values(row, entry.user, source="user (model table)",
                          performance_columns=tuple(k for k in entry.user if k not in row))
    if encoder is not None and row.get("params_total_m") is None and hasattr(encoder, "model"):
        model = encoder.model
        visual = getattr(model, "visual", None)
        total = sum(p.numel() for p in model.parameters())
        image = sum(p.numel() for p in visual.parameters()) if visual is not None else 0
        row.update(params_image_m=round(image / 1e6, 4), params_text_m=round((total - image) / 1e6, 4),
                   params_total_m=round(total / 1e6, 4), params_source="counted from the loaded model")
    if encoder is not None:
        row["precision"] = encoder.info().get("precision")
    return row


def _write_model_record(out: Path, entry: ModelEntry, *, status: str, reason: str | None, digest: str,
                        shard: tuple[int, int], metadata: dict, timings: dict, config_record: dict,
                        model_info: dict | None = None, dataset_info: dict | None = None,
                        settings: dict | None = None, kept: tuple[str, ...] = ()) -> dict:
    from clipprobe.report.sweep import FORMAT_VERSION, write_model_record
    from clipprobe.runinfo import run_record

    timings = {**timings, "total": round(sum(v for k, v in timings.items() if k != "total"), 3)}
    record = run_record("sweep model", config=config_record, format_version=FORMAT_VERSION, model=model_info,
                        dataset=dataset_info, timings=timings, spec=entry.spec, model_key=entry.key, status=status,
                        reason=reason, settings_hash=digest, shard=f"{shard[0]}/{shard[1]}", metadata=metadata,
                        probe_hashes=probe_hashes(settings) if settings else None,
                        inputs=(settings or {}).get("inputs"), kept=list(kept))
    write_model_record(out, entry.key, record)
    return record


def _eat_datasets(config: SweepConfig, cache_base: Path) -> list:
    """The image datasets of the association tests (resolved once; downloads happen here)."""
    from clipprobe.pipeline.eat import _manifest_dataset, load_suite
    from clipprobe.resources.eat import IEAT_BASE_URL, Resolver

    suite = load_suite(config.eat)
    pc = config.report.probe
    resolver = Resolver(stimuli_root=config.eat.stimuli_root, oasis_root=config.eat.oasis_root,
                        cache_dir=pc.cache_dir, base_url=IEAT_BASE_URL, offline=pc.offline)
    # A test whose stimuli were not given (OASIS) is skipped as `eat` skips it, unless the run is strict.
    tests = [t for t in resolver.resolve(suite.tests, skip_missing=not config.eat.strict)
             if t.unavailable is None and t.sets is not None]
    datasets: dict[str, Any] = {}
    for t in tests:
        for stim in t.sets.values():
            if stim.modality != "image":
                continue
            ds = stim.dataset if stim.dataset is not None else _manifest_dataset(stim, cache_base)
            datasets.setdefault(f"{ds.spec}\0{ds.fingerprint}", ds)
    return list(datasets.values())


def run_sweep(config: SweepConfig, *, progress: bool | None = None) -> SweepResult:
    """Run this shard of the sweep (see the module docstring)."""
    from tqdm.auto import tqdm

    from clipprobe.config import to_dict
    from clipprobe.embeddings.cache import default_cache_dir
    from clipprobe.faces import load_dataset
    from clipprobe.report.sweep import write_shard_record
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    started = time.time()
    shard = parse_shard(config.shard)
    out = Path(config.out)
    pc = config.report.probe
    timer = StageTimer()
    with timer("resolve_models"):
        models = resolve_models(config.models)
    if not models.entries:
        raise UsageError(MSG_NO_MODELS.format(why="the model list is empty"))
    for entry in models.unknown:
        log.warning("%s; the sweep goes on without it", entry.problem)
    assigned = shard_models(models.entries, shard)
    mine = [e for e in assigned if e.problem is None]
    unknown_mine = [e for e in assigned if e.problem is not None]
    with timer("load_dataset"):
        dataset = load_dataset(pc.dataset, split=pc.split, image_root=pc.image_root, offline=pc.offline or None,
                               hf_config=pc.hf_config)
    settings = settings_record(config, dataset)
    digest = settings_hash(settings)
    check_settings_file(out, settings)
    config_record = to_dict(config)          # report, its probe and eat as nested dicts

    failed: dict[str, str] = {}
    unknown: dict[str, str] = {}
    for entry in unknown_mine:
        _write_model_record(out, entry, status=STATUS_FAILED, reason=entry.problem, digest=digest, shard=shard,
                            metadata={"spec": entry.spec}, timings={}, config_record=config_record)
        unknown[entry.spec] = entry.problem
    hashes = probe_hashes(settings)
    todo, skipped = [], []
    kept: dict[str, tuple[str, ...]] = {}        # spec -> probes whose results are current (not run again)
    for entry in mine:
        status, keep = _finished(out, entry, digest, config.retry_failed, hashes)
        if status is None:
            todo.append(entry)
            if keep:
                kept[entry.spec] = keep
        else:
            skipped.append(entry.spec)
            if status == STATUS_FAILED:
                failed[entry.spec] = "failed before (retry_failed is off)"
    log.info("sweep shard %d/%d: %d model(s), %d finished before, %d to run%s", shard[0], shard[1], len(mine),
             len(skipped), len(todo), f", {len(unknown_mine)} unknown" if unknown_mine else "")
    for keep in sorted(set(kept.values())):
        n = sum(1 for k in kept.values() if k == keep)
        log.info("%d model(s) finished before with other inputs: %s run again, %s kept", n,
                 ", ".join(PROBE_LABELS.get(p, p) for p in config.probes if p not in keep),
                 ", ".join(PROBE_LABELS.get(p, p) for p in keep))

    # Models with the same preprocessing side by side, so that a pass shares one decode among as many as it can.
    todo.sort(key=lambda e: (preprocess_hint(e), e.key))
    cache_base = Path(pc.cache_dir).expanduser() if pc.cache_dir else default_cache_dir()
    eat_datasets = []
    if "eat" in config.probes and any("eat" not in kept.get(e.spec, ()) for e in todo):
        with timer("resolve_stimuli"):
            eat_datasets = _eat_datasets(config, cache_base)
    done: list[str] = []
    timings: dict[str, dict] = {}
    n_total = len(todo)
    bar = tqdm(total=n_total, unit="model", desc=f"sweep {shard[0]}/{shard[1]}",
               disable=None if progress is None else not progress)
    try:
        for start in range(0, len(todo), config.models_per_pass):
            batch = todo[start:start + config.models_per_pass]
            results = _run_pass(batch, config, dataset, eat_datasets, out=out, digest=digest, shard=shard,
                                config_record=config_record, progress=progress, settings=settings, kept=kept)
            for entry, (status, reason, seconds) in zip(batch, results):
                timings[entry.spec] = seconds
                if status == STATUS_OK:
                    done.append(entry.spec)
                else:
                    failed[entry.spec] = reason
                bar.update(1)
                n_left = n_total - len(done) - len([e for e in todo if e.spec in failed])
                log.info("sweep: %s %s in %.1f s (%s); %d done, %d failed, %d left", entry.spec,
                         "finished" if status == STATUS_OK else f"FAILED ({reason})", seconds.get("total", 0.0),
                         ", ".join(f"{k} {v:.1f}" for k, v in seconds.items() if k != "total"), len(done),
                         len([e for e in todo if e.spec in failed]), n_left)
    finally:
        bar.close()
    record = run_record("sweep", config=config_record, format_version=_sweep_format(), dataset=dataset.summary(),
                        timings=timer.as_dict(), started=started, shard=f"{shard[0]}/{shard[1]}",
                        settings_hash=digest, models=[e.spec for e in mine], done=done, skipped=skipped,
                        failed=failed, unknown=unknown, per_model_s=timings)
    write_shard_record(out, shard, record)
    return SweepResult(out=out, shard=shard, done=done, skipped=skipped, failed=failed, unknown=unknown,
                       timings=timings, record=record)


def _load(entry: ModelEntry, pc) -> Any:
    from clipprobe.models import load_model

    return load_model(entry.spec, device=pc.device, model_config=entry.model_config, offline=pc.offline or None,
                      preprocess=entry.preprocess, precision=pc.precision, quick_gelu=entry.quick_gelu)


def _run_pass(batch: list[ModelEntry], config: SweepConfig, dataset, eat_datasets: list, *, out: Path, digest: str,
              shard: tuple[int, int], config_record: dict, progress, settings: dict | None = None,
              kept: dict[str, tuple[str, ...]] | None = None) -> list[tuple[str, str | None, dict]]:
    """Load a pass of models, embed their images together, run each model's probes (but those in ``kept``);
    one result per model."""
    from clipprobe.embeddings.shared import embed_shared

    kept = kept or {}
    pc = config.report.probe
    results: list[Any] = [None] * len(batch)
    encoders: dict[int, Any] = {}
    seconds: list[dict] = [{} for _ in batch]
    for i, entry in enumerate(batch):
        t0 = time.perf_counter()
        try:
            encoders[i] = _load(entry, pc)
        except (ClipprobeError, RuntimeError, OSError, ValueError, MemoryError, ImportError) as err:
            results[i] = _fail(out, entry, err, digest, shard, config_record, seconds[i])
        seconds[i]["load_model"] = round(time.perf_counter() - t0, 3)
    embeddings: dict[int, Any] = {}
    if encoders:
        # the face dataset for the models that run the report, the test images for those that run the tests
        order = sorted(i for i in encoders if "report" in config.probes and "report" not in kept.get(batch[i].spec, ()))
        t0 = time.perf_counter()
        shared = embed_shared([encoders[i] for i in order], dataset, cache_dir=pc.cache_dir, batch_size=pc.batch_size,
                              num_workers=pc.num_workers, progress=progress) if order else None
        dead = {order[j] for j in shared.failed} if shared is not None else set()
        alive = [encoders[i] for i in sorted(encoders) if i not in dead and "eat" in config.probes
                 and "eat" not in kept.get(batch[i].spec, ())]
        for extra in eat_datasets if alive else ():
            more = embed_shared(alive, extra,
                                cache_dir=pc.cache_dir, batch_size=config.eat.batch_size,
                                num_workers=pc.num_workers, progress=False)
            if more.failed:
                log.warning("%d model(s) failed on the association tests' images; their tests will report it",
                            len(more.failed))
        elapsed = time.perf_counter() - t0
        forward_total = (sum(shared.forward_s) if shared is not None else 0.0) or 1.0
        for j, i in enumerate(order):
            # the shared pass's wall time, split over its models by their share of the forward passes
            seconds[i]["embed_shared"] = round(elapsed * shared.forward_s[j] / forward_total, 3)
            if j in shared.failed:
                results[i] = _fail(out, batch[i], RuntimeError(shared.failed[j]), digest, shard, config_record,
                                   seconds[i], encoder=encoders.pop(i))
            else:
                embeddings[i] = shared.embeddings[j]
    for i in sorted(encoders):
        results[i] = _run_probes(batch[i], encoders[i], embeddings.get(i), dataset, config, out=out, digest=digest,
                                 shard=shard, config_record=config_record, seconds=seconds[i], progress=progress,
                                 settings=settings, kept=kept.get(batch[i].spec, ()))
    encoders.clear()
    _free_memory(pc.device)
    return [(r[0], r[1], {**s, "total": round(sum(v for v in s.values()), 3)}) for r, s in zip(results, seconds)]


def _free_memory(device: str) -> None:
    gc.collect()
    if str(device).startswith(("cuda", "auto")):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _fail(out: Path, entry: ModelEntry, err: BaseException, digest: str, shard, config_record: dict, seconds: dict,
          encoder=None) -> tuple[str, str]:
    reason = _first_line(err)
    log.debug("model %s failed", entry.spec, exc_info=err)
    _write_model_record(out, entry, status=STATUS_FAILED, reason=reason, digest=digest, shard=shard,
                        metadata=_metadata(entry, encoder), timings=seconds, config_record=config_record,
                        model_info=encoder.info() if encoder is not None else None)
    return STATUS_FAILED, reason


def _run_probes(entry: ModelEntry, encoder, embeddings, dataset, config: SweepConfig, *, out: Path, digest: str,
                shard, config_record: dict, seconds: dict, progress, settings: dict | None = None,
                kept: tuple[str, ...] = ()) -> tuple[str, str | None]:
    """One model's report and association tests (but the probes in ``kept``), from its (cached) embeddings."""
    from clipprobe.pipeline.eat import run_eat
    from clipprobe.pipeline.probe import Probe
    from clipprobe.pipeline.report import run_report

    pc = dataclasses.replace(config.report.probe, model=entry.spec, model_config=entry.model_config,
                             preprocess=entry.preprocess, quick_gelu=entry.quick_gelu, index="flat")
    folder = _model_dir(out, entry.key)
    try:
        if "report" in config.probes and "report" not in kept:
            t0 = time.perf_counter()
            probe = Probe(config=pc, encoder=encoder, dataset=dataset, embeddings=embeddings, labels=embeddings.labels,
                          files=embeddings.files, timings={})
            run_report(dataclasses.replace(config.report, probe=pc, out=str(folder / "report")), probe=probe,
                       progress=progress)
            seconds["report"] = round(time.perf_counter() - t0, 3)
        if "eat" in config.probes and "eat" not in kept:
            t0 = time.perf_counter()
            eat_config = dataclasses.replace(config.eat, out=str(folder / "eat"), model=entry.spec,
                                             model_config=entry.model_config, preprocess=entry.preprocess,
                                             quick_gelu=entry.quick_gelu,
                                             cache_dir=pc.cache_dir, device=pc.device, precision=pc.precision,
                                             num_workers=pc.num_workers, offline=pc.offline)
            run_eat(eat_config, encoder=encoder, progress=progress)
            seconds["eat"] = round(time.perf_counter() - t0, 3)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # noqa: BLE001 - one model's failure is recorded with its reason; the sweep goes on
        return _fail(out, entry, err, digest, shard, config_record, seconds, encoder=encoder)
    _write_model_record(out, entry, status=STATUS_OK, reason=None, digest=digest, shard=shard,
                        metadata=_metadata(entry, encoder), timings=seconds, config_record=config_record,
                        model_info=encoder.info(), dataset_info=dataset.summary(), settings=settings, kept=kept)
    return STATUS_OK, None


# --------------------------------------------------------------------------- merge


@dataclasses.dataclass
class MergeResult:
    out: Path
    table: "pd.DataFrame"
    models: "pd.DataFrame"
    record: dict


def merge_sweep(folders: Sequence[str | os.PathLike], *, out: str | os.PathLike | None = None) -> MergeResult:
    """Merge sweep folders into ``sweep.parquet`` and ``models.parquet`` (in ``out``, default the first folder).

    Every folder must hold a ``sweep.json`` with the same settings hash (input files of other content are
    named); a folder with finished models run on another content of an input file than its ``sweep.json``
    records is refused; a model finished in several folders is taken from the first that has it finished.
    """
    import pandas as pd

    from clipprobe.report.sweep import (MODEL_COLUMNS, MODELS_DIR, MSG_NOT_A_SWEEP, RUN_FILE,
                                        SETTINGS_FILE, SWEEP_FILE, finish_sweep_table, model_table, read_json,
                                        write_merged)
    from clipprobe.runinfo import StageTimer, run_record

    if not folders:
        raise UsageError("give at least one sweep folder to merge")
    timer = StageTimer()
    paths = [Path(f) for f in folders]
    settings = []
    for p in paths:
        if not (p / SETTINGS_FILE).is_file():
            raise DataError(MSG_NOT_A_SWEEP.format(path=p, file=SETTINGS_FILE))
        settings.append(read_json(p / SETTINGS_FILE, "sweep settings"))
    first = settings[0].get("settings") or {}
    for p, s in zip(paths[1:], settings[1:]):
        if s.get("settings_hash") != settings[0].get("settings_hash"):
            other = s.get("settings") or {}
            keys = _differences(first, other)
            if keys and all(k == "inputs" or k.startswith("inputs.") for k in keys):
                changes = _input_changes(first.get("inputs"), other.get("inputs"))
                if changes:
                    _, _, what, file, x, y = changes[0]
                    raise ClipprobeError(MSG_MERGE_INPUT.format(a=paths[0], b=p, what=what, path=file, x=_short(x),
                                                                y=_short(y)))
            raise ClipprobeError(MSG_MERGE_SETTINGS.format(a=paths[0], b=p, keys=_shown_keys(keys)))
    digest = settings[0].get("settings_hash")
    records: dict[str, tuple[Path, dict]] = {}
    for p in paths:
        stale: list[tuple[str, tuple]] = []
        for run in sorted((p / MODELS_DIR).glob(f"*/{RUN_FILE}")):
            record = read_json(run, "model record")
            if record.get("settings_hash") != digest:
                changes = _input_changes(first.get("inputs"), record.get("inputs")) \
                    if record.get("status") == STATUS_OK and isinstance(record.get("inputs"), dict) else []
                if changes:
                    stale.append((record.get("model_key") or run.parent.name, changes[0]))
                    continue
                log.warning("%s was written with other settings; left out", run.parent)
                continue
            key = record.get("model_key") or run.parent.name
            prev = records.get(key)
            if prev is None or (prev[1].get("status") != STATUS_OK and record.get("status") == STATUS_OK):
                records[key] = (run.parent, record)
        if stale:
            key, (_, _, what, file, x, y) = stale[0]
            raise ClipprobeError(MSG_MERGE_STALE.format(folder=p, n=len(stale), key=key, what=what, path=file,
                                                        x=_short(y), y=_short(x)))
    if not records:
        raise DataError(MSG_MERGE_NOTHING.format(paths=", ".join(str(p) for p in paths)))
    extra: list[str] = []
    for _, record in records.values():
        for k in (record.get("metadata") or {}):
            if k not in extra and _is_extra_performance(k, record["metadata"][k]):
                extra.append(k)
    extra = sorted(extra)
    frames, model_rows = [], []
    with timer("read"):
        for key in sorted(records):
            folder, record = records[key]
            meta = record.get("metadata") or {}
            if record.get("status") == STATUS_OK:
                frames.append(model_table(folder, record, extra))
            model_rows.append({"model": record.get("spec"), "model_key": key, "status": record.get("status"),
                               "reason": record.get("reason"), "shard": record.get("shard"),
                               "seconds": (record.get("timings_s") or {}).get("total"),
                               **{c: meta.get(c) for c in MODEL_COLUMNS[6:]}})
    table = finish_sweep_table(frames, extra)
    models = pd.DataFrame(model_rows, columns=list(MODEL_COLUMNS))
    for c in ("seconds", "params_total_m", "dataset_size"):
        models[c] = pd.to_numeric(models[c], errors="coerce").astype("float64")
    target = Path(out) if out is not None else paths[0]
    n_ok = int((models["status"] == STATUS_OK).sum())
    record = run_record("sweep merge", config={"folders": [str(p) for p in paths], "out": str(target)},
                        format_version=_sweep_format(), timings=timer.as_dict(), settings_hash=digest,
                        settings=settings[0].get("settings"), n_models=len(models), n_ok=n_ok,
                        n_failed=len(models) - n_ok, n_rows=len(table), performance_columns=extra)
    write_merged(target, table, models, record)
    log.info("merged %d model(s) (%d finished) into %s: %d rows", len(models), n_ok, target / SWEEP_FILE, len(table))
    return MergeResult(out=target, table=table, models=models, record=record)


def _is_extra_performance(key: str, value: Any) -> bool:
    from clipprobe.models.zoo import USER_COLUMNS, ZOO_COLUMNS

    if key in ZOO_COLUMNS or key in USER_COLUMNS or key == "precision":
        return False
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- analyze

SIGNS = ("paper", "raw")
DEFAULT_PERFORMANCE = "avg38"
# Facts an analysis takes from the current zoo tables unless the sweep's model table gave them (user_columns).
REFRESHED_COLUMNS = ("arch_family", "dataset", "dataset_family", "dataset_size", "params_image_m", "params_text_m",
                     "params_total_m", "samples_seen", "imagenet1k", "avg38", "vtab", "vtab_plus", "duplicate_of")
PERFORMANCE_FILL = ("imagenet1k", "avg38", "vtab", "vtab_plus")
MSG_SIGNS = "signs must be one of {valid}, not {value!r}"
MSG_SPEC = "unknown model specification {value!r}; valid: {valid}"


@dataclasses.dataclass
class AnalysisResult:
    out: Path
    table: "pd.DataFrame"
    fits: dict[str, Any]
    correlations: "pd.DataFrame | None"
    record: dict
    files: list[Path]


def _split_measure(text: str) -> tuple[str, str]:
    probe, sep, measure = text.partition(":")
    if not sep:
        probe, measure = ("eat", text) if text == "effect_size" else ("report", text)
    return probe, measure


def _read_performance_csv(path: str | os.PathLike) -> "pd.DataFrame":
    import pandas as pd

    from clipprobe.models.spec import parse_model_spec

    p = Path(path).expanduser()
    try:
        df = pd.read_csv(p)
    except (OSError, ValueError) as err:
        raise DataError(MSG_PERFORMANCE_CSV.format(path=p, problem=f"cannot be read ({err})")) from None
    col = "spec" if "spec" in df.columns else ("model" if "model" in df.columns else None)
    if col is None:
        raise DataError(MSG_PERFORMANCE_CSV.format(path=p, problem="has no 'spec' or 'model' column"))
    df = df.rename(columns={col: "model"})
    df["model"] = [parse_model_spec(str(s)).canonical for s in df["model"]]
    return df


def _usable(value: Any) -> bool:
    if value is None:
        return False
    if isinstance(value, float):
        return value == value
    return str(value) not in ("", "unknown", "nan", "None")


def refresh_metadata(table: "pd.DataFrame", model_tables: Sequence[str | os.PathLike] = ()) -> tuple[
        "pd.DataFrame", dict[str, int], list[str]]:
    """The sweep table with each model's facts as the current zoo tables give them (architecture family by the
    paper's rules, dataset, family, size, parameters, published performance, same-checkpoint pairs), except the
    columns its model table gave when it ran (``user_columns``), then the values of ``model_tables`` (model
    CSVs, as for a sweep) over everything. Returns the table, the number of models whose value changed per
    column, and the model tables' performance columns.

    A sweep written before ``user_columns`` was recorded keeps every stored value of a model that is not a
    pretrained pair (only its missing values are filled)."""
    import pandas as pd

    from clipprobe.errors import ModelError
    from clipprobe.models.spec import parse_model_spec
    from clipprobe.models.zoo import describe_model, read_user_table

    table = table.copy()
    for c in REFRESHED_COLUMNS:
        if c not in table.columns:
            table[c] = None
    tables = [read_user_table(t) for t in model_tables]
    extra = [c for t in tables for c in t.performance_columns]
    for c in extra:
        if c not in table.columns:
            table[c] = float("nan")
    has_user_columns = "user_columns" in table.columns
    first = table.drop_duplicates("model").set_index("model")
    updates: dict[str, dict[str, Any]] = {}
    changed: dict[str, int] = {}
    for model, stored in first.iterrows():
        try:
            parsed = parse_model_spec(str(model))
            fresh = describe_model(str(model), count=False)
        except ModelError:
            parsed, fresh = None, None
        if has_user_columns:
            named = {c for c in str(stored.get("user_columns") or "").split(";") if c}
        else:
            named = set(REFRESHED_COLUMNS) if parsed is None or parsed.kind != "pretrained" else set()
        row = {}
        for c in REFRESHED_COLUMNS:
            value = stored.get(c)
            if fresh is not None and _usable(fresh.get(c)) and (c not in named or not _usable(value)):
                value = fresh.get(c)
            row[c] = value
        for t in tables:
            given = t.values.get(parsed.canonical if parsed is not None else str(model))
            for c, v in (given or {}).items():
                if c in row or c in extra:
                    row[c] = v
        for c, v in row.items():
            old = stored.get(c) if c in first.columns else None
            if _usable(v) != _usable(old) or (_usable(v) and v != old):
                changed[c] = changed.get(c, 0) + 1
        updates[str(model)] = row
    for c in list(REFRESHED_COLUMNS) + extra:
        values = table["model"].map(lambda m, c=c: updates.get(str(m), {}).get(c))
        if c in ("dataset", "arch_family", "dataset_family", "duplicate_of"):
            table[c] = values.astype(object).where(values.map(_usable), None)
        else:
            table[c] = pd.to_numeric(values, errors="coerce").astype("float64")
    return table, {c: n for c, n in changed.items() if n}, extra


def one_per_checkpoint(table: "pd.DataFrame") -> tuple["pd.DataFrame", dict[str, str]]:
    """Rows of a model that loads the same checkpoint as another model of the sweep (``duplicate_of``) left
    out, its published performance filling the kept model's where that has none; returns the rows kept and
    {left-out model: kept model}."""
    present = set(table["model"].astype(str))
    pairs = {}
    for model, dup in sorted(table.drop_duplicates("model")[["model", "duplicate_of"]].itertuples(index=False),
                             key=lambda r: str(r[0])):
        # a model named as kept by another is never itself left out (a table naming A for B and B for A keeps one)
        if (dup is not None and str(dup) in present and str(dup) != str(model) and str(dup) not in pairs
                and str(model) not in pairs.values()):
            pairs[str(model)] = str(dup)
    if not pairs:
        return table, {}
    table = table.copy()
    for model, kept in pairs.items():
        source = table[table["model"] == model].iloc[0]
        target = table["model"] == kept
        for c in PERFORMANCE_FILL:
            if c in table.columns and table.loc[target, c].isna().all() and source[c] == source[c]:
                table.loc[target, c] = source[c]
    return table[~table["model"].isin(list(pairs))].reset_index(drop=True), dict(sorted(pairs.items()))


def _eat_settings(folder: Path) -> dict | None:
    from clipprobe.report.sweep import RUN_FILE, SETTINGS_FILE, read_json

    for name in (SETTINGS_FILE, RUN_FILE):
        path = folder / name
        if path.is_file():
            settings = read_json(path, "sweep settings").get("settings")
            if isinstance(settings, dict) and "eat" in settings:
                return settings.get("eat") or {}
    return None


# How a sweep run with --paper-signs stored the marked tests: d and its interval x -1, p-values as the tests
# are defined. A sweep folder without this in its settings was written when --paper-signs swapped the targets.
PAPER_SIGNS_FORM = "effect size x -1"


def apply_signs(table: "pd.DataFrame", folder: Path, signs: str) -> tuple["pd.DataFrame", dict]:
    """Effect sizes in the sign convention ``signs``: ``paper`` (Ghate et al.: the effect sizes of the tests
    their suite marks ``paper_sign: -1``, the Gender tests of ``ghate2025``, multiplied by -1; their p-values
    stay those of the tests as defined, the paper's direction) or ``raw`` (as the tests are defined). The
    sweep's settings say how it stored them (``paper_signs``: d x -1 with the p-values as defined, or, in
    folders written before ``paper_signs_form`` was recorded, the targets swapped); returns the table and
    what was done, for the run record."""
    import numpy as np

    from clipprobe.resources.eat import DEFAULT_SUITE, get_suite, load_tests

    if signs not in SIGNS:
        raise UsageError(MSG_SIGNS.format(valid=", ".join(SIGNS), value=signs))
    eat = _eat_settings(folder)
    record: dict[str, Any] = {"convention": signs}
    if eat is None:
        eat = {}
        record["note"] = f"no sweep settings in {folder}: the tests are taken as {DEFAULT_SUITE}'s, stored with raw signs"
    stored = "paper" if eat.get("paper_signs") else "raw"
    record["stored"] = stored
    source = eat.get("tests_file") or eat.get("suite") or DEFAULT_SUITE
    try:
        suite = load_tests(source) if eat.get("tests_file") else get_suite(source)
    except ClipprobeError as err:
        record.update(flipped=[], note=f"signs as stored: the tests' suite could not be read ({err})")
        return table, record
    marked = {(t.name, t.order) for t in suite.tests if t.paper_sign == -1}
    record["suite"] = str(source)
    record["tests"] = sorted(f"{name} ({order})" for name, order in marked)
    if stored == signs or not marked:
        record["flipped"] = []
    else:
        rows = (table["probe"] == "eat").to_numpy() & np.array(
            [(t, o) in marked for t, o in zip(table["test"], table["order"])], dtype=bool)
        table = table.copy()
        low, high = table.loc[rows, "ci_low"].copy(), table.loc[rows, "ci_high"].copy()
        table.loc[rows, "value"] = -table.loc[rows, "value"]
        table.loc[rows, "ci_low"], table.loc[rows, "ci_high"] = -high, -low
        record["flipped"] = sorted({f"{t} ({o})" for t, o in zip(table.loc[rows, "test"], table.loc[rows, "order"])})
    swapped = stored == "paper" and eat.get("paper_signs_form") != PAPER_SIGNS_FORM
    record["p_values"] = ("of the tests with their targets swapped (--paper-signs of an earlier version when the "
                          "sweep ran): the other direction from the paper's" if swapped else
                          "as the tests are defined (the paper's direction: it flips the effect sizes only)")
    return table, record


def analyze_sweep(folder: str | os.PathLike, *, performance: str | None = DEFAULT_PERFORMANCE,
                  measures: Sequence[str] = DEFAULT_MEASURES, performance_csv: str | None = None,
                  settings=None, spec: str = "paper", signs: str = "paper",
                  model_tables: Sequence[str | os.PathLike] = (), out: str | os.PathLike | None = None,
                  figures: bool = True, max_scatter: int = 12) -> AnalysisResult:
    """Fit the upstream-factor model per measure and correlate with ``performance`` (see the module docstring).

    ``measures``: ``probe:measure`` names (``eat:effect_size``, ``report:max_skew_excess``, ...); those the
    sweep lacks are skipped with a note. ``spec``: the model's specification (:data:`clipprobe.analysis.factors.
    SPECS`: ``paper``, the default, or ``per-test``); ``settings`` (a FactorSettings), when given, is fitted
    instead (and recorded with the spec's name).
    ``signs``: the effect sizes' sign convention (:func:`apply_signs`; ``paper`` by default). Each model's
    facts are refreshed from the zoo tables and ``model_tables`` (:func:`refresh_metadata`); a model that
    loads the same checkpoint as another of the sweep counts once (:func:`one_per_checkpoint`).
    ``performance``: ``avg38`` (default; open_clip's 38-dataset average, which most models have),
    ``imagenet1k``, ``vtab+``, ``vtab``, a column of a model table or of ``performance_csv`` (a CSV with
    ``spec``/``model`` and that column), or None. The folder ``out`` (default ``FOLDER/analysis``) is
    replaced whole. A measure whose mixed model cannot be fitted (too few models, no metadata) raises
    :class:`DataError`; so does an empty sweep.
    """
    import pandas as pd

    from clipprobe.analysis.factors import SPECS, fit_factors, performance_correlations
    from clipprobe.models.zoo import PERFORMANCE
    from clipprobe.report.sweep import (ANALYSIS_DIR, MODELS_FILE, REPORT_MEASURES, analysis_table, load_sweep_table,
                                        write_analysis)
    from clipprobe.runinfo import StageTimer, run_record

    if spec not in SPECS:
        raise UsageError(MSG_SPEC.format(value=spec, valid=", ".join(SPECS)))
    settings = (settings or SPECS[spec]).check()
    if signs not in SIGNS:
        raise UsageError(MSG_SIGNS.format(valid=", ".join(SIGNS), value=signs))
    timer = StageTimer()
    folder = Path(folder)
    table = load_sweep_table(folder)
    models = pd.read_parquet(folder / MODELS_FILE) if (folder / MODELS_FILE).is_file() else pd.DataFrame(
        columns=["model", "status", "reason"])
    if table.empty:
        raise DataError(MSG_NO_MODELS.format(why=f"{folder / 'sweep.parquet'} has no rows (no model finished)"))
    with timer("metadata"):
        table, changed, table_perf = refresh_metadata(table, model_tables)
    if performance_csv:
        perf = _read_performance_csv(performance_csv)
        new = [c for c in perf.columns if c != "model"]
        table = table.drop(columns=[c for c in new if c in table.columns]).merge(perf, on="model", how="left")
    perf_col = None
    if performance:
        perf_col = PERFORMANCE.get(performance, performance)
        if perf_col not in table.columns:
            valid = list(PERFORMANCE) + [c for c in table.columns if c not in PERFORMANCE.values() and
                                         pd.api.types.is_float_dtype(table[c]) and c not in
                                         ("value", "ci_low", "ci_high", "p_value", "q_value", "params_image_m",
                                          "params_text_m", "params_total_m", "dataset_size", "samples_seen")]
            raise UsageError(f"unknown performance measure {performance!r}{did_you_mean(performance, valid)}; "
                             f"valid: {', '.join(valid)}")
    table, sign_record = apply_signs(table, folder, signs)
    table, same = one_per_checkpoint(table)
    available = sorted({f"{p}:{m}" for p, m in zip(table["probe"], table["measure"])})
    fits: dict[str, Any] = {}
    sections: dict[str, list] = {"coefficients": [], "random": [], "correlations": [], "notes": []}

    def note(text: str, probe=None, measure=None) -> None:
        sections["notes"].append(pd.DataFrame({"probe": [probe], "measure": [measure], "note": [text]}))

    if same:
        shown = ", ".join(f"{a} = {b}" for a, b in list(same.items())[:8]) + (
            f" and {len(same) - 8} more" if len(same) > 8 else "")
        note(f"{len(same)} model(s) load the same checkpoint as another model of the sweep and count once: {shown}")
    if sign_record.get("flipped"):
        note(f"effect sizes in the paper's sign (multiplied by -1): {', '.join(sign_record['flipped'])}")
    if changed:
        note("metadata from the current zoo tables and model tables: " + ", ".join(
            f"{c} changed for {n} model(s)" for c, n in sorted(changed.items())))
    corr_frames = []
    for name in measures:
        probe, measure = _split_measure(name)
        key = f"{probe}:{measure}"
        if key not in available:
            if (probe == "report" and measure in REPORT_MEASURES) or (probe, measure) == ("eat", "effect_size"):
                note(f"{key} is not in this sweep", probe, measure)
                continue
            raise UsageError(MSG_MEASURE.format(value=name, hint=did_you_mean(key, available),
                                                valid=", ".join(available)))
        rows = table[(table["probe"] == probe) & (table["measure"] == measure)].copy()
        with timer(f"fit {key}"):
            fit = fit_factors(rows, settings=settings)
        fits[key] = fit
        sections["coefficients"].append(fit.coefficients.assign(probe=probe, measure=measure))
        sections["random"].append(fit.random.assign(probe=probe, measure=measure))
        for text in fit.notes:
            note(text, probe, measure)
        if perf_col is not None:
            with timer(f"correlations {key}"):
                corr = performance_correlations(rows, perf_col)
            corr_frames.append(corr.assign(probe=probe, measure=measure, performance=performance))
    correlations = None
    n_perf = None
    if corr_frames:
        from clipprobe.analysis.significance import bh_adjust

        correlations = pd.concat(corr_frames, ignore_index=True)
        # one BH family over the whole table (every measure's tests)
        correlations["pearson_q"] = bh_adjust(correlations["pearson_p"].to_numpy(dtype=float))
        correlations["spearman_q"] = bh_adjust(correlations["spearman_p"].to_numpy(dtype=float))
        n_perf = int(table.dropna(subset=[perf_col])["model"].nunique())
        note(f"{performance} is known for {n_perf} of {table['model'].nunique()} model(s) of the analysis"
             + ("; correlations need at least 3" if n_perf < 3 else ""))
        sections["correlations"].append(correlations)
    target = Path(out) if out is not None else folder / ANALYSIS_DIR
    long = analysis_table({k: (pd.concat(v, ignore_index=True) if v else None) for k, v in sections.items()})
    with timer("write"):
        record = run_record("sweep analyze", config={
                                "folder": str(folder), "performance": performance, "performance_csv": performance_csv,
                                "measures": list(measures), "spec": spec, "signs": signs,
                                "model_tables": [str(t) for t in model_tables],
                                "settings": dataclasses.asdict(settings)},
                            format_version=_sweep_format(), timings=timer.as_dict(),
                            n_models=int(table["model"].nunique()), signs=sign_record,
                            same_checkpoint=same, metadata_changed=changed, performance_known=n_perf,
                            fits={k: {"n_rows": f.n_rows, "n_models": f.n_models, "n_groups": f.n_groups,
                                      "terms": list(f.terms), "references": f.references,
                                      "converged": f.converged, "sizes": f.sizes, "notes": list(f.notes)}
                                  for k, f in fits.items()})
        files = write_analysis(target, long=long, fits=fits, table=table, correlations=correlations,
                               performance=performance, performance_column=perf_col, models=models, record=record,
                               title=f"Upstream factors: {folder.name}", figures=figures, max_scatter=max_scatter)
    return AnalysisResult(out=target, table=long, fits=fits, correlations=correlations, record=record, files=files)


__all__ = ["DEFAULT_MEASURES", "DEFAULT_PERFORMANCE", "ModelEntry", "PROBES", "SIGNS", "SweepConfig", "SweepResult",
           "analyze_sweep", "apply_signs", "merge_sweep", "one_per_checkpoint", "parse_shard", "refresh_metadata",
           "resolve_models", "run_sweep", "settings_record", "shard_models"]
