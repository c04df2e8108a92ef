"""What every run records about itself: versions, timings, environment."""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from importlib import metadata
from typing import Iterator

from clipprobe import __version__

_PACKAGES = (
    "torch", "torchvision", "open_clip_torch", "faiss-cpu", "faiss-gpu-cu12", "numpy", "scipy",
    "pandas", "pyarrow", "pillow", "hyperscan", "numba", "pyspark", "datasets", "matplotlib",
)


def package_versions() -> dict[str, str]:
    """Versions of clipprobe and of the installed packages it may use."""
    out = {"clipprobe": __version__, "python": sys.version.split()[0], "platform": platform.platform()}
    for name in _PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(name)
    return out


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
