"""The audit log, SIGHUP reloads of what the operations issue adds, and systemd's
readiness protocol, against a real `python -m pacs_server` process."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pacsctl_helpers import TOKEN, start_pacs
from pydicom.dataset import Dataset
from pynetdicom import AE

from support.instances import DicomFiles
from support.polling import wait_until
from support.scu import SUCCESS, Scu

STUDY_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
COMMON = {"time", "source_ae", "event", "event_id", "action", "outcome", "service"}
WHO = {"calling_ae", "called_ae", "address", "association"}


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def find_patient(port: int, patient_id: str) -> int:
    ae = AE(ae_title="FINDER")
    ae.add_requested_context(STUDY_FIND)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.PatientID = patient_id
    ident.StudyInstanceUID = ""
    n = sum(1 for st, _ in assoc.send_c_find(ident, STUDY_FIND) if st and st.Status == 0xFF00)
    assoc.release()
    return n


def ctl(url: str, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pacs_server.pacsctl", "--url", url,
                           "--token", token, *args], capture_output=True, text=True,
                          timeout=60)


def test_audit_records_every_operation_with_the_documented_fields(
        spawn: Callable[..., Any], tmp_path: Path, dicom_files: DicomFiles) -> None:
    audit = tmp_path / "audit" / "audit.jsonl"
    extra = ("access_control:\n  allowed_ae_titles: [TESTSCU, FINDER]\n")
    config_extra = extra
    pacs = start_pacs(spawn, tmp_path, config_extra)
    text = pacs.config.read_text().replace('  file: ""', f'  file: ""\n  audit_file: {audit}')
    pacs.config.write_text(text)
    pacs.proc.signal(signal.SIGHUP)
    pacs.proc.wait_for_event("config.reloaded")
    sent = dicom_files.fresh("CT_small.dcm", PatientID="AUD1")
    assert Scu().store(pacs.port, [sent])[0].status == SUCCESS
    assert find_patient(pacs.port, "AUD1") == 1
    rejected = AE(ae_title="INTRUDER")
    rejected.add_requested_context("1.2.840.10008.1.1")
    assert rejected.associate("127.0.0.1", pacs.port, ae_title="PACS").is_rejected
    assert ctl(pacs.url, TOKEN, "pause").returncode == 0
    assert ctl(pacs.url, "not-the-token-0123456789", "resume").returncode == 1
    wait_until(lambda: len(records(audit)) >= 9, what="audit records")
    recs = records(audit)
    for rec in recs:
        assert COMMON <= set(rec), rec
        assert rec["source_ae"] == "PACS"
    store = next(r for r in recs if r["service"] == "C-STORE")
    assert store["event"] == "DICOM Instances Transferred" and store["event_id"] == "110104"
    assert store["action"] == "C" and store["outcome"] == "0" and store["status"] == "0x0000"
    assert WHO <= set(store) and store["calling_ae"] == "TESTSCU"
    assert store["address"] == "127.0.0.1"
    assert store["patient_id"] == "AUD1" and store["study_uid"]
    assert store["sop_instance_uids"] and store["sop_class_uid"] and store["bytes"] > 0
    query = next(r for r in recs if r["service"] == "C-FIND")
    assert (query["event"], query["event_id"], query["action"]) == ("Query", "110112", "E")
    assert query["level"] == "STUDY" and query["keys"] == {"PatientID": "AUD1"}
    assert query["patient_id"] == "AUD1" and query["count"] == 1
    assert query["calling_ae"] == "FINDER"
    opened = [r for r in recs if r.get("subtype") == "association-accepted"]
    closed = [r for r in recs if r.get("subtype") == "association-release"]
    assert len(opened) == 2 and len(closed) == 2
    assert all(r["event"] == "Application Activity" for r in opened + closed)
    alert = next(r for r in recs if r["event"] == "Security Alert")
    assert (alert["event_id"], alert["calling_ae"], alert["reason"]) == (
        "110113", "INTRUDER", "calling_ae_not_allowed")
    admin = [r for r in recs if r["service"] == "admin-api"]
    assert [(r["subtype"], r["result"]) for r in admin] == [("pause", "success"),
                                                           ("api.refused", "refused")]
    assert admin[1]["reason"] == "wrong bearer token"
    # SIGHUP reopens the file: after a rotation the next records go to a new file.
    audit.rename(audit.with_suffix(".1"))
    pacs.proc.signal(signal.SIGHUP)
    pacs.proc.wait_for_event("config.reload_unchanged")
    assert ctl(pacs.url, TOKEN, "resume").returncode == 0
    wait_until(lambda: len(records(audit)) == 1, what="a record in the reopened file")
    assert records(audit)[0]["subtype"] == "resume"
    assert pacs.proc.stop() == 0


def test_sighup_reloads_the_token_and_the_log_level(spawn: Callable[..., Any],
                                                    tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    pacs = start_pacs(spawn, tmp_path)
    text = pacs.config.read_text().replace(f"  token: {TOKEN}", f"  token_file: {token_file}")
    pacs.config.write_text(text.replace('  file: ""', '  file: ""\n  level: debug'))
    pacs.proc.signal(signal.SIGHUP)
    reloaded = pacs.proc.wait_for_event("config.reloaded")
    assert set(reloaded["keys"]) == {"logging.level", "admin.token", "admin.token_file"}
    assert ctl(pacs.url, TOKEN, "status").returncode == 0
    new = "rotated-token-0123456789abcdef"
    token_file.write_text(new + "\n")
    mark = pacs.proc.mark()
    pacs.proc.signal(signal.SIGHUP)
    pacs.proc.wait_for_event("config.reload_unchanged", start=mark)
    assert ctl(pacs.url, TOKEN, "status").stderr.strip() == "pacsctl: 401 wrong bearer token"
    assert ctl(pacs.url, new, "status").returncode == 0
    assert pacs.proc.stop() == 0


def test_systemd_ready_and_stopping(spawn: Callable[..., Any], tmp_path: Path,
                                    notify_socket: socket.socket) -> None:
    pacs = start_pacs(spawn, tmp_path)
    assert notify_socket.recv(256) == b"READY=1"
    pacs.proc.signal(signal.SIGTERM)
    assert notify_socket.recv(256) == b"STOPPING=1"
    assert pacs.proc.wait(30) == 0
