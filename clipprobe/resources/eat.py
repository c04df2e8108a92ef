"""Embedding Association Tests as data: suites of tests, each with four stimulus sets.

A test has a ``name``, an ``order`` (the modalities of its targets and attributes) and four sets ``X``,
``Y`` (targets) and ``A``, ``B`` (attributes). Orders: ``text`` (all text), ``image`` (all image),
``image-text`` (image targets, text attributes: "image as target" in Ghate et al.) and ``text-image``
(text targets, image attributes: "text as target"). The order follows from the sets; a test may state it,
and then it must agree.

A set is one mapping with one of these keys (``label:`` may be added to any of them):

``texts: [...]``
    the strings themselves.
``words: [...]`` with ``templates: ["This is the word {word}.", ...]``
    every word in every template (word-major order); without templates the words themselves.
``file: PATH`` with ``key: NAME`` (and optional ``templates``)
    a list in a data file: a SEAT test file (``.jsonl``, one JSON object, keys ``targ1``, ``targ2``,
    ``attr1``, ``attr2``, each ``{"category", "examples"}``) or a JSON/YAML mapping of lists (WEFE's
    ``WEAT.json``, ``nrc_vad_combinations.json``).
``images: PATH`` (a folder, searched recursively; a glob such as ``imgs/*.jpg`` or ``imgs/**/*.png``; a CSV
manifest with a ``file``/``path``/``image`` column, paths relative to the CSV and inside its folder, as in a
face dataset's label file) or ``images: [paths]``. Symbolic links to folders are followed, each folder
once; a link back to a folder above it (a loop) is an error, and so is a walk over more than
:data:`MAX_WALK_ENTRIES` files and folders.
``faces: DATASET`` with ``where: {column: value or [values]}``
    the images of a face dataset (any ``clipprobe`` dataset spec: ``fairface:ROOT``, ``csv:PATH``, ...)
    whose labels match; optional ``split`` and ``n`` (a seeded sample of that many, ``seed`` default 0).
``ieat: TEST/CATEGORY``
    an iEAT image category (Steed and Caliskan 2021), e.g. ``insect-flower/flower``: read from
    ``stimuli_root`` (a folder in the iEAT layout) or fetched once from github.com/ryansteed/ieat at
    commit 4d7639b into the user cache, every file's size and SHA-256 checked against ``ieat-manifest.csv``
    (a local copy's files too, on every run).
``oasis: pleasant`` or ``oasis: unpleasant``
    the 25 OASIS images (Kurdi et al. 2017) with the highest (lowest) ``Valence_mean`` in ``OASIS.csv``
    (ties broken by ``Theme``), read from ``oasis_root``; ``n`` changes 25.
``set: NAME``
    a set defined under the file's top-level ``sets:`` mapping.
``unavailable: REASON`` with ``modality: text|image``
    a set that cannot be obtained (the Instrument/Weapon images of Ghate et al. are not public): the
    test is kept and reported as unavailable.

Relative paths resolve against the folder of the YAML file that names them; ``stimuli:PATH`` points into
the shipped stimuli folder. A test file::

    tests:
      - name: flowers-insects
        X: {images: stimuli/flower}
        Y: {images: stimuli/insect}
        A: {texts: [This is the word love., This is the word happy.]}
        B: {words: [hate, ugly], templates: ["This is the word {word}."]}

Suites are YAML files of the same form in the shipped stimuli folder (:func:`list_suites`,
:func:`get_suite`): ``ghate2025`` (the 26 EATs of Ghate et al. 2025), ``weat`` (Caliskan et al. 2017,
WEAT 1-10, words), ``seat`` (May et al. 2019, the 8 sentence tests of the paper's appendix variant) and
``seat-nrc`` (the same targets with NRC-VAD valence sentences). A suite test may carry ``paper_sign: -1``
(Ghate et al.'s Gender/Valence tests): :func:`apply_paper_signs` marks it so that its effect size and the
interval of it are reported multiplied by -1 (positive then means "female more pleasant", the paper's
reporting), while its p-values stay those of the test as defined (the paper flips d only: swapping the
targets instead would test the other direction); it is off unless asked for.

:class:`Resolver` turns every set into concrete stimuli (texts, image files, face-dataset rows) before
anything is embedded, so a missing file or download fails at once, not halfway through a suite.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import glob
import hashlib
import logging
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from clipprobe._io import Bounded
from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean
from clipprobe.resources import Registry

log = logging.getLogger(__name__)

ORDERS = ("text", "image", "image-text", "text-image")
ORDER_LABELS = {"text": "all text", "image": "all image", "image-text": "image as target",
                "text-image": "text as target"}
MODALITIES = ("text", "image")
SET_NAMES = ("X", "Y", "A", "B")
SET_KINDS = ("texts", "words", "file", "images", "faces", "ieat", "oasis", "set", "unavailable")
_SET_OPTIONS = {
    "texts": (), "words": ("templates",), "file": ("key", "templates"), "images": (), "ieat": (),
    "faces": ("where", "split", "n", "seed"), "oasis": ("n",), "set": (), "unavailable": ("modality",),
}
_TEST_KEYS = ("name", "order", "family", "note", "paper_sign", "X", "Y", "A", "B")
_FILE_KEYS = ("name", "description", "reference", "note", "sets", "tests")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
MANIFEST_COLUMNS = ("file", "path", "image", "image_path", "filename")
SHIPPED_PREFIX = "stimuli:"
DEFAULT_SUITE = "ghate2025"

IEAT_REPO = "github.com/ryansteed/ieat"
IEAT_COMMIT = "4d7639bfd0b6c17b127ce163af0ddf985f5a6510"
IEAT_BASE_URL = f"https://raw.githubusercontent.com/ryansteed/ieat/{IEAT_COMMIT}/"
IEAT_MANIFEST = "ieat-manifest.csv"
IEAT_PREFIX = "data/experiments/"
OASIS_CSV = "OASIS.csv"
OASIS_N = 25
OASIS_POLES = ("pleasant", "unpleasant")
DOWNLOAD_TIMEOUT_S = 30.0

MSG_FILE_FORM = "test file {path}: {problem}"
MSG_UNKNOWN_KEY = "{where}: unknown key {key!r}{hint}; valid: {valid}"
MSG_SET_KIND = "{where}: a set needs exactly one of {kinds}; found {found}"
MSG_SET_FORM = "{where}: {problem}"
MSG_NO_TESTS = "test file {path} has no tests (a 'tests:' list of name, X, Y, A, B)"
MSG_TEST_FIELD = "{where}: missing {field}"
MSG_DUPLICATE_TEST = "test file {path}: test {name!r} ({order}) appears twice"
MSG_UNKNOWN_SET_REF = "{where}: unknown set {name!r}{hint}; defined: {names}"
MSG_BAD_ORDER = "{where}: order {order!r} is not one of " + ", ".join(ORDERS)
MSG_ORDER_MISMATCH = "{where}: order {order!r} does not match its sets ({actual})"
MSG_MIXED_TARGETS = "{where}: {a} and {b} must have the same modality ({ma} vs {mb})"
MSG_EMPTY_SET = "{where}: the set is empty"
MSG_TOO_FEW = "{where}: {n} stimulus/stimuli; an association test needs at least 2 per set"
MSG_REPEATED = "{where}: stimulus {item!r} appears more than once in the set"
MSG_OVERLAP = "{where}: stimulus {item!r} is in both {a} and {b}"
MSG_TEMPLATE = "{where}: template {template!r} has no '{{word}}'"
MSG_MISSING_PATH = "{where}: {what} {path} does not exist"
MSG_NO_IMAGES = "{where}: no images ({suffixes}) in {path}"
MSG_KEY_NOT_FOUND = "{where}: {path} has no list {key!r}{hint}; lists: {keys}"
MSG_UNKNOWN_TEST = "unknown test {name!r}{hint}; tests of {suite}: {names}"
MSG_UNKNOWN_ORDER = "unknown order {order!r}{hint}; valid: " + ", ".join(ORDERS)
MSG_NOTHING_SELECTED = "no test of {suite} matches the selection (tests {tests}, orders {orders})"
MSG_WHERE_COLUMN = "{where}: dataset {spec!r} has no label column {column!r}{hint}; columns: {columns}"
MSG_NO_MATCH = "{where}: no image of {spec!r} matches {selection}"
MSG_IEAT_CATEGORY = "{where}: unknown iEAT category {category!r}{hint}; see {manifest}"
MSG_IEAT_LOCAL = ("{where}: iEAT image {path} is missing or has {got} bytes instead of {want}; point --stimuli-root "
                  "at a copy of " + IEAT_REPO + " at commit 4d7639b (the folder holding data/experiments)")
MSG_IEAT_DOWNLOAD = ("iEAT image {rel} is not cached and could not be downloaded ({why}); download "
                     + IEAT_REPO + " at commit 4d7639b (git clone, or its data/experiments folder) and point "
                     "--stimuli-root at the folder holding data/experiments")
MSG_IEAT_SIZE = "downloaded iEAT image {rel} has {got} bytes, the manifest says {want}; not kept (try again)"
MSG_IEAT_LOCAL_HASH = ("{where}: iEAT image {path} is not the file of " + IEAT_REPO + " at commit 4d7639b (sha256 "
                       "{got}, the manifest says {want}); point --stimuli-root at an unmodified copy of the "
                       "repository at that commit")
MSG_IEAT_HASH = ("downloaded iEAT image {rel} has sha256 {got}, the manifest says {want}; not kept (the server did "
                 "not send the file of " + IEAT_REPO + " at commit 4d7639b)")
MSG_IEAT_NO_HASH = ("iEAT manifest %s gives no sha256 for %d file(s) (e.g. %s): they are checked by their size "
                    "only")
MSG_OASIS_ROOT = ("{where}: OASIS images need --oasis-root: download OASIS (Kurdi et al. 2017, osf.io/6pnd7, free "
                  "for research) and point --oasis-root at the folder holding OASIS.csv and the images/ folder")
MSG_OASIS_CSV = "{where}: {path} does not exist; --oasis-root must hold OASIS.csv (and the images/ folder) of OASIS"
MSG_OASIS_COLUMNS = "{where}: {path} lacks column(s) {missing}; found: {found}"
MSG_OASIS_IMAGE = "{where}: OASIS image for theme {theme!r} not found under {root} (looked for {name}.jpg)"
MSG_OASIS_POLE = "{where}: oasis must be 'pleasant' or 'unpleasant', not {value!r}"
MSG_OASIS_N = "{where}: n must be an integer between 2 and half of the {total} OASIS images, not {value!r}"
MSG_FACES_N = "{where}: n must be a positive integer, not {value!r}"
MSG_FACES_SEED = "{where}: seed must be an integer of 0 or more, not {value!r}"
MSG_NOT_TEXT = ("{where}: stimulus {index} of {source} is {value} (null, true/false, a list or a mapping), not a "
                "text; write texts as strings (quote them in YAML)")
MSG_TOO_LONG = ("{where}: {what} {index} of {source} has {n:,} characters, more than the limit of {limit:,} (text "
                "encoders read the first few dozen words)")
MSG_SYMLINK_LOOP = ("{where}: {link} is a symbolic link to {target}, a folder that contains it (a loop); remove the "
                    "link or name a folder below it")
MSG_WALK_LIMIT = "{where}: more than {limit:,} files and folders under {path}; name a smaller folder or a narrower glob"
MSG_MANIFEST = "{where}: image manifest {path}: {problem}"
MSG_MANIFEST_ESCAPES = ("{where}: image manifest {path}, line {line}: image path {file!r} is absolute or leads out of "
                        "the manifest's folder; list paths relative to it, inside it")
MSG_NO_SEAT_FORM = ("%d stimulus set(s) have sentences without a SEAT form, so each sentence is a stimulus of its own "
                    "(-v lists them): %s")

# Longest text stimulus (characters): far more than any text encoder reads, a bound on what a file can make
# the tokenizer chew through.
MAX_STIMULUS_CHARS = 10_000
# Most files and folders looked at under one ``images:`` folder or ``**`` glob.
MAX_WALK_ENTRIES = 200_000


# ----------------------------------------------------------------------------------------------
# specifications (what a file says)


@dataclasses.dataclass(frozen=True)
class SetSpec:
    """One stimulus set as written: ``kind`` (one of :data:`SET_KINDS` but ``set``), its value and options."""

    kind: str
    value: Any
    options: Mapping[str, Any]
    label: str
    base: Path  # folder relative paths resolve against
    where: str  # where it was defined, for messages

    @property
    def modality(self) -> str:
        if self.kind == "unavailable":
            return str(self.options.get("modality"))
        return "text" if self.kind in ("texts", "words", "file") else "image"

    def describe(self) -> str:
        """A short, JSON-friendly description of the set's source."""
        if self.kind in ("texts", "words"):
            return f"{self.kind}[{len(self.value)}]"
        if self.kind == "file":
            return f"file:{self.value}#{self.options.get('key')}"
        if self.kind == "faces":
            return f"faces:{self.value} where {dict(self.options.get('where') or {})}"
        return f"{self.kind}:{self.value}"


