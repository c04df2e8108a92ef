"""The token path (clipprobe.captions.tokens) against the per-caption oracle and the Hyperscan matcher."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_captions_matching import TERMS, TRAPS, oracle_contains

from clipprobe.captions import tokens
from clipprobe.captions.matching import Matcher, normalise_term
from clipprobe.pipeline.captions import CountConfig, count_captions
from clipprobe.errors import UsageError

pytest.importorskip("numba")       # a dependency; the pass is compiled by it

# terms the token path cannot express, or expresses with separators other than one space or a hyphen
ODD_TERMS = ["o'brien", "c.e.o.", "a - b", "#metoo", "r&b", "x_y", "mr.  smith", "b2b", "one two three four five six",
             "a" * 40, "pneumonoultramicroscopicsilicovolcanoconiosis victim", "man.woman", "ab--cd", "ω"]
ALL_TERMS = TERMS + ODD_TERMS

ODD_CAPTIONS = [
    "O'Brien's pub", "o’brien", "obrien", "the C.E.O. said", "c.e.o", "ceo.", "a - b", "a -b", "a  -  b", "a-b",
    "#MeToo now", "metoo", "#metoo#metoo", "R&B music", "r & b", "x_y", "X_Y_Z", "Mr. Smith", "mr.smith",
    "Mr.\tSmith", "B2B sales", "b2bb", "one two  three\tfour\nfive six", "one two three four five six seven",
    "A" * 40, "a" * 41, "pneumonoultramicroscopicsilicovolcanoconiosis  victim", "man.woman", "man..woman",
    "ab--cd", "ab-cd", "ab---cd", "Ω", "ω!", "ωω", "five six", "6-year-old 5-year-old",
]


@pytest.fixture(scope="module")
def token_matcher():
    return tokens.TokenMatcher(Matcher(ALL_TERMS))


def _pairs(res, terms):
    return {(int(r), terms[int(t)]) for r, t in zip(res.rows, res.terms)}


def _oracle(captions, terms):
    return {(i, normalise_term(t)) for i, c in enumerate(captions) for t in terms if oracle_contains(c, t)}


def test_split_term():
    assert tokens.split_term("middle eastern") == (["middle", "eastern"], [" "])
    assert tokens.split_term("5-year-old") == (["5", "year", "old"], ["-", "-"])
    assert tokens.split_term("o'brien") == (["o", "brien"], ["'"])
    for term in ("c.e.o.", "#metoo", "a - b", "élève", "x "):
        assert tokens.split_term(term) is None


def test_which_terms_go_to_hyperscan(token_matcher):
    rest = {token_matcher.terms[k] for k in token_matcher.rest_terms}
    assert {"c.e.o.", "#metoo", "a - b"} <= rest            # punctuation at an end, mixed separators
    assert "o'brien" not in rest and "middle eastern" not in rest and "man" not in rest
    # non-ASCII terms are neither: they cannot occur in an ASCII caption, Hyperscan sees the others
    assert "élève" not in rest and "ω" not in rest


def test_traps_equal_oracle(token_matcher):
    captions = TRAPS + ODD_CAPTIONS
    res = token_matcher.scan(pa.array(captions, type=pa.string()))
    assert _pairs(res, token_matcher.terms) == _oracle(captions, ALL_TERMS)
    assert res.n_captions == len(captions) and res.n_nulls == 0


def test_same_arrays_as_hyperscan(token_matcher):
    captions = [None, *TRAPS, None, *ODD_CAPTIONS, "", None]
    arr = pa.array(captions, type=pa.string())
    expected = token_matcher.matcher.scan(arr)
    for variant in (arr, arr.cast(pa.large_string()), pa.chunked_array([arr.slice(0, 10), arr.slice(10)])):
        got = token_matcher.scan(variant)
        assert np.array_equal(got.rows, expected.rows) and np.array_equal(got.terms, expected.terms)
        assert (got.n_captions, got.n_nulls) == (expected.n_captions, expected.n_nulls) == (len(captions) - 3, 3)
    sliced = token_matcher.scan(arr.slice(7, 40))
    assert _pairs(sliced, token_matcher.terms) == _oracle(captions[7:47], ALL_TERMS)


def test_output_grows_past_its_first_size():
    """More vocabulary tokens than the kernel's first output size (1024 + bytes / 16)."""
    matcher = tokens.TokenMatcher(Matcher(["man", "old man"]))
    captions = ["man old man"] * 3000 + ["a man"]
    res = matcher.scan(pa.array(captions))
    assert _pairs(res, matcher.terms) == _oracle(captions, ["man", "old man"])
    assert len(res.rows) == 2 * 3000 + 1


