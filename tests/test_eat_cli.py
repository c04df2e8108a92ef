"""`clipprobe eat` end to end with a tiny real model: outputs, caching, unreadable images, errors, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from clipprobe.cli import _Group, cli
from clipprobe.cli.eat import eat
from clipprobe.report import eat as report
from clipprobe.runinfo import RECORD_KEYS

# The command as `clipprobe eat` runs it (registered in clipprobe.cli, or wrapped the same way here).
CLI = cli if "eat" in cli.commands else _Group(name="clipprobe", commands={"eat": eat})
REQUIRED = ("test", "order", "n_x", "n_y", "n_a", "n_b", "effect_size", "effect_ci_low", "effect_ci_high", "p_value",
            "q_value", "n_permutations", "exact")


def _png(path: Path, seed: int) -> Path:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(24, 24, 3), dtype=np.uint8)
    arr[..., seed % 3] = 255 if seed % 2 else 0
    Image.fromarray(arr).save(path)
    return path


def _tests_file(folder: Path, n_images: int = 4, corrupt: int = 0, extra: str = "") -> Path:
    for cat, offset in (("flower", 0), ("insect", 100)):
        for i in range(n_images):
            _png(folder / "stimuli" / cat / f"{cat}{i}.png", seed=offset + i)
    for i in range(corrupt):
        (folder / "stimuli" / "flower" / f"broken{i}.png").write_bytes(b"\x89PNG not really")
    path = folder / "my-tests.yaml"
    path.write_text("""tests:
  - name: flowers-insects
    X: {images: stimuli/flower}
    Y: {images: stimuli/insect}
    A: {texts: [This is the word love., This is the word happy.]}
    B: {words: [hate, ugly], templates: ["This is the word {word}."]}
  - name: words
    X: {words: [rose, tulip, daisy]}
    Y: {words: [ant, wasp, flea]}
    A: {texts: [love, joy]}
    B: {texts: [hate, war]}