@dataclasses.dataclass(frozen=True)
class TestSpec:
    """One association test as written in a suite or test file."""

    name: str
    order: str
    X: SetSpec
    Y: SetSpec
    A: SetSpec
    B: SetSpec
    family: str = ""
    note: str = ""
    paper_sign: int = 1
    source: str = ""
    reported_sign: int = 1      # -1: d and its interval are reported multiplied by -1 (:func:`apply_paper_signs`)

    __test__ = False  # not a pytest test class

    @property
    def sets(self) -> dict[str, SetSpec]:
        return {"X": self.X, "Y": self.Y, "A": self.A, "B": self.B}

    @property
    def unavailable(self) -> str | None:
        """Why the test cannot run (its first unavailable set), or None."""
        for name, spec in self.sets.items():
            if spec.kind == "unavailable":
                return f"set {name} ({spec.label}): {spec.value}"
        return None


@dataclasses.dataclass(frozen=True)
class Suite:
    """A named list of tests (a shipped suite or a user's test file)."""

    name: str
    tests: tuple[TestSpec, ...]
    description: str = ""
    reference: str = ""
    path: Path | None = None

    def names(self) -> list[str]:
        return list(dict.fromkeys(t.name for t in self.tests))

    def select(self, tests: Sequence[str] | None = None, orders: Sequence[str] | None = None) -> "Suite":
        """The tests named in ``tests`` (all orders of a name) and of the ``orders`` given (None: all)."""
        names = self.names()
        for name in tests or ():
            if name not in names:
                raise ClipprobeError(MSG_UNKNOWN_TEST.format(name=name, hint=did_you_mean(name, names),
                                                             suite=self.name, names=", ".join(names)))
        for order in orders or ():
            if order not in ORDERS:
                raise UsageError(MSG_UNKNOWN_ORDER.format(order=order, hint=did_you_mean(order, ORDERS)))
        chosen = tuple(t for t in self.tests if (not tests or t.name in tests) and (not orders or t.order in orders))
        if not chosen:
            raise ClipprobeError(MSG_NOTHING_SELECTED.format(suite=self.name, tests=list(tests or []) or "all",
                                                             orders=list(orders or []) or "all"))
        return dataclasses.replace(self, tests=chosen)


