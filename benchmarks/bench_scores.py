"""The one scoring function (exact dot products rounded once to float32) against a float32 matrix product.

``clipprobe.analysis.metrics.similarity_scores`` gives every (word, image) score as the exact dot product
of the float32 vectors rounded once to float32, so a word's scores do not depend on how many words are
scored with it, on the CPU or on the number of threads. It runs a float64 matrix product, a compiled
pass that checks each score against the product's error bound, and an exact sum for the few scores the
bound leaves open. This prints its time over that of ``queries @ images.T`` in float32 (what every
command did before), in the same process, round by round in alternating order, for the shapes of
``retrieve`` (one word) and of ``report`` (the So-B-IT taxonomy's 374 words, the neutral prompt and
the controls), on FairFace validation's 10,954 images, with embeddings of dimension 512 (ViT-B-32)
and 768 (ViT-L-14). ``clip-like`` vectors share a common direction (cosines around 0.2-0.3, as CLIP's
image-text cosines); ``random`` ones are independent (cosines around 0, where the float32 spacing is
finest and most scores are summed exactly: the worst case).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_scores.py --rounds 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def unit(a):
    import numpy as np

    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def make(kind: str, n_words: int, n_images: int, dim: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    if kind == "random":
        return unit(rng.standard_normal((n_words, dim))), unit(rng.standard_normal((n_images, dim)))
    common = rng.standard_normal(dim)
    common /= np.linalg.norm(common)
    texts = unit(0.5 * common + rng.standard_normal((n_words, dim)) / np.sqrt(dim))
    images = unit(0.5 * common + rng.standard_normal((n_images, dim)) / np.sqrt(dim))
    return texts, images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--images", type=int, default=10954)
    parser.add_argument("--words", type=int, default=374 + 1 + 60, help="the report's queries (default: So-B-IT "
                        "words, the neutral prompt and 60 controls)")
    args = parser.parse_args(argv)

    from clipprobe.analysis.metrics import _similarity_scores

    _similarity_scores(*make("random", 2, 64, 16))          # compile (or load) the kernel once
    print(f"{'case':<34} {'float32 s':>10} {'exact s':>10} {'ratio':>7} {'summed exactly':>16}")
    for kind in ("clip-like", "random"):
        for dim in (512, 768):
            for n_words in (1, args.words):
                q, x = make(kind, n_words, args.images, dim)
                base = exact = 0.0
                n_open = 0
                for r in range(args.rounds):
                    order = ("f32", "exact") if r % 2 == 0 else ("exact", "f32")
                    for way in order:
                        start = time.perf_counter()
                        if way == "f32":
                            q @ x.T
                            base += time.perf_counter() - start
                        else:
                            n_open = _similarity_scores(q, x)[1]
                            exact += time.perf_counter() - start
                case = f"{kind}, D={dim}, {n_words} word(s)"
                share = n_open / (n_words * args.images)
                print(f"{case:<34} {base / args.rounds:10.4f} {exact / args.rounds:10.4f} {exact / base:7.2f} "
                      f"{n_open:>8} ({share:.1e})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
