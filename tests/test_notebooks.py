"""The notebooks: stored executed (outputs and figures, the public API only, small), and the figures notebook
runs end to end on a small generated report."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pandas as pd
import pytest

from reportgen import make_report

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "report_figures.ipynb"
NOTEBOOKS = {"demo_walkthrough.ipynb": 4, "report_figures.ipynb": 5}   # name -> figures shown at least
MAX_BYTES = 1_500_000


@pytest.mark.parametrize("name, min_figures", sorted(NOTEBOOKS.items()))
def test_stored_notebook_is_executed_with_figures_and_public_api_only(name, min_figures):
    path = ROOT / "notebooks" / name
    assert path.stat().st_size < MAX_BYTES
    nb = json.loads(path.read_text(encoding="utf-8"))
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(isinstance(c["execution_count"], int) for c in code), "stored without running every cell"
    assert [c["execution_count"] for c in code] == list(range(1, len(code) + 1)), "not run top to bottom"
    outputs = [o for c in code for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= min_figures
    plain = ["".join(o["data"]["text/plain"]) for o in outputs if "text/plain" in o.get("data", {})
             and "image/png" not in o["data"]]
    assert not [t for t in plain if t.startswith(("<Figure size", "<Axes", "<matplotlib"))], "a figure shown as text"
    texts = "".join("".join(o.get("text", "")) for o in outputs)
    assert "/tmp/" not in texts and str(Path.home()) not in texts
    source = "\n".join("".join(c["source"]) for c in code)
    imports = [m.strip() for m in re.findall(r"^[ \t]*(?:from|import)[ \t]+clipprobe\b.*$", source, re.M)]
    assert imports == ["import clipprobe as cp"], imports            # the public API only
    assert not re.search(r"\bcp\._", source)
    prose = "\n".join("".join(c["source"]) for c in nb["cells"])
    assert "bootstrap interval" not in prose.lower()                  # the intervals are score intervals


@pytest.mark.slow
def test_report_figures_notebook_executes(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import clipprobe as cp

    report = make_report(tmp_path / "report", words={"nurse": "jobs", "engineer": "jobs", "rich": "status"},
                         plants={"nurse": ("gender", "Female", 6.0)}, images=False, n_boot=5)
    out = tmp_path / "figures"
    monkeypatch.setenv("CLIPPROBE_REPORT", str(report))
    monkeypatch.setenv("CLIPPROBE_FIGURES_OUT", str(out))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))

    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in nb.cells)
    nbclient.NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
                            ).execute()

    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    # the figures were displayed inline: the core set of the first attribute and one category's dot plot and
    # stability plot
    rep = cp.load_report(report)
    attribute = rep.attributes[0]
    expected = len(list(cp.report_figures(rep, attributes=[attribute]))) + 2
    images = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(images) == expected
    # ... and written, PNG and PDF: 4 heatmaps, entropy, a top-words plot per attribute with a flagged pair
    # (the first attribute when none has one) and 2 categories x (4 dot plots + stability)
    groups = pd.read_parquet(report / "groups.parquet")
    n_top = max(1, groups.loc[groups["flagged"], "attribute"].nunique())
    n_figures = 4 + 1 + n_top + 2 * 5
    assert len(list(out.glob("*.png"))) == len(list(out.glob("*.pdf"))) == len(list(out.glob("*.svg"))) == n_figures
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert f"wrote {3 * n_figures} files" in text and "TinyCLIP-test:random" in text
