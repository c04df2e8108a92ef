"""Model specs and loading through open_clip, with a tiny real model (tests/tinyclip.py)."""

from __future__ import annotations

import contextlib
import fractions
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clipprobe import models as M
from clipprobe.models import loading, spec, weights
from clipprobe.errors import ModelError
from clipprobe.models import ModelSpec, load_model, parse_model_spec
from tinyclip import (TINY_CONFIG, write_tiny_config, write_tiny_local_dir, write_tiny_weights)

REPO = Path(__file__).resolve().parents[1]


def _image_batch(n: int, size: int = 32, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g)


def _fake_hub_cache(cache_dir: Path, repo_id: str, files: dict[str, Path | bytes]) -> None:
    """Lay out files as huggingface_hub's cache does (refs/main -> snapshots/<commit>/)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        (snap / name).write_bytes(data)


# ---------------------------------------------------------------------------
# Parsing


@pytest.mark.parametrize(
    "raw, kind, arch, tag, path",
    [
        ("ViT-B-32:openai", "pretrained", "ViT-B-32", "openai", None),
        ("  ViT-L-14:laion2b_s32b_b82k ", "pretrained", "ViT-L-14", "laion2b_s32b_b82k", None),
        ("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "hf-hub", None, None, "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"),
        ("local-dir:/models/my clip", "local-dir", None, None, "/models/my clip"),
        ("ViT-B-32:/w/ckpt.safetensors", "file", "ViT-B-32", None, "/w/ckpt.safetensors"),
        ("ViT-B-32:weights.pt", "file", "ViT-B-32", None, "weights.pt"),
        ("ViT-B-32:model.BIN", "file", "ViT-B-32", None, "model.BIN"),
        ("ViT-B-32:./ckpt", "file", "ViT-B-32", None, "./ckpt"),
        ("ViT-B-32:~/ckpt", "file", "ViT-B-32", None, "~/ckpt"),
        ("ViT-B-32:C:\\w\\x.pth", "file", "ViT-B-32", None, "C:\\w\\x.pth"),
    ],
)
def test_parse_forms(raw, kind, arch, tag, path):
    spec = parse_model_spec(raw)
    assert (spec.kind, spec.arch, spec.tag, spec.path) == (kind, arch, tag, path)
    assert spec.raw == raw
    assert parse_model_spec(spec.canonical) == ModelSpec(spec.canonical, kind, arch, tag, path)


def test_existing_file_without_extension_is_a_path(tmp_path):
    weights = tmp_path / "ckpt"
    weights.write_bytes(b"x")
    with contextlib.chdir(tmp_path):
        spec = parse_model_spec("ViT-B-32:ckpt")
    assert (spec.kind, spec.path) == ("file", "ckpt")


@pytest.mark.parametrize(
    "raw, message",
    [
        ("", spec.MSG_EMPTY_SPEC.format(default="ViT-B-32:openai")),
        ("   ", spec.MSG_EMPTY_SPEC.format(default="ViT-B-32:openai")),
        ("ViT-B-32", spec.MSG_NO_COLON.format(raw="ViT-B-32", default="ViT-B-32:openai")),
        (":openai", spec.MSG_EMPTY_PART.format(raw=":openai", part="architecture before ':'")),
        ("ViT-B-32:", spec.MSG_EMPTY_PART.format(raw="ViT-B-32:", part="tag or path after ':'")),
        ("hf-hub:", spec.MSG_EMPTY_PART.format(raw="hf-hub:", part="Hub id after 'hf-hub:'")),
        ("local-dir:", spec.MSG_EMPTY_PART.format(raw="local-dir:", part="folder after 'local-dir:'")),
        ("hf-hub:noslash", spec.MSG_BAD_HUB_ID.format(raw="hf-hub:noslash", hub_id="noslash")),
        ("hf-hub:a/b/c", spec.MSG_BAD_HUB_ID.format(raw="hf-hub:a/b/c", hub_id="a/b/c")),
    ],
)
def test_parse_errors(raw, message):
    with pytest.raises(ModelError) as info:
        parse_model_spec(raw)
    assert str(info.value) == message
    assert info.value.exit_code == 1


_ARCH = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,24}", fullmatch=True).filter(
    lambda a: not a.startswith(("hf-hub", "local-dir")))
_TAG = st.from_regex(r"[a-z0-9][a-z0-9_]{0,30}", fullmatch=True)
_HUB = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,15}/[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
_KEY_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@settings(max_examples=150, deadline=None)
@given(arch=_ARCH, tag=_TAG, hub=_HUB)
def test_spec_round_trip_and_key(arch, tag, hub):
    # An empty working directory, so no generated tag happens to name an existing file.
    with tempfile.TemporaryDirectory() as empty, contextlib.chdir(empty):
        for raw, kind in ((f"{arch}:{tag}", "pretrained"), (f"hf-hub:{hub}", "hf-hub"),
                          (f"{arch}:/w/{tag}.safetensors", "file"), (f"local-dir:/d/{tag}", "local-dir")):
            spec = parse_model_spec(raw)
            assert spec.kind == kind
            again = parse_model_spec(spec.canonical)
            assert (again.kind, again.arch, again.tag, again.path) == (spec.kind, spec.arch, spec.tag, spec.path)
            assert again.key == spec.key
            assert _KEY_RE.match(spec.key) and "/" not in spec.key
        pretrained = parse_model_spec(f"{arch}:{tag}")
        assert (pretrained.arch, pretrained.tag) == (arch, tag)
        assert parse_model_spec(f"hf-hub:{hub}").path == hub


def test_key_tracks_weights_file(tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"a" * 10)
    spec = parse_model_spec(f"Arch:{weights}")
    first = spec.key
    assert first == spec.key and first.startswith("Arch__w__")
    weights.write_bytes(b"b" * 11)
    assert spec.key != first
    # Tags are case- and dash-insensitive in open_clip, and so is the key.
    assert parse_model_spec("ViT-B-32:OpenAI").key == parse_model_spec("ViT-B-32:openai").key
    assert parse_model_spec("ViT-B-32:openai").key != parse_model_spec("ViT-B-32-quickgelu:openai").key


# ---------------------------------------------------------------------------
# The tiny model through load_model


def test_tiny_encoder_embeddings(tiny_encoder):
    enc = tiny_encoder
    assert enc.embed_dim == TINY_CONFIG["embed_dim"] and enc.device == "cpu" and enc.dtype == "float32"
    imgs = enc.encode_images(_image_batch(5))
    assert imgs.shape == (5, 32) and imgs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(imgs, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(imgs, enc.encode_images(_image_batch(5)))
    texts = ["a photo of a nurse", "a photo of a CEO", "a photo of a person"]
    txt = enc.encode_text(texts, batch_size=2)
    assert txt.shape == (3, 32) and txt.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(txt, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(txt, enc.encode_text(texts, batch_size=256), atol=1e-6)
    assert not np.allclose(txt[0], txt[1])
    assert enc.encode_text([]).shape == (0, 32)
    with pytest.raises(TypeError):
        enc.encode_text("one string")


def test_weights_really_loaded_against_independent_oracle(tiny_model_files, tiny_encoder):
    """Rebuild the CLIP by hand from the safetensors file and compare features."""
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import load_file

    config, weights, _ = tiny_model_files
    ref = CLIP(**json.loads(Path(config).read_text()))
    ref.load_state_dict(load_file(str(weights)))
    ref.eval()
    batch = _image_batch(4, seed=3)
    with torch.no_grad():
        expected = ref.encode_image(batch).numpy()
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(tiny_encoder.encode_images(batch), expected, atol=1e-5)
    # A model with other random weights gives other features: the weights matter.
    other = load_model(f"{tiny_model_files[2]}:{write_tiny_weights(Path(weights).parent, config, seed=1)}",
                       model_config=str(config), device="cpu")
    assert not np.allclose(other.encode_images(batch), expected, atol=1e-3)


def test_pt_state_dict_matches_safetensors(tmp_path, tiny_model_files, tiny_encoder):
    config, _, arch = tiny_model_files
    pt = write_tiny_weights(tmp_path, config, seed=0, fmt="pt")
    enc = load_model(f"{arch}:{pt}", model_config=str(config), device="cpu")
    batch = _image_batch(3)
    np.testing.assert_allclose(enc.encode_images(batch), tiny_encoder.encode_images(batch), atol=1e-6)
    assert enc.spec.key != tiny_encoder.spec.key


def test_info_records_what_was_used(tiny_encoder, tiny_model_files):
    info = tiny_encoder.info()
    _, weights, arch = tiny_model_files
    assert info["kind"] == "file" and info["arch"] == arch and info["path"] == str(weights)
    assert info["weights_source"] == str(Path(weights).resolve())
    assert info["preprocess_source"] == "default"
    assert info["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert info["preprocess"]["size"] == [32, 32] and info["image_size"] == [32, 32]
    assert info["dtype"] == "float32" and info["embed_dim"] == 32
    json.dumps(info)  # serialisable for run.json


def test_preprocess_is_picklable_and_correct(tiny_encoder):
    """DataLoader workers (spawn) receive the transform by pickling our own object."""
    import pickle

    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    out = pickle.loads(pickle.dumps(tiny_encoder.preprocess))(img).numpy()
    mean = np.array(tiny_encoder.preprocess_cfg["mean"], dtype=np.float32)[:, None, None]
    std = np.array(tiny_encoder.preprocess_cfg["std"], dtype=np.float32)[:, None, None]
    expected = (pixels.transpose(2, 0, 1).astype(np.float32) / 255.0 - mean) / std
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_preprocess_choice(tiny_model_files):
    config, weights, arch = tiny_model_files
    spec = f"{arch}:{weights}"
    pair = load_model(spec, model_config=str(config), device="cpu", preprocess="ViT-L-14:laion2b_s32b_b82k")
    assert pair.info()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    assert pair.info()["preprocess_source"] == "ViT-L-14:laion2b_s32b_b82k"
    siglip = load_model(spec, model_config=str(config), device="cpu", preprocess="webli")
    assert siglip.info()["preprocess"]["resize_mode"] == "squash"
    assert siglip.info()["preprocess"]["size"] == [32, 32]  # size always follows the model
    with pytest.raises(ModelError, match=r"unknown preprocess 'opneai' \(did you mean 'openai'"):
        M.resolve_preprocess("opneai")
    with pytest.raises(ModelError, match="means different settings for different architectures"):
        M.resolve_preprocess("datacomp1b")  # CLIPA: ImageNet mean, bilinear; ViTamin: OpenAI's, bicubic
    assert M.resolve_preprocess("datacomp1b", arch="ViTamin-S")[1] == "ViTamin-S:datacomp1b"
    cfg, source = M.resolve_preprocess("openai")
    assert source == "openai" and cfg["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])


def test_model_config_registered_by_file_stem(tmp_path):
    import open_clip

    config = write_tiny_config(tmp_path, "MyProbe-Arch-7", embed_dim=16)
    weights = write_tiny_weights(tmp_path, config, seed=2)
    enc = load_model(f"MyProbe-Arch-7:{weights}", model_config=str(config), device="cpu")
    assert "MyProbe-Arch-7" in open_clip.list_models()
    assert enc.embed_dim == 16 and enc.encode_text(["x"]).shape == (1, 16)


def test_bad_model_configs(tmp_path):
    missing = tmp_path / "Nope.json"
    with pytest.raises(ModelError) as info:
        M.register_model_config(missing)
    assert str(info.value) == loading.MSG_CONFIG_MISSING.format(path=missing)
    bad = tmp_path / "Bad.json"
    bad.write_text(json.dumps({"embed_dim": 8}))
    with pytest.raises(ModelError, match=r"Bad.json is not an open_clip architecture JSON \(missing vision_cfg, text_cfg\)"):
        M.register_model_config(bad)


def test_local_dir(tmp_path, tiny_encoder):
    folder = write_tiny_local_dir(tmp_path / "tiny", seed=0,
                                  preprocess_cfg={"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    enc = load_model(f"local-dir:{folder}", device="cpu")
    assert enc.spec.kind == "local-dir" and enc.info()["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    batch = _image_batch(2)
    # Same seed as the session's tiny model: the same weights, the same features.
    np.testing.assert_allclose(enc.encode_images(batch), tiny_encoder.encode_images(batch), atol=1e-6)
    (folder / "open_clip_model.safetensors").unlink()
    with pytest.raises(ModelError) as info:
        load_model(f"local-dir:{folder}", device="cpu")
    assert str(info.value) == weights.MSG_LOCAL_DIR_NO_WEIGHTS.format(path=folder)
    with pytest.raises(ModelError, match="local-dir folder not found"):
        load_model(f"local-dir:{tmp_path / 'absent'}", device="cpu")


# ---------------------------------------------------------------------------
# Errors a user can act on


def test_weights_file_errors(tmp_path, tiny_model_files):
    config, _, arch = tiny_model_files
    missing = tmp_path / "nothing.safetensors"
    with pytest.raises(ModelError) as info:
        load_model(f"{arch}:{missing}", model_config=str(config), device="cpu")
    assert str(info.value) == weights.MSG_WEIGHTS_MISSING.format(path=missing, raw=f"{arch}:{missing}")
    odd = tmp_path / "w.npz"
    odd.write_bytes(b"x")
    with pytest.raises(ModelError, match=r"unsupported extension '\.npz'"):
        load_model(f"{arch}:{odd}", model_config=str(config), device="cpu")
    with pytest.raises(ModelError, match=r"unknown model architecture 'TinyCLIP-tset' \(did you mean 'TinyCLIP-test'"):
        load_model(f"TinyCLIP-tset:{missing}", model_config=str(config), device="cpu")


def test_mismatched_weights_named(tmp_path, tiny_model_files):
    config, _, arch = tiny_model_files
    other_cfg = write_tiny_config(tmp_path, "Wider", embed_dim=24)
    wrong = write_tiny_weights(tmp_path, other_cfg, seed=0)
    with pytest.raises(ModelError, match=rf"^could not load model {re.escape(arch)}:.*: the weights do not fit the "
                                         r"architecture: size mismatch for .* \(and \d+ more\)$"):
        load_model(f"{arch}:{wrong}", model_config=str(config), device="cpu")


def test_torchscript_archive_refused(tmp_path, tiny_model_files):
    import torch

    config, _, arch = tiny_model_files
    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(ModelError) as info:
        load_model(f"{arch}:{path}", model_config=str(config), device="cpu")
    assert str(info.value) == weights.MSG_TORCHSCRIPT.format(path=path, arch=arch)


def test_pickled_objects_refused(tmp_path, tiny_model_files):
    """A .pt holding more than tensors is not unpickled (torch.load weights_only=True)."""
    import torch
    from safetensors.torch import load_file

    config, weights, arch = tiny_model_files
    state = load_file(str(weights))
    state["extra"] = fractions.Fraction(1, 3)  # not on torch's weights_only allow-list
    path = tmp_path / "evil.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="holds pickled objects other than tensors, refused"):
        load_model(f"{arch}:{path}", model_config=str(config), device="cpu")


def test_unknown_tag_and_arch_suggest_close_matches():
    with pytest.raises(ModelError) as info:
        M.check_pretrained("ViT-B-32:openaii")
    assert str(info.value).startswith("unknown pretrained tag 'openaii' for ViT-B-32 (did you mean 'openai'?)")
    assert "laion2b_s34b_b79k" in str(info.value)  # the valid tags are listed
    with pytest.raises(ModelError, match=r"unknown model architecture 'ViT-B-3' \(did you mean 'ViT-B-32'"):
        load_model("ViT-B-3:openai", device="cpu")
    with pytest.raises(ModelError, match="unknown pretrained tag 'laion2b_s34b_b79' for ViT-B-32"):
        load_model("ViT-B-32:laion2b_s34b_b79", device="cpu")
    assert M.check_pretrained("ViT-B-32:OpenAI")["hf_hub"].startswith("timm/")
    with pytest.raises(ModelError, match="is not an ARCH:TAG pair"):
        M.check_pretrained("hf-hub:org/name")


def test_offline_uncached_pretrained_fails_at_once(tmp_path):
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32:openai", device="cpu", offline=True, cache_dir=str(tmp_path))
    msg = str(info.value)
    assert msg == weights.MSG_NOT_CACHED.format(spec="ViT-B-32:openai", arch="ViT-B-32")
    assert "clipprobe models --download ViT-B-32:openai" in msg and "ARCH:/path/to/weights.safetensors" in msg
    with pytest.raises(ModelError, match=r"model hf-hub:someone/absent is not in the local cache"):
        load_model("hf-hub:someone/absent", device="cpu", offline=True, cache_dir=str(tmp_path))


def test_offline_cached_hub_model_loads(tmp_path, tiny_encoder):
    """hf-hub: with config + weights in the local HF cache loads with the network off."""
    folder = write_tiny_local_dir(tmp_path / "src", seed=0)
    cache = tmp_path / "hf"
    _fake_hub_cache(cache, "test-org/tiny-clip", {
        "open_clip_config.json": folder / "open_clip_config.json",
        "open_clip_model.safetensors": folder / "open_clip_model.safetensors",
    })
    enc = load_model("hf-hub:test-org/tiny-clip", device="cpu", offline=True, cache_dir=str(cache))
    batch = _image_batch(2)
    np.testing.assert_allclose(enc.encode_images(batch), tiny_encoder.encode_images(batch), atol=1e-6)
    assert enc.info()["kind"] == "hf-hub" and enc.spec.key == "hf-hub__test-org__tiny-clip"


def test_cache_detection_for_pretrained_tags(tmp_path):
    cfg = M.check_pretrained("ViT-B-32:openai")
    assert M.cached_pretrained_file(cfg, str(tmp_path)) is None
    _fake_hub_cache(tmp_path, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"x"})
    found = M.cached_pretrained_file(cfg, str(tmp_path))
    assert found is not None and found.endswith("open_clip_model.safetensors")
    rows = {r["spec"]: r for r in M.list_known_models(cache_dir=str(tmp_path))}
    assert rows["ViT-B-32:openai"]["cached"] and rows["ViT-B-32-quickgelu:openai"]["cached"]
    assert not rows["ViT-B-32:laion2b_s34b_b79k"]["cached"]


@pytest.mark.slow
def test_offline_cached_pretrained_goes_to_the_cached_file(tmp_path):
    """Offline with the tag's file cached: no 'not cached' error; open_clip reads that very file."""
    _fake_hub_cache(tmp_path, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"garbage"})
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32:openai", device="cpu", offline=True, cache_dir=str(tmp_path))
    # safetensors rejected the garbage header: the cached file was found and opened, offline.
    assert re.match(r"^could not load model ViT-B-32:openai: .*header", str(info.value)), str(info.value)


