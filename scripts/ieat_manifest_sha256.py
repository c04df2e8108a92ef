"""Add the SHA-256 of every iEAT image to stimuli/ieat-manifest.csv, from a git clone of ryansteed/ieat.

The images are read from the clone's git objects at the pinned commit (not from its work tree), and
each one is checked twice before its hash is written: its git blob id, recomputed from its bytes, must
be the one in the commit's tree, and its size must be the manifest's. An entry whose object is missing
from the repository (its size in the manifest is not a number) gets no hash.

Usage: python scripts/ieat_manifest_sha256.py PATH_TO_IEAT_CLONE [MANIFEST]
    (git clone https://github.com/ryansteed/ieat; the commit is clipprobe.resources.eat.IEAT_COMMIT)
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

COMMIT = "4d7639bfd0b6c17b127ce163af0ddf985f5a6510"
PREFIX = "data/experiments"


def git(repo: Path, *args: str, text: bool = True):
    return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=text, check=False)


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    repo = Path(argv[0])
    manifest = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "stimuli" / "ieat-manifest.csv"
    listing = git(repo, "ls-tree", "-r", "-l", COMMIT, "--", PREFIX)
    if listing.returncode != 0:
        print(f"{repo}: not a clone of ryansteed/ieat with commit {COMMIT} ({listing.stderr.strip()})")
        return 1
    tree = {}
    for line in listing.stdout.splitlines():
        meta, path = line.split("\t", 1)
        _, _, oid, _ = meta.split()
        tree[path] = oid
    with open(manifest, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    out, missing = [], 0
    for row in rows:
        path, size = row["path"], row["bytes"]
        blob = git(repo, "cat-file", "blob", tree[path], text=False)
        if blob.returncode != 0:
            if size.isdigit():
                print(f"{path}: object {tree[path]} is missing but the manifest gives it a size")
                return 1
            out.append((path, size, ""))
            missing += 1
            continue
        data = blob.stdout
        if hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() != tree[path]:
            print(f"{path}: its bytes do not hash to the tree's blob id {tree[path]}")
            return 1
        if str(len(data)) != size:
            print(f"{path}: {len(data)} bytes, the manifest says {size}")
            return 1
        out.append((path, size, hashlib.sha256(data).hexdigest()))
    with open(manifest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", "bytes", "sha256"])
        writer.writerows(out)
    print(f"{manifest}: {len(out) - missing} files hashed, {missing} without an object")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
