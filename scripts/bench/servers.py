"""The three servers under test, started on 127.0.0.1 with a fresh store each time.

    PacsServer      our pacs_server (durable defaults: storage.fsync on, SQLite synchronous full)
    OrthancServer   Debian's Orthanc with a temporary JSON config (SyncStorageArea on by default)
    StorescpServer  dcmtk storescp -od DIR: writes files, no index, no fsync (the upper bound)

Every server is a child process we started; `stop()` ends it by its PID (SIGTERM, then
SIGKILL after a grace period). `RssMonitor` records a process's peak resident memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PACS_BIN = REPO / ".venv" / "bin" / "pacs_server"
# server.transport of the pacs_server under test; None = its default (events).
TRANSPORT: str | None = None
HOST = "127.0.0.1"
CALLING_AE = "BENCH"

# Debian's dcmtk and Orthanc leave Nagle's algorithm on unless TCP_NODELAY=1 is in the
# environment; without it every DIMSE exchange on loopback stalls ~40 ms.
ENV = {**os.environ, "TCP_NODELAY": "1"}


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process (all its threads, also ended ones), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_echo(port: int, ae: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    """Poll with C-ECHO until the server answers (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} during start-up")
        # No bare TCP probe: pynetdicom keeps a thread waiting acse_timeout (30 s) for the
        # A-ASSOCIATE-RQ of a connection that was opened and closed without one.
        r = subprocess.run(["echoscu", "-aet", CALLING_AE, "-aec", ae, HOST, str(port)],
                           env=ENV, capture_output=True, timeout=10)
        if r.returncode == 0:
            return
        time.sleep(0.05)
    raise RuntimeError(f"server on port {port} did not answer C-ECHO within {timeout:.0f} s")


class RssMonitor:
    """Peak RSS of one process: VmHWM (reset through clear_refs) plus 20 Hz VmRSS polling."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._peak_kb = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _status(self, key: str) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return 0

    def start(self) -> RssMonitor:
        try:   # "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0)
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")
        except OSError:
            pass
        self._peak_kb = self._status("VmRSS")
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            self._peak_kb = max(self._peak_kb, self._status("VmRSS") + self._children_rss())

    def _children_rss(self) -> int:
        """VmRSS of the child processes (server.workers), summed, in kB."""
        total = 0
        try:
            for task in Path(f"/proc/{self.pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    for line in Path(f"/proc/{child}/status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            total += int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return total

    def stop(self) -> float:
        """Stop polling; returns the peak in MB."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        self._peak_kb = max(self._peak_kb, self._status("VmHWM"))
        return round(self._peak_kb / 1024, 1)


