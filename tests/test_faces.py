"""Face-dataset loaders on generated data, including every kind of bad input."""

from __future__ import annotations

import csv
import shutil

import pytest

from clipprobe import faces
from clipprobe.errors import DataError, UsageError
from tests import facegen


def _read_rows(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------- fairface


def test_fairface_validation_matches_label_file(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=20)
    ds = faces.load_dataset(f"fairface:{root}")
    truth = _read_rows(root / "fairface_label_val.csv")
    assert ds.kind == "fairface" and ds.split == "validation" and len(ds) == 20
    assert list(ds.table.index) == list(range(20))
    assert list(ds.table["file"]) == [r["file"] for r in truth]
    for col in ("race", "gender", "age"):
        assert list(ds.table[col]) == [r[col] for r in truth]
    assert list(ds.table["race_gender"]) == [f"{r['race']}_{r['gender']}" for r in truth]
    assert ds.attributes() == ["race", "gender", "age", "race_gender"]
    img = ds.load_image(3)
    assert img.mode == "RGB" and img.size == (40, 40)


def test_fairface_val_alias_and_train_split(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=6)
    facegen.write_fairface(root, n=9, split="train", seed=1)
    val = faces.load_dataset(f"fairface:{root}", split="val")
    train = faces.load_dataset(f"fairface:{root}", split="train")
    assert len(val) == 6 and len(train) == 9
    assert train.table["file"].iat[0] == "train/1.jpg"
    assert val.fingerprint != train.fingerprint


def test_fingerprint_is_stable_and_tracks_labels_and_images(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=8)
    fp1 = faces.load_dataset(f"fairface:{root}").fingerprint
    assert faces.load_dataset(f"fairface:{root}").fingerprint == fp1
    # Moving the dataset keeps the fingerprint (it is about contents, not location).
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved)
    assert faces.load_dataset(f"fairface:{moved}").fingerprint == fp1
    # Changing one label changes it.
    label = moved / "fairface_label_val.csv"
    label.write_text(label.read_text().replace("val/2.jpg,", "val/2.jpg,x", 1))
    assert faces.load_dataset(f"fairface:{moved}").fingerprint != fp1
    # Replacing an image by one of another size changes it.
    facegen.make_image(root / "val" / "1.jpg", size=64, seed=99)
    assert faces.load_dataset(f"fairface:{root}").fingerprint != fp1


def test_images_key_is_where_the_images_are_and_which(tmp_path):
    """The embedding cache's key for a dataset: the folder and the image list, not the labels or sizes
    (contents are checked image by image: FaceDataset.content_digest)."""
    root = facegen.write_fairface(tmp_path / "ff", n=8)
    key = faces.load_dataset(f"fairface:{root}").images_key
    assert faces.load_dataset(f"fairface:{root}").images_key == key
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert faces.load_dataset(f"fairface:{copy}").fingerprint == faces.load_dataset(f"fairface:{root}").fingerprint
    assert faces.load_dataset(f"fairface:{copy}").images_key != key          # another folder, another entry
    label = root / "fairface_label_val.csv"
    label.write_text(label.read_text().replace("val/2.jpg,", "val/2.jpg,x", 1))
    assert faces.load_dataset(f"fairface:{root}").images_key == key          # labels do not change embeddings
    rows = _read_rows(label)
    facegen.write_label_csv(label, rows[:-1])
    assert faces.load_dataset(f"fairface:{root}").images_key != key          # another image list
    csv_a = faces.load_dataset(f"csv:{copy / 'fairface_label_val.csv'}", image_root=copy)
    csv_b = faces.load_dataset(f"csv:{copy / 'fairface_label_val.csv'}", image_root=root)
    assert csv_a.images_key != csv_b.images_key


def test_content_digest_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    root = facegen.write_fairface(tmp_path / "ff", n=5, missing=(3,), corrupt=(1,))
    ds = faces.load_dataset(f"fairface:{root}")
    for i, name in enumerate(ds.table["file"]):
        path = root / name
        assert ds.content_digest(i) == (hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "")
    path, _ = facegen.write_hf_fairface(tmp_path / "hf", n=4)
    hf = faces.load_dataset(f"hf:{path}")
    digests = [hf.content_digest(i) for i in range(4)]
    assert all(len(d) == 64 for d in digests) and len(set(digests)) == 4
    raw = hf._hf[2][hf._hf_image_column]
    expected = raw["bytes"] if raw.get("bytes") is not None else open(raw["path"], "rb").read()
    assert digests[2] == hashlib.sha256(expected).hexdigest()


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match=r"dataset folder .*nope does not exist"):
        faces.load_dataset(f"fairface:{tmp_path / 'nope'}")


