"""`balance measure` / `balance fit` end to end on generated LAION-schema parquet, against a per-caption oracle.

The oracle builds each caption's group and label indicators with plain Python regexes
(tests/test_captions_matching.py's rule, written separately from the scanner); every statistic and
every written weight is then checked caption by caption against the core functions applied to those
arrays, and the constraints are recomputed from the written q with numpy.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_captions_count import EXTRA, TRAPS
from test_balance import py_counts, py_keep, py_row_hash, py_signature
from test_captions_matching import oracle_contains

from clipprobe.analysis import balance
from clipprobe.analysis.patterns import encode_patterns, table_lookup
from clipprobe.captions.patterns import EngineSettings
from clipprobe.captions.synth import write_laion_parquet
from clipprobe.errors import ClipprobeError, DataError, UsageError
from clipprobe.pipeline.balance import BalanceConfig, fit_balance, measure_bias

LEXICON = """name: mini-gender
attributes:
  gender:
    Male: [man, men, boy, gentleman]
    Female: [woman, women, girl, "young lady"]
  race:
    East Asian: [chinese, east asian]
"""
GROUP_TERMS = {"Male": ["man", "men", "boy", "gentleman"], "Female": ["woman", "women", "girl", "young lady"]}
LABELS = ["nurse", "CEO", "delivery man", "élève", "terrorist", "mugger"]
TAXONOMY = """name: mini
categories:
  occupation: [nurse, CEO, delivery man, élève]
  criminal justice: [terrorist, mugger]
"""


def make_captions(n: int, rng) -> list:
    """Captions with a planted gender imbalance and label association, plus the matching rule's traps."""
    pool = TRAPS + EXTRA
    out = []
    for _ in range(n):
        u = rng.random()
        if u < 0.25:
            out.append(pool[int(rng.integers(len(pool)))])
            continue
        who = rng.choice(["man", "Men", "a boy", "woman", "girl", "young  lady", "man and woman", "", ""],
                         p=[0.2, 0.05, 0.1, 0.1, 0.05, 0.05, 0.05, 0.2, 0.2])
        male = who in ("man", "Men", "a boy")
        job = rng.choice(["nurse", "CEO", "delivery man", "ÉLÈVE", "terrorist's", "", "photo"],
                         p=[0.1 if male else 0.25, 0.25 if male else 0.05, 0.1, 0.05, 0.05, 0.25,
                            0.2 if male else 0.25])
        out.append(f"{who} {job} on a beach".strip())
    return out


def oracle(captions):
    """(s, y): per-caption 0/1 indicators of the gender groups and the labels, from plain regexes."""
    s = np.array([[any(oracle_contains(c, t) for t in GROUP_TERMS[g]) for g in ("Male", "Female")]
                  for c in captions], dtype=np.int8)
    y = np.array([[oracle_contains(c, w) for w in LABELS] for c in captions], dtype=np.int8)
    return s, y


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("balance")
    (root / "lex.yaml").write_text(LEXICON)
    (root / "labels.txt").write_text("# labels\n" + "\n".join(LABELS) + "\n\n")
    (root / "tax.yaml").write_text(TAXONOMY)
    rng = np.random.default_rng(3)
    files = []
    for i in range(3):
        caps = make_captions(700 + 150 * i, rng)
        write_laion_parquet(root / "data" / f"part-{i}.parquet", caps, row_group_size=97, seed=i)
        files.append(caps)
    return root, files


def config(root, out, **kw):
    base = dict(captions=(str(root / "data"),), out=str(out), attribute="gender", labels=str(root / "labels.txt"),
                lexicon=str(root / "lex.yaml"), taxonomy=str(root / "tax.yaml"), keep=0.6, eps_r=0.02, eps_a=0.03,
                figure=False, engine=EngineSettings(workers=1, chunk_rows=300))
    base.update(kw)
    return BalanceConfig(**base)


def all_captions(files):
    return [c for caps in files for c in caps]


