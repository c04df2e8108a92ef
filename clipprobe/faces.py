"""Face datasets with demographic labels: FairFace, UTKFace, any CSV, Hugging Face.

A dataset is named by a spec ``SCHEME:WHERE``:

``fairface:ROOT``
    The official FairFace release: ``ROOT/fairface_label_val.csv`` (split
    ``validation``, alias ``val``) or ``ROOT/fairface_label_train.csv`` (split
    ``train``) with columns ``file,age,gender,race,service_test``; ``file`` is an
    image path relative to ROOT (``val/1.jpg``).
``hf:NAME`` or ``hf:PATH``
    A Hugging Face dataset (default ``HuggingFaceM4/FairFace``, config ``0.25``,
    split ``validation``; ``hf_config=`` picks another config, e.g. FairFace's
    ``1.25`` padding), a local copy of such a dataset repository, or a dataset
    saved locally with ``save_to_disk``. Only the data files of the requested
    split are downloaded and prepared (FairFace's validation files, about 64 MB,
    not the train split's 500 MB): the repository's card says which files belong
    to which config and split; the list is remembered in clipprobe's cache so that
    an offline run finds the same files in the Hugging Face cache. Needs the
    ``datasets`` package (a missing one is a one-line error saying what to
    install). Class labels are mapped by *name* through the ``ClassLabel``
    features, never by integer id: the Hub copy of FairFace numbers its races
    differently from the label CSVs.
``utkface:DIR``
    UTKFace images named ``age_gender_race_date.jpg`` (``.jpg.chip.jpg`` for the
    aligned crops), searched recursively. Gender 0/1 = Male/Female; race 0-4 =
    White, Black, Asian, Indian, Others. ``age`` is binned into FairFace's age
    groups and the integer is kept as ``age_years``. Malformed names are skipped
    and listed in :attr:`FaceDataset.skipped`. A folder holding several copies of
    the release (the aligned crops next to the in-the-wild images, or both crop
    archives) has each face once: files with the same age, gender, race and date
    (the date is a timestamp to the millisecond) are one face; the aligned crop
    (``.chip.jpg``) is kept, else the first path, and the others are listed in
    :attr:`FaceDataset.skipped` as duplicates.
``csv:PATH``
    Any CSV with an image-path column (the first of ``file``, ``path``,
    ``image``, ``image_path``, ``filename`` present, or ``image_column=``) and
    attribute columns. Image paths are relative to ``image_root`` (default: the
    CSV's folder).

In a label file (``fairface:``, ``csv:``) every image appears once: an image
listed twice would be counted twice in every top-k and in the base shares, so a
duplicated path (compared after normalisation: ``val/1.jpg`` = ``./val/1.jpg``)
is an error naming it and its line numbers, rather than a silent choice between
two rows that may carry different labels.

Images are decoded with a size limit (:data:`MAX_IMAGE_PIXELS`): a larger image
(a "decompression bomb", or anything but a face crop) is not decoded but skipped
with its size as the reason, like an unreadable file.

Every loader returns a :class:`FaceDataset` whose ``table`` has one row per
image, a ``file`` column holding the path exactly as written in the label file,
and the attribute columns ``race``, ``gender``, ``age`` and ``race_gender``
(``race + "_" + gender``, e.g. ``East Asian_Male``) where the source has them.
Image paths must stay inside the dataset root: an absolute path or one whose
``..`` leads outside is rejected with the row number (paths are checked
lexically, so symlinked folders inside the root still work).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipprobe._io import relative_inside
from clipprobe.errors import ClipprobeError, DataError, UsageError, did_you_mean
from clipprobe.hub import hub_session

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

log = logging.getLogger(__name__)

SCHEMES = ("fairface", "hf", "utkface", "csv")
DEFAULT_HF_DATASET = "HuggingFaceM4/FairFace"
DEFAULT_SPEC = f"hf:{DEFAULT_HF_DATASET}"
# FairFace's configs are its face-crop paddings, 0.25 (the one the paper's labels and sizes are for) and 1.25.
DEFAULT_HF_CONFIG = "0.25"
# Largest image decoded (width x height): about 6300 x 6300. Face crops are far smaller; a larger file would
# cost hundreds of MB per decoding worker.
MAX_IMAGE_PIXELS = 40_000_000

FAIRFACE_LABEL_FILES = {"validation": "fairface_label_val.csv", "train": "fairface_label_train.csv"}
FAIRFACE_REQUIRED = ("file", "age", "gender", "race")
SPLIT_ALIASES = {"validation": "validation", "val": "validation", "valid": "validation", "train": "train"}
CSV_IMAGE_COLUMNS = ("file", "path", "image", "image_path", "filename")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# ---------------------------------------------------------------------------------------------
# The vocabulary of attributes and groups (its one owner; every other module imports it)

ATTRIBUTES = ("race", "gender", "age", "race_gender")   # the standard attributes, in report order
RETRIEVE_ATTRIBUTES = ("race", "gender", "race_gender")  # what `retrieve` shows unless told otherwise
RACE_GENDER_SEP = "_"                                    # race_gender = race + "_" + gender
FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
FAIRFACE_GENDERS = ("Male", "Female")
# The groups of FairFace's ``age`` label, in order; UTKFace ages are binned into them.
FAIRFACE_AGE_GROUPS = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
GROUP_ORDER = {"race": FAIRFACE_RACES, "gender": FAIRFACE_GENDERS, "age": FAIRFACE_AGE_GROUPS}
# Group sizes of the FairFace validation split (fairface_label_val.csv, padding 0.25): 10,954 images.
FAIRFACE_VALIDATION_SIZE = 10954
FAIRFACE_VALIDATION_COUNTS: dict[str, dict[str, int]] = {
    "race": {"White": 2085, "Black": 1556, "Latino_Hispanic": 1623, "East Asian": 1550, "Southeast Asian": 1415,
             "Indian": 1516, "Middle Eastern": 1209},
    "gender": {"Male": 5792, "Female": 5162},
    "age": {"0-2": 199, "3-9": 1356, "10-19": 1181, "20-29": 3300, "30-39": 2330, "40-49": 1353, "50-59": 796,
            "60-69": 321, "more than 70": 118},
}
MISSING_GROUP = "(missing)"

_AGE_LOWER = (0, 3, 10, 20, 30, 40, 50, 60, 70)
UTK_GENDERS = ("Male", "Female")
UTK_RACES = ("White", "Black", "Asian", "Indian", "Others")
_UTK_NAME = re.compile(r"^(?P<age>\d+)_(?P<gender>\d+)_(?P<race>\d+)_(?P<date>\d+)(?:\.[^.]+)+$")


def race_gender(race: str, gender: str) -> str:
    """The ``race_gender`` group of a race and a gender (``"East Asian_Male"``)."""
    return f"{race}{RACE_GENDER_SEP}{gender}"


def ordered_attributes(present) -> list[str]:
    """Attribute names: the standard ones first, in :data:`ATTRIBUTES` order, then the others sorted."""
    present = list(dict.fromkeys(str(a) for a in present))
    return [a for a in ATTRIBUTES if a in present] + sorted(set(present) - set(ATTRIBUTES))


def group_order(attribute: str, present) -> list[str]:
    """The groups of ``attribute`` that are ``present``: FairFace's canonical order first, the rest sorted."""
    present = set(present)
    if attribute == "race_gender":
        canonical = [race_gender(r, g) for r in FAIRFACE_RACES for g in FAIRFACE_GENDERS]
    else:
        canonical = list(GROUP_ORDER.get(attribute, ()))
    order = [g for g in canonical if g in present]
    return order + sorted(present - set(order))


