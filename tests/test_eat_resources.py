"""Association-test suites and stimulus sets: the shipped data, the YAML forms, resolution, downloads, errors."""

from __future__ import annotations

import csv
import functools
import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest

from clipprobe.errors import ClipprobeError, DataError, UsageError
from clipprobe.resources import eat as res

ROOT = Path(__file__).resolve().parents[1]
STIMULI = ROOT / "stimuli"


def _png(path: Path, seed: int = 0, pad_to: int | None = None) -> Path:
    """A small PNG; with ``pad_to``, zero bytes after its end so the file has exactly that size."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    if pad_to is not None:
        data = path.read_bytes()
        assert len(data) <= pad_to
        path.write_bytes(data + b"\0" * (pad_to - len(data)))
    return path


def _write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ shipped suites


def test_shipped_suites_and_their_shape():
    assert {"ghate2025", "weat", "seat", "seat-nrc"} <= set(res.list_suites())
    g = res.get_suite("ghate2025")
    assert len(g.tests) == 26
    by_order = {o: [t for t in g.tests if t.order == o] for o in res.ORDERS}
    assert {o: len(v) for o, v in by_order.items()} == {"image": 5, "text": 8, "image-text": 5, "text-image": 8}
    unavailable = [(t.name, t.order) for t in g.tests if t.unavailable]
    assert unavailable == [("instrument-weapon", "image"), ("instrument-weapon", "image-text")]
    assert {t.family for t in g.tests} == {"Insect-Flower", "Instrument-Weapon", "Race", "Gender", "Age"}
    assert {t.name for t in g.tests if t.paper_sign == -1} == {"gender", "gender-names-weat11", "gender-terms-weat11b"}
    assert len(res.get_suite("weat").tests) == 10
    assert len(res.get_suite("seat").tests) == len(res.get_suite("seat-nrc").tests) == 8


def test_text_suites_resolve_to_the_reference_sizes():
    resolver = res.Resolver(offline=True)
    sizes = {t.name: {k: len(v) for k, v in t.sets.items()}
             for t in resolver.resolve(res.get_suite("seat-nrc").tests)}
    assert sizes["insect-flower-weat1"] == {"X": 350, "Y": 350, "A": 150, "B": 150}
    assert sizes["age-names-weat10"] == {"X": 64, "Y": 64, "A": 150, "B": 150}
    nrc = json.loads((STIMULI / "seat-nrc" / "nrc_vad_combinations.json").read_text())
    t1 = resolver.resolve(res.get_suite("seat-nrc").select(["insect-flower-weat1"]).tests)[0]
    assert list(t1.sets["A"].items) == nrc["pleasant_combinations"]
    seat = {t.name: {k: len(v) for k, v in t.sets.items()} for t in resolver.resolve(res.get_suite("seat").tests)}
    assert seat["insect-flower-weat1"] == {"X": 350, "Y": 350, "A": 215, "B": 250}
    weat = {t.name: t for t in resolver.resolve(res.get_suite("weat").tests)}
    wefe = json.loads((STIMULI / "wefe" / "WEAT.json").read_text())
    assert list(weat["weat1-flowers-insects"].sets["X"].items) == wefe["flowers"]
    assert list(weat["weat6-gender-career"].sets["A"].items) == wefe["career"]
    # the text tests of ghate2025 need no download and no OASIS
    text = resolver.resolve(res.get_suite("ghate2025").select(orders=["text"]).tests)
    assert len(text) == 8 and all(t.unavailable is None for t in text)


def test_sentences_without_a_seat_form_are_one_info_line(caplog):
    """The weat suite has some thirty sets of sentences without a SEAT form: one summary line at INFO, with
    the count and the first few; each set's own line at DEBUG only."""
    with caplog.at_level("DEBUG", logger="clipprobe"):
        res.Resolver(offline=True).resolve(res.get_suite("weat").tests, skip_missing=True)
    info = [r.getMessage() for r in caplog.records if r.levelname == "INFO" and "SEAT form" in r.getMessage()]
    debug = [r for r in caplog.records if r.levelname == "DEBUG" and "SEAT form" in r.getMessage()]
    assert len(info) == 1 and len(debug) > 3
    assert info[0].startswith(f"{len(debug)} stimulus set(s) have sentences without a SEAT form")
    assert info[0].endswith("; ...") and info[0].count("test '") == 3