@pytest.mark.parametrize("matcher", ["tokens", "hyperscan"])
def test_measure_equals_the_per_caption_oracle(data, tmp_path, matcher):
    root, files = data
    result = measure_bias(config(root, tmp_path / "m", engine=EngineSettings(workers=1, chunk_rows=250,
                                                                              matcher=matcher)))
    s, y = oracle(all_captions(files))
    want = balance.data_bias_arrays(s, y, groups=("Male", "Female"), labels=LABELS)
    got = result.groups[result.groups["data"] == "before"]
    np.testing.assert_allclose(got["share"], want.share)
    np.testing.assert_allclose(got["share_low"], want.share_low)
    cells = result.cells[result.cells["data"] == "before"]
    np.testing.assert_allclose(cells["ab"], want.ab.ravel(), equal_nan=True)
    np.testing.assert_allclose(cells["ab_low"], want.ab_low.ravel(), equal_nan=True)
    run = json.loads((tmp_path / "m" / "run.json").read_text())
    assert run["rows"] == len(s) and run["nulls"] == sum(c is None for c in all_captions(files))
    assert run["before"]["n_mention"] == int((s.sum(1) > 0).sum())
    assert run["before"]["n_multi"] == int((s.sum(1) > 1).sum()) > 0
    assert "1/j" in run["mentions"]
    patterns = pd.read_parquet(tmp_path / "m" / "patterns.parquet")
    table, _ = encode_patterns(s, y, groups=("Male", "Female"), labels=LABELS)
    assert patterns["count"].sum() == len(s) and len(patterns) == table.n_rows
    assert not (tmp_path / "m" / "balance.png").exists()


@pytest.fixture(scope="module")
def fitted(data, tmp_path_factory):
    root, files = data
    out = tmp_path_factory.mktemp("fit") / "out"
    return fit_balance(config(root, out, seed=7)), out


def oracle_flags(paths, q_oracle, fit_ids, count, seed, blocks, columns=("TEXT", "URL")):
    """Keep flags from the definition, caption by caption: each pattern keeps q x count captions rounded
    systematically in blocks of its groups, the first by (seeded hash of the content columns, file
    ordinal << 40 | row), in plain Python."""
    hashes, position = [], []
    for ordinal, path in enumerate(paths):
        table = pq.read_table(path, columns=list(columns)).to_pydict()
        hashes += [py_row_hash(*values) for values in zip(*(table[c] for c in columns))]
        position += [(ordinal << 40) | row for row in range(len(table[columns[0]]))]
    return py_keep(fit_ids, hashes, position, q_oracle, count, seed, blocks)


