"""The kernel warm-up that runs before the tests (tests/_warm.py) compiles every compiled kernel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
from clipprobe import _jitcache
cached = []
original = _jitcache.enable_cache
def recording(dispatcher):
    cached.append(dispatcher.py_func.__module__.rsplit(".", 1)[1] + "." + dispatcher.py_func.__name__)
    return original(dispatcher)
_jitcache.enable_cache = recording
from _warm import warm_kernels
warm_kernels()
print(json.dumps({{"cached": cached, "folder": str(_jitcache.cache_dir())}}))
"""


@pytest.mark.slow
def test_warm_up_compiles_every_kernel_module_into_a_fresh_cache(tmp_path):
    env = {**os.environ, "CLIPPROBE_CACHE": str(tmp_path / "cache")}
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(ROOT / "tests"))], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    written = {p.name.split("-")[0] for p in Path(out["folder"]).rglob("*.nbi")}
    # every kernel given a cache folder during the warm-up was compiled and stored there
    assert set(out["cached"]) <= written, set(out["cached"]) - written
    # every module of the package with a compiled kernel is warmed
    kernel_modules = {p.stem for p in (ROOT / "clipprobe").rglob("*.py")
                      if "njit" in p.read_text(encoding="utf-8") and p.stem != "_jitcache"}
    assert kernel_modules == {name.split(".")[0] for name in written}
