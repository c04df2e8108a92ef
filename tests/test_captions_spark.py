"""The Spark engine (local[2]) gives the same counts and samples as the local engine (slow: a JVM)."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
from test_captions_count import LEXICON, TAXONOMY, TRAPS

from clipprobe.captions.run import CountConfig, count_captions
from clipprobe.captions.synth import write_laion_parquet

pytest.importorskip("pyspark")
pytestmark = [pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java"),
              pytest.mark.slow]  # starting a JVM takes 20-30 s


def test_spark_local2_equals_local_engine(tmp_path):
    (tmp_path / "tax.yaml").write_text(TAXONOMY)
    (tmp_path / "lex.yaml").write_text(LEXICON)
    for i in range(2):
        write_laion_parquet(tmp_path / f"p{i}.parquet", TRAPS + ["terrorist man", "Arab nurse", None] * (i + 1),
                            row_group_size=20, seed=i)
    (tmp_path / "zz.parquet").write_bytes(b"PAR1broken")
    common = dict(captions=(str(tmp_path / "*.parquet"),), taxonomy=str(tmp_path / "tax.yaml"),
                  lexicon=str(tmp_path / "lex.yaml"), samples=3, chunk_rows=30)
    local = count_captions(CountConfig(out=str(tmp_path / "local"), workers=1, **common))
    spark = count_captions(CountConfig(out=str(tmp_path / "spark"), engine="spark", workers=2, **common))
    pd.testing.assert_frame_equal(local.table, spark.table)
    assert spark.run["engine"] == "spark" and len(spark.run["skipped"]) == 1
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "local" / "samples.parquet"),
                                  pd.read_parquet(tmp_path / "spark" / "samples.parquet"))
    assert local.table.n_both.sum() > 0