""" + extra, encoding="utf-8")
    return path


@pytest.fixture
def model_args(tiny_model_files, tmp_path):
    config, weights, arch = tiny_model_files
    return ["--model", f"{arch}:{weights}", "--model-config", str(config), "--device", "cpu", "--offline",
            "--cache-dir", str(tmp_path / "cache"), "--workers", "0"]


def _run(args):
    return CliRunner().invoke(CLI, ["eat", *args], catch_exceptions=False)


def test_list_shows_suites_and_unavailable_tests():
    r = _run(["list"])
    assert r.exit_code == 0, r.output
    assert "ghate2025: 26 tests" in r.output and "weat: 10 tests" in r.output and "seat-nrc: 8 tests" in r.output
    assert r.output.count("unavailable: set X (Instruments)") == 2
    r = _run(["list", "--suite", "weat"])
    assert "weat6-gender-career" in r.output and "ghate2025" not in r.output


def test_run_writes_everything_and_a_rerun_embeds_nothing(tmp_path, model_args):
    import pandas as pd

    tests = _tests_file(tmp_path / "in")
    out = tmp_path / "out"
    args = ["--tests", str(tests), "--out", str(out), "--permutations", "5000", *model_args]
    r = _run(args)
    assert r.exit_code == 0, r.output
    assert "2 of 2 tests computed" in r.output and "flowers-insects" in r.output
    for name in ("eat.parquet", "stimuli.parquet", "run.json", "forest.png", "forest.pdf"):
        assert (out / name).is_file(), name
    table = pd.read_parquet(out / "eat.parquet")
    assert set(REQUIRED) <= set(table.columns)
    first = table.set_index("test").loc["flowers-insects"]
    assert (first["order"], first["n_x"], first["n_y"], first["n_a"], first["n_b"]) == ("image-text", 4, 4, 2, 2)
    assert first["order_label"] == "image as target" and first["status"] == "computed"
    assert bool(first["exact"]) and first["n_permutations"] == 70 and first["ci_method"] == "fisher-z"
    # 4 images per target set: fewer stimuli than a published interval needs, so it is withheld, and said
    assert first["effect_ci_low"] != first["effect_ci_low"] and "X (4), Y (4), A (2), B (2)" in first["ci_note"]
    assert (first["p_sides"], first["ci_sides"], first["ci_level"]) == ("one-sided", "two-sided", 0.95)
    assert "[interval withheld]" in r.output and "p (one-sided) = " in r.output
    assert "one-sided p (X more associated with A than Y is)" in r.output
    words = table.set_index("test").loc["words"]
    assert words["order"] == "text" and words["n_permutations"] == 20
    stimuli = pd.read_parquet(out / "stimuli.parquet")
    assert len(stimuli) == (4 + 4 + 2 + 2) + (3 + 3 + 2 + 2)
    assert set(stimuli["set"]) == {"X", "Y", "A", "B"}
    assert stimuli[stimuli.test == "flowers-insects"]["stimulus"].iloc[0] == "flower0.png"
    record = json.loads((out / "run.json").read_text())
    assert list(record)[:len(RECORD_KEYS)] == list(RECORD_KEYS)
    assert record["command"] == "eat" and record["format_version"] == report.FORMAT_VERSION
    assert record["embedded"]["texts"] == 2 + 2 + 3 + 3 + 2 + 2 and record["embedded"]["images"] == 8
    table_again, stimuli_again, _ = report.load_eat(out)
    assert table_again.equals(table)

    r = _run(args)
    assert r.exit_code == 0, r.output
    record = json.loads((out / "run.json").read_text())
    assert record["embedded"] == {"texts": 0, "images": 0}
    assert pd.read_parquet(out / "eat.parquet").equals(table)  # same seed, same numbers


def test_unreadable_images_are_skipped_counted_and_listed(tmp_path, model_args):
    import pandas as pd

    tests = _tests_file(tmp_path / "in", corrupt=1)
    out = tmp_path / "out"
    r = _run(["--tests", str(tests), "--out", str(out), "--permutations", "2000", "--interval", "none",
              "--test", "flowers-insects", *model_args])
    assert r.exit_code == 0, r.output
    assert "1 unreadable image(s) skipped" in r.output
    row = pd.read_parquet(out / "eat.parquet").iloc[0]
    assert row["n_x"] == 4 and row["n_skipped_images"] == 1
    record = json.loads((out / "run.json").read_text())
    assert record["skipped_images"]["n"] == 1 and record["skipped_images"]["files"][0]["file"] == "broken0.png"


def test_a_set_left_with_one_image_fails_before_writing(tmp_path, model_args):
    tests = _tests_file(tmp_path / "in", n_images=2)
    (tmp_path / "in" / "stimuli" / "flower" / "flower1.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    r = CliRunner().invoke(CLI, ["eat", "--tests", str(tests), "--out", str(out), "--interval", "none", *model_args])
    assert r.exit_code == 1
    msg = r.output.strip().splitlines()[-1]
    assert msg.startswith("Error: test 'flowers-insects' (image-text) set X: only 1 of its 2 images could be read")
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("args,code,text", [
    (["--suite", "weat"], 2, "missing option '--out'"),
    (["--suite", "nope", "--out", "OUT"], 1, "unknown suite 'nope'"),
    (["--suite", "weat", "--test", "weat99", "--out", "OUT"], 1, "unknown test 'weat99'"),
    (["--suite", "weat", "--tests", "x.yaml", "--out", "OUT"], 2, "not both"),
    (["--suite", "weat", "--order", "video", "--out", "OUT"], 2, "unknown order 'video'"),
    (["--suite", "ghate2025", "--order", "text-image", "--out", "OUT"], 1, "need --oasis-root"),
    (["--suite", "ghate2025", "--order", "text,text-image", "--strict", "--out", "OUT"], 1, "need --oasis-root"),
    (["--suite", "weat", "--interval", "fisher-z", "--bootstrap", "50", "--out", "OUT"], 2, "at least 100"),
    (["--suite", "weat", "--interval", "BCa", "--out", "OUT"], 2, "'BCa' is not one of 'fisher-z', 'none'"),
])
def test_errors_are_one_line_and_write_nothing(tmp_path, model_args, args, code, text):
    out = tmp_path / "OUT"
    args = [a.replace("OUT", str(out)) for a in args]
    r = CliRunner().invoke(CLI, ["eat", *args, *model_args])
    assert r.exit_code == code, r.output
    assert text in r.output and "Traceback" not in r.output
    assert not out.exists()


def test_missing_oasis_skips_those_tests_and_runs_the_rest(tmp_path, model_args):
    import pandas as pd

    out = tmp_path / "out"
    r = _run(["--suite", "ghate2025", "--test", "age-names-weat10", "--order", "text,text-image", "--out", str(out),
              "--permutations", "20000", "--interval", "none", "--no-sc-weat", "--no-figures", *model_args])
    assert r.exit_code == 0, r.output
    assert "1 of 2 tests computed" in r.output and "1 skipped" in r.output
    assert "skipped: test 'age-names-weat10' (text-image) set A: OASIS images need --oasis-root" in r.output
    table = pd.read_parquet(out / "eat.parquet").set_index("order")
    assert list(table["status"]) == ["computed", "skipped"] and list(table["available"]) == [True, False]
    assert table.loc["text-image", "unavailable_reason"].endswith("and the images/ folder")
    # names x templates: 8 names per set, 8 sentences each; the attributes 25 NRC words x 6 sentences
    row = table.loc["text"]
    assert (row["n_x"], row["n_y"], row["n_a"], row["n_b"]) == (8, 8, 25, 25)
    assert (row["n_x_texts"], row["n_y_texts"], row["n_a_texts"], row["n_b_texts"]) == (64, 64, 150, 150)
    assert bool(row["exact"]) and row["n_permutations"] == 12870  # partitions of 16 names, not of 128 sentences
    record = json.loads((out / "run.json").read_text())
    assert record["skipped_tests"] == [{"test": "age-names-weat10", "order": "text-image",
                                        "reason": table.loc["text-image", "unavailable_reason"]}]
    assert record["tests"][0]["stimuli"] == {"X": 8, "Y": 8, "A": 25, "B": 25}


def test_words_with_templates_permute_words(tmp_path, model_args):
    import pandas as pd

    tests = _tests_file(tmp_path / "in", extra="""  - name: templated
    X: {words: [rose, tulip, daisy, lily], templates: ["This is a {word}.", "A {word} is here.", "I saw a {word}."]}
    Y: {words: [ant, wasp, flea, moth], templates: ["This is a {word}.", "A {word} is here.", "I saw a {word}."]}
    A: {words: [love, joy, peace], templates: ["This is {word}.", "That is {word}."]}
    B: {words: [hate, war, grief], templates: ["This is {word}.", "That is {word}."]}
