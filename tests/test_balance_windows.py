"""The keep flags' one-pass rank windows (keepflags.rank_windows / window_scan / window_thresholds) give the
thresholds of the exact two passes (histogram, boundary bucket); a window that misses its boundary is
named and its pattern takes the exact passes, in the pipeline as well (same weights, byte for byte in
the values)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_balance import _keep_case
from test_balance_pipeline import config, data  # noqa: F401  (the fixture: generated LAION-schema parquet)

from clipprobe.analysis import keepflags as K
from clipprobe.analysis import patterns as P
from clipprobe.captions.patterns import EngineSettings
from clipprobe.errors import DataError
from clipprobe.pipeline.balance import fit_balance


def _chunks(seed=21, n=9000, repeated=True):
    s, y, table, ids, sol, texts, urls = _keep_case(seed=seed, n=n)
    hashes = K.content_hashes(texts) if repeated else K.content_hashes(texts, urls)
    bounds = [(0, 1234), (1234, 1235), (1235, 7000), (7000, n)]
    chunks = []
    for ordinal, (a, b) in enumerate(bounds):
        t, i = P.encode_patterns(s[a:b], y[a:b])
        chunks.append((K.fitted_rows(sol.table, t, i), K.rank_keys(hashes[a:b], 3),
                       K.positions(ordinal, np.arange(b - a))))
    return sol, chunks


def _exact(ranks, chunks):
    hist = [K.rank_histogram(ranks, p, k) for p, k, _ in chunks]
    ranks = K.rank_boundaries(ranks, np.concatenate([c for c, _ in hist]), np.concatenate([n for _, n in hist]))
    cand = [K.rank_candidates(ranks, *c) for c in chunks]
    return K.rank_thresholds(ranks, *(np.concatenate(parts) for parts in zip(*cand)))


def _windows(ranks, chunks, **kw):
    ranks = K.rank_windows(ranks, **kw)
    parts = [K.window_scan(ranks, *c) for c in reversed(chunks)]
    seen = sum(p[0] for p in parts)
    below = sum(p[1] for p in parts)
    inside = [np.concatenate([p[2][j] for p in parts]) for j in range(3)]
    return (*K.window_thresholds(ranks, seen, below, *inside), int(inside[0].size))


@pytest.mark.parametrize("repeated", [True, False])
def test_windows_find_the_exact_thresholds(repeated):
    sol, chunks = _chunks(repeated=repeated)
    plan = K.rank_plan(K.flag_counts(sol), sol.table.count)
    exact = _exact(plan, chunks)
    got, missed, inside = _windows(plan, chunks)
    split = plan.split
    assert split.sum() >= 3 and not missed.any()
    np.testing.assert_array_equal(got.t_key[split], exact.t_key[split])
    np.testing.assert_array_equal(got.t_pos[split], exact.t_pos[split])
    for c in chunks:
        np.testing.assert_array_equal(K.rank_keep(got, *c), K.rank_keep(exact, *c))
    assert inside < 9000 / 3                               # a window holds a few captions per pattern
    # windows of one caption either side of the expected rank: most miss, and those that hit are exact
    narrow, missed, _ = _windows(plan, chunks, sigmas=0.0)
    assert missed.any() and (split & ~missed).any() and not (missed & ~split).any()
    hit = split & ~missed
    np.testing.assert_array_equal(narrow.t_key[hit], exact.t_key[hit])
    np.testing.assert_array_equal(narrow.t_pos[hit], exact.t_pos[hit])
    # a budget the windows exceed shrinks them, never below the floor
    small = K.rank_windows(plan, budget=10)
    wide = K.rank_windows(plan)
    assert ((small.hi - small.lo)[split] < (wide.hi - wide.lo)[split]).all()


def test_a_chunk_missing_from_the_windows_is_an_error():
    sol, chunks = _chunks()
    ranks = K.rank_windows(K.rank_plan(K.flag_counts(sol), sol.table.count))
    seen, below, inside = K.window_scan(ranks, *chunks[2])
    with pytest.raises(DataError, match="the data changed"):
        K.window_thresholds(ranks, seen, below, *inside)


def test_a_fit_whose_windows_miss_writes_the_same_weights(data, tmp_path, monkeypatch):  # noqa: F811
    """Windows of no width miss nearly every boundary: those patterns take the exact passes, and the
    weights are those of a fit whose windows hit."""
    root, _ = data
    engine = EngineSettings(workers=2, chunk_rows=300)
    wide = fit_balance(config(root, tmp_path / "wide", seed=5, engine=engine))
    monkeypatch.setattr(K, "WINDOW_SIGMAS", 0.0)
    monkeypatch.setattr(K, "WINDOW_MIN_SIGMAS", 0.0)
    narrow = fit_balance(config(root, tmp_path / "narrow", seed=5, engine=engine))
    assert narrow.run["fit"]["flags"]["patterns_split"] > 0
    assert narrow.run["rows_scanned_this_run"]["ranks"] > wide.run["rows_scanned_this_run"]["ranks"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "wide" / "weights.parquet"),
                                  pd.read_parquet(tmp_path / "narrow" / "weights.parquet"))
    for name in ("patterns.parquet", "residuals.parquet", "bias_groups.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "wide" / name),
                                      pd.read_parquet(tmp_path / "narrow" / name))


def test_the_chunk_cache_serves_what_the_file_holds(tmp_path):
    """Chunks written while the cache is on are read back from memory as the file holds them; a file replaced
    since is read from disk; the cache takes nothing past its limit and empties when stopped."""
    from clipprobe.captions.indicators import ChunkCache, IndicatorSpec, load_chunk, save_chunk

    names = {"groups": ("a", "b"), "labels": ("l",)}
    spec = IndicatorSpec(space={}, matcher=b"", **names)
    s = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])
    y = np.array([[1], [0], [0], [1]])
    table, ids = P.encode_patterns(s, y, **names)
    hashes = K.content_hashes(["w", "x", "y", "z"])
    cache = ChunkCache(1 << 20)
    import clipprobe.captions.indicators as I

    old, I.CHUNK_CACHE = I.CHUNK_CACHE, cache
    try:
        cache.start()
        path = tmp_path / "c.npz"
        save_chunk(path, table, ids, hashes)
        assert cache.get(path) is not None
        t2, i2, h2 = load_chunk(path, spec, hashes=True)
        np.testing.assert_array_equal(i2, ids)
        np.testing.assert_array_equal(h2, hashes)
        np.testing.assert_array_equal(t2.keys, table.keys)
        # another chunk written to the same path by someone else: its identity changes, the disk wins
        other, other_ids = P.encode_patterns(s[:2], y[:2], **names)
        cache.on = False
        save_chunk(path, other, other_ids, hashes[:2])
        cache.on = True
        assert cache.get(path) is None
        np.testing.assert_array_equal(load_chunk(path, spec, hashes=True)[1], other_ids)
        cache.start(limit=10)                      # too small for any chunk: nothing is held
        save_chunk(tmp_path / "d.npz", table, ids, hashes)
        assert cache.get(tmp_path / "d.npz") is None and cache.used == 0
        cache.start()
        save_chunk(tmp_path / "e.npz", table, ids, hashes)
        assert cache.used > 0
        cache.stop()
        assert cache.get(tmp_path / "e.npz") is None and not cache.items
        np.testing.assert_array_equal(load_chunk(tmp_path / "e.npz", spec)[1], ids)
    finally:
        I.CHUNK_CACHE = old


def test_a_fit_without_the_chunk_cache_writes_the_same_bytes(data, tmp_path, monkeypatch):  # noqa: F811
    """The rank and weights passes read the chunks (and the key column) from memory or from disk alike:
    the weights files are the same, byte for byte."""
    import clipprobe.captions.indicators as I

    root, _ = data
    engine = EngineSettings(workers=2, chunk_rows=300)
    fit_balance(config(root, tmp_path / "held", seed=2, engine=engine))
    monkeypatch.setattr(I.CHUNK_CACHE, "default_limit", 0)
    fit_balance(config(root, tmp_path / "disk", seed=2, engine=engine))
    held = sorted((tmp_path / "held" / "weights.parquet").iterdir())
    disk = sorted((tmp_path / "disk" / "weights.parquet").iterdir())
    assert len(held) == len(disk) > 3
    for a, b in zip(held, disk):
        assert a.read_bytes() == b.read_bytes(), a.name
