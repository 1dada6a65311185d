"""Association bookkeeping: one canonical log line per association, and its metrics.

pynetdicom fires association events from different threads (the accept thread, the
association thread, the DUL thread), so state lives in a dict keyed by the Association
object, guarded by a lock, rather than in contextvars.

`snapshot()` / `detail(id)` give plain dicts of the live associations (the HTTP side's
/status and /api/associations), `abort(id)` ends one, `totals()` counts since start.
Listeners (`listen(fn)`, injected by the composition root: the event feed, the audit
log) get `fn(kind, fields)` with plain values for connect, associate, refusal,
operation, release, abort and close; they run in pynetdicom's threads and must not block.
"""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pynetdicom import evt
from pynetdicom.events import Event

from pacs_server.metrics import Metrics

log = structlog.get_logger(__name__)

Listener = Callable[[str, dict[str, Any]], None]

# A-ASSOCIATE-RJ (result, source, diagnostic) -> the reason label (PS3.8 9.3.4).
REJECT_REASONS: dict[tuple[Any, Any, Any], str] = {
    (0x01, 0x01, 0x03): "calling_ae_not_allowed",
    (0x01, 0x01, 0x07): "called_ae_not_recognised",
    (0x02, 0x03, 0x02): "local_limit_exceeded",
    (0x02, 0x02, 0x01): "user_identity",
}
_RECENT_OPERATIONS = 200


@dataclass
class AssociationRecord:
    id: int
    peer: str
    started: float = field(default_factory=time.monotonic)
    since: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    calling_ae: str = ""
    called_ae: str = ""
    tls_subject: str = ""
    contexts: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    bytes_in: int = 0
    outcome: str = "closed"
    accepted: bool = False
    last_operation: str = ""
    recent: deque[tuple[str, str, float, int]] = field(
        default_factory=lambda: deque(maxlen=_RECENT_OPERATIONS))
    assoc: Any = None

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "peer": self.peer, "calling_ae": self.calling_ae,
                "called_ae": self.called_ae, "since": self.since,
                "established": self.accepted, "operations": dict(self.operations),
                "operations_total": sum(self.operations.values()),
                "failures": self.failures, "last_operation": self.last_operation,
                "bytes_received": self.bytes_in}