def test_unreachable_hub_fails_at_once(tmp_path, monkeypatch):
    """Online but no route to the Hub: one quick TCP check, not a minute of retries."""
    import huggingface_hub.constants as constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32:openai", device="cpu", cache_dir=str(tmp_path))
    msg = str(info.value)
    assert msg.startswith(
        "model ViT-B-32:openai is not in the local cache and http://127.0.0.1:9 cannot be reached (127.0.0.1:9: ")
    assert "ARCH:/path/to/weights.safetensors" in msg
    with pytest.raises(ModelError, match=r"^model hf-hub:someone/absent is not in the local cache and http://127"):
        load_model("hf-hub:someone/absent", device="cpu", cache_dir=str(tmp_path))


def test_device_and_precision():
    import torch

    assert M.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert M.resolve_device("CPU") == "cpu"
    with pytest.raises(ModelError, match="unknown device 'tpu'"):
        M.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            M.resolve_device("cuda")
    assert M.resolve_precision(None, "cuda") == "fp16" and M.resolve_precision(None, "cpu") == "fp32"
    assert M.resolve_precision("BF16", "cuda:0") == "bf16"
    with pytest.raises(ModelError, match=r"unknown precision 'fp61' \(did you mean 'fp16'"):
        M.resolve_precision("fp61", "cpu")


