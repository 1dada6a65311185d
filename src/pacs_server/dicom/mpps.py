"""Modality Performed Procedure Step SCP (N-CREATE, N-SET; PS3.4 F.7): thin handlers
over MppsService.

Statuses (raised by the service, mapped by dicom/status.py): N-CREATE 0x0111 duplicate
SOP Instance, 0x0120 missing attribute, 0x0121 missing attribute value, 0x0106 invalid
attribute value (a status other than IN PROGRESS); N-SET 0x0112 no such SOP Instance,
0x0110 (Error ID A710) the step is COMPLETED or DISCONTINUED, 0x0105 an attribute N-SET
may not change, 0x0106 invalid value, 0x0121 an attribute the final state needs.
"""

from __future__ import annotations

from typing import cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_primitives import N_CREATE, N_SET
from pynetdicom.events import Event

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.service import Context, DicomService, Operation, Reply
from pacs_server.dicom.status import SUCCESS, Service
from pacs_server.errors import UnreadableDataset
from pacs_server.services.mpps import MppsService

MPPS = "1.2.840.10008.3.1.2.3.3"    # Modality Performed Procedure Step SOP Class


def _decoded(event: Event, name: str) -> Dataset:
    """The request's dataset; an undecodable one is a processing failure, not a crash."""
    try:
        ds = getattr(event, name)
    except Exception as exc:  # pydicom raises assorted errors on malformed bytes
        raise UnreadableDataset(f"{name} cannot be decoded: {exc}") from None
    return ds if ds is not None else Dataset()


def handle_create(event: Event, mpps: MppsService, bridge: LoopBridge) -> Reply:
    """N-CREATE: store the new step; the reply names its UID if the SCU left it out."""
    request = cast(N_CREATE, event.request)
    request_uid = str(request.AffectedSOPInstanceUID or "")
    attributes = _decoded(event, "attribute_list")
    record = bridge.run(mpps.create(request_uid or None, attributes,
                                    event.assoc.requestor.ae_title))
    reply = Dataset()
    if not request_uid:
        # PS3.7 10.1.5.1.4: the N-CREATE-RSP carries the UID the SCP assigned
        # (pynetdicom moves it from the attribute list into the command).
        reply.AffectedSOPInstanceUID = record.sop_instance_uid
    return Reply(SUCCESS, dataset=reply)


def handle_set(event: Event, mpps: MppsService, bridge: LoopBridge) -> Reply:
    """N-SET: apply the Modification List to an IN PROGRESS step."""
    uid = str(cast(N_SET, event.request).RequestedSOPInstanceUID or "")
    modifications = _decoded(event, "modification_list")
    bridge.run(mpps.set(uid, modifications))
    return Reply(SUCCESS)


def service(mpps: MppsService, bridge: LoopBridge) -> DicomService:
    """N-CREATE and N-SET on the Modality Performed Procedure Step SOP Class."""
    classes = frozenset({MPPS})
    return DicomService(
        name="Modality Performed Procedure Step",
        contexts=(Context(MPPS),),
        operations=(
            Operation(evt.EVT_N_CREATE, lambda event: handle_create(event, mpps, bridge),
                      Service.MPPS_N_CREATE, "MPPS N-CREATE", classes),
            Operation(evt.EVT_N_SET, lambda event: handle_set(event, mpps, bridge),
                      Service.MPPS_N_SET, "MPPS N-SET", classes),
        ),
    )
