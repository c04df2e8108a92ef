"""``clipprobe eat``: Embedding Association Tests of one model, from test files to a results folder.

:func:`run_eat` does, in this order:

1. read the tests (a shipped suite or a user's YAML file; :mod:`clipprobe.resources.eat`), select some,
   and apply the paper's sign convention if asked;
2. resolve every set into concrete stimuli (texts, image files, face-dataset rows), downloading the
   iEAT images if needed: a missing file or download fails here, before anything is embedded. A test
   whose stimuli were not given (OASIS images without ``oasis_root``) is skipped with its reason and the
   others run (``strict``: it is an error instead);
3. load the model and embed: all texts in one call through the text cache
   (:func:`clipprobe.embeddings.cache.embed_texts`), each image set through the image cache
   (:func:`clipprobe.embeddings.cache.embed_dataset` on a ``csv:`` manifest of the set's files written
   into ``CACHE/eat/manifests/``: the cache goes by the set's folder and files, each checked by its
   SHA-256). A rerun embeds nothing;
4. check that every set kept at least 2 stimuli after unreadable images were skipped (they are counted
   and listed in ``run.json``);
5. compute every test in one vectorised pass (:func:`clipprobe.analysis.eat.run_eats`) and write the
   folder (:func:`clipprobe.report.eat.write_eat_outputs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clipprobe.errors import DataError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_MODEL = "ViT-B-32:openai"
MANIFEST_FOLDER = ("eat", "manifests")
MSG_SUITE_AND_FILE = "give a suite (--suite) or a test file (--tests), not both"
MSG_SET_TOO_SMALL = ("test {test!r} ({order}) set {set}: only {n} of its {total} images could be read "
                     "(e.g. {file}: {reason}); a set needs at least 2")
MSG_NOTHING_TO_RUN = "no selected test can run ({reasons}); nothing to compute"
MSG_BAD_CONFIG = "{name} must be {what}, not {value!r}"


@dataclasses.dataclass(frozen=True)
class EatConfig:
    """Settings of one ``clipprobe eat`` run.

    ``suite``: a shipped suite name (default ``ghate2025`` when no ``tests_file``); ``tests_file``: a YAML
    test file; ``tests``/``orders``: keep only these test names / modality orders. ``permutations``: the
    budget of the permutation test (exact enumeration when the partitions are fewer);
    ``sc_permutations`` the same for the per-stimulus SC-WEAT. ``interval``: the bootstrap interval of d over
    the stimuli (``fisher-z``, the one method whose coverage was measured within 0.93-0.97; None: no
    interval), ``bootstrap`` its resamples;
    ``fixed_attributes``: the interval resamples the targets only (A and B are the population of interest).
    ``paper_signs``: Ghate et al.'s Gender sign (d and its interval x -1, p-values as defined). ``strict``: a test whose stimuli are
    missing (OASIS without ``oasis_root``) is an error instead of being skipped.
    """

    out: str
    model: str = DEFAULT_MODEL
    model_config: str | None = None
    quick_gelu: bool = False
    preprocess: str | None = None
    suite: str | None = None
    tests_file: str | None = None
    tests: tuple[str, ...] = ()
    orders: tuple[str, ...] = ()
    permutations: int = 1_000_000
    sc_permutations: int = 10_000
    seed: int = 0
    ddof: int = 1
    two_sided: bool = False
    interval: str | None = "fisher-z"
    bootstrap: int = 2000
    fixed_attributes: bool = False
    confidence: float = 0.95
    sc_weat: bool = True
    paper_signs: bool = False
    strict: bool = False
    stimuli_root: str | None = None
    oasis_root: str | None = None
    cache_dir: str | None = None
    device: str = "auto"
    precision: str | None = None
    batch_size: int = 64
    num_workers: int | None = None
    offline: bool = False
    figures: bool = True
    n_jobs: int | None = None

    def check(self) -> "EatConfig":
        from clipprobe.analysis import eat as stats

        if self.suite is not None and self.tests_file is not None:
            raise UsageError(MSG_SUITE_AND_FILE)
        stats.check_permutations(self.permutations)
        stats.check_permutations(self.sc_permutations)
        stats.check_seed(self.seed)
        stats.check_ddof(self.ddof)
        if self.interval is not None and self.interval not in stats.INTERVAL_METHODS:
            raise UsageError(stats.MSG_CI_METHOD.format(value=self.interval))
        if self.interval is not None and self.interval not in stats.PUBLISHED_INTERVALS:
            raise UsageError(stats.MSG_CI_UNPUBLISHED.format(value=self.interval))
        if self.interval is not None and (
                isinstance(self.bootstrap, bool) or not isinstance(self.bootstrap, int) or self.bootstrap < 100):
            raise UsageError(stats.MSG_BOOTSTRAP.format(value=self.bootstrap))
        if not 0 < self.confidence < 1:
            raise UsageError(stats.MSG_CONFIDENCE.format(value=self.confidence))
        if self.model:
            from clipprobe.models.catalog import check_model_name

            check_model_name(self.model, model_config=self.model_config)   # before seconds of torch imports
        return self

    @property
    def alternative(self) -> str:
        return "two-sided" if self.two_sided else "greater"

    @property
    def ci_resample(self) -> str:
        return "targets" if self.fixed_attributes else "all"


@dataclasses.dataclass(frozen=True)
class EatRun:
    """What :func:`run_eat` computed and wrote."""

    out: Path
    table: "pd.DataFrame"
    stimuli: "pd.DataFrame"
    record: dict
    results: tuple
    tests: tuple
    files: tuple[Path, ...]


class _CountingEncoder:
    """The encoder, counting what it is asked to embed (run.json records it; a rerun should show 0)."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self.n_texts = 0
        self.n_images = 0

    def encode_text(self, texts, *args, **kwargs):
        self.n_texts += len(texts)
        return self._encoder.encode_text(texts, *args, **kwargs)

    def encode_images(self, batch, *args, **kwargs):
        self.n_images += len(batch)
        return self._encoder.encode_images(batch, *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._encoder, name)


