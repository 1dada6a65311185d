"""The one SCU: a pynetdicom requestor with short timeouts, Nagle off, and the requestor
race closed (see `keep_responses_for_the_caller`).

Every method blocks. The in-process server runs on its own loop (support/server.py), so
a blocking call cannot deadlock it; async tests still use the `a*` methods, or
asyncio.to_thread, to run several SCUs at once.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.association import Association
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from pacs_server.dicom.requestor import settle_rejection
from support.config import SERVER_AE
from support.instances import dataset_bytes, file_meta
from support.polling import wait_until

SCU_AE = "TESTSCU"
SUCCESS, PENDING, CANCEL = 0x0000, 0xFF00, 0xFE00
VERIFICATION = str(Verification)
NATIVE = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))
FIND_S = StudyRootQueryRetrieveInformationModelFind
MOVE_S = StudyRootQueryRetrieveInformationModelMove
GET_S = StudyRootQueryRetrieveInformationModelGet

Contexts = Iterable[tuple[str, Sequence[str]]]


@dataclass
class StoreResult:
    status: int          # -1 when no response arrived (abort, timeout)
    comment: str | None  # Error Comment, if the SCP sent one

    @property
    def ok(self) -> bool:
        return self.status == SUCCESS


@dataclass
class Response:
    """One C-FIND/C-MOVE/C-GET response: its status, identifier and status dataset."""

    status: int
    identifier: Dataset | None
    status_ds: Dataset = field(repr=False)


def identifier(level: str, **keys: Any) -> Dataset:
    """A query identifier: QueryRetrieveLevel plus `keys` ("" = return this key)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(ds, keyword, value)
    return ds


class Scu:
    """A pynetdicom SCU calling the server on 127.0.0.1 as `ae_title`."""

    def __init__(self, ae_title: str = SCU_AE) -> None:
        self.ae_title = ae_title

    def ae(self, contexts: Contexts = ()) -> AE:
        """An AE proposing Verification plus `contexts`, with short timeouts."""
        ae = AE(ae_title=self.ae_title)
        ae.acse_timeout = 10
        ae.dimse_timeout = 60
        ae.network_timeout = 60
        for sop_class, syntaxes in [(VERIFICATION, NATIVE), *contexts]:
            ae.add_requested_context(sop_class, list(syntaxes))
        return ae

    @contextmanager
    def associate(self, port: int | None, contexts: Contexts = (), *,
                  called: str = SERVER_AE, host: str = "127.0.0.1", require: bool = True,
                  ae: AE | None = None, **kwargs: Any) -> Iterator[Association]:
        """An association proposing Verification plus `contexts`; released on exit.

        `kwargs` go to `AE.associate` (max_pdu, ext_neg, evt_handlers). With `require`,
        raises ConnectionError unless the association is established.
        """
        assert port, "no port: is the server running?"
        ae = ae or self.ae(contexts)
        handlers = [(evt.EVT_CONN_OPEN, nodelay), *kwargs.pop("evt_handlers", ())]
        assoc = ae.associate(host, port, ae_title=called, evt_handlers=handlers, **kwargs)
        settle_rejection(assoc)     # upstream's requestor race (dicom/requestor.py)
        try:
            if assoc.is_established:
                keep_responses_for_the_caller(assoc)
            elif require:
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
        """C-STORE each file byte for byte, in its own transfer syntax, over one association."""
        paths = list(paths)
        with self.associate(port, contexts_for(paths), called=called, **kwargs) as assoc:
            return [send(assoc, p) for p in paths]

    def store_datasets(self, port: int | None, datasets: Iterable[Dataset],
                       **kwargs: Any) -> list[StoreResult]:
        """C-STORE each dataset, encoded by pynetdicom in Explicit VR Little Endian."""
        datasets = list(datasets)
        classes = sorted({str(ds.SOPClassUID) for ds in datasets})
        contexts = [(uid, [str(ExplicitVRLittleEndian)]) for uid in classes]
        with self.associate(port, contexts, **kwargs) as assoc:
            return [_result(assoc.send_c_store(ds)) for ds in datasets]

    def find(self, port: int | None, query: Dataset, model: str = FIND_S,
             **kwargs: Any) -> list[Response]:
        """Every C-FIND response, in order (kwargs: ext_neg for combined date-time)."""
        with self.associate(port, [(model, NATIVE)], **kwargs) as assoc:
            return [Response(int(st.Status), ident, st)
                    for st, ident in assoc.send_c_find(query, model)]

    def move(self, port: int | None, query: Dataset, dest: str,
             model: str = MOVE_S) -> list[Response]:
        """Every C-MOVE response, in order."""
        with self.associate(port, [(model, NATIVE)]) as assoc:
            return [Response(int(st.Status), ident, st)
                    for st, ident in assoc.send_c_move(query, dest, model)]

    async def astore(self, port: int | None, paths: Iterable[Path],
                     **kwargs: Any) -> list[StoreResult]:
        return await asyncio.to_thread(self.store, port, list(paths), **kwargs)

    async def aecho(self, port: int | None, called: str = SERVER_AE) -> int:
        return await asyncio.to_thread(self.echo, port, called)


