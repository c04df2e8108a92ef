"""The encoder: an open_clip model in eval mode with its tokenizer and image transform."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from clipprobe.errors import ModelError
from clipprobe.models.spec import BUILT, ModelSpec

if TYPE_CHECKING:
    import numpy as np

DTYPE_NAMES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_PRECISION_OF_DTYPE = {"torch.float32": "fp32", "torch.float16": "fp16", "torch.bfloat16": "bf16"}

MSG_BUILT_MODEL = ("model: {what} has no encode_image and encode_text methods; give an open_clip model (as "
                   "open_clip.create_model_and_transforms returns it)")
MSG_BUILT_CALLABLE = "{name}: expected a callable (open_clip's {what}), got {type}"
MSG_BUILT_DTYPE = "model: its parameters are {dtype}; clipprobe runs models in float32, float16 or bfloat16"

class Encoder:
    """An open_clip model in eval mode with its tokenizer and image transform.

    ``preprocess`` maps a PIL image to a float tensor (C, H, W); it is a
    torchvision ``Compose`` of picklable parts, so DataLoader workers can use it.
    ``encode_images`` / ``encode_text`` return float32 numpy arrays with
    L2-normalised rows (normalised in float32 even when the model runs in fp16).
    """

    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Callable,
        preprocess: Callable,
        preprocess_cfg: dict,
        preprocess_source: str,
        spec: ModelSpec,
        device: str,
        precision: str,
        weights_source: str,
        quick_gelu_forced: bool = False,
        model_cfg: dict | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess
        self.preprocess_cfg = preprocess_cfg
        self.preprocess_source = preprocess_source
        self.spec = spec
        self.device = device
        self.precision = precision
        self.dtype = DTYPE_NAMES[precision]
        self.weights_source = weights_source
        self.quick_gelu_forced = quick_gelu_forced
        self.model_cfg = model_cfg
        self._fingerprint: dict | None = None
        self.embed_dim = self._find_embed_dim()
        size = preprocess_cfg.get("size")
        self.image_size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    @classmethod
    def from_open_clip(cls, model: Any, preprocess: Callable, tokenizer: Callable, *, name: str | None = None
                       ) -> "Encoder":
        """An encoder around a model built elsewhere: ``model, _, preprocess =
        open_clip.create_model_and_transforms(...)`` and ``tokenizer = open_clip.get_tokenizer(...)``.

        The model is put in eval mode and used where its parameters are (device) and in their dtype
        (precision); ``preprocess`` is the image transform used as given. ``name`` labels it in run
        records and cache folders (default: the model's class name). The embedding cache keys it by a
        digest of its weights, of the transform and of the tokenizer's type (:meth:`fingerprint`), so
        two different models never share cached vectors.
        """
        if not (callable(getattr(model, "encode_image", None)) and callable(getattr(model, "encode_text", None))):
            raise ModelError(MSG_BUILT_MODEL.format(what=type(model).__name__))
        for value, arg, what in ((preprocess, "preprocess", "image transform"), (tokenizer, "tokenizer", "tokenizer")):
            if not callable(value):
                raise ModelError(MSG_BUILT_CALLABLE.format(name=arg, what=what, type=type(value).__name__))
        first = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = str(first.device) if first is not None else "cpu"
        dtype = str(first.dtype) if first is not None else "torch.float32"
        if dtype not in _PRECISION_OF_DTYPE:
            raise ModelError(MSG_BUILT_DTYPE.format(dtype=dtype))
        model.eval()
        visual = getattr(model, "visual", model)
        cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
        size = cfg.get("size", getattr(visual, "image_size", None))
        if size is not None:
            cfg["size"] = list(size) if isinstance(size, (list, tuple)) else size
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        label = str(name) if name else type(model).__name__
        return cls(model=model, tokenizer=tokenizer, preprocess=preprocess, preprocess_cfg=cfg,
                   preprocess_source="given", spec=ModelSpec(raw=label, kind=BUILT), device=device,
                   precision=_PRECISION_OF_DTYPE[dtype], weights_source="given",
                   model_cfg={"built": label, "preprocess": repr(preprocess),
                              "tokenizer": f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}"})

    def _find_embed_dim(self) -> int:
        visual = getattr(self.model, "visual", None)
        dim = getattr(visual, "output_dim", None)
        if isinstance(dim, int) and dim > 0:
            return dim
        return int(self.encode_text(["a"]).shape[1])

    @property
    def _torch_dtype(self):
        import torch

        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[self.precision]

    def _to_batch(self, batch):
        import numpy as np
        import torch

        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        if batch.ndim == 3:
            batch = batch.unsqueeze(0)
        return batch.to(self.device, dtype=self._torch_dtype, non_blocking=True)

    def encode_images(self, batch, *, return_norms: bool = False):
        """(N, C, H, W) preprocessed images -> (N, embed_dim) float32, unit rows.

        With ``return_norms`` also the (N,) float32 norms of the raw embeddings (for dot-product scoring).
        """
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(self._to_batch(batch)).float()
            norms = feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            unit = (feats / norms).cpu().numpy()
            return (unit, norms[:, 0].cpu().numpy()) if return_norms else unit

    def encode_text(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (len(texts), embed_dim) float32, unit rows."""
        import numpy as np
        import torch

        if isinstance(texts, str):
            raise TypeError("encode_text takes a list of strings, not one string")
        texts = list(texts)
        if not texts:
            dim = getattr(self, "embed_dim", 0)
            return np.zeros((0, dim), dtype=np.float32)
        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), max(1, int(batch_size))):
                tokens = self.tokenizer(texts[start:start + batch_size]).to(self.device)
                feats = self.model.encode_text(tokens).float()
                feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
                out.append(feats.cpu().numpy())
        return np.concatenate(out, axis=0).astype(np.float32, copy=False)

    def fingerprint(self) -> dict:
        """SHA-256 digests of what makes this model's vectors, computed once: ``weights_sha256`` over every
        tensor of the state dict as loaded (name, dtype, shape and bytes, in name order: the weights in
        memory, whichever file or Hub snapshot they came from, at this precision), ``config_sha256`` of
        the architecture configuration it was built from (``model_cfg``: an edited ``--model-config``,
        QuickGELU), ``structure_sha256`` of the module tree as built (``repr``: activations, layer sizes).
        Hashing reads the weights once: 1.3 s for ViT-B-32 in fp32 on a busy 2-core machine (SHA-256 at
        430 MB/s), against 6.9 s to load it there."""
        if self._fingerprint is None:
            import hashlib
            import json

            import torch

            h = hashlib.sha256()
            for name, tensor in sorted(self.model.state_dict().items()):
                t = tensor.detach()
                h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode("utf-8"))
                if t.numel():
                    flat = t.to("cpu").contiguous().reshape(-1)
                    h.update(memoryview(flat.view(torch.uint8).numpy()))
            cfg = json.dumps(self.model_cfg, sort_keys=True, default=str)
            self._fingerprint = {
                "weights_sha256": h.hexdigest(),
                "config_sha256": hashlib.sha256(cfg.encode("utf-8")).hexdigest(),
                "structure_sha256": hashlib.sha256(repr(self.model).encode("utf-8")).hexdigest(),
            }
        return dict(self._fingerprint)

    def info(self) -> dict:
        """What a run records about the model (JSON-serialisable)."""
        cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.preprocess_cfg.items()}
        return {
            "spec": self.spec.raw,
            "canonical": self.spec.canonical,
            "kind": self.spec.kind,
            "key": self.spec.key,
            "arch": self.spec.arch,
            "tag": self.spec.tag,
            "path": self.spec.path,
            "shipped": self.spec.shipped,
            "device": self.device,
            "precision": self.precision,
            "dtype": self.dtype,
            "embed_dim": self.embed_dim,
            "image_size": list(self.image_size),
            "preprocess": cfg,
            "preprocess_source": self.preprocess_source,
            "weights_source": self.weights_source,
            "quick_gelu_forced": self.quick_gelu_forced,
        }

    def __repr__(self) -> str:
        return f"Encoder({self.spec.canonical!r}, device={self.device!r}, dtype={self.dtype!r}, embed_dim={self.embed_dim})"


