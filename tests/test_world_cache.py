"""The cache of trained world models: keyed by everything that decides a training, reused only when equal."""

from __future__ import annotations

import json


from clipprobe.world import train as T


def _fake_training(calls):
    def fake(out, cfg, *, evaluate):
        calls.append(cfg)
        arch = T.arch_name(cfg.width)
        out.mkdir(parents=True, exist_ok=True)
        T.config_path(out, arch).write_text(json.dumps(T.arch_config(cfg.width)))
        T.weights_path(out, arch).write_bytes(f"weights of seed {cfg.seed}".encode())
        meta = {"arch": arch, "seed": cfg.seed}
        T.meta_path(out, arch).write_text(json.dumps(meta))
        return meta
    return fake


def test_key_changes_with_settings_and_keep_file_content(tmp_path):
    keep = tmp_path / "weights.parquet"
    keep.write_bytes(b"one")
    base = T.training_key(T.TrainConfig(keep=str(keep)))
    assert base == T.training_key(T.TrainConfig(keep=str(keep)))
    assert base != T.training_key(T.TrainConfig(keep=str(keep), seed=1))
    assert base != T.training_key(T.TrainConfig(keep=str(keep)), evaluate=False)
    assert base != T.training_key(T.TrainConfig(keep=str(keep), width=0.5))
    moved = tmp_path / "elsewhere.parquet"
    moved.write_bytes(b"one")
    assert base == T.training_key(T.TrainConfig(keep=str(moved)))      # content, not path
    keep.write_bytes(b"two")
    assert base != T.training_key(T.TrainConfig(keep=str(keep)))
    # a keep file that is a folder (a parquet dataset, as `balance fit` writes weights.parquet): its files' content
    folder = tmp_path / "weights-dir.parquet"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"one")
    first = T.training_key(T.TrainConfig(keep=str(folder)))
    (folder / "part-1.parquet").write_bytes(b"two")
    assert first != T.training_key(T.TrainConfig(keep=str(folder)))


def test_same_training_is_copied_and_another_is_trained(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "_train", _fake_training(calls))
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(T, "register_arch", lambda *a, **k: None)
    first = T.train_world_model(tmp_path / "a", T.TrainConfig(seed=5))
    again = T.train_world_model(tmp_path / "b", T.TrainConfig(seed=5))
    assert len(calls) == 1 and first == again
    assert T.weights_path(tmp_path / "b").read_bytes() == b"weights of seed 5"
    T.train_world_model(tmp_path / "c", T.TrainConfig(seed=6))
    assert len(calls) == 2
    assert T.weights_path(tmp_path / "c").read_bytes() == b"weights of seed 6"


def test_without_the_variable_every_call_trains(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(T, "_train", _fake_training(calls))
    monkeypatch.delenv(T.CACHE_ENV, raising=False)
    T.train_world_model(tmp_path / "a", T.TrainConfig())
    T.train_world_model(tmp_path / "b", T.TrainConfig())
    assert len(calls) == 2


def test_concurrent_runs_of_one_training_train_it_once(tmp_path, monkeypatch):
    import threading
    import time

    calls = []
    fake = _fake_training(calls)

    def slow(out, cfg, *, evaluate):
        time.sleep(0.3)                     # the second run arrives while the first still trains
        return fake(out, cfg, evaluate=evaluate)

    monkeypatch.setattr(T, "_train", slow)
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(T, "register_arch", lambda *a, **k: None)
    results = {}
    threads = [threading.Thread(target=lambda n=n: results.__setitem__(n, T.train_world_model(
        tmp_path / n, T.TrainConfig(seed=7)))) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and results["a"] == results["b"]
    assert T.weights_path(tmp_path / "b").read_bytes() == T.weights_path(tmp_path / "a").read_bytes()


def test_trainings_that_share_a_cache_take_turns(tmp_path, monkeypatch):
    """Two different trainings (other keys) started together run one after the other, not side by side
    (each sets its own torch threads: together they would oversubscribe the cores)."""
    import threading
    import time

    spans = {}
    calls = []
    fake = _fake_training(calls)

    def slow(out, cfg, *, evaluate):
        start = time.monotonic()
        time.sleep(0.3)
        meta = fake(out, cfg, evaluate=evaluate)
        spans[cfg.seed] = (start, time.monotonic())
        return meta

    monkeypatch.setattr(T, "_train", slow)
    monkeypatch.setenv(T.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(T, "register_arch", lambda *a, **k: None)
    threads = [threading.Thread(target=lambda s=s: T.train_world_model(tmp_path / str(s), T.TrainConfig(seed=s)))
               for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 2
    (a0, a1), (b0, b1) = sorted(spans.values())
    assert b0 >= a1, f"the trainings overlapped: {spans}"
