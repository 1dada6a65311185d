"""`server.workers: 2`: the supervisor and its worker processes, as a user runs them.

Real processes (`python -m pacs_server`), dcmtk's storescu and pynetdicom peers, the
HTTP side and pacsctl; signals sent to the one main PID.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from support.archive import archived_files, index_rows, wait_for_rows
from support.dcmtk import concurrent_storescu
from support.http import http_call, metric
from support.instances import DicomFiles, sender_dirs, sop_uid
from support.polling import wait_until
from support.scu import SUCCESS, Scu, association_outcome
from support.security import client_context, make_pki, tls_echo
from support.workers import TOKEN, Held, get, start, write_config

DUPLICATE = 0x0111          # the retry of an instance whose first answer was lost


def served_by(server: Any, calling: str, mark: int = 0) -> set[int]:
    """The workers that accepted an association from `calling` (their log lines)."""
    return {e["worker"] for e in server.events(mark)
            if e["event"] == "association.accepted" and e.get("calling_ae") == calling}


def pacsctl(server: Any, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "pacs_server.pacsctl", "--url", server.http,
                           "--token", TOKEN, *args], capture_output=True, text=True, timeout=60)
    assert not check or done.returncode == 0, (done.stdout, done.stderr)
    return done


# --------------------------------------------------------------------------- store

@pytest.mark.dcmtk
def test_eight_concurrent_storescu_are_stored_and_indexed_once_then_sigterm_drains(
        run_pacs: Callable[..., Any], dcmtk: Any, tmp_path: Path,
        dicom_files: DicomFiles) -> None:
    server = start(run_pacs, write_config(tmp_path))
    senders, per_sender = 8, 4
    # Shared patients: both workers' index writers create and find the same rows.
    dirs, uids = sender_dirs(dicom_files, tmp_path, senders, per_sender)
    done = concurrent_storescu(dcmtk, server.port, dirs)
    assert [code for code, _ in done] == [0] * senders, "\n".join(out for _, out in done)
    db, root = tmp_path / "pacs.db", tmp_path / "archive"
    rows = wait_for_rows(db, senders * per_sender)
    assert set(rows) == uids
    assert sorted(root / r for r in rows.values()) == archived_files(root)
    assert len(index_rows(db)) == senders * per_sender
    # The supervisor's /metrics and /status add up every worker.
    status = get(server, "/status")
    assert status["totals"]["instances_stored"] == senders * per_sender
    assert status["totals"]["accepted"] == senders + 1    # and the harness's C-ECHO
    assert status["storage"]["instances"] == senders * per_sender
    text = get(server, "/metrics")
    assert metric(text, "pacs_dimse_requests_total", service="C-STORE",
                  status="0x0000") == senders * per_sender
    assert metric(text, "pacs_associations_total", outcome="released") == senders + 1
    # Both workers' writers take turns on the one SQLite file: every commit's wait counted.
    assert metric(text, "pacs_index_writer_lock_wait_seconds_count") >= 1
    # SIGTERM to the main PID: every worker drains and stops, then the supervisor, 0.
    assert server.stop() == 0, server.stderr
    stopped = {e.get("worker") for e in server.events() if e["event"] == "server.stopped"}
    assert stopped == {1, 2, None}
    assert server.wait_for_event("supervisor.stopped", timeout=1)["workers"] == {"1": 0, "2": 0}
    assert index_rows(db) == rows


def test_both_workers_serve_the_tls_port_too(run_pacs: Callable[..., Any],
                                             tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    server = start(run_pacs, write_config(tmp_path, extra=f"""
tls:
  enabled: true
  port: 0
  cert_path: {pki / 'server.pem'}
  key_path: {pki / 'server.key'}
  ca_path: {pki / 'ca.pem'}