""")
    out = tmp_path / "out"
    r = _run(["--tests", str(tests), "--test", "templated", "--out", str(out), "--permutations", "100000",
              "--interval", "none", "--no-figures", *model_args])
    assert r.exit_code == 0, r.output
    row = pd.read_parquet(out / "eat.parquet").iloc[0]
    assert (row["n_x"], row["n_y"], row["n_a"], row["n_b"]) == (4, 4, 3, 3)
    assert (row["n_x_texts"], row["n_y_texts"], row["n_a_texts"], row["n_b_texts"]) == (12, 12, 6, 6)
    assert bool(row["exact"]) and row["n_permutations"] == 70  # C(8, 4) word partitions, not C(24, 12)
    stimuli = pd.read_parquet(out / "stimuli.parquet")
    x = stimuli[stimuli["set"] == "X"]
    assert list(x["unit"]) == [w for w in ("rose", "tulip", "daisy", "lily") for _ in range(3)]
    assert x["stimulus"].iloc[1] == "A rose is here."
    # the per-sentence SC-WEAT p-values permute the 6 attribute words (C(6, 3) = 20 partitions); their
    # q-values are BH over this test's rows
    from clipprobe.analysis.significance import bh_adjust

    assert (stimuli["sc_n_permutations"] == 20).sum() == 24
    assert stimuli["sc_q_value"].to_numpy() == pytest.approx(bh_adjust(stimuli["sc_p_value"].to_numpy()))
    assert stimuli["sc_p_value_sentences"].notna().all()


def test_weat_suite_text_test_is_exact(tmp_path, model_args):
    import pandas as pd

    out = tmp_path / "out"
    r = _run(["--suite", "weat", "--test", "weat7-math-arts-gender,weat9-mental-physical-disease", "--out", str(out),
              "--permutations", "20000", "--interval", "none", "--no-sc-weat", "--no-figures", *model_args])
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "eat.parquet")
    assert list(table["test"]) == ["weat7-math-arts-gender", "weat9-mental-physical-disease"]
    assert table["exact"].all() and list(table["n_permutations"]) == [12870, 924]
    assert not (out / "forest.png").exists()
    assert pd.read_parquet(out / "stimuli.parquet")["sc_p_value"].isna().all()


def test_paper_signs_negate_the_effect(tmp_path, model_args):
    import pandas as pd

    tests = _tests_file(tmp_path / "in", extra="""  - name: signed
    paper_sign: -1
    X: {words: [he, him, man]}
    Y: {words: [she, her, woman]}
    A: {texts: [good, nice]}
    B: {texts: [bad, awful]}
