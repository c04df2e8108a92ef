"""The resumable embedding cache, with the tiny real open_clip model."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from clipprobe import faces
from clipprobe.embeddings import cache as embed
from clipprobe.errors import DataError, UsageError
from tests import facegen

REPO = Path(__file__).resolve().parents[1]


class Counting:
    """Wraps an Encoder and counts calls to the model (no other behaviour changes)."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self.image_calls = 0
        self.images_seen = 0
        self.text_calls: list[list[str]] = []

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, batch, **kwargs):
        self.image_calls += 1
        self.images_seen += len(batch)
        return self._encoder.encode_images(batch, **kwargs)

    def encode_text(self, texts):
        self.text_calls.append(list(texts))
        return self._encoder.encode_text(texts)


@pytest.fixture()
def ff(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=23, corrupt=(5,), missing=(11,), size=36)
    return faces.load_dataset(f"fairface:{root}")


def _direct(encoder, dataset, rows):
    import torch

    return np.concatenate([encoder.encode_images(torch.stack([encoder.preprocess(dataset.load_image(r))]))
                           for r in rows])


def test_embeddings_match_direct_encoding_and_failures_are_listed(tiny_encoder, ff, tmp_path):
    emb = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "c", batch_size=4, shard_size=8, num_workers=1,
                              progress=False)
    expected_rows = [r for r in range(23) if r not in (5, 11)]
    assert emb.rows.dtype == np.int64 and emb.rows.tolist() == expected_rows
    assert emb.vectors.dtype == np.float32 and emb.vectors.shape == (21, tiny_encoder.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.vectors, _direct(tiny_encoder, ff, expected_rows), atol=1e-5)
    assert [(s["row"], s["file"]) for s in emb.skipped] == [(5, "val/6.jpg"), (11, "val/12.jpg")]
    assert emb.skipped[0]["reason"].startswith(("UnidentifiedImageError", "OSError"))
    assert emb.skipped[1]["reason"].startswith("FileNotFoundError")
    t = emb.timings
    assert t["n_embedded"] == 21 and t["n_failed_now"] == 2 and t["batches"] == 6 and t["shards_written"] == 3
    assert t["num_workers"] == 1 and len(t["per_batch"]) == 6
    assert all(b["forward_s"] >= 0 and b["load_preprocess_s"] > 0 for b in t["per_batch"])

    # Norms of the raw embeddings (for dot-product scoring), row for row with the vectors.
    import torch

    raw = tiny_encoder.model.encode_image(torch.stack([tiny_encoder.preprocess(ff.load_image(r))
                                                       for r in expected_rows])).detach().float()
    np.testing.assert_allclose(emb.norms, raw.norm(dim=-1).numpy(), rtol=1e-5)

    # The shard layout, with metadata covering every row of its shard.
    root = emb.cache_dir
    assert root == tmp_path / "c" / embed.model_cache_key(tiny_encoder) / f"{ff.images_key}-f{embed.CACHE_FORMAT}"
    assert sorted(p.name for p in (root / "img_emb").iterdir()) == [f"img_emb_0000{i}.npy" for i in range(3)]
    meta = pd.concat([pd.read_parquet(root / "metadata" / f"metadata_0000{i}.parquet") for i in range(3)])
    assert meta["row"].tolist() == list(range(23))
    assert meta["file"].tolist() == ff.table["file"].tolist()
    assert (meta["status"] == "error").sum() == 2
    import hashlib

    files = [ff.root / f for f in ff.table["file"]]
    assert meta["sha256"].tolist() == [hashlib.sha256(f.read_bytes()).hexdigest() if f.exists() else "" for f in files]
    assert (root / "done.json").is_file() and (root / "cache.json").is_file()
    assert not list(root.rglob(".*.tmp*"))
    shard0 = np.load(root / "img_emb" / "img_emb_00000.npy", allow_pickle=False)
    np.testing.assert_array_equal(shard0, emb.vectors[:7])  # rows 0-7 minus the corrupt row 5


def test_second_run_embeds_nothing(tiny_encoder, ff, tmp_path):
    first = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, batch_size=8, num_workers=0, progress=False)
    counting = Counting(tiny_encoder)
    second = embed.embed_dataset(counting, ff, cache_dir=tmp_path, batch_size=8, num_workers=0, progress=False)
    assert counting.image_calls == 0
    assert second.timings["n_embedded"] == 0 and second.timings["shards_reused"] == 1
    np.testing.assert_array_equal(first.vectors, second.vectors)
    np.testing.assert_array_equal(first.rows, second.rows)
    assert second.skipped == first.skipped


