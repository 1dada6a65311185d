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


def name_key(person_name: str) -> str:
    """Indexed form of a Person Name: the folded alphabetic component group.

    Ideographic and phonetic groups (after '=') are matched in Python; an ASCII query
    can only target the alphabetic group, so this column serves it with an index.
    """
    return fold(person_name.split("=", 1)[0])