""")
    common = ["--tests", str(tests), "--test", "signed", "--permutations", "1000", "--interval", "none", *model_args]
    assert _run([*common, "--out", str(tmp_path / "a")]).exit_code == 0
    assert _run([*common, "--out", str(tmp_path / "b"), "--paper-signs"]).exit_code == 0
    a = pd.read_parquet(tmp_path / "a" / "eat.parquet").iloc[0]
    b = pd.read_parquet(tmp_path / "b" / "eat.parquet").iloc[0]
    assert b["effect_size"] == -a["effect_size"] and a["effect_size"] != 0
    assert "x -1 (paper sign)" in b["note"]
    # the paper flips d only: the p-values are those of the test as defined, not of the swapped test
    for col in ("p_value", "p_value_sentences", "q_value", "statistic"):
        assert b[col] == a[col], col
    sa = pd.read_parquet(tmp_path / "a" / "stimuli.parquet")
    sb = pd.read_parquet(tmp_path / "b" / "stimuli.parquet")
    pd.testing.assert_frame_equal(sa, sb)


def test_paper_signs_negate_the_interval_and_swap_its_ends(tmp_path, model_args):
    import pandas as pd

    words = ", ".join(f"w{i}" for i in range(26))
    others = ", ".join(f"v{i}" for i in range(26))
    tests = _tests_file(tmp_path / "in", extra=f"""  - name: signed
    paper_sign: -1
    X: {{words: [{words}]}}
    Y: {{words: [{others}]}}
    A: {{words: [{", ".join(f"a{i}" for i in range(26))}]}}
    B: {{words: [{", ".join(f"b{i}" for i in range(26))}]}}
