"""Verification SCP (C-ECHO, PS3.4 Annex A)."""

from __future__ import annotations

from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from pacs_server.dicom.service import Context, DicomService, Operation
from pacs_server.dicom.status import SUCCESS, Service


def handle_echo(event: Event) -> int:
    """Always Success: if we got this far the association and the service are up."""
    return SUCCESS


def service() -> DicomService:
    """C-ECHO on the Verification SOP class."""
    return DicomService(
        name="Verification",
        contexts=(Context(str(Verification)),),
        operations=(Operation(evt.EVT_C_ECHO, handle_echo, Service.C_ECHO, "C-ECHO"),),
    )