def test_fit_writes_every_caption_its_oracle_q_and_flag(data, fitted):
    root, files = data
    result, out = fitted
    caps = all_captions(files)
    s, y = oracle(caps)
    table, ids = encode_patterns(s, y, groups=("Male", "Female"), labels=LABELS)
    sol = result.solution
    fit_ids = table_lookup(table, sol.table)[ids]
    q_oracle = sol.q[fit_ids]
    w = pd.read_parquet(out / "weights.parquet")
    assert sorted(p.name for p in (out / "weights.parquet").iterdir())[0] == "part-00000.parquet"
    assert list(w.columns) == ["file", "row_group", "row", "URL", "q", "keep"]
    assert len(w) == len(caps)
    np.testing.assert_array_equal(w["q"].to_numpy(), q_oracle)
    # provenance: file, row group and row point at the caption; URL is the file's
    start = 0
    for i, c in enumerate(files):
        part = w.iloc[start:start + len(c)]
        path = str(root / "data" / f"part-{i}.parquet")
        assert (part["file"].astype(str) == path).all()
        np.testing.assert_array_equal(part["row"], np.arange(len(c)))
        np.testing.assert_array_equal(part["row_group"], np.arange(len(c)) // 97)
        assert part["URL"].tolist() == pq.read_table(path, columns=["URL"]).column(0).to_pylist()
        start += len(c)
    paths = [root / "data" / f"part-{i}.parquet" for i in range(len(files))]
    want = oracle_flags(paths, sol.q, fit_ids, sol.table.count, 7, py_signature(sol.table))
    np.testing.assert_array_equal(w["keep"].to_numpy(), want)
    run = json.loads((out / "run.json").read_text())
    assert run["fit"]["kept_by_flags"] == int(w["keep"].sum())
    assert run["fit"]["keep_rate"] == pytest.approx(q_oracle.mean())
    assert run["fit"]["flags"]["hash_of"] == "caption text + column 'URL'"


def test_flags_keep_round_q_count_per_pattern_and_their_constraints_are_recorded(data, fitted):
    """The kept captions meet the constraints up to one caption per pattern (recomputed with numpy)."""
    root, files = data
    result, out = fitted
    s, y = oracle(all_captions(files))
    table, ids = encode_patterns(s, y, groups=("Male", "Female"), labels=LABELS)
    sol = result.solution
    fit_ids = table_lookup(table, sol.table)[ids]
    keep = pd.read_parquet(out / "weights.parquet")["keep"].to_numpy()
    kept = np.bincount(fit_ids, weights=keep, minlength=sol.table.n_rows)
    np.testing.assert_array_equal(kept, py_counts(sol.q, sol.table.count, py_signature(sol.table)))
    assert np.abs(kept - sol.q * sol.table.count).max() < 1
    assert abs(kept.sum() - sol.q @ sol.table.count) <= 4 * 0.5       # four combinations of two groups
    patterns = pd.read_parquet(out / "patterns.parquet")
    np.testing.assert_array_equal(patterns["kept"], kept)
    # the constraints on the kept captions, from the flags and the oracle's indicators alone
    j = s.sum(1)
    m = (j > 0).astype(float)
    c = s / np.maximum(j, 1)[:, None] - 0.5 * m[:, None]
    k = keep.astype(float)
    res_r = k @ c / (k @ m)
    with np.errstate(invalid="ignore"):       # a label no kept mentioning caption carries: NaN, as recorded
        res_a = np.stack([(k * y[:, r]) @ c / (k @ (m * y[:, r])) for r in range(y.shape[1])], 1)
    res = pd.read_parquet(out / "residuals.parquet")
    np.testing.assert_allclose(res["residual_kept"].to_numpy()[:2], res_r)
    np.testing.assert_allclose(res["residual_kept"].to_numpy()[2:], res_a.ravel(), equal_nan=True)
    fit = result.run["fit"]
    assert fit["max_residual_r_kept"] == pytest.approx(np.abs(res_r).max())
    assert fit["violated_r_kept"] == int((np.abs(res_r) > 0.02 + 1e-12).sum())
    assert fit["violated_a_kept"] == int((np.abs(res_a[np.isfinite(res_a)]) > 0.03 + 1e-12).sum())
    # each combination of groups keeps within half a caption of its q mass, which bounds the representation
    # residual: at most half a caption off in each of the 'Male' and 'Female' combinations
    mq = sol.table.s.any(1).astype(float)
    dq = (sol.q * sol.table.count) @ mq
    assert (np.abs(res_r) <= (0.02 * dq + 0.5 * 0.5 * 2) / (dq - 0.5 * 3)).all()


def test_flags_do_not_depend_on_where_the_files_sit(data, fitted, tmp_path):
    """The same files in another folder (copied), or the same captions shuffled into other files, keep
    the same captions."""
    import shutil

    root, files = data
    result, out = fitted
    shutil.copytree(root / "data", tmp_path / "elsewhere" / "copy")
    moved = fit_balance(config(root, tmp_path / "out", captions=(str(tmp_path / "elsewhere" / "copy"),), seed=7,
                               engine=EngineSettings(workers=2, chunk_rows=97)))
    a = pd.read_parquet(out / "weights.parquet")
    b = pd.read_parquet(tmp_path / "out" / "weights.parquet")
    assert (b["file"].astype(str) != a["file"].astype(str)).all()
    np.testing.assert_array_equal(b["q"].to_numpy(), a["q"].to_numpy())
    np.testing.assert_array_equal(b["keep"].to_numpy(), a["keep"].to_numpy())
    pd.testing.assert_frame_equal(moved.groups, result.groups)
    # shuffled into two files of other sizes, with an integer id column: the same captions are kept
    src = pa.concat_tables([pq.read_table(root / "data" / f"part-{i}.parquet", columns=["URL", "TEXT"])
                            for i in range(len(files))])
    src = src.append_column("uid", pa.array(np.arange(src.num_rows, dtype=np.int64) * 7 + 3))
    perm = np.random.default_rng(1).permutation(src.num_rows)
    shuffled = src.take(pa.array(perm))
    (tmp_path / "shuffled").mkdir()
    pq.write_table(shuffled.slice(0, 1000), tmp_path / "shuffled" / "a.parquet", row_group_size=128)
    pq.write_table(shuffled.slice(1000), tmp_path / "shuffled" / "b.parquet", row_group_size=300)
    again = fit_balance(config(root, tmp_path / "shuf", captions=(str(tmp_path / "shuffled"),), seed=7))
    c = pd.read_parquet(tmp_path / "shuf" / "weights.parquet")
    assert set(c.loc[c["keep"], "URL"]) == set(a.loc[a["keep"], "URL"])
    assert again.run["fit"]["kept_by_flags"] == result.run["fit"]["kept_by_flags"]
    (tmp_path / "in-order").mkdir()
    pq.write_table(src, tmp_path / "in-order" / "all.parquet", row_group_size=500)
    kept = []
    for name in ("shuffled", "in-order"):
        run = fit_balance(config(root, tmp_path / f"id-{name}", captions=(str(tmp_path / name),), seed=7,
                                 id_column="uid"))
        assert run.run["fit"]["flags"]["hash_of"] == "column 'uid'"
        w = pd.read_parquet(tmp_path / f"id-{name}" / "weights.parquet", columns=["URL", "keep"])
        kept.append(set(w.loc[w["keep"], "URL"]))
    assert kept[0] == kept[1]
    assert kept[0] != set(a.loc[a["keep"], "URL"])       # another hash, another set of the same counts


def test_fit_constraints_hold_caption_by_caption(data, fitted):
    """Recomputed from the written q and the oracle's indicators with numpy alone."""
    root, files = data
    result, out = fitted
    s, y = oracle(all_captions(files))
    q = pd.read_parquet(out / "weights.parquet")["q"].to_numpy()
    j = s.sum(1)
    m = (j > 0).astype(float)
    w = s / np.maximum(j, 1)[:, None]
    c = w - 0.5 * m[:, None]
    assert np.abs(q @ c / (q @ m)).max() <= 0.02 + 1e-9
    for r in range(y.shape[1]):
        mass = q @ (m * y[:, r])
        if mass > 0:
            assert np.abs((q * y[:, r]) @ c / mass).max() <= 0.03 + 1e-9
    after = balance.data_bias_arrays(s, y, groups=("Male", "Female"), labels=LABELS, weights=q)
    got = result.groups[result.groups["data"] == "after"]
    np.testing.assert_allclose(got["share"], after.share)
    assert np.abs(after.rb).max() <= 0.02 + 1e-9
    # AB after is bounded through the two constraints: AB_kr = P(r) (s_kr / s_k - (1 - s_kr) / (1 - s_k)) with
    # s_kr the group's share among the label's captions (within eps_a of pi) and s_k its share (within eps_r)
    corners = [abs(a / b - (1 - a) / (1 - b)) for a in (0.5 - 0.03, 0.5 + 0.03) for b in (0.5 - 0.02, 0.5 + 0.02)]
    rate = (q * m) @ y / (q @ m)
    assert (np.abs(after.ab) <= rate[None, :] * max(corners) + 1e-9).all()
    assert np.abs(after.ab).max() < np.abs(balance.data_bias_arrays(s, y).ab).max()
    kept = pd.read_parquet(out / "weights.parquet")["keep"].to_numpy().astype(float)
    realised = balance.data_bias_arrays(s, y, groups=("Male", "Female"), labels=LABELS, weights=kept)
    cells = result.cells[result.cells["data"] == "kept"]
    np.testing.assert_allclose(cells["ab"], realised.ab.ravel(), equal_nan=True)
    res = pd.read_parquet(out / "residuals.parquet")
    assert np.nanmax(np.abs(res["residual"].to_numpy(float))) <= 0.03 + 1e-9
    conv = pd.read_parquet(out / "convergence.parquet")
    assert len(conv) == result.solution.n_evaluations and conv["max_violation"].iloc[-1] <= 1e-9


def test_figure_shows_rb_and_the_largest_ab_cells_before_and_after(fitted, tmp_path):
    from clipprobe.report.balance import ab_plot, rb_plot, write_balance

    result, out = fitted
    ax = rb_plot(result.groups)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Male", "Female"]
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == ["after", "before", "kept", "target"]
    before = result.groups[result.groups["data"] == "before"]["share"].to_numpy()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), before)
    ax = ab_plot(result.cells, top=3)
    cells = result.cells[result.cells["data"] == "before"]
    top = cells.reindex(cells["ab"].abs().sort_values(ascending=False).index).head(3)
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{g} / {lab}" for g, lab in zip(top["group"],
                                                                                              top["label"])]
    np.testing.assert_allclose(ax.lines[0].get_xdata(), top["ab"].to_numpy())
    files = write_balance(tmp_path, {"groups": result.groups, "cells": result.cells}, {"command": "test"})
    assert (tmp_path / "balance.png").stat().st_size > 0 and files[-1].name == "run.json"


