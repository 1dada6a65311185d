"""Association bookkeeping: one canonical log line per association, and its metrics.

pynetdicom fires association events from different threads (the accept thread, the
association thread, the DUL thread), so state lives in a dict keyed by the Association
object, guarded by a lock, rather than in contextvars.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)


@dataclass
class AssociationRecord:
    id: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    calling_ae: str = ""
    called_ae: str = ""
    contexts: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    bytes_in: int = 0
    outcome: str = "closed"
    accepted: bool = False


class AssociationTracker:
    """Follows each association from connection to close and logs how it went."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._records: dict[int, AssociationRecord] = {}
        self._ids = itertools.count(1)

    def handlers(self) -> list[tuple[Any, Any]]:
        return [
            (evt.EVT_CONN_OPEN, self._on_open),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]

    def record(self, event: Event) -> AssociationRecord | None:
        with self._lock:
            return self._records.get(id(event.assoc))

    def log_context(self, event: Event) -> dict[str, Any]:
        """What every log line of this association's handlers carries."""
        rec = self.record(event)
        if rec is None:
            return {"peer": _peer(event)}
        return {"assoc": rec.id, "calling_ae": rec.calling_ae, "peer": rec.peer}

    def operation(self, event: Event, name: str, status: int, nbytes: int = 0) -> None:
        """Count one DIMSE operation (called by the handler wrapper)."""
        self._metrics.dimse_requests.labels(name, f"0x{status:04X}").inc()
        rec = self.record(event)
        if rec is None:
            return
        with self._lock:
            rec.operations[name] = rec.operations.get(name, 0) + 1
            rec.bytes_in += nbytes
            if status not in (0x0000, 0xFF00, 0xFF01) and not 0xB000 <= status <= 0xBFFF:
                rec.failures += 1

    def _on_open(self, event: Event) -> None:
        set_nodelay(event)
        with self._lock:
            self._records[id(event.assoc)] = AssociationRecord(next(self._ids), _peer(event))

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        rec = self.record(event)
        if rec is None:
            return
        rec.calling_ae = assoc.requestor.ae_title
        rec.called_ae = assoc.acceptor.ae_title
        rec.contexts = len(assoc.accepted_contexts)
        rec.accepted = True
        self._metrics.associations_active.inc()
        self._metrics.associations.labels("accepted").inc()
        tls = {"tls_subject": assoc.tls_subject} if getattr(assoc, "tls", False) else {}
        log.info("association.accepted", assoc=rec.id, peer=rec.peer, calling_ae=rec.calling_ae,
                 called_ae=rec.called_ae, **tls, accepted_contexts=rec.contexts,
                 rejected_contexts=len(assoc.rejected_contexts),
                 contexts=_describe_contexts(assoc.accepted_contexts))

    def _on_rejected(self, event: Event) -> None:
        rec = self.record(event)
        assoc = event.assoc
        if rec is not None:
            rec.outcome = "rejected"
        self._metrics.associations.labels("rejected").inc()
        # event.address exists only on EVT_CONN_OPEN: the record made then has the peer.
        log.warning("association.rejected", peer=rec.peer if rec is not None else _peer(event),
                    calling_ae=getattr(assoc.requestor, "ae_title", ""),
                    called_ae=getattr(assoc.acceptor, "ae_title", ""))

    def _on_released(self, event: Event) -> None:
        rec = self.record(event)
        if rec is not None:
            rec.outcome = "released"

    def _on_aborted(self, event: Event) -> None:
        rec = self.record(event)
        if rec is not None:
            rec.outcome = "aborted"

    def _on_close(self, event: Event) -> None:
        with self._lock:
            rec = self._records.pop(id(event.assoc), None)
        if rec is None:
            return
        if rec.outcome == "closed":
            # pynetdicom often fires EVT_CONN_CLOSE before EVT_ABORTED/EVT_RELEASED;
            # the association (or its DUL queue) already knows how it ended.
            rec.outcome = _ending(event.assoc) or rec.outcome
        if rec.accepted:
            self._metrics.associations_active.dec()
            self._metrics.associations.labels(rec.outcome).inc()
            log.info("association.closed", assoc=rec.id, peer=rec.peer, calling_ae=rec.calling_ae,
                     called_ae=rec.called_ae, outcome=rec.outcome, operations=rec.operations,
                     failures=rec.failures, bytes=rec.bytes_in,
                     duration_ms=round((time.monotonic() - rec.started) * 1000, 1))


def _ending(assoc: Any) -> str | None:
    try:
        if assoc.is_aborted or assoc.acse.is_aborted():
            return "aborted"
        if assoc.is_released:
            return "released"
    except Exception:  # a half-built association: no verdict
        return None
    return None


def set_nodelay(event: Event) -> None:
    """Disable Nagle on the association's socket (loopback DIMSE stalls ~40 ms without)."""
    try:
        sock = event.assoc.dul.socket.socket
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _describe_contexts(contexts: list[Any], limit: int = 32) -> list[str]:
    """`SOP class name / transfer syntax name` per accepted context, for the log."""
    out = []
    for cx in contexts[:limit]:
        sop = getattr(cx.abstract_syntax, "name", str(cx.abstract_syntax))
        ts = cx.transfer_syntax[0] if cx.transfer_syntax else ""
        out.append(f"{sop} / {getattr(ts, 'name', ts)}")
    if len(contexts) > limit:
        out.append(f"... and {len(contexts) - limit} more")
    return out


def _peer(event: Event) -> str:
    try:
        addr = event.address
        return f"{addr[0]}:{addr[1]}"
    except (AttributeError, IndexError, TypeError):
        return "?"