def test_only_non_ascii_terms_and_no_terms():
    matcher = tokens.TokenMatcher(Matcher(["élève", "ж"]))
    captions = ["ÉLÈVE", "eleve", "Ж!", "plain ascii", None]
    assert _pairs(matcher.scan(pa.array(captions)), matcher.terms) == _oracle(captions, ["élève", "ж"])
    empty = tokens.TokenMatcher(Matcher([]))
    res = empty.scan(pa.array(["man", None]))
    assert len(res.rows) == 0 and res.n_captions == 1 and res.n_nulls == 1


def test_token_bucket_matches_kernel_hash():
    """The build side and the kernel agree on every vocabulary token (else nothing would be found)."""
    words = ["a", "man", "x" * 33, "0", "z9"]
    matcher = tokens.TokenMatcher(Matcher(words))
    res = matcher.scan(pa.array([w.upper() for w in words]))
    assert _pairs(res, matcher.terms) == {(i, w) for i, w in enumerate(words)}


_PIECES = ["man", "Man", "men", "woman", "middle", "eastern", "african", "american", "5", "year", "old", "o", "brien",
           "c", "e", "ceo", "r", "b", "metoo", "mr", "smith", "é", "ñ", "\u0303", "ж", "a", "x", "y", "b2b"]
_SEPS = [" ", "  ", "\t", "-", "--", "'", "’", ".", "&", "#", "_", " - ", "\u00a0", "\n", "", ",", "!"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(st.none(), st.lists(st.tuples(st.sampled_from(_PIECES), st.sampled_from(_SEPS)),
                                              max_size=8)), min_size=1, max_size=25))
def test_random_captions_equal_oracle_and_hyperscan(token_matcher, rows):
    captions = [None if r is None else "".join(p + s for p, s in r) for r in rows]
    arr = pa.array(captions, type=pa.string())
    got = token_matcher.scan(arr)
    assert _pairs(got, token_matcher.terms) == _oracle(captions, ALL_TERMS)
    hs = token_matcher.matcher.scan(arr)
    assert np.array_equal(got.rows, hs.rows) and np.array_equal(got.terms, hs.terms)


def test_count_captions_tokens_equals_hyperscan(tmp_path, monkeypatch):
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.captions.synth import realistic_captions, write_laion_parquet
    from clipprobe.resources.taxonomy import get_taxonomy

    caps = realistic_captions(3000, get_taxonomy().words()[:60], get_lexicon().terms(), seed=3)
    caps[5] = "Ein Mädchen: a young woman’s café, middle\u00a0eastern man"      # non-ASCII rows too
    write_laion_parquet(tmp_path / "a.parquet", caps, row_group_size=700)
    with pytest.raises(UsageError, match="unknown matcher 'aho'"):
        count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / "x"), matcher="aho"))
    with monkeypatch.context() as patch:
        patch.setattr(tokens, "available", lambda: False)
        with pytest.raises(UsageError, match="needs numba"):
            count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / "t"),
                                       matcher="tokens"))
    out = {}
    for matcher in ("hyperscan", "tokens"):
        res = count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / matcher),
                                         workers=1, chunk_rows=1400, matcher=matcher))
        out[matcher] = res
        assert res.run["matcher"] == matcher
    a, b = out["hyperscan"].table, out["tokens"].table
    for column in ("n_captions", "n_word", "n_group", "n_both"):
        assert (a[column].to_numpy() == b[column].to_numpy()).all()
    samples = [pq.read_table(tmp_path / m / "samples.parquet").to_pylist() for m in ("hyperscan", "tokens")]
    assert samples[0] == samples[1] and samples[0]
    auto = count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / "auto"), workers=1))
    assert auto.run["matcher"] == "tokens"
    assert (auto.table["n_both"].to_numpy() == a["n_both"].to_numpy()).all()


