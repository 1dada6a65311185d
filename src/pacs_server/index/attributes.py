"""The table of indexed attributes: what is kept in a column, at which level, and how it
is matched.

One row per (keyword, level). It drives the model columns (`models.indexed`), the
fast header walk's tag set and the record built on ingest (`services/ingest.py`), the
writer's `*_norm` columns, and C-FIND matching and answers (`index/reader.py`). Adding
an attribute is a model column, a migration and one row here.

An `AttributeTable` is not Q/R specific: a table has its own levels (outermost first)
and rows. A keyword may have rows at several levels; a query at level L reads the
deepest one at or above L. That is how the Patient Root and Study Root answers below
PATIENT level carry the patient attributes as the study's instances had them (the
`studies` copy), while PATIENT level answers from the patient record.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

from pydicom.tag import Tag

Level = Literal["PATIENT", "STUDY", "SERIES", "IMAGE"]
InformationModel = Literal["PATIENT", "STUDY"]      # Patient Root, Study Root (PS3.4 C.3)
Kind = Literal["uid", "str", "pn", "date", "time", "datetime", "int", "multi", "count"]

QR_LEVELS: tuple[Level, ...] = ("PATIENT", "STUDY", "SERIES", "IMAGE")


@dataclass(frozen=True)
class Attribute:
    """One indexed attribute at one level.

    Attributes:
        keyword: DICOM keyword.
        level: the level (table) whose column holds it.
        column: column name in that level's table.
        kind: how it is matched (PS3.4 C.2.2.2) and converted.
        length: maximum stored length (String(length)); None for Text or Integer.
        norm: name of the case-folded column of a Person Name, if any.
        derived: computed by the index (counts, sets), not read from a dataset.
    """

    keyword: str
    level: str
    column: str
    kind: Kind
    length: int | None = None
    norm: str | None = None
    derived: bool = False

    @property
    def tag(self) -> int:
        return int(Tag(self.keyword))


class AttributeTable:
    """The indexed attributes of one information model, by level and keyword."""

    def __init__(self, levels: Iterable[str], rows: Iterable[Attribute]) -> None:
        self.levels: tuple[str, ...] = tuple(levels)
        self.rows: tuple[Attribute, ...] = tuple(rows)
        self._rows: dict[tuple[str, str], Attribute] = {}
        for row in self.rows:
            if row.level not in self.levels or (row.keyword, row.level) in self._rows:
                raise ValueError(f"bad or repeated row {row.keyword} at {row.level}")
            self._rows[(row.keyword, row.level)] = row

    def depth(self, level: str) -> int:
        return self.levels.index(level)

    def at(self, level: str) -> tuple[Attribute, ...]:
        """The rows whose column is in `level`'s table."""
        return tuple(r for r in self.rows if r.level == level)

    def recorded(self, level: str) -> tuple[Attribute, ...]:
        """The rows of `level` an ingest record carries in its per-level dict: read from
        the dataset, and not a UID (those are record fields of their own)."""
        return tuple(r for r in self.at(level) if not r.derived and r.kind != "uid")

    def visible(self, level: str) -> dict[str, Attribute]:
        """Keyword → the row a query at `level` matches and answers with: the deepest
        row at or above `level`."""
        return self._visible[level]

    def indexed(self, keyword: str) -> bool:
        """True if the keyword has a row at any level."""
        return keyword in self._keywords

    def column(self, level: str, column: str) -> Attribute:
        """The row of a column (for the model definitions)."""
        for row in self.at(level):
            if row.column == column:
                return row
        raise KeyError(f"{level}.{column} is not in the attribute table")

    @cached_property
    def tags(self) -> frozenset[int]:
        """Tags of every attribute read from datasets."""
        return frozenset(r.tag for r in self.rows if not r.derived)

    @cached_property
    def _keywords(self) -> frozenset[str]:
        return frozenset(r.keyword for r in self.rows)

    @cached_property
    def _visible(self) -> dict[str, dict[str, Attribute]]:
        out: dict[str, dict[str, Attribute]] = {}
        seen: dict[str, Attribute] = {}
        for level in self.levels:
            seen = {**seen, **{r.keyword: r for r in self.at(level)}}
            out[level] = seen
        return out


