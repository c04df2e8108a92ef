"""The data folders and every subpackage end up in the installed package."""

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_packages():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return {p.strip() for p in cfg["options"]["packages"].split() if p.strip()}


def test_every_package_is_listed_in_setup_cfg():
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clipprobe").rglob("__init__.py")}
    assert found <= _declared_packages(), f"missing from setup.cfg packages: {sorted(found - _declared_packages())}"


def test_wheel_contains_data(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.fail(r.stderr[-2000:])
    wheel = next(tmp_path.glob("clipprobe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ["clipprobe/data/taxonomy/sobit.json", "clipprobe/data/taxonomy/sobit-core.json",
                     "clipprobe/data/prompts/default.yaml", "clipprobe/data/prompts/ensemble.yaml",
                     "clipprobe/data/prompts/neutral.yaml", "clipprobe/data/prompts/attributes/gender.yaml",
                     "clipprobe/cli/__init__.py", "clipprobe/models/open_clip_catalog.json"]:
        assert required in names, required
    shipped = [p.relative_to(ROOT) for p in (ROOT / "taxonomy").glob("*.yaml")]
    for p in shipped:
        assert f"clipprobe/data/taxonomy/{p.name}" in names
    weights = [p for p in (ROOT / "clipprobe/world/weights").glob("*") if p.suffix in (".safetensors", ".json")]
    for p in weights:
        assert f"clipprobe/world/weights/{p.name}" in names
    zoo = list((ROOT / "clipprobe/models/zoo_data").iterdir())
    assert len(zoo) >= 8
    for p in zoo:
        assert f"clipprobe/models/zoo_data/{p.name}" in names
