"""The README's two set-up commands, run one after the other in one fresh clone, give a working checkout.

The first installs clipprobe and runs the demo (the compiled caption pass runs there); the second makes an
editable install in the same ``.venv``. Nothing of the first may survive into the second: files written
into the installed package (numba's cache files once were) stay behind when pip uninstalls it and make
``site-packages/clipprobe`` a namespace package that shadows the editable install in any process whose
working directory is not the repository root. The walkthrough notebook test is run from such a folder.

Slow: installs the dependencies into a new virtual environment (from pip's index or cache) and runs the
demo; several minutes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTEST_SUFFIX = " && .venv/bin/python -m pytest -q"

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not (REPO / ".git").exists() or shutil.which("git") is None,
                                 reason="needs the git repository"),
              pytest.mark.skipif(os.name == "nt", reason="the README's commands are POSIX shell")]


def readme_set_up_commands() -> tuple[str, str]:
    """The README's install-and-demo command and its install-and-test command, as written there."""
    lines = [line.strip() for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()]
    commands = [line for line in lines if line.startswith("python3 -m venv .venv")]
    demo = [c for c in commands if "clipprobe demo" in c]
    tests = [c for c in commands if " -e " in c and c.endswith(PYTEST_SUFFIX)]
    assert demo and tests, f"README set-up commands not found: {commands}"
    return demo[0], tests[0]


def run(command: str, cwd: Path, env: dict, timeout: float) -> None:
    r = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=cwd, env=env, capture_output=True,
                       text=True, timeout=timeout)
    assert r.returncode == 0, f"{command}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"


def test_readme_commands_in_sequence_in_one_clone(tmp_path):
    first, second = readme_set_up_commands()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(clone)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME") and not k.startswith("NUMBA_")}
    env.update(CLIPPROBE_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.pop("PYTHONDONTWRITEBYTECODE", None)            # bytecode as an ordinary install writes it

    run(first, clone, env, timeout=3600)                          # install, then the demo (compiles the pass)
    site = next((clone / ".venv" / "lib").glob("python3*/site-packages"))
    installed = site / "clipprobe"
    assert installed.is_dir() and (clone / "demo" / "validation.json").exists()
    assert not [p for p in installed.rglob("*") if p.suffix in (".nbi", ".nbc")]      # nothing compiled into it

    run(second.removesuffix(PYTEST_SUFFIX), clone, env, timeout=3600)                 # editable install over it
    assert not installed.exists(), sorted(str(p.relative_to(site)) for p in installed.rglob("*"))[:20]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-c",
                            "import clipprobe; print(clipprobe.__file__, clipprobe.__version__)"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.startswith(str(clone / "clipprobe" / "__init__.py")), probe.stderr
    test = clone / "tests" / "test_demo.py"
    r = subprocess.run([str(clone / ".venv" / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "-m", "slow", f"{test}::test_walkthrough_notebook_runs"], cwd=elsewhere, env=env, capture_output=True,
                       text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
