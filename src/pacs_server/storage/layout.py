"""The one place that turns DICOM identifiers into a path inside the archive.

Nothing from the network reaches the filesystem except through `relative_path()`:
UIDs must match the UID grammar (PS3.5 9.1), and the one free-text component the
hierarchical layout uses (PatientID) is reduced to a safe, bounded file name.
"""

from __future__ import annotations

import hashlib
import re
from datetime import date
from pathlib import PurePosixPath

from pacs_server.errors import DatasetMismatch
from pacs_server.values import is_uid

_SAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
_DATE_RE = re.compile(r"^\d{8}$")
MAX_COMPONENT = 64
PLACEHOLDER = "_no_patient_id_"


def check_uid(name: str, value: str) -> str:
    """Return `value` if it is a valid UID, else raise DatasetMismatch naming the attribute."""
    value = (value or "").strip().rstrip("\0")
    if not value:
        raise DatasetMismatch(f"{name} is missing")
    if not is_uid(value):
        # Reason first: the Error Comment (LO) keeps only 64 characters of this message.
        raise DatasetMismatch(f"{name} is not a valid UID: {value[:80]!r}")
    return value


def safe_component(value: str) -> str:
    """A file name derived from free text: no separators, no dots at the start, bounded.

    When anything had to change, a short hash of the original is appended so that two
    different IDs (say "A/B" and "A_B") never share a directory.
    """
    original = value
    cleaned = _SAFE_CHARS.sub("_", value.strip()).lstrip(".")
    if not cleaned.strip("_"):
        cleaned = PLACEHOLDER if not original.strip() else "_"
    if cleaned != original or len(cleaned) > MAX_COMPONENT:
        digest = hashlib.sha256(original.encode("utf-8", "surrogateescape")).hexdigest()[:10]
        cleaned = f"{cleaned[:MAX_COMPONENT - 11]}-{digest}"
        if original.strip() == "":
            cleaned = PLACEHOLDER
    return cleaned


def relative_path(naming: str, *, patient_id: str, study_uid: str, series_uid: str,
                  sop_uid: str, study_date: str, received: date) -> PurePosixPath:
    """Where an instance lives, relative to the archive root.

    Args:
        naming: hierarchical | flat | date (see StorageConfig).
        study_date: DICOM DA value, used by the `date` layout when it is a valid date.
        received: fallback date for the `date` layout.
    """
    study_uid = check_uid("StudyInstanceUID", study_uid)
    series_uid = check_uid("SeriesInstanceUID", series_uid)
    sop_uid = check_uid("SOPInstanceUID", sop_uid)
    name = f"{sop_uid}.dcm"
    if naming == "flat":
        return PurePosixPath(name)
    if naming == "date":
        y, m, d = _date_parts(study_date, received)
        return PurePosixPath(y, m, d, study_uid, name)
    return PurePosixPath(safe_component(patient_id), study_uid, series_uid, name)


def _date_parts(study_date: str, received: date) -> tuple[str, str, str]:
    value = (study_date or "").strip()
    if _DATE_RE.match(value):
        try:
            parsed = date(int(value[:4]), int(value[4:6]), int(value[6:]))
            return f"{parsed.year:04d}", f"{parsed.month:02d}", f"{parsed.day:02d}"
        except ValueError:
            pass
    return f"{received.year:04d}", f"{received.month:02d}", f"{received.day:02d}"
