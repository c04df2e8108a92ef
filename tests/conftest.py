"""Shared fixtures: a tiny real open_clip model, and no network for any test.

HF_HUB_OFFLINE is set here, before any test module imports open_clip or
huggingface_hub, so a test that would otherwise reach the Hub fails at once.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(config_json_path, safetensors_weights_path, arch_name) of a tiny random CLIP.

    Load it as ``load_model(f"{arch}:{weights}", model_config=config, device="cpu")``.
    """
    from tinyclip import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tinyclip"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_files):
    """The tiny model loaded on CPU (fp32) through the same path as real weights."""
    from clipprobe.models import load_model

    config, weights, arch = tiny_model_files
    return load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")