""")
    common = ["--tests", str(tests), "--test", "signed", "--permutations", "200", "--bootstrap", "200", *model_args]
    assert _run([*common, "--out", str(tmp_path / "a")]).exit_code == 0
    assert _run([*common, "--out", str(tmp_path / "b"), "--paper-signs"]).exit_code == 0
    a = pd.read_parquet(tmp_path / "a" / "eat.parquet").iloc[0]
    b = pd.read_parquet(tmp_path / "b" / "eat.parquet").iloc[0]
    assert a["effect_ci_low"] == a["effect_ci_low"], "the interval was withheld: the sets are too small"
    assert (b["effect_ci_low"], b["effect_ci_high"]) == (-a["effect_ci_high"], -a["effect_ci_low"])
    assert b["effect_ci_low"] <= b["effect_size"] <= b["effect_ci_high"]
    assert b["p_value"] == a["p_value"]


def test_html_section_escapes_and_forest_plot(tmp_path):
    import numpy as np
    import pandas as pd

    rows = []
    for i, name in enumerate(["<script>alert(1)</script>", "plain"]):
        rows.append({c: None for c in report.EAT_COLUMNS} | {
            "test": name, "order": "text", "family": "", "available": True, "unavailable_reason": "",
            "n_x": 3, "n_y": 3, "n_a": 2, "n_b": 2, "effect_size": 0.5 + i, "effect_ci_low": 0.1,
            "effect_ci_high": 0.9 + i, "ci_method": "fisher-z", "p_value": 0.01, "q_value": 0.02, "n_permutations": 20,
            "exact": True, "alternative": "greater", "ddof": 1, "statistic": 0.1, "x_label": "<b>X</b>",
            "y_label": "Y", "a_label": "A & co", "b_label": "B", "n_skipped_images": 0, "note": "",
            "status": "computed", "p_sides": "one-sided", "ci_sides": "two-sided", "ci_level": 0.95, "ci_note": ""})
    rows.append(rows[1] | {"test": "gone", "available": False, "unavailable_reason": "images <not public>",
                           "effect_size": np.nan, "effect_ci_low": np.nan, "effect_ci_high": np.nan,
                           "status": "unavailable", "order": "image-text"})
    table = pd.DataFrame(rows)
    html = report.html_section(table, {"suite": {"name": "s<1>"}, "config": {"ddof": 1}})
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;X&lt;/b&gt;" in html and "A &amp; co" in html and "images &lt;not public&gt;" in html
    assert "s&lt;1&gt;" in html and 'src="data:image/png;base64,' in html
    # sidedness said in the table's head: a one-sided p beside a two-sided interval
    assert "<th>p (one-sided)</th>" in html and "<th>interval (two-sided)</th>" in html
    assert "one-sided p (X more associated with A than Y is)" in html and "two-sided 95% interval" in html
    ax = report.forest_plot(table)
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["<script>alert(1)</script> (all text)", "plain (all text)", "gone (image as target)"]
    # each order's series is named as the table's order_label says (with its code when they differ)
    assert [c.get_label() for c in ax.containers] == ["all text (text)"]
    assert list(report.results_table([], {})["order_label"]) == []
    assert report.order_label("image-text") == "image as target (image-text)"
    assert "two-sided 95% interval" in ax.get_xlabel()
    xs = sorted(float(x) for line in ax.lines for x in np.atleast_1d(line.get_xdata()) if np.isfinite(x))
    assert 0.5 in xs and 1.5 in xs


@pytest.mark.slow
def test_ghate2025_suite_end_to_end(tmp_path, model_args, monkeypatch):
    """The 26 EATs with generated stand-ins for the images: iEAT files of the manifest's exact sizes in a
    local copy, an OASIS folder of 60 images; 24 computed, the two Instrument-Weapon image tests unavailable."""
    import pandas as pd
    from test_eat_resources import _ieat_repo, _oasis

    from clipprobe.resources import eat as res

    categories = ("insect-flower/flower", "insect-flower/insect", "race/european-american", "race/african-american",
                  "gender/male", "gender/female", "age/young", "age/old")
    repo, _, manifest = _ieat_repo(tmp_path, categories)
    monkeypatch.setattr(res, "IEAT_MANIFEST", str(manifest))      # the stand-ins' hashes, not the images'
    oasis = _oasis(tmp_path)
    out = tmp_path / "out"
    r = _run(["--suite", "ghate2025", "--stimuli-root", str(repo), "--oasis-root", str(oasis), "--out", str(out),
              "--permutations", "20000", "--interval", "fisher-z", "--bootstrap", "200", "--sc-permutations", "200",
              *model_args])
    assert r.exit_code == 0, r.output
    table = pd.read_parquet(out / "eat.parquet")
    assert len(table) == 26 and int(table["available"].sum()) == 24
    gone = table[~table["available"]]
    assert list(zip(gone["test"], gone["order"])) == [("instrument-weapon", "image"), ("instrument-weapon", "image-text")]
    sizes = table.set_index(["test", "order"])
    assert tuple(sizes.loc[("insect-flower", "image"), ["n_x", "n_y", "n_a", "n_b"]]) == (35, 35, 25, 25)
    assert tuple(sizes.loc[("race", "image-text"), ["n_x", "n_y", "n_a", "n_b"]]) == (6, 6, 25, 25)
    assert tuple(sizes.loc[("race", "image-text"), ["n_a_texts", "n_b_texts"]]) == (150, 150)
    assert tuple(sizes.loc[("insect-flower-weat1", "text-image"), ["n_x", "n_y", "n_a", "n_b"]]) == (25, 25, 25, 25)
    assert tuple(sizes.loc[("insect-flower-weat1", "text-image"), ["n_x_texts", "n_y_texts"]]) == (350, 350)
    assert bool(sizes.loc[("age", "image"), "exact"]) and sizes.loc[("age", "image"), "n_permutations"] == 924
    done = table[table["available"]]
    assert (done["ci_method"] == "fisher-z").all()
    shown = done[done["effect_ci_low"].notna()]
    assert (shown["effect_ci_low"] <= shown["effect_ci_high"]).all() and len(shown) >= 10
    withheld = done[done["effect_ci_low"].isna()]
    from clipprobe.analysis.eat import MIN_INTERVAL_STIMULI

    assert (withheld[["n_x", "n_y", "n_a", "n_b"]].min(axis=1) < MIN_INTERVAL_STIMULI).all()
    assert (withheld["ci_note"] != "").all() and (shown[["n_x", "n_y", "n_a", "n_b"]].min(axis=1) >= 25).all()
    assert done["q_value"].notna().all() and (done["q_value"] >= done["p_value"] - 1e-12).all()
    assert "unavailable: set X (Instruments)" in r.output


def test_forest_plot_marks_a_withheld_interval_as_an_open_dot():
    """A test whose interval was computed but not published (ci_note) is drawn as an open dot, named in the legend,
    so that a dot without a line does not read as a very precise estimate."""
    import numpy as np
    import pandas as pd

    base = {c: None for c in report.EAT_COLUMNS} | {
        "order": "text", "family": "", "available": True, "unavailable_reason": "", "n_x": 30, "n_y": 30, "n_a": 30,
        "n_b": 30, "ci_method": "fisher-z", "p_value": 0.01, "q_value": 0.02, "status": "computed",
        "p_sides": "one-sided", "ci_sides": "two-sided", "ci_level": 0.95}
    table = pd.DataFrame([
        base | {"test": "published", "effect_size": 0.4, "effect_ci_low": 0.1, "effect_ci_high": 0.7, "ci_note": ""},
        base | {"test": "small", "effect_size": -0.6, "effect_ci_low": np.nan, "effect_ci_high": np.nan,
                "ci_note": "not published: set(s) X (8) have fewer than 25 stimuli"},
    ])
    ax = report.forest_plot(table)
    open_dots = [line for line in ax.lines if line.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))
                 and len(line.get_xdata())]
    assert len(open_dots) == 1 and list(open_dots[0].get_xdata()) == [-0.6]
    legend = ax.figure.legends[0]
    assert "interval not published (ci_note)" in [t.get_text() for t in legend.get_texts()]
    plain = report.forest_plot(table.assign(ci_note="", effect_ci_low=0.1, effect_ci_high=0.7))
    assert not plain.figure.legends     # one order, nothing withheld: no legend, as before


def test_sc_weat_q_values_do_not_change_when_a_selection_drops_other_tests(tmp_path, model_args):
    """SC-WEAT q-values are BH over one test's rows (the family run.json names), so selecting tests or
    orders leaves a test's q-values as they are."""
    import numpy as np
    import pandas as pd

    tests = _tests_file(tmp_path / "in")
    common = ["--tests", str(tests), "--permutations", "1000", "--sc-permutations", "5000", "--interval", "none",
              "--no-figures", *model_args]
    assert _run([*common, "--out", str(tmp_path / "all")]).exit_code == 0
    assert _run([*common, "--test", "words", "--out", str(tmp_path / "one")]).exit_code == 0
    every = pd.read_parquet(tmp_path / "all" / "stimuli.parquet")
    one = pd.read_parquet(tmp_path / "one" / "stimuli.parquet")
    assert set(every["test"]) == {"flowers-insects", "words"} and set(one["test"]) == {"words"}
    words = every[every["test"] == "words"].reset_index(drop=True)
    assert len(words) == len(one) > 0 and one["sc_q_value"].notna().all()
    for col in ("sc_p_value", "sc_q_value"):
        np.testing.assert_array_equal(words[col].to_numpy(), one[col].to_numpy())
    assert "sc_q_value" in json.dumps(json.loads((tmp_path / "one" / "run.json").read_text())["families"])