def load_suite(config: EatConfig):
    """The selected tests of the run (paper signs applied when asked)."""
    from clipprobe.resources.eat import apply_paper_signs, get_suite, load_tests

    if config.tests_file is not None:
        path = Path(config.tests_file).expanduser()
        if not path.is_file():
            raise DataError(f"test file {path} does not exist")
        suite = load_tests(path)
    else:
        suite = get_suite(config.suite)
    suite = suite.select(config.tests or None, config.orders or None)
    return apply_paper_signs(suite) if config.paper_signs else suite


def _reported_sign(result, spec):
    """``result`` with d and its interval in the sign ``spec`` is reported with (:func:`~clipprobe.resources.eat.
    apply_paper_signs`: x -1, the interval's ends swapped); the p-values and everything else as computed."""
    if spec.reported_sign != -1:
        return result
    return dataclasses.replace(result, effect_size=-result.effect_size, ci_low=-result.ci_high, ci_high=-result.ci_low)


def run_eat(config: EatConfig, *, encoder=None, fetch: Callable[[str], bytes] | None = None,
            base_url: str | None = None, progress: bool | None = None, write: bool = True) -> EatRun:
    """Run the association tests of ``config`` (see the module docstring).

    ``encoder``: an already loaded model (else ``config.model`` is loaded); ``fetch``/``base_url``: how
    iEAT images are downloaded (tests point them at a local folder); ``write=False``: compute only,
    write no folder (``config.out`` is not used; the result's ``files`` is empty).
    """

    from clipprobe.analysis.eat import EatInput, EatSettings, run_eats
    from clipprobe.config import to_dict
    from clipprobe.report.eat import FAMILIES, FORMAT_VERSION, results_table, stimuli_table, write_eat_outputs
    from clipprobe.resources.eat import IEAT_BASE_URL, Resolver, describe_test
    from clipprobe.runinfo import StageTimer, run_record

    config = config.check()
    started = time.time()
    timer = StageTimer()
    with timer("resolve"):
        suite = load_suite(config)
        resolver = Resolver(stimuli_root=config.stimuli_root, oasis_root=config.oasis_root,
                            cache_dir=config.cache_dir, fetch=fetch, base_url=base_url or IEAT_BASE_URL,
                            offline=config.offline)
        tests = resolver.resolve(suite.tests, skip_missing=not config.strict)
    available = [t for t in tests if t.unavailable is None and t.skipped is None]
    if not available:
        raise DataError(MSG_NOTHING_TO_RUN.format(
            reasons="; ".join(f"{t.name}: {t.unavailable or t.skipped}" for t in tests)))
    skipped_tests = [t for t in tests if t.skipped is not None]
    log.info("eat: %d test(s) of %s, %d unavailable, %d skipped", len(tests), suite.name,
             sum(t.unavailable is not None for t in tests), len(skipped_tests))
    for t in skipped_tests:
        log.warning("eat: skipped %s (%s): %s", t.name, t.order, t.skipped)

    with timer("load_model"):
        if encoder is None:
            from clipprobe.models import load_model

            encoder = load_model(config.model, device=config.device, model_config=config.model_config,
                                 offline=config.offline or None, preprocess=config.preprocess,
                                 precision=config.precision,
                                 quick_gelu=config.quick_gelu)
    counting = _CountingEncoder(encoder)

    with timer("embed"):
        vectors, skipped = _embed_all(counting, available, config, progress)
    kept_display, kept_units, inputs, skipped_per_test = {}, {}, [], {}
    problems = []
    for t in available:
        key = (t.name, t.order)
        arrays, shown, units, n_skipped = {}, {}, {}, 0
        for name, stim in t.sets.items():
            vec, ok = vectors[id(stim)]
            arrays[name] = vec
            shown[name] = [d for d, good in zip(stim.display, ok) if good]
            units[name] = [u for u, good in zip(stim.units, ok) if good] if stim.units is not None else shown[name]
            lost = [s for s in skipped.get(id(stim), [])]
            n_skipped += len(lost)
            if len(vec) < 2:
                first = lost[0] if lost else {"file": "?", "reason": "?"}
                problems.append(MSG_SET_TOO_SMALL.format(test=t.name, order=t.order, set=name, n=len(vec),
                                                         total=len(stim), file=first["file"], reason=first["reason"]))
        kept_display[key] = shown
        kept_units[key] = units
        skipped_per_test[key] = n_skipped
        inputs.append(EatInput(name=f"{t.name} ({t.order})", **arrays,
                               units={k: u for k, u in units.items() if t.sets[k].units is not None}))
    if problems:
        raise DataError(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))

    with timer("statistics"):
        settings = EatSettings(ddof=config.ddof, n_permutations=config.permutations, alternative=config.alternative,
                               seed=config.seed, n_bootstrap=config.bootstrap, ci_method=config.interval,
                               ci_resample=config.ci_resample, confidence=config.confidence,
                               sc_weat=config.sc_weat, sc_permutations=config.sc_permutations, n_jobs=config.n_jobs)
        results = tuple(_reported_sign(r, t.spec) for t, r in zip(available, run_eats(inputs, settings)))
    by_key = {(t.name, t.order): r for t, r in zip(available, results)}
    table = results_table(tests, by_key, skipped_per_test)
    stimuli = stimuli_table(tests, by_key, kept_display, kept_units)

    skipped_list = []
    seen_files: set = set()
    for entries in skipped.values():
        for s in entries:
            if s["file"] not in seen_files:
                seen_files.add(s["file"])
                skipped_list.append(s)
    record = run_record(
        "eat", config=to_dict(config), format_version=FORMAT_VERSION, model=encoder.info(),
        timings=timer.as_dict(), started=started,
        suite={"name": suite.name, "path": str(suite.path) if suite.path else None, "description": suite.description,
               "reference": suite.reference},
        tests=[describe_test(t.spec) | {"sizes": {k: len(s) for k, s in (t.sets or {}).items()},
                                        "stimuli": {k: s.n_stimuli for k, s in (t.sets or {}).items()}}
               for t in tests],
        n_tests=len(tests), n_available=len(available),
        unavailable=[{"test": t.name, "order": t.order, "reason": t.unavailable} for t in tests if t.unavailable],
        skipped_tests=[{"test": t.name, "order": t.order, "reason": t.skipped} for t in skipped_tests],
        families=FAMILIES,
        embedded={"texts": counting.n_texts, "images": counting.n_images},
        skipped_images={"n": len(skipped_list), "files": skipped_list[:200]},
        ieat_downloaded=len(resolver.downloaded),
        settings=dataclasses.asdict(settings),
    )
    if not write:
        return EatRun(out=Path(config.out), table=table, stimuli=stimuli, record=record, results=results,
                      tests=tests, files=())
    with timer("write"):
        from clipprobe.report.retrieval import model_label

        files = write_eat_outputs(config.out, table, stimuli, record, figures=config.figures,
                                  title=f"{suite.name}: {model_label(encoder.info())}")
    log.info("eat: wrote %s (%.1f s)", config.out, time.time() - started)
    return EatRun(out=Path(config.out), table=table, stimuli=stimuli, record=record, results=results,
                  tests=tests, files=tuple(files))


