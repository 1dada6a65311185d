"""Modality Worklist C-FIND SCP through a pynetdicom SCU (PS3.4 K): C-CANCEL, invalid
identifiers, combined date-time matching, step status changes, character sets; the
retention component of a running server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydicom.dataset import Dataset
from structlog.testing import capture_logs

from pacs_server.config import Config
from pacs_server.index.worklist import WorklistRepository
from support.polling import wait_until
from support.scu import CANCEL, PENDING, SUCCESS, Scu
from support.server import RunningServer
from support.worklist import (
    CONTEXTS,
    accessions,
    add_items,
    cancel_after,
    finished_days_ago,
    item,
    query,
    worklist_repository,
)
from support.worklist import find as mwl_find


async def find(scu: Scu, srv: RunningServer, ds: Dataset,
               combined: bool = False) -> tuple[list[Dataset], Dataset]:
    return await asyncio.to_thread(mwl_find, scu, srv.port, ds, combined)


async def test_c_cancel_stops_the_worklist(server: RunningServer, worklist: WorklistRepository,
                                           scu: Scu) -> None:
    await add_items(worklist, [item(n) for n in range(400)])

    def cancel_after_five() -> tuple[int, list[int], list[int]]:
        with scu.associate(server.port, CONTEXTS) as assoc:
            return cancel_after(assoc, 5)

    with capture_logs() as logs:
        pending, finals, after = await asyncio.to_thread(cancel_after_five)
    assert finals == [CANCEL]
    assert 5 <= pending < 400
    assert after == [PENDING, SUCCESS]
    # Said before the 0xFE00 response: the service class never resumes the handler.
    (cancelled,) = [e for e in logs if e["event"] == "mwl_find.cancelled"]
    assert cancelled["sent"] == pending


@pytest.mark.parametrize("mutate, comment", [
    (lambda ds: ds.ScheduledProcedureStepSequence.append(Dataset()), "more than one item"),
    (lambda ds: setattr(ds.ScheduledProcedureStepSequence[0],
                        "ScheduledProcedureStepStartDate", "2024-1"), "not a DA"),
])
async def test_invalid_identifier_is_refused(server: RunningServer, scu: Scu,
                                             mutate: Callable[[Dataset], None],
                                             comment: str) -> None:
    ds = query()
    mutate(ds)
    found, final = await find(scu, server, ds)
    assert found == []
    assert final.Status == 0xA900
    assert comment in final.ErrorComment


async def test_step_status_follows_set_step_status(server: RunningServer,
                                                   worklist: WorklistRepository,
                                                   scu: Scu) -> None:
    await add_items(worklist, [item(1), item(2)])
    assert await worklist.set_step_status("1.2.9.1", "", "", "STARTED") == 1
    found, _ = await find(scu, server, query(ScheduledProcedureStepStatus="STARTED"))
    assert accessions(found) == ["A0001"]
    assert found[0].ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus == "STARTED"
    # All three keys, or only some: the non-empty ones must match.
    assert await worklist.set_step_status("1.2.9.1", "A0001", "S0001", "COMPLETED") == 1
    assert await worklist.set_step_status("1.2.9.1", "OTHER", "", "COMPLETED") == 0
    assert await worklist.set_step_status("", "", "", "COMPLETED") == 0
    found, _ = await find(scu, server, query())
    assert accessions(found) == ["A0002"]                           # finished: not offered
    found, _ = await find(scu, server, query(ScheduledProcedureStepStatus="COMPLETED"))
    assert accessions(found) == ["A0001"]
    # Retention: kept while younger than retention_days, then removed.
    assert await worklist.purge_finished(datetime.now(UTC) - timedelta(days=30)) == 0
    assert await worklist.purge_finished(datetime.now(UTC) + timedelta(seconds=1)) == 1
    assert await worklist.count() == 1


async def test_combined_date_time_when_negotiated(server: RunningServer,
                                                  worklist: WorklistRepository, scu: Scu) -> None:
    await add_items(worklist, [item(1, "20241220", "100000"), item(2, "20241220", "230000"),
                           item(3, "20241221", "050000"), item(4, "20241221", "070000")])
    ds = query(ScheduledProcedureStepStartDate="20241220-20241221",
               ScheduledProcedureStepStartTime="2200-0600")
    found, final = await find(scu, server, ds, combined=True)
    assert final.Status == SUCCESS
    assert sorted(accessions(found)) == ["A0002", "A0003"]
    # Not negotiated: date and time match separately, and 2200-0600 is an empty range.
    found, _ = await find(scu, server, ds)
    assert found == []


async def test_non_ascii_names_answer_in_utf8(server: RunningServer, worklist: WorklistRepository,
                                              scu: Scu) -> None:
    await add_items(worklist, [item(1, patientName="Wang^XiaoDong=王^小東"),
                           item(2, patientName="GÜNTHER^ÉLODIE")])
    ds = query()
    ds.PatientName = "günther*"
    found, _ = await find(scu, server, ds)
    assert [str(r.PatientName) for r in found] == ["GÜNTHER^ÉLODIE"]
    assert found[0].SpecificCharacterSet == "ISO_IR 192"
    ds.PatientName = "*=王^小東"
    found, _ = await find(scu, server, ds)
    assert [r.PatientName.ideographic for r in found] == ["王^小東"]
    ds.PatientName = "PATIENT*"
    found, _ = await find(scu, server, ds)
    assert found == []


async def test_server_removes_expired_items_at_start(start_server: Callable[..., Any],
                                                     make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg({"worklist.retention_days": 7})
    async with worklist_repository(cfg.database.path, create=True) as repo:
        old, recent = await repo.add([
            ({"accession_number": "OLD", "sps_status": "COMPLETED"}, "{}"),
            ({"accession_number": "NEW", "sps_status": "COMPLETED"}, "{}")])
    await finished_days_ago(cfg.database.path, {old: 8})
    with capture_logs() as logs:
        srv = await start_server(cfg)
        await asyncio.to_thread(
            wait_until, lambda: any(e["event"] == "worklist.retention" for e in logs),
            10.0, "the retention pass at start")
    (entry,) = [e for e in logs if e["event"] == "worklist.retention"]
    assert entry["removed"] == 1 and entry["retention_days"] == 7
    async with worklist_repository(srv.db) as repo:
        assert await repo.get(old) is None
        assert await repo.get(recent) is not None