def group_codes(values, attribute: str) -> tuple["np.ndarray", list[str]]:
    """Integer codes (``(N,)`` int64) and the ordered group names of one label column.

    A missing label becomes the group ``"(missing)"`` and is logged.
    """
    import numpy as np
    import pandas as pd

    values = pd.Series(values).astype("object").reset_index(drop=True)
    missing = values.isna()
    if missing.any():
        log.warning("%d image(s) have no %s label; they form the group %r", int(missing.sum()), attribute,
                    MISSING_GROUP)
        values = values.where(~missing, MISSING_GROUP)
    first, seen = pd.factorize(values.astype(str))      # the distinct labels in order of first appearance
    order = group_order(attribute, seen)
    lookup = {g: i for i, g in enumerate(order)}
    codes = np.array([lookup[v] for v in seen], dtype=np.int64)[first]
    return codes, order


# Message templates (tests check them).
MSG_BAD_SPEC = "dataset spec {spec!r} must look like SCHEME:WHERE with SCHEME one of {schemes}"
MSG_UNKNOWN_SCHEME = "unknown dataset scheme {scheme!r} in {spec!r}{hint}; valid: {schemes}"
MSG_UNKNOWN_SPLIT = "unknown split {split!r} for {spec!r}{hint}; valid: {splits}"
MSG_NO_FOLDER = "dataset folder {path} does not exist"
MSG_NO_LABEL_FILE = "label file {path} for split {split!r} does not exist"
MSG_MISSING_COLUMNS = "label file {path} lacks column(s) {missing}; found: {found}"
MSG_UNREADABLE_LABELS = "cannot read label file {path}: {reason}"
MSG_EMPTY = "dataset {spec!r} has no images"
MSG_ESCAPES = "line {row} of {path}: image path {file!r} escapes the dataset root"
MSG_EMPTY_PATH = "line {row} of {path}: empty image path"
MSG_NO_IMAGE_COLUMN = "CSV {path} has no image-path column (looked for {looked}); found: {found}"
MSG_DUPLICATE_FILE = "label file {path}: image {file!r} is listed {n} times (lines {lines}); list each image once{more}"
MSG_IMAGE_TOO_LARGE = "image is {width} x {height} pixels, more than the limit of {limit} pixels; not decoded"
MSG_NEEDS_DATASETS = (
    "dataset {spec!r} needs the Python package 'datasets' ({problem}); install it with "
    "pip install 'clipprobe[hf]' (`clipprobe doctor` shows what this installation can do), or use a local copy "
    "of the FairFace release: the dataset spec fairface:ROOT"
)
MSG_UTK_DUPLICATE = "duplicate of {kept} (same age, gender, race and date)"
MSG_GROUPS_WITHOUT_TERMS = (
    "the lexicon has no terms for {attribute} group(s) {groups}: they cannot be counted in captions and are "
    "left out of the cross-check"
)
MSG_HF_UNAVAILABLE = (
    "cannot load Hugging Face dataset {name!r} (config {config!r}, split {split!r}){why}: {reason}; "
    "download it first when online, or use a local copy of the FairFace release: the dataset spec "
    "fairface:ROOT (ROOT holds fairface_label_val.csv and the val/ images)"
)


