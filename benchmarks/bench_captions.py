"""Caption co-occurrence speed: the local engine vs a DuckDB baseline vs reading the column alone.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_captions.py --captions 1000000 --workers 2

Generates (once, cached in --data-dir) a LAION-schema parquet file of realistic
captions (60-100 characters) with the So-B-IT words and the default FairFace
lexicon inserted, then measures in one run:

* ``read``: reading the caption column alone (pyarrow, all row groups, --workers threads): the I/O ceiling;
* ``local``: ``count_captions`` with the local engine and --workers processes (hot path only: the
  scan stage, excluding the one-off Hyperscan compile and writing the outputs; both are printed);
* ``duckdb``: one alternation regex over the lower-cased caption, ``\\b`` boundaries, and SQL that
  computes the same per-word, per-group and word x group caption counts (--workers threads).

It prints captions/s of each and the ratios local/duckdb (target >= 4) and
local/read (target >= 0.25), and checks that DuckDB's counts equal the engine's
on this data (the regex baseline's ASCII ``\\b`` agrees with the rule on these
captions; it would not on the traps of the test suite).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from pathlib import Path


def make_data(path: Path, n: int, seed: int = 0) -> None:
    from clipprobe.captions.lexicon import get_lexicon
    from clipprobe.captions.synth import realistic_captions, write_laion_parquet
    from clipprobe.taxonomy import get_taxonomy

    words = get_taxonomy().words()
    terms = get_lexicon().terms()
    caps = realistic_captions(n, words, terms, seed=seed)
    write_laion_parquet(path, caps, row_group_size=100_000, seed=seed)


def bench_read(path: Path, column: str, threads: int) -> tuple[float, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pa.set_cpu_count(threads)
    pa.set_io_thread_count(threads)
    t0 = time.perf_counter()
    table = pq.read_table(path, columns=[column], use_threads=threads > 1)
    nbytes = sum(len(b) for chunk in table.column(0).chunks for b in chunk.buffers()[2:] if b is not None)
    return time.perf_counter() - t0, nbytes


def bench_local(path: Path, out: Path, workers: int):
    from clipprobe.captions.run import CountConfig, count_captions

    t0 = time.perf_counter()
    result = count_captions(CountConfig(captions=(str(path),), out=str(out), workers=workers, samples=5))
    total = time.perf_counter() - t0
    return result, total


def bench_duckdb(path: Path, threads: int, space):
    import duckdb

    terms = sorted(set(space.terms), key=lambda t: (-len(t), t))
    alternation = "|".join(r"\s+".join(re.escape(p) for p in t.split(" ")) for t in terms)
    regex = r"\b(" + alternation + r")\b"
    con = duckdb.connect()
    con.execute(f"SET threads={threads}")
    con.execute("CREATE TEMP TABLE term_word(term VARCHAR, w INTEGER)")
    con.execute("CREATE TEMP TABLE term_group(term VARCHAR, g INTEGER)")
    con.executemany("INSERT INTO term_word VALUES (?, ?)", [(space.terms[t], i) for i, t in enumerate(space.word_terms)])
    con.executemany("INSERT INTO term_group VALUES (?, ?)",
                    [(space.terms[t], j) for j, ts in enumerate(space.group_terms) for t in ts])
    t0 = time.perf_counter()
    con.execute(f"""
        CREATE TEMP TABLE hits AS
        WITH m AS (
            SELECT row_number() OVER () AS rid,
                   list_distinct(regexp_extract_all(lower("TEXT"), ?, 1)) AS ts
            FROM read_parquet('{path}') WHERE "TEXT" IS NOT NULL),
        u AS (SELECT rid, regexp_replace(unnest(ts), '\\s+', ' ', 'g') AS term FROM m)
        SELECT DISTINCT rid, term FROM u""", [regex])
    n_word = con.execute("SELECT w, count(DISTINCT rid) FROM hits JOIN term_word USING (term) GROUP BY w").fetchall()
    n_group = con.execute("SELECT g, count(DISTINCT rid) FROM hits JOIN term_group USING (term) GROUP BY g").fetchall()
    n_both = con.execute("""
        WITH hw AS (SELECT DISTINCT rid, w FROM hits JOIN term_word USING (term)),
             hg AS (SELECT DISTINCT rid, g FROM hits JOIN term_group USING (term))
        SELECT w, g, count(*) FROM hw JOIN hg USING (rid) GROUP BY w, g""").fetchall()
    return time.perf_counter() - t0, n_word, n_group, n_both


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", default=os.path.join(tempfile.gettempdir(), "clipprobe-bench-captions"))
    parser.add_argument("--skip-duckdb", action="store_true")
    args = parser.parse_args()

    import numpy as np

    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / f"laion-synthetic-{args.captions}.parquet"
    if not path.exists():
        t0 = time.perf_counter()
        make_data(path, args.captions)
        print(f"generated {path} in {time.perf_counter() - t0:.1f} s")
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    n = meta.num_rows

    read_s, nbytes = bench_read(path, "TEXT", args.workers)
    print(f"captions: {n:,}  ({nbytes / n:.1f} bytes/caption, {meta.num_row_groups} row groups, "
          f"{path.stat().st_size / 2**20:.0f} MiB)")
    out = data_dir / "out-local"
    for part in (out / "parts").glob("*"):
        part.unlink()
    result, local_total = bench_local(path, out, args.workers)
    scan_s = result.run["timings_s"]["scan"]
    compile_s = result.run["timings_s"]["compile"]
    rates = {"read": n / read_s, "local": n / scan_s, "local_end_to_end": n / local_total}
    print(f"read-only  : {rates['read'] / 1e6:7.3f} M captions/s  ({read_s:.2f} s)")
    print(f"local      : {rates['local'] / 1e6:7.3f} M captions/s  (scan {scan_s:.2f} s; compile {compile_s:.2f} s; "
          f"end to end {local_total:.2f} s = {rates['local_end_to_end'] / 1e6:.3f} M/s)")
    print(f"  worker seconds: {json.dumps(result.run['worker_seconds'])}")
    if not args.skip_duckdb:
        from clipprobe.captions.lexicon import get_lexicon
        from clipprobe.captions.scan import TermSpace
        from clipprobe.taxonomy import get_taxonomy

        space = TermSpace.build(get_taxonomy().words(), get_lexicon())
        duck_s, n_word, n_group, n_both = bench_duckdb(path, args.workers, space)
        rates["duckdb"] = n / duck_s
        print(f"duckdb     : {rates['duckdb'] / 1e6:7.3f} M captions/s  ({duck_s:.2f} s)")
        t = result.table
        nw = np.zeros(len(space.words), np.int64)
        for w, c in n_word:
            nw[w] = c
        ng = np.zeros(len(space.groups), np.int64)
        for g, c in n_group:
            ng[g] = c
        nb = np.zeros((len(space.words), len(space.groups)), np.int64)
        for w, g, c in n_both:
            nb[w, g] = c
        ours_w = t["n_word"].to_numpy()[::len(space.groups)]
        ours_g = t["n_group"].to_numpy()[:len(space.groups)]
        ours_b = t["n_both"].to_numpy().reshape(nb.shape)
        print(f"duckdb vs engine: words equal {int((nw == ours_w).sum())}/{len(nw)}, groups equal "
              f"{int((ng == ours_g).sum())}/{len(ng)}, cells equal {int((nb == ours_b).sum())}/{nb.size} "
              "(one alternation reports no overlapping terms: 'young man' hides 'man')")
        print(f"ratio local / duckdb : {rates['local'] / rates['duckdb']:.2f}  (target >= 4)")
    print(f"ratio local / read   : {rates['local'] / rates['read']:.3f}  (target >= 0.25)")
    per_core = rates["local"] / args.workers
    laion2b = 2.32e9
    print(f"LAION-2B-en extrapolation (2.32B captions, 128 files): one {args.workers}-core machine "
          f"{laion2b / rates['local'] / 3600:.1f} h; 16 cores {laion2b / (per_core * 16) / 3600:.1f} h; "
          f"Spark 10 x 16 cores {laion2b / (per_core * 160) / 60:.0f} min (CPU-bound, I/O permitting)")


if __name__ == "__main__":
    main()
