"""Generated LAION-schema parquet for tests and benchmarks (no real data needed).

:func:`realistic_captions` writes captions of web-alt-text shape (60-100
characters on average) from a filler vocabulary, with taxonomy words and
lexicon terms inserted at given rates, plus the usual noise of scraped text
(capitalisation, punctuation, possessives, words that contain a term such as
"manager" or "woman"). :func:`write_laion_parquet` stores them with the
columns of the LAION metadata files.
"""

from __future__ import annotations

from typing import Sequence

FILLER = (
    "photo stock image vector illustration of a the with and on in for at new design background isolated "
    "blue red green house home garden beach summer winter sale free shipping set pack size large small "
    "vintage modern wall art print poster canvas shirt dress shoes bag gold silver table chair sofa kitchen "
    "wedding party birthday christmas holiday city street night day sunset mountain lake river tree flower "
    "cat dog car truck bike book cover logo icon pattern texture seamless abstract portrait close up view "
    "manufacturer management germany romance human cowboy womanhood superman mankind boyhood "
    "white black hd 4k jpg png free download premium quality best cheap online buy 2019 2020 edition"
).split()


def realistic_captions(n: int, words: Sequence[str], terms: Sequence[str], *, word_rate: float = 0.25,
                       term_rate: float = 0.2, null_rate: float = 0.002, seed: int = 0) -> list[str | None]:
    """``n`` captions; each gets a taxonomy word with probability ``word_rate`` and a group term with ``term_rate``."""
    import numpy as np

    rng = np.random.default_rng(seed)
    filler = np.asarray(FILLER, dtype=object)
    words = np.asarray(list(words), dtype=object)
    terms = np.asarray(list(terms), dtype=object)
    n_tokens = rng.integers(9, 17, size=n)
    tokens = filler[rng.integers(0, len(filler), size=int(n_tokens.sum()))]
    has_word = rng.random(n) < word_rate
    has_term = rng.random(n) < term_rate
    word_pick = words[rng.integers(0, len(words), size=n)] if len(words) else None
    term_pick = terms[rng.integers(0, len(terms), size=n)] if len(terms) else None
    style = rng.integers(0, 10, size=n)
    pos = rng.random((n, 2))
    nulls = rng.random(n) < null_rate
    out: list[str | None] = []
    start = 0
    for i in range(n):
        toks = list(tokens[start:start + n_tokens[i]])
        start += n_tokens[i]
        if nulls[i]:
            out.append(None)
            continue
        if has_word[i] and word_pick is not None:
            toks.insert(int(pos[i, 0] * (len(toks) + 1)), word_pick[i])
        if has_term[i] and term_pick is not None:
            term = term_pick[i] + ("'s" if style[i] == 3 else "")
            toks.insert(int(pos[i, 1] * (len(toks) + 1)), term)
        text = " ".join(toks)
        if style[i] < 4:
            text = text.capitalize()
        elif style[i] == 4:
            text = text.title()
        elif style[i] == 5:
            text = text.replace(" ", ", ", 2) + "."
        elif style[i] == 6:
            text = text.upper()[:40] + text[40:]
        out.append(text)
    return out


def write_laion_parquet(path, captions: Sequence[str | None], *, row_group_size: int = 100_000, seed: int = 0,
                        text_column: str = "TEXT") -> None:
    """Write ``captions`` with the LAION metadata columns (URL, TEXT, WIDTH, HEIGHT, similarity, ...)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipprobe._io import atomic_path

    rng = np.random.default_rng(seed)
    n = len(captions)
    table = pa.table({
        "SAMPLE_ID": pa.array(np.arange(n, dtype=np.int64)),
        "URL": pa.array([f"https://example.com/img/{seed}/{i}.jpg" for i in range(n)]),
        text_column: pa.array(list(captions), type=pa.string()),
        "WIDTH": pa.array(rng.integers(64, 2048, size=n, dtype=np.int64)),
        "HEIGHT": pa.array(rng.integers(64, 2048, size=n, dtype=np.int64)),
        "LICENSE": pa.array(["?"] * n),
        "NSFW": pa.array(["UNLIKELY"] * n),
        "similarity": pa.array(rng.uniform(0.28, 0.45, size=n)),
    })
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, row_group_size=row_group_size)
