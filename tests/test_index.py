"""FAISS search against numpy brute force, approximate kinds, persistence, errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from clipprobe.embeddings import index as I
from clipprobe.errors import ClipprobeError, DataError, UsageError


def _unit(rng, n, d):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _check_topk_against_brute_force(x, q, scores, ids, k, atol=1e-5):
    """Tie-aware: scores equal the sorted dot products; ids are valid and complete above the k-th score."""
    exact = q.astype(np.float64) @ x.astype(np.float64).T
    for j in range(len(q)):
        truth = np.sort(exact[j])[::-1][:k]
        np.testing.assert_allclose(scores[j], truth, atol=atol)
        assert len(set(ids[j].tolist())) == k and ids[j].min() >= 0
        np.testing.assert_allclose(exact[j, ids[j]], scores[j], atol=atol)
        kth = truth[-1]
        must = set(np.flatnonzero(exact[j] > kth + atol).tolist())
        assert must <= set(ids[j].tolist())


@pytest.mark.parametrize("seed,n,d,k", [(0, 500, 32, 10), (1, 64, 8, 64), (2, 1000, 16, 1), (3, 300, 4, 37)])
def test_flat_topk_equals_numpy(seed, n, d, k):
    rng = np.random.default_rng(seed)
    x = _unit(rng, n, d)
    q = _unit(rng, 7, d)
    index = I.build_index(x, gpu="never")
    scores, ids = I.search(index, q, k)
    assert scores.shape == ids.shape == (7, k) and scores.dtype == np.float32 and ids.dtype == np.int64
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    _check_topk_against_brute_force(x, q, scores, ids, k)


def test_flat_with_exact_ties():
    rng = np.random.default_rng(5)
    base = _unit(rng, 20, 6)
    x = np.concatenate([base, base, base[:5]])  # every vector duplicated: many exact ties
    q = _unit(rng, 4, 6)
    scores, ids = I.search(I.build_index(x, gpu="never"), q, 11)
    _check_topk_against_brute_force(x, q, scores, ids, 11)


def test_single_query_vector():
    rng = np.random.default_rng(6)
    x = _unit(rng, 50, 8)
    scores, ids = I.search(I.build_index(x, gpu="never"), x[7], 3)
    assert ids.shape == (1, 3) and ids[0, 0] == 7 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_ivf_visiting_every_cell_is_exact():
    rng = np.random.default_rng(7)
    x = _unit(rng, 2000, 16)
    q = _unit(rng, 5, 16)
    index = I.build_index(x, kind="ivf", nlist=16, nprobe=16, gpu="never")
    scores, ids = I.search(index, q, 20)
    _check_topk_against_brute_force(x, q, scores, ids, 20)


def test_hnsw_has_high_recall():
    rng = np.random.default_rng(8)
    x = _unit(rng, 2000, 16)
    q = _unit(rng, 20, 16)
    _, ids = I.search(I.build_index(x, kind="hnsw", gpu="never"), q, 10)
    truth = np.argsort(-(q @ x.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids.tolist(), truth.tolist())])
    assert recall >= 0.95


def test_not_normalised_is_rejected():
    x = np.ones((3, 4), dtype=np.float32)
    with pytest.raises(DataError) as err:
        I.build_index(x)
    assert str(err.value) == I.MSG_NOT_NORMALISED.format(row=0, norm=2.0)


@pytest.mark.parametrize("k", [0, 11, -1])
def test_k_out_of_range(k):
    x = _unit(np.random.default_rng(9), 10, 4)
    with pytest.raises(UsageError) as err:
        I.search(I.build_index(x, gpu="never"), x[:1], k)
    assert str(err.value) == I.MSG_BAD_K.format(k=k, n=10)


def test_dimension_mismatch_and_unknown_kind():
    x = _unit(np.random.default_rng(10), 10, 4)
    with pytest.raises(DataError, match="dimension 5 but the index has dimension 4"):
        I.search(I.build_index(x, gpu="never"), np.ones((1, 5)), 1)
    with pytest.raises(UsageError, match="unknown index kind 'hnws' \\(did you mean 'hnsw'"):
        I.build_index(x, kind="hnws")


@pytest.mark.skipif(I.gpu_available(), reason="checks the no-GPU error")
def test_gpu_always_without_gpu():
    x = _unit(np.random.default_rng(11), 10, 4)
    with pytest.raises(ClipprobeError, match="gpu='always' but"):
        I.build_index(x, gpu="always")
    # "auto" quietly stays on the CPU.
    assert not I.is_gpu_index(I.build_index(x, gpu="auto"))


def test_missing_faiss_names_the_extras(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` raise ImportError
    with pytest.raises(ClipprobeError) as err:
        I.build_index(np.eye(2, dtype=np.float32))
    assert str(err.value) == I.MSG_NO_FAISS
    assert "clipprobe[cpu]" in I.MSG_NO_FAISS and "clipprobe[gpu]" in I.MSG_NO_FAISS


def test_save_and_load_roundtrip(tmp_path):
    rng = np.random.default_rng(12)
    x = _unit(rng, 200, 8)
    q = _unit(rng, 3, 8)
    for kind in I.KINDS:
        index = I.build_index(x, kind=kind, gpu="never")
        path = I.save_index(index, tmp_path / f"{kind}.faiss")
        assert path.is_file() and not list(tmp_path.glob(".*.tmp*"))
        again = I.load_index(path, gpu="never", kind=kind)
        a, b = I.search(index, q, 5), I.search(again, q, 5)
        np.testing.assert_array_equal(a[1], b[1])
        np.testing.assert_array_equal(a[0], b[0])


def test_load_garbage_index(tmp_path):
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(DataError, match="cannot read FAISS index"):
        I.load_index(bad, gpu="never")


@dataclass
class _Emb:
    vectors: np.ndarray
    cache_dir: Path


def test_index_for_persists_and_reuses(tmp_path, monkeypatch):
    x = _unit(np.random.default_rng(13), 100, 8)
    emb = _Emb(x, tmp_path)
    first = I.index_for(emb, gpu="never")
    assert (tmp_path / "index" / "flat.faiss").is_file()
    calls = []
    real_build = I.build_index
    monkeypatch.setattr(I, "build_index", lambda *a, **kw: calls.append(1) or real_build(*a, **kw))
    second = I.index_for(emb, gpu="never")
    assert calls == []  # loaded, not rebuilt
    np.testing.assert_array_equal(I.search(first, x[:2], 4)[1], I.search(second, x[:2], 4)[1])
    # Different vectors under the same cache folder: rebuilt, not a stale index.
    emb2 = _Emb(_unit(np.random.default_rng(14), 100, 8), tmp_path)
    I.index_for(emb2, gpu="never")
    assert calls == [1]


def test_cli_index_build_then_reuse(tiny_model_files, tmp_path):
    import json

    from click.testing import CliRunner

    from clipprobe.cli import cli
    from tests import facegen

    config, weights, arch = tiny_model_files
    root = facegen.write_fairface(tmp_path / "ff", n=12, corrupt=(4,))
    args = ["index", "build", "--model", f"{arch}:{weights}", "--model-config", str(config),
            "--dataset", f"fairface:{root}", "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
            "--batch-size", "4", "--workers", "0", "--format", "json"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert summary["n_images"] == 11 and summary["n_embedded_now"] == 11
    assert [s["file"] for s in summary["skipped"]] == ["val/5.jpg"]
    assert summary["index"]["ntotal"] == 11 and Path(summary["index"]["path"]).is_file()
    again = json.loads(CliRunner().invoke(cli, args).output)
    assert again["n_embedded_now"] == 0 and again["index"]["path"] == summary["index"]["path"]
    table = CliRunner().invoke(cli, args[:-2])
    assert table.exit_code == 0 and "11 embedded (0 in this run), 1 unreadable" in table.output


def test_cli_index_build_missing_dataset(tiny_model_files, tmp_path):
    from click.testing import CliRunner

    from clipprobe.cli import cli

    config, weights, arch = tiny_model_files
    result = CliRunner().invoke(cli, ["index", "build", "--model", f"{arch}:{weights}", "--model-config", str(config),
                                      "--dataset", f"fairface:{tmp_path / 'missing'}", "--device", "cpu"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"Error: dataset folder {tmp_path / 'missing'} does not exist"]


def test_index_file_too_large_or_disk_full_is_a_one_line_error(tmp_path):
    """FAISS reports a failed write as a RuntimeError; it is the one-line WriteError of every other file."""
    import signal

    from test_io import _in_child

    from clipprobe._io import WriteError

    rng = np.random.default_rng(0)
    index = I.build_index(_unit(rng, 5000, 64), kind="flat", gpu="never")
    target = tmp_path / "index.faiss"

    def child():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        try:
            I.save_index(index, target)
        except WriteError as err:
            return f"WriteError: {err}"
        return "no error"

    code, out = _in_child(child)
    assert code == 0, out
    assert out == f"WriteError: cannot write {target}: File too large"
    assert list(tmp_path.iterdir()) == []
