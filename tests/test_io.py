"""clipprobe._io: atomic writes (mode, failures, stale temporaries) and safe reading of data files."""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipprobe import _io
from clipprobe._io import WriteError, atomic_path, clean_stale_temporaries, read_mapping, write_json
from clipprobe.errors import DataError


def _in_child(fn) -> tuple[int, str]:
    """Run ``fn()`` in a forked child; return (exit status, what it wrote to the pipe)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os.close(read_end)
        code = 0
        try:
            text = fn()
        except BaseException as err:  # noqa: BLE001
            text, code = f"{type(err).__name__}: {err}", 3
        os.write(write_end, str(text).encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode()


# --------------------------------------------------------------------------- mode


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_final_file_gets_the_umask_mode_not_owner_only(tmp_path, umask):
    old = os.umask(umask)
    try:
        target = tmp_path / "out.json"
        write_json(target, {"a": 1})
        reference = tmp_path / "plain.txt"
        reference.write_text("x")   # what any new file of the process gets
    finally:
        os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_process_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert _io.process_umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


# --------------------------------------------------------------------------- failures


def test_disk_full_in_the_writer_is_one_line_and_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "x.parquet"
    with pytest.raises(WriteError) as info:
        with atomic_path(target, suffix=".parquet") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert str(info.value) == f"cannot write {target}: No space left on device"
    assert list(target.parent.iterdir()) == []


def test_a_bug_in_the_writer_is_not_called_a_write_failure(tmp_path):
    with pytest.raises(KeyError):
        with atomic_path(tmp_path / "x.json"):
            raise KeyError("bug")
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "y.json"):
            (tmp_path / "missing-input.txt").read_text()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("writer", ["parquet", "npy", "json"])
def test_file_size_limit_is_a_one_line_error_for_every_writer(tmp_path, writer):
    """A real write failure from the kernel (RLIMIT_FSIZE: EFBIG, the way a full disk fails a write)."""
    target = tmp_path / f"big.{writer}"

    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        data = np.arange(200_000, dtype=np.float64)
        try:
            if writer == "parquet":
                _io.write_parquet(target, pd.DataFrame({"a": data}))
            elif writer == "npy":
                _io.write_npy(target, data)
            else:
                _io.write_json(target, data.tolist())
        except WriteError as err:
            return f"WriteError: {err}"
        return "no error"

    code, out = _in_child(child)
    assert code == 0, out
    assert out.startswith(f"WriteError: cannot write {target}: ")
    assert "\n" not in out
    assert list(tmp_path.iterdir()) == []


def _unwritable_folder() -> Path:
    base = Path(tempfile.mkdtemp(prefix="clipprobe-ro-"))
    os.chmod(base, 0o755)
    folder = base / "out"
    folder.mkdir()
    os.chmod(folder, 0o555)
    return folder


def _as_other_user(fn):
    """Run ``fn`` where file permissions apply: as is for a normal user, as 'nobody' under root."""
    if os.getuid() != 0:
        return _in_child(fn)

    def child():
        os.setgid(65534)
        os.setuid(65534)
        return fn()

    return _in_child(child)


def test_read_only_folder_is_a_one_line_error(tmp_path):
    folder = _unwritable_folder()
    try:
        def child():
            try:
                write_json(folder / "run.json", {"a": 1})
            except WriteError as err:
                return f"WriteError: {err}"
            return "no error"

        code, out = _as_other_user(child)
        assert code == 0, out
        assert out == f"WriteError: cannot write {folder / 'run.json'}: Permission denied"

        def child_subfolder():
            try:
                write_json(folder / "figures" / "a.json", {"a": 1})
            except WriteError as err:
                return f"WriteError: {err}"
            return "no error"

        code, out = _as_other_user(child_subfolder)
        assert out == f"WriteError: cannot write {folder / 'figures' / 'a.json'}: Permission denied"
        assert list(folder.iterdir()) == []
    finally:
        os.chmod(folder, 0o755)


def test_output_path_below_a_file_is_a_one_line_error(tmp_path):
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(WriteError, match=r"^cannot write .*taken/x\.json: "):
        write_json(tmp_path / "taken" / "x.json", {})


def test_ensure_dir_failures_are_one_line(tmp_path):
    (tmp_path / "taken").write_text("a file")
    assert _io.ensure_dir(tmp_path / "a" / "b") == tmp_path / "a" / "b" and (tmp_path / "a" / "b").is_dir()
    with pytest.raises(WriteError) as info:
        _io.ensure_dir(tmp_path / "taken" / "sub")
    assert str(info.value) == f"cannot write {tmp_path / 'taken' / 'sub'}: Not a directory"
    with pytest.raises(WriteError, match=r"^cannot write .*taken: File exists$"):
        _io.ensure_dir(tmp_path / "taken")


# --------------------------------------------------------------------------- stale temporaries


def test_stale_temporaries_of_our_pattern_are_removed(tmp_path):
    start = time.time()
    old = [tmp_path / ".groups.parquet.a1b2c3d4.tmp.parquet", tmp_path / ".heatmap.png.zz_9abcd.tmp"]
    new = tmp_path / ".words.parquet.q1w2e3r4.tmp.parquet"
    others = [tmp_path / ".hidden", tmp_path / "notes.tmp", tmp_path / ".x.tmpl"]
    for p in [*old, new, *others]:
        p.write_bytes(b"x")
    for p in [*old, *others]:
        os.utime(p, (start - 600, start - 600))
    assert sorted(clean_stale_temporaries(tmp_path, before=start)) == sorted(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [new, *others])
    assert clean_stale_temporaries(tmp_path / "absent", before=start) == []


def test_a_killed_writer_leaves_a_temporary_that_the_cleaner_recognises(tmp_path):
    target = tmp_path / "figure.png"

    def child():
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)

    _in_child(child)
    left = [p for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].name.startswith(".figure.png.")
    assert clean_stale_temporaries(tmp_path, before=time.time() + 1) == left
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- data files


BOMB = "".join(
    [f"{a}: &{a} [" + ", ".join(['"lol"'] * 9) + "]\n" if i == 0 else
     f"{a}: &{a} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
     for i, (prev, a) in enumerate(zip(" abcdefgh", "abcdefghi"))]
) + "categories:\n  x: [*i]\n"


def test_alias_bomb_is_refused_at_once(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    assert len(BOMB) < 600
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        read_mapping(path, what="taxonomy file")
    assert time.perf_counter() - start < 2
    assert str(info.value) == (f"taxonomy file {path} could not be read: "
                               + _io.WHY_ALIAS_BOMB.format(limit=_io.MAX_ALIAS_NODES))


def test_modest_aliases_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("base: &base {a: 1, b: 2}\nshared: &s [x, y, z]\n"
                    "one: {<<: *base, b: 3}\ntwo: [*s, *s]\n")
    data = read_mapping(path, what="data file")
    assert data["one"] == {"a": 1, "b": 3}
    assert data["two"] == [["x", "y", "z"], ["x", "y", "z"]]


@pytest.mark.parametrize("text, why", [
    ("a: &a [*a]\n", _io.WHY_RECURSIVE_ALIAS.format(line=1)),
    ("a: 1\nb: 2\na: 3\n", _io.WHY_DUPLICATE_KEY.format(key="'a'", first=1, second=3)),
    ("c:\n  x: [1]\n  x: [2]\n", _io.WHY_DUPLICATE_KEY.format(key="'x'", first=2, second=3)),
    ("a: " + "[" * 60 + "]" * 60 + "\n", _io.WHY_TOO_DEEP.format(limit=_io.MAX_DEPTH)),
    ("a: " + "[" * 100_000 + "]" * 100_000 + "\n", _io.WHY_TOO_DEEP.format(limit=_io.MAX_DEPTH)),
])
def test_yaml_problems_are_one_line_errors(tmp_path, text, why):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_mapping(path, what="lexicon file")
    assert str(info.value) == f"lexicon file {path} could not be read: {why}"


@pytest.mark.parametrize("text, why", [
    ('{"a": 1, "a": 2}', _io.WHY_DUPLICATE_JSON_KEY.format(key="'a'")),
    ('{"a": ' + "[" * 60 + "]" * 60 + "}", _io.WHY_TOO_DEEP.format(limit=_io.MAX_DEPTH)),
    ('{"a": ' + "[" * 200_000 + "]" * 200_000 + "}", _io.WHY_TOO_DEEP.format(limit=_io.MAX_DEPTH)),
])
def test_json_problems_are_one_line_errors(tmp_path, text, why):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError) as info:
        read_mapping(path, what="taxonomy file")
    assert str(info.value) == f"taxonomy file {path} could not be read: {why}"


def test_parser_messages_are_bounded(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: [" + "x" * 100_000 + "\n")
    with pytest.raises(DataError) as info:
        read_mapping(path, what="taxonomy file")
    assert len(str(info.value)) < len(str(path)) + 300


def test_shown_is_bounded_and_exact_for_short_values():
    assert repr(_io.Bounded("terrorist")) == "'terrorist'"
    assert repr(_io.Bounded([1, "a"])) == "[1, 'a']"
    nested = [["lol"] * 9] * 9
    for _ in range(6):
        nested = [nested] * 9
    assert len(repr(_io.Bounded(nested))) <= 2 * 60 + 20
    assert len(repr(_io.Bounded("x" * 10_000))) <= 2 * 60 + 20
    assert json.dumps(1) == "1"


@pytest.mark.parametrize("carriage_return", [False, True])
def test_csv_records_text_writes_what_csv_text_writes_for_the_same_table(carriage_return):
    """The pandas-free writer (`clipprobe models`) against the DataFrame one: formula cells protected, missing
    values empty, floats and booleans as pandas writes them, quoting where a cell holds a carriage return."""
    rows = [{"spec": "=cmd|x", "size": 8000.0, "score": 0.1 + 0.2, "cached": True, "note": "a, b"},
            {"spec": "-1.5", "size": None, "score": float("nan"), "cached": None,
             "note": "line\rbreak" if carriage_return else ""}]
    columns = ["spec", "size", "score", "cached", "note"]
    expected = _io.csv_text(pd.DataFrame.from_records(rows, columns=columns), lineterminator="\n")
    assert _io.csv_records_text(columns, rows) == expected
    assert "'=cmd|x" in expected


def test_libyaml_and_python_parsers_read_every_shipped_data_file_alike(monkeypatch):
    """The C parser is used where PyYAML has it; the shipped data files read the same with either."""
    import yaml

    if not hasattr(yaml, "CSafeLoader"):
        pytest.skip("PyYAML without libyaml")
    root = Path(__file__).resolve().parents[1]
    files = [p for folder in ("taxonomy", "prompts", "stimuli", "clipprobe")
             for p in sorted((root / folder).rglob("*.y*ml"))]
    assert len(files) >= 5
    for path in files:
        text = path.read_text(encoding="utf-8")
        fast = _io._parse_yaml(text)
        monkeypatch.delattr(yaml, "CSafeLoader")
        slow = _io._parse_yaml(text)
        monkeypatch.undo()
        assert fast == slow, path
