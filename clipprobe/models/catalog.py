"""The model catalog: every pretrained (architecture, tag) pair open_clip knows, what it was trained on,
and which extra packages its text tokenizer needs.

The lists of open_clip's architectures and pretrained pairs ship as data (:data:`CATALOG_FILE`, written
by ``python -m clipprobe.models.catalog --write`` from ``open_clip.list_pretrained()`` and the
architecture configs of the open_clip version it names; tests/test_models.py checks it against the
installed open_clip). :func:`check_model_name` checks a ``--model`` value against them before torch or
open_clip is imported (seconds), so a misspelt model fails at once; where the installed open_clip is
another version, or open_clip is already imported (its own lists may hold architectures registered in
this process), its live lists are used instead.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from clipprobe.errors import ModelError, did_you_mean
from clipprobe.models.spec import SHIPPED_MODELS, ModelSpec, _as_spec, _clean_tag, shipped_model
from clipprobe.models.weights import _check_local_dir, _check_weights_file, cached_pretrained_file

CATALOG_FILE = Path(__file__).resolve().parent / "open_clip_catalog.json"
CATALOG_FORMAT = 1
_CFG_KEYS = ("hf_hub", "url", "quick_gelu", "mean", "std", "interpolation", "resize_mode")

MSG_UNKNOWN_ARCH = "unknown model architecture {arch!r}{hint}; `clipprobe models` lists the pretrained ones"
MSG_UNKNOWN_TAG = "unknown pretrained tag {tag!r} for {arch}{hint}; tags for {arch}: {tags}"
MSG_NO_TAGS = "architecture {arch} has no pretrained tags in open_clip; give weights as {arch}:/path/to/weights.safetensors"
MSG_CONFIG_MISSING = "model config file not found: {path}"

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


# --------------------------------------------------------------------------- the shipped lists


def _builtin_architectures(open_clip) -> list[str]:
    """The architectures whose configs ship inside open_clip (not those registered in this process)."""
    folder = Path(open_clip.__file__).resolve().parent / "model_configs"
    return sorted(p.stem for p in folder.glob("*.json"))


def build_catalog() -> dict[str, Any]:
    """The catalog of the installed open_clip (imports it): its version, every architecture of its own
    configs with the extra packages its text tokenizer needs, and every pretrained pair with the fields
    of its pretrained config that clipprobe reads."""
    import open_clip  # noqa: PLC0415

    archs = {}
    for arch in _builtin_architectures(open_clip):
        archs[arch] = {"text_packages": list(text_packages(open_clip.get_model_config(arch), arch))}
    pairs = []
    for arch, tag in open_clip.list_pretrained():
        cfg = open_clip.get_pretrained_cfg(arch, tag) or {}
        pairs.append({"arch": arch, "tag": tag,
                      **{k: (list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]) for k in _CFG_KEYS if k in cfg}})
    return {"format": CATALOG_FORMAT, "open_clip_version": open_clip.__version__,
            "generated_by": "python -m clipprobe.models.catalog --write", "architectures": archs,
            "pretrained": pairs}


def write_catalog(path: str | os.PathLike = CATALOG_FILE) -> Path:
    """Write :func:`build_catalog` as JSON (the shipped :data:`CATALOG_FILE` by default)."""
    from clipprobe._io import write_text

    data = build_catalog()
    # one architecture or pair per line: a new open_clip release shows as a readable diff
    lines = ["{"] + [f" {json.dumps(k)}: {json.dumps(data[k])}," for k in ("format", "open_clip_version", "generated_by")]
    lines.append(' "architectures": {')
    lines += [f"  {json.dumps(a)}: {json.dumps(v)}," for a, v in data["architectures"].items()]
    lines[-1] = lines[-1].rstrip(",")
    lines.append(' },\n "pretrained": [')
    lines += [f"  {json.dumps(p)}," for p in data["pretrained"]]
    lines[-1] = lines[-1].rstrip(",")
    lines.append(" ]\n}")
    text = "\n".join(lines) + "\n"
    if json.loads(text) != data:     # pragma: no cover - the layout above must round-trip
        raise AssertionError("catalog layout does not round-trip")
    write_text(path, text)
    return Path(path)


@functools.lru_cache(maxsize=1)
def shipped_catalog() -> dict[str, Any]:
    """The catalog shipped with clipprobe (read once)."""
    return json.loads(CATALOG_FILE.read_text(encoding="utf-8"))


def _installed_open_clip_version() -> str | None:
    try:
        return importlib.metadata.version("open_clip_torch")
    except importlib.metadata.PackageNotFoundError:
        return None


class _Lists:
    """Architectures and pretrained pairs: from the live open_clip when it is imported, else from the
    shipped catalog (which then matches the installed version)."""

    def __init__(self, live=None, catalog: dict | None = None) -> None:
        self.live = live
        if live is not None:
            self.archs = set(live.list_models())
            self.pairs = [tuple(p) for p in live.list_pretrained()]
        else:
            self.archs = set(catalog["architectures"])
            self.pairs = [(p["arch"], p["tag"]) for p in catalog["pretrained"]]
            self._cfgs = {(p["arch"], p["tag"]): p for p in catalog["pretrained"]}
            self._archs = catalog["architectures"]

    def tags(self, arch: str) -> list[str]:
        return [t for a, t in self.pairs if a == arch]

    def pretrained_cfg(self, arch: str, tag: str) -> dict:
        if self.live is not None:
            return dict(self.live.get_pretrained_cfg(arch, tag) or {})
        return dict(self._cfgs.get((arch, _clean_tag(tag))) or self._cfgs.get((arch, tag)) or {})

    def text_packages(self, arch: str) -> tuple[str, ...]:
        if self.live is not None:
            return text_packages(self.live.get_model_config(arch), arch)
        return tuple((self._archs.get(arch) or {}).get("text_packages") or ())


def known_lists(*, import_open_clip: bool = False) -> _Lists | None:
    """The lists to check a model name against without importing open_clip: the live ones when open_clip
    is already imported, else the shipped catalog when it was made from the installed open_clip version;
    None otherwise (or, with ``import_open_clip``, the live lists after importing it)."""
    if "open_clip" in sys.modules:
        return _Lists(live=sys.modules["open_clip"])
    try:
        catalog = shipped_catalog()
    except (OSError, ValueError):
        catalog = None
    if catalog is not None and catalog.get("open_clip_version") == _installed_open_clip_version():
        return _Lists(catalog=catalog)
    if import_open_clip:
        import open_clip  # noqa: PLC0415

        return _Lists(live=open_clip)
    return None


def check_model_name(spec: str | ModelSpec, *, model_config: str | os.PathLike | None = None) -> ModelSpec:
    """Check a ``--model`` value before anything heavy is imported; return the parsed spec.

    Syntax (:func:`~clipprobe.models.spec.parse_model_spec`); a shipped model's files; an
    ``ARCH:TAG`` pair or the architecture of ``ARCH:PATH`` against open_clip's lists (the shipped
    catalog, :func:`known_lists`; an architecture given by ``model_config`` counts as known); a weights
    file, a ``local-dir:`` folder and ``model_config`` on disk. Raises :class:`ModelError` with the
    message :func:`~clipprobe.models.loading.load_model` would give after seconds of imports.
    """
    spec = _as_spec(spec)
    if model_config is not None and not Path(model_config).expanduser().is_file():
        raise ModelError(MSG_CONFIG_MISSING.format(path=Path(model_config).expanduser()))
    if spec.shipped:
        shipped_model(spec.shipped).check()
        return spec
    if spec.kind == "local-dir":
        _check_local_dir(spec)
        return spec
    if spec.kind == "hf-hub":
        return spec
    lists = known_lists()
    if lists is None:   # another open_clip version: load_model checks against its own lists
        if spec.kind == "file":
            _check_weights_file(spec)
        return spec
    custom = {Path(model_config).stem} if model_config is not None else set()
    custom |= {m.arch for m in SHIPPED_MODELS.values()}
    archs = lists.archs | custom
    if spec.arch not in archs:
        raise ModelError(MSG_UNKNOWN_ARCH.format(arch=spec.arch, hint=did_you_mean(spec.arch, sorted(archs))))
    if spec.kind == "pretrained":
        tags = lists.tags(spec.arch)
        if not tags:
            raise ModelError(MSG_NO_TAGS.format(arch=spec.arch))
        if _clean_tag(spec.tag or "") not in {_clean_tag(t) for t in tags}:
            raise ModelError(MSG_UNKNOWN_TAG.format(tag=spec.tag, arch=spec.arch, hint=did_you_mean(spec.tag, tags),
                                                    tags=", ".join(tags)))
    if spec.kind == "file":
        _check_weights_file(spec)
    return spec


def list_known_models(cache_dir: str | None = None) -> list[dict]:
    """Every (arch, tag) pair open_clip knows, with training data and local cache state.

    Each row: ``spec`` (``ARCH:TAG``), ``arch``, ``tag``, ``training_data``,
    ``hf_hub`` (repo id or ""), ``cached`` (bool), ``cached_path`` (str or None), ``needs`` (the
    extra packages its text tokenizer needs, e.g. ``["transformers"]``), ``extra`` (the clipprobe
    extra that installs them, or "") and ``missing`` (those of ``needs`` not installed here).
    Read from the shipped catalog where it matches the installed open_clip (open_clip is not imported).
    """
    lists = known_lists(import_open_clip=True)
    rows = []
    installed: dict[str, bool] = {}
    for arch, tag in lists.pairs:
        cfg = lists.pretrained_cfg(arch, tag)
        found = cached_pretrained_file(cfg, cache_dir)
        needs = list(lists.text_packages(arch))
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




def shipped_models() -> list[dict]:
    """The models shipped with clipprobe (``demo``): ``spec`` (its name), ``arch``, ``description``,
    ``training_data``, ``weights`` and ``config`` (paths), ``cached`` (True: the files are installed)."""
    return [{"spec": m.name, "arch": m.arch, "description": m.description, "training_data": m.training_data,
             "weights": str(m.weights_path), "config": str(m.config_path),
             "cached": m.weights_path.is_file() and m.config_path.is_file()} for m in SHIPPED_MODELS.values()]


def safetensors_params(path: str | os.PathLike) -> dict[str, int]:
    """Parameters per top-level module (``visual``, ``transformer``, ...) of a safetensors file, counted
    from its JSON header (no tensor is read; nothing heavy is imported)."""
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
    out: dict[str, int] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        n = 1
        for dim in info["shape"]:
            n *= int(dim)
        out[name.split(".", 1)[0]] = out.get(name.split(".", 1)[0], 0) + n
    return out


def _main(argv=None) -> int:
    import argparse
    import logging

    ap = argparse.ArgumentParser(prog="python -m clipprobe.models.catalog")
    ap.add_argument("--write", nargs="?", const=str(CATALOG_FILE), metavar="PATH",
                    help=f"write the catalog of the installed open_clip (default: {CATALOG_FILE.name} in the package)")
    args = ap.parse_args(argv)
    if args.write:
        path = write_catalog(args.write)
        data = json.loads(path.read_text(encoding="utf-8"))
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        logging.getLogger(__name__).info("wrote %s: open_clip %s, %d architectures, %d pretrained pairs", path,
                                         data["open_clip_version"], len(data["architectures"]), len(data["pretrained"]))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(_main())
