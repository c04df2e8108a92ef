"""What this installation can do: the optional parts, the hardware they use, and what to install.

:func:`run_checks` looks at each part that some command needs (torch and CUDA, FAISS on the CPU or
GPU, ``datasets`` for the default dataset, ``transformers`` for models with a Hugging Face tokenizer,
hyperscan and numba for the caption scan, Java and PySpark for the Spark engine, the fsspec
backends for ``s3://``/``gs://``/``abfs://`` caption paths, a Chromium for the browser test) and
returns one :class:`Check` per part: whether it works here, what it is (version, devices), what it
enables and, where it does not work, what to install. ``clipprobe doctor`` prints them; the errors
about a missing package point to it.

A check never raises: a package that is installed but fails to import is reported with its error.

Two depths. By default (``deep=False``, under two seconds) packages are found and their versions read
from their metadata, torch's CUDA build from its ``version.py`` and the GPUs from ``nvidia-smi -L``:
nothing heavy is imported (torch alone takes seconds, open_clip more). With ``deep=True``
(``clipprobe doctor --deep``) every package is imported and torch and FAISS are asked for their
devices, which also finds an installation that is present but broken.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
from typing import Callable

log = logging.getLogger(__name__)

# Status of a check: "ok" (works), "missing" (not installed or not found), "limited" (works, without
# an optional capability such as GPU support), "error" (installed but broken).
STATUSES = ("ok", "limited", "missing", "error")


@dataclasses.dataclass(frozen=True)
class Check:
    """One part of the installation.

    ``name``: what is checked; ``status``: one of :data:`STATUSES`; ``detail``: version, devices or
    the error; ``enables``: what it is for; ``fix``: what to do where it does not work ("" when ok);
    ``required``: whether the core commands (retrieve, report, index build) need it.
    """

    name: str
    status: str
    detail: str
    enables: str
    fix: str = ""
    required: bool = False

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "limited")


def _version(*distributions: str) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}".strip()[:200]


def _import_check(name: str, module: str, enables: str, fix: str, *, dists: tuple[str, ...] = (),
                  required: bool = False, do_import: bool = True) -> Check:
    """A package: installed (found), importable (imported when ``do_import``), its version."""
    if importlib.util.find_spec(module) is None:
        return Check(name, "missing", "not installed", enables, fix, required)
    version = _version(*(dists or (module,)))
    if do_import:
        try:
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - a broken installation is reported, not raised
            return Check(name, "error", f"installed{' ' + version if version else ''} but cannot be imported: "
                                        f"{_first_line(err)}", enables, fix, required)
    return Check(name, "ok", version or "installed", enables, "", required)


# --------------------------------------------------------------------------- the checks


def check_python() -> Check:
    from clipprobe import __version__

    return Check("python", "ok", f"Python {platform.python_version()} ({sys.executable}), clipprobe {__version__}, "
                                 f"{platform.system()} {platform.machine()}", "everything", required=True)


def _torch_build_cuda() -> str | None:
    """The CUDA version torch was built for, read from its ``version.py`` without importing torch."""
    spec = importlib.util.find_spec("torch")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        try:
            text = open(os.path.join(folder, "version.py"), encoding="utf-8").read()
        except OSError:
            continue
        m = re.search(r"^cuda\s*(?::[^=]*)?=\s*['\"]([^'\"]+)['\"]", text, re.M)
        return m.group(1) if m else None
    return None


def _nvidia_gpus() -> list[str] | None:
    """GPU names from ``nvidia-smi -L`` (None: no NVIDIA driver tool on PATH, or it failed)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return [m.group(1).strip() for m in re.finditer(r"^GPU \d+: (.*?)(?: \(UUID:.*)?$", out.stdout, re.M)]


def check_torch(deep: bool = True) -> Check:
    enables = "the models: embedding images and prompts (retrieve, report, index build, eat)"
    fix = "pip install torch torchvision (see pytorch.org for the build that matches your CUDA)"
    if importlib.util.find_spec("torch") is None:
        return Check("torch", "missing", "not installed", enables, fix, True)
    if not deep:
        return Check("torch", "ok", f"torch {_version('torch') or '(version unknown)'}", enables, "", True)
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return Check("torch", "error", f"cannot be imported: {_first_line(err)}", enables, fix, True)
    detail = f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads"
    return Check("torch", "ok", detail, enables, "", True)


