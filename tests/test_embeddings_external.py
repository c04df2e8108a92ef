"""clip-retrieval embedding folders (LAION's layout): reading and every structural check, with its message."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipprobe.embeddings import external as ext
from clipprobe.errors import DataError


def _meta(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"image_path": [f"{i}.jpg" for i in range(start, start + n)],
                         "caption": [f"caption {i}" for i in range(start, start + n)],
                         "url": [f"https://x.invalid/{i}.jpg" for i in range(start, start + n)]})


def _folder(tmp_path, sizes=(5, 3), dim=8, dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    shards, start = [], 0
    for n in sizes:
        shards.append((rng.standard_normal((n, dim)).astype(dtype), _meta(n, start)))
        start += n
    ext.write_embedding_folder(tmp_path / "emb", shards)
    return tmp_path / "emb", shards


def _msg(template: str, **fields) -> str:
    return template.format(**fields)


def test_reads_shards_in_partition_order_memory_mapped(tmp_path):
    root, shards = _folder(tmp_path, sizes=(5, 0, 3))
    folder = ext.open_embedding_folder(root, dim=8)
    assert [s.number for s in folder.shards] == [0, 1, 2]
    assert folder.rows == 8 and folder.dim == 8 and folder.dtypes == ("float16",)
    assert folder.columns == ("image_path", "caption", "url")
    for shard, (emb, meta) in zip(folder.shards, shards):
        got = folder.embeddings(shard)
        assert got.dtype == np.float16 and np.array_equal(np.asarray(got), emb)
        if shard.rows:
            assert isinstance(got, np.memmap)
        assert folder.metadata(shard, ["caption"]).column("caption").to_pylist() == list(meta["caption"])
    assert folder.find_column(("caption", "TEXT"), "captions") == "caption"
    assert folder.find_column(("URL", "url"), "key") == "url"


def test_unpadded_numbers_sort_numerically_and_float32(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "emb"
    for n in range(12):        # img_emb_0 .. img_emb_11, as LAION-400M's release names them
        from clipprobe._io import write_npy, write_parquet

        write_npy(root / "img_emb" / f"img_emb_{n}.npy", rng.standard_normal((n + 1, 4)).astype(np.float32))
        write_parquet(root / "metadata" / f"metadata_{n}.parquet", _meta(n + 1))
    folder = ext.open_embedding_folder(root)
    assert [s.number for s in folder.shards] == list(range(12))
    assert [s.rows for s in folder.shards] == list(range(1, 13))
    assert folder.dtypes == ("float32",)


def test_written_names_are_zero_padded_like_clip_retrieval(tmp_path):
    rng = np.random.default_rng(2)
    shards = [(rng.standard_normal((1, 4)).astype(np.float16), _meta(1)) for _ in range(11)]
    ext.write_embedding_folder(tmp_path / "e", shards)
    names = sorted(p.name for p in (tmp_path / "e" / "img_emb").iterdir())
    assert names[0] == "img_emb_00.npy" and names[-1] == "img_emb_10.npy"
    assert sorted(p.name for p in (tmp_path / "e" / "metadata").iterdir())[-1] == "metadata_10.parquet"


def test_missing_metadata_names_the_shard(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_NO_METADATA, root=root, path="img_emb/img_emb_1.npy", n=1)


def test_metadata_without_shard(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "img_emb" / "img_emb_1.npy").unlink()
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_NO_EMBEDDINGS, root=root, path="metadata/metadata_1.parquet", sub="img_emb",
                                  kind="img", n=1)


def test_a_gap_in_the_numbers_is_a_missing_shard(tmp_path):
    root, _ = _folder(tmp_path, sizes=(2, 2, 2))
    (root / "img_emb" / "img_emb_1.npy").unlink()
    (root / "metadata" / "metadata_1.parquet").unlink()
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_GAP, root=root, n=1, sub="img_emb", kind="img", first=0, last=2)


def test_row_counts_must_match_the_metadata(tmp_path):
    root, _ = _folder(tmp_path)
    from clipprobe._io import write_parquet

    write_parquet(root / "metadata" / "metadata_1.parquet", _meta(4))
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_ROWS, root=root, path="img_emb/img_emb_1.npy", rows=3,
                                  meta="metadata/metadata_1.parquet", meta_rows=4)


def test_dimension_against_the_model_and_across_shards(tmp_path):
    root, _ = _folder(tmp_path)
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root, dim=512)
    assert str(err.value) == _msg(ext.MSG_DIM_MODEL, root=root, path="img_emb/img_emb_0.npy", dim=8, want=512)
    from clipprobe._io import write_npy

    write_npy(root / "img_emb" / "img_emb_1.npy", np.zeros((3, 9), np.float16))
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_DIM_MIXED, root=root, path="img_emb/img_emb_1.npy", dim=9,
                                  first="img_emb/img_emb_0.npy", first_dim=8)


@pytest.mark.parametrize("array, why", [
    (np.zeros((3, 8), np.int16), "dtype"),
    (np.zeros((3, 8), np.float64), "dtype"),
    (np.zeros((3, 8), ">f2"), "dtype"),
    (np.zeros(24, np.float16), "shape"),
    (np.asfortranarray(np.zeros((3, 8), np.float16)), "shape"),
])
def test_dtype_and_shape(tmp_path, array, why):
    root, _ = _folder(tmp_path)
    with open(root / "img_emb" / "img_emb_1.npy", "wb") as fh:
        np.save(fh, array)
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert "shard img_emb/img_emb_1.npy" in str(err.value)
    head = {"dtype": ext.MSG_DTYPE, "shape": ext.MSG_SHAPE}[why].split("{path}")[1].split("{")[0]
    assert head in str(err.value)


def test_pickled_objects_are_never_loaded(tmp_path):
    root, _ = _folder(tmp_path)
    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (marker.write_text, ("x",))

    arr = np.empty((3, 8), dtype=object)
    arr[0, 0] = Boom()
    with open(root / "img_emb" / "img_emb_1.npy", "wb") as fh:
        np.save(fh, arr, allow_pickle=True)
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_DTYPE, root=root, path="img_emb/img_emb_1.npy", dtype="objects")
    assert not marker.exists()


def test_truncated_and_garbage_files(tmp_path):
    root, _ = _folder(tmp_path)
    path = root / "img_emb" / "img_emb_1.npy"
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_TRUNCATED, root=root, path="img_emb/img_emb_1.npy", size=len(data) - 5,
                                  rows=3, dim=8, dtype="float16", want=len(data))
    path.write_bytes(b"not numpy at all")
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value).startswith(f"embeddings {root}: shard img_emb/img_emb_1.npy is not a readable .npy array (")


def test_unreadable_metadata(tmp_path):
    root, _ = _folder(tmp_path)
    (root / "metadata" / "metadata_0.parquet").write_bytes(b"PAR1 broken")
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value).startswith(f"embeddings {root}: cannot read metadata metadata/metadata_0.parquet (")


def test_layout_errors(tmp_path):
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(tmp_path / "nope")
    assert str(err.value) == _msg(ext.MSG_NO_FOLDER, root=tmp_path / "nope")
    (tmp_path / "a" / "metadata").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(tmp_path / "a")
    assert str(err.value) == _msg(ext.MSG_NO_SUBFOLDER, root=tmp_path / "a", sub="img_emb", kind="img")
    (tmp_path / "a" / "img_emb").mkdir()
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(tmp_path / "a")
    assert str(err.value) == _msg(ext.MSG_NO_SHARDS, root=tmp_path / "a", sub="img_emb", kind="img")
    root, _ = _folder(tmp_path)
    np.save(root / "img_emb" / "img_emb_x.npy", np.zeros((1, 8), np.float16))
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_STRAY, root=root, path="img_emb/img_emb_x.npy", pattern="img_emb_N.npy")
    (root / "img_emb" / "img_emb_x.npy").unlink()
    np.save(root / "img_emb" / "img_emb_01.npy", np.zeros((3, 8), np.float16))
    with pytest.raises(DataError) as err:
        ext.open_embedding_folder(root)
    assert str(err.value) == _msg(ext.MSG_DUPLICATE, root=root, a="img_emb/img_emb_01.npy", b="img_emb/img_emb_1.npy",
                                  n=1)


def test_column_lookup(tmp_path):
    root, _ = _folder(tmp_path)
    folder = ext.open_embedding_folder(root)
    with pytest.raises(DataError) as err:
        folder.find_column(("caption",), "captions", given="captoin")
    assert "has no column 'captoin' (did you mean 'caption'?)" in str(err.value)
    with pytest.raises(DataError) as err:
        folder.find_column(("TEXT", "text"), "the captions")
    assert "has no column 'TEXT (the captions)'" in str(err.value)


def test_reader_gives_back_pages_and_keeps_the_data(tmp_path):
    rng = np.random.default_rng(3)
    emb = rng.standard_normal((5000, 64)).astype(np.float16)
    ext.write_embedding_folder(tmp_path / "e", [(emb, _meta(5000))])
    folder = ext.open_embedding_folder(tmp_path / "e")
    with folder.reader(folder.shards[0]) as rows:
        assert rows.array.shape == (5000, 64) and not rows.array.flags.writeable
        assert np.array_equal(rows.array[:2500], emb[:2500])
        rows.release(2500)
        assert rows._released > 0 and rows._released % 4096 == 0
        assert np.array_equal(rows.array, emb)          # released pages read back from the file
        rows.release(5000)