class Server:
    name = "server"
    ae = "SERVER"
    supports_qr = False

    def __init__(self, workdir: Path, move_dest: tuple[str, int] | None = None) -> None:
        self.workdir = workdir
        self.move_dest = move_dest
        self.env: dict[str, str] = {}       # added to ENV for the server process
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Server:
        if self.workdir.exists():
            shutil.rmtree(self.workdir)
        self.workdir.mkdir(parents=True)
        self.port = free_port()
        cmd = self.command()
        self._log = open(self.workdir / "server.log", "wb")
        self.proc = subprocess.Popen(cmd, cwd=self.workdir, env={**ENV, **self.env},
                                     stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for_echo(self.port, self.ae, self.proc)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, grace: float = 15.0) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.workdir / "server.log").read_text(errors="replace")
        except OSError:
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def count(self) -> int:
        """Instances the server reports as stored."""
        raise NotImplementedError

    def cleanup(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PacsServer(Server):
    name = "pacs_server"
    ae = "PACS"
    supports_qr = True
    # False: no per-AE/per-address association rate limits (limits.*_per_minute_*),
    # for a benchmark whose point is thousands of associations a minute from one AE.
    rate_limited = True

    def __init__(self, workdir: Path, move_dest: tuple[str, int] | None = None,
                 fsync: bool = True, synchronous: str = "full", workers: str = "1") -> None:
        super().__init__(workdir, move_dest)
        self.fsync = fsync
        self.synchronous = synchronous
        self.workers = workers
        self.log_level = "warning"
        self.duplicate_policy = "reject"     # "replace": the same set may be sent again
        self.database_url: str | None = None  # PostgreSQL (store_ab.py --postgres)
        if workers != "1":
            self.name = f"pacs_server-w{workers}"

    def command(self) -> list[str]:
        cfg: dict[str, Any] = {
            "server": {"ae_title": self.ae, "host": HOST, "port": self.port,
                       "workers": self.workers},
            "storage": {"directory": str(self.workdir / "archive"), "fsync": self.fsync,
                        "duplicate_policy": self.duplicate_policy},
            "database": ({"url": self.database_url} if self.database_url else
                         {"path": str(self.workdir / "index.db"),
                          "synchronous": self.synchronous}),
            "logging": {"level": self.log_level, "file": ""},
            "monitoring": {"metrics_port": -1},
        }
        if TRANSPORT is not None:
            cfg["server"]["transport"] = TRANSPORT
        if not self.rate_limited:
            cfg["limits"] = {"associations_per_minute_per_ae": 0,
                             "associations_per_minute_per_address": 0}
        if self.move_dest is not None:
            cfg["peers"] = [{"ae_title": self.move_dest[0], "host": HOST,
                             "port": self.move_dest[1]}]
        path = self.workdir / "pacs.yaml"
        path.write_text(json.dumps(cfg, indent=1))   # JSON is valid YAML
        return [str(PACS_BIN), "--config", str(path)]

    def start(self) -> Server:
        # The first worker answers the echo; READY=1 comes once every worker listens
        # (systemd's protocol, src/pacs_server/systemd.py), whatever the accept model.
        name = f"pacs-bench-{os.getpid()}-{id(self)}-{time.monotonic_ns()}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as ready:
            ready.bind("\0" + name)
            ready.settimeout(60)
            self.env = {**self.env, "NOTIFY_SOCKET": "@" + name}
            super().start()
            try:
                while b"READY=1" not in ready.recv(4096):
                    pass
            except TimeoutError:
                self.stop()
                raise RuntimeError(f"{self.name} not ready on {self.port}") from None
        return self

    def count(self) -> int:
        if self.database_url:
            return _pg_count(self.database_url)
        db = self.workdir / "index.db"
        try:
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            return count_files(self.workdir / "archive", skip=".incoming")


class OrthancServer(Server):
    name = "Orthanc"
    ae = "ORTHANC"
    supports_qr = True

    def command(self) -> list[str]:
        self.http_port = free_port()
        storage = self.workdir / "storage"
        cfg: dict[str, Any] = {
            "Name": "bench", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "StorageCompression": False, "Plugins": [],
            "HttpServerEnabled": True, "HttpPort": self.http_port,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomServerEnabled": True, "DicomAet": self.ae, "DicomPort": self.port,
            "DicomCheckCalledAet": False, "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True, "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True, "DicomAlwaysAllowMove": True,
            "DicomModalities": {}, "SaveJobs": False,
        }
        if self.move_dest is not None:
            ae, port = self.move_dest
            cfg["DicomModalities"] = {ae: [ae, HOST, port]}
        path = self.workdir / "orthanc.json"
        path.write_text(json.dumps(cfg, indent=1))
        return ["Orthanc", str(path)]

    def count(self) -> int:
        url = f"http://{HOST}:{self.http_port}/statistics"
        with urllib.request.urlopen(url, timeout=30) as rsp:
            return int(json.load(rsp)["CountInstances"])


class StorescpServer(Server):
    name = "storescp"
    ae = "STORESCP"

    def __init__(self, workdir: Path, fork: bool = False) -> None:
        super().__init__(workdir)
        self.fork = fork

    def command(self) -> list[str]:
        out = self.workdir / "received"
        out.mkdir()
        return ["storescp", *(["--fork"] if self.fork else []), "-aet", self.ae,
                "-od", str(out), str(self.port)]

    def count(self) -> int:
        return count_files(self.workdir / "received")


def _pg_count(url: str) -> int:
    import asyncio

    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            return int(await conn.fetchval("SELECT count(*) FROM instances"))
        finally:
            await conn.close()

    return asyncio.run(count())


def count_files(root: Path, skip: str | None = None) -> int:
    n = 0
    for _dirpath, dirnames, filenames in os.walk(root):
        if skip and skip in dirnames:
            dirnames.remove(skip)
        n += len(filenames)
    return n
