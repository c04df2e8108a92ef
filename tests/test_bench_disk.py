"""The attribute benchmark's reads "from disk" (benchmarks/bench_attributes.py): a file's pages are evicted
from the page cache, and the share still cached is counted by ``mincore``; checked against a read that
refuses to wait for the disk (``RWF_NOWAIT``), which succeeds only on a cached page."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from benchmodule import bench

pytestmark = pytest.mark.skipif(not (hasattr(os, "posix_fadvise") and hasattr(os, "RWF_NOWAIT")),
                                reason="Linux page-cache calls")


def _nowait_cached(path: Path, offsets) -> list[bool]:
    """Whether a 4 KiB read at each offset is served from the page cache without waiting for the disk."""
    fd = os.open(path, os.O_RDONLY)
    out = []
    try:
        for off in offsets:
            try:
                os.preadv(fd, [bytearray(4096)], off, os.RWF_NOWAIT)
                out.append(True)
            except BlockingIOError:
                out.append(False)
    finally:
        os.close(fd)
    return out


def test_eviction_is_counted_as_a_read_that_cannot_wait_sees_it(tmp_path):
    b = bench("bench_attributes")
    path = tmp_path / "shard.npy"
    np.save(path, np.random.default_rng(0).standard_normal((4096, 64)).astype(np.float16))   # 512 KiB
    path.read_bytes()
    assert b.cached_share([path]) == 1.0
    offsets = range(0, path.stat().st_size - 4096, 64 * 1024)
    assert all(_nowait_cached(path, offsets))
    left = b.evict([path])
    # where the file system drops the pages (not tmpfs), mincore says none is left, and no read is
    # served without the disk; where it keeps them, both say so
    seen = _nowait_cached(path, [0])[0]
    assert left in (0.0, 1.0)
    assert seen == (left == 1.0)
    path.read_bytes()
    assert b.cached_share([path]) == 1.0


def test_the_share_counts_pages_of_every_file(tmp_path):
    b = bench("bench_attributes")
    small, large = tmp_path / "a.bin", tmp_path / "b.bin"
    small.write_bytes(b"x" * 4096)
    large.write_bytes(b"y" * 3 * 4096)
    small.read_bytes()
    large.read_bytes()
    if b.evict([large]) != 0.0:
        pytest.skip("this file system keeps the pages of an evicted file")
    assert b.cached_share([small, large]) == pytest.approx(1 / 4)
