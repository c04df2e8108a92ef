"""Reading a folder written by ``clipprobe captions count``: its co-occurrence table and one word's cells."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clipprobe.errors import DataError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

ERR_NO_COUNTS = "caption counts folder {path} has no cooccurrence.parquet (write it with `clipprobe captions count`)"
ERR_NO_WORD = "word {word!r} is not in caption counts folder {path}{hint}"


def read_counts(counts_dir) -> Any:
    """The ``cooccurrence.parquet`` table of a ``captions count`` folder."""
    import pandas as pd

    path = Path(counts_dir) / "cooccurrence.parquet"
    if not path.is_file():
        raise DataError(ERR_NO_COUNTS.format(path=counts_dir))
    return pd.read_parquet(path)


@dataclasses.dataclass(frozen=True)
class WordCounts:
    """One word's rows of a counts folder (``cells``: one per group) and its sample captions (or None)."""

    word: str
    cells: "pd.DataFrame"
    samples: "pd.DataFrame | None"


def word_counts(counts_dir, word: str, *, attribute: str | None = None) -> WordCounts:
    """The cells and samples of ``word`` (matched case-insensitively) in a counts folder."""
    import pandas as pd

    path = Path(counts_dir)
    table = read_counts(path)
    words = list(dict.fromkeys(table["word"]))
    match = [w for w in words if w.lower() == str(word).lower()]
    if not match:
        raise DataError(ERR_NO_WORD.format(word=word, path=path, hint=did_you_mean(str(word), words)))
    cells = table[table["word"] == match[0]]
    if attribute:
        cells = cells[cells["attribute"] == attribute]
    samples = None
    if (path / "samples.parquet").is_file():
        samples = pd.read_parquet(path / "samples.parquet")
        samples = samples[samples["word"] == match[0]]
    return WordCounts(word=match[0], cells=cells, samples=samples)
