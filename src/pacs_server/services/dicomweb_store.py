"""STOW-RS (PS3.18 10.5): each received part through the C-STORE path.

A part arrives as a Part-10 file in `<archive>/.incoming` (the web side streams it
there); `store_part` runs in a worker thread and hands it to `ArchiveService.receive`,
the call C-STORE makes: structure check (`services/dataset_check.py`), header parse,
copy, fsync, journal, placement, index commit through the bridge, duplicate_policy.
Failures become the Failure Reason values of PS3.18 Table I.2-2.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info

from pacs_server.errors import (
    DatasetMismatch,
    DuplicateInstance,
    IndexUnavailable,
    PacsError,
    StorageFull,
    StorageUnavailable,
    UnreadableDataset,
)
from pacs_server.services.archive import ArchiveService, Runner, StoreOutcome

log = structlog.get_logger(__name__)

# PS3.18 Table I.2-2 (and PS3.4 B.2.3 for the codes it leaves to C-STORE's table).
PROCESSING_FAILURE = 0x0110
DUPLICATE = 0x0111
SOP_CLASS_NOT_SUPPORTED = 0x0122
OUT_OF_RESOURCES = 0xA700
DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
STUDY_MISMATCH = 0xC409          # implementation specific (Cxxx), as dcm4chee uses it
_REASONS: tuple[tuple[type[PacsError], int], ...] = (
    (DuplicateInstance, DUPLICATE),
    (DatasetMismatch, DOES_NOT_MATCH_SOP_CLASS),
    (UnreadableDataset, CANNOT_UNDERSTAND),
    (StorageFull, OUT_OF_RESOURCES),
    (StorageUnavailable, OUT_OF_RESOURCES),
    (IndexUnavailable, OUT_OF_RESOURCES),
)


@dataclass(frozen=True)
class PartResult:
    """What became of one part."""

    sop_class_uid: str
    sop_instance_uid: str
    study_uid: str = ""
    series_uid: str = ""
    failure: int | None = None       # Failure Reason; None = stored
    reason: str = ""


def failure_reason(exc: BaseException) -> int:
    for cls, code in _REASONS:
        if isinstance(exc, cls):
            return code
    return PROCESSING_FAILURE


def store_part(archive: ArchiveService, part: Path, accepted: frozenset[str],
               study_uid: str, source: str, run: Runner) -> PartResult:
    """Store one received part file (removed by the caller). Never raises for a bad
    part: the failure is in the result."""
    try:
        meta = read_file_meta_info(part)
        sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
        sop_uid = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
        syntax = str(meta.get("TransferSyntaxUID", "") or "")
    except InvalidDicomError:
        return PartResult("", "", failure=CANNOT_UNDERSTAND,
                          reason="not a DICOM Part-10 file (no DICM prefix and File Meta)")
    except (OSError, EOFError, ValueError, KeyError) as exc:
        return PartResult("", "", failure=CANNOT_UNDERSTAND,
                          reason=f"not a DICOM Part-10 file: {exc}")
    if not syntax or not sop_class:
        return PartResult(sop_class, sop_uid, failure=CANNOT_UNDERSTAND,
                          reason="the File Meta lacks the transfer syntax or SOP class")
    if sop_class not in accepted:
        return PartResult(sop_class, sop_uid, failure=SOP_CLASS_NOT_SUPPORTED,
                          reason=f"SOP class {sop_class} is not accepted")
    if study_uid:
        found = _study_of(part)
        if found is None:
            return PartResult(sop_class, sop_uid, failure=CANNOT_UNDERSTAND,
                              reason="the Study Instance UID cannot be read")
        if found != study_uid:
            return PartResult(sop_class, sop_uid, found, failure=STUDY_MISMATCH,
                              reason=f"instance of study {found}, not {study_uid}")
    try:
        stored = archive.receive(part, syntax, sop_class, source, run)
    except PacsError as exc:
        return PartResult(sop_class, sop_uid, failure=failure_reason(exc), reason=str(exc))
    if stored.outcome is StoreOutcome.ALREADY_STORED:
        log.info("stow.already_stored", sop_instance_uid=stored.sop_instance_uid)
    return PartResult(sop_class, stored.sop_instance_uid, stored.study_uid,
                      stored.series_uid)


def _study_of(part: Path) -> str | None:
    """The Study Instance UID of the part (None when the header cannot be parsed)."""
    try:
        ds = dcmread(part, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
        return str(ds.get("StudyInstanceUID", "") or "").strip("\0 ")
    except Exception:  # any parse error: the structure check names it precisely
        return None
