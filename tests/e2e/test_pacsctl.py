"""pacsctl round trips against a real `python -m pacs_server` process."""

from __future__ import annotations

import json
import queue
import shutil
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pacsctl_helpers import TOKEN, start_pacs, write_config
from pydicom.dataset import Dataset
from pynetdicom.sop_class import ModalityWorklistInformationFind

from support.archive import archived_files, incoming_files
from support.instances import DicomFiles
from support.polling import wait_until
from support.scu import PENDING, SUCCESS, Scu, contexts_for, send, throttle

LOCAL_LIMIT = (0x02, 0x03, 0x02)
NOT_RECOGNISED = (0x01, 0x01, 0x03)


def try_associate(port: int, calling: str) -> tuple[bool, tuple[int, ...]]:
    """Whether `calling` gets an association (a C-ECHO then sent), else the
    A-ASSOCIATE-RJ's (result, source, diagnostic), or () when it was not a rejection."""
    with Scu(calling).associate(port, require=False) as assoc:
        if assoc.is_established:
            assoc.send_c_echo()
            return True, ()
        rj = assoc.acceptor.primitive
        return False, (rj.result, rj.result_source, rj.diagnostic) if assoc.is_rejected else ()


def test_status_json_and_table(spawn: Callable[..., Any], tmp_path: Path) -> None:
    pacs = start_pacs(spawn, tmp_path)
    status = pacs.ctl("--json", "status")
    assert status["ae_title"] == "PACS" and status["ports"]["dicom"] == pacs.port
    # --config finds URL and token in the server's file (here with the bound port).
    fixed = pacs.config.read_text().replace("metrics_port: 0", f"metrics_port: {pacs.http_port}")
    pacs.config.write_text(fixed)
    text = pacs.ctl("status", use_config=True).stdout
    assert "state" in text and "accepting" in text
    refused = subprocess.run([sys.executable, "-m", "pacs_server.pacsctl", "--url", pacs.url,
                              "--token", "wrong-token-0123456789", "status"],
                             capture_output=True, text=True, timeout=60)
    assert (refused.returncode, refused.stderr.strip()) == (1, "pacsctl: 401 wrong bearer token")
    assert pacs.proc.stop() == 0


def test_associations_detail_and_disconnect_leaves_no_partial_file(
        spawn: Callable[..., Any], tmp_path: Path, dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    big = dicom_files.big(24 << 20)
    outcome: dict[str, Any] = {}

    def transfer() -> None:
        scu = Scu("SLOWSCU")
        with scu.associate(pacs.port, contexts_for([big])) as assoc:
            throttle(assoc, 2 << 20)
            outcome["result"] = send(assoc, big)

    sender = threading.Thread(target=transfer, daemon=True)
    sender.start()
    wait_until(lambda: pacs.ctl("--json", "associations") != [], what="a live association")
    (live,) = pacs.ctl("--json", "associations")
    assert live["calling_ae"] == "SLOWSCU"
    table = pacs.ctl("associations").stdout
    assert "SLOWSCU" in table and "CALLING" in table
    detail = pacs.ctl("--json", "associations", str(live["id"]))
    assert detail["max_pdu"]["ours"] > 0
    assert any(cx["sop_class_name"] == "Secondary Capture Image Storage"
               and cx["transfer_syntax"] for cx in detail["contexts"])
    assert "accepted presentation contexts:" in pacs.ctl("associations", str(live["id"])).stdout
    # Wait until the transfer is under way, then abort it.
    wait_until(lambda: any(p.stat().st_size > 1 << 20
                           for p in incoming_files(tmp_path / "archive")),
               what="a partly received file")
    assert "aborted" in pacs.ctl("disconnect", str(live["id"])).stdout
    sender.join(60)
    assert outcome["result"].status == -1          # no C-STORE-RSP: the association ended
    wait_until(lambda: incoming_files(tmp_path / "archive") == [], what="incoming emptied")
    assert archived_files(tmp_path / "archive") == []
    assert pacs.ctl("--json", "associations") == []
    missing = pacs.ctl("disconnect", "4242", check=False)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, "pacsctl: 404 no live association 4242")
    assert pacs.proc.stop() == 0


def test_pause_refuses_new_associations_while_a_live_one_completes(
        spawn: Callable[..., Any], tmp_path: Path, dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    files = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("MR_small.dcm")]
    with Scu("LIVE").associate(pacs.port, contexts_for(files)) as assoc:
        assert "paused" in pacs.ctl("pause").stdout
        assert try_associate(pacs.port, "NEWCOMER") == (False, LOCAL_LIMIT)
        assert pacs.ctl("--json", "status")["state"] == "paused"
        assert [send(assoc, f).status for f in files] == [SUCCESS, SUCCESS]
    assert "accepting" in pacs.ctl("resume").stdout
    assert try_associate(pacs.port, "NEWCOMER") == (True, ())
    assert len(archived_files(tmp_path / "archive")) == 2
    assert pacs.proc.stop() == 0


