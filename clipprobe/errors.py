"""Exceptions that carry a user-facing message and an exit code.

The CLI turns any :class:`ClipprobeError` into a one-line message on stderr and
its ``exit_code`` (1 for bad input or a failed step, 2 for usage errors), with
no traceback. Library code raises these and never prints.

:func:`printable` is the one escaping of text from users' files (names, captions,
paths) for a terminal: the CLI applies it to what it prints, to its log lines and
to these messages.
"""

from __future__ import annotations

import difflib
from typing import Iterable


# Characters a terminal acts on instead of showing (C0 and C1 controls, DEL: escape sequences, cursor
# moves, bells, line breaks) and the Unicode controls that reorder or hide text (bidi embeddings,
# overrides, isolates, the Arabic letter mark).
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def printable(text) -> str:
    """``text`` for a terminal: controls and bidi controls written as visible escapes (``\\x1b``,
    ``\\x0a``, ``\\u202e``), everything else as it is. Names, captions and paths from users' files may
    hold anything: a window title, colours, or a line break that forges a line of output."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        cp = ord(ch)
        if cp < 0x20 or 0x7F <= cp < 0xA0:
            out.append(f"\\x{cp:02x}")
        elif ch in _BIDI:
            out.append(f"\\u{cp:04x}")
        else:
            out.append(ch)
    return "".join(out)


class ClipprobeError(Exception):
    """An error a person can act on. ``str(err)`` is the whole message."""

    exit_code = 1


class UsageError(ClipprobeError):
    """Wrong combination or form of options (exit code 2, like click)."""

    exit_code = 2


class DataError(ClipprobeError):
    """A data file (label CSV, taxonomy, parquet, cache) is missing or malformed."""


class ModelError(ClipprobeError):
    """A model spec cannot be parsed or its weights cannot be loaded."""


def did_you_mean(value: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'a', 'b'?)"`` for close matches, or ``""``."""
    choices = list(choices)
    close = difflib.get_close_matches(value, choices, n=n, cutoff=0.6)
    if not close:
        lowered = {c.lower(): c for c in choices}
        close = [lowered[c] for c in difflib.get_close_matches(value.lower(), list(lowered), n=n, cutoff=0.6)]
    if not close:
        return ""
    return " (did you mean " + ", ".join(repr(c) for c in close) + "?)"


def one_of(value: str, choices: Iterable[str], what: str) -> ClipprobeError:
    """Build the error for a value that is not among ``choices``."""
    choices = list(choices)
    shown = ", ".join(repr(c) for c in choices[:20])
    more = f" and {len(choices) - 20} more" if len(choices) > 20 else ""
    return ClipprobeError(f"unknown {what} {value!r}{did_you_mean(value, choices)}; valid: {shown}{more}")