def test_missing_label_file(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=3)
    with pytest.raises(DataError, match=r"fairface_label_train\.csv for split 'train' does not exist"):
        faces.load_dataset(f"fairface:{root}", split="train")


def test_label_file_without_expected_columns(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=3, columns=("file", "age", "sex", "ethnicity"))
    with pytest.raises(DataError) as err:
        faces.load_dataset(f"fairface:{root}")
    msg = str(err.value)
    assert "fairface_label_val.csv" in msg
    assert "lacks column(s) gender, race" in msg
    assert "found: file, age, sex, ethnicity" in msg


@pytest.mark.parametrize("bad", ["../outside.jpg", "val/../../outside.jpg", "/etc/passwd", "C:/x.jpg"])
def test_path_escaping_root_is_rejected_with_line(tmp_path, bad):
    root = facegen.write_fairface(tmp_path / "ff", n=4)
    rows = _read_rows(root / "fairface_label_val.csv")
    rows[2]["file"] = bad
    facegen.write_label_csv(root / "fairface_label_val.csv", rows)
    with pytest.raises(DataError) as err:
        faces.load_dataset(f"fairface:{root}")
    assert str(err.value) == faces.MSG_ESCAPES.format(row=4, path=root / "fairface_label_val.csv", file=bad)


def test_dotdot_inside_root_is_fine(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=3)
    rows = _read_rows(root / "fairface_label_val.csv")
    rows[0]["file"] = "val/../val/1.jpg"
    facegen.write_label_csv(root / "fairface_label_val.csv", rows)
    ds = faces.load_dataset(f"fairface:{root}")
    assert ds.table["file"].iat[0] == "val/../val/1.jpg"  # kept exactly as written
    assert ds.load_image(0).size == (40, 40)


def test_empty_image_path(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=3)
    rows = _read_rows(root / "fairface_label_val.csv")
    rows[1]["file"] = ""
    facegen.write_label_csv(root / "fairface_label_val.csv", rows)
    with pytest.raises(DataError, match=r"line 3 of .*: empty image path"):
        faces.load_dataset(f"fairface:{root}")


def test_corrupt_and_missing_images_fail_on_load_only(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=5, corrupt=(1,), missing=(3,))
    ds = faces.load_dataset(f"fairface:{root}")
    assert len(ds) == 5  # listed rows stay; decoding is where they fail
    ds.load_image(0)
    with pytest.raises(OSError):
        ds.load_image(1)
    with pytest.raises(FileNotFoundError):
        ds.load_image(3)


# --------------------------------------------------------------------------- specs


def test_unknown_scheme_suggests(tmp_path):
    with pytest.raises(UsageError) as err:
        faces.load_dataset(f"fairfce:{tmp_path}")
    msg = str(err.value)
    assert "unknown dataset scheme 'fairfce'" in msg and "did you mean 'fairface'" in msg
    assert "valid: fairface, hf, utkface, csv" in msg
    assert err.value.exit_code == 2


def test_spec_without_scheme():
    with pytest.raises(UsageError, match="must look like SCHEME:WHERE"):
        faces.load_dataset("just-a-folder")


def test_unknown_split(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=2)
    with pytest.raises(UsageError, match=r"unknown split 'tset'.*valid: validation, val, valid, train"):
        faces.load_dataset(f"fairface:{root}", split="tset")


# --------------------------------------------------------------------------- utkface