def test_ae_add_lets_a_new_ae_in_at_once_and_survives_a_restart(
        spawn: Callable[..., Any], tmp_path: Path) -> None:
    extra = "access_control:\n  allowed_ae_titles: [KNOWN]\n"
    pacs = start_pacs(spawn, tmp_path, extra)
    assert try_associate(pacs.port, "NEWAE") == (False, NOT_RECOGNISED)
    assert "add: NEWAE" in pacs.ctl("ae", "add", "NEWAE").stdout
    assert try_associate(pacs.port, "NEWAE") == (True, ())
    pacs.ctl("ae", "add", "HOSTED", "--host", "10.9.8.7")
    assert try_associate(pacs.port, "HOSTED") == (False, NOT_RECOGNISED)  # other host
    listed = pacs.ctl("--json", "ae", "list")
    assert {(e["ae_title"], e["host"], e["origin"]) for e in listed} == {
        ("KNOWN", "", "config"), ("NEWAE", "", "api"), ("HOSTED", "10.9.8.7", "api")}
    conflict = pacs.ctl("ae", "remove", "KNOWN", check=False)
    assert conflict.returncode == 1 and "listed in the config file" in conflict.stderr
    assert pacs.proc.stop() == 0
    again = start_pacs(spawn, tmp_path, config=pacs.config)
    assert try_associate(again.port, "NEWAE") == (True, ())
    assert "NEWAE" in again.ctl("ae", "list").stdout
    again.ctl("ae", "remove", "NEWAE")
    assert try_associate(again.port, "NEWAE") == (False, NOT_RECOGNISED)
    assert again.proc.stop() == 0


def test_peers_round_trip(spawn: Callable[..., Any], tmp_path: Path) -> None:
    extra = "peers:\n  - {ae_title: CONFIGURED, host: 127.0.0.1, port: 104}\n"
    pacs = start_pacs(spawn, tmp_path, extra)
    pacs.ctl("peers", "add", "VIEWER", "127.0.0.1", "11113")
    rows = pacs.ctl("--json", "peers", "list")
    assert [(r["ae_title"], r["port"], r["origin"]) for r in rows] == [
        ("CONFIGURED", 104, "config"), ("VIEWER", 11113, "api")]
    dup = pacs.ctl("peers", "add", "VIEWER", "127.0.0.1", "11114", check=False)
    assert dup.returncode == 1 and "409" in dup.stderr
    pacs.ctl("peers", "remove", "VIEWER")
    assert "VIEWER" not in pacs.ctl("peers", "list").stdout
    assert pacs.proc.stop() == 0


