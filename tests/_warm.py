"""Compile (or load from numba's cache) every compiled kernel of clipprobe once, before the tests run.

A fresh checkout has nothing in numba's cache: the first call of each kernel compiles it (seconds to tens of
seconds), and that time would land in whichever test calls it first. ``tests/conftest.py`` calls
:func:`warm_kernels` once per run, before any test, when the per-test time limit
(``CLIPPROBE_MAX_TEST_SECONDS``) is on, so that the limit measures the tests.
"""

from __future__ import annotations

import time


def warm_kernels() -> dict[str, float]:
    """Seconds each kernel family took to compile or load, by name."""
    import numpy as np

    seconds: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        fn()
        seconds[name] = round(time.perf_counter() - t0, 2)

    rng = np.random.default_rng(0)

    def eat():
        from clipprobe.analysis.eat import permutation_tests

        values = rng.normal(size=(2, 12))
        permutation_tests(values, 6, n_permutations=10_000, seed=0)      # exact: 924 partitions
        values = rng.normal(size=(2, 60))
        permutation_tests(values, 30, n_permutations=50, seed=0)         # sampled

    def scores():
        from clipprobe.analysis.metrics import ndkl, similarity_scores

        q = rng.normal(size=(3, 8)).astype(np.float32)
        x = rng.normal(size=(20, 8)).astype(np.float32)
        similarity_scores(q, x)
        ranked = rng.integers(0, 2, size=(3, 20))
        ndkl(ranked, np.array([0.5, 0.5]), 2)
        order = np.tile(np.arange(20), (3, 1))
        ndkl(order[:, :10], np.array([0.5, 0.5]), 2, codes=ranked[0])     # a block's ranking: a strided view

    def zeroshot():
        from clipprobe.analysis.zeroshot import class_scores, classify

        t = rng.normal(size=(3, 8)).astype(np.float32)
        for dtype in (np.float16, np.float32):
            x = rng.normal(size=(10, 8)).astype(dtype)
            class_scores(x, t)
            classify(x, t, n_groups=2, scale=100.0)       # the fused logits and finish of the attribute pass

    def hashes():
        from clipprobe.analysis.keepflags import content_hashes

        content_hashes(["a caption", "another"], ["http://x", "http://y"])

    def patterns():
        from clipprobe.captions.indicators import encode_chunk

        encode_chunk(np.array([0, 2]), np.array([0, 1]), np.array([2]), np.array([0]), 4, ["a", "b"], ["w"])

    def tokens():
        from clipprobe.captions import tokens as tk
        from clipprobe.captions.matching import Matcher

        if tk.available():
            tk.TokenMatcher(Matcher(["man", "middle eastern"])).warm_up()

    for name, fn in (("eat", eat), ("scores", scores), ("zeroshot", zeroshot), ("hashes", hashes),
                     ("patterns", patterns), ("tokens", tokens)):
        timed(name, fn)
    return seconds
