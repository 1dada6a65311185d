"""Helpers and fixtures for the Query/Retrieve tests (C-FIND, C-MOVE, C-GET).

A plain module (not a conftest) so that it never collides with tests/conftest.py; the test
modules import what they use, fixtures included:

* `QrServer`        a PacsApp on its own event loop in a background thread, so tests (and
                    the dcmtk processes they run) can block while the server's handlers
                    cross into that loop; `start_qr_server` is the fixture factory;
* `write_config`    a YAML config (the `peers` list cannot be given as a dotted override);
* `from_template`   a pydicom bundled file (CT_small, MR_small, charset files...) with fresh
                    UIDs and chosen values; `store_datasets` / `store_files` send over one
                    pynetdicom association;
* `findscu`, `movescu`, `getscu`  dcmtk runs; responses read back with pydicom (`-X -od`),
                    DIMSE statuses, sub-operation counts and Failed SOP Instance UID List
                    parsed from the `-d` dump;
* `Storescp`        a dcmtk storescp on a free port (bit-preserving); `StorageScp` a
                    pynetdicom one that can fail chosen SOP classes;
* `require_dcmtk`   skip with a reason when a dcmtk tool is missing, fail instead when
                    PACS_REQUIRE_DCMTK=1 (tests/conftest.py's `dcmtk` marker checks fewer
                    tools, and by name only).
"""

from __future__ import annotations

import asyncio
import copy
import os
import re
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
import yaml
from pacs_testing import (
    CT_IMAGE,
    MR_IMAGE,
    SECONDARY_CAPTURE,
    SERVER_AE,
    bundled_file,
    dcmtk_path,
    no_delay,
    pick_free_port,
    wait_until,
)
from pacs_testing import require_dcmtk as require_dcmtk_tools
from prometheus_client import CollectorRegistry
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import Verification

from pacs_server.app import PacsApp
from pacs_server.config import Config, load_config
from pacs_server.metrics import Metrics

SCU_AE = "QRSCU"
DCMTK_QR_TOOLS = ("findscu", "movescu", "getscu", "storescp", "storescu", "dcmdump")
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"


# --------------------------------------------------------------------------- dcmtk

def dcmtk(name: str) -> str:
    path = dcmtk_path(name)
    if path is None:
        require_dcmtk((name,))
        raise AssertionError(f"dcmtk {name} not found")
    return path


def require_dcmtk(tools: Sequence[str] = DCMTK_QR_TOOLS) -> None:
    """Skip (with the missing tools named) unless PACS_REQUIRE_DCMTK=1, then fail."""
    require_dcmtk_tools(tools)


def dcmtk_env() -> dict[str, str]:
    # Debian's dcmtk leaves Nagle on unless told otherwise: ~40 ms stall per DIMSE message.
    return {**os.environ, "TCP_NODELAY": "1"}


