"""MPPS SCP against a real server: pynetdicom's N-CREATE / N-SET as the modality.

dcmtk has no MPPS SCU, so pynetdicom is the peer. Each test checks the statuses the
SCU receives and what the index then holds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from pacs_server import cli
from pacs_server.config import Config
from pacs_server.errors import InvalidAttributeValue
from pacs_server.index.mpps import MppsRepository, StepRecord
from pacs_server.services.mpps import MppsService, WorklistLink, decode
from support.mpps import (
    Modality,
    create_attributes,
    final_modification,
    performed_series,
    step_repository,
)
from support.polling import wait_until
from support.scu import SUCCESS, Scu
from support.server import RunningServer


def identifiers(status: Dataset) -> list[int]:
    """The Attribute Identifier List of a status (one tag comes back as a bare tag)."""
    value = status.AttributeIdentifierList
    return [int(value)] if isinstance(value, int) else [int(t) for t in value]


async def stored(steps: MppsRepository, uid: str) -> StepRecord:
    record = await steps.get(uid)
    assert record is not None, f"{uid} not in the index"
    return record


# --------------------------------------------------------------------------- N-CREATE

async def test_create_then_complete(steps: MppsRepository, modality: Modality) -> None:
    uid = generate_uid()
    status, reply = await modality.create(create_attributes(), uid)
    assert status.Status == SUCCESS

    record = await stored(steps, uid)
    assert (record.status, record.study_instance_uid, record.accession_number,
            record.sps_id, record.pps_id, record.station_ae, record.modality,
            record.start_date, record.start_time, record.patient_id, record.patient_name,
            record.calling_ae) == (
        "IN PROGRESS", "1.2.3.4.5.6.7.8.9", "ACC001", "SPS001", "PPS001", "CT_01", "CT",
        "20241220", "101500", "12345", "MÜLLER^JÖRG", modality.scu.ae_title)

    mods = final_modification()
    status, _ = await modality.set(uid, mods)
    assert status.Status == SUCCESS, status
    record = await stored(steps, uid)
    assert (record.status, record.end_date, record.end_time) == (
        "COMPLETED", "20241220", "103000")
    ds = decode(record.dataset)
    assert ds.PatientName == "MÜLLER^JÖRG"              # text kept in its character set
    assert ds.SpecificCharacterSet == "ISO_IR 100"
    series = ds.PerformedSeriesSequence[0]
    assert series.SeriesInstanceUID == mods.PerformedSeriesSequence[0].SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for r in series.ReferencedImageSequence] == [
        r.ReferencedSOPInstanceUID
        for r in mods.PerformedSeriesSequence[0].ReferencedImageSequence]
    assert ds.PerformedStationName == "CT ROOM 1"      # created attributes kept

    # Final: any later N-SET is a Processing Failure with the standard's comment.
    again = Dataset()
    again.PerformedProcedureStepDescription = "changed"
    status, _ = await modality.set(uid, again)
    assert status.Status == 0x0110
    assert status.ErrorComment == "Performed Procedure Step Object may no longer be updated"
    assert status.ErrorID == 0xA710
    assert decode((await stored(steps, uid)).dataset).PerformedProcedureStepDescription \
        == "CT Abdomen"


async def test_create_without_uid_gets_one(steps: MppsRepository, modality: Modality) -> None:
    status, _ = await modality.create(create_attributes(), None)
    assert status.Status == SUCCESS
    recent = await steps.recent()
    assert len(recent) == 1 and recent[0].sop_instance_uid
    # The UID the SCP assigned is the one the SCU can set.
    status, _ = await modality.set(recent[0].sop_instance_uid, final_modification())
    assert status.Status == SUCCESS


async def test_create_then_discontinue(steps: MppsRepository, modality: Modality) -> None:
    uid = generate_uid()
    ds = create_attributes(PerformedProcedureStepDiscontinuationReasonCodeSequence=Sequence())
    assert (await modality.create(ds, uid))[0].Status == SUCCESS
    reason = Dataset()
    reason.CodeValue = "110514"
    reason.CodingSchemeDesignator = "DCM"
    reason.CodeMeaning = "Incorrect worklist entry selected"
    mods = final_modification("DISCONTINUED", series=Sequence())
    mods.PerformedProcedureStepDiscontinuationReasonCodeSequence = Sequence([reason])
    status, _ = await modality.set(uid, mods)
    assert status.Status == SUCCESS, status
    record = await stored(steps, uid)
    assert record.status == "DISCONTINUED"
    ds = decode(record.dataset)
    assert ds.PerformedProcedureStepDiscontinuationReasonCodeSequence[0].CodeValue == "110514"
    status, _ = await modality.set(uid, final_modification())
    assert status.Status == 0x0110


async def test_duplicate_create(steps: MppsRepository, modality: Modality) -> None:
    uid = generate_uid()
    assert (await modality.create(create_attributes(), uid))[0].Status == SUCCESS
    status, _ = await modality.create(create_attributes(PerformedProcedureStepID="OTHER"), uid)
    assert status.Status == 0x0111
    assert (await stored(steps, uid)).pps_id == "PPS001"       # the first one kept


async def test_missing_type1_attributes(steps: MppsRepository, modality: Modality) -> None:
    uid = generate_uid()
    ds = create_attributes(PerformedStationAETitle=None, Modality=None)
    status, _ = await modality.create(ds, uid)
    assert status.Status == 0x0120
    # pynetdicom's N-CREATE-RSP has no Attribute Identifier List (PS3.7 C.5.13), so
    # the tags travel in the Error Comment as well.
    assert "(0008,0060)" in status.ErrorComment and "(0040,0241)" in status.ErrorComment
    assert await steps.get(uid) is None


async def test_missing_nested_type1_attribute(modality: Modality) -> None:
    ds = create_attributes()
    del ds.ScheduledStepAttributesSequence[0].StudyInstanceUID
    status, _ = await modality.create(ds, generate_uid())
    assert status.Status == 0x0120
    assert "(0040,0270)>(0020,000D)" in status.ErrorComment


async def test_empty_type1_attribute(modality: Modality) -> None:
    status, _ = await modality.create(create_attributes(PerformedProcedureStepID=""),
                                      generate_uid())
    assert status.Status == 0x0121
    assert "(0040,0253)" in status.ErrorComment


@pytest.mark.parametrize(("keyword", "value"), [
    ("PerformedProcedureStepStatus", "COMPLETED"),
    ("PerformedProcedureStepStatus", "STARTED"),
    ("PerformedProcedureStepStartDate", "20241301"),
    ("PerformedProcedureStepStartTime", "256000"),
])
async def test_bad_values_at_create(steps: MppsRepository, modality: Modality, keyword: str,
                                    value: str) -> None:
    uid = generate_uid()
    status, _ = await modality.create(create_attributes(**{keyword: value}), uid)
    assert status.Status == 0x0106
    assert keyword in status.ErrorComment
    assert await steps.get(uid) is None


async def test_unscheduled_step_is_kept(steps: MppsRepository, modality: Modality) -> None:
    uid = generate_uid()
    ds = create_attributes()
    item = ds.ScheduledStepAttributesSequence[0]
    item.StudyInstanceUID = generate_uid()
    item.AccessionNumber = ""
    item.ScheduledProcedureStepID = ""
    assert (await modality.create(ds, uid))[0].Status == SUCCESS
    record = await stored(steps, uid)
    assert (record.accession_number, record.sps_id) == ("", "")


# --------------------------------------------------------------------------- N-SET

async def test_set_unknown_instance(modality: Modality) -> None:
    status, _ = await modality.set(generate_uid(), final_modification())
    assert status.Status == 0x0112


async def test_set_of_a_non_settable_attribute(steps: MppsRepository,
                                                modality: Modality) -> None:
    uid = generate_uid()
    assert (await modality.create(create_attributes(), uid))[0].Status == SUCCESS
    mods = Dataset()
    mods.PerformedProcedureStepDescription = "fine"
    mods.PatientID = "99999"
    mods.Modality = "MR"
    status, _ = await modality.set(uid, mods)
    assert status.Status == 0x0105                   # PS3.7 C.5.17 No Such Attribute
    assert identifiers(status) == [0x00080060, 0x00100020]
    record = await stored(steps, uid)
    assert (record.patient_id, record.modality, record.status) == ("12345", "CT",
                                                                   "IN PROGRESS")
    assert decode(record.dataset).PerformedProcedureStepDescription == "CT Abdomen"


async def test_intermediate_set_then_complete(steps: MppsRepository,
                                              modality: Modality) -> None:
    uid = generate_uid()
    assert (await modality.create(create_attributes(), uid))[0].Status == SUCCESS
    mods = Dataset()
    mods.PerformedSeriesSequence = performed_series(1)
    mods.CommentsOnThePerformedProcedureStep = "first series done"
    assert (await modality.set(uid, mods))[0].Status == SUCCESS
    record = await stored(steps, uid)
    assert record.status == "IN PROGRESS"
    assert decode(record.dataset).CommentsOnThePerformedProcedureStep == "first series done"
    assert (await modality.set(uid, final_modification()))[0].Status == SUCCESS


async def test_complete_needs_the_final_state(steps: MppsRepository,
                                              modality: Modality) -> None:
    uid = generate_uid()
    assert (await modality.create(create_attributes(), uid))[0].Status == SUCCESS

    no_series = final_modification(series=Sequence())
    status, _ = await modality.set(uid, no_series)
    assert status.Status == 0x0121
    assert identifiers(status) == [0x00400340]

    no_end = Dataset()
    no_end.PerformedProcedureStepStatus = "COMPLETED"
    no_end.PerformedSeriesSequence = performed_series()
    status, _ = await modality.set(uid, no_end)
    assert status.Status == 0x0121                    # End Date/Time still empty
    assert identifiers(status) == [0x00400250, 0x00400251]

    bad_series = final_modification(series=performed_series())
    del bad_series.PerformedSeriesSequence[0].SeriesInstanceUID
    status, _ = await modality.set(uid, bad_series)
    assert status.Status == 0x0121                    # 0120H is no N-SET status
    assert "(0040,0340)>(0020,000E)" in status.ErrorComment
    assert (await stored(steps, uid)).status == "IN PROGRESS"

    bad_status = final_modification("FINISHED")
    status, _ = await modality.set(uid, bad_status)
    assert status.Status == 0x0106

    assert (await modality.set(uid, final_modification()))[0].Status == SUCCESS


# --------------------------------------------------------------------------- persistence

async def test_restart_keeps_the_steps(start_server: Callable[..., Any],
                                       make_cfg: Callable[..., Config], scu: Scu) -> None:
    cfg = make_cfg()
    first = await start_server(cfg)
    uid = generate_uid()
    assert (await Modality(first.port, scu).create(create_attributes(), uid))[0].Status \
        == SUCCESS
    await asyncio.to_thread(first.stop)

    second = await start_server(cfg)
    async with step_repository(second.db) as steps:
        record = await stored(steps, uid)
        assert record.status == "IN PROGRESS"
        assert decode(record.dataset).PerformedStationName == "CT ROOM 1"
        status, _ = await Modality(second.port, scu).set(uid, final_modification())
        assert status.Status == SUCCESS
        assert (await stored(steps, uid)).status == "COMPLETED"


# --------------------------------------------------------------------------- worklist link

class RecordingWorklist:
    """Our WorklistLink protocol, recording each call (the worklist tables land later)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str, str]] = []

    async def set_step_status(self, study_instance_uid: str, accession_number: str,
                              sps_id: str, status: str) -> int:
        self.calls.append((study_instance_uid, accession_number, sps_id, status))
        return 1