def test_selection_and_unknown_names():
    g = res.get_suite("ghate2025")
    assert [t.order for t in g.select(["race"]).tests] == ["image", "image-text"]
    assert len(g.select(orders=["text", "text-image"]).tests) == 16
    with pytest.raises(ClipprobeError) as err:
        g.select(["insect-flowr"])
    msg = str(err.value)
    assert msg.startswith("unknown test 'insect-flowr' (did you mean 'insect-flower'") and "age-names-weat10" in msg
    assert "\n" not in msg
    with pytest.raises(UsageError, match="unknown order 'imag'"):
        g.select(orders=["imag"])
    with pytest.raises(ClipprobeError) as err:
        res.get_suite("ghate")
    assert "did you mean 'ghate2025'" in str(err.value) and "'weat'" in str(err.value)


def test_paper_signs_mark_the_gender_tests_only_and_keep_their_sets():
    g = res.get_suite("ghate2025")
    flipped = res.apply_paper_signs(g)
    marked = 0
    for before, after in zip(g.tests, flipped.tests):
        if before.paper_sign == -1:
            marked += 1
            # the sets stay: the permutation test keeps the direction the test defines (the paper flips d only)
            assert (after.X, after.Y, after.A, after.B) == (before.X, before.Y, before.A, before.B)
            assert after.reported_sign == -1 and res.PAPER_SIGN_NOTE in after.note
        else:
            assert after == before
    assert marked > 0


# ------------------------------------------------------------------ user files


def test_user_yaml_of_the_issue(tmp_path):
    for cat in ("flower", "insect"):
        for i in range(3):
            _png(tmp_path / "stimuli" / cat / f"{cat}{i}.png", seed=i + (10 if cat == "insect" else 0))
    path = _write_yaml(tmp_path / "my.yaml", """
tests:
  - name: flowers-insects
    X: {images: stimuli/flower}
    Y: {images: stimuli/insect}
    A: {texts: [This is the word love., This is the word happy.]}
    B: {words: [hate, ugly], templates: ["This is the word {word}."]}
""")
    suite = res.load_tests(path)
    assert suite.name == "my" and suite.tests[0].order == "image-text"
    t = res.Resolver().resolve(suite.tests)[0]
    assert t.sets["X"].items == tuple(str((tmp_path / "stimuli" / "flower" / f"flower{i}.png").resolve())
                                      for i in range(3))
    assert t.sets["B"].items == ("This is the word hate.", "This is the word ugly.")
    assert t.sets["X"].modality == "image" and t.sets["A"].modality == "text"


def test_other_set_forms(tmp_path):
    for i in range(4):
        _png(tmp_path / "pics" / f"x{i}.png", seed=i)
    others = [_png(tmp_path / "pics" / f"y{i}.png", seed=10 + i) for i in range(3)]
    with open(tmp_path / "pics" / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "note"])
        w.writerows([[p.name, "y"] for p in others])
    (tmp_path / "words.json").write_text(json.dumps({"good": ["joy", "love"], "bad": ["war", "evil"]}))
    path = _write_yaml(tmp_path / "sub" / "t.yaml", """
sets:
  good: {file: ../words.json, key: good, templates: ["a {word} day", "{word}"], label: Good}
tests:
  - name: forms
    order: image-text
    X: {images: ../pics/x*.png}
    Y: {images: ../pics/list.csv}
    A: {set: good}
    B: {file: ../words.json, key: bad}
  - name: shipped
    X: {file: "stimuli:wefe/WEAT.json", key: flowers}
    Y: {file: "stimuli:wefe/WEAT.json", key: insects}
    A: {words: [nice, fine]}
    B: {words: [bad, awful]}
""")
    t_forms, t_shipped = res.Resolver().resolve(res.load_tests(path).tests)
    assert len(t_forms.sets["X"]) == 4 and len(t_forms.sets["Y"]) == 3
    assert t_forms.sets["A"].items == ("a joy day", "joy", "a love day", "love") and t_forms.sets["A"].label == "Good"
    assert len(t_shipped.sets["X"]) == 25 and t_shipped.order == "text"