def _stimuli_dir() -> Path:
    from clipprobe.data import data_dir

    return data_dir("stimuli")


SUITES: "Registry[Suite]" = Registry("suite", folder=_stimuli_dir, suffixes=(".yaml",),
                                     loader=lambda path: load_tests(path), default=DEFAULT_SUITE,
                                     paths="a YAML test file")


def list_suites() -> list[str]:
    """Names of the shipped (and added) suites."""
    return SUITES.names()


def get_suite(name_or_path: str | os.PathLike | None = None) -> Suite:
    """A suite by name (default ``ghate2025``) or a user's test file by path."""
    return SUITES.get(name_or_path)


def load_tests(path: str | os.PathLike) -> Suite:
    """Read and check a test file (the suite form; see the module docstring)."""
    from clipprobe._io import read_mapping

    path = Path(path).expanduser()
    data = read_mapping(path, what="test file")
    if not isinstance(data, Mapping):
        raise DataError(MSG_FILE_FORM.format(path=path, problem="expected a mapping with a 'tests:' list"))
    _check_keys(data, _FILE_KEYS, f"test file {path}")
    base = path.parent.resolve()
    named_raw = data.get("sets") or {}
    if not isinstance(named_raw, Mapping):
        raise DataError(MSG_FILE_FORM.format(path=path, problem="'sets' must map names to sets"))
    named: dict[str, SetSpec] = {}
    for key, raw in named_raw.items():
        named[str(key)] = _parse_set(raw, base, f"{path}: set {key!r}", {})
    raw_tests = data.get("tests")
    if not isinstance(raw_tests, list) or not raw_tests:
        raise DataError(MSG_NO_TESTS.format(path=path))
    tests, seen = [], set()
    for i, raw in enumerate(raw_tests):
        test = _parse_test(raw, base, f"{path}: test {i + 1}", named, str(path))
        key = (test.name, test.order)
        if key in seen:
            raise DataError(MSG_DUPLICATE_TEST.format(path=path, name=test.name, order=test.order))
        seen.add(key)
        tests.append(test)
    return Suite(name=str(data.get("name") or path.stem), tests=tuple(tests),
                 description=" ".join(str(data.get("description") or "").split()),
                 reference=str(data.get("reference") or ""), path=path)


PAPER_SIGN_NOTE = "d and its interval x -1 (paper sign); p-values and SC-WEAT as the test defines them"


def apply_paper_signs(suite: Suite) -> Suite:
    """Every test with ``paper_sign: -1`` (Ghate et al.'s Gender/Valence reporting) marked to report its
    effect size and interval multiplied by -1; its sets, and so its p-values, stay as defined."""
    tests = tuple(dataclasses.replace(t, reported_sign=-1,
                                      note=(t.note + " " if t.note else "") + PAPER_SIGN_NOTE)
                  if t.paper_sign == -1 else t for t in suite.tests)
    return dataclasses.replace(suite, tests=tests)


def _check_keys(mapping: Mapping, valid: Sequence[str], where: str) -> None:
    for key in mapping:
        if key not in valid:
            raise DataError(MSG_UNKNOWN_KEY.format(where=where, key=key, hint=did_you_mean(str(key), valid),
                                                   valid=", ".join(valid)))


def _parse_test(raw, base: Path, where: str, named: Mapping[str, SetSpec], source: str) -> TestSpec:
    if not isinstance(raw, Mapping):
        raise DataError(MSG_SET_FORM.format(where=where, problem="a test must be a mapping with name, X, Y, A, B"))
    _check_keys(raw, _TEST_KEYS, where)
    name = str(raw.get("name") or "").strip()
    if not name:
        raise DataError(MSG_TEST_FIELD.format(where=where, field="name"))
    where = f"{where} ({name!r})"
    sets = {}
    for key in SET_NAMES:
        if key not in raw:
            raise DataError(MSG_TEST_FIELD.format(where=where, field=f"set {key}"))
        sets[key] = _parse_set(raw[key], base, f"{where} set {key}", named)
    for a, b in (("X", "Y"), ("A", "B")):
        if sets[a].modality != sets[b].modality:
            raise DataError(MSG_MIXED_TARGETS.format(where=where, a=a, b=b, ma=sets[a].modality, mb=sets[b].modality))
    actual = _order_of(sets["X"].modality, sets["A"].modality)
    order = raw.get("order")
    if order is not None:
        if order not in ORDERS:
            raise DataError(MSG_BAD_ORDER.format(where=where, order=order))
        if order != actual:
            raise DataError(MSG_ORDER_MISMATCH.format(where=where, order=order, actual=actual))
    sign = raw.get("paper_sign", 1)
    if sign not in (1, -1):
        raise DataError(MSG_SET_FORM.format(where=where, problem=f"paper_sign must be 1 or -1, not {sign!r}"))
    return TestSpec(name=name, order=actual, family=str(raw.get("family") or ""), note=str(raw.get("note") or ""),
                    paper_sign=int(sign), source=source, **sets)


def _order_of(targets: str, attributes: str) -> str:
    return targets if targets == attributes else f"{targets}-{attributes}"


