"""Models: spec parsing, where weights are, the catalog of pretrained pairs, the encoder and loading.

* :mod:`~clipprobe.models.spec`: the one parser of ``--model`` values (``ARCH:TAG``, ``hf-hub:``,
  ``local-dir:``, ``ARCH:PATH``);
* :mod:`~clipprobe.models.weights`: the Hugging Face cache, local weights files and folders, checks
  made before anything is loaded (TorchScript archives refused, unreachable Hub detected at once);
* :mod:`~clipprobe.models.catalog`: every pretrained pair open_clip knows and its training data;
* :mod:`~clipprobe.models.encoder`: :class:`Encoder`, unit-norm float32 image and text embeddings;
* :mod:`~clipprobe.models.loading`: :func:`load_model`; :func:`as_encoder` takes a spec, an encoder or an
  already-built open_clip ``(model, preprocess, tokenizer)`` (:meth:`Encoder.from_open_clip`).

Only the standard library is imported here; torch and open_clip are imported when a model loads.
"""

from clipprobe.models.catalog import list_known_models, training_data
from clipprobe.models.encoder import Encoder
from clipprobe.models.loading import (
    PRECISIONS,
    as_encoder,
    check_pretrained,
    load_model,
    register_model_config,
    resolve_device,
    resolve_precision,
    resolve_preprocess,
)
from clipprobe.models.spec import DEFAULT_MODEL, KINDS, ModelSpec, parse_model_spec
from clipprobe.models.weights import cached_pretrained_file, check_hub_reachable

__all__ = [
    "DEFAULT_MODEL", "Encoder", "KINDS", "as_encoder", "ModelSpec", "PRECISIONS", "cached_pretrained_file", "check_hub_reachable",
    "check_pretrained", "list_known_models", "load_model", "parse_model_spec", "register_model_config",
    "resolve_device", "resolve_precision", "resolve_preprocess", "training_data",
]