def test_utkface_names_parsed_binned_and_malformed_skipped(tmp_path):
    records = [(1, 0, 0), (2, 1, 1), (3, 0, 2), (9, 1, 3), (10, 0, 4), (29, 1, 0), (69, 0, 1), (70, 1, 2), (116, 0, 3)]
    malformed = ("39_1_20170116174525125.jpg.chip.jpg", "25_2_0_20170116174525125.jpg", "x_0_0_1.jpg",
                 "30_0_7_20170116174525125.jpg")
    d, names = facegen.write_utkface(tmp_path / "utk", records, malformed=malformed)
    (d / "README.txt").write_text("not an image")
    ds = faces.load_dataset(f"utkface:{d}")
    assert len(ds) == len(records)
    by_file = ds.table.set_index("file")
    expected_age = {1: "0-2", 2: "0-2", 3: "3-9", 9: "3-9", 10: "10-19", 29: "20-29", 69: "60-69",
                    70: "more than 70", 116: "more than 70"}
    for name, (age, gender, race) in zip(names, records):
        row = by_file.loc[name]
        assert row["age_years"] == age
        assert row["age"] == expected_age[age]
        assert row["gender"] == ("Male", "Female")[gender]
        assert row["race"] == ("White", "Black", "Asian", "Indian", "Others")[race]
        assert row["race_gender"] == f"{row['race']}_{row['gender']}"
    assert sorted(s["file"] for s in ds.skipped) == sorted(malformed)
    reasons = {s["file"]: s["reason"] for s in ds.skipped}
    assert reasons["25_2_0_20170116174525125.jpg"] == "gender code 2 is not 0 or 1"
    assert reasons["30_0_7_20170116174525125.jpg"] == "race code 7 is not 0-4"
    assert ds.attributes() == ["race", "gender", "age", "race_gender"]


def test_utkface_age_groups_against_fairface_bounds():
    bounds = [(0, 2), (3, 9), (10, 19), (20, 29), (30, 39), (40, 49), (50, 59), (60, 69), (70, 200)]
    for age in range(0, 120):
        (k,) = [i for i, (lo, hi) in enumerate(bounds) if lo <= age <= hi]
        assert faces.utk_age_group(age) == faces.FAIRFACE_AGE_GROUPS[k]