def _parse_set(raw, base: Path, where: str, named: Mapping[str, SetSpec]) -> SetSpec:
    if not isinstance(raw, Mapping):
        raise DataError(MSG_SET_FORM.format(where=where, problem=f"a set must be a mapping with one of "
                                                                 f"{', '.join(SET_KINDS)}"))
    kinds = [k for k in SET_KINDS if k in raw]
    if len(kinds) != 1:
        raise DataError(MSG_SET_KIND.format(where=where, kinds=", ".join(SET_KINDS),
                                            found=", ".join(map(str, raw)) or "nothing"))
    kind = kinds[0]
    _check_keys(raw, (kind, "label") + _SET_OPTIONS[kind], where)
    value = raw[kind]
    label = str(raw.get("label") or "")
    options = {k: raw[k] for k in _SET_OPTIONS[kind] if k in raw}
    if kind == "set":
        ref = str(value)
        if ref not in named:
            raise DataError(MSG_UNKNOWN_SET_REF.format(where=where, name=ref, hint=did_you_mean(ref, named),
                                                       names=", ".join(named) or "none"))
        spec = named[ref]
        return dataclasses.replace(spec, label=label or spec.label or ref)
    if kind in ("texts", "words"):
        if not isinstance(value, list):
            raise DataError(MSG_SET_FORM.format(where=where, problem=f"'{kind}' must be a list of strings"))
        value = tuple(_texts_of(value, where, f"'{kind}'"))
        if not value:
            raise DataError(MSG_EMPTY_SET.format(where=where))
    elif kind == "images":
        if isinstance(value, list):
            value = tuple(_texts_of(value, where, "'images'"))
            if not value:
                raise DataError(MSG_EMPTY_SET.format(where=where))
        elif not isinstance(value, str) or not value.strip():
            raise DataError(MSG_SET_FORM.format(where=where, problem="'images' must be a path, a glob or a list"))
    elif kind == "unavailable":
        if options.get("modality") not in MODALITIES:
            raise DataError(MSG_SET_FORM.format(where=where, problem="an unavailable set needs modality: text "
                                                                     "or image"))
        value = str(value)
    elif kind == "oasis":
        if value not in OASIS_POLES:
            raise DataError(MSG_OASIS_POLE.format(where=where, value=value))
    elif kind == "faces":
        if "where" in options and not isinstance(options["where"], Mapping):
            raise DataError(MSG_SET_FORM.format(where=where, problem="'where' must map label columns to values"))
        n, seed = options.get("n"), options.get("seed", 0)
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise DataError(MSG_FACES_N.format(where=where, value=n))
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(MSG_FACES_SEED.format(where=where, value=seed))
        value = str(value)
    else:
        value = str(value)
    templates = options.get("templates")
    if templates is not None:
        if not isinstance(templates, list) or not templates or not all(isinstance(t, str) for t in templates):
            raise DataError(MSG_SET_FORM.format(where=where, problem="'templates' must be a list of strings"))
        for i, t in enumerate(templates):
            if "{word}" not in t:
                raise DataError(MSG_TEMPLATE.format(where=where, template=Bounded(t)))
            if len(t) > MAX_STIMULUS_CHARS:
                raise DataError(MSG_TOO_LONG.format(where=where, what="template", index=i + 1, source="'templates'",
                                                    n=len(t), limit=MAX_STIMULUS_CHARS))
        options["templates"] = tuple(templates)
    if kind == "file" and "key" not in options:
        raise DataError(MSG_TEST_FIELD.format(where=where, field="key (the list to read from the file)"))
    return SetSpec(kind=kind, value=value, options=options,
                   label=label or _default_label(kind, value, options, base), base=base, where=where)


def _default_label(kind: str, value, options: Mapping, base: Path) -> str:
    if kind in ("texts", "words"):
        return ", ".join(value[:3]) + (", ..." if len(value) > 3 else "")
    if kind == "file":
        return _seat_category(_resolve_path(str(value), base), str(options.get("key"))) or str(options.get("key"))
    if kind == "faces":
        where = options.get("where") or {}
        return ", ".join(f"{k}={v}" for k, v in where.items()) or str(value)
    if kind == "oasis":
        return f"OASIS {value}"
    return str(value)


def _seat_category(path: Path, key: str) -> str | None:
    """The ``category`` of one set of a SEAT test file (its display label), if the file says one."""
    if path.suffix != ".jsonl" or not path.is_file():
        return None
    try:
        data = _read_seat_file(path, "")
    except DataError:
        return None  # reading it for real (resolution) reports the problem
    entry = data.get(key)
    category = entry.get("category") if isinstance(entry, Mapping) else None
    return str(category) if category else None


# ----------------------------------------------------------------------------------------------
# resolution (what the stimuli are)


@dataclasses.dataclass(frozen=True)
class Stimuli:
    """The concrete stimuli of one set.

    ``items``: the texts, or the absolute image paths (for a face dataset without files, ``rows`` of
    ``dataset`` instead). ``display``: one label per item for the outputs (the text, or the path
    relative to ``root``). ``units``: the sampled stimulus each item belongs to (the word of a templated
    sentence: words x templates, or a SEAT-style sentence list, see :func:`sentence_words`); None when
    every item is a stimulus of its own (images, plain texts).
    """

    modality: str
    items: tuple[str, ...]
    display: tuple[str, ...]
    label: str
    source: str
    root: Path | None = None
    dataset: Any = None
    rows: tuple[int, ...] | None = None
    units: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def n_stimuli(self) -> int:
        """Sampled stimuli (words, images): what the association tests permute and resample."""
        return len(set(self.units)) if self.units is not None else len(self.items)


class MissingStimuli(DataError):
    """A set's stimuli were not given (OASIS images without an OASIS folder): its test can be skipped."""


@dataclasses.dataclass(frozen=True)
class ResolvedTest:
    """A test with its four sets resolved (None when the test is unavailable or skipped).

    ``unavailable``: why it can never run (its stimuli were not published); ``skipped``: why it did not run
    this time (its stimuli were not given; :class:`MissingStimuli`).
    """

    spec: TestSpec
    sets: Mapping[str, Stimuli] | None
    unavailable: str | None = None
    skipped: str | None = None

    __test__ = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def order(self) -> str:
        return self.spec.order


Fetch = Callable[[str], bytes]


def default_fetch(url: str) -> bytes:
    """GET ``url`` (http(s) or file) with a timeout; the bytes of the body."""
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 - fixed hosts/file URLs
        return response.read()