def test_two_image_folders_with_the_same_names_and_sizes_give_their_own_results(tmp_path, model_args):
    """Two stimulus folders whose files have the same names and byte sizes but other pixels, embedded
    through one cache: each run's numbers equal a run on a fresh cache (the cache is keyed by where the
    images are and by their content, not by names and sizes)."""
    import pandas as pd

    def folder(root: Path, offset: int) -> None:
        for cat, base in (("flower", 0), ("insect", 100)):
            for i in range(6):
                _png(root / cat / f"{cat}{i}.png", seed=base + offset + i)
        files = sorted(root.rglob("*.png"))
        size = 4096
        for f in files:                      # pad every file to one size (readers stop at the PNG's end)
            data = f.read_bytes()
            assert len(data) < size
            f.write_bytes(data + b"\0" * (size - len(data)))

    folder(tmp_path / "one", 0)
    folder(tmp_path / "two", 1000)
    for name in ("one", "two"):
        (tmp_path / f"{name}.yaml").write_text(f"""tests:
  - name: pictures
    X: {{images: {tmp_path / name / 'flower'}}}
    Y: {{images: {tmp_path / name / 'insect'}}}
    A: {{texts: [This is the word love., This is the word happy., This is the word peace.]}}
    B: {{texts: [This is the word hate., This is the word ugly., This is the word war.]}}
""", encoding="utf-8")
    sizes = {(p.relative_to(tmp_path / "one").as_posix(), p.stat().st_size) for p in (tmp_path / "one").rglob("*.png")}
    assert sizes == {(p.relative_to(tmp_path / "two").as_posix(), p.stat().st_size)
                     for p in (tmp_path / "two").rglob("*.png")}
    cache_at = model_args.index("--cache-dir")
    base = model_args[:cache_at] + model_args[cache_at + 2:]
    common = ["--permutations", "2000", "--interval", "none", "--no-sc-weat", "--no-figures", *base]

    def run(name: str, cache: Path) -> pd.Series:
        out = tmp_path / f"out-{name}-{cache.name}"
        r = _run(["--tests", str(tmp_path / f"{name}.yaml"), "--out", str(out), "--cache-dir", str(cache), *common])
        assert r.exit_code == 0, r.output
        return pd.read_parquet(out / "eat.parquet").iloc[0]

    shared = tmp_path / "shared-cache"
    one, two = run("one", shared), run("two", shared)
    fresh = run("two", tmp_path / "fresh-cache")
    assert two["effect_size"] == fresh["effect_size"] and two["p_value"] == fresh["p_value"]
    assert one["effect_size"] != two["effect_size"]
