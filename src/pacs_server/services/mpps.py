"""Modality Performed Procedure Step: the use cases behind N-CREATE and N-SET (PS3.4 F.7).

A modality reports the step it performs: N-CREATE when it starts (IN PROGRESS), N-SET
while it runs and once more to end it (COMPLETED or DISCONTINUED, both final). Each
step is kept in the index with its whole attribute set. The worklist item named by
each Scheduled Step Attributes Sequence item follows: STARTED on N-CREATE, then
COMPLETED or DISCONTINUED. A step without a scheduled item (an unscheduled exam) is
kept all the same.
"""

from __future__ import annotations

from dataclasses import replace
from io import BytesIO
from typing import Protocol

import structlog
from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import generate_uid
from pydicom.valuerep import validate_value

from pacs_server.errors import InvalidAttributeValue, PacsError, StepFinalised
from pacs_server.index.mpps import MppsRepository, StepRecord
from pacs_server.services import mpps_rules as rules
from pacs_server.services.mpps_rules import FINAL, IN_PROGRESS, text

log = structlog.get_logger(__name__)

# Performed Procedure Step Status -> the worklist item's Scheduled Procedure Step Status.
STEP_STATUS = {IN_PROGRESS: "STARTED", rules.COMPLETED: "COMPLETED",
               rules.DISCONTINUED: "DISCONTINUED"}


class WorklistLink(Protocol):
    """What MPPS needs from the worklist: setting the status of a scheduled step."""

    async def set_step_status(self, study_instance_uid: str, accession_number: str,
                              sps_id: str, status: str) -> int: ...


class MppsService:
    """Creates and updates performed procedure steps.

    Args:
        repo: the steps in the index.
        worklist: the worklist whose items follow the steps (None: no worklist).
    """

    def __init__(self, repo: MppsRepository, worklist: WorklistLink | None = None) -> None:
        self._repo = repo
        self._worklist = worklist

    async def create(self, sop_instance_uid: str | None, attributes: Dataset,
                     calling_ae: str = "") -> StepRecord:
        """N-CREATE: a new step, IN PROGRESS; its UID is generated if the SCU sent none.

        Raises:
            MissingAttribute, MissingAttributeValue: a Type 1 attribute is absent or empty.
            InvalidAttributeValue: not IN PROGRESS, or a malformed value.
            InstanceExists: the SOP Instance UID is already a step.
        """
        if sop_instance_uid:
            _check_uid(sop_instance_uid)
        else:
            sop_instance_uid = generate_uid()
        rules.check_create(attributes)
        record = await self._repo.create(_record(sop_instance_uid, attributes, calling_ae))
        log.info("mpps.created", sop_instance_uid=sop_instance_uid, status=record.status,
                 study_instance_uid=record.study_instance_uid,
                 accession_number=record.accession_number, sps_id=record.sps_id)
        await self._follow(attributes, record.status)
        return record

    async def set(self, sop_instance_uid: str, modifications: Dataset) -> StepRecord:
        """N-SET: change a step that is IN PROGRESS.

        Raises:
            NoSuchInstance: no step has this UID.
            StepFinalised: the step is COMPLETED or DISCONTINUED.
            AttributeNotAllowed: the list changes an attribute N-SET may not set.
            InvalidAttributeValue: a bad status or value.
            MissingAttributeValue: the step would end without what its final state needs.
        """
        rules.check_modification(modifications)
        previous = IN_PROGRESS

        def change(current: StepRecord) -> StepRecord:
            nonlocal previous
            previous = current.status
            if current.status != IN_PROGRESS:
                log.info("mpps.final", sop_instance_uid=sop_instance_uid,
                         status=current.status)
                # PS3.4 F.7.2.2.3 and Table F.7.2-2: Processing Failure, this comment.
                raise StepFinalised("Performed Procedure Step Object may no longer be "
                                    "updated")
            merged = _merge(decode(current.dataset), modifications)
            status = text(merged, "PerformedProcedureStepStatus")
            if status in FINAL:
                rules.check_final(merged, status)
            return replace(_record(current.sop_instance_uid, merged, current.calling_ae),
                           created_at=current.created_at)

        record = await self._repo.update(sop_instance_uid, change)
        log.info("mpps.updated", sop_instance_uid=sop_instance_uid, status=record.status,
                 previous=previous, attributes=len(modifications))
        if record.status != previous:
            await self._follow(decode(record.dataset), record.status)
        return record

    async def get(self, sop_instance_uid: str) -> StepRecord | None:
        return await self._repo.get(sop_instance_uid)

    async def recent(self, status: str | None = None, limit: int = 1000) -> list[StepRecord]:
        return await self._repo.recent(status, limit)

    async def _follow(self, ds: Dataset, status: str) -> None:
        """Set the status of every scheduled step the performed step names.

        The step is already stored: a worklist that cannot follow is logged, not
        reported to the modality, whose retry would only meet a duplicate.
        """
        if self._worklist is None:
            return
        for study, accession, sps_id in scheduled_steps(ds):
            if not (accession or sps_id):
                continue        # unscheduled: no worklist item to follow
            try:
                n = await self._worklist.set_step_status(study, accession, sps_id,
                                                         STEP_STATUS[status])
            except PacsError as exc:
                log.warning("mpps.worklist_not_updated", study_instance_uid=study,
                            accession_number=accession, sps_id=sps_id, error=str(exc))
                continue
            log.info("mpps.worklist_updated", study_instance_uid=study,
                     accession_number=accession, sps_id=sps_id,
                     step_status=STEP_STATUS[status], items=n)


