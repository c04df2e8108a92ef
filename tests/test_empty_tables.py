"""A table with no rows has the column types of a table with rows, in memory and in its parquet file."""

from __future__ import annotations

import pandas as pd
import pyarrow.parquet as pq

from clipprobe._io import write_parquet


def test_an_empty_table_is_written_with_typed_columns(tmp_path):
    empty = pd.DataFrame({"word": pd.Series(dtype=object), "count": pd.Series(dtype="int64"),
                          "skew": pd.Series(dtype="float64"), "flag": pd.Series(dtype="boolean")})
    write_parquet(tmp_path / "e.parquet", empty)
    types = {f.name: str(f.type) for f in pq.read_schema(tmp_path / "e.parquet")}
    assert types["word"] in ("string", "large_string") and types["count"] == "int64"
    assert types["skew"] == "double" and types["flag"] == "bool"
    full = pd.DataFrame({"word": ["a"], "count": [1], "skew": [0.5], "flag": pd.array([True], dtype="boolean")})
    write_parquet(tmp_path / "f.parquet", full)
    assert {f.name: str(f.type) for f in pq.read_schema(tmp_path / "f.parquet")} == types


def test_an_empty_sweep_table_has_the_types_of_a_full_one():
    from clipprobe.report.sweep import SWEEP_COLUMNS, finish_sweep_table

    row = {c: None for c in SWEEP_COLUMNS}
    row.update(model="m", model_key="m", probe="report", measure="max_skew", test="t", order="race", category="c",
               value=0.5, n=3)
    full = finish_sweep_table([pd.DataFrame([row])])
    empty = finish_sweep_table([])
    assert len(empty) == 0 and list(empty.columns) == list(full.columns)
    assert empty.dtypes.to_dict() == full.dtypes.to_dict()


def test_an_empty_stimuli_table_has_the_types_of_a_full_one():
    from clipprobe.report.eat import STIMULI_COLUMNS, stimuli_table

    empty = stimuli_table([], {}, {})
    assert list(empty.columns) == list(STIMULI_COLUMNS)
    numbers = {"association": "float64", "sc_effect_size": "float64", "sc_p_value": "float64",
               "sc_n_permutations": "int64"}
    for c in STIMULI_COLUMNS:
        if c in numbers:
            assert str(empty[c].dtype) == numbers[c], c
        else:
            assert pd.api.types.is_string_dtype(empty[c].dtype), c