class Resolver:
    """Turns set specifications into :class:`Stimuli`, each distinct set once.

    ``stimuli_root``: a local copy of the iEAT images (the folder holding ``data/experiments``, or that
    folder itself); without it iEAT images are fetched from ``base_url`` (default the iEAT repository at
    the pinned commit) with ``fetch(url) -> bytes`` into ``cache_dir/stimuli/ieat-<commit>/``.
    ``offline=True`` never downloads. ``oasis_root``: the OASIS folder (``OASIS.csv`` and ``images/``).
    """

    def __init__(self, *, stimuli_root: str | os.PathLike | None = None, oasis_root: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, fetch: Fetch | None = None, base_url: str = IEAT_BASE_URL,
                 offline: bool = False, ieat_manifest: str | os.PathLike | None = None) -> None:
        self.stimuli_root = Path(stimuli_root).expanduser() if stimuli_root is not None else None
        self.oasis_root = Path(oasis_root).expanduser() if oasis_root is not None else None
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.fetch = fetch or default_fetch
        self.base_url = base_url if base_url.endswith("/") else base_url + "/"
        self.offline = offline
        self.ieat_manifest = Path(ieat_manifest) if ieat_manifest is not None else _stimuli_dir() / IEAT_MANIFEST
        self._cache: dict[tuple, Stimuli] = {}
        self._manifest: dict[str, list[tuple[str, int, str | None]]] | None = None
        self._datasets: dict[tuple, Any] = {}
        self._oasis_data: Any = None
        self.downloaded: list[str] = []
        self.broken: list[str] = []  # manifest entries without a size (left out of their category)
        self.no_seat_form: list[str] = []  # sets of sentences some of which have no SEAT form (each its own unit)

    # -------------------------------------------------------------- tests

    def resolve(self, tests: Iterable[TestSpec], *, skip_missing: bool = False) -> tuple[ResolvedTest, ...]:
        """Every test with its stimuli; unavailable tests are kept with their reason. ``skip_missing``: a test
        whose stimuli were not given (:class:`MissingStimuli`) is kept as skipped, with the reason, instead of
        stopping everything."""
        out = []
        first_unsummarized = len(self.no_seat_form)
        for test in tests:
            reason = test.unavailable
            if reason is not None:
                out.append(ResolvedTest(test, None, reason))
                continue
            try:
                sets = {name: self.resolve_set(spec, f"test {test.name!r} ({test.order}) set {name}")
                        for name, spec in test.sets.items()}
            except MissingStimuli as err:
                if not skip_missing:
                    raise
                out.append(ResolvedTest(test, None, None, str(err)))
                continue
            for a, b in (("X", "Y"), ("A", "B")):
                shared = set(sets[a].items) & set(sets[b].items)
                if shared:
                    raise DataError(MSG_OVERLAP.format(where=f"test {test.name!r} ({test.order})",
                                                       item=sorted(shared)[0], a=a, b=b))
            out.append(ResolvedTest(test, sets, None))
        new = self.no_seat_form[first_unsummarized:]
        if new:
            log.info(MSG_NO_SEAT_FORM, len(new), "; ".join(new[:3]) + ("; ..." if len(new) > 3 else ""))
        return tuple(out)

    def resolve_set(self, spec: SetSpec, where: str = "") -> Stimuli:
        """The stimuli of one set (cached by its specification)."""
        key = (spec.kind, _freeze(spec.value), _freeze(spec.options), str(spec.base))
        if key not in self._cache:
            where = where or spec.where
            handler = getattr(self, f"_{spec.kind}")
            stim = handler(spec, where)
            if len(stim) == 0:
                raise DataError(MSG_EMPTY_SET.format(where=where))
            if len(stim) < 2:
                raise DataError(MSG_TOO_FEW.format(where=where, n=len(stim)))
            keys = stim.rows if stim.rows is not None else stim.items
            seen: set = set()
            for item, shown in zip(keys, stim.display):
                if item in seen:
                    raise DataError(MSG_REPEATED.format(where=where, item=shown))
                seen.add(item)
            self._cache[key] = dataclasses.replace(stim, label=spec.label)
        return self._cache[key]

    # -------------------------------------------------------------- text sets

    def _texts(self, spec: SetSpec, where: str) -> Stimuli:
        return _text_stimuli(spec.value, spec, "texts")

    def _words(self, spec: SetSpec, where: str) -> Stimuli:
        templates = spec.options.get("templates")
        return _text_stimuli(_apply_templates(spec.value, templates), spec, f"words[{len(spec.value)}]",
                             units=_template_units(spec.value, templates))

    def _file(self, spec: SetSpec, where: str) -> Stimuli:
        from clipprobe._io import read_mapping

        path = _resolve_path(spec.value, spec.base)
        if not path.is_file():
            raise DataError(MSG_MISSING_PATH.format(where=where, what="file", path=path))
        key = str(spec.options["key"])
        if path.suffix == ".jsonl":
            data = _read_seat_file(path, where)
            lists = {k: v.get("examples") for k, v in data.items() if isinstance(v, Mapping)}
        else:
            data = read_mapping(path, what="stimulus file")
            lists = dict(data) if isinstance(data, Mapping) else {}
        if key not in lists or not isinstance(lists[key], list):
            raise DataError(MSG_KEY_NOT_FOUND.format(where=where, path=path, key=key, hint=did_you_mean(key, lists),
                                                     keys=", ".join(lists)))
        items = _texts_of(lists[key], where, f"{path}#{key}")
        templates = spec.options.get("templates")
        if templates:
            units = _template_units(items, templates)
            items = _apply_templates(items, templates)
        else:
            units = sentence_words(items)
            if units is None:
                log.debug("%s: not every sentence has a SEAT form; each sentence is a stimulus of its own", where)
                self.no_seat_form.append(where)
        return _text_stimuli(items, spec, f"file:{_short_path(path)}#{key}", units=units)

    # -------------------------------------------------------------- image sets

    def _images(self, spec: SetSpec, where: str) -> Stimuli:
        value = spec.value
        if isinstance(value, tuple):
            paths = [_resolve_path(v, spec.base) for v in value]
            source = f"images[{len(paths)}]"
        else:
            text = value
            path = _resolve_path(text, spec.base)
            if any(ch in text for ch in "*?["):
                paths = _glob_files(path, where)
                if not paths:
                    raise DataError(MSG_NO_IMAGES.format(where=where, suffixes="matching the glob", path=path))
            elif path.suffix.lower() == ".csv":
                paths = _manifest_images(path, where)
            elif path.is_dir():
                paths = sorted(p for p, _ in _walk_files(path, where) if p.suffix.lower() in IMAGE_SUFFIXES)
                if not paths:
                    raise DataError(MSG_NO_IMAGES.format(where=where, suffixes=", ".join(IMAGE_SUFFIXES), path=path))
            else:
                raise DataError(MSG_MISSING_PATH.format(where=where, what="image folder", path=path))
            source = f"images:{text}"
        for p in paths:
            if not p.is_file():
                raise DataError(MSG_MISSING_PATH.format(where=where, what="image", path=p))
        return _image_stimuli(paths, spec, source)

    def _ieat(self, spec: SetSpec, where: str) -> Stimuli:
        category = str(spec.value).strip("/")
        manifest = self._ieat_files()
        if category not in manifest:
            raise DataError(MSG_IEAT_CATEGORY.format(where=where, category=category,
                                                     hint=did_you_mean(category, manifest), manifest=self.ieat_manifest))
        files = manifest[category]
        if self.stimuli_root is not None:
            from clipprobe._io import sha256_file

            root = _ieat_local_root(self.stimuli_root)
            paths = []
            for rel, size, sha256 in files:
                p = root / rel
                got = p.stat().st_size if p.is_file() else "no"
                if got != size:
                    raise DataError(MSG_IEAT_LOCAL.format(where=where, path=p, got=got, want=size))
                if sha256 is not None and (digest := sha256_file(p)) != sha256:
                    raise DataError(MSG_IEAT_LOCAL_HASH.format(where=where, path=p, got=digest, want=sha256))
                paths.append(p)
        else:
            root = self._ieat_cache_root()
            paths = [self._ieat_download(rel, size, sha256, root) for rel, size, sha256 in files]
        return _image_stimuli(paths, spec, f"ieat:{category}", root=root)

    def _ieat_files(self) -> dict[str, list[tuple[str, int, str | None]]]:
        """iEAT category -> [(path in the repository, bytes, sha256 or None)], from the manifest."""
        if self._manifest is None:
            import csv

            manifest: dict[str, list[tuple[str, int, str | None]]] = {}
            unhashed: list[str] = []
            with open(self.ieat_manifest, newline="", encoding="utf-8") as fh:
                for row in csv.DictReader(fh):
                    rel = row["path"]
                    if not rel.startswith(IEAT_PREFIX):
                        continue
                    category = "/".join(rel[len(IEAT_PREFIX):].split("/")[:2])
                    size = row["bytes"].strip()
                    if not size.isdigit():  # no size: the object is missing upstream (one file at 4d7639b)
                        self.broken.append(rel)
                        continue
                    sha256 = (row.get("sha256") or "").strip().lower() or None
                    if sha256 is None:
                        unhashed.append(rel)
                    manifest.setdefault(category, []).append((rel, int(size), sha256))
            if unhashed:
                log.warning(MSG_IEAT_NO_HASH, self.ieat_manifest, len(unhashed), unhashed[0])
            self._manifest = {k: sorted(v) for k, v in manifest.items()}
        return self._manifest

    def _ieat_cache_root(self) -> Path:
        from clipprobe._io import default_cache_dir

        base = self.cache_dir if self.cache_dir is not None else default_cache_dir()
        return base / "stimuli" / f"ieat-{IEAT_COMMIT[:7]}"

    def _ieat_download(self, rel: str, size: int, sha256: str | None, root: Path) -> Path:
        from clipprobe._io import sha256_file, write_bytes

        path = root / rel
        if path.is_file() and path.stat().st_size == size:
            digest = sha256_file(path) if sha256 is not None else None
            if digest == sha256:
                return path
            log.warning("cached iEAT image %s has sha256 %s, the manifest says %s: fetched again", path, digest,
                        sha256)
        if self.offline:
            raise DataError(MSG_IEAT_DOWNLOAD.format(rel=rel, why="offline mode"))
        url = self.base_url + rel
        try:
            data = self.fetch(url)
        except (OSError, urllib.error.URLError, ValueError) as err:
            why = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
            raise DataError(MSG_IEAT_DOWNLOAD.format(rel=rel, why=why)) from None
        if len(data) != size:
            raise DataError(MSG_IEAT_SIZE.format(rel=rel, got=len(data), want=size))
        if sha256 is not None and (digest := hashlib.sha256(data).hexdigest()) != sha256:
            raise DataError(MSG_IEAT_HASH.format(rel=rel, got=digest, want=sha256))
        write_bytes(path, data)
        self.downloaded.append(rel)
        log.info("fetched iEAT image %s (%d bytes)", rel, size)
        return path

    def _oasis(self, spec: SetSpec, where: str) -> Stimuli:
        table, images = self._oasis_table(where)
        n = spec.options.get("n", OASIS_N)
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= len(table) // 2:
            raise DataError(MSG_OASIS_N.format(where=where, total=len(table), value=n))
        ascending = spec.value == "unpleasant"
        ranked = table.sort_values(["Valence_mean", "Theme"], ascending=[ascending, True], kind="mergesort")
        chosen = ranked.head(n)
        paths = []
        for theme in chosen["Theme"]:
            p = images.get(str(theme))
            if p is None:
                raise DataError(MSG_OASIS_IMAGE.format(where=where, theme=theme, root=self.oasis_root, name=theme))
            paths.append(p)
        return _image_stimuli(paths, spec, f"oasis:{spec.value}[{n}]", root=self.oasis_root)

    def _oasis_table(self, where: str):
        if self._oasis_data is None:
            import pandas as pd

            if self.oasis_root is None:
                raise MissingStimuli(MSG_OASIS_ROOT.format(where=where))
            csv_path = self.oasis_root / OASIS_CSV
            if not csv_path.is_file():
                raise DataError(MSG_OASIS_CSV.format(where=where, path=csv_path))
            try:
                table = pd.read_csv(csv_path)
            except (OSError, ValueError) as err:
                raise DataError(MSG_SET_FORM.format(where=where, problem=f"{csv_path} could not be read: "
                                                                         f"{str(err).splitlines()[0]}")) from None
            missing = [c for c in ("Theme", "Valence_mean") if c not in table.columns]
            if missing:
                raise DataError(MSG_OASIS_COLUMNS.format(where=where, path=csv_path, missing=", ".join(missing),
                                                         found=", ".join(map(str, table.columns))))
            table = table.dropna(subset=["Theme", "Valence_mean"])
            images: dict[str, Path] = {}
            for folder in (self.oasis_root / "images", self.oasis_root / "Images", self.oasis_root):
                if folder.is_dir():
                    for p in sorted(folder.iterdir()):
                        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                            images.setdefault(p.stem, p)
            self._oasis_data = (table, images)
        return self._oasis_data

    def _faces(self, spec: SetSpec, where: str) -> Stimuli:
        import numpy as np

        from clipprobe.faces import load_dataset

        spec_text = _resolve_dataset_spec(str(spec.value), spec.base)
        split = str(spec.options.get("split", "validation"))
        key = (spec_text, split)
        if key not in self._datasets:
            self._datasets[key] = load_dataset(spec_text, split=split)
        ds = self._datasets[key]
        table = ds.table
        mask = np.ones(len(table), dtype=bool)
        selection = dict(spec.options.get("where") or {})
        for column, wanted in selection.items():
            if column not in table.columns:
                raise DataError(MSG_WHERE_COLUMN.format(where=where, spec=spec_text, column=column,
                                                        hint=did_you_mean(str(column), table.columns),
                                                        columns=", ".join(map(str, table.columns))))
            values = [str(v) for v in wanted] if isinstance(wanted, list) else [str(wanted)]
            mask &= table[column].astype(str).isin(values).to_numpy()
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            raise DataError(MSG_NO_MATCH.format(where=where, spec=spec_text, selection=selection or "everything"))
        n = spec.options.get("n")
        if n is not None:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise DataError(MSG_FACES_N.format(where=where, value=n))
            if n < rows.size:
                seed = int(spec.options.get("seed", 0))
                rows = np.sort(np.random.default_rng(seed).choice(rows, size=n, replace=False))
        files = [str(table["file"].iat[r]) for r in rows]
        source = f"faces:{spec_text}"
        if ds.root is None:  # images inside the dataset (Hugging Face): embedded through the dataset itself
            return Stimuli("image", tuple(f"{spec_text}#{r}" for r in rows), tuple(files), spec.label, source,
                           None, ds, tuple(int(r) for r in rows))
        paths = [ds.image_path(int(r)).resolve() for r in rows]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(MSG_MISSING_PATH.format(where=where, what="image", path=missing[0]))
        return Stimuli("image", tuple(str(p) for p in paths), tuple(files), spec.label, source, Path(ds.root))

    def _unavailable(self, spec: SetSpec, where: str) -> Stimuli:  # pragma: no cover - filtered before
        raise DataError(f"{where}: unavailable ({spec.value})")

    def _set(self, spec: SetSpec, where: str) -> Stimuli:  # pragma: no cover - references are inlined
        raise DataError(f"{where}: unresolved set reference")


