"""The compiled token pass is cached in clipprobe's cache folder, never next to the installed modules."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba")

import clipprobe
from clipprobe._jitcache import cache_dir, enable_cache

MODULE = """
from numba import njit

@njit
def twice(x):
    return 2 * x
"""

COMPILE = """
import json, os
from clipprobe.captions.matching import Matcher
from clipprobe.captions.tokens import TokenMatcher, _kernel
TokenMatcher(Matcher(["man", "middle eastern"])).warm_up()
stats = _kernel().stats
print(json.dumps({"path": stats.cache_path, "hits": sum(stats.cache_hits.values()),
                  "misses": sum(stats.cache_misses.values())}))
"""


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_enabled_cache_writes_only_to_the_clipprobe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPPROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("NUMBA_CACHE_LOCATOR_CLASSES", raising=False)
    package = tmp_path / "installed"
    package.mkdir()
    (package / "kernels.py").write_text(MODULE)
    for name, hits, misses in (("kernels_first", 0, 1), ("kernels_again", 1, 0)):   # a second process, as it were
        twice = _load(package / "kernels.py", name).twice
        assert enable_cache(twice)
        assert twice(21) == 42
        assert (sum(twice.stats.cache_hits.values()), sum(twice.stats.cache_misses.values())) == (hits, misses)
    assert _files(package) == {"kernels.py"}                     # nothing next to the module
    assert Path(twice.stats.cache_path).parent == tmp_path / "cache" / "numba" / clipprobe.__version__
    assert {Path(f).suffix for f in _files(tmp_path / "cache")} == {".nbi", ".nbc"}


def test_unusable_cache_folder_compiles_in_process_and_writes_nothing(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("CLIPPROBE_CACHE", str(blocker))
    monkeypatch.delenv("NUMBA_CACHE_LOCATOR_CLASSES", raising=False)
    package = tmp_path / "installed"
    package.mkdir()
    (package / "kernels.py").write_text(MODULE)
    twice = _load(package / "kernels.py", "kernels_blocked").twice
    assert not enable_cache(twice)
    assert twice(4) == 8
    assert _files(package) == {"kernels.py"} and blocker.is_file()


def test_token_pass_is_cached_in_the_clipprobe_cache_and_numba_settings_stay():
    import numba

    environ = dict(os.environ)
    numba_cache_dir = numba.config.CACHE_DIR
    from clipprobe.captions.tokens import _kernel

    kernel = _kernel()
    assert Path(kernel.stats.cache_path).parent == cache_dir()
    assert not Path(kernel.stats.cache_path).is_relative_to(Path(clipprobe.__file__).parent)
    assert dict(os.environ) == environ and numba.config.CACHE_DIR == numba_cache_dir


@pytest.mark.slow   # compiles the pass twice in fresh processes (~10 s each)
def test_installed_copy_of_the_package_stays_as_installed(tmp_path):
    # a copy of the package as pip installs it (bytecode compiled at install time)
    site = tmp_path / "site-packages"
    shutil.copytree(Path(clipprobe.__file__).parent, site / "clipprobe",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(site / "clipprobe")], check=True)
    before = _files(site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    env.update(PYTHONPATH=str(site), CLIPPROBE_CACHE=str(tmp_path / "cache"))
    runs = []
    for _ in range(2):
        out = subprocess.run([sys.executable, "-c", COMPILE], env=env, capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    assert _files(site) == before                                   # nothing written next to the modules
    assert Path(runs[0]["path"]).parent == tmp_path / "cache" / "numba" / clipprobe.__version__
    assert (runs[0]["misses"], runs[1]["hits"], runs[1]["misses"]) == (1, 1, 0)   # the second process loads it
