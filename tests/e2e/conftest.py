"""Subprocess fixtures: `python -m pacs_server` and `python -m pacs_server.store_scp`.

The servers run with --port 0; the bound port is read from their stderr (the JSON
`server.started` event, or store_scp's "listening on" line), then readiness is polled
with an A-ASSOCIATE-RQ. Every process a test starts is killed (by its own pid) at
teardown if it is still running.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from support.config import transport_args
from support.scu import wait_until_responds

STARTUP_TIMEOUT = 30.0


class ServerProcess:
    """One server subprocess whose stderr is collected line by line in a thread."""

    def __init__(self, argv: list[str], cwd: Path) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.stdout: list[str] = []
        self._cond = threading.Condition()
        self._readers = [
            threading.Thread(target=self._read, args=(self.proc.stderr, self.lines), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stdout, self.stdout),
                             daemon=True),
        ]
        for t in self._readers:
            t.start()
        self.port: int | None = None

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            with self._cond:
                sink.append(line.rstrip("\n"))
                self._cond.notify_all()

    # -- stderr ---------------------------------------------------------------------
    def events(self, start: int = 0) -> list[dict[str, Any]]:
        """The JSON log events written so far (from stderr line `start`, see `mark`)."""
        out = []
        with self._cond:
            lines = self.lines[start:]
        for line in lines:
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict) and "event" in obj:
                out.append(obj)
        return out

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = STARTUP_TIMEOUT,
                      what: str = "a log line", start: int = 0) -> str:
        """The first stderr line (from index `start` on) matching; fails if the process dies."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if predicate(line):
                        return line
                if self.proc.poll() is not None and not self._readers[0].is_alive():
                    raise AssertionError(f"process exited ({self.proc.returncode}) before "
                                         f"{what}:\n" + "\n".join(self.lines))
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {what} after {timeout}s:\n" + "\n".join(self.lines))
                self._cond.wait(min(left, 0.2))

    def wait_for_event(self, name: str, timeout: float = STARTUP_TIMEOUT, start: int = 0,
                       **fields: Any) -> dict[str, Any]:
        """The first JSON event called `name` whose `fields` have the given values."""

        def matches(line: str) -> bool:
            if f'"event": "{name}"' not in line:
                return False
            try:
                event = json.loads(line)
            except ValueError:
                return False
            return all(event.get(k) == v for k, v in fields.items())

        line = self.wait_for_line(matches, timeout, f"event {name} {fields or ''}", start)
        event: dict[str, Any] = json.loads(line)
        return event

    def mark(self) -> int:
        """An index into stderr lines, to wait only for what comes after it."""
        with self._cond:
            return len(self.lines)

    # -- lifecycle --------------------------------------------------------------------
    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        for t in self._readers:
            t.join(5)
        return rc

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for p in started:
        p.kill()


@pytest.fixture
def run_pacs(tmp_path: Path, processes: list[ServerProcess]) -> Callable[..., ServerProcess]:
    """Factory: start `python -m pacs_server` on 127.0.0.1:0 and wait until it answers.

    `config` is an optional YAML file; `root` holds archive/ and pacs.db (tmp_path by
    default); `ready=False` returns at once (for processes expected to fail).
    """

    def start(*extra: str, config: Path | None = None, root: Path | None = None,
              ready: bool = True, port: int = 0) -> ServerProcess:
        base = root or tmp_path
        argv = [sys.executable, "-m", "pacs_server", "--port", str(port), "--host", "127.0.0.1",
                "--storage-dir", str(base / "archive"), "--db", str(base / "pacs.db"),
                "--log-file", "", "--metrics-port", "-1", *transport_args(), *extra]
        if config is not None:
            argv += ["--config", str(config)]
        proc = ServerProcess(argv, cwd=tmp_path)
        processes.append(proc)
        if ready:
            started = proc.wait_for_event("server.started")
            proc.port = int(started["port"])
            wait_until_responds(proc.port, STARTUP_TIMEOUT,
                                called=str(started.get("ae_title", "PACS")))
        return proc

    return start


@pytest.fixture
def run_store_scp(tmp_path: Path, processes: list[ServerProcess]) -> Callable[..., ServerProcess]:
    """Factory: start `python -m pacs_server.store_scp 0 AE --storage-dir DIR ...`."""

    def start(*extra: str, ae_title: str = "STORESCP", storage: Path | None = None,
              ready: bool = True) -> ServerProcess:
        argv = [sys.executable, "-m", "pacs_server.store_scp", "0", ae_title,
                "--storage-dir", str(storage or tmp_path / "received"), "--host", "127.0.0.1",
                *extra]
        proc = ServerProcess(argv, cwd=tmp_path)
        processes.append(proc)
        if ready:
            line = proc.wait_for_line(lambda s: " listening on " in s, what="listening line")
            match = re.search(r"listening on [^\s:]+:(\d+)", line)
            assert match, line
            proc.port = int(match.group(1))
            wait_until_responds(proc.port, STARTUP_TIMEOUT, called=ae_title)
        return proc

    return start


@pytest.fixture
def spawn(processes: list[ServerProcess]) -> Callable[..., ServerProcess]:
    """Factory: `spawn(argv, cwd)` starts any command as a ServerProcess (killed at
    teardown if still running)."""

    def start(argv: list[str], cwd: Path) -> ServerProcess:
        proc = ServerProcess(argv, cwd=cwd)
        processes.append(proc)
        return proc

    return start


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's: NOTIFY_SOCKET points at it for the
    processes the test starts; 30 s receive timeout."""
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(30)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    try:
        yield sock
    finally:
        sock.close()