def test_without_numba_auto_and_workers_use_hyperscan(tmp_path, monkeypatch, caplog):
    from clipprobe.captions.scan import ScanSpec, TermSpace, _Worker
    from clipprobe.captions.synth import write_laion_parquet

    monkeypatch.setattr(tokens, "available", lambda: False)
    write_laion_parquet(tmp_path / "a.parquet", ["a man who is a terrorist", "a woman", None])
    res = count_captions(CountConfig(captions=(str(tmp_path / "a.parquet"),), out=str(tmp_path / "o"), workers=1))
    assert res.run["matcher"] == "hyperscan"
    space = TermSpace.build(["man"], _lexicon())
    spec = ScanSpec(space=space.to_dict(), matcher=Matcher(space.terms).to_bytes(), method="tokens")
    with caplog.at_level("WARNING"):
        worker = _Worker(spec)
    assert isinstance(worker.matcher, Matcher) and "numba is not installed" in caplog.text


def _lexicon():
    from clipprobe.resources.lexicon import get_lexicon

    return get_lexicon()


def test_every_neighbour_character_equals_hyperscan_and_oracle():
    """The kernel's UTF-8 decoding and letter table, for code points of every length before and after terms."""
    cps = [cp for cp in range(0x80, 0x3100) if not 0xD800 <= cp <= 0xDFFF]
    cps += list(range(0x10000, 0x10000 + 0x3000, 7)) + [0x1D400, 0x1F642, 0x20000, 0xE0041, 0x10FFFF, 0xFFFD]
    captions = [f"{chr(cp)}man{chr(cp)}middle{chr(cp)}eastern man{chr(cp)}" for cp in cps]
    terms = ["man", "middle eastern", "eastern man", "mañana"]
    matcher = tokens.TokenMatcher(Matcher(terms))
    arr = pa.array(captions, type=pa.string())
    got, hs = matcher.scan(arr), matcher.matcher.scan(arr)
    assert np.array_equal(got.rows, hs.rows) and np.array_equal(got.terms, hs.terms)
    assert _pairs(got, matcher.terms) == _oracle(captions, terms)


def test_malformed_utf8_goes_to_hyperscan():
    raw = [b"a man \xff woman", b"man\xc3", b"\xe2\x82 man", b"\xf0\x9f\x99 old man", b"ok man", b"\xed\xa0\x80man"]
    arr = pa.array(raw, type=pa.binary()).view(pa.string())
    matcher = tokens.TokenMatcher(Matcher(["man", "old man", "woman"]))
    got, hs = matcher.scan(arr), matcher.matcher.scan(arr)
    assert np.array_equal(got.rows, hs.rows) and np.array_equal(got.terms, hs.terms)
    assert (4, "man") in _pairs(got, matcher.terms) and (0, "woman") in _pairs(got, matcher.terms)


ODD_TAXONOMY = """name: odd
categories:
  any: [man, middle eastern, "o'brien", "c.e.o.", "#metoo", élève, "a - b", 5-year-old, delivery man]
"""
ODD_LEXICON = """name: odd-lex
attributes:
  kind:
    plain: [woman, women, old man]
    odd: ["r&b", "mr.  smith", "x_y"]
    wide: [ω, ж, mañana]
"""


def _table_and_samples(out):
    table = pq.read_table(out / "cooccurrence.parquet").to_pandas()
    return table, pq.read_table(out / "samples.parquet").to_pylist()