def test_chunks_workers_and_reruns_give_the_same_weights(data, fitted, tmp_path):
    root, _ = data
    result, out = fitted
    fit_balance(config(root, tmp_path / "b", seed=7))
    # the same folder chunked otherwise (and two workers): the patterns are counted again, the same weights
    again = fit_balance(config(root, tmp_path / "b", seed=7, engine=EngineSettings(workers=2, chunk_rows=97)))
    assert again.run["rows_scanned_this_run"]["patterns"] == again.run["rows"]
    a = pd.read_parquet(out / "weights.parquet")
    b = pd.read_parquet(tmp_path / "b" / "weights.parquet")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(result.groups, again.groups)
    # Hyperscan alone (worker processes write the chunk files)
    fit_balance(config(root, tmp_path / "h", seed=7, engine=EngineSettings(workers=2, chunk_rows=150,
                                                                           matcher="hyperscan")))
    pd.testing.assert_frame_equal(a, pd.read_parquet(tmp_path / "h" / "weights.parquet"))
    # a rerun reads no caption for the patterns and no chunk for the weights
    rerun = fit_balance(config(root, tmp_path / "b", seed=7, engine=EngineSettings(workers=2, chunk_rows=97)))
    assert rerun.run["rows_scanned_this_run"] == {"patterns": 0, "ranks": 0, "weights": 0}
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "b" / "weights.parquet"), b)
    # another keep rate: the patterns are not counted again, the weights are written again
    other = fit_balance(config(root, tmp_path / "b", seed=7, keep=0.5, engine=EngineSettings(workers=2, chunk_rows=97)))
    assert other.run["rows_scanned_this_run"]["patterns"] == 0 and other.run["rows_scanned_this_run"]["weights"] > 0
    assert other.run["fit"]["keep_target"] == 0.5
    # another seed: other flags, same q
    fit_balance(config(root, tmp_path / "c", seed=8))
    c = pd.read_parquet(tmp_path / "c" / "weights.parquet")
    np.testing.assert_array_equal(c["q"], a["q"])
    assert (c["keep"] != a["keep"]).any()


