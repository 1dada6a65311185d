"""`python -m pacs_server` as a subprocess: signals, reloads, exit codes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.archive import archived_files, incoming_files, index_rows
from support.instances import DicomFiles, dataset_bytes, sop_uid
from support.polling import wait_until
from support.scu import (
    SUCCESS,
    Scu,
    StoreResult,
    association_outcome,
    contexts_for,
    send,
    throttle,
)

MiB = 1024 * 1024


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class BigTransfer:
    """Send one big file from a thread, throttled so that the test can act mid-way."""

    def __init__(self, port: int, path: Path, bytes_per_second: float) -> None:
        self.result: StoreResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(port, path, bytes_per_second),
                                        daemon=True)
        self._thread.start()

    def _run(self, port: int, path: Path, rate: float) -> None:
        try:
            with Scu("BIGSENDER").associate(port, contexts_for([path])) as assoc:
                throttle(assoc, rate)
                self.result = send(assoc, path)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def join(self, timeout: float = 60) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "sender thread did not finish"


def receiving(root: Path, at_least: int) -> Callable[[], bool]:
    """True once pynetdicom's receive buffer in .incoming holds `at_least` bytes."""

    def check() -> bool:
        for f in incoming_files(root):
            try:
                if f.stat().st_size >= at_least:
                    return True
            except FileNotFoundError:
                pass
        return False

    return check


# --------------------------------------------------------------------------- SIGTERM

def test_sigterm_aborts_a_transfer_in_flight(run_pacs: Callable[..., Any], tmp_path: Path,
                                             dicom_files: DicomFiles) -> None:
    config = write(tmp_path / "pacs.yaml", "server:\n  shutdown_grace: 0\n")
    server = run_pacs(config=config)
    root, db = tmp_path / "archive", tmp_path / "pacs.db"
    big = dicom_files.big(64 * MiB)
    transfer = BigTransfer(server.port, big, bytes_per_second=24 * MiB)
    wait_until(receiving(root, 4 * MiB), 30, "the transfer to be under way")
    server.signal(signal.SIGTERM)
    assert server.wait(30) == 0, server.stderr
    transfer.join()
    assert transfer.result is None or transfer.result.status != SUCCESS
    aborted = server.wait_for_event("server.aborted_associations", timeout=1)
    assert aborted["count"] == 1
    server.wait_for_event("server.stopped", timeout=1)
    # nothing half-written outside .incoming, and no index row without its file
    assert archived_files(root) == []
    assert index_rows(db) == {}
    # the aborted association's receive buffer is gone already (dicom/associations.py
    # discard_partial_receive); a crash would leave it for the next start to clear
    assert incoming_files(root) == []
    again = run_pacs(config=config)
    assert incoming_files(root) == []
    assert again.stop() == 0


def test_sigterm_drains_a_transfer_in_flight(run_pacs: Callable[..., Any], tmp_path: Path,
                                             dicom_files: DicomFiles) -> None:
    config = write(tmp_path / "pacs.yaml", "server:\n  shutdown_grace: 30\n")
    server = run_pacs(config=config)
    root, db = tmp_path / "archive", tmp_path / "pacs.db"
    big = dicom_files.big(24 * MiB)
    transfer = BigTransfer(server.port, big, bytes_per_second=12 * MiB)
    wait_until(receiving(root, 2 * MiB), 30, "the transfer to be under way")
    server.signal(signal.SIGTERM)
    draining = server.wait_for_event("server.draining", timeout=10)
    assert draining["associations"] == 1
    # the listener is closed while the association finishes
    assert association_outcome(server.port, "LATECOMER") == "failed"
    assert server.wait(60) == 0, server.stderr
    transfer.join()
    assert transfer.error is None, transfer.error
    assert transfer.result is not None and transfer.result.status == SUCCESS
    assert not any(e["event"] == "server.aborted_associations" for e in server.events())
    rows = index_rows(db)
    uid = sop_uid(big)
    assert list(rows) == [uid]
    stored = root / rows[uid]
    assert archived_files(root) == [stored]
    assert dataset_bytes(stored) == dataset_bytes(big)


def test_sigint_stops_cleanly(run_pacs: Callable[..., Any]) -> None:
    server = run_pacs()
    server.signal(signal.SIGINT)
    assert server.wait(30) == 0
    server.wait_for_event("server.stopped", timeout=1)
    assert "Traceback" not in server.stderr


# --------------------------------------------------------------------------- SIGHUP

@pytest.mark.parametrize(("bad", "expected"), [
    ("server: [\n", "YAML syntax error"),
    ("server:\n  bogus: 1\n", "server.bogus: unknown key"),
    ("storage:\n  duplicate_policy: sometimes\n", "storage.duplicate_policy: must be one of"),
], ids=["syntax", "unknown-key", "bad-enum"])
def test_sighup_with_a_bad_file_keeps_running(run_pacs: Callable[..., Any], tmp_path: Path,
                                              bad: str, expected: str) -> None:
    config = write(tmp_path / "pacs.yaml", "storage:\n  duplicate_policy: reject\n")
    server = run_pacs(config=config)
    write(config, bad)
    mark = server.mark()
    server.signal(signal.SIGHUP)
    rejected = server.wait_for_event("config.reload_rejected", timeout=10, start=mark)
    assert str(config) in rejected["error"] and expected in rejected["error"]
    assert server.proc.poll() is None
    assert Scu().echo(server.port) == SUCCESS
    assert server.stop() == 0


