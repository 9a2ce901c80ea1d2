"""Text read from files, made safe to show: control characters escaped.

A checkpoint's model name or provenance, a scan's description, a study name: anything read
from a file may hold terminal escape sequences (``\\x1b[2J`` clears the screen, OSC 52 writes
the clipboard), carriage returns that overwrite what was printed, or bidirectional overrides
that show text in another order than it is. Front ends pass such text through
:func:`printable` before printing it or putting it in a label.
"""

from __future__ import annotations

import unicodedata

# Unicode categories that draw nothing but change how text around them is shown:
# Cc (C0/C1 controls, DEL), Cf (format: bidi overrides, zero-width joiners), Zl/Zp (line and
# paragraph separators), Cs (lone surrogates, which cannot even be encoded).
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(text: object, *, max_len: int | None = None) -> str:
    """``text`` (``str()`` of anything) with every control or format character escaped.

    Escapes look like Python's (``\\x1b``, ``\\u202e``), so the text stays readable and the
    escape is visible instead of acting. Ordinary spaces and every printable character of
    any script are kept as they are.

    Args:
        text: what to show; non-strings are converted with ``str``.
        max_len: cut the result to this many characters (ending in "…"), if given.
    """
    text = str(text)
    if any(unicodedata.category(ch) in _UNSAFE_CATEGORIES for ch in text):
        text = "".join(_escape(ch) if unicodedata.category(ch) in _UNSAFE_CATEGORIES else ch for ch in text)
    if max_len is not None and len(text) > max_len:
        text = text[: max(0, max_len - 1)] + "…"
    return text


def _escape(ch: str) -> str:
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"
