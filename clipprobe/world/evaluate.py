"""Check a model against the world's truth with a plain numpy retrieval probe.

This is the yardstick the shipped model is trained to meet (and the tests
assert): embed the probe images, query each planted and control word with the
default prompt ("a photo of a {word}" / "a photo of a {word} person"), take the
top k by cosine similarity, and per (word, attribute, group) compute the
hypergeometric upper tail ``P(X >= count)``, X ~ Hypergeometric(N, group size, k).
p-values are Benjamini-Hochberg adjusted over all rows; a row is flagged when
q < alpha.

* recall: share of planted (word, attribute, group) triples flagged;
* false-positive rate: share of the control words' rows flagged;
* null: the same with the labels shuffled against the images (flagged share of all rows).

It deliberately does not use the report pipeline or its statistics (only the shared vocabulary of
groups), so it can check that pipeline.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from clipprobe.faces import ATTRIBUTES, race_gender

log = logging.getLogger(__name__)

DEFAULT_ATTRIBUTES = ATTRIBUTES


@dataclass(frozen=True)
class WorldCheck:
    """Outcome of :func:`check_world`."""

    recall: float
    false_positive_rate: float
    null_flagged_rate: float
    n_rows: int
    planted_flagged: dict[str, bool]
    control_rows_flagged: int
    control_rows: int
    rows: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"recall": self.recall, "false_positive_rate": self.false_positive_rate,
                "null_flagged_rate": self.null_flagged_rate, "n_rows": self.n_rows,
                "control_rows": self.control_rows, "control_rows_flagged": self.control_rows_flagged,
                "planted_flagged": self.planted_flagged}


def prompt_for(word: str, pos: str) -> str:
    """The default So-B-IT prompt for a word (the first template of the default set)."""
    from clipprobe.resources.prompts import fill

    return fill("a photo of {a} {word} person" if pos == "adjective" else "a photo of {a} {word}", word)


def bh_adjust(p) -> "Any":
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order."""
    import numpy as np

    p = np.asarray(p, dtype=float)
    n = p.size
    if n == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * n / np.arange(1, n + 1)
    q_sorted = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty(n)
    q[order] = np.minimum(q_sorted, 1.0)
    return q


def label_arrays(labels_csv: str | Path, attributes: Sequence[str] = DEFAULT_ATTRIBUTES) -> dict[str, Any]:
    """Attribute -> array of group labels, in the label file's row order."""
    import numpy as np
    import pandas as pd

    df = pd.read_csv(labels_csv, dtype=str)
    out = {}
    for attr in attributes:
        if attr == "race_gender":
            out[attr] = np.array([race_gender(r, g) for r, g in zip(df["race"], df["gender"])], dtype=object)
        else:
            out[attr] = df[attr].to_numpy(dtype=object)
    return {a: np.asarray(v, dtype=object) for a, v in out.items()}


def probe_rows(image_emb, word_emb: Mapping[str, Any], labels: Mapping[str, Any], *, k: int = 100,
               alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per (word, attribute, group) with count, p_over, q_over and flagged."""
    import numpy as np
    from scipy.stats import hypergeom

    image_emb = np.asarray(image_emb, dtype=np.float32)
    n = image_emb.shape[0]
    rows: list[dict[str, Any]] = []
    for word, vec in word_emb.items():
        scores = image_emb @ np.asarray(vec, dtype=np.float32)
        top = np.argsort(-scores, kind="stable")[:k]
        for attr, values in labels.items():
            groups, sizes = np.unique(values, return_counts=True)
            top_values = values[top]
            for g, size in zip(groups, sizes):
                count = int(np.sum(top_values == g))
                p = float(hypergeom.sf(count - 1, n, int(size), k))
                rows.append({"word": word, "attribute": attr, "group": str(g), "count": count,
                             "group_size": int(size), "p_over": p})
    q = bh_adjust([r["p_over"] for r in rows])
    for r, qq in zip(rows, q):
        r["q_over"] = float(qq)
        r["flagged"] = bool(qq < alpha)
    return rows


def score_rows(rows: Sequence[Mapping[str, Any]], truth: Mapping[str, Any]) -> tuple[float, float, dict[str, bool], int, int]:
    """Recall over planted triples and false-positive rate over control words' rows."""
    flagged = {(r["word"], r["attribute"], r["group"]): r["flagged"] for r in rows}
    planted = {f'{p["word"]}/{p["attribute"]}/{p["group"]}': flagged[(p["word"], p["attribute"], p["group"])]
               for p in truth["planted"]}
    controls = set(truth["controls"])
    control_flags = [r["flagged"] for r in rows if r["word"] in controls]
    recall = sum(planted.values()) / len(planted)
    fpr = sum(control_flags) / len(control_flags)
    return recall, fpr, planted, int(sum(control_flags)), len(control_flags)


def word_embeddings(model, tokenizer, truth: Mapping[str, Any]) -> dict[str, Any]:
    """Normalised text embeddings of the default prompt of every planted and control word."""
    import numpy as np
    import torch

    pos = {p["word"]: p["pos"] for p in truth["planted"]}
    pos.update({c["word"]: c["pos"] for c in truth["control_details"]})
    words = list(pos)
    prompts = [prompt_for(w, pos[w]) for w in words]
    with torch.no_grad():
        emb = model.encode_text(tokenizer(prompts), normalize=True).float().numpy()
    return {w: np.asarray(e) for w, e in zip(words, emb)}


def embed_image_files(model, preprocess, paths: Sequence[str | Path], batch_size: int = 256):
    """Normalised image embeddings of files, through the model's own preprocessing."""
    import numpy as np
    import torch
    from PIL import Image

    out = []
    with torch.no_grad():
        for i in range(0, len(paths), batch_size):
            batch = torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths[i:i + batch_size]])
            out.append(model.encode_image(batch, normalize=True).float().numpy())
    return np.concatenate(out)


def check_world(image_emb, word_emb: Mapping[str, Any], labels: Mapping[str, Any], truth: Mapping[str, Any], *,
                k: int = 100, alpha: float = 0.05, null_seed: int = 0) -> WorldCheck:
    """Recall, false-positive rate and the shuffled-label null for one model on one world."""
    import numpy as np

    rows = probe_rows(image_emb, word_emb, labels, k=k, alpha=alpha)
    recall, fpr, planted, n_ctrl_flag, n_ctrl = score_rows(rows, truth)
    rng = np.random.default_rng(null_seed)
    perm = rng.permutation(len(next(iter(labels.values()))))
    shuffled = {a: v[perm] for a, v in labels.items()}
    null_rows = probe_rows(image_emb, word_emb, shuffled, k=k, alpha=alpha)
    null_rate = sum(r["flagged"] for r in null_rows) / len(null_rows)
    return WorldCheck(recall, fpr, null_rate, len(rows), planted, n_ctrl_flag, n_ctrl, rows)


def check_model_on_world(model, preprocess, tokenizer, world_dir: str | Path, *, k: int = 100,
                         alpha: float = 0.05) -> WorldCheck:
    """Embed a written world's probe images from disk and check the model against its truth."""
    import json

    world_dir = Path(world_dir)
    truth = json.loads((world_dir / "truth.json").read_text(encoding="utf-8"))
    labels_csv = world_dir / "fairface" / "fairface_label_val.csv"
    import pandas as pd

    files = pd.read_csv(labels_csv, dtype=str)["file"].tolist()
    image_emb = embed_image_files(model, preprocess, [world_dir / "fairface" / f for f in files])
    return check_world(image_emb, word_embeddings(model, tokenizer, truth), label_arrays(labels_csv), truth,
                       k=k, alpha=alpha)
