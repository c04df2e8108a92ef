"""The model catalog: every pretrained (architecture, tag) pair open_clip knows, and what it was trained on."""

from __future__ import annotations

import os
import re

from clipprobe.models.spec import _clean_tag
from clipprobe.models.weights import cached_pretrained_file

# Training data of the pretrained tags (a registry of data, first match wins)

_TRAINING_DATA: tuple[tuple[str, str], ...] = (
    (r"^openai$", "OpenAI WIT (400M, private)"),
    (r"^mscoco_finetuned_laion2b", "LAION-2B-en, fine-tuned on MS-COCO"),
    (r"^laion400m", "LAION-400M"),
    (r"^laion2b", "LAION-2B-en"),
    (r"^(?:frozen_)?laion5b", "LAION-5B (multilingual)"),
    (r"^laion_aesthetic", "LAION-Aesthetics (subset of LAION-5B)"),
    (r"^datacompdr", "DataCompDR (DataComp-1B, reinforced)"),
    (r"^(?:datacomp_xl|datacomp_s34b|datacomp1b)", "DataComp-1B"),
    (r"^datacomp_l_", "DataComp-L (filtered CommonPool-L)"),
    (r"^datacomp_m_", "DataComp-M (filtered CommonPool-M)"),
    (r"^datacomp_s_", "DataComp-S (filtered CommonPool-S)"),
    (r"^commonpool_(s|m|l|xl)_(basic|clip|image|laion|text)_", "CommonPool-{0} ({1} filter)"),
    (r"^commonpool_(s|m|l|xl)_s\d", "CommonPool-{0} (unfiltered)"),
    (r"^metaclip2_worldwide", "MetaCLIP 2 worldwide (multilingual)"),
    (r"^metaclip_400m", "MetaCLIP 400M"),
    (r"^metaclip_fullcc", "MetaCLIP 2.5B"),
    (r"^metaclip_altogether", "MetaCLIP Altogether (re-captioned)"),
    (r"^dfndr2b", "DFNDR-2B (DFN-2B, reinforced)"),
    (r"^dfn2b", "DFN-2B"),
    (r"^dfn5b", "DFN-5B"),
    (r"^webli$", "WebLI"),
    (r"^merged2b", "Merged-2B (LAION-2B + COYO-700M)"),
    (r"^yfcc15m$", "YFCC-15M"),
    (r"^cc12m$", "CC12M"),
)


def training_data(tag: str) -> str:
    """The training data a pretrained tag names, or ``"unknown"``."""
    tag = _clean_tag(tag)
    for pattern, label in _TRAINING_DATA:
        m = re.match(pattern, tag)
        if m:
            return label.format(*(g.upper() if i == 0 else g for i, g in enumerate(m.groups())))
    return "unknown"


def list_known_models(cache_dir: str | None = None) -> list[dict]:
    """Every (arch, tag) pair open_clip knows, with training data and local cache state.

    Each row: ``spec`` (``ARCH:TAG``), ``arch``, ``tag``, ``training_data``,
    ``hf_hub`` (repo id or ""), ``cached`` (bool), ``cached_path`` (str or None).
    """
    import open_clip  # noqa: PLC0415

    rows = []
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        found = cached_pretrained_file(cfg, cache_dir)
        rows.append({
            "spec": f"{arch}:{tag}",
            "arch": arch,
            "tag": tag,
            "training_data": training_data(tag),
            "hf_hub": os.path.split(cfg.get("hf_hub") or "")[0],
            "cached": found is not None,
            "cached_path": found,
        })
    return rows


