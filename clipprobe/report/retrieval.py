"""One word's retrieval, as the ``retrieve`` command shows it: a terminal table, JSON, a contact sheet."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from clipprobe.errors import printable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from clipprobe.resources.prompts import Query

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Retrieval:
    """One word's top-k and its group composition per attribute."""

    query: "Query"
    k: int
    results: "pd.DataFrame"            # rank, file, score, <attribute values>
    groups: dict[str, "pd.DataFrame"]  # attribute -> group, count, share, base_share, skew
    model: dict
    dataset: dict
    skipped: list[dict]

    def top_group(self, attribute: str) -> str:
        g = self.groups[attribute]
        return str(g.loc[g["skew"].idxmax(), "group"])

    def to_dict(self) -> dict:
        results = []
        for row in self.results.to_dict(orient="records"):
            row["rank"] = int(row["rank"])
            row["score"] = float(row["score"])
            results.append(row)
        return {
            "word": self.query.word,
            "in_taxonomy": self.query.in_taxonomy,
            "categories": list(self.query.categories),
            "pos": self.query.pos,
            "prompts": list(self.query.prompts),
            "model": self.model,
            "dataset": self.dataset,
            "k": self.k,
            "results": results,
            "groups": {a: [{"group": str(r["group"]), "count": int(r["count"]), "share": float(r["share"]),
                            "base_share": float(r["base_share"]), "skew": float(r["skew"])}
                           for r in g.to_dict(orient="records")]
                       for a, g in self.groups.items()},
            "skipped": self.skipped,
        }

    def groups_table(self) -> "pd.DataFrame":
        """Every attribute's groups in one table (attribute, group, count, share, base_share, skew)."""
        import pandas as pd

        frames = [g.assign(attribute=a) for a, g in self.groups.items()]
        return pd.concat(frames)[["attribute", "group", "count", "share", "base_share", "skew"]]


def model_label(model: dict) -> str:
    """A short model name for titles: ``ARCH:file name`` for a local weights file, else the spec."""
    if model.get("shipped"):
        return str(model["shipped"])
    if model.get("kind") == "file" and model.get("arch") and model.get("path"):
        return f"{model['arch']}:{Path(str(model['path'])).name}"
    return str(model.get("spec", ""))


def format_table(r: Retrieval) -> str:
    """The terminal table of a retrieval: per attribute, each group's count, share, base share, skew."""
    lines = [f"word: {r.query.word!r}" + ("" if r.query.in_taxonomy else "  (not in the taxonomy)"),
             "prompts: " + "; ".join(repr(p) for p in r.query.prompts),
             f"model: {r.model.get('spec')}   dataset: {r.dataset['spec']} "
             f"({r.dataset['n_images']} images)   k = {r.k}"]
    for attribute, g in r.groups.items():
        top = r.top_group(attribute)
        width = max(12, max(len(printable(x)) for x in g["group"]))
        lines.append("")
        lines.append(f"{printable(attribute):<{width}}  {'count':>5}  {'share':>6}  {'base':>6}  {'skew':>7}")
        for row in g.itertuples(index=False):
            mark = "  <- most over-represented" if row.group == top else ""
            lines.append(f"{printable(row.group):<{width}}  {row.count:>5d}  {row.share:>6.3f}  "
                         f"{row.base_share:>6.3f}  {row.skew:>+7.3f}{mark}")
    if r.skipped:
        lines.append("")
        lines.append(f"{len(r.skipped)} image(s) could not be read and were left out (see --format json)")
    return "\n".join(lines)


def save_grid(r: Retrieval, path, load_image: Callable[[str], object], *, columns: int = 10,
              thumb: int = 96) -> int:
    """Write a contact sheet of the retrieved faces with rank and labels; returns images drawn.

    ``load_image(file)`` returns a PIL image of a result's file; one that cannot be read is drawn
    as a blank tile (and logged).
    """
    from PIL import Image

    from clipprobe.report.contact import contact_sheet, save_image

    images, labels = [], []
    for row in r.results.itertuples(index=False):
        try:
            img = load_image(row.file)
        except Exception as err:  # noqa: BLE001 - one unreadable face must not stop the sheet
            log.warning("grid: could not read %s (%s)", row.file, err)
            img = Image.new("RGB", (thumb, thumb), (200, 200, 200))
        images.append(img)
        parts = [str(getattr(row, a)) for a in r.groups if a != "race_gender"]
        labels.append(f"#{row.rank} " + "\n".join(parts))
    title = f"{r.query.word!r}: top {r.k} ({model_label(r.model)}, {r.dataset['spec']})"
    save_image(contact_sheet(images, labels, columns=columns, thumb=thumb, title=title), path)
    return len(images)