def test_browse_and_stats(spawn: Callable[..., Any], tmp_path: Path,
                          dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    sent = [dicom_files.fresh("CT_small.dcm", PatientID="P1", PatientName="Doe^Jane",
                              StudyDate="20240105", AccessionNumber="ACC1"),
            dicom_files.fresh("MR_small.dcm", PatientID="P2", PatientName="Roe^Richard",
                              StudyDate="20240220")]
    assert [r.status for r in Scu().store(pacs.port, sent)] == [SUCCESS, SUCCESS]
    patients = pacs.ctl("--json", "patients", "--name", "DOE*")["rows"]
    assert [p["PatientID"] for p in patients] == ["P1"]
    studies = pacs.ctl("--json", "studies", "--date", "20240201-20240301")["rows"]
    assert [s["PatientID"] for s in studies] == ["P2"]
    assert [s["PatientID"] for s in pacs.ctl("--json", "studies", "--accession", "ACC1")
            ["rows"]] == ["P1"]
    series = pacs.ctl("--json", "series", "--modality", "MR")["rows"]
    assert [s["Modality"] for s in series] == ["MR"]
    study_uid = studies[0]["StudyInstanceUID"]
    instances = pacs.ctl("--json", "instances", "--study-uid", study_uid)["rows"]
    assert len(instances) == 1 and instances[0]["PatientID"] == "P2"
    page = pacs.ctl("--json", "studies", "--limit", "1")
    assert len(page["rows"]) == 1 and page["more"] is True
    assert "--offset 1" in pacs.ctl("studies", "--limit", "1").stdout
    # Each study row links to it in the built-in viewer.
    assert f"{pacs.url}/viewer?StudyInstanceUIDs={study_uid}" in pacs.ctl(
        "studies", "--date", "20240201-20240301").stdout
    assert "Doe^Jane" in pacs.ctl("patients").stdout
    stats = pacs.ctl("--json", "stats")
    assert stats["counts"]["instances"] == 2
    assert {m["modality"] for m in stats["by_modality"]} == {"CT", "MR"}
    assert stats["top_senders"][0] == {"ae_title": "TESTSCU", "instances": 2,
                                       "bytes": stats["counts"]["bytes"]}
    assert "per modality:" in pacs.ctl("stats").stdout
    bad = pacs.ctl("studies", "--date", "soon", check=False)
    assert bad.returncode == 1 and "400 date:" in bad.stderr
    assert pacs.proc.stop() == 0


def test_verify_finds_and_repairs(spawn: Callable[..., Any], tmp_path: Path,
                                  dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    sent = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("MR_small.dcm"),
            dicom_files.fresh("rtplan.dcm")]
    assert [r.status for r in Scu().store(pacs.port, sent)] == [SUCCESS] * 3
    assert pacs.ctl("--json", "verify")["ok"] is True
    archive = tmp_path / "archive"
    deleted, truncated, _kept = archived_files(archive)
    deleted.unlink()
    with open(truncated, "r+b") as fh:
        fh.truncate(truncated.stat().st_size - 100)
    orphan_src = dicom_files.fresh("CT_small.dcm", PatientID="ORPHAN")
    orphan = archive / "ORPHAN" / "orphan.dcm"
    orphan.parent.mkdir()
    shutil.copyfile(orphan_src, orphan)
    report = pacs.ctl("verify", check=False)
    assert report.returncode == 1
    text = report.stdout
    assert f"missing    {deleted.relative_to(archive).as_posix()}" in text
    assert f"truncated  {truncated.relative_to(archive).as_posix()}" in text
    assert "unindexed  ORPHAN/orphan.dcm" in text
    repaired = pacs.ctl("--json", "verify", "--repair")
    assert [m["path"] for m in repaired["missing"]] == [deleted.relative_to(archive).as_posix()]
    assert len(repaired["reindexed"]) == 1 and repaired["marked"] == 2
    after = json.loads(pacs.ctl("--json", "verify", check=False).stdout)
    assert after["unindexed"] == []
    assert pacs.ctl("--json", "stats")["counts"]["instances"] == 4
    con = sqlite3.connect(tmp_path / "pacs.db")
    problems = sorted(r[0] for r in con.execute("SELECT problem FROM missing_instances"))
    con.close()
    assert problems == ["missing", "truncated"]
    assert pacs.proc.stop() == 0


def test_reindex_imports_a_directory(spawn: Callable[..., Any], tmp_path: Path,
                                     dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    source = tmp_path / "old_archive"
    dicom_files.fresh("CT_small.dcm", directory=source / "a")
    dicom_files.fresh("MR_small.dcm", directory=source / "b")
    (source / "README.txt").write_text("not DICOM")
    out = pacs.ctl("reindex", str(source)).stdout
    assert "3 files: 2 stored, 0 already stored, 0 duplicates, 1 not DICOM, 0 failed" in out
    again = pacs.ctl("--json", "reindex", str(source))
    assert again["duplicates"] == 2 and again["stored"] == 0
    assert pacs.ctl("--json", "stats")["counts"]["instances"] == 2
    inside = pacs.ctl("reindex", str(tmp_path / "archive"), check=False)
    assert inside.returncode == 1 and "inside the archive" in inside.stderr
    assert pacs.proc.stop() == 0


def test_backup_opens_with_the_same_counts(spawn: Callable[..., Any], tmp_path: Path,
                                           dicom_files: DicomFiles) -> None:
    pacs = start_pacs(spawn, tmp_path)
    sent = [dicom_files.fresh("CT_small.dcm"), dicom_files.fresh("MR_small.dcm")]
    assert [r.status for r in Scu().store(pacs.port, sent)] == [SUCCESS, SUCCESS]
    dest = tmp_path / "backups" / "pacs-copy.db"
    dest.parent.mkdir()
    assert "backup written" in pacs.ctl("backup", str(dest)).stdout
    live = sqlite3.connect(tmp_path / "pacs.db")
    copy = sqlite3.connect(dest)
    for table in ("patients", "studies", "series", "instances"):
        q = f"SELECT count(*) FROM {table}"
        assert copy.execute(q).fetchone() == live.execute(q).fetchone()
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    live.close()
    copy.close()
    exists = pacs.ctl("backup", str(dest), check=False)
    assert exists.returncode == 1 and "exists" in exists.stderr
    assert pacs.proc.stop() == 0


def test_watch_shows_association_events(spawn: Callable[..., Any], tmp_path: Path) -> None:
    extra = "access_control:\n  allowed_ae_titles: [KNOWN, PROBE]\n"
    pacs = start_pacs(spawn, tmp_path, extra)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "pacs_server.pacsctl", "--url", pacs.url, "--token", TOKEN,
         "--json", "watch"], stdout=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in watcher.stdout or ()],
                     daemon=True).start()
    events: list[dict[str, Any]] = []

    def probe_seen() -> bool:
        # The feed starts once pacsctl has connected: C-ECHOs until it shows one.
        assert try_associate(pacs.port, "PROBE") == (True, ())
        try:
            events.append(json.loads(lines.get(timeout=0.5)))
        except queue.Empty:
            return False
        return True

    try:
        wait_until(probe_seen, 30, "pacsctl watch subscribed")
        assert try_associate(pacs.port, "KNOWN") == (True, ())
        assert try_associate(pacs.port, "STRANGER") == (False, NOT_RECOGNISED)
        while not any(e["kind"] == "refusal" for e in events):
            events.append(json.loads(lines.get(timeout=30)))
    finally:
        watcher.kill()
        watcher.wait(10)
    known = next(e["assoc"] for e in events
                 if e["kind"] == "associate" and e["calling_ae"] == "KNOWN")
    mine = [e for e in events if e.get("assoc") == known]
    kinds = [e["kind"] for e in mine]
    assert kinds == ["connect", "associate", "operation", "release"], kinds
    assert mine[2]["operation"] == "C-ECHO"
    refusal = next(e for e in events if e["kind"] == "refusal")
    assert refusal["calling_ae"] == "STRANGER" and refusal["reason"] == "calling_ae_not_allowed"
    assert pacs.proc.stop() == 0