@pytest.mark.parametrize(
    "tag, data",
    [
        ("openai", "OpenAI WIT (400M, private)"),
        ("laion400m_e32", "LAION-400M"),
        ("laion2b_s34b_b79k", "LAION-2B-en"),
        ("laion5b_s13b_b90k", "LAION-5B (multilingual)"),
        ("frozen_laion5b_s13b_b90k", "LAION-5B (multilingual)"),
        ("datacomp_xl_s13b_b90k", "DataComp-1B"),
        ("commonpool_m_clip_s128m_b4k", "CommonPool-M (clip filter)"),
        ("commonpool_xl_s13b_b90k", "CommonPool-XL (unfiltered)"),
        ("metaclip_fullcc", "MetaCLIP 2.5B"),
        ("dfn5b", "DFN-5B"),
        ("webli", "WebLI"),
        ("yfcc15m", "YFCC-15M"),
        ("cc12m", "CC12M"),
        ("Laion2B-S34B-B79K", "LAION-2B-en"),
        ("something_new", "unknown"),
    ],
)
def test_training_data(tag, data):
    assert M.training_data(tag) == data


def test_list_known_models_covers_open_clip():
    import open_clip

    rows = M.list_known_models()
    assert [(r["arch"], r["tag"]) for r in rows] == open_clip.list_pretrained()
    assert all(r["spec"] == f"{r['arch']}:{r['tag']}" for r in rows)
    unknown = {r["tag"] for r in rows if r["training_data"] == "unknown"}
    assert len(unknown) <= 4, unknown  # nearly every tag names its data


