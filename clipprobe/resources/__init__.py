"""Data that drives a run: taxonomies of words, prompt templates, caption lexicons (and association-test stimuli).

Each kind of resource has one :class:`Registry`, in the spirit of open_clip's model configs: the
shipped files of a data folder behind ``names()`` / ``get()``, extended with a user's own file
(``get(path)`` reads any file; ``add(path)`` makes it known by name for the rest of the process).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Sequence, TypeVar

from clipprobe.errors import ClipprobeError, DataError, did_you_mean

T = TypeVar("T")

MSG_UNKNOWN = "unknown {kind} {name!r}{hint}; valid names: {names}, or a path to {paths}"
MSG_ADD_MISSING = "{kind} file {path} does not exist"


@dataclasses.dataclass
class Registry(Generic[T]):
    """Named data files of one kind: the shipped ones in ``folder()``, plus any added with :meth:`add`.

    ``loader`` reads and validates one file; ``suffixes`` are the file types of the kind (a name is
    the file's stem); ``paths`` describes them for the error message.
    """

    kind: str
    folder: Callable[[], Path]
    suffixes: tuple[str, ...]
    loader: Callable[[Path], T]
    default: str
    paths: str
    _added: dict[str, Path] = dataclasses.field(default_factory=dict)

    def _shipped(self) -> dict[str, Path]:
        folder = self.folder()
        if not folder.is_dir():
            return {}
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.is_file() and p.suffix in self.suffixes:
                found.setdefault(p.stem, p)
        return found

    def names(self) -> list[str]:
        """Every known name: shipped files first, then the added ones, sorted within each."""
        shipped = self._shipped()
        return sorted(shipped) + sorted(n for n in self._added if n not in shipped)

    def path(self, name: str) -> Path | None:
        """The file behind a name, or None."""
        return self._added.get(name) or self._shipped().get(name)

    def add(self, path: str | Path, name: str | None = None) -> str:
        """Make a user's file known by ``name`` (default: its stem) after checking it loads; returns the name."""
        path = Path(path).expanduser()
        if not path.is_file():
            raise ClipprobeError(MSG_ADD_MISSING.format(kind=self.kind, path=path))
        self.loader(path)
        key = name or path.stem
        self._added[key] = path
        return key

    def file(self, name_or_path: str | Path | None = None) -> Path:
        """The file :meth:`get` reads for a name (default :attr:`default`) or a path (not read here)."""
        text = str(name_or_path) if name_or_path is not None else self.default
        found = self.path(text)
        return found if found is not None else Path(text).expanduser()

    def is_path(self, text: str) -> bool:
        """Whether ``text`` names a file rather than a registered name."""
        p = Path(text).expanduser()
        return p.exists() or "/" in text or "\\" in text or p.suffix in self.suffixes

    def get(self, name_or_path: str | Path | None = None) -> T:
        """Load a resource by name (default :attr:`default`) or a user's file by path."""
        text = str(name_or_path) if name_or_path is not None else self.default
        found = self.path(text)
        if found is not None:
            return self.loader(found)
        if self.is_path(text):
            return self.loader(Path(text).expanduser())
        names = self.names()
        raise ClipprobeError(MSG_UNKNOWN.format(kind=self.kind, name=text, hint=did_you_mean(text, names),
                                                names=", ".join(repr(n) for n in names), paths=self.paths))


def read_data_mapping(path: str | Path, *, what: str, keys: Sequence[str], not_mapping: str,
                      unknown_key: str) -> Mapping[str, Any]:
    """A YAML/JSON data file whose top level is a mapping with only ``keys``.

    ``what`` names the file in read errors ("taxonomy file"); ``not_mapping`` and ``unknown_key`` are the
    caller's message templates (fields ``path``; ``path``, ``key`` and ``hint``).
    """
    from clipprobe._io import Bounded, read_mapping, shorten

    data = read_mapping(path, what=what)
    if not isinstance(data, Mapping):
        raise DataError(not_mapping.format(path=path))
    for key in data:
        if key not in keys:
            raise DataError(unknown_key.format(path=path, key=Bounded(key),
                                               hint=did_you_mean(shorten(str(key), 60), keys)))
    return data