def _freeze(value):
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def _apply_templates(words: Sequence[str], templates: Sequence[str] | None) -> list[str]:
    if not templates:
        return list(words)
    return [t.replace("{word}", w) for w in words for t in templates]


def _text_stimuli(items: Sequence[str], spec: SetSpec, source: str, units: Sequence[str] | None = None) -> Stimuli:
    items = tuple(" ".join(str(t).split()) for t in items)
    units = tuple(units) if units is not None and len(set(units)) < len(items) else None
    return Stimuli("text", items, items, spec.label, source, units=units)


def _template_units(words: Sequence[str], templates: Sequence[str] | None) -> list[str] | None:
    """The word of each sentence of :func:`_apply_templates` (word-major), or None without templates."""
    return [str(w) for w in words for _ in templates] if templates else None


# The sentence forms of SEAT (May et al. 2019) and of the NRC-VAD combinations: the word is the slot.
_SEAT_SINGULAR = (
    r"(?:This|That|There|Here|It) is (?:an? |the word )?(?P<w>.+)\.",
    r"(?:The |An? )?(?P<w>.+) is (?:here|there|a person|a thing)\.",
    r"The person's name is (?P<w>.+)\.",
    r"(?:Here|There) (?P<w>he|she) is\.",
    r"(?:This|That) (?:will|did|can|may) (?P<w>.+)\.",
)
_SEAT_PLURAL = (
    r"(?:These|Those|They) are (?:the word )?(?P<w>.+)\.",
    r"(?:The )?(?P<w>.+) are (?:here|there|people|things)\.",
)
_IRREGULAR_PLURALS = (("men", "man"), ("people", "person"), ("children", "child"))


