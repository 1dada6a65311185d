"""InstanceRecords as the archive hands them to the index (for repository and query tests)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from pacs_server.index.records import InstanceRecord
from support.instances import CT_IMAGE


def index_record(*, patient: str = "P1", name: str = "Doe^John", study: str | None = None,
                 series: str | None = None, sop: str | None = None, modality: str = "CT",
                 sop_class: str = CT_IMAGE, size: int = 100,
                 study_values: dict[str, Any] | None = None,
                 series_values: dict[str, Any] | None = None,
                 instance_values: dict[str, Any] | None = None,
                 header: bytes = b"") -> InstanceRecord:
    """A record with fresh UIDs unless given, stored at <patient>/<study>/<series>/<sop>.dcm.

    `*_values` override the indexed attributes of that level (e.g. study_date); `header`
    is the dataset without bulk data, in Explicit VR Little Endian (support.instances.encode).
    """
    study = study or generate_uid()
    series = series or generate_uid()
    sop = sop or generate_uid()
    return InstanceRecord(
        sop_instance_uid=sop, sop_class_uid=sop_class, study_instance_uid=study,
        series_instance_uid=series, transfer_syntax_uid=ExplicitVRLittleEndian,
        patient={"patient_id": patient, "patient_name": name, "birth_date": "", "sex": ""},
        study={"study_date": "20240101", "study_time": "", "accession_number": "A1",
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
