"""Atomic file writes: a reader never sees a half-written file.

Every writer goes to a temporary file in the destination's folder and then
``os.replace``-s it into place, so an interrupted run leaves either the old file
or the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    ``suffix`` lets writers that insist on an extension (``np.save`` appends
    ``.npy``) keep it. On an exception the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_parquet(path: str | os.PathLike, df) -> None:
    """Write a pandas DataFrame to parquet atomically (no index column)."""
    with atomic_path(path, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)


def write_npy(path: str | os.PathLike, array) -> None:
    import numpy as np

    with atomic_path(path, suffix=".npy") as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array, allow_pickle=False)


def read_npy(path: str | os.PathLike):
    import numpy as np

    return np.load(path, allow_pickle=False)


def _json_default(obj: Any):
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


ENV_CACHE = "CLIPPROBE_CACHE"


def default_cache_dir() -> Path:
    """clipprobe's cache folder: ``$CLIPPROBE_CACHE``, else ``$XDG_CACHE_HOME/clipprobe``, else
    ``~/.cache/clipprobe``. Never inside the installed package."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "clipprobe"


def read_mapping(path: str | os.PathLike, *, what: str) -> Any:
    """Read a YAML or JSON data file (by suffix; YAML with ``safe_load``) and return its content.

    ``what`` names the kind of file in the errors: "{what} {path} does not exist" and
    "{what} {path} could not be read: {why}" (both :class:`clipprobe.errors.DataError`).
    """
    from clipprobe.errors import DataError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{what} {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            return json.loads(text)
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise DataError(f"{what} {path} could not be read: {' '.join(str(err).split())}") from None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{what} {path} could not be read: {str(err).splitlines()[0]}") from None
