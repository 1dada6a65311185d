"""The index without a server: a started IndexRepository on a tmp SQLite file, and
InstanceRecords as the archive hands them to it (repository, query and archive tests)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.records import InstanceRecord
from pacs_server.index.repository import IndexRepository
from support.instances import CT_IMAGE


@asynccontextmanager
async def sqlite_index(db: Path) -> AsyncIterator[IndexRepository]:
    """The index file `db` (created and migrated if new) and a started repository on it,
    closed (queued writes drained) on exit. Opening it again is what a restart does."""
    engine = create_engine(DatabaseConfig(path=str(db)))
    await migrate(engine)
    repo = IndexRepository(engine)
    await repo.start()
    try:
        yield repo
    finally:
        await repo.close()
        await engine.dispose()


def index_record(*, patient: str = "P1", name: str = "Doe^John", study: str | None = None,
                 series: str | None = None, sop: str | None = None, modality: str = "CT",
                 sop_class: str = CT_IMAGE, size: int = 100,
                 study_values: dict[str, Any] | None = None,
                 series_values: dict[str, Any] | None = None,
                 instance_values: dict[str, Any] | None = None,
                 header: bytes = b"", issuer: str = "", sex: str = "") -> InstanceRecord:
    """A record with fresh UIDs unless given, stored at <patient>/<study>/<series>/<sop>.dcm.

    `*_values` override the indexed attributes of that level (e.g. study_date); `header`
    is the dataset without bulk data, in Explicit VR Little Endian (support.instances.encode).
    The study keeps its own copy of the patient attributes, as the archive records them.
    """
    study = study or generate_uid()
    series = series or generate_uid()
    sop = sop or generate_uid()
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=sop_class, study_instance_uid=study,
        series_instance_uid=series, transfer_syntax_uid=ExplicitVRLittleEndian,
        patient={"patient_id": patient, "issuer_of_patient_id": issuer, "patient_name": name,
                 "birth_date": "", "sex": sex},
        study={"patient_name": name, "patient_birth_date": "", "patient_sex": sex,
               "study_date": "20240101", "study_time": "", "accession_number": "A1",
               "study_id": "", "study_description": "", "referring_physician": "",
               **(study_values or {})},
        series={"modality": modality, "series_number": 1, "series_description": "",
                "series_date": "", "series_time": "", "body_part": "",
                **(series_values or {})},
        instance={"instance_number": 1, "content_date": "", "content_time": "",
                  **(instance_values or {})},
        header=header, header_syntax=ExplicitVRLittleEndian,
        rel_path=PurePosixPath(patient, study, series, f"{sop}.dcm"), size=size,
        source_ae="SCU")