class _Stop(KeyboardInterrupt):
    pass


@pytest.mark.parametrize("workers", [0, 1])
def test_resume_after_interrupt_equals_uninterrupted(tiny_encoder, ff, tmp_path, workers):
    reference = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "ref", batch_size=3, shard_size=7,
                                    num_workers=workers, progress=False)

    seen = []

    def interrupt_after_five(record):
        seen.append(record)
        if len(seen) == 5:  # shards 0 (3 batches) written; shard 1 has 2 of its 3 batches
            raise _Stop()

    with pytest.raises(KeyboardInterrupt):
        embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "run", batch_size=3, shard_size=7,
                            num_workers=workers, progress=False, on_batch=interrupt_after_five)
    root = embed.embeddings_dir(tiny_encoder, ff, tmp_path / "run")
    assert sorted(p.name for p in (root / "metadata").iterdir()) == ["metadata_00000.parquet"]
    assert not (root / "done.json").exists()
    assert not list(root.rglob(".*.tmp*"))

    counting = Counting(tiny_encoder)
    resumed = embed.embed_dataset(counting, ff, cache_dir=tmp_path / "run", batch_size=3, shard_size=7,
                                  num_workers=workers, progress=False)
    # Shards 1-3 (rows 7-22) were embedded again, shard 0 was not.
    assert resumed.timings["shards_reused"] == 1 and resumed.timings["shards_written"] == 3
    assert counting.images_seen == 16 - 1  # rows 7..22 minus the missing row 11
    assert np.array_equal(resumed.vectors, reference.vectors)
    assert np.array_equal(resumed.rows, reference.rows)
    assert resumed.skipped == reference.skipped


_CHILD = textwrap.dedent("""
    import sys, time
    from clipprobe import faces
    from clipprobe.embeddings import cache as embed
    from clipprobe.models import load_model
    config, weights, arch, data, cache = sys.argv[1:6]
    enc = load_model(f"{arch}:{weights}", model_config=config, device="cpu")
    ds = faces.load_dataset(f"fairface:{data}")
    def slow(record):
        time.sleep(0.3)
    embed.embed_dataset(enc, ds, cache_dir=cache, batch_size=4, shard_size=8, num_workers=1, progress=False,
                        on_batch=slow)
""")


@pytest.mark.slow  # starts a Python process that imports torch and open_clip (about 10 s)
def test_resume_after_killed_process_equals_uninterrupted(tiny_encoder, tiny_model_files, ff, tmp_path):
    config, weights, arch = tiny_model_files
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(config), str(weights), arch, str(ff.root), str(tmp_path / "run")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    root = embed.embeddings_dir(tiny_encoder, ff, tmp_path / "run")
    deadline = time.monotonic() + 120
    try:
        while not (root / "metadata" / "metadata_00000.parquet").exists():
            if proc.poll() is not None:
                pytest.fail(f"child ended early: {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("child wrote no shard within 120 s")
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "done.json").exists()
    written = sorted(p.name for p in (root / "metadata").iterdir() if not p.name.startswith("."))
    assert 1 <= len(written) < 3

    counting = Counting(tiny_encoder)
    resumed = embed.embed_dataset(counting, ff, cache_dir=tmp_path / "run", batch_size=4, shard_size=8,
                                  num_workers=1, progress=False)
    assert resumed.timings["shards_reused"] == len(written)
    reference = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "ref", batch_size=4, shard_size=8,
                                    num_workers=0, progress=False)
    assert np.array_equal(resumed.vectors, reference.vectors)
    assert np.array_equal(resumed.rows, reference.rows)
    assert resumed.skipped == reference.skipped


def test_stored_shard_size_wins_on_resume(tiny_encoder, ff, tmp_path):
    embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, batch_size=4, shard_size=8, num_workers=0,
                        progress=False)
    counting = Counting(tiny_encoder)
    again = embed.embed_dataset(counting, ff, cache_dir=tmp_path, batch_size=4, shard_size=5, num_workers=0,
                                progress=False)
    assert counting.image_calls == 0 and again.timings["shard_size"] == 8


