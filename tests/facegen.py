"""Generate small face-dataset look-alikes in a folder, for tests and benchmarks.

The images are random-noise pictures (distinct per row, fixed by a seed), not
faces: what is tested is the plumbing (layouts, labels, paths, decoding,
caching), which does not care what the pixels show. Each writer returns the
path to pass to ``clipprobe.faces.load_dataset`` and leaves ground truth that a
test can compare against (the label CSV it wrote, or the returned records).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

FAIRFACE_RACES = ("White", "Black", "Latino_Hispanic", "East Asian", "Southeast Asian", "Indian", "Middle Eastern")
FAIRFACE_GENDERS = ("Male", "Female")
FAIRFACE_AGES = ("0-2", "3-9", "10-19", "20-29", "30-39", "40-49", "50-59", "60-69", "more than 70")
# The Hugging Face copy's ClassLabel order (HuggingFaceM4/FairFace), deliberately unlike the list above.
HF_RACE_NAMES = ("East Asian", "Indian", "Black", "White", "Middle Eastern", "Latino_Hispanic", "Southeast Asian")

CORRUPT_BYTES = b"\xff\xd8\xff\xe0 this is not really a JPEG \x00\x01\x02"


def make_image(path: str | Path, *, size: int | tuple[int, int] = 40, seed: int = 0, quality: int = 90) -> Path:
    """Write a random RGB image (JPEG or PNG, from the suffix) and return its path."""
    import numpy as np
    from PIL import Image

    w, h = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    # Smooth colour blocks plus noise: compresses like a photo rather than pure noise.
    base = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    img = Image.fromarray(base).resize((w, h), Image.BILINEAR)
    arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 21, size=(h, w, 3))
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, format="JPEG", quality=quality)
    else:
        img.save(path, format="PNG")
    return path


def fairface_labels(n: int, seed: int = 0) -> list[dict]:
    """``n`` label rows cycling through races and genders, with seeded ages."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        rows.append({
            "race": FAIRFACE_RACES[i % len(FAIRFACE_RACES)],
            "gender": FAIRFACE_GENDERS[(i // len(FAIRFACE_RACES)) % 2],
            "age": FAIRFACE_AGES[int(rng.integers(0, len(FAIRFACE_AGES)))],
            "service_test": "True" if i % 3 == 0 else "False",
        })
    return rows


def write_fairface(
    root: str | Path,
    n: int = 24,
    *,
    split: str = "validation",
    size: int = 40,
    corrupt: tuple[int, ...] = (),
    missing: tuple[int, ...] = (),
    seed: int = 0,
    suffix: str = ".jpg",
    columns: tuple[str, ...] = ("file", "age", "gender", "race", "service_test"),
) -> Path:
    """Write a FairFace-layout dataset: ``root/fairface_label_val.csv`` + ``root/val/1.jpg``...

    Rows listed in ``corrupt`` get a file that is not a decodable image; rows in
    ``missing`` are listed in the CSV but have no file. ``columns`` picks (and
    orders) the CSV columns, to make label files with missing columns.
    """
    root = Path(root)
    folder, label = ("val", "fairface_label_val.csv") if split == "validation" else ("train", "fairface_label_train.csv")
    rows = []
    for i, labels in enumerate(fairface_labels(n, seed)):
        rel = f"{folder}/{i + 1}{suffix}"
        if i in corrupt:
            (root / folder).mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(CORRUPT_BYTES)
        elif i not in missing:
            make_image(root / rel, size=size, seed=seed * 100003 + i)
        rows.append({"file": rel, **labels})
    root.mkdir(parents=True, exist_ok=True)
    write_label_csv(root / label, rows, columns)
    return root


def write_label_csv(path: str | Path, rows: list[dict], columns: tuple[str, ...] | None = None) -> Path:
    path = Path(path)
    columns = tuple(columns or rows[0].keys())
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_utkface(
    directory: str | Path,
    records: list[tuple[int, int, int]] | None = None,
    *,
    malformed: tuple[str, ...] = (),
    size: int = 40,
    seed: int = 0,
) -> tuple[Path, list[str]]:
    """Write UTKFace-named images ``age_gender_race_date.jpg.chip.jpg`` plus ``malformed`` names.

    Returns ``(directory, good_names)`` in the order written.
    """
    directory = Path(directory)
    if records is None:
        records = [(1 + (7 * i) % 90, i % 2, i % 5) for i in range(12)]
    names = []
    for i, (age, gender, race) in enumerate(records):
        name = f"{age}_{gender}_{race}_2017010{i % 10}1{i:05d}.jpg.chip.jpg"
        make_image(directory / name, size=size, seed=seed * 7919 + i)
        names.append(name)
    for j, name in enumerate(malformed):
        make_image(directory / name, size=size, seed=seed * 7919 + 10_000 + j)
    return directory, names


def write_csv_dataset(
    directory: str | Path,
    n: int = 10,
    *,
    image_column: str = "path",
    image_dir: str = "imgs",
    extra: dict[str, list] | None = None,
    size: int = 32,
    seed: int = 0,
    suffix: str = ".png",
) -> Path:
    """Write ``directory/labels.csv`` with an image column and race/gender/skin columns."""
    directory = Path(directory)
    labels = fairface_labels(n, seed)
    rows = []
    for i in range(n):
        rel = f"{image_dir}/img_{i:03d}{suffix}"
        make_image(directory / rel, size=size, seed=seed * 31 + i)
        row = {image_column: rel, "race": labels[i]["race"], "gender": labels[i]["gender"],
               "skin": ("light", "dark")[i % 2]}
        for key, values in (extra or {}).items():
            row[key] = values[i]
        rows.append(row)
    return write_label_csv(directory / "labels.csv", rows)


def write_hf_fairface(path: str | Path, n: int = 14, *, split: str = "validation", size: int = 32, seed: int = 0):
    """Save a FairFace-like ``datasets.DatasetDict`` with ClassLabel features to ``path``.

    Race uses the Hub copy's ClassLabel order, so a loader that maps by integer
    id instead of by name gets the races wrong. Returns ``(path, rows)`` where
    ``rows`` are the label names per image.
    """
    import datasets
    from PIL import Image

    path = Path(path)
    rows = fairface_labels(n, seed)
    images = []
    for i in range(n):
        tmp = make_image(path.parent / f".hfgen_{i}.png", size=size, seed=seed * 17 + i)
        with Image.open(tmp) as im:
            images.append(im.copy())
        tmp.unlink()
    features = datasets.Features({
        "image": datasets.Image(),
        "age": datasets.ClassLabel(names=list(FAIRFACE_AGES)),
        "gender": datasets.ClassLabel(names=list(FAIRFACE_GENDERS)),
        "race": datasets.ClassLabel(names=list(HF_RACE_NAMES)),
        "service_test": datasets.Value("bool"),
    })
    data = {
        "image": images,
        "age": [FAIRFACE_AGES.index(r["age"]) for r in rows],
        "gender": [FAIRFACE_GENDERS.index(r["gender"]) for r in rows],
        "race": [HF_RACE_NAMES.index(r["race"]) for r in rows],
        "service_test": [r["service_test"] == "True" for r in rows],
    }
    ds = datasets.Dataset.from_dict(data, features=features)
    datasets.DatasetDict({split: ds}).save_to_disk(str(path))
    return path, rows


def describe(path: str | Path) -> str:
    """A one-line JSON summary of a generated folder (for debugging failing tests)."""
    path = Path(path)
    return json.dumps(sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())[:50])
