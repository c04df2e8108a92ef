"""Access to the Hugging Face Hub (models through open_clip, datasets): offline mode and quick timeouts.

Offline mode has one owner, this module, and two ways in:

* the command line sets it once for its whole process (:func:`set_process_offline`, called by
  ``clipprobe --offline`` and by every command's ``--offline``) before anything imports
  huggingface_hub;
* a library call with ``offline=True`` (``load_model``, ``load_dataset``) runs inside
  :func:`hub_session`, which turns offline mode on for that call only and restores the environment
  and the live flags of huggingface_hub and datasets afterwards: a notebook that loads one model
  offline is not left offline.

huggingface_hub and datasets read their environment variables once, at import, into module
constants that they consult at call time (``huggingface_hub.constants.HF_HUB_OFFLINE``,
``datasets.config.HF_HUB_OFFLINE``); both the variables and those constants are set and restored.
``HF_HUB_OFFLINE=1`` in the environment always means offline.

Standard library only: importing this never imports huggingface_hub.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
# huggingface_hub waits 10 s for a metadata answer by default; a machine without network should fail fast.
QUICK_TIMEOUTS = {"HF_HUB_ETAG_TIMEOUT": "5", "HF_HUB_DISABLE_TELEMETRY": "1"}
_TRUE = {"1", "ON", "YES", "TRUE"}


def _true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _TRUE


def env_offline() -> bool:
    """Whether the environment asks for offline Hub access (huggingface_hub's own rule:
    ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` true)."""
    return _true("HF_HUB_OFFLINE") or _true("TRANSFORMERS_OFFLINE")


def _env_datasets_offline() -> bool:
    # datasets' rule: HF_DATASETS_OFFLINE when it is set, else the Hub's.
    value = os.environ.get("HF_DATASETS_OFFLINE")
    return env_offline() if value is None else value.strip().upper() in _TRUE


def _sync_live_flags(offline: bool | None = None) -> None:
    """Set the flags of already imported Hub libraries to ``offline`` (None: to what the environment says)."""
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = env_offline() if offline is None else offline
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None:
        ds_offline = _env_datasets_offline() if offline is None else offline
        ds_config.HF_HUB_OFFLINE = ds_offline
        ds_config.HF_DATASETS_OFFLINE = ds_offline


def set_process_offline(offline: bool) -> None:
    """Turn offline mode on for the rest of the process (the command line's ``--offline``).

    Only the CLI calls this; library functions take ``offline=`` and use :func:`hub_session`.
    ``offline=False`` changes nothing (an ``HF_HUB_OFFLINE=1`` in the environment stays in force).
    """
    if not offline:
        return
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    _sync_live_flags(True)


@contextlib.contextmanager
def hub_session(offline: bool | None = None) -> Iterator[bool]:
    """Run a block with offline mode (when asked or set in the environment) and quick Hub timeouts.

    Yields whether the block runs offline. On exit the environment variables and the live flags of
    huggingface_hub / datasets are what they were before (also for a library first imported inside
    the block).
    """
    was_offline = env_offline()
    offline = bool(offline) or was_offline
    changed = {name: os.environ.get(name) for name in (*OFFLINE_VARIABLES, *QUICK_TIMEOUTS)}
    try:
        for name, value in QUICK_TIMEOUTS.items():
            os.environ.setdefault(name, value)
        if offline and not was_offline:
            for name in OFFLINE_VARIABLES:
                os.environ[name] = "1"
        _sync_live_flags(True if offline else None)
        yield offline
    finally:
        for name, value in changed.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        _sync_live_flags()
