"""What every run records about itself: one run-record schema for every command that writes run.json.

A run record is a JSON object with these keys, in this order, followed by the command's own results:

``record_version``
    the version of this schema (:data:`RECORD_VERSION`).
``command``
    the command that wrote it, e.g. ``"report"``, ``"captions count"``, ``"eat"``.
``format_version``
    the version of the command's output folder format (``None`` where the command has none); readers
    refuse folders of another version.
``clipprobe_version``, ``started`` (local ISO time), ``versions`` (Python, platform, packages)
``config``
    the settings the command ran with (a JSON-friendly dict of its config dataclass).
``model``, ``dataset``
    what :meth:`clipprobe.models.Encoder.info` and the face dataset's summary say (``None`` when unused).
``timings_s``
    wall-clock seconds per stage.

:func:`run_record` builds one; :func:`clipprobe._io.write_json` writes it atomically.
"""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from importlib import metadata
from typing import Any, Iterator, Mapping

from clipprobe import __version__

RECORD_VERSION = 1
RECORD_KEYS = ("record_version", "command", "format_version", "clipprobe_version", "started", "versions",
               "config", "model", "dataset", "timings_s")

_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "faiss-cpu", "faiss-gpu-cu12", "numpy", "scipy", "statsmodels",
    "pandas", "pyarrow", "pillow", "hyperscan", "numba", "pyspark", "datasets", "transformers", "matplotlib",
)


def package_versions() -> dict[str, str]:
    """Versions of clipprobe and of the installed packages it may use."""
    out = {"clipprobe": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


def run_record(command: str, *, config: Mapping[str, Any] | None = None, format_version: int | None = None,
               model: Mapping[str, Any] | None = None, dataset: Mapping[str, Any] | None = None,
               timings: Mapping[str, float] | None = None, started: float | None = None,
               **results: Any) -> dict[str, Any]:
    """A run record (see the module docstring); ``results`` are the command's own keys, appended in order.

    A result key that shadows one of :data:`RECORD_KEYS` is a programming error (``ValueError``).
    """
    clash = sorted(set(results) & set(RECORD_KEYS))
    if clash:
        raise ValueError(f"run record result keys clash with the schema: {clash}")
    record: dict[str, Any] = {
        "record_version": RECORD_VERSION,
        "command": command,
        "format_version": format_version,
        "clipprobe_version": __version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() if started is None else started)),
        "versions": package_versions(),
        "config": dict(config) if config is not None else {},
        "model": dict(model) if model is not None else None,
        "dataset": dict(dataset) if dataset is not None else None,
        "timings_s": {k: round(float(v), 4) for k, v in (timings or {}).items()},
    }
    record.update(results)
    return record


class StageTimer:
    """Collects wall-clock seconds per named stage: ``with timer("embed"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 4) for k, v in self.seconds.items()}
