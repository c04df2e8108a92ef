"""The offline planted-bias world: synthetic faces and captions with known associations.

:mod:`clipprobe.world.generate` writes the world from a seed; :mod:`clipprobe.world.train`
trains the tiny open_clip model shipped in ``weights/``; :mod:`clipprobe.world.evaluate`
checks a model against the world's truth.
"""

from __future__ import annotations

WORLD_ARCH = "clipprobe-world-tiny"
