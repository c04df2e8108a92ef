"""Execute the notebooks against the output of `clipprobe demo` and store them with their outputs.

    clipprobe demo --out /tmp/demo
    python notebooks/execute.py --demo /tmp/demo

The kernel runs beside a link ``demo`` to the demo folder, with ``CLIPPROBE_DEMO_DIR`` (the walkthrough)
and ``CLIPPROBE_REPORT`` (the figures notebook, on the demo's report) naming it relatively; where the
demo's own files hold its absolute path (the dataset spec in a retrieval table), the stored text says
``demo`` instead, so the notebooks hold no machine's paths. Execution counts and outputs are kept; the
run's timestamps are dropped from the cell metadata so that a rerun only changes what the code shows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOKS = ("demo_walkthrough.ipynb", "report_figures.ipynb")
MAX_BYTES = 1_500_000


def execute(path: Path, *, cwd: Path, env: dict[str, str], env_root: Path, timeout: int = 900):
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                out["text"] = out["text"].replace(str(cwd / "demo"), "demo").replace(str(env_root), "demo")
    nb.metadata.pop("widgets", None)
    return nb


def main(argv=None) -> int:
    import nbformat

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", required=True, help="output folder of `clipprobe demo`")
    ap.add_argument("--only", choices=NOTEBOOKS, default=None)
    args = ap.parse_args(argv)
    demo = Path(args.demo).resolve()
    if not (demo / "validation.json").is_file():
        ap.error(f"{demo} is not the output folder of `clipprobe demo` (no validation.json)")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        (cwd / "demo").symlink_to(demo, target_is_directory=True)
        env = {"CLIPPROBE_DEMO_DIR": "demo", "CLIPPROBE_REPORT": "demo/report", "CLIPPROBE_FIGURES_OUT": "figures"}
        for name in NOTEBOOKS if args.only is None else (args.only,):
            nb = execute(HERE / name, cwd=cwd, env=env, env_root=demo)
            errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                      if o.get("output_type") == "error"]
            if errors:
                sys.stderr.write(f"{name}: {errors[0].get('ename')}: {errors[0].get('evalue')}\n")
                return 1
            nbformat.write(nb, HERE / name)
            size = (HERE / name).stat().st_size
            sys.stdout.write(f"{name}: executed, {size / 1e6:.2f} MB\n")
            if size > MAX_BYTES:
                sys.stderr.write(f"{name} is over {MAX_BYTES / 1e6} MB: show fewer or smaller figures\n")
                return 1
        shutil.rmtree(cwd / "figures", ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
