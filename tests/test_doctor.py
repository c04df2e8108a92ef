"""clipprobe doctor: what this installation can do, and what to install for the rest."""

from __future__ import annotations

import json
import sys

import pytest
from click.testing import CliRunner

from clipprobe import doctor
from clipprobe.cli.doctor import doctor as doctor_command

NAMES = ["python", "torch", "cuda", "open_clip", "faiss", "datasets", "transformers", "hyperscan", "numba",
         "pyspark", "java", "s3fs", "gcsfs", "adlfs", "chromium", "settings"]


@pytest.fixture(scope="module")
def checks():
    return doctor.run_checks()


def test_every_part_is_checked_once_with_a_status(checks):
    assert [c.name for c in checks] == NAMES
    assert all(c.status in doctor.STATUSES and c.detail and c.enables for c in checks)
    by_name = {c.name: c for c in checks}
    # What this test environment has (setup.cfg's cpu and test extras).
    for name in ("python", "torch", "open_clip", "datasets", "hyperscan", "numba", "pyspark"):
        assert by_name[name].ok, by_name[name]
    assert by_name["faiss"].ok and "faiss-cpu" in by_name["faiss"].detail
    assert {c.name for c in checks if c.required} == {"python", "torch", "open_clip", "faiss"}
    assert all(c.fix for c in checks if c.status in ("missing", "error") and c.name not in ("cuda",))


def test_a_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)   # as in an installation without it
    check = doctor.check_datasets()
    assert (check.status, check.detail, check.fix) == ("missing", "not installed", "pip install 'clipprobe[hf]'")
    monkeypatch.setitem(sys.modules, "transformers", None)
    check = doctor.check_transformers()
    assert check.status == "missing" and check.fix == "pip install 'clipprobe[hf-text]'"
    assert (check.fix, check.enables) in doctor.fixes([check])


def test_a_broken_package_is_reported_not_raised(tmp_path, monkeypatch):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("raise ImportError('libfoo.so.1: cannot open shared object')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    check = doctor._import_check("brokenpkg", "brokenpkg", "testing", "reinstall it")
    assert check.status == "error" and not check.ok
    assert check.detail == "installed but cannot be imported: ImportError: libfoo.so.1: cannot open shared object"


def test_both_faiss_packages_installed_is_a_conflict(monkeypatch):
    real = doctor._version
    monkeypatch.setattr(doctor, "_version",
                        lambda *d: {"faiss-cpu": "1.9", "faiss-gpu-cu12": "1.9"}.get(d[0]) if len(d) == 1 else real(*d))
    check = doctor.check_faiss(False)
    assert check.status == "error" and check.required
    assert check.detail == "faiss-cpu 1.9, faiss-gpu-cu12 1.9 are all installed: they install the same module and conflict"
    assert check.fix.startswith("pip uninstall faiss-cpu faiss-gpu-cu12, then install one:")


def test_faiss_without_gpu_on_a_cuda_machine_is_limited():
    import faiss

    if faiss.get_num_gpus():
        pytest.skip("this FAISS has GPU support")
    check = doctor.check_faiss(True)
    assert check.status == "limited" and check.ok
    assert check.fix == "for GPU search: pip uninstall faiss-cpu && pip install 'clipprobe[gpu]'"


def test_java_found_or_missing(monkeypatch, tmp_path):
    import shutil

    if shutil.which("java"):
        found = doctor.check_java()
        assert found.status == "ok" and "version" in found.detail
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = doctor.check_java()
    assert (missing.status, missing.detail) == ("missing", "no java on PATH")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert doctor.check_java().detail == f"no java on PATH (JAVA_HOME={tmp_path / 'jdk'} has no bin/java)"


def test_command_prints_every_check_and_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    result = CliRunner().invoke(doctor_command, [])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [ln.split()[1] for ln in lines[:len(NAMES)]] == NAMES
    assert any(ln.startswith("missing  transformers") for ln in lines)
    assert "to enable what is missing:" in lines
    assert "  pip install 'clipprobe[hf-text]'" in lines


def test_command_json_and_exit_status_when_a_core_part_is_missing(monkeypatch):
    result = CliRunner().invoke(doctor_command, ["--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == NAMES and all(set(r) >= {"status", "detail", "fix", "ok"} for r in rows)
    monkeypatch.setitem(sys.modules, "faiss", None)
    broken = CliRunner().invoke(doctor_command, [])
    assert broken.exit_code == 1
    assert "missing  faiss" in broken.output and "pip install 'clipprobe[cpu]'" in broken.output


@pytest.mark.gpu
def test_gpu_machine_sees_cuda_and_says_where_faiss_searches():
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    checks = {c.name: c for c in doctor.run_checks()}
    assert checks["cuda"].status == "ok" and torch.cuda.get_device_name(0) in checks["cuda"].detail
    assert checks["faiss"].status in ("ok", "limited")
    assert ("GPU search" in checks["faiss"].detail) != (checks["faiss"].status == "limited")


def test_every_extra_named_in_advice_exists_in_setup_cfg(checks):
    """The advice says pip install 'clipprobe[X]': X must be an extra of setup.cfg (a misspelt extra installs
    nothing, silently)."""
    import configparser
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    parser = configparser.ConfigParser()
    parser.read(root / "setup.cfg")
    extras = set(parser["options.extras_require"])
    named = set()
    for path in (root / "clipprobe").rglob("*.py"):
        named |= set(re.findall(r"clipprobe\[([A-Za-z0-9_-]+)\]", path.read_text(encoding="utf-8")))
    named |= {re.search(r"clipprobe\[([^\]]+)\]", c.fix).group(1) for c in checks if "clipprobe[" in c.fix}
    assert {"hf", "hf-text", "cpu", "gpu", "spark", "s3", "gcs", "azure"} <= named
    assert named <= extras, f"extras named but not in setup.cfg: {sorted(named - extras)}"


def test_fast_checks_read_what_the_imports_would_say(monkeypatch):
    """Without --deep, torch's version and CUDA build come from its files, the GPUs from nvidia-smi."""
    import torch

    fast, deep = doctor.check_torch(deep=False), doctor.check_torch(deep=True)
    assert fast.ok and deep.ok and fast.detail.startswith("torch ")
    assert torch.__version__.startswith(fast.detail.removeprefix("torch "))
    assert doctor._torch_build_cuda() == torch.version.cuda
    monkeypatch.setattr(doctor, "_nvidia_gpus", lambda: ["NVIDIA H100 80GB HBM3"])
    monkeypatch.setattr(doctor, "_torch_build_cuda", lambda: "12.4")
    check = doctor.check_cuda(deep=False)
    assert (check.status, check.detail) == ("ok", "CUDA 12.4 (torch build), 1 GPU(s): NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(doctor, "_torch_build_cuda", lambda: None)
    check = doctor.check_cuda(deep=False)
    assert check.status == "missing" and check.fix == "install a CUDA build of torch (see pytorch.org)"
    monkeypatch.setattr(doctor, "_nvidia_gpus", lambda: None)
    assert doctor.check_cuda(deep=False).detail.startswith("no NVIDIA driver (no nvidia-smi on PATH)")


def test_nvidia_smi_listing_is_parsed(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1234)'\n"
                   "echo 'GPU 1: NVIDIA A100-SXM4-40GB (UUID: GPU-5678)'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert doctor._nvidia_gpus() == ["NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"]


def test_deep_command_imports_and_says_so():
    result = CliRunner().invoke(doctor_command, ["--deep"])
    assert result.exit_code == 0, result.output
    assert "--deep` imports them" not in result.output
    assert "CPU threads" in result.output   # torch was imported and asked
