"""The attribute pass on Spark (local[2], one task per shard) writes the local engine's files; a run
resumes across engines; a shard with invalid rows stops the run with the local engine's message
(slow: a JVM)."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
from test_attribute_pass import _config, setup  # noqa: F401  (the module fixture)

from clipprobe.errors import DataError

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java"),
              pytest.mark.slow]  # starting a JVM takes 20-30 s


def _shard_file(path):
    """A shard file's table and its recorded counts, less the timings."""
    meta = json.loads(pq.ParquetFile(path).metadata.metadata[b"clipprobe_attributes"])
    meta["counts"].pop("seconds")
    return pq.read_table(path), meta


def test_spark_local2_equals_local_engine(setup, tmp_path):  # noqa: F811
    from clipprobe.embeddings.external import write_embedding_folder
    from clipprobe.pipeline.attributes import MSG_INVALID_ROWS, run_attributes

    local = run_attributes(_config(setup, tmp_path / "local", dataset=None, lexicon="fairface", workers=1))
    spark = run_attributes(_config(setup, tmp_path / "spark", dataset=None, lexicon="fairface", engine="spark",
                                   workers=2))
    assert spark.run["config"]["engine"] == "spark" and len(spark.shards) == 2
    for a, b in zip(local.shards, spark.shards):
        (ta, ma), (tb, mb) = _shard_file(a), _shard_file(b)
        assert ta.equals(tb) and ta.schema == tb.schema
        assert ma == mb
    assert spark.run["summary"] == local.run["summary"]
    assert spark.run["summary"]["both"]["from_caption"] > 0       # the executors built the lexicon's matcher

    # resumable across engines: a shard written by the local engine is not redone on Spark
    (tmp_path / "spark" / "shards" / "attributes_1.parquet").unlink()
    shutil.copy(local.shards[0], tmp_path / "spark" / "shards" / "attributes_0.parquet")
    again = run_attributes(_config(setup, tmp_path / "spark", dataset=None, lexicon="fairface", engine="spark",
                                   workers=2))
    assert again.run["summary"]["shards_done_before"] == 1
    assert _shard_file(again.shards[1]) == _shard_file(local.shards[1])

    # invalid rows: the local engine's message, the shard not written
    emb = setup["emb"].copy()
    emb[150] = float("nan")
    meta = setup["meta"]
    write_embedding_folder(tmp_path / "bad", [(emb[:100], meta[:100]), (emb[100:], meta[100:].reset_index(drop=True))])
    with pytest.raises(DataError) as err:
        run_attributes(_config(setup, tmp_path / "o", embeddings=str(tmp_path / "bad"), dataset=None, engine="spark",
                               workers=2))
    assert str(err.value) == MSG_INVALID_ROWS.format(root=tmp_path / "bad", path="img_emb/img_emb_1.npy", n=1, row=50)
    assert not (tmp_path / "o" / "shards" / "attributes_1.parquet").exists()