def test_counting_pass_equals_hyperscan_with_every_kind_of_term(tmp_path, monkeypatch):
    """The pass counts plain captions itself and leaves the rest (Hyperscan-only terms, non-ASCII terms,
    malformed UTF-8) to the caller: counts and samples equal the Hyperscan path's, also when its output
    arrays start with room for one item and must grow many times."""
    (tmp_path / "tax.yaml").write_text(ODD_TAXONOMY)
    (tmp_path / "lex.yaml").write_text(ODD_LEXICON)
    texts = [c.encode() for c in TRAPS + ODD_CAPTIONS if c is not None]
    texts += [b"a man \xff woman", b"man\xc3", b"\xe2\x82 old man", b"old man \xf0\x9f\x99 x_y", b"\xed\xa0\x80man",
              "o'brien, ω and ж: woman".encode(), b"c.e.o. of r&b, an old man", "mañana man".encode()]
    rng = np.random.default_rng(5)
    rows = [texts[i] for i in rng.integers(0, len(texts), 900)] + [None] * 20
    rng.shuffle(rows)
    arr = pa.array(rows, type=pa.binary()).view(pa.string())
    table = pa.table({"URL": pa.array([f"u{i}" for i in range(len(rows))]), "TEXT": arr})
    pq.write_table(table, tmp_path / "odd.parquet", row_group_size=97)
    monkeypatch.setattr(tokens, "FIRST_ROOM", 1)
    common = dict(captions=(str(tmp_path / "odd.parquet"),), taxonomy=str(tmp_path / "tax.yaml"),
                  lexicon=str(tmp_path / "lex.yaml"), samples=2, workers=1, chunk_rows=300)
    res = {m: count_captions(CountConfig(out=str(tmp_path / m), matcher=m, **common)) for m in ("hyperscan", "tokens")}
    assert res["tokens"].run["matcher"] == "tokens"
    a, sa = _table_and_samples(tmp_path / "hyperscan")
    b, sb = _table_and_samples(tmp_path / "tokens")
    pd.testing.assert_frame_equal(a, b)
    assert sa == sb and len(sa) >= 12
    assert a["n_both"].sum() > 50 and (a.loc[a.group == "wide", "n_both"] > 0).any()
    assert (a.loc[a.group == "odd", "n_both"] > 0).any() and (a.loc[a.word == "c.e.o.", "n_word"] > 0).all()


def test_count_method_against_pairs_from_scan(token_matcher):
    """TokenMatcher.count on one batch: the counts it makes plus those of the captions it defers equal the
    counts made from scan()'s pairs; candidates are the first captions of each cell, in row order."""
    from clipprobe.captions.scan import TermSpace

    captions = (TRAPS + ODD_CAPTIONS) * 3 + [None, "ж man", "ω woman élève"]
    arr = pa.array(captions, type=pa.string())
    terms = token_matcher.terms
    words = [t for k, t in enumerate(terms) if k % 2 == 0] + ["ω", "ж"]       # ASCII, odd and non-ASCII terms
    space = TermSpace(tuple(words), (("g", "a"), ("g", "b")), terms, tuple(terms.index(w) for w in words),
                      (tuple(range(0, len(terms), 3)), tuple(range(1, len(terms), 2))))
    word_ptr, word_idx, group_ptr, group_idx = space.term_maps()
    n_word, n_group = np.zeros(len(words), np.int64), np.zeros(2, np.int64)
    n_both = np.zeros((len(words), 2), np.int64)
    taken = np.zeros(len(words) * 2, np.int64)
    taken[3] = 1                                         # one sample taken before for cell 3
    deferred, cand = token_matcher.count(arr, word_ptr, word_idx, group_ptr, group_idx, n_word, n_group, n_both,
                                         taken, 2)

    def pairs_to_sets(rows, terms_):
        per_row = {}
        for r, t in zip(rows.tolist(), terms_.tolist()):
            per_row.setdefault(r, set()).add(t)
        return per_row

    def counts(per_row):
        w = np.zeros(len(words), np.int64)
        g = np.zeros(2, np.int64)
        b = np.zeros((len(words), 2), np.int64)
        cells = []
        for r in sorted(per_row):
            ws = sorted({i for t in per_row[r] for i in word_idx[word_ptr[t]:word_ptr[t + 1]]})
            gs = sorted({j for t in per_row[r] for j in group_idx[group_ptr[t]:group_ptr[t + 1]]})
            w[ws] += 1
            g[gs] += 1
            for i in ws:
                for j in gs:
                    b[i, j] += 1
                    cells.append((r, i, j))
        return w, g, b, cells

    full = token_matcher.scan(arr)
    want_w, want_g, want_b, want_cells = counts(pairs_to_sets(full.rows, full.terms))
    d_w, d_g, d_b, d_cells = counts(pairs_to_sets(deferred.rows, deferred.terms))
    assert np.array_equal(n_word + d_w, want_w) and np.array_equal(n_group + d_g, want_g)
    assert np.array_equal(n_both + d_b, want_b) and want_b.sum() > 10
    assert len(deferred.rows) and set(deferred.rows.tolist()) < set(full.rows.tolist())
    counted = [c for c in want_cells if c not in set(d_cells)]
    expect, seen = [], taken.copy()
    for r, i, j in counted:
        if seen[i * 2 + j] < 2:
            seen[i * 2 + j] += 1
            expect.append((r, i, j))
    assert sorted(map(tuple, cand.T.tolist())) == sorted(expect)
    assert np.all(np.diff(cand[0]) >= 0)


