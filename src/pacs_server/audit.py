"""The audit trail: one JSON line per association, per DIMSE operation and per admin
API call, in `logging.audit_file` (empty = off). Field names are stable (a SIEM parses
them); every field is documented in docs/operations.md.

Event names follow DICOM PS3.15 A.5 / IHE ATNA (RFC 3881 vocabulary, DCM codes):

| record                          | event_id (DCM code)                     | action |
| ------------------------------- | --------------------------------------- | ------ |
| association accepted / closed   | Application Activity (110100)           | E      |
| association refused             | Security Alert (110113)                 | E      |
| C-ECHO                          | Application Activity (110100)           | E      |
| C-STORE received                | DICOM Instances Transferred (110104)    | C      |
| C-FIND (and worklist)           | Query (110112)                          | E      |
| C-GET / C-MOVE                  | Begin Transferring DICOM Instances (110102) | R  |
| admin API call                  | Application Activity (110100)           | E      |
| DICOMweb QIDO-RS                | Query (110112)                          | E      |
| DICOMweb WADO-RS / WADO-URI     | Begin Transferring DICOM Instances (110102) | R  |
| DICOMweb STOW-RS                | DICOM Instances Transferred (110104)    | C      |

`AuditLog` is thread-safe (association threads write), line-buffered and reopened by
`reopen()` on SIGHUP, so logrotate can move the file away.
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

from pacs_server.errors import StartupError

log = structlog.get_logger(__name__)

APPLICATION_ACTIVITY = ("110100", "Application Activity")
BEGIN_TRANSFERRING = ("110102", "Begin Transferring DICOM Instances")
INSTANCES_TRANSFERRED = ("110104", "DICOM Instances Transferred")
QUERY = ("110112", "Query")
SECURITY_ALERT = ("110113", "Security Alert")

_OPERATION_EVENTS = {
    "C-STORE": (INSTANCES_TRANSFERRED, "C"),
    "C-FIND": (QUERY, "E"),
    "MWL C-FIND": (QUERY, "E"),
    "C-GET": (BEGIN_TRANSFERRING, "R"),
    "C-MOVE": (BEGIN_TRANSFERRING, "R"),
}
_WEB_EVENTS = {
    "QIDO-RS": (QUERY, "E"),
    "WADO-RS": (BEGIN_TRANSFERRING, "R"),
    "WADO-URI": (BEGIN_TRANSFERRING, "R"),
    "STOW-RS": (INSTANCES_TRANSFERRED, "C"),
}
_PASSED = ("failed", "kind", "assoc", "peer", "calling_ae", "called_ae", "operation",
           "status", "bytes", "tls_subject")


def outcome_of(status: str | None, failed: bool = False) -> str:
    """RFC 3881 outcome: 0 success, 4 minor failure (warning), 8 serious failure."""
    if failed:
        return "8"
    if status and status.startswith("0xB"):
        return "4"
    return "0"


class AuditLog:
    """Appends audit records to a file; `path` "" means no audit trail."""

    def __init__(self, path: str, ae_title: str) -> None:
        self._lock = threading.Lock()
        self._path = path
        self._ae_title = ae_title
        self._fh: IO[str] | None = None
        self._open()

    @property
    def path(self) -> str:
        return self._path

    def _open(self) -> None:
        if not self._path:
            return
        target = Path(self._path).expanduser()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._fh = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
        except OSError as exc:
            raise StartupError(f"audit file {target} cannot be opened: {exc.strerror}") from None

    def reopen(self, path: str | None = None) -> None:
        """Close and open again (SIGHUP: after rotation, or a new logging.audit_file).

        A new path that cannot be opened is logged and the old path kept.
        """
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None
            old, self._path = self._path, (self._path if path is None else path)
            try:
                self._open()
            except StartupError as exc:
                log.error("audit.reopen_failed", error=str(exc), kept=old)
                self._path = old
                self._open()

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            return
        line = json.dumps({"time": datetime.now(UTC).isoformat(),
                           "source_ae": self._ae_title, **record},
                          separators=(",", ":"), default=str)
        with self._lock:
            if self._fh is not None:
                self._fh.write(line + "\n")

    # ------------------------------------------------------------ record builders
    def association_event(self, kind: str, fields: dict[str, Any]) -> None:
        """Listener of AssociationTracker: turn its events into audit records."""
        if self._fh is None:        # no trail: nothing to build (once per C-STORE)
            return
        who = {"calling_ae": fields.get("calling_ae", ""),
               "called_ae": fields.get("called_ae", ""),
               "address": str(fields.get("peer", "")).rsplit(":", 1)[0],
               "association": fields.get("assoc"),
               **({"tls_subject": fields["tls_subject"]} if fields.get("tls_subject") else {})}
        if kind == "operation":
            (code, name), action = _OPERATION_EVENTS.get(
                fields.get("operation", ""), (APPLICATION_ACTIVITY, "E"))
            what = {k: v for k, v in fields.items() if k not in _PASSED}
            self.write({"event": name, "event_id": code, "action": action,
                        "outcome": outcome_of(fields.get("status"), fields.get("failed", False)),
                        "service": fields.get("operation"), "status": fields.get("status"),
                        "bytes": fields.get("bytes", 0), **who, **what})
        elif kind == "associate":
            self.write({"event": APPLICATION_ACTIVITY[1], "event_id": APPLICATION_ACTIVITY[0],
                        "action": "E", "outcome": "0", "service": "association",
                        "subtype": "association-accepted",
                        "contexts": fields.get("contexts", 0), **who})
        elif kind in ("release", "abort"):
            self.write({"event": APPLICATION_ACTIVITY[1], "event_id": APPLICATION_ACTIVITY[0],
                        "action": "E", "outcome": "0" if kind == "release" else "4",
                        "service": "association", "subtype": f"association-{kind}",
                        "operations": fields.get("operations", {}),
                        "bytes": fields.get("bytes", 0),
                        "duration_ms": fields.get("duration_ms"), **who})
        elif kind == "refusal":
            self.write({"event": SECURITY_ALERT[1], "event_id": SECURITY_ALERT[0],
                        "action": "E", "outcome": "4", "service": "association",
                        "subtype": "association-refused", "reason": fields.get("reason"),
                        **who})

    def admin_call(self, action: str, outcome: str, **fields: Any) -> None:
        """An admin API call (`outcome` success | refused | failed)."""
        self.write({"event": APPLICATION_ACTIVITY[1], "event_id": APPLICATION_ACTIVITY[0],
                    "action": "E", "outcome": "0" if outcome == "success" else "4",
                    "service": "admin-api", "subtype": action, "result": outcome,
                    **fields})

    def web_request(self, service: str, status: int, **fields: Any) -> None:
        """A DICOMweb request (`service` QIDO-RS | WADO-RS | WADO-URI | STOW-RS), with its
        HTTP status: 2xx success, 4xx minor failure, 5xx serious failure."""
        (code, name), action = _WEB_EVENTS.get(service, (APPLICATION_ACTIVITY, "E"))
        outcome = "0" if status < 400 else "4" if status < 500 else "8"
        self.write({"event": name, "event_id": code, "action": action, "outcome": outcome,
                    "service": service, "http_status": status, **fields})