def test_face_dataset_selection(tmp_path):
    from facegen import write_fairface

    root = write_fairface(tmp_path / "ff", n=42)
    path = _write_yaml(tmp_path / "faces.yaml", """
tests:
  - name: faces
    X: {faces: "fairface:ff", where: {race: Black}}
    Y: {faces: "fairface:ff", where: {race: [White, Indian], gender: Female}}
    A: {texts: [a, b]}
    B: {texts: [c, d]}
  - name: sampled
    X: {faces: "fairface:ff", where: {gender: Male}, n: 5, seed: 1}
    Y: {faces: "fairface:ff", where: {gender: Female}, n: 5}
    A: {texts: [a, b]}
    B: {texts: [c, d]}
""")
    import pandas as pd

    labels = pd.read_csv(root / "fairface_label_val.csv")
    faces, sampled = res.Resolver().resolve(res.load_tests(path).tests)
    want_x = labels[labels.race == "Black"]["file"].tolist()
    want_y = labels[labels.race.isin(["White", "Indian"]) & (labels.gender == "Female")]["file"].tolist()
    assert list(faces.sets["X"].display) == want_x and list(faces.sets["Y"].display) == want_y
    assert all(Path(p).is_file() for p in faces.sets["X"].items)
    assert len(sampled.sets["X"]) == 5 and set(sampled.sets["X"].display) <= set(labels[labels.gender == "Male"].file)
    bad = _write_yaml(tmp_path / "bad.yaml", """
tests:
  - name: faces
    X: {faces: "fairface:ff", where: {rase: Black}}
    Y: {faces: "fairface:ff", where: {race: White}}
    A: {texts: [a, b]}
    B: {texts: [c, d]}
""")
    with pytest.raises(DataError, match=r"has no label column 'rase' \(did you mean 'race'"):
        res.Resolver().resolve(res.load_tests(bad).tests)


@pytest.mark.parametrize("text,message", [
    ("X: {texts: []}", "the set is empty"),
    ("X: {texts: [only]}", "1 stimulus/stimuli; an association test needs at least 2"),
    ("X: {texts: [same, other, same]}", "stimulus 'same' appears more than once"),
    ("X: {images: nowhere}\n    Y: {images: [a.png, b.png]}", "image folder"),
    ("X: {images: [a.png, b.png]}\n    Y: {images: [c.png, d.png]}", "a.png does not exist"),
    ("X: {file: missing.json, key: k}", "file"),
    ("X: {textz: [a, b]}", "a set needs exactly one of"),
    ("X: {texts: [a, b], colour: red}", "unknown key 'colour'"),
    ("X: {words: [a, b], templates: [no placeholder]}", "has no '{word}'"),
    ("X: {set: nothing}", "unknown set 'nothing'"),
    ("X: {images: [a.png, b.png]}", "must have the same modality"),
    ("X: {texts: [p, q]}\n    order: image", "does not match its sets"),
    ("X: {texts: [c, d]}", "stimulus 'c' is in both X and Y"),
])
def test_bad_sets_are_one_line_errors(tmp_path, text, message):
    y = "" if "Y:" in text else "\n    Y: {texts: [c, d]}"
    body = f"""tests:
  - name: bad
    {text}{y}
    A: {{texts: [e, f]}}
    B: {{texts: [g, h]}}
"""
    path = _write_yaml(tmp_path / "bad.yaml", body)
    with pytest.raises(ClipprobeError) as err:
        res.Resolver().resolve(res.load_tests(path).tests)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        res.load_tests(tmp_path / "absent.yaml")
    with pytest.raises(DataError, match="has no tests"):
        res.load_tests(_write_yaml(tmp_path / "empty.yaml", "tests: []\n"))
    with pytest.raises(DataError, match=r"unknown key 'test' \(did you mean 'tests'"):
        res.load_tests(_write_yaml(tmp_path / "typo.yaml", "test: []\n"))
    dup = "tests:\n" + "".join("  - {name: t, X: {texts: [a, b]}, Y: {texts: [c, d]}, A: {texts: [e, f]}, "
                               "B: {texts: [g, h]}}\n" for _ in range(2))
    with pytest.raises(DataError, match="appears twice"):
        res.load_tests(_write_yaml(tmp_path / "dup.yaml", dup))


