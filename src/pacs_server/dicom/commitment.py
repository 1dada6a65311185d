"""Storage Commitment Push Model SCP (PS3.4 Annex J): N-ACTION in, N-EVENT-REPORT out.

The handler validates the N-ACTION (Action Type ID 1, Request Storage Commitment, on
the well-known SOP Instance; a Transaction UID and a non-empty Referenced SOP
Sequence, Table J.3-1), records the request in the index and only then answers
Success. The instances are checked and the N-EVENT-REPORT sent afterwards by
`CommitmentDelivery` (dicom/commitment_delivery.py): on the same association while it
is open, else over a new one to the requester.

N-ACTION failures (PS3.7 10.1.4.1.10, mapped in dicom/status.py): 0x0123 no such action,
0x0112 no such SOP Instance, 0x0115 invalid argument value (missing or invalid
Transaction UID, empty sequence, a bad UID in an item), 0x0213 the request could not be
recorded, each with an Error Comment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.events import Event
from pynetdicom.sop_class import StorageCommitmentPushModel

from pacs_server.dicom.bridge import LoopBridge
from pacs_server.dicom.service import Context, DicomService, Operation, Reply
from pacs_server.dicom.status import SUCCESS, Service
from pacs_server.errors import InvalidArgument, NoSuchAction, NoSuchInstance
from pacs_server.services.commitment import CommitmentReport, build_request

if TYPE_CHECKING:
    from pacs_server.dicom.commitment_delivery import CommitmentDelivery

PUSH_MODEL = str(StorageCommitmentPushModel)
PUSH_MODEL_INSTANCE = "1.2.840.10008.1.20.1.1"   # the well-known SOP Instance (PS3.4 J.3.5)
REQUEST_STORAGE_COMMITMENT = 1                    # Action Type ID (PS3.4 J.3.2)
SYNTAXES = (str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian))


def handle_action(event: Event, delivery: CommitmentDelivery, bridge: LoopBridge) -> Reply:
    """Record a Request Storage Commitment; the report follows once the RSP went out.

    Returns:
        0x0000 once the request is committed to the index. Failures are raised: 0x0123,
        0x0112, 0x0115 (see the module docstring), 0x0213 index unavailable.
    """
    req: Any = event.request      # an N_ACTION here (the handler is bound for N-ACTION)
    action = int(req.ActionTypeID or 0)
    if action != REQUEST_STORAGE_COMMITMENT:
        raise NoSuchAction(f"Action Type ID {action} is not defined (1 = Request Storage "
                           "Commitment)")
    instance = str(req.RequestedSOPInstanceUID or "")
    if instance != PUSH_MODEL_INSTANCE:
        raise NoSuchInstance(f"Requested SOP Instance must be {PUSH_MODEL_INSTANCE}")
    info = _action_information(event)
    request = build_request(str(info.get("TransactionUID", "") or ""),
                            str(event.assoc.requestor.ae_title), _references(info))
    bridge.run(delivery.accept(request, event.assoc))
    return Reply(SUCCESS)


def _action_information(event: Event) -> Dataset:
    try:
        ds = event.action_information
        # pydicom decodes lazily: touch every element now, inside this error handling.
        for _ in ds.iterall():
            pass
    except Exception as exc:
        raise InvalidArgument(f"Action Information cannot be decoded: {exc}") from None
    if ds is None or len(ds) == 0:
        raise InvalidArgument("Action Information is missing")
    return ds


def _references(info: Dataset) -> list[tuple[int, str, str]]:
    """(item number, class UID, instance UID) of each Referenced SOP Sequence item."""
    seq = info.get("ReferencedSOPSequence")
    if seq is None:
        raise InvalidArgument("Referenced SOP Sequence (0008,1199) is missing")
    return [(n, str(item.get("ReferencedSOPClassUID", "") or ""),
             str(item.get("ReferencedSOPInstanceUID", "") or ""))
            for n, item in enumerate(seq, start=1)]


def report_dataset(report: CommitmentReport, retrieve_ae: str) -> Dataset:
    """The N-EVENT-REPORT Event Information (PS3.4 J.3.3, Tables J.3-2 and J.3-3).

    Event Type 1 lists every reference in Referenced SOP Sequence; Event Type 2 lists the
    failed ones in Failed SOP Sequence with their Failure Reason, and the committed
    ones, if any, in Referenced SOP Sequence.
    """
    ds = Dataset()
    ds.TransactionUID = report.transaction_uid
    if report.committed:
        ds.RetrieveAETitle = retrieve_ae
        ds.ReferencedSOPSequence = [_item(cls, inst) for cls, inst in report.committed]
    if report.failed:
        ds.FailedSOPSequence = [_item(cls, inst, FailureReason=reason)
                                for cls, inst, reason in report.failed]
    return ds


def _item(sop_class: str, sop_instance: str, **extra: Any) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = sop_class
    item.ReferencedSOPInstanceUID = sop_instance
    for keyword, value in extra.items():
        setattr(item, keyword, value)
    return item


def service(delivery: CommitmentDelivery, bridge: LoopBridge) -> DicomService:
    """N-ACTION on the Storage Commitment Push Model SOP class.

    The requester may propose SCP/SCU Role Selection for the context (PS3.4 J.3, PS3.7
    D.3.3.4); the proposal is accepted as made, so an SCU that also offers the SCP role
    (to receive N-EVENT-REPORTs on this association) gets it.
    """
    return DicomService(
        name="Storage Commitment",
        contexts=(Context(PUSH_MODEL, scu_role=True, scp_role=True, transfer_syntaxes=SYNTAXES),),
        operations=(Operation(evt.EVT_N_ACTION,
                              lambda event: handle_action(event, delivery, bridge),
                              Service.COMMITMENT_N_ACTION, "COMMIT N-ACTION",
                              frozenset({PUSH_MODEL})),),
    )
