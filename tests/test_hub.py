"""Offline mode has one owner (clipprobe.hub): the CLI sets it for its process, a library call only for itself."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from clipprobe import hub
from clipprobe.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


def _clean_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_OFFLINE"))}
    env.update(PYTHONPATH=str(REPO), HF_HOME=str(tmp_path))
    return env


def test_process_offline_applies_before_import(tmp_path):
    code = (
        "import sys\n"
        "from clipprobe.hub import set_process_offline\n"
        "assert 'huggingface_hub' not in sys.modules\n"
        "set_process_offline(True)\n"
        "import huggingface_hub.constants as c\n"
        "print(c.HF_HUB_OFFLINE)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(tmp_path),
                         check=True)
    assert out.stdout.split() == ["True"]


def test_session_restores_a_library_first_imported_inside_it(tmp_path):
    code = (
        "import os, sys\n"
        "from clipprobe.hub import hub_session\n"
        "with hub_session(True) as off:\n"
        "    import huggingface_hub.constants as c\n"
        "    inside = (off, c.HF_HUB_OFFLINE, os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_HUB_ETAG_TIMEOUT'))\n"
        "print(*inside, c.HF_HUB_OFFLINE, os.environ.get('HF_HUB_OFFLINE'), os.environ.get('HF_HUB_ETAG_TIMEOUT'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_clean_env(tmp_path),
                         check=True)
    assert out.stdout.split() == ["True", "True", "1", "5", "False", "None", "None"]


def test_offline_library_call_is_not_sticky(tmp_path, monkeypatch):
    """load_model(offline=True) fails offline, and the process is online again afterwards."""
    import huggingface_hub.constants as constants

    for var in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    from clipprobe.models import load_model

    with pytest.raises(ModelError, match="offline mode is on"):
        load_model("ViT-B-32:openai", device="cpu", offline=True, cache_dir=str(tmp_path))
    assert constants.HF_HUB_OFFLINE is False
    assert not any(var in os.environ for var in hub.OFFLINE_VARIABLES)


def test_environment_offline_wins(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with hub.hub_session(False) as off:
        assert off is True
    assert os.environ["HF_HUB_OFFLINE"] == "1"
