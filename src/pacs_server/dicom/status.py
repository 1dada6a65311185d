"""The one table from domain errors to DIMSE status codes, per service (PS3.4, PS3.7).

Services raise `PacsError` subclasses; handlers call `failure()` and return its dataset.
Codes are checked against pynetdicom's `status.py` tables.
"""

from __future__ import annotations

import enum

from pydicom.dataset import Dataset

from pacs_server.errors import (
    AttributeNotAllowed,
    DatasetMismatch,
    DestinationUnreachable,
    DuplicateInstance,
    IndexUnavailable,
    InstanceExists,
    InvalidArgument,
    InvalidAttributeValue,
    InvalidQuery,
    MissingAttribute,
    MissingAttributeValue,
    MissingFile,
    NoSuchAction,
    NoSuchInstance,
    PacsError,
    StepFinalised,
    StorageFull,
    StorageUnavailable,
    TooManyMatches,
    UnknownDestination,
    UnreadableDataset,
)

SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WARNING = 0xFF01        # C-FIND: optional keys not supported
CANCEL = 0xFE00
SUBOPS_WARNING = 0xB000        # C-MOVE/C-GET: one or more sub-operations failed
SUBOPS_ALL_FAILED = 0xA702     # C-MOVE/C-GET: out of resources, unable to perform sub-ops


class Service(enum.Enum):
    """A row of the table: one DIMSE operation of one service class.

    N-CREATE, N-SET and N-ACTION mean different things for MPPS, Storage Commitment and
    (later) UPS, so the N-* rows are keyed by service class and operation.
    """

    C_ECHO = "C-ECHO"
    C_STORE = "C-STORE"
    C_FIND = "C-FIND"
    C_MOVE = "C-MOVE"
    C_GET = "C-GET"
    WORKLIST = "MWL C-FIND"
    MPPS_N_CREATE = "MPPS N-CREATE"
    MPPS_N_SET = "MPPS N-SET"
    COMMITMENT_N_ACTION = "COMMIT N-ACTION"


STATUS: dict[Service, dict[type[PacsError], int]] = {
    Service.C_ECHO: {},
    Service.C_STORE: {
        DuplicateInstance: 0x0111,      # PS3.7 C.4 Duplicate SOP Instance (failure)
        StorageFull: 0xA700,            # Refused: Out of Resources
        StorageUnavailable: 0xA700,
        IndexUnavailable: 0xA700,
        DatasetMismatch: 0xA900,        # Error: Data Set does not match SOP Class
        UnreadableDataset: 0xC000,      # Error: Cannot understand
    },
    Service.C_FIND: {
        InvalidQuery: 0xA900,           # Identifier does not match SOP Class
        TooManyMatches: 0xA700,         # Refused: Out of Resources
        IndexUnavailable: 0xA700,
    },
    Service.WORKLIST: {
        InvalidQuery: 0xA900,
        TooManyMatches: 0xA700,
        IndexUnavailable: 0xA700,
    },
    Service.C_MOVE: {
        UnknownDestination: 0xA801,     # Refused: Move Destination unknown
        DestinationUnreachable: 0xA801,
        InvalidQuery: 0xA900,
        IndexUnavailable: 0xA701,       # Out of resources: unable to calculate matches
        MissingFile: 0xA702,
    },
    Service.C_GET: {
        InvalidQuery: 0xA900,
        IndexUnavailable: 0xA701,
        MissingFile: 0xA702,
    },
    # PS3.4 F.7.2.1.3 and F.7.2.2.3 define no codes of their own; PS3.7 C.5 does.
    Service.MPPS_N_CREATE: {
        InstanceExists: 0x0111,         # Duplicate SOP Instance (C.5.8)
        InvalidAttributeValue: 0x0106,  # Invalid Attribute Value (C.5.11; F.7.2.1.3)
        MissingAttribute: 0x0120,       # Missing Attribute (C.5.13)
        MissingAttributeValue: 0x0121,  # Missing Attribute Value (C.5.14)
        DatasetMismatch: 0x0120,
        IndexUnavailable: 0x0110,       # Processing Failure (C.5.21)
    },
    Service.MPPS_N_SET: {
        NoSuchInstance: 0x0112,         # No Such SOP Instance (C.5.19)
        StepFinalised: 0x0110,          # Processing Failure, Error ID A710 (F.7.2.2.3)
        InvalidAttributeValue: 0x0106,
        AttributeNotAllowed: 0x0105,    # No Such Attribute (C.5.17), with the tags
        MissingAttributeValue: 0x0121,  # final-state attribute missing or empty
        IndexUnavailable: 0x0110,
    },
    # Storage Commitment request (PS3.4 J.3.2; N-ACTION statuses of PS3.7 10.1.4.1.10,
    # which has no Missing/Invalid Attribute codes: arguments are "invalid argument").
    Service.COMMITMENT_N_ACTION: {
        NoSuchAction: 0x0123,           # No such action (Action Type ID other than 1)
        InvalidArgument: 0x0115,        # Invalid argument value
        NoSuchInstance: 0x0112,         # Requested SOP Instance is not the well-known one
        IndexUnavailable: 0x0213,       # Resource limitation: not recorded, ask again
    },
}

GENERIC_FAILURE: dict[Service, int] = {
    Service.C_ECHO: 0x0110,             # Processing failure
    Service.C_STORE: 0xC211,
    Service.C_FIND: 0xC311,
    Service.WORKLIST: 0xC311,
    Service.C_MOVE: 0xC511,
    Service.C_GET: 0xC411,
    Service.MPPS_N_CREATE: 0x0110,
    Service.MPPS_N_SET: 0x0110,
    Service.COMMITMENT_N_ACTION: 0x0110,  # Processing failure
}


def status_code(service: Service, exc: BaseException) -> int:
    """The status for `exc` in `service`; unknown errors get the generic failure code."""
    table = STATUS[service]
    for cls in type(exc).__mro__:
        if cls in table:
            return table[cls]
    return GENERIC_FAILURE[service]


def failure(service: Service, exc: BaseException) -> Dataset:
    """A status dataset with the code for `exc` and its message as Error Comment (LO, 64).

    An error that names attributes (`attribute_tags`) adds them as Attribute Identifier
    List (0000,1005) where the response has one (`CARRIES_ATTRIBUTE_LIST`); one with an
    `error_id` adds it as Error ID (0000,0903).
    """
    ds = Dataset()
    ds.Status = status_code(service, exc)
    ds.ErrorComment = _comment(str(exc) or type(exc).__name__)
    tags = getattr(exc, "attribute_tags", None)
    if tags and service in CARRIES_ATTRIBUTE_LIST:
        ds.AttributeIdentifierList = [int(t) for t in tags]
    error_id = getattr(exc, "error_id", None)
    if error_id is not None:
        ds.ErrorID = int(error_id)
    return ds


# Responses whose command set has an Attribute Identifier List (pynetdicom's N-SET and
# N-ACTION primitives). Its N-CREATE primitive has none, so the Error Comment of an
# N-CREATE failure must name the attributes itself.
CARRIES_ATTRIBUTE_LIST = frozenset({Service.MPPS_N_SET})


def _comment(text: str) -> str:
    clean = "".join(c if 32 <= ord(c) < 127 and c != "\\" else "?" for c in text)
    return clean[:64]