def test_damaged_shard_is_redone(tiny_encoder, ff, tmp_path):
    first = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, batch_size=4, shard_size=8, num_workers=0,
                                progress=False)
    np.save(first.cache_dir / "img_emb" / "img_emb_00001.npy", np.zeros((2, 3), dtype=np.float32))
    counting = Counting(tiny_encoder)
    again = embed.embed_dataset(counting, ff, cache_dir=tmp_path, batch_size=4, shard_size=8, num_workers=0,
                                progress=False)
    assert again.timings["shards_written"] == 1 and counting.images_seen == 7  # rows 8-15 minus row 11
    np.testing.assert_array_equal(again.vectors, first.vectors)


def test_every_image_failing_is_an_error(tiny_encoder, tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=3, corrupt=(0, 1, 2))
    ds = faces.load_dataset(f"fairface:{root}")
    with pytest.raises(DataError, match=r"no image of dataset .* could be read \(3 failed, e.g. val/1.jpg"):
        embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "c", num_workers=0, progress=False)


def test_hf_dataset_through_workers(tiny_encoder, tmp_path):
    path, _ = facegen.write_hf_fairface(tmp_path / "hf", n=9)
    ds = faces.load_dataset(f"hf:{path}")
    emb = embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "c", batch_size=4, num_workers=1, progress=False)
    assert emb.rows.tolist() == list(range(9)) and emb.skipped == []
    np.testing.assert_allclose(emb.vectors, _direct(tiny_encoder, ds, range(9)), atol=1e-5)


@pytest.mark.parametrize("kwargs,message", [
    ({"batch_size": 0}, "batch size must be a positive integer, not 0"),
    ({"shard_size": -2}, "shard size must be a positive integer, not -2"),
    ({"num_workers": -1}, "number of workers must be 0 or more, not -1"),
])
def test_bad_settings(tiny_encoder, ff, tmp_path, kwargs, message):
    with pytest.raises(UsageError) as err:
        embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, **kwargs)
    assert str(err.value) == message


def test_text_cache_encodes_each_prompt_once(tiny_encoder, tmp_path):
    counting = Counting(tiny_encoder)
    prompts = ["a photo of a nurse", "a photo of a CEO", "a photo of a nurse"]
    first = embed.embed_texts(counting, prompts, cache_dir=tmp_path)
    assert counting.text_calls == [["a photo of a nurse", "a photo of a CEO"]]
    np.testing.assert_allclose(first, tiny_encoder.encode_text(prompts), atol=1e-6)
    second = embed.embed_texts(counting, ["a photo of a CEO", "a photo of a thief"], cache_dir=tmp_path)
    assert counting.text_calls[1:] == [["a photo of a thief"]]
    np.testing.assert_array_equal(second[0], first[1])
    third = embed.embed_texts(Counting(tiny_encoder), prompts + ["a photo of a thief"], cache_dir=tmp_path)
    np.testing.assert_array_equal(third[:3], first)
    np.testing.assert_array_equal(third[3], second[1])
    chunks = sorted((tmp_path / embed.model_cache_key(tiny_encoder) / "text").glob("text_*"))
    assert len(chunks) == 4  # two appends, each an .npy and a .parquet


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "explicit"))
    assert embed.default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("CLIPPROBE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert embed.default_cache_dir() == tmp_path / "xdg" / "clipprobe"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert embed.default_cache_dir() == tmp_path / "home" / ".cache" / "clipprobe"


# --------------------------------------------------------------------------- issue 12.10 / 12.7


def test_a_folder_keeps_the_batch_size_it_was_started_with(tiny_encoder, ff, tmp_path):
    """A resume with another batch size computes the remaining shards in the batches of the first run, so the
    arrays are those of an uninterrupted run with the first size."""
    reference = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "ref", batch_size=3, shard_size=7,
                                    num_workers=0, progress=False)
    seen = []

    def stop_after_shard_zero(record):
        seen.append(record)
        if len(seen) == 3:
            raise _Stop()

    with pytest.raises(KeyboardInterrupt):
        embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "run", batch_size=3, shard_size=7,
                            num_workers=0, progress=False, on_batch=stop_after_shard_zero)
    resumed = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "run", batch_size=5, shard_size=7,
                                  num_workers=0, progress=False)
    assert resumed.timings["batch_size"] == 3
    assert [b["images"] for b in resumed.timings["per_batch"]] == [3, 3, 1] * 2 + [2]   # rows 7-20, 21-22
    assert np.array_equal(resumed.vectors, reference.vectors)
    manifest = __import__("json").loads((resumed.cache_dir / embed.MANIFEST).read_text())
    assert manifest["batch_size"] == 3