def check_cuda(deep: bool = True) -> Check:
    enables = "embedding on a GPU (fp16), much faster than the CPU"
    if not deep:
        return _check_cuda_fast(enables)
    try:
        import torch
    except Exception as err:  # noqa: BLE001
        return Check("cuda", "missing", f"torch cannot be imported: {_first_line(err)}", enables, "install torch")
    try:
        if not torch.cuda.is_available():
            built = getattr(torch.version, "cuda", None)
            if built:   # nothing to install: this machine has no (visible) GPU
                return Check("cuda", "missing", f"no CUDA GPU visible (torch is built for CUDA {built}); embedding "
                                                "runs on the CPU", enables)
            return Check("cuda", "missing", "this torch has no CUDA support; embedding runs on the CPU", enables,
                         "on a machine with an NVIDIA GPU, install a CUDA build of torch (see pytorch.org)")
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception as err:  # noqa: BLE001
        return Check("cuda", "error", _first_line(err), enables, "check the NVIDIA driver (nvidia-smi)")
    return Check("cuda", "ok", f"CUDA {torch.version.cuda}, {len(names)} GPU(s): {', '.join(names)}", enables)


def _check_cuda_fast(enables: str) -> Check:
    if importlib.util.find_spec("torch") is None:
        return Check("cuda", "missing", "torch is not installed", enables, "install torch")
    built = _torch_build_cuda()
    gpus = _nvidia_gpus()
    if not gpus:
        where = "no NVIDIA GPU found (nvidia-smi)" if gpus is not None else "no NVIDIA driver (no nvidia-smi on PATH)"
        build = f"torch is built for CUDA {built}" if built else "this torch has no CUDA support"
        return Check("cuda", "missing", f"{where}; {build}; embedding runs on the CPU", enables)
    if not built:
        return Check("cuda", "missing", f"{len(gpus)} GPU(s) ({', '.join(gpus)}) but this torch has no CUDA support; "
                                        "embedding runs on the CPU", enables,
                     "install a CUDA build of torch (see pytorch.org)")
    return Check("cuda", "ok", f"CUDA {built} (torch build), {len(gpus)} GPU(s): {', '.join(gpus)}", enables)


def check_open_clip(deep: bool = True) -> Check:
    return _import_check("open_clip", "open_clip", "the model zoo (every --model form)",
                         "pip install 'open_clip_torch>=3.3,<4'", dists=("open_clip_torch",), required=True,
                         do_import=deep)


FAISS_DISTS = ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu")


def check_faiss(cuda_available: bool | None = None, deep: bool = True) -> Check:
    enables = "the index of face embeddings (retrieve, report, index build)"
    fix = "pip install 'clipprobe[cpu]' (or 'clipprobe[gpu]' on a CUDA machine; not both)"
    installed = [d for d in FAISS_DISTS if _version(d) is not None]
    if importlib.util.find_spec("faiss") is None:
        return Check("faiss", "missing", "not installed", enables, fix, True)
    if not deep:
        names = ", ".join(f"{d} {_version(d)}" for d in installed) or "faiss"
        if len(installed) > 1:
            return Check("faiss", "error", f"{names} are all installed: they install the same module and conflict",
                         enables, f"pip uninstall {' '.join(installed)}, then install one: {fix}", True)
        if any("gpu" in d for d in installed):
            return Check("faiss", "ok", f"{names}, GPU build", enables, "", True)
        if cuda_available:
            return Check("faiss", "limited", f"{names}, CPU search only (this machine has a CUDA GPU)", enables,
                         "for GPU search: pip uninstall faiss-cpu && pip install 'clipprobe[gpu]'", True)
        return Check("faiss", "ok", f"{names}, CPU search", enables, "", True)
    try:
        import faiss
    except Exception as err:  # noqa: BLE001
        return Check("faiss", "error", f"cannot be imported: {_first_line(err)}", enables, fix, True)
    names = ", ".join(f"{d} {_version(d)}" for d in installed) or f"faiss {getattr(faiss, '__version__', '?')}"
    if len(installed) > 1:
        return Check("faiss", "error", f"{names} are all installed: they install the same module and conflict",
                     enables, f"pip uninstall {' '.join(installed)}, then install one: {fix}", True)
    gpus = int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        return Check("faiss", "ok", f"{names}, GPU search on {gpus} GPU(s)", enables, "", True)
    if cuda_available:
        return Check("faiss", "limited", f"{names}, CPU search only (this machine has a CUDA GPU)", enables,
                     "for GPU search: pip uninstall faiss-cpu && pip install 'clipprobe[gpu]'", True)
    return Check("faiss", "ok", f"{names}, CPU search", enables, "", True)


def check_datasets(deep: bool = True) -> Check:
    return _import_check("datasets", "datasets",
                         "the default dataset (FairFace validation from Hugging Face) and hf: datasets",
                         "pip install 'clipprobe[hf]'", required=False, do_import=deep)


def check_transformers() -> Check:
    """transformers (and sentencepiece for SentencePiece vocabularies): not imported, it is slow to import."""
    enables = "models whose text tower uses a Hugging Face tokenizer (SigLIP, SigLIP 2, CLIPA, multilingual)"
    fix = "pip install 'clipprobe[hf-text]'"
    base = _import_check("transformers", "transformers", enables, fix, do_import=False)
    if not base.ok:
        return base
    if importlib.util.find_spec("sentencepiece") is None:
        return Check("transformers", "limited", f"transformers {base.detail}; sentencepiece not installed "
                                                "(some SigLIP and multilingual vocabularies need it)", enables, fix)
    return Check("transformers", "ok", f"transformers {base.detail}, sentencepiece {_version('sentencepiece')}",
                 enables)