# ------------------------------------------------------------------ iEAT images


def _ieat_repo(tmp_path: Path, categories=("age/young", "age/old")) -> tuple[Path, dict[str, int], Path]:
    """A local folder in the iEAT layout whose files are stand-ins of the manifest's exact sizes (zero-padded
    PNGs), and a manifest of those stand-ins (path, bytes, their SHA-256) for the tests that resolve them:
    the shipped manifest's hashes refuse them (test_padded_stand_ins_are_refused)."""
    sizes = {}
    with open(STIMULI / "ieat-manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            cat = "/".join(row["path"].split("/")[2:4])
            if cat in categories:
                sizes[row["path"]] = int(row["bytes"])
    repo = tmp_path / "ieat"
    rows = []
    for i, (rel, size) in enumerate(sorted(sizes.items())):
        rows.append((rel, size, hashlib.sha256(_png(repo / rel, seed=i, pad_to=size).read_bytes()).hexdigest()))
    manifest = tmp_path / "ieat-stand-ins.csv"
    with open(manifest, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "bytes", "sha256"), *rows])
    return repo, sizes, manifest


AGE_YAML = """
tests:
  - name: age
    X: {ieat: age/young}
    Y: {ieat: age/old}
    A: {texts: [good, fine]}
    B: {texts: [bad, awful]}
"""


def test_ieat_from_a_local_copy(tmp_path):
    repo, sizes, manifest = _ieat_repo(tmp_path)
    suite = res.load_tests(_write_yaml(tmp_path / "t.yaml", AGE_YAML))
    for root in (repo, repo / "data", repo / "data" / "experiments"):
        t = res.Resolver(stimuli_root=root, offline=True, ieat_manifest=manifest).resolve(suite.tests)[0]
        assert len(t.sets["X"]) == 6 and len(t.sets["Y"]) == 6
        assert t.sets["X"].display[0].startswith("data/experiments/age/young/")
    victim = repo / sorted(sizes)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[:-1])
    with pytest.raises(DataError, match="instead of"):
        res.Resolver(stimuli_root=repo, ieat_manifest=manifest).resolve(suite.tests)
    victim.write_bytes(data[:-1] + b"\1")                 # the same size, another last byte
    with pytest.raises(DataError) as err:
        res.Resolver(stimuli_root=repo, ieat_manifest=manifest).resolve(suite.tests)
    want, got = hashlib.sha256(data).hexdigest(), hashlib.sha256(data[:-1] + b"\1").hexdigest()
    assert str(err.value) == res.MSG_IEAT_LOCAL_HASH.format(where="test 'age' (image-text) set Y", path=victim,
                                                            got=got, want=want)


def test_padded_stand_ins_are_refused(tmp_path, caplog):
    """Files of the right sizes but other content (zero-padded PNGs) are not the iEAT images: the shipped
    manifest's SHA-256 refuses them from a local copy, from a download, and from the download cache."""
    repo, sizes, _ = _ieat_repo(tmp_path)
    suite = res.load_tests(_write_yaml(tmp_path / "t.yaml", AGE_YAML))
    first = sorted(r for r in sizes if "/young/" in r)[0]         # set X's first file, the first one checked
    with pytest.raises(DataError) as err:
        res.Resolver(stimuli_root=repo, offline=True).resolve(suite.tests)
    pinned = {row["path"]: row["sha256"] for row in csv.DictReader(open(STIMULI / "ieat-manifest.csv"))}
    assert str(err.value) == res.MSG_IEAT_LOCAL_HASH.format(
        where="test 'age' (image-text) set X", path=repo / first,
        got=hashlib.sha256((repo / first).read_bytes()).hexdigest(), want=pinned[first])

    def fetch(url: str) -> bytes:
        return (repo / url[len("https://example.test/ieat/"):]).read_bytes()

    with pytest.raises(DataError) as err:
        res.Resolver(cache_dir=tmp_path / "cache", fetch=fetch, base_url="https://example.test/ieat").resolve(
            suite.tests)
    assert str(err.value) == res.MSG_IEAT_HASH.format(
        rel=first, got=hashlib.sha256((repo / first).read_bytes()).hexdigest(), want=pinned[first])
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("*"))        # nothing kept
    # a stand-in put into the download cache by hand is not taken for the image either
    cache = tmp_path / "cache" / "stimuli" / "ieat-4d7639b"
    (cache / first).parent.mkdir(parents=True)
    (cache / first).write_bytes((repo / first).read_bytes())
    with caplog.at_level("WARNING", logger="clipprobe"), pytest.raises(DataError, match="offline mode"):
        res.Resolver(cache_dir=tmp_path / "cache", offline=True).resolve(suite.tests)
    assert any(f"cached iEAT image {cache / first} has sha256" in r.getMessage() for r in caplog.records)


