"""MPPS drives the worklist on a real server: N-CREATE (IN PROGRESS) sets the scheduled
step it names to STARTED, the final N-SET to COMPLETED or DISCONTINUED, and the
Modality Worklist C-FIND answers accordingly (PS3.4 F.7.2, K.6.1).

The modality is pynetdicom's MPPS and MWL SCU; items go in through the admin command
or a repository of the test's own on the server's index file.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacs_server import cli
from pacs_server.index.mpps import MppsRepository
from pacs_server.index.worklist import WorklistRepository
from support.mpps import Modality, create_attributes, final_modification
from support.scu import SUCCESS, Scu
from support.server import RunningServer
from support.worklist import add_items, find, item, query


def performing(study: str, accession: str, sps_id: str, **top: object) -> Dataset:
    """An N-CREATE whose one Scheduled Step Attributes item names these keys."""
    ds = create_attributes(**top)
    step = ds.ScheduledStepAttributesSequence[0]
    step.StudyInstanceUID = study
    step.AccessionNumber = accession
    step.ScheduledProcedureStepID = sps_id
    return ds


def ending(status: str) -> Dataset:
    """The final N-SET: COMPLETED with its series, or DISCONTINUED with a reason."""
    if status == "COMPLETED":
        return final_modification()
    mods = final_modification("DISCONTINUED", series=Sequence())
    reason = Dataset()
    reason.CodeValue = "110514"
    reason.CodingSchemeDesignator = "DCM"
    reason.CodeMeaning = "Incorrect worklist entry selected"
    mods.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([reason])
    return mods


async def statuses(server: RunningServer, scu: Scu, status: str = "") -> dict[str, str]:
    """Accession Number → Scheduled Procedure Step Status of what an MWL C-FIND offers
    (asking for `status`, or the default: every step not yet finished)."""
    ds = query(ScheduledProcedureStepStatus=status) if status else query()
    found, final = await asyncio.to_thread(find, scu, server.port, ds)
    assert final.Status == SUCCESS
    return {str(r.AccessionNumber):
            str(r.ScheduledProcedureStepSequence[0].ScheduledProcedureStepStatus)
            for r in found}


async def admin_add(server: RunningServer, tmp_path: Path, items: list[dict[str, object]],
                    capsys: pytest.CaptureFixture[str]) -> None:
    """`pacs_server worklist add FILE --db <the server's index>`, as an administrator runs
    it next to the running server."""
    path = tmp_path / "items.json"
    path.write_text(json.dumps(items), encoding="utf-8")
    code = await asyncio.to_thread(cli.main, ["worklist", "add", str(path), "--db",
                                              str(server.db)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert f"added {len(items)} worklist item(s)" in out


@pytest.mark.parametrize("final", ["COMPLETED", "DISCONTINUED"])
async def test_the_step_moves_the_worklist_item(server: RunningServer, scu: Scu,
                                                modality: Modality, steps: MppsRepository,
                                                tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                final: str) -> None:
    await admin_add(server, tmp_path, [item(1), item(2)], capsys)
    assert await statuses(server, scu) == {"A0001": "SCHEDULED", "A0002": "SCHEDULED"}

    uid = generate_uid()
    status, _ = await modality.create(performing("1.2.9.1", "A0001", "S0001"), uid)
    assert status.Status == SUCCESS
    assert await statuses(server, scu, "STARTED") == {"A0001": "STARTED"}
    assert await statuses(server, scu, "SCHEDULED") == {"A0002": "SCHEDULED"}
    # A started step is still offered by default (only finished ones are not).
    assert await statuses(server, scu) == {"A0001": "STARTED", "A0002": "SCHEDULED"}

    # An intermediate N-SET changes nothing on the worklist.
    note = Dataset()
    note.CommentsOnThePerformedProcedureStep = "first series done"
    assert (await modality.set(uid, note))[0].Status == SUCCESS
    assert await statuses(server, scu, "STARTED") == {"A0001": "STARTED"}

    status, _ = await modality.set(uid, ending(final))
    assert status.Status == SUCCESS, status
    assert await statuses(server, scu) == {"A0002": "SCHEDULED"}       # no longer offered
    assert await statuses(server, scu, final) == {"A0001": final}
    assert await statuses(server, scu, "STARTED") == {}
    record = await steps.get(uid)
    assert record is not None and record.status == final


async def test_one_step_for_several_scheduled_steps(server: RunningServer, scu: Scu,
                                                    modality: Modality,
                                                    worklist: WorklistRepository) -> None:
    """Each Scheduled Step Attributes item names one worklist item (grouped steps)."""
    await add_items(worklist, [item(1), item(2, studyInstanceUid="1.2.9.1"), item(3)])
    ds = performing("1.2.9.1", "A0001", "S0001")
    second = Dataset()
    second.StudyInstanceUID = "1.2.9.1"
    second.AccessionNumber = "A0002"
    second.ScheduledProcedureStepID = "S0002"
    second.ReferencedStudySequence = Sequence()
    second.RequestedProcedureID = "RP002"
    second.RequestedProcedureDescription = ""
    second.ScheduledProcedureStepDescription = ""
    second.ScheduledProtocolCodeSequence = Sequence()
    ds.ScheduledStepAttributesSequence.append(second)
    uid = generate_uid()
    assert (await modality.create(ds, uid))[0].Status == SUCCESS
    assert await statuses(server, scu, "STARTED") == {"A0001": "STARTED", "A0002": "STARTED"}
    assert (await modality.set(uid, ending("COMPLETED")))[0].Status == SUCCESS
    assert await statuses(server, scu, "COMPLETED") == {"A0001": "COMPLETED",
                                                       "A0002": "COMPLETED"}
    assert await statuses(server, scu) == {"A0003": "SCHEDULED"}


@pytest.mark.parametrize("study, accession, sps_id", [
    ("1.2.9.1", "", ""),                # unscheduled, in the item's own study
    ("1.2.9.1", "A9999", ""),           # another accession in the same study
    ("1.2.9.1", "A0001", "S9999"),      # the right request, another step
    (None, "A0001", "S0001"),           # another study (fresh UID)
])
async def test_an_unlinked_step_leaves_the_worklist(server: RunningServer, scu: Scu,
                                                    modality: Modality, steps: MppsRepository,
                                                    worklist: WorklistRepository,
                                                    study: str | None, accession: str,
                                                    sps_id: str) -> None:
    ids = await add_items(worklist, [item(1), item(2)])
    before = [await worklist.get(pk) for pk in ids]
    uid = generate_uid()
    ds = performing(study or generate_uid(), accession, sps_id)
    assert (await modality.create(ds, uid))[0].Status == SUCCESS
    assert (await modality.set(uid, ending("COMPLETED")))[0].Status == SUCCESS
    record = await steps.get(uid)
    assert record is not None and record.status == "COMPLETED"        # the step is kept
    assert await statuses(server, scu) == {"A0001": "SCHEDULED", "A0002": "SCHEDULED"}
    for status in ("STARTED", "COMPLETED"):
        assert await statuses(server, scu, status) == {}
    assert [await worklist.get(pk) for pk in ids] == before                # row for row