@contextmanager
def server_warnings() -> Iterator[None]:
    """The server runs with pydicom's value-validation warnings logged, not raised.

    pytest's `filterwarnings = error` is process-wide, so without this a warning in an
    association thread would become an exception inside the server and change its answer.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module="pydicom")
        yield


# --------------------------------------------------------------------------- ports

def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- config + server

def write_config(root: Path, *, peers: Iterable[dict[str, Any]] = (),
                 query: dict[str, Any] | None = None, **sections: dict[str, Any]) -> Path:
    """A YAML config with archive and index under `root`, port 0, no log file, no metrics.

    Fast but crash-unsafe storage settings (no fsync): durability is not what these
    tests are about.
    """
    root.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "server": {"ae_title": SERVER_AE, "host": "127.0.0.1", "port": 0,
                   "shutdown_grace": 2.0},
        "storage": {"directory": str(root / "archive"), "fsync": False},
        "database": {"path": str(root / "pacs.db"), "synchronous": "normal"},
        "logging": {"file": "", "level": "warning"},
        "monitoring": {"metrics_port": -1},
        "query": dict(query or {}),
        "peers": [dict(p) for p in peers],
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = root / "pacs.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def qr_config(root: Path, **kwargs: Any) -> Config:
    return load_config(write_config(root, **kwargs))


class QrServer:
    """PacsApp on its own event loop in a daemon thread; `start()` returns once it echoes."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.app = PacsApp(cfg, metrics=Metrics(CollectorRegistry()))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="qr-server-loop",
                                        daemon=True)
        self.port = 0

    @property
    def archive(self) -> Path:
        return Path(self.cfg.storage.directory)

    def run(self, coro: Any, timeout: float = 60.0) -> Any:
        """Run a coroutine on the server's loop (e.g. a repository read) and wait for it."""
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def start(self) -> QrServer:
        self._thread.start()
        self.run(self.app.start())
        assert self.app.port
        self.port = int(self.app.port)
        wait_until(lambda: echo_ok(self.port), what=f"C-ECHO on port {self.port}")
        return self

    def stop(self) -> None:
        try:
            if self.app.dicom is not None or self.app.repo is not None:
                self.run(self.app.stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture
def start_qr_server(tmp_path: Path) -> Iterator[Callable[..., QrServer]]:
    """Factory: `srv = start_qr_server(peers=[...], query={...})`; stopped at teardown."""
    servers: list[QrServer] = []

    def start(name: str = "server", **kwargs: Any) -> QrServer:
        srv = QrServer(qr_config(tmp_path / name, **kwargs)).start()
        servers.append(srv)
        return srv

    with server_warnings():
        yield start
        for srv in reversed(servers):
            srv.stop()


# --------------------------------------------------------------------------- SCU

def scu_ae(*contexts: str, ts: Sequence[str] = (ExplicitVRLittleEndian,
                                                 ImplicitVRLittleEndian)) -> AE:
    ae = AE(ae_title=SCU_AE)
    ae.acse_timeout = 10
    ae.dimse_timeout = 60
    ae.network_timeout = 60
    for uid in contexts:
        ae.add_requested_context(uid, list(ts))
    return ae


def nodelay(event: Any) -> None:
    """Turn Nagle off on an SCU socket (loopback DIMSE otherwise stalls ~40 ms a message)."""
    no_delay(event.assoc)


NODELAY = [(evt.EVT_CONN_OPEN, nodelay)]


def associate(ae: AE, port: int, evt_handlers: Sequence[Any] = (), **kwargs: Any) -> Any:
    """`ae.associate` to the server on 127.0.0.1 with Nagle off and the reactor race closed."""
    assoc = ae.associate("127.0.0.1", port, ae_title=SERVER_AE,
                         evt_handlers=[*NODELAY, *evt_handlers], **kwargs)
    if assoc.is_established:
        keep_responses_for_the_caller(assoc)
    return assoc


def keep_responses_for_the_caller(assoc: Any) -> None:
    """Stop the requestor's reactor thread from taking DIMSE messages off the queue.

    pynetdicom's requestor reactor is released after each send_*() and polls the DIMSE
    queue before it pauses again; when the next request goes out inside that window (the
    reactor thread preempted between its checkpoint and its `_is_paused` flag) it takes
    the response ("Received unexpected C-STORE service message") and send_c_store() waits
    out the DIMSE timeout. Seen here as stores hanging once in a few runs of 1500 stores
    on a loaded machine, with a 3 ms pause between requests as well (dicom/move.py's
    `_settle`). An SCU that only sends requests (responses and C-GET's C-STORE requests
    are read by send_*() itself) never needs the reactor to read the queue.
    """
    dimse = assoc.dimse
    original = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block and threading.get_ident() == assoc.ident:
            return None, None
        return original(block)

    dimse.get_msg = get_msg


def echo_ok(port: int) -> bool:
    ae = scu_ae(Verification)
    assoc = associate(ae, port)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return "Status" in status and status.Status == 0
    finally:
        assoc.release()


def store_datasets(port: int, datasets: Iterable[Dataset]) -> list[int]:
    """C-STORE each dataset (Explicit VR LE) over one association; returns the statuses."""
    datasets = list(datasets)
    classes = sorted({str(ds.SOPClassUID) for ds in datasets})
    ae = scu_ae(*classes, ts=[ExplicitVRLittleEndian])
    assoc = associate(ae, port)
    assert assoc.is_established, "store association was not established"
    statuses = []
    try:
        for ds in datasets:
            if "TransferSyntaxUID" not in getattr(ds, "file_meta", Dataset()):
                ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if "Status" in rsp else -1)
    finally:
        assoc.release()
    return statuses