def sentence_words(sentences: Sequence[str]) -> list[str] | None:
    """The word each sentence is built on, when every sentence has one of SEAT's forms ("This is a rose.",
    "The roses are there.", "Roses are things.", "The person's name is Adam.", "This is the word joy."); None
    otherwise. The word is the form's slot, lower-cased; a plural form counts as the singular word when the
    same list has that singular ("roses" -> "rose", "men" -> "man", "daisies" -> "daisy").
    """
    import re

    singular = [re.compile(f) for f in _SEAT_SINGULAR]
    plural = [re.compile(f) for f in _SEAT_PLURAL]
    slots = []
    for text in sentences:
        text = " ".join(str(text).split())
        found = next(((m.group("w").lower(), False) for f in singular if (m := f.fullmatch(text))), None)
        if found is None:
            found = next(((m.group("w").lower(), True) for f in plural if (m := f.fullmatch(text))), None)
        if found is None:
            return None
        slots.append(found)
    known = {w for w, is_plural in slots if not is_plural}
    return [next((s for s in _singulars(w) if s in known), w) if is_plural else w for w, is_plural in slots]


def _singulars(word: str) -> list[str]:
    out = [word[: -len(p)] + s for p, s in _IRREGULAR_PLURALS if word.endswith(p)]
    if word.endswith("ies"):
        out.append(word[:-3] + "y")
    if word.endswith("ves"):
        out += [word[:-3] + "f", word[:-3] + "fe"]
    if word.endswith("es"):
        out.append(word[:-2])
    if word.endswith("s"):
        out.append(word[:-1])
    return out


def _texts_of(values: Sequence[Any], where: str, source: str) -> list[str]:
    """The stimuli of a list as texts; numbers are written as text, anything else (null, a boolean, a
    list, a mapping) is an error rather than the text "None" or "{'a': 1}", and so is a text longer than
    :data:`MAX_STIMULUS_CHARS`."""
    out = []
    for i, value in enumerate(values):
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise DataError(MSG_NOT_TEXT.format(where=where, index=i + 1, source=source, value=Bounded(value)))
        text = str(value)
        if len(text) > MAX_STIMULUS_CHARS:
            raise DataError(MSG_TOO_LONG.format(where=where, what="stimulus", index=i + 1, source=source, n=len(text),
                                                limit=MAX_STIMULUS_CHARS))
        out.append(text)
    return out


def _read_seat_file(path: Path, where: str) -> Mapping:
    """A SEAT test file: one JSON object (duplicate keys, excessive nesting, a huge or non-UTF-8 file are
    one-line errors)."""
    from clipprobe._io import load_json, read_data_text

    what = f"{where}: SEAT file" if where else "SEAT file"
    data = load_json(read_data_text(path, what=what), what=what, path=path)
    if not isinstance(data, Mapping):
        raise DataError(MSG_SET_FORM.format(where=where or str(path),
                                            problem=f"{path} must hold one JSON object (targ1, targ2, attr1, attr2)"))
    return data