def test_cli_models_json_and_table(tmp_path):
    from click.testing import CliRunner

    from clipprobe.cli import cli

    _fake_hub_cache(tmp_path, "timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"x"})
    runner = CliRunner()
    result = runner.invoke(cli, ["models", "--format", "json", "--filter", "vit-b-32:", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    specs = {r["spec"] for r in rows}
    assert "ViT-B-32:openai" in specs and all("vit-b-32:" in s.lower() for s in specs)
    assert {r["spec"] for r in rows if r["cached"]} == {"ViT-B-32:openai"}
    cached = runner.invoke(cli, ["models", "--cached", "--cache-dir", str(tmp_path)])
    assert cached.exit_code == 0, cached.output
    lines = cached.output.strip().splitlines()
    assert lines[0].split() == ["model", "family", "params", "dataset", "size", "seen", "ImageNet", "VTAB+",
                                "cached", "needs"]
    # the shipped demo model first (installed with clipprobe), then the cached pairs
    assert [ln.split()[0] for ln in lines[1:-2]] == ["demo", "ViT-B-32:openai", "ViT-B-32-quickgelu:openai"]
    assert lines[2].split()[1:4] == ["ViT", "151.3M", "OpenAI"] and lines[2].split()[-1] == "yes"
    assert lines[-1] == "3 of 3 cached"
    bad = runner.invoke(cli, ["models", "--format", "yaml"])
    assert bad.exit_code == 2


def test_cli_models_csv_has_the_metadata_and_user_specs(tmp_path):
    """`clipprobe models --format csv`: one row per pair plus the user's specs, every zoo column, readable back
    as a model table with the same values."""
    import open_clip
    import pandas as pd
    from click.testing import CliRunner

    from clipprobe.cli import cli
    from clipprobe.models import zoo

    user = "ViT-B-32:" + str(tmp_path / "mine.safetensors")
    result = CliRunner().invoke(cli, ["models", "--format", "csv", "--model", user, "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = tmp_path / "zoo.csv"
    path.write_text(result.output, encoding="utf-8")
    df = pd.read_csv(path)
    assert list(df["spec"]) == ["demo"] + [f"{a}:{t}" for a, t in open_clip.list_pretrained()] + [user]
    assert set(zoo.ZOO_COLUMNS) <= set(df.columns) and {"training_data", "cached", "needs"} <= set(df.columns)
    row = df.set_index("spec").loc["ViT-B-32:laion2b_s34b_b79k"]
    assert row["samples_seen"] == pytest.approx(34e9) and row["dataset_family"] == "laion" and row["dataset"] == "LAION-2B-en"
    assert row["arch_family"] == "ViT" and row["imagenet1k"] > 0.6
    assert df.set_index("spec").loc[user, "performance_note"] == zoo.NO_PERFORMANCE
    back = zoo.zoo_table(list(df["spec"][:3]), user=zoo.read_user_table(path))
    assert list(back["samples_seen"]) == pytest.approx(list(df["samples_seen"][:3]), nan_ok=True)


# ---------------------------------------------------------------------------
# Marked tests (excluded by default; see setup.cfg addopts)


@pytest.mark.gpu
def test_tiny_model_on_cuda_fp16_matches_cpu(tiny_model_files, tiny_encoder):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    config, weights, arch = tiny_model_files
    enc = load_model(f"{arch}:{weights}", model_config=str(config))  # device auto -> cuda, fp16
    assert enc.device == "cuda" and enc.dtype == "float16"
    batch = _image_batch(8)
    gpu = enc.encode_images(batch)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(gpu, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(gpu, tiny_encoder.encode_images(batch), atol=2e-2)
    texts = ["a photo of a nurse", "a photo of a doctor"]
    np.testing.assert_allclose(enc.encode_text(texts), tiny_encoder.encode_text(texts), atol=2e-2)


@pytest.mark.weights
def test_openai_weights_get_quickgelu():
    """ViT-B-32:openai must embed exactly as ViT-B-32-quickgelu:openai (the weights were trained with QuickGELU)."""
    cfg = M.check_pretrained("ViT-B-32:openai")
    if M.cached_pretrained_file(cfg) is None:
        pytest.skip("ViT-B-32:openai weights are not in the local Hugging Face cache")
    plain = load_model("ViT-B-32:openai", device="cpu")
    quick = load_model("ViT-B-32-quickgelu:openai", device="cpu")
    assert plain.info()["quick_gelu_forced"] and not quick.info()["quick_gelu_forced"]
    batch = _image_batch(2, size=224)
    np.testing.assert_allclose(plain.encode_images(batch), quick.encode_images(batch), atol=1e-5)
    txt = plain.encode_text(["a photo of a cat", "a photo of a dog", "a diagram"])
    assert txt.shape == (3, 512) and txt[0] @ txt[1] > txt[0] @ txt[2]


def test_models_download_offline_says_what_is_missing():
    from click.testing import CliRunner

    from clipprobe.cli import cli

    r = CliRunner().invoke(cli, ["--offline", "models", "--download", "ViT-B-32:openai"])
    assert r.exit_code == 1, r.output
    assert "ViT-B-32:openai is not in the local cache" in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------
# Models whose text tower needs transformers (issue 11.3)


def _without_transformers(monkeypatch):

    monkeypatch.setitem(sys.modules, "transformers", None)   # what an installation without it gives


def _hf_tokenizer_model(tmp_path, arch="TinyHF-test"):
    config = write_tiny_config(tmp_path, arch, text_cfg={"hf_tokenizer_name": "bert-base-uncased"})
    weights = write_tiny_weights(tmp_path, write_tiny_config(tmp_path / "plain", arch))
    return config, weights, arch


def test_hf_tokenizer_model_fails_before_any_weights_are_read(tmp_path, monkeypatch):
    _without_transformers(monkeypatch)
    monkeypatch.setattr(loading, "_create", lambda *a, **k: pytest.fail("weights loaded before the tokenizer check"))
    config, weights, arch = _hf_tokenizer_model(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")
    assert str(info.value) == M.catalog.MSG_NEEDS_TEXT_PACKAGE.format(
        spec=f"{arch}:{weights}", package="transformers", why="not installed")
    assert "pip install 'clipprobe[hf-text]'" in str(info.value) and "clipprobe doctor" in str(info.value)


def test_siglip_tag_says_what_is_missing_before_looking_for_weights(tmp_path, monkeypatch):
    _without_transformers(monkeypatch)
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-16-SigLIP:webli", device="cpu", offline=True, cache_dir=str(tmp_path))
    assert str(info.value) == M.catalog.MSG_NEEDS_TEXT_PACKAGE.format(
        spec="ViT-B-16-SigLIP:webli", package="transformers", why="not installed")
    # An ordinary model is not concerned.
    with pytest.raises(ModelError, match="is not in the local cache"):
        load_model("ViT-B-32:openai", device="cpu", offline=True, cache_dir=str(tmp_path))


def test_tokenizer_is_made_before_the_weights(tmp_path, monkeypatch):
    """Where the quick check cannot see it (the package is importable by name but its import fails, or the
    config comes from the Hub), the tokenizer still comes first and names the package."""
    _without_transformers(monkeypatch)
    monkeypatch.setattr(loading, "missing_text_packages", lambda packages: [])
    monkeypatch.setattr(loading, "_create", lambda *a, **k: pytest.fail("weights loaded before the tokenizer"))
    config, weights, arch = _hf_tokenizer_model(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")
    assert str(info.value).startswith(f"model {arch}:{weights} needs the Python package 'transformers' for its "
                                      "text tokenizer (")


@pytest.mark.parametrize("text, package", [
    ("T5Tokenizer requires the SentencePiece library but it was not found in your environment.", "sentencepiece"),
    ("requires the protobuf library", "protobuf"),
    ("something else", "transformers"),
])
def test_missing_package_named_from_the_import_error(text, package):
    assert loading._missing_package(ImportError(text)) == package
    assert loading._missing_package(ModuleNotFoundError("x", name="tiktoken.core")) == "tiktoken"


def test_models_list_marks_the_models_that_need_transformers(monkeypatch):
    import open_clip
    from click.testing import CliRunner

    from clipprobe.cli import cli

    _without_transformers(monkeypatch)
    rows = {r["spec"]: r for r in M.list_known_models()}
    needing = {s for s, r in rows.items() if r["needs"]}
    # Every pair whose architecture config names a Hugging Face tokenizer or text model (47 in open_clip 3.3).
    expected = {f"{a}:{t}" for a, t in open_clip.list_pretrained()
                if (open_clip.get_model_config(a)["text_cfg"].get("hf_tokenizer_name")
                    or open_clip.get_model_config(a)["text_cfg"].get("hf_model_name"))}
    assert needing == expected and len(needing) >= 40
    assert rows["ViT-B-16-SigLIP:webli"]["needs"] == ["transformers"]
    assert rows["ViT-B-16-SigLIP:webli"]["extra"] == "hf-text"
    assert rows["ViT-B-16-SigLIP:webli"]["missing"] == ["transformers"]
    assert rows["ViT-B-32:openai"]["needs"] == [] and rows["ViT-B-32:openai"]["extra"] == ""
    out = CliRunner().invoke(cli, ["models", "--filter", "ViT-B-16-SigLIP:"])
    assert out.exit_code == 0, out.output
    lines = out.output.strip().splitlines()
    assert lines[1].split()[0] == "ViT-B-16-SigLIP:webli" and lines[1].endswith("transformers (missing)")
    assert lines[-1] == (f"{len(lines) - 4} models need transformers for their text tokenizer "
                         "(not installed here: pip install 'clipprobe[hf-text]')")


# ---------------------------------------------------------------------------
# QuickGELU for weights files (issue 11.7)


def _activations(encoder):
    import torch
    from open_clip.transformer import QuickGELU

    return {type(m) for m in encoder.model.modules() if isinstance(m, (QuickGELU, torch.nn.GELU))}


def test_quick_gelu_option_builds_the_file_with_quickgelu(tiny_model_files, tiny_encoder):
    from open_clip.transformer import QuickGELU

    from clipprobe.embeddings.cache import model_cache_key

    config, weights, arch = tiny_model_files
    quick = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", quick_gelu=True)
    assert _activations(quick) == {QuickGELU} and QuickGELU not in _activations(tiny_encoder)
    assert quick.info()["quick_gelu_forced"] and not tiny_encoder.info()["quick_gelu_forced"]
    batch = _image_batch(3)
    assert not np.allclose(quick.encode_images(batch), tiny_encoder.encode_images(batch), atol=1e-4)
    # Other vectors, so another cache folder.
    assert model_cache_key(quick) != model_cache_key(tiny_encoder)


def test_quick_gelu_option_is_for_files_and_folders_only():
    with pytest.raises(ModelError) as info:
        load_model("ViT-B-32:openai", device="cpu", quick_gelu=True, offline=True)
    assert str(info.value) == loading.MSG_QUICK_GELU_PRETRAINED.format(spec="ViT-B-32:openai")


def test_quickgelu_preprocess_tag_without_the_option_warns(tiny_model_files, caplog):
    config, weights, arch = tiny_model_files
    with caplog.at_level("WARNING", logger="clipprobe"):
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", preprocess="openai")
    hints = [r.getMessage() for r in caplog.records if "QuickGELU" in r.getMessage()]
    assert len(hints) == 1 and hints[0].startswith(
        "preprocess 'openai' is that of weights trained with QuickGELU (") and "quick_gelu=True" in hints[0]
    assert f"{arch}-quickgelu:PATH" in hints[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="clipprobe"):
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", preprocess="openai", quick_gelu=True)
        load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", preprocess="laion2b_s34b_b79k")
    assert not [r for r in caplog.records if "QuickGELU" in r.getMessage()]


def test_quickgelu_architecture_form_matches_the_option(tmp_path, tiny_model_files):
    """The documented alternative: ARCH-quickgelu:PATH (an architecture config with quick_gelu: true)."""
    config, weights, arch = tiny_model_files
    quick_config = write_tiny_config(tmp_path, f"{arch}-quickgelu", quick_gelu=True)
    by_arch = load_model(f"{arch}-quickgelu:{weights}", model_config=str(quick_config), device="cpu")
    by_option = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", quick_gelu=True)
    batch = _image_batch(2)
    np.testing.assert_allclose(by_arch.encode_images(batch), by_option.encode_images(batch), atol=1e-6)


# ---------------------------------------------------------------------------
# `models --download` names the file it downloaded (issue 11.12)


def test_models_download_prints_the_downloaded_file(tmp_path, monkeypatch, tiny_model_files):
    """The download itself needs the network; what is checked is what happens around it: the spec is
    not cached before, open_clip puts the file into the Hub cache, and the command names that file."""
    import open_clip
    from click.testing import CliRunner

    from clipprobe.cli import cli

    config, weights, arch = tiny_model_files
    open_clip.add_model_config(config)
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, arch,
                        {"tiny": {"hf_hub": "test-org/tiny-clip/", "quick_gelu": False}})
    monkeypatch.setattr(loading, "check_hub_reachable", lambda spec: None)
    real_create = loading._create

    def downloading_create(open_clip_, spec_, name, pretrained, *args):
        _fake_hub_cache(tmp_path, "test-org/tiny-clip", {"open_clip_model.safetensors": weights})
        downloaded = M.cached_pretrained_file(M.check_pretrained(f"{arch}:tiny"), str(tmp_path))
        return real_create(open_clip_, spec_, name, downloaded, *args)

    monkeypatch.setattr(loading, "_create", downloading_create)
    monkeypatch.setattr("clipprobe.hub.env_offline", lambda: False)
    result = CliRunner().invoke(cli, ["models", "--download", f"{arch}:tiny", "--cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    path = M.cached_pretrained_file(M.check_pretrained(f"{arch}:tiny"), str(tmp_path))
    assert path is not None and result.output.strip() == f"{arch}:tiny: weights at {path}"
    assert "download:" not in result.output


@pytest.mark.skipif(__import__("importlib").util.find_spec("transformers") is None,
                    reason="transformers is not installed (the hf-text extra)")
def test_hf_tokenizer_model_loads_with_the_hf_text_extra(tmp_path):
    """With transformers installed, a text tower that names a Hugging Face tokenizer loads and embeds
    (a tiny WordPiece vocabulary saved locally stands in for a Hub tokenizer)."""
    from tokenizers import Tokenizer, models as tok_models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "nurse",
                                         "doctor", "##s"])}
    tok = Tokenizer(tok_models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(tmp_path / "tok"))
    config = write_tiny_config(tmp_path, "TinyHFTok-test", text_cfg={"hf_tokenizer_name": str(tmp_path / "tok")})
    weights = write_tiny_weights(tmp_path, write_tiny_config(tmp_path / "plain", "TinyHFTok-test"))
    enc = load_model(f"TinyHFTok-test:{weights}", model_config=str(config), device="cpu", offline=True)
    assert type(enc.tokenizer).__name__ == "HFTokenizer"
    assert enc.tokenizer(["a photo of nurses"])[0][:5].tolist() == [5, 6, 7, 8, 10]
    assert enc.encode_text(["a photo of a nurse", "a photo of doctors"]).shape == (2, 32)


# ---------------------------------------------------------------------------
# What the embedding cache's model key stands for: the model as loaded (issue 24.4)


def test_fingerprint_is_the_weights_in_memory_the_config_and_the_structure(tmp_path, tiny_model_files):
    import hashlib

    from safetensors.torch import load_file

    config, weights, arch = tiny_model_files
    enc = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")
    fp = enc.fingerprint()
    # An independent digest of the same tensors, from the file.
    state = load_file(str(weights))
    h = hashlib.sha256()
    for name in sorted(enc.model.state_dict()):
        t = state[name] if name in state else enc.model.state_dict()[name]
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.contiguous().numpy().tobytes())
    assert fp["weights_sha256"] == h.hexdigest()
    # The same weights in another file format: the same digest (the content, not the file).
    pt = write_tiny_weights(tmp_path / "pt", config, seed=0, fmt="pt")
    same = load_model(f"{arch}:{pt}", model_config=str(config), device="cpu")
    assert same.fingerprint() == fp and same.spec.key != enc.spec.key
    # Other weights, QuickGELU, another precision: another digest.
    other = load_model(f"{arch}:{write_tiny_weights(tmp_path / 'o', config, seed=5)}", model_config=str(config),
                       device="cpu")
    assert other.fingerprint()["weights_sha256"] != fp["weights_sha256"]
    assert other.fingerprint()["config_sha256"] == fp["config_sha256"]
    quick = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", quick_gelu=True)
    assert quick.fingerprint()["config_sha256"] != fp["config_sha256"]
    assert quick.fingerprint()["structure_sha256"] != fp["structure_sha256"]
    bf16 = load_model(f"{arch}:{weights}", model_config=str(config), device="cpu", precision="bf16")
    assert bf16.fingerprint()["weights_sha256"] != fp["weights_sha256"]


# The shipped demo model, and the catalog checked before torch is imported


def test_demo_names_the_shipped_world_model():
    from clipprobe.world import WORLD_ARCH
    from clipprobe.world.train import config_path, weights_path

    for raw in ("demo", " demo ", "DEMO"):
        parsed = parse_model_spec(raw)
        assert (parsed.kind, parsed.arch, parsed.shipped, parsed.canonical) == ("file", WORLD_ARCH, "demo", "demo")
        assert Path(parsed.path) == weights_path() and parse_model_spec(parsed.canonical) == parse_model_spec("demo")
    shipped = spec.shipped_model("demo")
    assert shipped.weights_path == weights_path() and shipped.config_path == config_path()
    with pytest.raises(ModelError) as info:
        parse_model_spec("dem")
    assert str(info.value) == spec.MSG_NO_COLON.format(raw="dem", default="ViT-B-32:openai")
    assert "not a shipped model (demo)" in str(info.value)


def test_demo_loads_without_a_model_config_and_equals_the_file_spec():
    from clipprobe.world.train import model_spec

    enc = load_model("demo", device="cpu", offline=True)
    assert enc.info()["shipped"] == "demo" and enc.info()["canonical"] == "demo" and enc.embed_dim == 48
    file_spec, config = model_spec()
    same = load_model(file_spec, model_config=config, device="cpu", offline=True)
    batch = _image_batch(2, size=enc.image_size[0])
    np.testing.assert_array_equal(enc.encode_images(batch), same.encode_images(batch))
    np.testing.assert_array_equal(enc.encode_text(["a photo of a doctor"]), same.encode_text(["a photo of a doctor"]))


def test_shipped_catalog_equals_the_installed_open_clip():
    """The catalog that lets a bad --model fail before open_clip is imported is open_clip's own lists (a new
    open_clip release: rerun `python -m clipprobe.models.catalog --write`)."""
    import open_clip

    from clipprobe.models import catalog

    shipped = catalog.shipped_catalog()
    assert shipped["open_clip_version"] == open_clip.__version__
    assert shipped == json.loads(json.dumps(catalog.build_catalog()))
    assert [(p["arch"], p["tag"]) for p in shipped["pretrained"]] == open_clip.list_pretrained()
    assert set(shipped["architectures"]) <= set(open_clip.list_models())
    # everything the catalog check reads gives what open_clip itself says
    lists = catalog._Lists(catalog=shipped)
    for arch, tag in open_clip.list_pretrained()[::7]:
        live = open_clip.get_pretrained_cfg(arch, tag)
        assert lists.pretrained_cfg(arch, tag)["hf_hub"] == live["hf_hub"]
        assert lists.tags(arch) == open_clip.list_pretrained_tags_by_model(arch)


@pytest.mark.parametrize("raw", ["ViT-B-32:openaii", "ViT-B-3:openai", "ViT-Q-99:/x/w.safetensors",
                                 "clipprobe-world-tiny-w50:openai", "TinyCLIP-tset:random"])
def test_catalog_check_gives_the_message_of_the_live_check(raw, monkeypatch, tiny_encoder):
    """Without open_clip imported, the shipped catalog refuses what load_model refuses, in the same words."""
    from clipprobe.models import catalog

    with pytest.raises(ModelError) as live:
        load_model(raw, device="cpu")
    monkeypatch.delitem(sys.modules, "open_clip")   # as in a fresh process: only the shipped lists
    with pytest.raises(ModelError) as fast:
        catalog.check_model_name(raw)
    if raw.startswith("TinyCLIP"):   # registered in this process: the shipped lists cannot know it
        assert str(fast.value).startswith("unknown model architecture 'TinyCLIP-tset'")
    else:
        assert str(fast.value) == str(live.value)


def test_catalog_check_passes_good_specs_and_steps_aside_for_another_open_clip(tmp_path, monkeypatch):
    from clipprobe.models import catalog

    monkeypatch.delitem(sys.modules, "open_clip", raising=False)
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    config = tmp_path / "MyArch.json"
    config.write_text("{}")
    for raw, model_config in (("ViT-B-32:openai", None), ("ViT-B-32:OpenAI", None), ("demo", None),
                              (f"ViT-B-32:{weights}", None), (f"MyArch:{weights}", config), ("hf-hub:org/name", None)):
        assert catalog.check_model_name(raw, model_config=model_config).raw == raw
    with pytest.raises(ModelError, match="model config file not found"):
        catalog.check_model_name(f"MyArch:{weights}", model_config=tmp_path / "Missing.json")
    with pytest.raises(ModelError, match="weights file not found"):
        catalog.check_model_name(f"ViT-B-32:{tmp_path / 'none.safetensors'}")
    monkeypatch.setattr(catalog, "_installed_open_clip_version", lambda: "99.0")
    assert catalog.known_lists() is None
    assert catalog.check_model_name("ViT-B-32:not-a-tag-here").tag == "not-a-tag-here"   # left to open_clip


def test_a_world_model_weights_file_needs_no_model_config(monkeypatch):
    import open_clip
    from open_clip import factory

    from clipprobe.world import WORLD_ARCH
    from clipprobe.world.train import weights_path

    monkeypatch.delitem(factory._MODEL_CONFIGS, WORLD_ARCH, raising=False)   # as in a fresh process
    assert WORLD_ARCH not in open_clip.list_models()
    enc = load_model(f"{WORLD_ARCH}:{weights_path()}", device="cpu", offline=True)
    assert enc.embed_dim == 48 and enc.info()["shipped"] is None
