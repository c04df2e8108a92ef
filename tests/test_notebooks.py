"""The figures notebook runs end to end on a small generated report."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from reportgen import make_report

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "report_figures.ipynb"


def test_report_figures_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    report = make_report(tmp_path / "report", words={"nurse": "jobs", "engineer": "jobs", "rich": "status"},
                         plants={"nurse": ("gender", "Female", 6.0)}, images=False, n_boot=5)
    out = tmp_path / "figures"
    monkeypatch.setenv("CLIPPROBE_REPORT", str(report))
    monkeypatch.setenv("CLIPPROBE_FIGURES_OUT", str(out))
    root = str(Path(__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # the figures were displayed inline ...
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == 4
    # ... and written, PNG and PDF: 4 heatmaps, entropy, a top-words plot per attribute with a flagged pair
    # (the first attribute when none has one) and 2 categories x (4 dot plots + stability)
    groups = pd.read_parquet(report / "groups.parquet")
    n_top = max(1, groups.loc[groups["flagged"], "attribute"].nunique())
    n_figures = 4 + 1 + n_top + 2 * 5
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.pdf"))) == len(list(out.glob("*.svg"))) == n_figures
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert f"wrote {3 * n_figures} files" in text and "TinyCLIP-test:random" in text