class GetScu:
    """C-GET with the Storage SCP role for `classes`; keeps what arrives, raw and decoded."""

    def __init__(self, *classes: str, model: str = GET_S, ae_title: str = SCU_AE) -> None:
        self.received: dict[str, Dataset] = {}
        self.raw: dict[str, bytes] = {}
        self._classes = classes
        self._model = model
        self._scu = Scu(ae_title)
        self._lock = threading.Lock()

    def _on_store(self, event: Any) -> int:
        ds = event.dataset
        # dicom/server.py turns on pynetdicom's process-wide STORE_RECV_CHUNKED_DATASET,
        # so in this process what arrived is in a file (deleted when we return).
        path = getattr(event, "dataset_path", None)
        raw = dataset_bytes(Path(path)) if path else event.encoded_dataset(include_meta=False)
        with self._lock:
            self.received[str(ds.SOPInstanceUID)] = ds
            self.raw[str(ds.SOPInstanceUID)] = raw
        return SUCCESS

    def get(self, port: int | None, query: Dataset) -> list[Response]:
        contexts = [(self._model, NATIVE), *((uid, NATIVE) for uid in self._classes)]
        roles = [build_role(uid, scp_role=True) for uid in self._classes]
        with self._scu.associate(port, contexts, ext_neg=roles,
                                 evt_handlers=[(evt.EVT_C_STORE, self._on_store)]) as assoc:
            return [Response(int(st.Status), ident, st)
                    for st, ident in assoc.send_c_get(query, self._model)]


# --------------------------------------------------------------------------- sending files

_chunked_lock = threading.Lock()
_chunked_users = 0
_chunked_saved = False


def finals_cancelling(responses: Iterable[tuple[Dataset, Any]], after: int,
                      cancel: Any) -> list[Dataset]:
    """The non-pending statuses of a C-GET/C-MOVE response stream, calling `cancel()`
    once, right after the `after`-th pending response."""
    pending = 0
    finals: list[Dataset] = []
    for status, _ident in responses:
        if status.Status == PENDING:
            pending += 1
            if pending == after:
                cancel()
        else:
            finals.append(status)
    return finals


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


def send(assoc: Association, path: Path) -> StoreResult:
    """Send one file, byte for byte, over an established association."""
    with chunked_send():
        return _result(assoc.send_c_store(path))


def _result(rsp: Dataset) -> StoreResult:
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


# --------------------------------------------------------------------------- the connection

def nodelay(event: Any) -> None:
    """Turn Nagle off on our side from the first PDU (else ~40 ms a message on loopback)."""
    try:
        sock = event.assoc.dul.socket.socket if event.assoc.dul.socket else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


def keep_responses_for_the_caller(assoc: Association) -> None:
    """Stop the requestor's reactor thread from taking DIMSE messages off the queue.

    The race (pynetdicom 3.0, cf. pydicom/pynetdicom#435): every send_*() "pauses" the
    association's reactor thread by clearing `_reactor_checkpoint` and spinning until
    `_is_paused` is true. The reactor sets `_is_paused = True`, waits on the checkpoint,
    then sets it False and polls the DIMSE queue with `get_msg(block=False)`. When the
    reactor is preempted after passing the (still set) checkpoint but before clearing
    the flag, the sender sees "paused", sends its request, and the reactor then takes
    the response off the queue, logs "Received unexpected C-STORE service message" and
    drops it; the sender waits out its DIMSE timeout. Seen as stores hanging once in a
    few runs of 1500 stores on a loaded machine.

    An SCU of ours only sends requests: responses (and the C-STORE requests of a C-GET)
    are read by send_*() itself with `get_msg(block=True)` in the caller's thread, so the
    reactor never needs to read the queue. Its non-blocking polls get nothing, and every
    message stays, in order, for the caller. (Putting a taken response back on the queue
    instead would reorder it behind later ones, e.g. C-FIND pending responses.) Only our
    test SCU is changed, never the server under test.
    """
    dimse = assoc.dimse
    original = dimse.get_msg

    def get_msg(block: bool = False) -> Any:
        if not block and threading.get_ident() == assoc.ident:
            return None, None
        return original(block)

    dimse.get_msg = get_msg  # type: ignore[method-assign]


def throttle(assoc: Association, bytes_per_second: float,
             hold: tuple[threading.Event, int] | None = None) -> None:
    """Slow down what this (client) association sends, so a test can act mid-transfer.

    `hold=(event, n)`: once `n` bytes are sent, the rest waits until `event` is set (at
    most 60 s), so the test's action falls mid-transfer however slow the machine is.
    Only our own SCU is slowed: the server under test runs unmodified.
    """
    sock = assoc.dul.socket
    assert sock is not None
    original = sock.send
    sent = 0

    def slow_send(data: bytes) -> None:
        nonlocal sent
        if hold is not None and sent >= hold[1]:
            hold[0].wait(60)
        time.sleep(len(data) / bytes_per_second)
        original(data)
        sent += len(data)

    sock.send = slow_send  # type: ignore[method-assign,assignment]


def association_outcome(port: int, calling: str) -> str:
    """'accepted' (C-ECHO answered), 'rejected' (A-ASSOCIATE-RJ) or 'failed'."""
    try:
        Scu(calling).echo(port)
        return "accepted"
    except ConnectionError as exc:
        return "rejected" if "rejected=True" in str(exc) else "failed"


def wait_until_responds(port: int | None, timeout: float = 15.0, called: str = SERVER_AE) -> None:
    """Poll until the server answers an A-ASSOCIATE-RQ (datasette's wait_until_responds).

    An accepted association must also answer C-ECHO; a rejection (A-ASSOCIATE-RJ, e.g.
    our AE title is not whitelisted) is an answer too.
    """
    assert port, "no port: is the server running?"
    scu = Scu()
    ae = scu.ae()
    ae.acse_timeout = 2

    def answers() -> bool:
        with scu.associate(port, called=called, ae=ae, require=False) as assoc:
            if assoc.is_established:
                status = assoc.send_c_echo()
                return "Status" in status and int(status.Status) == SUCCESS
            return bool(assoc.is_rejected)

    wait_until(answers, timeout, f"an answer to A-ASSOCIATE-RQ on port {port}")