@dataclass(frozen=True)
class FaceDataset:
    """A labelled face-image dataset, one table row per image.

    ``table`` has a RangeIndex 0..N-1 (the *row* used everywhere else: cache
    shards, embeddings, results), a ``file`` column and the attribute columns.
    ``fingerprint`` is a hex digest of the label contents, the image list (with
    file sizes for images on disk) and the split: what a run records about its data.
    The embedding cache goes by :attr:`images_key` (which images, where) and checks
    each image's :meth:`content_digest` (what is in it).
    """

    spec: str
    kind: str
    root: Path | None
    split: str
    table: Any  # pandas.DataFrame (not imported at module level)
    fingerprint: str
    skipped: list[dict] = field(default_factory=list)
    attribute_columns: tuple[str, ...] = ()
    # For ``hf`` datasets: the ``datasets.Dataset`` and its image column.
    _hf: Any = field(default=None, repr=False, compare=False)
    _hf_image_column: str | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.table)

    def attributes(self) -> list[str]:
        """Names of the attribute columns (standard ones first)."""
        return list(self.attribute_columns)

    @property
    def labels(self):
        """The attribute columns of every image (a DataFrame, one row per image, in dataset order)."""
        return self.table[list(self.attribute_columns)]

    def image_path(self, i: int) -> Path:
        """Absolute path of image ``i`` (not for ``hf`` datasets)."""
        if self.root is None:
            raise DataError(f"dataset {self.spec!r} keeps its images inside the dataset, not as files")
        return self.root / self.table["file"].iat[i]

    def load_image(self, i: int):
        """Decode image ``i`` as an RGB ``PIL.Image``; raises on a missing, corrupt or too large
        (:data:`MAX_IMAGE_PIXELS`) file."""
        import io

        if self._hf is not None:
            value = self._hf[int(i)][self._hf_image_column]
            if isinstance(value, dict) and value.get("bytes") is not None:
                return decode_image(io.BytesIO(value["bytes"]))
            if isinstance(value, dict) and value.get("path"):
                return decode_image(value["path"])
            raise DataError(f"row {i} of {self.spec!r}: image column holds {type(value).__name__}, not an image")
        return decode_image(self.image_path(i))

    @property
    def images_key(self) -> str:
        """A digest of which images these are and where: the kind, the split, the image folder (resolved)
        and the image list in order (``hf``: the dataset's source and fingerprint). Labels and the images'
        contents are not part of it: embeddings do not depend on labels, and the embedding cache checks
        each image's :meth:`content_digest` itself, so that an edited image is embedded again alone."""
        if self.root is None:
            return _digest("images", self.kind, self.split, self.fingerprint)
        h = hashlib.sha256()
        for name in self.table["file"]:
            h.update(name.encode("utf-8") + b"\n")
        return _digest("images", self.kind, self.split, str(self.root.resolve()), h.hexdigest())

    def content_digest(self, i: int) -> str:
        """SHA-256 (hex) of image ``i``'s bytes as stored (the file, or the bytes in an ``hf`` dataset);
        ``""`` when there is nothing to read (a missing file)."""
        h = hashlib.sha256()
        try:
            if self._hf is not None:
                value = self._hf[int(i)][self._hf_image_column]
                if isinstance(value, dict) and value.get("bytes") is not None:
                    h.update(value["bytes"])
                    return h.hexdigest()
                if not (isinstance(value, dict) and value.get("path")):
                    return ""
                path = value["path"]
            else:
                path = self.image_path(i)
            with open(path, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
        except OSError:
            return ""
        return h.hexdigest()

    def summary(self) -> dict:
        """A JSON-friendly description (spec, split, size, fingerprint, skipped count)."""
        return {
            "spec": self.spec,
            "kind": self.kind,
            "split": self.split,
            "root": str(self.root) if self.root is not None else None,
            "n_images": len(self),
            "fingerprint": self.fingerprint,
            "images_key": self.images_key,
            "attributes": self.attributes(),
            "n_skipped_at_load": len(self.skipped),
        }


def decode_image(source):
    """Decode an image file (a path or a binary file object) as RGB, refusing one larger than
    :data:`MAX_IMAGE_PIXELS` before its pixels are decoded (its size is read from the header)."""
    from PIL import Image

    with warnings.catch_warnings():
        # PIL warns (and errors at twice its own limit) about large images; ours is lower and explicit.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            img = Image.open(source)
        except Image.DecompressionBombError as err:
            size = re.search(r"(\d+) pixels", str(err))
            raise DataError(f"image has {size.group(1) if size else 'too many'} pixels, more than the limit of "
                            f"{MAX_IMAGE_PIXELS} pixels; not decoded") from None
    with img:
        width, height = img.size
        if width * height > MAX_IMAGE_PIXELS:
            raise DataError(MSG_IMAGE_TOO_LARGE.format(width=width, height=height, limit=MAX_IMAGE_PIXELS))
        return img.convert("RGB")


def groups_without_terms(groups: dict, lexicon_attributes: dict) -> dict[str, list[str]]:
    """The groups of a dataset that a caption lexicon has no terms for: ``{attribute: [group, ...]}``.

    ``groups``: ``{attribute: groups present}`` (e.g. UTKFace's race groups include ``Asian`` and
    ``Others``, which the FairFace lexicon does not name); ``lexicon_attributes``: a lexicon's
    ``attributes`` (``{attribute: {group: terms}}``). Attributes the lexicon does not cover at all are
    listed whole. Use :func:`describe_groups_without_terms` for the message.
    """
    out: dict[str, list[str]] = {}
    for attribute, present in groups.items():
        covered = lexicon_attributes.get(attribute) or {}
        missing = [str(g) for g in group_order(attribute, [str(g) for g in present]) if g not in covered]
        if missing:
            out[str(attribute)] = missing
    return out


def describe_groups_without_terms(missing: dict[str, list[str]]) -> list[str]:
    """One message per attribute of :func:`groups_without_terms` (:data:`MSG_GROUPS_WITHOUT_TERMS`)."""
    return [MSG_GROUPS_WITHOUT_TERMS.format(attribute=a, groups=", ".join(repr(g) for g in gs))
            for a, gs in missing.items()]


def load_dataset(
    spec: str | None,
    *,
    split: str = "validation",
    image_root: str | os.PathLike | None = None,
    offline: bool | None = None,
    hf_config: str | None = None,
    image_column: str | None = None,
) -> FaceDataset:
    """Load the face dataset named by ``spec`` (``None``: FairFace validation from the Hub).

    ``hf_config``: the configuration of an ``hf:`` dataset (default: ``0.25`` for FairFace, the
    repository's default for others). ``offline``: True for this call only (see :mod:`clipprobe.hub`).
    """
    if spec is None:
        spec = DEFAULT_SPEC
    scheme, sep, where = spec.partition(":")
    if not sep or not where:
        raise UsageError(MSG_BAD_SPEC.format(spec=spec, schemes=", ".join(SCHEMES)))
    if scheme not in SCHEMES:
        raise UsageError(
            MSG_UNKNOWN_SCHEME.format(
                scheme=scheme, spec=spec, hint=did_you_mean(scheme, SCHEMES), schemes=", ".join(SCHEMES)
            )
        )
    if scheme == "fairface":
        return _load_fairface(spec, Path(where).expanduser(), _split(spec, split))
    if scheme == "hf":
        return _load_hf(spec, where, _split(spec, split), hf_config, offline)
    if scheme == "utkface":
        return _load_utkface(spec, Path(where).expanduser(), split)
    return _load_csv(spec, Path(where).expanduser(), split, image_root, image_column)


# --------------------------------------------------------------------------- helpers


def _split(spec: str, split: str) -> str:
    try:
        return SPLIT_ALIASES[split]
    except KeyError:
        raise UsageError(
            MSG_UNKNOWN_SPLIT.format(
                split=split, spec=spec, hint=did_you_mean(split, SPLIT_ALIASES), splits=", ".join(SPLIT_ALIASES)
            )
        ) from None


def _check_files(files, label_path: Path) -> None:
    """Reject empty paths, absolute paths and paths whose ``..`` leads outside the root.

    Data row ``i`` of a CSV is line ``i + 2`` (the header is line 1); messages use line numbers.
    """
    first_row = 2
    lines: dict[str, list[int]] = {}
    for i, name in enumerate(files):
        if not isinstance(name, str) or not name.strip():
            raise DataError(MSG_EMPTY_PATH.format(row=i + first_row, path=label_path))
        norm = relative_inside(name)
        if norm is None:
            raise DataError(MSG_ESCAPES.format(row=i + first_row, path=label_path, file=name))
        lines.setdefault(norm, []).append(i + first_row)
    duplicated = [(norm, rows) for norm, rows in lines.items() if len(rows) > 1]
    if duplicated:
        norm, rows = min(duplicated, key=lambda item: item[1][0])
        shown = ", ".join(str(r) for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
        more = f" ({len(duplicated) - 1} other image(s) are listed more than once too)" if len(duplicated) > 1 else ""
        raise DataError(MSG_DUPLICATE_FILE.format(path=label_path, file=files[rows[0] - first_row], n=len(rows),
                                                  lines=shown, more=more))


def _read_csv(path: Path):
    import pandas as pd

    try:
        # Labels are categorical text: keep every column as a string, never guess numbers.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(MSG_UNREADABLE_LABELS.format(path=path, reason=str(err).splitlines()[0])) from None


def _add_race_gender(table) -> None:
    if "race" in table.columns and "gender" in table.columns:
        table["race_gender"] = table["race"] + RACE_GENDER_SEP + table["gender"]


def _attribute_columns(table, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    std = [c for c in ATTRIBUTES if c in table.columns]
    return tuple(std + [c for c in extra if c in table.columns and c not in std])


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8") if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _image_list_digest(root: Path, files) -> str:
    """Digest of the image list with each file's size (-1 when missing)."""
    h = hashlib.sha256()
    for name in files:
        try:
            size = os.stat(root / name).st_size
        except OSError:
            size = -1
        h.update(f"{name}\t{size}\n".encode("utf-8"))
    return h.hexdigest()


def _finish_table(table):
    table = table.reset_index(drop=True)
    table["file"] = table["file"].astype(str)
    return table


# --------------------------------------------------------------------------- fairface


def _load_fairface(spec: str, root: Path, split: str) -> FaceDataset:
    if not root.is_dir():
        raise DataError(MSG_NO_FOLDER.format(path=root))
    label_path = root / FAIRFACE_LABEL_FILES[split]
    if not label_path.is_file():
        raise DataError(MSG_NO_LABEL_FILE.format(path=label_path, split=split))
    table = _read_csv(label_path)
    missing = [c for c in FAIRFACE_REQUIRED if c not in table.columns]
    if missing:
        raise DataError(
            MSG_MISSING_COLUMNS.format(path=label_path, missing=", ".join(missing), found=", ".join(table.columns))
        )
    if len(table) == 0:
        raise DataError(MSG_EMPTY.format(spec=spec))
    _check_files(table["file"], label_path)
    table = _finish_table(table)
    _add_race_gender(table)
    fingerprint = _digest("fairface", split, label_path.read_bytes(), _image_list_digest(root, table["file"]))
    log.info("loaded %s split %s: %d images", spec, split, len(table))
    return FaceDataset(
        spec=spec, kind="fairface", root=root, split=split, table=table, fingerprint=fingerprint,
        attribute_columns=_attribute_columns(table),
    )


# --------------------------------------------------------------------------- utkface


def utk_age_group(age: int) -> str:
    """FairFace's age group for an age in years (``70`` and above: ``more than 70``)."""
    group = FAIRFACE_AGE_GROUPS[0]
    for lower, name in zip(_AGE_LOWER, FAIRFACE_AGE_GROUPS):
        if age >= lower:
            group = name
    return group


def parse_utk_name(name: str) -> tuple[dict | None, str | None]:
    """Parse a UTKFace file name; return ``(labels, None)`` or ``(None, reason)``."""
    m = _UTK_NAME.match(name)
    if not m:
        return None, "name is not age_gender_race_date.jpg"
    age, gender, race = int(m["age"]), int(m["gender"]), int(m["race"])
    if gender >= len(UTK_GENDERS):
        return None, f"gender code {gender} is not 0 or 1"
    if race >= len(UTK_RACES):
        return None, f"race code {race} is not 0-4"
    if age > 130:
        return None, f"age {age} is not plausible"
    return {
        "age": utk_age_group(age), "gender": UTK_GENDERS[gender], "race": UTK_RACES[race],
        "age_years": age, "date": m["date"],
    }, None


def _utk_unique(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """One record per face: (age, gender, race, date) identifies a UTKFace photo, whichever folder holds a copy.

    The aligned crop (``.chip.`` in the name) is kept over other copies, then the first path in
    sorted order; records stay in path order. Returns (kept records, skipped duplicates).
    """
    best: dict[tuple, dict] = {}
    for rec in records:
        key = (rec["age_years"], rec["gender"], rec["race"], rec["date"])
        current = best.get(key)
        is_chip = ".chip." in posixpath.basename(rec["file"]).lower()
        if current is None or (is_chip and ".chip." not in posixpath.basename(current["file"]).lower()):
            best[key] = rec
    kept_ids = {id(r) for r in best.values()}
    kept = [r for r in records if id(r) in kept_ids]
    duplicates = [
        {"file": r["file"], "reason": MSG_UTK_DUPLICATE.format(
            kept=best[(r["age_years"], r["gender"], r["race"], r["date"])]["file"])}
        for r in records if id(r) not in kept_ids
    ]
    return kept, duplicates


def _load_utkface(spec: str, root: Path, split: str) -> FaceDataset:
    import pandas as pd

    if not root.is_dir():
        raise DataError(MSG_NO_FOLDER.format(path=root))
    found = sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
    )
    records, skipped = [], []
    for rel in found:
        labels, reason = parse_utk_name(posixpath.basename(rel))
        if labels is None:
            skipped.append({"file": rel, "reason": reason})
            continue
        records.append({"file": rel, **labels})
    if skipped:
        log.warning("%s: skipped %d file(s) with malformed names, e.g. %s", spec, len(skipped), skipped[0]["file"])
    records, duplicates = _utk_unique(records)
    if duplicates:
        log.warning("%s: %d file(s) are further copies of a face already found (same age, gender, race and date; "
                    "e.g. %s, %s); each face is counted once", spec, len(duplicates), duplicates[0]["file"],
                    duplicates[0]["reason"])
        skipped.extend(duplicates)
    if not records:
        raise DataError(MSG_EMPTY.format(spec=spec))
    table = _finish_table(pd.DataFrame.from_records(records))
    table["age_years"] = table["age_years"].astype("int64")
    _add_race_gender(table)
    duplicate_files = {d["file"] for d in duplicates}
    fingerprint = _digest("utkface", split, _image_list_digest(root, [f for f in found if f not in duplicate_files]))
    return FaceDataset(
        spec=spec, kind="utkface", root=root, split=split, table=table, fingerprint=fingerprint,
        skipped=skipped, attribute_columns=_attribute_columns(table),
    )


# --------------------------------------------------------------------------- csv


def _load_csv(spec: str, path: Path, split: str, image_root, image_column: str | None) -> FaceDataset:
    if not path.is_file():
        if not path.parent.is_dir():
            raise DataError(MSG_NO_FOLDER.format(path=path.parent))
        raise DataError(f"label file {path} does not exist")
    root = Path(image_root).expanduser() if image_root is not None else path.parent
    if not root.is_dir():
        raise DataError(MSG_NO_FOLDER.format(path=root))
    table = _read_csv(path)
    if image_column is not None:
        if image_column not in table.columns:
            raise DataError(
                MSG_MISSING_COLUMNS.format(path=path, missing=image_column, found=", ".join(table.columns))
            )
        column = image_column
    else:
        column = next((c for c in CSV_IMAGE_COLUMNS if c in table.columns), None)
        if column is None:
            raise DataError(
                MSG_NO_IMAGE_COLUMN.format(path=path, looked=", ".join(CSV_IMAGE_COLUMNS), found=", ".join(table.columns))
            )
    if column != "file":
        if "file" in table.columns:
            raise DataError(f"CSV {path}: image column is {column!r} but a different column is named 'file'")
        table = table.rename(columns={column: "file"})
    if len(table) == 0:
        raise DataError(MSG_EMPTY.format(spec=spec))
    _check_files(table["file"], path)
    table = _finish_table(table)
    extra = tuple(c for c in table.columns if c != "file")
    _add_race_gender(table)
    fingerprint = _digest("csv", split, path.read_bytes(), _image_list_digest(root, table["file"]))
    return FaceDataset(
        spec=spec, kind="csv", root=root, split=split, table=table, fingerprint=fingerprint,
        attribute_columns=_attribute_columns(table, extra),
    )


# --------------------------------------------------------------------------- hugging face


def _import_datasets(spec: str):
    try:
        import datasets
    except ImportError as err:
        missing = getattr(err, "name", None) or "datasets"
        problem = "not installed" if missing == "datasets" else f"it cannot be imported: {str(err).splitlines()[0]}"
        raise DataError(MSG_NEEDS_DATASETS.format(spec=spec, problem=problem)[:600]) from None
    return datasets


def _load_hf(spec: str, where: str, split: str, config: str | None, offline: bool | None) -> FaceDataset:
    import pandas as pd

    datasets = _import_datasets(spec)
    if config is None and where == DEFAULT_HF_DATASET:
        config = DEFAULT_HF_CONFIG
    local = Path(where).expanduser()
    if local.exists():
        if _is_saved_dataset(local):
            ds = _hf_from_disk(spec, local, split)
            source = f"local:{local.resolve()}"
        else:
            ds, source = _hf_from_repo_folder(spec, local, config, split)
    else:
        if where.startswith((".", "/", "~")):
            raise DataError(MSG_NO_FOLDER.format(path=local))
        with hub_session(offline) as is_offline:
            ds, source = _hf_from_hub(spec, where, config, split, is_offline)

    features = ds.features
    image_cols = [name for name, feat in features.items() if isinstance(feat, datasets.Image)]
    if not image_cols:
        raise DataError(f"dataset {spec!r} has no image column; found: {', '.join(features)}")
    image_col = image_cols[0]
    label_cols = [c for c in features if c not in image_cols]
    plain = ds.select_columns(label_cols).with_format("arrow")[:]
    table = pd.DataFrame(index=pd.RangeIndex(len(ds)))
    for name in label_cols:
        values = plain.column(name).to_pylist()
        feat = features[name]
        if isinstance(feat, datasets.ClassLabel):
            # By name: the Hub copy of FairFace numbers races differently from the CSVs.
            values = [feat.int2str(v) if v is not None and v >= 0 else None for v in values]
        table[name] = values
    if "file" not in table.columns:
        table.insert(0, "file", [f"{split}/{i}" for i in range(len(ds))])
    else:
        table = table[["file"] + [c for c in table.columns if c != "file"]]
    if len(table) == 0:
        raise DataError(MSG_EMPTY.format(spec=spec))
    table = _finish_table(table)
    for name in ("race", "gender", "age"):
        if name in table.columns:
            table[name] = table[name].astype(str)
    _add_race_gender(table)
    label_bytes = table.to_csv(index=False).encode("utf-8")
    fingerprint = _digest("hf", source, split, getattr(ds, "_fingerprint", "") or "", label_bytes)
    extra = tuple(c for c in label_cols if c not in ("file", "service_test"))
    # Images are decoded by load_image (with the size limit), not by datasets.
    ds = ds.cast_column(image_col, datasets.Image(decode=False))
    log.info("loaded %s split %s: %d images", spec, split, len(table))
    return FaceDataset(
        spec=spec, kind="hf", root=None, split=split, table=table, fingerprint=fingerprint,
        attribute_columns=_attribute_columns(table, extra), _hf=ds, _hf_image_column=image_col,
    )


def _is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` was written by ``save_to_disk`` (as opposed to a copy of a dataset repository)."""
    return (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()


def _hf_from_disk(spec: str, local: Path, split: str):
    import datasets

    try:
        obj = datasets.load_from_disk(str(local))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise DataError(f"cannot read saved dataset {local}: {str(err).splitlines()[0]}") from None
    if isinstance(obj, datasets.DatasetDict):
        if split not in obj:
            raise UsageError(
                MSG_UNKNOWN_SPLIT.format(split=split, spec=spec, hint=did_you_mean(split, obj), splits=", ".join(obj))
            )
        obj = obj[split]
    return obj


def _split_files(spec: str, builder, split: str) -> list[str] | None:
    """The data files of one split as the dataset's card (or its folder layout) assigns them; None when
    the builder does not list files (then the whole dataset has to be prepared the library's way)."""
    files = getattr(builder.config, "data_files", None)
    if not files:
        return None
    if split not in files:
        raise UsageError(MSG_UNKNOWN_SPLIT.format(split=split, spec=spec, hint=did_you_mean(split, list(files)),
                                                  splits=", ".join(files)))
    return [str(f) for f in files[split]]


def _builder_module(builder) -> str | None:
    """The packaged ``datasets`` module that reads the builder's files (``parquet``, ``csv``, ...), or None."""
    from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES

    name = type(builder).__module__.split(".")[-1]
    return name if name in _PACKAGED_DATASETS_MODULES else None


def _load_files(module: str, files: list[str], split: str):
    import datasets

    return datasets.load_dataset(module, data_files={split: files}, split=split)


def _hf_from_repo_folder(spec: str, folder: Path, config: str | None, split: str):
    """A local copy of a dataset repository (its card and data files): load the split's files only."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(str(folder), config)
        files = _split_files(spec, builder, split)
        module = _builder_module(builder)
        if files is None or module is None:
            return datasets.load_dataset(str(folder), config, split=split), f"folder:{folder.resolve()}:{config}"
        ds = _load_files(module, files, split)
    except ClipprobeError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means "cannot be read"; say which and why
        raise DataError(f"cannot read dataset folder {folder} (config {config!r}, split {split!r}): "
                        f"{type(err).__name__}: {_first_line(err)}") from None
    listing = "".join(f"{Path(f).resolve()}\t{_size(f)}\n" for f in files)
    return ds, f"folder:{folder.resolve()}:{config}:{hashlib.sha256(listing.encode()).hexdigest()}"


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return -1


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return (lines[0] if lines else "")[:300]


def _split_record_path(name: str, config: str | None, split: str) -> Path:
    from clipprobe._io import default_cache_dir

    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{name}--{config or 'default'}--{split}")
    return default_cache_dir() / "hf-datasets" / f"{safe}.json"


def _parse_hub_url(url: str) -> tuple[str, str | None, str]:
    """``hf://datasets/ORG/NAME@REVISION/PATH`` -> (repo id, revision, path in the repository)."""
    from urllib.parse import unquote

    rest = url[len("hf://datasets/"):]
    org, name_rev, *path = rest.split("/")
    name, _, revision = name_rev.partition("@")
    return f"{org}/{name}", unquote(revision) or None, "/".join(path)


def _hub_download(repo_id: str, path: str, revision: str | None, offline: bool) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, path, repo_type="dataset", revision=revision, local_files_only=offline)


def _hf_from_hub(spec: str, name: str, config: str | None, split: str, offline: bool):
    """Download (or find in the Hugging Face cache) the files of one split and load them."""
    import datasets

    record_path = _split_record_path(name, config, split)
    try:
        if offline:
            record = _read_split_record(record_path)
            if record is None:
                # Nothing of ours remembered: whatever the datasets library itself has cached.
                return datasets.load_dataset(name, config, split=split), f"hub:{name}:{config}"
        else:
            builder = datasets.load_dataset_builder(name, config)
            urls = _split_files(spec, builder, split)
            module = _builder_module(builder)
            if urls is None or module is None or not all(u.startswith("hf://datasets/") for u in urls):
                return datasets.load_dataset(name, config, split=split), f"hub:{name}:{config}"
            record = {"name": name, "config": config, "split": split, "module": module,
                      "files": [dict(zip(("repo_id", "revision", "path"), _parse_hub_url(u))) for u in urls]}
        local = [_hub_download(f["repo_id"], f["path"], f["revision"], offline) for f in record["files"]]
        ds = _load_files(record["module"], local, split)
    except ClipprobeError:
        raise
    except Exception as err:  # noqa: BLE001 - any failure here means "not available"; say how to fix it
        why = " offline" if offline else ""
        raise DataError(
            MSG_HF_UNAVAILABLE.format(
                name=name, config=config, split=split, why=why,
                reason=f"{type(err).__name__}: {_first_line(err)}"[:300],
            )
        ) from None
    if not offline:
        from clipprobe._io import WriteError, write_json

        try:
            write_json(record_path, record)
        except WriteError as err:
            log.warning("could not remember which files hold %s %s (%s); an offline run will look in the "
                        "datasets cache instead", name, split, err)
    revisions = sorted({f["revision"] or "" for f in record["files"]})
    paths = [f["path"] for f in record["files"]]
    return ds, f"hub:{name}@{','.join(revisions)}:{config}:{json.dumps(paths)}"


def _read_split_record(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or not files or not isinstance(record.get("module"), str):
        return None
    return record
