"""MPPS: N-CREATE / N-SET datasets as a modality sends them (PS3.4 F.7.2), the
modality's SCU, and the `mpps` table of an index file read through a repository of
its own."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.association import Association
from pynetdicom.sop_class import ModalityPerformedProcedureStep

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine
from pacs_server.index.mpps import MppsRepository
from support.scu import Scu

MPPS = ModalityPerformedProcedureStep
CONTEXTS = [(str(MPPS), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


class Modality:
    """The MPPS SCU side: one association per call, run in a worker thread."""

    def __init__(self, port: int | None, scu: Scu) -> None:
        self.port = port
        self.scu = scu

    @contextmanager
    def _assoc(self) -> Iterator[Association]:
        with self.scu.associate(self.port, CONTEXTS) as assoc:
            yield assoc

    async def create(self, ds: Dataset, uid: str | None = None) -> tuple[Dataset, Any]:
        def call() -> tuple[Dataset, Any]:
            with self._assoc() as assoc:
                return assoc.send_n_create(ds, MPPS, uid)
        return await asyncio.to_thread(call)

    async def set(self, uid: str, mods: Dataset) -> tuple[Dataset, Any]:
        def call() -> tuple[Dataset, Any]:
            with self._assoc() as assoc:
                return assoc.send_n_set(mods, MPPS, uid)
        return await asyncio.to_thread(call)


def dataset(**values: Any) -> Dataset:
    """A dataset from keywords; a None value leaves the attribute out."""
    ds = Dataset()
    for keyword, value in values.items():
        if value is not None:
            setattr(ds, keyword, value)
    return ds


def create_attributes(**top: Any) -> Dataset:
    """An N-CREATE Attribute List with every Type 1 and Type 2 attribute of F.7.2-1;
    `top` overrides (None removes) top-level attributes."""
    step = dataset(
        StudyInstanceUID="1.2.3.4.5.6.7.8.9", ReferencedStudySequence=Sequence(),
        AccessionNumber="ACC001", RequestedProcedureID="RP001",
        RequestedProcedureDescription="CT Abdomen", ScheduledProcedureStepID="SPS001",
        ScheduledProcedureStepDescription="CT Abdomen",
        ScheduledProtocolCodeSequence=Sequence())
    values: dict[str, Any] = {
        "SpecificCharacterSet": "ISO_IR 100",
        "ScheduledStepAttributesSequence": Sequence([step]),
        "PatientName": "MÜLLER^JÖRG", "PatientID": "12345", "PatientBirthDate": "19800101",
        "PatientSex": "M", "ReferencedPatientSequence": Sequence(),
        "PerformedProcedureStepID": "PPS001", "PerformedStationAETitle": "CT_01",
        "PerformedStationName": "CT ROOM 1", "PerformedLocation": "RADIOLOGY",
        "PerformedProcedureStepStartDate": "20241220",
        "PerformedProcedureStepStartTime": "101500",
        "PerformedProcedureStepStatus": "IN PROGRESS",
        "PerformedProcedureStepDescription": "CT Abdomen",
        "PerformedProcedureTypeDescription": "", "ProcedureCodeSequence": Sequence(),
        "PerformedProcedureStepEndDate": "", "PerformedProcedureStepEndTime": "",
        "Modality": "CT", "StudyID": "1", "PerformedProtocolCodeSequence": Sequence(),
        "PerformedSeriesSequence": Sequence(),
    }
    values.update(top)
    return dataset(**values)


def performed_series(n_images: int = 2) -> Sequence:
    """One Performed Series Sequence item referencing `n_images` CT images."""
    refs = [dataset(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2",
                    ReferencedSOPInstanceUID=generate_uid()) for _ in range(n_images)]
    return Sequence([dataset(
        PerformingPhysicianName="SMITH^ANNA", ProtocolName="ABDOMEN",
        OperatorsName="TECH^ONE", SeriesInstanceUID=generate_uid(),
        SeriesDescription="Axial 5mm", RetrieveAETitle="PACS",
        ReferencedImageSequence=Sequence(refs),
        ReferencedNonImageCompositeSOPInstanceSequence=Sequence())])


def final_modification(status: str = "COMPLETED", series: Sequence | None = None) -> Dataset:
    mods = Dataset()
    mods.PerformedProcedureStepStatus = status
    mods.PerformedProcedureStepEndDate = "20241220"
    mods.PerformedProcedureStepEndTime = "103000"
    mods.PerformedSeriesSequence = performed_series() if series is None else series
    return mods


@asynccontextmanager
async def step_repository(db: Path | str) -> AsyncIterator[MppsRepository]:
    """An MppsRepository on the index file `db` with an engine of its own (as the
    `pacs_server mpps` command opens it), disposed on exit."""
    engine = create_engine(DatabaseConfig(path=str(db)))
    try:
        yield MppsRepository(engine)
    finally:
        await engine.dispose()