def test_each_thread_of_the_pool_has_its_own_worker():
    """Hyperscan scratch space is per worker: the threads of the local pool never share one."""
    import threading

    from clipprobe.captions.scan import ScanSpec, TermSpace, _Worker, prepare_worker

    space = TermSpace.build(["man", "élève"], _lexicon())
    spec = ScanSpec(space=space.to_dict(), matcher=Matcher(space.terms).to_bytes(), method="tokens")
    prepare_worker(spec, 3)
    spares = list(_Worker._spare)
    assert len(spares) == 2
    seen = []
    together = threading.Barrier(3)           # alive at once, as the threads of a pool are

    def work():
        seen.append(_Worker.get(spec))
        together.wait()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    mine = _Worker.get(spec)
    assert len({id(w) for w in seen + [mine]}) == 4
    assert {id(w) for w in spares} <= {id(w) for w in seen}          # the prepared ones were used
    assert len({id(w.matcher.matcher) for w in seen + [mine]}) == 4   # and so their Hyperscan scratch


def test_every_alignment_to_the_64_byte_blocks(token_matcher):
    """Terms and long tokens at every offset around the pass's 64-byte blocks, captions of 63-130 bytes."""
    captions = []
    for k in range(0, 131):
        pad = ("ab " * 50)[:k]
        captions += [pad + "middle eastern man", pad + "Man", pad + "terrorist's " + "x" * (k % 9),
                     pad + "manx", pad + "a" * 40, pad + "5-year-old", "w" * k + " man", pad + "mané man",
                     pad + "men" + "\u00a0" + "woman", ("a" * k) + "man"]
    captions += ["x" * 63 + " man", "x" * 64 + " man", "x" * 61 + " man", "man" + " " * 61 + "man", "m" * 64]
    arr = pa.array(captions, type=pa.string())
    res = token_matcher.scan(arr)
    assert _pairs(res, token_matcher.terms) == _oracle(captions, ALL_TERMS)
    expected = token_matcher.matcher.scan(arr)
    assert np.array_equal(res.rows, expected.rows) and np.array_equal(res.terms, expected.terms)


def test_bytes_of_the_next_captions_in_the_block_do_not_leak(token_matcher):
    """The 64-byte loads see the next captions' bytes: word bytes and non-ASCII bytes there change nothing."""
    captions = []
    for k in range(70):
        captions += ["man", "woman" + "x" * k, "é", "man", "MANé", "a man" + " " * k, "ñ man", "man", "terrorist"]
    arr = pa.array(captions, type=pa.string())
    res = token_matcher.scan(arr)
    assert _pairs(res, token_matcher.terms) == _oracle(captions, ALL_TERMS)
    for start in (0, 1, 5, 63):                                          # and slices starting anywhere
        sliced = token_matcher.scan(arr.slice(start))
        assert _pairs(sliced, token_matcher.terms) == _oracle(captions[start:], ALL_TERMS)
