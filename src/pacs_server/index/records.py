"""Plain records that cross the boundary between the services and the index."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any


@dataclass
class InstanceRecord:
    """What the index keeps about one instance (PS3.4 C.6 attributes + housekeeping)."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    # Column → value per level, as `attributes.QR_ATTRIBUTES` lists them (the UIDs
    # above excepted); the study's dict holds its copy of the patient attributes.
    patient: dict[str, Any]
    study: dict[str, Any]
    series: dict[str, Any]
    instance: dict[str, Any]
    header: bytes                    # dataset without bulk data, see header_encoding
    header_syntax: str               # transfer syntax the header bytes are encoded in
    rel_path: PurePosixPath = PurePosixPath()
    size: int = 0
    source_ae: str = ""
    received_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class StoredRef:
    """Where an archived instance lives."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