def store_files(port: int, paths: Iterable[Path]) -> list[int]:
    """C-STORE files as they are (their own transfer syntax) over one association."""
    paths = list(paths)
    metas = [pydicom.dcmread(p, stop_before_pixels=True).file_meta for p in paths]
    ae = AE(ae_title=SCU_AE)
    for sop, ts in sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID))
                           for m in metas}):
        ae.add_requested_context(sop, [ts])
    assoc = associate(ae, port)
    assert assoc.is_established
    try:
        out = []
        for p in paths:
            rsp = assoc.send_c_store(p)
            out.append(int(rsp.Status) if "Status" in rsp else -1)
        return out
    finally:
        assoc.release()


# --------------------------------------------------------------------------- data

_TEMPLATES: dict[str, Dataset] = {}


def from_template(name: str = "CT_small.dcm", *, study: str | None = None,
                  series: str | None = None, **attrs: Any) -> Dataset:
    """`name` with a fresh SOP Instance UID (and study/series unless given) and `attrs` set."""
    if name not in _TEMPLATES:
        _TEMPLATES[name] = pydicom.dcmread(bundled_file(name))
    ds = copy.deepcopy(_TEMPLATES[name])
    uid = generate_uid()
    ds.SOPInstanceUID = uid
    ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = series or generate_uid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for keyword, value in attrs.items():
            if value is None:
                if keyword in ds:
                    delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
    return ds


def write_file(ds: Dataset, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def archived(root: Path) -> dict[str, Path]:
    """SOP Instance UID → archived file, for every file under the archive root."""
    out = {}
    for p in root.rglob("*.dcm"):
        if ".incoming" in p.parts:
            continue
        out[str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)] = p
    return out


# --------------------------------------------------------------------------- dcmtk runners

_DIMSE_BLOCK = re.compile(r"=+ INCOMING DIMSE MESSAGE =+(.*?)=+ END DIMSE MESSAGE =+", re.S)
_RSP_TYPE = re.compile(r"Message Type\s*:\s*C-(FIND|MOVE|GET) RSP")
_DIMSE_STATUS = re.compile(r"DIMSE Status\s*:\s*0x([0-9a-fA-F]{4})")
_FAILED_LIST = re.compile(r"\(0008,0058\) UI \[([^\]]*)\]")


@dataclass
class ToolResult:
    """What a dcmtk SCU did: return code, DIMSE statuses seen (in order), output."""

    returncode: int
    statuses: list[int]
    stdout: str
    stderr: str
    responses: list[Dataset] = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def final_status(self) -> int:
        assert self.statuses, f"no DIMSE status in the output:\n{self.stderr[-3000:]}"
        return self.statuses[-1]

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def failed_uids(self) -> list[str]:
        """Failed SOP Instance UID List of the last response that carried one (`-d`)."""
        found = _FAILED_LIST.findall(self.output)
        return [u for u in found[-1].split("\\") if u] if found else []

    def counts(self) -> dict[str, int]:
        """Sub-operation counts of the final response (movescu/getscu `-d`)."""
        out = {}
        for name in ("Remaining", "Completed", "Failed", "Warning"):
            values = re.findall(rf"{name} Suboperations\s*:\s*(\d+)", self.output)
            if values:
                out[name.lower()] = int(values[-1])
        return out


def _run(cmd: list[str], cwd: Path | None = None, timeout: float = 60.0) -> ToolResult:
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=dcmtk_env(), capture_output=True, text=True,
                          errors="replace", timeout=timeout)
    text = proc.stdout + proc.stderr
    # `-d` prints every DIMSE message; keep the statuses of incoming Q/R responses (a
    # getscu also prints the C-STORE responses it sends, which are not ours to check).
    statuses = []
    for block in _DIMSE_BLOCK.finditer(text):
        body = block.group(1)
        status = _DIMSE_STATUS.search(body)
        if _RSP_TYPE.search(body) and status:
            statuses.append(int(status.group(1), 16))
    return ToolResult(proc.returncode, statuses, proc.stdout, proc.stderr,
                      elapsed=time.monotonic() - started)


def key_args(keys: Sequence[str]) -> list[str]:
    out: list[str] = []
    for k in keys:
        out += ["-k", k]
    return out


