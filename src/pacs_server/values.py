"""DICOM value helpers every layer uses: the UID grammar and values as text.

A leaf module (like `errors`), so `config`, `storage`, `index`, `services` and `dicom`
can all share one definition.
"""

from __future__ import annotations

import re
from typing import Any

# PS3.5 9.1: components of digits separated by dots (length: `is_uid`).
UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")
UID_MAX_LENGTH = 64


def is_uid(text: str) -> bool:
    """Whether `text` is a UID: the grammar of PS3.5 9.1, at most 64 characters."""
    return len(text) <= UID_MAX_LENGTH and UID_RE.match(text) is not None


def value_text(value: Any) -> str:
    """A data element value as text: multi-values joined with a backslash (PS3.5 6.4).

    None is "". Nothing is stripped: callers decide about padding.
    """
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)