def test_sighup_changes_allowed_ae_titles(run_pacs: Callable[..., Any], tmp_path: Path) -> None:
    config = write(tmp_path / "pacs.yaml", "access_control:\n  allowed_ae_titles: [OLDSCU]\n")
    server = run_pacs(config=config)
    assert association_outcome(server.port, "OLDSCU") == "accepted"
    assert association_outcome(server.port, "NEWSCU") == "rejected"

    write(config, "access_control:\n  allowed_ae_titles: [NEWSCU]\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    reloaded = server.wait_for_event("config.reloaded", timeout=10, start=mark)
    assert reloaded["keys"] == ["access_control.allowed_ae_titles"]
    assert association_outcome(server.port, "NEWSCU") == "accepted"
    assert association_outcome(server.port, "OLDSCU") == "rejected"

    # the same file again: nothing to do
    mark = server.mark()
    server.signal(signal.SIGHUP)
    server.wait_for_event("config.reload_unchanged", timeout=10, start=mark)

    # a change that needs a restart is reported, not applied
    write(config, "access_control:\n  allowed_ae_titles: [NEWSCU]\n"
                  "server:\n  max_associations: 7\n")
    mark = server.mark()
    server.signal(signal.SIGHUP)
    cold = server.wait_for_event("config.restart_required", timeout=10, start=mark)
    assert cold["keys"] == ["server.max_associations"]
    assert association_outcome(server.port, "NEWSCU") == "accepted"
    assert server.stop() == 0


# --------------------------------------------------------------------------- exit codes

def run_cli(*argv: str, cwd: Path, module: str = "pacs_server",
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize(("content", "args", "expected"), [
    ("server:\n  bogus: 1\n", [], "{config}: server.bogus: unknown key"),
    ("server:\n  port: [1\n", [], "{config}: line 3: YAML syntax error"),
    ("server:\n  port: eleven\n", [], "{config}: server.port: expected an integer"),
    ("storage:\n  naming: weird\n", [], "{config}: storage.naming: must be one of"),
    (None, ["--config", "{missing}"], "{missing}: cannot read file: No such file"),
    (None, ["--ae-title", "THIS-AE-TITLE-IS-TOO-LONG"], "<defaults>: server.ae_title: "),
    (None, ["--port", "70000"], "<defaults>: server.port: must be -1 (off) or 0-65535"),
], ids=["unknown-key", "yaml-syntax", "wrong-type", "bad-enum", "missing-file",
        "bad-ae-title", "bad-port"])
def test_config_errors_exit_2(tmp_path: Path, content: str | None, args: list[str],
                              expected: str) -> None:
    config = tmp_path / "pacs.yaml"
    missing = tmp_path / "missing.yaml"
    argv = [a.format(missing=missing) for a in args]
    if content is not None:
        write(config, content)
        argv += ["--config", str(config)]
    done = run_cli(*argv, "--log-file", "", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    line = one_line(done.stderr)
    assert line.startswith("pacs_server: " + expected.format(config=config, missing=missing))
    assert not (tmp_path / "archive").exists(), "nothing is created before the config is valid"


def test_check_config(tmp_path: Path) -> None:
    config = write(tmp_path / "pacs.yaml", "server:\n  port: 4242\n")
    done = run_cli("check-config", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{config}: OK"
    bad = run_cli("check-config", "--config", str(write(tmp_path / "bad.yaml", "x: 1\n")),
                  cwd=tmp_path)
    assert bad.returncode == 2


def test_port_in_use_exits_1(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_cli("--port", str(port), "--host", "127.0.0.1", "--storage-dir",
                       str(tmp_path / "archive"), "--db", str(tmp_path / "pacs.db"),
                       "--log-file", "", "--metrics-port", "-1", cwd=tmp_path)
    assert done.returncode == 1
    assert one_line(done.stderr) == f"pacs_server: port {port} on 127.0.0.1 is already in use"


@pytest.mark.parametrize("what", ["storage", "database", "metrics"])
def test_startup_errors_exit_1(tmp_path: Path, what: str) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_bytes(b"not a directory, not a database" * 100)
    storage = tmp_path / "archive"
    db = tmp_path / "pacs.db"
    metrics_port = "-1"
    expected = ""
    busy: socket.socket | None = None
    if what == "storage":
        storage = blocker / "archive"
        expected = "is not writable"
    elif what == "database":
        db = blocker
        expected = "index database cannot be opened"
    else:
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        metrics_port = str(busy.getsockname()[1])
        expected = f"HTTP port {metrics_port} on 127.0.0.1 is already in use"
    try:
        done = run_cli("--port", "0", "--host", "127.0.0.1", "--storage-dir", str(storage),
                       "--db", str(db), "--log-file", "", "--metrics-port", metrics_port,
                       cwd=tmp_path)
    finally:
        if busy is not None:
            busy.close()
    assert done.returncode == 1
    line = one_line(done.stderr)
    assert line.startswith("pacs_server: ") and expected in line, line