def test_attribute_column_and_utility(data, tmp_path):
    """Groups from a column (one per example) and a utility column, against the core on oracle arrays."""
    root, files = data
    rng = np.random.default_rng(5)
    caps = all_captions(files)[:900]
    groups = rng.choice(["A", "B", "C", None, ""], size=len(caps), p=[0.5, 0.2, 0.1, 0.1, 0.1])
    util = rng.uniform(0.5, 3.0, size=len(caps))
    table = pa.table({"URL": [f"u{i}" for i in range(len(caps))], "TEXT": pa.array(caps, pa.string()),
                      "who": pa.array(list(groups), pa.string()), "quality": util})
    (tmp_path / "col").mkdir()
    pq.write_table(table, tmp_path / "col" / "a.parquet", row_group_size=200)
    cfg = config(root, tmp_path / "out", captions=(str(tmp_path / "col"),), attribute="who", attribute_column="who",
                 groups=("A", "B", "C"), utility="quality", keep=0.6, eps_r=0.05, eps_a=0.05,
                 target=(("A", 0.4), ("B", 0.4), ("C", 0.2)))
    result = fit_balance(cfg)
    s = np.stack([groups == g for g in ("A", "B", "C")], 1).astype(np.int8)
    y = np.array([[oracle_contains(c, w) for w in LABELS] for c in caps], dtype=np.int8)
    t, ids = encode_patterns(s, y, utility=util, groups=("A", "B", "C"), labels=LABELS)
    want = balance.m4_solve(t, [0.4, 0.4, 0.2], keep=0.6, eps_r=0.05, eps_a=0.05)
    w = pd.read_parquet(tmp_path / "out" / "weights.parquet")
    np.testing.assert_allclose(w["q"].to_numpy(), want.q[ids], atol=1e-9)
    assert w["URL"].tolist() == [f"u{i}" for i in range(len(caps))]
    assert result.run["groups_from"] == "column 'who'"
    before = result.groups[result.groups["data"] == "before"]
    np.testing.assert_allclose(before["share"], s[s.sum(1) > 0].mean(0))


def _write(tmp_path, name, **columns):
    (tmp_path / "bad").mkdir(exist_ok=True)
    pq.write_table(pa.table(columns), tmp_path / "bad" / name)
    return str(tmp_path / "bad" / name)