async def test_worklist_follows_the_step(steps: MppsRepository) -> None:
    worklist = RecordingWorklist()
    link: WorklistLink = worklist
    service = MppsService(steps, link)
    first = create_attributes()
    second_item = Dataset()
    second_item.StudyInstanceUID = "1.2.3.4.5.6.7.8.9"
    second_item.AccessionNumber = "ACC002"
    second_item.ScheduledProcedureStepID = "SPS002"
    first.ScheduledStepAttributesSequence.append(second_item)
    uid = generate_uid()
    await service.create(uid, first, "CT_01")
    assert worklist.calls == [("1.2.3.4.5.6.7.8.9", "ACC001", "SPS001", "STARTED"),
                              ("1.2.3.4.5.6.7.8.9", "ACC002", "SPS002", "STARTED")]

    worklist.calls.clear()
    comment = Dataset()
    comment.CommentsOnThePerformedProcedureStep = "no status change"
    await service.set(uid, comment)
    assert worklist.calls == []
    await service.set(uid, final_modification())
    assert [c[3] for c in worklist.calls] == ["COMPLETED", "COMPLETED"]

    # An unscheduled step names no worklist item.
    worklist.calls.clear()
    unscheduled = create_attributes()
    item = unscheduled.ScheduledStepAttributesSequence[0]
    item.AccessionNumber = item.ScheduledProcedureStepID = ""
    other = generate_uid()
    await service.create(other, unscheduled)
    await service.set(other, final_modification("DISCONTINUED", series=Sequence()))
    assert worklist.calls == []


