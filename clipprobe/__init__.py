"""clipprobe: measure social stereotypes in CLIP-style vision-language models.

The Python API (arrays in, tables out; every name is imported on first use, so ``import clipprobe``
stays light)::

    import clipprobe as cp
    enc    = cp.load_model("ViT-B-32:openai")
    faces  = cp.load_faces("fairface:/data/fairface")
    emb    = cp.embed_images(enc, faces)                 # cached, resumable
    texts  = cp.embed_texts(enc, cp.make_queries("sobit", templates="default"))
    scores = cp.similarity_scores(texts.vectors, emb.vectors)   # what every command ranks by
    tables = cp.probe(scores, emb.labels, words=texts.words, k=100, bootstrap=1000, seed=0)
    cp.write_report(tables, "reports/vitb32")

One function per method, in one vocabulary (:mod:`clipprobe.api`): :func:`probe`,
:func:`association_tests`, :func:`data_bias`, :func:`balance`, :func:`subsets`; data first, options by
keyword (``seed``, ``alpha``, ``level``, ``bootstrap``, ``permutations`` mean the same everywhere),
frozen dataclasses of DataFrames out. A model is a spec, an encoder or an open_clip
``(model, preprocess, tokenizer)`` (:func:`as_encoder`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "load_model": ("clipprobe.models", "load_model"),
    "load_faces": ("clipprobe.faces", "load_dataset"),
    "embed_images": ("clipprobe.pipeline.embed", "embed_images"),
    "embed_texts": ("clipprobe.pipeline.embed", "embed_texts"),
    "make_queries": ("clipprobe.resources.prompts", "make_queries"),
    "make_query": ("clipprobe.resources.prompts", "make_query"),
    "probe_scores": ("clipprobe.analysis.probe", "probe_scores"),
    "similarity_scores": ("clipprobe.analysis.metrics", "similarity_scores"),
    "ReportTables": ("clipprobe.analysis.probe", "ReportTables"),
    "write_report": ("clipprobe.report.writer", "write_report"),
    "load_report": ("clipprobe.report.store", "load_report"),
    "open_probe": ("clipprobe.pipeline.probe", "open_probe"),
    "ProbeConfig": ("clipprobe.pipeline.probe", "ProbeConfig"),
    "retrieve": ("clipprobe.pipeline.probe", "retrieve"),
    "run_report": ("clipprobe.pipeline.report", "run_report"),
    "ReportConfig": ("clipprobe.pipeline.report", "ReportConfig"),
    "get_taxonomy": ("clipprobe.resources.taxonomy", "get_taxonomy"),
    "get_template_set": ("clipprobe.resources.prompts", "get_template_set"),
    "get_lexicon": ("clipprobe.resources.lexicon", "get_lexicon"),
    "report_figures": ("clipprobe.report.figures", "report_figures"),
    "write_report_figures": ("clipprobe.report.figures", "write_report_figures"),
    "run_demo": ("clipprobe.world.demo", "run_demo"),
    # one function per method, one vocabulary (clipprobe/api.py)
    "probe": ("clipprobe.api", "probe"),
    "association_tests": ("clipprobe.api", "association_tests"),
    "data_bias": ("clipprobe.api", "data_bias"),
    "balance": ("clipprobe.api", "balance"),
    "subsets": ("clipprobe.api", "subsets"),
    "AssociationTables": ("clipprobe.api", "AssociationTables"),
    "DataBiasTables": ("clipprobe.api", "DataBiasTables"),
    "BalanceTables": ("clipprobe.api", "BalanceTables"),
    "SubsetTables": ("clipprobe.analysis.subsets", "SubsetTables"),
    "as_encoder": ("clipprobe.models", "as_encoder"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _API[name]
    except KeyError:
        raise AttributeError(f"module 'clipprobe' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