def scheduled_steps(ds: Dataset) -> list[tuple[str, str, str]]:
    """(Study Instance UID, Accession Number, Scheduled Procedure Step ID) per item of
    the Scheduled Step Attributes Sequence."""
    return [(text(item, "StudyInstanceUID"), text(item, "AccessionNumber"),
             text(item, "ScheduledProcedureStepID"))
            for item in ds.get("ScheduledStepAttributesSequence", None) or []]


def _record(uid: str, ds: Dataset, calling_ae: str) -> StepRecord:
    steps = scheduled_steps(ds)
    study, accession, sps_id = steps[0] if steps else ("", "", "")
    return StepRecord(
        sop_instance_uid=uid, status=text(ds, "PerformedProcedureStepStatus"),
        dataset=encode(ds), study_instance_uid=study, accession_number=accession,
        sps_id=sps_id, pps_id=text(ds, "PerformedProcedureStepID"),
        patient_id=text(ds, "PatientID"), patient_name=text(ds, "PatientName"),
        station_ae=text(ds, "PerformedStationAETitle"), modality=text(ds, "Modality"),
        start_date=text(ds, "PerformedProcedureStepStartDate"),
        start_time=text(ds, "PerformedProcedureStepStartTime"),
        end_date=text(ds, "PerformedProcedureStepEndDate"),
        end_time=text(ds, "PerformedProcedureStepEndTime"),
        calling_ae=calling_ae[:16])


def _merge(current: Dataset, mods: Dataset) -> Dataset:
    """The stored step with the Modification List applied.

    An N-SET's Specific Character Set adds to the step's instead of replacing it
    (F.7.2.2.3). The same (or none, F.7.2.2.1) keeps the stored bytes; another one
    decodes both and stores the result as UTF-8, which holds either.
    """
    ours = current.get("SpecificCharacterSet")
    theirs = mods.get("SpecificCharacterSet")
    changes = Dataset()
    changes.update({e.tag: e for e in mods if e.keyword != "SpecificCharacterSet"})
    if not theirs or (ours and _charsets(theirs) == _charsets(ours)):
        return rules.apply_modification(current, changes)
    try:
        current.decode()
        mods.decode()
    except (LookupError, ValueError) as exc:
        raise InvalidAttributeValue(f"text cannot be decoded: {exc}") from None
    merged = rules.apply_modification(current, changes)
    merged.SpecificCharacterSet = "ISO_IR 192"
    return merged


def _charsets(value: object) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in value]  # type: ignore[attr-defined]


def _check_uid(uid: str) -> None:
    try:
        validate_value("UI", uid, pydicom_config.RAISE)
    except ValueError:
        raise InvalidAttributeValue(f"invalid Affected SOP Instance UID {uid[:40]!r}") from None


def encode(ds: Dataset) -> bytes:
    """The dataset as Explicit VR Little Endian bytes (text kept as received)."""
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    try:
        write_dataset(buf, ds)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidAttributeValue(f"attributes cannot be encoded: {exc}") from None
    return buf.getvalue()


def decode(data: bytes) -> Dataset:
    """The dataset stored by `encode`."""
    return read_dataset(BytesIO(data), is_implicit_VR=False, is_little_endian=True)
