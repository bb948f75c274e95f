"""Unicode folding shared by the checks: look-alike characters to ASCII, with a map back to the original text.

Rules that look for phrases must not be fooled by ``ign\\u200bore`` (a zero-width space inside a
word), ``іgnore`` (Cyrillic і) or ``ｉｇｎｏｒｅ`` (full-width letters). :func:`fold` therefore builds a
*folded* copy of a text for matching — hidden characters dropped, NFKC applied, letters of other
scripts that look like ASCII letters replaced by them — and remembers for each folded character
the original character it came from, so every span a rule finds is reported in the original text.

Look-alikes come from the Unicode confusables data shipped by ``confusable_homoglyphs`` (MIT). Letters
of the Latin script itself (German umlauts, ``ß``) are kept as they are in :func:`fold`, so German
phrases still match; :func:`skeleton` (used for names) goes further and folds every character it can
to ASCII.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from confusable_homoglyphs import categories, confusables

from .findings import is_hidden_char

__all__ = ["Folded", "fold", "latin_lookalike", "script_of", "skeleton"]

# ASCII characters that read as another ASCII character (UTS #39 folds these as well).
_ASCII_LOOKALIKES = {"0": "o", "1": "l"}
_SEPARATORS = str.maketrans("", "", "_-./ :")


@lru_cache(maxsize=4096)
def script_of(ch: str) -> str:
    """The Unicode script alias of ``ch`` as ``confusable_homoglyphs`` names it (LATIN, CYRILLIC, COMMON, …)."""
    try:
        return categories.alias(ch)
    except (KeyError, IndexError, ValueError):  # pragma: no cover - unassigned code points
        return "UNKNOWN"


@lru_cache(maxsize=4096)
def latin_lookalike(ch: str) -> str | None:
    """The ASCII letter or digit ``ch`` can be mistaken for (``"а"`` → ``"a"``), or None."""
    if ch.isascii():
        return None
    found = confusables.is_confusable(ch, greedy=True)
    if not found:
        return None
    for entry in found:
        if entry.get("character") != ch:
            continue
        for glyph in entry.get("homoglyphs", ()):
            target = glyph.get("c", "")
            if len(target) == 1 and target.isascii() and target.isalnum():
                return target
    return None


@dataclass(frozen=True)
class Folded:
    """A folded text and, for each of its characters, the index of the original character it came from."""

    text: str
    origin: tuple[int, ...]
    original_length: int

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original ``[start, end)`` for folded ``[start, end)``."""
        if start >= len(self.origin):
            return self.original_length, self.original_length
        o_start = self.origin[start]
        o_end = self.origin[end - 1] + 1 if end > start else o_start
        return o_start, o_end


def fold(text: str) -> Folded:
    """Fold ``text`` for phrase matching (see the module docstring); case is kept."""
    out: list[str] = []
    origin: list[int] = []
    for i, ch in enumerate(text):
        if is_hidden_char(ch) and ch not in "\n\t\r":
            continue
        for part in unicodedata.normalize("NFKC", ch) if not ch.isascii() else ch:
            if not part.isascii() and script_of(part) not in ("LATIN", "COMMON", "INHERITED"):
                part = latin_lookalike(part) or part
            elif not part.isascii() and script_of(part) == "COMMON" and part.isalpha():
                part = latin_lookalike(part) or part
            out.append(part)
            origin.append(i)
    return Folded("".join(out), tuple(origin), len(text))


def skeleton(name: str) -> str:
    """The form two names share when they look alike: NFKC, every look-alike folded to ASCII, accents
    dropped, case folded, ``0``/``1`` read as ``o``/``l``, separators (``_ - . / : space``) and hidden
    characters removed. ``skeleton("Іngest-Fіles") == skeleton("ingest_files")``."""
    chars: list[str] = []
    for ch in unicodedata.normalize("NFKC", name):
        if is_hidden_char(ch):
            continue
        if not ch.isascii():
            ch = latin_lookalike(ch) or ch
        for base in unicodedata.normalize("NFD", ch):
            if unicodedata.category(base) != "Mn":
                chars.append(base)
    folded = "".join(chars).casefold()
    folded = "".join(_ASCII_LOOKALIKES.get(c, c) for c in folded)
    return folded.translate(_SEPARATORS)
