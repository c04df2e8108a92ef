"""Where numba keeps compiled functions: a cache folder of clipprobe's own, never the package.

``njit(cache=True)`` makes numba write its index and object files
(``__pycache__/*.nbi``, ``*.nbc``) next to the module's source whenever that
folder is writable. For an installed clipprobe that is ``site-packages``: an
installed package may be read-only, and files that pip did not install stay
behind when it uninstalls clipprobe (an empty ``clipprobe/`` with a
``__pycache__`` left in ``site-packages`` is a namespace package that shadows a
later editable install).

:func:`enable_cache` gives one dispatcher a cache in
``CACHE/numba/<clipprobe version>/`` instead (``CACHE``: ``$CLIPPROBE_CACHE``,
``$XDG_CACHE_HOME/clipprobe`` or ``~/.cache/clipprobe``, as for embeddings). It
replaces that dispatcher's cache object only: numba's configuration, its other
functions and ``os.environ`` stay as they were. Numba checks its own stamps on
top (the source file's hash, the function's bytecode, the CPU and the numba
version), so a stale entry is never loaded. Where the folder cannot be created
or written, the pass is compiled in each process (seconds) and nothing is
written anywhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading

log = logging.getLogger(__name__)


def cache_dir():
    """The folder numba's files for this version of clipprobe go to."""
    from clipprobe import __version__
    from clipprobe._io import default_cache_dir

    return default_cache_dir() / "numba" / __version__


def _cache_class():
    """A numba ``FunctionCache`` whose only locator is :func:`cache_dir` (classes built on first use)."""
    from numba.core.caching import (CompileResultCacheImpl, FunctionCache, _CacheLocator,
                                    _SourceFileBackedLocatorMixin)

    class ClipprobeCacheLocator(_SourceFileBackedLocatorMixin, _CacheLocator):
        """numba's files of one source file in ``cache_dir()/<folder name>_<hash of the folder path>``."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(str(cache_dir()), self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

    class ClipprobeCacheImpl(CompileResultCacheImpl):
        _locator_classes = [ClipprobeCacheLocator]

    class ClipprobeFunctionCache(FunctionCache):
        _impl_class = ClipprobeCacheImpl

    return ClipprobeFunctionCache


def enable_cache(dispatcher) -> bool:
    """Cache ``dispatcher`` (an ``njit`` function made without ``cache=True``) in :func:`cache_dir`.

    Returns whether it is cached; False (compiled per process, logged) where the folder is not usable.
    """
    try:
        dispatcher._cache = _cache_class()(dispatcher.py_func)
    except (RuntimeError, OSError) as err:    # numba: "no locator available" when the folder is not writable
        log.info("compiled function %s not cached (%s): compiling it in each process", dispatcher.py_func.__name__, err)
        return False
    return True


_KERNELS: dict[str, object] = {}        # module name -> the module, or None where numba is missing
_KERNELS_LOCK = threading.Lock()


def optional_kernel(module: str, *functions: str):
    """The compiled-kernel module ``module`` with :func:`enable_cache` given to each of its ``functions``, once
    per process (threads may ask at once), or None where it cannot be imported (numba not installed: the
    caller takes its numpy path, which gives the same results)."""
    with _KERNELS_LOCK:
        if module not in _KERNELS:
            try:
                mod = importlib.import_module(module)
            except ImportError:
                mod = None
            else:
                for name in functions:
                    enable_cache(getattr(mod, name))
            _KERNELS[module] = mod
        return _KERNELS[module]