def _walk_files(top: Path, where: str) -> list[tuple[Path, tuple[str, ...]]]:
    """Every file under folder ``top`` as (path, its parts below ``top``), sorted. Symbolic links to
    folders are followed, each real folder once; a link to a folder that contains it is a loop (error);
    more than :data:`MAX_WALK_ENTRIES` entries is an error."""
    st = os.stat(top)
    root = (st.st_dev, st.st_ino)
    visited = {root}
    stack: list[tuple[Path, tuple[str, ...], frozenset]] = [(top, (), frozenset([root]))]
    files: list[tuple[Path, tuple[str, ...]]] = []
    seen = followed = 0
    while stack:
        folder, rel, ancestors = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as err:
            raise DataError(MSG_SET_FORM.format(where=where, problem=f"folder {folder} could not be read: "
                                                                     f"{err.strerror or err}")) from None
        seen += len(entries)
        if seen > MAX_WALK_ENTRIES:
            raise DataError(MSG_WALK_LIMIT.format(where=where, limit=MAX_WALK_ENTRIES, path=top))
        for entry in entries:
            path = Path(entry.path)
            try:
                if not entry.is_dir():
                    if entry.is_file():
                        files.append((path, rel + (entry.name,)))
                    continue
                info = entry.stat()
            except OSError:  # a broken link, or gone meanwhile: not an image
                continue
            ident = (info.st_dev, info.st_ino)
            if ident in ancestors:
                raise DataError(MSG_SYMLINK_LOOP.format(where=where, link=path, target=os.path.realpath(path)))
            if ident in visited:
                continue  # the same folder reached again through a link: walked once
            visited.add(ident)
            followed += entry.is_symlink()
            stack.append((path, rel + (entry.name,), ancestors | {ident}))
    if followed:
        log.info("%s: followed %d symbolic link(s) to folders under %s", where, followed, top)
    return sorted(files)


def _glob_files(pattern: Path, where: str) -> list[Path]:
    """The files matching a glob (``**``: any number of folders, as :func:`glob.glob` with
    ``recursive=True``), sorted; a ``**`` glob walks its folder as :func:`_walk_files` does."""
    parts = pattern.parts
    first = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    if "**" not in parts[first:]:  # as deep as the pattern, no deeper: loops cannot make it endless
        return sorted(Path(p) for p in glob.glob(str(pattern)) if Path(p).is_file())
    top = Path(*parts[:first])
    if not top.is_dir():
        return []
    wanted = parts[first:]
    return [p for p, rel in _walk_files(top, where) if _glob_match(wanted, rel)]


def _glob_match(pattern: Sequence[str], parts: Sequence[str]) -> bool:
    """Whether path ``parts`` match glob ``pattern`` parts (``**``: zero or more parts; as in
    :mod:`glob`, a wildcard does not match a name starting with a dot)."""
    memo: dict[tuple[int, int], bool] = {}

    def match(i: int, j: int) -> bool:
        if (i, j) not in memo:
            if i == len(pattern):
                result = j == len(parts)
            elif pattern[i] == "**":
                result = match(i + 1, j) or (j < len(parts) and not parts[j].startswith(".") and match(i, j + 1))
            else:
                name = parts[j] if j < len(parts) else None
                result = (name is not None and (not name.startswith(".") or pattern[i].startswith("."))
                          and fnmatch.fnmatchcase(name, pattern[i]) and match(i + 1, j + 1))
            memo[(i, j)] = result
        return memo[(i, j)]

    return match(0, 0)


def _image_stimuli(paths: Sequence[Path], spec: SetSpec, source: str, root: Path | None = None) -> Stimuli:
    resolved = [Path(p).resolve() for p in paths]
    if root is None:
        root = Path(os.path.commonpath([str(p.parent) for p in resolved])) if resolved else None
    root = Path(root).resolve() if root is not None else None
    display = tuple(os.path.relpath(p, root) if root is not None else p.name for p in resolved)
    return Stimuli("image", tuple(str(p) for p in resolved), display, spec.label, source, root)


def _resolve_path(text: str, base: Path) -> Path:
    if text.startswith(SHIPPED_PREFIX):
        return _stimuli_dir() / text[len(SHIPPED_PREFIX):]
    path = Path(text).expanduser()
    return path if path.is_absolute() else base / path


def _resolve_dataset_spec(spec: str, base: Path) -> str:
    """A dataset spec with a relative local path made absolute against ``base`` (Hub names stay)."""
    scheme, sep, where = spec.partition(":")
    if not sep or scheme == "hf" and not where.startswith((".", "/", "~")):
        return spec
    return f"{scheme}:{_resolve_path(where, base)}"


def _short_path(path: Path) -> str:
    try:
        return "stimuli:" + path.resolve().relative_to(_stimuli_dir().resolve()).as_posix()
    except ValueError:
        return str(path)


def _manifest_images(path: Path, where: str) -> list[Path]:
    """The images a CSV manifest lists: UTF-8 (a byte-order mark is fine), one header of distinct names,
    paths relative to the CSV's folder and inside it (:func:`clipprobe._io.relative_inside`, the rule of
    face datasets' label files)."""
    import csv
    import io

    from clipprobe._io import read_data_text, relative_inside

    if not path.is_file():
        raise DataError(MSG_MISSING_PATH.format(where=where, what="image manifest", path=path))
    text = read_data_text(path, what=f"{where}: image manifest")
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise DataError(MSG_MANIFEST.format(where=where, path=path, problem=f"not a CSV file ({err})")) from None
    header = [c.strip() for c in rows[0]] if rows else []
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise DataError(MSG_MANIFEST.format(where=where, path=path, problem=f"column {Bounded(repeated[0])!r} "
                                                                           f"appears {header.count(repeated[0])} "
                                                                           f"times in the header"))
    column = next((c for c in MANIFEST_COLUMNS if c in header), None)
    if column is None:
        raise DataError(MSG_SET_FORM.format(where=where, problem=f"{path} has no image column (one of "
                                                                 f"{', '.join(MANIFEST_COLUMNS)})"))
    at = header.index(column)
    paths = []
    for line, row in enumerate(rows[1:], start=2):
        name = row[at] if at < len(row) else ""
        if not name:
            continue
        rel = relative_inside(name)
        if rel is None:
            raise DataError(MSG_MANIFEST_ESCAPES.format(where=where, path=path, line=line, file=Bounded(name)))
        paths.append(path.parent / rel)
    return paths


def _ieat_local_root(root: Path) -> Path:
    """The folder that holds ``data/experiments`` under a user's iEAT copy (given at any of three levels)."""
    for candidate in (root, root.parent.parent, root.parent):
        if (candidate / IEAT_PREFIX).is_dir():
            return candidate
    if root.name == "experiments":
        return root.parent.parent
    return root


def describe_test(test: TestSpec) -> dict[str, Any]:
    """A JSON-friendly description of a test."""
    return {"name": test.name, "order": test.order, "family": test.family, "note": test.note,
            "paper_sign": test.paper_sign, "unavailable": test.unavailable,
            "sets": {k: {"label": s.label, "source": s.describe(), "modality": s.modality}
                     for k, s in test.sets.items()}}


__all__ = [
    "IEAT_BASE_URL", "IEAT_COMMIT", "MissingStimuli", "ORDERS", "ORDER_LABELS", "ResolvedTest", "Resolver", "SetSpec", "Stimuli",
    "Suite", "TestSpec", "apply_paper_signs", "get_suite", "list_suites", "load_tests", "describe_test",
    "sentence_words",
]
