"""Text normalisation shared by what the index stores and how queries match it."""

from __future__ import annotations

import unicodedata


def fold(value: str) -> str:
    """Case-folded NFC form, used by the *_norm columns for case-insensitive matching."""
    return unicodedata.normalize("NFC", value).casefold()


def join_values(existing: str, value: str) -> str:
    """Add `value` to a backslash-separated set (ModalitiesInStudy, SOPClassesInStudy)."""
    if not value:
        return existing
    items = existing.split("\\") if existing else []
    if value in items:
        return existing
    return "\\".join(sorted([*items, value]))