def test_shipped_manifest_has_a_sha256_for_every_file_it_sizes():
    with open(STIMULI / "ieat-manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 870 and list(rows[0]) == ["path", "bytes", "sha256"]
    for row in rows:
        if row["bytes"].isdigit():
            assert len(row["sha256"]) == 64 and set(row["sha256"]) <= set("0123456789abcdef"), row
        else:
            assert row["sha256"] == "" and row["path"].endswith("professional2_google.jpg")
    # 664 distinct images (iEAT uses some photos in several tests); one hash, one size
    assert len({r["sha256"] for r in rows if r["sha256"]}) == 664
    assert len({(r["sha256"], r["bytes"]) for r in rows if r["sha256"]}) == 664
    # the first entry, checked by hand against the git blob of the pinned commit
    assert rows[0] == {"path": "data/experiments/age/old/of1.jpg", "bytes": "6664",
                       "sha256": "5463358f0636c8eee347c551823a6761ca72091f904023358c61a33e893014bd"}


def test_a_manifest_without_hashes_checks_sizes_and_says_so(tmp_path, caplog):
    repo, _, manifest = _ieat_repo(tmp_path)
    rows = list(csv.DictReader(open(manifest)))
    bare = tmp_path / "bare.csv"
    with open(bare, "w", newline="") as fh:
        csv.writer(fh).writerows([("path", "bytes"), *[(r["path"], r["bytes"]) for r in rows]])
    suite = res.load_tests(_write_yaml(tmp_path / "t.yaml", AGE_YAML))
    with caplog.at_level("WARNING", logger="clipprobe"):
        t = res.Resolver(stimuli_root=repo, ieat_manifest=bare).resolve(suite.tests)[0]
    assert len(t.sets["X"]) == 6
    assert any("gives no sha256 for 12 file(s)" in r.getMessage() for r in caplog.records)


def test_ieat_download_is_checked_cached_and_injectable(tmp_path):
    repo, sizes, manifest = _ieat_repo(tmp_path)
    calls = []

    def fetch(url: str) -> bytes:
        calls.append(url)
        assert url.startswith("https://example.test/ieat/")
        return (repo / url[len("https://example.test/ieat/"):]).read_bytes()

    suite = res.load_tests(_write_yaml(tmp_path / "t.yaml", AGE_YAML))
    r = res.Resolver(cache_dir=tmp_path / "cache", fetch=fetch, base_url="https://example.test/ieat",
                     ieat_manifest=manifest)
    t = r.resolve(suite.tests)[0]
    assert len(calls) == 12 and len(r.downloaded) == 12
    cached = Path(t.sets["X"].items[0])
    assert cached.is_relative_to(tmp_path / "cache" / "stimuli" / "ieat-4d7639b")
    assert cached.stat().st_size == sizes[t.sets["X"].display[0]]
    # a second resolver finds everything in the cache: no download, even offline
    again = res.Resolver(cache_dir=tmp_path / "cache", fetch=fetch, base_url="https://example.test/ieat",
                         offline=True, ieat_manifest=manifest).resolve(suite.tests)[0]
    assert len(calls) == 12 and again.sets["X"].items == t.sets["X"].items

    # a wrong size is refused and nothing is kept
    def short(url: str) -> bytes:
        return b"12345"

    with pytest.raises(DataError, match="the manifest says"):
        res.Resolver(cache_dir=tmp_path / "c2", fetch=short).resolve(suite.tests)
    assert not any(p.is_file() for p in (tmp_path / "c2").rglob("*"))

    # offline without a cache, or a failing network: one line that says what to download and where to point
    for kwargs in ({"offline": True}, {"fetch": lambda url: (_ for _ in ()).throw(OSError("no route"))}):
        with pytest.raises(DataError) as err:
            res.Resolver(cache_dir=tmp_path / "c3", **kwargs).resolve(suite.tests)
        assert "--stimuli-root" in str(err.value) and "4d7639b" in str(err.value) and "\n" not in str(err.value)


def test_ieat_download_over_http(tmp_path):
    """The default fetcher against a local http.server holding the iEAT layout."""
    repo, _, manifest = _ieat_repo(tmp_path)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/"
        suite = res.load_tests(_write_yaml(tmp_path / "t.yaml", AGE_YAML))
        t = res.Resolver(cache_dir=tmp_path / "cache", base_url=base, ieat_manifest=manifest).resolve(suite.tests)[0]
        assert len(t.sets["Y"]) == 6 and all(Path(p).is_file() for p in t.sets["Y"].items)
    finally:
        server.shutdown()
        server.server_close()


def test_ieat_manifest_entry_without_size_is_left_out():
    r = res.Resolver(offline=True)
    files = r._ieat_files()
    assert "data/experiments/gender/career/professional2_google.jpg" in r.broken
    assert all("professional2_google" not in rel for rel, _, _ in files["gender/career"])
    assert {k: len(files[k]) for k in ("insect-flower/flower", "race/european-american", "gender/male",
                                       "age/old")} == {"insect-flower/flower": 35, "race/european-american": 6,
                                                       "gender/male": 40, "age/old": 6}


# ------------------------------------------------------------------ OASIS


def _oasis(tmp_path: Path, n: int = 60) -> Path:
    root = tmp_path / "oasis"
    rows = []
    for i in range(n):
        theme = f"Theme {i:02d}"
        # valence ties at the top: Theme 00 and Theme 01 share the largest value
        valence = 7.0 if i < 2 else round(1.0 + (i * 37 % n) / n * 5.5, 3)
        rows.append({"": i + 1, "Theme": theme, "Category": "Object", "Source": "x", "Valence_mean": valence})
        _png(root / "images" / f"{theme}.jpg", seed=i)
    with open(root / "OASIS.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return root


def test_oasis_top_and_bottom_by_valence(tmp_path):
    import pandas as pd

    root = _oasis(tmp_path)
    table = pd.read_csv(root / "OASIS.csv")
    path = _write_yaml(tmp_path / "t.yaml", """
tests:
  - name: valence
    X: {texts: [a, b]}
    Y: {texts: [c, d]}
    A: {oasis: pleasant}
    B: {oasis: unpleasant, n: 10}
""")
    t = res.Resolver(oasis_root=root).resolve(res.load_tests(path).tests)[0]
    top = table.sort_values(["Valence_mean", "Theme"], ascending=[False, True]).head(25)["Theme"].tolist()
    bottom = table.sort_values(["Valence_mean", "Theme"], ascending=[True, True]).head(10)["Theme"].tolist()
    assert [Path(p).stem for p in t.sets["A"].items] == top
    assert [Path(p).stem for p in t.sets["B"].items] == bottom
    assert top[:2] == ["Theme 00", "Theme 01"] and t.order == "text-image"
    with pytest.raises(DataError, match="need --oasis-root"):
        res.Resolver().resolve(res.load_tests(path).tests)
    with pytest.raises(DataError, match="OASIS.csv"):
        res.Resolver(oasis_root=tmp_path).resolve(res.load_tests(path).tests)


@pytest.mark.slow
def test_wheel_ships_the_stimuli(tmp_path):
    import subprocess
    import sys
    import zipfile

    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    names = set(zipfile.ZipFile(next(tmp_path.glob("clipprobe-*.whl"))).namelist())
    for rel in ["ghate2025.yaml", "weat.yaml", "seat.yaml", "seat-nrc.yaml", "ieat-manifest.csv", "PROVENANCE.md",
                "wefe/WEAT.json", "wefe/LICENSE", "seat-nrc/nrc_vad_combinations.json", "seat/sent-weat11b.jsonl"]:
        assert f"clipprobe/data/stimuli/{rel}" in names, rel