# The Patient/Study/Series/Image hierarchy of PS3.4 C.6.1 and C.6.2. Lengths are those of
# the VRs (PS3.5 6.2: LO 64, SH/CS 16, DA 8, TM 16); Text columns have no limit, the
# record cuts free text at 256 characters.
QR_ATTRIBUTES = AttributeTable(QR_LEVELS, [
    Attribute("PatientID", "PATIENT", "patient_id", "str", 64),
    Attribute("IssuerOfPatientID", "PATIENT", "issuer_of_patient_id", "str", 64),
    Attribute("PatientName", "PATIENT", "patient_name", "pn", norm="patient_name_norm"),
    Attribute("PatientBirthDate", "PATIENT", "birth_date", "date", 8),
    Attribute("PatientSex", "PATIENT", "sex", "str", 16),
    Attribute("NumberOfPatientRelatedStudies", "PATIENT", "num_studies", "count", derived=True),
    Attribute("NumberOfPatientRelatedSeries", "PATIENT", "num_series", "count", derived=True),
    Attribute("NumberOfPatientRelatedInstances", "PATIENT", "num_instances", "count", derived=True),
    # The patient attributes as this study's instances have them: answers at STUDY,
    # SERIES and IMAGE level never show another study's demographics.
    Attribute("PatientName", "STUDY", "patient_name", "pn", norm="patient_name_norm"),
    Attribute("PatientBirthDate", "STUDY", "patient_birth_date", "date", 8),
    Attribute("PatientSex", "STUDY", "patient_sex", "str", 16),
    Attribute("StudyInstanceUID", "STUDY", "study_instance_uid", "uid", 64),
    Attribute("StudyDate", "STUDY", "study_date", "date", 8),
    Attribute("StudyTime", "STUDY", "study_time", "time", 16),
    Attribute("AccessionNumber", "STUDY", "accession_number", "str", 64),
    Attribute("StudyID", "STUDY", "study_id", "str", 16),
    Attribute("StudyDescription", "STUDY", "study_description", "str"),
    Attribute("ReferringPhysicianName", "STUDY", "referring_physician", "pn",
              norm="referring_physician_norm"),
    Attribute("ModalitiesInStudy", "STUDY", "modalities", "multi", derived=True),
    Attribute("SOPClassesInStudy", "STUDY", "sop_classes", "multi", derived=True),
    Attribute("NumberOfStudyRelatedSeries", "STUDY", "num_series", "count", derived=True),
    Attribute("NumberOfStudyRelatedInstances", "STUDY", "num_instances", "count", derived=True),
    Attribute("SeriesInstanceUID", "SERIES", "series_instance_uid", "uid", 64),
    Attribute("Modality", "SERIES", "modality", "str", 16),
    Attribute("SeriesNumber", "SERIES", "series_number", "int"),
    Attribute("SeriesDescription", "SERIES", "series_description", "str"),
    Attribute("SeriesDate", "SERIES", "series_date", "date", 8),
    Attribute("SeriesTime", "SERIES", "series_time", "time", 16),
    Attribute("BodyPartExamined", "SERIES", "body_part", "str", 16),
    Attribute("NumberOfSeriesRelatedInstances", "SERIES", "num_instances", "count", derived=True),
    Attribute("SOPInstanceUID", "IMAGE", "sop_instance_uid", "uid", 64),
    Attribute("SOPClassUID", "IMAGE", "sop_class_uid", "uid", 64),
    Attribute("InstanceNumber", "IMAGE", "instance_number", "int"),
    Attribute("ContentDate", "IMAGE", "content_date", "date", 8),
    Attribute("ContentTime", "IMAGE", "content_time", "time", 16),
])
