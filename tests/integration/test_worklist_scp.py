"""Modality Worklist C-FIND SCP through a pynetdicom SCU (PS3.4 K): C-CANCEL, invalid
identifiers, combined date-time matching, step status changes, character sets; the
retention component of a running server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom.pdu_primitives import SOPClassExtendedNegotiation
from pynetdicom.sop_class import ModalityWorklistInformationFind as MWL
from qr_helpers import QrServer, associate, scu_ae
from sqlalchemy import update
from structlog.testing import capture_logs

from pacs_server.index.engine import create_engine, migrate
from pacs_server.index.worklist import WorklistItem, WorklistRepository
from pacs_server.services.worklist import WorklistService
from pacs_server.services.worklist_import import items_from_json

SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00


def add_items(srv: QrServer, items: list[dict[str, Any]]) -> list[int]:
    repo = srv.app.worklist_repo
    assert repo is not None
    datasets = [ds for _, ds in items_from_json(json.dumps(items), "test")]
    ids: list[int] = srv.run(WorklistService(repo).add(datasets))
    return ids


def item(n: int, date: str = "20241220", time: str = "100000", **extra: Any) -> dict[str, Any]:
    return {"patientId": f"P{n:04d}", "patientName": f"PATIENT^{n:04d}",
            "accessionNumber": f"A{n:04d}", "studyInstanceUid": f"1.2.9.{n}",
            "scheduledStationAeTitle": "CT_01", "modality": "CT",
            "scheduledProcedureStepStartDate": date, "scheduledProcedureStepStartTime": time,
            "scheduledProcedureStepId": f"S{n:04d}",
            "scheduledProcedureStepStatus": "SCHEDULED", **extra}


def query(**step: str) -> Dataset:
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


def find(srv: QrServer, ds: Dataset, combined: bool = False) -> tuple[list[Dataset], Dataset]:
    ext = []
    if combined:
        item = SOPClassExtendedNegotiation()
        item.sop_class_uid = MWL
        item.service_class_application_information = b"\x01"
        ext = [item]
    assoc = associate(scu_ae(MWL), srv.port, ext_neg=ext)
    assert assoc.is_established
    try:
        found, final = [], None
        for status, ident in assoc.send_c_find(ds, MWL):
            if status.Status == PENDING:
                found.append(ident)
            else:
                final = status
        assert final is not None
        return found, final
    finally:
        assoc.release()


@pytest.fixture
def srv(start_qr_server: Callable[..., QrServer]) -> QrServer:
    return start_qr_server()


def test_c_cancel_stops_the_worklist(srv: QrServer) -> None:
    add_items(srv, [item(n) for n in range(400)])
    assoc = associate(scu_ae(MWL), srv.port)
    try:
        pending, finals = 0, []
        for status, _ in assoc.send_c_find(query(), MWL, msg_id=3):
            if status.Status == PENDING:
                pending += 1
                if pending == 5:
                    assoc.send_c_cancel(3, query_model=MWL)
            else:
                finals.append(int(status.Status))
        assert finals == [CANCEL]
        assert 5 <= pending < 400
        after = list(assoc.send_c_find(query(ScheduledProcedureStepID="S0001"), MWL, msg_id=4))
        assert [int(s.Status) for s, _ in after] == [PENDING, SUCCESS]
    finally:
        assoc.release()


@pytest.mark.parametrize("mutate, comment", [
    (lambda ds: ds.ScheduledProcedureStepSequence.append(Dataset()), "more than one item"),
    (lambda ds: setattr(ds.ScheduledProcedureStepSequence[0],
                        "ScheduledProcedureStepStartDate", "2024-1"), "not a DA"),
])
def test_invalid_identifier_is_refused(srv: QrServer, mutate: Callable[[Dataset], None],
                                       comment: str) -> None:
    ds = query()
    mutate(ds)
    found, final = find(srv, ds)
    assert found == []
    assert final.Status == 0xA900
    assert comment in final.ErrorComment


def test_step_status_follows_set_step_status(srv: QrServer) -> None:
    add_items(srv, [item(1), item(2)])
    repo = srv.app.worklist_repo
    assert repo is not None
    assert srv.run(repo.set_step_status("1.2.9.1", "", "", "STARTED")) == 1
    found, _ = find(srv, query(ScheduledProcedureStepStatus="STARTED"))
    assert [str(r.AccessionNumber) for r in found] == ["A0001"]
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
    # All three keys, or only some: the non-empty ones must match.
    assert srv.run(repo.set_step_status("1.2.9.1", "A0001", "S0001", "COMPLETED")) == 1
    assert srv.run(repo.set_step_status("1.2.9.1", "OTHER", "", "COMPLETED")) == 0
    assert srv.run(repo.set_step_status("", "", "", "COMPLETED")) == 0
    found, _ = find(srv, query())
    assert [str(r.AccessionNumber) for r in found] == ["A0002"]     # finished: not offered
    found, _ = find(srv, query(ScheduledProcedureStepStatus="COMPLETED"))
    assert [str(r.AccessionNumber) for r in found] == ["A0001"]
    # Retention: kept while younger than retention_days, then removed.
    assert srv.run(repo.purge_finished(datetime.now(UTC) - timedelta(days=30))) == 0
    assert srv.run(repo.purge_finished(datetime.now(UTC) + timedelta(seconds=1))) == 1
    assert srv.run(repo.count()) == 1


def test_combined_date_time_when_negotiated(srv: QrServer) -> None:
    add_items(srv, [item(1, "20241220", "100000"), item(2, "20241220", "230000"),
                    item(3, "20241221", "050000"), item(4, "20241221", "070000")])
    ds = query(ScheduledProcedureStepStartDate="20241220-20241221",
               ScheduledProcedureStepStartTime="2200-0600")
    found, final = find(srv, ds, combined=True)
    assert final.Status == SUCCESS
    assert sorted(str(r.AccessionNumber) for r in found) == ["A0002", "A0003"]
    # Not negotiated: date and time match separately, and 2200-0600 is an empty range.
    found, _ = find(srv, ds)
    assert found == []


def test_non_ascii_names_answer_in_utf8(srv: QrServer) -> None:
    add_items(srv, [item(1, patientName="Wang^XiaoDong=王^小東"),
                    item(2, patientName="GÜNTHER^ÉLODIE")])
    ds = query()
    ds.PatientName = "günther*"
    found, _ = find(srv, ds)
    assert [str(r.PatientName) for r in found] == ["GÜNTHER^ÉLODIE"]
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    ds.PatientName = "*=王^小東"
    found, _ = find(srv, ds)
    assert [r.PatientName.ideographic for r in found] == ["王^小東"]
    ds.PatientName = "PATIENT*"
    found, _ = find(srv, ds)
    assert found == []


async def test_server_removes_expired_items_at_start(start_server: Callable[..., Any],
                                                     make_cfg: Callable[..., Any]) -> None:
    cfg = make_cfg({"worklist.retention_days": 7})
    engine = create_engine(cfg.database)
    await migrate(engine)
    repo = WorklistRepository(engine)
    old, recent = await repo.add([({"accession_number": "OLD", "sps_status": "COMPLETED"}, "{}"),
                                  ({"accession_number": "NEW", "sps_status": "COMPLETED"}, "{}")])
    async with engine.begin() as conn:
        await conn.execute(update(WorklistItem).where(WorklistItem.pk == old).values(
            finished_at=datetime.now(UTC) - timedelta(days=8)))
    await engine.dispose()
    with capture_logs() as logs:
        app = await start_server(cfg)
        for _ in range(200):
            if any(e["event"] == "worklist.retention" for e in logs):
                break
            await asyncio.sleep(0.02)
    (entry,) = [e for e in logs if e["event"] == "worklist.retention"]
    assert entry["removed"] == 1 and entry["retention_days"] == 7
    assert app.worklist_repo is not None
    assert await app.worklist_repo.get(old) is None
    assert await app.worklist_repo.get(recent) is not None