def test_a_folder_without_a_recorded_batch_size_records_this_runs(tiny_encoder, ff, tmp_path):
    import json

    first = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, batch_size=4, shard_size=8, num_workers=0,
                                progress=False)
    manifest_path = first.cache_dir / embed.MANIFEST
    manifest = json.loads(manifest_path.read_text())
    del manifest["batch_size"]
    manifest_path.write_text(json.dumps(manifest))
    again = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path, batch_size=6, shard_size=8, num_workers=0,
                                progress=False)
    assert again.timings["batch_size"] == 6
    assert json.loads(manifest_path.read_text())["batch_size"] == 6


def test_a_huge_image_is_skipped_with_its_size_and_no_warning(tiny_encoder, tmp_path, capfd):
    from test_faces import _bomb_jpeg

    root = facegen.write_fairface(tmp_path / "ff", n=6, size=36)
    _bomb_jpeg(root / "val" / "4.jpg")
    ds = faces.load_dataset(f"fairface:{root}")
    emb = embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "c", batch_size=2, num_workers=1,
                              progress=False)
    assert emb.rows.tolist() == [0, 1, 2, 4, 5]
    assert emb.skipped == [{"row": 3, "file": "val/4.jpg", "reason": "DataError: " + faces.MSG_IMAGE_TOO_LARGE.format(
        width=12000, height=12000, limit=faces.MAX_IMAGE_PIXELS)}]
    assert "DecompressionBomb" not in capfd.readouterr().err


def test_read_only_text_cache_still_embeds_new_prompts(tiny_encoder, tmp_path, caplog):
    """A shared cache that cannot be written: the new prompts are embedded and used, with a warning."""
    from test_io import _as_other_user, _unwritable_folder

    prompts = ["a photo of a nurse", "a photo of a pilot"]
    expected = tiny_encoder.encode_text(prompts)

    class Precomputed(Counting):
        # The forked child must not run torch (its thread pool does not survive a fork).
        def encode_text(self, texts):
            self.text_calls.append(list(texts))
            return expected[[prompts.index(t) for t in texts]]

    folder = _unwritable_folder()
    try:
        def child():
            vecs = embed.embed_texts(Precomputed(tiny_encoder), prompts, cache_dir=folder)
            return f"{vecs.shape} {np.array_equal(vecs, expected)}"

        code, out = _as_other_user(child)
        assert code == 0, out
        assert out == "(2, 32) True"
        assert list(folder.iterdir()) == []
    finally:
        os.chmod(folder, 0o755)
    caplog.set_level("WARNING", logger="clipprobe")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    (readonly / embed.model_cache_key(tiny_encoder)).write_text("a file where the folder should be")
    vecs = embed.embed_texts(tiny_encoder, ["a photo of a thief"], cache_dir=readonly)
    assert vecs.shape == (1, 32)
    assert any("1 new prompt embedding(s) are used but not cached: cannot write" in r.getMessage()
               for r in caplog.records)


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_the_number_of_threads_changes_last_bits():
    """Why a folder keeps its number of threads: 1 and 2 threads give other last bits for a batch of 7."""
    import torch
    from tinyclip import write_tiny_model

    from clipprobe.models import load_model

    with tempfile.TemporaryDirectory() as d:
        config, weights, arch = write_tiny_model(Path(d))
        enc = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")
        batch = torch.randn(7, 3, 32, 32, generator=torch.Generator().manual_seed(0))
        out = {}
        for n in (1, 2):
            with _torch_threads(n):
                out[n] = enc.encode_images(batch)
    assert (out[1] != out[2]).any()


