"""How a DICOM service declares itself to the server (one registration point per service).

Each service module (echo.py, store.py, find.py, ...) has a function that returns a
`DicomService`: the presentation contexts it accepts (SOP class and roles), the DIMSE
operations it answers (event and SOP classes) and, optionally, its SOP Class Extended
Negotiation. The composition root passes the list to `DicomServer`, which loops over it
and names no service itself (Orthanc's `DicomServer::Set*RequestHandlerFactory`).

Several SOP classes share one DIMSE event (C-FIND for Query/Retrieve and Modality
Worklist; N-CREATE, N-SET and N-ACTION for MPPS, Storage Commitment, later UPS), and
pynetdicom binds one handler per event: `Dispatcher` picks the operation by the SOP
class of the request, in one place.

A handler returns (or, for C-FIND/C-GET/C-MOVE, yields) what pynetdicom expects, or a
`Reply` when it has more to say (reply attributes of an N-* operation, bytes received).
It may raise `PacsError`: `dicom/handler.py` turns every exception into the service's
status from `dicom/status.py`, logs it once and counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.events import Event, InterventionEvent

from pacs_server.dicom.status import Service

Handler = Callable[[Event], Any]
# A wrapped precheck: None to go on, or the failure status (a status Dataset) to answer.
Precheck = Callable[[Event], Dataset | None]
# Extended negotiation: the requestor's Service-class-application-information for one
# SOP class in, our reply out (None: do not answer for that class).
ExtendedNegotiation = Callable[[bytes], bytes | None]


@dataclass(frozen=True)
class Context:
    """A presentation context the service accepts as association acceptor.

    `scu_role`/`scp_role` follow pynetdicom's `add_supported_context`: None leaves the
    default roles; C-GET needs `scp_role=True` on storage classes (PS3.7 D.3.3.4).
    `transfer_syntaxes` None means every syntax the server accepts.
    """

    sop_class: str
    scu_role: bool | None = None
    scp_role: bool | None = None
    transfer_syntaxes: Sequence[str] | None = None


@dataclass(frozen=True)
class Operation:
    """One DIMSE operation of a service.

    Args:
        event: the pynetdicom intervention event (evt.EVT_C_FIND, evt.EVT_N_CREATE...).
        handler: called with the event in the association's thread.
        status: the row of the status table that maps this operation's errors.
        name: the operation's name in logs and metrics ("C-FIND", "MWL C-FIND", ...).
        sop_classes: the requests it answers, by SOP class; None answers every request
            of its event that no other operation claims (C-STORE: every storage class).
        precheck: raises (PacsError) for a request to refuse before pynetdicom's SCP
            starts on it; C-MOVE only (dicom/transport.py: before the destination is
            associated with).
    """

    event: InterventionEvent
    handler: Handler
    status: Service
    name: str
    sop_classes: frozenset[str] | None = None
    precheck: Callable[[Event], None] | None = None


@dataclass(frozen=True)
class DicomService:
    """What a service module registers with the DICOM server."""

    name: str
    contexts: tuple[Context, ...]
    operations: tuple[Operation, ...]
    extended_negotiation: Mapping[str, ExtendedNegotiation] = field(default_factory=dict)
    # Raises PacsError while C-STORE data sets must not be received at all (the
    # archive below storage.min_free_bytes): they are then dropped unread
    # (dicom/transport.py, gate_data_sets) and the handler refuses them.
    receive_gate: Callable[[], None] | None = None


@dataclass
class Reply:
    """A handler's answer when a bare status is not enough.

    Args:
        status: the status code (or a status dataset with Error Comment etc.).
        dataset: the reply's attribute list (N-CREATE, N-SET, N-ACTION, N-GET).
        nbytes: bytes received for this operation (the association's record).
        details: plain facts for the audit log (e.g. patient ID and study UID stored).
    """

    status: int | Dataset
    dataset: Dataset | None = None
    nbytes: int = 0
    details: dict[str, str] | None = None


def contexts_for(sop_classes: Iterable[Any], **roles: Any) -> tuple[Context, ...]:
    """One `Context` per SOP class, with the same roles."""
    return tuple(Context(str(uid), **roles) for uid in sop_classes)


def request_sop_class(event: Event) -> str:
    """The SOP class a DIMSE request is about (Affected for C-*/N-CREATE/N-EVENT-REPORT,
    Requested for N-SET/N-GET/N-ACTION/N-DELETE)."""
    req = event.request
    uid = getattr(req, "AffectedSOPClassUID", None) or getattr(req, "RequestedSOPClassUID", None)
    return str(uid or "")


class Dispatcher:
    """Routes each intervention event to the operation registered for its SOP class."""

    def __init__(self, wrap: Callable[[Operation], Handler],
                 wrap_precheck: Callable[[Operation], Precheck] | None = None) -> None:
        self._wrap = wrap
        self._wrap_precheck = wrap_precheck
        self._by_class: dict[tuple[InterventionEvent, str], Handler] = {}
        self._default: dict[InterventionEvent, Handler] = {}
        self._prechecks: dict[tuple[InterventionEvent, str], Precheck] = {}

    def add(self, op: Operation) -> None:
        handler = self._wrap(op)
        if op.precheck is not None and self._wrap_precheck is not None:
            if op.sop_classes is None:
                raise ValueError(f"a precheck of {op.event.name} needs its SOP classes")
            for uid in op.sop_classes:
                self._prechecks[(op.event, uid)] = self._wrap_precheck(op)
        if op.sop_classes is None:
            if op.event in self._default:
                raise ValueError(f"two default operations for {op.event.name}")
            self._default[op.event] = handler
            return
        for uid in op.sop_classes:
            if (op.event, uid) in self._by_class:
                raise ValueError(f"two operations for {op.event.name} on {uid}")
            self._by_class[(op.event, uid)] = handler

    def events(self) -> list[InterventionEvent]:
        return sorted({e for e, _ in self._by_class} | set(self._default), key=lambda e: e.name)

    def handler_for(self, event_type: InterventionEvent) -> Handler:
        """The one pynetdicom handler bound to `event_type`."""
        def dispatch(event: Event) -> Any:
            handler = self._by_class.get((event_type, request_sop_class(event)))
            if handler is None:
                handler = self._default.get(event_type)
            if handler is None:
                # pynetdicom only calls us for contexts we accepted, so every accepted
                # SOP class has an operation; this is a registration bug.
                raise LookupError(f"no operation for {event_type.name} on "
                                  f"{request_sop_class(event)}")
            return handler(event)
        return dispatch


    def prechecks(self) -> dict[InterventionEvent, Precheck]:
        """Per event, one precheck dispatching by SOP class (none for a class that has
        no precheck)."""
        out: dict[InterventionEvent, Precheck] = {}
        for event_type in {e for e, _ in self._prechecks}:
            def check(event: Event, event_type: InterventionEvent = event_type) -> Any:
                found = self._prechecks.get((event_type, request_sop_class(event)))
                return found(event) if found is not None else None
            out[event_type] = check
        return out


def extended_negotiation(services: Iterable[DicomService]) -> Handler | None:
    """One EVT_SOP_EXTENDED handler answering for every service that negotiates."""
    table: dict[str, ExtendedNegotiation] = {}
    for svc in services:
        table.update(svc.extended_negotiation)
    if not table:
        return None

    def handle(event: Event) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for uid, info in (getattr(event, "app_info", None) or {}).items():
            answer = table.get(str(uid))
            reply = answer(info) if answer is not None and info else None
            if reply is not None:
                out[uid] = reply
        return out
    return handle


EXTENDED_EVENT = evt.EVT_SOP_EXTENDED
