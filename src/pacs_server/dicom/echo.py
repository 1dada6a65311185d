"""Verification SCP (C-ECHO, PS3.4 Annex A)."""

from __future__ import annotations

from pynetdicom.events import Event

from pacs_server.dicom.associations import AssociationTracker
from pacs_server.dicom.status import SUCCESS


def handle_echo(event: Event, tracker: AssociationTracker) -> int:
    """Always Success: if we got this far the association and the service are up."""
    tracker.operation(event, "C-ECHO", SUCCESS)
    return SUCCESS
