"""Hostile and odd inputs: bounded walks and reads, one-line errors instead of tracebacks, no terminal or
spreadsheet injection, one rule for paths listed in data files, write failures naming the output, and
nothing silently accepted that changes what is measured."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from clipprobe import _io
from clipprobe.cli import cli
from clipprobe.errors import DataError, printable
from clipprobe.resources import eat as res

CONTROLS = ("\x1b", "\x07", "\x08", "\r", "\x9b", "\u202e")


def _png(path: Path, seed: int = 0) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _tests_yaml(path: Path, x: str, y: str = "{texts: [c, d]}", name: str = "t") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"tests:\n  - name: {name}\n    X: {x}\n    Y: {y}\n    A: {{texts: [e, f]}}\n"
                    f"    B: {{texts: [g, h]}}\n", encoding="utf-8")
    return path


def _resolve(path: Path):
    return res.Resolver(offline=True).resolve(res.load_tests(path).tests)


@contextlib.contextmanager
def _within(seconds: float):
    """Fail (instead of hanging the suite) when the block runs longer than ``seconds``."""
    def alarm(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _one_line_error(result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


# ----------------------------------------------------------------------------------------------
# hangs: symbolic-link loops, huge texts


def test_a_symlink_loop_under_a_double_star_glob_is_a_one_line_error(tmp_path):
    for i in range(2):
        _png(tmp_path / "imgs" / "a" / f"{i}.png", seed=i)
    os.symlink("..", tmp_path / "imgs" / "a" / "up")            # imgs/a/up -> imgs: a loop
    for form in ("imgs/**/*.png", "imgs"):
        path = _tests_yaml(tmp_path / f"t{len(form)}.yaml", f"{{images: '{form}'}}", "{images: [p.png, q.png]}")
        with _within(20), pytest.raises(DataError) as err:
            _resolve(path)
        message = str(err.value)
        assert "is a symbolic link to" in message and "(a loop)" in message and "\n" not in message
        assert str(tmp_path / "imgs" / "a" / "up") in message


def test_symlinked_folders_are_followed_once(tmp_path):
    own = [_png(tmp_path / "imgs" / "own" / f"{i}.png", seed=i) for i in range(2)]
    other = [_png(tmp_path / "elsewhere" / f"{i:02d}.png", seed=10 + i) for i in range(12)]
    os.symlink(tmp_path / "elsewhere", tmp_path / "imgs" / "linked")
    os.symlink(tmp_path / "elsewhere", tmp_path / "imgs" / "again")      # a second way to the same folder
    want = sorted(str(p.resolve()) for p in own + other)
    for form in ("imgs", "imgs/**/*.png"):
        path = _tests_yaml(tmp_path / f"t{len(form)}.yaml", f"{{images: '{form}'}}", "{images: [p.png, q.png]}")
        spec = res.load_tests(path).tests[0].X
        stim = res.Resolver(offline=True).resolve_set(spec)
        assert len(stim) == 14 and sorted(stim.items) == want


def test_a_walk_over_too_many_entries_is_a_one_line_error(tmp_path, monkeypatch):
    for i in range(6):
        _png(tmp_path / "imgs" / f"d{i % 2}" / f"{i}.png", seed=i)
    os.symlink("/", tmp_path / "imgs" / "root")               # a link to the whole file system
    monkeypatch.setattr(res, "MAX_WALK_ENTRIES", 50)
    path = _tests_yaml(tmp_path / "t.yaml", "{images: imgs}", "{images: [p.png, q.png]}")
    with _within(20), pytest.raises(DataError, match=r"set X: more than 50 files and folders under \S+imgs; name a "
                                                     r"smaller folder or a narrower glob$"):
        _resolve(path)


def test_the_double_star_glob_matches_as_glob_does(tmp_path):
    import glob

    for rel in ("a.png", "x/b.png", "x/y/c.png", "x/y/c.jpg", ".hidden/d.png", "x/.e.png", "z/f.PNG"):
        _png(tmp_path / "g" / rel)
    for pattern in ("**/*.png", "x/**/*.png", "**/y/*", "**", "x/**", "*/*.png", "**/.e.png", "**/*.[pP][nN][gG]"):
        want = sorted(p for p in glob.glob(str(tmp_path / "g" / pattern), recursive=True) if os.path.isfile(p))
        got = [str(p) for p in res._glob_files(tmp_path / "g" / pattern, "here")]
        assert got == want, pattern


def test_a_huge_test_file_and_a_huge_text_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "w", encoding="utf-8") as fh:
        fh.write("tests:\n  - name: t\n    X: {texts: [")
        fh.write("x" * (_io.MAX_DATA_FILE_BYTES + 10))
        fh.write(", b]}\n    Y: {texts: [c, d]}\n    A: {texts: [e, f]}\n    B: {texts: [g, h]}\n")
    with _within(20), pytest.raises(DataError) as err:
        res.load_tests(big)
    assert f"more than the limit of {_io.MAX_DATA_FILE_BYTES:,}" in str(err.value) and str(big) in str(err.value)
    long = _tests_yaml(tmp_path / "long.yaml", "{texts: [" + "y" * (res.MAX_STIMULUS_CHARS + 1) + ", b]}")
    with pytest.raises(DataError, match=r"set X: stimulus 1 of 'texts' has 10,001 characters, more than the limit "
                                         r"of 10,000"):
        res.load_tests(long)
    tmpl = _tests_yaml(tmp_path / "tmpl.yaml", "{words: [a, b], templates: ['{word}" + "z" * 10_000 + "']}")
    with pytest.raises(DataError, match=r"set X: template 1 of 'templates' has 10,006 characters"):
        res.load_tests(tmpl)
    seat = tmp_path / "s.jsonl"
    seat.write_text(json.dumps({"targ1": {"category": "T", "examples": ["z" * 20_000, "a"]}}))
    path = _tests_yaml(tmp_path / "seat.yaml", "{file: s.jsonl, key: targ1}")
    with pytest.raises(DataError, match=r"stimulus 1 of \S+s.jsonl#targ1 has 20,000 characters"):
        _resolve(path)


# ----------------------------------------------------------------------------------------------
# tracebacks become one-line errors


LEXICON = "name: mini-gender\nattributes:\n  gender:\n    Male: [man, men]\n    Female: [woman, women]\n"
TAXONOMY = "name: mini\ncategories:\n  occupation: [nurse, CEO, engineer]\n"


@pytest.fixture(scope="module")
def captions(tmp_path_factory):
    from clipprobe.captions.synth import write_laion_parquet

    root = tmp_path_factory.mktemp("balance")
    (root / "lex.yaml").write_text(LEXICON)
    (root / "tax.yaml").write_text(TAXONOMY)
    write_laion_parquet(root / "empty" / "a.parquet", [])
    write_laion_parquet(root / "data" / "a.parquet", ["a man nurse"] * 20 + ["woman CEO"] * 20 + ["a woman nurse"] * 5)
    (root / "a-file").write_text("not a folder")
    return root


def _balance(root: Path, command: str, data: str, out: Path, *extra: str):
    argv = ["balance", command, "--captions", str(root / data), "--lexicon", str(root / "lex.yaml"),
            "--taxonomy", str(root / "tax.yaml"), "--workers", "1", "--no-figure", "--out", str(out), *extra]
    if command == "fit":
        argv += ["--keep", "0.3", "--eps-r", "0.2", "--eps-a", "0.2"]
    return CliRunner().invoke(cli, argv)


@pytest.mark.parametrize("command", ["measure", "fit"])
def test_balance_of_a_caption_file_without_rows_is_a_one_line_error(captions, tmp_path, command):
    line = _one_line_error(_balance(captions, command, "empty", tmp_path / "out"))
    assert "no captions to" in line and "have no rows" in line and str(captions / "empty" / "a.parquet") in line


@pytest.mark.parametrize("command", ["measure", "fit"])
def test_balance_into_a_folder_that_cannot_be_made_names_it(captions, command):
    out = captions / "a-file" / "out"                      # root ignores chmod: a file stands in the way
    line = _one_line_error(_balance(captions, command, "data", out))
    assert line == f"Error: cannot write {out}: Not a directory"


def test_balance_on_a_full_disk_names_the_output_not_the_input(captions, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    source = str(captions / "data" / "a.parquet")
    with monkeypatch.context() as m:
        m.setattr(np, "savez", full)                       # the pattern pass's chunk files
        line = _one_line_error(_balance(captions, "measure", "data", tmp_path / "m"))
    assert line.startswith(f"Error: cannot write {tmp_path / 'm'}") and line.endswith("No space left on device")
    assert source not in line and "not a readable parquet" not in line
    with monkeypatch.context() as m:
        m.setattr(pq, "write_table", full)                 # the weights pass's parquet parts
        line = _one_line_error(_balance(captions, "fit", "data", tmp_path / "f"))
    assert line.startswith(f"Error: cannot write {tmp_path / 'f'}") and line.endswith("No space left on device")
    assert source not in line and "not a readable parquet" not in line


def test_sweep_into_a_folder_that_cannot_be_made_names_it(tmp_path, tiny_model_files):
    from facegen import write_fairface

    config, weights, arch = tiny_model_files
    root = write_fairface(tmp_path / "ff", n=14, size=24)
    (tmp_path / "zoo.csv").write_text(f"spec,model_config\n{arch}:{weights},{config}\n")
    (tmp_path / "a-file").write_text("x")
    out = tmp_path / "a-file" / "sweep"
    r = CliRunner().invoke(cli, ["sweep", "--models", str(tmp_path / "zoo.csv"), "--dataset", f"fairface:{root}",
                                 "--out", str(out), "--probes", "report", "--device", "cpu",
                                 "--cache-dir", str(tmp_path / "cache")])
    assert _one_line_error(r) == f"Error: cannot write {out}: Not a directory"
    assert not out.exists()


def test_check_writable_refuses_a_read_only_folder(tmp_path, monkeypatch):
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(_io.WriteError, match=f"^cannot write {tmp_path}: Read-only file system$"):
        _io.check_writable(tmp_path)


def test_a_face_selection_with_a_negative_seed_is_a_one_line_error(tmp_path):
    from facegen import write_fairface

    write_fairface(tmp_path / "ff", n=20, size=24)
    path = _tests_yaml(tmp_path / "t.yaml", '{faces: "fairface:ff", where: {gender: Male}, n: 3, seed: -1}',
                       '{faces: "fairface:ff", where: {gender: Female}, n: 3}')
    with pytest.raises(DataError, match=r"set X: seed must be an integer of 0 or more, not -1$"):
        _resolve(path)
    r = CliRunner().invoke(cli, ["eat", "list", "--suite", str(path)])
    assert "seed must be an integer of 0 or more" in _one_line_error(r)


def test_a_manifest_that_is_not_utf8_is_a_one_line_error(tmp_path):
    _png(tmp_path / "café.png")
    _png(tmp_path / "b.png", 1)
    (tmp_path / "list.csv").write_bytes("file\ncafé.png\nb.png\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        _resolve(_tests_yaml(tmp_path / "t.yaml", "{images: list.csv}", "{images: [p.png, q.png]}"))
    assert "list.csv could not be read: it is not UTF-8 text (byte 0xe9 at offset 8)" in str(err.value)


def test_a_deeply_nested_seat_file_is_a_one_line_error(tmp_path):
    depth = 100_000
    (tmp_path / "deep.jsonl").write_text('{"targ1": {"examples": ' + "[" * depth + "]" * depth + "}}")
    path = _tests_yaml(tmp_path / "t.yaml", "{file: deep.jsonl, key: targ1}")
    with pytest.raises(DataError) as err:
        _resolve(path)
    assert f"nested more than {_io.MAX_DEPTH} levels deep" in str(err.value) and "deep.jsonl" in str(err.value)


# ----------------------------------------------------------------------------------------------
# terminal injection


EVIL = "ev\x1b]0;owned\x07il\x1b[31m\r\u202e"
WORD = " ".join(("w" + EVIL).split())        # a taxonomy's word as it is read (white space made single spaces)


def _no_controls(text: str) -> None:
    for ch in CONTROLS:
        assert ch not in text, repr(ch)


def test_printable_escapes_what_a_terminal_acts_on():
    assert printable(EVIL) == "ev\\x1b]0;owned\\x07il\\x1b[31m\\x0d\\u202e"
    assert printable("plain – text, ü") == "plain – text, ü"
    assert printable("two\nlines") == "two\\x0alines"


def _evil_taxonomy(tmp_path: Path) -> Path:
    path = tmp_path / "evil.json"
    path.write_text(json.dumps({"name": "n" + EVIL, "note": "note" + EVIL,
                                "categories": {"c" + EVIL: ["w" + EVIL, "nurse"], "other": ["wxyzzy"]}}))
    return path


def test_taxonomy_commands_escape_names(tmp_path):
    path = _evil_taxonomy(tmp_path)
    for args in (["list", "--taxonomy", str(path)], ["show", "c" + EVIL, "--taxonomy", str(path)],
                 ["validate", str(path)]):
        r = CliRunner().invoke(cli, ["taxonomy", *args])
        assert r.exit_code == 0, r.output
        _no_controls(r.output)
        assert printable("c" + EVIL) in r.output or printable(WORD) in r.output
    r = CliRunner().invoke(cli, ["taxonomy", "show", "c" + EVIL, "--taxonomy", str(path)])
    assert f"  {printable(WORD)}  " in r.output
    r = CliRunner().invoke(cli, ["taxonomy", "list", "--format", "json", "--taxonomy", str(path)])
    assert json.loads(r.output)["name"] == "n" + EVIL      # JSON keeps the value, escaped by JSON itself


def test_error_messages_and_log_lines_are_escaped(tmp_path):
    missing = tmp_path / f"no{EVIL}.yaml"
    r = CliRunner().invoke(cli, ["taxonomy", "validate", str(missing)])
    line = _one_line_error(r)
    _no_controls(r.output)
    assert printable(str(missing)) in line
    # the log line naming guessed parts of speech, through a real process (the CLI sets up logging there)
    path = _evil_taxonomy(tmp_path)
    code = "import sys; from clipprobe.cli import main; sys.argv[0] = 'clipprobe'; main()"
    proc = subprocess.run([sys.executable, "-c", code, "taxonomy", "validate", str(path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert proc.returncode == 0, proc.stderr
    assert "INFO clipprobe.resources.taxonomy: taxonomy" in proc.stderr
    assert printable(WORD) in proc.stderr
    _no_controls(proc.stderr + proc.stdout)


def test_eat_list_and_summary_escape_names_and_a_forged_line_stays_inside_its_own(tmp_path, tiny_model_files):
    forged = "x\\n  gender                      text       d =   9.99  p = 0.001  q = 0.001\\e]0;owned\\a"
    path = tmp_path / "t.yaml"
    path.write_text(f'name: "suite\\e[2J"\ntests:\n  - name: "{forged}"\n    X: {{texts: [rose, tulip]}}\n'
                    "    Y: {texts: [ant, wasp]}\n    A: {texts: [love, joy]}\n    B: {texts: [hate, war]}\n",
                    encoding="utf-8")
    assert res.load_tests(path).tests[0].name.startswith("x\n  gender")
    r = CliRunner().invoke(cli, ["eat", "list", "--suite", str(path)])
    assert r.exit_code == 0, r.output
    _no_controls(r.output)
    assert not any(line.lstrip().startswith("gender") for line in r.output.splitlines())
    config, weights, arch = tiny_model_files
    r = CliRunner().invoke(cli, ["eat", "--tests", str(path), "--out", str(tmp_path / "out"), "--model",
                                 f"{arch}:{weights}", "--model-config", str(config), "--device", "cpu", "--offline",
                                 "--cache-dir", str(tmp_path / "cache"), "--workers", "0", "--permutations", "100",
                                 "--sc-permutations", "10", "--no-figures", "--interval", "none"])
    assert r.exit_code == 0, r.output
    _no_controls(r.output)
    assert "\x1b" not in r.output and "suite\\x1b[2J" in r.output
    lines = r.output.splitlines()
    assert not any(line.lstrip().startswith("gender") for line in lines), r.output
    assert sum("d = " in line for line in lines) == 1


def test_retrieve_table_escapes_group_names():
    from clipprobe.report.retrieval import Retrieval, format_table
    from clipprobe.resources.prompts import make_query

    groups = {"race": pd.DataFrame({"group": ["a" + EVIL, "b"], "count": [3, 1], "share": [0.75, 0.25],
                                    "base_share": [0.5, 0.5], "skew": [0.4, -0.7]})}
    r = Retrieval(query=make_query("nurse"), k=4, results=pd.DataFrame(), groups=groups, model={"spec": "m"},
                  dataset={"spec": "d", "n_images": 8}, skipped=[])
    text = format_table(r)
    _no_controls(text)
    assert printable("a" + EVIL) in text


# ----------------------------------------------------------------------------------------------
# spreadsheet (CSV) injection


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)",
            "\t=1", "\r=1", "'=already quoted"]


def test_csv_protect_and_unprotect_are_exact_inverses():
    for value in FORMULAS:
        protected = _io.csv_protect(value)
        assert protected == "'" + value and _io.csv_unprotect(protected) == value
    for value in ["-1.5", "+2", "-3e-4", "-inf", "nan", "plain", "a=b", "", "'quoted", 1.5, -2, None]:
        assert _io.csv_protect(value) == value and _io.csv_unprotect(value) == value
    names = FORMULAS + ["a\r=1+1"]         # a carriage return in a cell must not start a new row
    df = pd.DataFrame({"name": names, "x": np.linspace(-1.5, 1.5, len(names))})
    text = _io.csv_text(df)
    _no_formula_cell(text)
    back = pd.read_csv(pd.io.common.StringIO(text))
    assert back["x"].tolist() == df["x"].tolist() and back["x"].dtype == float        # negatives stay numbers
    pd.testing.assert_frame_equal(_io.csv_unprotected(back), df)


def _cells(text: str) -> list[str]:
    return [cell for row in csv.reader(io.StringIO(text, newline="")) for cell in row]


def _no_formula_cell(text: str) -> None:
    bad = [cell for cell in _cells(text) if cell and (cell[0] in "=+@\t\r" or cell[0] == "-" and not _is_number(cell))]
    assert bad == [], bad


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def test_summary_csv_of_a_report_is_protected_and_reads_back(tmp_path):
    from clipprobe.analysis.probe import probe_scores
    from clipprobe.report.store import load_report
    from clipprobe.report.writer import write_report

    rng = np.random.default_rng(0)
    labels = pd.DataFrame({"race": rng.choice(["=cmd|' /C calc'!A0", "@group", "plain"], 60)})
    tables = probe_scores(rng.normal(size=(2, 60)), labels, words=["nurse", "chef"], k=10, permutations=50,
                          categories={"nurse": "=HYPERLINK(\"http://x\")", "chef": "-cooks"})
    write_report(tables, tmp_path / "r", figures=False, html=False)
    text = (tmp_path / "r" / "summary.csv").read_text(encoding="utf-8")
    _no_formula_cell(text)
    assert "'=HYPERLINK" in text and "'-cooks" in text and any(c.startswith("-0.") for c in _cells(text))
    back = load_report(tmp_path / "r")
    pd.testing.assert_frame_equal(back.summary, tables.summary, check_dtype=False)


def test_compare_csv_files_are_protected(tmp_path):
    from clipprobe.report.compare import compare_reports, write_comparison
    from clipprobe.report.store import load_report
    from reportgen import make_report

    words = {"=nurse()": "@occupation", "chef": "-cooking", "lazy": "traits", "kind": "traits"}
    folder = make_report(tmp_path / "a", words=words, model="=A:x", seed=0, images=False, n_boot=5, n_images=80)
    paths = write_comparison(compare_reports([load_report(folder), load_report(folder)]), tmp_path / "w", formats=())
    written = [p for p in paths if p.suffix == ".csv"]
    assert len(written) == 4
    texts = {p.name: p.read_text(encoding="utf-8") for p in written}
    for text in texts.values():
        _no_formula_cell(text)
    assert "'=nurse()" in texts["compare_words.csv"] and "'@occupation" in texts["compare_categories.csv"]


def test_models_csv_is_protected(tmp_path):
    (tmp_path / "t.csv").write_text('spec,dataset,my_score\nViT-B-32:openai,"=HYPERLINK(""http://x"")",-0.5\n')
    r = CliRunner().invoke(cli, ["--offline", "models", "--format", "csv", "--table", str(tmp_path / "t.csv"),
                                 "--filter", "vit-b-32:openai", "--cache-dir", str(tmp_path / "hf")])
    assert r.exit_code == 0, r.output
    _no_formula_cell(r.output)
    rows = list(csv.DictReader(io.StringIO(r.output, newline="")))
    assert [row["dataset"] for row in rows] == ["'=HYPERLINK(\"http://x\")"] and rows[0]["my_score"] == "-0.5"


# ----------------------------------------------------------------------------------------------
# one rule for paths listed in data files


OUTSIDE = ["/etc/passwd", "../x.png", "sub/../../x.png", "C:/x.png", "\\\\server\\x.png", ".."]


@pytest.mark.parametrize("name", OUTSIDE)
def test_paths_outside_their_root_are_refused_by_manifests_and_face_datasets_alike(tmp_path, name):
    from clipprobe.faces import load_dataset

    assert _io.relative_inside(name) is None
    (tmp_path / "m").mkdir()
    _png(tmp_path / "m" / "a.png")
    with open(tmp_path / "m" / "list.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["file"], ["a.png"], [name]])
    with pytest.raises(DataError) as err:
        _resolve(_tests_yaml(tmp_path / "t.yaml", "{images: m/list.csv}", "{images: [p.png, q.png]}"))
    assert "line 3: image path" in str(err.value) and "leads out of the manifest's folder" in str(err.value)
    with open(tmp_path / "m" / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([["file", "race"], ["a.png", "White"], [name, "Black"]])
    with pytest.raises(DataError, match="escapes the dataset root"):
        load_dataset(f"csv:{tmp_path / 'm' / 'labels.csv'}")


def test_manifest_paths_inside_the_folder_resolve(tmp_path):
    for rel in ("a.png", "sub/b.png", "c.png"):
        _png(tmp_path / "m" / rel)
    (tmp_path / "m" / "list.csv").write_text("file\na.png\nsub/../c.png\nsub/b.png\n", encoding="utf-8")
    path = _tests_yaml(tmp_path / "t.yaml", "{images: m/list.csv}", "{images: [p.png, q.png]}")
    spec = res.load_tests(path).tests[0].X
    stim = res.Resolver(offline=True).resolve_set(spec)
    assert stim.items == tuple(str((tmp_path / "m" / rel).resolve()) for rel in ("a.png", "c.png", "sub/b.png"))


# ----------------------------------------------------------------------------------------------
# silent acceptance


def test_a_manifest_with_a_byte_order_mark_is_read(tmp_path):
    for i in range(2):
        _png(tmp_path / "m" / f"{i}.png", seed=i)
    (tmp_path / "m" / "list.csv").write_bytes("\ufefffile,note\n0.png,x\n1.png,y\n".encode("utf-8"))
    path = _tests_yaml(tmp_path / "t.yaml", "{images: m/list.csv}", "{images: [p.png, q.png]}")
    spec = res.load_tests(path).tests[0].X
    stim = res.Resolver(offline=True).resolve_set(spec)
    assert stim.items == tuple(str((tmp_path / "m" / f"{i}.png").resolve()) for i in range(2))


def test_a_manifest_with_a_repeated_column_is_refused(tmp_path):
    for i in range(2):
        _png(tmp_path / "m" / f"{i}.png", seed=i)
    (tmp_path / "m" / "list.csv").write_text("file,file\n0.png,x.png\n1.png,y.png\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"list.csv: column 'file' appears 2 times in the header$"):
        _resolve(_tests_yaml(tmp_path / "t.yaml", "{images: m/list.csv}", "{images: [p.png, q.png]}"))


def test_a_seat_file_with_a_repeated_key_is_refused(tmp_path):
    (tmp_path / "s.jsonl").write_text('{"targ1": {"examples": ["a", "b"]}, "targ1": {"examples": ["c", "d"]}}')
    with pytest.raises(DataError, match=r"s.jsonl could not be read: key 'targ1' appears twice in one object$"):
        _resolve(_tests_yaml(tmp_path / "t.yaml", "{file: s.jsonl, key: targ1}"))


@pytest.mark.parametrize("value, shown", [(None, "None"), ({"a": 1}, "{'a': 1}"), (True, "True"), ([1], "[1]")])
def test_null_mapping_and_other_non_text_stimuli_are_refused(tmp_path, value, shown):
    (tmp_path / "w.json").write_text(json.dumps({"good": ["joy", value, "love"]}))
    (tmp_path / "s.jsonl").write_text(json.dumps({"targ1": {"examples": ["joy", value]}}))
    for x, source in (("{file: w.json, key: good}", "w.json#good"), ("{file: s.jsonl, key: targ1}", "s.jsonl#targ1")):
        with pytest.raises(DataError) as err:
            _resolve(_tests_yaml(tmp_path / "t.yaml", x))
        message = str(err.value)
        assert f"is {shown} (null, true/false, a list or a mapping), not a text" in message
        assert source in message and "\n" not in message
    yaml_value = json.dumps(value)
    for kind in ("texts", "words", "images"):
        with pytest.raises(DataError, match="not a text"):
            res.load_tests(_tests_yaml(tmp_path / "t.yaml", f"{{{kind}: [a, {yaml_value}]}}",
                                       "{images: [p.png, q.png]}" if kind == "images" else "{texts: [c, d]}"))


def test_retrieve_csv_is_protected(tmp_path, tiny_model_files):
    from facegen import write_fairface

    root = write_fairface(tmp_path / "ff", n=12, size=24)
    labels = pd.read_csv(root / "fairface_label_val.csv", dtype=str)
    labels["team"] = ["=HYPERLINK(\"http://x\")", "-minus", "@at", "plain"] * 3
    labels[["file", "team"]].to_csv(root / "teams.csv", index=False)
    config, weights, arch = tiny_model_files
    r = CliRunner().invoke(cli, ["retrieve", "--word", "nurse", "--k", "6", "--format", "csv", "--attributes", "team",
                                 "--model", f"{arch}:{weights}", "--model-config", str(config), "--dataset",
                                 f"csv:{root / 'teams.csv'}", "--cache-dir", str(tmp_path / "cache"), "--device",
                                 "cpu", "--workers", "0"])
    assert r.exit_code == 0, r.output
    text = r.output[r.output.index("attribute,"):]
    _no_formula_cell(text)
    table = pd.read_csv(io.StringIO(text))
    assert sorted(table["group"]) == sorted(["'=HYPERLINK(\"http://x\")", "'-minus", "'@at", "plain"])
    assert (table["skew"] < 0).any() and table["skew"].dtype == float        # negative skews stay numbers