class AssociationTracker:
    """Follows each association from connection to close and logs how it went."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._lock = threading.Lock()
        self._records: dict[int, AssociationRecord] = {}
        self._ids = itertools.count(1)
        self._listeners: list[Listener] = []
        self._totals: dict[str, int] = {"connections": 0, "accepted": 0, "rejected": 0,
                                        "released": 0, "aborted": 0, "operations": 0,
                                        "failures": 0, "bytes_received": 0}

    # ------------------------------------------------------------ observers and views
    def listen(self, listener: Listener) -> None:
        """Call `listener(kind, fields)` on every association event from now on."""
        self._listeners.append(listener)

    def _emit(self, kind: str, rec: AssociationRecord | None, **fields: Any) -> None:
        if rec is not None:
            fields = {"assoc": rec.id, "peer": rec.peer, "calling_ae": rec.calling_ae,
                      "called_ae": rec.called_ae,
                      **({"tls_subject": rec.tls_subject} if rec.tls_subject else {}),
                      **fields}
        for listener in list(self._listeners):
            try:
                listener(kind, fields)
            except Exception:  # an observer must never break an association
                log.exception("association.listener_failed", kind=kind)

    def snapshot(self) -> list[dict[str, Any]]:
        """The live associations, oldest first (thread-safe copy)."""
        with self._lock:
            return [r.summary() for r in sorted(self._records.values(), key=lambda r: r.id)]

    def totals(self) -> dict[str, int]:
        with self._lock:
            return dict(self._totals)

    def detail(self, assoc_id: int) -> dict[str, Any] | None:
        """One live association: summary, negotiated contexts, PDU sizes, operations."""
        with self._lock:
            rec = self._find(assoc_id)
            if rec is None:
                return None
            out = rec.summary()
            out["recent_operations"] = [
                {"operation": name, "status": code,
                 "at": datetime.fromtimestamp(at, UTC).isoformat(), "bytes": nbytes}
                for name, code, at, nbytes in rec.recent]
            assoc = rec.assoc
        if assoc is not None and rec.accepted:
            out["max_pdu"] = {"ours": assoc.acceptor.maximum_length,
                              "peer": assoc.requestor.maximum_length}
            out["contexts"] = [_context(cx) for cx in assoc.accepted_contexts]
            out["rejected_contexts"] = len(assoc.rejected_contexts)
        return out

    def abort(self, assoc_id: int) -> bool:
        """Send A-ABORT on a live association; False when there is no such association.

        Its thread then stops: a C-STORE in progress is never acknowledged and its
        received data is discarded by pynetdicom and the archive's clean-up, exactly as
        when the peer aborts.
        """
        with self._lock:
            rec = self._find(assoc_id)
            assoc = rec.assoc if rec is not None else None
        if assoc is None:
            return False
        log.warning("association.disconnect", assoc=assoc_id, peer=rec.peer if rec else "")
        assoc.abort()
        return True

    def _rejected(self, rec: AssociationRecord | None, peer: str, calling: str, called: str,
                  reason: str, counted: bool) -> None:
        with self._lock:
            self._totals["rejected"] += 1
        self._metrics.associations.labels("rejected").inc()
        if not counted:
            self._metrics.associations_rejected.labels(reason).inc()
        log.warning("association.rejected", peer=peer, calling_ae=calling, called_ae=called,
                    reason=reason)
        self._emit("refusal", rec, reason=reason)

    def _find(self, assoc_id: int) -> AssociationRecord | None:
        for rec in self._records.values():
            if rec.id == assoc_id:
                return rec
        return None

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

    def operation(self, event: Event, name: str, status: int, nbytes: int = 0,
                  details: dict[str, Any] | None = None) -> None:
        """Count one DIMSE operation (called by the handler wrapper); `details` are the
        plain facts the listeners (audit) get: keys, UIDs, counts."""
        code = f"0x{status:04X}"
        self._metrics.dimse_requests.labels(name, code).inc()
        failed = status not in (0x0000, 0xFF00, 0xFF01) and not 0xB000 <= status <= 0xBFFF
        with self._lock:
            rec = self._records.get(id(event.assoc))
            self._totals["operations"] += 1
            self._totals["failures"] += failed
            self._totals["bytes_received"] += nbytes
            if rec is not None:
                rec.operations[name] = rec.operations.get(name, 0) + 1
                rec.bytes_in += nbytes
                rec.failures += failed
                rec.last_operation = name
                # Made into the /api dict only when asked for (`detail`): one per
                # stored instance otherwise.
                rec.recent.append((name, code, time.time(), nbytes))
        self._emit("operation", rec, operation=name, status=code, failed=failed,
                   bytes=nbytes, **(details or {}))

    def _on_open(self, event: Event) -> None:
        set_nodelay(event)
        rec = AssociationRecord(next(self._ids), _peer(event), assoc=event.assoc,
                                tls_subject=str(getattr(event.assoc, "tls_subject", "") or ""))
        with self._lock:
            self._records[id(event.assoc)] = rec
            self._totals["connections"] += 1
        self._emit("connect", rec)

    def _on_accepted(self, event: Event) -> None:
        assoc = event.assoc
        rec = self.record(event)
        if rec is None:
            return
        rec.calling_ae = assoc.requestor.ae_title
        rec.called_ae = assoc.acceptor.ae_title
        rec.contexts = len(assoc.accepted_contexts)
        rec.accepted = True
        with self._lock:
            self._totals["accepted"] += 1
        self._emit("associate", rec, contexts=rec.contexts)
        self._metrics.associations_active.inc()
        self._metrics.associations.labels("accepted").inc()
        tls = {"tls_subject": getattr(assoc, "tls_subject", "")} if getattr(assoc, "tls", False) \
            else {}
        log.info("association.accepted", assoc=rec.id, peer=rec.peer, calling_ae=rec.calling_ae,
                 called_ae=rec.called_ae, **tls, accepted_contexts=rec.contexts,
                 rejected_contexts=len(assoc.rejected_contexts),
                 contexts=_describe_contexts(assoc.accepted_contexts))

    def _on_rejected(self, event: Event) -> None:
        rec = self.record(event)
        assoc = event.assoc
        calling = str(getattr(assoc.requestor, "ae_title", "") or "").strip()
        called = str(getattr(assoc.acceptor, "ae_title", "") or "").strip()
        if rec is not None:
            rec.outcome = "rejected"
            rec.calling_ae, rec.called_ae = calling, called
        refusal = getattr(assoc, "refusal", None)
        if refusal is not None:
            # The policy's own refusal (dicom/policy.py): counted and logged there.
            reason, counted = refusal.reason, True
        else:
            rj = getattr(assoc.acceptor, "primitive", None)
            key = (getattr(rj, "result", None), getattr(rj, "result_source", None),
                   getattr(rj, "diagnostic", None))
            reason, counted = REJECT_REASONS.get(key, "other"), False
        # event.address exists only on EVT_CONN_OPEN: the record made then has the peer.
        self._rejected(rec, rec.peer if rec is not None else _peer(event), calling, called,
                       reason, counted)

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
        rec.assoc = None
        if rec.outcome != "released":
            discard_partial_receive(event.assoc)
        if rec.accepted:
            duration_ms = round((time.monotonic() - rec.started) * 1000, 1)
            # Logged before the totals count it: whoever sees the count has the line too.
            log.info("association.closed", assoc=rec.id, peer=rec.peer, calling_ae=rec.calling_ae,
                     called_ae=rec.called_ae, outcome=rec.outcome, operations=rec.operations,
                     failures=rec.failures, bytes=rec.bytes_in, duration_ms=duration_ms)
            with self._lock:
                if rec.outcome in ("released", "aborted"):
                    self._totals[rec.outcome] += 1
            self._emit("release" if rec.outcome == "released" else "abort", rec,
                       outcome=rec.outcome, operations=dict(rec.operations),
                       bytes=rec.bytes_in, duration_ms=duration_ms)
            self._metrics.associations_active.dec()
            self._metrics.associations.labels(rec.outcome).inc()


def _ending(assoc: Any) -> str | None:
    try:
        if assoc.is_aborted or assoc.acse.is_aborted():
            return "aborted"
        if assoc.is_released:
            return "released"
    except Exception:  # a half-built association: no verdict
        return None
    return None


def discard_partial_receive(assoc: Any) -> None:
    """Remove the temporary file of a C-STORE whose data stopped arriving (abort).

    pynetdicom's chunked receive (STORE_RECV_CHUNKED_DATASET) writes into a
    NamedTemporaryFile(delete=False) held by the DIMSE message being decoded, and only the
    completed message's handler path deletes it. Without this, an aborted transfer
    leaves its buffer in <archive>/.incoming until the sweeper or the next start.
    """
    message = getattr(getattr(assoc, "dimse", None), "message", None)
    path = getattr(message, "_data_set_path", None)
    if path is None:
        return
    handle = getattr(message, "_data_set_file", None)
    try:
        if handle is not None:
            handle.close()
        os.unlink(path)
    except OSError:
        pass


def set_nodelay(event: Event) -> None:
    """Disable Nagle on the association's socket (loopback DIMSE stalls ~40 ms without)."""
    try:
        assoc_socket = event.assoc.dul.socket
        sock = assoc_socket.socket if assoc_socket is not None else None
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def _context(cx: Any) -> dict[str, Any]:
    """One accepted presentation context as plain values."""
    sop = cx.abstract_syntax
    ts = cx.transfer_syntax[0] if cx.transfer_syntax else ""
    return {"id": cx.context_id, "sop_class": str(sop),
            "sop_class_name": getattr(sop, "name", str(sop)),
            "transfer_syntax": str(ts), "transfer_syntax_name": getattr(ts, "name", str(ts)),
            "scu_role": bool(cx.as_scu), "scp_role": bool(cx.as_scp)}


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
    requestor = getattr(event.assoc, "requestor", None)
    address = getattr(requestor, "address", "")
    if not address:
        return "?"
    return f"{address}:{getattr(requestor, 'port', '')}"