# --------------------------------------------------------------------------- admin command

async def test_admin_command_lists_and_shows(server: RunningServer, modality: Modality,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    db = str(server.db)
    done, running = generate_uid(), generate_uid()
    assert (await modality.create(create_attributes(), done))[0].Status == SUCCESS
    assert (await modality.set(done, final_modification()))[0].Status == SUCCESS
    ds = create_attributes(PerformedProcedureStepID="PPS002", Modality="MR")
    assert (await modality.create(ds, running))[0].Status == SUCCESS
    # The modality's associations end when it closes them (Sta13, dicom/closing.py):
    # their association.closed lines must not land in the admin command's output.
    await asyncio.to_thread(wait_until, lambda: server.sample("pacs_association_active") == 0,
                            5.0, "associations closed")
    await asyncio.sleep(0.05)       # the line follows the gauge's decrement
    capsys.readouterr()

    async def admin(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["mpps", *argv, "--db", db])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await admin("list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["SOP", "INSTANCE"]
    assert [line.split()[0] for line in lines[1:3]] == [running, done]   # newest first
    assert "IN PROGRESS" in lines[1] and "COMPLETED" in lines[2]
    assert lines[-1] == "2 step(s)"

    code, out, _ = await admin("list", "--status", "in_progress", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["sop_instance_uid"] for r in rows] == [running]
    assert (rows[0]["modality"], rows[0]["pps_id"], rows[0]["accession_number"]) == (
        "MR", "PPS002", "ACC001")

    code, out, _ = await admin("show", done, "--json")
    shown = json.loads(out)
    assert code == 0 and shown["status"] == "COMPLETED"
    assert (shown["end_date"], shown["end_time"]) == ("20241220", "103000")
    assert shown["created_at"].endswith("+00:00")
    attributes = shown["attributes"]
    assert attributes["00400252"]["Value"] == ["COMPLETED"]              # status
    assert attributes["00100010"]["Value"] == [{"Alphabetic": "MÜLLER^JÖRG"}]
    series = attributes["00400340"]["Value"][0]
    assert len(series["00081140"]["Value"]) == 2                        # the image refs

    code, out, _ = await admin("show", done)
    assert code == 0
    assert "Performed Series Sequence" in out and "(0040,0252)" in out

    code, _, err = await admin("show", "1.2.3.404")
    assert code == 1 and err.strip() == "pacs_server mpps: no procedure step 1.2.3.404"


def test_admin_command_process(tmp_path: Path) -> None:
    """The installed entry point: one-line errors, exit codes, no database created."""
    db = tmp_path / "none.db"
    run = subprocess.run([sys.executable, "-m", "pacs_server", "mpps", "list", "--db", str(db)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr.strip() == f"pacs_server mpps: no index database at {db}"
    assert not db.exists()
    run = subprocess.run([sys.executable, "-m", "pacs_server", "mpps", "list",
                          "--status", "FINISHED"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "invalid choice" in run.stderr


# --------------------------------------------------------------------------- character sets

async def test_set_in_another_character_set(steps: MppsRepository, modality: Modality) -> None:
    """PS3.4 F.7.2.2.3: the N-SET's character set adds to the step's."""
    uid = generate_uid()
    assert (await modality.create(create_attributes(), uid))[0].Status == SUCCESS  # Latin-1
    mods = Dataset()
    mods.SpecificCharacterSet = "ISO_IR 192"
    mods.CommentsOnThePerformedProcedureStep = "Kontrast gut vertragen, 造影剤"
    assert (await modality.set(uid, mods))[0].Status == SUCCESS
    ds = decode((await stored(steps, uid)).dataset)
    assert ds.SpecificCharacterSet == "ISO_IR 192"
    assert ds.PatientName == "MÜLLER^JÖRG"
    assert ds.CommentsOnThePerformedProcedureStep == "Kontrast gut vertragen, 造影剤"

    # In the step's own character set (now UTF-8), the values are taken as they are.
    latin = Dataset()
    latin.PerformedProcedureStepDescription = "Ödem"
    latin.SpecificCharacterSet = "ISO_IR 192"
    assert (await modality.set(uid, latin))[0].Status == SUCCESS
    assert decode((await stored(steps, uid)).dataset).PerformedProcedureStepDescription \
        == "Ödem"


async def test_create_with_a_malformed_uid(steps: MppsRepository) -> None:
    service = MppsService(steps)
    with pytest.raises(InvalidAttributeValue, match="Affected SOP Instance UID"):
        await service.create("1.2.x.3", create_attributes())
    assert await steps.recent() == []