def check_hyperscan(deep: bool = True) -> Check:
    return _import_check("hyperscan", "hyperscan",
                         "caption terms that are not plain tokens, non-ASCII terms, --matcher hyperscan",
                         "pip install hyperscan (wheels for Linux and macOS on x86-64 and arm64)", do_import=deep)


def check_numba(deep: bool = True) -> Check:
    return _import_check("numba", "numba", "the caption token pass of captions count (the fast path)",
                         "pip install numba", do_import=deep)


def check_pyspark() -> Check:
    return _import_check("pyspark", "pyspark", "captions count --engine spark", "pip install 'clipprobe[spark]'",
                         do_import=False)


def check_java() -> Check:
    enables = "the Spark engine (PySpark starts a Java virtual machine)"
    fix = "install a Java runtime (Java 17 or 21) and put it on PATH or set JAVA_HOME"
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return Check("java", "missing", "no java on PATH" + (f" (JAVA_HOME={home} has no bin/java)" if home else ""),
                     enables, fix)
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check("java", "error", f"{java}: {_first_line(err)}", enables, fix)
    text = (out.stderr or out.stdout).strip().splitlines()
    if out.returncode != 0:
        return Check("java", "error", f"{java} -version failed: {text[0] if text else out.returncode}", enables, fix)
    return Check("java", "ok", f"{text[0] if text else 'java'} ({java})", enables)


FSSPEC_BACKENDS = (("s3fs", "s3://", "s3"), ("gcsfs", "gs://", "gcs"), ("adlfs", "abfs:// and az://", "azure"))


def check_fsspec_backends() -> list[Check]:
    checks = []
    for module, scheme, extra in FSSPEC_BACKENDS:
        checks.append(_import_check(module, module, f"{scheme} caption paths (on the driver and every Spark "
                                                    f"executor)", f"pip install 'clipprobe[{extra}]'",
                                    do_import=False))
    return checks


CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def check_chromium() -> Check:
    enables = "the browser test of report.html (tests/test_htmlreport.py; not needed to use clipprobe)"
    found = next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)
    if found is None:
        return Check("chromium", "missing", "no chromium or chrome on PATH", enables,
                     "install chromium (e.g. apt-get install chromium) to run the browser test")
    return Check("chromium", "ok", found, enables)


def check_settings() -> Check:
    """Where caches are and whether Hub access is offline (information, never a failure)."""
    from clipprobe._io import default_cache_dir
    from clipprobe.hub import env_offline

    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    detail = (f"clipprobe cache {default_cache_dir()}, Hugging Face cache {hf_home}, "
              f"Hub access {'offline (HF_HUB_OFFLINE)' if env_offline() else 'online'}")
    return Check("settings", "ok", detail, "where downloads and embeddings are kept")


CHECKS: tuple[Callable[[], Check | list[Check]], ...] = (
    check_python, check_torch, check_cuda, check_open_clip, check_faiss, check_datasets, check_transformers,
    check_hyperscan, check_numba, check_pyspark, check_java, check_fsspec_backends, check_chromium,
    check_settings,
)


# the checks that import their package (or ask it for devices) only when deep
_DEEP = (check_torch, check_cuda, check_open_clip, check_datasets, check_hyperscan, check_numba)


def run_checks(*, deep: bool = False) -> list[Check]:
    """Every check, in the order of :data:`CHECKS`; a check that itself fails is reported as an error.

    ``deep=False`` (the default) imports nothing heavy: packages are found, not imported; ``deep=True``
    imports each one and asks torch and FAISS for their devices (seconds)."""
    checks: list[Check] = []
    cuda = None
    for fn in CHECKS:
        try:
            if fn is check_faiss:
                result = fn(cuda, deep=deep)
            else:
                result = fn(deep=deep) if fn in _DEEP else fn()
        except Exception as err:  # noqa: BLE001 - the doctor reports, it does not crash
            result = Check(fn.__name__.removeprefix("check_"), "error", _first_line(err), "")
        for check in result if isinstance(result, list) else [result]:
            checks.append(check)
            if check.name == "cuda":
                cuda = check.status == "ok"
    return checks


def to_dict(checks: list[Check]) -> list[dict]:
    """The JSON form: one object per check (``ok`` included)."""
    return [{**dataclasses.asdict(c), "ok": c.ok} for c in checks]


def fixes(checks: list[Check]) -> list[tuple[str, str]]:
    """(what to do, what it enables) for every check that is not ok or is limited, without repeats."""
    out: dict[str, str] = {}
    for c in checks:
        if c.fix and c.status != "ok":
            out.setdefault(c.fix, c.enables)
    return list(out.items())
