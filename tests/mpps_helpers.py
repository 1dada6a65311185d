"""MPPS test helpers: N-CREATE / N-SET datasets as a modality sends them (PS3.4 F.7.2)."""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import ModalityPerformedProcedureStep

MPPS = ModalityPerformedProcedureStep
CONTEXTS = [(str(MPPS), [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]


def create_attributes(**top: Any) -> Dataset:
    """An N-CREATE Attribute List with every Type 1 and Type 2 attribute of F.7.2-1."""
    step = Dataset()
    step.StudyInstanceUID = "1.2.3.4.5.6.7.8.9"
    step.ReferencedStudySequence = Sequence()
    step.AccessionNumber = "ACC001"
    step.RequestedProcedureID = "RP001"
    step.RequestedProcedureDescription = "CT Abdomen"
    step.ScheduledProcedureStepID = "SPS001"
    step.ScheduledProcedureStepDescription = "CT Abdomen"
    step.ScheduledProtocolCodeSequence = Sequence()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ScheduledStepAttributesSequence = Sequence([step])
    ds.PatientName = "MÜLLER^JÖRG"
    ds.PatientID = "12345"
    ds.PatientBirthDate = "19800101"
    ds.PatientSex = "M"
    ds.ReferencedPatientSequence = Sequence()
    ds.PerformedProcedureStepID = "PPS001"
    ds.PerformedStationAETitle = "CT_01"
    ds.PerformedStationName = "CT ROOM 1"
    ds.PerformedLocation = "RADIOLOGY"
    ds.PerformedProcedureStepStartDate = "20241220"
    ds.PerformedProcedureStepStartTime = "101500"
    ds.PerformedProcedureStepStatus = "IN PROGRESS"
    ds.PerformedProcedureStepDescription = "CT Abdomen"
    ds.PerformedProcedureTypeDescription = ""
    ds.ProcedureCodeSequence = Sequence()
    ds.PerformedProcedureStepEndDate = ""
    ds.PerformedProcedureStepEndTime = ""
    ds.Modality = "CT"
    ds.StudyID = "1"
    ds.PerformedProtocolCodeSequence = Sequence()
    ds.PerformedSeriesSequence = Sequence()
    for keyword, value in top.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def performed_series(n_images: int = 2) -> Sequence:
    series = Dataset()
    series.PerformingPhysicianName = "SMITH^ANNA"
    series.ProtocolName = "ABDOMEN"
    series.OperatorsName = "TECH^ONE"
    series.SeriesInstanceUID = generate_uid()
    series.SeriesDescription = "Axial 5mm"
    series.RetrieveAETitle = "PACS"
    refs = []
    for _ in range(n_images):
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ref.ReferencedSOPInstanceUID = generate_uid()
        refs.append(ref)
    series.ReferencedImageSequence = Sequence(refs)
    series.ReferencedNonImageCompositeSOPInstanceSequence = Sequence()
    return Sequence([series])


def final_modification(status: str = "COMPLETED", series: Sequence | None = None) -> Dataset:
    mods = Dataset()
    mods.PerformedProcedureStepStatus = status
    mods.PerformedProcedureStepEndDate = "20241220"
    mods.PerformedProcedureStepEndTime = "103000"
    mods.PerformedSeriesSequence = performed_series() if series is None else series
    return mods