def test_a_folder_keeps_its_threads_whatever_the_load(monkeypatch, tiny_encoder, ff, tmp_path, caplog):
    """Started with 1 torch thread and resumed by a process with 2 (and an idle machine): every shard is still
    computed with 1, so the vectors are those of an uninterrupted 1-thread run, bit for bit. Texts alike."""
    import json
    import logging

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    prompts = [f"a photo of a {w}" for w in ("nurse", "thief", "cat", "dog", "CEO", "chef", "pilot")]
    with _torch_threads(1):
        reference = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "ref", batch_size=8, shard_size=8,
                                        num_workers=0)
        ref_texts = embed.embed_texts(tiny_encoder, prompts, cache_dir=tmp_path / "ref")

        def stop(record):
            raise _Stop()

        with pytest.raises(KeyboardInterrupt):
            embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "run", batch_size=8, shard_size=8,
                                num_workers=0, on_batch=stop)
        embed.embed_texts(tiny_encoder, ["a photo of a person"], cache_dir=tmp_path / "run")
    seen = []
    with _torch_threads(2), caplog.at_level(logging.INFO, logger="clipprobe.embeddings.cache"):
        import torch

        resumed = embed.embed_dataset(tiny_encoder, ff, cache_dir=tmp_path / "run", batch_size=8, shard_size=8,
                                      num_workers=0, on_batch=lambda r: seen.append(torch.get_num_threads()))
        texts = embed.embed_texts(tiny_encoder, prompts, cache_dir=tmp_path / "run")
        assert torch.get_num_threads() == 2                 # restored after
    np.testing.assert_array_equal(resumed.vectors.view(np.int32), reference.vectors.view(np.int32))
    np.testing.assert_array_equal(texts.view(np.int32), ref_texts.view(np.int32))
    assert set(seen) == {1} and resumed.timings["torch_threads"] == 1 and resumed.timings["shards_reused"] == 1
    assert "was started with 1 torch thread(s); using 1, not 2" in caplog.text
    root = embed.embeddings_dir(tiny_encoder, ff, tmp_path / "run")
    assert json.loads((root / "cache.json").read_text())["threads"] == 1


# --------------------------------------------------------------------------- keyed by content


