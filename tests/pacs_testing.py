"""Helpers shared by the store/echo/lifecycle tests (fixtures live in tests/conftest.py).

A plain module rather than conftest so that test modules can import it by name
(`from pacs_testing import ...`) without clashing with other conftest.py files.

* `Scu`             pynetdicom SCU with short timeouts: echo, store files as they are on
                    disk (one presentation context per SOP class + transfer syntax);
* `DicomFiles`      pydicom's bundled files with fresh UIDs in their own transfer syntax,
                    small generated instances, raw bodies behind a valid File Meta, and
                    one big instance for transfer tests;
* `dataset_bytes`   what a Part-10 file holds after its File Meta (the bytes sent);
* `archived_files`  what is in an archive outside its .incoming scratch directory.

Blocking pynetdicom calls must never run on the event loop of an async test: the
in-process server's handlers cross into that loop through the LoopBridge, so use the
`a*` methods (or asyncio.to_thread).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.data.data_manager import DATA_ROOT
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset

from pacs_server.app import PacsApp
from pacs_server.index.repository import IndexRepository
from pacs_server.services.archive import ArchiveService

SERVER_AE = "PACS"
SCU_AE = "TESTSCU"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
SUCCESS = 0x0000
VERIFICATION = "1.2.840.10008.1.1"


# --------------------------------------------------------------------------- polling

def wait_until(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `predicate` every 20 ms until it holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what or predicate}")


def pick_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- SCU

@dataclass
class StoreResult:
    status: int          # -1 when no response arrived (abort, timeout)
    comment: str | None  # Error Comment, if the SCP sent one

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


class Scu:
    """A pynetdicom SCU with short timeouts; every method but the a* ones blocks."""

    def __init__(self, ae_title: str = SCU_AE) -> None:
        self.ae_title = ae_title

    def _ae(self, contexts: Iterable[tuple[str, Sequence[str]]]) -> AE:
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = 10
        ae.dimse_timeout = 30
        ae.network_timeout = 30
        for sop_class, syntaxes in contexts:
            ae.add_requested_context(sop_class, syntaxes)
        return ae

    @contextmanager
    def associate(self, port: int | None, contexts: Iterable[tuple[str, Sequence[str]]] = (),
                  called: str = SERVER_AE, host: str = "127.0.0.1",
                  require: bool = True, max_pdu: int | None = None) -> Iterator[Association]:
        """An association proposing Verification plus `contexts`; released on exit.

        With `require`, raises ConnectionError unless the association is established.
        """
        assert port, "no port: is the server running?"
        ae = self._ae([(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]),
                       *contexts])
        kwargs: dict[str, Any] = {}
        if max_pdu is not None:
            kwargs["max_pdu"] = max_pdu
        assoc = ae.associate(host, port, ae_title=called, **kwargs)
        hand_back_stolen_responses(assoc)
        no_delay(assoc)
        try:
            if require and not assoc.is_established:
                raise ConnectionError(
                    f"association to {called}@{host}:{port} not established "
                    f"(rejected={assoc.is_rejected}, aborted={assoc.is_aborted})")
            yield assoc
        finally:
            if assoc.is_established:
                assoc.release()

    def echo(self, port: int | None, called: str = SERVER_AE) -> int:
        with self.associate(port, called=called) as assoc:
            status = assoc.send_c_echo()
            return int(status.Status) if "Status" in status else -1

    def store(self, port: int | None, paths: Iterable[Path], called: str = SERVER_AE,
              **kwargs: Any) -> list[StoreResult]:
        """C-STORE each file in its own transfer syntax over one association."""
        paths = list(paths)
        with self.associate(port, contexts_for(paths), called=called, **kwargs) as assoc:
            return [send(assoc, p) for p in paths]

    async def astore(self, port: int | None, paths: Iterable[Path],
                     **kwargs: Any) -> list[StoreResult]:
        return await asyncio.to_thread(self.store, port, list(paths), **kwargs)

    async def aecho(self, port: int | None, called: str = SERVER_AE) -> int:
        return await asyncio.to_thread(self.echo, port, called)


_chunked_lock = threading.Lock()
_chunked_users = 0
_chunked_saved = False


@contextmanager
def chunked_send() -> Iterator[None]:
    """Send files from disk byte for byte while inside (pynetdicom's global switch).

    pynetdicom then streams the dataset from the file instead of decoding and
    re-encoding it, so "what was sent" is exactly the file's dataset bytes. The switch is
    process-wide: it is on only while some sender of ours is inside, so that other
    tests see pynetdicom's default.
    """
    global _chunked_users, _chunked_saved
    with _chunked_lock:
        if _chunked_users == 0:
            _chunked_saved = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
            pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
        _chunked_users += 1
    try:
        yield
    finally:
        with _chunked_lock:
            _chunked_users -= 1
            if _chunked_users == 0:
                pynetdicom_config.STORE_SEND_CHUNKED_DATASET = _chunked_saved


def no_delay(assoc: Association) -> None:
    """Turn Nagle off on our side too (else ~40 ms per C-STORE on loopback)."""
    try:
        sock = assoc.dul.socket.socket if assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def hand_back_stolen_responses(assoc: Association) -> None:
    """Work around a race in pynetdicom's requestor (cf. pydicom/pynetdicom#435).

    send_c_store() pauses the association reactor by clearing an event and reading a
    flag the reactor may not have updated yet; the reactor can then take the C-STORE-RSP
    off the DIMSE queue, log "Received unexpected C-STORE service message" and drop it,
    and the sender waits out its DIMSE timeout. A response the reactor takes is put back
    for the waiting sender. Only our test SCU is changed, never the server under test.
    """
    original = assoc._serve_request

    def serve(msg: Any, context_id: int) -> None:
        if msg is not None and not msg.is_valid_request:
            assoc.dimse.msg_queue.put((context_id, msg))
            return
        original(msg, context_id)

    assoc._serve_request = serve  # type: ignore[method-assign]


def send(assoc: Association, path: Path) -> StoreResult:
    """Send one file, byte for byte, over an established association."""
    with chunked_send():
        rsp = assoc.send_c_store(path)
    if "Status" not in rsp:
        return StoreResult(-1, None)
    comment = rsp.get("ErrorComment")
    return StoreResult(int(rsp.Status), str(comment) if comment is not None else None)


def contexts_for(paths: Iterable[Path]) -> list[tuple[str, Sequence[str]]]:
    """One presentation context per (SOP class, transfer syntax) found in the files."""
    seen: dict[tuple[str, str], None] = {}
    for p in paths:
        meta = file_meta(p)
        seen[(str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))] = None
    return [(sop, [ts]) for sop, ts in seen]


def wait_until_responds(port: int | None, timeout: float = 15.0, called: str = SERVER_AE) -> None:
    """Poll until the server answers an A-ASSOCIATE-RQ (datasette's wait_until_responds).

    An accepted association must also answer C-ECHO; a rejection (A-ASSOCIATE-RJ, e.g.
    our AE title is not whitelisted) is an answer too.
    """
    assert port, "no port: is the server running?"
    ae = Scu()._ae([(VERIFICATION, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])])
    ae.acse_timeout = 2

    def answers() -> bool:
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        hand_back_stolen_responses(assoc)
        if assoc.is_established:
            status = assoc.send_c_echo()
            assoc.release()
            return "Status" in status and int(status.Status) == SUCCESS
        return bool(assoc.is_rejected)

    wait_until(answers, timeout, f"an answer to A-ASSOCIATE-RQ on port {port}")


# --------------------------------------------------------------------------- dcmtk

@functools.cache
def _dcmtk_path(name: str, path_env: str) -> str | None:
    for directory in path_env.split(os.pathsep):
        candidate = Path(directory or ".") / name
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        try:
            out = subprocess.run([str(candidate), "--version"], capture_output=True,
                                 text=True, errors="replace", timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if "dcmtk" in (out.stdout + out.stderr).lower():
            return str(candidate)
    return None


def dcmtk_path(name: str) -> str | None:
    """The dcmtk program `name` on PATH. pynetdicom installs console scripts with the same
    names (findscu, getscu, movescu, storescp, storescu, echoscu) into the virtualenv,
    so the first `name` on PATH is not necessarily dcmtk's."""
    return _dcmtk_path(name, os.environ.get("PATH", ""))


def require_dcmtk(tools: Sequence[str]) -> None:
    """Skip (naming the missing tools) unless PACS_REQUIRE_DCMTK=1, then fail."""
    missing = [tool for tool in tools if dcmtk_path(tool) is None]
    if not missing:
        return
    message = f"dcmtk tools not found on PATH: {', '.join(missing)}"
    if os.environ.get("PACS_REQUIRE_DCMTK") == "1":
        pytest.fail(f"{message} (PACS_REQUIRE_DCMTK=1)", pytrace=False)
    pytest.skip(f"{message}; install dcmtk or set PACS_REQUIRE_DCMTK=1 to make this fail")


# --------------------------------------------------------------------------- DICOM files

def bundled_file(name: str) -> Path:
    """A file shipped with pydicom (test_files or charset_files); never downloaded."""
    charset = Path(DATA_ROOT) / "charset_files" / name
    if charset.is_file():
        return charset
    found = get_testdata_file(name, download=False)
    if found is None:
        raise FileNotFoundError(f"{name} is not among pydicom's local test files")
    return Path(str(found))


def file_meta(path: Path) -> Dataset:
    meta, _ = split_dataset(Path(path))
    return meta


def dataset_bytes(path: Path) -> bytes:
    """The bytes of a Part-10 file after its File Meta Information."""
    _, offset = split_dataset(Path(path))
    return Path(path).read_bytes()[offset:]


@contextmanager
def lenient_pydicom() -> Iterator[None]:
    """Build deliberately invalid values (bad UIDs, over-long IDs) without warnings."""
    with pydicom.config.disable_value_validation(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        yield


def new_dataset(*, sop_class: str = CT_IMAGE, modality: str = "CT", pixel_bytes: int = 64,
                **attrs: Any) -> Dataset:
    """A minimal, valid instance with fresh UIDs (8-bit MONOCHROME2 pixel data)."""
    ds = Dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PAT-1"
    ds.PatientName = "Test^Patient"
    ds.StudyDate = "20240102"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.Rows = 1
    ds.Columns = max(pixel_bytes, 1)
    if pixel_bytes:
        ds.PixelData = bytes(i % 251 for i in range(pixel_bytes))
    with lenient_pydicom():
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> bytes:
    """The dataset encoded in a native (uncompressed, not deflated) transfer syntax."""
    buf = DicomBytesIO()
    buf.is_little_endian = ts != ExplicitVRBigEndian
    buf.is_implicit_VR = ts == ImplicitVRLittleEndian
    with lenient_pydicom():
        write_dataset(buf, copy.deepcopy(ds))
    return buf.getvalue()


def write_part10(path: Path, body: bytes, *, sop_class: str, sop_instance: str,
                 ts: str = ExplicitVRLittleEndian) -> None:
    """Preamble, DICM, File Meta, then `body` exactly as given."""
    meta = FileMetaDataset()
    meta.FileMetaInformationVersion = b"\x00\x01"
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = UID("1.2.826.0.1.3680043.8.498.1")
    buf = DicomBytesIO()
    buf.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(buf, meta, enforce_standard=True)
    Path(path).write_bytes(buf.getvalue() + body)


class DicomFiles:
    """Writes DICOM files for one test into its own directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._n = 0

    def _target(self, stem: str, directory: Path | None = None) -> Path:
        self._n += 1
        d = directory or self.root
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{self._n:04d}-{stem}.dcm"

    def fresh(self, name: str, *, directory: Path | None = None, new_study: bool = True,
              **attrs: Any) -> Path:
        """pydicom's `name` with a new SOP Instance UID (and study/series), same syntax.

        Compressed pixel data is kept byte for byte; `attrs` are set on the dataset.
        """
        ds = pydicom.dcmread(bundled_file(name), force=True)
        if "TransferSyntaxUID" not in ds.file_meta:
            # e.g. rtstruct.dcm has no File Meta: keep the encoding it was read with.
            implicit, little = ds.original_encoding
            assert little, f"{name}: no transfer syntax and not little endian"
            ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit
                                              else ExplicitVRLittleEndian)
        uid = generate_uid()
        ds.SOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        if new_study:
            ds.StudyInstanceUID = generate_uid()
            ds.SeriesInstanceUID = generate_uid()
        target = self._target(Path(name).stem, directory)
        with lenient_pydicom():
            for keyword, value in attrs.items():
                setattr(ds, keyword, value)
            pydicom.dcmwrite(target, ds, enforce_file_format=True)
        return target

    def generated(self, *, directory: Path | None = None, sop_class: str = CT_IMAGE,
                  modality: str = "CT", ts: str = ExplicitVRLittleEndian,
                  pixel_bytes: int = 64, **attrs: Any) -> Path:
        """A small instance built in code with fresh UIDs (see `new_dataset`)."""
        ds = new_dataset(sop_class=sop_class, modality=modality, pixel_bytes=pixel_bytes,
                         **attrs)
        return self.from_dataset(ds, directory=directory, ts=ts)

    def from_dataset(self, ds: Dataset, *, directory: Path | None = None,
                     ts: str = ExplicitVRLittleEndian, stem: str = "ds") -> Path:
        """`ds` encoded in native syntax `ts` behind a File Meta taken from its UIDs."""
        target = self._target(stem, directory)
        write_part10(target, encode(ds, ts), sop_class=str(ds.get("SOPClassUID", CT_IMAGE)),
                     sop_instance=str(ds.get("SOPInstanceUID", generate_uid())), ts=ts)
        return target

    def raw(self, body: bytes, *, sop_class: str = SECONDARY_CAPTURE,
            sop_instance: str | None = None, ts: str = ExplicitVRLittleEndian,
            stem: str = "raw") -> Path:
        """A File Meta header (valid UIDs) followed by `body` exactly as given."""
        target = self._target(stem)
        write_part10(target, body, sop_class=sop_class,
                     sop_instance=sop_instance or generate_uid(), ts=ts)
        return target

    def big(self, nbytes: int, **attrs: Any) -> Path:
        """One Secondary Capture instance with about `nbytes` of pixel data."""
        columns = 4096
        rows = max(1, nbytes // columns)
        length = rows * columns
        ds = new_dataset(sop_class=SECONDARY_CAPTURE, modality="OT", pixel_bytes=0,
                         Rows=rows, Columns=columns, **attrs)
        target = self._target("big")
        # (7FE0,0010) OB, explicit VR little endian: tag, VR, 2 reserved bytes, 4-byte length
        pixel_header = b"\xe0\x7f\x10\x00OB\x00\x00" + length.to_bytes(4, "little")
        write_part10(target, encode(ds) + pixel_header, sop_class=SECONDARY_CAPTURE,
                     sop_instance=str(ds.SOPInstanceUID))
        chunk = bytes(range(256)) * (1 << 14)  # 4 MiB of a recognisable pattern
        with open(target, "ab") as fh:
            remaining = length
            while remaining:
                piece = chunk[:min(len(chunk), remaining)]
                fh.write(piece)
                remaining -= len(piece)
        return target


# --------------------------------------------------------------------------- archive checks

def index_of(app: PacsApp) -> IndexRepository:
    """The running app's index (fails the test if the app has none)."""
    assert app.repo is not None, "the app has no index (not started, or stopped)"
    return app.repo


def archive_of(app: PacsApp) -> ArchiveService:
    assert app.archive is not None, "the app has no archive (not started)"
    return app.archive


def archived_files(root: Path) -> list[Path]:
    """Every file under the archive root except in its private directories (.incoming
    scratch, .journal intents, .quarantine)."""
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == Path(root):
            dirnames[:] = [d for d in dirnames
                           if d not in (".incoming", ".journal", ".quarantine")]
        out.extend(Path(dirpath) / f for f in filenames)
    return sorted(out)


def incoming_files(root: Path) -> list[Path]:
    incoming = root / ".incoming"
    return sorted(incoming.iterdir()) if incoming.is_dir() else []


def index_rows(db: Path) -> dict[str, str]:
    """SOP Instance UID -> relative path, read with the stdlib sqlite3 module."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return dict(con.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    finally:
        con.close()


def wait_for_rows(db: Path, n: int, timeout: float = 15.0) -> dict[str, str]:
    rows: dict[str, str] = {}

    def enough() -> bool:
        nonlocal rows
        try:
            rows = index_rows(db)
        except sqlite3.Error:
            return False
        return len(rows) >= n

    wait_until(enough, timeout, f"{n} index rows in {db}")
    return rows


def throttle(assoc: Association, bytes_per_second: float) -> None:
    """Slow down what this (client) association sends, so a test can act mid-transfer.

    Only our own SCU is slowed: the server under test runs unmodified.
    """
    sock = assoc.dul.socket
    assert sock is not None
    original = sock.send

    def slow_send(data: bytes) -> None:
        time.sleep(len(data) / bytes_per_second)
        original(data)

    sock.send = slow_send  # type: ignore[method-assign,assignment]


# --------------------------------------------------------------------------- PostgreSQL

def _postgres_bindir() -> Path | None:
    """Where initdb and pg_ctl live: Debian's versioned directory, else PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def require_postgres() -> Path:
    """The PostgreSQL server binaries and the asyncpg driver, or skip (naming what is
    missing) unless PACS_REQUIRE_POSTGRES=1, then fail."""
    missing = []
    bindir = _postgres_bindir()
    if bindir is None:
        missing.append("PostgreSQL server (initdb, pg_ctl)")
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        missing.append("the asyncpg driver")
    if bindir is not None and not missing:
        return bindir
    message = f"not found: {', '.join(missing)}"
    if os.environ.get("PACS_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (PACS_REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(f"{message}; install postgresql and asyncpg or set PACS_REQUIRE_POSTGRES=1 "
                "to make this fail")


class PostgresCluster:
    """A throw-away PostgreSQL cluster on 127.0.0.1 and a free port, in a temporary
    directory; stopped (by pg_ctl, which knows its PID) and removed by `stop()`.

    initdb refuses to run as root, so as root the cluster belongs to the `postgres`
    account that Debian's package creates.
    """

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.port = pick_free_port()
        # Not tempfile's default directory: a running server points that at its archive,
        # and pytest's are private to root, which the postgres account cannot enter.
        self.dir = Path(tempfile.mkdtemp(prefix="pacs-pg-",
                                         dir=os.environ.get("TMPDIR", "/tmp")))
        self._as: list[str] = []
        if os.geteuid() == 0:
            import pwd
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.dir / "data"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres",
                  "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        result = subprocess.run([*self._as, str(self.bindir / tool), *args],
                                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed: {result.stderr.strip()[-500:]}")

    def _pg_ctl(self, action: str, *args: str) -> None:
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "server.log"),
                  "-o", options, "-w", action, *args)

    def start(self) -> None:
        self._pg_ctl("start")

    def restart(self) -> None:
        """Restart the server: every open connection is cut."""
        self._pg_ctl("restart", "-m", "fast")

    def stop(self) -> None:
        try:
            self._pg_ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self) -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = f"pacs_{uuid.uuid4().hex[:12]}"
        self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                  "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", f"CREATE DATABASE {name}")
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{name}"
