"""Shared decoding for several models: the same cache files as embedding each model alone, each image
decoded once per preprocessing, one failing model left out while the others finish."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipprobe import faces
from clipprobe.embeddings import cache
from clipprobe.embeddings.shared import embed_shared, group_by_preprocess, preprocess_key
from tests import facegen


@pytest.fixture(scope="module")
def encoders(tmp_path_factory):
    """Three tiny models: two share a preprocessing (32 px), the third has 40 px images."""
    from tinyclip import write_tiny_config, write_tiny_weights

    from clipprobe.models import load_model

    d = tmp_path_factory.mktemp("shared-models")
    cfg = write_tiny_config(d, "TinyShared")
    cfg40 = write_tiny_config(d, "TinyShared40", vision_cfg={"image_size": 40})
    out = []
    for config, seed in ((cfg, 1), (cfg, 2), (cfg40, 3)):
        weights = write_tiny_weights(d, config, seed=seed)
        out.append(load_model(f"{config.stem}:{weights}", model_config=str(config), device="cpu"))
    return out


@pytest.fixture()
def ff(tmp_path):
    root = facegen.write_fairface(tmp_path / "ff", n=21, corrupt=(4,), missing=(9,), size=44)
    return faces.load_dataset(f"fairface:{root}")


class CountingDataset:
    """A dataset whose load_image counts its calls (decodes happen in the main process: num_workers=0)."""

    def __init__(self, dataset) -> None:
        self._dataset = dataset
        self.loads = 0

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return len(self._dataset)

    def load_image(self, row):
        self.loads += 1
        return self._dataset.load_image(row)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.suffix in (".npy", ".parquet")}


def test_groups_follow_the_preprocessing(encoders):
    assert preprocess_key(encoders[0]) == preprocess_key(encoders[1]) != preprocess_key(encoders[2])
    assert group_by_preprocess(encoders) == [[0, 1], [2]]


def test_shared_pass_writes_the_files_of_separate_runs(encoders, ff, tmp_path):
    shared_dir, alone_dir = tmp_path / "shared", tmp_path / "alone"
    counting = CountingDataset(ff)
    result = embed_shared(encoders, counting, cache_dir=shared_dir, batch_size=4, num_workers=0, shard_size=8)
    # each image is decoded once per preprocessing group: twice (2 groups), not three times
    assert counting.loads == 2 * len(ff)
    assert result.decoded == [len(ff), len(ff)]
    assert not result.failed
    for enc, emb in zip(encoders, result.embeddings):
        alone = cache.embed_dataset(enc, ff, cache_dir=alone_dir, batch_size=4, num_workers=0, shard_size=8)
        np.testing.assert_array_equal(emb.vectors, alone.vectors)
        np.testing.assert_array_equal(emb.rows, alone.rows)
        assert [s["file"] for s in emb.skipped] == [s["file"] for s in alone.skipped] == ["val/5.jpg", "val/10.jpg"]
        a = cache.embeddings_dir(enc, ff, shared_dir)
        b = cache.embeddings_dir(enc, ff, alone_dir)
        assert _files(a) == _files(b)     # byte for byte: vectors and metadata


def test_a_second_pass_decodes_nothing_and_a_partial_cache_is_completed(encoders, ff, tmp_path):
    d = tmp_path / "c"
    cache.embed_dataset(encoders[0], ff, cache_dir=d, batch_size=4, num_workers=0, shard_size=8)
    counting = CountingDataset(ff)
    embed_shared(encoders[:2], counting, cache_dir=d, batch_size=4, num_workers=0, shard_size=8)
    assert counting.loads == len(ff)          # only encoder 1 needed images
    counting = CountingDataset(ff)
    again = embed_shared(encoders[:2], counting, cache_dir=d, batch_size=4, num_workers=0, shard_size=8)
    assert counting.loads == 0 and again.decoded == [0]


class Failing:
    """An encoder that runs out of memory on its second batch."""

    def __init__(self, encoder) -> None:
        self._encoder = encoder
        self.calls = 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode_images(self, batch, **kwargs):
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore details")
        return self._encoder.encode_images(batch, **kwargs)


def test_a_failing_model_is_left_out_and_the_others_finish(encoders, ff, tmp_path):
    from tinyclip import write_tiny_config, write_tiny_weights

    from clipprobe.models import load_model

    d = tmp_path / "models"
    cfg = write_tiny_config(d, "TinyShared")
    other = load_model(f"TinyShared:{write_tiny_weights(d, cfg, seed=9, name='other')}", model_config=str(cfg),
                       device="cpu")
    bad = Failing(other)
    result = embed_shared([encoders[0], bad], ff, cache_dir=tmp_path / "c", batch_size=4, num_workers=0, shard_size=8)
    assert set(result.failed) == {1}
    assert result.failed[1] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert result.embeddings[1] is None and len(result.embeddings[0]) == len(ff) - 2