@pytest.mark.parametrize("values, message", [
    ([1.0, None, 2.0], "utility column 'quality' has a missing value at row 1"),
    ([1.0, 2.0, -0.5], "utility column 'quality' has -0.5 at row 2; utilities must be positive"),
    ([1.0, 0.0, 2.0], "utility column 'quality' has 0.0 at row 1; utilities must be positive"),
])
def test_bad_utility_is_one_line_and_nothing_is_written(data, tmp_path, values, message):
    root, _ = data
    path = _write(tmp_path, "u.parquet", URL=["a", "b", "c"], TEXT=["man nurse", "woman", "CEO"],
                  quality=pa.array(values, pa.float64()))
    with pytest.raises(DataError) as err:
        fit_balance(config(root, tmp_path / "out", captions=(path,), utility="quality"))
    assert str(err.value) == f"{path}: {message}"
    assert not (tmp_path / "out" / "run.json").exists() and not (tmp_path / "out" / "weights.parquet").exists()


def test_bad_columns_and_values(data, tmp_path):
    root, _ = data
    path = _write(tmp_path, "c.parquet", URL=["a", "b"], TEXT=["man nurse", "woman"], who=["A", "Z"],
                  quality=["x", "y"])
    with pytest.raises(DataError, match=r"no utility column 'qualty' \(did you mean 'quality'\?\); columns: URL"):
        fit_balance(config(root, tmp_path / "o", captions=(path,), utility="qualty"))
    with pytest.raises(DataError, match="utility column 'quality' holds string, not numbers"):
        fit_balance(config(root, tmp_path / "o", captions=(path,), utility="quality"))
    with pytest.raises(DataError, match=r"no key column 'ID'.*key_column=None writes no key column"):
        fit_balance(config(root, tmp_path / "o", captions=(path,), key="ID"))
    with pytest.raises(DataError) as err:
        fit_balance(config(root, tmp_path / "o", captions=(path,), attribute_column="who", groups=("A", "B")))
    assert str(err.value) == (f"{path}: attribute column 'who' holds 'Z' at row 1, not one of the groups 'A', 'B' "
                              "(null or empty means no group)")
    assert not (tmp_path / "o" / "run.json").exists()


def test_bad_settings_fail_before_anything_is_written(data, tmp_path):
    root, _ = data
    out = tmp_path / "never"
    cases = [
        (dict(attribute="religion"), UsageError,
         "attribute 'religion' is not in lexicon 'mini-gender'; valid: 'gender', 'race'"),
        (dict(labels="ocupation"), UsageError,
         "labels 'ocupation' is not a category of taxonomy 'mini', 'all' or a word-list file (did you mean "
         "'occupation'?); categories: 'occupation', 'criminal justice'"),
        (dict(target=(("Male", 0.5), ("Femal", 0.5))), UsageError, "target: unknown group 'Femal'"),
        (dict(target=(("Male", 0.7), ("Female", 0.2))), UsageError, "target: shares must sum to 1, they sum to 0.9"),
        (dict(keep=1.5), UsageError, "keep=1.5 must be in (0, 1]"),
        (dict(eps_r=0.0), UsageError, "eps_r=0.0 must be in (0, 1]"),
        (dict(eps_a=-0.1), UsageError, "eps_a=-0.1 must be in (0, 1]"),
        (dict(groups=("A", "B")), UsageError, "groups are read from the lexicon"),
    ]
    for kw, kind, message in cases:
        with pytest.raises(kind) as err:
            fit_balance(config(root, out, **kw))
        assert str(err.value).startswith(message), (kw, str(err.value))
        assert "\n" not in str(err.value)
    assert not out.exists()


def test_label_sets(data, tmp_path):
    from clipprobe.captions.indicators import read_label_file, resolve_labels
    from clipprobe.resources.taxonomy import load_taxonomy

    root, _ = data
    tax = load_taxonomy(root / "tax.yaml")
    assert resolve_labels("Occupation", tax) == ("nurse", "CEO", "delivery man", "élève")
    assert resolve_labels("all", tax) == ("nurse", "CEO", "delivery man", "élève", "terrorist", "mugger")
    assert resolve_labels(str(root / "labels.txt"), tax) == tuple(LABELS)
    (tmp_path / "dup.txt").write_text("nurse\nCEO\n  ceo  \n")
    with pytest.raises(DataError, match=r"dup.txt, line 3: 'ceo' is the same label as line 2"):
        read_label_file(tmp_path / "dup.txt")
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(DataError, match="lists no label"):
        read_label_file(tmp_path / "empty.txt")


