"""What the content fingerprint of caption files costs, against the scan it keys.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_fingerprint.py --captions 1000000 --files 2 --workers 2
        [--repeat 3] [--case full --case small]

Generates (once, cached in --data-dir) --files LAION-schema parquet files (``bench_captions.make_data``:
the So-B-IT words and the FairFace lexicon's terms in realistic captions, all the LAION columns), then
measures in --repeat interleaved rounds, every file in the page cache (one untimed read first):

* ``scan``: the scan stage of ``captions count`` from scratch (parts removed; the baseline);
* ``hash``: :func:`clipprobe.captions.inputs.caption_fingerprint` of every file with nothing remembered
  (the memo folder emptied): the XXH3-128 hash of every byte of every file, in --workers threads as the
  footer reader runs them; this is what a first run adds;
* ``sha256``: the SHA-256 of every byte instead (the alternative that was not taken);
* ``memo``: the same with the fingerprints remembered (a rerun over unchanged files: one stat each);
* ``footer``: reading the footers alone (what a fingerprint of footer and size would cost).

Each is timed by the wall clock and by CPU seconds (this process and its reaped children). It prints the
medians and the ratios hash/scan and memo/scan (target: hash/scan under 0.05 by CPU seconds for the
``full`` case).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_captions import Clock, bench_local, make_case, make_data  # noqa: E402


def fingerprints(paths, threads: int) -> list[str]:
    from clipprobe.captions.inputs import caption_fingerprint

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return list(pool.map(caption_fingerprint, paths))


def footers(paths, threads: int) -> None:
    import pyarrow.parquet as pq

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(lambda p: pq.ParquetFile(p).metadata, paths))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--captions", type=int, default=1_000_000, help="captions per file")
    ap.add_argument("--files", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--case", action="append", choices=["full", "small"])
    ap.add_argument("--data-dir", default=str(Path(tempfile.gettempdir()) / "clipprobe-bench-fingerprint"))
    args = ap.parse_args(argv)

    from clipprobe._io import sha256_file
    from clipprobe.captions import inputs
    from clipprobe.resources.lexicon import get_lexicon
    from clipprobe.resources.taxonomy import get_taxonomy

    data = Path(args.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    words = get_taxonomy().words()
    terms = [t for groups in get_lexicon().attributes.values() for ts in groups.values() for t in ts]
    paths = []
    for i in range(args.files):
        path = data / f"laion-{args.captions}-{i}.parquet"
        if not path.exists():
            make_data(path, args.captions, words, terms, seed=i)
        paths.append(path)
    size_mb = sum(p.stat().st_size for p in paths) / 1e6
    for p in paths:
        p.read_bytes()                                   # into the page cache
    memo = data / "memo"
    inputs.FINGERPRINT_MEMO = str(memo)                  # not the user's cache folder
    inputs.RECENT_NS = 0                                 # the generated files are remembered at once
    print(f"{args.files} file(s), {args.files * args.captions:,} captions, {size_mb:.0f} MB, "
          f"{args.workers} worker(s)")
    for case in args.case or ["full"]:
        taxonomy, lexicon = make_case(case, data)
        rows: dict[str, list[tuple[float, float]]] = {"scan": [], "hash": [], "sha256": [], "memo": [],
                                                      "footer": []}
        out = data / f"out-{case}"
        for _ in range(args.repeat):
            _, wall, cpu, _ = bench_local(paths[0] if len(paths) == 1 else data / "laion-*.parquet", out,
                                          args.workers, "auto", taxonomy, lexicon)
            rows["scan"].append((wall, cpu))
            shutil.rmtree(memo, ignore_errors=True)
            clock = Clock()
            first = fingerprints([str(p) for p in paths], args.workers)
            rows["hash"].append(clock.stop())
            clock = Clock()
            again = fingerprints([str(p) for p in paths], args.workers)
            rows["memo"].append(clock.stop())
            assert first == again
            clock = Clock()
            with ThreadPoolExecutor(max_workers=args.workers) as pool:
                list(pool.map(sha256_file, paths))
            rows["sha256"].append(clock.stop())
            clock = Clock()
            footers([str(p) for p in paths], args.workers)
            rows["footer"].append(clock.stop())
        med = {k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in rows.items()}
        print(f"case {case}:")
        for k, (wall, cpu) in med.items():
            print(f"  {k:<7} wall {wall:8.4f} s   cpu {cpu:8.4f} s")
        for k in ("hash", "sha256", "memo", "footer"):
            print(f"  {k}/scan: wall {med[k][0] / med['scan'][0]:.4f}   cpu {med[k][1] / med['scan'][1]:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