def _bmp_images(root: Path, seed: int, rows=None) -> None:
    """Rewrite the dataset's images as BMPs of one size (every file then has the same number of bytes)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = sorted((root / "val").glob("*.jpg"), key=lambda p: int(p.stem))
    for i, path in enumerate(files):
        arr = rng.integers(0, 256, size=(36, 36, 3), dtype=np.uint8)
        if rows is None or i in rows:
            Image.fromarray(arr).save(path, format="BMP")


def _sizes(root: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (root / "val").iterdir()}


@pytest.fixture()
def two_folders(tmp_path):
    """Two copies of one dataset, same label file, same file names and byte sizes, other pixels."""
    a = facegen.write_fairface(tmp_path / "a", n=20, size=36)
    _bmp_images(a, seed=1)
    b = tmp_path / "b"
    import shutil

    shutil.copytree(a, b)
    _bmp_images(b, seed=2)
    assert _sizes(a) == _sizes(b)
    return a, b


def test_two_folders_with_the_same_names_and_sizes_are_two_cache_entries(tiny_encoder, two_folders, tmp_path):
    a, b = two_folders
    ds_a, ds_b = faces.load_dataset(f"fairface:{a}"), faces.load_dataset(f"fairface:{b}")
    assert ds_a.fingerprint == ds_b.fingerprint        # names, sizes and labels alike: only the pixels differ
    emb_a = embed.embed_dataset(tiny_encoder, ds_a, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    counting = Counting(tiny_encoder)
    emb_b = embed.embed_dataset(counting, ds_b, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    fresh_b = embed.embed_dataset(tiny_encoder, ds_b, cache_dir=tmp_path / "fresh", batch_size=8, num_workers=0)
    assert counting.images_seen == 20 and emb_b.cache_dir != emb_a.cache_dir
    np.testing.assert_array_equal(emb_b.vectors, fresh_b.vectors)
    assert not np.allclose(emb_a.vectors, emb_b.vectors, atol=1e-3)


def test_a_csv_dataset_with_another_image_root_is_another_entry(tiny_encoder, two_folders, tmp_path):
    a, b = two_folders
    label = tmp_path / "labels.csv"
    label.write_text((a / "fairface_label_val.csv").read_text())
    ds_a = faces.load_dataset(f"csv:{label}", image_root=a)
    ds_b = faces.load_dataset(f"csv:{label}", image_root=b)
    emb_a = embed.embed_dataset(tiny_encoder, ds_a, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    emb_b = embed.embed_dataset(tiny_encoder, ds_b, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    fresh_b = embed.embed_dataset(tiny_encoder, ds_b, cache_dir=tmp_path / "fresh", batch_size=8, num_workers=0)
    np.testing.assert_array_equal(emb_b.vectors, fresh_b.vectors)
    assert not np.allclose(emb_a.vectors, emb_b.vectors, atol=1e-3)


def test_an_image_changed_in_place_is_embedded_again_alone(tiny_encoder, two_folders, tmp_path, caplog):
    """Same name, same size, other pixels: the shard holding it is embedded again, the others are reused."""
    import logging

    a, _ = two_folders
    ds = faces.load_dataset(f"fairface:{a}")
    before = embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "c", batch_size=4, shard_size=8,
                                 num_workers=0)
    sizes = _sizes(a)
    _bmp_images(a, seed=3, rows={9})                    # val/10.jpg: row 9, in shard 1 (rows 8-15)
    assert _sizes(a) == sizes
    ds = faces.load_dataset(f"fairface:{a}")
    counting = Counting(tiny_encoder)
    with caplog.at_level(logging.INFO, logger="clipprobe.embeddings.cache"):
        after = embed.embed_dataset(counting, ds, cache_dir=tmp_path / "c", batch_size=4, shard_size=8,
                                    num_workers=0)
    assert counting.images_seen == 8 and after.timings["shards_reused"] == 2
    assert ("1 image(s) of fairface:" in caplog.text
            and "changed since they were embedded (e.g. val/10.jpg): embedding shard(s) 1 again" in caplog.text)
    fresh = embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "fresh", batch_size=4, shard_size=8,
                                num_workers=0)
    np.testing.assert_array_equal(after.vectors, fresh.vectors)
    changed = np.flatnonzero((after.vectors != before.vectors).any(axis=1)).tolist()
    assert changed == [9]                               # the other images of shard 1 got their old vectors
    assert after.digest != before.digest and after.digest == fresh.digest


def test_the_shared_pass_embeds_a_changed_image_again(tiny_encoder, two_folders, tmp_path):
    from clipprobe.embeddings.shared import embed_shared

    a, _ = two_folders
    ds = faces.load_dataset(f"fairface:{a}")
    embed_shared([tiny_encoder], ds, cache_dir=tmp_path / "c", batch_size=4, num_workers=0, shard_size=8)
    _bmp_images(a, seed=3, rows={2})
    ds = faces.load_dataset(f"fairface:{a}")
    counting = Counting(tiny_encoder)
    again = embed_shared([counting], ds, cache_dir=tmp_path / "c", batch_size=4, num_workers=0, shard_size=8)
    fresh = embed.embed_dataset(tiny_encoder, ds, cache_dir=tmp_path / "fresh", batch_size=4, shard_size=8,
                                num_workers=0)
    assert again.decoded == [8] and counting.images_seen == 8
    np.testing.assert_array_equal(again.embeddings[0].vectors, fresh.vectors)


def test_an_edited_model_config_is_another_model(tiny_model_files, ff, tmp_path, caplog):
    """QuickGELU added to the architecture JSON: other vectors, so another folder, and a line that says why."""
    import json
    import logging

    from clipprobe.models import load_model

    config, weights, arch = tiny_model_files
    cfg = tmp_path / "cfg" / config.name
    cfg.parent.mkdir()
    cfg.write_text(config.read_text())
    plain = load_model(f"{arch}:{weights}", model_config=str(cfg), device="cpu")
    first = embed.embed_dataset(plain, ff, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    cfg.write_text(json.dumps({**json.loads(config.read_text()), "quick_gelu": True}))
    quick = load_model(f"{arch}:{weights}", model_config=str(cfg), device="cpu")
    try:
        with caplog.at_level(logging.INFO, logger="clipprobe.embeddings.cache"):
            second = embed.embed_dataset(quick, ff, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    finally:
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")   # register the original again
    assert embed.model_cache_key(quick) != embed.model_cache_key(plain)
    assert second.timings["n_embedded"] == 21
    assert not np.allclose(first.vectors, second.vectors, atol=1e-4)
    assert "its config, structure differ from those of the embeddings cached in" in caplog.text


def test_weights_with_the_same_size_and_date_are_told_apart_by_content(tiny_model_files, ff, tmp_path):
    from tinyclip import write_tiny_weights

    from clipprobe.models import load_model

    config, _weights, arch = tiny_model_files
    path = write_tiny_weights(tmp_path / "w", config, seed=1, name="model")
    stat = path.stat()
    first = load_model(f"{arch}:{path}", model_config=str(config), device="cpu")
    emb1 = embed.embed_dataset(first, ff, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    other = write_tiny_weights(tmp_path / "w2", config, seed=2, name="model")
    assert other.stat().st_size == stat.st_size
    os.replace(other, path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_model(f"{arch}:{path}", model_config=str(config), device="cpu")
    assert second.spec.key == first.spec.key          # the name, size and date say nothing changed
    emb2 = embed.embed_dataset(second, ff, cache_dir=tmp_path / "c", batch_size=8, num_workers=0)
    assert embed.model_cache_key(second) != embed.model_cache_key(first)
    assert emb2.timings["n_embedded"] == 21 and not np.allclose(emb1.vectors, emb2.vectors, atol=1e-4)
