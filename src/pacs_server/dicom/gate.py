"""Who may open an association, decided when the A-ASSOCIATE-RQ arrives (EVT_REQUESTED).

Two rules, both changeable while the server runs (SIGHUP, the admin API):

- **pause**: while paused every new association is refused with A-ASSOCIATE-RJ
  rejected-transient, service-provider (presentation), *local limit exceeded* (PS3.8
  9.3.4), the answer a modality reads as "try again later". Associations already
  established continue. The listening socket stays open, so the peer gets a DICOM answer
  rather than a refused TCP connection.
- **access list**: calling AE titles (optionally bound to a host address) that may
  connect; "*" lets anyone in. A title that is not listed (or comes from another host) is
  refused rejected-permanent, service-user, *calling AE title not recognised*.

The check replaces pynetdicom's `require_calling_aet` so that hosts can be part of an
entry and the list can grow without rebuilding the AE. A refusal is counted and logged
by the tracker (`AssociationTracker.refused`), like the rejections pynetdicom makes.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from pynetdicom.events import Event

from pacs_server.dicom.associations import AssociationTracker

_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)
_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)


@dataclass(frozen=True)
class AccessEntry:
    """One allowed calling AE title, from `host` only when it is set."""

    ae_title: str
    host: str = ""


class AssociationGate:
    """The EVT_REQUESTED handler: pause flag and calling-AE access list."""

    def __init__(self, tracker: AssociationTracker) -> None:
        self._tracker = tracker
        self._lock = threading.Lock()
        self._paused = False
        self._anyone = True
        self._entries: frozenset[AccessEntry] = frozenset()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause(self) -> None:
        self._paused = True

    def resume(self) -> None:
        self._paused = False

    def set_access(self, entries: Iterable[AccessEntry]) -> None:
        """Replace the access list; an entry "*" lets every calling AE in."""
        entries = frozenset(entries)
        with self._lock:
            self._anyone = any(e.ae_title == "*" for e in entries)
            self._entries = frozenset(e for e in entries if e.ae_title != "*")

    def allows(self, calling_ae: str, host: str) -> bool:
        with self._lock:
            if self._anyone:
                return True
            return any(e.ae_title == calling_ae and (not e.host or e.host == host)
                       for e in self._entries)

    def on_requested(self, event: Event) -> None:
        assoc = event.assoc
        if self._paused:
            self._reject(event, _LIMIT_EXCEEDED, "paused")
            return
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        host = str(getattr(assoc.requestor, "address", "") or "")
        if not self.allows(calling, host):
            self._reject(event, _CALLING_AE_NOT_RECOGNISED, "calling_ae_not_allowed")

    def _reject(self, event: Event, rsd: tuple[int, int, int], reason: str) -> None:
        # What pynetdicom's own negotiation does on a rejection (acse.py): send the
        # A-ASSOCIATE-RJ, then stop the association; the reactor sees is_rejected and
        # skips negotiation.
        event.assoc.acse.send_reject(*rsd)
        self._tracker.refused(event, reason)
        event.assoc.kill()