def _manifest_dataset(stim, cache_base: Path):
    """A ``csv:`` face dataset over one image set's files (written once into the cache's manifest folder)."""
    import os

    from clipprobe._io import write_text
    from clipprobe.faces import load_dataset

    root = Path(stim.root)
    lines = ["file"] + [Path(os.path.relpath(p, root)).as_posix() for p in stim.items]
    text = "\n".join(_csv_cell(line) for line in lines) + "\n"
    digest = hashlib.sha256((str(root) + "\0" + text).encode("utf-8")).hexdigest()[:16]
    path = cache_base.joinpath(*MANIFEST_FOLDER) / f"{digest}.csv"
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        write_text(path, text)
    return load_dataset(f"csv:{path}", image_root=root)


def _csv_cell(value: str) -> str:
    if any(ch in value for ch in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


def _embed_all(encoder, tests, config: EatConfig, progress) -> tuple[dict, dict]:
    """Vectors of every distinct set: id(stimuli) -> (vectors (n_ok, d), ok mask), and skipped images."""
    import numpy as np

    from clipprobe.embeddings.cache import MSG_ALL_FAILED, default_cache_dir, embed_dataset, embed_texts

    cache_base = Path(config.cache_dir).expanduser() if config.cache_dir else default_cache_dir()
    sets = {}
    for t in tests:
        for stim in t.sets.values():
            sets.setdefault(id(stim), stim)
    texts = list(dict.fromkeys(item for s in sets.values() if s.modality == "text" for item in s.items))
    out: dict[int, tuple] = {}
    skipped: dict[int, list] = {}
    if texts:
        vecs = embed_texts(encoder, texts, cache_dir=config.cache_dir)
        index = {t: i for i, t in enumerate(texts)}
        for key, s in sets.items():
            if s.modality == "text":
                out[key] = (vecs[[index[i] for i in s.items]], np.ones(len(s), dtype=bool))
    all_failed_prefix = MSG_ALL_FAILED.split("{")[0]
    for key, s in sets.items():
        if s.modality != "image":
            continue
        dataset = s.dataset if s.dataset is not None else _manifest_dataset(s, cache_base)
        try:
            emb = embed_dataset(encoder, dataset, cache_dir=config.cache_dir, batch_size=config.batch_size,
                                num_workers=config.num_workers, progress=progress)
        except DataError as err:
            if not str(err).startswith(all_failed_prefix):
                raise
            out[key] = (np.zeros((0, int(getattr(encoder, "embed_dim", 0) or 0)), dtype=np.float32),
                        np.zeros(len(s), dtype=bool))
            skipped[key] = [{"file": f, "reason": "could not be read"} for f in s.display]
            continue
        wanted = np.asarray(s.rows if s.rows is not None else range(len(s)), dtype=np.int64)
        position = {int(r): i for i, r in enumerate(emb.rows)}
        ok = np.array([int(r) in position for r in wanted], dtype=bool)
        out[key] = (emb.vectors[[position[int(r)] for r in wanted[ok]]], ok)
        bad_rows = set(int(r) for r in wanted[~ok])
        reasons = {int(e["row"]): e for e in emb.skipped}
        skipped[key] = [{"file": s.display[i], "reason": reasons.get(int(wanted[i]), {}).get("reason", "unreadable")}
                        for i in range(len(s)) if int(wanted[i]) in bad_rows]
    return out, skipped


__all__ = ["EatConfig", "EatRun", "load_suite", "run_eat"]