def test_infeasible_keep_rate_names_the_largest_feasible_one(data, tmp_path):
    root, _ = data
    with pytest.raises(balance.BalanceInfeasible) as err:
        fit_balance(config(root, tmp_path / "i", keep=0.99, eps_r=0.001, eps_a=0.001))
    assert 0 < err.value.max_keep < 0.99
    assert f"the largest feasible keep rate is {err.value.max_keep:.4f}" in str(err.value)
    assert not (tmp_path / "i" / "run.json").exists()
    # the pattern counts stay: a feasible rerun scans nothing for them
    ok = fit_balance(config(root, tmp_path / "i", keep=err.value.max_keep * 0.98, eps_r=0.001, eps_a=0.001))
    assert ok.run["rows_scanned_this_run"]["patterns"] == 0
    assert ok.run["after"]["rb_max"] <= 0.001 + 1e-9


def test_engine_settings_are_checked():
    from clipprobe.pipeline.captions import CountConfig

    for kw, message in [(dict(engine="dask"), "unknown engine 'dask'"), (dict(matcher="re"), "unknown matcher 're'"),
                        (dict(spark_conf=("novalue",)), "--spark-conf 'novalue' is not KEY=VALUE"),
                        (dict(workers=0), "workers must be 1 or more")]:
        with pytest.raises(ClipprobeError, match=message):
            EngineSettings(**kw).check()
        if "workers" not in kw:         # `captions count` checks the same settings with the same messages
            with pytest.raises(ClipprobeError, match=message):
                CountConfig(captions=("a.parquet",), out="x", **kw).check()
    with pytest.raises(UsageError, match="no caption files given"):
        CountConfig(captions=(), out="x").check()


def test_train_keep_reads_the_flags(tmp_path):
    from clipprobe.world.train import MSG_KEEP_ROWS, TrainConfig, kept_rows

    assert TrainConfig().keep is None
    pd.DataFrame({"file": ["w.parquet"] * 5, "row": [4, 0, 1, 2, 3], "keep": [True, False, True, True, False]}
                 ).to_parquet(tmp_path / "w.parquet")
    np.testing.assert_array_equal(kept_rows(tmp_path / "w.parquet", 5), [1, 2, 4])
    with pytest.raises(UsageError) as err:
        kept_rows(tmp_path / "w.parquet", 6)
    assert str(err.value) == MSG_KEEP_ROWS.format(path=tmp_path / "w.parquet", got=5, rows="0..4", n=6, last=5)


@pytest.mark.parametrize("path", ["compiled", "numpy"])
@pytest.mark.parametrize("n, k, r, with_utility", [(1000, 2, 5, False), (1000, 3, 70, True), (4000, 2, 167, False),
                                                   (0, 2, 3, False), (10, 2, 3, False), (300, 1, 1, True)])
