"""SQLAlchemy models of the Patient / Study / Series / Instance hierarchy (PS3.4 C.6).

Columns hold the attributes the Query/Retrieve models match on; `*_norm` columns hold a
case-folded copy for case-insensitive Person Name matching with an index behind it.
`header` keeps the dataset without bulk data so any requested attribute can be returned
without opening files. Related-count columns are maintained on write (not counted per
query). The type and length of every indexed column come from `index/attributes.py`.

A patient is identified by PatientID with IssuerOfPatientID; patients with an empty
PatientID are never merged (one row per study), so their unique index is partial.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from pacs_server.index.attributes import QR_ATTRIBUTES

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


def indexed(level: str, column: str, **kwargs: Any) -> Any:
    """The mapped column of an attribute-table row: type, length and default from it."""
    row = QR_ATTRIBUTES.column(level, column)
    if row.kind in ("int", "count"):
        return mapped_column(Integer, default=0 if row.kind == "count" else None,
                             nullable=row.kind == "int", **kwargs)
    return mapped_column(String(row.length) if row.length else Text, default="", **kwargs)


class Patient(Base):
    __tablename__ = "patients"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_id: Mapped[str] = indexed("PATIENT", "patient_id", index=True)
    issuer_of_patient_id: Mapped[str] = indexed("PATIENT", "issuer_of_patient_id")
    patient_name: Mapped[str] = indexed("PATIENT", "patient_name")
    patient_name_norm: Mapped[str] = mapped_column(Text, default="", index=True)
    birth_date: Mapped[str] = indexed("PATIENT", "birth_date")
    sex: Mapped[str] = indexed("PATIENT", "sex")
    num_studies: Mapped[int] = indexed("PATIENT", "num_studies")
    num_series: Mapped[int] = indexed("PATIENT", "num_series")
    num_instances: Mapped[int] = indexed("PATIENT", "num_instances")
    header: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    header_syntax: Mapped[str] = mapped_column(String(64), default="")


class Study(Base):
    __tablename__ = "studies"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = indexed("STUDY", "study_instance_uid", unique=True)
    patient_pk: Mapped[int] = mapped_column(ForeignKey("patients.pk", ondelete="CASCADE"),
                                            index=True)
    patient_name: Mapped[str] = indexed("STUDY", "patient_name")
    patient_name_norm: Mapped[str] = mapped_column(Text, default="", index=True)
    patient_birth_date: Mapped[str] = indexed("STUDY", "patient_birth_date")
    patient_sex: Mapped[str] = indexed("STUDY", "patient_sex")
    study_date: Mapped[str] = indexed("STUDY", "study_date", index=True)
    study_time: Mapped[str] = indexed("STUDY", "study_time")
    accession_number: Mapped[str] = indexed("STUDY", "accession_number", index=True)
    study_id: Mapped[str] = indexed("STUDY", "study_id")
    study_description: Mapped[str] = indexed("STUDY", "study_description")
    referring_physician: Mapped[str] = indexed("STUDY", "referring_physician")
    referring_physician_norm: Mapped[str] = mapped_column(Text, default="")
    modalities: Mapped[str] = indexed("STUDY", "modalities")       # "CT\\MR"
    sop_classes: Mapped[str] = indexed("STUDY", "sop_classes")     # "uid\\uid"
    num_series: Mapped[int] = indexed("STUDY", "num_series")
    num_instances: Mapped[int] = indexed("STUDY", "num_instances")
    header: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    header_syntax: Mapped[str] = mapped_column(String(64), default="")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Series(Base):
    __tablename__ = "series"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = indexed("SERIES", "series_instance_uid", unique=True)
    study_pk: Mapped[int] = mapped_column(ForeignKey("studies.pk", ondelete="CASCADE"),
                                          index=True)
    modality: Mapped[str] = indexed("SERIES", "modality", index=True)
    series_number: Mapped[int | None] = indexed("SERIES", "series_number")
    series_description: Mapped[str] = indexed("SERIES", "series_description")
    series_date: Mapped[str] = indexed("SERIES", "series_date")
    series_time: Mapped[str] = indexed("SERIES", "series_time")
    body_part: Mapped[str] = indexed("SERIES", "body_part")
    num_instances: Mapped[int] = indexed("SERIES", "num_instances")
    header: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    header_syntax: Mapped[str] = mapped_column(String(64), default="")


class Instance(Base):
    __tablename__ = "instances"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = indexed("IMAGE", "sop_instance_uid", unique=True)
    series_pk: Mapped[int] = mapped_column(ForeignKey("series.pk", ondelete="CASCADE"),
                                           index=True)
    sop_class_uid: Mapped[str] = indexed("IMAGE", "sop_class_uid")
    instance_number: Mapped[int | None] = indexed("IMAGE", "instance_number")
    content_date: Mapped[str] = indexed("IMAGE", "content_date")
    content_time: Mapped[str] = indexed("IMAGE", "content_time")
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(Integer)
    source_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    header: Mapped[bytes] = mapped_column(LargeBinary)
    header_syntax: Mapped[str] = mapped_column(String(64))


# The table of each level of the Q/R hierarchy, outermost first.
QR_MODELS: dict[str, type[Base]] = {"PATIENT": Patient, "STUDY": Study, "SERIES": Series,
                                    "IMAGE": Instance}

Index("ix_studies_patient_date", Study.patient_pk, Study.study_date)
# An empty PatientID identifies nobody: those rows are left out of the uniqueness.
Index("uq_patients_patient_id_issuer", Patient.patient_id, Patient.issuer_of_patient_id,
      unique=True, sqlite_where=text("patient_id <> ''"),
      postgresql_where=text("patient_id <> ''"))



def _check_table() -> None:
    """Every row of the attribute table has its column (fails at import, not at query)."""
    for row in QR_ATTRIBUTES.rows:
        if row.column not in QR_MODELS[row.level].__table__.columns:
            raise RuntimeError(f"{row.keyword}: no column {row.level}.{row.column}")


_check_table()
