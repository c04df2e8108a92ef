"""Shared fixtures: a tiny real open_clip model, and no network for any test.

HF_HUB_OFFLINE is set here, before any test module imports open_clip or
huggingface_hub, so a test that would otherwise reach the Hub fails at once.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def world_cache(tmp_path_factory):
    """One folder of trained world models per test run (CI sets CLIPPROBE_WORLD_CACHE for all its
    steps), so that a world with the same configuration is trained once."""
    from clipprobe.world.train import CACHE_ENV

    if not os.environ.get(CACHE_ENV):
        base = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):     # parallel workers (pytest -n) share one folder
            base = base.parent
        folder = base / "worlds"
        folder.mkdir(parents=True, exist_ok=True)
        os.environ[CACHE_ENV] = str(folder)
    return os.environ[CACHE_ENV]


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(config_json_path, safetensors_weights_path, arch_name) of a tiny random CLIP.

    Load it as ``load_model(f"{arch}:{weights}", model_config=config, device="cpu")``.
    """
    from tinyclip import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("tinyclip"))


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model_files):
    """The tiny model loaded on CPU (fp32) through the same path as real weights."""
    from clipprobe.models import load_model

    config, weights, arch = tiny_model_files
    return load_model(f"{arch}:{weights}", model_config=str(config), device="cpu")


# --------------------------------------------------------------------------- the default suite's time budget
# With CLIPPROBE_MAX_TEST_SECONDS set (CI sets 10), a test of the default suite whose setup, call and
# teardown together take longer fails the run: it is made faster or marked slow.
_SLOW_IDS: set[str] = set()
_SECONDS: dict[str, float] = {}


_WARMED: dict[str, float] = {}


def pytest_configure(config):
    # With the limit on, compile every kernel once before the first test (in the main process, before
    # parallel workers start; they load the compiled kernels from the cache folder): tests/_warm.py.
    if os.environ.get("CLIPPROBE_MAX_TEST_SECONDS") and not os.environ.get("PYTEST_XDIST_WORKER"):
        import sys
        from pathlib import Path

        sys.path.insert(0, str(Path(__file__).parent))
        from _warm import warm_kernels

        _WARMED.update(warm_kernels())


def pytest_terminal_summary(terminalreporter):
    if _WARMED:
        terminalreporter.write_line("compiled kernels before the tests (s): "
                                    + ", ".join(f"{k} {v}" for k, v in _WARMED.items()))


def pytest_collection_modifyitems(config, items):
    _SLOW_IDS.update(item.nodeid for item in items if item.get_closest_marker("slow"))


def pytest_runtest_logreport(report):
    if report.nodeid not in _SLOW_IDS:
        _SECONDS[report.nodeid] = _SECONDS.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session, exitstatus):
    limit = os.environ.get("CLIPPROBE_MAX_TEST_SECONDS")
    if not limit:
        return
    over = sorted(((s, n) for n, s in _SECONDS.items() if s > float(limit)), reverse=True)
    if over:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = [f"{len(over)} test(s) of the default suite took over {limit} s (mark them slow or make them faster):"]
        lines += [f"  {s:6.1f} s  {n}" for s, n in over]
        if reporter is not None:
            reporter.write_line("\n".join(lines), red=True)
        if session.exitstatus == 0:
            session.exitstatus = 1