def findscu(port: int, level: str, keys: Sequence[str], outdir: Path, *, model: str = "-S",
            extra: Sequence[str] = ()) -> ToolResult:
    """findscu with `-X -od outdir`: the responses are read back in arrival order."""
    outdir.mkdir(parents=True, exist_ok=True)
    for old in outdir.glob("rsp*.dcm"):
        old.unlink()
    cmd = [dcmtk("findscu"), "-d", "-aet", SCU_AE, "-aec", SERVER_AE, model,
           "-X", "-od", str(outdir),
           *extra, *key_args([f"QueryRetrieveLevel={level}", *keys]), "127.0.0.1", str(port)]
    result = _run(cmd)
    result.responses = [pydicom.dcmread(p) for p in sorted(outdir.glob("rsp*.dcm"))]
    return result


def movescu(port: int, level: str, keys: Sequence[str], dest: str, *, model: str = "-S",
            timeout: float = 60.0) -> ToolResult:
    """movescu asking the server to send to `dest` (no storage SCP of its own)."""
    cmd = [dcmtk("movescu"), "-d", "-aet", SCU_AE, "-aec", SERVER_AE, "-aem", dest, model,
           *key_args([f"QueryRetrieveLevel={level}", *keys]), "127.0.0.1", str(port)]
    return _run(cmd, timeout=timeout)


def getscu(port: int, level: str, keys: Sequence[str], outdir: Path, *,
           model: str = "-S") -> ToolResult:
    outdir.mkdir(parents=True, exist_ok=True)
    # +B: files are written exactly as received (dataset bytes comparable to the archive)
    cmd = [dcmtk("getscu"), "-d", "-aet", SCU_AE, "-aec", SERVER_AE, model,
           "+B", "-od", str(outdir),
           *key_args([f"QueryRetrieveLevel={level}", *keys]), "127.0.0.1", str(port)]
    return _run(cmd, timeout=120)


class Storescp:
    """A dcmtk storescp on a free port writing into `outdir`; `stop()` ends it."""

    def __init__(self, outdir: Path, ae_title: str = "DEST", extra: Sequence[str] = ()) -> None:
        self.outdir = outdir
        self.ae_title = ae_title
        self.port = pick_free_port()
        outdir.mkdir(parents=True, exist_ok=True)
        self._log = open(outdir.parent / f"storescp-{self.port}.log", "wb")
        # +xa: accept every transfer syntax; -uf: file names from the SOP Instance UID.
        self.proc = subprocess.Popen(
            [dcmtk("storescp"), "-v", "-aet", ae_title, "+xa", "+B", "-uf", "-od", str(outdir),
             *extra, str(self.port)],
            env=dcmtk_env(), stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(lambda: self.proc.poll() is not None or port_open(self.port),
                       what=f"storescp on port {self.port}")
        except BaseException:
            self.stop()
            raise
        if self.proc.poll() is not None:
            raise RuntimeError(f"storescp exited with {self.proc.returncode}: {self.log()}")

    def log(self) -> str:
        self._log.flush()
        return (self.outdir.parent / f"storescp-{self.port}.log").read_text(errors="replace")

    def files(self) -> dict[str, Path]:
        """SOP Instance UID → received file."""
        return {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): p
                for p in self.outdir.iterdir() if p.is_file()}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# --------------------------------------------------------------------------- pynetdicom SCP

class StorageScp:
    """A pynetdicom Storage SCP on a free port that fails chosen SOP classes with 0xA700."""

    def __init__(self, ae_title: str = "PYDEST", fail_classes: Iterable[str] = (),
                 sop_classes: Iterable[str] = (CT_IMAGE, MR_IMAGE, SECONDARY_CAPTURE,
                                               CR_IMAGE)) -> None:
        self.ae_title = ae_title
        self.fail_classes = set(fail_classes)
        self.received: dict[str, Dataset] = {}
        self.failed: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        ae.network_timeout = 30
        ae.add_supported_context(Verification)
        for uid in sop_classes:
            ae.add_supported_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        self.server = ae.start_server(("127.0.0.1", 0), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        self.port = int(self.server.server_address[1])

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            if str(ds.SOPClassUID) in self.fail_classes:
                self.failed.append(str(ds.SOPInstanceUID))
                return 0xA700
            self.received[str(ds.SOPInstanceUID)] = ds
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def get_role_ae(*storage_classes: str, query_models: Sequence[str]) -> tuple[AE, list[Any]]:
    """An AE for C-GET: the Q/R GET contexts plus SCP role for `storage_classes`."""
    ae = scu_ae(*query_models)
    for uid in storage_classes:
        ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    roles = [build_role(uid, scp_role=True) for uid in storage_classes]
    return ae, roles