def test_utkface_missing_or_empty(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        faces.load_dataset(f"utkface:{tmp_path / 'none'}")
    facegen.write_utkface(tmp_path / "bad", [], malformed=("nope.jpg",))
    with pytest.raises(DataError, match="has no images"):
        faces.load_dataset(f"utkface:{tmp_path / 'bad'}")


# --------------------------------------------------------------------------- csv


def test_csv_with_path_column_and_extra_attribute(tmp_path):
    label = facegen.write_csv_dataset(tmp_path / "c", n=6, image_column="path")
    ds = faces.load_dataset(f"csv:{label}")
    truth = _read_rows(label)
    assert list(ds.table["file"]) == [r["path"] for r in truth]
    assert list(ds.table["skin"]) == [r["skin"] for r in truth]
    assert ds.attributes() == ["race", "gender", "race_gender", "skin"]
    assert ds.root == label.parent
    assert ds.load_image(5).size == (32, 32)


def test_csv_image_root_and_explicit_column(tmp_path):
    label = facegen.write_csv_dataset(tmp_path / "c", n=4, image_column="picture", image_dir=".")
    moved = tmp_path / "images"
    moved.mkdir()
    for p in (tmp_path / "c").glob("*.png"):
        shutil.move(str(p), moved / p.name)
    with pytest.raises(DataError, match="no image-path column .*found: picture, race, gender, skin"):
        faces.load_dataset(f"csv:{label}")
    ds = faces.load_dataset(f"csv:{label}", image_column="picture", image_root=str(moved))
    assert ds.root == moved and ds.load_image(0).mode == "RGB"


def test_csv_escaping_path(tmp_path):
    label = facegen.write_csv_dataset(tmp_path / "c", n=3, image_column="image")
    rows = _read_rows(label)
    rows[0]["image"] = "../../secret.png"
    facegen.write_label_csv(label, rows)
    with pytest.raises(DataError, match=r"line 2 of .*labels\.csv: image path '\.\./\.\./secret\.png' escapes"):
        faces.load_dataset(f"csv:{label}")


def test_csv_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        faces.load_dataset(f"csv:{tmp_path / 'labels.csv'}")


# --------------------------------------------------------------------------- hugging face


def test_hf_local_saved_dataset_maps_labels_by_name(tmp_path):
    path, rows = facegen.write_hf_fairface(tmp_path / "hf", n=14)
    ds = faces.load_dataset(f"hf:{path}")
    assert ds.kind == "hf" and len(ds) == 14
    assert list(ds.table["race"]) == [r["race"] for r in rows]
    assert list(ds.table["gender"]) == [r["gender"] for r in rows]
    assert list(ds.table["age"]) == [r["age"] for r in rows]
    assert list(ds.table["race_gender"]) == [f"{r['race']}_{r['gender']}" for r in rows]
    # The integer ids differ from the names' position in the CSV order for most races,
    # so mapping by id would have failed the comparison above.
    mismatched = sum(facegen.HF_RACE_NAMES[i] != facegen.FAIRFACE_RACES[i] for i in range(7))
    assert mismatched >= 5
    assert ds.table["file"].iat[0] == "validation/0"
    img = ds.load_image(2)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert ds.attributes() == ["race", "gender", "age", "race_gender"]
    assert faces.load_dataset(f"hf:{path}").fingerprint == ds.fingerprint


def test_hf_local_unknown_split(tmp_path):
    path, _ = facegen.write_hf_fairface(tmp_path / "hf", n=3)
    with pytest.raises(UsageError, match="unknown split 'train'"):
        faces.load_dataset(f"hf:{path}", split="train")


def test_default_dataset_offline_says_how_to_use_local_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-home" / "datasets"))
    with pytest.raises(DataError) as err:
        faces.load_dataset(None, offline=True)
    msg = str(err.value)
    assert "HuggingFaceM4/FairFace" in msg and "offline" in msg
    assert "the dataset spec fairface:ROOT" in msg
    assert "\n" not in msg


# --------------------------------------------------------------------------- duplicate rows (issue 12.3)


@pytest.mark.parametrize("scheme", ["fairface", "csv"])
def test_duplicate_image_rows_are_refused_with_lines(tmp_path, scheme):
    root = facegen.write_fairface(tmp_path / "ff", n=6)
    label = root / "fairface_label_val.csv"
    rows = _read_rows(label)
    rows.insert(3, dict(rows[1], file="./" + rows[1]["file"]))   # the same image, spelled differently
    rows.append(dict(rows[1], race="White"))                       # ... and again, with other labels
    facegen.write_label_csv(label, rows, columns=("file", "age", "gender", "race", "service_test"))
    spec = f"fairface:{root}" if scheme == "fairface" else f"csv:{label}"
    with pytest.raises(DataError) as info:
        faces.load_dataset(spec)
    assert str(info.value) == faces.MSG_DUPLICATE_FILE.format(path=label, file=rows[1]["file"], n=3,
                                                              lines="3, 5, 9", more="")


def test_several_duplicated_images_are_counted(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=6)
    label = root / "fairface_label_val.csv"
    rows = _read_rows(label)
    rows += [rows[0], rows[4], rows[4]]
    facegen.write_label_csv(label, rows, columns=("file", "age", "gender", "race", "service_test"))
    with pytest.raises(DataError, match=r"image 'val/1.jpg' is listed 2 times \(lines 2, 8\); list each image "
                                        r"once \(1 other image\(s\) are listed more than once too\)$"):
        faces.load_dataset(f"fairface:{root}")


# --------------------------------------------------------------------------- UTKFace copies (issue 11.8)


def test_utkface_copies_in_several_folders_are_one_face_each(tmp_path):
    _, names = facegen.write_utkface(tmp_path / "utk" / "UTKFace")            # aligned crops
    facegen.write_utkface(tmp_path / "utk" / "crop_part1", seed=0)              # the same crops again
    wild = tmp_path / "utk" / "part1"
    for i, name in enumerate(names[:5]):                                        # in-the-wild originals
        facegen.make_image(wild / name.replace(".jpg.chip.jpg", ".jpg"), size=60, seed=100 + i)
    ds = faces.load_dataset(f"utkface:{tmp_path / 'utk'}")
    assert len(ds) == len(names)
    assert sorted(ds.table["file"]) == sorted(f"UTKFace/{n}" for n in names)   # the crops are kept
    dups = [s for s in ds.skipped if s["reason"].startswith("duplicate of ")]
    assert len(dups) == len(names) + 5
    by_file = {s["file"]: s["reason"] for s in dups}
    assert by_file[f"part1/{names[0].replace('.jpg.chip.jpg', '.jpg')}"] == faces.MSG_UTK_DUPLICATE.format(
        kept=f"UTKFace/{names[0]}")
    assert by_file[f"crop_part1/{names[2]}"] == faces.MSG_UTK_DUPLICATE.format(kept=f"UTKFace/{names[2]}")
    # Only the in-the-wild copy of a face: it is kept.
    only_wild = tmp_path / "wild"
    facegen.make_image(only_wild / "30_1_2_20170109150557335.jpg", seed=1)
    facegen.make_image(only_wild / "a" / "30_1_2_20170109150557335.jpg", seed=1)
    ds2 = faces.load_dataset(f"utkface:{only_wild}")
    assert list(ds2.table["file"]) == ["30_1_2_20170109150557335.jpg"]
    assert ds2.skipped == [{"file": "a/30_1_2_20170109150557335.jpg",
                            "reason": "duplicate of 30_1_2_20170109150557335.jpg (same age, gender, race and date)"}]


def test_utkface_without_copies_keeps_its_fingerprint(tmp_path):
    d, names = facegen.write_utkface(tmp_path / "utk")
    ds = faces.load_dataset(f"utkface:{d}")
    assert not ds.skipped
    assert ds.fingerprint == faces._digest("utkface", "validation", faces._image_list_digest(d, sorted(names)))


def test_groups_without_lexicon_terms_are_named():
    from clipprobe.resources.lexicon import get_lexicon

    lexicon = get_lexicon("fairface")
    present = {"race": list(faces.UTK_RACES), "gender": list(faces.UTK_GENDERS), "skin": ["light", "dark"]}
    missing = faces.groups_without_terms(present, lexicon.attributes)
    assert missing == {"race": ["Asian", "Others"], "skin": ["dark", "light"]}
    assert faces.describe_groups_without_terms(missing)[0] == (
        "the lexicon has no terms for race group(s) 'Asian', 'Others': they cannot be counted in captions and are "
        "left out of the cross-check")
    assert faces.groups_without_terms({"race": list(faces.FAIRFACE_RACES)}, lexicon.attributes) == {}


# --------------------------------------------------------------------------- huge images (issue 12.10)


def _bomb_jpeg(path, width=12000, height=12000):
    """A small JPEG whose header claims ``width`` x ``height`` (what a decompression bomb looks like)."""
    facegen.make_image(path, size=16)
    data = bytearray(path.read_bytes())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("side", [12000, 20000])
def test_huge_image_is_refused_before_decoding_and_without_a_warning(tmp_path, side):
    import warnings

    root = facegen.write_fairface(tmp_path / "ff", n=4)
    _bomb_jpeg(root / "val" / "2.jpg", side, side)
    ds = faces.load_dataset(f"fairface:{root}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError) as info:
            ds.load_image(1)
        assert ds.load_image(0).size == (40, 40)
    if side == 12000:
        assert str(info.value) == faces.MSG_IMAGE_TOO_LARGE.format(width=side, height=side,
                                                                   limit=faces.MAX_IMAGE_PIXELS)
    else:   # beyond twice PIL's own limit: PIL refuses it itself, we say the same thing
        assert str(info.value) == (f"image has {side * side} pixels, more than the limit of "
                                   f"{faces.MAX_IMAGE_PIXELS} pixels; not decoded")


# --------------------------------------------------------------------------- datasets missing (issue 11.2)


def test_missing_datasets_package_is_a_one_line_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)   # what an environment without it gives
    with pytest.raises(DataError) as info:
        faces.load_dataset(None, offline=True)
    assert str(info.value) == faces.MSG_NEEDS_DATASETS.format(spec="hf:HuggingFaceM4/FairFace",
                                                              problem="not installed")
    assert "pip install 'clipprobe[hf]'" in str(info.value)


def test_missing_datasets_package_on_the_command_line(monkeypatch, tmp_path):
    import sys

    from click.testing import CliRunner

    from clipprobe.cli import cli

    monkeypatch.setitem(sys.modules, "datasets", None)
    result = CliRunner().invoke(cli, ["retrieve", "--word", "terrorist", "--offline", "--cache-dir",
                                      str(tmp_path / "c")])
    assert result.exit_code == 1, result.output
    assert result.output.strip().splitlines() == [
        "Error: " + faces.MSG_NEEDS_DATASETS.format(spec="hf:HuggingFaceM4/FairFace", problem="not installed")]


# --------------------------------------------------------------------------- one split only (issue 11.10)


def _write_split(path, n, seed):
    import datasets
    from PIL import Image

    rows = facegen.fairface_labels(n, seed)
    images = []
    for i in range(n):
        tmp = facegen.make_image(path.parent / f".gen_{seed}_{i}.png", size=24, seed=seed * 100 + i)
        with Image.open(tmp) as im:
            images.append(im.copy())
        tmp.unlink()
    features = datasets.Features({
        "image": datasets.Image(),
        "age": datasets.ClassLabel(names=list(facegen.FAIRFACE_AGES)),
        "gender": datasets.ClassLabel(names=list(facegen.FAIRFACE_GENDERS)),
        "race": datasets.ClassLabel(names=list(facegen.HF_RACE_NAMES)),
        "service_test": datasets.Value("bool"),
    })
    data = {"image": images,
            "age": [facegen.FAIRFACE_AGES.index(r["age"]) for r in rows],
            "gender": [facegen.FAIRFACE_GENDERS.index(r["gender"]) for r in rows],
            "race": [facegen.HF_RACE_NAMES.index(r["race"]) for r in rows],
            "service_test": [r["service_test"] == "True" for r in rows]}
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(data, features=features).to_parquet(str(path))
    return rows


CARD = """---
configs:
- config_name: '0.25'
  data_files:
  - split: train
    path: 0.25/train-*
  - split: validation
    path: 0.25/validation-*
- config_name: '1.25'
  data_files:
  - split: train
    path: 1.25/train-*
  - split: validation
    path: 1.25/validation-*
---
# FairFace (a replica of the repository layout for tests)
"""


def _fairface_repo(root):
    """A copy of the FairFace dataset repository's layout: a card with configs 0.25 and 1.25, and parquet
    files per split. The train files are not parquet at all: reading them would fail."""
    root.mkdir(parents=True)
    (root / "README.md").write_text(CARD)
    truth = {}
    for config, seed in (("0.25", 1), ("1.25", 2)):
        truth[config] = _write_split(root / config / "validation-00000-of-00001.parquet", 9, seed)
        (root / config / "train-00000-of-00002.parquet").write_bytes(b"not a parquet file, never read")
        (root / config / "train-00001-of-00002.parquet").write_bytes(b"not a parquet file, never read")
    return truth


@pytest.fixture
def hf_caches(tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "clipprobe-cache"))
    return tmp_path


