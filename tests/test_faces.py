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