def test_chunk_encoder_equals_encode_patterns(n, k, r, with_utility, path, monkeypatch):
    """The scan's encoder (bit keys from pairs, hashed rows; compiled, or numpy where numba is missing)
    against the core's dense-matrix encoder."""
    from clipprobe.captions import indicators
    from clipprobe.captions.indicators import encode_chunk

    if path == "numpy":
        from clipprobe import _jitcache

        monkeypatch.setitem(_jitcache._KERNELS, "clipprobe.analysis._patternkernel", None)
    else:
        assert indicators._pattern_kernel() is not None
    rng = np.random.default_rng(n + k + r)
    ns, ny = int(rng.integers(0, n // 2 + 1)), int(rng.integers(0, n + 1))
    sr, sc = rng.integers(0, max(n, 1), ns), rng.integers(0, k, ns)
    yr, yc = rng.integers(0, max(n, 1), ny), rng.integers(0, r, ny)
    u = rng.uniform(0.1, 5, n) if with_utility else None
    groups, labels = [f"g{i}" for i in range(k)], [f"l{i}" for i in range(r)]
    got, ids = encode_chunk(sr, sc, yr, yc, n, groups, labels, u)
    s = np.zeros((n, k), int)
    s[sr, sc] = 1
    y = np.zeros((n, r), int)
    y[yr, yc] = 1
    want, want_ids = encode_patterns(s, y, utility=u, groups=groups, labels=labels)
    for name in ("keys", "ubin", "count"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    np.testing.assert_allclose(got.u_sum, want.u_sum)
    np.testing.assert_array_equal(ids, want_ids)


def test_compiled_encoder_numbers_keys_by_their_words_not_their_hash():
    """The compiled encoder's hash table compares every word of a key: many distinct keys in a table of few
    slots (probing), the same key at rows far apart, and keys that differ in one bit of one word each get
    their own number, exactly as a sort of the rows numbers them."""
    from clipprobe.captions.indicators import _pattern_kernel

    kernel = _pattern_kernel()
    rng = np.random.default_rng(3)
    n, n_words = 5000, 3
    cols = rng.integers(0, 64 * n_words, 4000)
    rows = rng.integers(0, n, 4000)
    rows = np.concatenate([rows, rows[:50] * 0 + n - 1, np.full(3, 7)])      # repeats of pairs, set twice
    cols = np.concatenate([cols, cols[:50], np.array([0, 64, 128])])
    keys = np.zeros((n, n_words), np.uint64)
    inv, first, count = (np.empty(n, np.int64) for _ in range(3))
    m = kernel.distinct_keys(rows.astype(np.int64), cols.astype(np.int64), keys, inv, first, count)
    dense = np.zeros((n, n_words), np.uint64)
    np.bitwise_or.at(dense.reshape(-1), rows * n_words + cols // 64, np.left_shift(np.uint64(1), (cols % 64).astype(np.uint64)))
    np.testing.assert_array_equal(keys, dense)
    marked = dense.any(axis=1)
    np.testing.assert_array_equal(inv < 0, ~marked)
    uniq, sorted_inv = np.unique(dense[marked], axis=0, return_inverse=True)
    assert m == len(uniq) > 1000
    np.testing.assert_array_equal(keys[first[:m]][inv[marked]], dense[marked])       # each row gets its own key
    # one number per distinct key: the numbering is a relabelling of the sort's
    pairs = np.unique(np.column_stack([inv[marked], sorted_inv.reshape(-1)]), axis=0)
    assert len(pairs) == m
    np.testing.assert_array_equal(count[:m], np.bincount(inv[marked], minlength=m))
    assert (first[:m] == np.array([np.flatnonzero(inv == d)[0] for d in range(m)])).all()


def test_distinct_rows_falls_back_on_a_hash_collision(monkeypatch):
    from clipprobe.captions.indicators import _distinct_rows

    rng = np.random.default_rng(0)
    keys = rng.integers(0, 4, size=(500, 3)).astype(np.uint64)
    first, inv = _distinct_rows(keys)
    np.testing.assert_array_equal(first[inv], keys)
    calls = []
    real = np.array_equal

    def collide(a, b, *args, **kw):        # the check after hashing reports a collision once
        calls.append(1)
        return False if len(calls) == 1 else real(a, b, *args, **kw)

    monkeypatch.setattr(np, "array_equal", collide)
    uniq, inv2 = _distinct_rows(keys)
    monkeypatch.undo()
    assert calls and len(uniq) == len(first)
    np.testing.assert_array_equal(uniq[inv2], keys)


def test_rank_tasks_name_a_chunk_whose_patterns_the_fit_never_saw(tmp_path):
    """The passes after the solve look each caption up in the fitted table (keepflags.fitted_rows); a chunk
    with a pattern the fit never saw is an error naming its file and the parts to delete."""
    from clipprobe.analysis.keepflags import content_hashes, rank_histogram, rank_keys, rank_plan
    from clipprobe.captions.indicators import MSG_CHANGED, IndicatorSpec, rank_histogram_task, save_chunk

    s = np.array([[1, 0], [0, 1], [1, 0], [1, 0]])
    y = np.array([[1], [0], [0], [1]])
    names = {"groups": ("a", "b"), "labels": ("l",)}
    table, ids = encode_patterns(s, y, **names)
    chunk = tmp_path / "parts" / "c.npz"
    chunk.parent.mkdir()
    hashes = content_hashes(["w", "x", "y", "z"])
    save_chunk(chunk, table, ids, hashes)
    task = (0, "data.parquet", (0,), "TEXT", 0, str(chunk), 0)
    for fitted, _ in (encode_patterns(s, y, **names), encode_patterns(s[[0, 1, 3]], y[[0, 1, 3]], **names)):
        ranks = rank_plan(fitted.count // 2, fitted.count)
        spec = IndicatorSpec(space={}, matcher=b"", fitted=fitted, ranks=ranks, seed=3, **names)
        got = rank_histogram_task(spec, task)
        if fitted.n_rows == table.n_rows:
            cells, counts = rank_histogram(ranks, table_lookup(table, fitted)[ids], rank_keys(hashes, 3))
            np.testing.assert_array_equal(got["cells"], cells)
            np.testing.assert_array_equal(got["counts"], counts)
        else:       # caption 2's pattern (group a, no label) is not in this fit
            assert got == {"error": MSG_CHANGED.format(path="data.parquet", problem="it holds patterns the fit "
                                                       "never saw", parts=chunk.parent)}