def test_repository_copy_loads_only_the_requested_split_and_config(tmp_path, hf_caches):
    truth = _fairface_repo(tmp_path / "FairFace")
    for config in ("0.25", "1.25"):
        ds = faces.load_dataset(f"hf:{tmp_path / 'FairFace'}", hf_config=config)
        assert len(ds) == 9
        assert list(ds.table["race"]) == [r["race"] for r in truth[config]]
        assert ds.load_image(0).size == (24, 24)
    assert faces.load_dataset(f"hf:{tmp_path / 'FairFace'}", hf_config="0.25").fingerprint != ds.fingerprint
    # The train files would have failed the validation load had they been read.
    with pytest.raises(DataError, match=r"^cannot read dataset folder .*FairFace \(config '0.25', split 'train'\): "):
        faces.load_dataset(f"hf:{tmp_path / 'FairFace'}", hf_config="0.25", split="train")


def test_hub_dataset_offline_reads_the_remembered_split_files_from_the_hub_cache(tmp_path, hf_caches):
    """The layout huggingface_hub keeps (snapshots/<revision>/<path>) and the record of which files hold
    the split: offline, exactly those files are loaded, and nothing else needs to be there."""
    import json

    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hf-hub" / "datasets--HuggingFaceM4--FairFace"
    path = "0.25/validation-00000-of-00001.parquet"
    truth = _write_split(repo / "snapshots" / sha / path, 7, 3)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    record = faces._split_record_path("HuggingFaceM4/FairFace", "0.25", "validation")
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"name": "HuggingFaceM4/FairFace", "config": "0.25", "split": "validation",
                                  "module": "parquet",
                                  "files": [{"repo_id": "HuggingFaceM4/FairFace", "revision": sha, "path": path}]}))
    ds = faces.load_dataset(None, offline=True)
    assert len(ds) == 7 and list(ds.table["race"]) == [r["race"] for r in truth]
    assert ds.load_image(6).size == (24, 24)
    # The 1.25 padding was never downloaded: a one-line error that says so.
    with pytest.raises(DataError, match=r"cannot load Hugging Face dataset 'HuggingFaceM4/FairFace' \(config "
                                        r"'1.25', split 'validation'\) offline"):
        faces.load_dataset(None, offline=True, hf_config="1.25")


def test_hub_urls_are_parsed_into_repo_revision_and_path():
    assert faces._parse_hub_url("hf://datasets/HuggingFaceM4/FairFace@abc123/0.25/validation-00000-of-00001.parquet") \
        == ("HuggingFaceM4/FairFace", "abc123", "0.25/validation-00000-of-00001.parquet")
    assert faces._parse_hub_url("hf://datasets/org/name@refs%2Fconvert%2Fparquet/a/b.parquet") \
        == ("org/name", "refs/convert/parquet", "a/b.parquet")
