"""The fast paths of the scanner against independent oracles: non-ASCII neighbours decoded with numpy,
captions with irregular whitespace rescanned, the on-disk database cache, sample picking per chunk."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_captions_count import GROUPS, LEXICON, TAXONOMY
from test_captions_matching import TERMS, oracle_contains

from clipprobe.captions import matching
from clipprobe.captions.matching import WHITESPACE, Matcher, normalise_term
from clipprobe.pipeline.captions import CountConfig, count_captions
from clipprobe.captions.synth import realistic_captions, write_laion_parquet


@pytest.fixture(scope="module")
def matcher():
    return Matcher(TERMS)


def _pairs(res):
    return {(int(r), t) for r, t in zip(res.rows, (res.terms.tolist()))}


def _expected_pairs(matcher, texts):
    index = {t: i for i, t in enumerate(matcher.terms)}
    return {(i, index[normalise_term(t)]) for i, c in enumerate(texts) for t in TERMS if oracle_contains(c, t)}


def test_numpy_neighbour_decoder_equals_python_decoder_for_every_code_point():
    """Every code point below U+3000 (and a few above) before and after a term: same verdict as decoding."""
    cps = [cp for cp in range(0x80, 0x3100) if not 0xD800 <= cp <= 0xDFFF] + [0x1D400, 0x1F642, 0x10FFFF]
    parts, begins = [b"\x00"], []
    pos = 1
    for cp in cps:
        for piece in (chr(cp).encode() + b"man\x00", b"man" + chr(cp).encode() + b"\x00"):
            start = pos + (len(chr(cp).encode()) if piece.startswith(chr(cp).encode()) else 0)
            begins.append(start)
            parts.append(piece)
            pos += len(piece)
    buf = np.frombuffer(b"".join(parts), np.uint8)
    begin = np.asarray(begins, np.int64)
    end = begin + 3
    ok, known = matching._non_word_neighbours(buf, begin, end)
    assert known.sum() > 0.9 * len(begin)               # the table covers nearly all of them
    assert not known[-12:].any()                          # four-byte characters go to Python
    starts = np.searchsorted(np.flatnonzero(buf == 0), begin, side="right")
    zero = np.flatnonzero(buf == 0)
    for j in np.flatnonzero(known):
        cap_start = int(zero[starts[j] - 1]) + 1
        assert bool(ok[j]) == matching._whole_word(buf, cap_start, int(begin[j]), int(end[j])), (j, cps[j // 2])


NEIGHBOURS = ["é", "ñ", "ª", "²", "µ", "×", "·", "¿", "\u0301", "’", "“", "—", "…", "\u203f", "\u2070", "\u2082",
              "\u2103", "\u216b", "ぁ", "中", "\u3000", "🙂", "\U0001d400", "\u00a0", "\u2028", "\x85", "Ж", "ǅ"]


def test_non_ascii_neighbours_equal_oracle(matcher):
    texts = []
    for ch in NEIGHBOURS:
        texts += [f"{ch}man", f"man{ch}", f"a {ch}man{ch} b", f"{ch}middle eastern{ch}", f"{ch}ЖЖ{ch}",
                  f"x{ch}5-year-old", f"élève{ch}", f"{ch}{ch}terrorist's", f"{ch} man {ch}"]
    found = matcher.scan(pa.array(texts, type=pa.string()))
    assert _pairs(found) == _expected_pairs(matcher, texts)


def test_invalid_utf8_neighbours_are_boundaries(matcher):
    raw = [b"\xffman\xfe", b"\xc3man", b"man\xe2\x80", b"\xe2\x80man", b"\xe2\x80\x99man\xe2\x80\x99", b"\xf0\x9f\x99man",
           b"man\xc3", b"mid\xffdle eastern", b"middle\xc2eastern", b"\xed\xa0\x80man",
           b"man\xff  middle \t eastern", b"\xc3 middle\xc2\xa0eastern\xe2"]     # rescanned ones too
    data = b"".join(raw)
    offsets = np.cumsum([0] + [len(r) for r in raw]).astype(np.int32)
    arr = pa.StringArray.from_buffers(len(raw), pa.py_buffer(offsets.tobytes()), pa.py_buffer(data))
    texts = [r.decode("utf-8", errors="replace") for r in raw]    # invalid bytes are non-letters
    assert _pairs(matcher.scan(arr)) == _expected_pairs(matcher, texts)


def test_irregular_whitespace_captions_are_rescanned(matcher):
    texts = ["middle eastern man"]
    for ws in WHITESPACE:
        texts += [f"middle{ws}eastern", f"Middle{ws}{ws} Eastern man", f"man{ws}", f"{ws}terrorist{ws}{ws}",
                  f"african{ws}american", f"african-american{ws}x"]
    texts += ["middle  eastern", "middle \t eastern", "middle eastern\t", None, "", "  ", "a  b man"]
    arr = pa.array(texts, type=pa.string())
    found = matcher.scan(arr)
    assert _pairs(found) == _expected_pairs(matcher, texts)
    key = found.rows * len(matcher.terms) + found.terms
    assert (np.diff(key) > 0).all()                       # sorted by row then term, each pair once
    # the same captions one at a time, and among plain ones, give the same pairs
    mixed = ["a man"] * 50 + texts + ["middle eastern"] * 50
    got = _pairs(matcher.scan(pa.array(mixed, type=pa.large_string())))
    assert got == _expected_pairs(matcher, mixed)


def test_cached_database_is_reused_and_replaced_when_corrupt(tmp_path, monkeypatch, matcher):
    first = Matcher.cached(TERMS, tmp_path)
    files = list(tmp_path.glob("*.hsdb"))
    assert len(files) == 1
    texts = ["a man", "Middle  Eastern élève", "terrorists", "ceo's"]
    want = _pairs(matcher.scan(pa.array(texts)))
    assert _pairs(first.scan(pa.array(texts))) == want

    def no_compile(self):
        raise AssertionError("compiled although cached")

    with monkeypatch.context() as m:
        m.setattr(Matcher, "_compile", no_compile)
        again = Matcher.cached(TERMS, tmp_path)
    assert _pairs(again.scan(pa.array(texts))) == want
    blob = bytearray(files[0].read_bytes())
    blob[-10] ^= 0xFF
    files[0].write_bytes(bytes(blob))
    rebuilt = Matcher.cached(TERMS, tmp_path)
    assert _pairs(rebuilt.scan(pa.array(texts))) == want
    assert files[0].read_bytes() != bytes(blob)           # the corrupt file was replaced
    assert Matcher(["man"]).cache_key() != Matcher(["men"]).cache_key()


def test_unloadable_database_bytes_are_compiled_again(caplog, matcher):
    with caplog.at_level(logging.WARNING):
        clone = Matcher.from_bytes(TERMS, b"not a database" * 10)
    assert "compiling again" in caplog.text
    texts = ["a man", "middle\teastern", "ÉLÈVE"]
    assert _pairs(clone.scan(pa.array(texts))) == _pairs(matcher.scan(pa.array(texts)))


def test_samples_do_not_depend_on_chunking_or_workers(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    words = ["terrorist", "thief", "mugger", "nurse", "CEO", "delivery man"]
    terms = ["man", "men", "woman", "arab", "chinese", "african-american", "girl", "boy"]
    for i in range(2):
        caps = realistic_captions(700, words, terms, word_rate=0.6, term_rate=0.6, seed=10 + i)
        write_laion_parquet(tmp_path / f"f{i}.parquet", caps, row_group_size=23, seed=i)
    common = dict(captions=(str(tmp_path / "f*.parquet"),), taxonomy=str(tmp_path / "tax.yaml"),
                  lexicon=str(tmp_path / "lex.yaml"), samples=3)
    one = count_captions(CountConfig(out=str(tmp_path / "a"), workers=1, chunk_rows=10**6, **common))
    many = count_captions(CountConfig(out=str(tmp_path / "b"), workers=2, chunk_rows=46, **common))
    pd.testing.assert_frame_equal(one.table, many.table)
    a = pd.read_parquet(tmp_path / "a" / "samples.parquet").sort_values(["word", "group", "file", "row"])
    b = pd.read_parquet(tmp_path / "b" / "samples.parquet").sort_values(["word", "group", "file", "row"])
    pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True))
    assert len(a) > 20
    # and they are the first 3 captions of each cell in file order (oracle: per-caption regex)
    want = {}
    for i in range(2):
        texts = pq.read_table(tmp_path / f"f{i}.parquet", columns=["TEXT"]).column(0).to_pylist()
        for row, text in enumerate(texts):
            for w in words:
                for (attribute, group), group_terms in GROUPS.items():
                    if oracle_contains(text, w) and any(oracle_contains(text, t) for t in group_terms):
                        cell = want.setdefault((w, group), [])
                        if len(cell) < 3:
                            cell.append((f"f{i}.parquet", row))
    got = {}
    for r in a.itertuples():
        got.setdefault((r.word, r.group), []).append((r.file.rsplit("/", 1)[-1], r.row))
    assert got == want
