"""Modality Worklist: items as the admin command takes them (JSON), MWL identifiers,
C-FIND through our SCU or dcmtk's `findscu -W`, .wl files as dcmtk's wlmscpfs reads
them, and the `worklist_items` table of an index file through a repository of its own."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import ModalityWorklistInformationFind
from sqlalchemy import update

from pacs_server.config import DatabaseConfig
from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.worklist import WorklistItem, WorklistRepository
from pacs_server.services.worklist import WorklistService
from pacs_server.services.worklist_import import items_from_json
from support.config import SERVER_AE
from support.dcmtk import ToolResult, find_with_file
from support.scu import NATIVE, PENDING, Scu

MWL = str(ModalityWorklistInformationFind)
CONTEXTS = [(MWL, NATIVE)]
MWL_STORAGE = "1.2.840.10008.5.1.4.31"     # Media Storage SOP Class of a .wl file


def item(n: int, date: str = "20241220", time: str = "100000", **extra: Any) -> dict[str, Any]:
    """Worklist item `n` in the admin command's JSON (accession A<n>, step S<n>, P<n>,
    study 1.2.9.<n>, station CT_01, SCHEDULED); `extra` adds or overrides fields."""
    return {"patientId": f"P{n:04d}", "patientName": f"PATIENT^{n:04d}",
            "accessionNumber": f"A{n:04d}", "studyInstanceUid": f"1.2.9.{n}",
            "scheduledStationAeTitle": "CT_01", "modality": "CT",
            "scheduledProcedureStepStartDate": date, "scheduledProcedureStepStartTime": time,
            "scheduledProcedureStepId": f"S{n:04d}",
            "scheduledProcedureStepStatus": "SCHEDULED", **extra}


def query(**step: str) -> Dataset:
    """An MWL identifier asking for name, accession and the step's start and status;
    `step` sets (or adds) keys of the Scheduled Procedure Step item."""
    ds = Dataset()
    ds.PatientName = ""
    ds.AccessionNumber = ""
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = ""
    sps.ScheduledProcedureStepStartTime = ""
    sps.ScheduledProcedureStepStatus = ""
    for kw, value in step.items():
        setattr(sps, kw, value)
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def cancel_after(assoc: Any, count: int) -> tuple[int, list[int], list[int]]:
    """A worklist C-FIND (message 3) cancelled after `count` pending responses, then a
    C-FIND for step S0001 (message 4) on the same association: (pending responses
    before the end, final statuses, statuses of the second C-FIND)."""
    pending, finals = 0, []
    for status, _ in assoc.send_c_find(query(), MWL, msg_id=3):
        if status.Status == PENDING:
            pending += 1
            if pending == count:
                assoc.send_c_cancel(3, query_model=MWL)
        else:
            finals.append(int(status.Status))
    after = [int(s.Status) for s, _ in assoc.send_c_find(
        query(ScheduledProcedureStepID="S0001"), MWL, msg_id=4)]
    return pending, finals, after


def combined_datetime() -> SOPClassExtendedNegotiation:
    """The extended negotiation item asking for combined date-time matching (K.4.1.3.1)."""
    ext = SOPClassExtendedNegotiation()
    ext.sop_class_uid = MWL
    ext.service_class_application_information = b"\x01"
    return ext


def find(scu: Scu, port: int | None, ds: Dataset,
         combined: bool = False) -> tuple[list[Dataset], Dataset]:
    """One MWL C-FIND: the pending identifiers and the final status dataset."""
    ext = [combined_datetime()] if combined else []
    responses = scu.find(port, ds, MWL, ext_neg=ext)
    found = [r.identifier for r in responses if r.status == PENDING]
    assert responses and responses[-1].status != PENDING, "no final C-FIND response"
    assert all(f is not None for f in found)
    return found, responses[-1].status_ds  # type: ignore[return-value]


def accessions(found: list[Dataset]) -> list[str]:
    return [str(r.AccessionNumber) for r in found]


# --------------------------------------------------------------------------- the table

@asynccontextmanager
async def worklist_repository(db: Path | str, *, create: bool = False
                              ) -> AsyncIterator[WorklistRepository]:
    """A WorklistRepository on the index file `db` with an engine of its own (as the
    `pacs_server worklist` command opens it), disposed on exit; `create` migrates a
    new file first."""
    engine = create_engine(DatabaseConfig(path=str(db)))
    try:
        if create:
            await migrate(engine)
        yield WorklistRepository(engine)
    finally:
        await engine.dispose()


async def add_items(repo: WorklistRepository, items: list[dict[str, Any]]) -> list[int]:
    """Add JSON items as the admin command does (checked, then stored); their ids."""
    datasets = [ds for _, ds in items_from_json(json.dumps(items), "test")]
    return await WorklistService(repo).add(datasets)


async def finished_days_ago(db: Path | str, days: dict[int, float]) -> None:
    """Backdate when items finished (item id → days ago), for the retention purge."""
    engine = create_engine(DatabaseConfig(path=str(db)))
    try:
        async with engine.begin() as conn:
            for pk, ago in days.items():
                await conn.execute(update(WorklistItem).where(WorklistItem.pk == pk).values(
                    finished_at=datetime.now(UTC) - timedelta(days=ago)))
    finally:
        await engine.dispose()


# --------------------------------------------------------------------------- dcmtk

def write_wl(ds: Dataset, path: Path, charset: Any = None) -> Path:
    """`ds` as a worklist file (.wl, as wlmscpfs reads them, or a findscu query file);
    in `charset`, else ISO_IR 192 when a person name is not ASCII."""
    ds = Dataset(ds)
    if charset is not None:
        ds.SpecificCharacterSet = charset
    elif any(not str(e.value).isascii() for e in ds.iterall() if e.VR == "PN"):
        ds.SpecificCharacterSet = "ISO_IR 192"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.UID(MWL_STORAGE)
    ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def findscu_w(port: int, query_ds: Dataset, outdir: Path, called: str = SERVER_AE,
              extra: tuple[str, ...] = ()) -> ToolResult:
    """`findscu -W` with the identifier `query_ds` (written to a query file); the
    responses are read back in arrival order."""
    outdir.mkdir(parents=True, exist_ok=True)
    qfile = write_wl(query_ds, outdir / "query.dcm")
    return find_with_file(port, qfile, outdir, called=called, model="-W", extra=extra)
