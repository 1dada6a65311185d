"""audit.py: records, outcomes, reopening, many writers."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from pacs_server.audit import AuditLog, outcome_of
from pacs_server.errors import StartupError


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_operation_record_fields(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.jsonl"
    log = AuditLog(str(path), "PACS")
    log.association_event("operation", {
        "assoc": 3, "peer": "10.0.0.5:4242", "calling_ae": "CT1", "called_ae": "PACS",
        "operation": "C-MOVE", "status": "0xB000", "failed": False, "bytes": 0,
        "level": "STUDY", "keys": {"PatientID": "X"}, "count": 4, "destination": "VIEW"})
    log.close()
    (rec,) = lines(path)
    assert rec["event"] == "Begin Transferring DICOM Instances" and rec["event_id"] == "110102"
    assert (rec["action"], rec["outcome"], rec["service"]) == ("R", "4", "C-MOVE")
    assert (rec["address"], rec["association"], rec["calling_ae"]) == ("10.0.0.5", 3, "CT1")
    assert (rec["count"], rec["destination"], rec["source_ae"]) == (4, "VIEW", "PACS")


def test_outcomes() -> None:
    assert outcome_of("0x0000") == "0"
    assert outcome_of("0xB000") == "4"
    assert outcome_of("0xA700", failed=True) == "8"


def test_off_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog("", "PACS")
    log.admin_call("pause", "success")
    assert list(tmp_path.iterdir()) == []


def test_reopen_after_rotation_and_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), "PACS")
    threads = [threading.Thread(target=lambda: [log.admin_call("x", "success", n=i)
                                                for i in range(200)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(lines(path)) == 800
    path.rename(tmp_path / "audit.jsonl.1")
    log.reopen()
    log.admin_call("resume", "success")
    log.close()
    assert [r["subtype"] for r in lines(path)] == ["resume"]


def test_unopenable_file_is_a_startup_error(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(StartupError, match="audit file .* cannot be opened"):
        AuditLog(str(tmp_path / "dir"), "PACS")


def test_reopen_to_a_bad_path_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), "PACS")
    (tmp_path / "dir").mkdir()
    log.reopen(str(tmp_path / "dir"))
    log.admin_call("kept", "success")
    log.close()
    assert [r["subtype"] for r in lines(path)] == ["kept"]