"""))
    tls_port = server.wait_for_event("server.started")["tls_port"]
    assert tls_port and tls_port != server.port
    ctx = client_context(pki)
    for _ in range(60):
        assert tls_echo(tls_port, ctx, calling="TLSSCU") == "accepted"
        if served_by(server, "TLSSCU") == {1, 2}:
            break
    assert served_by(server, "TLSSCU") == {1, 2}
    assert server.stop() == 0, server.stderr


# --------------------------------------------------------------------------- SIGHUP

def test_sighup_reaches_every_worker_and_an_invalid_file_is_refused_once(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    allowed = "access_control:\n  allowed_ae_titles: [{}]\n"
    config = write_config(tmp_path, extra=allowed.format("FIRST"))
    server = start(run_pacs, config)
    # Enough associations that both workers served FIRST.
    for _ in range(60):
        assert association_outcome(server.port, "FIRST") == "accepted"
        if served_by(server, "FIRST") == {1, 2}:
            break
    assert served_by(server, "FIRST") == {1, 2}
    assert association_outcome(server.port, "SECOND") == "rejected"

    config.write_text(config.read_text().replace("[FIRST]", "[SECOND]"))
    mark = server.mark()
    server.signal(signal.SIGHUP)
    for worker in (1, 2):
        reloaded = server.wait_for_event("config.reloaded", start=mark, worker=worker)
        assert reloaded["keys"] == ["access_control.allowed_ae_titles"]
    wait_until(lambda: any(e["event"] == "config.reloaded" and "worker" not in e
                           for e in server.events(mark)), what="the supervisor's reload")
    for _ in range(60):
        assert association_outcome(server.port, "SECOND") == "accepted"
        if served_by(server, "SECOND", mark) == {1, 2}:
            break
    assert served_by(server, "SECOND", mark) == {1, 2}
    assert [association_outcome(server.port, "FIRST") for _ in range(6)] == ["rejected"] * 6

    config.write_text("server: [not, a, mapping\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_event("config.reload_rejected", start=mark)
    assert association_outcome(server.port, "SECOND") == "accepted"   # a round trip later
    later = server.events(mark)
    rejected = [e for e in later if e["event"] == "config.reload_rejected"]
    assert len(rejected) == 1 and "worker" not in rejected[0]
    assert not any(e.get("worker") and e["event"].startswith("config.") for e in later)
    assert server.stop() == 0, server.stderr


def test_an_ae_title_added_through_the_api_is_accepted_by_every_worker(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(
        tmp_path, extra="access_control:\n  allowed_ae_titles: [KNOWN]\n"))
    assert association_outcome(server.port, "ADDED") == "rejected"
    status, body = asyncio.run(http_call(server.http, "POST", "/api/ae", token=TOKEN,
                                         body={"ae_title": "ADDED"}))
    assert status == 200, body
    mark = server.mark()
    for _ in range(60):
        assert association_outcome(server.port, "ADDED") == "accepted"
        if served_by(server, "ADDED", mark) == {1, 2}:
            break
    assert served_by(server, "ADDED", mark) == {1, 2}
    status, body = asyncio.run(http_call(server.http, "DELETE", "/api/ae", token=TOKEN,
                                         body={"ae_title": "ADDED"}))
    assert status == 200, body
    assert [association_outcome(server.port, "ADDED") for _ in range(6)] == ["rejected"] * 6
    assert server.stop() == 0, server.stderr


# --------------------------------------------------------------------------- SIGKILL

def test_a_killed_worker_is_restarted_and_nothing_acknowledged_is_lost(
        run_pacs: Callable[..., Any], tmp_path: Path, dicom_files: DicomFiles) -> None:
    server = start(run_pacs, write_config(tmp_path))
    files = [dicom_files.generated(directory=tmp_path / "in", PatientID=f"K{i % 4}",
                                   pixel_bytes=8192) for i in range(120)]
    acknowledged: set[str] = set()
    attempts: dict[str, int] = {}
    lock = threading.Lock()
    half = threading.Event()

    def sender(share: list[Path]) -> None:
        for path in share:
            uid = sop_uid(path)
            for _ in range(20):
                with lock:
                    attempts[uid] = attempts.get(uid, 0) + 1
                try:
                    (result,) = Scu("KILLTEST").store(server.port, [path])
                except ConnectionError:
                    continue        # refused or reset while the worker was down: retry
                # A duplicate: the first attempt was stored, its answer lost with the worker.
                if result.status == SUCCESS or (result.status == DUPLICATE
                                                and attempts[uid] > 1):
                    with lock:
                        acknowledged.add(uid)
                        if len(acknowledged) >= len(files) // 3:
                            half.set()
                    break

    threads = [threading.Thread(target=sender, args=(files[i::4],), daemon=True)
               for i in range(4)]
    for t in threads:
        t.start()
    assert half.wait(120)
    victim = server.pids[1]
    os.kill(victim, signal.SIGKILL)
    died = server.wait_for_event("worker.died", worker=1)
    assert died["pid"] == victim and died["returncode"] == -signal.SIGKILL
    restarted = wait_for_restart(server, victim)
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads)
    assert acknowledged == {sop_uid(p) for p in files}
    rows = wait_for_rows(tmp_path / "pacs.db", len(files))
    assert set(rows) == acknowledged
    root = tmp_path / "archive"
    assert all((root / rel).is_file() for rel in rows.values())
    assert metric(get(server, "/metrics"), "pacs_worker_restarts_total") == 1
    # The restarted worker serves again.
    for _ in range(40):
        association_outcome(server.port, "AFTERKILL")
        if 1 in served_by(server, "AFTERKILL"):
            break
    assert 1 in served_by(server, "AFTERKILL")
    assert restarted["pid"] != victim
    assert server.stop() == 0, server.stderr


def wait_for_restart(server: Any, victim: int) -> dict[str, Any]:
    def started() -> dict[str, Any] | None:
        return next((e for e in server.events() if e["event"] == "worker.started"
                     and e["worker"] == 1 and e["pid"] != victim), None)

    wait_until(lambda: started() is not None, 60, "worker 1 restarted")
    found = started()
    assert found is not None
    return found


# --------------------------------------------------------------------------- associations

def test_status_and_pacsctl_see_every_worker_and_disconnect_reaches_the_other_one(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))
    held = Held()
    try:
        for i in range(24):
            assert held.open(server.port, f"HOLD{i}").is_established
            workers = {a["worker"] for a in get(server, "/status")["associations"]}
            if workers == {1, 2}:
                break
        rows = get(server, "/status")["associations"]
        assert {a["worker"] for a in rows} == {1, 2}
        assert all(a["id"] == f"{a['worker']}-{a['id'].split('-')[1]}" for a in rows)
        listed = json.loads(pacsctl(server, "--json", "associations").stdout)
        assert sorted(a["id"] for a in listed) == sorted(a["id"] for a in rows)
        target = next(a for a in rows if a["worker"] == 2)
        detail = json.loads(pacsctl(server, "--json", "associations", target["id"]).stdout)
        assert detail["calling_ae"] == target["calling_ae"] and detail["contexts"]
        assert "aborted" in pacsctl(server, "disconnect", target["id"]).stdout
        victim = next(a for a in held.assocs if a.requestor.ae_title == target["calling_ae"])
        wait_until(lambda: victim.is_aborted, 15, "the association to be aborted")
        left = {a["id"] for a in get(server, "/status")["associations"]}
        assert left == {a["id"] for a in rows} - {target["id"]}
        missing = pacsctl(server, "disconnect", "2-4242", check=False)
        assert (missing.returncode, missing.stderr.strip()) == (
            1, "pacsctl: 404 no live association 2-4242")
    finally:
        held.release()
    assert server.stop() == 0, server.stderr


def test_the_live_feed_shows_every_workers_associations(run_pacs: Callable[..., Any],
                                                        tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path))

    async def watch() -> set[int]:
        seen: set[int] = set()
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as session, session.get(
                server.http + "/api/events", headers=headers) as rsp:
            assert rsp.status == 200
            await rsp.content.readline()                     # ": connected"
            for _ in range(60):
                await asyncio.to_thread(association_outcome, server.port, "WATCHED")
                while seen != {1, 2}:
                    line = await asyncio.wait_for(rsp.content.readline(), 10)
                    if line.startswith(b"data: "):
                        event = json.loads(line[6:])
                        if event["kind"] == "associate" and event["calling_ae"] == "WATCHED":
                            assert event["assoc"] == f"{event['worker']}-" \
                                                     f"{event['assoc'].split('-')[1]}"
                            seen.add(event["worker"])
                            break
                if seen == {1, 2}:
                    break
        return seen

    assert asyncio.run(watch()) == {1, 2}
    assert server.stop() == 0, server.stderr


def test_max_associations_is_server_wide(run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = start(run_pacs, write_config(tmp_path, server="  max_associations: 3"))
    held = Held()
    try:
        for i in range(3):
            assert held.open(server.port, f"LIMIT{i}").is_established
        # Whichever worker takes them, the fourth and later are refused.
        assert [association_outcome(server.port, "FOURTH") for _ in range(8)] == ["rejected"] * 8
        text = get(server, "/metrics")
        assert metric(text, "pacs_associations_rejected_total", reason="max_associations") == 8
        held.assocs.pop().release()
        wait_until(lambda: len(get(server, "/status")["associations"]) == 2, 10,
                   "a slot to be free")
        assert association_outcome(server.port, "FOURTH") == "accepted"
    finally:
        held.release()
    assert server.stop() == 0, server.stderr


def test_one_ready_for_systemd_once_every_worker_listens(
        run_pacs: Callable[..., Any], tmp_path: Path, notify_socket: socket.socket) -> None:
    server = run_pacs("--metrics-port", "0", config=write_config(tmp_path), ready=False)
    assert notify_socket.recv(256) == b"READY=1"
    # Each worker logs that it listens before it reports to the supervisor.
    for worker in (1, 2):
        server.wait_for_event("worker.started", timeout=5, worker=worker)
    ready = server.wait_for_event("server.started", timeout=5)
    assert ready["workers"] == 2
    server.signal(signal.SIGTERM)
    assert notify_socket.recv(256) == b"STOPPING=1"
    assert server.wait(60) == 0, server.stderr
    notify_socket.settimeout(0.5)
    with pytest.raises(TimeoutError):     # the workers tell systemd nothing
        notify_socket.recv(256)


def test_a_busy_port_fails_the_start_before_any_worker(run_pacs: Callable[..., Any],
                                                        tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        server = run_pacs(config=write_config(tmp_path), port=port, ready=False)
        assert server.wait(60) == 1
    assert server.stderr.splitlines()[-1] == (
        f"pacs_server: port {port} on 127.0.0.1 is already in use")
    assert not any(e["event"] == "worker.spawned" for e in server.events())


def test_sigterm_while_the_workers_start_stops_them_cleanly(run_pacs: Callable[..., Any],
                                                             tmp_path: Path) -> None:
    server = run_pacs(config=write_config(tmp_path), ready=False)
    server.wait_for_event("worker.spawned", worker=2)
    server.signal(signal.SIGTERM)
    assert server.wait(60) == 0, server.stderr
    assert server.wait_for_event("supervisor.stopped", timeout=1)["workers"] == {"1": 0, "2": 0}
    assert not any(e["event"] == "server.started" for e in server.events())


def _running(pid: int) -> bool:
    # A zombie (dead, not yet reaped by whoever inherited it) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_workers_exit_when_the_supervisor_is_killed_while_they_start(
        run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    server = run_pacs(config=write_config(tmp_path), ready=False)
    pids = [server.wait_for_event("worker.spawned", worker=i)["pid"] for i in (1, 2)]
    # Before the workers have even imported the server: they must not take init
    # for the supervisor they watch.
    server.signal(signal.SIGKILL)
    try:
        wait_until(lambda: not any(_running(pid) for pid in pids), timeout=60)
    finally:
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
