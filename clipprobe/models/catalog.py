"""The model catalog: every pretrained (architecture, tag) pair open_clip knows, what it was trained on,
and which extra packages its text tokenizer needs."""

from __future__ import annotations

import importlib.util
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


# A text tower that names a Hugging Face tokenizer (``text_cfg.hf_tokenizer_name``: SigLIP, SigLIP 2, the
# multilingual XLM-R / NLLB / MT5 models, CLIPA's BERT) or a Hugging Face text model (``hf_model_name``) is
# built by open_clip through transformers (SentencePiece-based vocabularies also need sentencepiece).
HF_TEXT_EXTRA = "hf-text"
HF_TEXT_PACKAGES = ("transformers",)
MSG_NEEDS_TEXT_PACKAGE = (
    "model {spec} needs the Python package {package!r} for its text tokenizer ({why}); install it with "
    "pip install 'clipprobe[" + HF_TEXT_EXTRA + "]' (`clipprobe doctor` shows what this installation can do)"
)


def text_packages(model_cfg: dict | None, arch: str | None = None) -> tuple[str, ...]:
    """Packages beyond the defaults that an architecture's text tower needs: ``("transformers",)`` or ``()``.

    Read from the architecture config, as open_clip 3.3's ``get_tokenizer`` decides: a Hugging Face
    tokenizer name or text model in ``text_cfg``, or (with no name) an architecture called ``*siglip*``.
    """
    text_cfg = (model_cfg or {}).get("text_cfg") or {}
    if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"):
        return HF_TEXT_PACKAGES
    if arch and "siglip" in arch.lower():
        return HF_TEXT_PACKAGES
    return ()


def missing_text_packages(packages: tuple[str, ...]) -> list[str]:
    """Those of ``packages`` that cannot be imported here."""
    return [p for p in packages if importlib.util.find_spec(p) is None]


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
    ``hf_hub`` (repo id or ""), ``cached`` (bool), ``cached_path`` (str or None), ``needs`` (the
    extra packages its text tokenizer needs, e.g. ``["transformers"]``), ``extra`` (the clipprobe
    extra that installs them, or "") and ``missing`` (those of ``needs`` not installed here).
    """
    import open_clip  # noqa: PLC0415

    rows = []
    installed: dict[str, bool] = {}
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        found = cached_pretrained_file(cfg, cache_dir)
        needs = list(text_packages(open_clip.get_model_config(arch), arch))
        for package in needs:
            if package not in installed:
                installed[package] = not missing_text_packages((package,))
        rows.append({
            "spec": f"{arch}:{tag}",
            "arch": arch,
            "tag": tag,
            "training_data": training_data(tag),
            "hf_hub": os.path.split(cfg.get("hf_hub") or "")[0],
            "cached": found is not None,
            "cached_path": found,
            "needs": needs,
            "extra": HF_TEXT_EXTRA if needs else "",
            "missing": [p for p in needs if not installed[p]],
        })
    return rows