@pytest.mark.parametrize("missing", ["token"])
def test_pacsctl_usage_errors(tmp_path: Path, missing: str) -> None:
    config = write_config(tmp_path).read_text().replace(f"  token: {TOKEN}\n", "")
    (tmp_path / "off.yaml").write_text(config)
    result = subprocess.run([sys.executable, "-m", "pacs_server.pacsctl", "status"],
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stderr.strip()) == (
        2, "pacsctl: no server: give --url, --config or set PACSCTL_URL")


WORKLIST_ITEM = {"patientId": "WL001", "patientName": "DOE^JOHN", "accessionNumber": "ACC9",
                 "scheduledStationAeTitle": "CT_01", "modality": "CT",
                 "scheduledProcedureStepStartDate": "20241220",
                 "scheduledProcedureStepId": "SPS9"}


def test_worklist_and_mpps_commands_under_pacsctl(spawn: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    """`pacsctl worklist|mpps` work on the configured index as `pacs_server worklist|mpps`
    do (the older spelling, kept); a running server answers the new item at once."""
    pacs = start_pacs(spawn, tmp_path)
    items = tmp_path / "items.json"
    items.write_text(json.dumps([WORKLIST_ITEM]), encoding="utf-8")
    added = pacs.ctl("worklist", "add", str(items), use_config=True)
    assert added.stdout.strip() == "added 1 worklist item(s): ids 1"
    listed = pacs.ctl("worklist", "list", use_config=True).stdout
    old = subprocess.run([sys.executable, "-m", "pacs_server", "--config", str(pacs.config),
                          "worklist", "list"], capture_output=True, text=True, timeout=60)
    assert old.returncode == 0 and old.stdout == listed and "ACC9" in listed
    query = identifier_for_worklist()
    found = Scu().find(pacs.port, query, model=str(ModalityWorklistInformationFind))
    assert [r.identifier.AccessionNumber for r in found if r.status == PENDING] == ["ACC9"]
    assert pacs.ctl("--json", "mpps", "list", use_config=True) == []
    missing = pacs.ctl("worklist", "show", "7", use_config=True, check=False)
    assert (missing.returncode, missing.stderr.strip()) == (
        1, "pacs_server worklist: no worklist item 7")
    assert pacs.proc.stop() == 0


def identifier_for_worklist() -> Dataset:
    step = Dataset()
    step.Modality = "CT"
    step.ScheduledProcedureStepStartDate = ""
    query = Dataset()
    query.PatientID = ""
    query.AccessionNumber = ""
    query.ScheduledProcedureStepSequence = [step]
    return query
